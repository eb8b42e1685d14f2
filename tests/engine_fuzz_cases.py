"""Random, seeded configurations for the engine's differential fuzz tests (``test_engine_fuzz.py``).

A case is a plain dict (printable in a failure message) drawn from ``random.Random(seed)``; ``build_*`` turns it into
modules and leaf tensors with ``torch.manual_seed(seed)``, so that every path sees the very same objects.

* ``layer_case``: ``rnnkit.LSTM/GRU/RNN`` with random options and input (padded, ``lengths=``, PackedSequence,
  unbatched; T = 0 and lengths 0 and T included; ``h_0`` given or omitted).
* ``tf_case``: a random tree of TF cells (leaves, ``MultiRNNCell``, ``DropoutWrapper``, ``ResidualWrapper``) under one
  of TF's runners.
* ``LAYER_FAULTS`` / ``TF_FAULTS``: ways to make a valid case's input bad.
"""

from __future__ import annotations

import random
from typing import Any

import torch

import rnnkit as rk
from rnnkit._structure import map_structure

DTYPES = {"f64": torch.float64, "f32": torch.float32}


# ---- rnnkit.LSTM / GRU / RNN -------------------------------------------------------------------------------


def layer_case(seed: int, torch_math: bool = False) -> dict[str, Any]:
    """A random layer configuration and input; ``torch_math``: only what ``torch.nn`` can also run."""
    rng = random.Random(seed)
    mode = rng.choice(["LSTM", "GRU", "RNN"])
    hidden, layers = rng.randint(1, 6), rng.choice([1, 1, 2, 3])
    opts: dict[str, Any] = {"bias": rng.random() < 0.85, "batch_first": rng.random() < 0.5,
                            "bidirectional": rng.random() < 0.4}  # fmt: skip
    if layers > 1 and rng.random() < 0.3:
        opts["dropout"] = rng.choice([0.25, 0.5])
    if mode == "LSTM":
        if hidden > 1 and rng.random() < 0.3:
            opts["proj_size"] = rng.randint(1, hidden - 1)
        if not torch_math:
            if rng.random() < 0.3:
                opts["forget_bias"] = rng.choice([1.0, -0.5])
            if rng.random() < 0.2 and hidden > 1:  # (a layer norm over 1 unit is degenerate: see below)
                opts["layer_norm"] = True
            else:
                opts["peepholes"] = rng.random() < 0.3
                if rng.random() < 0.3:
                    opts["cell_clip"] = rng.choice([0.05, 0.3, 2.0])
    elif mode == "GRU":
        opts["reset_after"] = torch_math or rng.random() < 0.5
    else:
        opts["nonlinearity"] = rng.choice(["tanh", "relu"])
    if not torch_math:
        for name in ("recurrent_dropout", "zoneout"):
            if rng.random() < 0.2:
                opts[name] = rng.choice([0.2, 0.5])
    kind = rng.choice(["padded", "lengths", "lengths", "packed", "unbatched"])
    steps = rng.choice([0, 1, 2, 3, 4, 5, 6]) if not torch_math else rng.randint(1, 6)
    batch = 1 if kind == "unbatched" else rng.randint(1, 9)
    lengths = None
    if kind == "packed" and steps == 0:
        kind = "padded"  # a PackedSequence holds at least one step
    if kind in ("lengths", "packed"):
        low = 1 if (kind == "packed" or torch_math) else 0  # torch packs no empty sequence
        lengths = [rng.randint(low, steps) for _ in range(batch)]
        lengths[rng.randrange(batch)] = steps  # the full length, and (when allowed) an empty sequence
        if low == 0 and batch > 1 and rng.random() < 0.5:
            lengths[rng.randrange(batch)] = 0
    if kind == "unbatched" and rng.random() < 0.3 and not torch_math:
        lengths = rng.randint(0, steps)  # a scalar length for unbatched input
    return {"seed": seed, "mode": mode, "input_size": rng.randint(1, 5), "hidden_size": hidden, "num_layers": layers,
            "opts": opts, "dtype": rng.choice(list(DTYPES)), "kind": kind, "steps": steps, "batch": batch,
            "lengths": lengths, "hx": rng.random() < 0.5}  # fmt: skip


