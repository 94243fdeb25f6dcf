"""Accuracy/F1 sums against hand values and scikit-learn; early stopping on scripted sequences."""

from __future__ import annotations

import numpy as np
import pytest

from jaxft.recipes.movielens.metrics import MultiMetricStop, scores, yes_no_sums


def _ratios(s):
    return s["accuracy"] / s["accuracy_count"], (s["f1"] / s["f1_count"] if s["f1_count"] else 0.0)


def test_sums_by_hand():
    # pred:  Y  Y  N  N  Y  (pad row last, predicted Y but weight 0)
    # true:  Y  N  Y  N  Y   -> TP=2, FP=1, FN=1, TN=1; accuracy 3/5; F1 = 4 / (4 + 1 + 1)
    yes = np.array([2.0, 0.5, -1.0, 0.0, 3.0, 9.0])
    no = np.array([1.0, 0.0, 0.0, 0.0, -3.0, 0.0])  # the tie (0, 0) counts as No
    true = np.array([1, 0, 1, 0, 1, 1])
    weight = np.array([1.0, 1, 1, 1, 1, 0])
    s = yes_no_sums(yes, no, true, weight)
    assert {k: float(v) for k, v in s.items()} == {"accuracy": 3.0, "accuracy_count": 5.0, "f1": 4.0,
                                                   "f1_count": 6.0}
    acc, f1 = _ratios(s)
    assert acc == pytest.approx(0.6) and f1 == pytest.approx(2 / 3)


def test_no_positive_gives_zero_f1():
    s = yes_no_sums(np.zeros(3), np.ones(3), np.zeros(3), np.ones(3))
    assert _ratios(s) == (1.0, 0.0)
    assert scores([0, 0, 0], [0, 0, 0])["f1"] == 0.0


def test_sums_add_up_across_batches_like_sklearn():
    from sklearn import metrics as sklearn
    rng = np.random.default_rng(0)
    yes, no = rng.normal(size=200), rng.normal(size=200)
    true = rng.integers(0, 2, size=200)
    total = None
    for part in np.array_split(np.arange(200), 7):  # uneven batches, summed like the engine does
        s = yes_no_sums(yes[part], no[part], true[part], np.ones(len(part)))
        total = s if total is None else {k: total[k] + s[k] for k in s}
    acc, f1 = _ratios(total)
    pred = (yes > no).astype(int)
    assert acc == pytest.approx(sklearn.accuracy_score(true, pred))
    assert f1 == pytest.approx(sklearn.f1_score(true, pred, pos_label=1))
    report = scores(pred, true)
    assert report["accuracy"] == pytest.approx(acc) and report["f1"] == pytest.approx(f1)
    c = report["confusion"]
    assert [[c["tn"], c["fp"]], [c["fn"], c["tp"]]] == sklearn.confusion_matrix(true, pred).tolist()


def test_majority_baseline():
    r = scores([1, 1, 1, 1, 1], [1, 0, 0, 0, 1])
    assert r["majority_label"] == "No" and r["majority_accuracy"] == pytest.approx(0.6)
    assert r["accuracy"] == pytest.approx(0.4) and r["f1"] == pytest.approx(4 / 7)


def _evals(rows):
    return [{"step": 10 * (i + 1), "train_loss": loss, "accuracy": a, "f1": f} for i, (loss, a, f) in enumerate(rows)]


def _first_stop(rule, rows):
    evals = _evals(rows)
    for i in range(1, len(evals) + 1):
        if rule(evals[:i]):
            return i
    return None


def test_stops_only_when_all_three_stall():
    rule = MultiMetricStop(patience=2)
    rows = [
        (1.00, 0.50, 0.40),  # sets the bests
        (0.90, 0.50, 0.40),  # loss improves; acc, f1 stall 1
        (0.95, 0.5005, 0.40),  # loss stalls 1; +0.0005 acc is under min_delta: stall 2; f1 stall 2
        (0.8995, 0.49, 0.39),  # loss 0.9 -> 0.8995 is under min_delta: stall 2 -> all three at 2: stop here
        (0.50, 0.90, 0.90),
    ]
    assert _first_stop(rule, rows) == 4
    assert rule.counters(_evals(rows[:4])) == {"train_loss": 2, "accuracy": 3, "f1": 3}


def test_one_improving_metric_keeps_training():
    rule = MultiMetricStop(patience=2)
    # the loss and F1 are flat, accuracy improves by 0.01 every other eval: never all stalled
    rows = [(1.0, 0.50 + 0.01 * (i // 2), 0.4) for i in range(12)]
    assert _first_stop(rule, rows) is None
    # the F1 improvement resets only its own counter
    rows = [(1.0, 0.5, 0.4), (1.0, 0.5, 0.4), (1.0, 0.5, 0.5), (1.0, 0.5, 0.5), (1.0, 0.5, 0.5)]
    assert rule.counters(_evals(rows[:4])) == {"train_loss": 3, "accuracy": 3, "f1": 1}
    assert _first_stop(rule, rows) == 5


def test_missing_train_loss_is_ignored_and_patience_zero_never_stops():
    rule = MultiMetricStop(patience=1)
    rows = [(float("nan"), 0.5, 0.5), (1.0, 0.5, 0.5), (1.0, 0.5, 0.5)]
    assert _first_stop(rule, rows) == 3  # the train loss only starts counting at the second eval
    assert _first_stop(MultiMetricStop(patience=0), [(1.0, 0.5, 0.5)] * 5) is None
    assert MultiMetricStop(patience=3)([]) is None


def test_precision_and_recall_like_sklearn():
    from sklearn.metrics import precision_score, recall_score

    from jaxft.recipes.movielens.metrics import scores

    rng = np.random.default_rng(4)
    pred, true = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    got = scores(pred, true)
    assert got["precision"] == pytest.approx(precision_score(true, pred))
    assert got["recall"] == pytest.approx(recall_score(true, pred))
    assert scores([0, 0], [1, 0])["precision"] == 0.0 and scores([0, 0], [0, 0])["recall"] == 0.0


def test_the_tracked_train_loss_is_the_last_logged_steps():
    """README: the early stop reads the loss of the last logged step at or before each eval (not a window mean)."""
    from jaxft.train.loop import eval_records

    history = {"train_loss": [(10, 2.0), (20, 1.0), (30, 4.0)],
               "eval": [(5, {"f1": 0.1}), (20, {"f1": 0.2}), (35, {"f1": 0.3})]}
    records = eval_records(history)
    assert [r["step"] for r in records] == [5, 20, 35] and [r["f1"] for r in records] == [0.1, 0.2, 0.3]
    assert np.isnan(records[0]["train_loss"]) and [r["train_loss"] for r in records[1:]] == [1.0, 4.0]
