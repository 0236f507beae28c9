"""The sweep report (page, pivot, trial table, W&B summary), grid / qmc / nsga2 samplers, the single-matrix
presets, and `lorasweep dashboard`. Report tests build studies from recorded trials (no training) so they are
quick; one grid sweep trains for real with the tiny settings."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from wandb_reader import find_runs, read_run

from lorasweep.cli.main import main
from lorasweep.sweep.samplers import make_sampler
from lorasweep.sweep.spec import parse_spec
from lorasweep.sweep.storage import open_storage
from lorasweep.sweep.study import BUDGET_ATTR, SPEC_ATTR, create_study

FAST = [
    "trainer=smoke",
    "trainer.max_steps=2",
    "trainer.eval_every=1",
    "data.max_train_examples=32",
    "data.max_eval_examples=16",
    "data.max_length=24",
    "tracking=none",
]

SPEC = {
    "study": "rt",
    "n_trials": 6,
    "objectives": [{"metric": "eval/loss", "direction": "minimize"}],
    "pruner": {"name": "none"},
    "params": {
        "lora.rank": {"type": "categorical", "choices": [2, 8]},
        "lora.targets": {"type": "categorical", "choices": ["qv", "all"]},
    },
}


def recorded_study(tmp_path, trials, spec=SPEC, url=None):
    """A lorasweep study holding the given trials: (state, params, value, user_attrs, intermediate values)."""
    spec = parse_spec(spec, "rt")
    url = url or f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(
        study_name=spec.study, storage=open_storage(url), directions=[o.direction for o in spec.objectives]
    )
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    study.set_user_attr(BUDGET_ATTR, spec.n_trials)
    dists = {p.key: _distribution(p) for p in spec.params}
    for state, params, value, attrs, curve in trials:
        study.add_trial(
            optuna.create_trial(
                state=state,
                params=params,
                distributions={k: dists[k] for k in params},
                values=None if value is None else [value],
                user_attrs=attrs,
                intermediate_values=curve,
            )
        )
    return study, spec, url


def _distribution(param):
    if param.type == "categorical":
        return CategoricalDistribution(param.choices)
    kind = IntDistribution if param.type == "int" else FloatDistribution
    return kind(param.low, param.high, log=param.log)


def _metrics(loss, peak=2**30):
    return {
        "eval/loss": loss,
        "params/trainable_fraction": 0.003,
        "memory/optimizer_state_bytes": 600_000,
        "memory/peak_bytes": peak,
        "perf/loop_time_s": 12.5,
    }


def _trials(root: Path):
    """Three complete trials, one pruned (its figures only in the run store), one failed, one waiting."""
    pruned_dir = root / "dddddddddddd"
    pruned_dir.mkdir(parents=True)
    (pruned_dir / "metrics.json").write_text(
        json.dumps({"status": "pruned", "step": 4, "memory/peak_bytes": 123 * 2**20})
    )
    C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    attrs = lambda h, loss: {"config_hash": h, "metrics": _metrics(loss)}  # noqa: E731
    return [
        (C, {"lora.rank": 2, "lora.targets": "qv"}, 0.40, attrs("aaaaaaaaaaaa", 0.40), {2: 0.6, 4: 0.5, 6: 0.40}),
        (C, {"lora.rank": 8, "lora.targets": "qv"}, 0.30, attrs("bbbbbbbbbbbb", 0.30), {2: 0.5, 4: 0.4, 6: 0.30}),
        (C, {"lora.rank": 8, "lora.targets": "all"}, 0.20, attrs("cccccccccccc", 0.20), {2: 0.4, 4: 0.3, 6: 0.20}),
        (P, {"lora.rank": 2, "lora.targets": "all"}, None, {"config_hash": "dddddddddddd"}, {2: 0.9, 4: 0.8}),
        (F, {"lora.rank": 2, "lora.targets": "qv"}, None, {"fail_reason": "ValueError: boom"}, {}),
        (TrialState.WAITING, {}, None, {}, {}),
    ]


def test_report_page_pivot_table_and_wandb(tmp_path, capsys):
    root = tmp_path / "runs"
    _, _, url = recorded_study(tmp_path, _trials(root))
    out = tmp_path / "report"
    code = main(
        [
            "report",
            "--study",
            "rt",
            "--storage",
            url,
            "--run-root",
            str(root),
            "--out",
            str(out),
            "--table",
            "lora.rank",
            "lora.targets",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    pivot = text[text.index("best eval/loss") :].splitlines()
    assert pivot[1].split() == ["lora.rank", "\\", "lora.targets", "qv", "all"]
    assert pivot[2].split() == ["2", "0.4000", "-"] and pivot[3].split() == ["8", "0.3000", "0.2000"]

    assert {p.name for p in out.iterdir()} == {"index.html", "plotly.min.js"}
    page = (out / "index.html").read_text()
    assert "http://" not in page and "https://" not in page.replace("https://plotly.com", "")  # no CDN
    assert "<script src='plotly.min.js'>" in page
    for needle in (
        "pruned at step 4",
        "failed: ValueError: boom",
        "waiting",
        "123.00 MiB",  # run-store fallback
        str(root / "dddddddddddd"),
        "0.300%",
        "585.94 KiB",
        "1.00 GiB",
        "12.5",
        "id='pivot'",
    ):
        assert needle in page, needle
    for plot in ("parallel", "curves", "costs", "rank", "importances", "history"):
        assert f"plot-{plot}" in page, plot

    run = read_run(find_runs(root)[0])
    assert run.run_id == "rt-summary" and run.summary["best/trial"] == 2 and run.summary["best/lora.targets"] == "all"
    folder = find_runs(root)[0].parent
    trials = json.loads((folder / "files" / run.summary["trials.path"]).read_text())
    assert trials["columns"][:4] == ["trial", "status", "lora.rank", "lora.targets"]
    assert len(trials["data"]) == 6 and trials["data"][0][:2] == [2, "complete"]
    assert ["pruned at step 4"] == [r[1] for r in trials["data"] if r[1].startswith("pruned")]
    pivot_table = json.loads((folder / "files" / run.summary["pivot.path"]).read_text())
    assert pivot_table["columns"] == ["lora.rank", "qv", "all"]
    assert pivot_table["data"] == [[2, 0.4, None], [8, 0.3, 0.2]]


def _one_line_error(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lorasweep: error:") and needle in err, err


def test_report_bad_input_writes_nothing(tmp_path, capsys):
    root = tmp_path / "runs"
    _, _, url = recorded_study(tmp_path, _trials(root))
    out = tmp_path / "report"
    base = ["report", "--study", "rt", "--storage", url, "--run-root", str(root), "--out", str(out), "--wandb", "none"]
    _one_line_error(capsys, [*base, "--table", "lora.rank", "optim.lr"], "'optim.lr' is not a parameter study 'rt'")
    _one_line_error(capsys, [*base, "--table", "lora.rank", "lora.rank"], "two different")
    assert not out.exists() and not list(tmp_path.glob(".report*"))

    out.mkdir()
    (out / "index.html").write_text("the previous report")
    _, _, url2 = recorded_study(
        tmp_path / "b",
        [(TrialState.PRUNED, {"lora.rank": 2}, None, {}, {1: 0.5}), (TrialState.WAITING, {}, None, {}, {})],
    )
    base[4] = url2
    _one_line_error(capsys, base, "no finished trial yet (1 pruned, 1 waiting)")
    assert (out / "index.html").read_text() == "the previous report"


def test_report_folder_is_replaced_whole(tmp_path, monkeypatch):
    from lorasweep.sweep.report import write_html_report

    study, spec, _ = recorded_study(tmp_path, _trials(tmp_path / "runs"))
    out = tmp_path / "report"
    write_html_report(study, spec, out, run_root=tmp_path / "runs")
    before = (out / "index.html").read_text()

    def broken():
        raise OSError("disk full")

    monkeypatch.setattr("plotly.offline.get_plotlyjs", broken)
    with pytest.raises(OSError):
        write_html_report(study, spec, out, run_root=tmp_path / "runs")
    assert (out / "index.html").read_text() == before and {p.name for p in tmp_path.iterdir()} >= {"report"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report")]


def test_multi_objective_report_has_a_pareto_front(tmp_path):
    from lorasweep.sweep.report import write_html_report

    spec = {**SPEC, "objectives": [{"metric": "eval/loss"}, {"metric": "params/trainable_fraction"}]}
    spec = parse_spec(spec, "rt")
    study = optuna.create_study(directions=["minimize", "minimize"])
    dists = {p.key: CategoricalDistribution(p.choices) for p in spec.params}
    for rank, targets, loss, frac in [(2, "qv", 0.4, 0.001), (8, "qv", 0.3, 0.004), (8, "all", 0.35, 0.01)]:
        study.add_trial(
            optuna.create_trial(
                params={"lora.rank": rank, "lora.targets": targets},
                distributions=dists,
                values=[loss, frac],
                user_attrs={"metrics": _metrics(loss)},
            )
        )
    page = write_html_report(study, spec, tmp_path / "report").read_text()
    assert "plot-pareto" in page and "Pareto front" in page


# --- samplers -------------------------------------------------------------------------------------------------

GRID = """
study: grid
objectives: [{metric: eval/loss, direction: minimize}]
sampler: {name: grid}
pruner: {name: none}
params:
  lora.rank: {type: categorical, choices: [2, 4]}
  lora.targets: {type: categorical, choices: [q, v]}
