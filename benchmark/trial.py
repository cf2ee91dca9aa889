"""One trial: spec -> data -> model -> train -> measure. Tracking is the caller's (see track.py).

`prepare` does everything that can reject bad input (data, model, unfreeze depth) before any
training starts or any run is recorded; `execute` trains and measures.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from benchmark import features, measure, track
from benchmark.data import Dataset, load_dataset
from benchmark.model import BuiltModel, create_model
from benchmark.spec import TrialSpec
from benchmark.train import History, train


@dataclass
class Prepared:
    spec: TrialSpec
    data: Dataset
    built: BuiltModel
    started: float


@dataclass
class TrialResult:
    spec: TrialSpec
    metrics: dict[str, float]
    history: History
    test_labels: np.ndarray
    test_predictions: np.ndarray  # top-5 class indices per test image
    model_path: Path
    tags: dict[str, str]

    @property
    def title(self) -> str:
        return f"{self.spec.backbone.name} / {self.spec.strategy_name}"


def prepare(spec: TrialSpec, data: Dataset | None = None) -> Prepared:
    started = time.perf_counter()
    data = data if data is not None else load_dataset(spec.data)
    return Prepared(spec=spec, data=data, built=create_model(spec, data.num_classes), started=started)


def execute(prepared: Prepared, callbacks=(), verbose: int = 0, workdir: Path | None = None) -> TrialResult:
    spec, data, built = prepared.spec, prepared.data, prepared.built
    model = built.model
    not_cached = features.why_not_cached(spec)
    cache = features.cached_features(spec, built, data) if not_cached is None else None
    history = train(built, spec, data, callbacks=list(callbacks), verbose=verbose,
                    features=cache.data if cache else None)
    best, last = history.epochs[history.best_index], history.epochs[-1]
    # A frozen trial's head is measured on the cached features: the same numbers as the full model on images.
    test_model, test_data = (built.head, cache.data) if cache and spec.strategy.unfreeze == 0 else (model, data)
    test = measure.evaluate(test_model, test_data.x_test, data.y_test, spec.training.batch_size)
    total, trainable = measure.count_params(model)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="benchmark-trial-"))
    model_path = workdir / "model.keras"
    metrics = {
        "best_val_top1": best["val_top1"],
        "best_val_top5": best["val_top5"],
        "best_epoch": float(history.best_index + 1),  # counted from 1, as Keras prints epochs
        "last_val_top1": last["val_top1"],
        "last_val_top5": last["val_top5"],
        "test_top1": test["top1"],
        "test_top5": test["top5"],
        "params_total": float(total),
        "params_trainable": float(trainable),
        "model_size_mb": measure.save_for_inference(model, model_path),
        "infer_images_per_sec": inference_rate(spec, model),
        "train_images_per_sec": measure.training_throughput(history.train_seconds, len(data.x_train)),
        "epochs_run": float(len(history.epochs)),
        "backbone_depth": float(built.depth),
        "features_s": cache.seconds if cache else 0.0,
    }
    metrics["wall_time_s"] = time.perf_counter() - prepared.started
    return TrialResult(
        spec=spec,
        metrics=metrics,
        history=history,
        test_labels=data.y_test,
        test_predictions=test["predictions"],
        model_path=model_path,
        tags={track.TAG_FEATURE_CACHE: cache.status if cache else f"off: {not_cached}"},
    )


_inference_rates: dict[str, float] = {}


def inference_rate(spec: TrialSpec, model: keras.Model) -> float:
    """measure.inference_throughput, once per process for each architecture and setting: the
    speed of a model does not depend on its trained weights, and a sweep's trials repeat one model."""
    key = json.dumps([spec.backbone.image_size, spec.backbone.name, spec.head.model_dump(), spec.training.batch_size,
                      spec.training.mixed_precision, spec.training.jit_compile, keras.backend.backend()])
    if key not in _inference_rates:
        _inference_rates[key] = measure.inference_throughput(model, spec.training.batch_size)
    return _inference_rates[key]


def run_trial(spec: TrialSpec, data: Dataset | None = None, callbacks=(), verbose: int = 0) -> TrialResult:
    return execute(prepare(spec, data), callbacks=callbacks, verbose=verbose)
