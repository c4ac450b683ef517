"""The confirmation's race, on made-up per-seed values: who is dropped, who gets more seeds, who
is left out under a time budget; and the screen's cost-aware successive halving on a real study."""

from __future__ import annotations

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState, create_trial

from autoopt.budget import Budget, run_cost
from autoopt.decide.race import Contender, Race, compare
from autoopt.dispatch import JobResult, JobState
from autoopt.space import TrialConfig
from autoopt.training.pruning import GuardedPruner, ScreenPruner, build_pruner, screen_rungs

optuna.logging.set_verbosity(optuna.logging.WARNING)
N_VAL = 1000


def contender(name: str, values: list[float], *, s_per_epoch: float = 1.0, essential: bool = False) -> Contender:
    c = Contender(name, None if "default" in name or "tutorial" in name else 1, TrialConfig("adamw", {}),
                  s_per_epoch, essential=essential)
    c.truth = values  # type: ignore[attr-defined]  # what each seed would measure
    return c


class FakeClock:
    """The race's and the budget's clock: it moves only when a round runs, by the seconds the
    round would take on the race's workers (its runs, longest first, each to the least loaded)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def run_round(self, batch: list[tuple[Contender, int]], *, epochs: int, workers: int = 2) -> None:
        loads = [0.0] * workers
        for cost in sorted((run_cost(epochs, c.s_per_epoch or 1.0) for c, _ in batch), reverse=True):
            loads[loads.index(min(loads))] += cost
        self.now += max(loads)


def race(contenders: list[Contender], *, min_seeds: int = 3, max_seeds: int = 5, budget: Budget | None = None,
         epochs: int = 1, clock: FakeClock | None = None, seeds: int | None = None) -> tuple[Race, list[list[str]]]:
    rounds: list[list[str]] = []
    clock = clock or FakeClock()

    def submit(batch: list[tuple[Contender, int]]) -> None:
        rounds.append([c.name for c, _ in batch])
        clock.run_round(batch, epochs=epochs)
        for c, seed in batch:
            value = c.truth[seed]  # type: ignore[attr-defined]
            c.results[seed] = JobResult(JobState.COMPLETE, value, [{"epoch": 1, "epoch_s": c.s_per_epoch or 1.0}])

    r = Race(contenders, list(range(seeds or max_seeds)), direction="maximize", n_val=N_VAL, margin=lambda _: 0.01,
             min_seeds=min_seeds, max_seeds=max_seeds, workers=2, epochs=epochs, submit=submit, budget=budget,
             clock=clock)
    r.run()
    return r, rounds


def test_a_clearly_beaten_contender_leaves_after_two_seeds_and_a_decided_race_stops_at_min_seeds() -> None:
    tuned = contender("trial_1", [0.95, 0.96, 0.95, 0.96, 0.95])
    base = contender("adam_default", [0.90, 0.91, 0.90, 0.91, 0.90])
    worse = contender("rmsprop_tutorial", [0.85, 0.86, 0.99, 0.99, 0.99])  # would have come back: never asked
    hopeless = contender("sgd_tutorial", [0.60, 0.62, 0.99, 0.99, 0.99])
    r, rounds = race([tuned, base, worse, hopeless])
    assert rounds[0] == rounds[1] == ["trial_1", "adam_default", "rmsprop_tutorial", "sgd_tutorial"]
    # the best baseline is far behind too, but stays: the verdict is decided between it and trial_1
    assert hopeless.status == worse.status == "dropped" and base.status == "racing"
    assert "beaten by trial_1 after 2 seeds" in hopeless.reason
    assert sorted(hopeless.results) == [0, 1]
    assert rounds[2] == ["trial_1", "adam_default"] and len(rounds) == 3  # better, decided at three seeds
    assert r.rounds == 3


def test_when_the_pair_changes_its_new_pair_still_gets_its_seeds() -> None:
    """Means tie after the first seeds (common on a small validation set): the pair the verdict
    is between is first trial_1 and adam_default, then, once they fall back, trial_2 and
    sgd_default. The race goes on past ``max_seeds`` rounds until the new pair has its seeds (each
    of the two at most ``max_seeds``), not stopping with it compared on three."""
    t1 = contender("trial_1", [0.96, 0.94] + [0.90] * 6)
    t2 = contender("trial_2", [0.94, 0.96] + [0.96] * 6)
    a = contender("adam_default", [0.93, 0.95] + [0.90] * 6)
    b = contender("sgd_default", [0.95, 0.93] + [0.93] * 6)
    r, rounds = race([t1, t2, a, b], min_seeds=2, max_seeds=4, seeds=8)
    assert rounds[2] == ["trial_1", "adam_default"] and rounds[3] == ["trial_2", "sgd_default"]
    assert sorted(set(t2.results) & set(b.results)) == [0, 1, 3, 4] and r.rounds == 5


def made(c: Contender, seed: int, trial: int = 7) -> Contender:
    """``c`` with the study's run of its config on ``seed`` (what it would measure there) counted."""
    c.offer(seed, trial, JobResult(JobState.COMPLETE, c.truth[seed],  # type: ignore[attr-defined]
                                   [{"epoch": 1, "epoch_s": c.s_per_epoch or 1.0}]))
    return c


