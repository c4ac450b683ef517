"""``autoopt report``: each plot shows what it claims, the summary reads right, MLflow gets a copy.

The study here is a real Optuna study on SQLite with a real MLflow parent run; its trials are
written directly (known losses, learning rates and values), so every line, point and error
bar can be checked against the numbers it must show. The report of a study that really ran
is checked in test_confirm.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from conftest import refused, run_main
from matplotlib.container import ErrorbarContainer
from PIL import Image

from autoopt import tracking
from autoopt.commands import report
from autoopt.evidence import Stats
from autoopt.recommendation import Recommendation
from autoopt.space import TrialConfig

EPOCHS = 3
# family -> [(lr, final val_accuracy)]
TRIALS = {"sgd": [(0.1, 0.90), (0.01, 0.95), (0.001, 0.60)], "adam": [(1e-3, 0.97), (1e-2, 0.80)]}


def _history(lr: float, final: float) -> list[dict[str, float]]:
    # Distinct, decreasing losses per trial, so a curve identifies its trial.
    return [{"train_loss": (2.0 - final) / (e + 1), "val_loss": (2.2 - final) / (e + 1),
             "val_accuracy": final * (e + 1) / EPOCHS, "lr": lr} for e in range(EPOCHS)]


def _trial(fam: str, lr: float, final: float, state: str = "COMPLETE") -> optuna.trial.FrozenTrial:
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import TrialState

    history = _history(lr, final)
    config = TrialConfig(fam, {"lr": lr}, "none", {}, None).to_dict()
    return optuna.trial.create_trial(
        params={"optimizer": fam, f"{fam}.lr": lr},
        distributions={"optimizer": CategoricalDistribution(["sgd", "adam"]),
                       f"{fam}.lr": FloatDistribution(1e-5, 1.0, log=True)},
        value=final if state == "COMPLETE" else None, state=getattr(TrialState, state),
        intermediate_values={e + 1: h["val_accuracy"] for e, h in enumerate(history)},
        user_attrs={"config": config, "history": history})


def _stats(values: list[float]) -> dict:
    return Stats.of(values).to_dict()


def _recommendation() -> dict:
    adam_best = TrialConfig("adam", {"lr": 1e-3})
    confirmation = {"trial_3": {"name": "trial_3", "trial_number": 3, **adam_best.to_dict(),
                                "val": _stats([0.96, 0.98]), "test": _stats([0.95, 0.97])},
                    "trial_1": {"name": "trial_1", "trial_number": 1,
                                **TrialConfig("sgd", {"lr": 0.01}).to_dict(),
                                "val": _stats([0.94, 0.92]), "test": _stats([0.93, 0.91])}}
    bases = [{"name": "adam_tutorial", "optimizer": "adam", "params": {"lr": 1e-3}, "scheduler": "none",
              "val": _stats([0.95, 0.93]), "test": _stats([0.94, 0.92])}]
    rec = Recommendation("digits", **adam_best.to_dict(), value=0.97, study_name="digits", trial_number=3,
                         source="study", chosen="trial_3", confirmation=confirmation,
                         baselines=bases,
                         improvement={"metric": "test_accuracy", "delta": 0.03, "spread": 0.01,
                                      "versus": "adam_tutorial", "tuned": "trial_3", "verdict": "better",
                                      "paired": {"deltas": [0.01, 0.05], "mean": 0.03, "ci95": [0.005, 0.055]}})
    return rec.to_dict()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working folder holding, in its default storage and tracking database, a study of five
    complete trials (sgd x3, adam x2) and one pruned, its stored recommendation and an MLflow
    parent run."""
    path = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(path)  # MLflow puts its artifacts beside the database, in the working folder
        st = optuna.create_study(study_name="digits", storage="sqlite:///autoopt.db", direction="maximize")
        st.set_user_attr("metric", "val_accuracy")
        for fam, runs in TRIALS.items():
            for lr, final in runs:
                st.add_trial(_trial(fam, lr, final))
        st.add_trial(_trial("sgd", 0.5, 0.3, state="PRUNED"))
        st.set_user_attr("recommendation", _recommendation())
        run = tracking.StudyRun("sqlite:///mlflow.db", "digits", "digits", {"task": "digits"})
        run.finish()
        (path / "parent_run").write_text(run.run_id)
    return path


@pytest.fixture()
def study(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=f"sqlite:///{folder / 'autoopt.db'}")


