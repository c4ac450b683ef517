"""The driver's search: ask Optuna for trials, dispatch them to the pool, tell the results.

``SearchLoop`` keeps its state in attributes; each step of a trial's life is a method:
``ask`` (under the study's ask lock, within the budget), ``prepare`` (sample its config),
``submit`` (to an idle worker), ``tell`` (record the result), plus ``heartbeat`` for the
trials in flight and ``interrupt`` for Ctrl-C. The next trial is asked and prepared while the
workers train, and waits in the driver until a worker frees: it goes to whichever frees first.

A ``SearchPolicy`` (the portfolio, ``autoopt.portfolio``) may seed the study with trials
before the sampler proposes anything and steer later trials to a family.
"""

from __future__ import annotations

import functools
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import optuna
import ray
from optuna.trial import FrozenTrial, TrialState

from autoopt.budget import MIN_SEEDS, RACE_FLOOR, Budget
from autoopt.direction import best
from autoopt.dispatch.gpus import gpus_per_trial
from autoopt.dispatch.pool import Finished, InFlight, WorkerPool
from autoopt.dispatch.results import JobResult, JobState, compact_history
from autoopt.dispatch.worker import Job, TrialRef
from autoopt.space import SearchSpace, TrialConfig, suggest_config
from autoopt.study import (
    HEARTBEAT_S,
    ask_lock,
    budget_used,
    build_sampler,
    counts,
    fail_stale,
    is_unreachable,
    record_heartbeat,
    retry_trial,
    storage_of,
    trial_id_of,
    trials_snapshot,
    with_retry,
)
from autoopt.study.samplers import TrialSeededSampler
from autoopt.tracking import RunRef

if TYPE_CHECKING:
    from autoopt.spec import StudySpec

log = logging.getLogger(__name__)

