"""Confirmation over seeds against published defaults: a paired verdict, and what it costs.

The best trial of a search won once, on one seed. Here the top-k distinct configs and the
baselines are retrained at the full epoch budget on the same seeds, as a race
(``autoopt.decide.race``: clearly beaten configs leave early, seeds go to close ones while the verdict
is undecided), scored on validation and test. The baselines are the tutorial's three defaults
(SGD, Adam, RMSprop) plus the published defaults that screened best in the study's portfolio
trials, at least two of them modern families.

A run already made counts as a seed (common random numbers: the race adds seeds rather than
repeating them). A contender's complete screen or search trial of exactly its config, at the
race's epochs and batch size, with its seed and test score recorded (``made_runs``), is its run
on that seed; the race's seeds start with those (``race_seeds``: the screen's one seed first,
which every published default screened to the end shares, then each tuned config's own
trial's, best first), and its rivals run them, so each pairs. The race makes fewer runs for the
same evidence: every seed it plays is paired as before, and only seeds both contenders have are
compared.

The rule on selection: a tuned config's own trial won the search on its seed, a screened
default's screen run placed it among the baselines, so that run is biased in its favour. It
counts, but a contender counts at most one run already made: with two seeds or more (every
verdict needs two) each contender is scored on at least one run the race made itself, and a
``better`` verdict needs the tuned config to have one on a seed it is compared on (``choose``).
The JSON says which seeds came from which trial (each entry's ``reused``; ``race.reused`` counts
them, apart from the race's own ``runs`` and ``epochs``).

The best tuned config is compared with the best baseline seed by seed on validation (see
``autoopt.decide.verdict``): only a ``better`` verdict makes it the recommendation; on a ``tie`` or
``worse`` the baseline is. Validation picks, test reports: the test split never takes part in
a choice, so the reported test numbers stay an honest estimate.

Every entry also records its cost: seconds per epoch and the seconds it took to first reach
the best baseline's final validation metric (``time_to_baseline_s``, AlgoPerf's
time-to-result). ``max_slowdown`` leaves configs slower than that many times the fastest
baseline out of the pick (they are still shown, marked ``excluded``).

A cheaper alternative is named (``cheapest_equivalent``) only when it is at least ``CHEAPER``
(1.25) times cheaper per epoch than the pick (``cheaper_factor`` in the JSON, beside
``equivalence_margin``) and shown equivalent to the pick: its paired 95% interval against the
pick lies above ``-margin`` (a non-inferiority test), with the margin one point of accuracy, or
1% of the pick's value for another metric (RMSE). A tie on three seeds is no such evidence: the
field is then null, with the reason.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from autoopt.base.direction import ordered
from autoopt.budget import MIN_SEEDS, Budget
from autoopt.decide.race import SLOW, Contender, Race, Standing, margin_for, race_jobs
from autoopt.decide.verdict import Noise, paired
from autoopt.dispatch import JobResult, JobState, SearchProgress, WorkerPool
from autoopt.evidence import (
    Alternative,
    Baseline,
    Cost,
    Entry,
    Improvement,
    Paired,
    RaceStatus,
    RaceSummary,
    Reused,
    Stats,
    VersusPick,
)
from autoopt.recommendation import Recommendation
from autoopt.space import PORTFOLIO_PRIOR, TrialConfig, default_params, family, preset
from autoopt.spec import StudySpec
from autoopt.study import full_trials
from autoopt.study.record import CONFIRM_OFFSET, TrialKind, TrialRecord, record
from autoopt.tasks.loop import UserLoop
from autoopt.tracking import RunRef

if TYPE_CHECKING:
    import optuna

    from autoopt.data import Split
    from autoopt.tasks import Loaded, Task

log = logging.getLogger(__name__)

# The tutorial's three at their published defaults (the registry's ``default_params``): constant
# learning rate, no schedule, no clipping. Named ``<family>_tutorial``.
TUTORIAL = ("sgd", "adam", "rmsprop")
BASELINES: dict[str, TrialConfig] = {f"{name}_tutorial": TrialConfig(name, default_params(name)) for name in TUTORIAL}
MODERN = frozenset(preset("modern"))  # the registry's modern families
SCREENED_BASELINES = 3  # best-screened published defaults beside the tutorial's three
MIN_MODERN = 2  # of which at least this many modern families
EXTRA_SEEDS = 2  # seeds the race may add to close contenders beyond the first ones
RACE_ROUNDS = 2  # the race's seeds, in multiples of the seeds a contender may have (see ``confirm``)
ALLOWANCE_FLOOR_S = 60.0  # without a budget, the race may spend at least this, or what the search took
EQUIVALENCE_POINTS = 0.01  # an accuracy within one point of the pick's is equivalent
EQUIVALENCE_RELATIVE = 0.01  # any other metric (RMSE) within 1% of the pick's
CHEAPER = 1.25  # a cheaper alternative costs at most 1/CHEAPER of the pick's seconds per epoch


def _key(cfg: TrialConfig) -> str:
    return json.dumps(cfg.to_dict(), sort_keys=True)


def _available(name: str) -> bool:
    try:
        return family(name).available()
    except Exception:  # a family this process does not know (a study run elsewhere)
        return False


def screened(study: optuna.Study, direction: str) -> list[TrialConfig]:
    """The study's screened configs (``TrialKind.SCREEN``), one per family, best
    screened first: complete trials by value, then pruned ones by the rung they reached (the
    screen's successive halving), then by their value there."""
    complete: list[tuple[float, dict[str, Any]]] = []
    pruned: dict[int, list[tuple[float, dict[str, Any]]]] = {}
    screen = [t for t in study.get_trials(deepcopy=False) if record(t).kind == TrialKind.SCREEN]
    for t in full_trials(study, screen):  # whole: their configs
        rec = record(t)
        if rec.kind != TrialKind.SCREEN or rec.config is None:
            continue
        if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value):
            complete.append((t.value, rec.config))
        elif t.state.name == "PRUNED" and t.intermediate_values:
            step = max(t.intermediate_values)
            if math.isfinite(t.intermediate_values[step]):
                pruned.setdefault(step, []).append((t.intermediate_values[step], rec.config))
    ranked = ordered(complete, lambda p: p[0], direction)
    for step in sorted(pruned, reverse=True):
        ranked += ordered(pruned[step], lambda p: p[0], direction)
    out: list[TrialConfig] = []
    for _, config in ranked:
        if all(c.optimizer != config["optimizer"] for c in out):
            out.append(TrialConfig(**config))
    return out


