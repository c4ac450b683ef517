"""GPUs per trial: the one rule for a trial's GPU share when none is asked for, and the check
that a local Ray can give what is asked."""

from __future__ import annotations

from autoopt.errors import UsageError

GPU_PACK = 0.25  # GPUs per trial where Ray sees a GPU and none was asked for: four trials per GPU


def resolve_gpus(requested: float | None, *, gpus_seen: float, ray_address: str | None = None) -> float:
    """GPUs per trial: as asked; or, when not asked (None), ``GPU_PACK`` where Ray sees a GPU
    and 0 where it sees none. Asking for GPUs from a local Ray on a machine without one is bad
    input (the workers would wait for a GPU forever); a cluster's GPUs are its own business.

    >>> resolve_gpus(None, gpus_seen=1), resolve_gpus(None, gpus_seen=0), resolve_gpus(1, gpus_seen=2)
    (0.25, 0.0, 1)
    """
    if requested is None:
        return GPU_PACK if gpus_seen > 0 else 0.0
    if requested > 0 and gpus_seen <= 0 and not ray_address:
        raise UsageError(f"--gpus-per-trial {requested:g}: there is no GPU on this machine; leave "
                         "--gpus-per-trial out to train on the CPUs, or join a cluster with --ray-address")
    return requested


def ray_gpus() -> float:
    """The GPUs the running Ray cluster has."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def gpus_per_trial(requested: float | None, *, ray_address: str | None = None) -> float:
    """``resolve_gpus`` against the running Ray cluster's GPUs."""
    return resolve_gpus(requested, gpus_seen=ray_gpus(), ray_address=ray_address)
