"""Sweep: one Optuna study per resolved spec of (experiment, backbone, strategy); one MLflow
parent run per study (benchmark/parent_run.py) with a nested child run per trial.
`run_sweep` reads resolve -> open the study -> optimise -> summarise; `run_experiment` sweeps
every pair.

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
import signal
import socket
import statistics
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlflow
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from tqdm import tqdm

from benchmark import hparams, mlflow_store, mlflow_view, names, parent_run, progress, registry, study_identity, track
from benchmark.data import Dataset, load_dataset
from benchmark.errors import BenchmarkError
from benchmark.isolation import TrialJob, TrialRunner
from benchmark.plan import builds_head_only, schedule
from benchmark.redaction import redact
from benchmark.spec import ExperimentSpec, SearchSpace, SearchSpec, TrialSpec, pairs_of  # noqa: F401  (sweep.pairs_of, as before)
from benchmark.storage import default_storage, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own per-trial line replaces Optuna's


class WithoutTraceback(logging.Filter):
    """Optuna logs a failed (or interrupted) trial with its traceback; the progress line and the
    run's `error` tag already say why, so keep its one line, and none for an interrupted trial
    (the command says it was interrupted). `--debug` removes this filter."""

    interrupted_trial = ""  # "Trial 3": Optuna follows its warning with "Trial 3 failed with value None."

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted_trial = message.split(" failed", 1)[0]
            return False
        record.exc_info, record.exc_text = None, None
        if self.interrupted_trial and message.startswith(f"{self.interrupted_trial} failed with value"):
            self.interrupted_trial = ""
            return False
        return True


TRACEBACK_FILTER = WithoutTraceback()
for _handler in logging.getLogger("optuna").handlers:  # Optuna's own stderr handler
    _handler.addFilter(TRACEBACK_FILTER)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
ATTEMPTS_PER_MISSING_TRIAL = 2


@dataclass
class SweepResult:
    study: optuna.Study
    parent_run_id: str
    counts: dict[str, int]
    target: int = 0

    @property
    def best_trial(self) -> optuna.trial.FrozenTrial | None:
        return parent_run.best_with_model(self.study)

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
        errors = Counter(t.user_attrs[names.ATTR_ERROR] for t in self.study.trials
                         if t.state == TrialState.FAIL and names.ATTR_ERROR in t.user_attrs)
        common = errors.most_common(1)
        why = f"; most frequent error ({common[0][1]}x): {common[0][0]}" if common else ""
        if self.finished >= self.target:
            why = "; every finished trial was pruned" + why
        return (f"study {self.study.study_name} ended short of its target: {self.finished} of {self.target} trials "
                f"finished, {self.counts['failed']} failed{why}")


def pair_name(spec: TrialSpec) -> str:
    return f"{spec.experiment}-{spec.backbone.name}-{spec.strategy_name}"


def study_name(spec: TrialSpec, fingerprint: study_identity.Fingerprint) -> str:
    return f"{pair_name(spec)}-{fingerprint.short}"


def pair_studies(storage: optuna.storages.BaseStorage, experiment: str, backbone: str, strategy: str) -> list:
    """The studies of one (experiment, backbone, strategy), oldest first (Optuna StudySummary)."""
    pair = [experiment, backbone, strategy]
    legacy = "-".join(pair)  # studies from before fingerprints were named by the pair alone
    found = [s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
             if s.user_attrs.get(names.ATTR_PAIR) == pair or s.study_name == legacy]
    return sorted(found, key=lambda s: (s.datetime_start is None, s.datetime_start or 0, s.study_name))


def superseded_note(studies: list, name: str, recipe: dict, fingerprint: study_identity.Fingerprint | None = None) -> str:
    """', a new study: training.epochs 2 -> 5 since ci-vgg16-frozen-1a2b3c4d (2 trials, kept as it was)'
    (or ': the data changed (same recipe) since ...')."""
    older = [s for s in studies if s.study_name != name]
    if not older:
        return ", a new study"
    last = older[-1]
    if names.ATTR_RECIPE in last.user_attrs:
        changed = study_identity.differences(last.user_attrs[names.ATTR_RECIPE], recipe)
        if last.user_attrs[names.ATTR_RECIPE] == recipe and fingerprint is not None:
            what = [part for part, attr, now in (("data", names.ATTR_DATA_FINGERPRINT, fingerprint.data),
                                                 ("weights", names.ATTR_WEIGHTS_FINGERPRINT, fingerprint.weights))
                    if attr in last.user_attrs and last.user_attrs[attr] != now]
            if what:
                changed = f"the {' and the '.join(what)} changed (same recipe)"
    else:
        changed = "a spec from before fingerprints"
    return f", a new study: {changed} since {last.study_name} ({last.n_trials} trial{'' if last.n_trials == 1 else 's'}, kept as it was)"


def make_sampler(search: SearchSpec, worker: int = 0) -> optuna.samplers.BaseSampler:
    """TPE seeded from the spec; each further worker on the study gets the next seed, or
    concurrent workers would sample the very same configurations."""
    return optuna.samplers.TPESampler(seed=search.sampler_seed + worker, n_startup_trials=search.startup_trials)


def register_worker(study: optuna.Study) -> int:
    """0 for the study's first worker (so a fresh single-worker sweep is reproducible), then 1, 2, ..."""
    worker = int(study.user_attrs.get(names.ATTR_WORKERS_STARTED, 0))
    study.set_user_attr(names.ATTR_WORKERS_STARTED, worker + 1)
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
    """Values for TrialSpec.with_values, sampled from the spec's search space (hparams.TABLE says
    which a trial searches, and in which order Optuna is asked)."""
    return {entry.name: entry.suggest(trial, spec, searched) for entry, searched in hparams.searched_by(spec, space)}