def test_loss_curves_show_each_familys_best_trial(study: optuna.Study) -> None:
    fig = report.loss_curves(study)
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    # best sgd is trial 1 (0.95), best adam is trial 3 (0.97); one train and one val line each
    assert sorted(lines) == ["adam (#3) train", "adam (#3) val", "sgd (#1) train", "sgd (#1) val"]
    sgd_train = [h["train_loss"] for h in _history(0.01, 0.95)]
    adam_val = [h["val_loss"] for h in _history(1e-3, 0.97)]
    assert list(lines["sgd (#1) train"].get_ydata()) == pytest.approx(sgd_train)
    assert list(lines["adam (#3) val"].get_ydata()) == pytest.approx(adam_val)
    assert list(lines["adam (#3) train"].get_xdata()) == [1, 2, 3]
    assert lines["sgd (#1) train"].get_color() == lines["sgd (#1) val"].get_color()
    assert lines["sgd (#1) val"].get_linestyle() == "--"
    assert ax.get_title() == "best loss curve per optimizer family" and ax.get_yscale() == "log"


def test_lr_vs_metric_has_one_scatter_per_family_on_a_log_axis(study: optuna.Study) -> None:
    fig = report.lr_vs_metric(study)
    (ax,) = fig.axes
    points = {c.get_label(): sorted(map(tuple, c.get_offsets().tolist())) for c in ax.collections}
    assert points["sgd"] == sorted((lr, v) for lr, v in TRIALS["sgd"])
    assert points["adam"] == sorted((lr, v) for lr, v in TRIALS["adam"])
    # the pruned sgd trial: its last reported value, in sgd's colour, left out of the legend
    assert points["_pruned"] == [(0.5, pytest.approx(0.3))]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["adam", "sgd"]


def test_optimization_history_shows_each_trial_and_the_best_so_far(study: optuna.Study) -> None:
    fig = report.optimization_history(study)
    (ax,) = fig.axes
    scatter = next(c for c in ax.collections if c.get_label() == "complete trial")
    assert [round(y, 6) for _, y in scatter.get_offsets().tolist()] == [0.9, 0.95, 0.6, 0.97, 0.8]
    (best,) = [line for line in ax.get_lines() if line.get_label() == "best so far"]
    assert list(best.get_ydata()) == pytest.approx([0.9, 0.95, 0.95, 0.97, 0.97])


def test_importances_rank_the_derived_parameters(study: optuna.Study) -> None:
    fig, importances = report.param_importances(study)
    (ax,) = fig.axes
    # optimizer and lr vary; scheduler and clipping never do, so they are not ranked
    assert set(importances) == {"optimizer", "lr"}
    assert sum(importances.values()) == pytest.approx(1.0)
    bars = {t.get_text(): p.get_width() for t, p in zip(ax.get_yticklabels(), ax.patches, strict=True)}
    assert bars == pytest.approx(importances)


def test_importances_with_too_few_trials_say_so(workdir: Path) -> None:
    st = optuna.create_study(direction="maximize")
    st.add_trial(_trial("sgd", 0.1, 0.9))
    fig, importances = report.param_importances(st)
    assert importances == {}
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert any("1 complete trial" in t and "at least" in t for t in texts)


def test_confirmation_plot_has_mean_and_std_error_bars(study: optuna.Study) -> None:
    rec = study.user_attrs["recommendation"]
    fig = report.confirmation_plot(Recommendation.from_dict(rec))
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [b.get_label() for b in bars] == ["val_accuracy (mean ± std)", "test_accuracy (mean ± std)"]
    names = ["trial_3", "trial_1", "adam_tutorial"]
    labels = [t.get_text() for t in ax.get_yticklabels()]  # rows top to bottom
    assert labels[0].startswith("★ trial_3") and [lbl.split(" (")[0].lstrip("★ ") for lbl in labels] == names
    assert all("\n" not in lbl for lbl in labels)  # one line each, read horizontally: no overlap
    entries = {**rec["confirmation"], "adam_tutorial": rec["baselines"][0]}
    for bar, key in zip(bars, ("val", "test"), strict=True):
        line, _, (segments,) = bar.lines
        assert list(line.get_xdata()) == pytest.approx([entries[n][key]["mean"] for n in names])
        widths = [seg[1][0] - seg[0][0] for seg in segments.get_segments()]
        assert widths == pytest.approx([2 * entries[n][key]["std"] for n in names])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "baseline (published default)" in legend  # the grey band has its entry
    assert "val_accuracy, one seed" in legend and "test_accuracy, one seed" in legend
    assert "★ the recommendation" in legend  # the star in the labels has its entry


def test_pareto_plot_marks_the_front(study: optuna.Study) -> None:
    rec = dict(study.user_attrs["recommendation"])
    speeds = {"trial_3": 2.0, "trial_1": 1.0, "adam_tutorial": 0.5}
    rec["confirmation"] = {n: {**e, "s_per_epoch": speeds[n]} for n, e in rec["confirmation"].items()}
    rec["baselines"] = [{**b, "s_per_epoch": speeds[b["name"]]} for b in rec["baselines"]]
    rec["baselines"].append({"name": "soap_default", "optimizer": "soap", "val": _stats([0.90, 0.91]),
                             "test": _stats([0.9, 0.9]), "s_per_epoch": 4.0, "excluded": "slower than 1.5x"})
    (ax,) = report.pareto_plot(Recommendation.from_dict(rec)).axes
    (front,) = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    # adam_tutorial (0.5 s, 0.94) < trial_1 (1 s, 0.93: not better, off the front) < trial_3 (2 s, 0.97);
    # soap (4 s, 0.905) is slower and worse: off the front
    assert list(front.get_xdata()) == [0.5, 2.0]
    assert list(front.get_ydata()) == pytest.approx([0.94, 0.97])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["Pareto front", "tuned", "baseline", "baseline (left out: --max-slowdown)",
                      "★ the recommendation"]
    assert "★ trial_3" in [t.get_text() for t in ax.texts] and ax.get_xscale() == "log"
    empty = report.pareto_plot(None)
    assert any("no confirmed config" in t.get_text() for t in empty.axes[0].texts)


def test_optimization_history_shows_pruned_trials_as_such(study: optuna.Study) -> None:
    (ax,) = report.optimization_history(study).axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "pruned trial (last reported value)" in legend
    pruned = next(c for c in ax.collections if c.get_label().startswith("pruned"))
    assert pruned.get_offsets().tolist() == [[5.0, pytest.approx(0.3)]]
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_loss_curves_name_the_families_they_leave_out(study: optuna.Study, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setattr(report, "LOSS_CURVE_FAMILIES", 1)
    (ax,) = report.loss_curves(study).axes
    assert sorted(line.get_label() for line in ax.get_lines()) == ["adam (#3) train", "adam (#3) val"]
    assert any("not drawn" in t.get_text() and "sgd" in t.get_text() for t in ax.texts)


def test_comparison_curves_draw_one_line_per_curve() -> None:
    curves = [{"label": "sgd", "train_loss": [1.0, 0.5], "std": [0.1, 0.05]},
              {"label": "adam", "train_loss": [0.8, 0.3]}]
    fig = report.comparison_curves(curves, title="t")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.get_lines()] == ["sgd", "adam"]
    assert list(ax.get_lines()[1].get_ydata()) == [0.8, 0.3]
    assert len(ax.collections) == 1  # the std band of sgd only


def test_report_command_writes_the_folder_and_logs_it(folder: Path, capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(folder)
    code, _, err = run_main(capsys, "report", "--task", "digits")
    assert code == 0, err[-2000:]
    parent_run = (folder / "parent_run").read_text()
    folder = folder / "reports" / "digits"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == sorted(report.PLOTS)
    width, height = (round(v * report.DPI) for v in report.FIGSIZE)
    for name in pngs:
        with Image.open(folder / name) as img:
            assert img.format == "PNG" and img.size == (width, height)
            # not a blank canvas: a plot has many colours
            assert len(img.convert("RGB").getcolors(maxcolors=1_000_000)) > 20
    summary = (folder / "summary.md").read_text()
    assert "**adam**" in summary and "`trial_3`" in summary
    assert "adam_tutorial" in summary and "+0.0300" in summary and "paired verdict **better**" in summary
    assert "6 trials: 5 complete, 1 pruned, 0 failed" in summary
    for name in report.PLOTS:
        assert f"({name})" in summary
    logged = tracking.list_artifacts(f"sqlite:///{folder.parent.parent / 'mlflow.db'}", parent_run, "report")
    assert sorted(Path(p).name for p in logged) == sorted([*report.PLOTS, "summary.md"])


def test_report_without_a_study_names_the_command(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "autoopt tune --task digits" in refused(capsys, "report", "--task", "digits", folder=workdir)


def test_summary_of_a_study_without_confirmation(study: optuna.Study) -> None:
    rec = dict(study.user_attrs["recommendation"])
    for key in ("confirmation", "baselines", "improvement", "chosen"):
        rec.pop(key)
    text = report.summary_markdown(study, Recommendation.from_dict(rec), {}, {})
    assert "not confirmed over seeds" in text and "Confirmation over seeds" not in text
    fig = report.confirmation_plot(Recommendation.from_dict(rec))
    assert any("no confirmation" in t.get_text() for t in fig.axes[0].texts)
    assert math.isclose(fig.get_size_inches()[0], report.FIGSIZE[0])
