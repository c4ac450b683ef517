"""Plots of a study: optimization history (more in ``autoopt report``)."""

from __future__ import annotations

from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works with no screen
    import matplotlib.pyplot as plt

    return plt


def optimization_history(study: Any) -> Any:
    """Each complete trial's value and the best so far, by trial number."""
    plt = _pyplot()
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None]
    maximize = study.direction.name == "MAXIMIZE"
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [t.number for t in trials]
    ys = [t.value for t in trials]
    best, run = [], None
    for y in ys:
        run = y if run is None else (max(run, y) if maximize else min(run, y))
        best.append(run)
    ax.scatter(xs, ys, s=18, label="trial", color="tab:blue", alpha=0.7)
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(study.user_attrs.get("metric", "objective"))
    ax.set_title(f"optimization history: {study.study_name}")
    ax.legend()
    fig.tight_layout()
    return fig
