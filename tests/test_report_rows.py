"""The order and the state counts every trial table shares (the report's rows, the leaderboard, `status`)."""

from lorasweep.sweep.report.collect import best_first, state_summary


def test_best_first_by_direction_missing_values_last_ties_by_number():
    rows = [{"n": 0, "v": 0.5}, {"n": 1, "v": None}, {"n": 2, "v": 0.2}, {"n": 3, "v": 0.5}, {"n": 4, "v": 0.0}]

    def order(direction):
        return [r["n"] for r in best_first(rows, lambda r: r["v"], direction, lambda r: r["n"])]

    assert order("minimize") == [4, 2, 0, 3, 1]
    assert order("maximize") == [0, 3, 2, 4, 1]


def test_state_summary_counts_each_state_once_alphabetically():
    assert state_summary(["COMPLETE", "PRUNED", "COMPLETE", "fail"]) == "2 complete, 1 fail, 1 pruned"
    assert state_summary([]) == ""
