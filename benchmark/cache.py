"""The activation cache: what the frozen layers of a backbone compute, computed once.

A trial's plan (benchmark/plan.py) trains some phases on cached arrays instead of images, at one
of two cuts:
  pooled       the backbone's pooled features, for the phases that train only the head (a frozen
               trial's, a two-phase trial's first phase). With augmentation on,
               `training.feature_views = V` caches V augmented views of the training images instead
               (view v drawn by the spec's augmentation layers seeded with seed + v, rounded to
               8-bit images); epoch e trains on view e mod V, validation and test stay plain.
  <a layer>    the activations at a block boundary below a top-N trial's trainable layers
               (model.cut_below_trainable): the trial trains the part above it (`Above.top`: the
               rest of the backbone, the pooling and the head; the full model's own layers).
Each cut of each (backbone weights, image size, data splits, Keras version and backend, precision,
and for pooled features the pooling and views) is one folder under cache_dir(), named by a hash of
all of that, holding one memory-mapped .npy file per split (float16 where the backbone runs in it),
written whole by files.replaced_folder. Anything that changes the arrays changes the key. A cache
that cannot be read is computed again; one that cannot be written costs speed, not the trial.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from pathlib import Path

import keras
import numpy as np

from benchmark import files, measure, progress
from benchmark.files import cache_dir  # defined there: benchmark.data needs it without Keras
from benchmark.data import Dataset
from benchmark.errors import BenchmarkError
from benchmark.model import (BuiltModel, FrozenPart, augmentation_layers, create_frozen_part, create_head, reset_head,
                             split_at)
from benchmark.plan import views_of
from benchmark.spec import TrialSpec

FORMAT_VERSION = 2
SPLITS = ("train", "val", "test")
POOLED = "pooled"

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Cached:
    data: Dataset  # the trial's dataset with the cached arrays in place of images
    status: str  # "hit" (read from disk or memory) or "miss" (computed, then saved)
    seconds: float  # spent computing or reading them
    path: Path
    train_views: np.ndarray | None = None  # (V, N, D) with training.feature_views = V; data.x_train is view 0


@dataclasses.dataclass
class Above:
    top: keras.Model  # the cut's activations -> logits (what the trial fits)
    cached: Cached


def cache_key(spec: TrialSpec, built: BuiltModel, data: Dataset, cut: str = POOLED) -> str:
    """sha256 of everything a cut's arrays depend on: the backbone's weights themselves (so
    "imagenet", a file and a seeded random init are told apart by content), the splits' pixels,
    image size, the cut, precision, and the Keras version and backend that compute them."""
    digest = hashlib.sha256()
    settings = {
        "format": FORMAT_VERSION,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "backbone": spec.backbone.name,
        "image_size": spec.backbone.image_size,
        "cut": cut,
        "dtype_policy": keras.config.dtype_policy().name,
    }
    if cut == POOLED:
        settings["pooling"] = spec.head.pooling
        if views_of(spec):
            settings["views"] = {"count": views_of(spec), "augment": spec.data.augment.model_dump(),
                                 "seed": spec.training.seed}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for weight in built.base.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    if data.content_key is not None:  # own images: their files' bytes, splits and stored size, hashed once
        digest.update(f"images{data.content_key}".encode())
        return digest.hexdigest()
    for split in SPLITS:
        images = np.ascontiguousarray(getattr(data, f"x_{split}"))
        digest.update(f"{split}{images.shape}{images.dtype}".encode())
        digest.update(images.tobytes())
    return digest.hexdigest()


def folder_of(spec: TrialSpec, built: BuiltModel, data: Dataset, cut: str = POOLED) -> Path:
    where = "pooled" if cut == POOLED else f"below-{cut}"
    return cache_dir() / f"{spec.backbone.name}-{spec.backbone.image_size}px-{where}-{cache_key(spec, built, data, cut)[:32]}"


# ---------------------------------------------------------------- the two cuts


def pooled_features(spec: TrialSpec, built: BuiltModel, data: Dataset) -> Cached:
    """The pooled features of every split, read from the cache or computed and saved there (or,
    for a frozen part shared in this process, kept in memory since an earlier trial)."""
    shared = next((s for s in _shared.values() if s.part is built.part and s.data is data), None)
    if shared is not None and shared.features is not None:
        return dataclasses.replace(shared.features, status="hit", seconds=0.0)
    views = views_of(spec)

    def compute() -> dict[str, np.ndarray]:
        train = [AugmentedView(spec, data.x_train, v) for v in range(views)] if views else [data.x_train]
        return predict_splits(built.features, [*train, data.x_val, data.x_test], spec.training.batch_size,
                              np.float32, views, desc=f"{spec.backbone.name}: computing features (once)")

    cached = cached_arrays(folder_of(spec, built, data), data, views, compute)
    if shared is not None:
        shared.features = cached
    return cached


def above_cut(spec: TrialSpec, built: BuiltModel, data: Dataset, cut: str) -> Above:
    """The model above the layer `cut` of the backbone, and that layer's cached activations."""
    prefix, top = split_at(built.part, built.base.get_layer(cut), spec, built.head)
    dtype = np.float32 if keras.config.dtype_policy().compute_dtype == "float32" else np.float16
    images = [getattr(data, f"x_{split}") for split in SPLITS]
    cached = cached_arrays(folder_of(spec, built, data, cut), data, 0,
                           lambda: predict_splits(prefix, images, spec.training.batch_size, dtype,
                                                  desc=f"{spec.backbone.name}: activations below {cut} (once)"))
    return Above(top=top, cached=cached)


def cached_arrays(folder: Path, data: Dataset, views: int, compute) -> Cached:
    """`data` with a cut's arrays in place of its images: read from `folder`, else computed and saved there."""
    started = time.perf_counter()
    arrays, status = read(folder, data, views), "hit"
    if arrays is None:
        arrays, status = compute(), "miss"
        arrays = write(folder, arrays) or arrays
    train_views = arrays["train"] if views else None
    plain = {**arrays, "train": train_views[0]} if views else arrays
    replaced = dataclasses.replace(data, **{f"x_{split}": plain[split] for split in SPLITS})
    return Cached(data=replaced, status=status, seconds=time.perf_counter() - started, path=folder,
                  train_views=train_views)


def predict_splits(model: keras.Model, images: list, batch_size: int, dtype, views: int = 0,
                   desc: str | None = None) -> dict:
    """One forward pass over all splits, as over their concatenation (one traced function, not one
    per split's shapes), read and predicted a chunk at a time (measure.predict: the images are
    never all in memory): the training images (V views of them, with `views`), then validation,
    then test. `desc` names measure.predict's progress bar."""
    out = measure.predict(model, images, batch_size, dtype, desc=desc)
    ends = np.cumsum([len(x) for x in images])
    train = out[:ends[-3]]
    if views:
        train = train.reshape(views, len(images[0]), *out.shape[1:])
    return {"train": train, "val": out[ends[-3]:ends[-2]], "test": out[ends[-2]:]}


class AugmentedView:
    """View `view` of the images (a source for measure.predict): the spec's augmentation layers,
    seeded with training.seed + view, in training mode, rounded back to 8-bit images, drawn
    `batch` images at a time in order when read, so no view is ever held whole."""

    def __init__(self, spec: TrialSpec, images, view: int, batch: int = 256):
        self.spec, self.images, self.view, self.batch = spec, images, view, batch

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape)

    dtype = np.uint8

    def blocks(self):
        layers = augmentation_layers(self.spec, seed=self.spec.training.seed + self.view)
        for start in range(0, len(self.images), self.batch):
            x = keras.ops.cast(self.images[start:start + self.batch], "float32")
            for layer in layers:
                x = layer(x, training=True)
            yield np.clip(np.rint(keras.ops.convert_to_numpy(x)), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- on disk


def read(folder: Path, data: Dataset, views: int = 0) -> dict[str, np.ndarray] | None:
    """The cached splits, memory-mapped; None if absent or unusable (then they are computed again)."""
    if not folder.is_dir():
        return None
    try:
        arrays = {split: np.load(folder / f"{split}.npy", mmap_mode="r") for split in SPLITS}
    except Exception as e:  # truncated or foreign files: compute and replace them
        log.warning("activation cache %s is unreadable (%s: %s); computing it again", folder, type(e).__name__, e)
        return None
    rows = {split: len(arrays[split]) for split in SPLITS}
    if views:  # (V, N, D)
        rows["train"] = arrays["train"].shape[1] if arrays["train"].ndim == 3 and len(arrays["train"]) == views else -1
    if any(rows[split] != len(getattr(data, f"y_{split}")) for split in SPLITS):
        log.warning("activation cache %s does not match the data's splits; computing it again", folder)
        return None
    return arrays


def write(folder: Path, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The splits written whole (concurrent workers never read half a cache); returns their
    memory-mapped copies, or None (with a warning) where the cache cannot be written."""
    try:
        with files.replaced_folder(folder, "the activation cache") as partial:
            for split, array in arrays.items():
                np.save(partial / f"{split}.npy", array)
        return {split: np.load(folder / f"{split}.npy", mmap_mode="r") for split in SPLITS}
    except (BenchmarkError, OSError) as e:
        log.warning("%s; set BENCHMARK_CACHE_DIR to a writable folder", e)
        return None


# ---------------------------------------------------------------- in memory


@dataclasses.dataclass
class SharedPart:
    part: FrozenPart
    data: Dataset  # held: the features are of these arrays
    features: Cached | None = None
    heads: dict[str, keras.Model] = dataclasses.field(default_factory=dict)  # shared_head's, by architecture


_shared: dict[str, SharedPart] = {}  # one per process: the frozen part the head-only trials of a sweep share


def shared_frozen_part(spec: TrialSpec, data: Dataset) -> FrozenPart:
    """The frozen part (and, once computed, its features) for a head-only trial, built once per
    process for every trial that would build the same one: a sweep's trials differ in their head
    and its training, not in the backbone below it."""
    key = json.dumps([spec.backbone.model_dump(mode="json"), spec.head.pooling, spec.training.seed,  # the seed: random init
                      spec.training.mixed_precision, keras.backend.backend(), spec.data.augment.model_dump(),
                      views_of(spec)])
    shared = _shared.get(key)
    if shared is None or shared.data is not data:
        _shared.clear()
        with progress.once_per_process():
            shared = _shared[key] = SharedPart(part=create_frozen_part(spec), data=data)
    return shared.part


HEADS_KEPT = 8  # architectures whose head (and its compiled functions) a process keeps; a searched head shape makes more


def shared_head(spec: TrialSpec, num_classes: int, part: FrozenPart) -> keras.Model:
    """A head for a head-only trial on the shared frozen `part`: the one an earlier trial of this
    process built for the same architecture, reset to the initial weights a new head gets for
    `spec` (model.reset_head), so that its compiled, traced training is reused (train.compile_for);
    else a new one. A trial's head is the next one's: what a trial keeps of it is saved before the
    next begins (trial.finish)."""
    shared = next(s for s in _shared.values() if s.part is part)
    key = json.dumps([spec.head.model_dump(mode="json"), num_classes, spec.training.mixed_precision])
    head = shared.heads.pop(key, None)
    if head is None:
        head = create_head(spec, num_classes, part)
    else:
        reset_head(head, spec, num_classes)
    shared.heads[key] = head  # the most recently used last
    while len(shared.heads) > HEADS_KEPT:
        del shared.heads[next(iter(shared.heads))]
    return head
