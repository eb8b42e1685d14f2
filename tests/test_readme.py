"""The README's examples, as written.

* Every ```python block runs, in order, in one namespace (later blocks use names earlier ones define, as a reader
  running them one after another would), in a temporary directory holding the files they name: ``ckpt/`` is a TF1
  checkpoint written by the real TensorFlow (the committed fixture ``tests/fixtures/tf_ckpt/multi_basic_lstm``)
  and ``model.keras`` a Keras 3 file (the committed fixture ``tests/fixtures/keras/stacked_lstm.keras``). An
  expression line whose comment starts with a shape, e.g. ``state.c.shape  # (32, 128)``, must evaluate to it.
* Every command of the ```bash blocks is covered, none skipped silently:
  - run as a subprocess, as written (``rnnkit`` as ``python -m rnnkit``): ``rnnkit explain``, ``rnnkit convert``,
    and ``rnnkit sample`` (on a small run trained first into the directory it names);
  - too slow for the suite, so parsed only: ``rnnkit train`` and ``torchrun ... -m rnnkit train`` by rnnkit's and
    torchrun's own argument parsers (unknown or mistyped options fail), ``python -m benchmarks.run`` by its
    ``--help``, which must list the options the line uses;
  - not run because they install packages (``pip install``) or are this suite (``python -m pytest``): the files,
    extras and index they name are checked instead.
  A command that fits none of these fails the test, so a new README line needs a decision here.
"""

from __future__ import annotations

import argparse
import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from torch.distributed.run import get_args_parser

from cli_helpers import TINY, cli_env
from rnnkit.cli import build_parser, main
from rnnkit.cli.train import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHAPE_COMMENT = re.compile(r"\s*(\((?:\d+,\s*)*\d*\))")  # "(32, 10, 128)" at the start of a comment


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.S | re.M)


def _bash_commands(blocks: list[str] | None = None) -> list[list[str]]:
    """Every command of the bash blocks, comments dropped and ``a && b`` split into ``a`` and ``b``."""
    commands = []
    for block in _blocks("bash") if blocks is None else blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                commands.append(words[:cut])
                words = words[cut + 1 :]
    return commands


def _readme_files(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "tf_ckpt" / "multi_basic_lstm", tmp_path / "ckpt")
    shutil.copy(FIXTURES / "keras" / "stacked_lstm.keras", tmp_path / "model.keras")


def test_python_blocks_run_as_written(tmp_path, monkeypatch):
    blocks = _blocks("python")
    assert len(blocks) >= 4
    _readme_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    claims = 0
    for k, block in enumerate(blocks, 1):
        lines = block.splitlines()
        for node in ast.parse(block).body:
            name = f"README.md python block {k}, line {node.lineno}"
            claim = SHAPE_COMMENT.match(lines[node.end_lineno - 1].partition("#")[2])
            if isinstance(node, ast.Expr) and claim:
                value = eval(compile(ast.Expression(node.value), name, "eval"), namespace)
                assert tuple(value) == ast.literal_eval(claim.group(1)), f"{name}: {ast.unparse(node)}"
                claims += 1
            else:
                exec(compile(ast.Module([node], []), name, "exec"), namespace)
    assert claims >= 3  # the porting example's shape comments were checked
    assert (tmp_path / "lstm.safetensors").is_file() and (tmp_path / "lstm.onnx").is_file()


# ---- bash -------------------------------------------------------------------------------------------------------
def _is_rnnkit(cmd: list[str], *sub: str) -> bool:
    return cmd[:1] == ["rnnkit"] and (not sub or cmd[1:2] == list(sub))


def _torchrun_train(cmd: list[str]) -> bool:
    at = cmd.index("-m") if "-m" in cmd else 0
    return cmd[:1] == ["torchrun"] and cmd[at + 1 : at + 3] == ["rnnkit", "train"]


def _cheap(cmd: list[str]) -> bool:  # run as written
    return any(_is_rnnkit(cmd, sub) for sub in ("explain", "convert", "sample"))


_BENCHMARKS = tuple(["python", "-m", f"benchmarks.{m}"] for m in ("run", "compare", "sample_speed"))


def _slow(cmd: list[str]) -> bool:  # parsed only
    return _is_rnnkit(cmd, "train") or _torchrun_train(cmd) or cmd[:3] in _BENCHMARKS


def _not_run(cmd: list[str]) -> bool:  # installs, or this suite: what they name is checked
    return cmd[:2] == ["pip", "install"] or cmd[:3] == ["python", "-m", "pytest"]


def _out_dir(train_args: list[str]) -> str:
    args = build_parser().parse_args(["train", *train_args])
    return args.out or DEFAULTS[args.task or "char"]["out"]


@pytest.fixture(scope="module")
def commands() -> list[list[str]]:
    found = _bash_commands()
    assert len(found) >= 10
    return found


