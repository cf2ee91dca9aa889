"""The speed goals, measured side by side in one run; writes docs/performance.md's speed section.

    python benchmarks/speed.py                 # every measurement (~35 min on 2 CPU cores)
    python benchmarks/speed.py --only prefix   # one of: frozen, marginal, fit, pruning, pruning-transfer, resize, prefix
    python benchmarks/speed.py --smoke         # tiny sizes: checks the script, numbers mean nothing

1. frozen:  a 10-trial frozen-backbone sweep with the feature cache vs notebook-style (every epoch
            through the frozen backbone, images resized on the host), against the cache's limit (one
            forward pass over the data plus the heads' training), and against a 1-trial sweep (what
            one more cached trial costs).
1b. marginal: what one more cached trial costs, all in (in a 9-trial `ci` sweep, VGG16 frozen), and
            what a pruned one costs, on the code of earlier revisions (`--marginal-before`, comma-separated,
            each a git worktree) and on this checkout, alternated in one run; then the profile of one cached trial.
2. fit:     a harness trial vs a bare `model.fit` of the same model on the same arrays (training images/s).
3. bookkeeping: the share of trial time that is not the trial's own compute (from sweep 1 and 4).
4. pruning: a pruned vs an unpruned sweep: compute spent until each reaches the same best validation top-1.
            `--only pruning-transfer`: the same on real fine-tuning (ImageNet EfficientNet-Lite0, top N
            layers, on the packaged CIFAR-100 slice).
5. resize:  notebook-style host-side resize vs our in-model resize at 96 px (training images/s).
6. prefix:  a top-N fine-tuning trial through the whole backbone vs on the prefix cache (per epoch).

The real CIFAR-100 slice that ships with the package; parts 1-5 use random initial weights (speed
does not depend on them), pruning-transfer and prefix the ImageNet weights.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "performance.md"
SECTION = "## Speed"
SECTION_INTRO = "Written by `benchmarks/speed.py`: each part below with the command and date of its own run."
LR_RANGE = (1e-5, 1e-2)

import keras  # noqa: E402

from benchmark import model as models  # noqa: E402
from benchmark import parent_run, registry, runtime, sweep, train  # noqa: E402
from benchmark.data import load_dataset  # noqa: E402
from benchmark.spec import ExperimentSpec, load_experiment  # noqa: E402
from benchmark.model import create_model  # noqa: E402
from benchmark.trial import prepare, run_trial  # noqa: E402


def fresh_stores(tag: str) -> None:
    """Each sweep here gets its own MLflow/Optuna store and an empty feature cache."""
    root = Path(tempfile.mkdtemp(prefix=f"benchmark-speed-{tag}-"))
    os.environ["BENCHMARK_STORE"] = str(root / "mlruns")
    os.environ["BENCHMARK_CACHE_DIR"] = str(root / "feature-cache")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("BENCHMARK_OPTUNA_STORAGE", None)


def experiment(args, strategy: str = "frozen", backbone: str | None = None, real_images: bool = True,
               **training) -> ExperimentSpec:
    """The ci experiment on real images (or its synthetic set), sized by the command line."""
    spec = load_experiment("ci")
    raw = spec.model_dump(mode="json")
    if real_images:
        raw["data"].update(source="sample", subset={})
    raw["backbones"] = [backbone or args.backbone]
    raw["strategies"] = {strategy: raw["strategies"][strategy]}
    raw["training"].update(epochs=args.epochs, **training)
    raw["search"].update(pruner="none", trials=args.trials)
    return ExperimentSpec.model_validate(raw)


# ---------------------------------------------------------------- notebook style


class HostResized(keras.utils.PyDataset):
    """What today's notebooks do: resize every batch on the host (PIL, bilinear), every epoch."""

    def __init__(self, images, labels, size: int, batch_size: int, shuffle: bool = True):
        super().__init__()
        self.images, self.labels, self.size, self.batch_size, self.shuffle = images, labels, size, batch_size, shuffle
        self.order = np.arange(len(images))

    def __len__(self):
        return -(-len(self.images) // self.batch_size)

    def on_epoch_end(self):
        if self.shuffle:
            np.random.default_rng().shuffle(self.order)

    def __getitem__(self, index):
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return host_resize(self.images[rows], self.size), self.labels[rows]


def host_resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if size == images.shape[1]:
        return images.astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.float32) for image in images])


