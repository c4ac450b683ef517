"""The built-in optimizer families: torch's classics and the modern ones of pytorch-optimizer.

Each entry names its class by import path (loaded only when a trial builds it), its search
space from the paper or the library's advice, its protocol and its published defaults. Each is
written once, in the registry's order (``BUILTIN``); ``PORTFOLIO_PRIOR`` orders the same objects
by how likely each wins untuned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from autoopt.errors import UsageError
from autoopt.space.dims import Choice, Dimension, Fixed, LogUniform, Uniform
from autoopt.space.families import Family, ModelOrParams

if TYPE_CHECKING:
    import torch


def _no_nesterov_without_momentum(params: dict[str, Any]) -> dict[str, Any]:
    # torch.optim.SGD refuses nesterov=True with zero momentum.
    if params.get("nesterov") and not params.get("momentum"):
        return {**params, "nesterov": False}
    return params


def _adam_like(wd: Dimension) -> dict[str, Dimension]:
    return {"lr": LogUniform(1e-5, 1e-1), "beta1": Uniform(0.8, 0.99), "beta2": Uniform(0.9, 0.9999),
            "eps": LogUniform(1e-10, 1e-6), "weight_decay": wd}


def _by_name(*families: Family) -> dict[str, Family]:
    """The families keyed by their names, in the order given (the registry's order)."""
    return {fam.name: fam for fam in families}


CLASSIC = ("all", "classic")
MODERN = ("all", "modern")

BUILTIN: dict[str, Family] = _by_name(
    _SGD := Family(
        "sgd", "torch.optim:SGD",
        {"lr": LogUniform(1e-4, 1.0), "momentum": Uniform(0.0, 0.99), "nesterov": Choice(True, False),
         "weight_decay": LogUniform(1e-6, 1e-2)},
        adjust=_no_nesterov_without_momentum, presets=CLASSIC, summary="SGD with (Nesterov) momentum",
        defaults={"lr": 0.01, "momentum": 0.9}),  # the tutorial's SGD
    _ADAM := Family("adam", "torch.optim:Adam", _adam_like(LogUniform(1e-6, 1e-2)), presets=CLASSIC,
                    summary="Adam (Kingma & Ba 2015)", defaults={"lr": 1e-3}),
    _ADAMW := Family("adamw", "torch.optim:AdamW", _adam_like(LogUniform(1e-5, 1e-1)), presets=CLASSIC,
                     summary="Adam with decoupled weight decay", defaults={"lr": 1e-3, "weight_decay": 1e-2}),
    _RMSPROP := Family(
        "rmsprop", "torch.optim:RMSprop",
        {"lr": LogUniform(1e-5, 1e-1), "alpha": Uniform(0.9, 0.999), "momentum": Uniform(0.0, 0.9),
         "eps": LogUniform(1e-10, 1e-6), "weight_decay": LogUniform(1e-6, 1e-2)},
        presets=CLASSIC, summary="RMSprop (Hinton)", defaults={"lr": 1e-3}),  # the tutorial's comparison
    _ADAGRAD := Family(
        "adagrad", "torch.optim:Adagrad",
        {"lr": LogUniform(1e-4, 1.0), "weight_decay": LogUniform(1e-6, 1e-2), "eps": LogUniform(1e-10, 1e-6)},
        presets=CLASSIC, summary="Adagrad (Duchi et al. 2011)", defaults={"lr": 0.01}),
    _NADAM := Family("nadam", "torch.optim:NAdam", _adam_like(LogUniform(1e-6, 1e-2)), presets=CLASSIC,
                     summary="Adam with Nesterov momentum", defaults={"lr": 2e-3}),
    _RADAM := Family("radam", "torch.optim:RAdam", _adam_like(LogUniform(1e-6, 1e-2)), presets=CLASSIC,
                     summary="Rectified Adam", defaults={"lr": 1e-3}),
)


# --- modern families (pytorch-optimizer, imported only when a trial builds one) ---


def muon_hidden_params(model_or_params: ModelOrParams) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
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

    params: list[torch.Tensor]
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


def _muon_split(model_or_params: ModelOrParams, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    # Muon takes hidden matrices (use_muon=True, lr); everything else falls back to its internal
    # AdamW (use_muon=False, adamw_lr). Weight decay as in param_groups: none on ndim < 2.
    hidden, rest = muon_hidden_params(model_or_params)
    wd = kwargs.get("weight_decay", 0.0)
    groups = [{"params": hidden, "use_muon": True, "weight_decay": wd},
              {"params": [p for p in rest if p.ndim >= 2], "use_muon": False, "weight_decay": wd},
              {"params": [p for p in rest if p.ndim < 2], "use_muon": False, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


BUILTIN.update(_by_name(
    # Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms": sign updates have a
    # larger norm, so lr 3-10x smaller than AdamW's and weight decay 3-10x larger; betas (0.9, 0.99).
    _LION := Family(
        "lion", "pytorch_optimizer:Lion",
        {"lr": LogUniform(1e-6, 1e-2), "beta1": Uniform(0.85, 0.95), "beta2": Uniform(0.95, 0.995),
         "weight_decay": LogUniform(1e-4, 1.0)},
        extra="pytorch-optimizer", presets=MODERN, summary="Lion: sign-momentum (Chen et al. 2023)",
        # AdamW's torch defaults (1e-3, 1e-2) with lr x0.1 and weight decay x10, as the paper advises.
        defaults={"lr": 1e-4, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1}),
    # Taniguchi et al. 2024, "ADOPT: Modified Adam Can Converge with Any beta2": Adam's lr range,
    # beta2 near 0.9999 (its default), eps 1e-6.
    _ADOPT := Family(
        "adopt", "pytorch_optimizer:ADOPT",
        {"lr": LogUniform(1e-5, 1e-1), "beta1": Uniform(0.8, 0.99), "beta2": Uniform(0.99, 0.9999),
         "weight_decay": LogUniform(1e-6, 1e-2)},
        extra="pytorch-optimizer", presets=MODERN,
        summary="ADOPT: Adam that converges with any beta2 (Taniguchi et al. 2024)",
        defaults={"lr": 1e-3, "beta1": 0.9, "beta2": 0.9999}),
    # Defazio et al. 2024, "The Road Less Scheduled": no scheduler (the averaging replaces it),
    # lr 1-10x larger than AdamW's, warmup recommended; evaluate at the averaged weights.
    _SFADAMW := Family(
        "sfadamw", "pytorch_optimizer:ScheduleFreeAdamW",
        {"lr": LogUniform(1e-4, 5e-2), "beta1": Uniform(0.85, 0.98), "beta2": Uniform(0.99, 0.9999),
         "weight_decay": LogUniform(1e-6, 1e-1), "warmup_steps": Choice(0, 25, 100, 400)},
        schedulers=False, train_eval=True, extra="pytorch-optimizer", presets=MODERN,
        summary="Schedule-Free AdamW (Defazio et al. 2024; AlgoPerf self-tuning winner)",
        defaults={"lr": 0.0025, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0, "warmup_steps": 0}),
    # Mishchenko & Defazio 2024, "Prodigy": learning-rate-free; lr stays 1.0 and d_coef scales the
    # estimated step size (0.5 more careful, 2 more aggressive). safeguard_warmup is the authors'
    # advice when a warmup schedule may be sampled.
    _PRODIGY := Family(
        "prodigy", "pytorch_optimizer:Prodigy",
        {"lr": Fixed(1.0), "d_coef": LogUniform(0.1, 10.0), "beta1": Uniform(0.85, 0.95),
         "beta2": Uniform(0.99, 0.9999), "weight_decay": LogUniform(1e-6, 1e-1),
         "safeguard_warmup": Fixed(True)},
        extra="pytorch-optimizer", presets=MODERN,
        summary="Prodigy: learning-rate-free Adam (Mishchenko & Defazio 2024)",
        defaults={"lr": 1.0, "d_coef": 1.0, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0,
                  "safeguard_warmup": False}),
    # Defazio & Mishchenko 2023, "Learning-Rate-Free Learning by D-Adaptation" (Adam variant).
    _DADAPT_ADAM := Family(
        "dadapt_adam", "pytorch_optimizer:DAdaptAdam",
        {"lr": Fixed(1.0), "beta1": Uniform(0.85, 0.95), "beta2": Uniform(0.99, 0.9999),
         "weight_decay": LogUniform(1e-6, 1e-1), "weight_decouple": Fixed(True)},
        extra="pytorch-optimizer", presets=MODERN,
        summary="D-Adaptation Adam: learning-rate-free (Defazio & Mishchenko 2023)",
        defaults={"lr": 1.0, "beta1": 0.9, "beta2": 0.999, "weight_decay": 0.0}),
    # Jordan et al. 2024, "Muon": lr ~0.02 and Nesterov momentum 0.95 for the hidden matrices;
    # embeddings, output layer, biases and norms go to AdamW at its usual lr (adamw_lr).
    _MUON := Family(
        "muon", "pytorch_optimizer:Muon",
        {"lr": LogUniform(2e-3, 0.2), "momentum": Uniform(0.85, 0.99), "weight_decay": LogUniform(1e-5, 1e-1),
         "adamw_lr": LogUniform(1e-4, 1e-2)},
        split=_muon_split, extra="pytorch-optimizer", presets=MODERN,
        summary="Muon: orthogonalised momentum for hidden matrices, AdamW for the rest (Jordan et al. 2024)",
        defaults={"lr": 0.02, "momentum": 0.95, "weight_decay": 0.0, "adamw_lr": 3e-4}),
    # Vyas et al. 2024, "SOAP: Improving and Stabilizing Shampoo using Adam": betas (0.95, 0.95),
    # lr around 3e-3, preconditioner refreshed every ~10 steps; AlgoPerf external-tuning winner.
    _SOAP := Family(
        "soap", "pytorch_optimizer:SOAP",
        {"lr": LogUniform(3e-4, 3e-2), "beta1": Uniform(0.9, 0.98), "beta2": Uniform(0.9, 0.99),
         "weight_decay": LogUniform(1e-4, 1e-1), "precondition_frequency": Choice(10, 1, 5, 20, 50)},
        extra="pytorch-optimizer", presets=MODERN, summary="SOAP: Shampoo in Adam's eigenbasis (Vyas et al. 2024)",
        defaults={"lr": 3e-3, "beta1": 0.95, "beta2": 0.95, "weight_decay": 1e-2,
                  "precondition_frequency": 10}),
))


# The order the portfolio screens families in when --trials is smaller than the portfolio: most
# likely to win at its published defaults on an unseen task first. AdamW, NAdam and Adam are the
# robust defaults of Schmidt et al. 2021 ("Descending through a crowded valley") and of AlgoPerf's
# baseline (NAdamW); SOAP won AlgoPerf's external tuning and led on the held-out MNIST subset of
# issue 9, ADOPT and Prodigy followed it there (Prodigy needs no lr); Lion, RAdam and Muon are
# strong but more setting-sensitive; Schedule-Free AdamW wants warmup; RMSprop, SGD (lr-sensitive
# at defaults), D-Adaptation and Adagrad rarely win untuned.
PORTFOLIO_PRIOR: tuple[str, ...] = tuple(fam.name for fam in (
    _ADAMW, _NADAM, _ADAM, _SOAP, _ADOPT, _PRODIGY, _LION, _RADAM, _MUON, _SFADAMW, _RMSPROP, _SGD, _DADAPT_ADAM,
    _ADAGRAD))
