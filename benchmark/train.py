"""Training: compile and fit each phase of a trial's plan (one phase, or head-then-unfreeze)."""

from __future__ import annotations

import json
import math
import time
import warnings
import weakref
from dataclasses import dataclass, field

import keras
import numpy as np
from scipy.special import log_softmax

from benchmark import runtime
from benchmark.data import Dataset, Rows
from benchmark.measure import top_k_accuracy
from benchmark.model import BuiltModel, set_trainable
from benchmark.plan import TrialPlan
from benchmark.spec import TrainingSpec, TrialSpec

MONITOR = "val_top1"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the trial fails, the sweep goes on."""


@dataclass
class History:
    """Per-epoch logs across all phases, and how long each epoch's training part took."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    fit_seconds: float = 0.0  # all of training: every phase's fit, first-epoch tracing and validation included

    def series(self, name: str) -> list[float]:
        return [logs[name] for logs in self.epochs if name in logs]

    @property
    def best_index(self) -> int:
        """Position in `epochs` of the epoch with the highest validation top-1 (first one on ties)."""
        return int(np.argmax(self.series(MONITOR)))


class EpochRecorder(keras.callbacks.Callback):
    """Records logs, the learning rate and the training time of each epoch (validation excluded)."""

    def __init__(self, history: History):
        super().__init__()
        self.history = history

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        self.training_ended()

    def training_ended(self) -> None:
        """The epoch's training is over: validation, which follows, is not timed."""
        if getattr(self, "_train_end", None) is None and hasattr(self, "_start"):
            # JAX dispatches steps asynchronously: reading the step counter waits for the last one.
            keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        end = self._train_end or time.perf_counter()
        self.history.train_seconds.append(end - self._start)
        if logs is None:
            logs = {}
        # In place: Keras hands the same dict to the callbacks after this one (the MLflow logger).
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        self.history.epochs.append({**{k: float(v) for k, v in logs.items()}, "epoch": float(epoch)})
        if not math.isfinite(logs.get("loss", 0.0)):
            raise TrainingDiverged(
                f"loss became {logs['loss']} in epoch {epoch + 1}; lower the learning rate or enable label smoothing"
            )


class SeededAtTrainBegin(keras.callbacks.Callback):
    """Seeds again once `fit` has built what its first call builds: under JAX, that build draws
    from numpy's global generator, which also shuffles the epochs, so without this a model fitted
    before (a shared head) would see other shuffles than a new one. TensorFlow's shuffles were
    seeded when `fit` made its dataset, before this."""

    def __init__(self, seed: int, keep_kernels: bool = False):
        super().__init__()
        self.seed, self.keep_kernels = seed, keep_kernels

    def on_train_begin(self, logs=None):
        runtime.seed_everything(self.seed, keep_kernels=self.keep_kernels)


class ValidatedAtEpochEnd(keras.callbacks.Callback):
    """Validation of a head on cached features: at each epoch's end, the whole validation split in
    one batch through the compiled test step (`test_on_batch`), its logs added as val_*, as fit's
    own validation adds them. That sets up an evaluation every epoch (~25 ms on TensorFlow, where
    the head validates in ~2 ms). The first of fit's callbacks: those after it read its logs."""

    def __init__(self, x: np.ndarray, y: np.ndarray, recorder: EpochRecorder):
        super().__init__()
        self.x, self.y, self.recorder = x, y, recorder

    def on_epoch_end(self, epoch, logs=None):
        self.recorder.training_ended()
        results = self.model.test_on_batch(self.x, self.y, return_dict=True)
        if logs is not None:
            logs.update({f"val_{name}": float(value) for name, value in results.items()})


class KeepBestWeights(keras.callbacks.Callback):
    """Holds the weights of the best validation epoch and restores them when training ends, so test
    metrics are measured on the model that validation selected. Of `full_model`, not the one
    fitting: a head-only phase fits the head, and its best epoch predates phase 2's backbone."""

    def __init__(self, full_model: keras.Model):
        super().__init__()
        self.full_model = full_model
        self.best = -math.inf
        self.weights = None

    def on_epoch_end(self, epoch, logs=None):
        score = (logs or {}).get(MONITOR)
        if score is not None and score > self.best:
            self.best, self.weights = score, self.full_model.get_weights()

    def restore(self) -> None:
        if self.weights is not None:
            self.full_model.set_weights(self.weights)


