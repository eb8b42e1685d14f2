"""Parity with real TensorFlow: rnnkit's TF1 cells and runners against fixtures made by TF 2.x's ``tf.compat.v1``.

The fixtures (``tests/fixtures/tf/*.npz``) come from ``tests/fixtures/make_tf_fixtures.py``, run by hand with
tensorflow-cpu and tf-keras (``TF_USE_LEGACY_KERAS=1``); its docstring describes their layout. This test never
imports TensorFlow. For every stored case it

1. builds the same rnnkit cells from the case's spec and builds them for the recorded input depth,
2. loads TF's variables into them by name (``load_tf_variables``: TF ``rnn/multi_rnn_cell/cell_0/basic_lstm_cell/
   kernel`` -> rnnkit ``cell_0.kernel``), strictly: every TF variable lands on exactly one rnnkit parameter of
   the same shape and every rnnkit parameter is set,
3. runs the matching rnnkit runner on the stored inputs, lengths and initial states, and
4. checks outputs and final states against TF's to ``atol=1e-5`` (float32; the observed error is ~1e-7), the
   state's structure included (``LSTMStateTuple`` where TF has one, plain tuples where TF has tuples).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rnnkit

FIXTURES = Path(__file__).parent / "fixtures" / "tf"
ATOL = 1e-5
FAMILIES = (
    "basic_rnn",
    "basic_lstm",
    "lstm",
    "gru",
    "multi",
    "wrappers",
    "bidirectional",
    "static",
    "stack_bidirectional",
    "single_step",
)


# -- TF variable names -> rnnkit state_dict keys ------------------------------------------------------------------
# TF names a cell's variables after its class (`basic_lstm_cell/kernel`); rnnkit's module tree has no such level.
TF_CELL_SCOPES = {"multi_rnn_cell", "basic_rnn_cell", "basic_lstm_cell", "lstm_cell", "gru_cell"}


def tf_path(tf_name: str) -> tuple[str, ...]:
    """``multi_rnn_cell/cell_0/lstm_cell/projection/kernel`` -> ``("cell_0", "projection", "kernel")``."""
    return tuple(part for part in tf_name.split("/") if part not in TF_CELL_SCOPES)


def rnnkit_paths(cell: rnnkit.RNNCell) -> dict[tuple[str, ...], str]:
    """Each rnnkit state_dict key by its TF-style path: a wrapper's ``cell.`` hop is dropped, since TF's
    ``DropoutWrapper``/``ResidualWrapper`` add no variable scope (``cell_1.cell.kernel`` -> ``("cell_1", "kernel")``).
    """
    paths = {}
    for key in cell.state_dict():
        module, path = cell, []
        for part in key.split("."):
            if not (isinstance(module, rnnkit.RNNCellWrapper) and part == "cell"):
                path.append(part)
            module = getattr(module, part)
        paths[tuple(path)] = key
    return paths


def load_tf_variables(cell: rnnkit.RNNCell, variables: dict[str, np.ndarray], scope: str) -> list[str]:
    """Load the TF variables under ``scope`` (e.g. ``"rnn/"``, ``"bidirectional_rnn/bw/"``) into ``cell``.

    Returns the TF names used. Raises if a TF variable has no rnnkit parameter, or a parameter no TF variable;
    ``load_state_dict`` itself refuses a shape mismatch.
    """
    targets = rnnkit_paths(cell)
    state, used = {}, []
    for name, value in variables.items():
        if not name.startswith(scope):
            continue
        path = tf_path(name[len(scope) :])
        if path not in targets:
            raise KeyError(f"TF variable {name!r} (path {path}) has no rnnkit parameter; rnnkit has {sorted(targets)}")
        state[targets[path]] = torch.from_numpy(value)
        used.append(name)
    missing = sorted(set(targets.values()) - set(state))
    if missing:
        raise KeyError(f"rnnkit parameters {missing} got no TF variable under scope {scope!r}")
    cell.load_state_dict(state, strict=True)
    return used


# -- specs -> rnnkit cells, structures -----------------------------------------------------------------------------
def build_cell(spec: dict[str, Any]) -> rnnkit.RNNCell:
    """The rnnkit twin of a fixture's cell spec (``{"cell": "LSTMCell", "num_proj": 3, ...}``), unbuilt."""
    kwargs = {k: v for k, v in spec.items() if k not in ("cell", "cells", "wrapped", "input_depth")}
    kind = spec["cell"]
    if kind == "MultiRNNCell":
        return rnnkit.MultiRNNCell([build_cell(s) for s in spec["cells"]], **kwargs)
    if kind in ("DropoutWrapper", "ResidualWrapper"):
        return getattr(rnnkit, kind)(build_cell(spec["wrapped"]), **kwargs)
    return getattr(rnnkit, kind)(**kwargs)


