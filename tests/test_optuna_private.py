"""Optuna's private names that autoopt reaches, each run on a real SQLite study, and no other
module of ``autoopt`` reaching one.

``autoopt.study.optuna_private`` is the one module that touches Optuna's private names. Each of
its functions is run here as autoopt uses it; ``.ci/lowest`` runs this file on the lowest Optuna
pyproject.toml allows and the main suite on the newest, so an Optuna release that moves a name
fails here first, with the name it moved. Optuna and SQLAlchemy only: no server, no Ray.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import importlib
import inspect
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from autoopt.study import optuna_private
from autoopt.study.optuna_private import frozen_of, id_of, rdb_trials, scoped_session, set_frozen, study_trials

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "autoopt"
OPTUNA = Path(optuna.__file__).resolve().parent

# What ``writes`` and ``reads`` use of each of Optuna's table classes (``optuna_private.models``).
MODELS = {
    "StudyModel": ["find_or_raise_by_id"],
    "TrialModel": ["find_or_raise_by_id", "__table__", "study_id"],
    "TrialParamModel": ["distribution_json", "param_name"],
    "TrialUserAttributeModel": [],
    "TrialSystemAttributeModel": [],
    "TrialIntermediateValueModel": ["intermediate_value_to_stored_repr", "stored_repr_to_intermediate_value",
                                    "TrialIntermediateValueType"],
    "TrialValueModel": ["value_to_stored_repr", "stored_repr_to_value", "TrialValueType"],
    "TrialHeartbeatModel": [],
}


@contextlib.contextmanager
def reaching(name: str) -> Iterator[None]:
    """The block reaches Optuna's private ``name``: a name or a signature gone (an
    ``AttributeError``, ``ImportError`` or ``TypeError``) fails the test with Optuna's version
    and that name."""
    try:
        yield
    except (AttributeError, ImportError, TypeError) as e:
        pytest.fail(f"Optuna {optuna.__version__} no longer has {name} as autoopt.study.optuna_private "
                    f"reaches it: {e!r}")


@pytest.fixture
def storage(tmp_path: Path) -> RDBStorage:
    return RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")


@pytest.fixture
def study(storage: RDBStorage) -> optuna.Study:
    """Trials 0 to 3: complete, pruned, running, complete."""
    study = optuna.create_study(study_name="private", storage=storage)
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.COMPLETE):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        if state != TrialState.RUNNING:
            study.tell(trial, x if state == TrialState.COMPLETE else None, state=state)
    return study


def ids(storage: RDBStorage, study: optuna.Study) -> list[int]:
    """The storage ids of ``study``'s trials, by number, through Optuna's public API."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return [storage.get_trial_id_from_study_id_trial_number(study_id, t.number) for t in study.trials]


def test_id_of_a_trial_handle_and_of_its_frozen_record(storage: RDBStorage, study: optuna.Study) -> None:
    trial = study.ask()
    with reaching("Trial._trial_id"):
        asked = id_of(trial)
    assert asked == ids(storage, study)[trial.number]
    with reaching("FrozenTrial._trial_id"):
        assert [id_of(t) for t in study.trials] == ids(storage, study)


def test_frozen_of_is_the_handles_own_record_and_set_frozen_replaces_it(study: optuna.Study) -> None:
    trial = study.ask()
    with reaching("Trial._cached_frozen_trial"):
        before = copy.deepcopy(frozen_of(trial))
        x = trial.suggest_float("x", 0.0, 1.0)
        held = frozen_of(trial)
    assert held is frozen_of(trial) and held.params == {"x": x}  # the handle's record, not a copy
    with reaching("Trial._cached_frozen_trial"):
        set_frozen(trial, before)
    assert trial.params == {}  # the handle forgot what it suggested: a retry suggests it again


def test_rdb_trials_reads_the_trials_past_an_id_and_those_named(storage: RDBStorage, study: optuna.Study) -> None:
    known = ids(storage, study)
    study_id = storage.get_study_id_from_name(study.study_name)
    with reaching("RDBStorage._get_trials"):
        read = rdb_trials(storage, study_id, included={known[0]}, after=known[1])
    assert [t.number for t in read] == [0, 2, 3]
    assert read == [storage.get_trial(known[n]) for n in (0, 2, 3)]
    assert [t.state for t in read] == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE]
    assert [t.number for t in rdb_trials(storage, study_id, included=set(), after=-1)] == [0, 1, 2, 3]
    with pytest.raises(KeyError):  # as ``reads.read_trials`` for a study that does not exist
        rdb_trials(storage, study_id + 1, included=set(), after=-1)


