"""The paired verdict on hand-made per-seed values, and how it decides the recommendation."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autoopt.decide.confirm import cheapest_equivalent, choose, improvement, judge, mark_cost, noise_of, time_to
from autoopt.decide.verdict import Noise, interval, paired
from autoopt.dispatch import JobResult, JobState
from autoopt.evidence import Entry, Stats

N_VAL = 2400


def _entry(name: str, val: list[float | None], test: list[float | None] | None = None,
           s_per_epoch: float | None = 1.0) -> Entry:
    return Entry(name=name, optimizer=name.split("_")[0], seeds=tuple(range(len(val))), val=Stats.of(val),
                 test=Stats.of(test if test is not None else val), s_per_epoch=s_per_epoch)


def _acc(counts: list[int]) -> list[float]:
    """Accuracies as a float32 metric reports them: the count over N_VAL, with float32 noise."""
    return [float(np.float32(c) / np.float32(N_VAL)) for c in counts]


def test_paired_interval_on_hand_made_values() -> None:
    tuned, base = [0.80, 0.82, 0.85], [0.78, 0.81, 0.82]
    p = paired(tuned, base, "maximize")
    assert p.deltas == pytest.approx([0.02, 0.01, 0.03])
    assert p.mean == pytest.approx(0.02)
    half = 4.302653 * statistics.stdev([0.02, 0.01, 0.03]) / math.sqrt(3)  # Student-t, 2 degrees of freedom
    assert p.ci95 == pytest.approx([0.02 - half, 0.02 + half])
    assert p.ci95[0] < 0 < p.ci95[1] and p.verdict == "tie"  # three seeds, too noisy to call
    # past 30 seeds too, the t quantile (1.984 for 100 degrees of freedom), not the normal's 1.96
    wide = interval([0.0, 1.0] * 50 + [0.5])[1]
    half = 1.983972 * statistics.stdev([0.0, 1.0] * 50 + [0.5]) / math.sqrt(101)
    assert wide == pytest.approx([0.5 - half, 0.5 + half])
    # a minimized metric: positive still means the first one is better (baseline minus tuned)
    q = paired([0.30, 0.31, 0.29], [0.40, 0.42, 0.41], "minimize")
    assert q.deltas == pytest.approx([0.10, 0.11, 0.12]) and q.verdict == "better"


def test_equal_counts_are_an_exact_tie_whatever_the_float_noise() -> None:
    # 2332 of 2400 correct on each seed for both; the floats differ in the last bits
    tuned = [c + 2e-8 for c in _acc([2332, 2320, 2341])]
    base = _acc([2332, 2320, 2341])
    p = paired(tuned, base, "maximize", n_val=N_VAL)
    assert p.deltas == (0.0, 0.0, 0.0) and p.verdict == "tie" and p.resolution == 1 / N_VAL
    table = {"trial_1": _entry("adam_1", tuned), "prodigy_default": _entry("prodigy_default", base)}
    pick = choose(table, ["trial_1"], ["prodigy_default"], "maximize", n_val=N_VAL)
    assert (pick.tuned, pick.baseline, pick.winner) == ("trial_1", "prodigy_default", "prodigy_default")


def test_identical_quantised_deltas_on_two_seeds_decide_nothing() -> None:
    # Two seeds, each 2 examples of 800 behind: a standard deviation of 0 is no evidence.
    p = paired([0.9425, 0.9450], [0.9450, 0.9475], "maximize", n_val=800)
    assert p.deltas == pytest.approx([-0.0025, -0.0025])
    assert p.ci95[0] < p.ci95[1] and p.verdict == "tie"
    assert p.ci95[1] - p.ci95[0] >= 2 * 12.7062 * (1 / 800) / math.sqrt(2) - 1e-12  # one example's floor


def test_one_seed_decides_nothing() -> None:
    for a, b in (([0.95], [0.90]), ([0.90], [0.95])):
        p = paired(a, b, "maximize", n_val=1000)
        assert p.ci95 is None and p.verdict == "tie"
    table = {"trial_1": _entry("adam_1", _acc([2390])), "adam_tutorial": _entry("adam_tutorial", _acc([2000]))}
    assert choose(table, ["trial_1"], ["adam_tutorial"], "maximize", n_val=N_VAL).winner == "adam_tutorial"


def test_a_steady_one_example_lead_is_no_win_against_the_seed_noise_of_the_other_configs() -> None:
    # One example better on every seed: zero spread on its own, but the configs beside it move
    # by several examples from seed to seed, and so may these two.
    table = {"trial_1": _entry("adam_1", _acc([2331, 2321, 2342])),
             "adam_tutorial": _entry("adam_tutorial", _acc([2330, 2320, 2341])),
             "lion_default": _entry("lion_default", _acc([2300, 2306, 2296]))}
    pick = choose(table, ["trial_1"], ["adam_tutorial", "lion_default"], "maximize", n_val=N_VAL)
    assert pick.paired.deltas == pytest.approx([1 / N_VAL] * 3)
    assert pick.paired.verdict == "tie" and pick.winner == "adam_tutorial"
    # the other pairs against trial_1: adam one example behind on every seed, lion 15-46 behind
    noise = noise_of(table, n_val=N_VAL)
    assert noise is not None and noise.pairs == 2 and noise.sd > 3 / N_VAL
    # the floor widens, never narrows: a pair noisier than the rest keeps its own spread
    own = interval([0.01, -0.02, 0.03])[1]
    assert interval([0.01, -0.02, 0.03], noise=Noise(0.001, 5))[1] == own


def test_worse_keeps_the_baseline() -> None:
    table = {"trial_1": _entry("adam_1", _acc([2300, 2305, 2302])),
             "adam_tutorial": _entry("adam_tutorial", _acc([2330, 2331, 2333]))}
    pick = choose(table, ["trial_1"], ["adam_tutorial"], "maximize", n_val=N_VAL)
    assert pick.paired.verdict == "worse" and pick.winner == "adam_tutorial"
    assert pick.paired.deltas == pytest.approx([-30 / N_VAL, -26 / N_VAL, -31 / N_VAL])


def test_a_mean_that_is_higher_but_not_beyond_the_interval_keeps_the_baseline() -> None:
    table = {"trial_1": _entry("adam_1", _acc([2350, 2310, 2345])),
             "adam_tutorial": _entry("adam_tutorial", _acc([2330, 2320, 2330]))}
    pick = choose(table, ["trial_1"], ["adam_tutorial"], "maximize", n_val=N_VAL)
    assert pick.paired.mean > 0 and pick.paired.verdict == "tie" and pick.winner == "adam_tutorial"


def test_clearly_better_picks_the_tuned_config() -> None:
    table = {"trial_1": _entry("adam_1", _acc([2360, 2355, 2362]), test=[0.98, 0.97, 0.98]),
             "trial_2": _entry("sgd_2", _acc([2340, 2338, 2339])),
             "adam_tutorial": _entry("adam_tutorial", _acc([2330, 2326, 2333]), test=[0.96, 0.96, 0.97]),
             "sgd_tutorial": _entry("sgd_tutorial", _acc([2000, 2001, 2002]))}
    pick = choose(table, ["trial_1", "trial_2"], ["adam_tutorial", "sgd_tutorial"], "maximize", n_val=N_VAL)
    assert (pick.winner, pick.tuned, pick.baseline) == ("trial_1", "trial_1", "adam_tutorial")
    assert pick.paired.verdict == "better" and pick.paired.ci95[0] > 0
    imp = improvement(table, pick, "maximize", "test_accuracy", n_test=100)
    assert imp.verdict == "better" and imp.versus == "adam_tutorial" and imp.tuned == "trial_1"
    assert imp.delta == pytest.approx(statistics.fmean([0.98, 0.97, 0.98]) - statistics.fmean([0.96, 0.96, 0.97]))
    assert imp.test_paired.deltas == pytest.approx([0.02, 0.01, 0.01])


def test_a_config_that_failed_on_a_seed_is_not_better() -> None:
    table = {"trial_1": _entry("adam_1", [0.99, None, 0.99]),
             "adam_tutorial": _entry("adam_tutorial", [0.90, 0.91, 0.90])}
    pick = choose(table, ["trial_1"], ["adam_tutorial"], "maximize")
    assert pick.winner == "adam_tutorial"


def test_max_slowdown_leaves_slow_configs_out_of_the_pick_but_shows_them() -> None:
    table = {"trial_1": _entry("soap_1", _acc([2390, 2391, 2392]), s_per_epoch=9.0),
             "trial_2": _entry("adam_2", _acc([2360, 2361, 2362]), s_per_epoch=1.2),
             "adam_tutorial": _entry("adam_tutorial", _acc([2330, 2330, 2331]), s_per_epoch=1.0),
             "soap_default": _entry("soap_default", _acc([2380, 2380, 2380]), s_per_epoch=8.0)}
    before = dict(table)
    table, fastest = mark_cost(table, ["adam_tutorial", "soap_default"], 1.5)
    assert fastest == "adam_tutorial" and table["trial_1"].relative == pytest.approx(9.0)
    assert "slower than 1.5x" in table["trial_1"].excluded and table["soap_default"].excluded
    assert table["trial_2"].excluded is None
    assert before["trial_1"].relative is None and before["trial_1"].excluded is None  # a new table: none changed
    pick = choose(table, ["trial_1", "trial_2"], ["adam_tutorial", "soap_default"], "maximize", n_val=N_VAL)
    assert (pick.tuned, pick.baseline, pick.winner) == ("trial_2", "adam_tutorial", "trial_2")


def _judged(table: dict, candidates: list[str], bases: list[str]) -> dict:
    val = SimpleNamespace(y=torch.zeros(N_VAL, dtype=torch.long))  # N_VAL labels
    task = SimpleNamespace(score="accuracy", val=val, direction="maximize", metric="val_accuracy")
    results = {name: {} for name in table}
    table, pick = judge(table, results, candidates, bases, task, None)
    assert pick.winner == "soap_default"
    return table


def test_a_cheaper_config_is_named_only_when_shown_equivalent_within_the_margin() -> None:
    pick = [2370, 2372, 2368, 2371, 2369]
    table = {"trial_1": _entry("soap_1", _acc([2300, 2301, 2299, 2300, 2302]), s_per_epoch=9.0),
             "soap_default": _entry("soap_default", _acc(pick), s_per_epoch=9.0),
             # 3 to 4 examples (0.15 points) worse on every seed: within one point of the pick
             "lion_default": _entry("lion_default", _acc([c - 3 - i % 2 for i, c in enumerate(pick)]),
                                    s_per_epoch=2.0),
             # a "tie" on the mean that its interval does not show within a point: noise, not equivalence
             "sgd_tutorial": _entry("sgd_tutorial", _acc([2370, 2250, 2380, 2300, 2369]), s_per_epoch=0.8),
             "adam_tutorial": _entry("adam_tutorial", _acc([c - 1 for c in pick]), s_per_epoch=1.0)}
    table = _judged(table, ["trial_1"], ["soap_default", "lion_default", "sgd_tutorial", "adam_tutorial"])
    vs = {n: table[n].versus_pick for n in table}
    assert vs["sgd_tutorial"].verdict == "tie" and not vs["sgd_tutorial"].equivalent
    assert vs["lion_default"].equivalent and vs["adam_tutorial"].equivalent
    assert all(v.margin == 0.01 for v in vs.values())
    alt, why = cheapest_equivalent(table, "soap_default")
    assert alt.name == "adam_tutorial" and alt.versus_pick.ci95[0] > -0.01, why  # sgd is cheaper, unshown
    del table["adam_tutorial"], table["lion_default"]
    alt, why = cheapest_equivalent(table, "soap_default")
    assert alt is None and "within the margin" in why


def _run(val_per_epoch: list[float], epoch_s: float) -> JobResult:
    history = [{"epoch": i + 1, "val_accuracy": v, "epoch_s": epoch_s} for i, v in enumerate(val_per_epoch)]
    return JobResult(JobState.COMPLETE, val_per_epoch[-1], history, {})


def test_time_to_the_baselines_result_is_the_median_over_seeds() -> None:
    runs = [_run([0.5, 0.93, 0.95], 2.0), _run([0.5, 0.8, 0.92], 2.0), _run([0.91, 0.93, 0.94], 2.0)]
    assert time_to(runs, 0.92, "val_accuracy", "maximize") == 4.0  # 4 s, 6 s, 2 s
    # two of three never reach it: never
    assert time_to([runs[0], _run([0.1, 0.2], 1.0), None], 0.92, "val_accuracy", "maximize") is None
