"""Throughput of one backbone, like timm's benchmark.py: images/s for inference and for a training
step, on synthetic input, with warm-up and the median of timed steps.

The model, dtype policy and jit setting are a trial's (same build, same compile), so these numbers
compare with the sweeps'. Weights are random ("none"): they do not change the speed, and nothing
is downloaded. Keras is imported inside the functions that need it, so `throughput_spec` checks
the settings before TensorFlow loads.
"""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING

from benchmark import names, registry
from benchmark.data import NUM_CLASSES
from benchmark.errors import BenchmarkError
from benchmark.spec import MAX_BATCH_SIZE, BackboneSpec, DataSpec, HeadSpec, StrategySpec, TrainingSpec, TrialSpec

if TYPE_CHECKING:
    import keras

PRECISIONS = typing.get_args(TrainingSpec.model_fields["mixed_precision"].annotation)
JIT_SETTINGS = typing.get_args(TrainingSpec.model_fields["jit_compile"].annotation)
MAX_IMAGE_SIZE = 1024  # as in spec.BackboneOptions


def throughput_spec(
    backbone: str, image_size: int, batch_size: int = 64, precision: str = "auto", jit: str = "auto", unfreeze: int | str = "all"
) -> TrialSpec:
    """The TrialSpec of a trial with these settings. Bad settings are one-line BenchmarkErrors."""
    found = registry.get_backbone(backbone)
    if image_size < found.min_size:
        raise BenchmarkError(
            f"image size {image_size} is below {found.name}'s minimum of {found.min_size} px; "
            f"use --image-size {found.min_size} or more"
        )
    if image_size > MAX_IMAGE_SIZE:
        raise BenchmarkError(f"image size {image_size} is above the largest supported, {MAX_IMAGE_SIZE} px; use less")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise BenchmarkError(f"batch size must be 1..{MAX_BATCH_SIZE}, got {batch_size}; fix --batch-size")
    if precision not in PRECISIONS:
        raise BenchmarkError(f"unknown precision {precision!r}; use --precision {'|'.join(PRECISIONS)}")
    if jit not in JIT_SETTINGS:
        raise BenchmarkError(f"unknown jit setting {jit!r}; use --jit {'|'.join(JIT_SETTINGS)}")
    try:
        unfreeze = registry.check_unfreeze(unfreeze)
    except registry.UnfreezeError:
        raise BenchmarkError(f'unfreeze must be a layer count >= 0 or "all", got {unfreeze!r}; fix --unfreeze') from None
    return TrialSpec(
        experiment=names.THROUGHPUT_EXPERIMENT,
        backbone=BackboneSpec(name=found.name, weights="none", image_size=image_size),
        strategy_name=f"unfreeze_{unfreeze}",
        strategy=StrategySpec(unfreeze=unfreeze),
        data=DataSpec(source="synthetic"),  # only its augmentation settings are used: the model's layers
        head=HeadSpec(),
        training=TrainingSpec(batch_size=batch_size, mixed_precision=precision, jit_compile=jit),
    )


def compiled_model(spec: TrialSpec) -> keras.Model:
    """The model a trial builds for `spec` (model.create_model), compiled as for training.
    A depth beyond the backbone is a BenchmarkError here."""
    import keras

    from benchmark.model import create_model
    from benchmark.train import compile_model

    previous = keras.config.dtype_policy()
    try:
        model = create_model(spec, NUM_CLASSES["fine"]).model
        compile_model(model, spec, spec.training.learning_rate)
    finally:
        keras.config.set_dtype_policy(previous)  # the policy is global; layers keep the one they were built with
    return model


def without_weights(spec: TrialSpec) -> TrialSpec:
    """`spec` with random weights: the same speed, and nothing to load."""
    return spec.model_copy(update={"backbone": spec.backbone.model_copy(update={"weights": "none"})})


