"""Model: uint8 images in (32 px CIFAR, or own images at their stored data.image_size); resize, augmentation and the backbone's preprocessing inside
the model (so they run on the accelerator, on every Keras backend); then backbone; then head.

Every Keras model a trial uses is put together here. `create_model(spec, num_classes)` builds a
trial's model (like timm's create_model): seeded, under the spec's dtype policy, with its final
trainable layers. A model is a frozen part (images -> pooled features) and a head; a head-only
trial puts a new head on a frozen part built for an earlier trial (`on_frozen_part`), a top-N
trial can be split at a block boundary below its trainable layers (`cut_below_trainable`,
`split_at`), and a trained model is saved as `inference_model` (the same layers, no optimizer).
The backbones themselves come from the registry."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import keras

from benchmark import registry, runtime
from benchmark.spec import TrialSpec

CIFAR_SIZE = 32


def input_size(spec: TrialSpec) -> int:
    """The side of the images the model takes in: the stored size of own images, else CIFAR's 32 px."""
    return spec.data.image_size or CIFAR_SIZE


@dataclass
class FrozenPart:
    """uint8 images -> pooled backbone features: everything below the head."""

    features: keras.Model
    base: keras.Model
    depth: int  # the backbone's weighted layers: the largest unfreeze depth
    preprocessed: keras.KerasTensor | None = None  # the base's input in `features`' graph


@dataclass
class BuiltModel:
    part: FrozenPart
    head: keras.Model  # pooled features -> logits; its layers are the full model's own
    name: str

    @property
    def base(self) -> keras.Model:
        return self.part.base

    @property
    def depth(self) -> int:
        return self.part.depth

    @property
    def features(self) -> keras.Model:
        return self.part.features

    @functools.cached_property
    def model(self) -> keras.Model:
        """uint8 images -> logits: the frozen part's graph continued through the head's layers
        (no layer is built again; a head-only trial on cached features never needs it to train)."""
        return join(self.part, self.head, self.name)


def create_model(spec: TrialSpec, num_classes: int) -> BuiltModel:
    """The trial's model for `spec`. A depth beyond the backbone is a BenchmarkError here, before
    a two-phase trial's first phase has trained."""
    part = create_frozen_part(spec)
    built = BuiltModel(part=part, head=create_head(spec, num_classes, part), name=model_name(spec))
    set_trainable(built, spec.strategy.unfreeze, spec.strategy.train_batchnorm, spec.backbone.name)
    set_batchnorm_momentum(built, spec.strategy.batchnorm_momentum)
    return built


def on_frozen_part(spec: TrialSpec, num_classes: int, part: FrozenPart, head: keras.Model | None = None) -> BuiltModel:
    """A model for a head-only `spec` from a frozen part built earlier (for another trial): a new
    head (or `head`, one built earlier and reset for `spec`: reset_head), nothing of the part trainable."""
    set_trainable_part(part, 0, False, spec.backbone.name)
    return BuiltModel(part=part, head=head or create_head(spec, num_classes, part), name=model_name(spec))


def create_frozen_part(spec: TrialSpec) -> FrozenPart:
    """Input, augmentation, resize, preprocessing, backbone, pooling; seeded (a random-init
    backbone depends on the training seed), under the spec's dtype policy."""
    keras.backend.clear_session()
    runtime.seed_everything(spec.training.seed)
    keras.config.set_dtype_policy(runtime.mixed_precision_policy(spec.training.mixed_precision))
    backbone = registry.get_backbone(spec.backbone.name)
    base = registry.build_base(backbone, spec.backbone.image_size, spec.backbone.weights)

    size = input_size(spec)
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1.0, name="to_float")(inputs)
    for layer in augmentation_layers(spec):
        x = layer(x)
    if spec.backbone.image_size != size:  # resized in the model only where the stored size differs
        x = keras.layers.Resizing(spec.backbone.image_size, spec.backbone.image_size, name="resize")(x)
    for layer in registry.preprocessing_layers(backbone):
        x = layer(x)
    preprocessed = x
    # training=False keeps BatchNorm in inference mode even where layers are unfrozen.
    x = base(x, training=None if spec.strategy.train_batchnorm else False)
    pooled = pooling_layer(spec)(x)
    return FrozenPart(features=keras.Model(inputs, pooled, name=f"{backbone.name}_features"), base=base,
                      depth=registry.depth(base), preprocessed=preprocessed)


def create_head(spec: TrialSpec, num_classes: int, part: FrozenPart) -> keras.Model:
    """The head for `spec` on the frozen part's features. Its initial weights depend on the
    training seed alone (not on what was built before it), so a head built without its backbone
    starts where the full model's would."""
    keras.config.set_dtype_policy(runtime.mixed_precision_policy(spec.training.mixed_precision))
    inputs = keras.Input(part.features.output.shape[1:], name="features")
    return keras.Model(inputs, apply(head_layers(spec, num_classes), inputs), name=f"{spec.backbone.name}_head")


