"""What a user sees when something is wrong: one line per problem, the file named, no native noise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.errors import BenchmarkError, SpecError, SpecValueError, tensorflow_start_up_silenced
from benchmark.spec import load_experiment

REPO = Path(__file__).resolve().parent.parent


def test_a_spec_error_is_one_line_per_problem_each_naming_the_file():
    error = SpecError("experiments/x.toml", ["training.epochs: must be >= 1", "name: missing"])
    assert str(error).splitlines() == ["experiments/x.toml: training.epochs: must be >= 1", "experiments/x.toml: name: missing"]
    assert error.exit_code == 2 and BenchmarkError("run failed", exit_code=1).exit_code == 1


def test_a_value_the_data_cannot_satisfy_names_the_spec_file_it_is_written_in():
    experiment = load_experiment("ci")
    with pytest.raises(SpecValueError) as caught, experiment.naming_its_file():
        raise SpecValueError("data.subset.train = 5000 is larger than the train split")
    assert str(caught.value).endswith("experiments/ci.toml: data.subset.train = 5000 is larger than the train split")


def start_up_line_written(level: str | None, monkeypatch) -> None:
    if level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    with tensorflow_start_up_silenced():
        os.write(2, b"oneDNN custom operations are on\n")  # as TensorFlow's C++ start-up writes it


@pytest.mark.parametrize("level", [None, "2", "3"])
def test_native_start_up_lines_are_silenced_and_python_errors_still_show(level, capfd, monkeypatch):
    start_up_line_written(level, monkeypatch)
    print("error: shown", file=sys.stderr)
    assert capfd.readouterr().err == "error: shown\n"


@pytest.mark.parametrize("level", ["0", "1"])
def test_a_user_who_asks_for_tensorflows_info_or_warnings_sees_its_start_up_lines(level, capfd, monkeypatch):
    start_up_line_written(level, monkeypatch)
    assert capfd.readouterr().err == "oneDNN custom operations are on\n"


def test_a_shell_that_hides_tensorflows_warnings_sees_one_line_for_a_bad_input_that_loads_tensorflow(tmp_path):
    """TF_CPP_MIN_LOG_LEVEL=2 (common in ML shells): neither TensorFlow's start-up lines nor its CUDA
    probe's error ("failed call to cuInit", logged when it first lists devices) show around ours."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    spec = REPO / "tests" / "bad_input" / "specs" / "unfreeze_beyond_depth.toml"  # found once the model is built
    command = [sys.executable, "-m", "benchmark", "run", "--backbone", "vgg16", "--experiment", str(spec)]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("error: "), out.stderr
    assert "beyond vgg16's 13 weighted layers" in out.stderr
