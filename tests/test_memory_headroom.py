"""Memory headroom (estimate/headroom.py): fits use the device's free memory less cluster.memory_margin, a cap as
given, and a packed trial its share of the pack.

There is no GPU here, so the device is faked in two ways, and only where a real one cannot exist:
- CPU fits read MemAvailable from /proc/meminfo; tests point headroom.MEMINFO at a file of their own, so that
  the machine's (changing) free memory does not decide the answer;
- CUDA is mocked (torch.cuda.is_available, current_device, mem_get_info, memory_reserved, memory_allocated,
  get_device_properties) in the tests that say so. Everything else (the estimates, runs, packs, CLI) is real.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch

from lorasweep.cli.main import main
from lorasweep.config.schema import compose, config_hash
from lorasweep.errors import UserError
from lorasweep.estimate import estimate_config, headroom
from lorasweep.estimate.fit import fit_summary, plan_micro_batch, run_peak
from lorasweep.estimate.headroom import memory_budget, parse_margin
from lorasweep.pack.scheduler import Pack
from lorasweep.runs.metrics import BY_NAME
from lorasweep.runs.store import RunStore
from lorasweep.training.lifecycle import train
from lorasweep.training.resources import Resources

MiB, GiB = 2**20, 2**30
LLAMA = [
    "model=tiny_llama",
    "data=synth_sft",
    "lora=all",
    "tracking=none",
    "trainer=smoke",
    "trainer.progress=false",
    "trainer.batch_size=8",
    "trainer.max_steps=1",
    "trainer.eval_every=0",
    "trainer.eval_batch_size=2",
    "data.max_train_examples=64",
    "data.max_eval_examples=8",
]


def _fake_meminfo(monkeypatch, tmp_path, available: int) -> None:
    """This machine's MemAvailable, as a CPU fit reads it, set to `available` bytes."""
    path = tmp_path / "meminfo"
    path.write_text(f"MemTotal:       {4 * available // 1024} kB\nMemAvailable:   {available // 1024} kB\n")
    monkeypatch.setattr(headroom, "MEMINFO", path)


def _fake_cuda(monkeypatch, free: int, total: int, reserved: int = 0, allocated: int = 0) -> None:
    """A mocked CUDA device (none can exist here): what the headroom functions ask torch.cuda."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (free, total))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index=None: reserved)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index=None: allocated)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: SimpleNamespace(total_memory=total))


@pytest.fixture(scope="module")
def peaks(tmp_path_factory):
    """The predicted peak of each micro batch of LLAMA's batch of 8, and its base weights (CPU)."""
    cfg = compose([*LLAMA, f"run_root={tmp_path_factory.mktemp('peaks')}"])
    estimates = {m: estimate_config(cfg, "cpu", micro_batch=m) for m in (8, 4)}
    return {m: run_peak(e)[0] for m, e in estimates.items()}, estimates[8]["memory/base_weights_bytes"]


def test_a_larger_margin_gives_a_smaller_micro_batch_in_what_the_run_records(tmp_path, monkeypatch, peaks):
    by_micro, _ = peaks
    available = by_micro[8] // 1024 * 1024 + 4 * MiB  # MemAvailable is in kB
    _fake_meminfo(monkeypatch, tmp_path, available)
    between = (by_micro[4] + by_micro[8]) // 2  # a margin that leaves only this much: micro batch 4 fits, 8 not
    recorded = {}
    for margin in ("1MiB", str(available - between)):
        root = tmp_path / f"margin_{margin}"
        metrics = train(
            compose([*LLAMA, "trainer.micro_batch=auto", f"cluster.memory_margin={margin}", f"run_root={root}"])
        )
        stored = RunStore(root).run(metrics["config_hash"]).metrics()
        assert {k for k, v in stored.items() if isinstance(v, (int, float)) and k != "step"} <= set(BY_NAME)
        recorded[margin] = (stored["trainer/micro_batch"], stored["memory/fit_limit_bytes"], metrics["config_hash"])
    (big, big_limit, big_hash), (small, small_limit, small_hash) = recorded.values()
    assert (big, small) == (8, 4)
    assert big_limit == available - MiB and small_limit == between
    assert big_hash == small_hash == config_hash(compose(LLAMA))  # the margin decides placement, not the run