def baselines(study: optuna.Study | None = None, direction: str = "maximize", slow: frozenset[str] = frozenset()
              ) -> dict[str, TrialConfig]:
    """The tutorial's three defaults plus ``SCREENED_BASELINES`` published defaults: the best
    screened in ``study``'s portfolio, at least ``MIN_MODERN`` of them modern families (filled
    from ``PORTFOLIO_PRIOR`` where the portfolio screened too few). Named ``<family>_default``.
    A family in ``slow`` stands only if it screened best: a slow one must earn its place."""
    tutorial = {_key(c) for c in BASELINES.values()}
    ranked = [c for c in (screened(study, direction) if study is not None else [])
              if _key(c) not in tutorial and _available(c.optimizer)]
    extras: list[TrialConfig] = ranked[:1]
    ranked = ranked[:1] + [c for c in ranked[1:] if c.optimizer not in slow]

    def n_modern() -> int:
        return sum(c.optimizer in MODERN for c in extras)

    for c in ranked[1:]:  # the best-screened modern ones
        if n_modern() >= MIN_MODERN:
            break
        if c.optimizer in MODERN:
            extras.append(c)
    for name in PORTFOLIO_PRIOR:  # the portfolio screened too few modern families
        if n_modern() >= MIN_MODERN:
            break
        if name in MODERN and name not in slow and all(c.optimizer != name for c in extras) and _available(name):
            extras.append(TrialConfig(name, default_params(name)))
    for c in ranked:  # then the next best screened, whatever the family
        if len(extras) >= SCREENED_BASELINES:
            break
        if all(x.optimizer != c.optimizer for x in extras):
            extras.append(c)
    return {**BASELINES, **{f"{c.optimizer}_default": c for c in extras}}


