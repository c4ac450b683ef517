"""The prior: what the storage's earlier studies say about a new task.

Every study autoopt ran is in the storage. For a new task the prior reads them (bounded, see
below) and gives:

* the **order** of the screen: the families most likely to win first;
* **warm starts**: the picks of the closest studies, tried right after the screen;
* a **zero-shot** answer, ``recommend(task, fallback="database")``: the config it ranks first.

**Method.** For each earlier study (the most recent ``MAX_STUDIES``, or the ones named with
``--prior``; never the new study itself), each family screened or tuned there gets a
normalised rank in [0, 1] (0: best of that study; direction-aware, so a minimized RMSE and a
maximized accuracy compare): the mean of its rank at its published defaults (the portfolio
trials: complete ones by value, then pruned ones by the rung they reached, as the confirmation
ranks them) and of the rank of its best complete trial. A family's score is the weighted mean
of its ranks over the studies, shrunk towards its place in the built-in order
(``PORTFOLIO_PRIOR``) with the weight ``SHRINK`` of a quarter study, so that a family seen once
moves less than one seen often. A study's weight is its similarity to the new task: 1, times
``OTHER_METRIC`` (1/4) when it scored another metric or direction, times 1 / (1 + |log10
ratio|) of the model's parameters and of the training rows (``tune`` records both in the study
attr ``task_info``; one not recorded counts as half an order of magnitude away), times
``SAME_TASK`` (2) for the same task, times (k - 1) / k for a study that ranked k families (two
families say little). The screen goes by ascending score.

The configs are the closest studies' confirmed picks (their ``recommendation``), then their best
complete trials, closest study first; the first few that the new space can hold (not a published
default the screen trains anyway) are the warm starts, and the first of them is the zero-shot answer.

**Bounded reads.** A handful of SQL queries on Optuna's tables (the same on SQLite and
PostgreSQL), in chunks of ``CHUNK`` studies: per study and family one aggregate row (the best
complete value), the few screened trials (and their intermediate values), three study attrs;
the best trials' configs only for the few closest studies. No trial list is loaded: a storage of
hundreds of studies and tens of thousands of trials is read in well under a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autoopt.errors import UsageError
from autoopt.screen.portfolio import (
    ENQUEUED,
    PRIOR_ATTR,
    WARM_ENQUEUED,
    WARMSTART,
    PriorRecord,
    WarmStart,
    config_params,
    screening_order,
)
from autoopt.study import aggregates
from autoopt.study.record import SCREEN_MARKS

log = logging.getLogger(__name__)

__all__ = ["PRIOR_ATTR", "TASK_ATTR", "WARMSTART", "WARM_ENQUEUED", "Evidence", "Prior", "PriorRecord", "TaskInfo",
           "WarmStart", "build", "check_sources", "parse", "zero_shot"]

TASK_ATTR = "task_info"  # study user attr: what the prior compares tasks by (TaskInfo.to_dict())
MAX_STUDIES = 200  # the most recent studies read (``--prior auto``)
WARM_STARTS = 3  # warm-start trials after the screen
QUICK_FAMILIES = 3  # families ``tune --quick`` screens
CONFIGS_PER_STUDY = 4  # best trials read per close study, besides its pick (published defaults among them skipped)
SHRINK = 0.25  # the built-in order's weight, in studies
OTHER_METRIC = 0.25  # the weight of a study that scored another metric or direction
SAME_TASK = 2.0  # the weight of a study of the same task
UNKNOWN_SIZE = 0.5  # log10 distance taken for a size a study did not record
CLASSIFICATION = ("val_accuracy", "maximize")  # what every built-in task scores


@dataclass(frozen=True)
class TaskInfo:
    """What the prior knows of a task: its name, metric and direction, model and data size."""

    task: str | None = None
    metric: str | None = None
    direction: str | None = None
    n_params: int | None = None
    n_train: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "metric": self.metric, "direction": self.direction,
                "n_params": self.n_params, "n_train": self.n_train}

    @classmethod
    def of_attrs(cls, attrs: Mapping[str, Any], direction: str | None = None) -> TaskInfo:
        """From a study's user attrs: ``task_info`` where ``tune`` recorded it, else what the
        ``metric`` attr and the recommendation say."""
        info_attr, rec_attr = attrs.get(TASK_ATTR), attrs.get("recommendation")
        info: Mapping[str, Any] = info_attr if isinstance(info_attr, dict) else {}
        rec: Mapping[str, Any] = rec_attr if isinstance(rec_attr, dict) else {}
        return cls(task=info.get("task") or rec.get("task"),
                   metric=info.get("metric") or attrs.get("metric") or rec.get("metric"),
                   direction=direction or info.get("direction") or rec.get("direction"),
                   n_params=_positive(info.get("n_params")), n_train=_positive(info.get("n_train")))

    @classmethod
    def of_task(cls, name: str, task: Any = None) -> TaskInfo:
        """Of a loaded task (``autoopt.tasks.Task``), or of a name alone (a built-in task's metric
        is known without loading it)."""
        if task is None:
            metric, direction = CLASSIFICATION if _builtin(name) else (None, None)
            return cls(task=name, metric=metric, direction=direction)
        n_params = n_train = None
        if hasattr(task, "build_model"):  # a user's loop builds its model itself: its size is not known
            with contextlib.suppress(Exception):  # a lazy module: its size is not known before a forward pass
                n_params = sum(p.numel() for p in task.build_model().parameters())
            n_train = len(task.train)
        return cls(task=name, metric=task.metric, direction=task.direction, n_params=n_params or None,
                   n_train=n_train or None)


def _builtin(name: str) -> bool:
    from autoopt.catalog import BUILTIN

    return name in BUILTIN


def _positive(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else None


def similarity(target: TaskInfo, source: TaskInfo) -> float:
    """How much a study of ``source`` says about ``target`` (1: as much as any; see the module).

    >>> a = TaskInfo("digits", "val_accuracy", "maximize", 10_000, 1_000)
    >>> similarity(a, a), similarity(a, TaskInfo("x", "val_rmse", "minimize", 10_000, 1_000))
    (2.0, 0.25)
    >>> round(similarity(a, TaskInfo("x", "val_rmse", "minimize")), 3)  # and neither size recorded: / 1.5 / 1.5
    0.111
    >>> round(similarity(a, TaskInfo("y", "val_accuracy", "maximize", 100_000, 1_000)), 3)
    0.5
    """
    w = 1.0
    if target.metric and source.metric:
        if (target.metric, target.direction) != (source.metric, source.direction):
            w *= OTHER_METRIC
    elif target.direction and source.direction and target.direction != source.direction:
        w *= OTHER_METRIC
    for a, b in ((target.n_params, source.n_params), (target.n_train, source.n_train)):
        if a and b:
            w /= 1.0 + abs(math.log10(a / b))
        elif a:
            w /= 1.0 + UNKNOWN_SIZE  # not recorded: taken for half an order of magnitude away
    if target.task and target.task == source.task:
        w *= SAME_TASK
    return w


@dataclass
class Evidence:
    """One earlier study as the prior reads it."""

    name: str
    study_id: int
    direction: str
    info: TaskInfo
    ranks: dict[str, float] = field(default_factory=dict)  # family -> normalised rank, 0 best
    configs: list[dict[str, Any]] = field(default_factory=list)  # TrialConfig dicts, best first
    weight: float = 1.0
    summarised: bool = False  # read from (or written to) its summary: its best configs are in ``configs``
    finished: bool = False  # it holds a recommendation: a finished ``tune``, summarised once read

    @property
    def usable(self) -> bool:
        return bool(self.ranks or self.configs)


@dataclass(frozen=True)
class Prior:
    """The evidence of the source studies, closest first (``build``)."""

    evidence: tuple[Evidence, ...] = ()

    @property
    def usable(self) -> bool:
        return bool(self.evidence)

    @property
    def studies(self) -> list[str]:
        return [e.name for e in self.evidence]

    def scores(self, families: Sequence[str]) -> dict[str, float]:
        """Each family's score (lower is better): its weighted mean rank, shrunk to the built-in order."""
        builtin = screening_order(families)
        n = max(1, len(builtin) - 1)
        out = {}
        for name in families:
            ranked = [(e.weight, e.ranks[name]) for e in self.evidence if name in e.ranks]
            total = sum(w for w, _ in ranked) + SHRINK
            out[name] = (sum(w * r for w, r in ranked) + SHRINK * builtin.index(name) / n) / total
        return out

    def order(self, families: Sequence[str]) -> list[str]:
        """``families`` best first."""
        scores, builtin = self.scores(families), screening_order(families)
        return sorted(families, key=lambda n: (scores[n], builtin.index(n)))

    def families(self) -> list[str]:
        """Every family the evidence ranked, best first."""
        return self.order(list(dict.fromkeys(n for e in self.evidence for n in e.ranks)))

    def configs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(study, config)``, distinct configs, closest study first."""
        seen: set[str] = set()
        for e in self.evidence:
            for config in e.configs:
                key = json.dumps(config, sort_keys=True, default=str)
                if key not in seen:
                    seen.add(key)
                    yield e.name, config

    def warm_starts(self, space: Any, k: int = WARM_STARTS) -> list[WarmStart]:
        """The first ``k`` configs the space holds that are not a published default the screen
        trains anyway."""
        out: list[WarmStart] = []
        taken: list[dict[str, Any]] = []
        for study, config in self.configs():
            params = config_params(config, space)
            if params is None or params in taken or _published_default(config, space):
                continue
            taken.append(params)
            out.append(WarmStart(study, config))
            if len(out) >= k:
                break
        return out

    def record(self, space: Any, *, warm: int = WARM_STARTS) -> PriorRecord:
        """What a new study screens by and keeps (its attr ``prior``): the source studies, the
        screen's order, the warm starts."""
        return PriorRecord(tuple(self.studies), tuple(self.order(list(space.optimizers))),
                           tuple(self.warm_starts(space, warm)))

    def line(self, order: Sequence[str]) -> str:
        """The one line ``tune`` prints."""
        names = self.studies
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        first = ", ".join(order[:3])
        return (f"screening {first}{', ...' if len(order) > 3 else ''} first, as learned from {len(names)} "
                f"earlier {'study' if len(names) == 1 else 'studies'} ({shown}); --prior none turns it off")


