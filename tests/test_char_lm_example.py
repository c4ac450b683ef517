"""The README's "Your own training loop" example (examples/char_lm.py) trains in its own loop."""

from __future__ import annotations

import math

import pytest
from conftest import ROOT

from autoopt.space import TrialConfig
from autoopt.tasks import UserLoop, load_task
from autoopt.training.loop import run_loop


@pytest.mark.slow
def test_the_char_lm_example_trains_and_reports_its_perplexity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    loop = load_task("char_lm:train")
    assert isinstance(loop, UserLoop) and (loop.metric, loop.direction) == ("val_loss", "minimize")
    vocab = loop.data.vocab
    cfg = TrialConfig("adamw", {"lr": 3e-3, "weight_decay": 0.01}, scheduler="cosine",
                      scheduler_params={"eta_min_ratio": 0.01}, grad_clip_norm=1.0)
    result = run_loop(loop, cfg, epochs=1, seed=0, evaluate_test=True)
    assert result.status == "complete"
    [epoch] = result.history
    assert epoch["val_perplexity"] == pytest.approx(math.exp(epoch["val_loss"]), rel=1e-6)
    assert epoch["val_loss"] < 0.75 * math.log(vocab)  # better than guessing among the characters
    assert epoch["epoch_s"] > 0 and 0 < result.test["test_loss"] < math.log(vocab)
