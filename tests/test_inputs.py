"""Bad input is refused before anything starts: exit 2, one line naming the field, file or
module and the fix, and nothing created in the working folder (no study, no MLflow database, no
recommendation, no Ray). Each case runs the real entry point (``autoopt.cli.main``) in an empty
folder; one also runs the console script in a fresh process."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
from conftest import refused as cli_refused
from conftest import run_cli

from autoopt.cli import main
from autoopt.space import FAMILIES

_names = itertools.count()


@pytest.fixture()
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of inputs (study files, task modules) on sys.path, apart from the working folder."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture()
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_ray: None) -> Path:
    """The empty working folder the command runs in (``tune`` joins the session's Ray, which it
    would otherwise start, and stop again, on every refusal)."""
    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for var in ("AUTOOPT_STORAGE", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "AUTOOPT_DATA"):
        monkeypatch.delenv(var, raising=False)
    return folder


def refused(empty: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``autoopt ARGS``; assert exit 2, one line on stderr, nothing on stdout, nothing created.
    Returns the line."""
    return cli_refused(capsys, *args, folder=empty)


def module(inputs: Path, source: str) -> str:
    """Write a task module with a fresh name (modules stay imported across tests)."""
    name = f"usertask_{next(_names)}"
    (inputs / f"{name}.py").write_text(source)
    return name


def study_file(inputs: Path, text: str) -> str:
    path = inputs / f"study_{next(_names)}.yaml"
    path.write_text(text)
    return str(path)


SPACE = "task: digits\noptimizers: [sgd]\nspace:\n  sgd:\n    lr: {}\n"


@pytest.mark.parametrize(("lr", "expect"), [
    ("{log: [0.5, 1.0e-3]}", "space.sgd.lr: log needs [low, high] with low < high"),
    ("{log: [0, 1.0e-1]}", "space.sgd.lr: a learning rate must stay above 0"),
    ("{uniform: [-1.0, 0.1]}", "space.sgd.lr: a learning rate must stay above 0"),
    ("-0.1", "space.sgd.lr: a learning rate must be a positive number"),
    ("abc", "space.sgd.lr: a learning rate must be a positive number, got 'abc'"),
    ("{log: [.nan, 1.0e-1]}", "space.sgd.lr: log bounds must be finite numbers"),
    ("{uniform: [1.0e-3, .inf]}", "space.sgd.lr: uniform bounds must be finite numbers"),
    ("{log: [a, b]}", "space.sgd.lr: log needs two numbers"),
    ("{between: [1, 2]}", "space.sgd.lr: write {log: [low, high]}"),
])
def test_bad_space_ranges(inputs: Path, empty: Path, capsys: pytest.CaptureFixture[str], lr: str,
                          expect: str) -> None:
    path = study_file(inputs, SPACE.format(lr))
    line = refused(empty, capsys, "tune", "--study-file", path, "--trials", "2")
    assert expect in line and path in line


