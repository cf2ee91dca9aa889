"""Accuracy on hand-made logits, and throughput arithmetic."""

import numpy as np
import pytest

from benchmark.measure import top_k_accuracy, top_k_predictions, training_throughput

LOGITS = np.array(
    [
        [0.1, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 1: top-1 hit
        [0.5, 0.1, 0.4, 0.3, 0.2, 0.05, 0.0],  # label 4: 5th largest -> top-5 hit, top-1 miss
        [0.5, 0.1, 0.4, 0.3, 0.2, 0.05, 0.0],  # label 6: smallest -> miss for both
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0],  # label 3: hit
    ]
)
LABELS = np.array([1, 4, 6, 3])


def test_top1_and_top5_on_hand_made_logits():
    assert top_k_accuracy(LOGITS, LABELS, 1) == pytest.approx(0.5)
    assert top_k_accuracy(LOGITS, LABELS, 5) == pytest.approx(0.75)
    assert top_k_accuracy(LOGITS, LABELS, 7) == pytest.approx(1.0)


def test_top_k_predictions_are_ordered_best_first():
    assert top_k_predictions(LOGITS, 5)[1].tolist() == [0, 2, 3, 4, 1]


def test_training_throughput_excludes_the_first_epoch():
    assert training_throughput([10.0, 2.0, 2.0, 4.0], 1000) == pytest.approx(500.0)
    assert training_throughput([4.0], 1000) == pytest.approx(250.0)
