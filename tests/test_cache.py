"""The activation cache: training on cached pooled features, or on the activations at a block
boundary, gives the results of training through the frozen layers; keyed by everything that
determines the arrays, robust to a damaged or unwritable cache; the saved model is the whole network."""

import io
import logging
import sys

import keras
import mlflow
import mlflow.keras
import numpy as np
import pytest

from benchmark import cache, measure, mlflow_store, progress, registry
from benchmark.data import load_dataset
from benchmark.model import create_model, cut_below_trainable, on_frozen_part
from benchmark.plan import plan_trial
from benchmark.spec import ExperimentSpec, load_experiment
from benchmark.trial import Prepared, execute, prepare, run_trial


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "feature-cache"
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(path))
    return path


FEWER_TRAINING_IMAGES = 400  # of ci's 800: a top-N trial through the backbone costs half as much (4 a class learn little)


def fewer_training_images(data: dict) -> dict:
    return {**data, "subset": {**data["subset"], "train": FEWER_TRAINING_IMAGES}}


def frozen_spec(feature_cache="auto", **values):
    spec = load_experiment("ci").resolve("vgg16", "frozen").with_values(learning_rate=3e-3)
    training = spec.training.model_copy(update={"feature_cache": feature_cache})
    spec = spec.model_copy(update={"training": training})
    for section, updates in values.items():
        spec = spec.model_copy(update={section: getattr(spec, section).model_copy(update=updates)})
    return spec


@pytest.mark.slow
def test_training_on_cached_features_gives_the_results_of_training_through_the_frozen_backbone(cache_dir):
    through_backbone = run_trial(frozen_spec("off"))
    computed = run_trial(frozen_spec())
    reused = run_trial(frozen_spec())

    assert through_backbone.tags["feature_cache"] == "off: training.feature_cache = off"
    assert (computed.tags["feature_cache"], reused.tags["feature_cache"]) == ("miss", "hit")
    assert len(list(cache_dir.glob("vgg16-32px-pooled-*"))) == 1
    for result in (computed, reused):
        for name in ("best_val_top1", "test_top1", "test_top5", "last_val_top1", "params_total", "params_trainable"):
            assert result.metrics[name] == pytest.approx(through_backbone.metrics[name], abs=0.01), name
        np.testing.assert_allclose(result.history.series("loss"), through_backbone.history.series("loss"), rtol=1e-3)
    assert through_backbone.metrics["best_val_top1"] > 0.2  # it learned something (chance: 0.01)
    # Only the head trains on cached features: many times the images per second.
    assert computed.metrics["train_images_per_sec"] > 3 * through_backbone.metrics["train_images_per_sec"]
    assert reused.metrics["features_s"] < computed.metrics["features_s"] / 3

    # The saved full model (backbone + the head trained on features) predicts images as the head did.
    data = load_dataset(reused.spec.data)
    full_model = mlflow.keras.load_model(str(reused.model_path))
    on_images = measure.evaluate(full_model, data.x_test, data.y_test, batch_size=64)
    assert on_images["top1"] == pytest.approx(reused.metrics["test_top1"], abs=1 / len(data.y_test))


def key_of(spec, data=None):
    prepared = prepare(spec, data)
    return cache.cache_key(spec, prepared.built, prepared.data)


@pytest.mark.slow
def test_the_key_changes_with_everything_that_determines_the_features_and_nothing_else():
    spec = frozen_spec()
    data = load_dataset(spec.data)
    key = key_of(spec, data)
    assert key_of(spec, data) == key  # a fresh build with the same seed: the same weights
    # What the head does, or how it is trained, does not change the features.
    assert key_of(frozen_spec(head={"dropout": 0.3, "dense_units": 16}, training={"learning_rate": 1e-2}), data) == key

    one_pixel = load_dataset(spec.data)
    one_pixel.x_train[0, 0, 0, 0] ^= 1
    changed = {
        "image size": key_of(frozen_spec(backbone={"image_size": 48}), data),
        "pooling": key_of(frozen_spec(head={"pooling": "max"}), data),
        "backbone weights (another random init)": key_of(frozen_spec(training={"seed": 1}), data),
        "one pixel of the training split": key_of(spec, one_pixel),
        "the splits (another validation seed)": key_of(frozen_spec(data={"seed": 1})),
    }
    assert all(other != key for other in changed.values()), [name for name, other in changed.items() if other == key]
    assert len(set(changed.values())) == len(changed)