def notebook_model(spec, num_classes: int) -> keras.Model:
    """Backbone and head as in the harness, but fed float images already resized on the host."""
    backbone = registry.get_backbone(spec.backbone.name)
    base = registry.build_base(backbone, spec.backbone.image_size, spec.backbone.weights)
    base.trainable = False
    inputs = keras.Input((spec.backbone.image_size, spec.backbone.image_size, 3))
    x = models.apply(registry.preprocessing_layers(backbone), inputs)
    x = models.pooling_layer(spec)(base(x, training=False))
    model = keras.Model(inputs, models.apply(models.head_layers(spec, num_classes), x))
    train.compile_model(model, spec, spec.training.learning_rate)
    return model


def notebook_trial(spec, data) -> float:
    """One notebook-style trial: build, fit every epoch through the backbone, evaluate. Best val top-1."""
    keras.backend.clear_session()
    runtime.seed_everything(spec.training.seed)
    model = notebook_model(spec, data.num_classes)
    size, batch = spec.backbone.image_size, spec.training.batch_size
    onehot = lambda y: keras.utils.to_categorical(y, data.num_classes)  # noqa: E731
    history = model.fit(
        HostResized(data.x_train, onehot(data.y_train), size, batch),
        validation_data=HostResized(data.x_val, onehot(data.y_val), size, batch, shuffle=False),
        epochs=spec.training.epochs, verbose=0,
    )
    model.evaluate(HostResized(data.x_test, onehot(data.y_test), size, batch, shuffle=False), verbose=0)
    return max(history.history["val_top1"])


# ---------------------------------------------------------------- 1 + 3: frozen sweep, bookkeeping


def bookkeeping(result: sweep.SweepResult) -> dict:
    trials = [t for t in result.study.trials if parent_run.trial_record(t)]
    in_trials = sum(t.duration.total_seconds() for t in trials)
    compute = sum(parent_run.trial_record(t)["compute_s"] + parent_run.trial_record(t).get("process_start_s", 0.0) for t in trials)
    return {"trials": len(trials), "per_trial_s": (in_trials - compute) / len(trials), "share": 1 - compute / in_trials,
            "trial_s": in_trials / len(trials)}


def timed_sweep(spec: ExperimentSpec, backbone: str, trials: int, tag: str,
                quiet: bool = False) -> tuple[sweep.SweepResult, float]:
    """A sweep in a fresh store with a fresh feature cache: its result and wall time (`quiet`:
    its lines are not printed as it goes, which would be timed too)."""
    fresh_stores(tag)
    started = time.perf_counter()
    result = sweep.run_sweep(spec, backbone, "frozen", trials=trials, verbose=0,
                             say=(lambda line: None) if quiet else lambda line: print(f"  {tag}:", line, flush=True))
    return result, time.perf_counter() - started


def frozen_sweeps(args) -> list[str]:
    import mlflow

    from benchmark import mlflow_store

    spec = experiment(args)
    spec = spec.model_copy(update={"backbone": spec.backbone.model_copy(update={"image_size": args.image_size})})
    _, one_s = timed_sweep(spec, args.backbone, 1, "one trial")
    cached, cached_s = timed_sweep(spec, args.backbone, args.trials, "cached")
    runs = mlflow.search_runs([mlflow_store.experiment_id(spec.name)], filter_string="tags.role = 'trial'")
    forward_s = runs["metrics.features_s"].max()  # the one trial that computed the features
    heads_s = float(runs["metrics.train_s"].sum())  # every head's training, first-epoch tracing and validation included
    limit_s = forward_s + heads_s
    trial_spec = spec.resolve(args.backbone, "frozen")
    data = load_dataset(trial_spec.data)

    learning_rates = [t.params["learning_rate"] for t in cached.study.trials]
    started = time.perf_counter()
    notebook_best = []
    for i, learning_rate in enumerate(learning_rates):
        notebook_best.append(notebook_trial(trial_spec.with_values(learning_rate=learning_rate), data))
        print(f"  notebook: trial {i + 1}/{len(learning_rates)} val top-1 {notebook_best[-1]:.3f}", flush=True)
    notebook_s = time.perf_counter() - started
    books = bookkeeping(cached)
    more = len(learning_rates) - 1
    later = runs[runs["metrics.features_s"] < forward_s]  # the trials after the one that paid the feature pass
    extra_s, head_s = (cached_s - one_s) / more, float(later["metrics.train_s"].mean())
    return [
        "### 1. Frozen-backbone sweep: feature cache vs notebook-style\n",
        f"{len(learning_rates)} trials, {args.backbone} frozen at {args.image_size} px, {spec.training.epochs} epochs, "
        f"{data.sizes()['train']}/{data.sizes()['validation']}/{data.sizes()['test']} train/val/test images "
        f"({data.origin.split(':')[0]}), no pruning; the notebook trials use the sweep's learning rates. Each sweep "
        "in a fresh store with a fresh feature cache; head-only trials run in the sweep's process "
        "(`search.trials_per_process = \"auto\"`).\n",
        "| | wall time | best val top-1 |",
        "|---|---|---|",
        f"| notebook-style (through the frozen backbone every epoch, host-side resize, no tracking) "
        f"| {notebook_s:.1f} s | {max(notebook_best):.3f} |",
        f"| harness sweep with the feature cache (MLflow + Optuna) | {cached_s:.1f} s | {cached.study.best_value:.3f} |",
        f"| limit: one forward pass over every split + every head's training (`train_s`: fit, validation included) "
        f"| {limit_s:.1f} s ({forward_s:.1f} + {heads_s:.1f}) | |",
        f"| the same harness sweep of 1 trial | {one_s:.1f} s | |",
        "",
        f"**Speed-up: {notebook_s / cached_s:.1f}x** (goal >= 20x); the cached sweep takes **{cached_s / limit_s:.2f}x "
        f"its limit** (goal <= 1.5x). One more cached trial costs **{extra_s:.2f} s** ((10-trial sweep - 1-trial sweep) / "
        f"{more}), of which its head's training is {head_s:.2f} s (the mean of trials 2-{len(runs)}): "
        f"**{extra_s - head_s:.2f} s** besides it (goal <= 0.5 s). The rest of the sweep is its fixed cost: the stores, "
        "the data, the frozen part built once, the forward pass and the first head's tracing.\n",
        "### 3. Bookkeeping share (cached trials)\n",
        f"Bookkeeping (trial wall time minus the trial's own compute and process start) in the cached sweep: "
        f"{books['per_trial_s'] * 1000:.0f} ms per trial = **{books['share']:.1%}** of a {books['trial_s']:.2f} s trial "
        "(goal <= 2%).\n",
    ]