"""


@pytest.mark.parametrize(
    "body, message",
    [
        (
            GRID + "  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-3}\n",
            "sampler grid needs categorical params; optim.lr is a float range",
        ),
        (GRID + "  trainer.max_steps: {type: int, low: 1, high: 3}\n", "trainer.max_steps is a int range"),
        (GRID.replace("study: grid", "study: grid\nn_trials: 3"), "runs each of its 4 points once; n_trials 3 differs"),
        (
            GRID.replace("name: grid", "name: cmaes"),
            "sampler must be one of tpe, random, qmc, nsga2, grid, got 'cmaes'",
        ),
    ],
)
def test_bad_sampler_specs_are_one_line_errors(tmp_path, capsys, body, message):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body))
    _one_line_error(capsys, ["sweep", str(path), f"run_root={tmp_path}", *FAST], message)
    assert not (tmp_path / "optuna.db").exists()


def test_grid_n_trials_from_the_command_line_must_match(tmp_path, capsys):
    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    _one_line_error(
        capsys,
        ["sweep", str(path), "--n-trials", "2", f"run_root={tmp_path}", *FAST],
        "--n-trials: sampler grid runs each of its 4 points once; n_trials 2 differs",
    )


@pytest.mark.parametrize(
    "sampler, kind",
    [
        ({"name": "qmc", "seed": 1}, "QMCSampler"),
        ({"name": "nsga2", "seed": 1, "population_size": 4}, "NSGAIISampler"),
        ({"name": "grid"}, "GridSampler"),
    ],
)
def test_samplers_sample_the_space(sampler, kind):
    spec = parse_spec({**SPEC, "sampler": sampler, "n_trials": 4}, "s")
    made = make_sampler(spec)
    assert type(made).__name__ == kind
    study = optuna.create_study(sampler=made)
    for _ in range(3):  # the grid sampler stops the study after its last point
        trial = study.ask()
        assert trial.suggest_categorical("lora.rank", [2, 8]) in (2, 8)
        study.tell(trial, 1.0)


def test_sampler_options_are_checked(tmp_path):
    spec = parse_spec({**SPEC, "sampler": {"name": "qmc", "qmc_kind": "sobol"}}, "s")
    with pytest.raises(ValueError, match="sampler qmc: .*qmc_kind"):
        create_study(spec, f"sqlite:///{tmp_path / 'o.db'}", [])


@pytest.mark.slow
def test_grid_with_two_workers_runs_each_point_once(tmp_path):
    from lorasweep.sweep.launch import run_sweep

    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    study, _ = run_sweep(str(path), [*FAST, f"run_root={tmp_path / 'runs'}"], workers=2)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted((t.params["lora.rank"], t.params["lora.targets"]) for t in trials) == [
        (2, "q"),
        (2, "v"),
        (4, "q"),
        (4, "v"),
    ]
    assert len({t.user_attrs["worker"] for t in trials}) >= 1


@pytest.mark.slow
def test_grid_runs_every_point_exactly_once(tmp_path):
    from lorasweep.sweep.launch import run_sweep

    path = tmp_path / "grid.yaml"
    path.write_text(GRID)
    spec = parse_spec(yaml.safe_load(GRID), "grid")
    assert spec.n_trials == 4
    url = f"sqlite:///{tmp_path / 'runs' / 'optuna.db'}"
    study = create_study(spec, url, [])
    study = create_study(spec, url, [])  # a rerun queues nothing more
    queued = [t.system_attrs["fixed_params"] for t in study.get_trials()]
    assert sorted((p["lora.rank"], p["lora.targets"]) for p in queued) == [(2, "q"), (2, "v"), (4, "q"), (4, "v")]
    study, _ = run_sweep(str(path), [*FAST, f"run_root={tmp_path / 'runs'}"])
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted((t.params["lora.rank"], t.params["lora.targets"]) for t in trials) == [
        (2, "q"),
        (2, "v"),
        (4, "q"),
        (4, "v"),
    ]
    assert len({t.user_attrs["config_hash"] for t in trials}) == 4


def test_paper_table_spec_is_the_rank_by_targets_grid_at_demo_length():
    """The LoRA paper's Tables 5-6 question, trained as long as `make demo` (150 steps of 32), so qv learns."""
    from lorasweep.sweep.launch import prepare

    spec, _ = prepare("sweeps/paper_table.yaml", [])
    assert spec.sampler["name"] == "grid" and spec.n_trials == 12
    assert {p.key: p.choices for p in spec.params} == {"lora.rank": [1, 8, 64], "lora.targets": ["q", "v", "qv", "all"]}
    assert {"trainer.max_steps=150", "trainer.batch_size=32"} <= set(spec.fixed)


