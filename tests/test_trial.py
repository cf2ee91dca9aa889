"""One trial: strategies train what they say, training learns, metrics land in MLflow by name, and
a set of 5 classes or fewer logs no top-5."""

import csv
from pathlib import Path

import mlflow
import numpy as np
import pytest

from benchmark import mlflow_store, names, registry
from benchmark.data import Dataset
from benchmark.spec import BackboneSpec, load_experiment
from benchmark.plan import Phase
from benchmark.trial import epoch_metrics, execute, prepare, run_tracked, run_trial, without_meaningless_top5


def ci_trial(backbone="vgg16", strategy="frozen", **values):
    return load_experiment("ci").resolve(backbone, strategy).with_values(**values)


def trainable_weights_after_prepare(spec) -> list:
    return list(prepare(spec).built.model.trainable_weights)


@pytest.mark.parametrize("unfreeze, expected", [(0, 2), (2, 2 + 2 * 2), (13, 2 + 13 * 2), ("all", 2 + 13 * 2)])
def test_vgg16_trainable_variables_per_strategy(unfreeze, expected):
    # VGG16 has 13 conv layers (kernel + bias each); the head is one Dense (kernel + bias).
    assert len(trainable_weights_after_prepare(ci_trial("vgg16", "top", unfreeze=unfreeze))) == expected


@pytest.mark.slow
def test_batchnorm_stays_frozen_when_fine_tuning_everything():
    mobilenet = BackboneSpec(name="mobilenetv2", weights="none", image_size=32)  # has BatchNorm; VGG16 has none
    spec = ci_trial("vgg16", "top", unfreeze="all").model_copy(update={"backbone": mobilenet})
    built = prepare(spec).built
    names = [w.path for w in built.model.trainable_weights]
    assert not any("gamma" in n or "beta" in n or "moving" in n for n in names)
    per_layer = sum(len(layer.weights) for layer in registry.weighted_layers(built.base))
    assert len(names) == per_layer + 2


@pytest.mark.slow
def test_two_phase_trains_head_first_then_unfreezes_at_lower_lr():
    spec = ci_trial("vgg16", "top", unfreeze=3, learning_rate=1e-3)
    spec = spec.model_copy(
        update={"strategy": spec.strategy.model_copy(update={"schedule": "two_phase", "head_epochs": 1})}
    )
    prepared = prepare(spec)
    assert prepared.plan.phases == (Phase(0, 1e-3, 1, "features"),
                                    Phase(3, pytest.approx(1e-4), spec.training.epochs, "activations"))
    result = execute(prepared)
    assert len(prepared.built.model.trainable_weights) == 2 + 3 * 2
    rates = result.history.series("learning_rate")
    assert rates[0] == pytest.approx(1e-3) and rates[1:] == pytest.approx([1e-4] * spec.training.epochs)
    assert [int(e["epoch"]) for e in result.history.epochs] == list(range(1 + spec.training.epochs))


@pytest.mark.slow
def test_short_training_on_synthetic_data_learns():
    result = run_trial(ci_trial("vgg16", "frozen", learning_rate=3e-3))
    chance = 1 / 100
    assert result.metrics["best_val_top1"] > 15 * chance, result.metrics
    assert result.metrics["test_top1"] > 15 * chance, result.metrics
    assert result.metrics["params_trainable"] < result.metrics["params_total"]
    assert result.metrics["infer_images_per_sec"] > 0 and result.metrics["train_images_per_sec"] > 0
    assert result.metrics["model_size_mb"] == pytest.approx((result.model_path / "data" / "model.keras").stat().st_size / 1e6)


@pytest.mark.slow
def test_trial_metrics_land_in_mlflow_under_documented_names(store, capsys):
    from benchmark.cli import main

    assert main(["run", "--experiment", "ci", "--backbone", "vgg16", "--quiet"]) == 0
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1
    run = runs.iloc[0]
    for name in names.FINAL_METRICS:
        assert np.isfinite(run[f"metrics.{name}"]), name
    for name in ("val_top1", "val_top5", "loss", "learning_rate"):
        history = mlflow.MlflowClient().get_metric_history(run.run_id, name)
        assert [m.step for m in history] == [1, 2, 3], name
    val_top1 = mlflow.MlflowClient().get_metric_history(run.run_id, "val_top1")
    best = max(val_top1, key=lambda m: (m.value, -m.step))  # the first of equals, as the sweep picks it
    assert run["metrics.best_epoch"] == best.step and run["metrics.best_val_top1"] == best.value  # both count from 1
    assert run["params.backbone.name"] == "vgg16" and run["params.training.learning_rate"] == str(load_experiment("ci").training.learning_rate)
    assert run["tags.backbone"] == "vgg16" and run["tags.strategy"] == "frozen" and run["tags.role"] == "run"
    assert run["tags.versions.keras"] and run["tags.device"].endswith("cpu")
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.run_id)}
    assert {"learning_curves.png", "test_predictions.npz", "history.json", names.ARTIFACT_MODEL_DIR} <= artifacts
    assert run["tags.model"] == names.MODEL_KEPT  # a single run keeps its model, as an MLflow Keras model
    model = mlflow.keras.load_model(f"runs:/{run.run_id}/{names.ARTIFACT_MODEL_DIR}")
    assert model.count_params() == run["metrics.params_total"]
    assert "best_val_top1" in capsys.readouterr().out