# ---------------------------------------------------------------- 1b: marginal cost of a cached trial


def ci_frozen(pruner: str) -> ExperimentSpec:
    """The `ci` experiment as CI sweeps it (synthetic images, 3 epochs), VGG16 frozen only."""
    spec = load_experiment("ci")
    spec.backbones, spec.strategies = ["vgg16"], {"frozen": spec.strategies["frozen"]}
    spec.search.pruner = pruner
    return spec


def marginal_costs(trials: int) -> dict[str, float]:
    """Seconds per additional trial ((`trials`-trial sweep - 1-trial sweep) / (trials - 1), no
    pruning), the mean duration of a pruned trial (a `trials`-trial sweep with ci's median pruner),
    and the sweeps' best values (the two paths must agree)."""
    _, one_s = timed_sweep(ci_frozen("none"), "vgg16", 1, "1 trial", quiet=True)
    many, many_s = timed_sweep(ci_frozen("none"), "vgg16", trials, f"{trials} trials", quiet=True)
    pruned_sweep, _ = timed_sweep(ci_frozen("median"), "vgg16", trials, "pruned", quiet=True)
    pruned = [t.duration.total_seconds() for t in pruned_sweep.study.trials if t.state.name == "PRUNED"]
    complete = [t.duration.total_seconds() for t in many.study.trials[1:]]
    done = sorted(t.datetime_complete for t in many.study.trials)
    return {"extra_s": (many_s - one_s) / (trials - 1), "trial_s": statistics.mean(complete),
            "within_s": (done[-1] - done[0]).total_seconds() / (trials - 1),
            "books_s": bookkeeping(many)["per_trial_s"],
            "pruned_s": statistics.mean(pruned) if pruned else float("nan"), "pruned": len(pruned),
            "best": many.study.best_value, "pruned_best": pruned_sweep.study.best_value,
            "values": [round(t.value, 6) for t in many.study.trials]}


def profile_cached_trial(rows: int = 22) -> list[str]:
    """cProfile of one cached trial (the third of a sweep: features cached, head compiled), all
    in: the trial's MLflow run, training, measuring, logging; the functions by cumulative time."""
    import cProfile
    import io
    import pstats

    profiler, calls = cProfile.Profile(), []
    original = sweep.Objective.__call__

    def profiled(objective, trial):
        if trial.number != 2:
            return original(objective, trial)
        calls.append(trial.number)
        return profiler.runcall(original, objective, trial)

    sweep.Objective.__call__ = profiled
    try:
        timed_sweep(ci_frozen("none"), "vgg16", 3, "profile", quiet=True)
    finally:
        sweep.Objective.__call__ = original
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(rows)
    table = out.getvalue()
    total = stats.total_tt
    return [f"cProfile of trial #2 of a 3-trial sweep (one cached trial, all in: {total:.3f} s under the profiler; "
            "the top functions by cumulative time):\n", "```", *trimmed_profile(table), "```\n"]


