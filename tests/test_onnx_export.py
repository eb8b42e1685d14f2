"""ONNX export of rnnkit.RNN/LSTM/GRU, run in onnxruntime against rnnkit itself (and torch.nn), tolerance 1e-5.

Native operators for every option they express (layers 1-2, bidirectional, batch_first, sequence_lens, GRU both
maths, RNN tanh/relu, peepholes, forget_bias, bias=False); an ONNX Scan over rnnkit's step for the rest
(proj_size, cell_clip, layer_norm, zoneout); streaming by feeding the final states back; round trips through
the ONNX initializers.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import rnnkit
from rnnkit.convert._onnx_export import export_onnx, load_onnx, read_onnx, scan_only_options

TOL = 1e-5


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _hidden(layer, batch: int):
    """Random h_0 (and c_0), torch's shapes (num_layers * D, batch, size)."""
    stacked = layer.num_layers * (2 if layer.bidirectional else 1)
    h0 = torch.randn(stacked, batch, getattr(layer, "proj_size", 0) or layer.hidden_size)
    if isinstance(layer, (rnnkit.LSTM, torch.nn.LSTM)):
        return h0, torch.randn(stacked, batch, layer.hidden_size)
    return h0


def _feeds(x, hidden, lengths=None) -> dict[str, np.ndarray]:
    parts = hidden if isinstance(hidden, tuple) else (hidden,)
    feeds = {"input": x.numpy(), **{name: p.numpy() for name, p in zip(("h_0", "c_0"), parts, strict=False)}}
    if lengths is not None:
        feeds["sequence_lens"] = np.asarray(lengths, dtype=np.int32)
    return feeds


def _reference(layer, x, hidden, lengths=None) -> list[torch.Tensor]:
    with torch.no_grad():
        out, h_n = layer(x, hidden, lengths=lengths) if lengths is not None else layer(x, hidden)
    return [out, *(h_n if isinstance(h_n, tuple) else (h_n,))]


def _check(layer, model, *, batch=3, steps=6, lengths=None) -> None:
    shape = (batch, steps, layer.input_size) if layer.batch_first else (steps, batch, layer.input_size)
    x = torch.randn(shape)
    hidden = _hidden(layer, batch)
    got = _session(model).run(None, _feeds(x, hidden, lengths))
    want = _reference(layer, x, hidden, lengths)
    assert [o.name for o in model.graph.output] == ["output", "h_n", "c_n"][: len(want)]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), w, rtol=0, atol=TOL)


def _op_types(model) -> set[str]:
    return {n.op_type for n in model.graph.node}


NATIVE_KINDS = {
    "lstm": lambda **kw: rnnkit.LSTM(3, 4, **kw),
    "lstm-peepholes-forget-bias": lambda **kw: rnnkit.LSTM(3, 4, peepholes=True, forget_bias=0.8, **kw),
    "lstm-nobias-forget-bias": lambda **kw: rnnkit.LSTM(3, 4, bias=False, forget_bias=1.0, **kw),
    "gru-torch": lambda **kw: rnnkit.GRU(3, 4, **kw),
    "gru-tf": lambda **kw: rnnkit.GRU(3, 4, reset_after=False, **kw),
    "rnn-tanh": lambda **kw: rnnkit.RNN(3, 4, **kw),
    "rnn-relu-nobias": lambda **kw: rnnkit.RNN(3, 4, nonlinearity="relu", bias=False, **kw),
}


def _perturbed(layer):
    """Random non-zero values for every parameter, peepholes and biases included."""
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer.eval()


@pytest.mark.parametrize("kind", list(NATIVE_KINDS))
@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first"), list(itertools.product((1, 2), (False, True), (False, True)))
)
def test_native_export_matches_rnnkit(kind, num_layers, bidirectional, batch_first):
    layer = _perturbed(NATIVE_KINDS[kind](num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first))
    for lengths in (None, [6, 2, 4]):
        model = export_onnx(layer, sequence_lens=lengths is not None, implementation="native")
        types = _op_types(model)
        assert layer.mode.replace("RNN_TANH", "RNN").replace("RNN_RELU", "RNN") in types and "Scan" not in types
        attributes = [a for n in model.graph.node for a in n.attribute]
        assert not any(a.name == "clip" or (a.name == "layout" and a.i) for a in attributes)
        _check(layer, model, lengths=lengths)


