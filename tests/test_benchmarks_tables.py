"""The streaming and bf16 benchmark tables' own arithmetic and sides (``benchmarks.streaming``, ``benchmarks.bf16``):
the bytes-per-frame formula against sizes worked out by hand, the onnxruntime side against rnnkit's own forward
(so the table's reference computes the same model, states fed back), and the targets' bounds. No timing here.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import torch

import rnnkit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # (benchmarks/ sits beside src/, run as `python -m benchmarks.run` from the root)
    sys.path.insert(0, str(ROOT))

from benchmarks import bf16, streaming  # noqa: E402


def test_weight_bytes_by_hand():
    # LSTM(80, 256, 2): per layer W_ih (4H, I), W_hh (4H, H), b_ih and b_hh (4H); float32 = 4 bytes.
    H = 256
    lstm = 4 * H * 80 + 4 * H * H + 2 * 4 * H + 4 * H * H + 4 * H * H + 2 * 4 * H
    assert streaming.weight_bytes(streaming.make_layer(streaming.Config("LSTM", 80, 256, 2))) == 4 * lstm == 3_489_792
    # GRU(128, 128, 1): 3 gates.
    gru = 3 * 128 * 128 * 2 + 2 * 3 * 128
    layer = streaming.make_layer(streaming.Config("GRU", 128, 128, 1, reset_after=False))
    assert streaming.weight_bytes(layer) == 4 * gru
    assert streaming.weight_bytes(layer.to(torch.bfloat16)) == 2 * gru
    # TF MultiRNNCell of two LSTMCell(256) on 80 inputs: kernel (I + H, 4H) and bias 4H per layer.
    cells = rnnkit.MultiRNNCell([rnnkit.LSTMCell(H), rnnkit.LSTMCell(H)])
    cells.build(80)
    assert streaming.weight_bytes(cells) == 4 * ((80 + H) * 4 * H + 4 * H + (2 * H) * 4 * H + 4 * H)


def test_bandwidth_and_fastest():
    assert streaming.bandwidth_gbs(3_489_792, 50e-6) == pytest.approx(69.79584, rel=1e-12)
    assert streaming.fastest({None: 2e-4, 1: 1e-4, 2: None}) == 1
    assert streaming.fastest({None: 1e-4, 1: 1e-4}) is None  # a tie goes to the first (the defaults)
    assert streaming.ort_best([3e-4, None, 2e-4]) == (2e-4, 2)  # the times at ORT_SETTINGS (None, 1, 2)
    assert streaming.ort_best([1e-4, None, 2e-4]) == (1e-4, None)  # the defaults' setting is None
    assert streaming.ort_best([None, None, None]) == (None, None)
    assert streaming.fastest({1: None}) is None


@pytest.mark.parametrize(
    "cfg", [streaming.Config("LSTM", 5, 7, 2, batch=3), streaming.Config("GRU", 5, 7, 2, reset_after=False)]
)
def test_frame_sides_equal_the_whole_sequence(cfg):
    """step(), onnxruntime on rnnkit's export, each fed its own state back frame by frame, equal forward on the
    whole sequence (float32 rounding: 1e-5)."""
    torch.manual_seed(0)
    layer = streaming.make_layer(cfg)
    xs = torch.randn(4, cfg.batch, cfg.input_size)
    with torch.no_grad():
        whole, _ = layer(xs)
    x = torch.empty(cfg.batch, cfg.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        step, ort = streaming.step_frame(layer, x), streaming.ort_layer_frame(layer, x, tmp, 1)
        for t in range(xs.shape[0]):
            x.copy_(xs[t])  # (both sides read x's memory: onnxruntime's input is a view of a float32 x)
            with torch.no_grad():
                got = step()
            torch.testing.assert_close(got, whole[t], atol=1e-5, rtol=0)
            torch.testing.assert_close(torch.from_numpy(ort())[0], whole[t], atol=1e-5, rtol=0)


def test_targets_count_the_bounds():
    row = dict(config="LSTM", sizes="80, 256, 2", batch=1, step_ort=0.9, stream_ort=None, today_x=12.0)
    rows = [
        row,
        dict(row, config="GRU (torch's math)", step_ort=1.2, today_x=None),
        dict(row, batch=4, step_ort=5.0, today_x=None),  # batch 4: reported, not held to the batch-1 bound
        dict(row, config="TF MultiRNNCell of 2 rnnkit.LSTMCell", step_ort=1.25, today_x=None),
    ]
    lines = streaming.targets(rows).splitlines()
    assert lines[0].startswith("| streaming float32, batch 1, step()") and lines[0].endswith("| 1/2 |")
    assert lines[1].startswith("| TF MultiRNNCell") and lines[1].endswith("| 1/1 |")
    assert lines[2].startswith("| step() against today's") and lines[2].endswith("| 1/1 |")
    assert len(lines) == 3  # no stream line where no row measured stream

    seq = [
        dict(config="GRU: rnnkit.GRU (torch's math)", shape="1", mode="inference", ratio=2.0, vs_lstm=0.8),
        dict(config="GRU: rnnkit.GRU(reset_after=False) (TF's math)", shape="1", mode="inference", ratio=2.0,
             vs_lstm=0.9),
        dict(config="LSTM: rnnkit.LSTM", shape="1", mode="fwd+bwd", ratio=1.0, vs_lstm=None),
    ]  # fmt: skip
    frames = [dict(config="LSTM", sizes="80, 256, 2", step_ort=0.59, stream_ort=0.61)]
    lines = bf16.targets(seq, frames).splitlines()
    assert [line.rsplit("|", 2)[-2].strip() for line in lines] == ["1/1", "1/2", "1/1", "0/1"]
    assert "torch's math 1 inference: 0.80; TF's math 1 inference: 0.90" in lines[1]


def test_bf16_compare_rows_are_the_bf16_table_s():
    """``benchmarks.compare --bf16`` times, in each worker, rnnkit's side of the bf16 table's rows: one per model,
    shape and mode, named as that table names them (with "bf16 " before the config), each a call that runs."""
    from benchmarks import compare

    rows = compare._bf16_rows("layer_norm", "100,1,64,128")
    assert [r for r, _ in rows] == [
        {"config": "bf16 LSTM layer_norm=True", "shape": "100, 1, 64, 128", "mode": mode}
        for mode in ("inference", "fwd+bwd")
    ]
    assert len(compare._bf16_rows("", "")) == 2 * len(bf16.SPECS) * len(bf16.SHAPES)
    for _, run in rows:
        run()
