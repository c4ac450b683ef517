"""Figure helpers shared by ``autoopt report`` and ``autoopt compare``: off-screen (Agg)
figures of one size, saved as PNGs, and the tutorial's loss-curve comparison.

>>> fig = comparison_curves([{"label": "sgd lr=0.01", "train_loss": [2.0, 1.0, 0.5]}], title="demo")
>>> [line.get_label() for line in fig.axes[0].get_lines()]
['sgd lr=0.01']
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE = (8.0, 4.5)  # inches; at DPI that is an 800 x 450 PNG
DPI = 100


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: works with no screen
    import matplotlib.pyplot as plt

    return plt


def figure() -> tuple[Any, Any]:
    plt = pyplot()
    return plt.subplots(figsize=FIGSIZE, dpi=DPI)


def integer_ticks() -> Any:
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def note(ax: Axes, text: str) -> None:
    """Write why a plot is empty on the plot itself, so an empty figure still explains itself."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])


def comparison_curves(curves: list[dict[str, Any]], *, title: str = "optimizer comparison",
                      key: str = "train_loss") -> Any:
    """One line per curve (``{"label", key: [per-epoch values], "std": [...] optional}``) on one
    axis: the tutorial's comparison figure. A ``std`` list draws a band of ±1 std."""
    fig, ax = figure()
    for c in curves:
        ys = c[key]
        epochs = list(range(1, len(ys) + 1))
        (line,) = ax.plot(epochs, ys, marker="o", markersize=3, label=c["label"])
        if c.get("std"):
            lo = [y - s for y, s in zip(ys, c["std"], strict=True)]
            hi = [y + s for y, s in zip(ys, c["std"], strict=True)]
            ax.fill_between(epochs, lo, hi, color=line.get_color(), alpha=0.15)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set_ylabel(key.replace("_", " "))
    if curves:
        ax.set_yscale("log")
        ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
    else:
        note(ax, "no run finished")
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG of exactly ``FIGSIZE * DPI`` pixels and free it."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def optimization_history(study: optuna.Study) -> Any:
    """Each complete trial's value and the best so far, by trial number; pruned trials as grey
    crosses at their last reported value (they stopped early: not a final value)."""
    done = [(t.number, t.value) for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and t.value is not None]
    maximize = study.direction.name == "MAXIMIZE"
    fig, ax = figure()
    xs = [x for x, _ in done]
    ys = [y for _, y in done]
    best: list[float] = []
    for y in ys:
        best.append(y if not best else (max(best[-1], y) if maximize else min(best[-1], y)))
    pruned = [(t.number, t.intermediate_values[max(t.intermediate_values)])
              for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and t.intermediate_values]
    pruned = [(x, y) for x, y in pruned if math.isfinite(y)]
    ax.scatter(xs, ys, s=18, label="complete trial", color="tab:blue", alpha=0.7)
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), s=22, marker="x", color="0.45",
                   label="pruned trial (last reported value)")
    ax.step(xs, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(integer_ticks())
    ax.set_ylabel(study.user_attrs.get("metric", "objective"))
    ax.set_title(f"optimization history: {study.study_name}")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the data, never over it
    fig.tight_layout()
    return fig
