"""`rnnkit explain` and `rnnkit.describe.summary`: formulas against real torch.nn layers and built rnnkit cells."""

from __future__ import annotations

import importlib.util
import itertools
import xml.etree.ElementTree as ET

import pytest
import torch

import rnnkit as rk
from cell_registry import CELLS, INPUT_DEPTH
from rnnkit.cli import main
from rnnkit.cli.tf_expr import parse_cell
from rnnkit.describe import layer_rows, summary


def explain(capsys, *argv: str) -> str:
    assert main(["explain", *argv]) == 0
    return capsys.readouterr().out


def test_seed_basic_rnn_cell_has_29312_parameters(capsys):
    # The seed article: BasicRNNCell(128) on 100 inputs: kernel (100 + 128, 128) + bias (128,).
    out = explain(capsys, "BasicRNNCell(128)", "--input-shape", "32,100")
    assert (100 + 128) * 128 + 128 == 29_312
    assert "total: 29,312 parameters" in out
    assert "kernel  (228, 128)  29,184  (input_depth + num_units) * num_units" in out
    assert "output  (batch, output_size) = (32, 128)" in out
    s = summary(rk.BasicRNNCell(128), (32, 100))
    assert s.total_params == 29_312 == rk.BasicRNNCell(128, input_size=100).count_params()