def trimmed_profile(table: str) -> list[str]:
    """pstats' table without its header lines and with paths shortened to the package."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    return [re.sub(r"\S*/(site-packages|lib/python3\.\d+)/", "", re.sub(r"\S*/benchmark/", "benchmark/", line))
            for line in lines[start:] if line.strip()]


MARGINAL_IN_TREE = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/benchmarks"]
import speed
speed.timed_sweep(speed.ci_frozen("none"), "vgg16", 1, "warm-up", quiet=True)  # one-time costs: in neither
print("RESULT " + json.dumps(speed.marginal_costs(int(sys.argv[2]))))
"""


def marginal_in(tree: Path, trials: int) -> dict:
    """marginal_costs in a new process running the code of `tree` (a checkout of this repository)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", MARGINAL_IN_TREE, str(tree), str(trials)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def checkout_of(revision: str) -> Path:
    """A detached worktree of `revision` in a new temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="benchmark-speed-tree-")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(folder), revision], check=True)
    return folder


REVISIONS = {  # what the code of each revision `marginal` compares did to a cached trial
    "30297f0": "one compiled head per architecture, reset for each trial; Keras's own validation each epoch; `predict` "
               "for the test and validation splits; TensorFlow's kernel cache cleared by each seeding",
    "214385d": "a head's epoch in one call of its compiled step, validation in one batch, the splits predicted batch by "
               "batch through the traced step, TensorFlow's kernels kept between trials; the pruner's report written "
               "to the storage every epoch; a run's params, its COMPLETE state and a pruned run's curves each a write "
               "of their own, its experiment looked up by name",
}
NOW = ("as 214385d, with the pruner's reports written together (at most every 2 s, when pruned, when training ends) and "
       "a run's params (for a head on cached features), its state and a pruned trial's curves in its last write")


def marginal(args) -> list[str]:
    revisions = args.marginal_before.split(",")
    trees = {revision: checkout_of(revision) for revision in revisions}
    rounds: dict[str, list[dict]] = {**{revision: [] for revision in revisions}, "now": []}
    try:
        for _ in range(args.repeats):  # alternated: the machine's drift falls on all
            for label, tree in (*trees.items(), ("now", REPO)):
                rounds[label].append(marginal_in(tree, args.marginal_trials))
                print(f"  {label}: {rounds[label][-1]}", flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    mean = {label: {key: statistics.mean(r[key] for r in runs) for key in ("within_s", "extra_s", "trial_s", "books_s", "pruned_s")}
            for label, runs in rounds.items()}
    old, new = mean[revisions[0]], mean["now"]
    last = mean[revisions[-1]]
    same = all(r["values"] == rounds["now"][0]["values"] for runs in rounds.values() for r in runs)
    n = args.marginal_trials
    lines = [
        "### 1b. One more cached trial, all in: before and after\n",
        *(f"*{revision}*: {REVISIONS.get(revision, 'an earlier revision')}. " for revision in revisions),
        f"*Now*: {NOW}.\n",
        f"The `ci` experiment's VGG16 frozen (synthetic images, 32 px, 3 epochs, cached features), each sweep in a "
        f"fresh store and feature cache, trials in the sweep's process, each code in its own process, alternated, "
        f"over {args.repeats} rounds (the means). *Per additional trial*: the time from the first trial's end to the last "
        f"one's in a {n}-trial sweep without pruning, / {n - 1}: everything one more trial costs (sampling, the head's "
        f"fit, measuring, MLflow, Optuna, the progress line); *sweeps' difference*: ({n}-trial sweep - 1-trial sweep) / "
        f"{n - 1}, the same with each sweep's fixed costs (data, frozen part, feature pass: seconds, and as noisy). "
        f"*Pruned trial*: the mean duration of the pruned trials of a {n}-trial sweep with ci's median pruner. "
        "*Bookkeeping*: a trial's wall time in Optuna minus its own compute (`compute_s`: preparing, training, "
        "measuring), the mean over the unpruned sweep's trials: Optuna's and MLflow's writes and reads, and sampling.\n",
        "| | per additional trial | sweeps' difference | mean trial (2nd on) | of which bookkeeping | pruned trial (mean) |",
        "|---|---|---|---|---|---|",
        *(f"| {label} | {r['within_s']:.3f} s | {r['extra_s']:.3f} s | {r['trial_s']:.3f} s | {r['books_s'] * 1000:.0f} ms | "
          f"{r['pruned_s']:.3f} s |" for label, r in mean.items()),
        "",
        f"**Per additional trial: {old['within_s'] / new['within_s']:.1f}x less** than {revisions[0]} ({old['within_s']:.2f} -> "
        f"{new['within_s']:.2f} s; goal <= 0.3 s); **a pruned trial {old['pruned_s'] / new['pruned_s']:.1f}x less** "
        f"({old['pruned_s']:.2f} -> {new['pruned_s']:.2f} s; goal <= 0.15 s); bookkeeping {last['books_s'] * 1000:.0f} -> "
        f"{new['books_s'] * 1000:.0f} ms since {revisions[-1]} (goal <= 50 ms). The trials' values are "
        f"{'identical' if same else 'NOT identical'} in every run ({rounds['now'][0]['values'][:4]} ...), best "
        f"validation top-1 {rounds['now'][0]['best']:.4f}.\n",
    ]
    return lines + profile_cached_trial()


# ---------------------------------------------------------------- 2: harness vs bare fit


class EpochClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)