def test_a_run_already_made_is_a_seed_without_a_new_run() -> None:
    """The same race as above, with the tuned config's search run on seed 0 and the default's
    screen run on seed 1 counted: the same decisions, two runs fewer."""
    tuned = made(contender("trial_1", [0.95, 0.96, 0.95, 0.96, 0.95]), 0, trial=1)
    base = made(contender("adam_default", [0.90, 0.91, 0.90, 0.91, 0.90]), 1, trial=3)
    worse = contender("rmsprop_tutorial", [0.85, 0.86, 0.99, 0.99, 0.99])
    hopeless = contender("sgd_tutorial", [0.60, 0.62, 0.99, 0.99, 0.99])
    r, rounds = race([tuned, base, worse, hopeless])
    assert rounds[0] == ["adam_default", "rmsprop_tutorial", "sgd_tutorial"]
    assert rounds[1] == ["trial_1", "rmsprop_tutorial", "sgd_tutorial"]
    assert rounds[2] == ["trial_1", "adam_default"] and len(rounds) == 3
    assert sum(map(len, rounds)) == 8  # 10 without the two runs made already
    assert hopeless.status == worse.status == "dropped" and base.status == "racing"
    assert sorted(tuned.results) == sorted(base.results) == [0, 1, 2] and r.rounds == 3
    assert tuned.made == {0: 1} and base.made == {1: 3}
    assert compare(tuned, base, "maximize", N_VAL).verdict == "better"


def test_only_seeds_both_ran_are_paired() -> None:
    """A run on a seed the rival has not run pairs with nothing: it is not compared, and a run
    made already on a seed the race never plays is not counted at all."""
    a = contender("trial_1", [0.9, 0.9, 0.9, 0.0])
    b = contender("adam_default", [0.8, 0.8, 0.8, 0.8])
    for c in (a, b):
        for seed in (0, 1):
            c.results[seed] = JobResult(JobState.COMPLETE, c.truth[seed], [])  # type: ignore[attr-defined]
    a.results[3] = JobResult(JobState.COMPLETE, 0.0, [])
    cmp = compare(a, b, "maximize", N_VAL)
    assert cmp.n == 2 and cmp.deltas == (0.1, 0.1)
    # the race stops at two seeds, decided: trial_1's run on the third (made already) is left unplayed
    tuned = made(contender("trial_1", [0.95, 0.96, 0.10]), 2)
    base = contender("adam_default", [0.80, 0.81, 0.80])
    _, rounds = race([tuned, base], min_seeds=2, max_seeds=3)
    assert rounds == [["trial_1", "adam_default"]] * 2
    assert sorted(tuned.results) == [0, 1] and tuned.made == {} and tuned.mean() == pytest.approx(0.955)