def unshared(spec):
    """A trial's model built on its own, not the process's shared frozen part (whose features stay
    in memory once read): what a trial in a new process sees of the disk cache."""
    data = load_dataset(spec.data)
    return Prepared(spec=spec, plan=plan_trial(spec), data=data, built=create_model(spec, data.num_classes), started=0.0)


@pytest.mark.slow
def test_a_damaged_cache_file_is_computed_again_and_replaced(cache_dir, caplog):
    spec = frozen_spec()
    prepared = unshared(spec)
    first = cache.pooled_features(spec, prepared.built, prepared.data)
    assert first.status == "miss" and first.path.is_dir()
    expected = {split: np.array(getattr(first.data, f"x_{split}")) for split in cache.SPLITS}  # off the memory map
    train = first.path / "train.npy"
    train.write_bytes(train.read_bytes()[:1000])  # truncated in place, as by a full disk

    with caplog.at_level(logging.WARNING, logger="benchmark.cache"):
        again = cache.pooled_features(spec, prepared.built, prepared.data)
    assert again.status == "miss" and "unreadable" in caplog.text
    third = cache.pooled_features(spec, prepared.built, prepared.data)
    assert third.status == "hit"
    for split in cache.SPLITS:
        assert expected[split].shape == (len(getattr(prepared.data, f"y_{split}")), 512)
        np.testing.assert_array_equal(getattr(again.data, f"x_{split}"), expected[split])
        np.testing.assert_array_equal(getattr(third.data, f"x_{split}"), expected[split])


@pytest.mark.slow
def test_an_unwritable_cache_costs_speed_not_the_trial(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(blocker / "cache"))
    spec = frozen_spec()
    prepared = prepare(spec)
    with caplog.at_level(logging.WARNING, logger="benchmark.cache"):
        result = cache.pooled_features(spec, prepared.built, prepared.data)
    assert result.status == "miss" and len(result.data.x_train) == len(prepared.data.y_train)
    assert "cannot write the activation cache" in caplog.text and "BENCHMARK_CACHE_DIR" in caplog.text
    assert list(tmp_path.iterdir()) == [blocker]


def test_a_sweeps_frozen_trials_compute_the_features_at_most_once(in_ci_store):
    runs = mlflow.search_runs(
        [mlflow_store.experiment_id("ci")],
        filter_string="tags.role = 'trial' and tags.trial_state = 'COMPLETE'",  # pruned trials log no final tags
        output_format="pandas",
    )
    assert len(runs) >= 4
    for backbone, group in runs.groupby("tags.backbone"):
        statuses = group["tags.feature_cache"].tolist()
        assert set(statuses) <= {"hit", "miss"} and statuses.count("miss") <= 1, (backbone, statuses)
        assert statuses.count("hit") >= len(statuses) - 1


def count_traces(head: keras.Model, counts: list[int]) -> None:
    """Count each Python call of the head's logits layer into counts[-1]: a compiled function
    calls it only while it is traced (training, validation and prediction run traced on TensorFlow)."""
    logits = head.get_layer("logits")
    if getattr(logits, "counted", False):
        return
    original = logits.call

    def call(*args, **kwargs):
        counts[-1] += 1
        return original(*args, **kwargs)

    logits.call, logits.counted = call, True


