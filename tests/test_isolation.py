"""Trials in a child process: when they are, and what a child keeps between trials."""

from benchmark import isolation
from benchmark.data import load_dataset
from benchmark.spec import load_experiment


def test_zero_trials_per_process_runs_trials_here_and_any_other_number_in_a_child():
    data = load_dataset(load_experiment("ci").data)
    assert not isolation.TrialRunner(0, data).isolated
    runner = isolation.TrialRunner(3, data)
    assert runner.isolated and runner.pool is None  # the child starts with the first trial, not before
    runner.close()  # nothing started: nothing to stop


def test_a_child_loads_each_data_spec_once_and_the_next_one_instead():
    isolation._datasets.clear()
    spec = load_experiment("ci").data
    first = isolation.dataset_for(spec)
    assert isolation.dataset_for(spec) is first
    other = spec.model_copy(update={"seed": 1})
    assert isolation.dataset_for(other) is not first and list(isolation._datasets) == [other.model_dump_json()]