def test_native_attributes_and_initializers():
    """linear_before_reset is the GRU's math, activations the RNN's, P the peepholes in ONNX's i, o, f order."""
    for layer, attrs in [
        (rnnkit.GRU(3, 4, reset_after=False), {"linear_before_reset": 0}),
        (rnnkit.GRU(3, 4), {"linear_before_reset": 1}),
        (rnnkit.RNN(3, 4, nonlinearity="relu", bidirectional=True), {"activations": [b"Relu", b"Relu"]}),
        (rnnkit.LSTM(3, 4, bidirectional=True), {"direction": b"bidirectional"}),
    ]:
        node = next(n for n in export_onnx(layer).graph.node if n.op_type in ("LSTM", "GRU", "RNN"))
        got = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert {k: got[k] for k in attrs} == attrs
    lstm = _perturbed(rnnkit.LSTM(3, 4, peepholes=True))
    model = export_onnx(lstm)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    p = inits[node.input[7]][0]
    ci, cf, co = (getattr(lstm, f"weight_c{g}_l0").detach().numpy() for g in "ifo")
    np.testing.assert_array_equal(p, np.concatenate([ci, co, cf]))


@pytest.mark.parametrize("kind", ["lstm-peepholes-forget-bias", "gru-tf", "rnn-relu-nobias", "scan-lstm-proj-clip"])
def test_streaming_by_feeding_final_states_back(kind):
    """Chunks run one after another, each starting from the last one's h_n (c_n), equal the whole sequence."""
    if kind == "scan-lstm-proj-clip":
        layer = _perturbed(rnnkit.LSTM(3, 5, num_layers=2, proj_size=2, cell_clip=0.7, batch_first=True))
    else:
        layer = _perturbed(NATIVE_KINDS[kind](num_layers=2, batch_first=True))
    session = _session(export_onnx(layer))
    x = torch.randn(2, 9, 3)  # (B, T, I)
    hidden = _hidden(layer, 2)
    want = _reference(layer, x, hidden)
    chunks, state = [], hidden
    for piece in x.split([4, 1, 4], dim=1):  # time chunks of different lengths: a dynamic time axis
        out, *final = session.run(None, _feeds(piece, state))
        chunks.append(torch.from_numpy(out))
        state = tuple(torch.from_numpy(f) for f in final) if len(final) == 2 else torch.from_numpy(final[0])
    torch.testing.assert_close(torch.cat(chunks, dim=1), want[0], rtol=0, atol=TOL)
    for g, w in zip(state if isinstance(state, tuple) else (state,), want[1:], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=TOL)


def test_dynamic_batch_and_no_initial_states():
    layer = _perturbed(rnnkit.GRU(3, 4, num_layers=2, bidirectional=True))
    model = export_onnx(layer, initial_states=False, sequence_lens=True)
    assert [i.name for i in model.graph.input] == ["input", "sequence_lens"]
    session = _session(model)
    for batch, steps in ((1, 3), (5, 7)):
        x = torch.randn(steps, batch, 3)
        lengths = [steps] + [max(1, steps - 2)] * (batch - 1)
        got = session.run(None, {"input": x.numpy(), "sequence_lens": np.asarray(lengths, dtype=np.int32)})
        with torch.no_grad():
            out, h_n = layer(x, lengths=lengths)
        torch.testing.assert_close(torch.from_numpy(got[0]), out, rtol=0, atol=TOL)
        torch.testing.assert_close(torch.from_numpy(got[1]), h_n, rtol=0, atol=TOL)


def test_torch_nn_layers_export_too():
    for layer in (torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True), torch.nn.GRU(3, 4, batch_first=True)):
        layer.eval()
        _check(layer, export_onnx(layer))


# -- Scan: the options no native operator computes --------------------------------------------------------------
SCAN_KINDS = {
    "lstm-proj": lambda **kw: rnnkit.LSTM(3, 5, proj_size=2, **kw),
    "lstm-cell-clip-peepholes": lambda **kw: rnnkit.LSTM(3, 4, cell_clip=0.3, peepholes=True, forget_bias=1.0, **kw),
    "lstm-layer-norm": lambda **kw: rnnkit.LSTM(3, 4, layer_norm=True, forget_bias=0.5, **kw),
    "lstm-zoneout-proj-nobias": lambda **kw: rnnkit.LSTM(3, 5, zoneout=0.3, proj_size=3, bias=False, **kw),
    "gru-torch-zoneout": lambda **kw: rnnkit.GRU(3, 4, zoneout=0.2, **kw),
    "gru-tf-zoneout": lambda **kw: rnnkit.GRU(3, 4, zoneout=0.2, reset_after=False, **kw),
    "rnn-relu-zoneout": lambda **kw: rnnkit.RNN(3, 4, zoneout=0.4, nonlinearity="relu", **kw),
}


