"""Sweep: one Optuna study per resolved spec of (experiment, backbone, strategy); one MLflow
parent run per study with a nested child run per trial. `run_experiment` sweeps every pair.

A study is one spec: its name ends in the spec's fingerprint (benchmark/study_identity.py), so a
changed spec starts a new study and never adds trials to one of another recipe.

Resuming: `trials` is the study's target number of finished (COMPLETE or PRUNED) trials, so
rerunning the same command only runs what is missing. A failed trial does not count toward the
target and is replaced, but one invocation makes at most ATTEMPTS_PER_MISSING_TRIAL attempts per
missing trial, so a recipe that always fails stops.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import mlflow
import numpy as np
import optuna
from mlflow.entities import Metric, RunTag
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState

from benchmark import registry, runtime, study_identity, track
from benchmark.data import load_dataset
from benchmark.errors import BenchmarkError
from benchmark.isolation import TrialJob, TrialRunner
from benchmark.spec import ExperimentSpec, SearchSpace, SearchSpec, TrialSpec
from benchmark.storage import default_storage, open_storage, redact

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own per-trial line replaces Optuna's


class WithoutTraceback(logging.Filter):
    """Optuna logs a failed (or interrupted) trial with its traceback; the progress line and the
    run's `error` tag already say why, so keep its one line. `--debug` removes this filter."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


TRACEBACK_FILTER = WithoutTraceback()
for _handler in logging.getLogger("optuna").handlers:  # Optuna's own stderr handler
    _handler.addFilter(TRACEBACK_FILTER)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
OBJECTIVE = "best_val_top1"
REQUIREMENTS = ("keras", "tensorflow", "tensorflow-cpu", "jax", "numpy", "benchmark")
ATTEMPTS_PER_MISSING_TRIAL = 2


@dataclass
class SweepResult:
    study: optuna.Study
    parent_run_id: str
    counts: dict[str, int]
    target: int = 0

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial | None:
        return best_with_model(self.study)

    @property
    def finished(self) -> int:
        return self.counts["complete"] + self.counts["pruned"]

    @property
    def reached(self) -> bool:
        """The target met, with at least one trial that completed (a study of only pruned trials has no result)."""
        return self.finished >= self.target and self.best_trial is not None

    def shortfall(self) -> str:
        """Why a study missed its target, in one line ('' when it did not)."""
        if self.reached:
            return ""
        errors = Counter(t.user_attrs["error"] for t in self.study.trials
                         if t.state == TrialState.FAIL and "error" in t.user_attrs)
        common = errors.most_common(1)
        why = f"; most frequent error ({common[0][1]}x): {common[0][0]}" if common else ""
        if self.finished >= self.target:
            why = "; every finished trial was pruned" + why
        return (f"study {self.study.study_name} ended short of its target: {self.finished} of {self.target} trials "
                f"finished, {self.counts['failed']} failed{why}")


def trial_record(trial: optuna.trial.FrozenTrial) -> dict:
    """What a finished trial recorded in its study (user attr "outcome"): test_top1, model_saved,
    compute_s, process_start_s."""
    return trial.user_attrs.get("outcome", {})


def best_with_model(study: optuna.Study, trials: list | None = None) -> optuna.trial.FrozenTrial | None:
    """The best completed trial that saved its model (on ties, the lowest number). Trials save their
    model when they match or beat the best so far, so this is the study's best value."""
    trials = study.trials if trials is None else trials
    saved = [t for t in trials if t.state == TrialState.COMPLETE and trial_record(t).get("model_saved")]
    return max(saved, key=lambda t: (t.value, -t.number)) if saved else None


def pair_name(spec: TrialSpec) -> str:
    return f"{spec.experiment}-{spec.backbone.name}-{spec.strategy_name}"


def study_name(spec: TrialSpec, fingerprint: study_identity.Fingerprint) -> str:
    return f"{pair_name(spec)}-{fingerprint.short}"


def pair_studies(storage: optuna.storages.BaseStorage, experiment: str, backbone: str, strategy: str) -> list:
    """The studies of one (experiment, backbone, strategy), oldest first (Optuna StudySummary)."""
    pair = [experiment, backbone, strategy]
    legacy = "-".join(pair)  # studies from before fingerprints were named by the pair alone
    found = [s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
             if s.user_attrs.get("pair") == pair or s.study_name == legacy]
    return sorted(found, key=lambda s: (s.datetime_start is None, s.datetime_start or 0, s.study_name))


