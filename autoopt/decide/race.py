"""The confirmation as a race: seeds go where the decision is (irace's F-race, Maron & Moore's
Hoeffding races).

Every contender (the top tuned configs and the baselines) starts on the same seeds, one round
of seeds at a time, so every comparison stays paired. A run the study already made of a
contender's config on one of those seeds (``Contender.offer``: a complete screen or search trial
at the race's epochs) is that contender's run of the round, once the round is played: common
random numbers, the race adds seeds rather than repeating them, and a round runs only those that
have none. Comparisons are over the seeds both contenders have. After each round from the second on:

* **dropped**: a contender clearly beaten by the leader (the best mean so far among those that
  completed every seed) leaves the race: after 2 seeds only when it was worse on every seed by
  more than twice the equivalence margin; from 3 seeds on, also when its paired 95% interval
  against the leader lies below 0 (an interval never narrower than the seed-to-seed noise of the
  race's other pairs, ``autoopt.decide.verdict``: never of zero width). The best tuned config and the best
  baseline are never dropped: the verdict is decided between them;
* **decided**: once every contender has ``min_seeds`` seeds, the race stops when the verdict
  of the best tuned config against the best baseline is ``better`` or ``worse``;
* **behind**: from 3 seeds on, a contender behind the leader by more than the equivalence
  margin on the mean leaves too: on that evidence it is neither the pick nor equivalent to it;
* **undecided**: otherwise a further seed goes to the two the verdict is decided between, up to
  ``max_seeds`` for cheap ones and ``min_seeds + 1`` (never above ``max_seeds``) for those more
  than ``SLOW`` times the cheapest per epoch.

Without a budget the race has an allowance: the seconds the screen and the search took (at
least ``ALLOWANCE_FLOOR_S``), so that confirming never costs much more than searching; the two
decisive contenders (the search's best config, the best-screened default) always get their
seeds.

Under a time budget a round starts only with the contenders whose runs fit in what is left (the
runs still needed to reach ``min_seeds`` counted in, those already made not); the costliest are
left out first (the
search's best config and the best-screened published default last), and the JSON says which
were not confirmed and why.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from autoopt.base.direction import sign
from autoopt.budget import Budget, run_cost
from autoopt.decide.verdict import Noise, paired
from autoopt.dispatch import Job, JobResult, JobState, SearchProgress, WorkerPool, run_jobs
from autoopt.evidence import Paired
from autoopt.space import TrialConfig, family
from autoopt.tracking import (
    CANDIDATE_TAG,
    FAMILY_TAG,
    KIND_TAG,
    SEED_TAG,
    SOURCE_TRIAL_TAG,
    STUDY_TAG,
    RunKind,
    RunRef,
)

if TYPE_CHECKING:
    import optuna

    from autoopt.spec import StudySpec

DROP_AFTER = 3  # seeds before an interval or a mean may drop a contender (2 seeds: only every seed far behind)
SLOW = 3.0  # more than this many times the cheapest contender per epoch: fewer extra seeds


class Standing(StrEnum):
    """Where a contender stands in the race (the recommendation's ``race.status`` of one that left)."""

    RACING = "racing"
    DROPPED = "dropped"  # clearly beaten, or failed on a seed the leader completed
    UNAFFORDABLE = "unaffordable"  # its next runs do not fit in what is left of the time


@dataclass
class Contender:
    """One config in the race: a tuned trial's (``number``) or a baseline's (``number`` None)."""

    name: str
    number: int | None
    cfg: TrialConfig
    s_per_epoch: float | None = None  # expected, from the study; measured once it ran
    essential: bool = False  # the search's best config or the best-screened default: left out last
    results: dict[int, JobResult] = field(default_factory=dict)
    status: Standing = Standing.RACING
    reason: str | None = None
    offered: dict[int, tuple[int, JobResult]] = field(default_factory=dict)  # seed -> (trial, its run)
    made: dict[int, int] = field(default_factory=dict)  # the offered runs the race counted: seed -> trial

    def offer(self, seed: int, trial: int, result: JobResult) -> None:
        """Trial ``trial``'s run of this config (``result``, on ``seed``): this contender's run of
        ``seed`` if the race plays that seed with it (a seed no rival ran pairs with nothing)."""
        self.offered[seed] = (trial, result)
        if result.s_per_epoch and not self.results:
            self.s_per_epoch = result.s_per_epoch  # measured on this config, not its family

    def has(self, seed: int) -> bool:
        """Whether it ran ``seed`` or has a run of it made already."""
        return seed in self.results or seed in self.offered

    def take(self, seed: int) -> None:
        """Count the run made already on ``seed``, if any, as its run of the round."""
        if seed in self.offered and seed not in self.results:
            self.made[seed], self.results[seed] = self.offered[seed]

    @property
    def baseline(self) -> bool:
        return self.number is None

    def values(self, seeds: Sequence[int]) -> list[float | None]:
        """Validation values on ``seeds`` (None where not run or not complete)."""
        out: list[float | None] = []
        for s in seeds:
            r = self.results.get(s)
            out.append(r.value if r is not None and r.state == JobState.COMPLETE else None)
        return out

    def mean(self) -> float | None:
        vals = [v for v in self.values(sorted(self.results)) if v is not None and math.isfinite(v)]
        return statistics.fmean(vals) if vals else None

    def complete(self) -> bool:
        return bool(self.results) and all(r.state == JobState.COMPLETE for r in self.results.values())


def margin_for(score: str, pick_mean: float | None, *, points: float, relative: float) -> float:
    """The equivalence margin: ``points`` of an accuracy; else ``relative`` of the pick's mean
    (RMSE: 1% of the pick's error)."""
    if score == "accuracy":
        return points
    return relative * abs(pick_mean) if pick_mean else relative


def compare(a: Contender, b: Contender, direction: str, n_val: int | None,
            noise: Noise | None = None) -> Paired:
    """A against B on their common seeds (positive = A better), the spread moderated by ``noise``."""
    seeds = sorted(set(a.results) & set(b.results))
    return paired(a.values(seeds), b.values(seeds), direction, n_val=n_val, noise=noise)


class Race:
    """Run the race (see the module docstring); ``run`` returns the contenders with their results."""

    def __init__(self, contenders: list[Contender], seeds: list[int], *, direction: str, n_val: int | None,
                 margin: Callable[[float | None], float], min_seeds: int, max_seeds: int, workers: int,
                 epochs: int, submit: Callable[[list[tuple[Contender, int]]], None],
                 budget: Budget | None = None, allowance_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.contenders, self.seeds = contenders, seeds
        self.clock = clock  # the allowance's clock (a budget keeps its own)
        self.direction, self.n_val, self.margin = direction, n_val, margin
        self.min_seeds, self.max_seeds = min_seeds, max(min_seeds, max_seeds)
        self.slow_max_seeds = min(min_seeds + 1, self.max_seeds)  # the cap of one ``SLOW`` times the cheapest
        self.workers, self.epochs, self.submit, self.budget = max(1, workers), epochs, submit, budget
        self.rounds = 0
        # Without a budget, the race may spend ``allowance_s`` (the search's time): a soft limit,
        # the two decisive contenders always get ``min_seeds``.
        self.soft_deadline = clock() + allowance_s if allowance_s is not None and budget is None else None

    # --- the race ----------------------------------------------------------------------------

    def run(self) -> list[Contender]:
        for k, seed in enumerate(self.seeds):
            entrants = self.entrants(k)
            entrants = self.affordable(entrants, k)
            if not entrants:
                break
            for c in entrants:
                c.take(seed)  # a run made already counts
            batch = [(c, seed) for c in entrants if seed not in c.results]
            if batch:
                self.submit(batch)
            self.rounds = k + 1
            if k + 1 >= 2:
                self.drop_beaten()
            if k + 1 >= self.min_seeds and self.decided():
                break
        return self.contenders

    def racing(self) -> list[Contender]:
        return [c for c in self.contenders if c.status == Standing.RACING]

    def entrants(self, k: int) -> list[Contender]:
        """Who runs round ``k``: everyone racing until ``min_seeds``; then, while their verdict is
        a tie, the two the verdict is decided between (the best tuned config, the best
        baseline), each under its seed cap."""
        racing = self.racing()
        if k < self.min_seeds:
            return racing
        pair = [c for c in (self.best(baseline=False), self.best(baseline=True)) if c is not None]
        if len(pair) < 2:
            return []
        cheapest = min((c.s_per_epoch for c in racing if c.s_per_epoch), default=None)
        for c in pair:
            slow = cheapest and c.s_per_epoch and c.s_per_epoch > SLOW * cheapest
            if len(c.results) >= (self.slow_max_seeds if slow else self.max_seeds):
                return []  # one of the two has all its seeds: more for the other pairs nothing
        return pair

    def leader(self) -> Contender | None:
        """The best mean among the racing contenders that completed every seed they ran."""
        done = [c for c in self.racing() if c.complete() and c.mean() is not None]
        if not done:
            return None
        s = sign(self.direction)
        return max(done, key=lambda c: (s * (c.mean() or 0.0), c.baseline))

    def drop_beaten(self) -> None:
        """Drop the clearly beaten, never the best tuned config nor the best baseline: the
        verdict is decided between those two."""
        leader = self.leader()
        if leader is None:
            return
        keep = {id(c) for c in (leader, self.best(baseline=True), self.best(baseline=False)) if c is not None}
        for c in self.racing():
            if id(c) in keep:
                continue
            cmp = compare(c, leader, self.direction, self.n_val, self.noise())
            deltas, ci = cmp.deltas, cmp.ci95
            if not c.complete():
                c.status, c.reason = Standing.DROPPED, f"failed on a seed while {leader.name} completed every seed"
                continue
            m = self.margin(leader.mean())
            far = len(deltas) >= 2 and all(d < -2 * m for d in deltas)
            if len(deltas) < DROP_AFTER and not far:
                continue  # too few seeds to drop on an interval or a mean
            if far or (ci is not None and ci[1] < 0):
                c.status = Standing.DROPPED
                c.reason = (f"beaten by {leader.name} after {len(deltas)} seeds "
                            f"(mean {cmp.mean:+.4g}, ci95 {_fmt(ci)})")
            elif cmp.mean is not None and cmp.mean < -m:
                # Behind by more than the margin: on this evidence neither the pick nor a config
                # equivalent to it; more seeds would go where the decision is not.
                c.status = Standing.DROPPED
                c.reason = (f"behind {leader.name} by more than the margin {m:.4g} after {len(deltas)} seeds "
                            f"(mean {cmp.mean:+.4g})")

    def noise(self) -> Noise | None:
        """The seed-to-seed noise of a paired difference in this race (``Noise.pooled``): every
        contender's differences against the one with the most seeds."""
        ref = max(self.contenders, key=lambda c: len(c.results), default=None)
        if ref is None:
            return None
        return Noise.pooled(compare(c, ref, self.direction, self.n_val).deltas for c in self.contenders
                            if c is not ref)

    def best(self, *, baseline: bool) -> Contender | None:
        """The best mean among the racing baselines (or tuned configs) that completed every seed."""
        pool = [c for c in self.racing() if c.baseline == baseline and c.mean() is not None and c.complete()]
        s = sign(self.direction)
        return max(pool, key=lambda c: s * (c.mean() or 0.0), default=None)

    def decided(self) -> bool:
        """The verdict of the best tuned config against the best baseline is not a tie."""
        tuned, base = self.best(baseline=False), self.best(baseline=True)
        if tuned is None or base is None:
            return True  # nothing left to decide between
        return compare(tuned, base, self.direction, self.n_val, self.noise()).verdict in ("better", "worse")

    # --- the budget --------------------------------------------------------------------------

    def run_cost(self, c: Contender) -> float:
        """Expected seconds of one run of ``c``."""
        known = [x.s_per_epoch for x in self.contenders if x.s_per_epoch]
        speed = c.s_per_epoch or (statistics.median(known) if known else 0.0)
        return run_cost(self.epochs, speed)

    def ahead(self, k: int) -> list[int]:
        """The seeds of the rounds from ``k`` until every contender has ``min_seeds`` (at least round ``k``'s)."""
        return self.seeds[k:max(k + 1, self.min_seeds)]

    def runs_ahead(self, c: Contender, k: int) -> int:
        """How many of those ``c`` must still run: a seed whose run was made already costs nothing."""
        return sum(not c.has(s) for s in self.ahead(k))

    def cost_ahead(self, entrants: list[Contender], k: int) -> float:
        """Seconds the rounds from ``k`` take with ``entrants``: each round's makespan over those
        that run it."""
        return sum(self.makespan([c for c in entrants if not c.has(s)]) for s in self.ahead(k))

    def makespan(self, entrants: list[Contender]) -> float:
        """Seconds a round of ``entrants`` takes on the workers (longest run first, each to the
        least loaded worker)."""
        loads = [0.0] * self.workers
        for cost in sorted((self.run_cost(c) for c in entrants), reverse=True):
            loads[loads.index(min(loads))] += cost
        return max(loads)

    def left(self) -> float | None:
        """Seconds the race may still spend: the budget's (hard), the allowance's (soft), or None."""
        if self.budget is not None:
            return self.budget.left()
        if self.soft_deadline is not None:
            return self.soft_deadline - self.clock()
        return None

    def affordable(self, entrants: list[Contender], k: int) -> list[Contender]:
        """``entrants`` less the costliest (the seconds of the runs each still needs), until the
        rounds still needed fit in what is left. The essential contenders (the search's best
        config, the best-screened default) and the two the verdict is between so far (the best
        tuned config, the best baseline) leave last, and a soft allowance never leaves them out."""
        left = self.left()
        if left is None:
            return entrants
        decisive = {id(c) for c in (self.best(baseline=False), self.best(baseline=True)) if c is not None}

        def kept(c: Contender) -> bool:
            return c.essential or id(c) in decisive

        what = "the budget" if self.budget is not None else "the confirmation's allowance (the search's time)"

        def leave(c: Contender) -> None:
            if len(c.results) < self.min_seeds:
                c.status = Standing.UNAFFORDABLE
                c.reason = (f"not confirmed: {self.runs_ahead(c, k)} more run(s) of {self.run_cost(c):.1f}s do "
                            f"not fit in the {max(0.0, left):.0f}s left of {what}")
                if self.budget is not None:
                    self.budget.note(f"{c.name}: {c.reason}")

        out = sorted(entrants, key=lambda c: (not kept(c), self.runs_ahead(c, k) * self.run_cost(c)))
        if self.budget is not None:
            # One the budget cannot afford even alone leaves on its own, essential or not: kept to
            # the last, it would take every cheaper rival out before it, and the verdict with them.
            for c in [c for c in out if self.runs_ahead(c, k) * self.run_cost(c) > left]:
                out.remove(c)
                leave(c)
        while out and self.cost_ahead(out, k) > left:
            if self.budget is None and kept(out[-1]):
                break
            leave(out.pop())  # the costliest first, the essential ones last
        if k >= self.min_seeds and len(out) < 2:
            return []
        return out


def _fmt(ci: tuple[float, float] | None) -> str:
    return "none" if ci is None else f"[{ci[0]:+.4g}, {ci[1]:+.4g}]"


def race_jobs(spec: StudySpec, study: optuna.Study, run: RunRef, pool: WorkerPool,
              on_progress: Callable[[SearchProgress], None] | None, progress: SearchProgress
              ) -> Callable[[list[tuple[Contender, int]]], None]:
    """A ``submit`` for ``Race``: each (contender, seed) as a Ray job on the pool (nested MLflow
    runs tagged ``autoopt.kind`` = ``confirm`` or ``baseline``); results land in the contender."""
    space = spec.search_space()

    def submit(batch: list[tuple[Contender, int]]) -> None:
        jobs, owner = [], {}
        for c, seed in batch:
            kind = RunKind.BASELINE if c.baseline else RunKind.CONFIRM
            fam = space.families.get(c.cfg.optimizer) or family(c.cfg.optimizer)
            tags = {STUDY_TAG: study.study_name, KIND_TAG: kind, CANDIDATE_TAG: c.name,
                    FAMILY_TAG: c.cfg.optimizer, SEED_TAG: seed}
            if c.number is not None:
                tags[SOURCE_TRIAL_TAG] = c.number
            job = Job(spec.task, spec.placement.data_dir, c.cfg, spec.epochs, seed, spec.batch_size,
                      spec.placement.compile, evaluate_test=True, tracking=run,
                      run_name=f"{kind}-{c.name}-s{seed}", tags=tags, family=fam)
            jobs.append(job)
            owner[id(job)] = c
        progress.total = progress.complete + len(jobs)

        def on_result(job: Job, result: JobResult) -> None:
            c = owner[id(job)]
            c.results[job.seed] = result
            if result.s_per_epoch:
                runs = [r.s_per_epoch for r in c.results.values() if r.s_per_epoch]
                c.s_per_epoch = statistics.fmean(runs)
            progress.complete += 1
            progress.finished_here += 1
            progress.last = f"confirm {c.name} seed {job.seed}"
            if on_progress is not None:
                on_progress(progress)

        run_jobs(pool, jobs, on_result)

    return submit