def unflatten(description: Any, leaves: list[torch.Tensor]) -> Any:
    """Rebuild a state from the fixture's structure description and its flat leaves."""
    if isinstance(description, int):
        return leaves[description]
    if "LSTMStateTuple" in description:
        return rnnkit.LSTMStateTuple(*(unflatten(d, leaves) for d in description["LSTMStateTuple"]))
    return tuple(unflatten(d, leaves) for d in description["tuple"])


def assert_state_matches(actual: Any, description: Any, expected: list[np.ndarray], where: str = "state") -> None:
    """Same structure (``LSTMStateTuple`` vs plain ``tuple``), shapes and values as TF's final state."""
    if isinstance(description, int):
        assert isinstance(actual, torch.Tensor), f"{where}: expected a tensor, got {type(actual).__name__}"
        assert actual.dtype == torch.float32, f"{where}: dtype {actual.dtype}"
        torch.testing.assert_close(actual, torch.from_numpy(expected[description]), atol=ATOL, rtol=0, msg=where)
        return
    if "LSTMStateTuple" in description:
        assert isinstance(actual, rnnkit.LSTMStateTuple), f"{where}: expected LSTMStateTuple, got {type(actual)}"
        parts = description["LSTMStateTuple"]
    else:
        assert type(actual) is tuple, f"{where}: expected a plain tuple, got {type(actual).__name__}"
        parts = description["tuple"]
    assert len(actual) == len(parts), f"{where}: expected {len(parts)} entries, got {len(actual)}"
    for k, (a, d) in enumerate(zip(actual, parts, strict=True)):
        assert_state_matches(a, d, expected, f"{where}[{k}]")


# -- fixtures ------------------------------------------------------------------------------------------------------
def load_cases() -> dict[str, dict[str, Any]]:
    """``{"family/case": {"spec": ..., "inputs": ..., "var": {...}, ...}}`` from every fixture file."""
    cases: dict[str, dict[str, Any]] = {}
    for path in sorted(FIXTURES.glob("*.npz")):
        with np.load(path) as data:
            for key in data.files:
                if key == "tf_version":
                    continue
                name, field = key.split("/", 1)
                case = cases.setdefault(f"{path.stem}/{name}", {"var": {}, "initial_state": {}, "final_state": {}})
                group, _, rest = field.partition("/")
                if group in ("var", "initial_state", "final_state", "outputs") and rest:
                    case.setdefault(group, {})[rest] = data[key]
                else:
                    case[field] = data[key]
    for case in cases.values():
        case["spec"] = json.loads(str(case["spec"]))
    return cases


CASES = load_cases()


