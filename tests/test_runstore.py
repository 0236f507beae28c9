"""RunDir reads a run's record and history for everyone (runs, compare, reproduce, the sweep report): what it
gives for missing, broken and torn files."""

from lorasweep.runs.store import RunDir


def test_history_skips_a_line_torn_by_a_kill(tmp_path):
    run = RunDir(tmp_path)
    assert run.history() == []  # no history.jsonl yet
    run.append_history({"step": 1, "train/loss": 0.7})
    run.append_history({"step": 2, "train/loss": 0.6})
    with open(run.history_file, "a") as handle:
        handle.write('[1, 2]\n\n{"step": 3, "train/lo')  # not an object, a blank line, half a record
    assert run.history() == [{"step": 1, "train/loss": 0.7}, {"step": 2, "train/loss": 0.6}]


def test_record_is_empty_unless_metrics_json_is_an_object(tmp_path):
    run = RunDir(tmp_path)
    assert run.record() == {} and run.status() == "incomplete"
    run.metrics_file.write_text("[1, 2]")
    assert run.record() == {}
    run.metrics_file.write_text("{broken")
    assert run.record() == {}
    run.write_metrics({"status": "pruned", "step": 4})
    assert run.record() == {"status": "pruned", "step": 4} and run.status() == "pruned"
