"""Learning curve of the LFM on ScienceWorld steps: held-out accuracy, F1, AUROC and ECE by labels.

    .venv/bin/python manage.py scienceworld_trajectories --out var/sw.jsonl --per-task 4 --wrong-rate 0.5
    .venv/bin/python bench/lfm_learning_curve.py --data var/sw.jsonl
    .venv/bin/python bench/lfm_learning_curve.py --per-task 4 --save var/sw.jsonl   # generate here first

The trajectories (annotation/scienceworld.py: gold action sequences with executed wrong actions,
every step labelled by the environment's score) are split by trajectory, with a fixed seed, into a
held-out test set (whole trajectories until it has at least --test-steps steps) and a training pool.
From the pool, class-balanced samples of each size are drawn (half productive, half not; nested, so
the 100 labels are among the 500, which are among the 2,000) and the LFM (the real
all-MiniLM-L6-v2, packaged; nothing is downloaded) is trained on each from the same start. Every
model, and the untrained one (the same base with a freshly initialised head: the starting point of
every run), scores the same test steps with the ground-truth labels of the environment.

CPU training costs about 0.5 s per label per epoch at max_length 128 on a 2-core machine, so the
default epochs shrink as the sample grows (100: 6, 500: 2, 2,000: 1); the whole default curve took
32 minutes there (docs/benchmarks.md). --json writes every number (and each run's loss per
epoch). Accuracy and F1 are at the threshold 0.5; training samples are balanced while the test set
keeps its natural share of productive steps, so AUROC is the number to compare across sizes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from annotation.scienceworld import trajectory_labels  # noqa: E402
from models_ml.lfm import LFMConfig, StepExample, evaluate, predict, steps_from_trajectory, train  # noqa: E402
from models_ml.lfm.model import build_model, load_tokenizer, resolve_base_model  # noqa: E402
from models_ml.lfm.train import seed_everything  # noqa: E402


def load_trajectories(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def split_by_trajectory(trajs: list[dict], test_steps: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train pool, test): whole trajectories, shuffled with `seed`, into test until it has test_steps steps."""
    order = list(trajs)
    random.Random(f"split:{seed}").shuffle(order)
    test, n = [], 0
    while order and n < test_steps:
        t = order.pop()
        test.append(t)
        n += len(t["steps"])
    return order, test


def examples_of(trajs: list[dict]) -> list[StepExample]:
    out = []
    for t in trajs:
        labels = trajectory_labels(t)
        out.extend(steps_from_trajectory(t, labels=dict(enumerate(labels)), item_key=t.get("id") or ""))
    return out


