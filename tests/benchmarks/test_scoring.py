"""Scoring of benchmark runs on hand-made logs: trials and hours to a level, final pick,
quartiles with runs that never get there, summaries and the targets' verdicts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.recording import TrialLog
from benchmarks.runs import Run
from benchmarks.scoring import (
    Quantiles,
    hours_to,
    score_run,
    summarize,
    summarize_runs,
    trials_to,
)
from benchmarks.targets import Check, evaluate


def run(fractions: list[float], finish_s: list[float], pick: float, **kw: Any) -> Run:
    outcomes = kw.pop("outcomes", "k" * len(fractions))
    fields: dict[str, Any] = {
        "impl": "ours",
        "method": "model",
        "family": "heldout",
        "landscape": "heldout-00",
        "seed": 42,
        "concurrency": 1,
        "ended": "shutdown",
        "pick": pick,
        "outcomes": outcomes,
        "kinds": "p" + "s" * (len(fractions) - 1),
        "stage": [None] + [1] * (len(fractions) - 1),
        "mbs": [None] + [1] * (len(fractions) - 1),
        "fraction": fractions,
        "finish_s": finish_s,
    }
    return Run(**(fields | kw))


def test_trials_to_counts_every_trial_until_the_first_that_reaches_the_level() -> None:
    fractions = [0.0, 0.5, 0.96, 0.93, 0.991, 1.0]
    assert trials_to(fractions, 0.95) == 3
    assert trials_to(fractions, 0.99) == 5
    assert trials_to(fractions, 1.0) == 6
    assert trials_to(fractions[:4], 0.99) is None
    assert trials_to([], 0.95) is None


def test_a_value_rounded_to_the_level_reaches_it() -> None:
    assert trials_to([0.0, 0.9899999999], 0.99) == 2
    assert trials_to([0.0, 0.9899], 0.99) is None


def test_hours_to_is_the_clock_when_the_first_trial_reaching_the_level_finished() -> None:
    fractions = [0.0, 0.97, 0.995]
    finish = [360.0, 1800.0, 5400.0]
    assert hours_to(fractions, finish, 0.95) == pytest.approx(0.5)
    assert hours_to(fractions, finish, 0.99) == pytest.approx(1.5)
    assert hours_to(fractions, finish, 0.999) is None


def test_score_run_scores_the_final_pick_not_the_best_trial() -> None:
    # The best trial reached 100 %, but the search recommends a 97 % config (noise fooled it).
    scored = score_run(
        run([0.0, 1.0, 0.97, 0.0], [100.0, 3700.0, 7300.0, 7400.0], 0.97, outcomes="kkkm")
    )
    assert scored.pick == 0.97
    assert scored.best == 1.0
    assert scored.trials_to == {0.95: 2, 0.99: 2}
    assert scored.hours_to[0.99] == pytest.approx(3700.0 / 3600.0)
    assert scored.oom == 1
    assert scored.trials == 4
    assert scored.hours == pytest.approx(7400.0 / 3600.0)


def test_run_of_turns_logged_values_into_fractions_of_the_optimum() -> None:
    trials = [
        TrialLog(1, "profile", "ok", None, None, 0.0, 10.0),
        TrialLog(2, "search", "oom", 1, 64, 0.0, 25.0),
        TrialLog(3, "search", "ok", 1, 32, 150.0, 40.0),
    ]
    made = Run.of(
        entry=("upstream", "binary"),
        family="tuning",
        landscape="tuning-03",
        seed=7,
        concurrency=4,
        ended="shutdown",
        trials=trials,
        pick_value=120.0,
        optimum=200.0,
    )
    assert made.fraction == (0.0, 0.0, 0.75)
    assert made.pick == 0.6
    assert made.outcomes == "kmk"
    assert made.kinds == "pss"
    assert made.oom_trials == 1
    assert Run.from_json(made.to_json()) == made


def test_quartiles_treat_never_as_infinitely_late() -> None:
    q = Quantiles.of([2.0, 4.0, math.inf, math.inf])
    assert q.q25 == pytest.approx(3.5)
    assert math.isinf(q.median)  # halfway between 4 and "never" is not a number of trials
    assert math.isinf(q.q75)
    assert q.show() == "never [3.5–never]"
    assert q.to_json()["median"] is None
    finite = Quantiles.of([1.0, 2.0, 3.0])
    assert (finite.q25, finite.median, finite.q75) == (1.5, 2.0, 2.5)
    assert math.isinf(Quantiles.of([math.inf]).median)


def test_summary_shares_and_medians() -> None:
    runs = [
        run([0.0, 0.99], [10.0, 3600.0], 0.995),
        run([0.0, 0.96], [10.0, 7200.0], 0.96),
        run([0.0, 0.5], [10.0, 7200.0], 0.5, outcomes="km"),
    ]
    s = summarize("ours", "model", [score_run(r) for r in runs])
    assert s.runs == 3
    assert s.pick_share == pytest.approx(1 / 3)
    assert s.pick.median == 0.96
    assert s.reach[0.95] == pytest.approx(2 / 3)
    assert s.reach[0.99] == pytest.approx(1 / 3)
    assert s.trials_to[0.95].median == 2.0
    assert math.isinf(s.trials_to[0.99].median)
    assert s.hours_to[0.95].median == pytest.approx(2.0)
    assert s.oom.median == 0.0
    assert s.oom_mean == pytest.approx(1 / 3)


def test_summarize_runs_groups_by_family_sweep_concurrency_and_entry() -> None:
    runs = [
        run([0.0, 1.0], [1.0, 2.0], 1.0),
        run([0.0, 1.0], [1.0, 2.0], 1.0, seed=43),
        run([0.0, 1.0], [1.0, 2.0], 1.0, concurrency=16),
        run([0.0, 1.0], [1.0, 2.0], 1.0, sweep="noise=0.05"),
        run([0.0, 1.0], [1.0, 2.0], 1.0, impl="upstream", method="binary"),
    ]
    groups = summarize_runs(runs)
    assert groups[("heldout", "", 1, "ours", "model")].runs == 2
    assert set(groups) == {
        ("heldout", "", 1, "ours", "model"),
        ("heldout", "", 16, "ours", "model"),
        ("heldout", "noise=0.05", 1, "ours", "model"),
        ("heldout", "", 1, "upstream", "binary"),
    }


def test_targets_pass_and_fail_on_hand_made_summaries() -> None:
    def entry_runs(
        impl: str, method: str, fractions: list[float], pick: float, seeds: int = 2
    ) -> list[Run]:
        finish = [600.0 * (i + 1) for i in range(len(fractions))]
        return [
            run(fractions, finish, pick, impl=impl, method=method, seed=s) for s in range(seeds)
        ]

    runs = entry_runs("ours", "model", [0.0, 0.97, 0.995], 0.995)
    runs += entry_runs("deepspeed", "grid", [0.0, 0.5, 0.5, 0.5, 0.96], 0.96)
    for method in ("binary", "random", "asha"):
        runs += entry_runs("ours", method, [0.0, 0.96, 0.99], 0.99)
        runs += entry_runs("upstream", method, [0.0, 0.5, 0.96], 0.96)
    runs += entry_runs("upstream", "asha", [0.0, 0.99], 0.99, seeds=4)  # reaches 99 % sooner
    checks = {c.name: c for c in evaluate(summarize_runs(runs), "heldout", [1])}
    assert checks["model final pick >= 99% of optimum, share of runs"].passed
    assert checks["model median trials to 99%"].passed  # 3 <= 6
    assert checks["model median OOM trials"].passed
    assert checks["ours binary median final pick vs upstream's"].passed
    assert checks["ours binary median trials to 95% vs upstream's"].passed
    assert not checks["ours asha median trials to 99% vs upstream's"].passed  # 3 vs 2
    wall = next(c for c in checks.values() if c.name.startswith("model median hours to 95%"))
    assert wall.value == pytest.approx(1200 / 3600)  # model reached 95 % at trial 2
    assert wall.limit == pytest.approx(0.5 * 3000 / 3600)  # half of DeepSpeed's trial 5
    assert wall.passed
    missing = evaluate(summarize_runs(runs), "heldout", [4])
    assert missing and not any(c.passed for c in missing)
    assert missing[0].line().startswith("MISSING")


def test_never_ties_never_except_where_a_target_needs_a_time() -> None:
    tie = Check("heldout", 1, "ours vs upstream", math.inf, math.inf, True)
    assert tie.passed  # neither gets there: ours is not worse
    wall = Check("heldout", 1, "model hours", math.inf, math.inf, True, needs_finite=True)
    assert not wall.passed
    assert wall.line().startswith("FAIL") and "never" in wall.line()
    assert not Check("heldout", 1, "share", 0.85, 0.9, False, percent=True).passed
