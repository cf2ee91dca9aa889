"""Run logging: the epochs' curves reach the run, in as few writes as the epochs allow."""

from benchmark import mlflow_store, track


def test_short_epochs_are_written_together_and_nothing_is_lost_when_training_fails(store, monkeypatch):
    import mlflow
    import pytest

    mlflow_store.configure()
    client = mlflow.MlflowClient()

    def steps(run_id):
        return [m.step for m in client.get_metric_history(run_id, "val_top1")]

    gathered = client.create_run(mlflow_store.experiment_id("made-up")).info.run_id
    monkeypatch.setattr(track.EpochLogger, "FLUSH_S", 3600.0)
    with pytest.raises(RuntimeError):
        with track.EpochLogger(gathered) as logger:
            for epoch in range(3):
                logger(epoch, {"val_top1": 0.1 * epoch, "loss": float("nan")})  # a NaN is not written
            assert steps(gathered) == []  # not yet: three short epochs make one write
            raise RuntimeError("training failed")
    assert steps(gathered) == [1, 2, 3] and client.get_metric_history(gathered, "loss") == []

    live = client.create_run(mlflow_store.experiment_id("made-up")).info.run_id
    monkeypatch.setattr(track.EpochLogger, "FLUSH_S", 0.0)
    logger = track.EpochLogger(live)
    logger(0, {"val_top1": 0.5})
    assert steps(live) == [1]  # long epochs (here: any) are written as they end


def test_a_trials_curves_metrics_and_tags_are_one_write(store, monkeypatch):
    """A head trial on cached features ends in well under FLUSH_S: its epochs' curves go to the
    store with its final metrics, tags and params, in one log_batch, and none is lost."""
    import mlflow

    from benchmark import names
    from benchmark.spec import load_experiment
    from benchmark.trial import prepare, run_tracked

    mlflow_store.configure()
    client = mlflow.MlflowClient()
    run_id = client.create_run(mlflow_store.experiment_id("ci")).info.run_id
    writes = counted_log_batches(monkeypatch)
    monkeypatch.setattr(track.EpochLogger, "FLUSH_S", 3600.0)  # however slow the machine
    spec = load_experiment("ci").resolve("vgg16", "frozen")
    run_tracked(prepare(spec), run_id, keep=False)
    assert len(writes) == 1
    assert [m.step for m in client.get_metric_history(run_id, "val_top1")] == [1, 2, 3]
    run = client.get_run(run_id)
    assert names.TEST_TOP1 in run.data.metrics and run.data.tags[names.TAG_FEATURE_CACHE] in ("hit", "miss")
    assert run.data.params == track.logged_params(spec)  # with its end: the head's run opened without them


def counted_log_batches(monkeypatch) -> list:
    import mlflow

    writes = []
    log_batch = mlflow.MlflowClient.log_batch
    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", lambda self, *a, **k: writes.append(k) or log_batch(self, *a, **k))
    return writes


def test_a_run_shows_its_params_as_it_opens_unless_it_is_a_head_on_cached_features(store, monkeypatch):
    import mlflow

    from benchmark.spec import load_experiment

    mlflow_store.configure()
    experiment = load_experiment("ci")
    head, fine_tuned = experiment.resolve("vgg16", "frozen"), experiment.resolve("vgg16", "top").with_values(unfreeze=2)
    assert track.params_with_result(head) and not track.params_with_result(fine_tuned)
    for spec, opened_with in ((head, {}), (fine_tuned, track.logged_params(fine_tuned))):
        with track.open_run(spec, "trial", "synthetic", "a run") as run:
            assert mlflow.MlflowClient().get_run(run.info.run_id).data.params == opened_with


def test_a_pruned_trials_end_is_one_write_with_its_curves_objective_state_and_params(store, monkeypatch):
    import keras
    import mlflow
    import optuna
    import pytest

    from benchmark import names
    from benchmark.spec import load_experiment
    from benchmark.trial import prepare, run_tracked

    mlflow_store.configure()
    client = mlflow.MlflowClient()
    run_id = client.create_run(mlflow_store.experiment_id("ci")).info.run_id
    monkeypatch.setattr(track.EpochLogger, "FLUSH_S", 3600.0)
    spec = load_experiment("ci").resolve("vgg16", "frozen")
    prepared = prepare(spec)
    seen = []

    def prune_at_the_second_epoch(epoch, logs):
        seen.append(logs["val_top1"])
        if epoch == 1:
            raise optuna.TrialPruned("pruned at epoch 1")

    writes = counted_log_batches(monkeypatch)
    with pytest.raises(optuna.TrialPruned):
        run_tracked(prepared, run_id, keep=False, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=prune_at_the_second_epoch)])
    assert len(writes) == 1
    run = client.get_run(run_id)
    assert run.data.metrics[names.OBJECTIVE] == pytest.approx(max(seen)) and len(seen) == 2
    assert [m.step for m in client.get_metric_history(run_id, "val_top1")] == [1, 2]
    assert run.data.tags[names.TAG_TRIAL_STATE] == "PRUNED" and run.data.params == track.logged_params(spec)
