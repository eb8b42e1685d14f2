"""ONNX export of cells run by ``dynamic_rnn`` (users' own, TF1-protocol and torch-style, and rnnkit's), run in
onnxruntime against ``rnnkit.dynamic_rnn`` in eval mode: outputs and final state leaves, tolerance 1e-5 (float32).

Every family of ``tests/user_cells.py`` in both writings, with and without ``sequence_lens`` (lengths [5, 2, 4]),
from given initial states; time-major inputs, zero initial states, stacks and wrappers; and the refusals: an op
with no ONNX translation, a step the compiler cannot capture, a cell of unknown depth.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import rnnkit
from rnnkit.convert import export_onnx, read_onnx
from user_cells import USER_CELLS, MGUCell, TorchSRU

TOL = 1e-5
DEPTH, UNITS, BATCH, STEPS = 4, 6, 3, 5
LENGTHS = [5, 2, 4]


def _leaves(state) -> list[torch.Tensor]:
    """A state's leaves in TF's flattened order (tuples and named tuples, depth first)."""
    if isinstance(state, (tuple, list)):
        return [leaf for part in state for leaf in _leaves(part)]
    return [state]


def _pack(structure, leaves: list[torch.Tensor]):
    """``leaves`` in the nested structure of ``structure`` (a state or ``state_size``)."""
    it = iter(leaves)

    def build(s):
        if isinstance(s, (tuple, list)):
            parts = [build(p) for p in s]
            return type(s)(*parts) if hasattr(s, "_fields") else type(s)(parts)
        return next(it)

    return build(structure)


def _check(cell, *, lengths=None, time_major=False, initial_states=True, seed=0, opset=17):
    """Export ``cell``, run it in onnxruntime and compare with ``dynamic_rnn`` in eval mode."""
    torch.manual_seed(seed)
    model = export_onnx(
        cell, None, input_size=DEPTH, sequence_lens=lengths is not None, initial_states=initial_states,
        time_major=time_major, opset=opset,
    )  # fmt: skip
    assert model.opset_import[0].version == opset
    x = torch.randn(STEPS, BATCH, DEPTH) if time_major else torch.randn(BATCH, STEPS, DEPTH)
    zero = cell.zero_state(BATCH, torch.float32)
    leaves = [torch.randn_like(leaf) if initial_states else leaf for leaf in _leaves(zero)]
    feeds = {"input": x.numpy()}
    if initial_states:
        feeds.update({f"state_{k}": leaf.numpy() for k, leaf in enumerate(leaves)})
    if lengths is not None:
        feeds["sequence_lens"] = np.array(lengths, np.int32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, feeds)
    was_training = cell.training
    cell.eval()
    with torch.no_grad():
        seq = None if lengths is None else torch.tensor(lengths)
        want, state = rnnkit.dynamic_rnn(
            cell, x, sequence_length=seq, initial_state=_pack(zero, leaves), time_major=time_major
        )
    cell.train(was_training)
    want_leaves = _leaves(state)
    assert [o.name for o in model.graph.output] == ["output"] + [f"state_out_{k}" for k in range(len(want_leaves))]
    np.testing.assert_allclose(got[0], want.numpy(), rtol=TOL, atol=TOL)
    assert len(got) == 1 + len(want_leaves)
    for k, (g, w) in enumerate(zip(got[1:], want_leaves, strict=True)):
        np.testing.assert_allclose(g, w.numpy(), rtol=TOL, atol=TOL, err_msg=f"state leaf {k}")
    if lengths is not None:  # past each length: zeros, as dynamic_rnn
        out = got[0] if not time_major else got[0].transpose(1, 0, 2)
        for b, n in enumerate(lengths):
            assert not out[b, n:].any()
    return model


@pytest.mark.parametrize("lengths", [LENGTHS, None], ids=["lengths", "full"])
@pytest.mark.parametrize("style", ["tf", "torch"])
@pytest.mark.parametrize("family", USER_CELLS, ids=repr)
def test_user_cells_export(family, style, lengths):
    make = family.tf_style if style == "tf" else family.torch_style
    cell = make(UNITS, DEPTH).eval()
    model = _check(cell, lengths=lengths)
    ops = {n.op_type for n in model.graph.node}
    assert "Scan" in ops and "Loop" not in ops


@pytest.mark.parametrize("opset", [14, 21])
@pytest.mark.parametrize("family", [c for c in USER_CELLS if c.name in ("layer_norm_lstm", "sru")], ids=repr)
def test_other_opsets(family, opset):  # reductions take their axes as an input from opset 18
    _check(family.torch_style(UNITS, DEPTH).eval(), lengths=LENGTHS, opset=opset)


@pytest.mark.parametrize("family", USER_CELLS[:4], ids=repr)
def test_time_major_and_zero_states(family):
    _check(family.torch_style(UNITS, DEPTH).eval(), lengths=LENGTHS, time_major=True, initial_states=False)
    model = _check(family.tf_style(UNITS, DEPTH).eval(), time_major=True, initial_states=False)
    assert [i.name for i in model.graph.input] == ["input"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: rnnkit.MultiRNNCell([MGUCell(UNITS, input_size=DEPTH), TorchSRU(UNITS, UNITS)]),
        lambda: rnnkit.LSTMCell(UNITS, input_size=DEPTH, num_proj=4, cell_clip=1.0, use_peepholes=True),
        lambda: rnnkit.LayerNormBasicLSTMCell(UNITS, input_size=DEPTH),
        lambda: rnnkit.ResidualWrapper(rnnkit.GRUCell(DEPTH, input_size=DEPTH)),
    ],
    ids=["multi_user_cells", "lstm_proj_clip_peepholes", "layer_norm_lstm", "residual_gru"],
)
def test_stacks_wrappers_and_rnnkit_cells(make):
    _check(make().eval(), lengths=LENGTHS)


def test_training_mode_cell_exports_its_inference_function():
    """Dropout is off in the export (the eval-mode function), and the cell's own mode is left as it was."""
    cell = rnnkit.DropoutWrapper(
        MGUCell(UNITS, input_size=DEPTH), input_keep_prob=0.6, output_keep_prob=0.5, state_keep_prob=0.7,
        variational_recurrent=True, input_size=DEPTH, dtype=torch.float32,
    ).train()  # fmt: skip
    _check(cell, lengths=LENGTHS)
    assert cell.training