def check_unfreeze_fits(spec: TrialSpec, space: SearchSpace) -> None:
    """Reject an unfreeze depth (fixed or searched) deeper than the backbone, before any trial."""
    if spec.strategy.unfreeze in (0, "all"):
        return  # nothing to check
    backbone = registry.get_backbone(spec.backbone.name)
    depth = registry.depth_of(backbone, spec.backbone.image_size)
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
        worker = trial.user_attrs.get(names.ATTR_WORKER, {})
        if worker.get("host") == socket.gethostname() and not process_alive(worker.get("pid")):
            study.tell(trial.number, state=TrialState.FAIL)
            failed += 1
    return failed


def fail_own_running_trials(study: optuna.Study) -> int:
    """After Ctrl-C: this process's trials still RUNNING (an interrupt that landed while Optuna was
    recording a trial's end) end interrupted, so that nothing is left RUNNING."""
    failed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(names.ATTR_WORKER) == this_worker():
            study._storage.set_trial_user_attr(trial._trial_id, names.ATTR_INTERRUPTED, True)
            study.tell(trial.number, state=TrialState.FAIL)
            failed += 1
    return failed


class Interruption:
    """Ctrl-C during a sweep is remembered as well as raised: an interrupt that Python drops (one
    that lands in a finalizer, say) still stops the sweep at the next trial's end."""

    def __init__(self):
        self.seen = self.holding = False
        self.previous = None

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
            self.previous = signal.signal(signal.SIGINT, self.on_sigint)
            self.previous_hook, sys.unraisablehook = sys.unraisablehook, self.unraisable
        return self

    def unraisable(self, unraisable) -> None:
        """An interrupt that landed in a finalizer is dropped by Python, which prints its traceback:
        it is remembered here instead (on_sigint saw it), without the traceback."""
        if not issubclass(unraisable.exc_type, KeyboardInterrupt):
            self.previous_hook(unraisable)

    def on_sigint(self, signum, frame) -> None:
        self.seen = True
        if not self.holding:
            raise KeyboardInterrupt

    @contextmanager
    def held(self) -> Iterator[None]:
        """While the interrupted sweep records its state: a second Ctrl-C must not cut that short."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False

    def check(self, *_) -> None:
        """Raise KeyboardInterrupt if Ctrl-C came (an Optuna callback: called after each trial)."""
        if self.seen:
            raise KeyboardInterrupt

    def __exit__(self, *_) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            sys.unraisablehook = self.previous_hook


# ---------------------------------------------------------------- the sweep


@dataclass
class Plan:
    """A pair's sweep, resolved and checked: everything decided before anything is recorded."""

    spec: TrialSpec
    space: SearchSpace
    search: SearchSpec
    target: int
    timeout_s: float | None
    data: Dataset
    fingerprint: study_identity.Fingerprint
    name: str  # the study's
    recipe: dict
    spec_file: str | None = None  # the spec file's absolute path, recorded on the runs (names.TAG_SPEC_FILE)


