"""Where we run: accelerator defaults, seeds, and the output a sweep does not need."""

import subprocess
import sys

import keras
import pytest

from benchmark import runtime

MANY_MODELS = """
import keras, numpy as np
{setup}
for _ in range(7):  # as a process running several trials does: a new model each time
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.predict(np.zeros((1, 2)), verbose=0)
"""


@pytest.mark.slow
@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow warning")
def test_many_models_in_one_process_print_no_retracing_warning():
    def stderr_of(setup: str) -> str:
        code = MANY_MODELS.format(setup=setup)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr

    assert "triggered tf.function retracing" in stderr_of("")  # what TensorFlow says on its own
    assert "triggered tf.function retracing" not in stderr_of("import benchmark.runtime")


def test_mixed_precision_is_bf16_on_gpu_and_off_on_cpu_unless_asked():
    assert runtime.mixed_precision_policy("auto") == ("mixed_bfloat16" if runtime.accelerator() == "gpu" else "float32")
    assert runtime.mixed_precision_policy("off") == "float32"
    assert runtime.mixed_precision_policy("bf16") == "mixed_bfloat16"
    assert runtime.mixed_precision_policy("fp16") == "mixed_float16"


def test_seeding_that_keeps_tensorflow_kernels_seeds_as_a_full_seeding_does(monkeypatch):
    """runtime.seed_everything(keep_kernels=True): the same draws from Python, numpy and Keras, and
    the same shuffles of a tf.data pipeline made after it, as a full seeding, without clearing
    TensorFlow's kernel cache (which a head's compiled steps would instantiate again: ~30 ms a
    function). Only TensorFlow's stateful random ops, which Keras's layers do not use, go on
    where they were: that is what the cache clear restarts."""
    import random

    import numpy as np
    import tensorflow as tf
    from tensorflow.python import pywrap_tfe

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow's kernel cache: the TensorFlow backend only")

    def draws(keep: bool) -> list:
        runtime.seed_everything(7, keep_kernels=keep)
        shuffled = tf.data.Dataset.range(20).shuffle(20).as_numpy_iterator()
        return [random.random(), float(np.random.rand()), float(keras.random.uniform(()).numpy()),
                float(keras.layers.Dropout(0.5)(np.ones((1, 8), "float32"), training=True).numpy().sum()),
                [int(i) for i in shuffled]]

    tf.constant(1.0) + 1.0  # TensorFlow's eager context exists (it clears a cache it has)
    cleared = []
    clear = pywrap_tfe.TFE_ContextClearCaches
    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches", lambda handle: cleared.append(handle) or clear(handle))
    full = draws(keep=False)
    assert len(cleared) == 1
    kept = draws(keep=True)
    assert len(cleared) == 1  # not cleared again
    assert kept == full
    assert full[-1] != list(range(20)) and len(set(map(str, full))) == 5  # each drew something
