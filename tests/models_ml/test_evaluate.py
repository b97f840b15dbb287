import math

import pytest

from models_ml.lfm import auroc, ece, evaluate


def test_auroc_of_a_known_ranking():
    # positives 0.9 and 0.7, negatives 0.8 and 0.1: 3 of the 4 (pos, neg) pairs are ordered right
    assert auroc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.75)
    assert auroc([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_auroc_ties_count_half():
    assert auroc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # pos 0.6 beats neg 0.4 (1), ties neg 0.6 (0.5); pos 0.4 ties neg 0.4 (0.5), loses to 0.6 (0)
    assert auroc([1, 1, 0, 0], [0.6, 0.4, 0.4, 0.6]) == pytest.approx(0.5)
    assert auroc([1, 0, 0], [0.7, 0.7, 0.1]) == pytest.approx(0.75)


def test_auroc_one_class_is_none():
    assert auroc([1, 1, 1], [0.2, 0.5, 0.9]) is None
    assert evaluate([0, 0], [0.1, 0.2])["auroc"] is None


def test_ece_of_a_known_case():
    # bin [0.2, 0.3): 4 examples, mean p 0.2, mean y 0.25; bin [0.9, 1.0]: 2 examples, p 0.9, y 1
    probs = [0.2, 0.2, 0.2, 0.2, 0.9, 0.9]
    labels = [1, 0, 0, 0, 1, 1]
    assert ece(labels, probs) == pytest.approx(0.05 * 4 / 6 + 0.1 * 2 / 6)
    # perfectly calibrated bins give 0; p = 1.0 falls in the last bin
    assert ece([1, 0], [0.5, 0.5]) == pytest.approx(0.0)
    assert ece([1, 1], [1.0, 1.0]) == pytest.approx(0.0)
    assert ece([0], [1.0]) == pytest.approx(1.0)


def test_evaluate_by_hand():
    labels = [1, 1, 0, 0, 1]
    probs = [0.9, 0.4, 0.6, 0.1, 0.8]  # predicted 1 0 1 0 1: tp 2, fp 1, fn 1
    m = evaluate(labels, probs)
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["auroc"] == pytest.approx(5 / 6)  # 0.4 loses to 0.6, every other pair ordered right
    assert math.isfinite(m["ece"])


def test_evaluate_edges():
    assert evaluate([], [])["n"] == 0
    assert evaluate([0, 0], [0.1, 0.2])["f1"] == 0.0
    with pytest.raises(ValueError):
        evaluate([1, 0], [0.5])
    with pytest.raises(ValueError):
        evaluate([1], [1.5])