@dataclass
class OpenedStudy:
    study: optuna.Study
    storage_url: str
    parent_run_id: str
    experiment_id: str
    remaining: int  # trials still to finish for the target


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
    progress_bar: bool = False,
) -> SweepResult:
    """One study: its trials until the target (resumed where it stopped). `verbose` is Keras's
    (2: a line per epoch); `progress_bar` draws a bar of the study's trials on a terminal's stderr."""
    plan = resolve(experiment, backbone, strategy, trials, timeout_s, data_dir)
    if plan.data.duplicates:
        say(f"warning: {duplicates_tag(plan.data)}")
    opened = open_study(plan, storage or default_storage(), say)
    if opened.remaining > 0:
        optimise(plan, opened, verbose, say, progress_bar)
    parent_run.summarize(opened.study, opened.parent_run_id)
    return SweepResult(study=opened.study, parent_run_id=opened.parent_run_id,
                       counts=parent_run.trial_counts(opened.study), target=plan.target)


def resolve(experiment: ExperimentSpec, backbone: str, strategy: str | None, trials: int | None,
            timeout_s: float | None, data_dir: str | Path | None) -> Plan:
    """The pair's spec, search space, target and data; every check of the user's input is here."""
    spec = experiment.resolve(backbone, strategy, data_dir)
    space = experiment.search_space(spec.backbone.name, spec.strategy_name)
    check_unfreeze_fits(spec, space)
    with experiment.naming_its_file():
        data = load_dataset(spec.data)
    fingerprint = study_identity.fingerprint(spec, space, experiment.search, data)
    return Plan(spec=spec, space=space, search=experiment.search,
                target=trials or spec.strategy.trials or experiment.search.trials,
                timeout_s=timeout_s or experiment.search.timeout_s, data=data, fingerprint=fingerprint,
                name=study_name(spec, fingerprint), recipe=study_identity.recipe(spec, space, experiment.search),
                spec_file=experiment.source_file)


def duplicates_tag(data: Dataset) -> str:
    """Own images identical in two splits: "0", or the one-line warning (and what drop_duplicates removed)."""
    if not data.duplicate_groups:
        return "0"
    if data.dropped_duplicates:
        text = (f"{data.duplicates.split('; remove the copies')[0]}; data.drop_duplicates removed "
                f"{data.dropped_duplicates} of them from train/val")
    else:
        text = f"{data.duplicates} (or set data.drop_duplicates = true)"
    return text[:5000]  # MLflow's limit on a tag's value