def test_every_bash_command_is_covered(commands):
    left = [shlex.join(c) for c in commands if not (_cheap(c) or _slow(c) or _not_run(c))]
    assert not left, f"README commands that tests/test_readme.py neither runs nor checks: {left}"
    assert {c[1] for c in commands if _cheap(c)} == {"explain", "convert", "sample"}


def test_cheap_commands_run_as_subprocesses(commands, tmp_path):
    _readme_files(tmp_path)
    # `rnnkit sample runs/char ...` needs a run there: a small one, on text with the characters of its --prime.
    corpus = tmp_path / "code.txt"
    corpus.write_text("def f(x):\n    return x + 1\n" * 60, encoding="utf-8")
    run_dir = str(tmp_path / "runs" / "char")
    assert main(["train", "--data", str(corpus), *TINY, "--steps", "2", "--eval-every", "2", "--out", run_dir]) == 0
    cheap = [c for c in commands if _cheap(c)]
    for cmd in cheap:
        done = subprocess.run([sys.executable, "-m", "rnnkit", *cmd[1:]], cwd=tmp_path, capture_output=True, text=True,
                              timeout=180, env=cli_env())  # fmt: skip
        assert done.returncode == 0, (shlex.join(cmd), done.stderr[-3000:])
        assert "Traceback" not in done.stderr, (shlex.join(cmd), done.stderr[-3000:])
        if cmd[1] == "explain":
            assert "total:" in done.stdout and "parameters" in done.stdout
        if cmd[1] == "sample":
            assert done.stdout.startswith("def ") and len(done.stdout) >= 300
    for cmd in cheap:  # the files the lines name were written
        for word in cmd:
            if word.endswith((".svg", ".safetensors")) and word != cmd[2]:
                assert (tmp_path / word).is_file(), (shlex.join(cmd), word)


def test_slow_commands_parse(commands, capsys):
    """``rnnkit train`` (minutes) and torchrun (two such processes) are not run: their arguments must parse."""
    trains = [c for c in commands if _is_rnnkit(c, "train") or _torchrun_train(c)]
    assert any(_torchrun_train(c) for c in trains) and len(trains) >= 3
    for cmd in trains:
        if _torchrun_train(cmd):
            at = cmd.index("-m")
            launcher = get_args_parser().parse_args([*cmd[1:at], "-m", "rnnkit"])  # torchrun's own options
            assert launcher.nproc_per_node == "2" and launcher.module
            train_args = cmd[at + 3 :]
        else:
            train_args = cmd[2:]
        args = build_parser().parse_args(["train", *train_args])  # unknown or mistyped options exit here
        assert isinstance(args, argparse.Namespace) and args.command == "train"
    with pytest.raises(SystemExit) as help_exit:
        main(["train", "--help"])
    assert help_exit.value.code == 0 and "--resume" in capsys.readouterr().out
    # Run one after another, as the command-line section lists them, no two new runs share a run directory
    # (rnnkit train refuses an --out that holds a run).
    block = next(b for b in _blocks("bash") if "rnnkit explain" in b)
    outs = []
    for cmd in _bash_commands([block]):
        if _is_rnnkit(cmd, "train") or _torchrun_train(cmd):
            train_args = cmd[cmd.index("-m") + 3 :] if _torchrun_train(cmd) else cmd[2:]
            if "--resume" not in train_args:
                outs.append(_out_dir(train_args))
    assert len(outs) >= 3 and len(set(outs)) == len(outs), outs


@pytest.mark.parametrize("module", ["benchmarks.run", "benchmarks.compare", "benchmarks.sample_speed"])
def test_benchmark_lines_parse(commands, module):
    bench = [c for c in commands if c[:3] == ["python", "-m", module]]
    assert bench
    done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=cli_env())  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    for cmd in bench:
        for option in (w for w in cmd[3:] if w.startswith("--")):
            assert option in done.stdout, (shlex.join(cmd), option)


def test_install_lines_name_what_exists(commands):
    """The pip lines are not run (they install into the environment; one needs the network): what they name is
    checked: the constraints file, the extras, the `rnnkit` script, and the CPU wheel index for torch."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    extras_table = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    scripts_table = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    installs = [c for c in commands if c[:2] == ["pip", "install"]]
    assert installs
    for cmd in installs:
        if "-c" in cmd:
            assert (ROOT / cmd[cmd.index("-c") + 1]).is_file()
        if "-e" in cmd:
            target = cmd[cmd.index("-e") + 1]
            extras = re.fullmatch(r"\.(?:\[(.*)\])?", target)
            assert extras, target
            for extra in filter(None, (extras.group(1) or "").split(",")):
                assert re.search(rf"^{re.escape(extra)}\s*=", extras_table, re.M), extra
        if "--index-url" in cmd:
            assert cmd[cmd.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
            assert any(w.startswith("torch==") for w in cmd)
    assert re.search(r"^rnnkit\s*=", scripts_table, re.M)
    assert any("--index-url" in c for c in installs)  # off the project's machines: the CPU-only torch
    assert any(c[:3] == ["python", "-m", "pytest"] for c in commands)  # this suite: run by CI, not by itself
