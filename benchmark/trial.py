"""One trial: spec -> plan -> data -> model -> train -> measure, and `run_tracked`, which runs it
inside its MLflow run.

`prepare` does everything that can reject bad input (plan, data, model, unfreeze depth) before
any training starts or any run is recorded; `execute` carries out the plan (benchmark/plan.py):
the cached arrays it needs (benchmark/cache.py), training, measuring; `finish` saves the model
when the caller keeps it. A head-only trial on cached features builds only its head: the frozen
part below it is built once per process (cache.shared_frozen_part), and so is the head itself,
once per architecture, compiled once and reset for each trial (cache.shared_head, train.compile_for).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import optuna

from benchmark import cache, measure, names, progress, runtime, track
from benchmark.data import Dataset, load_dataset
from benchmark.model import BuiltModel, create_model, cut_below_trainable, inference_model, on_frozen_part
from benchmark.plan import TrialPlan, plan_trial
from benchmark.spec import TrialSpec
from benchmark.train import Fit, History, train


REUSE_HEADS = True  # False: every head-only trial builds and compiles a new head (benchmarks/memory_growth.py compares)


@dataclass
class Prepared:
    spec: TrialSpec
    plan: TrialPlan
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
    val_correct: str  # which validation images the trained model gets right (measure.pack_correct): for paired tests
    tags: dict[str, str]
    built: BuiltModel  # the trained model
    class_names: list[str]  # by class index
    per_class: list[dict]  # measure.per_class_rows of the test split
    model_path: Path | None = None  # the MLflow Keras model `finish` saved, if it was kept (ARTIFACT_MODEL_DIR)

    @property
    def title(self) -> str:
        return f"{self.spec.backbone.name} / {self.spec.strategy_name}"

    @property
    def reports_top5(self) -> bool:
        return measure.reports_top5(len(self.class_names))


def prepare(spec: TrialSpec, data: Dataset | None = None) -> Prepared:
    started = time.perf_counter()
    plan = plan_trial(spec)
    data = data if data is not None else load_dataset(spec.data)
    if plan.builds_head_only:
        part = cache.shared_frozen_part(spec, data)
        head = cache.shared_head(spec, data.num_classes, part) if REUSE_HEADS else None
        built = on_frozen_part(spec, data.num_classes, part, head)
    else:
        built = create_model(spec, data.num_classes)
    if plan.uses("activations"):
        cut = cut_below_trainable(built.base)
        plan = plan.at_cut(cut.name if cut is not None else None)
    return Prepared(spec=spec, plan=plan, data=data, built=built, started=started)


def execute(prepared: Prepared, callbacks=(), verbose: int = 0) -> TrialResult:
    spec, plan, data, built = prepared.spec, prepared.plan, prepared.data, prepared.built
    features = cache.pooled_features(spec, built, data) if plan.uses("features") else None
    above = cache.above_cut(spec, built, data, plan.cut) if plan.uses("activations") else None
    fits = {}
    if plan.uses("images"):
        fits["images"] = Fit(built.model, data)
    if features:
        fits["features"] = Fit(built.head, features.data, features.train_views)
    if above:
        fits["activations"] = Fit(above.top, above.cached.data)
    history = train(plan, built, fits, spec, callbacks=list(callbacks), verbose=verbose)
    best, last = history.epochs[history.best_index], history.epochs[-1]
    # Measured on what the last phase trained on: the same numbers as the full model on images.
    tested = fits[plan.test_inputs]
    test = measure.evaluate(tested.model, tested.data.x_test, data.y_test, spec.training.batch_size)
    val = measure.evaluate(tested.model, tested.data.x_val, data.y_val, spec.training.batch_size)
    total, trainable = measure.count_params(built.features, built.head)
    metrics = {
        names.BEST_VAL_TOP1: best["val_top1"],
        names.BEST_VAL_TOP5: best.get("val_top5", np.nan),
        names.BEST_EPOCH: float(history.best_index + 1),  # counted from 1, as Keras prints epochs
        names.LAST_VAL_TOP1: last["val_top1"],
        names.LAST_VAL_TOP5: last.get("val_top5", np.nan),
        names.TEST_TOP1: test["top1"],
        names.TEST_TOP5: test["top5"],
        names.TEST_BALANCED_ACCURACY: test["balanced_accuracy"],
        names.PARAMS_TOTAL: float(total),
        names.PARAMS_TRAINABLE: float(trainable),
        names.INFER_IMAGES_PER_SEC: inference_rate(spec, built),
        names.TRAIN_IMAGES_PER_SEC: measure.training_throughput(history.train_seconds, len(data.x_train)),
        names.TRAIN_S: history.fit_seconds,
        names.EPOCHS_RUN: float(len(history.epochs)),
        names.BACKBONE_DEPTH: float(built.depth),
        names.FEATURES_S: (features.seconds if features else 0.0) + (above.cached.seconds if above else 0.0),
    }
    metrics[names.WALL_TIME_S] = time.perf_counter() - prepared.started
    return TrialResult(
        spec=spec,
        metrics=without_meaningless_top5(metrics, data.num_classes),
        history=history,
        test_labels=data.y_test,
        test_predictions=test["predictions"],
        val_correct=measure.pack_correct(val["predictions"][:, 0] == data.y_val),
        tags={names.TAG_FEATURE_CACHE: features.status if features else f"off: {plan.no_features}",
              names.TAG_PREFIX_CACHE: f"{above.cached.status} (below {plan.cut})" if above else
              f"off: {plan.no_activations}"},
        built=built,
        class_names=list(data.class_names),
        per_class=measure.per_class_rows(data.y_test, test["predictions"][:, 0], data.class_names),
    )


def without_meaningless_top5(metrics: dict[str, float], num_classes: int) -> dict[str, float]:
    """The metrics without names.TOP5_METRICS where top-5 says nothing (measure.reports_top5)."""
    if measure.reports_top5(num_classes):
        return metrics
    return {name: value for name, value in metrics.items() if name not in names.TOP5_METRICS}


def finish(result: TrialResult, keep: bool, directory: Path | None = None) -> TrialResult:
    """Saves the full model (into `directory`/model, else a new temporary folder) if the caller
    keeps it, and records model_size_mb: the size of its .keras file, a property of the
    architecture, so a trial that keeps no model takes it from one measured earlier in this process."""
    key = architecture_key(result.spec, result.built)
    if keep:
        result.model_path = Path(directory or tempfile.mkdtemp(prefix="benchmark-trial-")) / names.ARTIFACT_MODEL_DIR
        _model_sizes[key] = save_model(result.built.model, result.model_path)
    elif key not in _model_sizes:
        with tempfile.TemporaryDirectory(prefix="benchmark-size-") as tmp, progress.once_per_process():
            _model_sizes[key] = save_model(result.built.model, Path(tmp) / names.ARTIFACT_MODEL_DIR)
    result.metrics[names.MODEL_SIZE_MB] = _model_sizes[key]
    result.tags[names.TAG_MODEL] = names.MODEL_KEPT if keep else names.MODEL_NOT_KEPT
    return result


REQUIREMENTS = ("keras", "tensorflow", "tensorflow-cpu", "jax", "numpy", "benchmark")  # of a saved model


def save_model(model: keras.Model, folder: Path) -> float:
    """The model as an MLflow Keras model (its .keras file, signature and requirements: what
    `mlflow.keras.load_model` and MLflow's model registry take) without optimizer state; returns
    the .keras file's size in MB (10^6 bytes)."""
    import mlflow.keras

    inference = inference_model(model)
    example = np.zeros((1, *model.input_shape[1:]), dtype=np.uint8)
    signature = mlflow.models.infer_signature(example, np.asarray(inference(example)))
    requirements = [f"{k}=={v}" for k, v in runtime.package_versions().items() if k in REQUIREMENTS]
    mlflow.keras.save_model(inference, str(folder), signature=signature, pip_requirements=requirements)
    return (folder / names.ARTIFACT_MODEL.removeprefix(f"{names.ARTIFACT_MODEL_DIR}/")).stat().st_size / 1e6


_model_sizes: dict[str, float] = {}
_inference_rates: dict[str, float] = {}


def architecture_key(spec: TrialSpec, built: BuiltModel) -> str:
    """What a model's size and speed depend on: not its trained weights, so a sweep's trials
    share them."""
    return json.dumps([spec.backbone.name, spec.backbone.image_size, spec.head.model_dump(),
                       built.head.output.shape[-1], spec.training.mixed_precision, keras.backend.backend()])


def inference_rate(spec: TrialSpec, built: BuiltModel) -> float:
    """measure.inference_throughput, once per process for each architecture and setting."""
    key = json.dumps([architecture_key(spec, built), spec.training.batch_size, spec.training.jit_compile])
    if key not in _inference_rates:
        with progress.once_per_process():
            _inference_rates[key] = measure.inference_throughput(built.model, spec.training.batch_size)
    return _inference_rates[key]


def run_trial(spec: TrialSpec, data: Dataset | None = None, callbacks=(), verbose: int = 0) -> TrialResult:
    """Prepare, execute and keep the model (in a temporary folder: result.model_path). Untracked."""
    return finish(execute(prepare(spec, data), callbacks=callbacks, verbose=verbose), keep=True)


def epoch_metrics(num_classes: int) -> tuple[str, ...]:
    """The per-epoch curves a trial logs: without top-5 where it says nothing (measure.reports_top5)."""
    if measure.reports_top5(num_classes):
        return names.EPOCH_METRICS
    return tuple(name for name in names.EPOCH_METRICS if name not in names.TOP5_EPOCH_METRICS)


@dataclass
class TrialRecord:
    """What a tracked trial leaves its caller: the run holds the rest."""

    metrics: dict[str, float]
    model_path: Path | None  # the saved model, if the trial kept it (for track.log_model)
    compute_s: float  # training and measuring; not logging
    val_correct: str = ""  # TrialResult.val_correct
    one_time_s: float = 0.0  # of it and of preparing, the work done once for all of this process's trials


def run_tracked(prepared: Prepared, run_id: str, keep: bool | Callable[[dict[str, float]], bool],
                callbacks=(), verbose: int = 0, end_tags: dict[str, str] | None = None) -> TrialRecord:
    """Execute a prepared trial inside the MLflow run `run_id` (by id: a trial process logs into
    a run its parent owns): its curves as it trains (also when it is pruned or fails), then its
    metrics, tags (and `end_tags`) and artifacts. `keep` says whether it saves its model, or decides
    from its metrics. A pruned trial's end is one write too (track.log_pruned)."""
    epoch_logger = track.EpochLogger(run_id, epoch_metrics(prepared.data.num_classes))
    started = time.perf_counter()
    with epoch_logger:
        try:
            result = execute(prepared, callbacks=[epoch_logger.callback(), *callbacks], verbose=verbose)
        except optuna.TrialPruned:
            track.log_pruned(run_id, prepared.spec, epoch_logger.take(), epoch_logger.best_val_top1)
            raise
        curves = epoch_logger.take()  # written with the result: one write
    finish(result, keep=keep(result.metrics) if callable(keep) else keep)
    compute_s = time.perf_counter() - started - epoch_logger.seconds
    track.log_result(result, run_id, curves, end_tags)
    return TrialRecord(metrics=result.metrics, model_path=result.model_path, compute_s=compute_s,
                       val_correct=result.val_correct, one_time_s=progress.take_one_time_s())
