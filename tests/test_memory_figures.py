"""One meaning per memory figure (training/memory.py): the run's tensor peak is what the prediction predicts, counted
only where a peak can be; the process's RSS is printed beside it under its own name."""

import torch
from conftest import tiny

from lorasweep.cli.console import memory_lines, print_result
from lorasweep.config.schema import compose
from lorasweep.training.memory import TensorPeak


def _train(model, optimizer, shapes, peak: TensorPeak, eval_shape=None):
    """A plain loop over batches of `shapes` (rows, length), then one evaluation batch."""
    with peak.counting(model, optimizer):
        for rows, length in shapes:
            ids = torch.ones(rows, length, dtype=torch.long)
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del ids  # as the loop's batches: not held into the next step
        if eval_shape:
            model.eval()
            with torch.no_grad():
                model(input_ids=torch.ones(*eval_shape, dtype=torch.long))


def test_counting_only_the_first_steps_and_larger_batches_finds_the_peak_of_counting_everything():
    shapes = [(4, 8), (4, 8), (4, 6), (4, 16), (4, 8), (4, 12)]  # the fourth is the largest
    peaks = {}
    for steps in (2, 10**6):
        model = tiny("llama", seed=0).train()
        peak = TensorPeak(torch.device("cpu"), steps=steps)
        _train(model, torch.optim.AdamW(model.parameters(), lr=1e-3), shapes, peak, eval_shape=(64, 16))
        peaks[steps] = (peak.figures(None)["memory/tensor_peak_bytes"], peak.counted_steps)
    assert peaks[2][0] == peaks[10**6][0]
    assert peaks[2][1] == 3 and peaks[10**6][1] == len(shapes)  # steps 1, 2 and the larger fourth


def test_the_counter_is_off_outside_the_steps_it_counts():
    model = tiny("llama", seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    peak = TensorPeak(torch.device("cpu"), steps=1)
    _train(model, optimizer, [(2, 8), (2, 8)], peak)
    after_first = peak.counter.peak
    ids = torch.ones(64, 64, dtype=torch.long)  # outside `counting`: not seen
    model(input_ids=ids, labels=ids).loss.backward()
    assert peak.counter.peak == after_first
    assert peak.counted_steps == 1  # the second step is no larger than the first


def test_a_pack_or_an_accelerator_records_no_counter():
    assert TensorPeak(torch.device("cpu"), enabled=False).figures(None) == {}  # a pack: its trials interleave


def test_a_run_records_a_tensor_peak_the_prediction_matches_and_prints_the_rss_apart(tmp_path, capsys):
    from lorasweep.training.lifecycle import train

    cfg = compose(
        [
            "model=tiny_llama",
            "data=synth_sft",
            "lora=all",
            "tracking=none",
            "trainer=smoke",
            "trainer.max_steps=3",
            "trainer.eval_every=0",
            "trainer.eval_at_start=true",
            "trainer.eval_batch_size=8",
            "data.max_train_examples=64",
            "data.max_eval_examples=8",
            "data.max_length=5",
            "data.style=text",
            "data.text_field=instruction",
            f"run_root={tmp_path}",
        ]
    )  # max_length 5 cuts every example: each batch is the shape the prediction assumes
    metrics = train(cfg)
    measured = metrics["memory/tensor_peak_bytes"]
    predicted = max(metrics["memory/predicted_peak_bytes"], metrics["memory/predicted_eval_peak_bytes"])
    assert abs(measured / predicted - 1) <= 0.05, (measured, predicted)
    assert metrics["memory/peak_bytes"] > 4 * measured  # the RSS: the interpreter and libraries too
    print_result(cfg, metrics)
    out = capsys.readouterr().out
    assert f"peak tensors:    {measured / 2**20:.1f} MiB measured, {predicted / 2**20:.1f} MiB predicted" in out
    assert f"peak RSS:        {metrics['memory/peak_bytes'] / 2**20:.1f} MiB (the process" in out


def test_on_cuda_one_line_says_both_peaks():
    metrics = {"memory/tensor_peak_bytes": 3 * 2**20, "memory/peak_bytes": 3 * 2**20}
    metrics["memory/predicted_peak_bytes"] = 2 * 2**20
    assert memory_lines(metrics, "cuda:0") == [("peak tensors", "3.0 MiB measured, 2.0 MiB predicted")]
    assert [k for k, _ in memory_lines(metrics, "cpu")] == ["peak tensors", "peak RSS"]
    assert memory_lines({"memory/peak_bytes": 2**20}, "cpu") == [
        ("peak RSS", "1.0 MiB (the process: interpreter, libraries, data)")
    ]  # a run recorded before the tensor peak existed