def make_layer(case: dict[str, Any]) -> torch.nn.Module:
    """The case's ``rnnkit`` layer, every parameter perturbed so that each one matters."""
    torch.manual_seed(case["seed"])
    cls = {"LSTM": rk.LSTM, "GRU": rk.GRU, "RNN": rk.RNN}[case["mode"]]
    layer = cls(case["input_size"], case["hidden_size"], case["num_layers"], dtype=DTYPES[case["dtype"]],
                **case["opts"])  # fmt: skip
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return layer


def hidden_shapes(layer: Any, batch: int | None) -> list[tuple[int, ...]]:
    """The shapes of ``h_0`` (and ``c_0``): ``(L * D, [batch,] size)``."""
    stacked = layer.num_layers * (2 if layer.bidirectional else 1)
    sizes = [layer.proj_size or layer.hidden_size, layer.hidden_size] if layer.mode == "LSTM" else [layer.hidden_size]
    return [(stacked, size) if batch is None else (stacked, batch, size) for size in sizes]


def layer_inputs(case: dict[str, Any], layer: Any) -> dict[str, Any]:
    """Leaf tensors: ``x`` as the layer takes it (before any packing) and ``hx`` (a list, empty when omitted)."""
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    dtype = DTYPES[case["dtype"]]
    steps, batch, depth = case["steps"], case["batch"], case["input_size"]
    if case["kind"] == "unbatched":
        shape: tuple[int, ...] = (steps, depth)
    else:
        shape = (batch, steps, depth) if case["opts"].get("batch_first") else (steps, batch, depth)
    x = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_()
    hx = []
    if case["hx"]:
        unbatched = case["kind"] == "unbatched"
        hx = [(0.5 * torch.randn(s, generator=gen, dtype=dtype)).requires_grad_()
              for s in hidden_shapes(layer, None if unbatched else batch)]  # fmt: skip
    return {"x": x, "hx": hx, "lengths": case["lengths"], "kind": case["kind"]}


# ---- TF cells and runners ------------------------------------------------------------------------------------

RUNNERS = ["dynamic_rnn", "dynamic_rnn", "bidirectional_dynamic_rnn", "stack_bidirectional_dynamic_rnn",
           "static_rnn", "static_bidirectional_rnn"]  # fmt: skip


def _leaf(rng: random.Random, units: int | None = None, flat_state: bool = False) -> tuple[list, int]:
    """A random leaf cell description and its output size (``units``: force that output size)."""
    kind = rng.choice(["BasicRNNCell", "BasicLSTMCell", "LSTMCell", "LSTMCell", "GRUCell", "LayerNormBasicLSTMCell"])
    if kind == "LayerNormBasicLSTMCell" and (flat_state or units == 1):
        kind = "BasicLSTMCell"  # its state is always a tuple; over one unit its layer norm is degenerate (below)
    n = rng.randint(1 if kind != "LayerNormBasicLSTMCell" else 2, 6)
    kw: dict[str, Any] = {}
    if kind == "BasicRNNCell":
        kw["activation"] = rng.choice(["tanh", "relu"])
    elif kind in ("BasicLSTMCell", "LSTMCell"):
        kw["forget_bias"] = rng.choice([1.0, 0.0, 0.4])
        kw["state_is_tuple"] = not flat_state and rng.random() < 0.8
    if kind == "LSTMCell" and rng.random() < 0.5:  # a projection, num_proj == num_units too
        kw["num_proj"] = rng.choice([rng.randint(1, 6), n]) if units is None else units
        if rng.random() < 0.4:
            kw["proj_clip"] = rng.choice([0.2, 1.0])
    if kind == "LSTMCell":
        kw["use_peepholes"] = rng.random() < 0.4
        if rng.random() < 0.3:
            kw["cell_clip"] = rng.choice([0.1, 0.5, 2.0])
    if units is not None and "num_proj" not in kw:
        n = units  # the output size is forced (a residual adds the inputs)
    if kind == "LayerNormBasicLSTMCell":
        # (Over one unit x - mean(x) is 0 and 1 / sqrt(var + 1e-12) = 1e6 amplifies each path's rounding: torch's
        # own layer_norm backward then returns gradients of order 1 where the exact ones are 0. Not a test of paths.)
        kw["forget_bias"] = rng.choice([1.0, 0.3])
        kw["layer_norm"] = rng.random() < 0.75
        if kw["layer_norm"]:
            kw["norm_gain"], kw["norm_shift"] = rng.choice([(1.0, 0.0), (1.3, 0.1)])
        if rng.random() < 0.2:
            kw["dropout_keep_prob"] = 0.7  # per-step dropout in training: the reference loop
    return [kind, n, kw], kw.get("num_proj", n)


