"""Measurements of a trained model: accuracy (top-k, balanced, per class), size, throughput."""

from __future__ import annotations

import statistics
import time

import keras
import numpy as np

from benchmark import progress


def pack_correct(correct: np.ndarray) -> str:
    """Per-example right/wrong as 'N:hex' (a bit each: 5,000 validation images in 1,250 characters),
    small enough for an Optuna user attribute."""
    correct = np.asarray(correct, dtype=bool)
    return f"{len(correct)}:{np.packbits(correct).tobytes().hex()}"


def unpack_correct(packed: str) -> np.ndarray:
    """pack_correct's inverse."""
    count, bits = packed.split(":", 1)
    return np.unpackbits(np.frombuffer(bytes.fromhex(bits), dtype=np.uint8), count=int(count)).astype(bool)


def top_k_predictions(logits: np.ndarray, k: int = 5) -> np.ndarray:
    """Class indices of the k largest logits per row, best first (ties: lower index first)."""
    k = min(k, logits.shape[1])
    return np.argsort(-logits, axis=1, kind="stable")[:, :k]


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    hits = (top_k_predictions(logits, k) == np.asarray(labels).reshape(-1, 1)).any(axis=1)
    return float(hits.mean()) if len(hits) else float("nan")


def reports_top5(num_classes: int) -> bool:
    """Whether top-5 accuracy says anything: with 5 classes or fewer every label is among the top 5."""
    return num_classes > 5


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """The mean of the per-class recalls over the classes present in `labels`, as
    sklearn.metrics.balanced_accuracy_score: each class counts the same, however many images it has."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if not len(labels):
        return float("nan")
    classes, class_of = np.unique(labels, return_inverse=True)
    correct = np.bincount(class_of, weights=predicted == labels, minlength=len(classes))
    return float(np.mean(correct / np.bincount(class_of, minlength=len(classes))))


PER_CLASS_COLUMNS = ("class_index", "class_name", "support", "correct", "recall", "predicted", "precision")


def per_class_rows(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> list[dict]:
    """One row per class: test images of it (support), how many of them were predicted right
    (correct) and their share (recall), images predicted as it (predicted) and the share of those
    that are it (precision). A share with nothing to divide by is NaN."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    count = len(class_names)
    support = np.bincount(labels, minlength=count)
    correct = np.bincount(labels[predicted == labels], minlength=count)
    guessed = np.bincount(predicted, minlength=count)
    return [
        {"class_index": i, "class_name": name, "support": int(support[i]), "correct": int(correct[i]),
         "recall": share(correct[i], support[i]), "predicted": int(guessed[i]), "precision": share(correct[i], guessed[i])}
        for i, name in enumerate(class_names)
    ]


def share(part: int, whole: int) -> float:
    return float(part / whole) if whole else float("nan")


def evaluate(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int) -> dict:
    """Top-1, top-5, balanced accuracy and the per-example top-5 predictions (kept for bootstrap
    intervals). Top-5 is there whatever the number of classes: the caller drops it (reports_top5)."""
    if isinstance(images, np.ndarray):  # in memory (CIFAR, cached arrays)
        logits = predict_in_memory(model, images, batch_size)
    else:  # own images (data.Rows): read a chunk at a time
        logits = predict(model, [images], batch_size, np.float32)
    predictions = top_k_predictions(logits, 5)
    return {
        "top1": top_k_accuracy(logits, labels, 1),
        "top5": top_k_accuracy(logits, labels, 5),
        "balanced_accuracy": balanced_accuracy(labels, predictions[:, 0]),
        "predictions": predictions,
    }


