"""What a study's parent run is made of, from made-up Optuna studies (the real thing: test_sweep.py)."""

import optuna

from benchmark import names, parent_run
from benchmark.spec import load_experiment

COMPLETE, PRUNED, FAIL = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL


def study_of(*trials: tuple) -> optuna.Study:
    """(state, value, model_saved) per trial, in order; a FAIL with value "interrupted" is a Ctrl-C'd trial."""
    study = optuna.create_study(direction="maximize")
    for state, value, saved in trials:
        attrs = {"outcome": {"model_saved": saved, "test_top1": 0.1}} if state == COMPLETE else {}
        if value == "interrupted":
            attrs = {names.ATTR_INTERRUPTED: True}
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if state == COMPLETE else None, params={}, distributions={}, user_attrs=attrs))
    return study


def test_counts_and_the_best_trial_that_kept_its_model():
    study = study_of((COMPLETE, 0.4, True), (PRUNED, None, False), (COMPLETE, 0.6, True), (FAIL, None, False),
                     (COMPLETE, 0.6, True), (COMPLETE, 0.7, False), (FAIL, "interrupted", False))  # the 0.7 kept no model
    assert parent_run.trial_counts(study) == {"complete": 4, "pruned": 1, "failed": 1, "interrupted": 1}
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


def parent_setup(store):
    """A real MLflow store and Optuna study for the `transfer` Lite0 frozen pair."""
    import mlflow

    from benchmark import mlflow_store

    mlflow_store.configure()
    experiment = load_experiment("transfer")
    spec = experiment.resolve("efficientnetlite0", "frozen")
    space = experiment.search_space("efficientnetlite0", "frozen")
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{store / 'optuna.db'}", direction="maximize")
    return spec, space, study, mlflow_store.experiment_id(spec.experiment), mlflow.MlflowClient()


def test_the_creator_of_a_study_makes_its_parent_and_the_others_wait_for_it(store, monkeypatch):
    import threading

    spec, space, study, experiment_id, client = parent_setup(store)
    made = []

    def creator():
        made.append(parent_run.find_or_create(study, True, spec, space, {}, experiment_id))

    later = threading.Timer(1.0, creator)  # the creator is slow; the other worker must not make its own
    later.start()
    waited = parent_run.find_or_create(study, False, spec, space, {}, experiment_id)
    later.join()
    assert waited == made[0] == study.user_attrs[names.ATTR_PARENT_RUN]
    assert parent_run.active_parents(experiment_id, "s") == [waited]
    assert parent_run.find_or_create(study, False, spec, space, {}, experiment_id) == waited  # a resume

    client.delete_run(waited)  # the user deleted it: made again, recorded, without waiting
    monkeypatch.setattr(parent_run, "WAIT_FOR_CREATOR_S", 1e9)
    again = parent_run.find_or_create(study, False, spec, space, {}, experiment_id)
    assert again != waited and parent_run.active_parents(experiment_id, "s") == [again]
    assert study.user_attrs[names.ATTR_PARENT_RUN] == again


def test_a_worker_whose_creator_died_makes_the_parent_after_waiting(store, monkeypatch):
    spec, space, study, experiment_id, _ = parent_setup(store)
    monkeypatch.setattr(parent_run, "WAIT_FOR_CREATOR_S", 0.5)
    made = parent_run.find_or_create(study, False, spec, space, {}, experiment_id)
    assert parent_run.active_parents(experiment_id, "s") == [made] == [study.user_attrs[names.ATTR_PARENT_RUN]]


def test_the_ranking_and_the_value_a_new_trial_must_beat_to_keep_its_model():
    study = study_of((COMPLETE, 0.4, True), (PRUNED, None, False), (COMPLETE, 0.6, True), (FAIL, None, False),
                     (COMPLETE, 0.6, True), (COMPLETE, 0.5, False))
    assert parent_run.ranking(study.trials) == [2, 4, 5, 0]  # equal values: the earlier trial first
    assert parent_run.ranking(study.trials, current=(6, 0.6)) == [2, 4, 6, 5, 0]
    assert parent_run.keep_threshold(study, 1) == 0.6 and parent_run.keep_threshold(study, 3) == 0.5
    assert parent_run.keep_threshold(study, 5) is None  # fewer completed trials than models to keep


def test_models_outside_the_best_are_deleted_from_the_artifact_store_once(store, tmp_path):
    import mlflow

    from benchmark import mlflow_store, track

    mlflow_store.configure()
    experiment_id = mlflow_store.experiment_id("made-up")
    client = mlflow.MlflowClient()
    study = optuna.create_study(direction="maximize")
    for number, value in enumerate((0.4, 0.6, 0.5)):
        run_id = client.create_run(experiment_id).info.run_id
        saved = tmp_path / str(number) / "model"  # log_model removes the folder it is in
        saved.mkdir(parents=True)
        (saved / "MLmodel").write_text("a model")
        track.log_model(saved, run_id)
        assert not saved.parent.exists()
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}, user_attrs={
            "mlflow_run_id": run_id, "outcome": {"model_saved": True}}))
    runs = [t.user_attrs["mlflow_run_id"] for t in study.trials]

    def left():
        return [bool(client.list_artifacts(run, names.ARTIFACT_MODEL_DIR)) for run in runs]

    # A new trial at 0.55: the best three are trials 1, 3 (the new one) and 2.
    assert parent_run.drop_models_beyond(study, 3, current=(3, 0.55), dropped=set()) == {runs[0]}
    assert left() == [False, True, True]
    assert client.get_run(runs[0]).data.tags[names.TAG_MODEL] == names.MODEL_DROPPED
    assert parent_run.drop_models_beyond(study, 2, current=(3, 0.55), dropped={runs[0]}) == {runs[2]}
    assert left() == [False, True, False]