# --- single-matrix presets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["minilm", "gpt2", "llama", "gpt_neox", "phi3"])
def test_single_matrix_presets(arch, request):
    from conftest import tiny

    from lorasweep.lora.targets import resolve_targets

    model = request.getfixturevalue("minilm") if arch == "minilm" else tiny(arch)
    blocks = len(resolve_targets(model, "o"))
    assert blocks >= 1
    for role in "qkv":
        targets = resolve_targets(model, role)
        assert len(targets) == blocks
        for t in targets:
            assert t.slice_names in (None, (role,))  # a fused q|k|v module: that slice alone
    names = {role: {t.name for t in resolve_targets(model, role)} for role in "qkvo"}
    assert names["o"].isdisjoint(names["q"] | names["k"] | names["v"])


# --- dashboard -------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _storages(tmp_path):
    urls = [f"sqlite:///{tmp_path / 'optuna.db'}", f"journal://{tmp_path / 'study.log'}"]
    if os.environ.get("LORASWEEP_TEST_POSTGRES_URL"):
        urls.append(os.environ["LORASWEEP_TEST_POSTGRES_URL"])
    return urls


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        "journal",  # PostgreSQL with the slow tests: CI starts it for those
        pytest.param("postgresql", marks=pytest.mark.slow),
    ],
)
def test_dashboard_serves_the_study(tmp_path, kind):
    pytest.importorskip("optuna_dashboard")
    urls = [u for u in _storages(tmp_path) if u.startswith(kind)]
    if not urls:
        pytest.skip("set LORASWEEP_TEST_POSTGRES_URL (scripts/ci/start_postgres.sh) for PostgreSQL")
    name = f"dash_{os.getpid()}_{time.time_ns()}"
    study, _, url = recorded_study(tmp_path, _trials(tmp_path / "runs"), spec={**SPEC, "study": name}, url=urls[0])
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lorasweep.cli", "dashboard", "--study", name, "--storage", url, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline, studies = time.time() + 90, None
        while time.time() < deadline and studies is None:
            assert proc.poll() is None, proc.stdout.read()
            try:
                studies = _get(f"http://127.0.0.1:{port}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.5)
        assert studies is not None, "the dashboard never answered"
        ours = [s for s in studies if s["study_name"] == name]
        assert len(ours) == 1
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{ours[0]['study_id']}")
        assert len(detail["trials"]) == 6
        assert sorted(t["state"] for t in detail["trials"]) == [
            "Complete",
            "Complete",
            "Complete",
            "Fail",
            "Pruned",
            "Waiting",
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_dashboard_without_the_extra_or_the_study(tmp_path, capsys, monkeypatch):
    _, _, url = recorded_study(tmp_path, [])
    _one_line_error(capsys, ["dashboard", "--study", "nope", "--storage", url], "no study 'nope'")
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if not installed
    _one_line_error(
        capsys,
        ["dashboard", "--study", "rt", "--storage", url],
        "optuna-dashboard is not installed: pip install 'lorasweep[dashboard]'",
    )
