"""A pack's trials do not interfere (lorasweep/pack/): each keeps its own saved-tensor hooks and autocast depth
across switches, so gradient checkpointing works in a pack and equals solo; int8 layers are not batched across
trials; an out-of-memory error in a shared op re-queues the pack's trials into a smaller pack."""

import functools

import pytest
import torch
from optuna.trial import TrialState
from test_pack import SMALL, _assert_same_history, _close, _spec, _train_pack
from torch import nn

from lorasweep.config.schema import compose, config_hash
from lorasweep.model.shared_base import join
from lorasweep.pack.scheduler import Pack, PackRetry
from lorasweep.pack.state import take_hooks
from lorasweep.runs.store import RunDir, RunStore
from lorasweep.sweep.launch import run_sweep
from lorasweep.training.lifecycle import train
from lorasweep.training.resources import Resources


def _frozen_linear(d: int = 8) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(d, d).requires_grad_(False)


def test_each_trial_keeps_its_own_saved_tensor_hooks_across_switches():
    """Two trials each inside their own saved_tensors_hooks (what non-reentrant checkpointing pushes) give way in
    the middle: every tensor a trial saves afterwards goes to its own hook, none to the other's."""
    pack, layer = Pack(), _frozen_linear()
    layer.forward = functools.partial(pack.linear, layer)
    seen = {"a": [], "b": []}

    def trial(name: str):
        w = torch.randn(8, 8, requires_grad=True)
        saves = lambda t: (seen[name].append(pack.current().label), t)[1]  # noqa: E731 - who saved into my hook
        with torch.autograd.graph.saved_tensors_hooks(saves, lambda t: t):
            y = layer(torch.randn(2, 8))  # gives way to the other trial here
            (y @ w).sum()  # saves y and w: into this trial's hook
        return "done"

    for name in seen:
        pack.start(name, trial, name)
    pack.run(lambda slot: None)
    assert seen == {"a": ["a"], "b": ["b"]}  # y (w's gradient needs it), into the hook of the trial saving it
    assert take_hooks() == ()  # and none left on the thread


