"""MLflow run logging: a trial's run opened with the params a person reads (logged_params), its
whole spec, the standard tags and its dataset; its epochs logged as training goes, its final
metrics and artifacts, and its kept model. Every name these write is in benchmark/names.py;
where runs go is benchmark/mlflow_store.py.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
from mlflow.entities import Param, RunTag
from optuna.trial import TrialState

from benchmark import hparams, mlflow_store, names
from benchmark.redaction import redact
from benchmark.spec import TrialSpec


def trial_tags(spec: TrialSpec, role: str, data_origin: str) -> dict[str, str]:
    from benchmark import runtime  # imports Keras

    values = (spec.backbone.name, spec.strategy_name, spec.experiment, role, runtime.git_commit(),
              runtime.device_description(), data_origin)
    tags = dict(zip(names.TAGS, values))  # feature_cache, the last of TAGS, comes with the trial's result
    return {**tags, **version_tags(), names.TAG_TRIAL_SPEC_FINGERPRINT: spec_fingerprint(spec)}


def spec_fingerprint(spec: TrialSpec) -> str:
    """sha256 of the spec as the run's ARTIFACT_SPEC holds it."""
    return hashlib.sha256(spec_json(spec).encode()).hexdigest()


def spec_json(spec: TrialSpec) -> str:
    return spec.model_dump_json(indent=1)


def logged_params(spec: TrialSpec) -> dict[str, str]:
    """The params a run logs: names.LOGGED_PARAMS and every searchable hyperparameter (hparams.TABLE),
    the same names in every run. The whole spec is the run's ARTIFACT_SPEC."""
    kept = {*names.LOGGED_PARAMS, *(entry.field for entry in hparams.TABLE)}
    if spec.data.source != "synthetic":
        kept -= set(names.SYNTHETIC_PARAMS)
    return {key: value for key, value in spec.params().items() if key in kept}


def version_tags() -> dict[str, str]:
    """The installed version of each package that decides results, as tags."""
    from benchmark import runtime  # imports Keras

    return {names.version_tag(package): version for package, version in runtime.package_versions().items()}


DATASET_NAMES = {"keras": "cifar100", "dir": "cifar100", "sample": "cifar100-sample", "synthetic": "synthetic",
                 "cifar10": "cifar10"}  # folder and csv: the folder's or the file's name
DATASET_CONTEXT = "training"
DIGEST_LENGTH = 16  # hex digits of the data fingerprint (MLflow keeps at most 36)


def dataset(data_spec, origin: str, fingerprint: str):
    """The data a run trains on, for MLflow's dataset tracking (the UI's Dataset column): named
    after its source, its digest the data's content fingerprint (study_identity.data_fingerprint),
    so runs on the same images show the same dataset and changed images another."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    name = DATASET_NAMES.get(data_spec.source) or Path(origin.split(":", 1)[-1]).name
    if data_spec.label_mode == "coarse":
        name += "-coarse"
    return MetaDataset(CodeDatasetSource({names.TAG_DATA_ORIGIN: origin}), name=name, digest=fingerprint[:DIGEST_LENGTH])


def params_with_result(spec: TrialSpec) -> bool:
    """Whether a run's params are written with its end (its result, or why it ended) rather than
    as it opens: for a head on cached features, whose run lasts a fraction of a second, one store
    write fewer. A longer trial shows them while it trains."""
    from benchmark.errors import BenchmarkError
    from benchmark.plan import builds_head_only

    try:
        return builds_head_only(spec)
    except BenchmarkError:  # a plan that cannot be made fails the trial later, as its error
        return False


def end_params(spec: TrialSpec) -> list[Param]:
    """The params a run's last write carries: logged_params where params_with_result, else none."""
    return [Param(k, v) for k, v in logged_params(spec).items()] if params_with_result(spec) else []


@contextmanager
def open_run(spec: TrialSpec, role: str, data_origin: str, run_name: str, extra_tags: dict | None = None,
             data_input=None, experiment_id: str | None = None) -> Iterator:
    """A run (nested under the active one, if any) with its params (logged_params; or with its end,
    end_params), its whole spec (names.ARTIFACT_SPEC: reports reload its data from it), the
    standard tags and its dataset (`data_input`, from dataset()); in `experiment_id`, else the
    spec's experiment. An exception marks it FAILED (Ctrl-C: KILLED) with the error recorded, and propagates."""
    tags = {**trial_tags(spec, role, data_origin), **(extra_tags or {})}
    experiment_id = experiment_id or mlflow_store.experiment_id(spec.experiment)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, nested=mlflow.active_run() is not None, tags=tags
    ) as run:
        opened = False
        try:  # a full disk or an unreachable server while writing these is this run's error too
            if not params_with_result(spec):
                mlflow.log_params(logged_params(spec))
            mlflow.log_text(spec_json(spec), names.ARTIFACT_SPEC)  # the whole spec, of pruned and failed runs too
            if data_input is not None:
                mlflow.log_input(data_input, context=DATASET_CONTEXT)
            opened = True
            yield run
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            ended = {names.TAG_ERROR: redact(f"{type(e).__name__}: {e}")[:5000]}
            if not opened and names.TAG_TRIAL_STATE in tags:  # the caller never got the run to tag its end
                ended[names.TAG_TRIAL_STATE] = names.TRIAL_STATE_INTERRUPTED if interrupted else "FAIL"
            write_end(run.info.run_id, spec, [RunTag(k, v) for k, v in ended.items()])
            if interrupted:
                mlflow.end_run("KILLED")  # stopped by the user, not failed
            raise