def open_study(plan: Plan, storage_url: str, say: Callable[[str], None], racing: bool = False) -> OpenedStudy:
    """The study (created or resumed) and its parent run, with what dead workers left behind
    cleaned up; says in one line where the study stands (`racing`: in a budget race, which has
    no target per study)."""
    spec, name = plan.spec, plan.name
    mlflow_store.check_store(mlflow_store.tracking_uri())  # a damaged or foreign MLflow store: before an Optuna storage is made beside it
    with mlflow_store.store_lock():  # two processes creating one new SQLite database's tables collide
        optuna_storage = open_storage(storage_url)  # a bad URL or a dead server: before MLflow records anything
    mlflow_store.configure()
    with mlflow_store.store_lock():
        existing = pair_studies(optuna_storage, spec.experiment, spec.backbone.name, spec.strategy_name)
        try:
            study = optuna.create_study(study_name=name, storage=optuna_storage, pruner=make_pruner(plan.search),
                                        direction="maximize")
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(study_name=name, storage=optuna_storage, pruner=make_pruner(plan.search))
            created = False
        if names.ATTR_FINGERPRINT not in study.user_attrs:
            for key, value in study_attrs(spec, plan.fingerprint, plan.recipe).items():
                study.set_user_attr(key, value)
        study.sampler = make_sampler(plan.search, worker=register_worker(study))
    interrupted = fail_trials_of_dead_workers(study)
    optuna.storages.fail_stale_trials(study)  # dead workers elsewhere: after the heartbeat's grace period
    experiment_id = mlflow_store.experiment_id(spec.experiment)
    identity = parent_run.identity_tags(plan.fingerprint)
    if plan.spec_file:
        identity[names.TAG_SPEC_FILE] = plan.spec_file
    if plan.data.content_key is not None:  # own images: what the leakage check found
        identity[names.TAG_DUPLICATES] = duplicates_tag(plan.data)
    parent = parent_run.find_or_create(study, created, spec, plan.space, identity, experiment_id)
    mlflow_view.update(experiment_id)  # the UI's runs table shows this study's searched params too
    closed = parent_run.close_orphan_runs(study, name, experiment_id)
    counts = parent_run.trial_counts(study)
    remaining = plan.target - counts["complete"] - counts["pruned"]
    is_new = name not in {s.study_name for s in existing}
    finished = counts["complete"] + counts["pruned"]
    say(
        f"study {name} on {redact(storage_url)}"
        + (superseded_note(existing, name, plan.recipe, plan.fingerprint) if is_new else "")
        + (f": {finished} trials finished" if racing else f": {plan.target - remaining} of {plan.target} trials finished")
        + (f", {interrupted} interrupted trial(s) marked FAIL" if interrupted else "")
        + (f", {closed} interrupted run(s) marked KILLED" if closed else "")
        + ("" if racing else f"; running {remaining} more" if remaining > 0 else "; nothing to do")
    )
    return OpenedStudy(study=study, storage_url=storage_url, parent_run_id=parent, experiment_id=experiment_id,
                       remaining=remaining)


def optimise(plan: Plan, opened: OpenedStudy, verbose: int, say: Callable[[str], None], progress_bar: bool = False) -> None:
    """Optuna's loop until the target is met (or the time is up), trials in a child process."""
    bar = trials_bar(plan, opened, progress_bar)
    with TrialLoop(plan, opened, verbose, progress_bar) as loop:
        try:
            loop.run(opened.remaining * ATTEMPTS_PER_MISSING_TRIAL,
                     [MaxTrialsCallback(plan.target, states=FINISHED),
                      Progress(plan.target, say, bar, pruning_of(plan, loop.prunes))], plan.timeout_s)
        finally:
            bar.close()


class TrialLoop:
    """A study's trial runner and objective, kept across calls of `run` (a budget race gives a
    pair one trial at a time: its trial process and caches stay). `close` ends its trial process."""

    def __init__(self, plan: Plan, opened: OpenedStudy, verbose: int, progress_bars: bool = False):
        self.plan, self.opened = plan, opened
        # A linear probe has no epochs to stop between: one fit to convergence, nothing to prune.
        self.prunes = plan.search.pruner != "none" and plan.spec.training.optimizer != "lbfgs"
        self.interruption = Interruption()
        self.runner = TrialRunner(trials_per_process(plan), plan.data, interrupted=lambda: self.interruption.seen)
        self.objective = Objective(plan.spec, plan.space, plan.name, opened.storage_url,
                                   opened.study.pruner if self.prunes else None, self.runner, verbose,
                                   plan.search.keep_models,
                                   data_input=track.dataset(plan.spec.data, plan.data.origin, plan.fingerprint.data),
                                   progress_bars=progress_bars, spec_file=plan.spec_file,
                                   experiment_id=opened.experiment_id)

    def __enter__(self) -> TrialLoop:
        return self

    def __exit__(self, *_) -> None:
        self.close()

    def close(self) -> None:
        self.runner.close()

    def run(self, n_trials: int, callbacks: list, timeout_s: float | None = None) -> None:
        """Up to n_trials trials (Optuna's loop, with `callbacks` after each). Ctrl-C: what is
        running ends interrupted, the parent run KILLED, and KeyboardInterrupt goes on up."""
        study, parent, interruption = self.opened.study, self.opened.parent_run_id, self.interruption
        with mlflow.start_run(run_id=parent), interruption:
            try:
                study.optimize(
                    self.objective,
                    n_trials=n_trials,
                    timeout=timeout_s,
                    callbacks=[parent_run.AfterEachTrial(parent, self.plan.name, self.opened.experiment_id),
                               *callbacks, interruption.check],
                    catch=(Exception,),
                    gc_after_trial=not self.runner.isolated and not builds_head_only(self.plan.spec),  # a head leaves little
                )
                interruption.check()
            except KeyboardInterrupt:  # Ctrl-C: the study is resumable, its parent run was not a failure
                with interruption.held():
                    self.runner.stop()  # first: no trial process writes after this
                    fail_own_running_trials(study)
                    while (active := mlflow.active_run()) and active.info.run_id != parent:
                        mlflow.set_tag(names.TAG_TRIAL_STATE, names.TRIAL_STATE_INTERRUPTED)
                        mlflow.end_run("KILLED")  # a trial's run, when the interrupt landed as it opened
                    # and its run when the interrupt came before the run's context could close it
                    parent_run.close_orphan_runs(study, self.plan.name, self.opened.experiment_id, status="KILLED")
                    parent_run.record_progress(study, parent)
                    mlflow.end_run("KILLED")
                raise