@pytest.mark.parametrize("reused", [False, True])
def test_under_a_budget_a_run_already_made_costs_nothing(reused: bool) -> None:
    """49 s of a 100 s budget left: trial_1's two runs of 40.5 s do not fit, one does once its
    search run counts as its first seed."""
    clock = FakeClock(45.0)
    budget = Budget(limit_s=100.0, since=0.0, clock=clock)
    values = [0.9, 0.91, 0.9]
    fast = [contender(f"f{i}_default", values, s_per_epoch=1.0) for i in range(3)]
    best = contender("trial_1", [v + 0.05 for v in values], s_per_epoch=20.0, essential=True)
    if reused:
        made(best, 0)
    _, rounds = race([*fast, best], min_seeds=2, max_seeds=2, budget=budget, epochs=2, clock=clock)
    if reused:
        assert best.status == "racing" and sorted(best.results) == [0, 1] and best.made == {0: 7}
        assert [sorted(names) for names in rounds] == [["f0_default", "f1_default", "f2_default"],
                                                       ["f0_default", "f1_default", "f2_default", "trial_1"]]
    else:
        assert best.status == "unaffordable" and "2 more run(s)" in best.reason and not best.results
    assert all(c.status != "unaffordable" and sorted(c.results) == [0, 1] for c in fast)
    assert clock.now <= budget.limit_s - budget.end_reserve()


def test_an_undecided_verdict_gets_more_seeds_for_close_contenders_up_to_the_cap() -> None:
    noisy = [0.90, 0.93, 0.89, 0.94, 0.91, 0.92]
    tuned = contender("trial_1", noisy)
    base = contender("adam_default", [v + d for v, d in zip(noisy, [0.01, -0.02, 0.015, -0.01, 0.0, 0.0],
                                                               strict=True)])
    _, rounds = race([tuned, base], max_seeds=5)
    assert [len(x) for x in rounds] == [2, 2, 2, 2, 2]  # a tie throughout: the cap, five seeds
    assert sorted(tuned.results) == sorted(base.results) == [0, 1, 2, 3, 4]


def test_extra_seeds_go_to_the_decisive_pair_and_a_slow_one_gets_fewer() -> None:
    same = [0.90, 0.93, 0.89, 0.94, 0.91, 0.92]
    tuned = contender("trial_1", [v + d for v, d in zip(same, [0.01, -0.02, 0.015, -0.01, 0, 0], strict=True)])
    slow = contender("soap_default", [v + d for v, d in zip(same, [0.0, 0.0, 0.01, 0.0, 0, 0], strict=True)],
                     s_per_epoch=10.0)
    other = contender("adam_default", [v + d for v, d in zip(same, [-0.006, 0.002, -0.004, 0, 0, 0], strict=True)])
    race([tuned, slow, other], max_seeds=5)
    assert len(slow.results) == 4 and len(tuned.results) == 4  # min_seeds + 1 for a 10x slower one
    assert len(other.results) == 3 and other.status == "racing"


def test_a_slow_pair_gets_no_seed_past_the_cap() -> None:
    # --confirm-seeds 1 (min = max = 1 seed) with both of the pair more than SLOW times slower
    # than a cheap rival: one round, not the slow ones' "one extra seed" past the cap.
    tuned = contender("trial_1", [0.90, 0.91], s_per_epoch=10.0)
    base = contender("signmom_default", [0.90, 0.91], s_per_epoch=10.0)
    cheap = contender("sgd_tutorial", [0.80, 0.81])
    _, rounds = race([tuned, base, cheap], min_seeds=1, max_seeds=1, seeds=2)
    assert len(rounds) == 1 and all(sorted(c.results) == [0] for c in (tuned, base, cheap)), rounds


def test_a_contender_behind_by_more_than_the_margin_leaves_after_three_seeds() -> None:
    tuned = contender("trial_1", [0.950, 0.960, 0.955, 0.95, 0.95])
    base = contender("adam_default", [0.948, 0.962, 0.950, 0.95, 0.95])
    # 1.17 points behind on the mean after 3 seeds, its interval wide (ahead on the third seed)
    behind = contender("lion_default", [0.935, 0.935, 0.960, 0.99, 0.99])
    race([tuned, base, behind])
    assert behind.status == "dropped" and "by more than the margin" in behind.reason
    assert "after 3 seeds" in behind.reason and sorted(behind.results) == [0, 1, 2]