def make_optimizer(training: TrainingSpec, learning_rate: float) -> keras.optimizers.Optimizer:
    """Every Keras 3 optimizer applies decoupled weight decay (`weight_decay`); AdamW is Adam with it."""
    decay = training.weight_decay or None
    if training.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=training.momentum, nesterov=True, weight_decay=decay)
    if training.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=training.weight_decay)
    return keras.optimizers.Adam(learning_rate, weight_decay=decay)


def compile_model(model: keras.Model, spec: TrialSpec, learning_rate: float, steps_per_execution: int = 1) -> None:
    model.compile(
        optimizer=make_optimizer(spec.training, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=spec.training.label_smoothing),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="top1"),
            keras.metrics.TopKCategoricalAccuracy(k=5, name="top5"),
        ],
        jit_compile=runtime.use_jit(spec.training.jit_compile),
        steps_per_execution=steps_per_execution,
    )


@dataclass
class Compiled:
    key: str  # what the compiled functions depend on (compile_key)
    initial: list[np.ndarray]  # the optimizer's variables as built, before any step


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> Compiled, for compile_for(reuse=True)


def compile_key(model: keras.Model, spec: TrialSpec, steps_per_execution: int = 1) -> str:
    """What a model's compiled (traced) functions depend on; learning rate and weight decay are
    variables they read, not part of it."""
    training = spec.training
    return json.dumps([training.optimizer, training.momentum, bool(training.weight_decay) or training.optimizer == "adamw",
                       training.label_smoothing, runtime.use_jit(training.jit_compile), steps_per_execution,
                       [v.path for v in model.trainable_variables]])


def compile_for(model: keras.Model, spec: TrialSpec, learning_rate: float, reuse: bool = False,
                steps_per_execution: int = 1) -> None:
    """Compile `model` for a phase. With `reuse`, a model compiled earlier with the same settings
    (compile_key: a shared head, cache.shared_head) keeps its compiled functions, so training does
    not trace them again: its optimizer's variables go back to their values as built (step count,
    moments) and the learning rate and weight decay, variables the traced step reads, are set.
    It then trains as it would after a new compile, to the last digit."""
    if not reuse:
        compile_model(model, spec, learning_rate, steps_per_execution)
        return
    key, compiled = compile_key(model, spec, steps_per_execution), _compiled.get(model)
    if compiled is not None and compiled.key == key:
        for variable, value in zip(model.optimizer.variables, compiled.initial, strict=True):
            variable.assign(value)
    else:
        compile_model(model, spec, learning_rate, steps_per_execution)
        optimizer = model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            return  # its loss scale's state is its own; compiled anew each time
        if optimizer.weight_decay is not None:  # a float is a constant of the traced step
            optimizer.weight_decay = keras.Variable(optimizer.weight_decay, dtype="float32", trainable=False,
                                                    name="weight_decay")
        optimizer.build(model.trainable_variables)
        _compiled[model] = Compiled(key, [keras.ops.convert_to_numpy(v) for v in optimizer.variables])
    model.optimizer.learning_rate = learning_rate
    if model.optimizer.weight_decay is not None:
        model.optimizer.weight_decay.assign(spec.training.weight_decay)


def schedule_callbacks(training: TrainingSpec) -> list[keras.callbacks.Callback]:
    callbacks = []
    if training.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=training.early_stopping_patience)
        )
    if training.reduce_lr_patience:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=MONITOR, mode="max", patience=training.reduce_lr_patience, factor=training.reduce_lr_factor
            )
        )
    return callbacks


@dataclass
class Fit:
    """What the phases of one kind of inputs fit (plan.Inputs): a model and its data."""

    model: keras.Model
    data: Dataset  # images, or a cut's cached arrays in their place
    views: np.ndarray | None = None  # (V, N, D): epoch e trains on view e mod V (augmented views' features)


