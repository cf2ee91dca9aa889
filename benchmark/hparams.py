"""The searchable hyperparameters: one entry each, in one table.

An entry names the spec field it searches, how its range is written and sampled, when a trial
searches it and how the parent run shows it. Everything else is derived from TABLE: the search
space models (spec.SearchSpace, spec.SearchSpaceOverride), TrialSpec.with_values, the lbfgs
checks (spec.linear_probe_search_problems), the Optuna suggestions (sweep.suggest) and the parent
run's params (parent_run.searched_params). Adding a hyperparameter is adding an entry.

It is a module of its own, not a section of spec.py, because spec, sweep and parent_run all read
it; it imports nothing of the benchmark's but the names (an entry's field is also its MLflow
param), so spec.py can build its models from it.

TABLE's order is the order Optuna is asked for the values: a seeded sampler's trials depend on
it, so a new entry goes at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from benchmark import names

Kind = Literal["float", "int", "choices"]
# How the lbfgs linear probe treats an entry: "only" it searches (and a gradient optimizer does
# not), "also" it searches like every optimizer, "refused" the probe has no such thing (a spec that
# searches it is an error), "ignored" the probe does not search it.
LinearProbe = Literal["only", "also", "refused", "ignored"]
LINEAR_PROBE_OPTIMIZER = "lbfgs"
SEARCHED = "searched "  # how a parent run's param of a searched hyperparameter begins (Hyperparameter.shown)


def always(spec) -> bool:
    return True


@dataclass(frozen=True)
class Hyperparameter:
    field: str  # section.field of a TrialSpec, which is also its flattened MLflow param
    kind: Kind
    log: bool = False  # float ranges only: sampled (and shown) on a log scale
    default: dict | list | None = None  # the range searched when a spec gives none, as a spec file writes it
    linear_probe: LinearProbe = "ignored"
    when: Callable[[Any], bool] = always  # besides the optimizer: does a trial of this TrialSpec search it?
    floor: Callable[[Any], int] | None = None  # the lowest value a trial of this TrialSpec can take

    @property
    def name(self) -> str:
        """Its key in search.space, in with_values and in the Optuna study."""
        return self.field.split(".")[1]

    @property
    def section(self) -> str:
        return self.field.split(".")[0]

    def applies(self, spec) -> bool:
        probe = spec.training.optimizer == LINEAR_PROBE_OPTIMIZER
        by_optimizer = self.linear_probe == "also" or (self.linear_probe == "only") == probe
        return by_optimizer and self.when(spec)

    def suggest(self, trial, spec, searched) -> Any:
        """One value from Optuna's `trial`, inside `searched` (this entry's range or choices)."""
        if self.kind == "choices":
            return trial.suggest_categorical(self.name, searched)
        if self.kind == "int":
            low = searched.low if self.floor is None else max(searched.low, self.floor(spec))
            return trial.suggest_int(self.name, low, max(low, searched.high))
        return trial.suggest_float(self.name, searched.low, searched.high, log=self.log)

    def shown(self, searched) -> str:
        """'searched 0.0001..0.01 (log)', 'searched 0..10', 'searched 64, 128'."""
        if self.kind == "choices":
            return SEARCHED + ", ".join(str(choice) for choice in searched)
        return f"{SEARCHED}{searched.low:g}..{searched.high:g}" + (" (log)" if self.log else "")


def searches_depth(spec) -> bool:
    return spec.strategy.unfreeze == "search"


def two_phase(spec) -> bool:
    return spec.strategy.schedule == "two_phase"


def unfreeze_floor(spec) -> int:
    return 1 if two_phase(spec) else 0  # phase 2 unfreezes something


TABLE: tuple[Hyperparameter, ...] = (
    Hyperparameter(names.PARAM_LEARNING_RATE, "float", log=True, default={"low": 1e-4, "high": 1e-2}),
    Hyperparameter(names.PARAM_UNFREEZE, "int", default={"low": 0, "high": 10}, when=searches_depth, floor=unfreeze_floor),
    Hyperparameter("head.dropout", "float"),
    Hyperparameter("head.dense_units", "choices"),
    Hyperparameter("training.weight_decay", "float", log=True, linear_probe="refused"),
    Hyperparameter("strategy.finetune_lr_scale", "float", log=True, linear_probe="refused", when=two_phase),
    Hyperparameter("training.l2", "float", log=True, linear_probe="only"),
    Hyperparameter("training.label_smoothing", "float", linear_probe="refused"),
    Hyperparameter("head.pooling", "choices", linear_probe="also"),  # the probe's cached features are pooled too
)
BY_NAME = {entry.name: entry for entry in TABLE}

# Study fingerprints hash the search space's dump, in which these entries (the table's first seven)
# appear as null while unset; later entries are left out of it while unset, so that the
# fingerprints of existing studies stay the same.
DUMPED_WHEN_UNSET = frozenset({"learning_rate", "unfreeze", "dropout", "dense_units", "weight_decay",
                               "finetune_lr_scale", "l2"})


def is_set(searched) -> bool:
    return searched is not None and searched != []  # an empty list of choices searches nothing


def searched_by(spec, space) -> list[tuple[Hyperparameter, Any]]:
    """The entries a trial of `spec` searches in `space`, with their ranges, in TABLE's order."""
    return [(entry, getattr(space, entry.name)) for entry in TABLE
            if entry.applies(spec) and is_set(getattr(space, entry.name))]
