"""``rnnkit sample CKPT``: stream text from a trained character model, one step at a time.

The prime is read through the model once; then each step feeds the last character and the carried state through
the model's ``step`` (the engine's streaming frame: one kernel call per character on CPU) and draws the next
character from ``softmax(logits / temperature)`` (``temperature 0``: the most likely one). Characters are printed
as they are drawn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import torch
from torch import nn

from .checkpoint import load_checkpoint, load_weights
from .distributed import cpu_threads, pick_device
from .errors import EXIT_CHECKPOINT, CLIError
from .kernels import prepare_kernels
from .models import build_model

__all__ = ["add_parser", "run", "generate", "load_model"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a character-model checkpoint",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("checkpoint", help="a run directory (its latest checkpoint) or a step-N checkpoint directory")
    p.add_argument("--prime", default="\n", help="text to start from (default: a newline)")
    p.add_argument("--length", type=int, default=500, help="characters to generate (default 500)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random (default 0.8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1)")
    p.set_defaults(run=run)


def load_model(path: str, device: torch.device, full: bool = False):
    """The checkpoint at ``path`` and its model with the saved weights, on ``device``."""
    ckpt = load_checkpoint(path, full=full)
    model = build_model(ckpt.config["model"]).to(device)
    load_weights(model, ckpt)
    return ckpt, model


def check_prime(prime: str, vocab: str, flag: str = "--prime") -> None:
    if not prime:
        raise CLIError(f"{flag} must hold at least one character")
    unknown = sorted(set(prime) - set(vocab))
    if unknown:
        raise CLIError(f"{flag} has characters the model never saw: {''.join(unknown)!r}")


@torch.no_grad()
def generate(
    model: nn.Module, vocab: str, prime: str, length: int, temperature: float, generator: torch.Generator
) -> Iterator[str]:
    """Yield ``length`` characters after ``prime``, carrying the recurrent state step to step."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    index = {ch: i for i, ch in enumerate(vocab)}
    try:
        tokens = torch.tensor([[index[ch] for ch in prime]], device=device)  # (1, P)
        logits, state = model(tokens)  # (1, P, V)
        last_logits = logits[0, -1]  # (V,)
        for _ in range(length):
            last = last_logits.float().cpu()
            if temperature <= 0:
                nxt = int(last.argmax())
            else:
                nxt = int(torch.multinomial(torch.softmax(last / temperature, -1), 1, generator=generator))
            yield vocab[nxt]
            logits, state = model.step(torch.tensor([nxt], device=device), state)  # one frame: (1, V)
            last_logits = logits[0]
    finally:
        model.train(was_training)


def run(args: argparse.Namespace) -> int:
    with cpu_threads(args.threads):
        return _sample(args)


def _sample(args: argparse.Namespace) -> int:
    if args.length < 0:
        raise CLIError(f"--length must be >= 0, got {args.length}")
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0, got {args.temperature}")
    ckpt, model = load_model(args.checkpoint, pick_device(args.device))
    if ckpt.config["model"]["task"] != "char":
        raise CLIError(
            f"{ckpt.path} is a {ckpt.config['model']['task']}-task model; sample needs a character model",
            EXIT_CHECKPOINT,
        )
    vocab = ckpt.config["model"]["vocab"]
    check_prime(args.prime, vocab)
    prepare_kernels(next(model.parameters()).device, announce=True)  # a first build: said, not a silent pause
    out = sys.stdout
    out.write(args.prime)
    for ch in generate(
        model, vocab, args.prime, args.length, args.temperature, torch.Generator().manual_seed(args.seed)
    ):
        out.write(ch)
        out.flush()
    out.write("\n")
    return 0
