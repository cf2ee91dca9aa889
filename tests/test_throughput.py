"""`throughput`: real measurements of a small model, their MLflow run, and the command line.
Bad arguments are in the corpus (tests/test_bad_input.py). Timings are only compared loosely:
other jobs may share the CPU.

Keras is imported inside the tests: importing it sets TF_CPP_MIN_LOG_LEVEL=1 in this process, and
the command-line processes of later test files would inherit it (and print TensorFlow's start-up lines)."""

import os
import re
import subprocess
import sys

import mlflow
import pytest

from benchmark import mlflow_store, names, throughput
from benchmark.errors import BenchmarkError
from benchmark.throughput import measure_throughput

SMALL = dict(backbone="vgg16", image_size=32, batch_size=8, warmup=1, steps=3)  # VGG16 has no BatchNorm
VGG16_HEAD_PARAMS = 512 * 100 + 100  # pooled features -> 100 logits


@pytest.fixture(scope="module")
def full_fine_tuning() -> dict:
    return measure_throughput(**SMALL)


@pytest.mark.slow
def test_full_fine_tuning_trains_everything_and_slower_than_it_infers(full_fine_tuning):
    result = full_fine_tuning
    assert result["params_trainable"] == result["params_total"] > 14_000_000
    assert 0 < result["train_images_per_sec"] < result["infer_images_per_sec"]
    assert result["infer_step_ms"] == pytest.approx(1000 * 8 / result["infer_images_per_sec"])
    assert result["train_step_ms"] == pytest.approx(1000 * 8 / result["train_images_per_sec"])
    # "auto" on a CPU: what a trial would use there
    assert (result["dtype_policy"], result["jit_compile"], result["device"]) == ("float32", False, "tensorflow:cpu")
    assert {k: result[k] for k in ("backbone", "image_size", "batch_size", "unfreeze", "warmup", "steps")} == {
        "backbone": "vgg16", "image_size": 32, "batch_size": 8, "unfreeze": "all", "warmup": 1, "steps": 3}


@pytest.mark.slow
def test_frozen_backbone_trains_only_the_head():
    result = measure_throughput(**SMALL, unfreeze=0)
    assert result["params_trainable"] == VGG16_HEAD_PARAMS < result["params_total"]


@pytest.mark.slow
def test_bf16_builds_a_mixed_bfloat16_model_and_leaves_the_global_policy_alone():
    import keras

    result = measure_throughput(**{**SMALL, "steps": 1}, precision="bf16", jit="off")
    assert result["dtype_policy"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow
def test_the_mlflow_run_holds_the_returned_settings_and_numbers(full_fine_tuning, store):
    import keras

    mlflow_store.configure()
    run = mlflow.get_run(throughput.log_run(full_fine_tuning))
    assert mlflow.get_experiment(run.info.experiment_id).name == "benchmark/throughput"
    metrics = {k: v for k, v in full_fine_tuning.items() if k in names.THROUGHPUT_METRICS}
    settings = {k: str(v) for k, v in full_fine_tuning.items() if k not in metrics and k != "device"}
    assert run.data.metrics == pytest.approx(metrics) and run.data.params == settings
    tags = run.data.tags
    assert (tags["role"], tags["device"], tags["backbone"]) == ("throughput", "tensorflow:cpu", "vgg16")
    assert tags["versions.keras"] == keras.__version__ and len(tags["git_commit"]) in (40, len("unknown"))


@pytest.mark.parametrize("argument, value, message", [
    ("backbone", "resnet5", "unknown backbone 'resnet5'"),
    ("image_size", 16, "below vgg16's minimum of 32 px"),
    ("image_size", 4096, "above the largest supported, 1024 px"),
    ("batch_size", 0, "batch size must be 1..65536, got 0; fix --batch-size"),
    ("batch_size", 10**6, "batch size must be 1..65536, got 1000000"),
    ("precision", "fp8", "--precision auto|off|bf16|fp16"),
    ("jit", "yes", "--jit auto|on|off"),
    ("unfreeze", -1, "fix --unfreeze"),
])
def test_bad_settings_are_one_line_errors_before_anything_is_built(argument, value, message):
    with pytest.raises(BenchmarkError, match=re.escape(message)):
        throughput.throughput_spec(**{"backbone": "vgg16", "image_size": 32, argument: value})


@pytest.mark.slow
def test_the_command_prints_the_numbers_of_its_one_run(tmp_path):
    env = {**os.environ, "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # importing Keras here set it; a user's shell does not have it
    command = [sys.executable, "-m", "benchmark", "throughput", "--backbone", "vgg16", "--image-size", "32",
               "--batch-size", "8", "--warmup", "1", "--steps", "3", "--unfreeze", "2"]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert out.stdout.startswith("vgg16 at 32 px, batch 8, float32, jit off, unfreeze 2, on tensorflow:cpu\n"), out.stdout

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1 and runs[0].info.run_id in out.stdout
    metrics = runs[0].data.metrics
    line = r"{}\s+([\d,.]+) images/s\s+([\d.]+) ms/step"
    printed = {kind: [float(n.replace(",", "")) for n in re.search(line.format(kind), out.stdout).groups()]
               for kind in ("inference", "training")}
    assert printed["inference"] == pytest.approx([metrics["infer_images_per_sec"], metrics["infer_step_ms"]], abs=0.051)
    assert printed["training"] == pytest.approx([metrics["train_images_per_sec"], metrics["train_step_ms"]], abs=0.051)
    assert f"params     {metrics['params_total']:,.0f} ({metrics['params_trainable']:,.0f} trainable)" in out.stdout
    assert runs[0].data.params["unfreeze"] == "2" and metrics["params_trainable"] < metrics["params_total"]
