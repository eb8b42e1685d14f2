"""ONNX export of ``rnnkit.RNN/LSTM/GRU`` to the native ``RNN``/``LSTM``/``GRU`` operators (or a ``Scan``), and back.

The exported graph computes the layer's inference (eval-mode) function, ``float32``, with dynamic batch and time::

    inputs   input          (seq_len, batch, input_size)      ((batch, seq_len, input_size) with batch_first)
             h_0            (num_layers * D, batch, P)         initial_states=True (the default)
             c_0            (num_layers * D, batch, H)         LSTM, initial_states=True
             sequence_lens  (batch,) int32                     sequence_lens=True: rnnkit's lengths=
    outputs  output         (seq_len, batch, D * P)            ((batch, seq_len, D * P) with batch_first)
             h_n            (num_layers * D, batch, P)
             c_n            (num_layers * D, batch, H)         LSTM

(``D`` = 2 if bidirectional else 1, ``H = hidden_size``, ``P = proj_size or H``; state rows ``k * D + d`` as
torch.) Feeding ``h_n``/``c_n`` back as ``h_0``/``c_0`` streams a long sequence chunk by chunk in a stateless
runtime such as onnxruntime.

**Native operators** (``implementation="native"``, and ``"auto"`` whenever possible): one ONNX op per layer,
``layout=0`` (onnxruntime rejects ``layout=1``; ``batch_first`` transposes around the ops), initializers from
`torch_to_onnx` (ONNX's gate orders, ``rnnkit.gates``; ``B = [Wb, Rb]``; peepholes ``P`` in order
i, o, f; ``forget_bias`` folded into ``Wb``'s f block), ``direction="bidirectional"`` for two directions, GRU
``linear_before_reset`` = ``reset_after`` (1: torch's math, 0: TF's), RNN ``activations`` ``Tanh``/``Relu``.
Layer ``k + 1`` reads layer ``k``'s ``Y [T, D, B, H]`` transposed and reshaped to ``[T, B, D * H]``.

**Scan** (``implementation="scan"``, and ``"auto"`` for options no native op computes: ``proj_size``,
``cell_clip``, ``layer_norm``, ``zoneout``): one ONNX ``Scan`` per (layer, direction) over rnnkit's step
equations (docstring of ``rnnkit.LSTM``), the input projection ``W_ih x + b_ih`` computed for all steps
before it; the backward direction reverses each sequence within its length (``ReverseSequence``); with
``sequence_lens`` the state stops at each sequence's last step and the outputs past it are zeros. ONNX's
``clip`` attribute is never used: it clips gate pre-activations, not TF's cell state. Zoneout exports as
its eval-mode expectation ``h' = new + zoneout * (old - new)``. Initializers keep torch's parameter names.

The layer's configuration travels in the model's ``metadata_props`` (``rnnkit.config``), so `load_onnx`
rebuilds an rnnkit layer from an exported file (native ops: forget bias folded; Scan: bit-exact weights).

Example::

    >>> import numpy as np, onnxruntime
    >>> lstm = rnnkit.LSTM(10, 20, num_layers=2, batch_first=True, forget_bias=1.0, peepholes=True).eval()
    >>> model = export_onnx(lstm, "lstm.onnx", sequence_lens=True)
    >>> session = onnxruntime.InferenceSession("lstm.onnx")
    >>> x, h0, c0 = np.ones((3, 7, 10), np.float32), np.zeros((2, 3, 20), np.float32), np.zeros((2, 3, 20), np.float32)
    >>> lens = np.array([7, 5, 2], np.int32)
    >>> out, h_n, c_n = session.run(None, {"input": x, "h_0": h0, "c_0": c0, "sequence_lens": lens})
    >>> out.shape, h_n.shape
    ((3, 7, 20), (2, 3, 20))
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from ..cells import RNNCell
from ._onnx_cells import export_cell
from ._onnx_graph import Graph, Step, native_layer, scan_direction, value_info, zeros
from ._onnx_io import load_model as _load_model
from ._onnx_io import onnx_module as _onnx
from ._onnx_layout import OnnxRecurrentOp, native_refusals, onnx_to_torch, torch_to_onnx
from ._torch_layout import check_state_dict, direction_params
from .config import LAYERS, TORCH_NN_LAYERS, LayerConfig, layer_description, layer_from_state_dict

__all__ = ["export_onnx", "read_onnx", "load_onnx", "scan_only_options", "DEFAULT_OPSET"]

DEFAULT_OPSET = 17  # LayerNormalization (Scan export of layer_norm) needs 17; onnxruntime 1.32 runs 14-23+
_MIN_OPSET = 14


def scan_only_options(layer: torch.nn.Module) -> list[str]:
    """The layer's options that no native ONNX recurrent operator computes (empty: native ops export it)."""
    options = native_refusals(LayerConfig.from_module(layer))
    zoneout = float(getattr(layer, "zoneout", 0.0))
    if zoneout:
        options.append(f"zoneout={zoneout} (no native operator blends the previous state in)")
    return options