def train(
    plan: TrialPlan,
    built: BuiltModel,
    fits: dict[str, Fit],
    spec: TrialSpec,
    callbacks: list[keras.callbacks.Callback] = (),
    verbose: int = 0,
) -> History:
    """Carry out the plan: fit each phase's inputs (`fits[phase.inputs]`), epochs numbered
    continuously across phases (for pruning). On return the model holds the weights of its best
    validation epoch; the layers of every Fit are the full model's own."""
    if plan.solver == "lbfgs":
        probe = fits["features"]
        return fit_linear_probe(probe.model, spec, probe.data, callbacks, probe.views)
    history = History()
    # The same shuffles whatever was built before; a head's compiled steps are kept (Keras layers only).
    keep_kernels = plan.builds_head_only
    runtime.seed_everything(spec.training.seed, keep_kernels=keep_kernels)
    best = KeepBestWeights(built.model if plan.trains_backbone else built.head)
    num_classes = len(next(iter(fits.values())).data.class_names)
    epoch = 0
    for phase in plan.phases:
        set_trainable(built, phase.unfreeze, spec.strategy.train_batchnorm, spec.backbone.name)
        fit = fits[phase.inputs]
        y_train = keras.utils.to_categorical(fit.data.y_train, num_classes)
        x, batches = fit.data.x_train, {"batch_size": spec.training.batch_size, "shuffle": True}
        validation = (fit.data.x_val, keras.utils.to_categorical(fit.data.y_val, num_classes))
        # A head's epochs on cached features take milliseconds: nothing set up per epoch or per batch.
        fed = phase.inputs == "features" and fit.views is None and not isinstance(x, Rows)
        steps = runtime.steps_per_execution(math.ceil(len(x) / spec.training.batch_size)) if fed else 1
        # Trainable weights are fixed at compile time; a shared head's compiled training is reused.
        compile_for(fit.model, spec, phase.learning_rate, reuse=plan.builds_head_only, steps_per_execution=steps)
        before, started = len(history.epochs), time.perf_counter()
        recorder, validating = EpochRecorder(history), []
        if fit.views is not None:
            x, batches = ViewEpochs(fit.views, y_train, spec.training.batch_size, spec.training.seed, epoch), {}
        elif isinstance(x, Rows):  # own images, read from their file a batch at a time
            x, batches = ImageBatches(x, y_train, spec.training.batch_size, spec.training.seed, epoch), {"shuffle": False}
            validation = ImageBatches(*validation, spec.training.batch_size)
        elif fed:
            x, y_train, batches = fed_features(fit.data, num_classes, spec.training.batch_size, spec.training.seed)
            validating, validation = [ValidatedAtEpochEnd(*validation, recorder)], None
        fit.model.fit(
            x,
            None if isinstance(x, keras.utils.PyDataset) else y_train,
            validation_data=validation,
            **batches,
            initial_epoch=epoch,
            epochs=epoch + phase.epochs,
            verbose=verbose,
            callbacks=[*validating, SeededAtTrainBegin(spec.training.seed, keep_kernels), recorder, best,
                       *schedule_callbacks(spec.training), *callbacks],
        )
        epoch += len(history.epochs) - before
        history.fit_seconds += time.perf_counter() - started
    best.restore()
    return history


_fed: list = []  # [(the arrays, settings, fed_features' answer)]: the last cached features fed


def fed_features(data: Dataset, num_classes: int, batch_size: int, seed: int) -> tuple:
    """x, y and fit's batching arguments for cached training features, fed so that no epoch sets
    anything up (runtime.fed_once): the same batches as the arrays themselves. The trials of a
    sweep fit the same cached arrays: one fed dataset serves them all (made anew for each fit,
    its traced function and its copies of the arrays stayed in memory, ~1 MiB a trial). Made
    right after seeding with `seed`, so its shuffle is the one a new dataset would draw."""
    arrays, settings = (data.x_train, data.y_train), (num_classes, batch_size, seed)
    if _fed and all(a is b for a, b in zip(_fed[0][0], arrays)) and _fed[0][1] == settings:
        return _fed[0][2]
    runtime.seed_everything(seed)
    x, y, batches = runtime.fed_once(data.x_train, keras.utils.to_categorical(data.y_train, num_classes), batch_size,
                                     shuffle=True)
    fed = (x, y, batches) if "steps" not in batches else (x, y, {"steps_per_epoch": batches["steps"], "shuffle": False})
    _fed[:] = [(arrays, settings, fed)]
    return fed


