"""The torch layout itself, ONNX's layout (checked in onnxruntime), TF<->torch on random cells, torch file loading.

References: torch.nn's own modules, onnxruntime running the native ONNX LSTM/GRU/RNN operators built
from `torch_to_onnx`'s initializers, and rnnkit's TF cells (themselves checked against TF elsewhere).
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from rnnkit import BasicLSTMCell, BasicRNNCell, GRUCell, LayerNormBasicLSTMCell, LSTMCell, MultiRNNCell, dynamic_rnn
from rnnkit.convert import (
    LayerConfig,
    OnnxRecurrentOp,
    TFCellStack,
    cells_from_tf_variables,
    cells_to_torch,
    check_state_dict,
    infer_config,
    load_torch_state_dict,
    onnx_to_torch,
    tf_to_torch,
    torch_to_cells,
    torch_to_keras,
    torch_to_onnx,
    torch_to_tf,
)

TOL = 1e-5


def _torch_nn_configs():
    for mode, layers, bidi, bias in itertools.product(("LSTM", "GRU", "RNN"), (1, 2), (False, True), (True, False)):
        yield LayerConfig(mode, 3, 5, num_layers=layers, bidirectional=bidi, bias=bias)
    yield LayerConfig("LSTM", 3, 5, num_layers=2, bidirectional=True, proj_size=2)
    yield LayerConfig("RNN", 3, 5, num_layers=2, nonlinearity="relu")


TORCH_NN_CONFIGS = list(_torch_nn_configs())


def _cid(config: LayerConfig) -> str:
    parts = [config.mode, f"L{config.num_layers}", "bi" if config.bidirectional else "uni"]
    parts += [] if config.bias else ["nobias"]
    parts += [f"proj{config.proj_size}"] if config.proj_size else []
    parts += ["relu"] if config.nonlinearity == "relu" else []
    return "-".join(parts)


@pytest.mark.parametrize("config", TORCH_NN_CONFIGS, ids=_cid)
def test_parameter_shapes_are_torch_nns(config):
    module = config.torch_nn_module()
    assert config.parameter_shapes() == {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert LayerConfig.from_module(module) == config
    assert infer_config(module.state_dict(), nonlinearity=config.nonlinearity) == config


def test_check_state_dict_names_key_and_shapes():
    config = LayerConfig("LSTM", 3, 4, num_layers=2)
    state = torch.nn.LSTM(3, 4, num_layers=2).state_dict()
    state["weight_hh_l1"] = torch.zeros(16, 5)
    with pytest.raises(ValueError, match=r"weight_hh_l1: expected shape \(16, 4\) .* got \(16, 5\)"):
        check_state_dict(state, config)
    del state["bias_ih_l0"]
    with pytest.raises(ValueError, match=r"missing \['bias_ih_l0'\]"):
        check_state_dict(state, config)


def test_config_refusals_and_options():
    with pytest.raises(ValueError, match="proj_size"):
        LayerConfig("LSTM", 3, 4, proj_size=4)
    with pytest.raises(ValueError, match="reset_after=False is a GRU option"):
        LayerConfig("LSTM", 3, 4, reset_after=False)
    tf_gru = LayerConfig("GRU", 3, 4, reset_after=False)
    with pytest.raises(ValueError, match="no weights make one equal the other"):
        tf_gru.torch_nn_kwargs()
    peephole = LayerConfig("LSTM", 3, 4, peepholes=True, cell_clip=2.0, forget_bias=1.0)
    assert len(peephole.torch_nn_incompatibilities()) == 3
    assert peephole.layer_kwargs()["peepholes"] and peephole.parameter_shapes()["weight_cf_l0"] == (4,)
    assert LayerConfig.from_dict(peephole.to_dict()) == peephole


# -- ONNX -------------------------------------------------------------------------------------------------
def _run_onnx(ops: list[OnnxRecurrentOp], x: torch.Tensor) -> np.ndarray:
    """Build a graph of the native ops (layer k+1 reads layer k's Y as [T, B, D*H]) and run it in onnxruntime."""
    nodes, initializers = [], []
    current = "X"
    for k, op in enumerate(ops):
        names = {}
        for n, value in op.initializers.items():
            names[n] = f"{n}{k}"
            initializers.append(numpy_helper.from_array(value.numpy(), names[n]))
        inputs = [names.get(n, "") for n in ("W", "R", "B")]
        inputs = [current, *inputs, "", ""]  # no sequence_lens, no initial_h
        if op.op_type == "LSTM":
            inputs += ["", names.get("P", "")]
        nodes.append(helper.make_node(op.op_type, inputs, [f"Y{k}"], **op.attributes))
        nodes.append(helper.make_node("Transpose", [f"Y{k}"], [f"T{k}"], perm=[0, 2, 1, 3]))  # (T, B, D, H)
        nodes.append(helper.make_node("Reshape", [f"T{k}", "shape"], [f"O{k}"]))  # (T, B, D*H)
        current = f"O{k}"
    initializers.append(numpy_helper.from_array(np.array([0, 0, -1], dtype=np.int64), "shape"))
    graph = helper.make_graph(
        nodes,
        "rnn",
        [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info(current, onnx.TensorProto.FLOAT, [None, None, None])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x.numpy()})[0]


@pytest.mark.parametrize(
    "config", [c for c in TORCH_NN_CONFIGS if not c.proj_size and (c.num_layers == 2 or c.mode == "RNN")], ids=_cid
)
def test_torch_nn_equals_onnx_runtime(config):
    torch.manual_seed(1)
    module = config.torch_nn_module()
    x = torch.randn(6, 2, 3)  # (T, B, I)
    ops = torch_to_onnx(module.state_dict(), config)
    with torch.no_grad():
        want = module(x)[0]
    torch.testing.assert_close(torch.from_numpy(_run_onnx(ops, x)), want, rtol=0, atol=TOL)
    state, back = onnx_to_torch(ops)
    assert back == config
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


def _random_cell_stacks():
    peephole = [LSTMCell(4, use_peepholes=True, input_size=3) for _ in range(2)]
    yield "peephole_bidirectional", TFCellStack("bidirectional", peephole[:1], peephole[1:])
    yield (
        "forget_bias_2_layers",
        TFCellStack(
            "unidirectional", [BasicLSTMCell(4, input_size=3), BasicLSTMCell(4, input_size=4)], multi_rnn_cell=True
        ),
    )
    yield (
        "tf_gru_stack_bidirectional",
        TFCellStack(
            "stack_bidirectional",
            [GRUCell(4, input_size=3), GRUCell(4, input_size=8)],
            [GRUCell(4, input_size=3), GRUCell(4, input_size=8)],
        ),
    )
    yield "relu_rnn", TFCellStack("unidirectional", [BasicRNNCell(4, activation="relu", input_size=3)])


@pytest.mark.parametrize(("name", "stack"), list(_random_cell_stacks()), ids=lambda v: v if isinstance(v, str) else "")
def test_tf_cells_equal_onnx_runtime(name, stack):
    """Peepholes (P in i, o, f), the forget bias (folded into Wb), TF's GRU (linear_before_reset=0) in ORT."""
    torch.manual_seed(2)
    with torch.no_grad():
        for p in itertools.chain(*(c.parameters() for c in stack.cells_fw + stack.cells_bw)):
            p.normal_(0, 0.6)  # non-trivial biases and peepholes
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        want, _ = stack.run(x)
    state, config = cells_to_torch(stack)
    ops = torch_to_onnx(state, config)
    got = _run_onnx(ops, x.transpose(0, 1).contiguous())
    torch.testing.assert_close(torch.from_numpy(got).transpose(0, 1), want, rtol=0, atol=TOL)
    back_state, back_config = onnx_to_torch(ops)
    if config.forget_bias == 0:
        assert back_config == config
        assert all(torch.equal(back_state[k], v) for k, v in state.items())


def test_onnx_refuses_projection_and_cell_clip():
    config = LayerConfig("LSTM", 3, 4, proj_size=2)
    with pytest.raises(ValueError, match="no projection"):
        torch_to_onnx(torch.nn.LSTM(3, 4, proj_size=2).state_dict(), config)
    clipped = LayerConfig("LSTM", 3, 4, cell_clip=1.0)
    with pytest.raises(ValueError, match="clips gate pre-activations"):
        torch_to_onnx(torch.nn.LSTM(3, 4).state_dict(), clipped)
    op = torch_to_onnx(torch.nn.LSTM(3, 4).state_dict(), LayerConfig("LSTM", 3, 4))[0]
    op.attributes["clip"] = 3.0
    with pytest.raises(ValueError, match="clip=3.0"):
        onnx_to_torch([op])


# -- TF <-> torch on random torch.nn modules ----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")
@pytest.mark.parametrize("config", [c for c in TORCH_NN_CONFIGS if c.bias and c.mode != "GRU"], ids=_cid)
def test_torch_nn_to_tf_cells_computes_the_same(config):
    """torch.nn -> TF variables (for cells with TF's default forget_bias=1.0) -> rnnkit cells == torch.nn."""
    torch.manual_seed(3)
    module = config.torch_nn_module(batch_first=True)
    x = torch.randn(2, 6, 3)
    with torch.no_grad():
        want = module(x)[0]
    stack = torch_to_cells(module.state_dict(), config, forget_bias=1.0)
    with torch.no_grad():
        torch.testing.assert_close(stack.run(x)[0], want, rtol=0, atol=TOL)
    # torch -> TF -> torch is bit-exact when no forget bias moves a value.
    variables = torch_to_tf(module.state_dict(), config, forget_bias=None)
    state, back = tf_to_torch(variables, target="torch.nn", forget_bias=0.0, activation=config.nonlinearity)
    assert back == config
    for key, value in state.items():
        if key.startswith("bias_ih"):  # the two torch biases become TF's one, their sum
            value = value + state[key.replace("_ih", "_hh")]
            torch.testing.assert_close(value, module.state_dict()[key] + module.state_dict()[key.replace("_ih", "_hh")])
        elif not key.startswith("bias_hh"):
            assert torch.equal(value, module.state_dict()[key]), key


def test_torch_gru_has_no_tf_cell():
    gru = torch.nn.GRU(3, 4)
    with pytest.raises(ValueError, match="no TF GRUCell equivalent"):
        torch_to_tf(gru.state_dict(), LayerConfig.from_module(gru))


def test_layer_norm_cells_and_refusals():
    ln = TFCellStack("unidirectional", [LayerNormBasicLSTMCell(4, input_size=3)])
    variables = ln.tf_variables()
    assert (
        "rnn/layer_norm_basic_lstm_cell/forget/gamma" in variables
        and "rnn/layer_norm_basic_lstm_cell/bias" not in variables
    )
    with pytest.raises(ValueError, match="LayerNormBasicLSTMCell: torch.nn.LSTM has no layer norm"):
        tf_to_torch(variables, target="torch.nn", forget_bias=1.0)
    x = torch.randn(2, 5, 3)
    rebuilt = cells_from_tf_variables(variables, forget_bias=1.0)
    torch.testing.assert_close(rebuilt.run(x)[0], ln.run(x)[0], rtol=0, atol=0)
    # rnnkit.LSTM(layer_norm=True, bias=False) layout: gains/shifts in blocks i, f, g, o; the forget bias carried
    # exactly, or folded into the forget norm's shift (it is added after that norm).
    with torch.no_grad():
        for p in ln.cells_fw[0].parameters():
            p.normal_(0, 0.6)
    want = ln.run(x)[0]
    state, config = cells_to_torch(ln)
    assert (config.layer_norm, config.bias, config.forget_bias) == (True, False, 1.0)
    assert state["weight_ln_gates_l0"].shape == (16,) and state["bias_ln_cell_l0"].shape == (4,)
    cell = ln.cells_fw[0]
    assert torch.equal(state["weight_ln_gates_l0"][4:8], cell.forget.gamma)
    assert torch.equal(state["bias_ln_gates_l0"][8:12], cell.transform.beta)
    torch.testing.assert_close(torch_to_cells(state, config).run(x)[0], want, rtol=0, atol=0)
    folded, folded_config = cells_to_torch(ln, fold_forget_bias=True)
    assert folded_config.forget_bias == 0.0
    torch.testing.assert_close(folded["bias_ln_gates_l0"][4:8], cell.forget.beta + 1.0)
    torch.testing.assert_close(torch_to_cells(folded, folded_config).run(x)[0], want, rtol=0, atol=1e-6)
    mixed = MultiRNNCell([BasicLSTMCell(4, input_size=3), BasicLSTMCell(5, input_size=4)])
    with pytest.raises(ValueError, match=r"differ in num_units \(\[4, 5\]\)"):
        cells_to_torch(mixed)
    with pytest.raises(ValueError, match="Keras's LSTM has no proj_size=2"):
        torch_to_keras(torch.nn.LSTM(3, 4, proj_size=2).state_dict(), LayerConfig("LSTM", 3, 4, proj_size=2))


def test_gru_cell_round_trip_through_torch_layout():
    cell = MultiRNNCell([GRUCell(4, input_size=3), GRUCell(4, input_size=4)])
    x = torch.randn(2, 5, 3)
    want, _ = dynamic_rnn(cell, x)
    state, config = cells_to_torch(cell)
    assert config == LayerConfig("GRU", 3, 4, num_layers=2, reset_after=False)
    again = torch_to_cells(state, config)
    torch.testing.assert_close(again.run(x)[0], want, rtol=0, atol=0)


# -- torch.save files ---------------------------------------------------------------------------------------
class _Custom:
    def __init__(self):
        self.value = 3


def test_load_torch_state_dict(tmp_path):
    lstm = torch.nn.LSTM(3, 4, bidirectional=True)
    path = tmp_path / "lstm.pt"
    torch.save(lstm.state_dict(), path)
    state = load_torch_state_dict(path)
    assert infer_config(state) == LayerConfig.from_module(lstm)
    nested = tmp_path / "ckpt.pt"
    torch.save({"model": {"rnn": lstm.state_dict()}, "epoch": 3}, nested)
    assert sorted(load_torch_state_dict(nested, key="model.rnn")) == sorted(state)
    with pytest.raises(ValueError, match="not a flat state dict"):
        load_torch_state_dict(nested)


@pytest.mark.parametrize("payload", ["module", "custom"])
def test_pickled_objects_are_refused(tmp_path, payload):
    path = tmp_path / "bad.pt"
    torch.save(torch.nn.LSTM(3, 4) if payload == "module" else {"x": _Custom()}, path)
    with pytest.raises(ValueError, match="pickled Python objects.*never unpickles"):
        load_torch_state_dict(path)


def test_plain_pickle_and_truncated_files_are_refused(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(pickle.dumps({"weight_ih_l0": _Custom()}))
    with pytest.raises(ValueError, match="load_torch_state_dict|pickled"):
        load_torch_state_dict(path)
    good = tmp_path / "good.pt"
    torch.save(torch.nn.GRU(3, 4).state_dict(), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a readable torch.save file"):
        load_torch_state_dict(truncated)
