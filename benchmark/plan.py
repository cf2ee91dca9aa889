"""A trial's plan, decided once: which solver fits it, and for each phase what trains on what.

A phase fits one of three things, by what its inputs are:
  images       the full model on the images, through the backbone (augmentation and all);
  features     the head alone on the backbone's pooled features, cached (benchmark/cache.py):
               a head-only phase of a frozen backbone whose inputs never change;
  activations  the part above a block boundary below the trainable layers, on that boundary's
               cached activations: a top-N phase whose frozen layers below always compute the same.
The test set is measured on what the last phase trained on (the same numbers as the full model
on images). `plan_trial` decides from the spec alone; `at_cut` completes the plan once the model
is built and its cut (if any) is known. `trial` and `train` carry the plan out; nothing else
decides it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from benchmark.errors import BenchmarkError
from benchmark.spec import TrialSpec, linear_probe_problems

Inputs = Literal["images", "features", "activations"]


@dataclass(frozen=True)
class Phase:
    unfreeze: int | str  # the backbone's top weighted layers that train (0: none, "all")
    learning_rate: float
    epochs: int
    inputs: Inputs


@dataclass(frozen=True)
class TrialPlan:
    solver: Literal["keras", "lbfgs"]  # lbfgs: the linear probe, fitted on the cached features
    phases: tuple[Phase, ...]
    no_features: str | None  # why no phase trains on cached features (None: one does)
    no_activations: str | None  # why no phase trains on a cut's cached activations (None: one does)
    cut: str | None = None  # the layer whose activations are cached, once known (at_cut)
    trains_backbone: bool = False  # a phase unfreezes layers or BatchNorm learns: the best epoch is the whole model's

    def uses(self, inputs: Inputs) -> bool:
        return any(phase.inputs == inputs for phase in self.phases)

    @property
    def builds_head_only(self) -> bool:
        """Only the head is built, on a frozen part shared by the process's trials: nothing but
        the head ever trains, and only on cached features."""
        return all(phase.inputs == "features" for phase in self.phases) and not self.trains_backbone

    @property
    def test_inputs(self) -> Inputs:
        return self.phases[-1].inputs

    def at_cut(self, cut: str | None) -> TrialPlan:
        """The plan for the built model, whose highest block boundary below its trainable layers
        is `cut` (None: there is none, and those phases train through the backbone)."""
        if not self.uses("activations"):
            return self
        if cut is None:
            phases = tuple(dataclasses.replace(p, inputs="images") if p.inputs == "activations" else p
                           for p in self.phases)
            return dataclasses.replace(self, phases=phases, no_activations="no block boundary below the trainable layers")
        return dataclasses.replace(self, cut=cut)


def plan_trial(spec: TrialSpec) -> TrialPlan:
    """The plan for `spec`; a linear probe it cannot be is a BenchmarkError naming what to change."""
    if spec.strategy.unfreeze == "search":
        raise ValueError("resolve unfreeze = 'search' to a depth before planning (TrialSpec.with_values)")
    if spec.training.optimizer == "lbfgs" and (problems := linear_probe_problems(
            spec.training, {spec.strategy_name: spec.strategy}, spec.head, spec.data)):
        raise BenchmarkError("; ".join(problems))  # a value given on the command line, say (the spec file was checked)
    no_features, no_activations = why_not_features(spec), why_not_activations(spec)
    phases = tuple(
        Phase(unfreeze, learning_rate, epochs, inputs_of(unfreeze, no_features, no_activations))
        for unfreeze, learning_rate, epochs in schedule(spec)
    )
    trains_backbone = any(phase.unfreeze != 0 for phase in phases) or spec.strategy.train_batchnorm
    return TrialPlan(
        solver="lbfgs" if spec.training.optimizer == "lbfgs" else "keras",
        phases=phases,
        no_features=no_features,
        no_activations=no_activations,
        trains_backbone=trains_backbone,
    )


def inputs_of(unfreeze: int | str, no_features: str | None, no_activations: str | None) -> Inputs:
    if unfreeze == 0:
        return "features" if no_features is None else "images"
    return "activations" if no_activations is None else "images"


def schedule(spec: TrialSpec) -> list[tuple[int | str, float, int]]:
    """(unfreeze depth, learning rate, epochs) for each phase of the strategy."""
    strategy, training = spec.strategy, spec.training
    epochs = strategy.epochs or training.epochs
    if strategy.schedule == "two_phase":
        return [
            (0, training.learning_rate, strategy.head_epochs),
            (strategy.unfreeze, training.learning_rate * strategy.finetune_lr_scale, epochs),
        ]
    return [(strategy.unfreeze, training.learning_rate, epochs)]


def why_not_features(spec: TrialSpec) -> str | None:
    """None if the trial's head-only epochs see pooled features that never change; else the reason."""
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


def why_not_activations(spec: TrialSpec) -> str | None:
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


def views_of(spec: TrialSpec) -> int:
    """How many augmented views of the training images the feature cache holds (0: the plain images)."""
    augment = spec.data.augment
    return spec.training.feature_views if augment.flip or augment.crop_padding else 0


def builds_head_only(spec: TrialSpec) -> bool:
    """Whether a trial of `spec` builds only its head (the sweep runs such trials in its own
    process); False while its depth is still to be searched."""
    return spec.strategy.unfreeze != "search" and plan_trial(spec).builds_head_only
