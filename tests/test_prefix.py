"""The prefix cache: a top-N trial trains the layers above a block boundary on cached activations,
with the results of training through the whole backbone; the saved model is the whole network."""

import keras
import mlflow.keras
import numpy as np
import pytest

from benchmark import measure, prefix, registry
from benchmark.data import load_dataset
from benchmark.model import cut_below_trainable
from benchmark.spec import ExperimentSpec, load_experiment
from benchmark.trial import run_trial


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "feature-cache"
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(path))
    return path


def top_spec(backbone="vgg16", unfreeze=2, feature_cache="auto", epochs=3):
    raw = load_experiment("ci").model_dump(mode="json")
    raw["backbones"] = [backbone]
    raw["training"].update(feature_cache=feature_cache, epochs=epochs, learning_rate=1e-3)
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
def test_a_prefix_cached_trial_equals_training_through_the_backbone_and_saves_the_whole_network(
        cache_dir, backbone, unfreeze):
    through = run_trial(top_spec(backbone, unfreeze, feature_cache="off"))
    cached = run_trial(top_spec(backbone, unfreeze))
    again = run_trial(top_spec(backbone, unfreeze))

    assert through.tags["prefix_cache"] == "off: training.feature_cache = off"
    assert cached.tags["prefix_cache"].startswith("miss (below ") and again.tags["prefix_cache"].startswith("hit (below ")
    for name in ("loss", "val_loss", "val_top1", "top1"):
        np.testing.assert_allclose(cached.history.series(name), through.history.series(name), rtol=1e-3, atol=1e-3)
    for name in ("best_val_top1", "test_top1", "test_top5", "params_total", "params_trainable"):
        assert cached.metrics[name] == pytest.approx(through.metrics[name], abs=2e-3), name
    np.testing.assert_allclose(again.history.series("loss"), cached.history.series("loss"), rtol=1e-5)

    data = load_dataset(cached.spec.data)
    registry.register_custom_layers()
    saved = mlflow.keras.load_model(str(cached.model_path))
    assert saved.count_params() == cached.metrics["params_total"]
    on_images = measure.evaluate(saved, data.x_test, data.y_test, batch_size=64)
    assert on_images["top1"] == pytest.approx(cached.metrics["test_top1"], abs=1 / len(data.y_test))


@pytest.mark.parametrize("changes, reason", [
    ({}, None),
    ({"unfreeze": 0}, "no layer of the backbone trains"),
    ({"unfreeze": "all"}, "the whole backbone trains"),
    ({"feature_cache": "off"}, "feature_cache = off"),
    ({"train_batchnorm": True}, "BatchNorm"),
    ({"flip": True}, "augmentation"),
])
def test_only_top_n_trials_on_unchanging_images_use_the_prefix_cache(changes, reason):
    spec = top_spec()
    if "unfreeze" in changes or "train_batchnorm" in changes:
        strategy = {k: v for k, v in changes.items() if k in ("unfreeze", "train_batchnorm")}
        spec = spec.model_copy(update={"strategy": spec.strategy.model_copy(update=strategy)})
    if "feature_cache" in changes:
        spec = spec.model_copy(update={"training": spec.training.model_copy(update={"feature_cache": "off"})})
    if "flip" in changes:
        augment = spec.data.augment.model_copy(update={"flip": True})
        spec = spec.model_copy(update={"data": spec.data.model_copy(update={"augment": augment})})
    why = prefix.why_not_prefixed(spec)
    assert why == reason if reason is None else reason in why
