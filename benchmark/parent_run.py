"""A study's MLflow parent run: created once (by its study's creator, safe with several workers),
kept up to date after every trial (counts, compute, which child run is best), summarised when the
sweep ends (the best trial's metrics and params, and the URI of its model, an MLflow Keras
model); and the models a study keeps (its best `search.keep_models`). Also what the parent reads
from the Optuna study: each trial's record, the counts, the best trial that kept its model.

The sweep (benchmark/sweep.py) runs the Optuna loop and calls these; the leaderboard reads what
they wrote.
"""

from __future__ import annotations

import logging
import time

import mlflow
import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from optuna.trial import TrialState

from benchmark import hparams, names, study_identity, track
from benchmark.redaction import redact
from benchmark.spec import SearchSpace, TrialSpec

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- what the study holds


def trial_record(trial: optuna.trial.FrozenTrial) -> dict:
    """What a finished trial recorded in its study (user attr names.ATTR_OUTCOME): test_top1,
    model_saved, compute_s, process_start_s, features_s, one_time_s."""
    return trial.user_attrs.get(names.ATTR_OUTCOME, {})


def best_with_model(study: optuna.Study, trials: list | None = None) -> optuna.trial.FrozenTrial | None:
    """The best completed trial that saved its model (on ties, the lowest number). A trial saves
    its model when it enters the study's best `keep_models`, so this is the study's best trial."""
    trials = study.trials if trials is None else trials
    saved = [t for t in trials if t.state == TrialState.COMPLETE and trial_record(t).get(names.OUTCOME_MODEL_SAVED)]
    return max(saved, key=lambda t: (t.value, -t.number)) if saved else None


def ranking(trials, current: tuple[int, float] | None = None) -> list[int]:
    """Trial numbers of the completed trials (and `current`, a trial about to complete: its
    number and value), best first; on ties the earlier trial ranks higher."""
    entries = [(t.value, -t.number) for t in trials if t.state == TrialState.COMPLETE]
    if current is not None:
        entries.append((current[1], -current[0]))
    return [-number for _, number in sorted(entries, reverse=True)]


def keep_threshold(study: optuna.Study, keep: int) -> float | None:
    """The value a new trial must beat to enter the study's best `keep` (None: fewer completed)."""
    values = sorted((t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))), reverse=True)
    return values[keep - 1] if len(values) >= keep else None


def drop_models_beyond(study: optuna.Study, keep: int, current: tuple[int, float], dropped: set[str]) -> set[str]:
    """Deletes, from the artifact store (local or remote: MLflow's artifact repository of each
    run), the saved models of trials no longer among the study's best `keep`, and tags their runs.
    `dropped`: run ids already done. Returns the run ids deleted now."""
    trials = study.get_trials(deepcopy=False)
    kept = set(ranking(trials, current)[:keep])
    gone = {t.user_attrs[names.ATTR_RUN_ID] for t in trials
            if t.state == TrialState.COMPLETE and trial_record(t).get(names.OUTCOME_MODEL_SAVED) and t.number not in kept} - dropped
    client = mlflow.MlflowClient()
    for run_id in gone:
        try:
            repository = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
            repository.delete_artifacts(names.ARTIFACT_MODEL_DIR)
        except Exception as e:  # an artifact store that cannot delete costs disk, not the trial that just finished
            log.warning("could not delete the model of run %s (%s); it stays", run_id, redact(f"{type(e).__name__}: {e}"))
            continue
        client.set_tag(run_id, names.TAG_MODEL, names.MODEL_DROPPED)
    return gone


def trial_counts(study: optuna.Study, trials: list | None = None) -> dict[str, int]:
    """Finished trials by state; a trial that Ctrl-C stopped is interrupted, not failed."""
    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0}
    for t in study.trials if trials is None else trials:
        key = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(t.state)
        if key == "failed" and interrupted(t):
            key = "interrupted"
        if key:
            counts[key] += 1
    return counts


def interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether Ctrl-C stopped the trial (Optuna records it as FAIL, with names.ATTR_INTERRUPTED)."""
    return trial.state == TrialState.FAIL and bool(trial.user_attrs.get(names.ATTR_INTERRUPTED))


def state_tag(trial: optuna.trial.FrozenTrial | None) -> str:
    """A finished trial's names.TAG_TRIAL_STATE: its Optuna state, or INTERRUPTED (a trial it never
    recorded: FAIL)."""
    if trial is None:
        return TrialState.FAIL.name
    return names.TRIAL_STATE_INTERRUPTED if interrupted(trial) else trial.state.name


# ---------------------------------------------------------------- the parent run


WAIT_FOR_CREATOR_S = 60.0  # a worker that found the study new-made waits this long for its creator's parent run


def find_or_create(study: optuna.Study, created: bool, spec: TrialSpec, space: SearchSpace,
                   identity: dict[str, str], experiment_id: str) -> str:
    """The study's parent run. The worker that created the Optuna study (its storage lets only one
    do that, on any database) creates the parent run and names it in the study's user attrs; the
    others wait for it, rather than racing on MLflow searches, which no database orders. A parent
    deleted by the user, or one whose creator died before making it, is made again."""
    name = study.study_name
    deadline = time.monotonic() + WAIT_FOR_CREATOR_S
    while not created:
        recorded = study.user_attrs.get(names.ATTR_PARENT_RUN)
        found = active_parents(experiment_id, name)
        if recorded in found:
            return recorded
        if found and recorded is None:
            return found[0]  # a study made before parents were recorded, or its creator is about to record it
        if recorded is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    run_id = create(spec, name, space, identity, experiment_id)
    study.set_user_attr(names.ATTR_PARENT_RUN, run_id)
    return run_id


def active_parents(experiment_id: str, name: str) -> list[str]:
    """The study's parent runs that are not deleted, earliest first."""
    found = mlflow.search_runs(
        [experiment_id],
        filter_string=names.tags_filter(**{names.TAG_STUDY: name, names.TAG_ROLE: names.ROLE_SWEEP}),
        output_format="list",
    )
    return [run.info.run_id for run in sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))]