def test_each_trial_keeps_its_own_autocast_depth():
    """torch drops its cache of autocast-cast weights when the outermost autocast exits. Trial b leaves its
    autocast, updates its weight in place (an optimizer step) and runs again while trial a is still inside its
    own: b must compute with its new weight, not a cast cached from before the update."""
    pack, layer = Pack(), _frozen_linear()
    layer.forward = functools.partial(pack.linear, layer)
    out = {}

    def a():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(torch.randn(2, 8))  # waits here while b runs through

    def b():
        w, x = nn.Parameter(torch.ones(8, 8)), torch.ones(1, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.mm(x, w)
        with torch.no_grad():
            w.add_(1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out["b"] = torch.mm(x, w)

    pack.start("a", a)
    pack.start("b", b)
    pack.run(lambda slot: out.setdefault(slot.label + " error", slot.error))
    assert out["a error"] is None and out["b error"] is None
    assert torch.equal(out["b"].float(), torch.full((1, 8), 16.0))  # 8 x (1 + 1), not the cached 8 x 1


def test_checkpointed_layers_in_a_pack_get_their_solo_gradients():
    """Non-reentrant checkpoints around a shared frozen layer, a trainable weight and dropout, in two trials whose
    backward is combined: each trial's gradient equals the one it gets alone (its recomputation in the hub saves
    nothing of the frozen matmul and draws its own dropout mask again)."""
    from torch.utils.checkpoint import checkpoint

    layer = _frozen_linear()

    def block(x, w):
        return nn.functional.dropout(layer(x) @ w, 0.5, training=True).tanh()

    def trial(seed: int):
        torch.manual_seed(seed)
        x, w = torch.randn(3, 8), torch.randn(8, 8, requires_grad=True)
        loss = checkpoint(block, checkpoint(block, x, w, use_reentrant=False), w, use_reentrant=False).sum()
        backward(loss)
        return w.grad

    backward = torch.Tensor.backward
    solo = {seed: trial(seed) for seed in (1, 2)}
    pack = Pack()
    layer.forward, backward = functools.partial(pack.linear, layer), pack.backward
    for seed in solo:
        pack.start(str(seed), trial, seed)
    packed = {}
    pack.run(lambda slot: packed.__setitem__(int(slot.label), slot.error or slot.result))
    assert pack.batched_calls > 0
    for seed, grad in solo.items():
        assert not isinstance(packed[seed], BaseException), packed[seed]
        torch.testing.assert_close(packed[seed], grad, rtol=1e-5, atol=1e-6)


def _assert_each_equals_its_solo_run(cfgs, results, tmp_path) -> None:
    for cfg in cfgs:
        digest = config_hash(cfg)
        packed = results[digest]
        assert not isinstance(packed, BaseException), packed
        solo = train(cfg, resources=Resources(), run_dir=tmp_path / "solo" / digest)
        for key, value in solo.items():
            if not key.startswith("perf/") and "peak" not in key and key != "status":  # timings, the pack's memory
                assert _close(packed[key], value), (key, packed[key], value)
        _assert_same_history(RunStore(cfg.run_root).run(digest).history(), RunDir(tmp_path / "solo" / digest).history())


@pytest.mark.slow
def test_gradient_checkpointing_in_a_pack_equals_solo(tmp_path):
    """The issue's failure: with trainer.gradient_checkpointing=true every packed trial raised CheckpointError.
    Packed (the base's and LoRA's dropout on: the recomputation must draw the same masks; different ranks and
    targets), each trial's history and figures equal its solo run."""
    base = [*SMALL, "model=tiny_llama", "trainer.gradient_checkpointing=true", "trainer.max_steps=4"]
    base += ["model.dropout=0.1", f"run_root={tmp_path / 'packed'}"]
    variants = [["lora.rank=2"], ["lora.rank=4", "lora.targets=all", "lora.dropout=0.1"]]
    cfgs = [compose([*base, *v]) for v in variants]
    results, pack = _train_pack(cfgs, Resources(pack=Pack()))
    assert pack.batched_calls > 0
    _assert_each_equals_its_solo_run(cfgs, results, tmp_path)


def test_int8_layers_are_not_batched_across_trials():
    """LLM.int8() takes out the input columns where any row exceeds its threshold: batched with a trial whose
    activations have an outlier, another trial's output would change. In a pack each trial gets exactly its
    own output."""
    pytest.importorskip("bitsandbytes")
    from lorasweep.model.quantize import quantize_model

    model = nn.Sequential(_frozen_linear(32), _frozen_linear(32))
    quantize_model(model, "int8", skip=("1",))  # an int8 layer, then a float one (still batched)
    model.eval()
    pack = Pack()
    assert join(pack, model) == 1  # the float layer only
    x = {"a": torch.randn(4, 32), "b": torch.randn(4, 32)}
    x["b"][:, 3] = 40.0  # an outlier column in trial b's rows only
    with torch.no_grad():
        alone = model(x["a"])
        batched = model[1](model[0](torch.cat([x["a"], x["b"]]))[:4])
        assert not torch.equal(batched, alone)  # what batching the int8 layer would do to trial a
        out = {}
        for name in x:
            pack.start(name, lambda n: out.__setitem__(n, model(x[n])), name)
        pack.run(lambda slot: None)
    assert pack.batched_calls > 0 and torch.equal(out["a"], alone)


@pytest.mark.slow
def test_a_packed_int8_trial_equals_its_solo_run(tmp_path):
    """A causal LM on an int8 base: its int8 layers per trial, its float LM head batched."""
    pytest.importorskip("bitsandbytes")
    base = [*SMALL, "model=tiny_llama", "data=synth_sft", "model.quantization=int8", "trainer.max_steps=4"]
    cfgs = [compose([*base, f"run_root={tmp_path / 'packed'}", f"lora.rank={r}"]) for r in (2, 4)]
    results, pack = _train_pack(cfgs, Resources(pack=Pack()))
    assert pack.batched_calls > 0
    _assert_each_equals_its_solo_run(cfgs, results, tmp_path)


GRID = """
study: oom
sampler: {name: grid}
pruner: {name: none}
objectives: [{metric: eval/loss, direction: minimize}]
params:
  lora.rank: {type: categorical, choices: [2, 4]}
"""


@pytest.mark.slow
def test_out_of_memory_in_a_shared_op_requeues_the_pack_smaller(tmp_path, monkeypatch, capsys):
    """A real out-of-memory needs a device that runs out; here the pack's batched matmul (the one shared op of
    scheduler.py, `Pack._shared_forward`) is made to raise torch.OutOfMemoryError once, mid-run, after the
    trials' first checkpoint. Neither trial fails: both are re-queued, resume from their checkpoints in packs of
    one, and end with what they would have alone."""
    root, raised = tmp_path / "runs", []
    shared = Pack._shared_forward

    def out_of_memory_once(module, x):
        if not raised and any(root.glob("*/checkpoints/step_*")):  # from step 2 on
            raised.append(True)
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return shared(module, x)

    monkeypatch.setattr(Pack, "_shared_forward", staticmethod(out_of_memory_once))
    overrides = [*SMALL, "trainer.max_steps=4", "trainer.checkpoint_every=1", f"run_root={root}"]
    study, _ = run_sweep(_spec(tmp_path, GRID), overrides, pack=2)
    assert raised
    assert "packing up to 1 trials from now on (out of memory with more)" in capsys.readouterr().out
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE] * 2
    assert all("out of memory in the batched matmul of a pack of 2" in t.user_attrs["fail_reason"] for t in trials[:2])
    assert all("re-queued" in t.user_attrs["fail_reason"] for t in trials[:2])
    assert [t.user_attrs["pack"] for t in trials] == [2, 2, 1, 1]
    runs = [RunStore(root).run(t.user_attrs["config_hash"]) for t in trials[2:]]
    assert [[h["step"] for h in run.history() if "event" in h] for run in runs] == [[1], [1]]  # resumed
    solo = train(compose(trials[2].user_attrs["overrides"]), resources=Resources(), run_dir=tmp_path / "solo")
    assert _close(trials[2].values[0], solo["eval/loss"]), (trials[2].values[0], solo["eval/loss"])


def _out_of_memory(module, x):
    raise torch.OutOfMemoryError("simulated: CUDA out of memory")


@pytest.mark.parametrize("trials", [1, 2])
def test_who_an_out_of_memory_stops(monkeypatch, trials):
    """(The shared op made to fail as above.) With one trial in the pack the op is the trial's own: it sees the
    error itself, as unpacked. With more, every trial of the pack is stopped for a retry in half as many."""
    monkeypatch.setattr(Pack, "_shared_forward", staticmethod(_out_of_memory))
    pack, layer = Pack(), _frozen_linear()
    layer.forward = functools.partial(pack.linear, layer)
    errors = []
    for i in range(trials):
        pack.start(str(i), layer, torch.randn(2, 8))
    pack.run(lambda slot: errors.append(slot.error))
    if trials == 1:
        assert [type(e) for e in errors] == [torch.OutOfMemoryError]
    else:
        assert [type(e) for e in errors] == [PackRetry] * 2 and {e.size for e in errors} == {1}
        assert "out of memory in the batched matmul of a pack of 2: retried in packs of at most 1" in str(errors[0])