def test_pack_auto_fits_fewer_trials_with_a_margin(tmp_path, monkeypatch, capsys, peaks):
    from lorasweep.sweep.pack_plan import plan_pack
    from lorasweep.sweep.spec import load_spec

    by_micro, base = peaks
    own = by_micro[8] - base
    _fake_meminfo(monkeypatch, tmp_path, (base + 5 * own + own // 2) // 1024 * 1024)
    spec_path = tmp_path / "one.yaml"
    spec_path.write_text("study: one\nsampler: {name: grid}\nparams:\n  seed: {type: categorical, choices: [0]}\n")
    spec = load_spec(str(spec_path))
    overrides = [*LLAMA, f"run_root={tmp_path / 'runs'}"]
    assert plan_pack(spec, [*overrides, "cluster.memory_margin=0"], "auto") == 5
    assert plan_pack(spec, [*overrides, f"cluster.memory_margin={2 * own}"], "auto") == 3
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert said.startswith("--pack auto: 3 (") and "less the margin" in said and "cluster.memory_margin=" in said


def test_a_packed_trial_sizes_its_micro_batch_against_its_share(tmp_path, peaks):
    """Two trials in one pack under a cap C: each fits base + (C - base) / 2, not C (what the run records)."""
    by_micro, base = peaks
    cap = 2 * by_micro[4] - base + 2 * MiB  # alone a trial fits micro batch 8; its half of a pack of 2 only 4
    assert by_micro[8] <= cap and by_micro[4] <= base + (cap - base) // 2 < by_micro[8]
    cfgs = [
        compose([*LLAMA, "trainer.micro_batch=auto", f"cluster.memory_cap={cap}", f"seed={s}", f"run_root={tmp_path}"])
        for s in (0, 1)
    ]
    assert plan_micro_batch(cfgs[0], "cpu")[0] == 8
    pack = Pack(2)
    resources, results = Resources(pack=pack), {}
    for i, cfg in enumerate(cfgs):
        pack.start(str(i), train, cfg, resources=resources)
    pack.run(lambda slot: results.__setitem__(slot.label, slot.error or slot.result))
    for metrics in results.values():
        assert not isinstance(metrics, BaseException), metrics
        stored = RunStore(tmp_path).run(metrics["config_hash"]).metrics()
        assert stored["trainer/micro_batch"] == 4 and stored["memory/fit_limit_bytes"] == base + (cap - base) // 2


def test_the_estimate_command_prints_the_margin(tmp_path, capsys):
    assert main(["estimate", *LLAMA, "--device", "cuda", "--run-root", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("fits (trainer.micro_batch=auto, --pack auto) use the cuda free memory (no CUDA here")
    assert "cluster.memory_margin=1GiB+5% off it" in line
    assert main(["estimate", *LLAMA, "--device", "cuda", "cluster.memory_cap=20GiB", "--run-root", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "use the memory cap 20.0 GiB: the predicted peak fits" in line and "is not taken off it" in line


def test_the_estimate_command_prints_the_free_memory_it_fits_when_cuda_is_present(tmp_path, monkeypatch, capsys):
    """CUDA mocked (none here): the command's estimate is the real one, traced before the mock, since fake CUDA
    tensors cannot be traced without CUDA."""
    account = estimate_config(compose([*LLAMA, f"run_root={tmp_path}"]), "cuda")
    monkeypatch.setattr("lorasweep.estimate.estimate_config", lambda cfg, device=None: account)
    free, cached = 100 * GiB, 4 * GiB  # the driver's free memory, and what torch's allocator holds unused
    _fake_cuda(monkeypatch, free=free, total=141 * GiB, reserved=6 * GiB, allocated=2 * GiB)
    assert main(["estimate", *LLAMA, "--device", "cuda", "--json", "--run-root", str(tmp_path)]) == 0
    fit = json.loads(capsys.readouterr().out)["fit"]
    margin = GiB + int(0.05 * (free + cached))
    assert fit["margin_bytes"] == margin and fit["limit_bytes"] == free + cached - margin
    assert main(["estimate", *LLAMA, "--device", "cuda", "--run-root", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "(the cuda free memory 104.0 GiB less the margin 6.2 GiB, cluster.memory_margin=1GiB+5%)" in line


def test_the_budget_under_a_mocked_gpu(tmp_path, monkeypatch):
    """CUDA mocked (none here)."""
    _fake_cuda(monkeypatch, free=30 * GiB, total=40 * GiB)
    cfg = compose(["cluster.memory_margin=2GiB"])
    assert memory_budget(cfg, "cuda").limit == 28 * GiB
    assert memory_budget(compose(["cluster.memory_cap=40GiB"]), "cuda").limit == 40 * GiB  # a cap: as given
    with pytest.raises(UserError, match="the memory cap 48.0 GiB is more than this GPU holds"):
        memory_budget(compose(["cluster.memory_cap=48GiB"]), "cuda")
    with pytest.raises(UserError, match="leaves nothing of the cuda free memory"):
        memory_budget(compose(["cluster.memory_margin=30GiB"]), "cuda")
    assert fit_summary(cfg, memory_budget(cfg, "cuda"), {"memory/predicted_peak_bytes": 29 * GiB})["line"].endswith(
        "predicted 29.0 GiB > cap 28.0 GiB"
    )


def test_margins_read():
    assert parse_margin("1GiB+5%") == (GiB, 0.05)
    assert parse_margin("5% + 512MiB") == (512 * MiB, 0.05)
    assert parse_margin("0") == (0, 0.0) and parse_margin("0%") == (0, 0.0) and parse_margin("2048") == (2048, 0.0)


@pytest.mark.parametrize(
    "margin, says",
    [
        ("-1GiB", "cluster.memory_margin: cannot read '-1GiB'"),
        ("lots", "cluster.memory_margin: cannot read 'lots'"),
        ("1GiB+", "cluster.memory_margin: cannot read '1GiB+'"),
        ("5furlongs", "cluster.memory_margin: cannot read '5furlongs'"),
        ("100%", "a margin of 100% of the memory leaves nothing to fit in"),
        ("3GiB", "cluster.memory_margin=3GiB (3.0 GiB) leaves nothing of the cpu memory available (2.0 GiB)"),
    ],
)
def test_a_bad_margin_is_one_line_and_exit_2(margin, says, tmp_path, monkeypatch, capsys):
    _fake_meminfo(monkeypatch, tmp_path, 2 * GiB)
    root = tmp_path / "runs"
    assert (
        main(["estimate", *LLAMA, "--device", "cpu", f"cluster.memory_margin={margin}", "--run-root", str(root)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("lorasweep: error: ") and says in err and err.count("\n") == 1


def test_a_bad_margin_stops_sweep_estimate_and_micro_batch_auto(tmp_path, capsys):
    spec = tmp_path / "grid.yaml"
    spec.write_text("study: grid\nsampler: {name: grid}\nparams:\n  seed: {type: categorical, choices: [0]}\n")
    code = main(["sweep", str(spec), *LLAMA, "cluster.memory_margin=x", "--estimate", "--run-root", str(tmp_path)])
    assert code == 2 and "cluster.memory_margin: cannot read 'x'" in capsys.readouterr().err
    with pytest.raises(UserError, match="cluster.memory_margin: cannot read '-5%'"):
        plan_micro_batch(compose([*LLAMA, "trainer.micro_batch=auto", "cluster.memory_margin=-5%"]), "cpu")


def test_sweep_estimate_names_the_budget_and_the_margin(tmp_path, capsys):
    spec = tmp_path / "grid.yaml"
    spec.write_text("study: grid\nsampler: {name: grid}\nparams:\n  seed: {type: categorical, choices: [0]}\n")
    assert main(["sweep", str(spec), *LLAMA, "--estimate", "--device", "cpu", "--run-root", str(tmp_path)]) == 0
    footer = capsys.readouterr().out.strip().splitlines()[-1]
    assert footer.startswith("1 points (no cap given: none is skipped; trainer.micro_batch=auto and --pack auto fit ")
    assert "less the margin" in footer and "cluster.memory_margin=1GiB+5%" in footer
    assert main(["sweep", str(spec), *LLAMA, "--estimate", "--memory-cap", "1GiB", "--run-root", str(tmp_path)]) == 0
    assert "1 points, 0 over the cap (a cap is used as given" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_rank_fits_the_same_budget(tmp_path):
    """Two gloo processes measure different free memory and hold packs of different sizes: both fit the smaller
    limit and rank 0's pack size, so they choose the same micro batch (their gradient reductions pair up)."""
    script = tmp_path / "ranks.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys
        import torch.distributed as dist
        from lorasweep.estimate.headroom import same_on_every_rank

        dist.init_process_group("gloo")
        rank = dist.get_rank()
        agreed = same_on_every_rank(1000 - 100 * rank, 4 if rank == 0 else 2)
        open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w").write(json.dumps(agreed))
        dist.destroy_process_group()
    """)
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"]
    done = subprocess.run(
        [*command, str(_free_port()), str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [[900, 4], [900, 4]]
    assert headroom.same_on_every_rank(1000, 3) == (1000, 3)  # one process: nothing to agree