def _published_default(config: Mapping[str, Any], space: Any) -> bool:
    """Whether ``config`` is its family's published defaults, as the screen trains them."""
    return (config.get("optimizer_params") == space.default_params(config["optimizer"])
            and (config.get("scheduler") or "none") == "none" and config.get("grad_clip_norm") is None)


# --- parsing and checking the option -------------------------------------------------------


def parse(value: str | None) -> str | list[str]:
    """``"auto"``, ``"none"`` or the study names of a ``--prior`` value.

    >>> parse("auto"), parse(" a, b "), parse(None)
    ('auto', ['a', 'b'], 'auto')
    """
    names = [v.strip() for v in (value or "auto").split(",") if v.strip()]
    if names in (["auto"], ["none"]):
        return names[0]
    return names


def check_sources(url: str, names: Sequence[str]) -> None:
    """A ``UsageError`` naming the studies of ``--prior`` that are not in the storage at ``url``."""
    from autoopt.base.redact import mask_url
    from autoopt.study import open_storage, sqlite_path

    path = sqlite_path(url)
    found: set[str] = set()
    if path is None or path.exists():
        storage = open_storage(url, heartbeat=False)
        try:
            with storage.engine.connect() as conn:
                found.update(name for _, name, _ in aggregates.studies(conn, names=list(names)))
        finally:
            storage.engine.dispose()
    missing = [n for n in names if n not in found]
    if missing:
        raise UsageError(f"--prior: no study {', '.join(repr(n) for n in missing)} in {mask_url(url)}; name "
                         "studies of this storage (--study NAME of an earlier tune), or use --prior auto")


