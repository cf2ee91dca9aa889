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
