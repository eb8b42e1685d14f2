"""`rnnkit train` and `rnnkit sample`: learning, streaming generation, the adding problem, layer binding."""

from __future__ import annotations

import math

import pytest
import torch

import rnnkit as rk
from cli_helpers import TEXT, TINY, latest_weights, write_corpus
from rnnkit.cli import main
from rnnkit.cli.checkpoint import load_checkpoint
from rnnkit.cli.sample import load_model


def test_char_training_lowers_the_loss(tmp_path, capsys):
    data = write_corpus(tmp_path)
    out = tmp_path / "run"
    code = main(["train", "--data", data, *TINY, "--steps", "80", "--eval-every", "40", "--log-every", "5",
                 "--lr", "1e-2", "--out", str(out)])  # fmt: skip
    assert code == 0
    history = load_checkpoint(str(out)).trainer["history"]
    vocab = len(set(TEXT))
    first_train = history["train"][0][1]  # bits per char, mean of steps 1..5
    assert first_train > 0.9 * math.log2(vocab)  # starts near uniform guessing
    assert history["val"][-1][1] < 0.5 * first_train  # and learns the repeated sentence
    printed = capsys.readouterr()
    assert "held-out" in printed.out and "bits per character" in printed.out
    assert "step 80/80" in printed.err and "chars/s" in printed.err and "ETA" in printed.err
    assert (out / "loss.svg").exists() or (out / "loss.png").exists()


def test_sample_streams_the_same_as_a_full_forward(tmp_path, capsys):
    data = write_corpus(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--data", data, *TINY, "--steps", "30", "--eval-every", "30", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--prime", "the ", "--length", "40", "--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("the ") and len(greedy) == len("the ") + 40 + 1
    runs = []
    for _ in range(2):
        assert main(["sample", str(out), "--prime", "the ", "--length", "40", "--seed", "3"]) == 0
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] and len(runs[0]) == len(greedy)  # the seed fixes the sample
    # One step at a time with the carried state equals one forward over the whole text.
    ckpt, model = load_model(str(out), torch.device("cpu"))
    model.eval()
    text = greedy.rstrip("\n")
    index = {ch: i for i, ch in enumerate(ckpt.config["model"]["vocab"])}
    tokens = torch.tensor([[index[ch] for ch in text]])
    with torch.no_grad():
        full, _ = model(tokens)  # (1, T, V)
        state, steps = None, []
        for t in range(tokens.shape[1]):
            logits, state = model(tokens[:, t : t + 1], state)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-6, rtol=0)
    # and greedy decoding is the argmax of that forward at every generated position
    assert (full[0, 3:-1].argmax(-1) == tokens[0, 4:]).all()


def test_adding_problem_beats_nothing_and_reports_mse(tmp_path, capsys):
    out = tmp_path / "adding"
    args = ["train", "--task", "adding", "--seq-len", "10", "--batch", "32", "--hidden-size", "16", "--steps", "60",
            "--eval-every", "60", "--eval-size", "256", "--log-every", "10", "--lr", "1e-2",
            "--threads", "1"]  # fmt: skip
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "held-out MSE" in printed and "0.167" in printed
    history = load_checkpoint(str(out)).trainer["history"]
    assert history["train"][0][1] > 0.3  # an untrained net answers ~0: MSE E[(U1+U2)^2] = 7/6
    assert history["val"][-1][1] < 0.2


def test_adding_batch_statistics():
    from rnnkit.cli.data import adding_batch

    x, y = adding_batch(20_000, 12, torch.Generator().manual_seed(0))
    assert x.shape == (20_000, 12, 2) and (x[..., 1].sum(1) == 2).all()
    assert (x[:, :6, 1].sum(1) == 1).all()  # one mark in each half
    torch.testing.assert_close(y, (x[..., 0] * x[..., 1]).sum(1))
    assert abs(float(((y - 1.0) ** 2).mean()) - 1 / 6) < 0.01  # the 0.167 baseline


@pytest.mark.parametrize("layer", ["lstm", "gru"])
def test_layer_entry_binds_to_rnnkit_layers(tmp_path, monkeypatch, capsys, layer):
    data = write_corpus(tmp_path)
    out = tmp_path / "layer"
    args = ["train", "--data", data, "--layer", layer, *TINY, "--steps", "6", "--eval-every", "3", "--dropout", "0.1"]
    assert main([*args, "--out", str(out)]) == 0
    weights = latest_weights(out)
    reference = getattr(torch.nn, layer.upper())(8, 16, 2, batch_first=True)  # the torch.nn contract, names and shapes
    assert {k.removeprefix("core.rnn."): tuple(v.shape) for k, v in weights.items() if k.startswith("core.rnn.")} == {
        k: tuple(v.shape) for k, v in reference.named_parameters()
    }
    assert main(["train", "--resume", "--out", str(out), "--steps", "8"]) == 0
    assert main(["sample", str(out), "--prime", "the", "--length", "5"]) == 0
    # Without the class on the rnnkit package (an rnnkit before the layers), a clear error instead.
    monkeypatch.delattr(rk, layer.upper())
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "none")]) == 2
    assert f"needs rnnkit.{layer.upper()}" in capsys.readouterr().err


@pytest.mark.parametrize("cell", ["basic_rnn", "gru", "layer_norm_lstm", "lstm"])
def test_every_cell_type_trains(tmp_path, cell):
    data = write_corpus(tmp_path)
    extra = ["--peepholes", "--num-proj", "8", "--cell-clip", "3"] if cell == "lstm" else []
    assert main(["train", "--data", data, "--cell", cell, *extra, *TINY, "--steps", "3", "--eval-every", "3",
                 "--num-layers", "1", "--out", str(tmp_path / cell)]) == 0  # fmt: skip
    assert all(torch.isfinite(v).all() for v in latest_weights(tmp_path / cell).values())
