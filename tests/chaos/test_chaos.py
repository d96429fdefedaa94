"""The chaos suite, smaller and bounded, in CI: nothing lost, one email each, results equal."""

from __future__ import annotations

from local.chaos_suite import SuiteOptions, run_suite, table


def test_missions_survive_chaos(capsys):
    row = run_suite(SuiteOptions(missions=2, transactions=16, timeout_seconds=240))
    with capsys.disabled():
        print("\n" + table(row))
    assert row["missions"] == 2
    assert row["duplicate_events"] > 0 and row["handler_crashes"] == 2
    assert row["lost"] == 0 and row["stale_outcomes_counted"] == 0
    assert row["emails_per_mission"] == [1]
    assert row["results_equal"] == "2/2"