def test_a_reused_head_trains_as_a_new_one_without_tracing_again(cache_dir):
    """Head-only trials of a process share one head per architecture (cache.shared_head), reset
    to the initial weights a new head gets, with the optimizer's state as built and the learning
    rate and weight decay set as variables: the same curves and test top-1 as a new head, for
    three seeds, learning rates and weight decays, and nothing traced after the first trial. With
    dropout: its draws do not depend on what ran before in the process (TensorFlow's kernels are
    kept between trials, runtime.seed_everything)."""
    spec = frozen_spec(training={"optimizer": "adamw", "epochs": 3}, head={"dropout": 0.3})
    data = load_dataset(spec.data)
    part = cache.shared_frozen_part(spec, data)
    settings = [(0, 3e-3, 1.0), (1, 1e-2, 5.0), (2, 1e-3, 0.5)]
    runs = {}
    for reuse in (False, True):
        traces, heads = [], []
        for seed, learning_rate, weight_decay in settings:
            trial_spec = spec.with_values(learning_rate=learning_rate, weight_decay=weight_decay)
            trial_spec = trial_spec.model_copy(update={"training": trial_spec.training.model_copy(update={"seed": seed})})
            head = cache.shared_head(trial_spec, data.num_classes, part) if reuse else None
            built = on_frozen_part(trial_spec, data.num_classes, part, head)
            traces.append(0)
            count_traces(built.head, traces)
            result = execute(Prepared(trial_spec, plan_trial(trial_spec), data, built, 0.0))
            heads.append(built.head)
            runs[reuse, seed] = result
        if reuse:
            assert heads[0] is heads[1] is heads[2]
            assert traces[0] > 0 and traces[1:] == [0, 0]  # traced in the first trial only
        else:
            assert len({id(head) for head in heads}) == 3 and min(traces) > 0  # each new head is traced
    for seed, *_ in settings:
        new, reused = runs[False, seed], runs[True, seed]
        for name in ("loss", "val_loss", "val_top1"):
            np.testing.assert_allclose(reused.history.series(name), new.history.series(name), rtol=0, atol=1e-6)
        assert reused.metrics["test_top1"] == new.metrics["test_top1"]
    assert len({runs[True, seed].metrics["test_top1"] for seed, *_ in settings}) == 3  # three different trials


def two_phase_spec(feature_cache="auto", finetune_lr_scale=0.1):
    spec = frozen_spec(feature_cache).with_values(unfreeze=2, finetune_lr_scale=finetune_lr_scale)
    strategy = spec.strategy.model_copy(update={"schedule": "two_phase", "head_epochs": 3, "epochs": 1})
    return spec.model_copy(update={"strategy": strategy})


@pytest.mark.slow
def test_a_two_phase_trials_head_phase_trains_on_cached_features(cache_dir):
    through_backbone = run_trial(two_phase_spec("off"))
    cached = run_trial(two_phase_spec())
    assert cached.tags["feature_cache"] == "miss" and len(list(cache_dir.glob("*-pooled-*"))) == 1
    assert len(cached.history.epochs) == len(through_backbone.history.epochs) == 4
    # phase 1 (head only) is the same training on the same features
    np.testing.assert_allclose(cached.history.series("val_top1")[:3], through_backbone.history.series("val_top1")[:3],
                               atol=0.011)
    # phase 2 runs through the backbone: its test metrics come from the full model on images
    data = load_dataset(cached.spec.data)
    on_images = measure.evaluate(mlflow.keras.load_model(str(cached.model_path)), data.x_test, data.y_test, batch_size=64)
    assert on_images["top1"] == pytest.approx(cached.metrics["test_top1"], abs=1 / len(data.y_test))


class ZeroBackboneInPhaseTwo(keras.callbacks.Callback):
    """Wrecks the backbone when phase 2 starts, so the best epoch is one of the head phase's."""

    def __init__(self, base, head_epochs: int):
        super().__init__()
        self.base, self.head_epochs = base, head_epochs

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= self.head_epochs:
            self.base.set_weights([np.zeros_like(w) for w in self.base.get_weights()])