@pytest.mark.slow
def test_batchnorm_momentum_is_set_on_every_batchnorm_layer():
    mobilenet = BackboneSpec(name="mobilenetv2", weights="none", image_size=32)
    spec = ci_trial("vgg16", "top", unfreeze="all").model_copy(update={"backbone": mobilenet})
    spec = spec.model_copy(update={"strategy": spec.strategy.model_copy(update={"batchnorm_momentum": 0.9})})
    import keras

    norms = [l for l in prepare(spec).built.base.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) > 30 and {l.momentum for l in norms} == {0.9}


# ---------------------------------------------------------------- any number of classes


def test_top5_metrics_and_curves_are_left_out_with_five_classes_or_fewer():
    metrics = {name: 1.0 for name in names.FINAL_METRICS}
    assert without_meaningless_top5(metrics, 100) == metrics
    assert list(without_meaningless_top5(metrics, 6)) == list(names.FINAL_METRICS)  # the same order as ever
    assert set(without_meaningless_top5(metrics, 5)) == set(names.FINAL_METRICS) - set(names.TOP5_METRICS)
    assert names.TEST_BALANCED_ACCURACY in without_meaningless_top5(metrics, 2)
    assert epoch_metrics(100) == names.EPOCH_METRICS
    assert epoch_metrics(4) == ("loss", "top1", "val_loss", "val_top1", "learning_rate")


def first_classes(data: Dataset, count: int) -> Dataset:
    """The data set's images of its first `count` classes only."""
    kept = {split: getattr(data, f"y_{split}") < count for split in ("train", "val", "test")}
    return Dataset(**{f"{xy}_{split}": getattr(data, f"{xy}_{split}")[kept[split]] for split in kept for xy in "xy"},
                   class_names=data.class_names[:count], origin=data.origin)


@pytest.mark.slow
def test_a_four_class_trial_logs_balanced_accuracy_and_a_per_class_table_but_no_top5(store):
    from sklearn.metrics import balanced_accuracy_score

    from benchmark import leaderboard
    from benchmark.data import load_dataset

    spec = ci_trial("vgg16", "frozen")
    data = first_classes(load_dataset(spec.data), 4)
    mlflow_store.configure()
    client = mlflow.MlflowClient()
    run_id = client.create_run(mlflow_store.experiment_id(spec.experiment)).info.run_id
    run_tracked(prepare(spec, data), run_id, keep=False)

    logged = client.get_run(run_id).data.metrics
    assert set(names.FINAL_METRICS) - set(logged) == set(names.TOP5_METRICS)  # no top-5 at all, not even NaN
    assert client.get_metric_history(run_id, "val_top5") == [] and client.get_metric_history(run_id, "top5") == []
    assert len(client.get_metric_history(run_id, "val_top1")) == spec.training.epochs
    saved = leaderboard.test_predictions(run_id)
    labels, predicted = saved["labels"], saved["top5"][:, 0]
    assert saved["class_names"] == data.class_names and saved["top5"].shape == (len(data.y_test), 4)
    assert logged[names.TEST_BALANCED_ACCURACY] == pytest.approx(balanced_accuracy_score(labels, predicted))

    table = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.ARTIFACT_PER_CLASS))
    rows = list(csv.DictReader(table.open()))
    assert [r["class_name"] for r in rows] == data.class_names
    for index, row in enumerate(rows):
        mine = labels == index
        assert (int(row["support"]), int(row["correct"])) == (mine.sum(), (mine & (predicted == index)).sum())
        assert int(row["predicted"]) == (predicted == index).sum()
        recall = int(row["correct"]) / mine.sum() if mine.any() else None
        assert (float(row["recall"]) if row["recall"] else None) == pytest.approx(recall)


@pytest.mark.slow
def test_a_trial_says_how_long_it_spent_on_what_its_process_does_once(store, monkeypatch):
    """The first head-only trial of a process builds the frozen part and measures the model's size
    and speed for all the others (progress.once_per_process): its record says how long that took,
    the next trial's says nothing (what a sweep's estimate of the time left leaves out)."""
    from benchmark import cache, trial
    from benchmark.data import load_dataset

    for shared in ("_model_sizes", "_inference_rates"):
        monkeypatch.setattr(trial, shared, {})
    monkeypatch.setattr(cache, "_shared", {})
    spec = ci_trial("vgg16", "frozen")
    data = load_dataset(spec.data)
    mlflow_store.configure()
    client, records = mlflow.MlflowClient(), []
    for _ in range(2):
        run_id = client.create_run(mlflow_store.experiment_id(spec.experiment)).info.run_id
        records.append(run_tracked(prepare(spec, data), run_id, keep=False))
    first, second = records
    assert 0 < first.one_time_s and second.one_time_s == 0.0
