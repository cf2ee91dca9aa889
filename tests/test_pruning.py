"""Epoch reports to Optuna's pruner in batches: the same decisions and stored values as
optuna.Trial's report per epoch, in fewer storage transactions."""

import numpy as np
import optuna
import pytest
import sqlalchemy

from benchmark import pruning

CURVES = {  # validation top-1 per epoch of the trials that ran before
    0: [0.10, 0.20, 0.30, 0.40, 0.50],
    1: [0.12, 0.22, 0.32, 0.42, 0.52],
}


@pytest.fixture
def study(tmp_path):
    """A study on SQLite with two complete trials that reported every epoch, and the median pruner."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(storage=storage, direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))
    for curve in CURVES.values():
        trial = study.ask()
        for step, value in enumerate(curve):
            trial.report(value, step)
        study.tell(trial, curve[-1])
    return study


def run_epochs(trial: optuna.Trial, curve: list[float]) -> list[bool]:
    """report + should_prune per epoch, as KerasPruningCallback does, until the pruner says stop."""
    decisions = []
    for step, value in enumerate(curve):
        trial.report(value, step)
        decisions.append(trial.should_prune())
        if decisions[-1]:
            break
    return decisions


@pytest.mark.parametrize("curve", [[0.05, 0.06, 0.07, 0.08, 0.09], [0.2, 0.3, 0.4, 0.5, 0.6], [0.3, 0.25, 0.2, 0.1, 0.0]],
                         ids=["pruned at the first epoch after warm-up", "never pruned", "pruned later"])
def test_a_batched_trial_decides_and_stores_what_a_trial_reporting_every_epoch_does(study, curve):
    plain = study.ask()
    expected = run_epochs(plain, curve)
    plain_values = study._storage.get_trial(plain._trial_id).intermediate_values
    study.tell(plain, state=optuna.trial.TrialState.FAIL)  # out of the pruner's way: it compares with COMPLETE/PRUNED only

    batched = pruning.BatchedTrial(study, study.ask()._trial_id)
    decisions = run_epochs(batched, curve)
    batched.flush()

    assert decisions == expected
    assert study._storage.get_trial(batched._trial_id).intermediate_values == plain_values
    assert len(plain_values) == len(decisions)


def test_reports_reach_the_storage_in_one_transaction_when_pruned_or_flushed(study, monkeypatch):
    calls = []
    monkeypatch.setattr(type(study._storage._backend), "set_trial_intermediate_value",
                        lambda *a: calls.append(a))  # the one-write-per-value path: not taken on a relational storage
    engine = study._storage._backend.engine
    commits = []
    listener = lambda conn: commits.append(1)  # noqa: E731
    sqlalchemy.event.listen(engine, "commit", listener)
    try:
        trial = pruning.BatchedTrial(study, study.ask()._trial_id)
        before = len(commits)
        for step in range(4):
            trial.report(0.5 + step / 100, step)
        assert len(commits) == before
        assert not study._storage.get_trial(trial._trial_id).intermediate_values
        before = len(commits)
        trial.flush()
        assert len(commits) == before + 1 and calls == []
    finally:
        sqlalchemy.event.remove(engine, "commit", listener)
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {s: 0.5 + s / 100 for s in range(4)}


def test_reports_are_written_as_they_come_once_flush_s_has_passed(study, monkeypatch):
    monkeypatch.setattr(pruning, "FLUSH_S", 0.0)  # epochs longer than FLUSH_S: each written as it ends
    trial = pruning.BatchedTrial(study, study.ask()._trial_id)
    for step in range(3):
        trial.report(0.4, step)
        assert sorted(study._storage.get_trial(trial._trial_id).intermediate_values) == list(range(step + 1))


def test_a_repeated_step_keeps_its_first_value_with_optunas_warning(study):
    trial = pruning.BatchedTrial(study, study.ask()._trial_id)
    trial.report(0.3, 0)
    with pytest.warns(UserWarning, match="already reported"):
        trial.report(0.9, 0)
    trial.flush()
    assert study._storage.get_trial(trial._trial_id).intermediate_values == {0: 0.3}


def test_the_keras_callback_prunes_and_leaves_every_reported_epoch_in_the_storage(study):
    import keras

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    trial_id = study.ask()._trial_id
    callback = pruning.BatchedPruningCallback(study, trial_id, "val_score")
    scores = [0.01, 0.02, 0.03, 0.04, 0.05]  # below both earlier trials: pruned after the warm-up step
    score = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: logs.update(val_score=scores[epoch]))
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1"):
        model.fit(x, y, epochs=5, verbose=0, callbacks=[score, callback])
    assert study._storage.get_trial(trial_id).intermediate_values == {0: 0.01, 1: 0.02}

    trial_id = study.ask()._trial_id
    scores[:] = [0.9] * 5
    model.fit(x, y, epochs=5, verbose=0, callbacks=[score, pruning.BatchedPruningCallback(study, trial_id, "val_score")])
    assert study._storage.get_trial(trial_id).intermediate_values == {s: 0.9 for s in range(5)}  # written as training ended