def backbone_alone(spec: TrialSpec) -> keras.Model:
    """The trial's backbone by itself (random weights, float32, no XLA, no head or preprocessing):
    the yardstick of a machine's speed for this architecture."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        return registry.build_base(registry.get_backbone(spec.backbone.name), spec.backbone.image_size, "none")
    finally:
        keras.config.set_dtype_policy(previous)


def best_inference_rates(models: dict[str, keras.Model], batch_size: int, repeats: int = 3) -> dict[str, float]:
    """Inference images/s of each model, the best of `repeats` measurements taken in turns, so
    that a moment of load elsewhere on the machine slows one measurement, not one model."""
    from benchmark import measure

    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            rates[name].append(measure.inference_throughput(model, batch_size))
    return {name: max(values) for name, values in rates.items()}


def model_and_backbone_rates(spec: TrialSpec, repeats: int = 3) -> tuple[float, float]:
    """(the trial's model, its backbone alone): inference images/s measured side by side."""
    spec = without_weights(spec)
    model = compiled_model(spec)  # first: building a model clears the Keras session
    rates = best_inference_rates({"model": model, "backbone": backbone_alone(spec)}, spec.training.batch_size, repeats)
    return rates["model"], rates["backbone"]


def backbone_rate(spec: TrialSpec, repeats: int = 3) -> float:
    """Inference images/s of the trial's backbone alone, the best of `repeats`."""
    spec = without_weights(spec)
    return best_inference_rates({"backbone": backbone_alone(spec)}, spec.training.batch_size, repeats)["backbone"]


def measure_model(model: keras.Model, spec: TrialSpec, warmup: int = 3, steps: int = 10) -> dict:
    """The settings actually used, and the numbers (names.THROUGHPUT_METRICS)."""
    from benchmark import measure, runtime

    batch_size = spec.training.batch_size
    infer = measure.inference_throughput(model, batch_size, warmup=warmup, steps=steps)
    train = measure.training_step_throughput(model, batch_size, warmup=warmup, steps=steps)
    total, trainable = measure.count_params(model)
    return {
        "backbone": spec.backbone.name,
        "image_size": spec.backbone.image_size,
        "batch_size": batch_size,
        "dtype_policy": model.dtype_policy.name,
        "jit_compile": bool(model.jit_compile),
        "unfreeze": spec.strategy.unfreeze,
        "warmup": warmup,
        "steps": steps,
        "device": runtime.device_description(),
        names.INFER_IMAGES_PER_SEC: infer,
        names.INFER_STEP_MS: 1000 * batch_size / infer,
        names.TRAIN_IMAGES_PER_SEC: train,
        names.TRAIN_STEP_MS: 1000 * batch_size / train,
        names.PARAMS_TOTAL: total,
        names.PARAMS_TRAINABLE: trainable,
    }


def measure_throughput(
    backbone: str,
    image_size: int,
    batch_size: int = 64,
    precision: str = "auto",
    jit: str = "auto",
    unfreeze: int | str = "all",
    warmup: int = 3,
    steps: int = 10,
) -> dict:
    """Inference and training images/s of `backbone` at `image_size` px; see measure_model for the keys."""
    spec = throughput_spec(backbone, image_size, batch_size, precision, jit, unfreeze)
    if warmup < 0 or steps < 1:
        raise BenchmarkError(f"need warmup >= 0 and steps >= 1, got {warmup} and {steps}; fix --warmup or --steps")
    return measure_model(compiled_model(spec), spec, warmup, steps)


def log_run(result: dict) -> str:
    """One MLflow run in the "throughput" experiment: settings as params, numbers as metrics,
    device and versions as tags. Returns its id. Call mlflow_store.configure() first."""
    import mlflow

    from benchmark import mlflow_store, runtime, track

    tags = {names.TAG_ROLE: names.ROLE_THROUGHPUT, names.TAG_BACKBONE: result["backbone"],
            names.TAG_DEVICE: result["device"], names.TAG_GIT_COMMIT: runtime.git_commit(), **track.version_tags()}
    name = f"{result['backbone']}-{result['image_size']}px-batch{result['batch_size']}"
    with mlflow.start_run(experiment_id=mlflow_store.experiment_id(names.THROUGHPUT_EXPERIMENT), run_name=name, tags=tags) as run:
        mlflow.log_params({k: v for k, v in result.items() if k not in names.THROUGHPUT_METRICS and k != "device"})
        mlflow.log_metrics({k: float(result[k]) for k in names.THROUGHPUT_METRICS})
    return run.info.run_id