def bare_fit_epochs(spec) -> list[float]:
    """Training seconds per epoch of the same model on the same arrays, `model.fit` alone (no
    validation, no callbacks of ours but this clock)."""
    prepared = prepare(spec)
    built, data = prepared.built, prepared.data
    train.compile_model(built.model, spec, spec.training.learning_rate)
    clock = EpochClock()
    built.model.fit(data.x_train, keras.utils.to_categorical(data.y_train, data.num_classes),
                    batch_size=spec.training.batch_size, epochs=spec.training.epochs, shuffle=True, verbose=0,
                    callbacks=[clock])
    return clock.seconds


def harness_vs_fit(args) -> list[str]:
    fresh_stores("fit")
    spec = experiment(args, "top", feature_cache="off").resolve(args.backbone, "top").with_values(unfreeze=2)
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"epochs": args.fit_epochs})})
    images = len(load_dataset(spec.data).y_train)
    harness, bare = [], []  # epoch seconds, the first (tracing) of each run dropped
    for repeat in range(args.repeats):  # alternated: the machine's drift hits both alike
        harness += run_trial(spec).history.train_seconds[1:]
        bare += bare_fit_epochs(spec)[1:]
        print(f"  fit: repeat {repeat + 1}: harness {images / min(harness):.0f} img/s, bare {images / min(bare):.0f} img/s "
              f"(best epochs so far)", flush=True)
    rate = {name: {"best": images / min(s), "median": images / statistics.median(s)}
            for name, s in (("harness", harness), ("bare", bare))}
    return [
        "### 2. A harness trial vs a bare `model.fit`\n",
        f"{args.backbone}, top 2 layers unfrozen (so training goes through the backbone), {spec.backbone.image_size} px, "
        f"batch {spec.training.batch_size}, {images} images, {spec.training.epochs} epochs a run (the first, tracing, "
        f"dropped), {args.repeats} alternated repeats of each. The harness runs its callbacks (epoch recorder, "
        "best-weights keeper) and validates after each epoch (not timed: not training); the bare run is "
        "`model.fit` with a clock only. Epoch times on these VMs are bimodal (the same epoch takes ~2.5 s "
        "or ~5 s, whoever runs it), so the best epoch is the steadier comparison; the median is shown too.\n",
        "| | images/s, best epoch | images/s, median epoch | epochs timed |",
        "|---|---|---|---|",
        *(f"| {label} | {rate[name]['best']:.0f} | {rate[name]['median']:.0f} | {len(s)} |"
          for label, name, s in (("bare `model.fit`", "bare", bare), ("harness trial", "harness", harness))),
        "",
        f"**Ratio: {rate['harness']['best'] / rate['bare']['best']:.3f}** on the best epochs "
        f"({rate['harness']['median'] / rate['bare']['median']:.3f} on the medians); goal >= 0.95.\n",
    ]


# ---------------------------------------------------------------- 4: pruning


def epochs_trained(trial, epochs: int) -> int:
    """A pruned trial reported one value per epoch it trained; a complete one ran them all."""
    return epochs if trial.state.name == "COMPLETE" else len(trial.intermediate_values)


def best_value(trial) -> float:
    return trial.value if trial.state.name == "COMPLETE" else max(trial.intermediate_values.values(), default=0.0)


def compute_to_reach(result: sweep.SweepResult, target: float, epochs: int) -> tuple[float, float]:
    """(epochs, seconds) of trials, in order, until the best validation top-1 so far reaches target."""
    spent_epochs = seconds = 0.0
    for trial in sorted(result.study.trials, key=lambda t: t.number):
        spent_epochs += epochs_trained(trial, epochs)
        seconds += trial.duration.total_seconds() if trial.duration else 0.0
        if best_value(trial) >= target:
            return spent_epochs, seconds
    return float("nan"), float("nan")