def superseded_note(studies: list, name: str, recipe: dict) -> str:
    """', a new study: training.epochs 2 -> 5 since ci-vgg16-frozen-1a2b3c4d (2 trials, kept as it was)'."""
    older = [s for s in studies if s.study_name != name]
    if not older:
        return ", a new study"
    last = older[-1]
    changed = study_identity.differences(last.user_attrs.get("recipe", {}), recipe) if "recipe" in last.user_attrs \
        else "a spec from before fingerprints"
    return f", a new study: {changed} since {last.study_name} ({last.n_trials} trial{'' if last.n_trials == 1 else 's'}, kept as it was)"


def searched_params(spec: TrialSpec, space: SearchSpace) -> dict[str, str]:
    """The MLflow params (of the parent run) that the sweep searches, as their ranges: a study has
    no single value of them (each trial's run, and the parent's best_* metrics, hold those)."""
    def span(r, log=True) -> str:
        return f"searched {r.low:g}..{r.high:g}" + (" (log)" if log else "")

    searched = {"training.learning_rate": span(space.learning_rate)}
    if spec.strategy.unfreeze == "search":
        searched["strategy.unfreeze"] = span(space.unfreeze, log=False)
    if space.dropout is not None:
        searched["head.dropout"] = span(space.dropout, log=False)
    if space.dense_units:
        searched["head.dense_units"] = "searched " + ", ".join(str(u) for u in space.dense_units)
    if space.weight_decay is not None:
        searched["training.weight_decay"] = span(space.weight_decay)
    if space.finetune_lr_scale is not None and spec.strategy.schedule == "two_phase":
        searched["strategy.finetune_lr_scale"] = span(space.finetune_lr_scale)
    return searched


def make_sampler(search: SearchSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """TPE seeded from the spec; each further worker on the study gets the next seed, or
    concurrent workers would sample the very same configurations."""
    return optuna.samplers.TPESampler(seed=search.sampler_seed + worker, n_startup_trials=search.startup_trials)


def register_worker(study: optuna.Study) -> int:
    """0 for the study's first worker (so a fresh single-worker sweep is reproducible), then 1, 2, ..."""
    worker = int(study.user_attrs.get("workers_started", 0))
    study.set_user_attr("workers_started", worker + 1)
    return worker


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    if search.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=search.startup_trials, n_warmup_steps=search.pruner_warmup_epochs
        )
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, search.pruner_warmup_epochs))
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, search.pruner_warmup_epochs))
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- search space


def suggest(trial: optuna.Trial, spec: TrialSpec, space: SearchSpace) -> dict:
    """Values for TrialSpec.with_values, sampled from the spec's search space."""
    values = {
        "learning_rate": trial.suggest_float("learning_rate", space.learning_rate.low, space.learning_rate.high, log=True)
    }
    if spec.strategy.unfreeze == "search":
        low = max(space.unfreeze.low, 1) if spec.strategy.schedule == "two_phase" else space.unfreeze.low  # phase 2 unfreezes
        values["unfreeze"] = trial.suggest_int("unfreeze", low, max(low, space.unfreeze.high))
    if space.dropout is not None:
        values["dropout"] = trial.suggest_float("dropout", space.dropout.low, space.dropout.high)
    if space.dense_units:
        values["dense_units"] = trial.suggest_categorical("dense_units", space.dense_units)
    if space.weight_decay is not None:
        values["weight_decay"] = trial.suggest_float(
            "weight_decay", space.weight_decay.low, space.weight_decay.high, log=True
        )
    if space.finetune_lr_scale is not None and spec.strategy.schedule == "two_phase":
        values["finetune_lr_scale"] = trial.suggest_float(
            "finetune_lr_scale", space.finetune_lr_scale.low, space.finetune_lr_scale.high, log=True
        )
    return values