def trials_bar(plan: Plan, opened: OpenedStudy, shown: bool) -> tqdm:
    """The study's trials done of its target, the time so far, the best so far and the time left
    (Progress's estimate: tqdm's own, from the rate so far, would count the first trial's one-time
    work in every trial), on stderr; only on a terminal, and never when not `shown` (--quiet)."""
    return progress.bar(plan.target, plan.name, "trial", shown, delay=0, initial=plan.target - opened.remaining,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")


CHILD_TRIALS = 10  # trials per child process under trials_per_process = "auto"


def trials_per_process(plan: Plan) -> int:
    """search.trials_per_process, with "auto" resolved: head-only trials on cached features in
    this process (0), others in a child process replaced every CHILD_TRIALS trials."""
    setting = plan.search.trials_per_process
    if setting != "auto":
        return setting
    return 0 if builds_head_only(plan.spec) else CHILD_TRIALS


def study_attrs(spec: TrialSpec, fingerprint: study_identity.Fingerprint, recipe: dict) -> dict:
    """What a new study records about itself: which pair it is, and the spec it is (for the next
    study's first line, which names what changed)."""
    return {names.ATTR_PAIR: [spec.experiment, spec.backbone.name, spec.strategy_name],
            names.ATTR_FINGERPRINT: fingerprint.full, names.ATTR_RECIPE_FINGERPRINT: fingerprint.recipe,
            names.ATTR_RECIPE: recipe, names.ATTR_DATA_FINGERPRINT: fingerprint.data,
            names.ATTR_WEIGHTS_FINGERPRINT: fingerprint.weights}


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
                f"best #{best.number} val_top1={best.value:.4f} test_top1={parent_run.trial_record(best)[names.TEST_TOP1]:.4f}")