def test_two_identical_small_deficits_do_not_drop_a_contender() -> None:
    # Each seed 2 examples of 800 behind the leader: a zero-width interval, no evidence. It keeps
    # racing to a third seed, where it draws level.
    tuned = contender("trial_1", [0.9475, 0.9500, 0.9450, 0.95, 0.95])
    base = contender("adam_default", [0.9465, 0.9470, 0.9400, 0.94, 0.94])  # the best baseline after 2
    close = contender("soap_default", [0.9450, 0.9475, 0.9500, 0.95, 0.95], s_per_epoch=12.0)
    r = Race([tuned, base, close], list(range(5)), direction="maximize", n_val=800, margin=lambda _: 0.01,
             min_seeds=3, max_seeds=5, workers=2, epochs=1, submit=_submit([]))
    r.run()
    assert close.status == "racing" and len(close.results) >= 3, close.reason


def test_behind_on_every_seed_by_more_than_twice_the_margin_leaves_after_two() -> None:
    tuned = contender("trial_1", [0.95, 0.96, 0.95, 0.96, 0.95])
    base = contender("adam_default", [0.94, 0.95, 0.94, 0.95, 0.94])
    far = contender("sgd_tutorial", [0.90, 0.93, 0.99, 0.99, 0.99])  # 5 and 3 points behind
    near = contender("rmsprop_tutorial", [0.90, 0.95, 0.90, 0.95, 0.90])  # 5 points, then 1: not every seed
    race([tuned, base, far, near])
    assert far.status == "dropped" and "after 2 seeds" in far.reason and sorted(far.results) == [0, 1]
    assert sorted(near.results) == [0, 1, 2]


def _submit(rounds: list[list[str]]):
    def submit(batch: list[tuple[Contender, int]]) -> None:
        rounds.append([c.name for c, _ in batch])
        for c, seed in batch:
            c.results[seed] = JobResult(JobState.COMPLETE, c.truth[seed],  # type: ignore[attr-defined]
                                        [{"epoch": 1, "epoch_s": c.s_per_epoch or 1.0}])
    return submit


def test_without_a_budget_the_allowance_leaves_out_slow_contenders_but_never_the_decisive_two() -> None:
    values = [0.9, 0.91, 0.9, 0.91, 0.9]
    best = contender("trial_1", values, s_per_epoch=30.0, essential=True)
    screened = contender("soap_default", values, s_per_epoch=30.0, essential=True)
    slow = contender("trial_2", values, s_per_epoch=20.0)
    cheap = contender("adam_tutorial", values)
    clock = FakeClock(1000.0)
    rounds: list[list[str]] = []

    def submit(batch: list[tuple[Contender, int]]) -> None:
        rounds.append([c.name for c, _ in batch])
        clock.run_round(batch, epochs=1)
        for c, seed in batch:
            c.results[seed] = JobResult(JobState.COMPLETE, c.truth[seed], [{"epoch": 1, "epoch_s": c.s_per_epoch}])

    Race([best, screened, slow, cheap], list(range(3)), direction="maximize", n_val=N_VAL, margin=lambda _: 0.01,
         min_seeds=3, max_seeds=3, workers=2, epochs=1, submit=submit, allowance_s=40.0, clock=clock).run()
    assert slow.status == "unaffordable" and "allowance" in slow.reason and not slow.results
    # Three rounds of the decisive two alone take 3 x 30.5 s: past the 40 s allowance, they still
    # get their seeds; no one else does.
    assert rounds == [["trial_1", "soap_default"]] * 3
    assert len(best.results) == len(screened.results) == 3
    assert clock.now - 1000.0 == pytest.approx(3 * 30.5)