def test_study_trials_reads_every_trial_uncopied_and_from_optunas_cache(study: optuna.Study) -> None:
    with reaching("Study._get_trials"):
        read = study_trials(study, use_cache=False)
    assert read == study.get_trials(deepcopy=False)
    cached = study_trials(study, use_cache=True)
    assert cached == read and study_trials(study, use_cache=True) is cached  # the cache, not a copy
    study.ask()  # a trial asked: Optuna's cache is read afresh
    assert study_trials(study, use_cache=True) is not cached
    assert len(study_trials(study, use_cache=True)) == len(read) + 1


def test_scoped_session_commits_as_it_ends_and_rolls_back_on_an_error(storage: RDBStorage,
                                                                       study: optuna.Study) -> None:
    models = optuna_private.models
    trial_id = ids(storage, study)[2]
    with reaching("optuna.storages._rdb.storage._create_scoped_session"), scoped_session(storage) as session:
        session.add(models.TrialUserAttributeModel(trial_id=trial_id, key="kept", value_json='"yes"'))
    assert storage.get_trial(trial_id).user_attrs == {"kept": "yes"}
    with pytest.raises(RuntimeError), scoped_session(storage) as session:
        session.add(models.TrialUserAttributeModel(trial_id=trial_id, key="lost", value_json='"no"'))
        session.flush()
        raise RuntimeError("the step failed")
    assert storage.get_trial(trial_id).user_attrs == {"kept": "yes"}


def test_models_has_the_table_classes_and_conversions_autoopt_uses(storage: RDBStorage,
                                                                    study: optuna.Study) -> None:
    with reaching("optuna.storages._rdb.models"):
        models = optuna_private.models
    missing = [cls for cls in MODELS if not hasattr(models, cls)] + [
        f"{cls}.{attr}" for cls, attrs in MODELS.items() if hasattr(models, cls)
        for attr in attrs if not hasattr(getattr(models, cls), attr)]
    assert not missing, f"Optuna {optuna.__version__}'s table models lack what autoopt uses: {missing}"
    values, intermediate = models.TrialValueModel, models.TrialIntermediateValueModel
    for v in (0.25, math.inf, -math.inf):  # as ``writes`` stores a value and ``reads`` reads it back
        stored, kind = values.value_to_stored_repr(v)
        assert values.stored_repr_to_value(stored, values.TrialValueType[kind.name]) == v
    for v in (0.25, math.inf, -math.inf, math.nan):
        stored, kind = intermediate.intermediate_value_to_stored_repr(v)
        kind = intermediate.TrialIntermediateValueType[kind.name]
        back = intermediate.stored_repr_to_intermediate_value(stored, kind)
        assert back == v or (math.isnan(back) and math.isnan(v))
    study_id, trial_id = storage.get_study_id_from_name(study.study_name), ids(storage, study)[2]
    with scoped_session(storage) as session:
        row = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        assert (row.study_id, row.state) == (study_id, TrialState.RUNNING)
        models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)
        with pytest.raises(KeyError):
            models.StudyModel.find_or_raise_by_id(study_id + 1, session, for_update=True)