def top_configs(study: optuna.Study, k: int, direction: str, exclude: set[str] | frozenset[str] = frozenset()
                ) -> list[tuple[int, TrialConfig]]:
    """The ``k`` best complete trials with distinct configs, best first; configs whose key is in
    ``exclude`` (the baselines: they are confirmed as such) are skipped."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    done = [(value, t.number, config) for t in full_trials(study, complete)  # whole: their configs
            if (value := t.value) is not None and (config := record(t).config) is not None]
    seen: set[str] = set(exclude)
    out = []
    for _, number, config in ordered(done, lambda d: d[0], direction):
        cfg = TrialConfig(**config)
        if _key(cfg) not in seen:
            seen.add(_key(cfg))
            out.append((number, cfg))
        if len(out) == k:
            break
    return out


def confirmation_seeds(base_seed: int, n: int) -> list[int]:
    """The confirmation's fresh seeds: the same for every config and baseline, and apart from the
    search's seeds (``base_seed + trial number``). The screen trains every published default on
    the first (``autoopt.study.record.trial_seed``)."""
    return [base_seed + CONFIRM_OFFSET + i for i in range(n)]


@dataclass(frozen=True)
class Made:
    """A run the study made already of a contender's config: trial ``trial``'s, on ``seed``."""

    seed: int
    trial: int
    result: JobResult


def _stands_in(rec: TrialRecord, spec: StudySpec, test_key: str | None) -> bool:
    """Whether ``rec`` is a run the race would make: complete on every one of its epochs (not
    pruned, failed nor cut short), at its batch size, its seed recorded, and its test score
    where the race's runs report one."""
    return (rec.state.name == "COMPLETE" and rec.config is not None and rec.seed is not None
            and rec.value is not None and math.isfinite(rec.value) and len(rec.history) == spec.epochs
            and max(rec.intermediate, default=0) == spec.epochs and rec.batch_size == spec.batch_size
            and (test_key is None or test_key in rec.test))


def made_runs(study: optuna.Study, entrants: list[Contender], spec: StudySpec, test_key: str | None
              ) -> dict[str, Made]:
    """Per contender, the run the study made already of exactly its config that stands in for a
    race run (``_stands_in``): its own trial's first, else the earliest (the screen's). One at
    most: the module's rule on selection."""
    by_key: dict[str, list[TrialRecord]] = {}
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    for t in full_trials(study, complete):  # whole: their configs, seeds and histories
        rec = record(t)
        if rec.config is not None and _stands_in(rec, spec, test_key):
            by_key.setdefault(_key(TrialConfig(**rec.config)), []).append(rec)
    out: dict[str, Made] = {}
    for c in entrants:
        runs = sorted(by_key.get(_key(c.cfg), []), key=lambda r: (r.number != c.number, r.number))
        if runs and (r := runs[0]).seed is not None and r.value is not None:
            out[c.name] = Made(r.seed, r.number, JobResult(JobState.COMPLETE, r.value, list(r.history),
                                                           dict(r.test), train_s=r.train_s or 0.0))
    return out


def race_seeds(base_seed: int, made: list[Made], n: int) -> list[int]:
    """The race's ``n`` seeds: first those of runs already made, the most shared first (the
    screen's), then in the contenders' order (the best tuned config's own trial first); then
    fresh ones (``confirmation_seeds``). Each costs the contenders without a run on it what a
    fresh seed would, and spares the one with."""
    seeds = [m.seed for m in made]
    out = sorted(set(seeds), key=lambda s: (-seeds.count(s), seeds.index(s)))[:n]
    fresh = [s for s in confirmation_seeds(base_seed, n + len(out)) if s not in out]
    return out + fresh[:n - len(out)]