def cell_tree(rng: random.Random, depth: int, level: int = 0, flat_state: bool = False) -> tuple[list, int]:
    """A random cell description for inputs of ``depth`` and its output size."""
    roll = rng.random() if level < 2 else 1.0
    if roll < 0.2:
        flat = rng.random() < 0.3 or flat_state
        layers, d = [], depth
        for _ in range(rng.randint(1, 3)):
            sub, d = cell_tree(rng, d, level + 1, flat)
            layers.append(sub)
        return ["MultiRNNCell", layers, {"state_is_tuple": not flat}], d
    if roll < 0.35:
        inner, out = cell_tree(rng, depth, level + 1, flat_state)
        keep = {k: rng.choice([1.0, 1.0, 0.6, 0.9]) for k in ("input_keep_prob", "output_keep_prob", "state_keep_prob")}
        return ["DropoutWrapper", inner, {**keep, "variational_recurrent": rng.random() < 0.6}], out
    if roll < 0.45:
        inner, out = _leaf(rng, units=depth, flat_state=flat_state)  # the residual adds inputs to outputs
        return ["ResidualWrapper", inner], out
    return _leaf(rng, flat_state=flat_state)


def make_cell(desc: list) -> Any:
    kind = desc[0]
    if kind == "MultiRNNCell":
        return rk.MultiRNNCell([make_cell(d) for d in desc[1]], **desc[2])
    if kind == "DropoutWrapper":
        return rk.DropoutWrapper(make_cell(desc[1]), **desc[2])
    if kind == "ResidualWrapper":
        return rk.ResidualWrapper(make_cell(desc[1]))
    return getattr(rk, kind)(desc[1], **desc[2])