def reset_head(head: keras.Model, spec: TrialSpec, num_classes: int) -> None:
    """Give a head built earlier, for another trial of the same architecture, what `create_head`
    gives a new head for `spec`: each layer's initial weights and random state (a dropout's seed).
    Each layer's twin is made anew from head_layers, unattached to any model, and built; its
    variables are copied. The head's compiled functions stay valid: only values change."""
    keras.config.set_dtype_policy(runtime.mixed_precision_policy(spec.training.mixed_precision))
    twins = {layer.name: layer for layer in head_layers(spec, num_classes)}
    for layer in head.layers[1:]:
        twin = twins[layer.name]
        if not twin.built:
            twin.build_from_config(layer.get_build_config())
        for variable, value in zip(layer.variables, twin.variables, strict=True):
            variable.assign(value)


def join(part: FrozenPart, head: keras.Model, name: str) -> keras.Model:
    return keras.Model(part.features.input, apply(head.layers[1:], part.features.output), name=name)


def cut_below_trainable(base: keras.Model) -> keras.layers.Layer | None:
    """The highest layer below the base's first trainable one whose output every path to the
    base's output passes through (a block boundary: no residual connection crosses it); None if
    there is none above the input, or the base nests models (its layers are not one graph)."""
    layers = base.layers
    if any(isinstance(layer, keras.Model) for layer in layers):
        return None
    first = next((i for i, layer in enumerate(layers) if layer.trainable and layer.weights), None)
    if first is None:
        return None
    position = {id(layer): i for i, layer in enumerate(layers)}
    reach = list(range(len(layers)))  # the last layer that reads each layer's output
    for j, layer in enumerate(layers):
        for node in layer._inbound_nodes:
            for parent in node.parent_nodes:
                i = position.get(id(parent.operation))
                if i is not None:
                    reach[i] = max(reach[i], j)
    crossing = 0  # the furthest any output of the layers before k is read
    best = None
    for k in range(first):
        if k > 0 and crossing <= k and len(layers[k]._inbound_nodes) == 1:
            best = layers[k]
        crossing = max(crossing, reach[k])
    return best


def split_at(part: FrozenPart, cut: keras.layers.Layer, spec: TrialSpec, head: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(prefix, top): uint8 images -> the cut's activations, and those activations -> logits
    through the rest of the backbone (BatchNorm in inference mode), the pooling and the head.
    Both share their layers, and so their weights, with the full model."""
    prefix_base = keras.Model(part.base.input, cut.output, name=f"{part.base.name}_below_{cut.name}")
    prefix = keras.Model(part.features.input, prefix_base(part.preprocessed, training=False), name="prefix")
    suffix = keras.Model(cut.output, part.base.output, name=f"{part.base.name}_above_{cut.name}")
    activations = keras.Input(cut.output.shape[1:], name="activations")
    top = keras.Model(activations, head(pooling_layer(spec)(suffix(activations, training=False))), name="top")
    return prefix, top


def inference_model(model: keras.Model) -> keras.Model:
    """An uncompiled Model over the same graph: it shares the weights but carries no optimizer
    slots, which would otherwise triple a fine-tuned model's saved file."""
    return keras.Model(model.input, model.output, name=model.name)


def model_name(spec: TrialSpec) -> str:
    return f"{spec.backbone.name}_{spec.strategy_name}"


def augmentation_layers(spec: TrialSpec, seed: int | None = None) -> list[keras.layers.Layer]:
    """Random flip and shift; active only while training. Seeded by the training seed unless `seed`
    says otherwise. crop_padding is px at 32 px: the shift is that fraction (crop_padding / 32) of
    the input's side, so one spec shifts by the same fraction of the image at any stored size."""
    augment = spec.data.augment
    seed = spec.training.seed if seed is None else seed
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
    """What follows the pooled features. Applied twice (full model, head model): shared weights.
    Seeded initializers: the same head whatever was built before it."""
    seed = spec.training.seed
    layers = []
    if spec.head.normalize:
        layers.append(keras.layers.LayerNormalization(center=False, scale=False, name="normalize"))
    if spec.head.dense_units:
        layers.append(keras.layers.Dense(spec.head.dense_units, activation="relu", name="hidden",
                                         kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 1)))
    if spec.head.dropout:
        layers.append(keras.layers.Dropout(spec.head.dropout, seed=seed, name="dropout"))
    # Logits stay float32 under mixed precision so the loss is computed stably.
    layers.append(keras.layers.Dense(num_classes, dtype="float32", name="logits",
                                     kernel_initializer=keras.initializers.GlorotUniform(seed=seed)))
    return layers


def apply(layers: list[keras.layers.Layer], x):
    for layer in layers:
        x = layer(x)
    return x


def set_trainable(built: BuiltModel, unfreeze: int | str, train_batchnorm: bool, backbone_name: str) -> None:
    """Freeze the backbone but for its top `unfreeze` weighted layers; the head always trains."""
    set_trainable_part(built.part, unfreeze, train_batchnorm, backbone_name)


def set_trainable_part(part: FrozenPart, unfreeze: int | str, train_batchnorm: bool, backbone_name: str) -> None:
    registry.apply_unfreeze(part.base, unfreeze, train_batchnorm=train_batchnorm, backbone_name=backbone_name)


def set_batchnorm_momentum(built: BuiltModel, momentum: float | None) -> None:
    if momentum is None:
        return
    for layer in registry.leaf_layers(built.base):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum
