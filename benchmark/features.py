"""Frozen-feature cache: head-only epochs train on pooled backbone features computed once.

With the backbone frozen (BatchNorm in inference mode) and no augmentation, every head-only epoch
(all of a frozen trial's, a two-phase trial's first phase) feeds the head the very same pooled
features, so they are computed once per (backbone weights, image size, pooling, precision, data
splits, Keras version and backend), kept on disk under a hash of all of that, and reused by every
later trial and sweep. Anything that changes the features changes the key.

With augmentation on, `training.feature_views = V` caches V augmented views of the training
images instead (view v drawn by the spec's augmentation layers seeded with seed + v, rounded to
8-bit images); epoch e trains on view e mod V, validation and test stay plain.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from benchmark.data import Dataset
from benchmark.model import BuiltModel, FrozenPart, augmentation_layers, create_frozen_part
from benchmark.spec import TrialSpec

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")

log = logging.getLogger(__name__)


@dataclasses.dataclass
class CachedFeatures:
    data: Dataset  # the trial's dataset with pooled features (float32 (N, D)) in place of images
    status: str  # "hit" (read from disk) or "miss" (computed, then saved)
    seconds: float  # spent computing or reading them
    path: Path
    train_views: np.ndarray | None = None  # (V, N, D) with training.feature_views = V; data.x_train is view 0


def cache_dir() -> Path:
    """$BENCHMARK_CACHE_DIR, else ~/.cache/benchmark/features (the XDG cache home if set)."""
    if os.environ.get("BENCHMARK_CACHE_DIR"):
        return Path(os.environ["BENCHMARK_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "benchmark" / "features"


def why_not_cached(spec: TrialSpec) -> str | None:
    """None if the trial's head-only epochs see inputs that never change; else the reason."""
    strategy, augment = spec.strategy, spec.data.augment
    if spec.training.feature_cache == "off":
        return "training.feature_cache = off"
    if strategy.unfreeze != 0 and strategy.schedule != "two_phase":
        return "the backbone trains (unfreeze > 0) in every epoch"
    if strategy.train_batchnorm:
        return "strategy.train_batchnorm updates BatchNorm statistics"
    if (augment.flip or augment.crop_padding) and not spec.training.feature_views:
        return ("augmentation changes the images every epoch (set data.augment flip = false, crop_padding = 0, "
                "or training.feature_views = V to cache V augmented views)")
    return None


def views_of(spec: TrialSpec) -> int:
    """How many augmented views of the training images the cache holds (0: the plain images)."""
    augment = spec.data.augment
    return spec.training.feature_views if augment.flip or augment.crop_padding else 0


def trains_head_only(spec: TrialSpec) -> bool:
    """A one-phase trial whose backbone never trains, on features that never change: all it
    trains is a head, on the cached features."""
    return spec.strategy.unfreeze == 0 and why_not_cached(spec) is None


@dataclasses.dataclass
class SharedPart:
    part: FrozenPart
    data: Dataset  # held: the features are of these arrays
    features: CachedFeatures | None = None


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
        shared = _shared[key] = SharedPart(part=create_frozen_part(spec), data=data)
    return shared.part


def cache_key(spec: TrialSpec, built: BuiltModel, data: Dataset) -> str:
    """sha256 of everything the features depend on: the backbone's weights themselves (so
    "imagenet", a file and a seeded random init are told apart by content), the splits' pixels,
    image size, pooling, precision, and the Keras version and backend that compute them."""
    digest = hashlib.sha256()
    settings = {
        "format": FORMAT_VERSION,
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "backbone": spec.backbone.name,
        "image_size": spec.backbone.image_size,
        "pooling": spec.head.pooling,
        "dtype_policy": keras.config.dtype_policy().name,
    }
    if views_of(spec):
        settings["views"] = {"count": views_of(spec), "augment": spec.data.augment.model_dump(), "seed": spec.training.seed}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for weight in built.base.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    for split in SPLITS:
        images = np.ascontiguousarray(getattr(data, f"x_{split}"))
        digest.update(f"{split}{images.shape}{images.dtype}".encode())
        digest.update(images.tobytes())
    return digest.hexdigest()


