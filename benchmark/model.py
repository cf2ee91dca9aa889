"""Model: uint8 32x32 images in; resize, augmentation and the backbone's preprocessing inside
the model (so they run on the accelerator, on every Keras backend); then backbone; then head.

`create_model(spec, num_classes)` is the one way to build a trial's model (like timm's
create_model): seeded, under the spec's dtype policy, with its final trainable layers."""

from __future__ import annotations

from dataclasses import dataclass

import keras

from benchmark import registry, runtime
from benchmark.spec import TrialSpec

CIFAR_SIZE = 32


@dataclass
class BuiltModel:
    model: keras.Model  # uint8 images -> logits
    base: keras.Model
    depth: int  # the backbone's weighted layers: the largest unfreeze depth
    features: keras.Model  # uint8 images -> pooled backbone features (what the head sees)
    head: keras.Model  # pooled features -> logits; shares its layers (and so its weights) with `model`


def create_model(spec: TrialSpec, num_classes: int) -> BuiltModel:
    """The trial's model for `spec`. A depth beyond the backbone is a BenchmarkError here, before
    a two-phase trial's first phase has trained."""
    keras.backend.clear_session()
    runtime.seed_everything(spec.training.seed)
    keras.config.set_dtype_policy(runtime.mixed_precision_policy(spec.training.mixed_precision))
    built = assemble(spec, num_classes)
    set_trainable(built, spec.strategy.unfreeze, spec.strategy.train_batchnorm, spec.backbone.name)
    set_batchnorm_momentum(built, spec.strategy.batchnorm_momentum)
    return built


def assemble(spec: TrialSpec, num_classes: int) -> BuiltModel:
    """Input, augmentation, resize, preprocessing, backbone, pooling, head: every layer trainable."""
    backbone = registry.get_backbone(spec.backbone.name)
    base = registry.build_base(backbone, spec.backbone.image_size, spec.backbone.weights)

    inputs = keras.Input((CIFAR_SIZE, CIFAR_SIZE, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    for layer in augmentation_layers(spec):
        x = layer(x)
    if spec.backbone.image_size != CIFAR_SIZE:
        x = keras.layers.Resizing(spec.backbone.image_size, spec.backbone.image_size, name="resize")(x)
    for layer in registry.preprocessing_layers(backbone):
        x = layer(x)
    # training=False keeps BatchNorm in inference mode even where layers are unfrozen.
    x = base(x, training=None if spec.strategy.train_batchnorm else False)
    pooled = pooling_layer(spec)(x)
    layers = head_layers(spec, num_classes)
    model = keras.Model(inputs, apply(layers, pooled), name=f"{backbone.name}_{spec.strategy_name}")
    head_inputs = keras.Input(pooled.shape[1:], name="features")
    return BuiltModel(
        model=model,
        base=base,
        depth=registry.depth(base),
        features=keras.Model(inputs, pooled, name=f"{backbone.name}_features"),
        head=keras.Model(head_inputs, apply(layers, head_inputs), name=f"{backbone.name}_head"),
    )


def augmentation_layers(spec: TrialSpec) -> list[keras.layers.Layer]:
    """Random flip and shift at 32 px; active only while training."""
    augment = spec.data.augment
    seed = spec.training.seed
    layers = []
    if augment.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed, name="flip"))
    if augment.crop_padding:
        shift = augment.crop_padding / CIFAR_SIZE
        translation = keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed, name="shift")
        if keras.backend.backend() == "jax":
            # Keras marks this layer un-jittable for TensorFlow's sake, which turns XLA off for the whole
            # model; under JAX it traces fine, and without jit every op is dispatched to the GPU alone.
            translation.supports_jit = True
        layers.append(translation)
    return layers


def pooling_layer(spec: TrialSpec) -> keras.layers.Layer:
    pool = keras.layers.GlobalAveragePooling2D if spec.head.pooling == "avg" else keras.layers.GlobalMaxPooling2D
    return pool(name="pool")


def head_layers(spec: TrialSpec, num_classes: int) -> list[keras.layers.Layer]:
    """What follows the pooled features. Applied twice (full model, head model): shared weights."""
    layers = []
    if spec.head.normalize:
        layers.append(keras.layers.LayerNormalization(center=False, scale=False, name="normalize"))
    if spec.head.dense_units:
        layers.append(keras.layers.Dense(spec.head.dense_units, activation="relu", name="hidden"))
    if spec.head.dropout:
        layers.append(keras.layers.Dropout(spec.head.dropout, seed=spec.training.seed, name="dropout"))
    # Logits stay float32 under mixed precision so the loss is computed stably.
    layers.append(keras.layers.Dense(num_classes, dtype="float32", name="logits"))
    return layers


def apply(layers: list[keras.layers.Layer], x):
    for layer in layers:
        x = layer(x)
    return x


def set_trainable(built: BuiltModel, unfreeze: int | str, train_batchnorm: bool, backbone_name: str) -> None:
    """Freeze the backbone but for its top `unfreeze` weighted layers; the head always trains."""
    registry.apply_unfreeze(built.base, unfreeze, train_batchnorm=train_batchnorm, backbone_name=backbone_name)


def set_batchnorm_momentum(built: BuiltModel, momentum: float | None) -> None:
    if momentum is None:
        return
    for layer in registry.leaf_layers(built.base):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
