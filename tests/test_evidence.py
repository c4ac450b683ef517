"""The recommendation's evidence as typed, frozen records: attributes, a schema version, and the
JSON written before them (``tests/data/digits-v0.json``, by the release before) still loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pydantic
import pytest

from autoopt import Recommendation
from autoopt.errors import UsageError
from autoopt.evidence import Baseline, Entry, Improvement, Paired, Stats
from autoopt.recommendation import SCHEMA_VERSION

OLD = Path(__file__).parent / "data" / "digits-v0.json"


def test_the_json_written_before_the_typed_records_loads_with_attributes() -> None:
    rec = Recommendation.load(OLD)
    old = json.loads(OLD.read_text())
    assert "schema_version" not in old  # written by the release before
    assert rec.improvement is not None and rec.improvement.verdict == "tie"
    assert rec.improvement.paired is not None and rec.improvement.paired.ci95 == tuple(old["improvement"]["paired"]
                                                                                        ["ci95"])
    assert rec.improvement.test_paired is not None and rec.improvement.test_paired.n == 3
    assert [b.name for b in rec.baselines] == [b["name"] for b in old["baselines"]]
    assert all(isinstance(b, Baseline) for b in rec.baselines)
    first = rec.baselines[0]
    assert first.val.mean == old["baselines"][0]["val"]["mean"] and len(first.val.values) == 3
    assert first.s_per_epoch == old["baselines"][0]["s_per_epoch"] and first.params == first.optimizer_params
    assert set(rec.confirmation) == set(old["confirmation"])
    vs = rec.confirmation["trial_19"].versus_pick
    assert vs is not None and vs.verdict == "tie" and vs.ci95 is not None
    assert rec.cost is not None and rec.cost.relative == old["cost"]["relative"]
    assert rec.extra["cheapest_tie"]["name"] == "sgd_tutorial"  # a key this release does not type is kept


def test_save_writes_the_schema_version_and_load_gives_back_the_same_record(tmp_path: Path) -> None:
    rec = Recommendation.load(OLD)
    path = rec.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION and isinstance(data["schema_version"], int)
    again = Recommendation.load(path)
    assert again == rec
    named = rec.save(tmp_path / "named.json")  # a .json path is the file itself
    assert named == tmp_path / "named.json" and Recommendation.load(named) == rec
    # what is not typed goes through unchanged, what is typed as it was written
    old = json.loads(OLD.read_text())
    assert data["baselines"][0]["params"] == old["baselines"][0]["params"]
    assert data["improvement"]["paired"] == old["improvement"]["paired"]


def test_how_the_pick_was_chosen_is_typed_and_written_back_as_it_came() -> None:
    """The keys beside the evidence (where the answer comes from, the choice, the held-out test
    score) are attributes; ``extra`` keeps only what this release does not name."""
    rec = Recommendation.load(OLD)
    old = json.loads(OLD.read_text())
    assert (rec.source, rec.chosen, rec.chosen_kind) == ("study", old["chosen"], old["chosen_kind"])
    assert rec.search_value == old["search_value"] and rec.search_trial_number == old["search_trial_number"]
    assert rec.held_out_key == "test_accuracy" and rec.held_out == old["test_accuracy"]
    assert rec.max_slowdown is None and rec.cheaper_factor is None  # the release before wrote none
    assert set(rec.extra) == {"cheapest_tie"}
    data = rec.to_dict()
    for key in ("source", "chosen", "chosen_kind", "search_value", "search_trial_number", "max_slowdown",
                "test_accuracy", "optimizer_class", "train_eval_mode", "cheapest_tie"):
        assert data[key] == old[key], key
    zero = Recommendation.from_dict({**old, "source": "database", "prior": {"studies": ["mnist"], "order": ["adam"],
                                                                           "from": "mnist"}})
    assert zero.zero_shot is not None and zero.zero_shot.from_study == "mnist"
    assert zero.to_dict()["prior"] == {"studies": ["mnist"], "order": ["adam"], "from": "mnist"}


def test_records_are_frozen_and_refined_into_new_ones() -> None:
    rec = Recommendation.load(OLD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.optimizer = "sgd"  # type: ignore[misc]
    entry = rec.baselines[0]
    with pytest.raises(pydantic.ValidationError):
        entry.relative = 2.0  # type: ignore[misc]
    costlier = entry.model_copy(update={"relative": 2.0})
    assert costlier.relative == 2.0 and entry.relative == 1.0


def test_evidence_given_as_dicts_is_read_into_records() -> None:
    rec = Recommendation("digits", "adam", {"lr": 1e-3},
                         improvement={"metric": "test_accuracy", "delta": 0.01, "spread": 0.0, "verdict": "better",
                                      "paired": {"deltas": [0.01, 0.02], "mean": 0.015, "ci95": [0.0, 0.03]}},
                         baselines=[{"name": "adam_tutorial", "optimizer": "adam", "val": {"mean": 0.9}}])
    assert isinstance(rec.improvement, Improvement) and isinstance(rec.improvement.paired, Paired)
    assert rec.improvement.paired.ci95 == (0.0, 0.03)
    assert isinstance(rec.baselines[0], Baseline) and rec.baselines[0].val == Stats(mean=0.9)


def test_a_recommendation_without_evidence_writes_none() -> None:
    data = Recommendation.prior("digits").to_dict()
    assert not {"confirmation", "baselines", "improvement", "cost", "budget"} & set(data)
    assert data["schema_version"] == SCHEMA_VERSION


def test_a_schema_version_that_is_not_an_integer_is_named(tmp_path: Path) -> None:
    data = json.loads(OLD.read_text())
    data["schema_version"] = "two"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError, match="schema_version 'two' is not an integer"):
        Recommendation.load(path)


def test_unknown_keys_of_a_later_release_are_kept() -> None:
    entry = Entry.model_validate({"name": "trial_1", "optimizer": "adam", "val": {"mean": 0.9}, "novel": [1, 2]})
    assert entry.to_dict()["novel"] == [1, 2]
    data = Recommendation.load(OLD).to_dict()
    data["improvement"]["novel"] = "kept"
    assert Recommendation.from_dict(data).to_dict()["improvement"]["novel"] == "kept"


def test_the_verdict_reads_right_in_words() -> None:
    """The summary says what was decided, never 'worse' beside the baseline that is the pick."""
    def says(verdict: str | None, n: int) -> str:
        return Improvement(metric="test_accuracy", delta=0.0, spread=0.0, versus="muon_default", tuned="trial_3",
                           verdict=verdict, paired=Paired(deltas=(0.0,) * n, n=n) if n else None).says()

    assert says("worse", 3) == ("muon's published defaults (muon_default) beat the best tuned config, trial_3 "
                                "(paired, 3 seeds)")
    assert says("tie", 1).endswith("is on one seed, which decides nothing (paired, 1 seed)")
    assert says("tie", 3).startswith("muon's published defaults (muon_default) stands")
    assert says("better", 3).startswith("the tuned config trial_3 beat the best baseline")
    assert "no tuned config" in says(None, 0)