# -- the whole graph -----------------------------------------------------------------------------------------
def export_onnx(
    layer: torch.nn.Module,
    path: str | os.PathLike | None = None,
    *,
    sequence_lens: bool = False,
    initial_states: bool = True,
    implementation: str = "auto",
    opset: int = DEFAULT_OPSET,
    input_size: int | None = None,
    time_major: bool = False,
) -> Any:
    """Export ``layer`` (``rnnkit.RNN/LSTM/GRU`` or ``torch.nn.RNN/LSTM/GRU``, or any ``rnnkit.RNNCell``) to ONNX;
    returns the ``ModelProto``.

    A cell (a user's own included) exports as ``dynamic_rnn(cell, input, sequence_length, initial_state)`` in eval
    mode: its compiled step in a ``Scan`` (``rnnkit.convert._onnx_cells``' docstring: inputs ``input``
    ``(batch, max_time, depth)``, ``state_0 ...``, ``sequence_lens``; outputs ``output``, ``state_out_0 ...``, the
    state leaves in TF's flattened order). ``input_size``: the depth of its inputs, for a cell not built yet;
    ``time_major``: ``(max_time, batch, depth)`` inputs and outputs, as ``dynamic_rnn``'s. ``implementation`` must be
    ``"auto"`` or ``"scan"``. An op of the step with no ONNX translation raises ``NotImplementedError`` naming it.

    ``path``: where to write it (``None``: only return it). ``sequence_lens``: add the ``sequence_lens``
    input (``int32 (batch,)``, rnnkit's ``lengths=``). ``initial_states``: add ``h_0`` (and ``c_0``) inputs
    (``False``: zeros). ``implementation``: ``"native"`` (ONNX ``LSTM``/``GRU``/``RNN`` ops; options they
    cannot compute raise ``ValueError`` naming them), ``"scan"`` (a ``Scan`` over rnnkit's step, for every
    option) or ``"auto"`` (native when possible). ``opset``: 14 or newer (17 by default; ``layer_norm``
    needs 17). Graph inputs, outputs and semantics: see the module docstring. The export is the inference
    function (dropout and recurrent dropout off, zoneout at its expectation), computed in float32.

    Example::

        >>> model = export_onnx(rnnkit.GRU(3, 8, reset_after=False), "gru.onnx", sequence_lens=True)
        >>> [i.name for i in model.graph.input]
        ['input', 'h_0', 'sequence_lens']
        >>> cell = rnnkit.LSTMCell(8, input_size=3, use_peepholes=True)     # or a cell of your own
        >>> model = export_onnx(cell, "cell.onnx", sequence_lens=True)
        >>> [i.name for i in model.graph.input], [o.name for o in model.graph.output]
        (['input', 'state_0', 'state_1', 'sequence_lens'], ['output', 'state_out_0', 'state_out_1'])
    """
    onnx = _onnx()
    if implementation not in ("auto", "native", "scan"):
        raise ValueError(f"export_onnx: implementation must be 'auto', 'native' or 'scan', got {implementation!r}")
    if (
        isinstance(opset, bool)
        or not isinstance(opset, int)
        or not _MIN_OPSET <= opset <= onnx.defs.onnx_opset_version()
    ):
        raise ValueError(
            f"export_onnx: opset must be an int in [{_MIN_OPSET}, {onnx.defs.onnx_opset_version()}], got {opset!r}"
        )
    is_layer = type(layer) in LAYERS.values() or type(layer) in TORCH_NN_LAYERS
    if not is_layer and isinstance(layer, RNNCell):
        if implementation == "native":
            name = type(layer).__name__
            raise ValueError(f"export_onnx: a cell ({name}) exports as a Scan, not implementation='native'")
        return export_cell(
            layer, path, input_size=input_size, time_major=bool(time_major), sequence_lens=sequence_lens,
            initial_states=initial_states, opset=opset,
        )  # fmt: skip
    if not is_layer:
        raise TypeError(
            "export_onnx: expected an rnnkit.RNN/LSTM/GRU or torch.nn.RNN/LSTM/GRU layer or an rnnkit.RNNCell, "
            f"got {type(layer).__name__}"
        )
    if input_size is not None or time_major:
        raise ValueError(
            "export_onnx: input_size= and time_major= are for cells; a layer has its input_size and batch_first"
        )
    layer_config = layer_description(layer)
    config = LayerConfig.from_module(layer)
    zoneout = float(getattr(layer, "zoneout", 0.0))
    blockers = scan_only_options(layer)
    if implementation == "native" and blockers:
        raise ValueError(
            f"export_onnx: no native ONNX {config.mode} operator computes " + "; ".join(blockers)
            + ". Export with implementation='scan' (or 'auto'), which runs rnnkit's step in an ONNX Scan"
        )  # fmt: skip
    use_scan = implementation == "scan" or (implementation == "auto" and bool(blockers))
    if use_scan and config.layer_norm and opset < 17:
        raise ValueError(f"export_onnx: layer_norm needs ONNX's LayerNormalization, opset 17 or newer; got {opset}")
    state = check_state_dict(layer.state_dict(), config, "export_onnx")
    batch_first = bool(layer.batch_first)
    d, p, h = config.num_directions, config.output_size, config.hidden_size
    stacked = config.num_layers * d

    g = Graph()
    time_batch = ["batch", "seq_len"] if batch_first else ["seq_len", "batch"]
    inputs = [value_info("input", [*time_batch, config.input_size])]
    x = g.op("Transpose", ["input"], perm=[1, 0, 2]) if batch_first else "input"  # [T, B, I]
    states: dict[str, str | None] = {"h_0": None, "c_0": None}
    if initial_states:
        states["h_0"] = "h_0"
        inputs.append(value_info("h_0", [stacked, "batch", p]))
        if config.mode == "LSTM":
            states["c_0"] = "c_0"
            inputs.append(value_info("c_0", [stacked, "batch", h]))
    lens = lens64 = mask = None
    if sequence_lens:
        lens = "sequence_lens"
        inputs.append(value_info(lens, ["batch"], onnx.TensorProto.INT32))
        if use_scan:
            lens64 = g.op("Cast", [lens], to=onnx.TensorProto.INT64)
            steps = g.op("Gather", [g.op("Shape", [x]), g.ints(0)], axis=0)  # scalar T
            t = g.op("Range", [g.ints(0), steps, g.ints(1)])  # [T]
            valid = g.op("Less", [g.op("Unsqueeze", [t, g.ints([1])]), g.op("Unsqueeze", [lens64, g.ints([0])])])
            mask = g.op("Unsqueeze", [valid, g.ints([2])])  # [T, B, 1] bool: step t of sequence b is real

    finals: dict[str, list[str]] = {"h": [], "c": []}
    if use_scan:
        for k in range(config.num_layers):
            outputs = []
            for reverse in config.directions():
                step = Step(g, config, direction_params(state, k, reverse), k, reverse)
                initial = {}
                for name, size in (("h", p), ("c", h)):
                    whole = states.get(f"{name}_0")
                    if whole is not None:
                        initial[name] = g.op("Gather", [whole, g.ints(k * d + int(reverse))], axis=0)  # [B, size]
                    else:
                        initial[name] = zeros(g, x, size)
                y, final = scan_direction(g, step, x, k, reverse, mask, lens64, initial, zoneout)
                outputs.append(y)
                for name, value in zip(("h", "c"), final, strict=False):
                    finals[name].append(g.op("Unsqueeze", [value, g.ints([0])]))  # [1, B, size]
            x = outputs[0] if d == 1 else g.op("Concat", outputs, axis=2)  # [T, B, D*P]
    else:
        for k, op in enumerate(torch_to_onnx(state, config)):
            x, final = native_layer(g, x, op, k, lens, states, d)
            for name, value in zip(("h", "c"), final, strict=False):
                finals[name].append(value)  # [D, B, size]

    out = g.op("Transpose", [x], perm=[1, 0, 2]) if batch_first else x
    g.nodes.append(onnx.helper.make_node("Identity", [out], ["output"]))
    outputs = [value_info("output", [*time_batch, d * p])]
    for name, size in (("h", p), ("c", h)):
        if finals[name]:
            parts = finals[name]
            whole = parts[0] if len(parts) == 1 else g.op("Concat", parts, axis=0)
            g.nodes.append(onnx.helper.make_node("Identity", [whole], [f"{name}_n"]))
            outputs.append(value_info(f"{name}_n", [stacked, "batch", size]))

    graph = onnx.helper.make_graph(g.nodes, f"rnnkit_{config.mode.lower()}", inputs, outputs, g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="rnnkit")
    model.ir_version = onnx.helper.find_min_ir_version_for(opsets)
    export = {"implementation": "scan" if use_scan else "native", "forget_bias_folded": not use_scan}
    export["layer_config"] = config.to_dict()
    onnx.helper.set_model_props(
        model, {"rnnkit.config": json.dumps(layer_config, sort_keys=True), "rnnkit.export": json.dumps(export)}
    )
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model