def run_experiment(
    experiment: ExperimentSpec,
    pairs: list[tuple[str, str]] | None = None,
    say: Callable[[str], None] = print,
    **options,
) -> list[PairResult]:
    """run_sweep for each pair (default: every pair, see spec.pairs_of), in order. A pair that fails
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
                 pruner: optuna.pruners.BasePruner | None, runner: TrialRunner, verbose: int, keep_models: int,
                 data_input=None, progress_bars: bool = False, spec_file: str | None = None,
                 experiment_id: str | None = None):
        self.spec, self.space, self.name, self.storage_url = spec, space, name, storage_url
        self.pruner, self.runner, self.verbose, self.keep_models = pruner, runner, verbose, keep_models
        self.dropped: set[str] = set()  # run ids whose model this sweep deleted
        self.data_input = data_input  # the trials' dataset in MLflow (track.dataset)
        self.progress_bars = progress_bars  # of a trial's one-time work (the feature pass), as of the trials
        self.spec_file = spec_file  # tagged on each trial's run: what `run` and `confirm` default to
        self.experiment_id = experiment_id  # of the trials' runs (None: the spec's experiment, looked up)

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self.tracked_trial(trial)
        except KeyboardInterrupt:  # Optuna records FAIL; counted as interrupted (parent_run.trial_counts)
            trial.set_user_attr(names.ATTR_INTERRUPTED, True)
            raise

    def tracked_trial(self, trial: optuna.Trial) -> float:
        trial.set_user_attr(names.ATTR_WORKER, this_worker())  # lets a rerun on this machine see that it died
        spec = self.spec.with_values(**suggest(trial, self.spec, self.space))
        tags = {names.TAG_STUDY: self.name, names.TAG_TRIAL_NUMBER: str(trial.number), names.TAG_TRIAL_STATE: "RUNNING",
                names.TAG_FULL_NAME: names.trial_full_name(self.name, trial.number)}
        if self.spec_file:
            tags[names.TAG_SPEC_FILE] = self.spec_file
        data_origin = self.runner.data.origin
        pruned = None
        name = names.run_name(spec.backbone.name, spec.strategy_name, trial=trial.number)
        with track.open_run(spec, names.ROLE_TRIAL, data_origin, name, tags, self.data_input, self.experiment_id) as run:
            try:  # from the first write after the run opened: an interrupt there is this trial's too
                trial.set_user_attr(names.ATTR_RUN_ID, run.info.run_id)
                value = self.run_and_keep_model(trial, spec, run.info.run_id)
            except optuna.TrialPruned as e:  # its run has its end already (trial.run_tracked)
                pruned = e
            except BaseException as e:
                interrupted = isinstance(e, KeyboardInterrupt)
                mlflow.set_tag(names.TAG_TRIAL_STATE, names.TRIAL_STATE_INTERRUPTED if interrupted else TrialState.FAIL.name)
                if isinstance(e, Exception):  # the most frequent one is named when a sweep ends short
                    trial.set_user_attr(names.ATTR_ERROR, redact(f"{type(e).__name__}: {e}".splitlines()[0])[:300])
                raise
        if pruned is not None:
            raise pruned
        return value

    def run_and_keep_model(self, trial: optuna.Trial, spec: TrialSpec, run_id: str) -> float:
        """The trial keeps its model if it enters the study's best `keep_models`; a model that
        falls out of them then is deleted from the artifact store."""
        job = TrialJob(
            spec=spec, run_id=run_id, tracking_uri=mlflow_store.tracking_uri(), storage_url=self.storage_url,
            study_name=self.name, trial_number=trial.number, pruner=self.pruner, verbose=self.verbose,
            keep_above=parent_run.keep_threshold(trial.study, self.keep_models), progress=self.progress_bars,
            end_tags={names.TAG_TRIAL_STATE: TrialState.COMPLETE.name},
        )
        result = self.runner.run(job)
        value = result.metrics[names.OBJECTIVE]
        model_saved = result.model_path is not None
        if model_saved:
            track.log_model(result.model_path, run_id)
            self.dropped |= parent_run.drop_models_beyond(trial.study, self.keep_models, (trial.number, value), self.dropped)
        # One write: each user attribute is a storage transaction (~30 ms on SQLite).
        trial.set_user_attr(names.ATTR_OUTCOME, {
            names.TEST_TOP1: result.metrics[names.TEST_TOP1], names.OUTCOME_MODEL_SAVED: model_saved,
            names.OUTCOME_COMPUTE_S: result.compute_s, names.OUTCOME_PROCESS_START_S: result.process_start_s,
            names.OUTCOME_FEATURES_S: result.metrics.get(names.FEATURES_S, 0.0),
            names.OUTCOME_VAL_CORRECT: result.val_correct,
            names.OUTCOME_ONE_TIME_S: result.one_time_s,
        })
        return value


def format_params(params: dict) -> str:
    """'learning_rate=0.00519 unfreeze=3': one way, in the progress lines and the summary."""
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def own_work(trial: optuna.trial.FrozenTrial) -> float:
    """A trial's time less the one-time work it measured: starting its process, the feature pass
    (computed once, then read from the cache) and what its process does once for all its trials."""
    outcome = trial.user_attrs.get(names.ATTR_OUTCOME, {})
    one_time = sum(outcome.get(key, 0.0) for key in (names.OUTCOME_PROCESS_START_S, names.OUTCOME_FEATURES_S,
                                                      names.OUTCOME_ONE_TIME_S))
    return max(0.0, trial.duration.total_seconds() - one_time)


@dataclass(frozen=True)
class Pruning:
    """What the time left needs to know of a study's pruner."""

    startup_trials: int  # complete trials before it stops any (the median pruner's; 0 for the others)
    earliest_share: float  # the least share of a trial's epochs that a pruned trial has run (its warm-up)


