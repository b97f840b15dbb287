"""Token attributions for one step, merged into the words of the text the model read.

Both methods work on the input embeddings and explain the model's logit (log-odds of "productive";
for a seq2seq model logit(Yes) - logit(No)), so a positive weight pushes towards "productive":

- "grad_x_input": gradient of the logit with respect to each token embedding, dotted with the
  embedding (one backward pass);
- "integrated_gradients": the same dot product with (embedding - baseline) and the gradient averaged
  over `steps` points on the straight line from the baseline to the input (midpoint rule). The
  baseline keeps the special tokens and puts the padding token's embedding everywhere else.

Word pieces are summed into the whitespace-separated words they belong to (by the tokenizer's
character offsets), then divided by the largest absolute weight, so weights lie in [-1, 1].
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import torch

from .model import fit_text, model_device
from .text import StepExample

METHODS = ("grad_x_input", "integrated_gradients")
_WORD = re.compile(r"\S+")


def explain(
    model,
    tokenizer,
    example: StepExample,
    method: str = "grad_x_input",
    steps: int = 16,
    *,
    batch_size: int = 16,
) -> list[tuple[str, float]]:
    """[(word, weight)] over the words of the step's text (those that fit in the model's window)."""
    config = model.lfm_config
    text = fit_text(example, tokenizer, config.max_length, config.context_steps)
    attr = token_attributions(model, tokenizer, text, method, steps, batch_size=batch_size)
    return merge_words(text, attr.offsets, attr.special, attr.scores)


@dataclass
class TokenAttributions:
    text: str
    offsets: list[tuple[int, int]]
    special: list[bool]
    #: One raw score per token (special tokens included), in logit units.
    scores: list[float]
    #: The model's logit for the text, and for the baseline (integrated gradients only).
    logit: float
    baseline_logit: float | None = None


def token_attributions(
    model, tokenizer, text: str, method: str = "grad_x_input", steps: int = 16, *, batch_size: int = 16
) -> TokenAttributions:
    """Raw per-token attributions of the model's logit for `text` (not merged, not normalised)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps < 1:
        raise ValueError("steps must be >= 1")
    config = model.lfm_config
    device = model_device(model)
    was_training = model.training
    model.eval()
    enc = tokenizer(
        text,
        truncation=True,
        max_length=config.max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    input_ids = enc["input_ids"].to(device)
    attention_mask = enc["attention_mask"].to(device)
    extra = {"token_type_ids": enc["token_type_ids"].to(device)} if "token_type_ids" in enc else {}
    special = enc["special_tokens_mask"][0].bool()
    offsets = [tuple(o) for o in enc["offset_mapping"][0].tolist()]

    def logits_of(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return model.logits(
            inputs_embeds=x,
            attention_mask=attention_mask.expand(n, -1),
            **{k: v.expand(n, -1) for k, v in extra.items()},
        )

    emb_layer = model.input_embeddings()
    baseline_logit = None
    try:
        with torch.no_grad():
            embeds = emb_layer(input_ids).float()
        if method == "grad_x_input":
            x = embeds.clone().requires_grad_(True)
            logit = logits_of(x)
            (grad,) = torch.autograd.grad(logit.sum(), x)
            scores = (grad * embeds).sum(-1)[0]
            value = float(logit.detach()[0])
        else:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            with torch.no_grad():
                pad = emb_layer(torch.tensor([pad_id], device=device)).float()[0]
                baseline = embeds.clone()
                baseline[0, ~special.to(device)] = pad
                value = float(logits_of(embeds)[0])
                baseline_logit = float(logits_of(baseline)[0])
            delta = embeds - baseline
            total = torch.zeros_like(embeds)
            alphas = [(k + 0.5) / steps for k in range(steps)]
            for b in range(0, steps, batch_size):
                chunk = torch.tensor(alphas[b : b + batch_size], device=device).view(-1, 1, 1)
                x = (baseline + chunk * delta).requires_grad_(True)
                (grad,) = torch.autograd.grad(logits_of(x).sum(), x)
                total += grad.sum(0, keepdim=True)
            scores = ((total / steps) * delta).sum(-1)[0]
    finally:
        if was_training:
            model.train()
    return TokenAttributions(
        text=text,
        offsets=offsets,
        special=special.tolist(),
        scores=scores.detach().cpu().tolist(),
        logit=value,
        baseline_logit=baseline_logit,
    )


def merge_words(
    text: str, offsets: list[tuple[int, int]], special: list[bool], scores: list[float]
) -> list[tuple[str, float]]:
    """Sum token scores into the whitespace-separated words of `text`; normalise by the largest |weight|."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    starts = [s for s, _ in words]
    weight = [0.0] * len(words)
    seen = [False] * len(words)
    for (s, e), sp, score in zip(offsets, special, scores):
        if sp or e <= s:
            continue
        w = bisect.bisect_right(starts, s) - 1
        if w < 0 or s >= words[w][1]:
            continue  # a token on whitespace only
        weight[w] += score
        seen[w] = True
    kept = [(text[s:e], weight[i]) for i, (s, e) in enumerate(words) if seen[i]]
    top = max((abs(w) for _, w in kept), default=0.0)
    if top > 0:
        kept = [(word, max(-1.0, min(1.0, w / top))) for word, w in kept]
    return kept