def check_unfreeze_fits(spec: TrialSpec, space: SearchSpace) -> None:
    """Reject an unfreeze depth (fixed or searched) deeper than the backbone, before any trial."""
    if spec.strategy.unfreeze in (0, "all"):
        return  # nothing to check: no need to build the backbone
    backbone = registry.get_backbone(spec.backbone.name)
    depth = registry.depth(registry.build_base(backbone, spec.backbone.image_size, "none"))
    keras.backend.clear_session()
    unfreeze = spec.strategy.unfreeze
    try:
        registry.check_unfreeze(space.unfreeze.high if unfreeze == "search" else unfreeze, depth)
    except registry.UnfreezeError:
        if unfreeze == "search":
            raise BenchmarkError(
                f"search.space.unfreeze.high = {space.unfreeze.high} is beyond {backbone.name}'s {depth} weighted "
                f"layers; set [search.per_backbone.{backbone.name}] unfreeze = "
                f"{{ low = {min(space.unfreeze.low, depth)}, high = {depth} }}") from None
        raise BenchmarkError(
            f"strategy '{spec.strategy_name}' unfreezes {unfreeze} layers, beyond {backbone.name}'s {depth} weighted "
            f'layers; use 0..{depth} or "all"') from None


# ---------------------------------------------------------------- MLflow parent run


def parent_run_id(spec: TrialSpec, name: str, space: SearchSpace, identity: dict[str, str]) -> str:
    """The study's parent run: found by tag, created once. If two workers create one at the same
    moment, the later deletes its own and both use the earliest. Its params are the spec's, with
    the searched ones given as their ranges; `identity` (the fingerprints) goes in its tags."""
    experiment_id = track.experiment_id(spec.experiment)

    def parents():
        return mlflow.search_runs(
            [experiment_id],
            filter_string=f"tags.study_name = '{name}' and tags.role = 'sweep'",
            order_by=["attributes.start_time ASC"],
            output_format="list",
        )

    found = parents()
    if found:
        return found[0].info.run_id
    tags = {**track.trial_tags(spec, role="sweep", data_origin=""), "study_name": name, **identity}
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    mine = run.info.run_id
    params = {**spec.params(), **searched_params(spec, space)}
    client.log_batch(mine, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    earliest = parents()[0].info.run_id
    if earliest != mine:
        client.delete_run(mine)
    return earliest


def this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def process_alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():  # a reused pid that is now this very process is not the owner
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def fail_trials_of_dead_workers(study: optuna.Study) -> int:
    """RUNNING trials whose sweep process on this machine is gone (SIGKILL, a closed terminal):
    failed now, so a rerun does not wait out the heartbeat's grace period. Trials of workers on
    other machines are left to the heartbeat."""
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", {})
        if worker.get("host") == socket.gethostname() and not process_alive(worker.get("pid")):
            study.tell(trial.number, state=TrialState.FAIL)
            failed += 1
    return failed


def close_orphan_runs(study: optuna.Study, name: str, experiment_id: str) -> int:
    """Child runs left RUNNING by a killed worker whose Optuna trial is over: mark them KILLED."""
    states = {t.number: t.state for t in study.trials}
    orphans = mlflow.search_runs(
        [experiment_id],
        filter_string=f"tags.study_name = '{name}' and tags.role = 'trial' and attributes.status = 'RUNNING'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    closed = 0
    for run in orphans:
        number = int(run.data.tags.get("trial_number", -1))
        if states.get(number, TrialState.FAIL) != TrialState.RUNNING:
            client.set_tag(run.info.run_id, "trial_state", states.get(number, TrialState.FAIL).name)
            client.set_terminated(run.info.run_id, status="KILLED")
            closed += 1
    return closed


class AfterEachTrial:
    """Optuna callback: the parent run's summary (record_progress); and when trials failed meanwhile
    (the heartbeat fails a dead worker's trial on another machine while this sweep runs), their
    MLflow runs are closed too, not only at the next start."""

    def __init__(self, parent_run_id: str, name: str, experiment_id: str):
        self.parent_run_id, self.name, self.experiment_id = parent_run_id, name, experiment_id
        self.failed_seen = -1

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failed = record_progress(study, self.parent_run_id)
        if failed != self.failed_seen:
            close_orphan_runs(study, self.name, self.experiment_id)
            self.failed_seen = failed


def record_progress(study: optuna.Study, parent_run_id: str) -> int:
    """The parent run's running summary, rewritten after every trial in one batch: trial counts,
    the compute all trials took (trials_compute_s), and which child run is best (best_run_id).
    The leaderboard reads these instead of loading every child run. Returns the failed count."""
    trials = study.trials
    now = int(time.time() * 1000)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds()
                for t in trials if t.datetime_start and t.datetime_complete)
    counts = trial_counts(study, trials)
    metrics = [Metric(f"trials_{k}", float(v), now, 0) for k, v in counts.items()]
    metrics.append(Metric("trials_compute_s", spent, now, 0))
    best = best_with_model(study, trials)
    tags = []
    if best is not None:
        tags = [RunTag("best_run_id", best.user_attrs["mlflow_run_id"]), RunTag("best_trial_number", str(best.number))]
    mlflow.MlflowClient().log_batch(parent_run_id, metrics=metrics, tags=tags)
    return counts["failed"]


def summarize_parent(result: SweepResult) -> None:
    """Trial counts, the best trial's params and metrics, and the best model in MLflow's Keras flavour."""
    client = mlflow.MlflowClient()
    run_id = result.parent_run_id
    record_progress(result.study, run_id)
    best = result.best_trial
    if best is None:
        return
    child_id = best.user_attrs["mlflow_run_id"]
    child = client.get_run(child_id)
    metrics = {k: v for k, v in child.data.metrics.items() if k in track.FINAL_METRICS}
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        mlflow.log_metrics({f"best_{k}": float(v) for k, v in best.params.items() if isinstance(v, (int, float))})
        mlflow.set_tags({f"best.{k}": str(v) for k, v in best.params.items()})
        if client.get_run(run_id).data.tags.get("best_model_trial") != str(best.number):
            mlflow.set_tags({"best_model_uri": log_best_model(child_id), "best_model_trial": str(best.number)})


def log_best_model(child_run_id: str) -> str:
    """Re-log the best trial's saved model in MLflow's Keras flavour; returns its model URI."""
    registry.register_custom_layers()
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=child_run_id, artifact_path="model/model.keras", dst_path=tmp)
        model = keras.saving.load_model(path)
        example = np.zeros((1, *model.input_shape[1:]), dtype=np.uint8)
        signature = mlflow.models.infer_signature(example, np.asarray(model.predict(example, verbose=0)))
        requirements = [f"{k}=={v}" for k, v in runtime.package_versions().items() if k in REQUIREMENTS]
        return mlflow.keras.log_model(model, name="best_model", signature=signature, pip_requirements=requirements).model_uri


