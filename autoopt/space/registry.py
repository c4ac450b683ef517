"""THE registry of optimizer families: the built-ins, and the user's own (``register_optimizer``).

``family(name)`` looks one up, ``resolve_optimizers`` expands presets (``classic``,
``modern``, ``all``), ``preset(name)`` lists a preset's families and ``default_params`` gives
a family's published defaults: what other modules need about the families is read from here,
not listed again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from autoopt.errors import UsageError
from autoopt.space.builtin import BUILTIN
from autoopt.space.dims import Dimension
from autoopt.space.families import PRESETS, Family, family_defaults, make_family


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


REGISTRY = Registry(BUILTIN.values())
FAMILIES: Mapping[str, Family] = REGISTRY.view()  # read-only; register through REGISTRY


def register_optimizer(name: str, optimizer_class: str | type, space: Mapping[str, Dimension | Any], *,
                       replace: bool = False, **protocol: Any) -> Family:
    """Register an optimizer family (a ``torch.optim.Optimizer`` subclass) with its search space.

    Values of ``space`` are dimensions (``LogUniform(1e-4, 1e-1)``) or fixed values. The family
    joins the preset ``all`` and can be named in ``--optimizers``. A name already registered
    (``adam``) is refused unless ``replace=True``.

    >>> import torch
    >>> from autoopt.space import LogUniform
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


def preset(name: str, custom: Mapping[str, Family] | None = None) -> list[str]:
    """The families of preset ``name`` (``classic``, ``modern`` or ``all``), the registered ones
    in their order, then ``custom`` ones (a study's own families) that name it.

    >>> preset("modern")
    ['lion', 'adopt', 'sfadamw', 'prodigy', 'dadapt_adam', 'muon', 'soap']
    """
    if name not in PRESETS:
        raise UsageError(f"unknown preset '{name}'; known: {', '.join(PRESETS)}")
    known = [*REGISTRY.view().values(), *(custom or {}).values()]
    return [f.name for f in known if name in f.presets]


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
            chosen = preset(item, custom)
        elif item in custom:
            chosen = [item]
        else:
            chosen = [family(item).name]
        out.extend(n for n in chosen if n not in out)
    if not out:
        raise UsageError("no optimizers given; name some (sgd,adam) or a preset: " + ", ".join(PRESETS))
    return out