def flat(group: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [group[str(k)] for k in range(len(group))]


def variable_scopes(runner: str, n_cells: int) -> list[str]:
    """The TF variable scope each cell's variables live under, for each runner (TF's default scope names)."""
    if runner == "cell_call":
        return [""]
    if runner in ("dynamic_rnn", "static_rnn"):
        return ["rnn/"]
    if runner in ("bidirectional_dynamic_rnn", "static_bidirectional_rnn"):
        return ["bidirectional_rnn/fw/", "bidirectional_rnn/bw/"]
    # contrib's stack_bidirectional_dynamic_rnn: stack_bidirectional_rnn/cell_<k>/bidirectional_rnn/{fw,bw}/
    return [
        f"stack_bidirectional_rnn/cell_{k // 2}/bidirectional_rnn/{'fw' if k % 2 == 0 else 'bw'}/"
        for k in range(n_cells)
    ]


def run_rnnkit(case: dict[str, Any]) -> tuple[list[torch.Tensor], Any]:
    """Build, load and run the rnnkit twin of a case: returns (flat outputs, final state)."""
    spec = case["spec"]
    runner, time_major = spec["runner"], spec["time_major"]
    cells = [build_cell(s) for s in spec["cells"]]
    used: list[str] = []
    for cell, s, scope in zip(cells, spec["cells"], variable_scopes(runner, len(cells)), strict=True):
        cell.build(s["input_depth"])
        used += load_tf_variables(cell, case["var"], scope)
    assert sorted(used) == sorted(case["var"]), f"TF variables left unloaded: {set(case['var']) - set(used)}"

    x = torch.from_numpy(case["inputs"])
    lengths = torch.from_numpy(case["sequence_length"]) if "sequence_length" in case else None
    s0 = None
    if "initial_state_structure" in spec:
        s0 = unflatten(spec["initial_state_structure"], [torch.from_numpy(v) for v in flat(case["initial_state"])])

    with torch.no_grad():
        if runner == "cell_call":
            out, state = cells[0](x, s0)
            return [out], state
        if runner == "dynamic_rnn":
            out, state = rnnkit.dynamic_rnn(
                cells[0], x, sequence_length=lengths, initial_state=s0, dtype=torch.float32, time_major=time_major
            )
            return [out], state
        if runner == "static_rnn":
            outs, state = rnnkit.static_rnn(cells[0], list(x.unbind(0)), initial_state=s0, sequence_length=lengths)
            return [torch.stack(outs)], state
        s_fw, s_bw = s0 if s0 is not None else (None, None)
        if runner == "bidirectional_dynamic_rnn":
            (o_fw, o_bw), state = rnnkit.bidirectional_dynamic_rnn(
                cells[0], cells[1], x, lengths, s_fw, s_bw, time_major=time_major
            )
            return [o_fw, o_bw], state
        if runner == "static_bidirectional_rnn":
            outs, f_fw, f_bw = rnnkit.static_bidirectional_rnn(
                cells[0], cells[1], list(x.unbind(0)), s_fw, s_bw, sequence_length=lengths
            )
            return [torch.stack(outs)], (f_fw, f_bw)
        assert runner == "stack_bidirectional_dynamic_rnn", runner
        out, states_fw, states_bw = rnnkit.stack_bidirectional_dynamic_rnn(
            cells[0::2], cells[1::2], x, s_fw, s_bw, sequence_length=lengths, time_major=time_major
        )
        return [out], (states_fw, states_bw)


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_matches_tensorflow(case_id: str) -> None:
    case = CASES[case_id]
    outputs, state = run_rnnkit(case)
    expected = case["outputs"]
    names = ["fw", "bw"] if len(expected) == 2 else ["0"]
    assert len(outputs) == len(names)
    for name, out in zip(names, outputs, strict=True):
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, torch.from_numpy(expected[name]), atol=ATOL, rtol=0, msg=f"outputs {name}")
    assert_state_matches(state, case["spec"]["final_state_structure"], flat(case["final_state"]))


# -- the fixtures themselves: present, from TF, and covering every cell and option ----------------------------------
def test_fixture_files_present_and_small() -> None:
    files = {p.stem for p in FIXTURES.glob("*.npz")}
    assert files == set(FAMILIES)
    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 1_500_000
    for path in FIXTURES.glob("*.npz"):
        with np.load(path) as data:
            assert str(data["tf_version"]).startswith("2."), path.name


def _all_cell_specs(spec: dict[str, Any]):
    yield spec
    for sub in spec.get("cells", []):
        yield from _all_cell_specs(sub)
    if "wrapped" in spec:
        yield from _all_cell_specs(spec["wrapped"])


