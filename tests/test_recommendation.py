"""The recommendation file: named after its study, saved atomically, loadable alone."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from conftest import scripts_at_once

from autoopt import recommend
from autoopt.errors import UsageError
from autoopt.recommendation import Recommendation
from autoopt.space import family


def _rec(study: str = "digits", lr: float = 1e-3, **extra: object) -> Recommendation:
    return Recommendation("digits", "adam", {"lr": lr}, study_name=study, value=0.9,
                          source="study", extra=dict(extra))


def test_saved_under_the_study_name_not_the_task(tmp_path: Path) -> None:
    assert _rec("digits").save(tmp_path) == tmp_path / "digits.json"
    before = (tmp_path / "digits.json").read_text()
    assert _rec("sig", lr=0.5).save(tmp_path) == tmp_path / "sig.json"
    assert (tmp_path / "digits.json").read_text() == before
    assert Recommendation.load(tmp_path / "sig.json").optimizer_params == {"lr": 0.5}
    no_study = Recommendation("digits", "adam", {"lr": 1e-3})
    assert no_study.save(tmp_path) == tmp_path / "digits.json"


def test_concurrent_saves_never_collide_and_readers_see_whole_files(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    # a big payload makes a half-written file likely, if writes were not atomic
    big = {"confirmation": {f"trial_{i}": {"values": list(range(200))} for i in range(50)}}

    def writer(i: int) -> None:
        try:
            for j in range(40):
                _rec(lr=i + j / 100, **big).save(tmp_path)
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        path = tmp_path / "digits.json"
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except FileNotFoundError:
                continue
            except BaseException as exc:
                errors.append(exc)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.json"]  # no temporary file left behind


def test_a_save_replaces_the_file_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Atomic, observed directly: the whole new file is written beside the old one, which stays
    untouched until one ``os.replace`` swaps them; when that fails, the old file is intact and
    no temporary file is left. (A direct write, or a copy over the old file, fails here.)"""
    import os

    old = _rec(lr=0.1).save(tmp_path)
    old_text = old.read_text()
    new = _rec(lr=0.2, notes="x" * 100_000)
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def watching_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        src_path, dst_path = Path(src), Path(dst)
        # The moment before the swap: the target is still the old file, whole, and the source is
        # the whole new file, in the same folder (a rename within one filesystem is atomic).
        assert dst_path == old and dst_path.read_text() == old_text
        assert src_path.parent == tmp_path and src_path != old
        assert json.loads(src_path.read_text()) == json.loads(json.dumps(new.to_dict()))
        replaced.append((src_path, dst_path))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watching_replace)
    assert new.save(tmp_path) == old
    assert len(replaced) == 1
    assert Recommendation.load(old).optimizer_params == {"lr": 0.2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.json"]

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    before = old.read_text()
    with pytest.raises(OSError, match="disk full"):
        _rec(lr=0.3).save(tmp_path)
    assert old.read_text() == before  # the last good file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.json"]  # no temporary file left


# One process saving 100 recommendations of one study into argv[1]; only autoopt.recommendation
# is imported, not this test module with torch behind it.
SAVE_MANY = """
import sys
from autoopt.recommendation import Recommendation
folder, i = sys.argv[1], int(sys.argv[2])
for j in range(100):
    Recommendation("digits", "adam", {"lr": i + j / 100}, study_name="digits", value=0.9, source="study").save(folder)
"""


def test_concurrent_saves_from_processes(tmp_path: Path) -> None:
    scripts_at_once(SAVE_MANY, [[str(tmp_path), str(i)] for i in range(4)], timeout=60)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.json"]
    assert Recommendation.load(tmp_path / "digits.json").optimizer == "adam"


def test_recommend_from_the_shipped_json_alone(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pipeline that ships only recommendations/<task>.json: no database, none created."""
    _rec(lr=0.0123).save(workdir / "recommendations")
    rec = recommend("digits")
    assert rec.optimizer_params == {"lr": 0.0123} and rec.to_dict()["source"] == "study"
    opt = rec.build_optimizer(torch.nn.Linear(3, 2))
    assert type(opt).__name__ == "Adam"
    assert sorted(p.name for p in workdir.iterdir()) == ["recommendations"]  # no autoopt.db
    # another folder, named by the environment
    _rec(lr=0.5).save(workdir / "shipped")
    monkeypatch.setenv("AUTOOPT_RECOMMENDATIONS", str(workdir / "shipped"))
    assert recommend("digits").optimizer_params == {"lr": 0.5}
    with pytest.raises(UsageError, match="autoopt tune --task digits --study other"):
        recommend("digits", study="other")


@pytest.mark.parametrize("bad", [None, 3, ""])
def test_recommend_without_a_task_name_is_a_usage_error(bad: object, workdir: Path) -> None:
    _rec().save(workdir / "recommendations")
    with pytest.raises(UsageError, match="task must be a task name"):
        recommend(bad)  # type: ignore[arg-type]


def test_recommend_an_unknown_task_does_not_suggest_an_invalid_command(workdir: Path) -> None:
    with pytest.raises(UsageError) as info:
        recommend("no_such_task")
    assert "autoopt tune" not in str(info.value) and "not a task autoopt knows" in str(info.value)


def test_load_names_a_bad_file(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{half")
    with pytest.raises(UsageError, match=r"x\.json: not a recommendation JSON"):
        Recommendation.load(tmp_path / "x.json")
    with pytest.raises(UsageError, match="no such recommendation file"):
        Recommendation.load(tmp_path / "missing.json")


def test_to_dict_registers_nothing() -> None:
    """A user's family recommended elsewhere: serialising keeps its class path and registers
    nothing; building the optimizer builds the family from that path, still registering nothing."""
    rec = Recommendation("digits", "shipped_sgd_family", {"lr": 0.1},
                         optimizer_class="torch.optim:SGD", train_eval_mode=False)
    data = rec.to_dict()
    assert data["optimizer_class"] == "torch.optim:SGD" and data["train_eval_mode"] is False
    with pytest.raises(UsageError):
        family("shipped_sgd_family")  # still unknown: to_dict did not register it
    again = Recommendation.from_dict(json.loads(json.dumps(data))).to_dict()
    assert again["optimizer_class"] == "torch.optim:SGD"
    with pytest.raises(UsageError):
        family("shipped_sgd_family")
    opt = rec.build_optimizer(torch.nn.Linear(3, 2))
    assert type(opt).__name__ == "SGD"
    with pytest.raises(UsageError):
        family("shipped_sgd_family")