@pytest.mark.parametrize("kind", list(SCAN_KINDS))
@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first"), [(1, False, False), (2, True, True), (2, False, True)]
)
def test_scan_export_matches_rnnkit(kind, num_layers, bidirectional, batch_first):
    layer = _perturbed(SCAN_KINDS[kind](num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first))
    assert scan_only_options(layer)
    for lengths in (None, [6, 1, 4]):
        model = export_onnx(layer, sequence_lens=lengths is not None)  # "auto" picks Scan
        assert "Scan" in _op_types(model) and not _op_types(model) & {"LSTM", "GRU", "RNN"}
        _check(layer, model, lengths=lengths)


@pytest.mark.parametrize("kind", ["lstm-peepholes-forget-bias", "gru-tf", "rnn-relu-nobias"])
def test_scan_also_computes_what_native_ops_do(kind):
    layer = _perturbed(NATIVE_KINDS[kind](num_layers=2, bidirectional=True))
    _check(layer, export_onnx(layer, implementation="scan", sequence_lens=True), lengths=[6, 3, 5])


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"proj_size": 2}, "proj_size=2"),
        ({"cell_clip": 0.5}, "cell_clip=0.5"),
        ({"layer_norm": True}, "layer_norm"),
        ({"zoneout": 0.1}, "zoneout=0.1"),
    ],
)
def test_native_refuses_what_it_cannot_compute(kwargs, option):
    with pytest.raises(ValueError, match=f"no native ONNX LSTM operator computes {option}"):
        export_onnx(rnnkit.LSTM(3, 4, **kwargs), implementation="native")


def test_bad_arguments():
    with pytest.raises(ValueError, match="implementation must be"):
        export_onnx(rnnkit.GRU(3, 4), implementation="unrolled")
    with pytest.raises(ValueError, match="opset must be an int in"):
        export_onnx(rnnkit.GRU(3, 4), opset=9)
    with pytest.raises(ValueError, match="layer_norm needs ONNX's LayerNormalization, opset 17"):
        export_onnx(rnnkit.LSTM(3, 4, layer_norm=True), opset=16)
    with pytest.raises(TypeError, match="expected an rnnkit.RNN/LSTM/GRU or torch.nn"):
        export_onnx(torch.nn.Linear(3, 4))  # (a cell exports: tests/test_onnx_user_cells.py)


@pytest.mark.parametrize("opset", [14, 21])
def test_other_opsets(opset):
    for layer in (_perturbed(rnnkit.LSTM(3, 4, bidirectional=True)), _perturbed(rnnkit.GRU(3, 4, zoneout=0.3))):
        model = export_onnx(layer, opset=opset, sequence_lens=True)
        assert model.opset_import[0].version == opset
        _check(layer, model, lengths=[6, 2, 5])


# -- round trips through the initializers -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnkit.LSTM(3, 4, num_layers=2, bidirectional=True, peepholes=True, batch_first=True),
        lambda: rnnkit.GRU(3, 4, reset_after=False, bias=False),
        lambda: rnnkit.RNN(3, 4, nonlinearity="relu", num_layers=2),
        lambda: rnnkit.LSTM(3, 5, proj_size=2, cell_clip=0.5, forget_bias=1.0, zoneout=0.1),  # Scan
        lambda: rnnkit.LSTM(3, 4, layer_norm=True, bidirectional=True),  # Scan
    ],
    ids=["lstm-peepholes", "gru-tf", "rnn-relu", "scan-lstm", "scan-layer-norm"],
)
def test_round_trip_through_onnx_initializers_is_exact(make, tmp_path):
    layer = _perturbed(make())
    export_onnx(layer, tmp_path / "m.onnx")
    state, config = read_onnx(tmp_path / "m.onnx")
    mine = layer.state_dict()
    assert list(state) == list(mine) and all(torch.equal(state[k], v) for k, v in mine.items())
    again = load_onnx(tmp_path / "m.onnx")
    assert repr(again) == repr(layer)


def test_round_trip_with_a_folded_forget_bias():
    """Native ops have no forget bias: it comes back folded into bias_ih's f block, the same function."""
    layer = _perturbed(rnnkit.LSTM(3, 4, forget_bias=1.0))
    state, config = read_onnx(export_onnx(layer))
    assert config.forget_bias == 0.0
    folded = layer.bias_ih_l0.detach().clone()
    folded[4:8] += 1.0
    assert torch.equal(state["bias_ih_l0"], folded) and torch.equal(state["weight_hh_l0"], layer.weight_hh_l0)
    again = load_onnx(export_onnx(layer))
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        torch.testing.assert_close(again(x)[0], layer(x)[0], rtol=0, atol=1e-6)


def test_read_onnx_errors(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(ValueError, match="is not an ONNX model"):
        read_onnx(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError):
        read_onnx(tmp_path / "absent.onnx")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    with pytest.raises(ValueError, match=r"no LSTM, GRU or RNN operator \(operators: \['Relu'\]\)"):
        read_onnx(onnx.helper.make_model(graph))