def tf_case(seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    runner = rng.choice(RUNNERS)
    depth, static = rng.randint(1, 5), runner.startswith("static")
    steps, batch = rng.choice([0, 1, 2, 3, 4, 5, 6]) if not static else rng.randint(1, 6), rng.randint(1, 9)
    if runner == "stack_bidirectional_dynamic_rnn":
        fw, bw, d = [], [], depth
        for _ in range(rng.randint(1, 3)):
            f, out_f = cell_tree(rng, d, level=1)
            b, out_b = cell_tree(rng, d, level=1)
            fw.append(f)
            bw.append(b)
            d = out_f + out_b
        cells = [fw, bw]
    else:
        cells = [cell_tree(rng, depth)[0]]
        if "bidirectional" in runner:
            cells.append(cell_tree(rng, depth)[0])
    lengths = None
    if rng.random() < 0.5:
        lengths = [rng.randint(0, steps) for _ in range(batch)]
        lengths[rng.randrange(batch)] = steps
    return {"seed": seed, "runner": runner, "cells": cells, "depth": depth, "steps": steps, "batch": batch,
            "lengths": lengths, "time_major": static or rng.random() < 0.4, "state": rng.random() < 0.5,
            "dtype": rng.choice(list(DTYPES))}  # fmt: skip


def make_tf(case: dict[str, Any]) -> tuple[list, dict[str, Any]]:
    """The case's cells (built, perturbed) as a flat list in runner order, and the leaf inputs."""
    torch.manual_seed(case["seed"])
    dtype, batch = DTYPES[case["dtype"]], case["batch"]
    if case["runner"] == "stack_bidirectional_dynamic_rnn":
        cells = [[make_cell(d) for d in side] for side in case["cells"]]
        d = case["depth"]
        for f, b in zip(*cells, strict=True):
            f.build(d)
            b.build(d)
            d = f.output_size + b.output_size
        flat = cells[0] + cells[1]
    else:
        flat = [make_cell(d) for d in case["cells"]]
        for c in flat:
            c.build(case["depth"])
    for c in flat:
        c.to(dtype)
        with torch.no_grad():
            for p in c.parameters():
                p.add_(0.3 * torch.randn_like(p))
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    shape = (case["steps"], batch, case["depth"])
    if not case["time_major"]:
        shape = (batch, case["steps"], case["depth"])
    x = torch.randn(shape, generator=gen, dtype=dtype).requires_grad_()

    def state_of(cell):
        return map_structure(lambda s: (0.5 * torch.randn(s.shape, generator=gen, dtype=dtype)).requires_grad_(),
                             cell.zero_state(batch, dtype))  # fmt: skip

    states = [state_of(c) for c in flat] if case["state"] else None
    return flat, {"x": x, "states": states, "lengths": case["lengths"]}


def run_tf(case: dict[str, Any], cells: list, x: torch.Tensor, states: Any, lengths: Any, **extra: Any):
    """Run the case's runner -> ``(outputs, final states)``, outputs as one tensor (static lists stacked)."""
    runner, tm = case["runner"], case["time_major"]
    fw = states[0] if states else None
    bw = states[1] if states and len(states) > 1 else None
    if runner == "dynamic_rnn":
        return rk.dynamic_rnn(cells[0], x, lengths, fw, time_major=tm, **extra)
    if runner == "bidirectional_dynamic_rnn":
        outs, finals = rk.bidirectional_dynamic_rnn(cells[0], cells[1], x, lengths, fw, bw, time_major=tm, **extra)
        return torch.cat(outs, -1), finals
    if runner == "stack_bidirectional_dynamic_rnn":
        n = len(cells) // 2
        s_fw, s_bw = (states[:n], states[n:]) if states else (None, None)
        out, f, b = rk.stack_bidirectional_dynamic_rnn(cells[:n], cells[n:], x, s_fw, s_bw, sequence_length=lengths,
                                                       time_major=tm, **extra)  # fmt: skip
        return out, (f, b)
    steps = list(x.unbind(0)) if x.dim() == 3 else x  # static: a list of (B, D), one per step (x is time-major)
    if runner == "static_rnn":
        outs, final = rk.static_rnn(cells[0], steps, fw, sequence_length=lengths, **extra)
        return torch.stack(outs), final
    outs, f, b = rk.static_bidirectional_rnn(cells[0], cells[1], steps, fw, bw, sequence_length=lengths, **extra)
    return torch.stack(outs), (f, b)


# ---- bad input -------------------------------------------------------------------------------------------

#: Faults for a layer case: each a function of (case, rng) -> a new case, or of the built inputs (see the test).
LAYER_FAULTS = ["input_size", "rank", "int_input", "dtype_input", "dtype_hx", "hx_batch", "hx_layers", "hx_size",
                "hx_not_tuple", "lengths_high", "lengths_negative", "lengths_shape", "lengths_float", "packed_lengths",
                "batch0", "steps0", "cell_clip_nan", "cell_clip_inf", "forget_bias_nan"]  # fmt: skip
TF_FAULTS = ["depth", "rank", "dtype_input", "dtype_state", "state_batch", "state_size", "state_structure",
             "lengths_high", "lengths_negative", "lengths_shape", "lengths_float", "dtype_arg", "batch0", "steps0",
             "cell_clip_nan", "proj_clip_nan", "cell_clip_inf"]  # fmt: skip


def _other(dtype: str) -> torch.dtype:
    return DTYPES["f32" if dtype == "f64" else "f64"]


def fault_layer_case(case: dict[str, Any], fault: str) -> dict[str, Any]:
    """The changes a fault makes before the layer is built (sizes and options)."""
    case = {**case, "fault": fault, "opts": dict(case["opts"])}
    if fault in ("batch0", "steps0"):
        case["kind"] = "lengths" if case["kind"] == "lengths" else "padded"
        case["batch" if fault == "batch0" else "steps"] = 0
        case["lengths"] = [0] * case["batch"] if case["kind"] == "lengths" else None
    if fault in ("cell_clip_nan", "cell_clip_inf", "forget_bias_nan"):
        case["mode"] = "LSTM"
        for name in ("reset_after", "nonlinearity", "layer_norm"):
            case["opts"].pop(name, None)
        key, value = ("forget_bias", "nan") if fault == "forget_bias_nan" else ("cell_clip", fault[len("cell_clip_"):])
        case["opts"][key] = float(value)
    if fault == "packed_lengths" and case["steps"] and case["kind"] != "unbatched":
        case["kind"], case["lengths"] = "packed", [case["steps"]] * case["batch"]
    return case


def fault_layer_inputs(inputs: dict[str, Any], fault: str, case: dict[str, Any], layer: Any) -> dict[str, Any]:
    """The changes a fault makes to a built case's inputs."""
    rng = random.Random(case["seed"] + 2)
    x, hx, lengths = inputs["x"], list(inputs["hx"]), inputs["lengths"]
    unbatched = case["kind"] == "unbatched"
    dtype = DTYPES[case["dtype"]]
    if fault in ("dtype_hx", "hx_batch", "hx_layers", "hx_size", "hx_not_tuple") and not hx:
        hx = [torch.zeros(s, dtype=dtype) for s in hidden_shapes(layer, None if unbatched else case["batch"])]
    pick = rng.randrange(len(hx)) if hx else 0
    if fault == "input_size":
        x = torch.randn(*x.shape[:-1], x.shape[-1] + 1, dtype=dtype)
    elif fault == "rank":
        x = x.detach()[..., None] if rng.random() < 0.5 else x.detach().reshape(-1)
    elif fault == "int_input":
        x = x.detach().to(torch.int64)
    elif fault == "dtype_input":
        x = x.detach().to(_other(case["dtype"]))
    elif fault == "dtype_hx":
        hx[pick] = hx[pick].detach().to(_other(case["dtype"]))
    elif fault in ("hx_batch", "hx_layers", "hx_size"):
        dim = {"hx_batch": 1, "hx_layers": 0, "hx_size": -1}[fault]
        if unbatched and dim == 1:
            dim = 0
        shape = list(hx[pick].shape)
        shape[dim] += 1
        hx[pick] = torch.zeros(shape, dtype=dtype)
    elif fault == "hx_not_tuple":
        hx = [hx[0]] if len(hx) == 2 else [hx[0], hx[0]]
        inputs = {**inputs, "hx_as_tuple": len(hx) == 2}
    elif fault.startswith("lengths_"):
        steps, batch = case["steps"], case["batch"]
        good = [steps] * batch
        bad = {"lengths_high": [steps + 1] + good[1:], "lengths_negative": [-1] + good[1:],
               "lengths_shape": good + [steps], "lengths_float": [float(v) for v in good]}[fault]  # fmt: skip
        lengths = bad[0] if unbatched and fault != "lengths_shape" else bad
        inputs = {**inputs, "kind": "lengths" if inputs["kind"] == "packed" else inputs["kind"]}
    elif fault == "packed_lengths" and inputs["kind"] == "packed":
        inputs = {**inputs, "extra_lengths": lengths}
    return {**inputs, "x": x, "hx": hx, "lengths": lengths}


def _leaves(desc: list) -> list[list]:
    if desc[0] == "MultiRNNCell":
        return [leaf for d in desc[1] for leaf in _leaves(d)]
    if desc[0] in ("DropoutWrapper", "ResidualWrapper"):
        return _leaves(desc[1])
    return [desc]


def fault_tf_case(case: dict[str, Any], fault: str) -> dict[str, Any]:
    """The changes a fault makes before the cells are built (sizes and options)."""
    case = {**case, "fault": fault, "cells": _copy(case["cells"])}
    if fault in ("batch0", "steps0"):
        case["batch" if fault == "batch0" else "steps"] = 0
        case["lengths"] = None
    if fault in ("cell_clip_nan", "proj_clip_nan", "cell_clip_inf"):
        leaves = [leaf for top in case["cells"] for leaf in _leaves(top)]
        lstm = [leaf for leaf in leaves if leaf[0] == "LSTMCell"]
        if not lstm:  # make the first leaf an LSTMCell of the same output size (and a flat state, fit anywhere)
            leaf = leaves[0]
            size = leaf[2].get("num_proj", leaf[1])
            leaf[:] = ["LSTMCell", size, {"state_is_tuple": False}]
            lstm = [leaf]
        for leaf in lstm:
            if fault == "proj_clip_nan":
                leaf[2].setdefault("num_proj", leaf[1])  # num_proj == num_units keeps the output size
                leaf[2]["proj_clip"] = float("nan")
            else:
                leaf[2]["cell_clip"] = float(fault[len("cell_clip_"):])
    return case


def _copy(desc: Any) -> Any:
    if isinstance(desc, list):
        return [_copy(d) for d in desc]
    return dict(desc) if isinstance(desc, dict) else desc


def fault_tf_inputs(inputs: dict[str, Any], fault: str, case: dict[str, Any], cells: list) -> dict[str, Any]:
    """The changes a fault makes to a built case's inputs; ``extra``: keyword arguments for the runner."""
    x, states, lengths, extra = inputs["x"], inputs["states"], inputs["lengths"], {}
    dtype = DTYPES[case["dtype"]]
    batch, steps = case["batch"], case["steps"]
    if fault.startswith("state_") or fault == "dtype_state":
        states = list(states) if states else [c.zero_state(batch, dtype) for c in cells]
        leaves, sizes = _flat(states[0]), _flat(cells[0].state_size)
        if fault == "dtype_state":
            leaves[0] = leaves[0].detach().to(_other(case["dtype"]))
        elif fault == "state_batch":
            leaves[0] = torch.zeros(batch + 1, sizes[0], dtype=dtype)
        elif fault == "state_size":
            leaves[0] = torch.zeros(batch, sizes[0] + 1, dtype=dtype)
        if fault == "state_structure":
            states[0] = (*leaves, torch.zeros(batch, 1, dtype=dtype))
        else:
            states[0] = _pack(cells[0].state_size, leaves)
    if fault == "depth":
        x = torch.randn(*x.shape[:-1], x.shape[-1] + 1, dtype=dtype)
    elif fault == "rank":
        x = x.detach()[..., 0]
    elif fault == "dtype_input":
        x = x.detach().to(_other(case["dtype"]))
    elif fault == "dtype_arg":
        extra["dtype"] = _other(case["dtype"])
    elif fault.startswith("lengths_"):
        good = [steps] * batch
        lengths = {"lengths_high": [steps + 1] + good[1:], "lengths_negative": [-1] + good[1:],
                   "lengths_shape": good + [steps], "lengths_float": [float(v) for v in good]}[fault]  # fmt: skip
    return {**inputs, "x": x, "states": states, "lengths": lengths, "extra": extra}


def _flat(structure: Any) -> list:
    from rnnkit._structure import flatten

    return list(flatten(structure))


def _pack(sizes: Any, leaves: list) -> Any:
    from rnnkit._structure import pack_as

    return pack_as(sizes, leaves)
