"""Fine-tune the LFM classifier on labelled steps: seeded, weighted, cancellable."""

from __future__ import annotations

import math
import random
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .evaluate import evaluate
from .model import (
    LFMConfig,
    LFMEncoderClassifier,
    LFMSeq2Seq,
    _autocast,
    build_model,
    encode,
    fit_texts,
    load_tokenizer,
    resolve_base_model,
    resolve_device,
)
from .predict import predict
from .text import StepExample

ProgressFn = Callable[[int, int, int, float], None]
StopFn = Callable[[], bool]


class Cancelled(Exception):
    """Training was stopped by `should_stop`; nothing was returned."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def example_weight(example: StepExample, config: LFMConfig) -> float:
    """The example's own weight, times `llm_label_weight` when its label came from an LLM."""
    return example.weight * (config.llm_label_weight if example.source == "llm" else 1.0)


def target_text(example: StepExample, config: LFMConfig) -> str:
    """What a seq2seq model learns to write: "Yes"/"No", or "Yes. <reason>" with `seq2seq_reasons`."""
    answer = "Yes" if example.label else "No"
    if config.seq2seq_reasons and example.reason.strip():
        return f"{answer}. {' '.join(example.reason.split())}"
    return answer


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "norm" in name.lower() or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _seq2seq_targets(model: LFMSeq2Seq, tokenizer, texts: list[str], labels: list[bool], device) -> torch.Tensor:
    enc = tokenizer(text_target=texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    ids = enc["input_ids"]
    first = ids[:, 0].tolist()
    for lab, tok in zip(labels, first):
        want = model.yes_id if lab else model.no_id
        if tok != want:
            raise ValueError(f"target starts with token {tok}, expected {want}: the tokenizer splits Yes/No oddly")
    ids = ids.masked_fill(enc["attention_mask"] == 0, -100)
    return ids.to(device)


def train(
    config: LFMConfig,
    train_examples: Sequence[StepExample],
    eval_examples: Sequence[StepExample] | None = None,
    *,
    device: str | torch.device | None = None,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> LFMEncoderClassifier | LFMSeq2Seq:
    """Fine-tune `config.base_model` on the labelled examples; returns the model in eval mode.

    Reproducible: the same config, examples and device give the same weights (seeded RNGs, data order
    from a generator seeded with seed + epoch). The loss is binary cross-entropy (encoder) or the
    target text's cross-entropy (seq2seq), each example weighted by `example_weight`. `progress` is
    called after every optimiser step with (epoch, step, total_steps, loss), steps counted from 1;
    `should_stop` is asked before every step and raises `Cancelled` when it says True.

    The returned model carries `.tokenizer`, `.lfm_config` (base_model resolved to a path) and
    `.history` (per epoch: mean loss, seconds, and metrics on `eval_examples` when given).
    """
    data = [e for e in train_examples if e.label is not None]
    if not data:
        raise ValueError("no labelled examples to train on")
    if config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    config = LFMConfig.from_dict({**config.to_dict(), "base_model": resolve_base_model(config.base_model)})
    dev = resolve_device(device)

    seed_everything(config.seed)
    tokenizer = load_tokenizer(config.base_model)
    model = build_model(config, tokenizer)
    model.tokenizer = tokenizer
    model.to(dev)

    texts = fit_texts(data, tokenizer, config.max_length, config.context_steps)
    labels = torch.tensor([bool(e.label) for e in data])
    weights = torch.tensor([example_weight(e, config) for e in data], dtype=torch.float32)
    if float(weights.sum()) <= 0:
        raise ValueError("every training example has weight 0")
    targets = [target_text(e, config) for e in data] if isinstance(model, LFMSeq2Seq) else None

    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(total_steps * config.warmup_ratio)
    optimizer = torch.optim.AdamW(_parameter_groups(model, config.weight_decay), lr=config.lr)

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    history = []
    step = 0
    for epoch in range(config.epochs):
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        order = torch.randperm(len(data), generator=gen).tolist()
        started = time.perf_counter()
        losses = []
        for b in range(0, len(order), config.batch_size):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped at step {step} of {total_steps}")
            idx = order[b : b + config.batch_size]
            batch = encode(tokenizer, [texts[i] for i in idx], config.max_length, dev)
            y = labels[idx].to(dev)
            w = weights[idx].to(dev)
            tgt = None
            if targets is not None:
                tgt = _seq2seq_targets(model, tokenizer, [targets[i] for i in idx], labels[idx].tolist(), dev)
            with _autocast(dev, config.precision):
                loss = model.loss(batch, y, w, tgt)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm:
                nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            value = float(loss.detach())
            losses.append(value)
            if progress is not None:
                progress(epoch, step, total_steps, value)
        entry = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
        if eval_examples:
            scored = [e for e in eval_examples if e.label is not None]
            if scored:
                model.eval()
                probs = predict(model, tokenizer, scored, batch_size=max(32, config.batch_size))
                entry["eval"] = evaluate([bool(e.label) for e in scored], probs)
        history.append(entry)
    model.eval()
    model.history = history
    return model
