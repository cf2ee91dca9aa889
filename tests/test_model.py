"""A trial's model: what goes in, what comes out, what trains, and that the head is the model's own."""

import keras
import numpy as np
import pytest

from benchmark.errors import BenchmarkError
from benchmark.model import create_model
from benchmark.spec import load_experiment


def ci_spec(strategy="frozen", **values):
    return load_experiment("ci").resolve("vgg16", strategy).with_values(**values)


def images(n=4, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def test_uint8_images_in_logits_out_and_only_the_head_trains_when_frozen():
    built = create_model(ci_spec(), num_classes=100)
    assert built.model.input.dtype == "uint8" and tuple(built.model.input.shape[1:]) == (32, 32, 3)
    assert tuple(built.model.output.shape[1:]) == (100,)
    assert built.depth == 13 and not built.base.trainable
    assert [w.name for w in built.model.trainable_weights] == ["kernel", "bias"]  # the logits layer alone


def test_the_head_model_is_the_full_models_own_head():
    built = create_model(ci_spec(), num_classes=10)
    x = images()
    through_head = built.head.predict(built.features.predict(x, verbose=0), verbose=0)
    np.testing.assert_allclose(through_head, built.model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    logits = built.model.get_layer("logits")
    logits.set_weights([np.zeros_like(w) for w in logits.get_weights()])  # change the shared layer once
    assert not built.head.predict(built.features.predict(x, verbose=0), verbose=0).any()
    assert not built.model.predict(x, verbose=0).any()


def test_the_same_spec_builds_the_same_weights_and_another_seed_others():
    first = create_model(ci_spec(), 10).model.get_weights()
    again = create_model(ci_spec(), 10).model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    spec = ci_spec()
    other = create_model(spec.model_copy(update={"training": spec.training.model_copy(update={"seed": 1})}), 10)
    assert not np.array_equal(first[-2], other.model.get_weights()[-2])


def test_augmentation_is_layers_of_the_model_only_when_the_spec_asks():
    plain = {layer.name for layer in create_model(ci_spec(), 10).model.layers}
    spec = ci_spec()
    augment = spec.data.augment.model_copy(update={"flip": True, "crop_padding": 4})
    augmented = spec.model_copy(update={"data": spec.data.model_copy(update={"augment": augment})})
    layers = {layer.name for layer in create_model(augmented, 10).model.layers}
    assert {"flip", "shift"} <= layers and not {"flip", "shift"} & plain
    keras.backend.clear_session()


def test_a_depth_beyond_the_backbone_is_refused_when_the_model_is_built():
    with pytest.raises(BenchmarkError, match="beyond vgg16's 13 weighted layers"):
        create_model(ci_spec("top", unfreeze=14), 10)


def test_the_model_takes_the_stored_size_and_resizes_only_where_the_backbone_differs():
    from benchmark.spec import DataSpec

    base = ci_spec()
    stored_48 = base.model_copy(update={"data": DataSpec(source="folder", dir="x", image_size=48)})
    built = create_model(stored_48, 10)
    assert tuple(built.model.input.shape[1:]) == (48, 48, 3)
    assert "resize" in [layer.name for layer in built.features.layers]  # 48 px stored, vgg16 sees 32
    same = stored_48.model_copy(update={"backbone": stored_48.backbone.model_copy(update={"image_size": 48})})
    built = create_model(same, 10)
    assert tuple(built.model.input.shape[1:]) == (48, 48, 3)
    assert "resize" not in [layer.name for layer in built.features.layers]
    assert "resize" not in [layer.name for layer in create_model(base, 10).features.layers]  # CIFAR: 32 in, 32 seen


def test_crop_padding_is_the_same_fraction_of_the_image_at_any_stored_size():
    from benchmark.model import augmentation_layers

    spec = ci_spec()
    spec = spec.model_copy(update={"data": spec.data.model_copy(update={"augment": spec.data.augment.model_copy(
        update={"crop_padding": 4})})})
    shift = next(layer for layer in augmentation_layers(spec) if layer.name == "shift")
    assert shift.height_factor == shift.width_factor == 4 / 32