def test_the_allowance_keeps_the_baseline_that_leads_even_when_it_was_not_screened_best() -> None:
    """The best-screened default is essential from the start, but the verdict is between the best
    tuned config and whichever baseline leads the race: once it leads, it keeps its seeds too."""
    best = contender("trial_1", [0.95, 0.96, 0.95], s_per_epoch=10.0, essential=True)
    screened = contender("adamw_default", [0.90, 0.90, 0.90], s_per_epoch=1.0, essential=True)
    leading = contender("soap_default", [0.95, 0.96, 0.96], s_per_epoch=20.0)  # slow, not essential
    clock = FakeClock()  # each round takes its slowest run and the round's dispatch

    def submit(batch: list[tuple[Contender, int]]) -> None:
        clock.now += max(c.s_per_epoch or 1.0 for c, _ in batch) + 2.0
        for c, seed in batch:
            c.results[seed] = JobResult(JobState.COMPLETE, c.truth[seed], [{"epoch": 1, "epoch_s": c.s_per_epoch}])

    # Enough for three rounds with everyone at the start; after two, not for a third with everyone.
    Race([best, screened, leading], list(range(3)), direction="maximize", n_val=N_VAL, margin=lambda _: 0.01,
         min_seeds=3, max_seeds=3, workers=2, epochs=1, submit=submit, allowance_s=63.0, clock=clock).run()
    assert len(leading.results) == 3 and leading.status == "racing", (leading.status, leading.reason)
    assert len(best.results) == 3
    # The screened default, far behind after two seeds, left the race; the one that leads stayed.
    assert screened.status == "dropped" and sorted(screened.results) == [0, 1]


@pytest.mark.parametrize("started_at", [0.0, 50.0])
def test_under_a_budget_the_slowest_are_left_out_first_and_the_essential_last(started_at: float) -> None:
    # The race starts ``started_at`` seconds into a 100 s budget (the clock is the test's: the
    # verdicts do not depend on how fast this machine runs them).
    clock = FakeClock(started_at)
    budget = Budget(limit_s=100.0, since=0.0, clock=clock)  # 94 s for work, the end's 6 s kept
    values = [0.9, 0.91, 0.9, 0.91, 0.9]
    fast = [contender(f"f{i}_default", values, s_per_epoch=1.0) for i in range(3)]
    slow_essential = contender("trial_1", [v + 0.05 for v in values], s_per_epoch=20.0, essential=True)
    slow = contender("soap_default", values, s_per_epoch=30.0)
    _, rounds = race([*fast, slow_essential, slow], min_seeds=2, max_seeds=2, budget=budget, epochs=2, clock=clock)
    # Runs of 2.5 s, 40.5 s (trial_1) and 60.5 s (soap) on two workers.
    assert slow.status == "unaffordable" and "not confirmed" in slow.reason and not slow.results
    assert any("soap_default" in note for note in budget.notes)
    if started_at == 0.0:
        # Two rounds of everyone take 2 x 60.5 s; without soap, 2 x 40.5 s: they fit in 94 s.
        assert [sorted(names) for names in rounds] == [["f0_default", "f1_default", "f2_default", "trial_1"]] * 2
        assert slow_essential.status == "racing" and sorted(slow_essential.results) == [0, 1]
        assert all(sorted(c.results) == [0, 1] for c in fast)
    else:
        # 44 s left: trial_1 alone (2 x 40.5 s) no longer fits: it leaves on its own, essential as
        # it is, and the fast ones get their seeds (2 x 2.5 s).
        assert slow_essential.status == "unaffordable" and not slow_essential.results
        assert [sorted(names) for names in rounds] == [["f0_default", "f1_default", "f2_default"]] * 2
        assert all(c.status == "racing" and sorted(c.results) == [0, 1] for c in fast)
    assert clock.now <= budget.limit_s - budget.end_reserve()  # the race kept within the budget
    assert budget.used() == clock.now


def test_one_unaffordable_contender_leaves_alone_and_the_cheap_ones_get_a_verdict() -> None:
    clock = FakeClock()
    budget = Budget(limit_s=100.0, since=0.0, clock=clock)  # 94 s for work
    values = [0.9, 0.91, 0.9, 0.91, 0.9]
    soap = contender("soap_default", [v + 0.05 for v in values], s_per_epoch=100.0, essential=True)  # 200.5 s
    pick = contender("trial_1", [v + 0.02 for v in values], essential=True)
    cheap = [contender(f"{n}_tutorial", values) for n in ("adam", "sgd")]
    r, _ = race([soap, pick, *cheap], min_seeds=2, max_seeds=3, budget=budget, epochs=2, clock=clock)
    assert soap.status == "unaffordable" and "do not fit" in (soap.reason or "") and not soap.results
    assert any(note.startswith("soap_default: not confirmed") for note in budget.notes)
    assert len(pick.results) >= 2 and all(len(c.results) >= 2 for c in cheap)
    verdict = compare(pick, r.best(baseline=True), "maximize", N_VAL, r.noise()).verdict
    assert verdict == "better"
    assert clock.now <= budget.limit_s - budget.end_reserve()


