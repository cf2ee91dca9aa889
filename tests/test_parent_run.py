"""What a study's parent run is made of, from made-up Optuna studies (the real thing: test_sweep.py)."""

import optuna

from benchmark import parent_run
from benchmark.spec import load_experiment

COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL


def study_of(*trials: tuple) -> optuna.Study:
    """(state, value, model_saved) per trial, in order."""
    study = optuna.create_study(direction="maximize")
    for state, value, saved in trials:
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if state == COMPLETE else None, params={}, distributions={},
            user_attrs={"outcome": {"model_saved": saved, "test_top1": 0.1}} if state == COMPLETE else {}))
    return study


def test_counts_and_the_best_trial_that_kept_its_model():
    study = study_of((COMPLETE, 0.4, True), (PRUNED, None, False), (COMPLETE, 0.6, True), (FAIL, None, False),
                     (COMPLETE, 0.6, True), (COMPLETE, 0.7, False))  # the 0.7 kept no model: it cannot be the row
    assert parent_run.trial_counts(study) == {"complete": 4, "pruned": 1, "failed": 1}
    best = parent_run.best_with_model(study)
    assert best.number == 2 and best.value == 0.6  # the first of equals, as Optuna's own best_trial
    assert parent_run.trial_record(best) == {"model_saved": True, "test_top1": 0.1}
    assert parent_run.best_with_model(study_of((PRUNED, None, False))) is None


def test_searched_params_are_recorded_as_their_ranges():
    experiment = load_experiment("transfer")
    spec = experiment.resolve("efficientnetlite0", "top")
    searched = parent_run.searched_params(spec, experiment.search_space("efficientnetlite0", "top"))
    assert searched["training.learning_rate"] == "searched 0.0003..0.002 (log)"
    assert searched["strategy.unfreeze"] == "searched 1..6"
    assert set(searched) <= set(spec.params())  # the same names as every run's params
