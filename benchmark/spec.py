"""Experiment specs: pydantic models, read from TOML files in experiments/.

An ExperimentSpec covers several backbones and strategies; `resolve()` turns it into one
TrialSpec (one backbone, one strategy, concrete values), which is all a trial needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError,
                      create_model, field_validator, model_validator)

from benchmark import hparams, registry
from benchmark.errors import BenchmarkError, SpecError, SpecValueError

EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"

PositiveInt = Annotated[int, Field(ge=1)]
Probability = Annotated[float, Field(ge=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0, lt=2**32)]  # what numpy and TensorFlow accept
MAX_DENSE_UNITS = 16384  # a hidden layer wider than this would not fit the memory it runs in
MAX_SYNTHETIC_IMAGES = 200_000  # 600 MB of 32x32 images; CIFAR-100 itself has 60,000
MAX_BATCH_SIZE = 65536


class Strict(BaseModel):
    # inf and nan are refused in every float field: a spec holds finite numbers only.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


# ---------------------------------------------------------------- data


class SubsetSpec(Strict):
    """Stratified subset sizes per split (None = the whole split)."""

    train: PositiveInt | None = None
    validation: PositiveInt | None = None
    test: PositiveInt | None = None


class SyntheticSpec(Strict):
    """Sizes of the synthetic data set (source = "synthetic"): official-shaped, learnable."""

    train_size: Annotated[int, Field(ge=1, le=MAX_SYNTHETIC_IMAGES)] = 2000
    test_size: Annotated[int, Field(ge=1, le=MAX_SYNTHETIC_IMAGES)] = 500


class AugmentSpec(Strict):
    flip: bool = True
    # random shifts of up to this many px at 32 px: a fraction crop_padding / 32 of the stored image's
    # side, so one value means the same shift at any data.image_size
    crop_padding: Annotated[int, Field(ge=0, le=16)] = 4


CIFAR_SOURCES = ("keras", "dir", "sample", "synthetic", "cifar10")  # 32 px CIFAR images
CIFAR100_SOURCES = ("keras", "dir", "sample", "synthetic")  # label_mode = "coarse" exists for these
IMAGE_SOURCES = ("folder", "csv")  # the user's own image files, decoded at data.image_size
DEFAULT_TEST_FRACTION = 0.2
MAX_STORED_SIZE = 1024


def _left_out_when(default: Any) -> Any:
    """Left out of the dump at its default: the fields own images added must not change the
    recipe fingerprint (and so the study names) of the CIFAR specs written before them."""
    return {"exclude_if": lambda value: value == default}


class DataSpec(Strict):
    # keras: CIFAR-100 downloaded (or the Keras cache); dir: an official cifar-100-python folder; sample:
    # the real CIFAR-100 slice that ships with the package (1,117 train, 916 test images); synthetic:
    # generated; cifar10: CIFAR-10 downloaded (or the Keras cache); folder: class folders of your own
    # images (dir); csv: a labels CSV (labels) of path,label[,split] rows
    source: Literal["keras", "dir", "sample", "synthetic", "cifar10", "folder", "csv"] = "keras"
    dir: Path | None = None
    labels: Path | None = Field(default=None, **_left_out_when(None))
    label_mode: Literal["fine", "coarse"] = "fine"
    validation_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    # folder and csv: the fraction of the images without a split that is held out as the test split
    test_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = Field(default=DEFAULT_TEST_FRACTION,
                                                                    **_left_out_when(DEFAULT_TEST_FRACTION))
    # folder and csv: the side in px the images are decoded and stored at (None: the largest
    # backbone.image_size of the experiment, filled in by ExperimentSpec.resolve)
    image_size: Annotated[int, Field(ge=8, le=MAX_STORED_SIZE)] | None = Field(default=None, **_left_out_when(None))
    # folder and csv: drop from train (and val) every image whose pixels are also in a later split
    drop_duplicates: bool = Field(default=False, **_left_out_when(False))
    subset: SubsetSpec = SubsetSpec()
    synthetic: SyntheticSpec = SyntheticSpec()
    seed: Seed = 0
    augment: AugmentSpec = AugmentSpec()

    @model_validator(mode="after")
    def _dir_matches_source(self) -> DataSpec:
        if self.source == "dir" and self.dir is None:
            raise ValueError('source = "dir" needs dir = "/path/to/cifar-100-python" (or --data-dir PATH)')
        if self.source == "folder" and self.dir is None:
            raise ValueError('source = "folder" needs dir = "/path/to/images" (a folder of class folders, or of '
                             'train/ and test/ folders of class folders), or --data-dir PATH')
        if self.source == "csv" and self.labels is None:
            raise ValueError('source = "csv" needs labels = "/path/to/labels.csv" (rows path,label[,split])')
        if self.labels is not None and self.source != "csv":
            raise ValueError(f'data.labels is read by source = "csv" only, not "{self.source}"; remove it or set '
                             f'source = "csv"')
        if self.label_mode == "coarse" and self.source not in CIFAR100_SOURCES:
            raise ValueError(f'data.label_mode = "coarse" (CIFAR-100\'s 20 superclasses) does not exist for source '
                             f'"{self.source}"; remove label_mode or set it to "fine"')
        if self.image_size is not None and self.source in CIFAR_SOURCES:
            raise ValueError(f'data.image_size sets the size your own images are stored at (source "folder" or '
                             f'"csv"); source "{self.source}" has 32 px images: remove it (backbone.image_size sets '
                             f'what the backbone sees)')
        return self

    @property
    def own_images(self) -> bool:
        return self.source in IMAGE_SOURCES


# ---------------------------------------------------------------- model


Weights = str  # "imagenet", "none", or a path to an .h5 file


class BackboneOptions(Strict):
    weights: Weights = "imagenet"
    image_size: Annotated[int, Field(ge=1, le=1024)] = 32


class BackboneOverride(Strict):
    weights: Weights | None = None
    image_size: Annotated[int, Field(ge=1, le=1024)] | None = None


class BackboneSpec(BackboneOptions):
    name: str


class HeadSpec(Strict):
    pooling: Literal["avg", "max"] = "avg"
    # Scale-free pooled features (LayerNorm without affine, as in MAE's linear probe): one learning
    # rate range then fits backbones whose feature scales differ by orders of magnitude.
    normalize: bool = False
    dense_units: Annotated[int, Field(ge=0, le=MAX_DENSE_UNITS)] = 0  # 0: no hidden layer, the classifier sits on the pooled features
    dropout: Probability = 0.0


def _an_unfreeze_depth(value: int | str) -> int | str:
    """The spec's shape (pydantic's types above) and registry.check_unfreeze's rule, which every
    other entry point (CLI flags, the throughput command, search ranges) applies too."""
    return value if value == "search" else registry.check_unfreeze(value)


Unfreeze = Annotated[Union[Annotated[int, Field(ge=0)], Literal["all", "search"]], AfterValidator(_an_unfreeze_depth)]


class StrategySpec(Strict):
    """What trains. unfreeze counts weighted layers from the top (see registry.py).

    0 = frozen features, N = top N weighted layers, "all" = full fine-tuning,
    "search" = the sweep searches the depth in search.unfreeze (`run` takes --unfreeze).
    two_phase: head_epochs with the backbone frozen, then `epochs` more with
    the unfrozen layers at learning_rate * finetune_lr_scale (recompiled).
    epochs: this strategy's (fine-tuning) epochs; None takes training.epochs. Head-only epochs on
    cached features cost milliseconds, epochs through the backbone seconds: they rarely want one number.
    space: this strategy's search-space overrides, applied over search.space and search.per_backbone
    (Adam at a head's learning rate wrecks pretrained layers: fine-tuning wants a lower range).
    trials: this strategy's study size; None takes search.trials.
    """

    unfreeze: Unfreeze = 0
    schedule: Literal["one_phase", "two_phase"] = "one_phase"
    epochs: PositiveInt | None = None
    head_epochs: Annotated[int, Field(ge=0)] = 0
    finetune_lr_scale: Annotated[float, Field(gt=0.0, le=1.0)] = 0.1
    train_batchnorm: bool = False
    # For training BatchNorm from scratch on few steps: the backbones' own momentum (0.99-0.999)
    # leaves the moving statistics, which validation uses, far from converged. None keeps it.
    batchnorm_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] | None = None
    space: SearchSpaceOverride | None = None
    trials: PositiveInt | None = None

    @model_validator(mode="after")
    def _two_phase_is_complete(self) -> StrategySpec:
        if self.schedule == "two_phase":
            if self.head_epochs < 1:
                raise ValueError("two_phase needs head_epochs >= 1 (epochs of head-only training)")
            if self.unfreeze == 0:
                raise ValueError('two_phase needs unfreeze > 0, "all" or "search" (phase 2 must unfreeze something)')
        return self


# ---------------------------------------------------------------- training


class TrainingSpec(Strict):
    # lbfgs: the standard linear probe of a frozen backbone (Kornblith et al. 2019): multinomial
    # logistic regression on the cached features, fitted to convergence with L-BFGS, penalised by
    # l2 / 2 * |W|^2 added to the mean cross-entropy. Head-only strategies (unfreeze = 0) only.
    optimizer: Literal["adam", "adamw", "sgd", "lbfgs"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0.0)] = 0.0  # decoupled (every optimizer; AdamW's is Adam with it)
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9  # sgd only
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE)] = 64
    epochs: PositiveInt = 10
    early_stopping_patience: Annotated[int, Field(ge=0)] = 0  # 0 = off
    reduce_lr_patience: Annotated[int, Field(ge=0)] = 0  # 0 = off
    reduce_lr_factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    label_smoothing: Probability = 0.0
    mixed_precision: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on GPU, off on CPU
    jit_compile: Literal["auto", "on", "off"] = "auto"  # auto: on for GPU, off on CPU (XLA is slower there)
    # auto: a head-only trial (unfreeze 0, no augmentation) trains on pooled backbone features computed
    # once and kept on disk (benchmark/cache.py); off: every epoch runs through the frozen backbone.
    feature_cache: Literal["auto", "off"] = "auto"
    # With augmentation on: 0 trains head-only epochs through the backbone (fresh augmentation every
    # epoch); V >= 1 caches the features of V augmented views of the training images (validation and
    # test stay plain), and epoch e trains on view e mod V.
    feature_views: Annotated[int, Field(ge=0, le=64)] = 0
    l2: Annotated[float, Field(ge=0.0)] = 1e-3  # lbfgs only (others: weight_decay)
    seed: Seed = 0


# ---------------------------------------------------------------- search


class FloatRange(Strict):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if not self.low < self.high:
            raise ValueError(f"empty range: low ({self.low}) must be < high ({self.high})")
        return self


class PositiveFloatRange(FloatRange):
    @model_validator(mode="after")
    def _positive(self) -> PositiveFloatRange:
        if self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got {self.low}")
        return self


class IntRange(Strict):
    low: Annotated[int, Field(ge=0)]
    high: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"empty range: low ({self.low}) must be <= high ({self.high})")
        return self


def outside_domain(model: type[BaseModel], field: str, value: Any) -> str | None:
    """Why `value` cannot be `model.field`, or None when it can."""
    info = model.model_fields[field]
    try:
        annotated = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        TypeAdapter(annotated, config=Strict.model_config).validate_python(value)
    except ValidationError as e:
        return e.errors()[0]["msg"].removeprefix("Value error, ")
    return None


def searches(model: type[BaseModel], field: str, shown: str) -> AfterValidator:
    """A search range (or list of choices) must lie inside the domain of the field it searches
    (`shown`: that field as the spec file spells it)."""

    def inside(searched):
        if searched is None:
            return searched
        ends = [("choice", v) for v in searched] if isinstance(searched, list) else [("low", searched.low), ("high", searched.high)]
        problems = [f"{end} {value!r} is outside the values {shown} takes: {why.lower()}"
                    for end, value in ends if (why := outside_domain(model, field, value))]
        if problems:
            raise ValueError("; ".join(problems))
        return searched

    return AfterValidator(inside)


SECTIONS = {"training": (TrainingSpec, "training"), "head": (HeadSpec, "head"), "strategy": (StrategySpec, "strategies.*")}


def choices_table(value: Any) -> Any:
    """`{ choices = [...] }` is the list of choices; a bare list is too (dense_units = [64, 128])."""
    if not isinstance(value, dict):
        return value
    if set(value) != {"choices"}:
        raise ValueError(f'must be a list of choices, e.g. {{ choices = ["a", "b"] }} or ["a", "b"] (got {value!r})')
    return value["choices"]


def choice_type(annotation: Any) -> Any:
    """What one choice is parsed as: the field's own type, except that a Literal's choices are strings
    (or numbers) that `searches` checks against it, so that the error names the field's values."""
    return type(get_args(annotation)[0]) if get_origin(annotation) is Literal else annotation


def searched_type(entry: hparams.Hyperparameter) -> Any:
    """The type of an entry's range (or choices), held inside its field's domain."""
    model, spelled = SECTIONS[entry.section]
    domain = searches(model, entry.name, f"{spelled}.{entry.name}")
    if entry.kind == "choices":
        return Annotated[list[choice_type(model.model_fields[entry.name].annotation)], BeforeValidator(choices_table), domain]
    return Annotated[IntRange if entry.kind == "int" else PositiveFloatRange if entry.log else FloatRange, domain]


def unset_field(entry: hparams.Hyperparameter) -> Any:
    """None, left out of the dump unless old fingerprints hash it (hparams.DUMPED_WHEN_UNSET)."""
    if entry.name in hparams.DUMPED_WHEN_UNSET:
        return None
    return Field(default=None, exclude_if=lambda value: value is None)


def search_fields(with_defaults: bool) -> dict[str, Any]:
    fields = {}
    for entry in hparams.TABLE:
        searched = searched_type(entry)
        if with_defaults and entry.default is not None:
            fields[entry.name] = (searched, TypeAdapter(searched).validate_python(entry.default))
        else:
            fields[entry.name] = (searched | None, unset_field(entry))
    return fields


SearchSpace = create_model(
    "SearchSpace", __base__=Strict, __module__=__name__, **search_fields(with_defaults=True),
    __doc__="What the sweep searches (benchmark/hparams.py). None = not searched (the spec's fixed value is used).")
SearchSpaceOverride = create_model(
    "SearchSpaceOverride", __base__=Strict, __module__=__name__, **search_fields(with_defaults=False),
    __doc__="A part of a SearchSpace: what search.per_backbone or a strategy's `space` sets over search.space.")


StrategySpec.model_rebuild()  # its `space` is defined above, after it


DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h)?$")


