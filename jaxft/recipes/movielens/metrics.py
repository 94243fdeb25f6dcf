"""Yes/No classification metrics as sums, and the reference's multi-metric early stopping.

The prediction is "Yes" when the Yes token's logit at the answer position beats the No token's
(equivalently p(Yes) > p(No); a tie counts as "No"). Accuracy and F1 (Yes positive) are returned as
sums so they add up exactly over batches and devices: ``accuracy = correct / count`` and
``f1 = 2TP / (2TP + FP + FN)`` (0 when there is no positive at all, as in the reference).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np


def yes_no_sums(yes_logit, no_logit, is_yes, weight) -> dict:
    """Metric sums over a batch. ``weight`` is 1 for real examples, 0 for padding rows.

    Works on numpy and jax arrays alike (only elementwise ops and sums).
    """
    pred = (yes_logit > no_logit).astype(weight.dtype)
    true = is_yes.astype(weight.dtype)
    tp = (pred * true * weight).sum()
    fp = (pred * (1 - true) * weight).sum()
    fn = ((1 - pred) * true * weight).sum()
    correct = ((pred == true).astype(weight.dtype) * weight).sum()
    return {"accuracy": correct, "accuracy_count": weight.sum(), "f1": 2 * tp, "f1_count": 2 * tp + fp + fn}


def confusion(pred: Sequence[int], true: Sequence[int]) -> dict[str, int]:
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    return {"tp": int((pred & true).sum()), "fp": int((pred & ~true).sum()),
            "fn": int((~pred & true).sum()), "tn": int((~pred & ~true).sum())}


def scores(pred: Sequence[int], true: Sequence[int]) -> dict:
    """accuracy, precision, recall and F1 (Yes positive; 0 where undefined, as the reference's
    ``compare_base_vs_lora.py``), confusion matrix and the majority-class baseline's accuracy."""
    c = confusion(pred, true)
    n = sum(c.values())
    positives = c["tp"] + c["fn"]
    denom = 2 * c["tp"] + c["fp"] + c["fn"]
    predicted = c["tp"] + c["fp"]
    return {"n": n, "accuracy": (c["tp"] + c["tn"]) / n if n else 0.0,
            "precision": c["tp"] / predicted if predicted else 0.0,
            "recall": c["tp"] / positives if positives else 0.0,
            "f1": 2 * c["tp"] / denom if denom else 0.0, "confusion": c,
            "majority_label": "Yes" if positives * 2 >= n else "No",
            "majority_accuracy": max(positives, n - positives) / n if n else 0.0}


class MultiMetricStop:
    """Stop once the train loss, eval accuracy and eval F1 have all stalled for ``patience`` evals.

    The reference's rule: each tracked value keeps its best so far; an eval improves it when it beats
    the best by more than ``min_delta`` (lower for the loss, higher for the metrics), which resets its
    counter, and otherwise adds one to it. The first value seen only sets the best. Training stops
    when all three counters reach ``patience``. Recomputed from the whole eval history on each call,
    so a resumed run decides exactly as an uninterrupted one. ``patience <= 0`` never stops.
    """

    TRACKED = (("train_loss", -1), ("accuracy", +1), ("f1", +1))

    def __init__(self, patience: int, min_delta_loss: float = 0.001, min_delta_metrics: float = 0.001):
        self.patience, self.min_delta_loss, self.min_delta_metrics = patience, min_delta_loss, min_delta_metrics

    def counters(self, evals: Sequence[Mapping]) -> dict[str, int]:
        best: dict[str, float] = {}
        stalled = {name: 0 for name, _ in self.TRACKED}
        for ev in evals:
            for name, sign in self.TRACKED:
                value = ev.get(name)
                if value is None or not math.isfinite(value):
                    continue  # e.g. no train loss yet at an eval before the first step
                delta = self.min_delta_loss if name == "train_loss" else self.min_delta_metrics
                if name not in best:
                    best[name] = value
                elif sign * (value - best[name]) > delta:
                    best[name], stalled[name] = value, 0
                else:
                    stalled[name] += 1
        return stalled

    def __call__(self, evals: Sequence[Mapping]) -> str | None:
        if self.patience <= 0 or not evals:
            return None
        stalled = self.counters(evals)
        if all(count >= self.patience for count in stalled.values()):
            return (f"train loss, eval accuracy and eval F1 have not improved by more than their min_delta "
                    f"for {self.patience} evals")
        return None
