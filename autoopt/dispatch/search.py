"""The driver's search: ask Optuna for trials, dispatch them to the pool, tell the results.

``SearchLoop.run`` turns until the search is over; each turn (``_step``) does the upkeep
(heartbeats, stale trials, workers released or placed again), feeds every placed, free worker
of this driver with a trial asked for it (``next``: ``ask`` under the study's ask lock,
``prepare`` samples its config; ``submit``), then collects results (``_finish``) or, with
nothing in flight, waits (``_idle``): for other drivers' trials, or for Ray to place a worker.
The deadline is checked before every wait. A trial's states and their moves belong to
``TrialBook`` (``autoopt.dispatch.trials``); what a trial costs, to ``SearchCosts``.

A ``SearchPolicy`` (the portfolio, ``autoopt.screen.portfolio``) may seed the study with trials
before the sampler proposes anything.

Flat at scale: the loop reads the study through a ``StudyView`` (one incremental read, counts
kept as trials change), once per ask under the ask lock (the same read serves the sampling),
and for the display and the idle wait at most every ``REFRESH_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import optuna
import ray
from optuna.trial import FrozenTrial, TrialState

from autoopt.budget import Budget
from autoopt.dispatch.costs import SearchCosts
from autoopt.dispatch.pool import Finished, InFlight, WorkerPool
from autoopt.dispatch.results import JobResult, JobState
from autoopt.dispatch.trials import TrialBook, interrupt_deferred
from autoopt.dispatch.worker import Job, TrialRef
from autoopt.errors import StudyStopped
from autoopt.screen.focus import SearchFocus
from autoopt.space import SearchSpace, TrialConfig, suggest_config
from autoopt.study import (
    GRACE_S,
    HEARTBEAT_S,
    StorageDown,
    ask_lock,
    build_sampler,
    deferred_writes,
    fail_stale,
    record_heartbeat,
    storage_of,
    trial_id_of,
    trials_snapshot,
    with_retry,
)
from autoopt.study.backends import env_seconds
from autoopt.study.record import kind_of, record
from autoopt.study.samplers import TrialSeededSampler
from autoopt.study.view import StudyView
from autoopt.tracking import FAMILY_TAG, KIND_TAG, STATE_TAG, STUDY_TAG, TRIAL_TAG, RunRef

if TYPE_CHECKING:
    from autoopt.spec import StudySpec

log = logging.getLogger(__name__)

REFRESH_S = 0.5  # the progress display reads the study at most this often while trials run
# No worker of ours placed for this long (env AUTOOPT_STARVED_S): say what was asked and what is free.
STARVED_S = 60.0
# The first trials this driver finishes all failed with this one error: the study stops (a user's
# bug must not cost every trial of the study).
SAME_ERROR_STOP = 3


@dataclass
class SearchProgress:
    """What the progress display shows; updated after every event of the search."""

    total: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    best: float | None = None
    best_trial: int | None = None
    started: float = field(default_factory=time.monotonic)
    finished_here: int = 0
    last: str = ""
    notes: list[str] = field(default_factory=list)  # one line each: what the user should know

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    def eta_s(self) -> float | None:
        if self.finished_here == 0:
            return None
        per = (time.monotonic() - self.started) / self.finished_here
        return max(0.0, (self.total - self.done) * per)

    def refresh(self, view: StudyView) -> None:
        """Counts and best trial, from the study as ``view`` last read it."""
        self.complete, self.pruned = view.count(TrialState.COMPLETE), view.count(TrialState.PRUNED)
        self.running, self.failed = view.count(TrialState.RUNNING), view.count(TrialState.FAIL)
        if view.best is not None:
            self.best_trial, self.best = view.best


Progress = Callable[[SearchProgress], None]


class SearchPolicy(Protocol):
    """What the search runs besides the sampler's proposals."""

    def start(self, study: optuna.Study, storage_url: str, trials: int) -> str | None:
        """Called once per driver before the first ask: enqueue what must run first. Returns a
        one-line note for the user, or None."""


@dataclass(frozen=True)
class Span:
    """A trial run by this driver: its number, kind (screen or search), worker, and its start and
    end (monotonic seconds)."""

    number: int
    kind: str
    worker: int
    started: float
    ended: float


