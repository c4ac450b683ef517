"""The samplers: ``build_sampler`` by name, and ``GroupTPESampler`` for autoopt's conditional space.

``build_sampler`` gives a ``TrialSeededSampler``: each trial is sampled by a sampler of its own,
seeded by the trial's number, made when the trial is asked.

``GroupTPESampler`` is TPE multivariate with groups, built on Optuna's public API: it splits the
search space into groups of parameters that always appear together (the decomposition Optuna's
``group=True`` makes) and asks a public multivariate ``TPESampler`` (with the constant liar) for
one group at a time, only when the trial asks for one of its parameters.

Flat at scale: the groups are kept per study for the driver's life (each finished trial is
added once), and TPE's model reads a window of the study (``TailWindow``): the best trials,
which make its "good" model exactly as on the whole study, and the newest ``TPE_WINDOW``
others, so that sampling a trial costs the same at the 10,000th trial as at the 250th.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

import autoopt.study.quiet  # noqa: F401  (Optuna quietened first)
from autoopt.errors import UsageError
from autoopt.space import SAMPLERS
from autoopt.study.optuna_private import study_trials
from autoopt.study.window import TailWindow

# TPE's model reads the newest this many finished trials, beside the best ones (``TailWindow``).
TPE_WINDOW = 200
# The best complete trials always in the window: Optuna's TPE takes at most 25 for its "good"
# model (its default gamma), so these keep that model exactly as on the whole study.
TPE_BEST = 25


def build_sampler(name: str, seed: int) -> TrialSeededSampler:
    """The study's sampler ``name`` (one of ``autoopt.space.SAMPLERS``), each trial sampled
    by one of its own seeded by ``seed`` plus the trial's number (``TrialSeededSampler``)."""
    return TrialSeededSampler(name, seed)


