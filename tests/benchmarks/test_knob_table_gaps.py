"""Our knob table expresses the optima that upstream's and DeepSpeed's tables reach."""

from __future__ import annotations

from benchmarks.knob_tables import table_gaps


def test_our_table_reaches_the_other_tables_optima_on_the_tuning_family() -> None:
    feasible, short, worst = table_gaps("tuning", 6)
    assert feasible >= 5
    assert short == 0, f"{short} of {feasible} landscapes below 99 % (worst {worst:.3f})"
