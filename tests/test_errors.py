"""What a user sees when something is wrong: one line per problem, the file named, no native noise."""

import os
import sys

import pytest

from benchmark.errors import BenchmarkError, SpecError, SpecValueError, tensorflow_start_up_silenced
from benchmark.spec import load_experiment


def test_a_spec_error_is_one_line_per_problem_each_naming_the_file():
    error = SpecError("experiments/x.toml", ["training.epochs: must be >= 1", "name: missing"])
    assert str(error).splitlines() == ["experiments/x.toml: training.epochs: must be >= 1", "experiments/x.toml: name: missing"]
    assert error.exit_code == 2 and BenchmarkError("run failed", exit_code=1).exit_code == 1


def test_a_value_the_data_cannot_satisfy_names_the_spec_file_it_is_written_in():
    experiment = load_experiment("ci")
    with pytest.raises(SpecValueError) as caught, experiment.naming_its_file():
        raise SpecValueError("data.subset.train = 5000 is larger than the train split")
    assert str(caught.value).endswith("experiments/ci.toml: data.subset.train = 5000 is larger than the train split")


def test_native_start_up_lines_are_silenced_and_python_errors_still_show(capfd, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    with tensorflow_start_up_silenced():
        os.write(2, b"oneDNN custom operations are on\n")  # as TensorFlow's C++ start-up writes it
    print("error: shown", file=sys.stderr)
    assert capfd.readouterr().err == "error: shown\n"