# -- reading back --------------------------------------------------------------------------------------------
_NATIVE = ("LSTM", "GRU", "RNN")


def read_onnx(source: Any) -> tuple[dict[str, torch.Tensor], LayerConfig]:
    """An ONNX model's recurrent stack -> the torch layout ``(state_dict, LayerConfig)``.

    ``source``: a path or an ``onnx.ModelProto``. Native ``LSTM``/``GRU``/``RNN`` nodes (any producer's; one per
    layer, in graph order, weights as initializers) go through `onnx_to_torch` (a folded forget bias stays
    folded); a model `export_onnx` wrote with ``Scan`` gives back its torch-named weights and full config.

    Example::

        >>> _ = export_onnx(torch.nn.LSTM(3, 4), "lstm.onnx")
        >>> state, cfg = read_onnx("lstm.onnx")
        >>> cfg.mode, cfg.hidden_size
        ('LSTM', 4)
    """
    onnx = _onnx()
    model = _load_model(source)
    props = {p.key: p.value for p in model.metadata_props}
    initializers = {t.name: t for t in model.graph.initializer}
    export = json.loads(props.get("rnnkit.export", "{}"))
    if export.get("implementation") == "cell":
        raise ValueError(
            f"read_onnx: the model is the step of a cell ({export.get('cell')}) exported by export_onnx, not a layer; "
            "rnnkit reads back layers only"
        )
    if export.get("implementation") == "scan":
        config = LayerConfig.from_dict(export["layer_config"])
        missing = [k for k in config.parameter_shapes() if k not in initializers]
        if missing:
            raise ValueError(f"read_onnx: the rnnkit Scan export lacks the initializers {missing}")
        state = {
            k: torch.from_numpy(onnx.numpy_helper.to_array(initializers[k]).copy()) for k in config.parameter_shapes()
        }
        return check_state_dict(state, config, "read_onnx"), config
    nodes = [n for n in model.graph.node if n.op_type in _NATIVE]
    if not nodes:
        found = sorted({n.op_type for n in model.graph.node})
        raise ValueError(f"read_onnx: the model has no LSTM, GRU or RNN operator (operators: {found})")
    ops = []
    for k, node in enumerate(nodes):
        attributes = {}
        for attribute in node.attribute:
            value = onnx.helper.get_attribute_value(attribute)
            if isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list):
                value = [v.decode() if isinstance(v, bytes) else v for v in value]
            attributes[attribute.name] = value
        if attributes.get("layout", 0):
            raise ValueError(f"read_onnx: node {k} ({node.op_type}) has layout=1; rnnkit reads layout=0 operators")
        weights = {}
        positions = {"W": 1, "R": 2, "B": 3, "P": 7}
        for role, position in positions.items():
            if position < len(node.input) and node.input[position]:
                name = node.input[position]
                if name not in initializers:
                    raise ValueError(
                        f"read_onnx: node {k} ({node.op_type}) reads its {role} from {name!r}, which is computed, "
                        "not an initializer; rnnkit reads constant weights"
                    )
                weights[role] = torch.from_numpy(onnx.numpy_helper.to_array(initializers[name]).copy())
        ops.append(OnnxRecurrentOp(node.op_type, attributes, weights))
    return onnx_to_torch(ops)


def load_onnx(source: Any) -> torch.nn.Module:
    """An ``rnnkit.RNN/LSTM/GRU`` (eval mode) from an ONNX model: weights by `read_onnx`, and the layer's other
    options (``batch_first``, ``zoneout`` ...) from the metadata `export_onnx` writes (defaults otherwise).

    Example::

        >>> _ = export_onnx(rnnkit.GRU(3, 4, batch_first=True), "gru.onnx")
        >>> layer = load_onnx("gru.onnx")
        >>> type(layer).__name__, layer.batch_first
        ('GRU', True)
    """
    model = _load_model(source)
    state, config = read_onnx(model)
    props = {p.key: p.value for p in model.metadata_props}
    args = dict(json.loads(props["rnnkit.config"]).get("args", {})) if "rnnkit.config" in props else {}
    args = {k: v for k, v in args.items() if k in ("batch_first", "dropout", "recurrent_dropout", "zoneout")}
    return layer_from_state_dict(state, config, **args)