@pytest.mark.slow
def test_a_best_epoch_in_the_head_phase_restores_the_backbone_from_before_phase_two(cache_dir):
    prepared = prepare(two_phase_spec())
    before = prepared.built.base.get_weights()
    result = execute(prepared, callbacks=[ZeroBackboneInPhaseTwo(prepared.built.base, head_epochs=3)])
    assert result.metrics["best_epoch"] <= 3 and result.history.series("val_top1")[3] < 0.05
    for kept, original in zip(prepared.built.base.get_weights(), before):
        np.testing.assert_array_equal(kept, original)


def views_spec(views: int, **augment):
    spec = frozen_spec()
    augment = spec.data.augment.model_copy(update=augment or {"flip": True, "crop_padding": 4})
    training = spec.training.model_copy(update={"feature_views": views})
    return spec.model_copy(update={"data": spec.data.model_copy(update={"augment": augment}), "training": training})


def test_epoch_e_trains_on_view_e_mod_v_in_a_new_order_each_epoch():
    from benchmark.train import ViewEpochs

    views = np.stack([np.full((10, 2), v, np.float32) for v in range(3)]) + np.arange(10, dtype=np.float32)[:, None]
    batches = ViewEpochs(views, np.arange(10), batch_size=4, seed=0)
    seen = []
    for _ in range(4):
        epoch = [batches[i] for i in range(len(batches))]
        rows = np.concatenate([x for x, _ in epoch])
        labels = np.concatenate([y for _, y in epoch])
        assert sorted(labels) == list(range(10)) and (rows[:, 0] - labels == rows[0, 0] - labels[0]).all()
        seen.append((int(rows[0, 0] - labels[0]), labels.tolist()))
        batches.on_epoch_end()
    assert [view for view, _ in seen] == [0, 1, 2, 0]
    assert len({tuple(order) for _, order in seen}) == 4  # reshuffled every epoch


@pytest.mark.slow
def test_augmented_views_are_cached_for_training_and_validation_and_test_stay_plain(cache_dir):
    plain_spec, spec = frozen_spec(), views_spec(3)
    assert plan_trial(views_spec(0)).no_features and plan_trial(spec).no_features is None
    prepared = unshared(spec)
    cached = cache.pooled_features(spec, prepared.built, prepared.data)
    plain = cache.pooled_features(plain_spec, prepared.built, prepared.data)
    n = len(prepared.data.y_train)
    assert cached.train_views.shape == (3, n, 512) and plain.train_views is None
    for split in ("val", "test"):
        np.testing.assert_array_equal(getattr(cached.data, f"x_{split}"), getattr(plain.data, f"x_{split}"))
    views = [cached.train_views[v] for v in range(3)]
    assert all(not np.allclose(a, b) for i, a in enumerate([*views, plain.data.x_train]) for b in views[i + 1:])
    keys = {cache.cache_key(s, prepared.built, prepared.data) for s in (plain_spec, spec, views_spec(4),
                                                                       views_spec(3, flip=True, crop_padding=0))}
    assert len(keys) == 4
    again = cache.pooled_features(spec, prepared.built, prepared.data)  # read back from disk
    assert again.status == "hit"
    np.testing.assert_array_equal(again.train_views, cached.train_views)

    # A head-only trial on the views: it learns (chance: 0.01; these synthetic classes suffer from
    # flips and shifts, through the backbone too), on other inputs than the plain features.
    on_views, on_plain = run_trial(spec), run_trial(plain_spec)
    assert on_views.tags["feature_cache"] == "hit" and on_views.metrics["best_val_top1"] > 0.04
    assert on_views.history.series("loss")[0] != pytest.approx(on_plain.history.series("loss")[0], rel=1e-3)


# ---------------------------------------------------------------- the cut below a top-N trial's trainable layers


def top_spec(backbone="vgg16", unfreeze=2, feature_cache="auto", epochs=3):
    raw = load_experiment("ci").model_dump(mode="json")
    raw["backbones"] = [backbone]
    raw["training"].update(feature_cache=feature_cache, epochs=epochs, learning_rate=1e-3)
    raw["data"] = fewer_training_images(raw["data"])
    spec = ExperimentSpec.model_validate(raw).resolve(backbone, "top")
    return spec.with_values(unfreeze=unfreeze)