def write_end(run_id: str, spec: TrialSpec, tags: list[RunTag], metrics: list = ()) -> None:
    """Why a run ended (tags, metrics) in one write, with end_params; without them if they are what
    failed (a value the store refuses), so the reason is recorded all the same."""
    client = mlflow.MlflowClient()
    params = end_params(spec)
    try:
        client.log_batch(run_id, metrics=list(metrics), params=params, tags=tags)
    except Exception:
        if not params:
            raise
        client.log_batch(run_id, metrics=list(metrics), tags=tags)


class EpochLogger:
    """Logs the per-epoch curves to a run as training goes (visible live in the UI): an epoch's
    metrics are written when it ends, except that epochs shorter than FLUSH_S are gathered into
    one write every FLUSH_S (a head on cached features runs tens of epochs a second; one store
    write each would cost more than the epochs). What is left when training ends goes with the
    trial's result in its one write (`take`, log_result); if training fails, it is written as
    the context manager exits. By run id: trial processes log into a run their parent process
    owns. `.callback()` is the Keras callback."""

    FLUSH_S = 2.0

    def __init__(self, run_id: str, metrics: tuple[str, ...] = names.EPOCH_METRICS):
        self.run_id = run_id
        self.metrics = metrics  # the logs' keys it logs
        self.seconds = 0.0  # time spent logging, for the bookkeeping benchmark
        self.pending: list = []
        self.flushed = time.perf_counter()
        self.best_val_top1 = float("nan")  # over the epochs so far: a pruned trial's objective

    def __call__(self, epoch: int, logs: dict | None = None) -> None:
        now_ms = int(time.time() * 1000)
        logs = logs or {}
        score = float(logs.get("val_top1", np.nan))  # what the pruner is given (train.MONITOR)
        if np.isfinite(score) and (np.isnan(self.best_val_top1) or score > self.best_val_top1):
            self.best_val_top1 = score
        self.pending += [mlflow.entities.Metric(k, float(logs[k]), now_ms, epoch + 1)  # Keras passes 0-based epochs
                         for k in self.metrics if k in logs and np.isfinite(float(logs[k]))]
        if time.perf_counter() - self.flushed >= self.FLUSH_S:
            self.flush()

    def __enter__(self) -> EpochLogger:
        return self

    def __exit__(self, *_) -> None:
        self.flush()

    def take(self) -> list:
        """The epochs' metrics not written yet, now the caller's to write (log_result)."""
        pending, self.pending = self.pending, []
        return pending

    def flush(self, logs: dict | None = None) -> None:
        start = time.perf_counter()
        if self.pending:
            mlflow.MlflowClient().log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        self.flushed = time.perf_counter()
        self.seconds += self.flushed - start

    def callback(self):
        import keras  # here, not at the top: reading the store (leaderboard, check) should not load TensorFlow

        return keras.callbacks.LambdaCallback(on_epoch_end=self)


def log_result(result, run_id: str, curves: list = (), tags: dict[str, str] | None = None) -> None:
    """Final metrics and artifacts of a finished trial (benchmark.trial.TrialResult), with the
    epochs' `curves` not written yet (EpochLogger.take), its end_params and `tags`, in one write.
    By run id, not the active run: trial processes log into a run their parent process owns."""
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(k, v, now, 0) for k, v in result.metrics.items() if np.isfinite(v)]
    ended = [RunTag(k, v) for k, v in {**result.tags, **(tags or {})}.items()]
    client.log_batch(run_id, metrics=[*curves, *metrics], params=end_params(result.spec), tags=ended)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if result.model_path is not None:  # a picture for the runs people open; every run has its metrics' charts
            plot_learning_curves(result.history, tmp / names.ARTIFACT_CURVES, title=result.title, top5=result.reports_top5)
        np.savez_compressed(tmp / names.ARTIFACT_PREDICTIONS, labels=result.test_labels, top5=result.test_predictions,
                            class_names=np.asarray(result.class_names, dtype=str))
        write_per_class(result.per_class, tmp / names.ARTIFACT_PER_CLASS)
        (tmp / names.ARTIFACT_HISTORY).write_text(json.dumps(result.history.epochs, indent=1))
        client.log_artifacts(run_id, str(tmp))


def log_pruned(run_id: str, spec: TrialSpec, curves: list, objective: float) -> None:
    """A pruned trial's end in one write: its epochs' `curves` not written yet, its objective (the
    best validation top-1 it reached), its state and end_params."""
    metrics = [*curves, mlflow.entities.Metric(names.OBJECTIVE, objective, int(time.time() * 1000), 0)]
    write_end(run_id, spec, [RunTag(names.TAG_TRIAL_STATE, TrialState.PRUNED.name)], metrics)


def log_model(folder: str | Path, run_id: str) -> None:
    """A trial's saved MLflow model into its run (names.ARTIFACT_MODEL_DIR); the local copy is removed."""
    mlflow.MlflowClient().log_artifacts(run_id, str(folder), names.ARTIFACT_MODEL_DIR)
    shutil.rmtree(Path(folder).parent, ignore_errors=True)


def write_per_class(rows: list[dict], path: Path) -> None:
    """measure.per_class_rows as CSV: a share with nothing to divide by is an empty cell."""
    cells = [{k: "" if isinstance(v, float) and not np.isfinite(v) else v for k, v in row.items()} for row in rows]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(cells)


def plot_learning_curves(history, path: Path, title: str = "", top5: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(e["epoch"]) + 1 for e in history.epochs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.2)  # tight_layout draws twice
    for name in ("loss", "val_loss"):
        loss_ax.plot(epochs, history.series(name), marker="o", label=name)
    for name in ("top1", "val_top1", "val_top5") if top5 else ("top1", "val_top1"):
        acc_ax.plot(epochs, history.series(name), marker="o", label=name)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