def balanced_prefixes(pool: list[StepExample], sizes: list[int], seed: int) -> dict[int, list[StepExample]]:
    """Nested class-balanced samples: each size takes size/2 of each class (all of a class that has
    fewer, the rest from the other), as prefixes of one seeded shuffle per class."""
    rng = random.Random(f"sample:{seed}")
    pos = [e for e in pool if e.label]
    neg = [e for e in pool if not e.label]
    rng.shuffle(pos)
    rng.shuffle(neg)
    out = {}
    for n in sizes:
        if n > len(pool):
            raise SystemExit(f"the training pool has {len(pool)} labelled steps, fewer than {n}")
        k_neg = min(len(neg), n // 2)
        k_pos = min(len(pos), n - k_neg)
        k_neg = n - k_pos
        sample = pos[:k_pos] + neg[:k_neg]
        random.Random(f"order:{seed}:{n}").shuffle(sample)
        out[n] = sample
    return out


def parse_epochs(text: str, sizes: list[int]) -> dict[int, int]:
    if ":" not in text:
        return {n: int(text) for n in sizes}
    table = {int(a): int(b) for a, b in (part.split(":") for part in text.split(","))}
    missing = [n for n in sizes if n not in table]
    if missing:
        raise SystemExit(f"--epochs gives no value for {missing}")
    return table


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def untrained_model(config: LFMConfig):
    """The base model with a fresh head, seeded as `train` seeds it: the curve's starting point."""
    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.base_model)
    model = build_model(config, tokenizer)
    model.tokenizer = tokenizer
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="JSONL from manage.py scienceworld_trajectories")
    ap.add_argument("--per-task", type=int, default=4, help="without --data: trajectories per task to generate")
    ap.add_argument("--wrong-rate", type=float, default=0.5, help="without --data: wrong-action rate")
    ap.add_argument("--workers", type=int, default=1, help="without --data: generator processes")
    ap.add_argument("--save", type=Path, help="without --data: also write the generated trajectories here")
    ap.add_argument("--sizes", default="100,500,2000")
    ap.add_argument("--epochs", default="100:6,500:2,2000:1", help="N for all sizes, or size:epochs,...")
    ap.add_argument("--test-steps", type=int, default=600)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sizes = [int(x) for x in args.sizes.split(",")]
    epochs = parse_epochs(args.epochs, sizes)
    started = time.monotonic()

    if args.data:
        trajs = load_trajectories(args.data)
        source = str(args.data)
    else:
        from annotation.scienceworld import GenerationConfig, GenerationStats, generate_trajectories, summary

        stats = GenerationStats()
        config = GenerationConfig(per_task=args.per_task, seed=args.seed, wrong_rate=args.wrong_rate)
        trajs = list(generate_trajectories(config, workers=args.workers, stats=stats))
        print(f"generated: {summary(stats, time.monotonic() - started)}", flush=True)
        source = f"generated (per task {args.per_task}, wrong rate {args.wrong_rate}, seed {args.seed})"
        if args.save:
            with open(args.save, "w", encoding="utf-8") as f:
                for t in trajs:
                    f.write(json.dumps(t, ensure_ascii=False) + "\n")

    pool_trajs, test_trajs = split_by_trajectory(trajs, args.test_steps, args.seed)
    pool, test = examples_of(pool_trajs), examples_of(test_trajs)
    test_labels = [bool(e.label) for e in test]
    pos_share = sum(test_labels) / len(test_labels)
    samples = balanced_prefixes(pool, sizes, args.seed)
    base = resolve_base_model(None)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({cpu_name()}), {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"data: {source}: {len(trajs)} trajectories, {sum(len(t['steps']) for t in trajs)} steps")
    print(f"train pool: {len(pool_trajs)} trajectories, {len(pool)} steps ({sum(e.label for e in pool)} productive)")
    print(f"test: {len(test_trajs)} trajectories, {len(test)} steps, {pos_share:.1%} productive "
          f"(always 'productive' scores accuracy {pos_share:.3f})")
    print(f"base model: {base}; max_length {args.max_length}; lr {args.lr}; batch {args.batch_size}; "
          f"seed {args.seed}; {where}; torch {torch.__version__}", flush=True)

    def config_for(n_epochs: int) -> LFMConfig:
        return LFMConfig(max_length=args.max_length, lr=args.lr, epochs=n_epochs, batch_size=args.batch_size,
                         seed=args.seed)

    rows = []
    model = untrained_model(config_for(1)).to(device)
    t0 = time.monotonic()
    probs = predict(model, model.tokenizer, test, batch_size=64)
    score_s = time.monotonic() - t0
    rows.append({"labels": 0, "epochs": 0, "train_s": 0.0, "score_s": score_s, **evaluate(test_labels, probs)})
    print(f"untrained: {rows[-1]}", flush=True)
    del model

    for n in sizes:
        sample = samples[n]
        config = config_for(epochs[n])
        t0 = time.monotonic()
        model = train(config, sample, device=device)
        train_s = time.monotonic() - t0
        t0 = time.monotonic()
        probs = predict(model, model.tokenizer, test, batch_size=64)
        score_s = time.monotonic() - t0
        rows.append({
            "labels": n, "productive": sum(e.label for e in sample), "epochs": epochs[n], "train_s": train_s,
            "score_s": score_s, "loss": [h["loss"] for h in model.history], **evaluate(test_labels, probs),
        })
        print(f"{n} labels: {rows[-1]}", flush=True)
        del model

    total = time.monotonic() - started
    date = dt.date.today().isoformat()
    print()
    print(f"{date}; {where}; test {len(test)} steps from {len(test_trajs)} held-out trajectories "
          f"({pos_share:.1%} productive); total {total / 60:.1f} min")
    print()
    print("| labels (balanced) | epochs | train time | accuracy | F1 | AUROC | ECE |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        name = "0 (untrained head)" if r["labels"] == 0 else f"{r['labels']:,}"
        auroc = "n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
        train_time = "-" if r["labels"] == 0 else f"{r['train_s'] / 60:.1f} min"
        print(f"| {name} | {r['epochs'] or '-'} | {train_time} | {r['accuracy']:.3f} | {r['f1']:.3f} | "
              f"{auroc} | {r['ece']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "date": date, "machine": where, "platform": platform.platform(), "torch": torch.__version__,
            "base_model": base, "data": source, "trajectories": len(trajs),
            "train_pool": {"trajectories": len(pool_trajs), "steps": len(pool)},
            "test": {"trajectories": len(test_trajs), "steps": len(test), "productive_share": pos_share},
            "settings": {"max_length": args.max_length, "lr": args.lr, "batch_size": args.batch_size,
                         "seed": args.seed, "epochs": epochs, "device": args.device},
            "rows": rows, "total_s": total,
        }, indent=2))


if __name__ == "__main__":
    main()