def cached_features(spec: TrialSpec, built: BuiltModel, data: Dataset) -> CachedFeatures:
    """The pooled features of every split, read from the cache or computed and saved there (or,
    for a shared frozen part, kept in memory since an earlier trial)."""
    shared = next((s for s in _shared.values() if s.part is built.part and s.data is data), None)
    if shared is not None and shared.features is not None:
        return dataclasses.replace(shared.features, status="hit", seconds=0.0)
    started = time.perf_counter()
    path = cache_dir() / f"{spec.backbone.name}-{spec.backbone.image_size}px-{cache_key(spec, built, data)[:32]}.npz"
    features = read(path, data, views_of(spec))
    status = "hit"
    if features is None:
        status = "miss"
        features = compute(built, data, spec)
        write(path, features)
    views = features["train"] if views_of(spec) else None
    plain = {**features, "train": views[0]} if views is not None else features
    replaced = dataclasses.replace(data, **{f"x_{split}": plain[split] for split in SPLITS})
    cached = CachedFeatures(data=replaced, status=status, seconds=time.perf_counter() - started, path=path,
                            train_views=views)
    if shared is not None:
        shared.features = cached
    return cached


def compute(built: BuiltModel, data: Dataset, spec: TrialSpec) -> dict[str, np.ndarray]:
    """One forward pass over all splits at once (one traced function, not one per split's shapes);
    with views, "train" holds the features of every view, (V, N, D)."""
    views = views_of(spec)
    train = list(augmented_views(spec, data.x_train, views)) if views else [data.x_train]
    images = [*train, data.x_val, data.x_test]
    pooled = np.asarray(built.features.predict(np.concatenate(images), batch_size=spec.training.batch_size,
                                               verbose=0), np.float32)
    parts = np.split(pooled, np.cumsum([len(x) for x in images])[:-1])
    return {"train": np.stack(parts[:-2]) if views else parts[0], "val": parts[-2], "test": parts[-1]}


def augmented_views(spec: TrialSpec, images: np.ndarray, views: int, batch: int = 256):
    """View v of the images: the spec's augmentation layers, seeded with training.seed + v, in
    training mode, rounded back to 8-bit images."""
    for view in range(views):
        layers = augmentation_layers(spec, seed=spec.training.seed + view)
        chunks = []
        for start in range(0, len(images), batch):
            x = keras.ops.cast(images[start:start + batch], "float32")
            for layer in layers:
                x = layer(x, training=True)
            chunks.append(np.clip(np.rint(keras.ops.convert_to_numpy(x)), 0, 255).astype(np.uint8))
        yield np.concatenate(chunks)


def read(path: Path, data: Dataset, views: int = 0) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None if absent or unusable (then they are computed again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as stored:
            features = {split: stored[split] for split in SPLITS}
    except Exception as e:  # truncated or foreign file: recompute and overwrite it
        log.warning("feature cache %s is unreadable (%s: %s); computing the features again", path, type(e).__name__, e)
        return None
    rows = {**{split: len(features[split]) for split in SPLITS},
            "train": features["train"].shape[1] if views else len(features["train"])}
    if (views and features["train"].shape[0] != views) or any(
            rows[split] != len(getattr(data, f"y_{split}")) for split in SPLITS):
        log.warning("feature cache %s does not match the data's splits; computing the features again", path)
        return None
    return features


def write(path: Path, features: dict[str, np.ndarray]) -> None:
    """Atomically (a temp file renamed into place): concurrent workers never read half a file.
    A cache that cannot be written costs speed, not the trial: warn and go on."""
    partial = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", suffix=".npz", delete=False) as handle:
            partial = Path(handle.name)
            np.savez(handle, **features)
        os.replace(partial, path)
    except OSError as e:
        log.warning("cannot write the feature cache %s (%s); set BENCHMARK_CACHE_DIR to a writable folder", path, e)
        if partial is not None:
            partial.unlink(missing_ok=True)