def test_optuna_still_calls_the_overrides_by_their_private_name(monkeypatch: pytest.MonkeyPatch,
                                                                storage: RDBStorage) -> None:
    """Each method of ``OVERRIDES`` takes the arguments of Optuna's, and Optuna calls it: TPE
    reads the study it samples through ``_get_trials``, and ``GroupTPESampler`` gives it the
    study through its window."""
    for ours, theirs in optuna_private.OVERRIDES.items():
        module, cls, method = ours.rsplit(".", 2)
        defined = vars(getattr(importlib.import_module(module), cls)).get(method)
        assert defined is not None, f"{ours} is gone"
        with reaching(theirs):
            original = functools.reduce(getattr, theirs.split(".")[1:], optuna)
        assert list(inspect.signature(defined).parameters) == list(inspect.signature(original).parameters), \
            f"Optuna {optuna.__version__}'s {theirs} takes other arguments than {ours}"
    from autoopt.study.samplers import GroupTPESampler, _WindowedStudy

    calls: list[bool] = []
    windowed = _WindowedStudy._get_trials

    def spy(self: _WindowedStudy, *args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        calls.append(True)
        return windowed(self, *args, **kwargs)

    monkeypatch.setattr(_WindowedStudy, "_get_trials", spy)
    study = optuna.create_study(study_name="override", storage=storage, sampler=GroupTPESampler(seed=0))
    study.ask().suggest_float("x", 0.0, 1.0)
    assert calls, f"Optuna {optuna.__version__}'s TPE no longer reads the study through _get_trials"


# --- no other module reaches one --------------------------------------------------------------


def optuna_private_names() -> tuple[set[str], set[str]]:
    """The private names of the installed Optuna, read from its source: every ``_name`` it
    reaches as an attribute or defines (its attributes and methods), and of those, its methods."""
    names: set[str] = set()
    methods: set[str] = set()
    for path in OPTUNA.rglob("*.py"):
        if "tests" in path.relative_to(OPTUNA).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and _private(node.attr):
                names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                methods |= {f.name for f in node.body
                            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef) and _private(f.name)}
    return names | methods, methods


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def autoopt_own_names(trees: dict[str, ast.Module]) -> set[str]:
    """The private attributes autoopt's own classes define: assigned on ``self`` or ``cls``, or
    defined in a class body (the methods of ``OVERRIDES`` are Optuna's, not counted)."""
    overrides = {o.rsplit(".", 1)[1] for o in optuna_private.OVERRIDES}
    own: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                    and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                own.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name not in overrides:
                        own.add(item.name)
                    elif isinstance(item, ast.AnnAssign | ast.Assign):
                        targets = [item.target] if isinstance(item, ast.AnnAssign) else item.targets
                        own |= {t.id for t in targets if isinstance(t, ast.Name)}
    return own


def touches(module: str, tree: ast.Module, names: set[str], methods: set[str], own: set[str]) -> Iterator[str]:
    """Where ``tree`` reaches one of Optuna's private names: an import of a private module of
    Optuna (``optuna.storages._rdb``) or of a private name from Optuna; an attribute ``x._name``
    of Optuna's (on ``self`` or ``cls`` too, where autoopt's own class does not define it, i.e.
    inherits it from Optuna); a ``getattr``, ``setattr``, ``hasattr`` or ``delattr`` of one by its
    name; a method defined under the name of one of Optuna's private methods (an override Optuna
    calls). Docstrings and comments that name one are prose, not counted."""
    for node in ast.walk(tree):
        where = f"{module}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            base = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                path = f"{base}.{alias.name}" if base else alias.name
                if path.split(".")[0] == "optuna" and any(_private(part) for part in path.split(".")):
                    yield f"{where} imports {path}"
        elif isinstance(node, ast.Attribute) and node.attr in names:
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if not on_self or node.attr not in own:
                yield f"{where} reaches {ast.unparse(node)}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and node.args[1].value in names:
            yield f"{where} reaches {ast.unparse(node)}"
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in methods:
                    override = f"{module}.{node.name}.{item.name}"
                    if override not in optuna_private.OVERRIDES:
                        yield f"{module}:{item.lineno} defines {override}, one of Optuna's private methods"


def test_no_other_module_touches_an_optuna_private_name() -> None:
    names, methods = optuna_private_names()
    assert {"_trial_id", "_get_trials", "_cached_frozen_trial"} <= names, "Optuna's source was not read"
    trees = {".".join(path.relative_to(ROOT).with_suffix("").parts): ast.parse(path.read_text(encoding="utf-8"))
             for path in sorted(PACKAGE.rglob("*.py"))}
    own = autoopt_own_names(trees)
    found = [t for module, tree in trees.items() if module != optuna_private.__name__
             for t in touches(module, tree, names, methods, own)]
    assert not found, "Optuna's private names outside autoopt.study.optuna_private (give each a function " \
                      "there):\n" + "\n".join(found)
    assert list(touches(optuna_private.__name__, trees[optuna_private.__name__], names, methods, own)), \
        "the check finds nothing even where Optuna's private names are"
