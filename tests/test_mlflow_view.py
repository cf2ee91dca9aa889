"""What the MLflow UI opens on: the experiment's shared view (the tag its UI restores a view from),
run names told apart in the UI's 25 characters, and the compare links. The view in a real browser:
test_leaderboard.py (test_the_mlflow_ui_opens_our_experiment_on_its_runs_and_compares_the_rows)."""

import json

import mlflow
import pytest
from helpers import CI_SWEEPS

from benchmark import leaderboard, mlflow_store, mlflow_view, names

VIEW_TAG = "mlflow.sharedViewState.benchmark"


def saved_view(experiment_id: str) -> tuple[dict, dict]:
    """(the envelope, the view state) as MLflow's UI reads them from the experiment's tag."""
    envelope = json.loads(mlflow.get_experiment(experiment_id).tags[VIEW_TAG])
    return envelope, json.loads(envelope["state"])


def a_parent_run(experiment_id: str, params: dict[str, str]) -> str:
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id, tags={names.TAG_ROLE: names.ROLE_SWEEP}).info.run_id
    for key, value in params.items():
        client.log_param(run_id, key, value)
    return run_id


def test_the_view_shows_the_result_columns_and_the_searched_params_best_first_and_follows_new_studies(store):
    mlflow_store.configure()
    experiment_id = mlflow_store.experiment_id("viewed")
    a_parent_run(experiment_id, {"training.learning_rate": "searched 0.001..0.01 (log)", "training.epochs": "3"})
    assert mlflow_view.update(experiment_id) is True
    envelope, state = saved_view(experiment_id)
    # The UI's saved-view format: a name, times in ms, the state as a JSON string.
    assert envelope["name"] == mlflow_view.VIEW_NAME and isinstance(envelope["createdAt"], int)
    assert state == {
        "orderByKey": "metrics.`best_val_top1`", "orderByAsc": False,
        "selectedColumns": ["metrics.`best_val_top1`", "metrics.`test_top1`", "metrics.`test_top5`",
                            "metrics.`params_total`", "metrics.`infer_images_per_sec`",
                            "params.`training.learning_rate`", "tags.`backbone`", "tags.`strategy`",
                            "attributes.`Dataset`"],
    }
    assert mlflow_view.update(experiment_id) is False  # unchanged: not rewritten

    a_parent_run(experiment_id, {"strategy.unfreeze": "searched 0..4", "training.learning_rate": "searched 0.0001..0.001 (log)"})
    assert mlflow_view.update(experiment_id) is True
    columns = saved_view(experiment_id)[1]["selectedColumns"]
    assert columns[5:7] == ["params.`training.learning_rate`", "params.`strategy.unfreeze`"]  # hparams.TABLE's order


def test_every_experiment_link_opens_the_shared_view_on_the_runs_tab(store):
    url = mlflow_store.experiment_url("7")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs?viewStateShareKey=benchmark&workflowType=machine_learning"
    assert mlflow_store.run_url("7", "abc") == "http://127.0.0.1:5000/#/experiments/7/runs/abc"


# ---------------------------------------------------------------- after a real sweep (the shared ci_store)


def runs_of(role: str) -> list:
    return mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.role = '{role}'", output_format="list")


def test_a_sweep_names_its_runs_shortly_keeps_the_full_names_in_tags_and_writes_the_view(in_ci_store):
    parents, trials = runs_of("sweep"), runs_of("trial")
    assert len(parents) == len(CI_SWEEPS) and len(trials) == sum(CI_SWEEPS.values())
    for parent in parents:
        study = parent.data.tags["study_name"]
        _, backbone, strategy, fingerprint = study.rsplit("-", 3)
        assert parent.info.run_name == f"{backbone} {strategy} {fingerprint}" and len(parent.info.run_name) <= 25
        assert parent.data.tags["full_name"] == study
    for trial in trials:
        number, study = trial.data.tags["trial_number"], trial.data.tags["study_name"]
        assert trial.info.run_name == f"{trial.data.tags['backbone']} {trial.data.tags['strategy']} #{number}"
        assert trial.data.tags["full_name"] == f"{study}-t{int(number):03d}"
    columns = saved_view(leaderboard.experiment_id_of("ci"))[1]["selectedColumns"]
    assert "params.`training.learning_rate`" in columns and "metrics.`test_top1`" in columns