def rank_key(entry: Entry, direction: str, *, baseline: bool = False, on: frozenset[int] = frozenset()) -> tuple:
    """Sort key, best first: configs that completed on every seed before those that failed on
    some (a mean over the seeds that survived flatters them), then by mean validation metric
    (over the seeds ``on`` where given and the entry has them all: the seeds its rivals share),
    then a baseline before a tuned config it ties with (the simpler choice)."""
    if entry.val.mean is None:
        return (2, 0.0, 1)
    mean = entry.val.mean
    if on:
        values = by_seed(entry)
        shared = [v for s in on if (v := values.get(s)) is not None]
        mean = statistics.fmean(shared) if len(shared) == len(on) else mean
    sign = -1.0 if direction == "maximize" else 1.0
    return (0 if entry.val.all_complete else 1, round(sign * mean, 9), 0 if baseline else 1)


def by_seed(entry: Entry, split: str = "val") -> dict[int, float | None]:
    """An entry's ``split`` values by seed (None where a run did not finish)."""
    return dict(zip(entry.seeds or range(len(getattr(entry, split).values)), getattr(entry, split).values,
                    strict=True))


def finished_seeds(entry: Entry) -> set[int]:
    """The seeds on which ``entry`` has a finished run."""
    return {s for s, v in by_seed(entry).items() if v is not None}


def _left_as(entry: Entry, standing: Standing) -> bool:
    """Whether the race left ``entry`` out as ``standing`` (dropped, or unaffordable)."""
    return entry.race is not None and entry.race.status == standing


def shared_seeds(entries: list[Entry]) -> frozenset[int]:
    """The seeds on which every one of ``entries`` has a finished run."""
    done = [finished_seeds(e) for e in entries]
    return frozenset(set.intersection(*done)) if done else frozenset()


Table = dict[str, Entry]


def mark_cost(table: Table, bases: list[str], max_slowdown: float | None) -> tuple[Table, str | None]:
    """Each entry with its ``relative`` cost (its ``s_per_epoch`` over the fastest baseline's) and,
    with ``max_slowdown``, ``excluded`` on those slower than that; and the fastest baseline."""
    timed = [n for n in bases if table[n].s_per_epoch]
    fastest = min(timed, key=lambda n: table[n].s_per_epoch or 0.0, default=None)
    base_speed = table[fastest].s_per_epoch if fastest else None
    out: Table = {}
    for name, e in table.items():
        relative = e.s_per_epoch / base_speed if e.s_per_epoch and base_speed else None
        excluded = (f"slower than {max_slowdown:g}x the fastest baseline ({fastest}): {relative:.2f}x"
                    if max_slowdown is not None and relative is not None and relative > max_slowdown else None)
        out[name] = e.model_copy(update={"relative": relative, "excluded": excluded})
    return out, fastest


@dataclass(frozen=True)
class Pick:
    """What ``choose`` decided: the recommendation, the best tuned config and best baseline
    among those allowed, and the paired comparison of the two on validation."""

    winner: str | None
    tuned: str | None
    baseline: str | None
    paired: Paired | None


def align(a: Entry, b: Entry, split: str = "val") -> tuple[list[float | None], list[float | None]]:
    """Two entries' ``split`` values over the union of their seeds (None where one did not run
    it): what ``paired`` compares, seed by seed."""
    va, vb = by_seed(a, split), by_seed(b, split)
    seeds = sorted(va.keys() | vb.keys())
    return [va.get(s) for s in seeds], [vb.get(s) for s in seeds]


def compare(a: Entry, b: Entry, direction: str, *, split: str = "val", n_val: int | None = None,
            noise: Noise | None = None) -> Paired:
    """The paired comparison of ``a`` against ``b`` on ``split`` over their seeds, its spread
    never under ``noise`` (``noise_of``)."""
    return paired(*align(a, b, split), direction, n_val=n_val, noise=noise)


def noise_of(table: Table, split: str = "val", n_val: int | None = None) -> Noise | None:
    """The seed-to-seed noise of a paired difference on ``split`` (``Noise.pooled``): every
    entry's differences against the entry with the most finished seeds."""
    def finished(e: Entry) -> int:
        return sum(v is not None for v in getattr(e, split).values)

    ref = max(table.values(), key=finished, default=None)
    if ref is None:
        return None
    return Noise.pooled(paired(*align(e, ref, split), "maximize", n_val=n_val).deltas
                        for e in table.values() if e is not ref)


