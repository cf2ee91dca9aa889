"""Where we run: device, accelerator defaults, seeds, versions. The only backend-specific code."""

from __future__ import annotations

import functools
import logging
import math
import subprocess
from importlib import metadata
from pathlib import Path

import keras
import numpy as np


class RetracingNoise(logging.Filter):
    """Every trial builds a new model, so TensorFlow traces its predict and train functions again by
    design; its "triggered tf.function retracing" warning (from the fifth model a process builds) is
    noise in a sweep's output. Other TensorFlow warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


logging.getLogger("tensorflow").addFilter(RetracingNoise())


@functools.cache
def accelerator() -> str:
    """'gpu' or 'cpu' for the active Keras backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return "gpu" if jax.devices()[0].platform == "gpu" else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    import tensorflow as tf

    return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"


def device_description() -> str:
    return f"{keras.backend.backend()}:{accelerator()}"


def mixed_precision_policy(setting: str) -> str:
    """The Keras dtype policy for a spec's mixed_precision ('auto' = bf16 on GPU, off on CPU)."""
    if setting == "auto":
        setting = "bf16" if accelerator() == "gpu" else "off"
    return {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[setting]


def use_jit(setting: str) -> bool:
    """XLA for a spec's jit_compile ('auto' = on for GPU; it is 2-12x slower on our CPUs)."""
    return accelerator() == "gpu" if setting == "auto" else setting == "on"


def seed_everything(seed: int, keep_kernels: bool = False) -> None:
    """Python, numpy and backend seeds; deterministic kernels on TensorFlow.

    `keep_kernels`: TensorFlow's seed is set without clearing its cache of kernels, which
    tf.random.set_seed clears so that stateful random ops start over. Instantiating a compiled
    function's kernels again then costs ~30 ms at its next call, more than a whole epoch of a head
    on cached features. Only for models whose random ops are stateless (Keras 3's layers draw from
    their own seed generators): their results do not depend on that cache."""
    if keras.backend.backend() != "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    import tensorflow as tf
    from tensorflow.python import pywrap_tfe

    clear_caches = pywrap_tfe.TFE_ContextClearCaches
    if keep_kernels:
        pywrap_tfe.TFE_ContextClearCaches = lambda handle: None
    try:
        keras.utils.set_random_seed(seed)
    finally:
        pywrap_tfe.TFE_ContextClearCaches = clear_caches
    tf.config.experimental.enable_op_determinism()


def fed_once(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool) -> tuple:
    """(x, y, keyword arguments) for `fit` (or its validation_data and validation_steps) to take
    arrays in memory without any setup per epoch. On TensorFlow, Keras makes a tf.data iterator
    over the arrays for every epoch (a fifth of a cached head's trial); here one dataset repeats
    for the whole fit, in Keras's own order: the batches of row numbers its array dataset draws
    (one seeded permutation, which restarts with each of its per-epoch iterators: every epoch
    the same order) are kept and repeated, and gather the rows. Elsewhere Keras's numpy batches
    cost no setup: the arrays, as they are."""
    if keras.backend.backend() != "tensorflow":
        return x, y, {"batch_size": batch_size, "shuffle": shuffle}
    import tensorflow as tf
    from keras.src.trainers.data_adapters.array_data_adapter import ArrayDataAdapter  # its order, exactly

    rows = ArrayDataAdapter(np.arange(len(x)), batch_size=batch_size, shuffle=shuffle).get_tf_dataset()
    x_all, y_all = tf.constant(x), tf.constant(y, dtype=keras.backend.floatx())
    batches = rows.cache().repeat().map(lambda *batch: (tf.gather(x_all, batch[0]), tf.gather(y_all, batch[0])))
    return batches.prefetch(tf.data.AUTOTUNE), None, {"steps": math.ceil(len(x) / batch_size)}


def steps_per_execution(steps_per_epoch: int) -> int:
    """Training steps per call of the compiled step, for a fit on arrays fed once (fed_once): a
    whole epoch on TensorFlow, where each call costs ~3 ms besides its step (a head's step on cached
    features takes a fraction of that); 1 elsewhere, where a call runs its steps one by one anyway."""
    return steps_per_epoch if keras.backend.backend() == "tensorflow" else 1


@functools.cache
def package_versions() -> dict[str, str]:
    versions = {"keras_backend": keras.backend.backend()}
    # jaxlib: the compiled half of jax; mlflow-skinny: what a machine without the full mlflow runs (the GPU kit)
    packages = ("benchmark", "keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch", "mlflow", "mlflow-skinny",
                "optuna", "numpy")
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


@functools.cache
def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"