def pruned_and_unpruned(args, make_spec, backbone: str, strategy: str) -> tuple[dict, dict]:
    """The same sweep twice, without and with the pruner: {pruner: SweepResult}, {pruner: wall s}."""
    results, walls = {}, {}
    for pruner in ("none", args.pruner):
        spec = make_spec()
        spec.search.pruner, spec.search.trials = pruner, args.pruning_trials
        fresh_stores(f"pruner-{pruner}")
        started = time.perf_counter()
        results[pruner] = sweep.run_sweep(spec, backbone, strategy, verbose=0,
                                          say=lambda line, p=pruner: print(f"  {p}:", line, flush=True))
        walls[pruner] = time.perf_counter() - started
    return results, walls


def pruning_table(args, results: dict, walls: dict) -> tuple[list[str], float]:
    """The comparison's rows and bold line, and the target both sweeps reached."""
    target = min(r.study.best_value for r in results.values())
    reach = {p: compute_to_reach(r, target, args.pruning_epochs) for p, r in results.items()}
    totals = {p: sum(epochs_trained(t, args.pruning_epochs) for t in r.study.trials) for p, r in results.items()}
    rows = [
        f"| {p} | {r.study.best_value:.3f} | {reach[p][0]:.0f} epochs, {reach[p][1]:.0f} s | {totals[p]} epochs, "
        f"{walls[p]:.0f} s | {sum(t.state.name == 'PRUNED' for t in r.study.trials)} |"
        for p, r in results.items()
    ]
    return [
        "| pruner | best val top-1 | compute to reach the target | whole sweep | pruned trials |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"**Compute to reach the target: {reach['none'][0] / reach[args.pruner][0]:.1f}x fewer epochs, "
        f"{reach['none'][1] / reach[args.pruner][1]:.1f}x less trial time with pruning; whole sweep "
        f"{totals['none'] / totals[args.pruner]:.1f}x fewer epochs** (goal >= 2x).\n",
    ], target


def pruning(args) -> list[str]:
    def make_spec():
        spec = experiment(args, "top", real_images=False)  # random-init VGG16 learns the synthetic set only
        spec.strategies = {"top2": spec.strategies["top"].model_copy(update={"unfreeze": 2})}
        spec.training.epochs = args.pruning_epochs
        spec.search.space.learning_rate.low, spec.search.space.learning_rate.high = LR_RANGE
        return spec

    results, walls = pruned_and_unpruned(args, make_spec, args.backbone, "top2")
    table, target = pruning_table(args, results, walls)
    books = bookkeeping(results["none"])
    spec = make_spec()  # the settings both sweeps ran with, for the text
    return [
        "### 4. Pruned vs unpruned sweep\n",
        f"{args.backbone} on the ci experiment's synthetic set (random-init features do not separate 100 real "
        f"classes), top 2 layers unfrozen, {args.pruning_trials} trials of {args.pruning_epochs} epochs, learning rate "
        f"searched in {LR_RANGE[0]:g}..{LR_RANGE[1]:g} (only the low end learns here: a wide range, as a user who does "
        f"not know it yet would search), TPE seed 0 in both; {args.pruner} pruner after {spec.search.pruner_warmup_epochs} "
        f"warm-up epoch(s) and {spec.search.startup_trials} startup trials. Target: the lower of the two sweeps' best "
        f"validation top-1 ({target:.3f}); compute counted in trained "
        "epochs and in trial wall time, trial by trial until a trial reaches the target.\n",
        *table,
        "### 3b. Bookkeeping share (uncached trials)\n",
        f"In the unpruned sweep above: {books['per_trial_s'] * 1000:.0f} ms per trial = **{books['share']:.1%}** of a "
        f"{books['trial_s']:.1f} s trial.\n",
    ]


def pruning_transfer(args) -> list[str]:
    """Real fine-tuning: the transfer experiment's Lite0 `top` strategy, a wide learning-rate range."""

    def make_spec():
        spec = load_experiment("transfer")
        spec.backbones = ["efficientnetlite0"]
        spec.backbone.image_size = args.pruning_image_size
        top = spec.strategies["top"].model_copy(update={"epochs": args.pruning_epochs, "space": None, "trials": None})
        spec.strategies = {"top": top}
        spec.search.space.learning_rate.low, spec.search.space.learning_rate.high = LR_RANGE
        spec.search.pruner_warmup_epochs, spec.search.startup_trials = args.pruning_warmup, args.pruning_startup
        return spec

    results, walls = pruned_and_unpruned(args, make_spec, "efficientnetlite0", "top")
    table, target = pruning_table(args, results, walls)
    spec = make_spec()
    space = spec.search.space
    return [
        "### 4b. Pruned vs unpruned sweep on real fine-tuning\n",
        f"ImageNet EfficientNet-Lite0 at {args.pruning_image_size} px on the packaged CIFAR-100 slice "
        f"({spec.data.validation_fraction:.0%} validation), the `transfer` experiment's `top` strategy (head and top N "
        f"weighted layers trained together, N searched in {space.unfreeze.low}..{space.unfreeze.high}), "
        f"{args.pruning_trials} trials of {args.pruning_epochs} epochs, learning rate searched in "
        f"{LR_RANGE[0]:g}..{LR_RANGE[1]:g} (a user's first, wide range: Adam above ~1e-3 wrecks the pretrained "
        f"layers), TPE seed 0 in both; {args.pruner} pruner after {args.pruning_warmup} warm-up epoch(s) and "
        f"{args.pruning_startup} startup trials. Target: the lower of the two sweeps' best validation top-1 "
        f"({target:.3f}).\n",
        *table,
    ]