def fresh_paired(tuned: Entry, base: Entry) -> list[int]:
    """The seeds both completed on which the tuned config's run is the race's own, not a trial
    the study made already (which may be the run it won the search on)."""
    made = {r.seed for r in tuned.reused}
    return sorted((finished_seeds(tuned) & finished_seeds(base)) - made)


def choose(table: Table, candidates: list[str], bases: list[str], direction: str, *,
           n_val: int | None = None) -> Pick:
    """The best tuned config and the best baseline by mean validation metric over the seeds they
    all share (the race gives some more seeds than others: a mean over more seeds is no match for
    one over fewer), entries marked ``excluded`` left out, and those the race dropped (beaten by
    its leader or behind it by more than the margin); compared seed by seed. The tuned one is the
    recommendation only when the verdict is ``better``, which needs a seed of the comparison on
    which the tuned config ran in the race (its search run alone is no evidence for it)."""
    def best(names: list[str], baseline: bool) -> str | None:
        ok = [n for n in names if table[n].val.mean is not None and not table[n].excluded]
        racing = [n for n in ok if not _left_as(table[n], Standing.DROPPED)] or ok
        # the seeds of those the race confirmed: one it left unaffordable, or one that failed on a
        # seed, ranks on its own mean rather than narrowing everyone's to its few seeds
        on = shared_seeds([table[n] for n in racing
                           if table[n].val.all_complete and not _left_as(table[n], Standing.UNAFFORDABLE)])
        return min(racing, key=lambda n: rank_key(table[n], direction, baseline=baseline, on=on), default=None)

    tuned, base = best(candidates, False), best(bases, True)
    if tuned is None or base is None:
        return Pick(tuned or base, tuned, base, None)
    comparison = compare(table[tuned], table[base], direction, n_val=n_val, noise=noise_of(table, n_val=n_val))
    if not table[tuned].val.all_complete and comparison.verdict == "better":
        # it failed on a seed: not better than a baseline that did not
        comparison = comparison.model_copy(update={"verdict": "tie"})
    if comparison.verdict == "better" and not fresh_paired(table[tuned], table[base]):
        comparison = comparison.model_copy(update={"verdict": "tie"})
    return Pick(tuned if comparison.verdict == "better" else base, tuned, base, comparison)


def improvement(table: Table, pick: Pick, direction: str, metric: str, *,
                split: str = "test", n_test: int | None = None) -> Improvement | None:
    """What tuning bought over the best baseline.

    ``delta`` is the recommendation's mean ``metric`` (test) minus the baseline's, signed so that
    positive means better, 0 when the baseline is the recommendation; ``spread`` the larger of
    the two standard deviations over the seeds. ``verdict`` and ``paired`` are the validation
    comparison of the best tuned config with the best baseline that decided the pick;
    ``test_paired`` the same comparison on ``metric``, for the record."""
    if pick.baseline is None or pick.winner is None:
        return None
    w, b = getattr(table[pick.winner], split), getattr(table[pick.baseline], split)
    if w.mean is None or b.mean is None:
        return None
    sign = 1.0 if direction == "maximize" else -1.0
    test_paired = (compare(table[pick.tuned], table[pick.baseline], direction, split=split, n_val=n_test,
                           noise=noise_of(table, split, n_test))
                   if pick.tuned is not None and pick.paired is not None else None)
    return Improvement(metric=metric, delta=sign * (w.mean - b.mean), spread=max(w.std or 0.0, b.std or 0.0),
                       versus=pick.baseline, tuned=pick.tuned, recommended=w.mean, baseline=b.mean,
                       verdict=pick.paired.verdict if pick.paired else None, paired=pick.paired,
                       test_paired=test_paired)


def time_to(runs: list[JobResult | None], target: float, metric: str, direction: str) -> float | None:
    """Median over seeds of the seconds until ``metric`` first reached ``target`` (a seed that
    never did, or did not finish, counts as never); None when most seeds never did."""
    times = [r.time_to(target, metric, direction) if r is not None else None for r in runs]
    finite = sorted(t for t in times if t is not None)
    ranked = finite + [math.inf] * (len(times) - len(finite))
    if not ranked:
        return None
    mid = statistics.median(ranked)
    return None if math.isinf(mid) else mid


