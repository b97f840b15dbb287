"""Binary classification metrics in plain numpy: accuracy, F1, AUROC, ECE."""

from __future__ import annotations

from typing import Sequence

import numpy as np

ECE_BINS = 10


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    i = 0
    n = len(values)
    while i < n:
        j = i
        while j + 1 < n and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def auroc(labels: Sequence[bool], probs: Sequence[float]) -> float | None:
    """Area under the ROC curve by the rank-sum (Mann-Whitney U); None when only one class is present."""
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(probs, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    r = _ranks(p)
    u = r[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def ece(labels: Sequence[bool], probs: Sequence[float], bins: int = ECE_BINS) -> float:
    """Expected calibration error of P(positive): sum over equal-width bins of |mean y - mean p| * share.

    Bins are [0, 0.1), [0.1, 0.2), ..., [0.9, 1.0] (the last one closed).
    """
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if len(y) == 0:
        return 0.0
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += abs(y[sel].mean() - p[sel].mean()) * sel.sum() / len(y)
    return float(total)


def evaluate(labels: Sequence[bool], probs: Sequence[float], threshold: float = 0.5) -> dict:
    """{accuracy, f1, auroc, ece, n} for binary labels and P(positive); prediction is p >= threshold.

    F1 is of the positive class ("productive"), 0 when there is no true positive. AUROC is None when
    the labels hold one class only. With no examples every metric is None and n is 0.
    """
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        return {"accuracy": None, "f1": None, "auroc": None, "ece": None, "n": 0}
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("probabilities must lie in [0, 1]")
    pred = p >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {
        "accuracy": float((pred == y).mean()),
        "f1": float(f1),
        "auroc": auroc(y, p),
        "ece": ece(y, p),
        "n": int(len(y)),
    }