# ---------------------------------------------------------------- 6: prefix cache


def prefix(args) -> list[str]:
    """A top-N trial through the whole backbone every epoch vs on the prefix cache's activations."""
    from benchmark.trial import run_trial

    experiment = load_experiment("transfer")
    spec = experiment.resolve("efficientnetlite0", "top").with_values(unfreeze=args.prefix_unfreeze, learning_rate=1e-3)
    spec = spec.model_copy(update={
        "backbone": spec.backbone.model_copy(update={"image_size": args.prefix_image_size}),
        "strategy": spec.strategy.model_copy(update={"epochs": args.prefix_epochs})})
    off = spec.model_copy(update={"training": spec.training.model_copy(update={"feature_cache": "off"})})
    fresh_stores("prefix")
    results = {}
    for name, trial_spec in (("through the whole backbone", off), ("on the prefix cache", spec)):
        results[name] = run_trial(trial_spec)
        print(f"  {name}: {results[name].history.train_seconds}", flush=True)
    through, cached = results.values()
    epoch = {name: statistics.median(r.history.train_seconds[1:]) for name, r in results.items()}
    ratio = epoch["through the whole backbone"] / epoch["on the prefix cache"]
    lines = [
        "### 6. Fine-tuning the top layers: the prefix cache vs through the whole backbone\n",
        f"ImageNet EfficientNet-Lite0 at {args.prefix_image_size} px on the packaged CIFAR-100 slice "
        f"({len(through.test_labels)} test images), the `transfer` experiment's `top` strategy with the top "
        f"{args.prefix_unfreeze} weighted layers unfrozen, {args.prefix_epochs} epochs of {int(through.metrics['epochs_run'] and 894)} "
        f"images at batch {spec.training.batch_size}, the same seed; the prefix cache's activations are those at "
        f"`{cached.tags['prefix_cache'].split('below ')[-1].rstrip(')')}`, computed once (a fresh cache).\n",
        "| | training s per epoch (median, first dropped) | one-time pass | whole trial | best val top-1 | test top-1 |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        lines.append(f"| {name} | {epoch[name]:.2f} | {result.metrics['features_s']:.1f} s | "
                     f"{result.metrics['wall_time_s']:.1f} s | {result.metrics['best_val_top1']:.3f} | "
                     f"{result.metrics['test_top1']:.3f} |")
    lines += ["", f"**Per epoch: {ratio:.1f}x faster on the prefix cache** (goal >= 3x); the same curves "
              f"(val top-1 {through.history.series('val_top1')} vs {cached.history.series('val_top1')}).\n"]
    return lines


# ---------------------------------------------------------------- 5: resize at 96 px