def cheapest_equivalent(table: Table, winner: str) -> tuple[Alternative | None, str]:
    """The cheapest entry (not excluded) at least ``CHEAPER`` times cheaper per epoch than the
    pick (a timing's noise is not a saving) and shown equivalent to
    it (``versus_pick.equivalent``: its paired interval lies above -margin), and why; or None and
    why none is named (a tie on few seeds is not an equivalence)."""
    speed = table[winner].s_per_epoch
    cheaper = [e for n, e in table.items() if n != winner and not e.excluded and e.s_per_epoch
               and speed and e.s_per_epoch * CHEAPER <= speed and e.versus_pick]
    if not cheaper:
        return None, f"no confirmed config is {CHEAPER:g}x cheaper per epoch than the pick"
    equivalent = [e for e in cheaper if e.versus_pick and e.versus_pick.equivalent]
    if not equivalent:
        return None, (f"none of the {len(cheaper)} cheaper configs is shown within the margin of the pick: "
                      "its paired interval reaches below -margin (more seeds may show it)")
    e = min(equivalent, key=lambda e: e.s_per_epoch or 0.0)
    margin = e.versus_pick.margin if e.versus_pick else None
    return (Alternative(name=e.name, optimizer=e.optimizer, s_per_epoch=e.s_per_epoch, relative=e.relative,
                        versus_pick=e.versus_pick),
            f"its paired interval against the pick lies above -{margin or 0.0:.4g}")


def entry(name: str, number: int | None, cfg: TrialConfig, seeds: list[int], runs: dict[int, JobResult],
          test_key: str | None, *, baseline: bool = False, race: RaceStatus | None = None,
          made: dict[int, int] | None = None) -> Entry:
    """One confirmed config or baseline: per-seed val and test, failures, seconds per epoch, and
    the seeds whose run is a trial the study made already (``made``: seed -> trial)."""
    per_seed = [runs.get(s) for s in seeds]
    done = [r if r is not None and r.state == JobState.COMPLETE else None for r in per_seed]
    val = [r.value if r else None for r in done]
    test = [r.test.get(test_key) if r else None for r in done] if test_key else list(val)
    speeds = [r.s_per_epoch for r in done if r is not None and r.s_per_epoch]
    record = Baseline if baseline else Entry
    return record(name=name, trial_number=number, **cfg.to_dict(), seeds=tuple(seeds), val=Stats.of(val),
                  test=Stats.of(test), s_per_epoch=statistics.fmean(speeds) if speeds else None,
                  failed=tuple((r.reason if r else None) or "no result" for r in per_seed
                               if r is None or r.state != JobState.COMPLETE), race=race,
                  reused=tuple(Reused(seed=s, trial=t) for s, t in sorted((made or {}).items()) if s in seeds))


def _counts(split: Split | None, task: Task) -> int | None:
    """How many labels an accuracy on ``split`` counts (None for a metric without counts): one
    per row, or several where a row holds several (a label per token)."""
    return split.y.numel() if split is not None and task.score == "accuracy" else None


def _split_counts(task: Loaded, split: str) -> int | None:
    """``_counts`` of a task's split; None for a user's loop (autoopt does not see its data)."""
    return None if isinstance(task, UserLoop) else _counts(getattr(task, split), task)


def equivalence_margin(task: Loaded, pick_mean: float | None) -> float:
    """``EQUIVALENCE_POINTS`` of an accuracy, else ``EQUIVALENCE_RELATIVE`` of the pick's mean."""
    return margin_for(task.score, pick_mean, points=EQUIVALENCE_POINTS, relative=EQUIVALENCE_RELATIVE)