def test_a_negative_momentum_range_outside_lr_is_still_checked(inputs: Path, empty: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = study_file(inputs, "task: digits\nspace:\n  sgd:\n    momentum: {uniform: [0.9, 0.1]}\n")
    assert "space.sgd.momentum: uniform needs [low, high] with low < high" in refused(
        empty, capsys, "tune", "--study-file", path)


@pytest.mark.parametrize("cls", ["collections:OrderedDict", "os:system", "torch.optim:NoSuchThing",
                                 "no_such_module_q:Opt"])
def test_a_custom_class_that_is_not_an_optimizer(inputs: Path, empty: Path, capsys: pytest.CaptureFixture[str],
                                                 cls: str) -> None:
    path = study_file(inputs, f"task: digits\noptimizers: [notopt]\ncustom_optimizers:\n  notopt:\n"
                              f"    class: \"{cls}\"\n    space:\n      lr: {{log: [1.0e-4, 1.0e-1]}}\n")
    line = refused(empty, capsys, "tune", "--study-file", path)
    assert "custom_optimizers.notopt.class: optimizer 'notopt'" in line and cls.partition(":")[0] in line
    assert "notopt" not in FAMILIES  # validating registered nothing


def test_a_custom_optimizer_may_not_take_a_built_in_name(inputs: Path, empty: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = study_file(inputs, "task: digits\ncustom_optimizers:\n  adam:\n    class: torch.optim:SGD\n"
                              "    space:\n      lr: 0.1\n")
    assert "custom_optimizers.adam: 'adam' is a built-in optimizer" in refused(
        empty, capsys, "tune", "--study-file", path)
    assert FAMILIES["adam"].optimizer_class == "torch.optim:Adam"


TASK_OK = ("import torch\nfrom autoopt import Task, Split\n"
           "def make(data_dir=None):\n    s = Split(torch.randn(16, 3), torch.randint(0, 2, (16,)))\n"
           "    return Task('t', lambda: torch.nn.Linear(3, 2), s, s, LOSS)\n")


@pytest.mark.parametrize(("source", "expect"), [
    ("def make(:\n    pass\n", "has a syntax error"),
    ("raise RuntimeError('no GPU driver here')\ndef make(data_dir=None): pass\n",
     "raised RuntimeError: no GPU driver here; fix the module"),
    ("import no_such_dependency_zz\ndef make(data_dir=None): pass\n",
     "imports no_such_dependency_zz, which is not installed; install it (pip install no_such_dependency_zz)"),
    ("def make(data_dir=None):\n    return {'x': 1}\n", "returned dict, not an autoopt Task"),
    ("import torch\nfrom autoopt import Split\n"
     "def make(data_dir=None):\n    return Split(torch.zeros(10, 3), torch.zeros(7))\n",
     "raised ValueError: x has 10 rows but y has 7"),
    (TASK_OK.replace("LOSS", "loss='hinge'"), "unknown loss 'hinge'; use one of cross_entropy, mse"),
    ("def other(data_dir=None): pass\n", "has no function make"),
])
def test_bad_task_modules(inputs: Path, empty: Path, capsys: pytest.CaptureFixture[str], source: str,
                          expect: str) -> None:
    name = module(inputs, source)
    line = refused(empty, capsys, "tune", "--task", f"{name}:make", "--trials", "2", "--epochs", "1")
    assert f"task '{name}:make'" in line and expect in line
    assert "PYTHONPATH" not in line


def test_a_task_whose_splits_differ_in_length_after_construction(inputs: Path, empty: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    name = module(inputs, TASK_OK.replace("LOSS", "'cross_entropy'")
                  + "def bad(data_dir=None):\n    t = make()\n    t.val.y = t.val.y[:3]\n    return t\n")
    assert "split has 16 inputs and 3 targets" in refused(empty, capsys, "tune", "--task", f"{name}:bad")


def test_a_missing_task_module_names_pythonpath(empty: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = refused(empty, capsys, "tune", "--task", "no_such_task_module_q:make")
    assert "no module named no_such_task_module_q; put its folder on PYTHONPATH" in line


@pytest.mark.parametrize(("args", "expect"), [
    (["--timeout", "-5"], "--timeout: Input should be greater than 0"),
    (["--max-slowdown", "0"], "--max-slowdown: Input should be greater than 0"),
    (["--max-slowdown", "-1"], "--max-slowdown: Input should be greater than 0"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial: more than one GPU per trial must be a whole number"),
    (["--sampler", "bogus"], "Invalid value for '--sampler'"),
    (["--trials", "two"], "Invalid value for '--trials'"),
    (["--no-such-flag"], "No such option: --no-such-flag"),
    (["--schedulers", "none,warp"], "unknown scheduler 'warp'"),
    (["--optimizers", "sgd,no_such_opt"], "unknown optimizer 'no_such_opt'; known: sgd"),
    (["--epochs", "0"], "--epochs: Input should be greater than 0"),
])
def test_bad_flags_name_the_flag(empty: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                 expect: str) -> None:
    line = refused(empty, capsys, "tune", "--task", "digits", *args)
    assert expect in line
    assert "--timeout-s" not in line


@pytest.mark.parametrize(("text", "expect"), [
    ("task: digits\ntrials: two\n", ": trials: Input should be a valid integer"),
    ("task: digits\nmax_slowdown: -2\n", ": max_slowdown: Input should be greater than 0"),
    ("task: digits\ngpus_per_trial: -1\n", ": gpus_per_trial: Input should be greater than or equal to 0"),
    ("task: digits\ntrails: 3\n", ": trails: unknown key"),
    ("- a list\n", "must be a mapping of keys"),
])
def test_a_study_files_bad_key_blames_the_file(inputs: Path, empty: Path, capsys: pytest.CaptureFixture[str],
                                              text: str, expect: str) -> None:
    path = study_file(inputs, text)
    line = refused(empty, capsys, "tune", "--study-file", path)
    assert f"study file {path}" in line and expect in line
    assert "--trials" not in line and "--max-slowdown" not in line


def test_a_study_file_that_is_not_utf8_or_is_a_folder(inputs: Path, empty: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    latin = inputs / "latin.yaml"
    latin.write_bytes("task: digits\n# caf\xe9\n".encode("latin-1"))
    assert "is not UTF-8 text; save it as UTF-8" in refused(empty, capsys, "tune", "--study-file", str(latin))
    assert "is a folder; give the path of a .yaml file" in refused(empty, capsys, "tune", "--study-file",
                                                                   str(inputs))


def test_recommend_for_an_unknown_task_names_the_known_ones(empty: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    line = refused(empty, capsys, "recommend", "--task", "cifar")
    assert "unknown task 'cifar'; known tasks: cifar10, digits" in line
    assert "autoopt tune --task cifar" not in line


def test_the_console_script_prints_click_errors_on_one_line(tmp_path: Path) -> None:
    res = run_cli("tune", "--task", "digits", "--sampler", "bogus", cwd=tmp_path, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "'--sampler'" in res.stderr, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main(["tune", "--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    for shown in ("sqlite:///autoopt.db", "sqlite:///mlflow.db", "default: (20", "default: (5", "default: (all)",
                  "default: (tpe)", "default: (median)", "--max-slowdown", "0.25 where Ray sees a GPU"):
        assert shown in text, shown
    assert max(len(line) for line in text.splitlines()) <= 200
    assert sys.modules["autoopt.cli"].main is main


HELP_PANELS = {
    "tune": {"Options": ("--task", "--study-file", "--trials", "--epochs", "--time-budget", "--quick", "--optimizers",
                         "--seed", "--out"),
             "Storage and cluster": ("--storage", "--study", "--mlflow-uri", "--ray-address", "--gpus-per-trial",
                                     "--cpus-per-trial", "--concurrency", "--data-dir"),
             "Expert": ("--timeout", "--prior", "--schedulers", "--sampler", "--pruner", "--batch-size",
                        "--max-slowdown", "--confirm", "--no-confirm", "--confirm-top", "--confirm-seeds", "--compile",
                        "--no-compile")},
    "compare": {"Options": ("--task", "--optimizers", "--lrs", "--seeds", "--epochs", "--seed", "--out"),
                "Storage and cluster": ("--mlflow-uri", "--ray-address", "--gpus-per-trial", "--cpus-per-trial",
                                        "--concurrency", "--data-dir"),
                "Expert": ("--batch-size",)},
}


@pytest.mark.parametrize("command", sorted(HELP_PANELS))
def test_help_lists_the_common_options_then_the_cluster_then_the_expert(
        command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    starts = [text.index(f"─ {panel} ─") for panel in HELP_PANELS[command]]
    assert starts == sorted(starts)
    shown = {}
    for panel, start, end in zip(HELP_PANELS[command], starts, [*starts[1:], len(text)], strict=True):
        shown[panel] = {word for word in text[start:end].split() if word.startswith("--") and word != "--help"}
    assert shown == {panel: set(names) for panel, names in HELP_PANELS[command].items()}