def create(spec: TrialSpec, name: str, space: SearchSpace, identity: dict[str, str], experiment_id: str) -> str:
    """A new parent run: a run's params (track.logged_params), with the searched ones given as their
    ranges; `identity` (the fingerprints) in its tags."""
    tags = {**track.trial_tags(spec, role=names.ROLE_SWEEP, data_origin=""), names.TAG_STUDY: name,
            names.TAG_FULL_NAME: name, **identity}
    short = names.run_name(spec.backbone.name, spec.strategy_name,
                           fingerprint=identity.get(names.TAG_SPEC_FINGERPRINT, "")[:study_identity.SHORT])
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id, run_name=short, tags=tags).info.run_id
    params = {**track.logged_params(spec), **searched_params(spec, space)}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    return run_id


def searched_params(spec: TrialSpec, space: SearchSpace) -> dict[str, str]:
    """The MLflow params (of the parent run) that the sweep searches, as their ranges: a study has
    no single value of them (each trial's run, and the parent's best_* metrics, hold those)."""
    return {entry.field: entry.shown(searched) for entry, searched in hparams.searched_by(spec, space)}


def identity_tags(fingerprint: study_identity.Fingerprint) -> dict[str, str]:
    return {names.TAG_SPEC_FINGERPRINT: fingerprint.full, names.TAG_RECIPE: fingerprint.recipe,
            names.TAG_DATA_FINGERPRINT: fingerprint.data, names.TAG_WEIGHTS_FINGERPRINT: fingerprint.weights}


def close_orphan_runs(study: optuna.Study, name: str, experiment_id: str, status: str = "KILLED") -> int:
    """Child runs left RUNNING by a killed (or interrupted) worker whose Optuna trial is over: mark
    them `status`."""
    trials = {t.number: t for t in study.trials}
    orphans = mlflow.search_runs(
        [experiment_id],
        filter_string=names.tags_filter(**{names.TAG_STUDY: name, names.TAG_ROLE: names.ROLE_TRIAL})
        + " and attributes.status = 'RUNNING'",
        output_format="list",
    )
    client = mlflow.MlflowClient()
    closed = 0
    for run in orphans:
        trial = trials.get(int(run.data.tags.get(names.TAG_TRIAL_NUMBER, -1)))
        if trial is None or trial.state != TrialState.RUNNING:
            client.set_tag(run.info.run_id, names.TAG_TRIAL_STATE, state_tag(trial))
            client.set_terminated(run.info.run_id, status=status)
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
    trials = study.get_trials(deepcopy=False)  # read only: no copy of every trial after every trial
    now = int(time.time() * 1000)
    spent = sum((t.datetime_complete - t.datetime_start).total_seconds()
                for t in trials if t.datetime_start and t.datetime_complete)
    counts = trial_counts(study, trials)
    metrics = [Metric(names.PROGRESS_METRICS[k], float(v), now, 0) for k, v in counts.items()]
    metrics.append(Metric(names.COMPUTE_METRIC, spent, now, 0))
    best = best_with_model(study, trials)
    tags = []
    if best is not None:
        tags = [RunTag(names.TAG_BEST_RUN, best.user_attrs[names.ATTR_RUN_ID]), RunTag(names.TAG_BEST_TRIAL, str(best.number))]
    mlflow.MlflowClient().log_batch(parent_run_id, metrics=metrics, tags=tags)
    return counts["failed"]


def summarize(study: optuna.Study, run_id: str) -> None:
    """Trial counts, the best trial's params and metrics, and where its model is (names.TAG_BEST_MODEL_URI)."""
    client = mlflow.MlflowClient()
    record_progress(study, run_id)
    best = best_with_model(study)
    if best is None:
        return
    child_id = best.user_attrs[names.ATTR_RUN_ID]
    child = client.get_run(child_id)
    metrics = {k: v for k, v in child.data.metrics.items() if k in names.FINAL_METRICS}
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(metrics)
        mlflow.log_metrics({names.best_param_metric(k): float(v) for k, v in best.params.items()
                            if isinstance(v, (int, float))})
        mlflow.set_tags({names.best_param_tag(k): str(v) for k, v in best.params.items()})
        mlflow.set_tags({names.TAG_BEST_MODEL_URI: f"runs:/{child_id}/{names.ARTIFACT_MODEL_DIR}",
                         names.TAG_BEST_MODEL_TRIAL: str(best.number)})