def judge(table: Table, results: dict[str, dict[int, JobResult]], candidates: list[str],
          bases: list[str], task: Loaded, max_slowdown: float | None) -> tuple[Table, Pick]:
    """The entries with their cost, ``time_to_baseline_s`` and paired comparison against the pick
    (with the equivalence margin and whether each is shown within it); and the pick."""
    table, _ = mark_cost(table, bases, max_slowdown)
    n_val = _split_counts(task, "val")
    pick = choose(table, candidates, bases, task.direction, n_val=n_val)
    target = table[pick.baseline].val.mean if pick.baseline else None
    margin = equivalence_margin(task, table[pick.winner].val.mean) if pick.winner else None
    noise = noise_of(table, n_val=n_val)
    out: Table = {}
    for name, e in table.items():
        runs = [results[name].get(s) for s in e.seeds]
        runs = [r if r is not None and r.state == JobState.COMPLETE else None for r in runs]
        update: dict[str, Any] = {"time_to_baseline_s": (time_to(runs, target, task.metric, task.direction)
                                                          if target is not None else None)}
        if pick.winner is not None and margin is not None:
            vs = compare(e, table[pick.winner], task.direction, n_val=n_val, noise=noise)
            update["versus_pick"] = VersusPick(verdict=vs.verdict, mean=vs.mean, ci95=vs.ci95, n=vs.n, margin=margin,
                                               equivalent=vs.ci95 is not None and vs.ci95[0] > -margin)
        out[name] = e.model_copy(update=update)
    return out, pick


def contenders(spec: StudySpec, study: optuna.Study, task: Loaded) -> list[Contender]:
    """The race's contenders: the top tuned configs, then the baselines (none twice: a baseline's
    config is confirmed as the baseline); with the seconds per epoch the study measured for their
    families. Cost-aware: a family more than ``SLOW`` times the median family's seconds per
    epoch enters only as the search's best config or the best-screened default."""
    speed = family_speeds(study)
    typical = statistics.median(speed.values()) if speed else None
    slow = frozenset(f for f, v in speed.items() if typical and v > SLOW * typical)
    bases = baselines(study, task.direction, slow)
    exclude = {_key(cfg) for cfg in bases.values()}
    ranked = top_configs(study, 4 * spec.confirm_top, task.direction, exclude)
    tuned = (ranked[:1] + [(n, c) for n, c in ranked[1:] if c.optimizer not in slow])[:spec.confirm_top]
    out = [Contender(f"trial_{n}", n, cfg, speed.get(cfg.optimizer), essential=i == 0)
           for i, (n, cfg) in enumerate(tuned)]
    first_screened = next((name for name in bases if name not in BASELINES), None)
    out += [Contender(name, None, cfg, speed.get(cfg.optimizer), essential=name == first_screened)
            for name, cfg in bases.items()]
    return out


def family_speeds(study: optuna.Study) -> dict[str, float]:
    """Median seconds per epoch each family took in the study's trials."""
    by: dict[str, list[float]] = {}
    for t in full_trials(study):  # whole, a chunk at a time: their configs name the family
        rec = record(t)
        if rec.s_per_epoch and rec.family:
            by.setdefault(rec.family, []).append(rec.s_per_epoch)
    return {k: statistics.median(v) for k, v in by.items()}


