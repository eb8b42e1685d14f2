"""Differential fuzzing: every engine path accepts and refuses the same inputs and returns the same results.

Each case (``engine_fuzz_cases``: seeded, so a failing id always replays the same case) runs on every path,
``with rnnkit.engine.use(backend, kernels=k)`` for ``backend`` in auto/torch/fused/reference and ``k`` in
compiled (the C++ extension) / python (its pure-PyTorch twin), and is compared with the oracle, the reference loop:

* the same exception class, or outputs and final states equal (float64: 1e-10, float32: 1e-5, as
  ``|a - b| <= tol * (1 + |b|)``; NaN only where the oracle has NaN) with the same structure (types, shapes,
  a PackedSequence's batch sizes), and gradients of a fixed random projection of all of them with respect to
  the inputs, the initial states and every parameter equal too, in training and in eval mode (training:
  the same seed before each path, so dropout, recurrent dropout and zoneout draw the same masks);
* torch-math layers (``rnnkit.LSTM/GRU/RNN`` with only torch's options) against ``torch.nn.LSTM/GRU/RNN``
  holding the same state dict: the oracle is then torch.nn itself.

``RNNKIT_FUZZ_N=<n>`` runs ``n`` cases per test instead of the default counts.
"""

from __future__ import annotations

import copy
import os
import zlib
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from engine_fuzz_cases import (
    DTYPES,
    LAYER_FAULTS,
    TF_FAULTS,
    fault_layer_case,
    fault_layer_inputs,
    fault_tf_case,
    fault_tf_inputs,
    layer_case,
    layer_inputs,
    make_layer,
    make_tf,
    run_tf,
    tf_case,
)
from rnnkit import engine
from rnnkit._structure import flatten

PATHS = [(b, k) for b in ("reference", "auto", "torch", "fused") for k in ("python", "compiled")]
ORACLE = ("reference", "python")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _count(default: int) -> int:
    return int(os.environ.get("RNNKIT_FUZZ_N") or default)


pytestmark = pytest.mark.filterwarnings(
    # torch says once per process that oneDNN cannot project (its native loop runs): torch's, not rnnkit's.
    "ignore:LSTM with projections is not supported with oneDNN:UserWarning"
)


@dataclass
class Outcome:
    """What one path did: ``values`` (label -> tensor, gradients included) and ``structure``, or ``error``."""

    values: dict[str, torch.Tensor] | None = None
    structure: str = ""
    error: BaseException | None = None

    def describe(self) -> str:
        if self.error is None:
            return "returned " + self.structure
        return f"raised {type(self.error).__name__}: {str(self.error)[:160]}"


def capture(path: tuple[str, str], seed: int, fn: Any) -> Outcome:
    """Run ``fn`` on ``path`` (the same seed first, for dropout masks); an exception is a result too."""
    try:
        with engine.use(*path):
            torch.manual_seed(seed)
            return fn()
    except Exception as error:  # noqa: BLE001 - every path must raise the same class: record, compare
        return Outcome(error=error)