class _OpCell(rnnkit.RNNCell):
    """``h' = tanh(W [op(x), h] + b)`` or, ``on_state``, ``tanh(W [x, op(h)] + b)``."""

    def __init__(self, op, on_state: bool):
        super().__init__()
        self.state_size = self.output_size = UNITS
        self.op, self.on_state = op, on_state
        self.linear = torch.nn.Linear(DEPTH + UNITS, UNITS)

    def call(self, x, h):
        x, h = (x, self.op(h)) if self.on_state else (self.op(x), h)
        h = torch.tanh(self.linear(torch.cat([x, h], 1)))
        return h, h


def test_pointwise_input_ops_translate():
    _check(_OpCell(lambda x: torch.atan(x) + torch.erf(x) * torch.cos(x), on_state=False).eval(), lengths=LENGTHS)


def test_op_without_translation_is_refused_naming_it():
    # on the inputs: the compiler takes any pointwise op there, ONNX has no lgamma
    with pytest.raises(NotImplementedError, match=r"_OpCell\.call .*aten\.lgamma\.default has no ONNX translation"):
        export_onnx(_OpCell(torch.lgamma, on_state=False), None, input_size=DEPTH)
    # on the state: the compiler's own refusal, in its words
    with pytest.raises(NotImplementedError, match=r"cannot be captured.*aten\.atan\.default is outside the compiled"):
        export_onnx(_OpCell(torch.atan, on_state=True), None, input_size=DEPTH)
    noisy = _OpCell(lambda h: h + 0.1 * torch.randn_like(h), on_state=True)
    with pytest.raises(NotImplementedError, match="random"):
        export_onnx(noisy, None, input_size=DEPTH)


def test_bad_arguments():
    with pytest.raises(ValueError, match="input depth of TorchSRU is not known yet.*input_size="):
        export_onnx(TorchSRU(UNITS, DEPTH), None)
    with pytest.raises(ValueError, match="built for inputs of depth 4, got input_size=5"):
        export_onnx(MGUCell(UNITS, input_size=DEPTH), None, input_size=5)
    with pytest.raises(ValueError, match="implementation='native'"):
        export_onnx(MGUCell(UNITS, input_size=DEPTH), None, implementation="native")
    with pytest.raises(ValueError, match="input_size= and time_major= are for cells"):
        export_onnx(rnnkit.LSTM(DEPTH, UNITS), None, time_major=True)
    with pytest.raises(TypeError, match="or an rnnkit.RNNCell, got Linear"):
        export_onnx(torch.nn.Linear(2, 2), None)


def test_model_file_and_read_back_refusal(tmp_path):
    path = tmp_path / "mgu.onnx"
    model = export_onnx(MGUCell(UNITS, input_size=DEPTH), path, sequence_lens=True)
    assert onnx.load(str(path)).graph.node[-1].op_type == model.graph.node[-1].op_type
    with pytest.raises(ValueError, match=r"step of a cell \(MGUCell\).*layers only"):
        read_onnx(path)


def test_a_cell_drawing_at_every_step_in_eval_mode_is_refused():
    class AlwaysDropping(rnnkit.RNNCell):
        state_size = output_size = 4

        def build(self, inputs_shape):  # noqa: ANN001, ANN202
            self.kernel = self.add_variable("kernel", [inputs_shape[-1] + 4, 4])

        def call(self, inputs, state):  # noqa: ANN001, ANN202
            h = torch.tanh(torch.cat([inputs, state], 1) @ self.kernel)
            h = torch.nn.functional.dropout(h, 0.5, training=True)  # draws even in eval mode
            return h, h

    with pytest.raises(NotImplementedError, match="draws random numbers at every step"):
        export_onnx(AlwaysDropping(input_size=3).eval(), input_size=3)