def parse_duration(text: str) -> float:
    """Seconds in '90', '90s', '20m' or '1.5h'; ValueError naming the forms otherwise."""
    match = DURATION.match(str(text).strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"'{text}' is not a duration; write seconds, minutes or hours, e.g. 90s, 20m, 1.5h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2) or "s"]


class RaceSpec(Strict):
    """A budget race over the experiment's pairs (sweep --budget; benchmark/race.py)."""

    budget: str | None = None  # trial time over all pairs, e.g. "20m" (parse_duration)
    budget_trials: PositiveInt | None = None  # finished trials over all pairs
    startup: PositiveInt | None = None  # trials every pair gets before any can leave (default: search.startup_trials)
    min_trials: PositiveInt | None = None  # a pair's finished trials before it can leave as worse (default: startup)
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.05  # of the paired test, Holm-corrected over the racing pairs
    # converged: the pair's last `patience` finished trials raised its best by no more than the
    # validation noise (one standard error of its best validation top-1)
    patience: PositiveInt = 3

    @field_validator("budget")
    @classmethod
    def _budget_is_a_duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class SearchSpec(Strict):
    trials: PositiveInt = 10
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    sampler_seed: Seed = 0
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "median"
    pruner_warmup_epochs: Annotated[int, Field(ge=0)] = 1
    startup_trials: Annotated[int, Field(ge=0)] = 3  # random trials before TPE, and before the pruner judges
    # Trials run in a child process replaced after this many trials (memory stays bounded, a crash
    # fails one trial); 0 runs them in the sweep's own process. auto: head-only trials on cached
    # features in the sweep's process (they build only a head on a frozen part built once, so no
    # process start is paid and memory grows ~1 MiB a trial instead of ~70), every other trial in a
    # child replaced every 10.
    trials_per_process: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    # A study keeps the full models of its best keep_models trials; the others keep their curves,
    # predictions and spec (well under 1 MB), and a model that falls out of the best is deleted.
    keep_models: Annotated[int, Field(ge=1, le=1000)] = 1
    space: SearchSpace = SearchSpace()
    per_backbone: dict[str, SearchSpaceOverride] = {}
    race: RaceSpec = RaceSpec()


# ---------------------------------------------------------------- experiment


class ExperimentSpec(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    backbones: Annotated[list[str], Field(min_length=1)]
    strategies: Annotated[dict[str, StrategySpec], Field(min_length=1)]
    data: DataSpec = DataSpec()
    backbone: BackboneOptions = BackboneOptions()
    backbone_overrides: dict[str, BackboneOverride] = {}
    head: HeadSpec = HeadSpec()
    training: TrainingSpec = TrainingSpec()
    search: SearchSpec = SearchSpec()
    _file: str | None = PrivateAttr(default=None)  # the spec file it was read from, for messages
    _path: Path | None = PrivateAttr(default=None)  # the same, absolute: a sweep records it (names.TAG_SPEC_FILE)

    @property
    def source_file(self) -> str | None:
        """The spec file it was read from, as an absolute path (None: not read from a file)."""
        return str(self._path) if self._path is not None else None

    @contextlib.contextmanager
    def naming_its_file(self):
        """A value the data cannot satisfy is reported as `spec file: field = value ...`, so the user
        knows which file to edit (the data layer sees only the values)."""
        try:
            yield
        except SpecValueError as e:
            if self._file is None:
                raise
            raise SpecValueError(f"{self._file}: {e}") from None

    @model_validator(mode="after")
    def _backbones_exist_and_fit(self) -> ExperimentSpec:
        problems = []
        for name in self.backbones:
            try:
                backbone = registry.get_backbone(name)
            except BenchmarkError as e:
                problems.append(f"backbones: {e}")
                continue
            options = self.backbone_options(name)
            problems += [f"backbone.image_size: {p}" for p in registry.check_image_size(backbone, options.image_size, options.weights)]
        for section, keys in (("backbone_overrides", self.backbone_overrides), ("search.per_backbone", self.search.per_backbone)):
            for key in keys:
                if key not in self.backbones:
                    problems.append(f"{section}.{key}: not one of this experiment's backbones {self.backbones}")
        if self.training.optimizer == "lbfgs":
            problems += linear_probe_problems(self.training, self.strategies, self.head, self.data)
            problems += linear_probe_search_problems(self)
        if problems:
            raise ValueError("\n".join(problems))  # one line each (parse_experiment)
        return self

    def stored_image_size(self) -> int:
        """Own images are stored at data.image_size, else at the largest backbone.image_size of the
        experiment (each backbone resizes from there in the model, if it sees a smaller size)."""
        if self.data.image_size is not None:
            return self.data.image_size
        return max(self.backbone_options(name).image_size for name in self.backbones)

    def backbone_options(self, name: str) -> BackboneOptions:
        override = self.backbone_overrides.get(name)
        if override is None:
            return self.backbone
        return self.backbone.model_copy(update=set_fields(override))

    def search_space(self, backbone: str, strategy: str | None = None) -> SearchSpace:
        """search.space, then search.per_backbone's overrides, then the strategy's own (`space`)."""
        space = self.search.space
        overrides = [self.search.per_backbone.get(backbone), self.strategies[strategy].space if strategy else None]
        for override in overrides:
            if override is not None:
                space = space.model_copy(update=set_fields(override))
        return space

    def resolve(self, backbone: str, strategy: str | None = None, data_dir: str | Path | None = None) -> TrialSpec:
        """One concrete trial configuration: the experiment's defaults for one backbone and strategy."""
        backbone = registry.get_backbone(backbone).name
        if backbone not in self.backbones:
            raise BenchmarkError(
                f"backbone '{backbone}' is not in experiment '{self.name}' (it covers {', '.join(self.backbones)}); "
                f"add it to `backbones` in the spec or pick one of those"
            )
        strategy = strategy or next(iter(self.strategies))
        if strategy not in self.strategies:
            raise BenchmarkError(
                f"unknown strategy '{strategy}' for experiment '{self.name}'; choose one of: {', '.join(self.strategies)}"
            )
        data = self.data
        if data_dir is not None:  # a folder spec's images elsewhere; for any other spec, a cifar-100-python folder
            data = data.model_copy(update={"source": "folder" if data.source == "folder" else "dir",
                                           "dir": Path(data_dir).expanduser().absolute(), "labels": None})
        if data.own_images and data.image_size is None:
            data = data.model_copy(update={"image_size": self.stored_image_size()})
        options = self.backbone_options(backbone)
        return TrialSpec(
            experiment=self.name,
            backbone=BackboneSpec(name=backbone, **options.model_dump()),
            strategy_name=strategy,
            strategy=self.strategies[strategy],
            data=data,
            head=self.head,
            training=self.training,
        )


def linear_probe_problems(training: TrainingSpec, strategies: dict[str, StrategySpec], head: HeadSpec,
                          data: DataSpec) -> list[str]:
    """Why training.optimizer = "lbfgs" (a linear classifier fitted on cached features of a frozen
    backbone) cannot train these strategies; each problem names the field to change."""
    why = 'training.optimizer = "lbfgs" fits a linear classifier on the frozen backbone\'s cached features'
    problems = [f"strategies.{name}.unfreeze = {strategy.unfreeze!r}: {why}; use unfreeze = 0 or another optimizer"
                for name, strategy in strategies.items() if strategy.unfreeze != 0]
    problems += [f"strategies.{name}.train_batchnorm = true: {why}; set it false"
                 for name, strategy in strategies.items() if strategy.train_batchnorm]
    fixes = {
        "head.dense_units": (head.dense_units, "set 0 (no hidden layer)"),
        "head.dropout": (head.dropout, "set 0"),
        "training.label_smoothing": (training.label_smoothing, "set 0"),
        "training.feature_cache": (training.feature_cache == "off", 'set "auto"'),
        "data.augment": ((data.augment.flip or data.augment.crop_padding) and not training.feature_views,
                         "set { flip = false, crop_padding = 0 }, or training.feature_views >= 1 (augmented views)"),
    }
    problems += [f"{field}: {why}; {fix}" for field, (value, fix) in fixes.items() if value]
    return problems


def linear_probe_search_problems(experiment: ExperimentSpec) -> list[str]:
    """An lbfgs sweep searches the L2 strength (the solver's result is otherwise fixed)."""
    spaces = [("search.space", experiment.search.space)]
    spaces += [(f"search.per_backbone.{name}", override) for name, override in experiment.search.per_backbone.items()]
    spaces += [(f"strategies.{name}.space", s.space) for name, s in experiment.strategies.items() if s.space]
    refused = [entry.name for entry in hparams.TABLE if entry.linear_probe == "refused"]
    problems = [f"{where}.{field}: the lbfgs solver has no {field}; search l2 instead"
                for where, space in spaces for field in refused if getattr(space, field) is not None]
    if any(experiment.search_space(backbone, name).l2 is None
           for backbone in experiment.backbones for name in experiment.strategies):
        problems.append("search.space.l2: an lbfgs sweep searches the L2 strength; add "
                        "l2 = { low = 1e-6, high = 1.0 } to search.space")
    return problems


def updated(model: BaseModel, changes: dict[str, Any]) -> BaseModel:
    """A validated copy of `model` with `changes`."""
    return model.model_validate({**model.model_dump(), **changes})


def set_fields(override: BaseModel) -> dict[str, Any]:
    """The fields an override sets (not None), as model objects, for model_copy(update=...)."""
    return {name: getattr(override, name) for name in type(override).model_fields if getattr(override, name) is not None}


class TrialSpec(Strict):
    """Everything one trial needs; its flattened fields are the MLflow params."""

    experiment: str
    backbone: BackboneSpec
    strategy_name: str
    strategy: StrategySpec
    data: DataSpec
    head: HeadSpec
    training: TrainingSpec

    def with_values(self, **values: Any) -> TrialSpec:
        """A copy with the values a sweep (or the command line) chose for hyperparameters of
        hparams.TABLE, by name (learning_rate=..., unfreeze=...); None keeps the spec's."""
        unknown = sorted(set(values) - set(hparams.BY_NAME))
        if unknown:
            raise TypeError(f"with_values() got unknown hyperparameters {unknown}; known: {', '.join(hparams.BY_NAME)}")
        by_section: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            if value is not None:
                by_section.setdefault(hparams.BY_NAME[name].section, {})[name] = value
        return self.model_copy(update={section: updated(getattr(self, section), changes)
                                       for section, changes in by_section.items()})

    def params(self) -> dict[str, str]:
        """The spec as flat, dotted MLflow params: the same names in every run."""
        flat: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, item)
            else:
                flat[prefix] = "" if value is None else str(value)

        walk("", self.model_dump(mode="json"))
        return flat


# ---------------------------------------------------------------- loading


def experiment_dirs() -> list[Path]:
    """Where experiment names are looked up: ./experiments (or $BENCHMARK_EXPERIMENTS), then the repo's."""
    return [Path(os.environ.get("BENCHMARK_EXPERIMENTS", "experiments")), EXPERIMENTS_DIR]


def pairs_of(experiment: ExperimentSpec, backbones: list[str] | None = None,
             strategies: list[str] | None = None) -> list[tuple[str, str]]:
    """Every backbone x strategy the experiment lists, or the selected ones (each checked)."""
    chosen_backbones = [experiment.resolve(b).backbone.name for b in backbones] if backbones else experiment.backbones
    for name in strategies or []:
        experiment.resolve(chosen_backbones[0], name)  # an unknown strategy: the one-line error, before any sweep
    return [(b, s) for b in dict.fromkeys(chosen_backbones) for s in dict.fromkeys(strategies or experiment.strategies)]


def find_experiment(name_or_path: str | Path) -> Path:
    """A path to a spec file, or an experiment name looked up in ./experiments then the repo's."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise BenchmarkError(f"experiment file {path} is a directory; pass a .toml spec file inside it or an experiment name")
        if not path.is_file():
            raise BenchmarkError(f"experiment file {path} does not exist; pass an existing .toml file or an experiment name")
        return path
    search_dirs = experiment_dirs()
    for directory in search_dirs:
        candidate = directory / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for d in search_dirs if d.is_dir() for p in d.glob("*.toml")})
    raise BenchmarkError(
        f"unknown experiment '{name_or_path}'; choose one of: {', '.join(known) or '(none found)'} "
        f"or pass a path to a .toml spec file"
    )


MAX_SPEC_BYTES = 64 * 1024  # a spec is a few KB; TOML readers slow down quadratically on pathological files
MAX_KEY_DEPTH = 32  # dotted keys: a spec's tables nest a few levels
TOO_DEEP = "arrays or tables nested too deeply to read; a spec nests a few levels (experiments/ci.toml)"


def spec_text(path: Path) -> str:
    """The file's text, once it is known to be of a spec's size and shape (a byte-order mark is dropped)."""
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(str(path), [f"the file is {size:,} bytes, more than the {MAX_SPEC_BYTES:,} a spec may be; "
                                    f"a spec is a few KB (experiments/ci.toml is a complete example)"])
    text = path.read_text(encoding="utf-8-sig")
    for number, line in enumerate(text.splitlines(), 1):
        key = line.split("=", 1)[0]
        if key.count(".") >= MAX_KEY_DEPTH:
            raise SpecError(str(path), [f"line {number}: a key nested {key.count('.') + 1} levels deep, more than "
                                        f"{MAX_KEY_DEPTH}; {TOO_DEEP.split('; ')[1]}"])
    return text


def load_experiment(name_or_path: str | Path) -> ExperimentSpec:
    """Read and validate a spec file; every problem is reported at once (SpecError)."""
    path = find_experiment(name_or_path)
    try:
        raw = tomllib.loads(spec_text(path))
    except RecursionError:
        raise SpecError(str(path), [TOO_DEEP]) from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(str(path), [f"not valid TOML: {e}; fix the syntax at that line"]) from None
    except UnicodeDecodeError as e:
        raise BenchmarkError(
            f"experiment file {path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise BenchmarkError(f"cannot read experiment file {path} ({e.strerror}); check its permissions") from None
    if not raw:
        raise SpecError(str(path), ["the file is empty; a spec needs at least name, backbones and strategies "
                                    "(experiments/ci.toml is a complete example)"])
    try:
        spec = parse_experiment(raw, source=str(path))
    except RecursionError:
        raise SpecError(str(path), [TOO_DEEP]) from None
    spec._file, spec._path = shown_path(path), path.resolve()
    for field in ("dir", "labels"):  # relative to the spec file, not the cwd
        value = getattr(spec.data, field)
        if value is not None and not value.expanduser().is_absolute():
            setattr(spec.data, field, (path.parent / value).resolve())
    return spec


def shown_path(path: Path) -> str:
    """A path as a user would type it: relative to the current directory when it lies under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_experiment(raw: dict[str, Any], source: str = "<spec>") -> ExperimentSpec:
    try:
        return ExperimentSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(source, [line for err in e.errors() for line in describe_error(err).splitlines()]) from None


def describe_error(err: dict[str, Any]) -> str:
    """One pydantic error as 'field.path: what is wrong; what is allowed'."""
    location = ".".join(str(part) for part in err["loc"] if not _is_union_tag(part))
    kind, message = err["type"], err["msg"]
    if not location:  # a whole-spec check: its message names the fields itself
        return message.removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"{location}: unknown field; allowed fields here: {', '.join(_allowed_fields(err['loc']))}"
    if kind == "missing":
        return f"{location}: required field is missing; add it (experiments/ci.toml is a complete example)"
    if kind == "model_type":  # a table's place holds something else: name its keys, not the class behind it
        return f"{location}: {table_expected(err['loc'], err.get('input'))}"
    message = message.removeprefix("Value error, ")
    got = err.get("input")
    if kind not in ("value_error",) and not isinstance(got, (dict, list)):
        message += f" (got {got!r})"
    return f"{location}: {message}"


def table_expected(loc: tuple, got: Any) -> str:
    """'must be a table with keys low, high, e.g. learning_rate = { low = 0.0001, high = 0.01 } (got [...])'."""
    keys = list(_model_holding((*loc, None)).model_fields)  # declared order: low before high
    field = next((str(part) for part in reversed(loc) if isinstance(part, str) and not _is_union_tag(part)), "field")
    message = f"must be a table with keys {', '.join(keys)}"
    if len(keys) <= 3:
        values = [repr(v) for v in got] if isinstance(got, list) and len(got) == len(keys) else ["..."] * len(keys)
        message += f", e.g. {field} = {{ {', '.join(f'{k} = {v}' for k, v in zip(keys, values))} }}"
    return f"{message} (got {got!r})"


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"int", "str", "float", "literal"} or part.startswith("function-"))


def _allowed_fields(loc: tuple) -> list[str]:
    return sorted(_model_holding(loc).model_fields)


def _model_holding(loc: tuple) -> type[BaseModel]:
    """The model whose field is loc's last part."""
    model: type[BaseModel] = ExperimentSpec
    for part in loc[:-1]:
        if isinstance(part, int) or _is_union_tag(part):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            # a dict's key (strategy name, backbone name): the value type is the next model
            continue
        annotation = _model_in(field.annotation)
        if annotation is None:
            break
        model = annotation
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