def structure_of(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"{tuple(obj.shape)}:{str(obj.dtype)[6:]}"
    if isinstance(obj, PackedSequence):
        idx = None if obj.sorted_indices is None else obj.sorted_indices.tolist()
        return f"Packed({structure_of(obj.data)}, batch_sizes={obj.batch_sizes.tolist()}, sorted={idx})"
    if isinstance(obj, (tuple, list)):
        return f"{type(obj).__name__}[{', '.join(structure_of(o) for o in obj)}]"
    return type(obj).__name__


def _weight(label: str, like: torch.Tensor) -> torch.Tensor:
    """A fixed random projection per result (the same on every path), so that the loss reaches every value."""
    gen = torch.Generator().manual_seed(zlib.crc32(label.encode()))
    return torch.randn(like.shape, generator=gen, dtype=torch.float64).to(like.dtype)


def outcome(results: dict[str, torch.Tensor], structure: Any, leaves: dict[str, Any]) -> Outcome:
    """``results`` and the gradients of ``sum(w * result)`` with respect to every leaf that requires them."""
    leaves = {k: v for k, v in leaves.items() if isinstance(v, torch.Tensor) and v.requires_grad}
    parts = [(r * _weight(k, r)).sum() for k, r in results.items() if r.requires_grad]
    values = {k: r.detach() for k, r in results.items()}
    grads = [None] * len(leaves)
    if parts:
        grads = torch.autograd.grad(sum(parts), list(leaves.values()), allow_unused=True)
    for (name, leaf), g in zip(leaves.items(), grads, strict=True):
        values[f"grad {name}"] = torch.zeros_like(leaf) if g is None else g  # unused: a zero gradient
    return Outcome(values, structure_of(structure))


def mismatches(got: Outcome, ref: Outcome, tol: float, slack: dict[str, float], ref_name: str) -> list[str]:
    """What ``got`` does differently from ``ref``: ``|a - b| <= tol * (1 + |b|) + slack[label]`` must hold."""
    if got.error is not None or ref.error is not None:
        if type(got.error) is type(ref.error):
            return []
        return [f"{got.describe()}, but {ref_name} {ref.describe()}"]
    if got.structure != ref.structure:
        return [f"returned {got.structure}, but {ref_name} returned {ref.structure}"]
    out = []
    for label, b in ref.values.items():
        a = got.values[label]
        if a.shape != b.shape:
            out.append(f"{label}: shape {tuple(a.shape)} vs {ref_name} {tuple(b.shape)}")
            continue
        a, b = a.double(), b.double()
        nan_a, nan_b = a.isnan(), b.isnan()
        diff = torch.where(nan_a | nan_b, torch.where(nan_a & nan_b, 0.0, float("inf")), (a - b).abs())
        bound = tol * (1 + torch.nan_to_num(b.abs(), posinf=0.0)) + slack.get(label, 0.0)
        if bool((diff > bound).any()):
            where = int((diff - bound).argmax())
            extra = f" + float32 slack {slack[label]:.3g}" if slack.get(label) else ""
            out.append(
                f"{label}: max abs diff {float(diff.max()):.3g} (tol {tol:g}{extra}); at flat index {where}: "
                f"{float(a.flatten()[where]):.10g} vs {ref_name} {float(b.flatten()[where]):.10g}"
            )
    return out


def as_float64(obj: Any) -> Any:
    """A float64 copy of a case's inputs (leaves stay leaves) or modules (deep copies)."""
    if isinstance(obj, torch.nn.Module):
        return copy.deepcopy(obj).double()
    if isinstance(obj, torch.Tensor):
        return obj.detach().double().requires_grad_(obj.requires_grad) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: as_float64(v) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # LSTMStateTuple
        return type(obj)(*(as_float64(o) for o in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(as_float64(o) for o in obj)
    return obj


def precision_slack(seed: int, run32: Any, run64: Any) -> dict[str, float]:
    """float32: 10x the float32 oracle's own error against the same case in float64 (eval mode), per result.

    A well-conditioned case keeps the plain 1e-5; an ill-conditioned one (a layer norm over few units, where
    ``1 / sqrt(var + 1e-12)`` amplifies rounding) is judged by what float32 achieves on the oracle itself.
    """
    a, b = capture(ORACLE, seed, run32), capture(ORACLE, seed, run64)
    if a.error is not None or b.error is not None or a.structure.replace("float32", "float64") != b.structure:
        return {}
    slack = {}
    for label, v in a.values.items():
        err = (v.double() - b.values[label]).abs()
        slack[label] = 10 * float(torch.nan_to_num(err, nan=0.0, posinf=0.0).max()) if err.numel() else 0.0
    return slack


def check_paths(case: dict[str, Any], run: Any, modules: list, inputs: dict[str, Any], oracle: Any = None) -> None:
    """``run(modules, inputs)`` on every path, in eval and training mode, against the oracle (``oracle(modules,
    inputs)`` on the reference path; by default ``run`` itself)."""
    oracle = oracle or run
    seed, dtype = case["seed"], DTYPES[case["dtype"]]
    set_mode(modules, False)
    slack = {}
    if dtype == torch.float32:
        slack = precision_slack(seed, lambda: oracle(modules, inputs),
                                lambda: oracle(as_float64(modules), as_float64(inputs)))  # fmt: skip
    ref_name = "reference" if oracle is run else "torch.nn"
    problems = []
    for mode in ("eval", "train"):
        set_mode(modules, mode == "train")
        ref = capture(ORACLE, seed, lambda: oracle(modules, inputs))
        if oracle is not run:
            assert ref.error is None, f"{ref_name} refused case {case}: {ref.describe()}"
        for path in PATHS:
            if path != ORACLE or oracle is not run:
                got = capture(path, seed, lambda: run(modules, inputs))
                problems += _lines(f"[{mode}] use{path}", mismatches(got, ref, TOL[dtype], slack, ref_name))
    what = "paths disagree" if oracle is run else "rnnkit differs from torch.nn"
    assert not problems, f"{what} on case {case}:\n" + "\n".join(problems)


def _lines(where: str, found: list[str], keep: int = 3) -> list[str]:
    """At most ``keep`` mismatches of one path (the first are the telling ones), and how many more."""
    lines = [f"  {where}: {m}" for m in found[:keep]]
    return lines + ([f"  {where}: ... and {len(found) - keep} more"] if len(found) > keep else [])


def set_mode(modules: list, training: bool) -> None:
    for m in modules:
        m.train(training)


# ---- rnnkit.LSTM / GRU / RNN ---------------------------------------------------------------------------------


def call_layer(layer: Any, inputs: dict[str, Any]) -> Outcome:
    """``layer(input, hx, lengths=)`` as the case says, and its outcome."""
    x, hx, lengths = inputs["x"], inputs["hx"], inputs["lengths"]
    if inputs["kind"] == "packed":
        inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=layer.batch_first, enforce_sorted=False)
        kw = {} if inputs.get("extra_lengths") is None else {"lengths": inputs["extra_lengths"]}
    else:
        inp, kw = x, ({} if lengths is None else {"lengths": lengths})
    if not hx:
        h0 = None
    else:
        h0 = tuple(hx) if (len(hx) == 2 or inputs.get("hx_as_tuple")) else hx[0]
    out, h_n = layer(inp, h0, **kw)
    return _layer_outcome(layer, x, hx, out, out, h_n)


def _layer_outcome(module: torch.nn.Module, x: Any, hx: Any, result: Any, out: Any, h_n: Any) -> Outcome:
    """A layer's ``result`` (its output, or that padded) and ``h_n``, differentiated w.r.t. the input, the
    initial states and the module's parameters."""
    results = {"output": result.data if isinstance(result, PackedSequence) else result}
    results.update({f"h_n[{k}]": t for k, t in enumerate(h_n if isinstance(h_n, tuple) else (h_n,))})
    leaves = {"x": x, **{f"h_0[{k}]": t for k, t in enumerate(hx)}, **dict(module.named_parameters())}
    return outcome(results, (out, h_n), leaves)


@pytest.mark.parametrize("seed", range(_count(80)), ids=lambda s: f"layer{s:03d}")
def test_layer_paths_agree(seed):
    case = layer_case(seed)
    layer = make_layer(case)
    check_paths(case, lambda m, i: call_layer(m[0], i), [layer], layer_inputs(case, layer))


def _torch_nn_twin(case: dict[str, Any], layer: Any) -> torch.nn.Module:
    opts = {k: v for k, v in case["opts"].items() if k != "reset_after"}
    cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN": torch.nn.RNN}[case["mode"]]
    twin = cls(case["input_size"], case["hidden_size"], case["num_layers"], dtype=DTYPES[case["dtype"]], **opts)
    twin.load_state_dict(layer.state_dict())
    return twin


def call_torch_nn(twin: torch.nn.Module, inputs: dict[str, Any]) -> Outcome:
    """torch.nn on the case's input; ``lengths=`` becomes a packed sequence, padded back to the full length."""
    x, hx, lengths = inputs["x"], inputs["hx"], inputs["lengths"]
    bf = twin.batch_first
    if lengths is not None:  # "lengths" or "packed": torch.nn takes variable lengths packed
        inp = pack_padded_sequence(x, torch.tensor(lengths), batch_first=bf, enforce_sorted=False)
    else:
        inp = x
    h0 = None if not hx else (tuple(hx) if len(hx) == 2 else hx[0])
    out, h_n = twin(inp, h0)
    result = out
    if inputs["kind"] == "lengths" and lengths is not None:
        result, _ = pad_packed_sequence(out, batch_first=bf, total_length=x.shape[1 if bf else 0])
        out = result
    return _layer_outcome(twin, x, hx, result, out, h_n)


@pytest.mark.parametrize("seed", range(_count(40)), ids=lambda s: f"torchnn{s:03d}")
def test_torch_math_layers_equal_torch_nn(seed):
    """Layers with only torch's options equal torch.nn with the same state dict, on every path (T >= 1 and no
    empty sequence: torch.nn refuses both)."""
    case = layer_case(10_000 + seed, torch_math=True)
    layer = make_layer(case)
    twin = _torch_nn_twin(case, layer)
    check_paths(case, lambda m, i: call_layer(m[0], i), [layer, twin], layer_inputs(case, layer),
                oracle=lambda m, i: call_torch_nn(m[1], i))  # fmt: skip


# ---- TF cells through TF's runners ---------------------------------------------------------------------------


def call_tf(case: dict[str, Any], cells: list, inputs: dict[str, Any]) -> Outcome:
    x, states = inputs["x"], inputs["states"]
    out, final = run_tf(case, cells, x, states, inputs["lengths"], **inputs.get("extra", {}))
    results = {"output": out, **{f"state[{k}]": t for k, t in enumerate(flatten(final))}}
    leaves = {"x": x, **{f"state_0[{k}]": t for k, t in enumerate(flatten(states) if states else [])}}
    for k, cell in enumerate(cells):
        leaves.update({f"cell{k}.{n}": p for n, p in cell.named_parameters()})
    return outcome(results, (out, final), leaves)


@pytest.mark.parametrize("seed", range(_count(90)), ids=lambda s: f"tf{s:03d}")
def test_tf_runner_paths_agree(seed):
    case = tf_case(20_000 + seed)
    cells, inputs = make_tf(case)
    check_paths(case, lambda m, i: call_tf(case, m, i), cells, inputs)


# ---- bad input: the same refusal everywhere --------------------------------------------------------------------


def _built_or_refused(build: Any) -> Any:
    """Build a case's modules; a refusal at construction is before any path runs, so the same for every path."""
    try:
        return build()
    except (ValueError, TypeError):
        return None


@pytest.mark.parametrize("seed", range(_count(3 * len(LAYER_FAULTS))), ids=lambda s: f"badlayer{s:03d}")
def test_layer_bad_input_same_on_every_path(seed):
    fault = LAYER_FAULTS[seed % len(LAYER_FAULTS)]
    case = fault_layer_case(layer_case(30_000 + seed), fault)
    layer = _built_or_refused(lambda: make_layer(case))
    if layer is not None:
        inputs = fault_layer_inputs(layer_inputs(case, layer), fault, case, layer)
        check_paths(case, lambda m, i: call_layer(m[0], i), [layer], inputs)


@pytest.mark.parametrize("seed", range(_count(3 * len(TF_FAULTS))), ids=lambda s: f"badtf{s:03d}")
def test_tf_bad_input_same_on_every_path(seed):
    fault = TF_FAULTS[seed % len(TF_FAULTS)]
    case = fault_tf_case(tf_case(40_000 + seed), fault)
    built = _built_or_refused(lambda: make_tf(case))
    if built is not None:
        cells, inputs = built
        inputs = fault_tf_inputs(inputs, fault, case, cells)
        check_paths(case, lambda m, i: call_tf(case, m, i), cells, inputs)