def predict_in_memory(model: keras.Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """model.predict(x, batch_size) as float32, batch by batch through the same traced step
    (predict_on_batch): the same values, without the input pipeline that predict sets up at every
    call on TensorFlow (~60 ms, where a head on cached features predicts a split in ~5 ms)."""
    if not len(x):
        return np.empty((0, *model.output_shape[1:]), np.float32)
    return np.concatenate([np.asarray(model.predict_on_batch(x[start:start + batch_size]), dtype=np.float32)
                           for start in range(0, len(x), batch_size)])


PREDICT_CHUNK_BYTES = 32 * 2**20  # of input read and predicted at once (about 200 images at 224 px)
# Pixels a forward pass without gradients takes in at once: 64 images at 160 px (the `transfer`
# experiment's batch), about 0.6 GB of activations in EfficientNet-Lite0 (TensorFlow, CPU). Larger
# images halve the batch until it fits (224 px: 32 images, not 64: 1.1 GB): activations grow with
# pixels, and a per-image forward pass gives the same features in any batch (to float rounding).
# CIFAR's 32 px images never reach it.
PREDICT_BATCH_PIXELS = 64 * 160 * 160


def predict_batch_size(batch_size: int, shape: tuple[int, ...]) -> int:
    """batch_size, halved while a batch of images of `shape` (N, H, W, C) exceeds PREDICT_BATCH_PIXELS."""
    pixels = int(np.prod(shape[1:3])) if len(shape) == 4 else 0
    while batch_size > 1 and batch_size * pixels > PREDICT_BATCH_PIXELS:
        batch_size = (batch_size + 1) // 2
    return batch_size


def predict(model: keras.Model, sources: list, batch_size: int, dtype=np.float32, desc: str | None = None) -> np.ndarray:
    """model.predict over `sources` one after another, as over their concatenation, without
    concatenating them: chunks of whole batches (PREDICT_CHUNK_BYTES of input at most) are read,
    predicted and written into one preallocated output, so memory holds one chunk of input whatever
    the sources' size. Every batch holds what it would hold in one predict over the concatenation
    (the same values: one traced function, the last partial batch included), batches of
    batch_size images but for images above PREDICT_BATCH_PIXELS a batch (predict_batch_size).

    A source is an array, a data.Rows, or anything with `shape` and `blocks()` (consecutive rows,
    in order: cache.AugmentedView). With `desc`, a bar of the images predicted (benchmark.progress),
    advanced batch by batch."""
    total = sum(len(source) for source in sources)
    batch_size = min(predict_batch_size(batch_size, tuple(source.shape)) for source in sources)
    row_bytes = max(int(np.prod(source.shape[1:])) * np.dtype(getattr(source, "dtype", np.uint8)).itemsize
                    for source in sources)
    rows = batch_size * max(1, PREDICT_CHUNK_BYTES // (batch_size * max(row_bytes, 1)))
    out, position = None, 0
    with progress.bar(total, desc or "", "img", shown=desc is not None) as meter:
        for chunk in chunks(sources, rows):
            counted = BatchesCounted(meter, batch_size, len(chunk))
            predicted = np.asarray(model.predict(chunk, batch_size=batch_size, verbose=0, callbacks=[counted]))
            if out is None:
                out = np.empty((total, *predicted.shape[1:]), dtype)
            out[position:position + len(predicted)] = predicted
            position += len(predicted)
    return out if out is not None else np.empty((0,), dtype)


class BatchesCounted(keras.callbacks.Callback):
    """Advances a bar by each batch's images as `predict` goes through `rows` images (Keras's own
    progress bar draws a line per call: one per chunk)."""

    def __init__(self, meter, batch_size: int, rows: int):
        super().__init__()
        self.meter, self.batch_size, self.rows = meter, batch_size, rows

    def on_predict_batch_end(self, batch: int, logs=None) -> None:
        self.meter.update(min(self.batch_size, self.rows - batch * self.batch_size))


def chunks(sources: list, rows: int):
    """The sources' rows, one after another, in arrays of `rows` rows (the last one shorter)."""
    pending, held = [], 0
    for source in sources:
        blocks = source.blocks() if hasattr(source, "blocks") else (
            source[start:start + rows] for start in range(0, len(source), rows))
        for block in blocks:
            while len(block):
                take = min(rows - held, len(block))
                pending.append(block[:take])
                held += take
                block = block[take:]
                if held == rows:
                    yield pending[0] if len(pending) == 1 else np.concatenate(pending)
                    pending, held = [], 0
    if held:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def count_params(*models: keras.Model) -> tuple[int, int]:
    """(total, trainable) parameter counts of the models together (parts that share no layer)."""
    trainable = sum(int(np.prod(w.shape)) for model in models for w in model.trainable_weights)
    return sum(model.count_params() for model in models), trainable


def inference_throughput(model: keras.Model, batch_size: int = 64, warmup: int = 3, steps: int = 10) -> float:
    """Images/s like timm's infer_samples_per_sec: synthetic input, warm-up, median of timed batches."""
    shape = (batch_size, *model.input_shape[1:])
    batch = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    for _ in range(warmup):
        model.predict_on_batch(batch)
    timings = []
    for _ in range(steps):
        start = time.perf_counter()
        np.asarray(model.predict_on_batch(batch))  # materialise: async backends return early
        timings.append(time.perf_counter() - start)
    return batch_size / statistics.median(timings)


def training_step_throughput(model: keras.Model, batch_size: int = 64, warmup: int = 3, steps: int = 10) -> float:
    """Images/s like timm's train_samples_per_sec: synthetic batch, warm-up steps, median of timed
    train_on_batch steps (forward, backward, optimizer update). The model must be compiled."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(batch_size, *model.input_shape[1:]), dtype=np.uint8)
    classes = model.output_shape[-1]
    labels = keras.utils.to_categorical(rng.integers(0, classes, size=batch_size), classes)
    for _ in range(warmup):
        model.train_on_batch(images, labels)
    timings = []
    for _ in range(steps):
        start = time.perf_counter()
        float(model.train_on_batch(images, labels, return_dict=True)["loss"])  # materialise: async backends return early
        timings.append(time.perf_counter() - start)
    return batch_size / statistics.median(timings)


def training_throughput(train_seconds: list[float], images_per_epoch: int) -> float:
    """Images/s over training epochs, the first (tracing, warm-up) excluded when there are more."""
    timed = train_seconds[1:] or train_seconds
    return images_per_epoch / statistics.median(timed) if timed else float("nan")