class ViewEpochs(keras.utils.PyDataset):
    """Batches of cached features where epoch e is view e mod V, shuffled anew each epoch (seeded)."""

    def __init__(self, views: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, first_epoch: int = 0):
        super().__init__()
        self.views, self.labels, self.batch_size = views, labels, batch_size
        self.rng = np.random.default_rng(seed)
        self.epoch = first_epoch
        self.order = self.rng.permutation(len(labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.views[self.epoch % len(self.views)][rows], self.labels[rows]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self.rng.permutation(len(self.labels))


class ImageBatches(keras.utils.PyDataset):
    """Batches of own images (data.Rows) read from the image cache's file as training asks for
    them, so a data set larger than memory trains in bounded memory. With a seed, epoch e visits
    every image once in the order of a permutation seeded with (seed, e) (epochs count across a
    trial's phases, from `first_epoch`); without one, in order (validation). Rows of a batch are
    read in file order, then put in the batch's order."""

    def __init__(self, images: Rows, labels: np.ndarray, batch_size: int, seed: int | None = None,
                 first_epoch: int = 0):
        super().__init__()
        self.images, self.labels, self.batch_size, self.seed = images, labels, batch_size, seed
        self.epoch = first_epoch
        self.order = self.epoch_order()

    def epoch_order(self) -> np.ndarray:
        if self.seed is None:
            return np.arange(len(self.labels))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.labels))

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.batch_size)

    def __getitem__(self, index: int):
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.images[rows], self.labels[rows]

    def on_epoch_end(self) -> None:
        if self.seed is not None:
            self.epoch += 1
            self.order = self.epoch_order()


LBFGS_MAX_ITERATIONS = 1000  # "to convergence": scikit-learn's default of 100 stops short on 1,000+ features


def fit_linear_probe(head: keras.Model, spec: TrialSpec, features: Dataset, callbacks=(),
                     views: np.ndarray | None = None) -> History:
    """The standard linear evaluation of frozen features: multinomial logistic regression fitted
    to convergence with L-BFGS (scikit-learn), minimising the mean cross-entropy plus
    spec.training.l2 / 2 * |W|^2 (the bias is not penalised). The solution becomes the head's
    logits layer; the history holds one epoch, the converged solution, which the callbacks see
    as any epoch's end (MLflow's curves, Optuna's report). With augmented `views` it fits all of
    them at once (V x N training examples)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    started = time.perf_counter()
    train = features.x_train if views is None else np.concatenate(views)
    y_train = features.y_train if views is None else np.tile(features.y_train, len(views))
    x_train, x_val = (logits_inputs(head, x) for x in (train, features.x_val))
    l2 = spec.training.l2
    solver = LogisticRegression(C=1.0 / (l2 * len(x_train)) if l2 > 0 else np.inf, max_iter=LBFGS_MAX_ITERATIONS,
                                tol=1e-6)
    with warnings.catch_warnings(record=True) as caught:  # ConvergenceWarning: recorded as converged = 0
        warnings.simplefilter("always")
        solver.fit(x_train, y_train)  # float32: a third faster than float64, the same solution to 1e-3
    logits = head.layers[-1]
    kernel, bias = np.zeros(logits.kernel.shape, np.float32), np.full(logits.bias.shape, -1e4, np.float32)
    kernel[:, solver.classes_], bias[solver.classes_] = solver.coef_.T, solver.intercept_  # absent classes: never predicted
    logits.set_weights([kernel, bias])
    seconds = time.perf_counter() - started
    logs = {**scores(x_train @ kernel + bias, y_train), **{f"val_{k}": v for k, v in
            scores(x_val @ kernel + bias, features.y_val).items()},
            "solver_iterations": float(np.max(solver.n_iter_)), "epoch": 0.0,
            "converged": float(not any(issubclass(w.category, ConvergenceWarning) for w in caught))}
    for callback in callbacks:
        callback.set_model(head)
        callback.on_epoch_end(0, dict(logs))
        callback.on_train_end(dict(logs))
    return History(epochs=[logs], train_seconds=[seconds], fit_seconds=time.perf_counter() - started)


def logits_inputs(head: keras.Model, x: np.ndarray) -> np.ndarray:
    """What the head's logits layer sees: the features after its weightless layers (normalize)."""
    for layer in head.layers[1:-1]:
        x = layer(x)
    return np.asarray(keras.ops.convert_to_numpy(x), np.float32)


def scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 of logits, as Keras's fit logs them."""
    loss = -log_softmax(logits.astype(np.float64), axis=1)[np.arange(len(labels)), labels].mean()
    return {"loss": float(loss), "top1": top_k_accuracy(logits, labels, 1), "top5": top_k_accuracy(logits, labels, 5)}
