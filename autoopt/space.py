"""THE registry: optimizer families, schedulers, gradient clipping and their search space.

One table (``FAMILIES``) maps a family name to its optimizer class, its conditional
search space and its protocol (whether it takes a scheduler, whether it needs
``optimizer.train()``/``optimizer.eval()``, whether it splits the parameters). The same
table feeds ``suggest_config`` (Optuna), ``build_optimizer`` (trials and ``recommend()``),
``autoopt tasks``/docs and the tests that loop over every family. Adding an optimizer is
one entry, or one call to ``register_optimizer``.

>>> import torch
>>> model = torch.nn.Linear(4, 2)
>>> opt = build_optimizer(model, "sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True})
>>> type(opt).__name__
'SGD'
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from autoopt.errors import UsageError

if TYPE_CHECKING:
    import optuna
    import torch


# --- search dimensions -------------------------------------------------------------------


@dataclass(frozen=True)
class LogUniform:
    """A float searched on a log scale between ``low`` and ``high``."""

    low: float
    high: float


@dataclass(frozen=True)
class Uniform:
    """A float searched uniformly between ``low`` and ``high``."""

    low: float
    high: float


@dataclass(frozen=True)
class IntRange:
    """An integer searched between ``low`` and ``high`` (both included)."""

    low: int
    high: int


@dataclass(frozen=True)
class Choice:
    """One of a few values (bool, int, float or str)."""

    options: tuple[Any, ...]

    def __init__(self, *options: Any) -> None:
        object.__setattr__(self, "options", tuple(options))


@dataclass(frozen=True)
class Fixed:
    """A value that is not searched."""

    value: Any


Dimension = LogUniform | Uniform | IntRange | Choice | Fixed


def suggest(trial: optuna.trial.BaseTrial, name: str, dim: Dimension) -> Any:
    """Ask ``trial`` for the value of one dimension."""
    match dim:
        case Fixed(value):
            return value
        case LogUniform(low, high):
            return trial.suggest_float(name, low, high, log=True)
        case Uniform(low, high):
            return trial.suggest_float(name, low, high)
        case IntRange(low, high):
            return trial.suggest_int(name, low, high)
        case Choice(options):
            return trial.suggest_categorical(name, list(options))
    raise TypeError(f"not a search dimension: {dim!r}")


def default_of(dim: Dimension) -> Any:
    """A representative value of a dimension (its midpoint), for smoke tests and priors."""
    match dim:
        case Fixed(value):
            return value
        case LogUniform(low, high):
            return math.sqrt(low * high)
        case Uniform(low, high):
            return (low + high) / 2
        case IntRange(low, high):
            return (low + high) // 2
        case Choice(options):
            return options[0]
    raise TypeError(f"not a search dimension: {dim!r}")


_FIX = "write {log: [low, high]}, {uniform: [low, high]}, {int: [low, high]}, {choice: [...]} or a fixed value"


def parse_dimension(raw: Any, where: str) -> Dimension:
    """Read a dimension from a study file and check it (``check_dimension``).

    ``{log: [1e-4, 1]}``, ``{uniform: [0, 0.99]}``, ``{int: [1, 5]}``, ``{choice: [a, b]}``,
    or a plain value (fixed). ``where`` (``sgd.lr``) names it in errors; its last part is the
    parameter's name.
    """
    if isinstance(raw, Mapping):
        if len(raw) != 1:
            raise UsageError(f"{where}: give one of log, uniform, int, choice; got {sorted(map(str, raw))}")
        (kind, value), = raw.items()
        kinds = {"log": LogUniform, "uniform": Uniform, "int": IntRange}
        if kind == "choice" and isinstance(value, list) and value:
            dim: Dimension = Choice(*value)
        elif kind in kinds and isinstance(value, list) and len(value) == 2:
            low, high = value
            if not (_is_number(low) and _is_number(high)):
                raise UsageError(f"{where}: {kind} needs two numbers [low, high], got {value}")
            cast = int if kind == "int" else float
            dim = kinds[kind](cast(low), cast(high))
        else:
            raise UsageError(f"{where}: {_FIX}; got {dict(raw)}")
    elif isinstance(raw, bool | int | float | str) or raw is None:
        dim = Fixed(raw)
    else:
        raise UsageError(f"{where}: cannot read {raw!r} as a search dimension; {_FIX}")
    check_dimension(where.rpartition(".")[2], dim, where)
    return dim


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_rate(param: str) -> bool:
    return param == "lr" or param.endswith("_lr")


def check_dimension(param: str, dim: Any, where: str) -> None:
    """Refuse a dimension no trial could use: bounds that are not finite numbers, low >= high,
    a log range not above 0, and a learning rate (``lr``, ``*_lr``) that could be 0, negative or
    not a number. Raises a one-line ``UsageError`` naming ``where`` and the fix."""
    rate = _is_rate(param)
    match dim:
        case LogUniform(low, high) | Uniform(low, high) | IntRange(low, high):
            kind = {LogUniform: "log", Uniform: "uniform", IntRange: "int"}[type(dim)]
            if not (_is_number(low) and _is_number(high) and math.isfinite(low) and math.isfinite(high)):
                raise UsageError(f"{where}: {kind} bounds must be finite numbers, got [{low}, {high}]")
            if low >= high:
                fix = f"write [{high}, {low}]" if high < low else "write a single value to fix it"
                raise UsageError(f"{where}: {kind} needs [low, high] with low < high, got [{low}, {high}]; {fix}")
            if (isinstance(dim, LogUniform) or rate) and low <= 0:
                what = "a learning rate" if rate else "a log range"
                raise UsageError(f"{where}: {what} must stay above 0, got [{low}, {high}]; "
                                 "use e.g. {log: [1.0e-4, 1.0e-1]}")
        case Choice(options):
            for value in options:
                _check_value(param, value, where, rate)
        case Fixed(value):
            _check_value(param, value, where, rate)
        case _:
            raise UsageError(f"{where}: not a search dimension: {dim!r}; use LogUniform, Uniform, IntRange, "
                             "Choice or a fixed value")


def _check_value(param: str, value: Any, where: str, rate: bool) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}: {value} is not a usable value; give a finite number")
    if rate and not (_is_number(value) and value > 0):
        raise UsageError(f"{where}: a learning rate must be a positive number, got {value!r}; "
                         "e.g. 1.0e-3 or {log: [1.0e-4, 1.0e-1]}")


def check_space(space: Mapping[str, Any], where: str) -> None:
    """``check_dimension`` for every entry of a family's space (``where`` is the family's name)."""
    for param, dim in space.items():
        check_dimension(param, dim, f"{where}.{param}")


# --- optimizer families ------------------------------------------------------------------


def _no_nesterov_without_momentum(params: dict[str, Any]) -> dict[str, Any]:
    # torch.optim.SGD refuses nesterov=True with zero momentum.
    if params.get("nesterov") and not params.get("momentum"):
        return {**params, "nesterov": False}
    return params


@dataclass(frozen=True)
class Family:
    """One optimizer family: its class, its search space and its protocol.

    ``optimizer_class`` is an import path (``"torch.optim:SGD"``) or a class, loaded only
    when a trial builds the optimizer. ``schedulers=False`` means the family takes no
    learning-rate scheduler (Schedule-Free); ``train_eval=True`` means the training loop calls
    ``optimizer.train()`` before training and ``optimizer.eval()`` before evaluation;
    ``split`` builds the parameter groups itself (Muon); ``extra`` names the pip package the
    class comes from (named in the error when it is missing). ``defaults`` are the fixed
    settings the portfolio, ``autoopt compare`` and the baselines train with (the torch or
    paper defaults, in the space's names: ``lr``, ``beta1``, ...); empty means the class's own
    defaults with the space's representative ``lr``.
    """

    name: str
    optimizer_class: str | type
    space: Mapping[str, Dimension]
    schedulers: bool = True
    train_eval: bool = False
    split: Callable[[Any, dict[str, Any]], list[dict[str, Any]]] | None = None
    adjust: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    extra: str | None = None
    presets: tuple[str, ...] = ("all",)
    summary: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def load_class(self) -> type[torch.optim.Optimizer]:
        """The optimizer class, imported on first use; anything but a ``torch.optim.Optimizer``
        subclass is a ``UsageError`` naming the family."""
        import torch

        cls = self.optimizer_class
        if isinstance(cls, str):
            cls = _import_class(self.name, cls, self.extra)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            shown = self.optimizer_class if isinstance(self.optimizer_class, str) else repr(cls)
            raise UsageError(f"optimizer '{self.name}': {shown} is not a torch.optim.Optimizer subclass; "
                             "give the import path of an optimizer class (module:Class)")
        return cls

    def available(self) -> bool:
        """Whether the family's class can be imported here."""
        try:
            self.load_class()
        except UsageError:
            return False
        return True


def _import_class(name: str, path: str, package: str | None) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if package:
            raise UsageError(f"optimizer '{name}' needs the package {package}, which is missing here "
                             f"(it is a dependency of autoopt): pip install {package}") from None
        raise UsageError(f"optimizer '{name}': cannot import {module_name} ({exc}); "
                         "is the module installed or on PYTHONPATH?") from None
    except Exception as exc:  # the module itself is broken: a SyntaxError, an error at import
        raise UsageError(f"optimizer '{name}': importing {module_name} failed ({type(exc).__name__}: {exc}); "
                         "fix that module") from None
    if not hasattr(module, attr):
        raise UsageError(f"optimizer '{name}': {module_name} has no {attr}; check the class name")
    return getattr(module, attr)


def _adam_like(wd: Dimension, lr: Dimension = LogUniform(1e-5, 1e-1)) -> dict[str, Dimension]:
    return {"lr": lr, "beta1": Uniform(0.8, 0.99), "beta2": Uniform(0.9, 0.9999),
            "eps": LogUniform(1e-10, 1e-6), "weight_decay": wd}


CLASSIC = ("all", "classic")
MODERN = ("all", "modern")

_BUILTIN: dict[str, Family] = {
    "sgd": Family(
        "sgd", "torch.optim:SGD",
        {"lr": LogUniform(1e-4, 1.0), "momentum": Uniform(0.0, 0.99), "nesterov": Choice(True, False),
         "weight_decay": LogUniform(1e-6, 1e-2)},
        adjust=_no_nesterov_without_momentum, presets=CLASSIC, summary="SGD with (Nesterov) momentum",
        defaults={"lr": 0.01, "momentum": 0.9}),  # the tutorial's SGD
    "adam": Family("adam", "torch.optim:Adam", _adam_like(LogUniform(1e-6, 1e-2)), presets=CLASSIC,
                   summary="Adam (Kingma & Ba 2015)", defaults={"lr": 1e-3}),
    "adamw": Family("adamw", "torch.optim:AdamW", _adam_like(LogUniform(1e-5, 1e-1)), presets=CLASSIC,
                    summary="Adam with decoupled weight decay", defaults={"lr": 1e-3, "weight_decay": 1e-2}),
    "rmsprop": Family(
        "rmsprop", "torch.optim:RMSprop",
        {"lr": LogUniform(1e-5, 1e-1), "alpha": Uniform(0.9, 0.999), "momentum": Uniform(0.0, 0.9),
         "eps": LogUniform(1e-10, 1e-6), "weight_decay": LogUniform(1e-6, 1e-2)},
        presets=CLASSIC, summary="RMSprop (Hinton)", defaults={"lr": 1e-3}),  # the tutorial's comparison
    "adagrad": Family(
        "adagrad", "torch.optim:Adagrad",
        {"lr": LogUniform(1e-4, 1.0), "weight_decay": LogUniform(1e-6, 1e-2), "eps": LogUniform(1e-10, 1e-6)},
        presets=CLASSIC, summary="Adagrad (Duchi et al. 2011)", defaults={"lr": 0.01}),
    "nadam": Family("nadam", "torch.optim:NAdam", _adam_like(LogUniform(1e-6, 1e-2)), presets=CLASSIC,
                    summary="Adam with Nesterov momentum", defaults={"lr": 2e-3}),
    "radam": Family("radam", "torch.optim:RAdam", _adam_like(LogUniform(1e-6, 1e-2)), presets=CLASSIC,
                    summary="Rectified Adam", defaults={"lr": 1e-3}),
}


# --- modern families (pytorch-optimizer, imported only when a trial builds one) ---


def muon_hidden_params(model_or_params: Any) -> tuple[list[Any], list[Any]]:
    """Split parameters into Muon's hidden weight matrices and the rest.

    Hidden: trainable tensors of two or more dimensions (conv filters included; Muon
    orthogonalises them as flattened matrices), except embeddings and the output layer, which
    Muon's authors leave to AdamW together with biases and norm weights. On a module the
    output layer is its last ``nn.Linear``; on a bare iterable of tensors, which carries no
    structure, it is the last 2-D tensor.

    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> hidden, rest = muon_hidden_params(net)
    >>> [tuple(p.shape) for p in hidden], [tuple(p.shape) for p in rest]
    ([(4, 1, 3, 3)], [(4,), (2, 4), (2,)])
    """
    import torch

    if isinstance(model_or_params, torch.nn.Module):
        modules = list(model_or_params.modules())
        linears = [m for m in modules if isinstance(m, torch.nn.Linear)]
        not_hidden = {id(p) for m in modules if isinstance(m, torch.nn.Embedding | torch.nn.EmbeddingBag)
                      for p in m.parameters()}
        if linears:
            not_hidden.update(id(p) for p in linears[-1].parameters())
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = []
        for p in model_or_params:
            if isinstance(p, Mapping):
                raise UsageError("muon builds its own parameter groups: pass the model (or its "
                                 "parameters), not parameter groups")
            if p.requires_grad:
                params.append(p)
        matrices = [p for p in params if p.ndim == 2]
        not_hidden = {id(matrices[-1])} if matrices else set()
    hidden = [p for p in params if p.ndim >= 2 and id(p) not in not_hidden]
    hidden_ids = {id(p) for p in hidden}
    return hidden, [p for p in params if id(p) not in hidden_ids]


def _muon_split(model_or_params: Any, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    # Muon takes hidden matrices (use_muon=True, lr); everything else falls back to its internal
    # AdamW (use_muon=False, adamw_lr). Weight decay as in param_groups: none on ndim < 2.
    hidden, rest = muon_hidden_params(model_or_params)
    wd = kwargs.get("weight_decay", 0.0)
    groups = [{"params": hidden, "use_muon": True, "weight_decay": wd},
              {"params": [p for p in rest if p.ndim >= 2], "use_muon": False, "weight_decay": wd},
              {"params": [p for p in rest if p.ndim < 2], "use_muon": False, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


_BUILTIN.update({
    # Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms": sign updates have a
    # larger norm, so lr 3-10x smaller than AdamW's and weight decay 3-10x larger; betas (0.9, 0.99).
    "lion": Family(
        "lion", "pytorch_optimizer:Lion",
        {"lr": LogUniform(1e-6, 1e-2), "beta1": Uniform(0.85, 0.95), "beta2": Uniform(0.95, 0.995),
         "weight_decay": LogUniform(1e-4, 1.0)},
        extra="pytorch-optimizer", presets=MODERN, summary="Lion: sign-momentum (Chen et al. 2023)",
        # AdamW's torch defaults (1e-3, 1e-2) with lr x0.1 and weight decay x10, as the paper advises.
        defaults={"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1}),
    # Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2": Adam's lr range,
    # beta2 near 0.9999 (its default), eps 1e-6.
    "adopt": Family(
        "adopt", "pytorch_optimizer:ADOPT",
        {"lr": LogUniform(1e-5, 1e-1), "beta1": Uniform(0.8, 0.99), "beta2": Uniform(0.99, 0.9999),
         "weight_decay": LogUniform(1e-6, 1e-2)},
        extra="pytorch-optimizer", presets=MODERN,
        summary="ADOPT: Adam that converges with any beta2 (Taniguchi et al. 2024)",
        defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.9999}),
    # Defazio et al. 2024, "The Road Less Scheduled": no scheduler (the averaging replaces it),
    # lr 1-10x larger than AdamW's, warmup recommended; evaluate at the averaged weights.
    "sfadamw": Family(
        "sfadamw", "pytorch_optimizer:ScheduleFreeAdamW",
        {"lr": LogUniform(1e-4, 5e-2), "beta1": Uniform(0.85, 0.98), "beta2": Uniform(0.99, 0.9999),
         "weight_decay": LogUniform(1e-6, 1e-1), "warmup_steps": Choice(0, 25, 100, 400)},
        schedulers=False, train_eval=True, extra="pytorch-optimizer", presets=MODERN,
        summary="Schedule-Free AdamW (Defazio et al. 2024; AlgoPerf self-tuning winner)",
        defaults={"lr": 0.0025, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "warmup_steps": 0}),
    # Mishchenko & Defazio 2024, "Prodigy": learning-rate-free; lr stays 1.0 and d_coef scales the
    # estimated step size (0.5 more careful, 2 more aggressive). safeguard_warmup is the authors'
    # advice when a warmup schedule may be sampled.
    "prodigy": Family(
        "prodigy", "pytorch_optimizer:Prodigy",
        {"lr": Fixed(1.0), "d_coef": LogUniform(0.1, 10.0), "beta1": Uniform(0.85, 0.95),
         "beta2": Uniform(0.99, 0.9999), "weight_decay": LogUniform(1e-6, 1e-1),
         "safeguard_warmup": Fixed(True)},
        extra="pytorch-optimizer", presets=MODERN,
        summary="Prodigy: learning-rate-free Adam (Mishchenko & Defazio 2024)",
        defaults={"lr": 1.0, "d_coef": 1.0, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0,
                  "safeguard_warmup": False}),
    # Defazio & Mishchenko 2023, "Learning-Rate-Free Learning by D-Adaptation" (Adam variant).
    "dadapt_adam": Family(
        "dadapt_adam", "pytorch_optimizer:DAdaptAdam",
        {"lr": Fixed(1.0), "beta1": Uniform(0.85, 0.95), "beta2": Uniform(0.99, 0.9999),
         "weight_decay": LogUniform(1e-6, 1e-1), "weight_decouple": Fixed(True)},
        extra="pytorch-optimizer", presets=MODERN,
        summary="D-Adaptation Adam: learning-rate-free (Defazio & Mishchenko 2023)",
        defaults={"lr": 1.0, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0}),
    # Jordan et al. 2024, "Muon": lr ~0.02 and Nesterov momentum 0.95 for the hidden matrices;
    # embeddings, output layer, biases and norms go to AdamW at its usual lr (adamw_lr).
    "muon": Family(
        "muon", "pytorch_optimizer:Muon",
        {"lr": LogUniform(2e-3, 0.2), "momentum": Uniform(0.85, 0.99), "weight_decay": LogUniform(1e-5, 1e-1),
         "adamw_lr": LogUniform(1e-4, 1e-2)},
        split=_muon_split, extra="pytorch-optimizer", presets=MODERN,
        summary="Muon: orthogonalised momentum for hidden matrices, AdamW for the rest (Jordan et al. 2024)",
        defaults={"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0, "adamw_lr": 3e-4}),
    # Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam": betas (0.95, 0.95),
    # lr around 3e-3, preconditioner refreshed every ~10 steps; AlgoPerf external-tuning winner.
    "soap": Family(
        "soap", "pytorch_optimizer:SOAP",
        {"lr": LogUniform(3e-4, 3e-2), "beta1": Uniform(0.9, 0.98), "beta2": Uniform(0.9, 0.99),
         "weight_decay": LogUniform(1e-4, 1e-1), "precondition_frequency": Choice(10, 1, 5, 20, 50)},
        extra="pytorch-optimizer", presets=MODERN, summary="SOAP: Shampoo in Adam's eigenbasis (Vyas et al. 2024)",
        defaults={"lr": 3e-3, "beta1": 0.95, "beta2": 0.95, "weight_decay": 1e-2,
                  "precondition_frequency": 10}),
})

PRESETS = ("classic", "modern", "all")

# The order the portfolio screens families in when --trials is smaller than the portfolio: most
# likely to win at its published defaults on an unseen task first. AdamW, NAdam and Adam are the
# robust defaults of Schmidt et al. 2021 ("Descending through a crowded valley") and of AlgoPerf's
# baseline (NAdamW); SOAP won AlgoPerf's external tuning and led on the held-out MNIST subset of
# issue 9, ADOPT and Prodigy followed it there (Prodigy needs no lr); Lion, RAdam and Muon are
# strong but more setting-sensitive; Schedule-Free AdamW wants warmup; RMSprop, SGD (lr-sensitive
# at defaults), D-Adaptation and Adagrad rarely win untuned.
PORTFOLIO_PRIOR: tuple[str, ...] = (
    "adamw", "nadam", "adam", "soap", "adopt", "prodigy", "lion", "radam", "muon", "sfadamw", "rmsprop",
    "sgd", "dadapt_adam", "adagrad")


class Registry:
    """Named optimizer families, as timm's ``OptimizerRegistry``: the built-ins are registered
    once, at import; ``register`` refuses to overwrite a name unless ``replace=True``. Serialising
    a recommendation and validating a spec never register: a study file's own classes live in
    that spec's ``SearchSpace``.

    >>> REGISTRY.get("adamw").summary
    'Adam with decoupled weight decay'
    """

    def __init__(self, families: Iterable[Family] = ()) -> None:
        self._families: dict[str, Family] = {}
        for fam in families:
            self.add(fam)

    def add(self, fam: Family, *, replace: bool = False) -> Family:
        """Register a ``Family`` object; an existing name is a ``UsageError`` unless ``replace``."""
        if fam.name in self._families and not replace and self._families[fam.name] != fam:
            raise UsageError(f"optimizer '{fam.name}' is already registered; pick another name, "
                             "or pass replace=True to replace it")
        self._families[fam.name] = fam
        return fam

    def register(self, name: str, optimizer_class: str | type, space: Mapping[str, Dimension | Any], *,
                 replace: bool = False, **protocol: Any) -> Family:
        """Build (``make_family``) and register a family; see ``register_optimizer``."""
        return self.add(make_family(name, optimizer_class, space, **protocol), replace=replace)

    def unregister(self, name: str) -> None:
        """Remove a family a user registered; the built-ins stay."""
        if name in _BUILTIN:
            raise UsageError(f"optimizer '{name}' is built in and cannot be removed")
        self._families.pop(name, None)

    def get(self, name: str) -> Family:
        """The family called ``name``; an unknown name is a ``UsageError`` listing the known ones."""
        try:
            return self._families[name]
        except KeyError:
            raise UsageError(f"unknown optimizer '{name}'; known: {', '.join(self._families)} "
                             f"or a preset: {', '.join(PRESETS)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._families)

    def view(self) -> Mapping[str, Family]:
        """A read-only, live view of the registered families."""
        return MappingProxyType(self._families)

    def __contains__(self, name: object) -> bool:
        return name in self._families


def make_family(name: str, optimizer_class: str | type, space: Mapping[str, Dimension | Any],
                **protocol: Any) -> Family:
    """A checked ``Family`` (not registered): an identifier name, an ``lr`` entry, usable
    dimensions (``check_dimension``), and a class given as an object is checked at once."""
    if not name.isidentifier():
        raise UsageError(f"optimizer name {name!r} must be an identifier (letters, digits, _)")
    dims = {k: v if isinstance(v, Dimension) else Fixed(v) for k, v in space.items()}
    if "lr" not in dims:
        raise UsageError(f"optimizer '{name}': its space needs an 'lr' entry (a range or a fixed value)")
    check_space(dims, name)
    fam = Family(name, optimizer_class, dims, **protocol)
    if not isinstance(optimizer_class, str):
        fam.load_class()  # an object in hand: check it is an Optimizer class now
    return fam


REGISTRY = Registry(_BUILTIN.values())
FAMILIES: Mapping[str, Family] = REGISTRY.view()  # read-only; register through REGISTRY


def register_optimizer(name: str, optimizer_class: str | type, space: Mapping[str, Dimension | Any], *,
                       replace: bool = False, **protocol: Any) -> Family:
    """Register an optimizer family (a ``torch.optim.Optimizer`` subclass) with its search space.

    Values of ``space`` are dimensions (``LogUniform(1e-4, 1e-1)``) or fixed values. The family
    joins the preset ``all`` and can be named in ``--optimizers``. A name already registered
    (``adam``) is refused unless ``replace=True``.

    >>> import torch
    >>> class MySGD(torch.optim.SGD): pass
    >>> register_optimizer("mysgd", MySGD, {"lr": LogUniform(1e-3, 1.0)}).name
    'mysgd'
    """
    return REGISTRY.register(name, optimizer_class, space, replace=replace, **protocol)


def family(name: str) -> Family:
    """The registered family called ``name``; bad names are a ``UsageError`` listing known ones."""
    return REGISTRY.get(name)


def default_params(name: str) -> dict[str, Any]:
    """The published defaults family ``name`` trains at in the portfolio, ``autoopt compare`` and
    the baselines: its fixed dimensions, then its ``defaults`` (torch or paper defaults); a family
    without defaults (a user's own) trains at its class's defaults with its space's
    representative ``lr``.

    >>> default_params("sgd")
    {'lr': 0.01, 'momentum': 0.9}
    """
    return family_defaults(family(name))


def family_defaults(fam: Family) -> dict[str, Any]:
    """``default_params`` of a ``Family`` object (a study's own family, not in the registry)."""
    params = {k: d.value for k, d in fam.space.items() if isinstance(d, Fixed)}
    if fam.defaults:
        params.update(fam.defaults)
    elif "lr" not in params:
        params["lr"] = default_of(fam.space["lr"])
    return params


def resolve_optimizers(names: str | Iterable[str], custom: Mapping[str, Family] | None = None) -> list[str]:
    """Expand a preset or a comma-separated list into family names, checking each. ``custom``
    holds a study's own families (they join the preset ``all``)."""
    custom = custom or {}
    items = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    out: list[str] = []
    for item in items:
        if not item:
            continue
        if item in PRESETS:
            known = [*REGISTRY.view().values(), *custom.values()]
            chosen = [f.name for f in known if item in f.presets]
        elif item in custom:
            chosen = [item]
        else:
            chosen = [family(item).name]
        out.extend(n for n in chosen if n not in out)
    if not out:
        raise UsageError("no optimizers given; name some (sgd,adam) or a preset: " + ", ".join(PRESETS))
    return out


# --- schedulers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: its search space and how it is built.

    ``build(optimizer, params, epochs, steps_per_epoch)`` returns a torch scheduler that is
    stepped once per optimizer step, except ``per_epoch`` ones (plateau), stepped once per
    epoch with the validation loss. ``warmup`` says whether linear warmup may be put in front.
    """

    name: str
    space: Mapping[str, Dimension]
    build: Callable[..., Any] | None
    per_epoch: bool = False
    warmup: bool = True


def _step_lr(opt: Any, p: dict[str, Any], epochs: int, steps: int) -> Any:
    from torch.optim.lr_scheduler import StepLR

    return StepLR(opt, step_size=max(1, int(p["step_epochs"] * steps)), gamma=p["gamma"])


def _cosine(opt: Any, p: dict[str, Any], epochs: int, steps: int) -> Any:
    from torch.optim.lr_scheduler import LambdaLR

    # A factor, not CosineAnnealingLR's one absolute eta_min: each group decays to its own
    # lr x eta_min_ratio (Muon's AdamW group runs ~100x below its Muon group).
    total, floor = max(1, epochs * steps), p["eta_min_ratio"]
    return LambdaLR(opt, lambda step: (
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))))


def _onecycle(opt: Any, p: dict[str, Any], epochs: int, steps: int) -> Any:
    from torch.optim.lr_scheduler import OneCycleLR

    # max_lr is the tuned lr; momentum is cycled only where every group has the key OneCycleLR
    # cycles (it reads the optimizer's defaults: Muon's mixed groups have neither there).
    key = "betas" if "betas" in opt.defaults else "momentum" if "momentum" in opt.defaults else None
    cycle = key is not None and all(key in g for g in opt.param_groups)
    return OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=max(2, epochs * steps),
                      pct_start=p["pct_start"], cycle_momentum=cycle)


def _plateau(opt: Any, p: dict[str, Any], epochs: int, steps: int) -> Any:
    from torch.optim.lr_scheduler import ReduceLROnPlateau

    return ReduceLROnPlateau(opt, factor=p["factor"], patience=p["patience"])


def _exponential(opt: Any, p: dict[str, Any], epochs: int, steps: int) -> Any:
    from torch.optim.lr_scheduler import ExponentialLR

    # gamma is searched per epoch (what people reason about) and applied per step.
    return ExponentialLR(opt, gamma=p["gamma"] ** (1.0 / max(1, steps)))


SCHEDULES: dict[str, Schedule] = {
    "none": Schedule("none", {}, None),
    "step": Schedule("step", {"step_epochs": IntRange(1, 5), "gamma": Uniform(0.1, 0.7)}, _step_lr),
    "cosine": Schedule("cosine", {"eta_min_ratio": LogUniform(1e-3, 0.1)}, _cosine),
    "onecycle": Schedule("onecycle", {"pct_start": Uniform(0.1, 0.4)}, _onecycle, warmup=False),
    "plateau": Schedule("plateau", {"factor": Uniform(0.1, 0.7), "patience": IntRange(0, 3)}, _plateau,
                        per_epoch=True, warmup=False),
    "exponential": Schedule("exponential", {"gamma": Uniform(0.7, 0.99)}, _exponential),
}
WARMUP = Choice(0.0, 0.05, 0.1)  # fraction of all steps spent in linear warmup
GRAD_CLIP = LogUniform(0.1, 10.0)


def schedule(name: str) -> Schedule:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise UsageError(f"unknown scheduler '{name}'; known: {', '.join(SCHEDULES)}") from None


# --- one trial's configuration ---------------------------------------------------------------


@dataclass
class TrialConfig:
    """Everything a trial trains with, as plain data (it crosses process boundaries)."""

    optimizer: str
    optimizer_params: dict[str, Any]
    scheduler: str = "none"
    scheduler_params: dict[str, Any] = field(default_factory=dict)
    grad_clip_norm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "optimizer_params": dict(self.optimizer_params),
                "scheduler": self.scheduler, "scheduler_params": dict(self.scheduler_params),
                "grad_clip_norm": self.grad_clip_norm}

    def flat_params(self) -> dict[str, Any]:
        """All hyperparameters as one flat dict (MLflow params, tables)."""
        flat: dict[str, Any] = {"optimizer": self.optimizer, "scheduler": self.scheduler,
                                "grad_clip_norm": self.grad_clip_norm}
        flat.update(self.optimizer_params)
        flat.update({f"scheduler.{k}": v for k, v in self.scheduler_params.items()})
        return flat


@dataclass(frozen=True)
class SearchSpace:
    """The space one study searches: its families (with the study's overrides applied),
    schedules and clipping. Immutable: it holds its own ``Family`` objects, so a study file's
    classes never enter the global registry, and later registrations do not change it.

    ``custom`` supplies families that are not registered (a study file's ``custom_optimizers``);
    other names come from ``REGISTRY``.
    """

    optimizers: tuple[str, ...]
    schedulers: tuple[str, ...] = tuple(SCHEDULES)
    grad_clip: bool = True
    overrides: Mapping[str, Mapping[str, Dimension]] = field(default_factory=dict)
    custom: Mapping[str, Family] = field(default_factory=dict)
    families: Mapping[str, Family] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fams = {}
        for name in self.optimizers:
            fam = self.custom[name] if name in self.custom else family(name)
            extra = dict(self.overrides.get(name, {}))
            unknown = [k for k in extra if k not in fam.space]
            if unknown:
                raise UsageError(f"space.{name}.{unknown[0]}: {name} has no parameter {unknown[0]}; "
                                 f"known: {', '.join(fam.space)}")
            check_space(extra, name)
            fams[name] = dataclasses.replace(fam, space={**fam.space, **extra}) if extra else fam
        for name in self.schedulers:
            schedule(name)
        object.__setattr__(self, "optimizers", tuple(self.optimizers))
        object.__setattr__(self, "schedulers", tuple(self.schedulers))
        object.__setattr__(self, "families", MappingProxyType(fams))

    def family(self, name: str) -> Family:
        """This space's family ``name`` (its overrides applied); a ``UsageError`` if not in it."""
        try:
            return self.families[name]
        except KeyError:
            raise UsageError(f"optimizer '{name}' is not in this study's space: "
                             f"{', '.join(self.optimizers)}") from None

    def family_space(self, name: str) -> dict[str, Dimension]:
        return dict(self.family(name).space)

    def default_params(self, name: str) -> dict[str, Any]:
        """The published defaults of this space's family ``name`` (``default_params``)."""
        return family_defaults(self.family(name))


def suggest_config(trial: optuna.trial.BaseTrial, space: SearchSpace) -> TrialConfig:
    """Sample one trial's configuration. Parameters are named ``family.param`` so that each
    family's conditional subspace keeps its own distributions."""
    name = suggest(trial, "optimizer", Choice(*space.optimizers))
    fam = space.family(name)
    params = {k: suggest(trial, f"{name}.{k}", d) for k, d in fam.space.items()}
    sched_name, sched_params = "none", {}
    if fam.schedulers and space.schedulers:
        sched_name = suggest(trial, "scheduler", Choice(*space.schedulers))
        sched = schedule(sched_name)
        sched_params = {k: suggest(trial, f"{sched_name}.{k}", d) for k, d in sched.space.items()}
        if sched.warmup and sched.build is not None:
            sched_params["warmup_ratio"] = suggest(trial, "warmup_ratio", WARMUP)
    clip = None
    if space.grad_clip and suggest(trial, "grad_clip", Choice(False, True)):
        clip = suggest(trial, "grad_clip_norm", GRAD_CLIP)
    return TrialConfig(name, params, sched_name, sched_params, clip)


# --- builders (used by trials and by recommend()) ------------------------------------------


def param_groups(model_or_params: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with no weight decay on biases and normalisation weights (ndim < 2)."""
    params = model_or_params.parameters() if hasattr(model_or_params, "parameters") else model_or_params
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def optimizer_kwargs(params: Mapping[str, Any]) -> dict[str, Any]:
    """Turn searched names into constructor arguments (``beta1``, ``beta2`` -> ``betas``)."""
    kwargs = dict(params)
    betas = [kwargs.pop(k) for k in ("beta1", "beta2", "beta3") if k in kwargs]
    if betas:
        kwargs["betas"] = tuple(betas)
    return kwargs


def build_optimizer(model_or_params: Any, name: str | Family, params: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build family ``name`` (a registered name, or a ``Family``) with ``params`` on a module
    (preferred) or an iterable of parameters."""
    fam = name if isinstance(name, Family) else family(name)
    params = fam.adjust(dict(params)) if fam.adjust else dict(params)
    cls = fam.load_class()
    kwargs = optimizer_kwargs(params)
    if fam.split is not None:
        return cls(fam.split(model_or_params, kwargs), **{k: v for k, v in kwargs.items()
                                                           if k != "weight_decay"})
    wd = kwargs.pop("weight_decay", 0.0)
    return cls(param_groups(model_or_params, wd), **kwargs)


def build_scheduler(optimizer: Any, name: str, params: Mapping[str, Any], *, epochs: int,
                    steps_per_epoch: int) -> Any:
    """Build schedule ``name``; ``None`` for ``none``. Step it once per optimizer step, except
    ``plateau``: once per epoch with the validation loss (``Schedule.per_epoch``)."""
    sched = schedule(name)
    if sched.build is None:
        return None
    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    warm_steps = int(params.get("warmup_ratio", 0.0) * epochs * steps_per_epoch) if sched.warmup else 0
    if warm_steps < 1:
        return sched.build(optimizer, dict(params), epochs, steps_per_epoch)
    # The main schedule spans what is left after warmup, so cosine still reaches its floor.
    main = sched.build(optimizer, dict(params), epochs - warm_steps / steps_per_epoch, steps_per_epoch)
    warm = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warm_steps)
    return SequentialLR(optimizer, [warm, main], milestones=[warm_steps])