def pruning_of(plan: Plan, prunes: bool) -> Pruning | None:
    """The sweep's pruner as the time left sees it; None where no trial is pruned."""
    if not prunes:
        return None
    epochs = sum(phase_epochs for _, _, phase_epochs in schedule(plan.spec))
    startup = plan.search.startup_trials if plan.search.pruner == "median" else 0
    return Pruning(startup_trials=startup, earliest_share=min(1.0, max(1, plan.search.pruner_warmup_epochs) / max(1, epochs)))


class Progress:
    """One line per trial: i/N, state, params, val top-1, best so far, time left; and the bar."""

    def __init__(self, target: int, say: Callable[[str], None], bar: tqdm | None = None, pruning: Pruning | None = None):
        self.target, self.say, self.started, self.bar, self.pruning = target, say, time.perf_counter(), bar, pruning
        self.own_work: dict[TrialState, list[float]] = {}  # by state, each trial's time less its one-time work
        self.first_state: TrialState | None = None  # the state of the sweep's first finished trial
        self.prunable = self.pruned = 0  # finished trials the pruner could have stopped, and those it did

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        finished = sum(t.state in FINISHED for t in study.trials)
        if trial.duration and trial.state in FINISHED:
            self.count(study, trial)
        params = format_params(trial.params)
        value = f"val_top1={trial.value:.4f}" if trial.value is not None else ""
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            value = f"val_top1={max(trial.intermediate_values.values()):.4f} (at prune)"
        try:
            best = f"best={study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:  # nothing completed yet
            best = "best=-"
        complete = sum(t.state == TrialState.COMPLETE for t in study.trials)
        left = f"~{self.time_left_s(max(0, self.target - finished), complete):.0f}s left"
        took = trial.duration.total_seconds() if trial.duration else 0.0
        line = f"trial {finished}/{self.target} #{trial.number} {trial.state.name} {params} {value} {best} {took:.1f}s, {left}"
        if self.bar is None or self.bar.disable:
            self.say(line)
            return
        with tqdm.external_write_mode():  # the line above the bar, not through it
            self.say(line)
        self.bar.set_postfix_str(f"{best}, {left}", refresh=False)
        self.bar.update(min(finished, self.target) - self.bar.n)
        self.bar.refresh()  # now, whatever tqdm's minimum interval between redraws

    def count(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.first_state = self.first_state or trial.state
        self.own_work.setdefault(trial.state, []).append(own_work(trial))
        if self.pruning is not None:
            complete_before = sum(t.state == TrialState.COMPLETE for t in study.trials) - (trial.state == TrialState.COMPLETE)
            if complete_before >= self.pruning.startup_trials:
                self.prunable += 1
                self.pruned += trial.state == TrialState.PRUNED

    def typical_s(self, state: TrialState) -> float | None:
        """The mean own time of this sweep's trials that ended in `state`. The sweep's first trial
        also paid for work no later trial repeats and none measured (tracing the first model's
        functions), so it counts only while its state has no other trial."""
        seconds = self.own_work.get(state)
        if not seconds:
            return None
        return statistics.fmean(seconds[1:] if state == self.first_state and len(seconds) > 1 else seconds)

    def time_left_s(self, left: int, complete: int) -> float:
        """What the `left` trials still to run should take, with `complete` trials complete so far.
        Without a pruner, each as a complete trial (or as the trials seen, all pruned so far). With
        one, the trials it cannot stop yet (its startup trials) as complete ones, the others as
        pruned with the chance Laplace's rule gives from the trials it could have stopped (1/2
        before any), a pruned trial taking what the pruned ones took or, before any, its warm-up
        share of a complete one."""
        complete_s, pruned_s = self.typical_s(TrialState.COMPLETE), self.typical_s(TrialState.PRUNED)
        if complete_s is None and pruned_s is None:
            return 0.0
        if complete_s is None:
            complete_s = pruned_s
        if self.pruning is None:
            return left * complete_s
        if pruned_s is None:
            pruned_s = complete_s * self.pruning.earliest_share
        unprunable = min(left, max(0, self.pruning.startup_trials - complete))
        chance = (self.pruned + 1) / (self.prunable + 2)
        return unprunable * complete_s + (left - unprunable) * (chance * pruned_s + (1 - chance) * complete_s)