def base_with_top(name: str, unfreeze: int, image_size: int = 32) -> keras.Model:
    base = registry.build_base(registry.get_backbone(name), image_size, "none")
    registry.apply_unfreeze(base, unfreeze)
    return base


@pytest.mark.parametrize("name, unfreeze, expected", [
    ("vgg16", 2, "block5_conv1"),  # a plain stack: the layer right below the first trainable one
    ("resnet50", 1, "conv5_block2_out"),  # the last block's third conv: its input, not inside it (the shortcut)
    ("resnet50", 3, "conv5_block2_out"),
    ("resnet50", 4, "conv5_block1_out"),  # one conv of block 2 more: not inside block 2 (its shortcut crosses)
    ("efficientnetlite0", 4, "block14_add"),  # block 15's expand, depthwise, project + the head conv
    ("efficientnetlite0", 2, "block15_dw_bn_relu6"),  # block 15 has no shortcut: any layer of it is a cut
])
def test_the_cut_is_the_highest_block_boundary_below_the_trainable_layers(name, unfreeze, expected):
    cut = cut_below_trainable(base_with_top(name, unfreeze))
    assert cut.name == expected


def test_no_cut_when_the_whole_backbone_trains():
    assert cut_below_trainable(base_with_top("vgg16", 13)) is None


@pytest.mark.slow
@pytest.mark.parametrize("backbone, unfreeze", [("vgg16", 2), ("resnet50", 3)])
def test_a_trial_on_a_cuts_activations_equals_training_through_the_backbone_and_saves_the_whole_network(
        cache_dir, backbone, unfreeze):
    through = run_trial(top_spec(backbone, unfreeze, feature_cache="off"))
    cached = run_trial(top_spec(backbone, unfreeze))
    again = run_trial(top_spec(backbone, unfreeze))

    assert through.tags["prefix_cache"] == "off: training.feature_cache = off"
    assert cached.tags["prefix_cache"].startswith("miss (below ") and again.tags["prefix_cache"].startswith("hit (below ")
    data = load_dataset(cached.spec.data)
    # The cut's activations are computed in other batches than training draws, and a CPU's kernels
    # may sum in another order for another batch: losses agree to 1e-3, accuracies to two examples
    # of their split (one flipped validation image, 0.195 vs 0.200, was seen on one machine).
    def two_examples(split: str) -> float:
        return 2 / len(getattr(data, f"y_{split}")) + 1e-6

    for name in ("loss", "val_loss"):
        np.testing.assert_allclose(cached.history.series(name), through.history.series(name), rtol=1e-3, atol=1e-3)
    for name, split in (("top1", "train"), ("val_top1", "val")):
        np.testing.assert_allclose(cached.history.series(name), through.history.series(name), rtol=0, atol=two_examples(split))
    for name, split in (("best_val_top1", "val"), ("test_top1", "test"), ("test_top5", "test")):
        assert cached.metrics[name] == pytest.approx(through.metrics[name], abs=two_examples(split)), name
    for name in ("params_total", "params_trainable"):
        assert cached.metrics[name] == through.metrics[name], name
    np.testing.assert_allclose(again.history.series("loss"), cached.history.series("loss"), rtol=1e-5)

    registry.register_custom_layers()
    saved = mlflow.keras.load_model(str(cached.model_path))
    assert saved.count_params() == cached.metrics["params_total"]
    on_images = measure.evaluate(saved, data.x_test, data.y_test, batch_size=64)
    assert on_images["top1"] == pytest.approx(cached.metrics["test_top1"], abs=1 / len(data.y_test))


def image_file(path, count: int, size: int = 8, seed: int = 0):
    """A uint8 (count, size, size, 3) .npy of noise, memory-mapped as the image cache holds own images."""
    np.save(path, np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8))
    return np.load(path, mmap_mode="r")