def resize(args) -> list[str]:
    size = 96
    spec = experiment(args, "frozen", backbone=args.resize_backbone, feature_cache="off").resolve(args.resize_backbone, "frozen")
    spec = spec.model_copy(update={"backbone": spec.backbone.model_copy(update={"image_size": size})})
    data = load_dataset(spec.data)
    y = keras.utils.to_categorical(data.y_train, data.num_classes)
    batch = spec.training.batch_size
    ours, notebook = [], []  # epoch seconds, the first of each run (tracing) dropped
    for repeat in range(args.repeats):  # alternated: the machine's drift hits both alike
        keras.backend.clear_session()
        built = create_model(spec, data.num_classes)  # frozen (the spec's strategy), as in the notebook model
        train.compile_model(built.model, spec, 1e-3)
        clock = EpochClock()
        built.model.fit(data.x_train, y, batch_size=batch, epochs=args.fit_epochs, verbose=0, callbacks=[clock])
        ours += clock.seconds[1:]
        keras.backend.clear_session()
        model, clock = notebook_model(spec, data.num_classes), EpochClock()
        model.fit(HostResized(data.x_train, y, size, batch), epochs=args.fit_epochs, verbose=0, callbacks=[clock])
        notebook += clock.seconds[1:]
        print(f"  resize: repeat {repeat + 1}: ours {len(y) / min(ours):.0f} img/s, notebook {len(y) / min(notebook):.0f} "
              "img/s (best epochs so far)", flush=True)
    rate = {name: (len(y) / min(s), len(y) / statistics.median(s)) for name, s in (("ours", ours), ("notebook", notebook))}
    started = time.perf_counter()
    host_resize(data.x_train, size)
    resize_only = len(y) / (time.perf_counter() - started)
    return [
        f"### 5. Input path at {size} px: host-side resize vs in-model resize\n",
        f"{args.resize_backbone} frozen (trained through the backbone, feature cache off), {len(y)} images, batch {batch}, "
        f"{args.fit_epochs} epochs a run (the first dropped), {args.repeats} alternated repeats. Notebook-style: uint8 -> "
        "PIL bilinear resize -> float32 on the host for every batch of every epoch (a `keras.utils.PyDataset`); ours: "
        "uint8 arrays in memory, `Resizing` inside the model (on the accelerator when there is one).\n",
        "| input path | images/s, best epoch | images/s, median epoch |",
        "|---|---|---|",
        f"| notebook-style host-side resize | {rate['notebook'][0]:.0f} | {rate['notebook'][1]:.0f} |",
        f"| ours (in-model resize) | {rate['ours'][0]:.0f} | {rate['ours'][1]:.0f} |",
        "",
        f"**Ratio: {rate['ours'][0] / rate['notebook'][0]:.2f}x** (ours / notebook-style, best epochs; "
        f"{rate['ours'][1] / rate['notebook'][1]:.2f}x on medians).\n",
        f"The host-side resize alone (PIL, one core, no training) runs at {resize_only:,.0f} images/s: the most a "
        "notebook-style pipeline can feed any accelerator, however fast.\n",
    ]


# ---------------------------------------------------------------- main


def write_doc(part: str, lines: list[str], command: str) -> None:
    """Replace this part's block in docs/performance.md (each part has its own markers, so
    `--only PART` re-measures one part and keeps the others)."""
    begin, end = f"<!-- speed.py {part}: begin -->", f"<!-- speed.py {part}: end -->"
    block = "\n".join([begin, "", "```bash", command, "```", "", *lines, end])
    text = DOC.read_text()
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        if SECTION not in text:
            text += f"\n{SECTION}\n\n{SECTION_INTRO}\n"
        text += f"\n{block}\n"
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("frozen", "marginal", "fit", "pruning", "pruning-transfer", "resize", "prefix"),
                        action="append")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--resize-backbone", default="resnet50")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--marginal-trials", type=int, default=9)
    parser.add_argument("--marginal-before", default="30297f0,214385d",
                        help="the revision marginal compares this checkout with (default: the code before the changes "
                             "its text describes)")
    parser.add_argument("--pruning-trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--pruning-epochs", type=int, default=6)
    parser.add_argument("--pruner", default="median", choices=("median", "successive_halving", "hyperband"))
    parser.add_argument("--pruning-image-size", type=int, default=96, help="pruning-transfer's image size")
    parser.add_argument("--pruning-warmup", type=int, default=1, help="pruning-transfer's pruner warm-up epochs")
    parser.add_argument("--pruning-startup", type=int, default=3, help="pruning-transfer's startup trials")
    parser.add_argument("--fit-epochs", type=int, default=6)
    parser.add_argument("--prefix-image-size", type=int, default=160)
    parser.add_argument("--prefix-unfreeze", type=int, default=4, help="the top N weighted layers of Lite0 (4: block 15 and the head conv)")
    parser.add_argument("--prefix-epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes to check the script; does not write the doc")
    args = parser.parse_args()
    if args.smoke:
        args.trials, args.pruning_trials, args.epochs, args.repeats, args.pruning_epochs, args.fit_epochs = 2, 3, 3, 1, 2, 2
        args.marginal_trials = 4
        args.prefix_epochs, args.prefix_image_size = 2, 64
    parts = {"frozen": frozen_sweeps, "marginal": marginal, "fit": harness_vs_fit, "pruning": pruning, "pruning-transfer": pruning_transfer,
             "resize": resize, "prefix": prefix}
    header = f"Measured {time.strftime('%Y-%m-%d')} on {runtime.device_description()} ({os.cpu_count()} cores), " \
             f"keras {keras.__version__}.\n"
    for name in args.only or parts:
        print(f"== {name}", flush=True)
        lines = parts[name](args)
        print("\n".join(lines), flush=True)
        if not args.smoke:
            key = {"frozen": f"frozen, {args.epochs} epochs", "pruning": f"pruning, {args.pruner}",
                   "pruning-transfer": f"pruning-transfer, {args.pruner}"}.get(name, name)
            write_doc(key, [header, *lines], "python benchmarks/speed.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