def test_fixtures_cover_every_cell_and_option() -> None:
    specs = [s for case in CASES.values() for top in case["spec"]["cells"] for s in _all_cell_specs(top)]

    def has(kind: str, **options: Any) -> bool:
        return any(s["cell"] == kind and all(s.get(k, d) == v for k, (v, d) in options.items()) for s in specs)

    assert has("BasicRNNCell", activation=("relu", None)) and has("BasicRNNCell", activation=("tanh", None))
    for fb in (1.0, 0.0, 0.5):
        for tup in (True, False):
            assert has("BasicLSTMCell", forget_bias=(fb, 1.0), state_is_tuple=(tup, True)), (fb, tup)
    for option, value in [
        ("use_peepholes", True),
        ("cell_clip", 0.3),
        ("num_proj", 3),
        ("proj_clip", 0.1),
        ("forget_bias", 0.3),
        ("state_is_tuple", False),
    ]:
        assert any(s["cell"] == "LSTMCell" and s.get(option) == value for s in specs), option
    assert any(
        s["cell"] == "LSTMCell"
        and s.get("use_peepholes")
        and s.get("cell_clip")
        and s.get("proj_clip")
        and s.get("state_is_tuple") is False
        for s in specs
    )
    assert has("GRUCell") and has("ResidualWrapper") and has("DropoutWrapper")
    assert has("MultiRNNCell", state_is_tuple=(True, True)) and has("MultiRNNCell", state_is_tuple=(False, True))

    runners = {case["spec"]["runner"] for case in CASES.values()}
    assert runners == {
        "cell_call",
        "dynamic_rnn",
        "static_rnn",
        "bidirectional_dynamic_rnn",
        "static_bidirectional_rnn",
        "stack_bidirectional_dynamic_rnn",
    }
    assert any(case["spec"]["time_major"] for case in CASES.values())
    assert any(case["initial_state"] and case["spec"]["runner"] != "cell_call" for case in CASES.values())
    lengths = [case["sequence_length"] for case in CASES.values() if "sequence_length" in case]
    assert any(0 in ls and 6 in ls for ls in lengths)  # a zero and a full length (6 steps) in one batch


def test_name_mapping_examples() -> None:
    """The mapping on the names the issue spells out, against the real rnnkit modules."""
    multi = rnnkit.MultiRNNCell([rnnkit.BasicLSTMCell(4), rnnkit.ResidualWrapper(rnnkit.GRUCell(4))], input_size=4)
    assert rnnkit_paths(multi)[tf_path("multi_rnn_cell/cell_0/basic_lstm_cell/kernel")] == "cell_0.kernel"
    assert rnnkit_paths(multi)[tf_path("multi_rnn_cell/cell_1/gru_cell/gates/kernel")] == "cell_1.cell.gates.kernel"
    proj = rnnkit.LSTMCell(5, num_proj=3, input_size=2)
    assert rnnkit_paths(proj)[tf_path("lstm_cell/projection/kernel")] == "projection.kernel"
    with pytest.raises(KeyError, match="no rnnkit parameter"):
        load_tf_variables(proj, {"rnn/lstm_cell/w_f_diag": np.zeros(5, np.float32)}, "rnn/")


def test_fixture_clipping_is_active() -> None:
    """The clip cases are only evidence if TF's values actually hit the clip: check that they do."""
    clipped = 0
    for case in CASES.values():
        spec = case["spec"]["cells"][0]
        if spec["cell"] != "LSTMCell" or "sequence_length" not in case:
            continue
        valid = case["sequence_length"] > 0
        if spec.get("cell_clip"):
            c = case["final_state"]["0"][valid][:, : spec["num_units"]]  # c leads in the tuple and in [c, h]
            assert np.isclose(np.abs(c).max(), spec["cell_clip"], rtol=0, atol=1e-6)
            clipped += 1
        if spec.get("proj_clip"):
            assert np.isclose(np.abs(case["outputs"]["0"]).max(), spec["proj_clip"], rtol=0, atol=1e-6)
            clipped += 1
    assert clipped >= 4
