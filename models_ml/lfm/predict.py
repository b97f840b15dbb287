"""Score steps: P(productive) per example, batched, without gradients."""

from __future__ import annotations

from typing import Sequence

import torch

from .model import _autocast, encode, fit_texts, model_device
from .text import StepExample


@torch.inference_mode()
def predict(
    model,
    tokenizer,
    examples: Sequence[StepExample],
    batch_size: int = 32,
    *,
    precision: str | None = None,
) -> list[float]:
    """P(step was productive) for each example, in the order given.

    Texts are rendered and fitted to the model's `max_length` as in training; examples are batched
    by token length (less padding) and the results put back in order. The model is switched to eval
    mode. `precision` defaults to the model's `lfm_config.precision`.
    """
    if not examples:
        return []
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    config = model.lfm_config
    precision = precision or config.precision
    device = model_device(model)
    model.eval()
    texts = fit_texts(list(examples), tokenizer, config.max_length, config.context_steps)
    lengths = [len(t) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
    out = [0.0] * len(texts)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        batch = encode(tokenizer, [texts[i] for i in idx], config.max_length, device)
        with _autocast(device, precision):
            logits = model.logits(**batch)
        probs = torch.sigmoid(logits.float()).cpu().tolist()
        for i, p in zip(idx, probs):
            out[i] = float(p)
    return out