# ---------------------------------------------------------------- the sweep


def trial_counts(study: optuna.Study, trials: list | None = None) -> dict[str, int]:
    counts = {"complete": 0, "pruned": 0, "failed": 0}
    for t in study.trials if trials is None else trials:
        key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(t.state)
        if key:
            counts[key] += 1
    return counts


def run_sweep(
    experiment: ExperimentSpec,
    backbone: str,
    strategy: str | None = None,
    trials: int | None = None,
    timeout_s: float | None = None,
    storage: str | None = None,
    data_dir: str | Path | None = None,
    verbose: int = 2,
    say: Callable[[str], None] = print,
) -> SweepResult:
    spec = experiment.resolve(backbone, strategy, data_dir)
    space = experiment.search_space(spec.backbone.name, spec.strategy_name)
    target = trials or spec.strategy.trials or experiment.search.trials
    timeout_s = timeout_s or experiment.search.timeout_s

    # Everything that can reject bad input happens before anything is recorded.
    check_unfreeze_fits(spec, space)
    with experiment.naming_its_file():
        data = load_dataset(spec.data)
    fingerprint = study_identity.fingerprint(spec, space, experiment.search, data)
    name = study_name(spec, fingerprint)
    storage_url = storage or default_storage()
    with track.store_lock():  # two processes creating one new SQLite database's tables collide
        optuna_storage = open_storage(storage_url)  # a bad URL or a dead server: before MLflow records anything
    track.configure()
    recipe = study_identity.recipe(spec, space, experiment.search)
    with track.store_lock():
        existing = pair_studies(optuna_storage, spec.experiment, spec.backbone.name, spec.strategy_name)
        study = optuna.create_study(
            study_name=name,
            storage=optuna_storage,
            pruner=make_pruner(experiment.search),
            direction="maximize",
            load_if_exists=True,
        )
        if "fingerprint" not in study.user_attrs:
            for key, value in study_attrs(spec, fingerprint, recipe).items():
                study.set_user_attr(key, value)
        study.sampler = make_sampler(experiment.search, worker=register_worker(study))
    is_new = name not in {s.study_name for s in existing}
    interrupted = fail_trials_of_dead_workers(study)
    optuna.storages.fail_stale_trials(study)  # dead workers elsewhere: after the heartbeat's grace period
    experiment_id = track.experiment_id(spec.experiment)
    parent = parent_run_id(spec, name, space, identity_tags(fingerprint))
    closed = close_orphan_runs(study, name, experiment_id)
    remaining = target - sum(trial_counts(study)[k] for k in ("complete", "pruned"))
    say(
        f"study {name} on {redact(storage_url)}"
        + (superseded_note(existing, name, recipe) if is_new else "")
        + f": {target - remaining} of {target} trials finished"
        + (f", {interrupted} interrupted trial(s) marked FAIL" if interrupted else "")
        + (f", {closed} interrupted run(s) marked KILLED" if closed else "")
        + (f"; running {remaining} more" if remaining > 0 else "; nothing to do")
    )
    if remaining > 0:
        pruner = study.pruner if experiment.search.pruner != "none" else None
        runner = TrialRunner(experiment.search.trials_per_process, data)
        objective = Objective(spec, space, name, storage_url, pruner, runner, verbose)
        try:
            with mlflow.start_run(run_id=parent):
                try:
                    study.optimize(
                        objective,
                        n_trials=remaining * ATTEMPTS_PER_MISSING_TRIAL,
                        timeout=timeout_s,
                        callbacks=[
                            MaxTrialsCallback(target, states=FINISHED),
                            AfterEachTrial(parent, name, experiment_id),
                            Progress(target, say),
                        ],
                        catch=(Exception,),
                        gc_after_trial=not runner.isolated,
                    )
                except KeyboardInterrupt:  # Ctrl-C: the study is resumable, its parent run was not a failure
                    record_progress(study, parent)
                    mlflow.end_run("KILLED")
                    raise
        finally:
            runner.close()
    result = SweepResult(study=study, parent_run_id=parent, counts=trial_counts(study), target=target)
    summarize_parent(result)
    return result