@dataclass
class FailureStreak:
    """The failures among the first trials this driver finished: once ``SAME_ERROR_STOP`` of them
    failed with one reason before any trial succeeded, ``add`` raises ``StudyStopped`` with it."""

    reasons: list[str] = field(default_factory=list)
    succeeded: bool = False

    def add(self, result: JobResult) -> None:
        if self.succeeded or result.state != JobState.FAILED:
            self.succeeded = True
            return
        self.reasons.append(result.reason or "no reason given")
        if len(self.reasons) >= SAME_ERROR_STOP and len(set(self.reasons)) == 1:
            raise StudyStopped(f"the first {len(self.reasons)} trials all failed with the same error, so the study "
                               f"stops here: {self.reasons[0]} (fix it and run the same command again; each "
                               "trial's traceback is in MLflow)")


@dataclass
class Pending:
    """A trial asked and prepared for a worker (PLACED in the book), about to be sent to it."""

    trial: optuna.trial.Trial
    job: Job


@dataclass
class SearchStart:
    """What a search reads and writes once before its first ask (``begin_search``): a resumed
    study's measured costs, and the notes of the policy's start (the portfolio enqueued)."""

    speeds: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def begin_search(study: optuna.Study, storage_url: str, trials: int, policy: SearchPolicy | None) -> SearchStart:
    """What needs no worker, done once per driver (``tune`` does it while Ray starts): a resumed
    study's costs read, the policy's trials enqueued. Asks no trial."""
    out = SearchStart()
    for t in with_retry(lambda: study.get_trials(deepcopy=False), what="read the study"):
        rec = record(t)
        if rec.s_per_epoch and rec.family:  # a resumed study's costs
            out.speeds.setdefault(rec.family, []).append(rec.s_per_epoch)
    if policy is not None:
        note = with_retry(lambda: policy.start(study, storage_url, trials), what="enqueue the portfolio")
        if note:
            log.warning("%s", note)  # before the progress display starts: the CLI shows it
            out.notes.append(note)
    return out


