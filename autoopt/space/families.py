"""``Family``: one optimizer family's class, search space and protocol, and its checks.

``make_family`` builds a checked family (a built-in, a ``register_optimizer`` call, a study
file's ``custom_optimizers``); ``family_defaults`` gives the published defaults it trains at
outside the search (the portfolio, ``autoopt compare``, the baselines).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from autoopt.errors import UsageError
from autoopt.space.dims import Dimension, Fixed, check_space, default_of

if TYPE_CHECKING:
    import torch

# What an optimizer is built on: a module (preferred: parameter splits need it) or its parameters.
ModelOrParams: TypeAlias = "torch.nn.Module | Iterable[torch.Tensor]"

PRESETS = ("classic", "modern", "all")


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
    split: Callable[[ModelOrParams, dict[str, Any]], list[dict[str, Any]]] | None = None
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



def family_defaults(fam: Family) -> dict[str, Any]:
    """``default_params`` of a ``Family`` object (a study's own family, not in the registry)."""
    params = {k: d.value for k, d in fam.space.items() if isinstance(d, Fixed)}
    if fam.defaults:
        params.update(fam.defaults)
    elif "lr" not in params:
        params["lr"] = default_of(fam.space["lr"])
    return params