def trial_sampler(name: str, seed: int, groups: dict[str, SearchSpaceGroups] | None = None
                  ) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` for one trial. ``tpe``, for a conditional space: TPE multivariate
    with groups (each optimizer family's subspace is modelled jointly) and the constant liar
    (trials run in parallel); ``groups``, per study, are shared by the samplers of its trials."""
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    return GroupTPESampler(multivariate=True, group=True, constant_liar=True, seed=seed, groups=groups)


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Samples each trial with a fresh ``trial_sampler(name, seed + trial.number)``.

    A trial's number is unique in its study, so two drivers of one study started with the same
    seed propose different configs, and one driver is reproducible. The trial's sampler is made
    when the trial is asked (``before_trial``) and serves every call for that trial until it is
    told: the sampler that infers a trial's relative search space (at ask time in Optuna before
    4.6, at the first suggest since) is the one that samples it. Samplers keep their model in the
    study, so a fresh one per trial loses nothing; the search space's groups, which only grow,
    are kept here for them all.
    """

    MAX_OPEN = 1024  # trials asked and not told here (another driver failed them): the oldest go

    def __init__(self, name: str, seed: int) -> None:
        self.name, self.seed = name, seed
        self._open: OrderedDict[tuple[str, int], optuna.samplers.BaseSampler] = OrderedDict()
        self._reseeded = False
        self._groups: dict[str, SearchSpaceGroups] = {}  # per study name, shared by the trials' samplers
        self._fixed: dict[tuple[str, int], dict[str, Any]] = {}  # values given, not sampled (``fix``)

    def serves(self, name: str, seed: int) -> bool:
        """Whether this is ``build_sampler(name, seed)``."""
        return (self.name, self.seed) == (name, seed)

    def for_trial(self, study: optuna.Study, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        """The sampler of ``trial`` (made on first use)."""
        key = (study.study_name, trial.number)
        sampler = self._open.get(key)
        if sampler is None:
            sampler = self._open[key] = trial_sampler(self.name, self.seed + trial.number, self._groups)
            if self._reseeded:
                sampler.reseed_rng()
            while len(self._open) > self.MAX_OPEN:
                self._open.popitem(last=False)
        return sampler

    def fix(self, study_name: str, number: int, params: dict[str, Any]) -> None:
        """Trial ``number`` takes ``params`` as they are (the search's focus gives its family);
        the sampler samples the rest, knowing them. Enqueued values (Optuna's fixed params) still
        come first."""
        self._fixed[(study_name, number)] = params
        while len(self._fixed) > self.MAX_OPEN:
            del self._fixed[next(iter(self._fixed))]

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.for_trial(study, trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.for_trial(study, trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> Any:
        sampled = self.for_trial(study, trial).sample_relative(study, trial, search_space)
        fixed = self._fixed.get((study.study_name, trial.number))
        if not fixed:
            return sampled
        return _Overlay(sampled, {k: v for k, v in fixed.items() if k in search_space})

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        fixed = self._fixed.get((study.study_name, trial.number), {})
        if param_name in fixed:
            return fixed[param_name]
        return self.for_trial(study, trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.for_trial(study, trial).after_trial(study, trial, state, values)
        self._open.pop((study.study_name, trial.number), None)
        self._fixed.pop((study.study_name, trial.number), None)

    def reseed_rng(self) -> None:
        """Draws no longer follow the seed (Optuna's ``optimize`` with ``n_jobs`` > 1): the
        samplers of the trials in flight and those made later."""
        self._reseeded = True
        for sampler in self._open.values():
            sampler.reseed_rng()


class SearchSpaceGroups:
    """Parameters split into groups that always appear together in the finished trials (the
    decomposition of Optuna's ``group=True``): in autoopt's space, one group per optimizer
    family's parameters, per schedule's, clipping, ..."""

    def __init__(self) -> None:
        self.groups: list[dict[str, BaseDistribution]] = []
        self.window: TailWindow | None = None  # the study's TPE window, kept with its groups
        self._seen: set[int] = set()
        self._shapes: set[frozenset[tuple[str, BaseDistribution]]] = set()  # distinct trial spaces added
        self._read = 0  # the trials before this number were read by ``update``
        self._open: set[int] = set()  # ... of which those unfinished then

    def add(self, distributions: dict[str, BaseDistribution]) -> None:
        names = set(distributions)
        split: list[dict[str, BaseDistribution]] = []
        for group in self.groups:
            keys = set(group)
            split.append({n: group[n] for n in keys & names})
            split.append({n: group[n] for n in keys - names})
            names -= keys
        split.append({n: distributions[n] for n in names})
        self.groups = [g for g in split if g]

    def update(self, trials: list[FrozenTrial]) -> None:
        """Add the complete and pruned trials not seen yet (adding one again changes nothing).

        ``trials`` is the study's list, by number: only the trials past the last one read, and
        those unfinished then, are read again; a study of N trials costs nothing per ask for
        the N it read before. Any other list is read whole."""
        if not all(trials[i].number == i for i in (0, len(trials) - 1) if trials) or len(trials) < self._read:
            self._read, self._open = 0, set()
        todo = [trials[n] for n in sorted(self._open) if n < len(trials)] + trials[self._read:]
        self._read = len(trials)
        for trial in todo:
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                self._open.discard(trial.number)
                self._add_trial(trial)
            elif trial.state in (TrialState.RUNNING, TrialState.WAITING):
                self._open.add(trial.number)
            else:
                self._open.discard(trial.number)

    def _add_trial(self, trial: FrozenTrial) -> None:
        if trial.number not in self._seen:
            self._seen.add(trial.number)
            shape = frozenset(trial.distributions.items())
            if shape not in self._shapes:  # a space seen already splits nothing further
                self._shapes.add(shape)
                self.add(trial.distributions)


class GroupTPESampler(optuna.samplers.BaseSampler):
    """TPE multivariate with groups that samples a group only when the trial asks for one of
    its parameters.

    Optuna samples every group of the decomposed space for every trial; in autoopt's
    conditional space a trial uses three or four of the fifteen or so groups (its family's,
    its schedule's, clipping), so most of that work was thrown away. Same model, same kind of
    proposals for the groups a trial uses; about a quarter of the sampling time. Takes
    ``TPESampler``'s arguments (``group`` and ``multivariate`` are implied), plus ``groups`` (the
    per-study groups, shared with other samplers) and ``window`` (``TailWindow``'s size).
    """

    def __init__(self, *, groups: dict[str, SearchSpaceGroups] | None = None, window: int = TPE_WINDOW,
                 **tpe_kwargs: Any) -> None:
        tpe_kwargs.pop("group", None)
        tpe_kwargs.pop("multivariate", None)
        self.tpe = optuna.samplers.TPESampler(multivariate=True, **tpe_kwargs)
        self.space: dict[str, SearchSpaceGroups] = {} if groups is None else groups  # per study name
        self.window = window

    def _windowed(self, study: optuna.Study) -> _WindowedStudy:
        """The study as TPE reads it: through its window, kept per study (``TailWindow``)."""
        groups = self.space.setdefault(study.study_name, SearchSpaceGroups())
        if groups.window is None:
            groups.window = TailWindow(self.window, TPE_BEST,
                                       maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE)
        return _WindowedStudy(study, groups.window)

    def _groups(self, study: optuna.Study) -> SearchSpaceGroups:
        """The study's groups, with its finished trials not seen yet added."""
        groups = self.space.setdefault(study.study_name, SearchSpaceGroups())
        groups.update(study.get_trials(deepcopy=False))
        return groups

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        groups = self._groups(study)
        return {n: d for group in groups.groups for n, d in sorted(group.items()) if not d.single()}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> Any:
        if not search_space:
            return {}
        # Another sampler may have inferred ``search_space`` (Optuna before 4.6 infers it at ask
        # time, with the study's sampler then): this one reads the groups from the study.
        known = self.space.get(study.study_name)
        groups = (known if known is not None else self._groups(study)).groups
        subspaces = [{n: d for n, d in sorted(group.items()) if not d.single() and n in search_space}
                     for group in groups]
        view = self._windowed(study)
        return _LazyGroups(lambda space: self.tpe.sample_relative(view, trial, space), subspaces)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self.tpe.sample_independent(self._windowed(study), trial, param_name,  # type: ignore[arg-type]
                                           param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.tpe.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Any) -> None:
        self.tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.tpe.reseed_rng()


class _Overlay(Mapping):
    """Sampled relative parameters with some given instead (``TrialSeededSampler.fix``); the
    sampled ones are read lazily, as ``_LazyGroups`` samples them."""

    def __init__(self, sampled: Mapping[str, Any], given: dict[str, Any]) -> None:
        self._sampled, self._given = sampled, given

    def __getitem__(self, name: str) -> Any:
        return self._given[name] if name in self._given else self._sampled[name]

    def __contains__(self, name: object) -> bool:
        return name in self._given or name in self._sampled

    def __iter__(self) -> Iterator[str]:
        yield from self._given
        yield from (name for name in self._sampled if name not in self._given)

    def __len__(self) -> int:
        return len(set(self._given) | set(self._sampled))


class _LazyGroups(Mapping):
    """The relative parameters of one trial, each group sampled on first use."""

    def __init__(self, sample: Callable[[dict[str, Any]], dict[str, Any]],
                 groups: list[dict[str, Any]]) -> None:
        self._sample, self._groups = sample, groups
        self._group_of = {name: i for i, group in enumerate(groups) for name in group}
        self._values: dict[int, dict[str, Any]] = {}

    def _group(self, i: int) -> dict[str, Any]:
        if i not in self._values:
            self._values[i] = self._sample(self._groups[i]) if self._groups[i] else {}
        return self._values[i]

    def __getitem__(self, name: str) -> Any:
        i = self._group_of.get(name)
        if i is None:
            raise KeyError(name)
        return self._group(i)[name]

    def __contains__(self, name: object) -> bool:
        i = self._group_of.get(name)  # type: ignore[call-overload]
        return i is not None and name in self._group(i)

    def __iter__(self) -> Iterator[str]:
        return (name for i in range(len(self._groups)) for name in self._group(i))

    def __len__(self) -> int:
        return sum(len(self._group(i)) for i in range(len(self._groups)))


class _WindowedStudy:
    """The study as TPE reads it: every attribute the study's, its trials through its window
    (``TailWindow``)."""

    def __init__(self, study: optuna.Study, window: TailWindow) -> None:
        self._study, self._window = study, window

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        """The study's trials through the window: Optuna's samplers read them by calling this
        method by its private name (``Study._get_trials``; ``optuna_private.OVERRIDES``)."""
        trials = study_trials(self._study, use_cache=use_cache)  # the snapshot, unfiltered
        window = self._window.of(trials, states)
        return copy.deepcopy(window) if deepcopy else window