# --- reading the storage --------------------------------------------------------------------

SUMMARY_ATTR = "prior_summary"  # study user attr: what the prior reads of a finished study, one row
SUMMARY_VERSION = 1


class _Choices:
    """Decodes the stored ``optimizer`` param (the index of a categorical choice)."""

    def __init__(self) -> None:
        self.cache: dict[str, Any] = {}

    def __call__(self, value: float, distribution_json: str) -> str | None:
        from optuna.distributions import json_to_distribution

        if distribution_json not in self.cache:
            try:
                self.cache[distribution_json] = json_to_distribution(distribution_json)
            except Exception:
                self.cache[distribution_json] = None
        dist = self.cache[distribution_json]
        try:
            name = dist.to_external_repr(value) if dist is not None else None
        except Exception:
            return None
        return name if isinstance(name, str) else None


def _ranks(ordered_families: Sequence[str]) -> dict[str, float]:
    """Normalised ranks of a best-first list (0 best, 1 worst); empty for fewer than two."""
    names = list(dict.fromkeys(ordered_families))
    if len(names) < 2:
        return {}
    return {n: i / (len(names) - 1) for i, n in enumerate(names)}


def _summary(e: Evidence) -> dict[str, Any]:
    return {"version": SUMMARY_VERSION, "ranks": e.ranks, "configs": e.configs, "info": e.info.to_dict()}


def _from_summary(e: Evidence, summary: Any) -> bool:
    """Fill ``e`` from its study's summary; False when there is none of this version."""
    if not (isinstance(summary, dict) and summary.get("version") == SUMMARY_VERSION):
        return False
    e.ranks = {str(k): float(v) for k, v in (summary.get("ranks") or {}).items()}
    e.configs = [c for c in summary.get("configs") or [] if isinstance(c, dict)]
    e.info = TaskInfo.of_attrs({TASK_ATTR: summary.get("info") or {}}, e.direction)
    e.summarised = True
    return True