def study_attrs(spec: TrialSpec, fingerprint: study_identity.Fingerprint, recipe: dict) -> dict:
    """What a new study records about itself: which pair it is, and the spec it is (for the next
    study's first line, which names what changed)."""
    return {"pair": [spec.experiment, spec.backbone.name, spec.strategy_name], "fingerprint": fingerprint.full,
            "recipe_fingerprint": fingerprint.recipe, "recipe": recipe}


def identity_tags(fingerprint: study_identity.Fingerprint) -> dict[str, str]:
    return {"spec_fingerprint": fingerprint.full, "recipe_fingerprint": fingerprint.recipe,
            "data_fingerprint": fingerprint.data, "weights_fingerprint": fingerprint.weights}


# ---------------------------------------------------------------- a whole experiment


@dataclass
class PairResult:
    backbone: str
    strategy: str
    result: SweepResult | None = None
    error: str = ""

    @property
    def reached(self) -> bool:
        return self.result is not None and self.result.reached

    def summary(self) -> str:
        if self.result is None:
            return f"{self.backbone}/{self.strategy}: FAILED: {self.error}"
        if not self.reached:
            return f"{self.backbone}/{self.strategy}: SHORT: {self.result.shortfall()}"
        best = self.result.best_trial
        return (f"{self.backbone}/{self.strategy}: {self.result.finished} of {self.result.target} trials, "
                f"best #{best.number} val_top1={best.value:.4f} test_top1={trial_record(best)['test_top1']:.4f}")


def pairs_of(experiment: ExperimentSpec, backbones: list[str] | None = None,
             strategies: list[str] | None = None) -> list[tuple[str, str]]:
    """Every backbone x strategy the experiment lists, or the selected ones (each checked)."""
    chosen_backbones = [experiment.resolve(b).backbone.name for b in backbones] if backbones else experiment.backbones
    for name in strategies or []:
        experiment.resolve(chosen_backbones[0], name)  # an unknown strategy: the one-line error, before any sweep
    return [(b, s) for b in dict.fromkeys(chosen_backbones) for s in dict.fromkeys(strategies or experiment.strategies)]


def run_experiment(
    experiment: ExperimentSpec,
    pairs: list[tuple[str, str]] | None = None,
    say: Callable[[str], None] = print,
    **options,
) -> list[PairResult]:
    """run_sweep for each pair (default: every pair, see pairs_of), in order. A pair that fails
    (bad weights, every trial failed) is reported and the others go on; each pair is its own
    study, so rerunning resumes all of them and several workers can share the experiment."""
    pairs = pairs if pairs is not None else pairs_of(experiment)
    results = []
    for i, (backbone, strategy) in enumerate(pairs, start=1):
        def tell(line: str, prefix=f"[{i}/{len(pairs)} {backbone}/{strategy}] ") -> None:
            say(prefix + line)

        pair = PairResult(backbone, strategy)
        try:
            pair.result = run_sweep(experiment, backbone, strategy, say=tell, **options)
        except BenchmarkError as e:
            pair.error = str(e)
        except Exception as e:  # one broken pair must not take the others down
            pair.error = f"{type(e).__name__}: {e}".splitlines()[0]
        if not pair.reached:
            tell(pair.summary())
        results.append(pair)
    return results


