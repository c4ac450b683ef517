"""The search's focus: it tunes the families the screen found (``autoopt.screen.focus``)."""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from autoopt.screen.focus import FOCUS_FAMILIES, Focus, SearchFocus, survivors
from autoopt.space import suggest_config
from autoopt.study import build_sampler

FAMILIES = [f"f{i}" for i in range(14)]


def _screened(family: str, values: list[float], number: int = 0, complete: bool = False) -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.COMPLETE if complete else TrialState.PRUNED,
                     value=values[-1] if complete else None, params={"optimizer": family},
                     distributions={"optimizer": CategoricalDistribution(FAMILIES)},
                     intermediate_values=dict(enumerate(values, 1)), user_attrs={"portfolio": True})
    t.number = number
    return t


def _screen() -> list[optuna.trial.FrozenTrial]:
    """14 families by successive halving: f0..f13 worse and worse at epoch 1; the best 5 go on
    to epoch 2, where f3 leads; f3 and f1 reach epoch 4."""
    out = [_screened(f"f{i}", [0.9 - 0.01 * i], i) for i in range(14)]
    for i, v in [(0, 0.91), (1, 0.93), (2, 0.90), (3, 0.95), (4, 0.89)]:
        out[i] = _screened(f"f{i}", [0.9 - 0.01 * i, v], i)
    out[3] = _screened("f3", [0.87, 0.95, 0.96, 0.97], 3, complete=True)
    out[1] = _screened("f1", [0.89, 0.93, 0.94, 0.95], 1, complete=True)
    return out


def test_survivors_are_the_best_third_ordered_by_the_deepest_epoch_they_reached() -> None:
    found = survivors(_screen(), "maximize")
    assert [s.family for s in found] == ["f3", "f1", "f0", "f2", "f4"][:FOCUS_FAMILIES]
    assert (found[0].epoch, found[0].rank, found[0].of) == (4, 1, 2)
    assert "best third at epoch 4 (1 of 2)" in found[0].why


def test_the_bandit_favours_the_survivor_whose_trials_win() -> None:
    focus = Focus(survivors(_screen(), "maximize"), "maximize")
    picks: Counter[str] = Counter()
    for _ in range(30):
        fam = focus.choose()
        picks[fam] += 1
        good = fam == "f1"  # f1's tuned configs beat everything; the others' are pruned
        focus.observe(fam, TrialState.COMPLETE if good else TrialState.PRUNED, 0.99 if good else None)
    assert picks.most_common(1)[0][0] == "f1" and set(picks) <= set(focus.names)


def test_the_bandit_spends_by_gain_per_second() -> None:
    """Two survivors whose trials rank alike: the one four times slower per epoch (measured in the
    screen) gets far fewer trials; its cost shows in why it is searched."""
    from autoopt.screen.focus import Survivor

    focus = Focus([Survivor("slow", 2, 1, 14, s_per_epoch=2.0), Survivor("fast", 2, 2, 14, s_per_epoch=0.5)],
                  "maximize")
    picks: Counter[str] = Counter()
    for i in range(30):
        fam = focus.choose()
        picks[fam] += 1
        focus.observe(fam, TrialState.COMPLETE, 0.9 + 0.001 * (i % 3))
    assert picks["fast"] >= 3 * picks["slow"], picks
    assert focus.cost("slow") == 4.0 and "4.0x the fastest's seconds per epoch" in focus.why()["slow"]
    assert "x the fastest" not in focus.why()["fast"]


def test_the_searched_families_stay_within_five_however_the_screen_reorders_its_best() -> None:
    """The search starts while the screen's last trials still run: a family given a search trial
    stays searched when the screen's last results push it out of the best third, and the search's
    trials never span more than ``FOCUS_FAMILIES`` families."""
    from autoopt.screen.focus import Survivor

    def ranked(names: list[str]) -> list[Survivor]:
        return [Survivor(n, 2, i + 1, 14) for i, n in enumerate(names)]

    focus = Focus(ranked(["a", "b", "c", "d", "e"]), "maximize")
    picked = {focus.choose() for _ in range(2)}
    focus.update(ranked(["f", "g", "h", "i", "j"]))  # the screen's last results: five others lead
    # the new leaders first, in rank order, then the families already searched
    assert focus.names == ["f", "g", "h", "i", "j"][:FOCUS_FAMILIES - len(picked)] + sorted(picked)
    searched = set(picked)
    for _ in range(40):
        fam = focus.choose()
        searched.add(fam)
        focus.observe(fam, TrialState.PRUNED, None)
    assert len(searched) <= FOCUS_FAMILIES, searched


def test_a_small_screen_leaves_the_search_unfocused() -> None:
    trials = [_screened(f"f{i}", [0.5], i) for i in range(3)]
    keeper = SearchFocus("maximize")
    assert keeper.family(trials) is None and keeper.why() == {}


def test_a_fixed_family_is_what_the_trial_trains_and_its_settings_are_sampled() -> None:
    from autoopt.spec import StudySpec

    space = StudySpec(task="digits").search_space()
    sampler = build_sampler("tpe", 0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    names = set()
    for _ in range(4):
        trial = study.ask()
        sampler.fix(study.study_name, trial.number, {"optimizer": "nadam"})
        config = suggest_config(trial, space)
        names.add(config.optimizer)
        assert "lr" in config.optimizer_params
        study.tell(trial, 0.5)
    assert names == {"nadam"}