def read_evidence(conn: Any, *, names: Sequence[str] | None = None, exclude: str | None = None,
                  limit: int = MAX_STUDIES, fresh: bool = False) -> list[Evidence]:
    """The studies (``names``, else the ``limit`` most recent but ``exclude``) with their families'
    ranks and their confirmed picks: from each study's summary (one row) where it has one
    (``fresh``: never), else from its trials, in bounded queries (see the module)."""
    studies = {i: Evidence(name, i, d, TaskInfo()) for i, name, d in aggregates.studies(
        conn, names=names, exclude=exclude, limit=limit) if d in ("maximize", "minimize")}
    attrs = aggregates.study_attrs(conn, list(studies), ("metric", "task_info", "recommendation", SUMMARY_ATTR))
    todo = {i: e for i, e in studies.items() if fresh or not _from_summary(e, attrs[i].get(SUMMARY_ATTR))}
    for i, e in todo.items():
        e.info = TaskInfo.of_attrs(attrs[i], e.direction)
        rec = attrs[i].get("recommendation")
        e.finished = isinstance(rec, dict)
        if isinstance(rec, dict) and isinstance(rec.get("optimizer"), str) and isinstance(
                rec.get("optimizer_params"), dict):
            e.configs.append({k: rec.get(k) for k in ("optimizer", "optimizer_params", "scheduler",
                                                      "scheduler_params", "grad_clip_norm")})
    if todo:
        _read_trials(conn, todo)
    return [e for e in studies.values() if e.usable]


def _read_trials(conn: Any, studies: dict[int, Evidence]) -> None:
    """Each study's families ranked from its trials: at their published defaults (the portfolio's
    trials) and by their best complete value."""
    decode = _Choices()
    ids = list(studies)
    tuned: dict[int, dict[str, float]] = {i: {} for i in ids}
    for study_id, value, dist, hi, lo in aggregates.family_bests(conn, ids):
        name = decode(value, dist)
        if name is None:
            continue
        score = hi if studies[study_id].direction == "maximize" else -lo
        if name not in tuned[study_id] or score > tuned[study_id][name]:
            tuned[study_id][name] = score
    # The portfolio's trials (a few per study) and the rungs its pruned ones reached.
    screen: dict[int, list[tuple[tuple[float, ...], str]]] = {i: [] for i in ids}
    pruned: dict[int, tuple[int, str]] = {}
    for study_id, trial_id, state, final, pvalue, dist in aggregates.marked_trials(conn, ids, SCREEN_MARKS):
        name = decode(pvalue, dist)
        if name is None:
            continue
        s = 1.0 if studies[study_id].direction == "maximize" else -1.0
        if state == "COMPLETE":
            if final is not None and math.isfinite(final):
                screen[study_id].append(((0.0, 0.0, -s * final), name))
        else:
            pruned[trial_id] = (study_id, name)
    for trial_id, (step, last) in aggregates.last_reports(conn, list(pruned)).items():
        study_id, name = pruned[trial_id]
        s = 1.0 if studies[study_id].direction == "maximize" else -1.0
        screen[study_id].append(((1.0, -float(step), -s * last), name))
    for i, e in studies.items():
        at_defaults = _ranks([n for _, n in sorted(screen[i])])
        best = _ranks(sorted(tuned[i], key=lambda n: -tuned[i][n]))
        for name in set(at_defaults) | set(best):
            ranks = [r[name] for r in (at_defaults, best) if name in r]
            e.ranks[name] = sum(ranks) / len(ranks)


def _best_configs(conn: Any, e: Evidence, k: int = CONFIGS_PER_STUDY) -> list[dict[str, Any]]:
    """The configs of the ``k`` best complete trials of a study, best first."""
    return [c for c in aggregates.best_trial_attrs(conn, e.study_id, e.direction, "config", k)
            if isinstance(c, dict) and isinstance(c.get("optimizer"), str)]


def _summarise(storage: Any, conn: Any, evidence: Sequence[Evidence]) -> None:
    """Write the summary of each finished study read from its trials (with its best configs):
    read once so, then from its one row. A storage that cannot be written (a read-only file)
    keeps reading the trials."""
    for e in evidence:
        if e.summarised or not e.finished:
            continue
        e.configs += _best_configs(conn, e)
        e.summarised = True
        try:
            storage.set_study_user_attr(e.study_id, SUMMARY_ATTR, _summary(e))
        except Exception as exc:
            log.debug("could not keep the summary of study %s: %s", e.name, exc)


