"""Sweeps fail loudly and recover (issue 25, item 3): a study whose failures outnumber its completed trials exits 1
with one summary line; a rerun re-queues the failed trials (same params, `--retry-failed N` times each), so a
fixed typo trains them; the status table keeps each note short."""

import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from lorasweep.cli.main import main
from lorasweep.sweep.outcome import NOTE_WIDTH
from lorasweep.sweep.study import budget_used

FAST = [
    "trainer=smoke",
    "trainer.max_steps=2",
    "trainer.eval_every=1",
    "data.max_train_examples=32",
    "data.max_eval_examples=16",
    "data.max_length=24",
    "tracking=none",
]
# A cause only training finds (a typo in a column name is refused before queueing, by the data check):
TYPO = "optim.lr=1e30"  # every run fails with a non-finite loss
FIX = "optim.lr=5e-4"


def _spec(tmp_path, n_trials=2, sampler="tpe"):
    path = tmp_path / "spec.yaml"
    budget = "" if sampler == "grid" else f"n_trials: {n_trials}\n"
    path.write_text(
        textwrap.dedent(
            """
            study: flaky
            objectives: [{metric: eval/loss, direction: minimize}]
            pruner: {name: none}
            params:
              lora.rank: {type: categorical, choices: [2, 4]}
            """
        )
        + budget
        + f"sampler: {{name: {sampler}, seed: 0}}\n"
    )
    return str(path)


def _sweep(capsys, tmp_path, *args):
    """`lorasweep sweep ARGS`: (exit code, stdout, its `lorasweep: ` lines on stderr)."""
    code = main(["sweep", *args])
    out = capsys.readouterr()
    return code, out.out, [line for line in out.err.splitlines() if line.startswith("lorasweep: ")]


def _trials(tmp_path):
    return optuna.load_study(study_name="flaky", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}").get_trials()


def _states(tmp_path):
    return [t.state for t in _trials(tmp_path)]


def test_a_sweep_whose_every_trial_failed_exits_1_with_one_summary_line(tmp_path, capsys):
    root = f"run_root={tmp_path / 'runs'}"
    code, out, lines = _sweep(capsys, tmp_path, _spec(tmp_path, n_trials=1), *FAST, root, "optim.lr=1e30")
    assert code == 1 and _states(tmp_path) == [TrialState.FAIL]
    assert len(lines) == 1, lines
    assert lines[0].startswith("lorasweep: 1 trial(s) failed, 0 completed, 0 pruned in study flaky; ")
    assert "first failure, trial 0: FloatingPointError: non-finite" in lines[0]


def test_a_rerun_with_the_typo_fixed_trains_the_failed_trials(tmp_path, capsys):
    spec, root = _spec(tmp_path), f"run_root={tmp_path / 'runs'}"
    code, _, lines = _sweep(capsys, tmp_path, spec, *FAST, root, TYPO)
    assert code == 1 and "2 trial(s) failed, 0 completed" in lines[0] and "FloatingPointError: non-finite" in lines[0]
    failed = {t.number: t.params for t in _trials(tmp_path)}
    assert main(["status", "--study", "flaky", "--run-root", str(tmp_path / "runs")]) == 1
    capsys.readouterr()

    code, out, _ = _sweep(capsys, tmp_path, spec, *FAST, root, FIX, "--retry-failed", "0")  # retries disabled
    assert code == 1 and _states(tmp_path) == [TrialState.FAIL] * 2  # nothing queued, nothing trained
    assert "2 failed trial(s) not re-queued (--retry-failed 0: retries off)" in out

    code, out, lines = _sweep(capsys, tmp_path, spec, *FAST, root, FIX)
    assert code == 0 and lines == []
    assert "re-queued 2 failed trial(s) with the same parameters" in out
    trials = _trials(tmp_path)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2  # no extra trial
    for retry in trials[2:]:  # each retry is its failed trial's params, linked to it
        assert retry.params == failed[retry.system_attrs["failed_trial"]]
    assert main(["status", "--study", "flaky", "--run-root", str(tmp_path / "runs")]) == 0
    assert "retried as trial 2" in capsys.readouterr().out

    code, out, _ = _sweep(capsys, tmp_path, spec, *FAST, root, FIX)  # the budget is full: nothing more
    assert code == 0 and len(_trials(tmp_path)) == 4 and "re-queued" not in out


def test_a_grid_trial_is_retried_at_most_n_times_and_the_grid_queued_once(tmp_path, capsys):
    spec, root = _spec(tmp_path, sampler="grid"), f"run_root={tmp_path / 'runs'}"
    assert _sweep(capsys, tmp_path, spec, *FAST, root, TYPO)[0] == 1
    assert _sweep(capsys, tmp_path, spec, *FAST, root, TYPO)[0] == 1  # retried once, failed again
    assert _states(tmp_path) == [TrialState.FAIL] * 4
    code, out, _ = _sweep(capsys, tmp_path, spec, *FAST, root, FIX)  # the default limit (1) is used up
    assert code == 1 and len(_trials(tmp_path)) == 4
    assert "with the same parameters" not in out and "2 failed trial(s) not re-queued (--retry-failed 1: each" in out
    code, _, _ = _sweep(capsys, tmp_path, spec, *FAST, root, FIX, "--retry-failed", "2")
    trials = _trials(tmp_path)
    assert code == 0 and [t.state for t in trials[4:]] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["lora.rank"] for t in trials[4:]) == [2, 4]  # each grid point once
    study = optuna.load_study(study_name="flaky", storage=f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}")
    assert budget_used(study) == 2


def test_status_keeps_each_note_short_and_the_whole_reason_on_the_trial(tmp_path, capsys):
    root = f"run_root={tmp_path / 'runs'}"
    # A hub model that is not in the cache: checked only when it loads, with a long message (the note's cut).
    missing = ["model.source=pretrained", "model.name=gone", f"model.name_or_path=no-such-org/{'x' * 40}"]
    _sweep(capsys, tmp_path, _spec(tmp_path, n_trials=1), *FAST, root, *missing)
    assert main(["status", "--study", "flaky", "--run-root", str(tmp_path / "runs")]) == 1
    out = capsys.readouterr().out
    header, row = [line for line in out.splitlines() if line.startswith(("trial ", "0 "))]
    note = row[header.index("note") :].rstrip()
    assert len(note) == NOTE_WIDTH and note.endswith("...") and note.startswith("UserError: cannot load")
    reason = _trials(tmp_path)[0].user_attrs["fail_reason"]
    assert len(reason) > NOTE_WIDTH and reason.startswith(note[:-3]) and "x" * 40 in reason


def test_a_negative_retry_limit_is_bad_input_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    assert main(["sweep", _spec(tmp_path), *FAST, f"run_root={root}", "--retry-failed", "-1"]) == 2
    assert "--retry-failed must be >= 0, got -1" in capsys.readouterr().err
    assert not root.exists()


@pytest.mark.slow
def test_retried_trials_train_on_several_workers(tmp_path, capsys):
    spec, root = _spec(tmp_path), f"run_root={tmp_path / 'runs'}"
    assert _sweep(capsys, tmp_path, spec, *FAST, root, TYPO)[0] == 1
    code, _, lines = _sweep(capsys, tmp_path, spec, *FAST, root, FIX, "--workers", "2")
    assert code == 0 and lines == []
    assert _states(tmp_path) == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2
