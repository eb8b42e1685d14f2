"""Bad input gives one clear line on stderr and a nonzero exit code, never a traceback."""

from __future__ import annotations

import json
import os

import pytest

from cli_helpers import TINY, run_cli, write_corpus
from rnnkit.cli import main
from rnnkit.cli.checkpoint import resolve_checkpoint


def error_of(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err.strip().splitlines()[-1] if err.strip() else ""


def test_missing_data_file_from_a_real_process(tmp_path):
    done = run_cli("train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "run"), timeout=60)
    assert done.returncode == 3
    assert done.stderr.strip() == f"rnnkit train: error: data file {str(tmp_path / 'nope.txt')!r} does not exist"
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is empty"),
        (b"\x00\x01\x02binary\x00", "is not a text file (it contains NUL bytes)"),
        (b"caf\xe9 latin-1", "is not UTF-8 text (undecodable byte at offset 3)"),
    ],
)
def test_bad_data_files(tmp_path, capsys, content, message):
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    code, err = error_of(capsys, "train", "--data", str(path), *TINY, "--out", str(tmp_path / "run"))
    assert code == 3 and message in err and err.startswith("rnnkit train: error: data file")


def test_directory_as_data(tmp_path, capsys):
    code, err = error_of(capsys, "train", "--data", str(tmp_path), "--out", str(tmp_path / "run"))
    assert code == 3 and "is a directory" in err


def test_sequence_longer_than_the_corpus(tmp_path, capsys):
    data = write_corpus(tmp_path, "short text\n" * 3)
    code, err = error_of(capsys, "train", "--data", data, *TINY, "--seq-len", "100", "--out", str(tmp_path / "run"))
    assert code == 3
    assert "--seq-len 100 with --batch 4 needs at least 401 characters of training text" in err


def test_checkpoint_config_mismatch(tmp_path, capsys):
    data = write_corpus(tmp_path)
    out = str(tmp_path / "run")
    assert main(["train", "--data", data, *TINY, "--steps", "2", "--eval-every", "2", "--out", out]) == 0
    capsys.readouterr()
    code, err = error_of(capsys, "train", "--resume", "--out", out, "--hidden-size", "32")
    assert code == 4
    assert "does not match the requested model: it has hidden_size=16, the command line asks for 32" in err
    code, err = error_of(capsys, "train", "--resume", "--out", out, "--cell", "gru")
    assert code == 4 and "it has cell='basic_lstm'" in err
    other = write_corpus(tmp_path / "..", "other text entirely\n" * 50)
    code, err = error_of(capsys, "train", "--resume", "--out", out, "--data", other)
    assert code == 4 and "was trained on other data" in err
    # A config.json edited so that it no longer describes the weights.
    config_path = os.path.join(resolve_checkpoint(out), "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["model"]["core"]["hidden_size"] = 24
    with open(config_path, "w") as f:
        json.dump(config, f)
    code, err = error_of(capsys, "sample", out, "--length", "3")
    assert code == 4 and "the weights do not match its config.json" in err
    code, err = error_of(capsys, "train", "--resume", "--out", out)
    assert code == 4 and "the weights do not match its config.json: Error(s) in loading state_dict" in err


def test_other_usage_errors(tmp_path, capsys):
    data = write_corpus(tmp_path)
    out = str(tmp_path / "run")
    assert main(["train", "--data", data, *TINY, "--steps", "1", "--eval-every", "1", "--out", out]) == 0
    capsys.readouterr()
    cases = [
        (["train", "--data", data, *TINY, "--out", out], 2,
         "already holds a finished run (step 1 of 1): choose another --out for a new run, or train that one further "
         "with --resume --steps N (N > 1)"),  # fmt: skip
        (["sample", str(tmp_path / "nothing")], 4, "no checkpoint at"),
        (["sample", out, "--prime", "XYZ"], 2, "--prime has characters the model never saw: 'XYZ'"),
        (["train", "--data", data, *TINY, "--dropout", "1.5", "--out", str(tmp_path / "x")], 2, "--dropout must be"),
        (["train", "--task", "adding", "--seq-len", "1", "--out", str(tmp_path / "y")], 2, "--seq-len >= 2"),
        (["train", "--data", data, "--peepholes", "--out", str(tmp_path / "z")], 2, "--peepholes needs --cell lstm"),
        (["explain", "BasicRNNCell(128)"], 2, "--input-shape is required"),
        (["explain", "open('x')", "--input-shape", "1,2"], 2, "unknown cell constructor 'open'"),
        (["explain", "lstm", "--hidden-size", "4"], 2, "--input-size is required"),
        (["explain", "gru", "--input-size", "3", "--hidden-size", "4", "--proj-size", "2"], 2, "LSTM option"),
        (["explain", "lstm", "--input-size", "3", "--hidden-size", "4", "--proj-size", "4"], 2, "proj_size"),
    ]
    for argv, want_code, message in cases:
        code, err = error_of(capsys, *argv)
        assert (code, message in err) == (want_code, True), (argv, code, err)
