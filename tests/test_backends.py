"""Model and training code are backend-neutral: a trial runs under KERAS_BACKEND=jax."""

import json
import os
import subprocess
import sys

import pytest

TRIAL_UNDER_JAX = """
import json, keras
from benchmark.spec import load_experiment
from benchmark.trial import run_trial
from benchmark import runtime
spec = load_experiment("ci").resolve("vgg16", "frozen").with_values(learning_rate=3e-3)
# Fewer images through the backbone than ci's (features of 1,000, throughput over 416): convolutions
# under JAX on a CPU run about 20x slower than under TensorFlow. (On 400 training images it learns less:
# 0.12 seen.)
subset = spec.data.subset.model_copy(update={"validation": 100, "test": 100})
spec = spec.model_copy(update={"data": spec.data.model_copy(update={"subset": subset}),
                               "training": spec.training.model_copy(update={"batch_size": 32})})
result = run_trial(spec)
print(json.dumps({"backend": keras.backend.backend(), "device": runtime.device_description(), **result.metrics}))
"""


pytestmark = pytest.mark.slow  # a process per backend, each starting Keras from nothing


def test_a_trial_trains_under_jax(tmp_path):
    pytest.importorskip("jax", reason="pip install -e '.[test]' installs jax (CPU build)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    out = subprocess.run([sys.executable, "-c", TRIAL_UNDER_JAX], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    assert metrics["backend"] == "jax" and metrics["device"] == "jax:cpu"
    assert metrics["best_val_top1"] > 0.15  # learns as under TensorFlow (0.37 there, 0.385 here; chance 0.01)
    assert metrics["params_trainable"] < metrics["params_total"]


REUSED_HEAD_UNDER_JAX = """
import dataclasses, json
import keras, numpy as np
from benchmark import cache
from benchmark.data import load_dataset
from benchmark.model import on_frozen_part
from benchmark.plan import plan_trial
from benchmark.spec import load_experiment
from benchmark.train import Fit, train
spec = load_experiment("ci").resolve("vgg16", "frozen")
spec = spec.model_copy(update={"training": spec.training.model_copy(update={"optimizer": "adamw", "jit_compile": "on"})})
data = load_dataset(spec.data)
part = cache.shared_frozen_part(spec, data)  # built, never run: the features are made up (no slow convolutions)
rng = np.random.default_rng(0)
features = dataclasses.replace(data, **{f"x_{split}": rng.normal(size=(len(getattr(data, f"y_{split}")), 512)).astype("float32")
                                        for split in ("train", "val", "test")})
traces, curves = [], {}
def count(layer):
    original = layer.call
    def call(*args, **kwargs):
        traces[-1] += 1
        return original(*args, **kwargs)
    layer.call, layer.counted = call, True
for reuse in (False, True):
    for seed, learning_rate, weight_decay in ((0, 3e-3, 1.0), (1, 1e-2, 5.0)):
        trial_spec = spec.with_values(learning_rate=learning_rate, weight_decay=weight_decay)
        trial_spec = trial_spec.model_copy(update={"training": trial_spec.training.model_copy(update={"seed": seed})})
        head = cache.shared_head(trial_spec, data.num_classes, part) if reuse else None
        built = on_frozen_part(trial_spec, data.num_classes, part, head)
        traces.append(0)
        if not getattr(built.head.get_layer("logits"), "counted", False):
            count(built.head.get_layer("logits"))
        history = train(plan_trial(trial_spec), built, {"features": Fit(built.head, features)}, trial_spec)
        curves[f"{reuse} {seed}"] = history.series("val_loss")
print(json.dumps({"backend": keras.backend.backend(), "curves": curves, "traces": traces}))
"""


def test_a_reused_head_trains_as_a_new_one_under_jax_without_tracing_again(tmp_path):
    """cache.shared_head and train.compile_for under JAX with XLA: the learning rate and weight
    decay are variables of the jitted step's state, not constants of its trace."""
    pytest.importorskip("jax", reason="pip install -e '.[test]' installs jax (CPU build)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "BENCHMARK_STORE": str(tmp_path / "mlruns"),
           "BENCHMARK_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", REUSED_HEAD_UNDER_JAX], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    curves = result["curves"]
    assert result["backend"] == "jax"
    for seed in (0, 1):
        assert curves[f"True {seed}"] == pytest.approx(curves[f"False {seed}"], abs=1e-6)
    assert curves["True 0"] != pytest.approx(curves["True 1"], abs=1e-3)  # two different trials
    new_heads, reused = result["traces"][:2], result["traces"][2:]
    assert min(new_heads) > 0 and reused[0] > 0 and reused[1] == 0  # the reused head is traced once


WITHOUT_TENSORFLOW = """
import json, sys

class NoTensorFlow:  # as on the GPU machine (benchmarks/gpu/): TensorFlow is not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_cpu"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())
from benchmark import cli, leaderboard, mlflow_store, names, report, runtime, sweep, throughput, track, trial  # what `python -m benchmark` loads
from benchmark.measure import training_step_throughput
from benchmark.model import create_model
from benchmark.spec import load_experiment
from benchmark.train import compile_model
spec = load_experiment("ci").resolve("vgg16", "frozen")
runtime.seed_everything(0)
model = create_model(spec, 100).model
compile_model(model, spec, 1e-3)
augmented = spec.model_copy(update={
    "data": spec.data.model_copy(update={"augment": spec.data.augment.model_copy(update={"flip": True, "crop_padding": 4})}),
    "training": spec.training.model_copy(update={"jit_compile": "on"}),
})
jitted = create_model(augmented, 100).model
compile_model(jitted, augmented, 1e-3)  # Keras turns jit off here for a layer that does not support it
print(json.dumps({"device": runtime.device_description(), "images_per_s": training_step_throughput(model, 8, warmup=0, steps=1),
                  "versions": runtime.package_versions(), "tensorflow_loaded": "tensorflow" in sys.modules,
                  "augmented_model_jit": bool(jitted.jit_compile)}))
"""


def test_the_jax_path_never_imports_tensorflow(tmp_path):
    """The H200 image has JAX and no TensorFlow: importing every command's modules, building,
    compiling and training a step under KERAS_BACKEND=jax must not need it."""
    pytest.importorskip("jax", reason="pip install -e '.[test]' installs jax (CPU build)")
    env = {**os.environ, "KERAS_BACKEND": "jax", "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    out = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "jax:cpu" and result["images_per_s"] > 0 and not result["tensorflow_loaded"]
    assert result["versions"]["keras_backend"] == "jax" and "jaxlib" in result["versions"]
    # The shift augmentation would turn XLA off for the whole model (model.py marks it jittable under JAX).
    assert result["augmented_model_jit"] is True
