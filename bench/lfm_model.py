"""Throughput of the LFM classifier: scoring (steps/second) and training (seconds per 1,000 labels).

    .venv/bin/python bench/lfm_model.py                  # CPU, max_length 256 and 128
    .venv/bin/python bench/lfm_model.py --device cuda    # GPU: fp32 and bf16 autocast
    .venv/bin/python bench/lfm_model.py --quick          # fewer examples (a GPU run ends in about a minute)

Uses the real base model (default: the packaged all-MiniLM-L6-v2; `--base-model` takes any local
model folder) on synthetic ALFWorld-like steps whose text is long enough to fill the whole window,
so the numbers are for full-length inputs (the worst case; short steps are faster). Scoring times
`predict` (text fitting, tokenisation, forward passes) after one warm-up batch; training times the
optimiser steps of one epoch after the first (warm-up) step, and scales to 1,000 labels.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from models_ml.lfm import LFMConfig, StepExample, count_tokens, fit_texts, load_tokenizer, predict, train  # noqa: E402
from models_ml.lfm.model import build_model, resolve_base_model  # noqa: E402
from models_ml.lfm.train import seed_everything  # noqa: E402

PLACES = ["cabinet", "countertop", "drawer", "fridge", "shelf", "sinkbasin", "stoveburner", "toaster", "desk", "bed"]
OBJECTS = ["apple", "bread", "butterknife", "mug", "egg", "lettuce", "pan", "plate", "spatula", "tomato", "cd", "pen"]


def synthetic_steps(n: int, seed: int = 0) -> list[StepExample]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        seen = ", ".join(f"a {rng.choice(OBJECTS)} {rng.randint(1, 4)}" for _ in range(12))
        room = ", ".join(f"a {p} {k}" for p in PLACES for k in (1, 2))
        before = (
            f"You are in the middle of a room. Looking quickly around you, you see {room}. "
            f"You arrive at {place} 1. On the {place} 1, you see {seen}."
        )
        productive = i % 2 == 0
        action = f"take {obj} 1 from {place} 1" if productive else f"examine {rng.choice(PLACES)} 2"
        after = f"You pick up the {obj} 1 from the {place} 1. " + before if productive else "Nothing happens. " + before
        context = [(f"go to {rng.choice(PLACES)} {k}", f"You arrive at it. On it, you see {seen}.") for k in range(3)]
        out.append(
            StepExample(
                task=f"put a clean {obj} in {rng.choice(PLACES)}. " * 2,
                before=before,
                action=action,
                after=after,
                context=context,
                label=productive,
                key=str(i),
            )
        )
    return out


def bench_score(config: LFMConfig, device: torch.device, examples, batch_size: int, precision: str) -> float:
    seed_everything(0)
    tokenizer = load_tokenizer(config.base_model)
    model = build_model(config, tokenizer).to(device).eval()
    predict(model, tokenizer, examples[:batch_size], batch_size=batch_size, precision=precision)  # warm-up
    started = time.perf_counter()
    predict(model, tokenizer, examples, batch_size=batch_size, precision=precision)
    return len(examples) / (time.perf_counter() - started)


def bench_train(config: LFMConfig, device: torch.device, examples) -> float:
    """Seconds per 1,000 labels (one pass), from the steps after the first."""
    marks: list[float] = []
    train(config, examples, device=device, progress=lambda *a: marks.append(time.perf_counter()))
    if len(marks) < 2:
        raise SystemExit("--train-n must give at least two optimiser steps")
    per_step = statistics.mean(b - a for a, b in zip(marks, marks[1:]))
    return per_step * 1000.0 / config.batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--base-model", default=None, help="local model folder (default: packaged all-MiniLM-L6-v2)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 128])
    ap.add_argument("--quick", action="store_true", help="fewer examples")
    ap.add_argument("--score-n", type=int, default=None, help="steps scored per measurement")
    ap.add_argument("--train-n", type=int, default=None, help="labels trained on per measurement")
    ap.add_argument("--score-batch", type=int, default=None)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--precision", nargs="+", default=None, help="fp32 and/or bf16 (bf16: CUDA autocast)")
    args = ap.parse_args()

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if cuda:
        score_n = args.score_n or (2048 if args.quick else 8192)
        train_n = args.train_n or (512 if args.quick else 2048)
        score_batch = args.score_batch or 128
        precisions = args.precision or ["fp32", "bf16"]
    else:
        score_n = args.score_n or (64 if args.quick else 256)
        train_n = args.train_n or (48 if args.quick else 96)
        score_batch = args.score_batch or 32
        precisions = args.precision or ["fp32"]

    base = resolve_base_model(args.base_model)
    tokenizer = load_tokenizer(base)
    examples = synthetic_steps(max(score_n, train_n))
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} torch threads"
    print(f"base model: {base}")
    print(f"device: {where}; torch {torch.__version__}")
    print(f"scoring {score_n} steps (batch {score_batch}); training on {train_n} labels (batch {args.train_batch}, 1 epoch)")
    print()
    header = f"{'device':<6} {'precision':<9} {'max_len':>7} {'tokens':>6} {'score steps/s':>13} {'train s/1k labels':>17}"
    print(header)
    print("-" * len(header))
    for precision in precisions:
        for max_length in args.lengths:
            config = LFMConfig(
                base_model=base, max_length=max_length, epochs=1, batch_size=args.train_batch, precision=precision
            )
            tokens = statistics.mean(
                count_tokens(tokenizer, fit_texts(examples[:64], tokenizer, max_length, config.context_steps))
            )
            rate = bench_score(config, device, examples[:score_n], score_batch, precision)
            per_k = bench_train(config, device, examples[:train_n])
            print(f"{device.type:<6} {precision:<9} {max_length:>7} {tokens:>6.0f} {rate:>13.1f} {per_k:>17.1f}", flush=True)


if __name__ == "__main__":
    main()