def confirm(spec: StudySpec, study: optuna.Study, task: Loaded, pool: WorkerPool, run: RunRef, rec: Recommendation,
            *, on_progress: Callable[[SearchProgress], None] | None = None, budget: Budget | None = None,
            search_s: float | None = None) -> Recommendation:
    """Race the top configs and the baselines over seeds (``autoopt.decide.race``); return the
    recommendation with ``confirmation``, ``baselines``, ``improvement``, ``cost`` and
    ``cheapest_equivalent`` filled in. Without a ``budget`` the race may spend about what the
    screen and the search took (``search_s``, at least ``ALLOWANCE_FLOOR_S``)."""
    entrants = contenders(spec, study, task)
    min_seeds = MIN_SEEDS if budget is not None else spec.confirm_seeds
    # One seed decides nothing (autoopt.decide.verdict) and asks for no more: --confirm-seeds 1 is a look.
    max_seeds = min_seeds + EXTRA_SEEDS if min_seeds > 1 else min_seeds
    test_key = f"test_{task.score}" if task.reports_test else None
    # A user's loop that never reports a test score makes no race run with one either.
    made = made_runs(study, entrants, spec, None if isinstance(task, UserLoop) else test_key)
    # Rounds for the pair the verdict is between: each of its two has at most ``max_seeds``
    # (``Race.entrants``), and the pair may change as the means move (ties are common on a small
    # validation set), so the race has seeds for more rounds than that.
    seeds = race_seeds(spec.seed, list(made.values()), RACE_ROUNDS * max_seeds)
    for c in entrants:
        if (m := made.get(c.name)) is not None and m.seed in seeds:
            c.offer(m.seed, m.trial, m.result)
    n_val = _split_counts(task, "val")
    offered = sum(s in seeds[:min_seeds] for c in entrants for s in c.offered)
    progress = SearchProgress(total=max(0, len(entrants) * min_seeds - offered), last="confirming")
    race = Race(entrants, seeds, direction=task.direction, n_val=n_val,
                margin=lambda mean: equivalence_margin(task, mean), min_seeds=min_seeds, max_seeds=max_seeds,
                workers=len(pool.workers), epochs=spec.epochs,
                submit=race_jobs(spec, study, run, pool, on_progress, progress), budget=budget,
                allowance_s=max(search_s or 0.0, ALLOWANCE_FLOOR_S))
    race.run()
    table: Table = {c.name: entry(c.name, c.number, c.cfg, sorted(c.results), c.results, test_key,
                                  baseline=c.baseline, race=RaceStatus(status=c.status, reason=c.reason)
                                  if c.status != Standing.RACING else None, made=c.made)
                    for c in entrants}  # those left out unconfirmed too, marked so
    results = {c.name: c.results for c in entrants}
    candidates = [c.name for c in entrants if not c.baseline]
    bases = [c.name for c in entrants if c.baseline]
    table, pick = judge(table, results, candidates, bases, task, spec.max_slowdown)
    if pick.winner is None:
        log.warning("no confirmation run completed; keeping the search's best trial")
        return rec
    w = table[pick.winner]
    log.info("confirmed: %s (val %.4f ± %.4f on %d seeds); best tuned %s, best baseline %s, verdict %s",
             pick.winner, w.val.mean, w.val.std, len(w.seeds), pick.tuned, pick.baseline,
             pick.paired.verdict if pick.paired else None)
    # Without a test split (or a user's loop that never called run.report_test), validation stands in.
    tested = test_key is not None and any(test_key in r.test for c in entrants for r in c.results.values())
    metric = test_key if test_key is not None and tested else task.metric
    alternative, why = cheapest_equivalent(table, pick.winner)
    own = [r for c in entrants for s, r in c.results.items() if s not in c.made]  # the race's runs
    race_summary = RaceSummary(rounds=race.rounds, min_seeds=min_seeds, max_seeds=max_seeds,
                               runs=len(own), epochs=sum(len(r.history) for r in own),
                               reused=sum(len(c.made) for c in entrants),
                               left_out={c.name: c.reason for c in entrants if c.status != Standing.RACING})
    return Recommendation(task=rec.task, **w.config(), metric=rec.metric, direction=rec.direction,
                          value=w.val.mean, study_name=rec.study_name, trial_number=w.trial_number,
                          source="study", search_note=rec.search_note, optimizer_class=rec.optimizer_class,
                          train_eval_mode=rec.train_eval_mode, extra=rec.extra, chosen=pick.winner,
                          chosen_kind="baseline" if pick.winner in bases else "tuned", search_value=rec.value,
                          search_trial_number=rec.trial_number, cheapest_equivalent_reason=why,
                          equivalence_margin=w.versus_pick.margin if w.versus_pick else None,
                          cheaper_factor=CHEAPER, max_slowdown=spec.max_slowdown, held_out=w.test.mean,
                          confirmation={n: table[n] for n in candidates},
                          baselines=tuple(b for n in bases if isinstance(b := table[n], Baseline)),
                          improvement=improvement(table, pick, task.direction, metric,
                                                  n_test=_split_counts(task, "test")),
                          cost=Cost(s_per_epoch=w.s_per_epoch, relative=w.relative),
                          cheapest_equivalent=alternative, race=race_summary)