def build(storage: Any, target: TaskInfo, *, names: Sequence[str] | None = None, exclude: str | None = None,
          limit: int = MAX_STUDIES, close: int = WARM_STARTS + 1) -> Prior:
    """The prior for ``target`` from the Optuna RDB storage ``storage`` (an ``RDBStorage``, or
    anything with its ``engine``): the studies ``names``, else the ``limit`` most recent ones,
    never ``exclude`` (the new study). A finished study is read from its summary, written the
    first time it is read (``_summarise``); the ``close`` closest other studies' best trials
    join their configs. A storage that cannot be read so gives an empty prior (the built-in order)."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with storage.engine.connect() as conn:
            evidence = read_evidence(conn, names=names, exclude=exclude, limit=limit)
            _summarise(storage, conn, evidence)
            for e in evidence:
                k = max(len(e.ranks), 2)
                e.weight = similarity(target, e.info) * (k - 1) / k
            evidence.sort(key=lambda e: (-e.weight, -e.study_id))
            for e in evidence[:close]:
                if not e.summarised:
                    e.configs += _best_configs(conn, e)
    except SQLAlchemyError as exc:
        log.warning("screening in the built-in order: could not read the earlier studies (%s)",
                    " ".join(str(exc).split())[:200])
        return Prior()
    return Prior(tuple(e for e in evidence if e.usable))


def summarise(study: Any) -> None:
    """Write the summary of ``study`` (opened by ``autoopt.study``), just finished: what the
    prior reads of it from now on, in one row."""
    from autoopt.study import storage_of

    storage: Any = storage_of(study).base  # an RDBStorage: its engine
    with storage.engine.connect() as conn:
        evidence = read_evidence(conn, names=[study.study_name], fresh=True)
        for e in evidence:
            e.finished = True
        _summarise(storage, conn, evidence)


# --- the two uses: a new study's record, a zero-shot answer -------------------------------------


def for_study(study: Any, storage: Any, spec: Any, target: TaskInfo) -> PriorRecord | None:
    """The prior a new study screens by (the record ``PortfolioFirst`` keeps as its attr
    ``prior``), and its one line logged; None with ``--prior none``, for a resumed study (it keeps
    the order it began with), and when the storage has nothing usable (the built-in order, said
    in one line)."""
    choice = parse(spec.prior)
    attrs = study.user_attrs
    if choice == "none" or PRIOR_ATTR in attrs or ENQUEUED in attrs:
        return None
    names = None if choice == "auto" else choice
    prior = build(storage, target, names=names, exclude=study.study_name)
    if not prior.usable:
        # An empty storage is the normal first run: said at INFO; studies named by --prior that
        # hold nothing to learn from are the user's to know of.
        where = "the studies named by --prior hold" if names else "the storage holds"
        log.log(logging.WARNING if names else logging.INFO,
                "screening in the built-in order: %s no finished earlier study to learn from", where)
        return None
    record = prior.record(spec.search_space())
    log.warning("%s", prior.line(record.order))
    return record


def zero_shot(url: str, task: str, *, exclude: str | None = None) -> dict[str, Any] | None:
    """The zero-shot recommendation for ``task`` from the storage at ``url``, as its JSON (what
    ``Recommendation.from_dict`` reads): the config the prior ranks first (``"source": "database"``,
    ``"prior": {studies, order, from}``), or None when the storage has no usable study (or is not
    there: nothing is created)."""
    from autoopt.space import family
    from autoopt.study import open_storage, sqlite_path

    path = sqlite_path(url)
    if path is not None and not path.exists():
        return None
    target = TaskInfo.of_task(task)
    storage = open_storage(url, heartbeat=False, write=False)
    try:
        prior = build(storage, target, exclude=exclude)
    finally:
        storage.engine.dispose()
    by_name = {e.name: e for e in prior.evidence}
    for study, config in prior.configs():
        try:
            if not family(config["optimizer"]).available():
                continue
        except UsageError:  # a user's own family, not registered in this process
            continue
        source = by_name[study].info
        metric = target.metric or source.metric or CLASSIFICATION[0]
        direction = target.direction or source.direction or CLASSIFICATION[1]
        return {"task": task, "optimizer": config["optimizer"],
                "optimizer_params": dict(config.get("optimizer_params") or {}),
                "scheduler": config.get("scheduler") or "none",
                "scheduler_params": dict(config.get("scheduler_params") or {}),
                "grad_clip_norm": config.get("grad_clip_norm"), "metric": metric, "direction": direction,
                "source": "database", "prior": {"studies": prior.studies, "order": prior.families(), "from": study}}
    return None