REFRESH_S = 0.5  # the progress display reads the study at most this often while trials run
STEERED = "steered"  # user attr: the family of this trial was chosen by the policy
TRIAL_OVERHEAD_S = 0.3  # a trial's cost beyond its epochs (ask, dispatch, tell), for the budget


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

    def refresh(self, study: optuna.Study) -> None:
        """Counts and best trial, read from the study."""
        trials = study.get_trials(deepcopy=False)
        c = counts(trials)
        self.complete, self.pruned, self.running = c["complete"], c["pruned"], c["running"]
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
        self.failed = sum(1 for t in trials if t.state == TrialState.FAIL and t.number not in retried)
        done = [(t.number, t.value) for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
        if done:
            self.best_trial, self.best = best(done, key=lambda nv: nv[1], direction=study.direction)


Progress = Callable[[SearchProgress], None]


class SearchPolicy(Protocol):
    """What the search runs besides the sampler's proposals."""

    def start(self, study: optuna.Study, storage_url: str, trials: int) -> str | None:
        """Called once per driver before the first ask: enqueue what must run first. Returns a
        one-line note for the user, or None."""

    def steer(self, study: optuna.Study, trials: list[FrozenTrial]) -> str | None:
        """The family the next proposed trial trains (the sampler tunes within it), or None to
        leave the choice to the sampler. Called under the ask lock with the study's trials."""


@dataclass
class Pending:
    """A trial asked and prepared, waiting in the driver for an idle worker."""

    trial: optuna.trial.Trial
    job: Job


class SearchLoop:
    """Ask, dispatch, tell until the study holds ``spec.trials`` trials (counting those of
    other drivers and those already finished), or ``spec.timeout_s`` passes."""

    def __init__(self, study: optuna.Study, *, spec: StudySpec, storage_url: str, tracking: RunRef | None,
                 pool: WorkerPool | None, on_progress: Progress | None = None,
                 policy: SearchPolicy | None = None, budget: Budget | None = None) -> None:
        self.study, self.spec, self.storage_url, self.tracking = study, spec, storage_url, tracking
        self.pool, self.on_progress, self.policy, self.budget = pool, on_progress, policy, budget
        self.speeds: dict[str, list[float]] = {}  # seconds per epoch measured, by family
        self.epochs_run: dict[str, int] = {"screen": 0, "search": 0}  # epochs trained here, by kind
        self.out_of_budget = False  # the next trial's expected cost does not fit in the budget
        self.storage = storage_of(study)  # the study was opened by autoopt.study
        self.space = spec.search_space()
        self.progress = SearchProgress(total=spec.trials)
        self.inflight: dict[ray.ObjectRef, InFlight] = {}
        self.owned: dict[int, optuna.trial.Trial] = {}  # asked here, not told yet (Ctrl-C fails them)
        self.pending: Pending | None = None
        self.deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
        self.exhausted = False  # the budget (or the time) is spent: ask no more
        self.last_beat = 0.0
        self.last_read = 0.0
        self.timeline: list[dict[str, Any]] = []  # per trial run here: number, kind, worker, started, ended
        self.begun = False

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> SearchProgress:
        """Run the search. Ctrl-C fails the trials asked here and re-queues them (the study stays
        resumable), then re-raises ``KeyboardInterrupt``."""
        self._check_gpus()
        try:
            self._start()
            while not self._step():
                pass
        except KeyboardInterrupt:
            self.interrupt()
            raise
        return self.progress

    def begin(self) -> None:
        """What needs no worker, done once, possibly before the pool exists (``tune`` calls it
        while Ray starts): a resumed study's costs read, the portfolio enqueued, the first trial
        asked and prepared, to wait for the first warm worker. Ctrl-C re-queues what it asked."""
        if self.begun:
            return
        self.begun = True
        for t in with_retry(lambda: self.study.get_trials(deepcopy=False), what="read the study"):
            if t.user_attrs.get("s_per_epoch") and t.user_attrs.get("config"):  # a resumed study's costs
                self.speeds.setdefault(t.user_attrs["config"]["optimizer"], []).append(t.user_attrs["s_per_epoch"])
        if self.policy is not None:
            policy = self.policy
            note = with_retry(lambda: policy.start(self.study, self.storage_url, self.spec.trials),
                              what="enqueue the portfolio")
            if note:
                log.warning("%s", note)  # before the progress display starts: the CLI shows it
                self.progress.notes.append(note)
        try:
            if self.pending is None and not self.exhausted:
                self.pending = self.next()
        except KeyboardInterrupt:
            self.interrupt()
            raise

    def running_pool(self) -> WorkerPool:
        """The pool the trials run on: ``begin`` needs none, everything after it does."""
        if self.pool is None:
            raise RuntimeError("the search runs on a pool: set SearchLoop.pool before run()")
        return self.pool

    def _start(self) -> None:
        # Workers warm up (task data, stores, torch) while the driver starts; each takes
        # trials once warm. ``tune`` starts their warm-up before it opens MLflow.
        pool = self.running_pool()
        if not pool.warming:
            pool.warm(warm_job(self.spec, self.storage_url, self.study.study_name, self.tracking))
        self.begin()
        self.notify("start")

    def _step(self) -> bool:
        """One turn: heartbeats, idle workers fed, the next trial prepared, results collected.
        True when the search is over."""
        self.heartbeat()
        if (self.deadline is not None and time.monotonic() >= self.deadline) or self.out_of_budget:
            self.exhausted = True
        self._feed()
        if not self.inflight:
            return self._idle()
        pool = self.running_pool()
        finished = pool.collect(self.inflight, timeout_s=0.0)
        if not finished and self.pending is None and not self.exhausted:
            self.pending = self.next()  # while the workers train: ready when one frees
            return False
        if not finished:
            finished = pool.collect(self.inflight, timeout_s=HEARTBEAT_S)
        for done in finished:
            self._feed()  # first the freed worker gets the waiting trial, then the bookkeeping
            self._finish(done)
        return False

    def _feed(self) -> None:
        """Hand a prepared trial to every idle worker."""
        while (w := self.running_pool().free()) is not None:
            pending = self.pending or (None if self.exhausted else self.next())
            self.pending = None
            if pending is None:
                return
            if self.over_budget(pending.job.config.optimizer):
                self.skip(pending)  # it waited for a worker while the budget ran down
                return
            self.submit(w, pending)

    def _idle(self) -> bool:
        """Nothing in flight: the search is over, or waits (other drivers' trials, workers not
        placed yet). True when it is over."""
        if self.pending is None and not self.exhausted:
            self.pending = self.next()  # asked and sampled while the workers warm up
            return False
        if self.pending is not None:
            self.running_pool().wait_ready(HEARTBEAT_S)  # a trial is ready, no worker is placed yet
            return False
        if (self.deadline is not None and time.monotonic() >= self.deadline) or self.out_of_budget:
            return True
        trials = with_retry(lambda: self.study.get_trials(deepcopy=False), what="read the study")
        c = counts(trials)
        if budget_used(trials) >= self.spec.trials and c["running"] == 0 and c["waiting"] == 0:
            return True
        with_retry(lambda: self.progress.refresh(self.study), what="read the study")
        if self.exhausted:
            # Trials of another driver (or of a dead one, until their heartbeat goes stale and
            # they are re-queued) are still running: wait, so the study ends complete and no
            # re-queued trial is left behind.
            time.sleep(1.0)
        else:
            self.running_pool().wait_ready(HEARTBEAT_S)  # none of our workers is placed yet
        self.exhausted = False
        return False

    def _finish(self, done: Finished) -> None:
        item, result, trial = done.item, done.result, done.item.trial
        assert trial is not None, "a search job is submitted with its trial"
        number = trial.number
        kind = "screen" if trial.user_attrs.get("portfolio") else "search"
        self.timeline.append({"number": number, "kind": kind, "worker": item.worker, "started": item.started,
                              "ended": done.ended})
        self.epochs_run[kind] += len(result.history)
        if result.s_per_epoch:
            self.speeds.setdefault(item.job.config.optimizer, []).append(result.s_per_epoch)
        if done.lost:
            log.warning("worker died during trial %d: %s", number, (result.reason or "")[:200])
            lost = JobResult.failed("worker died during the trial")
            if with_retry(lambda: self.tell(trial, lost), what="record a trial"):
                with_retry(lambda: retry_trial(self.study, number), what="re-queue a trial")
            self.notify(f"trial {number} lost its worker; re-queued")
            return
        with_retry(lambda: self.tell(trial, result), what="record a trial")
        self.progress.finished_here += 1
        self.notify(f"trial {number} {result.state.value.lower()}")

    # --- a trial's life ----------------------------------------------------------------------

    def next(self) -> Pending | None:
        """Ask for the next trial and prepare its job; None when the budget is spent."""
        asked = with_retry(self.ask, what="ask for a trial")
        if asked is None:
            self.exhausted = True
            return None
        trial, trials = asked
        self.owned[trial.number] = trial
        # The read of the trials made under the ask lock serves the sampling too.
        with trials_snapshot(self.study, trials):
            config = with_retry(lambda: self.prepare(trial), what="store a trial's config")
        pending = Pending(trial, self._job(trial, config))
        if self.over_budget(config.optimizer):
            self.skip(pending)  # its family, sampled now, is too slow for what is left
            return None
        return pending

    def ask(self) -> tuple[optuna.trial.Trial, list[FrozenTrial]] | None:
        """A new trial (an enqueued one first) and the study's trials as read before asking it,
        or None when the study's budget is spent."""
        with ask_lock(self.storage_url, self.study.study_name):
            trials = self.study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and budget_used(trials) >= self.spec.trials:
                return None
            if self.budget is not None:
                self.budget.mark_search_start()
                upcoming = min((t for t in trials if t.state == TrialState.WAITING), key=lambda t: t.number,
                               default=None)
                if self.over_budget(upcoming.params.get("optimizer") if upcoming is not None else None):
                    return None
            steer = self.policy.steer(self.study, trials) if self.policy is not None and not waiting else None
            if steer is not None:
                # Fixed for this trial only; the sampler proposes the rest, within the family.
                self.study.enqueue_trial({"optimizer": steer}, user_attrs={STEERED: steer})
            trial = self.study.ask()
            # At once: a trial without any heartbeat is only failed after 2 x GRACE_S.
            record_heartbeat(self.study, trial.number)
        return trial, trials

    def prepare(self, trial: optuna.trial.Trial) -> TrialConfig:
        """Sample ``trial``'s config and store it (idempotent: a retry gives the same config).

        Each trial is sampled by a sampler of its own seeded by --seed plus the trial's number
        (unique in the study), made when the trial is asked (``build_sampler``): two drivers
        started together with the same --seed would otherwise propose the same configs, and one
        driver stays reproducible. The study's sampler is set here only when it is not that one
        yet (a study opened with another seed: once per driver); a trial asked before then is
        sampled by the new one all the same. A portfolio trial trains its family at its
        published defaults, without a scheduler or clipping.
        """
        sampler = self.study.sampler
        if not (isinstance(sampler, TrialSeededSampler) and sampler.serves(self.spec.sampler, self.spec.seed)):
            self.study.sampler = build_sampler(self.spec.sampler, self.spec.seed)
        config = suggest_config(trial, self.space)
        if trial.user_attrs.get("portfolio"):
            config = TrialConfig(config.optimizer, self.space.default_params(config.optimizer))
        trial.set_user_attr("config", config.to_dict())
        attrs = self.storage.get_trial_system_attrs(trial_id_of(self.study, trial.number))
        if "failed_trial" in attrs and trial.user_attrs.get("reason"):
            trial.set_user_attr("reason", None)  # inherited from the failed attempt it retries
        return config

    def submit(self, worker: int, pending: Pending) -> None:
        # A job prepared during start-up, before the parent run existed, goes under it now.
        job = pending.job if pending.job.tracking == self.tracking else replace(pending.job, tracking=self.tracking)
        ref, item = self.running_pool().submit(worker, job, pending.trial)
        self.inflight[ref] = item

    def tell(self, trial: optuna.trial.Trial, result: JobResult) -> bool:
        """Record a result; False when the trial was already finished (failed as stale by a
        driver that took this one for dead). An unreachable database raises, to be retried."""
        try:
            if result.reason:
                trial.set_user_attr("reason", result.reason)
            trial.set_user_attr("train_s", round(result.train_s, 4))
            if result.s_per_epoch is not None:
                trial.set_user_attr("s_per_epoch", round(result.s_per_epoch, 6))
            if result.pid:  # which worker ran it: for a crash, find its node's logs
                trial.set_user_attr("worker", {"node": result.node, "pid": result.pid})
            trial.set_user_attr("history", compact_history(result.history))  # for reports
            if result.state == JobState.COMPLETE and result.value is not None:
                # The worker leaves the last epoch's report to this tell: it spares the trial a
                # round trip at its end, and no pruner acts on the last epoch. (A complete run
                # without a value trained no epoch: failed, as Optuna would not take it.)
                trial.report(result.value, len(result.history) or 1)
                self.study.tell(trial, result.value)
            else:
                self.study.tell(trial, state=TrialState.PRUNED if result.state == JobState.PRUNED
                                else TrialState.FAIL)
        except Exception as exc:
            if is_unreachable(exc):
                raise
            log.warning("could not record trial %d: %s", trial.number, exc)
            self.owned.pop(trial.number, None)
            return False
        self.owned.pop(trial.number, None)
        return True

    # --- the time budget ----------------------------------------------------------------------

    def expected_cost(self, name: str | None) -> float:
        """Expected seconds of a trial of family ``name`` (None: not known yet): its measured
        seconds per epoch, else the median of all measured, times the epochs; 0 before any."""
        mine = self.speeds.get(name or "")
        every = [v for vs in self.speeds.values() for v in vs]
        speed = statistics.median(mine) if mine else (statistics.median(every) if every else 0.0)
        return self.spec.epochs * speed + TRIAL_OVERHEAD_S

    def race_cost(self) -> float:
        """Expected seconds of the smallest confirmation: ``RACE_FLOOR`` configs on ``MIN_SEEDS``
        seeds, over the workers."""
        runs = RACE_FLOOR * MIN_SEEDS / max(1, len(self.pool.workers) if self.pool is not None else 1)
        return runs * self.expected_cost(None)

    def over_budget(self, name: str | None) -> bool:
        """True (and no more trials are asked) when a trial of ``name`` does not fit in what the
        budget leaves the search."""
        if self.budget is None:
            return False
        cost, left = self.expected_cost(name), self.budget.search_left(self.race_cost())
        if cost <= left:
            return False
        self.out_of_budget = self.exhausted = True
        self.budget.note(f"search stopped: a {name or 'search'} trial's expected {cost:.1f}s exceeds the "
                         f"{max(0.0, left):.1f}s left before the confirmation")
        return True

    def skip(self, pending: Pending) -> None:
        """A trial asked but not started: failed with the budget's reason, so the study moves on."""
        trial = pending.trial
        with_retry(lambda: trial.set_user_attr("reason", "not started: its expected cost exceeds what is left "
                                               "of the time budget"), what="record a trial")
        with_retry(lambda: self.study.tell(trial, state=TrialState.FAIL), what="record a trial")
        self.owned.pop(trial.number, None)

    def heartbeat(self) -> None:
        """Every HEARTBEAT_S: a beat for each trial asked here, and stale trials of dead drivers
        failed (and re-queued)."""
        now = time.monotonic()
        if now - self.last_beat < HEARTBEAT_S:
            return
        for number in list(self.owned):
            with_retry(functools.partial(record_heartbeat, self.study, number), what="heartbeat")
        with_retry(lambda: fail_stale(self.study), what="fail stale trials")
        self.last_beat = now

    def interrupt(self) -> None:
        """Ctrl-C: fail the trials asked here (running or waiting in the driver) and re-queue
        them, so running the command again finishes exactly the remainder."""
        if self.pool is not None:
            self.pool.shutdown()
        for trial in list(self.owned.values()):
            try:
                trial.set_user_attr("reason", "interrupted")
                self.study.tell(trial, state=TrialState.FAIL)
                retry_trial(self.study, trial.number)
            except Exception as exc:
                log.warning("could not re-queue trial %d: %s", trial.number, exc)
        self.owned.clear()
        self.pending = None

    def notify(self, event: str) -> None:
        self.progress.last = event
        # Short trials finish several times a second: read the study for the display at most
        # every REFRESH_S while trials are in flight (the last one always reads).
        if not self.inflight or time.monotonic() - self.last_read >= REFRESH_S:
            with_retry(lambda: self.progress.refresh(self.study), what="read the study")
            self.last_read = time.monotonic()
        if self.on_progress is not None:
            self.on_progress(self.progress)

    # --- helpers -----------------------------------------------------------------------------

    def _ref(self, trial_id: int, number: int, pruner: str | None = None) -> TrialRef:
        spec = self.spec
        return TrialRef(self.storage_url, self.study.study_name, trial_id, number, pruner or spec.pruner,
                        spec.epochs, spec.pruner_warmup)

    def _job(self, trial: optuna.trial.Trial, config: TrialConfig) -> Job:
        spec, number = self.spec, trial.number
        kind = ("portfolio" if trial.user_attrs.get("portfolio") else
                "warmstart" if trial.user_attrs.get("warmstart") else "search")  # warmstart: autoopt.prior
        tags = {"autoopt.study": self.study.study_name, "autoopt.trial_number": number,
                "autoopt.optimizer": config.optimizer, "autoopt.kind": kind, "autoopt.state": "RUNNING"}
        return Job(spec.task, spec.placement.data_dir, config, spec.epochs, spec.seed + number, spec.batch_size,
                   spec.placement.compile,
                   # The portfolio is screened by cost-aware successive halving (autoopt.pruning).
                   trial=self._ref(trial_id_of(self.study, number), number,
                                   "screen" if kind == "portfolio" and spec.pruner != "none" else None),
                   tracking=self.tracking, run_name=f"trial-{number}", tags=tags,
                   family=self.space.family(config.optimizer))

    def _check_gpus(self) -> None:
        place = self.spec.placement
        gpus_per_trial(place.gpus_per_trial, ray_address=place.ray_address)  # our own Ray has the GPUs asked for


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


def run_search(study: optuna.Study, *, spec: StudySpec, storage_url: str, tracking: RunRef | None,
               pool: WorkerPool, on_progress: Progress | None = None,
               policy: SearchPolicy | None = None, budget: Budget | None = None) -> SearchLoop:
    """Run a ``SearchLoop`` (see there) and return it (its ``progress``, ``timeline``, ``epochs_run``)."""
    loop = SearchLoop(study, spec=spec, storage_url=storage_url, tracking=tracking, pool=pool,
                      on_progress=on_progress, policy=policy, budget=budget)
    loop.run()
    return loop