def test_a_studys_compare_link_holds_its_scored_trials_best_first(in_ci_store):
    experiment_id = leaderboard.experiment_id_of("ci")
    for parent in runs_of("sweep"):
        study = parent.data.tags["study_name"]
        trials = [t for t in runs_of("trial") if t.data.tags["study_name"] == study]
        scored = sorted((t for t in trials if names.BEST_VAL_TOP1 in t.data.metrics),
                        key=lambda t: -t.data.metrics[names.BEST_VAL_TOP1])
        found = mlflow_view.study_trials(experiment_id, study)
        assert sorted(found) == sorted(t.info.run_id for t in scored)
        values = [next(t for t in scored if t.info.run_id == run_id).data.metrics[names.BEST_VAL_TOP1] for run_id in found]
        assert values == sorted(values, reverse=True)  # best first (ties in any order)
        url = mlflow_view.study_compare_url(experiment_id, study)
        assert all(t.info.run_id in url for t in scored) and "/#/compare-runs?runs=" in url


def test_the_leaderboard_links_each_rows_best_trial_and_its_studys_trials(in_ci_store):
    board = leaderboard.leaderboard("ci")
    experiment_id = leaderboard.experiment_id_of("ci")
    lines = leaderboard.ui_lines("ci", board)
    assert lines[1] == f"  the runs, best first: {mlflow_store.experiment_url(experiment_id)}"
    for row in board.itertuples():
        assert f"  {row.backbone}/{row.strategy}: its best trial {mlflow_store.run_url(experiment_id, row.run_id)}" in lines
        assert f"    its study's trials side by side: {mlflow_view.study_compare_url(experiment_id, row.study)}" in lines
    assert len(lines) == 3 + 2 * len(board)  # the title, the runs, the rows side by side, two lines a row


@pytest.mark.parametrize("value", ["not json", json.dumps({"name": "x"}), ""])
def test_a_view_tag_that_is_not_ours_reads_as_none(value):
    class Experiment:
        tags = {VIEW_TAG: value}

    assert mlflow_view.shared_state(Experiment()) is None


def test_each_trial_logs_its_dataset_named_after_its_source_and_digested_by_its_content(in_ci_store):
    fingerprints = {p.data.tags["study_name"]: p.data.tags["data_fingerprint"] for p in runs_of("sweep")}
    for trial in runs_of("trial"):
        inputs = mlflow.get_run(trial.info.run_id).inputs.dataset_inputs
        assert len(inputs) == 1
        dataset = inputs[0].dataset
        assert dataset.name == "synthetic"  # the ci experiment's source
        assert dataset.digest == fingerprints[trial.data.tags["study_name"]][:16]
        assert [(tag.key, tag.value) for tag in inputs[0].tags] == [("mlflow.data.context", "training")]


# ---------------------------------------------------------------- params a person can read


def test_a_run_logs_about_30_params_what_identifies_and_varies_a_trial():
    from benchmark import hparams, track
    from benchmark.spec import load_experiment

    spec = load_experiment("transfer").resolve("efficientnetlite0", "frozen")
    params = track.logged_params(spec)
    assert len(params) <= 30 and len(spec.params()) > 40
    assert {entry.field for entry in hparams.TABLE} <= set(params)  # every searchable hyperparameter
    for identity in ("backbone.name", "strategy_name", "backbone.image_size", "backbone.weights", "data.source",
                     "data.subset.test", "data.seed", "training.seed", "training.optimizer"):
        assert params[identity] == spec.params()[identity]
    assert "training.jit_compile" not in params and "data.synthetic.train_size" not in params  # not synthetic data
    synthetic = load_experiment("ci").resolve("vgg16", "frozen")
    assert track.logged_params(synthetic)["data.synthetic.train_size"] == "1000"


def test_every_trial_run_holds_its_readable_params_and_its_whole_spec_with_its_hash(in_ci_store):
    import hashlib
    from pathlib import Path

    from benchmark import track
    from benchmark.spec import TrialSpec

    trials = runs_of("trial")
    assert {t.data.tags["trial_state"] for t in trials} == {"COMPLETE", "PRUNED"}  # pruned ones too
    for trial in trials:
        path = mlflow.artifacts.download_artifacts(run_id=trial.info.run_id, artifact_path="trial_spec.json")
        text = Path(path).read_text()
        assert trial.data.params == track.logged_params(TrialSpec.model_validate_json(text))
        assert trial.data.tags["trial_spec_fingerprint"] == hashlib.sha256(text.encode()).hexdigest()