def small_convnet() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(6, 3, activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def test_the_chunked_feature_pass_equals_one_predict_over_the_concatenated_splits(tmp_path, monkeypatch):
    """predict_splits reads and predicts a chunk of whole batches at a time (never every image at
    once, chunks crossing split boundaries), and gets the features of one predict over all splits
    concatenated: the same batches, so the same values, from arrays (CIFAR) or own images (Rows)."""
    from benchmark.data import Rows

    monkeypatch.setattr(measure, "PREDICT_CHUNK_BYTES", 3 * 8 * 8 * 8 * 3)  # 3 batches of 8 images a chunk
    model, seen = small_convnet(), []
    predict = model.predict
    monkeypatch.setattr(model, "predict", lambda x, **kw: seen.append(len(x)) or predict(x, **kw))
    stored = image_file(tmp_path / "images.npy", 100)
    splits = {"train": np.arange(0, 100, 2), "val": np.arange(1, 40, 2), "test": np.arange(41, 100, 2)}  # 50, 20, 30
    whole = predict(np.concatenate([stored[rows] for rows in splits.values()]), batch_size=8, verbose=0)
    expected = dict(zip(cache.SPLITS, np.split(whole, [50, 70])))
    for sources in ([np.array(stored[rows]) for rows in splits.values()], [Rows(stored, rows) for rows in splits.values()]):
        seen.clear()
        features = cache.predict_splits(model, sources, batch_size=8, dtype=np.float32)
        assert seen == [24, 24, 24, 24, 4]  # chunks of whole batches: the last batch is the only partial one
        for split in cache.SPLITS:
            np.testing.assert_allclose(features[split], expected[split], rtol=0, atol=1e-6)
            np.testing.assert_array_equal(features[split], expected[split])  # bit for bit, in fact

    # Test images that are Rows are evaluated the same way, chunk by chunk.
    head = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(7)])
    labels = np.arange(30) % 7
    on_rows = measure.evaluate(head, Rows(stored, splits["test"]), labels, batch_size=8)
    on_array = measure.evaluate(head, np.array(stored[splits["test"]]), labels, batch_size=8)
    np.testing.assert_array_equal(on_rows["predictions"], on_array["predictions"])
    assert on_rows["top1"] == on_array["top1"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_feature_pass_counts_every_image_batch_by_batch_on_one_bar(tmp_path, monkeypatch):
    """One bar over all splits and chunks, advanced by each batch (the last one partial), drawn on a
    terminal once the pass has lasted progress.DELAY_S (0 here), with the values of a pass without it."""
    monkeypatch.setattr(measure, "PREDICT_CHUNK_BYTES", 3 * 8 * 8 * 8 * 3)  # 3 batches of 8 images a chunk
    monkeypatch.setattr(progress, "DELAY_S", 0)
    made, steps, bar = [], [], progress.bar

    def recorded(*args, **options):
        made.append(bar(*args, **options))
        update = made[-1].update
        made[-1].update = lambda n=1: steps.append(n) or update(n)
        return made[-1]

    monkeypatch.setattr(progress, "bar", recorded)
    model, stored = small_convnet(), image_file(tmp_path / "images.npy", 100)
    sources = [np.array(stored[:50]), np.array(stored[50:70]), np.array(stored[70:])]
    monkeypatch.setattr(sys, "stderr", Terminal())
    features = cache.predict_splits(model, sources, batch_size=8, dtype=np.float32, desc="vgg16: computing features (once)")
    drawn = sys.stderr.getvalue()
    assert [(b.total, b.n) for b in made] == [(100, 100)] and steps == [8] * 12 + [4]
    assert "vgg16: computing features (once):" in drawn and drawn.endswith("\r")  # cleared at the end
    whole = model.predict(np.concatenate(sources), batch_size=8, verbose=0)
    np.testing.assert_array_equal(np.concatenate([features[split] for split in cache.SPLITS]), whole)
    made.clear()
    cache.predict_splits(model, sources, batch_size=8, dtype=np.float32)  # no description: no bar
    assert [b.n for b in made] == [0]
