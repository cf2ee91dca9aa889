"""What makes two trials comparable: a study's fingerprint.

A study is one resolved spec. Its fingerprint hashes everything that decides a trial's result:

  recipe   the TrialSpec and the search (space, sampler, pruner), without the study's size
           (trials, timeout), how trials are hosted (trials_per_process), how many models it
           keeps (keep_models) or where the data lives
  data     a hash of the images and labels the trials see (after the split and subsets); for own
           images, of their files' bytes, stored size, splits and labels
  weights  the pretrained weights' identity: the checkpoint file's sha256, or Keras's name for
           its (hash-checked) download

Change any of them and the sweep starts a new study; rerun the same spec and it resumes. The
leaderboard picks a row's study by its recipe (it does not load data): the study of the current
spec, or the newest one when several share the recipe (other data or weights files).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import checkpoint, registry
from benchmark.errors import BenchmarkError
from benchmark.spec import ExperimentSpec, SearchSpace, SearchSpec, TrialSpec

SHORT = 8  # hex digits of the fingerprint in a study's name
# how long, where and what is kept, and how a budget race shares trials: not what a trial gives
NOT_RESULTS = {"trials", "timeout_s", "trials_per_process", "keep_models", "race"}


@dataclass(frozen=True)
class Fingerprint:
    recipe: str
    data: str
    weights: str

    @property
    def full(self) -> str:
        return digest({"recipe": self.recipe, "data": self.data, "weights": self.weights})

    @property
    def short(self) -> str:
        return self.full[:SHORT]


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def recipe(spec: TrialSpec, space: SearchSpace, search: SearchSpec) -> dict:
    """The resolved spec as it decides results: what `recipe_fingerprint` hashes (and what a new
    study's first line compares with the study it supersedes)."""
    trial = spec.model_dump(mode="json")
    trial["strategy"].pop("trials", None)
    trial["strategy"].pop("space", None)  # resolved into `space` below
    trial["data"].pop("source", None)  # where the data lives: its content is the data fingerprint
    trial["data"].pop("dir", None)
    trial["data"].pop("labels", None)
    searched = search.model_dump(mode="json", exclude=NOT_RESULTS | {"space", "per_backbone"})
    return {"trial": trial, "search": searched, "space": space.model_dump(mode="json")}


def recipe_fingerprint(spec: TrialSpec, space: SearchSpace, search: SearchSpec) -> str:
    return digest(recipe(spec, space, search))


def experiment_recipe(experiment: ExperimentSpec, spec: TrialSpec) -> str:
    """The recipe fingerprint of one of the experiment's resolved pairs, with its search space."""
    space = experiment.search_space(spec.backbone.name, spec.strategy_name)
    return recipe_fingerprint(spec, space, experiment.search)


def data_fingerprint(data) -> str:
    """sha256 over the arrays of a benchmark.data.Dataset (0.2 s for all of CIFAR-100); for own
    images, over their content key (the files' bytes, the stored size, each split's images and
    labels, the class names: benchmark.data.load_own_images), so gigabytes of pixels are not hashed again."""
    if getattr(data, "content_key", None) is not None:
        return digest({"own images": data.content_key})
    hasher = hashlib.sha256()
    for array in (data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test):
        contiguous = np.ascontiguousarray(array)
        hasher.update(f"{contiguous.dtype}{contiguous.shape}".encode())
        hasher.update(memoryview(contiguous).cast("B"))
    hasher.update(json.dumps(data.class_names).encode())
    return hasher.hexdigest()


def weights_fingerprint(spec: TrialSpec) -> str:
    """A file's sha256, or the name Keras downloads and hash-checks; "none" for random init."""
    weights, name = spec.backbone.weights, spec.backbone.name
    if weights.lower() == "none":
        return "none"
    backbone = registry.get_backbone(name)
    if weights.lower() == "imagenet":
        if backbone.source == "lite":
            from benchmark import lite

            return "sha256:" + checkpoint.sha256_of(lite.wheel_checkpoint(name))
        return f"keras.applications:{registry.weights_file_for(backbone, spec.backbone.image_size)}"
    path = Path(weights)
    if not path.is_file():
        raise BenchmarkError(
            f"backbone.weights = {weights!r} for {name} is not a file; give the path of a weights file, "
            f'"imagenet" or "none"'
        )
    return "sha256:" + checkpoint.sha256_of(path)


def fingerprint(spec: TrialSpec, space: SearchSpace, search: SearchSpec, data) -> Fingerprint:
    return Fingerprint(
        recipe=recipe_fingerprint(spec, space, search), data=data_fingerprint(data), weights=weights_fingerprint(spec)
    )


def flatten(value, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: json.dumps(value)}


def differences(old: dict, new: dict, limit: int = 4) -> str:
    """'training.epochs 2 -> 5, head.dropout 0.0 -> 0.2' between two recipes."""
    before, after = flatten(old), flatten(new)
    keys = sorted(set(before) | set(after))
    changed = [f"{k.removeprefix('trial.')} {before.get(k, '-')} -> {after.get(k, '-')}" for k in keys
               if before.get(k) != after.get(k)]
    shown = ", ".join(changed[:limit]) + (f" (+{len(changed) - limit} more)" if len(changed) > limit else "")
    return shown or "the same recipe on other data or weights"