class Objective:
    """Maximises validation top-1 at the best epoch (the test set is never looked at here)."""

    def __init__(self, spec: TrialSpec, space: SearchSpace, name: str, storage_url: str,
                 pruner: optuna.pruners.BasePruner | None, runner: TrialRunner, verbose: int):
        self.spec, self.space, self.name, self.storage_url = spec, space, name, storage_url
        self.pruner, self.runner, self.verbose = pruner, runner, verbose

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", this_worker())  # lets a rerun on this machine see that it died
        spec = self.spec.with_values(**suggest(trial, self.spec, self.space))
        tags = {"study_name": self.name, "trial_number": str(trial.number), "trial_state": "RUNNING"}
        data_origin = self.runner.data.origin
        pruned = None
        with track.open_run(spec, "trial", data_origin, f"{self.name}-t{trial.number:03d}", tags) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            try:
                value = self.run_and_keep_model(trial, spec, run.info.run_id)
            except optuna.TrialPruned as e:
                pruned = e
                mlflow.log_metric(OBJECTIVE, max(reported_values(trial), default=float("nan")))
                mlflow.set_tag("trial_state", "PRUNED")
            except BaseException as e:
                mlflow.set_tag("trial_state", "FAIL")
                if isinstance(e, Exception):  # the most frequent one is named when a sweep ends short
                    trial.set_user_attr("error", f"{type(e).__name__}: {e}".splitlines()[0][:300])
                raise
        if pruned is not None:
            raise pruned
        return value

    def run_and_keep_model(self, trial: optuna.Trial, spec: TrialSpec, run_id: str) -> float:
        job = TrialJob(
            spec=spec, run_id=run_id, tracking_uri=track.tracking_uri(), storage_url=self.storage_url,
            study_name=self.name, trial_number=trial.number, pruner=self.pruner, verbose=self.verbose,
        )
        result = self.runner.run(job)
        value = result.metrics[OBJECTIVE]
        model_saved = matches_best(trial.study, value)
        if model_saved:
            mlflow.log_artifact(result.model_path, "model")  # the parent re-logs the winner as a Keras model
        shutil.rmtree(Path(result.model_path).parent, ignore_errors=True)
        # One write: each user attribute is a storage transaction (~30 ms on SQLite).
        trial.set_user_attr("outcome", {
            "test_top1": result.metrics["test_top1"], "model_saved": model_saved,
            "compute_s": result.compute_s, "process_start_s": result.process_start_s,
        })
        mlflow.set_tag("trial_state", "COMPLETE")
        return value


def reported_values(trial: optuna.Trial) -> list[float]:
    """The validation top-1 a trial reported to its pruner, epoch by epoch (its frozen record)."""
    frozen = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    return list(frozen.intermediate_values.values())


def matches_best(study: optuna.Study, value: float) -> bool:
    try:
        return value >= study.best_value
    except ValueError:  # no completed trial yet
        return True


def format_params(params: dict) -> str:
    """'learning_rate=0.00519 unfreeze=3': one way, in the progress lines and the summary."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class Progress:
    """One line per trial: i/N, state, params, val top-1, best so far, time left."""

    def __init__(self, target: int, say: Callable[[str], None]):
        self.target, self.say, self.started = target, say, time.perf_counter()
        self.durations: list[float] = []

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = sum(t.state in FINISHED for t in study.trials)
        if trial.duration:
            self.durations.append(trial.duration.total_seconds())
        params = format_params(trial.params)
        value = f"val_top1={trial.value:.4f}" if trial.value is not None else ""
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            value = f"val_top1={max(trial.intermediate_values.values()):.4f} (at prune)"
        try:
            best = f"best={study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:  # nothing completed yet
            best = "best=-"
        mean = sum(self.durations) / len(self.durations) if self.durations else 0.0
        left = max(0, self.target - finished) * mean
        self.say(
            f"trial {finished}/{self.target} #{trial.number} {trial.state.name} {params} {value} {best} "
            f"{self.durations[-1] if self.durations else 0:.1f}s, ~{left:.0f}s left"
        )
