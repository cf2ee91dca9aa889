"""Accuracy on hand-made logits (top-k, balanced, per class), and throughput arithmetic."""

import warnings

import numpy as np
import pytest

from benchmark.measure import (
    PER_CLASS_COLUMNS,
    balanced_accuracy,
    evaluate,
    per_class_rows,
    reports_top5,
    top_k_accuracy,
    top_k_predictions,
    training_throughput,
)

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


# ---------------------------------------------------------------- any number of classes

# Three classes of 4, 2 and 4 test images: 3, 1 and 2 of them right. Class 0 is predicted 6 times
# (3 right), class 1 twice (1 right), class 2 twice (2 right); nothing is predicted as class 3.
TOY_LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
TOY_PREDICTED = np.array([0, 0, 0, 1, 1, 0, 2, 2, 0, 0])


def test_balanced_accuracy_is_the_mean_of_the_per_class_recalls():
    by_hand = (3 / 4 + 1 / 2 + 2 / 4) / 3
    assert balanced_accuracy(TOY_LABELS, TOY_PREDICTED) == pytest.approx(by_hand) == pytest.approx(0.5833333)
    assert np.mean(TOY_LABELS == TOY_PREDICTED) == pytest.approx(0.6)  # plain accuracy favours the big classes
    assert balanced_accuracy(TOY_LABELS, TOY_LABELS) == 1.0
    assert np.isnan(balanced_accuracy(np.array([], int), np.array([], int)))


def test_balanced_accuracy_agrees_with_sklearn_including_classes_only_predicted():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    for classes in (2, 3, 7, 100):
        labels = rng.integers(0, classes, size=200) ** 2 % classes  # uneven, some classes absent
        predicted = rng.integers(0, classes, size=200)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn warns about classes that are only predicted
            expected = balanced_accuracy_score(labels, predicted)
        assert balanced_accuracy(labels, predicted) == pytest.approx(expected), classes


def test_top5_is_reported_only_with_more_than_five_classes():
    assert [reports_top5(n) for n in (2, 3, 5, 6, 100)] == [False, False, False, True, True]


def test_per_class_rows_of_a_three_class_toy():
    rows = per_class_rows(TOY_LABELS, TOY_PREDICTED, ["cat", "dog", "fox", "owl"])
    assert [tuple(r) for r in rows] == [PER_CLASS_COLUMNS] * 4
    assert [(r["class_index"], r["class_name"], r["support"], r["correct"], r["predicted"]) for r in rows] == [
        (0, "cat", 4, 3, 6), (1, "dog", 2, 1, 2), (2, "fox", 4, 2, 2), (3, "owl", 0, 0, 0)]
    assert [r["recall"] for r in rows[:3]] == pytest.approx([3 / 4, 1 / 2, 2 / 4])
    assert [r["precision"] for r in rows[:3]] == pytest.approx([3 / 6, 1 / 2, 2 / 2])
    assert np.isnan(rows[3]["recall"]) and np.isnan(rows[3]["precision"])  # no image of it, none predicted as it
    assert np.mean([r["recall"] for r in rows if r["support"]]) == pytest.approx(
        balanced_accuracy(TOY_LABELS, TOY_PREDICTED))


class FixedLogits:
    """A stand-in for a Keras model whose images are row numbers into fixed logits."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits

    def predict_on_batch(self, rows):
        return self.logits[rows[:, 0]]


def test_evaluate_on_three_classes_gives_balanced_accuracy_and_top1_first():
    logits = np.eye(3)[TOY_PREDICTED] + 0.1 * np.arange(3)  # the predicted class is the largest
    result = evaluate(FixedLogits(logits), np.arange(10).reshape(10, 1), TOY_LABELS, batch_size=4)
    assert result["top1"] == pytest.approx(0.6) and result["top5"] == 1.0  # the trial drops top-5 here
    assert result["balanced_accuracy"] == pytest.approx(0.5833333)
    assert result["predictions"].shape == (10, 3) and (result["predictions"][:, 0] == TOY_PREDICTED).all()


def test_predicting_in_memory_batch_by_batch_gives_what_predict_gives_to_the_last_bit():
    import keras

    from benchmark.measure import predict_in_memory

    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(7)(keras.layers.Dropout(0.5)(inputs)))
    x = np.random.default_rng(0).normal(size=(23, 16)).astype(np.float32)  # 5 batches of 5, the last of 3
    ours = predict_in_memory(model, x, batch_size=5)
    assert ours.dtype == np.float32 and ours.shape == (23, 7)
    np.testing.assert_array_equal(ours, model.predict(x, batch_size=5, verbose=0))  # dropout off: inference
    assert predict_in_memory(model, x[:0], batch_size=5).shape == (0, 7)


def test_the_prediction_batch_shrinks_only_for_large_images():
    from benchmark.measure import predict_batch_size

    assert predict_batch_size(64, (50_000, 32, 32, 3)) == 64  # CIFAR: as the spec says
    assert predict_batch_size(64, (100, 160, 160, 3)) == 64
    assert predict_batch_size(64, (100, 224, 224, 3)) == 32
    assert predict_batch_size(64, (100, 1280)) == 64  # features, not images
