"""Prefix cache for fine-tuning: a trial that trains only the top layers of its backbone trains
only the part above them.

With the top N weighted layers unfrozen, BatchNorm in inference mode and no augmentation, the
layers below the lowest unfrozen one compute the same activations for an image in every epoch.
So the activations at a cut below them (a block boundary: model.cut_below_trainable) are
computed once per (backbone weights, cut, image size, data, Keras version and backend), kept on
disk as memory-mapped .npy files (float16 where the backbone runs in it), and the trial trains
`top` (the rest of the backbone, the pooling and the head) on them. The layers are the full
model's: what is saved and measured is still the whole network.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from benchmark import features
from benchmark.data import Dataset
from benchmark.model import BuiltModel, cut_below_trainable, split_at
from benchmark.spec import TrialSpec

SPLITS = features.SPLITS
log = logging.getLogger(__name__)


@dataclasses.dataclass
class Prefix:
    top: keras.Model  # the cut's activations -> logits (what the trial fits)
    data: Dataset  # the trial's dataset with the cut's activations in place of images
    cut: str  # the layer whose output is cached
    status: str  # "hit" or "miss"
    seconds: float


def why_not_prefixed(spec: TrialSpec) -> str | None:
    """None if the trial's epochs through the backbone see frozen layers below its unfrozen ones
    that always compute the same activations; else the reason."""
    strategy, augment = spec.strategy, spec.data.augment
    if spec.training.feature_cache == "off":
        return "training.feature_cache = off"
    if not isinstance(strategy.unfreeze, int) or strategy.unfreeze == 0:
        return "no layer of the backbone trains" if strategy.unfreeze == 0 else "the whole backbone trains"
    if strategy.train_batchnorm:
        return "strategy.train_batchnorm updates BatchNorm statistics"
    if augment.flip or augment.crop_padding:
        return "augmentation changes the images every epoch"
    return None


def prefixed(spec: TrialSpec, built: BuiltModel, data: Dataset) -> Prefix | None:
    """The cut's activations for every split (read from the cache, or computed and saved there)
    and the model above the cut; None where the backbone has no cut below its trainable layers."""
    cut = cut_below_trainable(built.base)
    if cut is None:
        return None
    started = time.perf_counter()
    prefix, top = split_at(built.part, cut, spec, built.head)
    key = features.cache_key(spec, built, data)[:32]
    folder = features.cache_dir() / f"{spec.backbone.name}-{spec.backbone.image_size}px-below-{cut.name}-{key}"
    activations, status = read(folder, data), "hit"
    if activations is None:
        activations, status = compute(prefix, data, spec.training.batch_size), "miss"
        activations = write(folder, activations) or activations
    replaced = dataclasses.replace(data, **{f"x_{split}": activations[split] for split in SPLITS})
    return Prefix(top=top, data=replaced, cut=cut.name, status=status, seconds=time.perf_counter() - started)


def compute(prefix: keras.Model, data: Dataset, batch_size: int) -> dict[str, np.ndarray]:
    """One pass over all splits, kept in the dtype the backbone runs in (float16 under mixed precision)."""
    images = [getattr(data, f"x_{split}") for split in SPLITS]
    out = np.asarray(prefix.predict(np.concatenate(images), batch_size=batch_size, verbose=0))
    dtype = np.float32 if keras.config.dtype_policy().compute_dtype == "float32" else np.float16
    return dict(zip(SPLITS, np.split(out.astype(dtype), np.cumsum([len(x) for x in images])[:-1])))


def read(folder: Path, data: Dataset) -> dict[str, np.ndarray] | None:
    """The cached splits, memory-mapped; None if absent or unusable (then computed again)."""
    if not folder.is_dir():
        return None
    try:
        activations = {split: np.load(folder / f"{split}.npy", mmap_mode="r") for split in SPLITS}
    except Exception as e:  # truncated or foreign files: compute and replace them
        log.warning("prefix cache %s is unreadable (%s: %s); computing it again", folder, type(e).__name__, e)
        return None
    if any(len(activations[split]) != len(getattr(data, f"y_{split}")) for split in SPLITS):
        log.warning("prefix cache %s does not match the data's splits; computing it again", folder)
        return None
    return activations


def write(folder: Path, activations: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """A folder written whole, then renamed into place; returns the memory-mapped copies. A cache
    that cannot be written costs speed, not the trial: warn and go on (None)."""
    partial = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
        for split, array in activations.items():
            np.save(partial / f"{split}.npy", array)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(partial, folder)
        return {split: np.load(folder / f"{split}.npy", mmap_mode="r") for split in SPLITS}
    except OSError as e:
        log.warning("cannot write the prefix cache %s (%s); set BENCHMARK_CACHE_DIR to a writable folder", folder, e)
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        return None