def test_under_a_budget_the_essential_one_stays_though_it_is_the_slowest() -> None:
    clock = FakeClock()
    budget = Budget(limit_s=150.0, since=0.0, clock=clock)  # 143 s for work
    values = [0.9, 0.91, 0.9, 0.91, 0.9]
    essential = contender("trial_1", [v + 0.005 for v in values], s_per_epoch=30.0, essential=True)  # 60.5 s
    others = [contender(f"{n}_default", values, s_per_epoch=20.0) for n in ("soap", "lion")]  # 40.5 s each
    cheap = contender("adam_tutorial", values)
    race([essential, *others, cheap], min_seeds=2, max_seeds=2, budget=budget, epochs=2, clock=clock)
    # Everyone: 2 x 81 s on two workers; without one 40.5 s run, 2 x 60.5 s fit. The slowest run
    # is the essential one's: one of the others leaves instead.
    assert essential.status == "racing" and sorted(essential.results) == [0, 1]
    assert sorted(c.status for c in others) == ["racing", "unaffordable"]
    assert sorted(cheap.results) == [0, 1]
    assert clock.now == pytest.approx(2 * 60.5) and clock.now <= budget.limit_s - budget.end_reserve()


def test_screen_rungs_and_the_guarded_screen_pruner() -> None:
    assert screen_rungs(5) == [1, 2] and screen_rungs(9) == [1, 3] and screen_rungs(1) == []
    pruner = build_pruner("screen", epochs=9, warmup=0.3)
    assert isinstance(pruner, GuardedPruner) and isinstance(pruner.inner, ScreenPruner)
    assert [s for s in range(1, 10) if pruner.may_prune(s)] == [1, 3]  # only at the rungs


def _portfolio_study(values_at_1: list[float], speeds: list[float]) -> optuna.Study:
    study = optuna.create_study(storage=InMemoryStorage(), direction="maximize")
    for v, s in zip(values_at_1, speeds, strict=True):
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={1: v},
                                     user_attrs={"portfolio": True, "s_per_epoch": s}))
    return study


def _running(value: float, s_per_epoch: float) -> optuna.trial.FrozenTrial:
    t = create_trial(state=TrialState.RUNNING, intermediate_values={1: value}, user_attrs={"s_per_epoch": s_per_epoch})
    t.number = 999
    return t


@pytest.mark.parametrize("speed, kept", [(1.0, True), (10.0, False)])
def test_the_screen_keeps_a_third_at_each_rung_and_a_slow_family_must_lead_its_rung(speed: float, kept: bool) -> None:
    # Eight families reached rung 1; a ninth at 0.85 is second of nine: inside the best third (3)
    # at the median's speed, outside at ten times the median (it must be the best one).
    study = _portfolio_study([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [1.0] * 8)
    pruner = ScreenPruner([1, 3])
    assert pruner.prune(study, _running(0.85, speed)) is not kept
    assert not pruner.prune(study, _running(0.95, 10.0))  # the rung's leader goes on, however slow
    assert pruner.prune(study, _running(0.55, 1.0))  # sixth of nine: pruned


def test_under_a_budget_the_screen_keeps_a_slow_family_in_its_rungs_best_third() -> None:
    # Second of nine at ten times the median's seconds per epoch: cost-aware, it is pruned; by
    # rank alone (a time budget: its deadline stops it if the budget cannot afford it), it goes on.
    study = _portfolio_study([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [1.0] * 8)
    assert ScreenPruner([1, 3]).prune(study, _running(0.85, 10.0))
    assert not ScreenPruner([1, 3], cost_aware=False).prune(study, _running(0.85, 10.0))
    assert ScreenPruner([1, 3], cost_aware=False).prune(study, _running(0.55, 1.0))  # sixth of nine
    ranked = build_pruner("screen_rank", epochs=9, warmup=0.3)
    assert isinstance(ranked, GuardedPruner) and not ranked.inner.cost_aware