class SearchLoop:
    """Ask, dispatch, tell until the study holds ``spec.trials`` trials (counting those of
    other drivers and those already finished), or ``spec.timeout_s`` passes, or the budget is
    spent. Each trial's life is kept by ``self.book`` (``autoopt.dispatch.trials``); a trial is
    asked only for a worker of this driver that Ray has placed and that is free."""

    def __init__(self, study: optuna.Study, *, spec: StudySpec, storage_url: str, tracking: RunRef | None,
                 pool: WorkerPool, on_progress: Progress | None = None, policy: SearchPolicy | None = None,
                 budget: Budget | None = None, begun: SearchStart | None = None) -> None:
        self.study, self.spec, self.storage_url, self.tracking = study, spec, storage_url, tracking
        self.pool, self.on_progress, self.policy, self.budget = pool, on_progress, policy, budget
        self.begun = begun
        self.book = TrialBook(study)
        self.view = StudyView(study)
        self.costs = SearchCosts(spec.epochs, budget)
        self.storage = storage_of(study)  # the study was opened by autoopt.study
        self.space = spec.search_space()
        self.progress = SearchProgress(total=spec.trials)
        self.inflight: dict[ray.ObjectRef, InFlight] = {}
        self.deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
        self.asked_all = False  # the study's trials are all asked (by any driver): workers released
        self.starved_since: float | None = None  # since when no worker of ours could be placed
        self.starved_said = False  # ... and the user was told
        self.starved_s = env_seconds("AUTOOPT_STARVED_S", STARVED_S)
        self.last_beat = 0.0
        self.epochs_run: dict[str, int] = {"screen": 0, "search": 0}  # epochs trained here, by kind
        self.timeline: list[Span] = []  # per trial run here
        self.setup_s = 0.0  # a user loop's setup on the workers (its own phase, no trial's cost)
        self.failures = FailureStreak()
        self.focus = SearchFocus(study.direction)  # the screen's survivors

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> SearchProgress:
        """Run the search. Ctrl-C (or any error but a lost database) fails the trials held here
        and re-queues them (the study stays resumable), then re-raises."""
        try:
            self._start()
            while not self._step():
                pass
            self.notify("search over")  # the display shows the study as it ended
        except StorageDown:
            raise  # nothing can be recorded: their heartbeats stop, and a later driver re-queues them
        except BaseException:
            self.interrupt()
            raise
        return self.progress

    def _start(self) -> None:
        if not self.pool.warming:
            self.pool.warm(warm_job(self.spec, self.storage_url, self.study.study_name, self.tracking))
        if self.begun is None:
            self.begun = begin_search(self.study, self.storage_url, self.spec.trials, self.policy)
        for name, speeds in self.begun.speeds.items():
            for speed in speeds:
                self.costs.measured(name, speed)
        self.progress.notes.extend(self.begun.notes)
        self.notify("start")

    def over(self) -> bool:
        """The deadline (``--timeout``, ``--time-budget``) passed or the budget holds no more trials."""
        return self.costs.spent or (self.deadline is not None and time.monotonic() >= self.deadline)

    def _wait_s(self, longest: float) -> float:
        """How long a wait may last: ``longest``, or less before the deadline."""
        if self.deadline is None:
            return longest
        return max(0.0, min(longest, self.deadline - time.monotonic()))

    def _step(self) -> bool:
        """One turn: upkeep, free workers fed, results collected. True when the search is over."""
        self._upkeep()
        if not self.over():
            self._feed()
        if not self.inflight:
            return self._idle()
        for done in self.pool.collect(self.inflight, timeout_s=self._wait_s(HEARTBEAT_S)):
            self._finish(done)  # then the next turn feeds the freed worker
        return False

    def _feed(self) -> None:
        """A trial for each placed, free worker, asked and prepared for it and sent at once."""
        while not self.asked_all and not self.over() and (worker := self.pool.free()) is not None:
            pending = self.next(worker)
            if pending is None:
                return
            self.submit(worker, pending)

    def _idle(self) -> bool:
        """Nothing of ours in flight: the search is over, or waits (for other drivers' trials,
        or for Ray to place a worker of ours). True when it is over. Never waits past the deadline."""
        if self.over():
            return True
        view = self.view
        with_retry(lambda: view.fresh(REFRESH_S), what="read the study")
        if (view.used >= self.spec.trials and view.count(TrialState.RUNNING) == 0
                and view.count(TrialState.WAITING) == 0):
            return True
        self.progress.refresh(view)
        if self.asked_all:
            # Other drivers' trials still run (a dead driver's are re-queued once their heartbeat
            # goes stale: ``_upkeep`` then places workers again). Our workers are released.
            time.sleep(self._wait_s(1.0))
            return False
        self._starving()
        self.pool.wait_ready(self._wait_s(HEARTBEAT_S))
        return False

    def _upkeep(self) -> None:
        """Every HEARTBEAT_S: heartbeats for the trials running here, stale trials of dead drivers
        failed and re-queued, trials held too long without a worker re-queued; workers released
        when nothing is left to ask, placed again when a trial comes back to the queue."""
        now = time.monotonic()
        if now - self.last_beat < HEARTBEAT_S:
            return
        self.last_beat = now
        self.book.beat()
        with_retry(lambda: fail_stale(self.study), what="fail stale trials")
        self.book.requeue_unplaced(GRACE_S)
        if self.asked_all:
            pending = with_retry(lambda: self.study.get_trials(
                deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)), what="read the study")
            if any(t.state == TrialState.WAITING for t in pending):
                self.asked_all = False
                self.pool.restore()
            elif any(t.number not in self.book for t in pending):
                # Other drivers' trials still run: our idle workers' CPUs are theirs to use (a
                # driver that is done and about to confirm keeps its warm workers).
                self.pool.release()

    def _starving(self) -> None:
        """No worker of ours placed: after ``starved_s``, say once what was asked and what is free."""
        now = time.monotonic()
        if self.starved_since is None:
            self.starved_since = now
        elif now - self.starved_since >= self.starved_s and not self.starved_said:
            self.starved_said = True
            line = f"no worker placed for {now - self.starved_since:.0f}s: {self.pool.describe_wait()}"
            log.warning("%s", line)
            self.notify(line)

    def _finish(self, done: Finished) -> None:
        item, result, trial = done.item, done.result, done.item.trial
        assert trial is not None, "a search job is submitted with its trial"
        number = trial.number
        kind = "screen" if kind_of(trial.user_attrs) == "screen" else "search"
        self.timeline.append(Span(number, kind, item.worker, item.started, done.ended))
        self.epochs_run[kind] += len(result.history)
        self.setup_s += result.setup_s
        self.costs.measured(item.job.config.optimizer, result.s_per_epoch)
        if not done.lost:
            self.focus.observe(item.job.config.optimizer if kind == "search" else None,
                               TrialState[result.state.value], result.value)
        if done.lost:
            log.warning("worker died during trial %d: %s", number, (result.reason or "")[:200])
            self.book.requeue(number, "worker died during the trial")
            self.notify(f"trial {number} lost its worker; re-queued")
            return
        with_retry(lambda: self.book.tell(number, result), what="record a trial")
        self.progress.finished_here += 1
        self.notify(f"trial {number} {result.state.value.lower()}")
        self.failures.add(result)

    # --- a trial, from ask to submit -----------------------------------------------------------

    def next(self, worker: int) -> Pending | None:
        """Ask for the next trial for ``worker`` (placed and free) and prepare its job; None when
        the study's trials are all asked or the budget is spent."""
        asked = with_retry(lambda: self.ask(worker), what="ask for a trial")
        if asked is None:
            self.asked_all = not self.costs.spent
            return None
        trial, trials, unfinished = asked
        # The search tunes the families the screen found (``autoopt.screen.focus``).
        family = self.focus.family(trials) if kind_of(trial.user_attrs) == "search" else None
        # The read of the trials made under the ask lock serves the sampling too.
        with trials_snapshot(self.study, trials, unfinished):
            config = with_retry(lambda: self.prepare(trial, family), what="store a trial's config")
        if self.budget is not None and self.costs.over(config.optimizer, len(self.pool.workers)):
            # its family, sampled now, is too slow for what is left
            self.book.skip(trial.number, "not started: its expected cost exceeds what is left of the time budget")
            return None
        job = self._job(trial, config)
        self.book.place(trial.number, job)
        return Pending(trial, job)

    def ask(self, worker: int) -> tuple[optuna.trial.Trial, list[FrozenTrial], list[int]] | None:
        """A new trial (an enqueued one first) for ``worker``, held by the book, and the study's
        trials as read before asking it (and the numbers of those unfinished then), or None when
        the study's trials are all asked or the budget is spent."""
        with ask_lock(self.storage_url, self.study.study_name):
            trials = self.view.read()  # one incremental read, under the lock: the count is exact
            unfinished = list(self.view.open)
            upcoming = self.view.first_waiting()
            if upcoming is None and self.view.used >= self.spec.trials:
                return None
            if self.budget is not None:
                self.budget.mark_search_start()
                # An enqueued trial (the screen, a retry) holds its family in its fixed params.
                family = (upcoming.system_attrs.get("fixed_params", {}).get("optimizer")
                          if upcoming is not None else None)
                if self.costs.over(family, len(self.pool.workers)):
                    return None
            with interrupt_deferred():  # from the trial's row to the book, nobody's for no instant
                # Optuna's look for a waiting trial reads this read (its unfinished trials only)
                with trials_snapshot(self.study, trials, unfinished):
                    trial = self.study.ask()
                self.book.ask(trial, worker)
        return trial, trials, unfinished

    def prepare(self, trial: optuna.trial.Trial, family: str | None = None) -> TrialConfig:
        """Sample ``trial``'s config and store it (idempotent: a retry gives the same config).

        Each trial is sampled by a sampler of its own seeded by --seed plus the trial's number
        (unique in the study), made when the trial is asked (``build_sampler``): two drivers
        started together with the same --seed would otherwise propose the same configs, and one
        driver stays reproducible. The study's sampler is set here only when it is not that one
        yet (a study opened with another seed: once per driver); a trial asked before then is
        sampled by the new one all the same. A portfolio trial trains its family at its
        published defaults, without a scheduler or clipping. A search trial trains ``family``
        where the focus gives one, its settings sampled as usual.
        """
        sampler = self.study.sampler
        if not (isinstance(sampler, TrialSeededSampler) and sampler.serves(self.spec.sampler, self.spec.seed)):
            sampler = self.study.sampler = build_sampler(self.spec.sampler, self.spec.seed)
        if family is not None:
            sampler.fix(self.study.study_name, trial.number, {"optimizer": family})
        with deferred_writes(self.study, trial):  # its params, config and first heartbeat: one transaction
            # At once: a trial without any heartbeat is only failed after 2 x GRACE_S.
            record_heartbeat(self.study, trial.number)
            config = suggest_config(trial, self.space)
            if kind_of(trial.user_attrs) == "screen":
                config = TrialConfig(config.optimizer, self.space.default_params(config.optimizer))
            trial.set_user_attr("config", config.to_dict())
            if trial.user_attrs.get("reason") and "failed_trial" in self.storage.get_trial_system_attrs(
                    trial_id_of(self.study, trial.number)):
                trial.set_user_attr("reason", None)  # inherited from the failed attempt it retries
        return config

    def submit(self, worker: int, pending: Pending) -> None:
        """Send a PLACED trial's job to its worker: RUNNING from now on."""
        ref, item = self.pool.submit(worker, pending.job, pending.trial)
        self.book.start(pending.trial.number)
        self.inflight[ref] = item
        self.starved_since, self.starved_said = None, False

    def interrupt(self) -> None:
        """Ctrl-C: the workers stopped, the trials held here failed and re-queued, so running the
        command again finishes exactly the remainder."""
        self.pool.shutdown()
        self.inflight.clear()
        self.book.interrupt()

    def notify(self, event: str) -> None:
        self.progress.last = event
        # Short trials finish several times a second: read the study for the display at most
        # every REFRESH_S while trials are in flight (the last one always reads).
        if not self.inflight or time.monotonic() - self.view.read_at >= REFRESH_S:
            with_retry(self.view.read, what="read the study")
        self.progress.refresh(self.view)
        if self.on_progress is not None:
            self.on_progress(self.progress)

    # --- helpers -----------------------------------------------------------------------------

    def _ref(self, trial_id: int, number: int, pruner: str | None = None) -> TrialRef:
        spec = self.spec
        # Under a budget the trial must end within the search's share: the worker stops it when
        # its measured seconds per epoch project its end past that (the race keeps its reserve).
        deadline = (time.time() + self.budget.search_left(self.costs.race(len(self.pool.workers)))
                    if self.budget is not None else None)
        return TrialRef(self.storage_url, self.study.study_name, trial_id, number, pruner or spec.pruner,
                        spec.epochs, spec.pruner_warmup, deadline=deadline)

    def _job(self, trial: optuna.trial.Trial, config: TrialConfig) -> Job:
        spec, number = self.spec, trial.number
        kind = kind_of(trial.user_attrs)
        kind = "portfolio" if kind == "screen" else kind  # the screen's name in MLflow
        tags = {STUDY_TAG: self.study.study_name, TRIAL_TAG: number, FAMILY_TAG: config.optimizer,
                KIND_TAG: kind, STATE_TAG: "RUNNING"}
        return Job(spec.task, spec.placement.data_dir, config, spec.epochs, spec.seed + number, spec.batch_size,
                   spec.placement.compile,
                   # The portfolio is screened by successive halving (autoopt.training.pruning): cost-aware
                   # without a budget; under one, by rank alone, the deadline stopping what the
                   # budget cannot afford.
                   trial=self._ref(trial_id_of(self.study, number), number,
                                   None if kind != "portfolio" or spec.pruner == "none" else
                                   "screen" if self.budget is None else "screen_rank"),
                   tracking=self.tracking, run_name=f"trial-{number}", tags=tags,
                   family=self.space.family(config.optimizer))


def _warm_config(space: SearchSpace, name: str) -> TrialConfig:
    """A config of the space's family ``name`` to warm a worker up with (its defaults)."""
    return TrialConfig(name, space.default_params(name))


def warm_job(spec: StudySpec, storage_url: str, study_name: str, tracking: RunRef | None) -> Job:
    """The job a worker warms up with (``WorkerPool.warm``): the study's task, its study's
    handle and tracking store, a first training step of the space's first family."""
    space = spec.search_space()
    warm = _warm_config(space, spec.optimizers[0])
    ref = TrialRef(storage_url, study_name, -1, -1, spec.pruner, spec.epochs, spec.pruner_warmup)
    return Job(spec.task, spec.placement.data_dir, warm, spec.epochs, spec.seed, spec.batch_size,
               spec.placement.compile, tracking=tracking, trial=ref, family=space.family(warm.optimizer))