def test_seed_torch_rnn_100_20_3(capsys):
    out = explain(capsys, "rnn", "--input-size", "100", "--hidden-size", "20", "--num-layers", "3", "--batch", "2",
                  "--seq-len", "5")  # fmt: skip
    seed = ("weight_ih_l0  (20, 100)", "weight_hh_l0  (20, 20)", "weight_ih_l1  (20, 20)", "weight_ih_l2  (20, 20)",
            "bias_ih_l0    (20,)", "bias_hh_l2    (20,)")  # fmt: skip
    for line in seed:
        assert line in out
    assert "output     (seq_len, batch, hidden_size)    = (5, 2, 20)" in out
    assert "h_0 / h_n  (num_layers, batch, hidden_size) = (3, 2, 20)" in out
    # The same numbers from the real torch.nn.RNN.
    ref = torch.nn.RNN(100, 20, 3)
    output, h_n = ref(torch.zeros(5, 2, 100))
    s = summary(ref, (5, 2, 100))
    assert [(r.name, r.shape) for r in s.rows] == [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    assert dict((n, shape) for n, _, shape in s.shapes) == {
        "input": (5, 2, 100), "output": tuple(output.shape), "h_0 / h_n": tuple(h_n.shape)
    }  # fmt: skip


def test_bidirectional_seed_shapes(capsys):
    out = explain(capsys, "rnn", "--input-size", "100", "--hidden-size", "20", "--num-layers", "3", "--bidirectional",
                  "--batch", "2", "--seq-len", "5")  # fmt: skip
    assert "= (5, 2, 40)" in out and "= (6, 2, 20)" in out
    assert "weight_ih_l1_reverse  (20, 40)" in out


@pytest.mark.parametrize(
    "mode,layers,bidirectional,proj,bias",
    [(m, n, b, p, bias) for m, n, b, p, bias in itertools.product(["rnn", "lstm", "gru"], [1, 3], [False, True], [0, 7],
                                                                   [True, False]) if not (p and m != "lstm")],
)  # fmt: skip
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_layer_formulas_equal_torch_nn(mode, layers, bidirectional, proj, bias):
    kwargs = {"proj_size": proj} if proj else {}
    ref = getattr(torch.nn, mode.upper())(10, 16, layers, bias=bias, bidirectional=bidirectional, **kwargs)
    rows = layer_rows(mode, 10, 16, layers, bidirectional, proj, bias)
    assert [(r.name, r.shape) for r in rows] == [(n, tuple(p.shape)) for n, p in ref.named_parameters()]
    out = ref(torch.zeros(4, 3, 10))
    s = summary(ref, (4, 3, 10))
    shapes = {n: shape for n, _, shape in s.shapes}
    h_n = out[1][0] if mode == "lstm" else out[1]
    assert shapes["output"] == tuple(out[0].shape) and shapes["h_0 / h_n"] == tuple(h_n.shape)
    if mode == "lstm":
        assert shapes["c_0 / c_n"] == tuple(out[1][1].shape)


def test_lstm_explains_torch_and_tf_counts(capsys):
    out = explain(capsys, "lstm", "--input-size", "100", "--hidden-size", "20", "--num-layers", "3", "--bidirectional",
                  "--batch", "2", "--seq-len", "5")  # fmt: skip
    h, i = 20, 100
    assert f"4H(I+H)+8H = {4 * h * (i + h) + 8 * h:,}" in out and f"4H(I+H)+4H = {4 * h * (i + h) + 4 * h:,}" in out
    assert "rows i|f|g|o" in out and "(h, c)" in out and "(c, h)" in out
    total = sum(p.numel() for p in torch.nn.LSTM(100, 20, 3, bidirectional=True).parameters())
    assert f"total: {total:,} parameters" in out
    assert "c_0 / c_n  (num_layers*num_directions, batch, hidden_size) = (6, 2, 20)" in out


def test_tf_multi_lstm_state_structure(capsys):
    out = explain(capsys, "MultiRNNCell([BasicLSTMCell(128), BasicLSTMCell(128)])", "--input-shape", "32,100")
    layer0, layer1 = 4 * 128 * (100 + 128) + 4 * 128, 4 * 128 * (128 + 128) + 4 * 128
    assert f"layer 0: {layer0:,} parameters" in out and f"layer 1: {layer1:,} parameters" in out
    assert f"total: {layer0 + layer1:,} parameters" in out
    assert "cell_0.kernel  (228, 512)" in out and "(input_depth + num_units) * 4*num_units" in out
    assert "columns i|j|f|o" in out
    assert out.count("LSTMStateTuple(c=(32, 128), h=(32, 128))") == 2
    assert "4H(I+H)+8H" in out


@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_registry_cell_matches_its_formulas(name):
    cell = CELLS[name]()
    s = summary(cell, (2, 5, INPUT_DEPTH))
    assert all(r.formula is not None for r in s.rows), [r.name for r in s.rows if r.formula is None]
    assert {r.name: r.shape for r in s.rows} == {n: tuple(p.shape) for n, p in cell.named_parameters()}
    assert s.total_params == cell.count_params()
    # The meta-device shapes equal a real run's.
    outputs, state = rk.dynamic_rnn(cell, torch.randn(2, 5, INPUT_DEPTH))
    assert dict((n, shape) for n, _, shape in s.shapes)["outputs"] == tuple(outputs.shape)


def test_summary_is_printable_with_attributes():
    s = summary(rk.GRUCell(8), (4, 3))
    assert str(s) == repr(s) and "gates.kernel" in str(s)
    assert s.total_params == 2 * (3 + 8) * 8 + 2 * 8 + (3 + 8) * 8 + 8
    assert [r.name for r in s.rows] == ["gates.kernel", "gates.bias", "candidate.kernel", "candidate.bias"]
    with pytest.raises(TypeError, match="summary: expected an rnnkit RNNCell"):
        summary(torch.nn.Linear(2, 2), (1, 2))
    with pytest.raises(ValueError, match="input_size=10"):
        summary(torch.nn.LSTM(10, 4), (3, 2, 11))


def test_expression_parser_is_safe_and_tf_spelled():
    cell = parse_cell("tf.nn.rnn_cell.MultiRNNCell([tf.contrib.rnn.LSTMCell(8, num_proj=4) for _ in range(3)])")
    assert isinstance(cell, rk.MultiRNNCell) and len(cell.cells) == 3 and cell.output_size == 4
    assert parse_cell('BasicRNNCell(4, activation="relu")').num_units == 4
    for bad, msg in [
        ("__import__('os').system('true')", "expected a cell constructor name"),
        ("__import__('os')", "unknown cell constructor '__import__'"),
        ("BasicRNNCell(4).__class__", "expected a cell constructor name|unsupported syntax"),
        ("os.BasicRNNCell(4)", "unknown cell constructor"),
        ("MultiRNNCell([BasicLSTMCell(4)] * 100000)", r"only \[Cell\(...\)\] \* n"),
        ("MultiRNNCell(BasicLSTMCell(4) * 2)", r"only \[Cell\(...\)\] \* n"),
        ("BasicRNNCell(-3)", "num_units must be greater than zero"),
        ("BasicRNNCell(", "not a Python expression"),
        ("[BasicRNNCell(4) for _ in range(10**9)]", "unsupported syntax"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_cell(bad)


def test_diagram_svg_is_valid_xml(tmp_path, capsys):
    path = tmp_path / "stack.svg"
    explain(capsys, "lstm", "--input-size", "100", "--hidden-size", "20", "--num-layers", "3", "--bidirectional",
            "--batch", "2", "--seq-len", "5", "--diagram", str(path))  # fmt: skip
    root = ET.parse(path).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg"
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert sum(t.startswith(("fw t=", "bw t=")) for t in texts) == 3 * 5 * 2  # layers x steps x directions
    assert "(2, 100)" in texts and "(2, 40) = [fw, bw]" in texts and "h (2, 20), c (2, 20)" in texts
    long = tmp_path / "long.svg"
    explain(capsys, "MultiRNNCell([GRUCell(8), GRUCell(8)])", "--input-shape", "4,1000,3", "--diagram", str(long))
    texts = [t.text for t in ET.parse(long).getroot().iter(f"{ns}text")]
    assert "..." in texts and "t=999" in texts and "t=500" not in texts


def test_diagram_png_needs_matplotlib(tmp_path, capsys):
    path = tmp_path / "stack.png"
    code = main(["explain", "gru", "--input-size", "3", "--hidden-size", "4", "--diagram", str(path)])
    if importlib.util.find_spec("matplotlib") is None:
        assert code == 2
        assert "needs matplotlib, which is not installed" in capsys.readouterr().err
    else:
        assert code == 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explain_any_size_without_memory(capsys):
    # Built on the meta device: a 3-layer LSTM of 8192 units is explained without allocating its 1.6 GB.
    out = explain(capsys, "lstm", "--input-size", "8192", "--hidden-size", "8192", "--num-layers", "3")
    assert f"total: {3 * (4 * 8192 * (2 * 8192) + 8 * 8192):,} parameters" in out


@pytest.mark.parametrize(
    "make",
    [
        lambda: rk.LSTM(6, 5, 2, peepholes=True, bidirectional=True),
        lambda: rk.LSTM(6, 5, 1, layer_norm=True, batch_first=True),
        lambda: rk.GRU(6, 5, 2, reset_after=False),
        lambda: rk.RNN(6, 5, 3, nonlinearity="relu", bias=False),
    ],
)
def test_rnnkit_layers_and_their_options_have_formulas(make):
    layer = make()
    shape = (3, 4, 6)  # (seq, batch, input) or (batch, seq, input) with batch_first
    s = summary(layer, shape)
    assert all(r.formula is not None for r in s.rows)
    assert {r.name: r.shape for r in s.rows} == {n: tuple(p.shape) for n, p in layer.named_parameters()}
    out, state = layer(torch.zeros(shape))
    h_n = state[0] if isinstance(state, tuple) else state
    shapes = {n: v for n, _, v in s.shapes}
    assert shapes["output"] == tuple(out.shape) and shapes["h_0 / h_n"] == tuple(h_n.shape)


@pytest.mark.parametrize("mode,bidirectional,proj", [("rnn", False, 0), ("gru", True, 0), ("lstm", True, 7)])
def test_each_layer_header_names_its_own_input_size(capsys, mode, bidirectional, proj):
    # Layer k > 0 reads the layer below (num_directions * (proj_size or hidden_size)), not input_size: the
    # header's number must be the second dimension of that layer's weight_ih in the real torch.nn layer.
    argv = [mode, "--input-size", "100", "--hidden-size", "20", "--num-layers", "3"]
    argv += ["--bidirectional"] * bidirectional + (["--proj-size", str(proj)] if proj else [])
    out = explain(capsys, *argv)
    kwargs = {"bidirectional": bidirectional, **({"proj_size": proj} if proj else {})}
    ref = getattr(torch.nn, mode.upper())(100, 20, 3, **kwargs)
    headers = [line for line in out.splitlines() if line.startswith("  layer ")]
    assert len(headers) == 3 * (2 if bidirectional else 1)
    for line in headers:
        k = int(line.split()[1].rstrip(":"))
        reads = ref.get_parameter(f"weight_ih_l{k}").shape[1]  # 100, then 20 / 40 / 14
        inside = line[line.index("(") + 1 : line.rindex(")")]
        numbers = [int(part.rsplit("=", 1)[1]) for part in inside.split(", ") if part.startswith("input")]
        assert numbers == [reads], line
        assert ("input_size=100" in line) == (k == 0), line  # only layer 0 reads input_size


def _text_boxes(canvas):
    """(x0, y0, x1, y1, text) of every text on a Canvas, from a sans-serif glyph advance of 0.6 em."""
    out = []
    for shape in canvas.shapes:
        if shape[0] == "text":
            _, x, y, text, size, anchor, _, bold = shape
            w = len(text) * size * 0.6 * (1.1 if bold else 1.0)
            x0 = {"start": x, "middle": x - w / 2, "end": x - w}[anchor]
            out.append((x0, y - 0.8 * size, x0 + w, y + 0.25 * size, text))
    return out


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


@pytest.mark.parametrize(
    "model,shape",
    [
        ("MultiRNNCell([BasicLSTMCell(128), BasicLSTMCell(128)])", (32, 5, 100)),  # the audit's TF-cell diagram
        ("MultiRNNCell([LSTMCell(128, num_proj=64), GRUCell(32)])", (3200, 9, 1000)),
        ("MultiRNNCell([LayerNormBasicLSTMCell(100), BasicRNNCell(100)])", (32, 2, 100)),
        (lambda: rk.LSTM(100, 20, 3, bidirectional=True, proj_size=7), (5, 2, 100)),
    ],
)
def test_diagram_text_overlaps_no_box_and_no_other_text(model, shape):
    from rnnkit.describe.diagram import stack_canvas

    with torch.device("meta"):
        module = parse_cell(model) if isinstance(model, str) else model()
        canvas = stack_canvas(summary(module, shape))
    texts = _text_boxes(canvas)
    boxes = [(x, y, x + w, y + h) for kind, x, y, w, h, *_ in canvas.shapes if kind == "box"]
    for t in texts:
        inside = [b for b in boxes if b[0] <= t[0] and t[2] <= b[2] and b[1] <= t[1] and t[3] <= b[3]]
        if inside:  # a step box's own label ("t=0", "fw t=1")
            continue
        hit = [b for b in boxes if _overlap(t, b)]
        assert not hit, f"text {t[4]!r} at {t[:4]} overlaps the box at {hit[0]}"
        assert t[2] <= canvas.width, f"text {t[4]!r} runs off the right edge"
    for a, b in itertools.combinations(texts, 2):
        assert not _overlap(a, b), f"texts {a[4]!r} and {b[4]!r} overlap"
