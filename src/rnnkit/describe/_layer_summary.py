"""``summary`` of a torch.nn-style recurrent layer (torch's ``RNN``/``LSTM``/``GRU`` or rnnkit's): parameters,
shapes, states and notes, in torch.nn's vocabulary."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._table import PROBE_STEPS, StackLayer, Summary, checked_rows, lstm_count_notes, meta_forward, shape_of
from .formulas import LAYER_GATES, layer_rows

__all__ = ["layer_mode", "layer_summary"]

_TORCH_GATES = {
    "rnn": "One block, no gates: h' = tanh(W_ih x + b_ih + W_hh h + b_hh).",
    "lstm": "Gate blocks: rows i|f|g|o = input gate, forget gate, cell candidate, output gate "
    "(TF's kernel columns are i|j|f|o, j being the candidate).",
    "gru": "Gate blocks: rows r|z|n = reset, update, new.",
}



def layer_mode(module: Any) -> str | None:
    """``"rnn"``, ``"lstm"`` or ``"gru"`` for a torch.nn-style recurrent layer (torch's or rnnkit's), else None."""
    for cls, mode in ((nn.LSTM, "lstm"), (nn.GRU, "gru"), (nn.RNN, "rnn")):
        if isinstance(module, cls):
            return mode
    name = type(module).__name__.lower()
    if isinstance(module, nn.Module) and name in LAYER_GATES and hasattr(module, "hidden_size"):
        return name
    return None


def layer_summary(module: nn.Module, mode: str, input_shape: tuple[int, ...], title: str | None) -> Summary:
    component = "summary"
    i, h, n = module.input_size, module.hidden_size, module.num_layers
    dirs = 2 if module.bidirectional else 1
    proj = getattr(module, "proj_size", 0) or 0
    batch_first = bool(getattr(module, "batch_first", False))
    if len(input_shape) == 2:
        (steps, feat), batch = input_shape, None
    elif len(input_shape) == 3:
        steps, batch, feat = (input_shape[1], input_shape[0], input_shape[2]) if batch_first else input_shape
    else:
        raise ValueError(
            f"{component}: a {type(module).__name__} takes input_shape "
            f"{'(batch, seq_len, input_size)' if batch_first else '(seq_len, batch, input_size)'} "
            f"or unbatched (seq_len, input_size), got {input_shape}"
        )
    if feat != i:
        raise ValueError(f"{component}: {type(module).__name__} has input_size={i}, got input_shape {input_shape}")
    extras = {k: bool(getattr(module, k, False)) for k in ("peepholes", "layer_norm")}  # rnnkit.LSTM's options
    rows = layer_rows(mode, i, h, n, dirs == 2, proj, bool(getattr(module, "bias", True)), **extras)
    rows = checked_rows(rows, module, component)
    dtype = next(module.parameters()).dtype
    time_dim = 1 if batch_first and batch is not None else 0
    probe = list(input_shape)
    probe[time_dim] = min(steps, PROBE_STEPS)
    out, state = meta_forward(module, lambda m, x: m(x), torch.zeros(probe, dtype=dtype, device="meta"))
    out_shape = list(out.shape)
    out_shape[time_dim] = steps
    out = out.new_empty(out_shape)  # the time axis back at full length
    h_n, c_n = state if mode == "lstm" else (state, None)

    out_sym = "proj_size" if proj else "hidden_size"
    b = "" if batch is None else "batch, "
    seq = f"({b}seq_len" if batch_first else "(seq_len" + (", batch" if batch is not None else "")
    stack = "num_layers*num_directions" if dirs == 2 else "num_layers"
    feat_out = f"num_directions*{out_sym}" if dirs == 2 else out_sym
    shapes = [
        ("input", f"{seq}, input_size)", input_shape),
        ("output", f"{seq}, {feat_out})", shape_of(out)),
        ("h_0 / h_n", f"({stack}{', batch' if batch is not None else ''}, {out_sym})", shape_of(h_n)),
    ]
    if c_n is not None:
        shapes.append(("c_0 / c_n", f"({stack}{', batch' if batch is not None else ''}, hidden_size)", shape_of(c_n)))
    bsz = batch or 1
    out_w = proj or h
    state_text = f"h {(bsz, out_w)}" + (f", c {(bsz, h)}" if mode == "lstm" else "")
    layers = [
        StackLayer(f"{mode.upper()} l{k}", (bsz, i if k == 0 else dirs * out_w), (bsz, dirs * out_w), state_text)
        for k in range(n)
    ]
    state_lines = [
        f"State: {'(h_n, c_n)' if mode == 'lstm' else 'h_n'}; h_n[k*num_directions + d] is layer k, direction d "
        f"(0 forward, 1 backward) after the last step; h_n.view({n}, {dirs}, "
        f"{'' if batch is None else f'{batch}, '}{out_w}) separates them."
    ]
    if dirs == 2:
        state_lines.append(
            f"  output[..., :{out_w}] is the forward direction, output[..., {out_w}:] the backward one; "
            "the backward h_n is its state after reading the whole sequence backwards (the output at time 0)."
        )
    options = [f"{i}, {h}, {n}"] + [f"{k}={v}" for k, v in (("bidirectional", dirs == 2), ("proj_size", proj)) if v]
    notes = [_TORCH_GATES[mode]]
    if mode == "lstm":
        notes += ["", *lstm_count_notes(i, h)]
    elif mode == "gru" and getattr(module, "reset_after", True) is False:
        notes += [
            "reset_after=False: TF1's GRUCell math, n = tanh(W_in x + b_in + W_hn (r*h) + b_hn), in torch's layout."
        ]
    elif mode == "gru":
        notes += [
            "Reset after (torch, cuDNN): n = tanh(W_in x + b_in + r*(W_hn h + b_hn)).",
            f"torch's GRU has 3H(I+H)+6H = {3 * h * (i + h) + 6 * h:,} parameters per layer, TF's GRUCell "
            f"3H(I+H)+3H = {3 * h * (i + h) + 3 * h:,}: b_hn sits inside r*(W_hn h + b_hn), so torch's second "
            "bias is not redundant, and the two GRUs are different functions.",
        ]
    else:
        notes += [
            f"torch's RNN has H(I+H)+2H = {h * (i + h) + 2 * h:,} parameters per layer, TF's BasicRNNCell "
            f"(I+H)H+H = {(i + h) * h + h:,}: the two biases are only ever added (one is redundant).",
        ]
    title = title or f"{mode.upper()}({', '.join(options)})  [torch.nn vocabulary]"
    return Summary(title, "torch", rows, shapes, state_lines, notes, layers, steps, bsz, dirs)
