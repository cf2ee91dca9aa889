"""MLflow tracking: where runs go, and the fixed names of every param, metric, tag and artifact.

The sweep, the parent run, the leaderboard, the report, confirm and the regression checks write
and read these names through the constants below; change them here only.
  params     the flattened TrialSpec: data.*, backbone.*, strategy.*, head.*, training.* (+ experiment)
  metrics    per epoch (step = epoch, counted from 1 like best_epoch and Keras's log): EPOCH_METRICS
             once per run: FINAL_METRICS (accuracies are fractions in [0, 1])
             on a study's parent run: PROGRESS_METRICS, COMPUTE_METRIC, best_<param>
  tags       TAGS, the TAG_* names, plus versions.<package>; TAG_ROLE takes a ROLE_* value
  artifacts  the ARTIFACT_* names
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow
import numpy as np
from mlflow.entities import RunTag

from benchmark.errors import BenchmarkError
from benchmark.redaction import redact
from benchmark.spec import TrialSpec

EPOCH_METRICS = ("loss", "top1", "top5", "val_loss", "val_top1", "val_top5", "learning_rate")
OBJECTIVE = "best_val_top1"  # what a sweep maximises
FINAL_METRICS = (
    OBJECTIVE,  # validation top-1 at the best epoch: the sweep's objective
    "best_val_top5",
    "best_epoch",
    "last_val_top1",
    "last_val_top5",
    "test_top1",  # measured on the model of the best validation epoch
    "test_top5",
    "params_total",
    "params_trainable",
    "model_size_mb",  # the saved .keras file
    "infer_images_per_sec",
    "train_images_per_sec",
    "train_s",  # training's wall time: every phase, validation included (not the feature pass)
    "wall_time_s",
    "epochs_run",
    "backbone_depth",
    "features_s",  # computing or reading cached backbone features (0 when the trial does not use them)
)
# feature_cache: "hit", "miss" (computed and saved) or "off: <why>" (benchmark/features.py)
TAGS = ("backbone", "strategy", "experiment", "role", "git_commit", "device", "data_origin", "feature_cache")
TAG_ROLE, TAG_FEATURE_CACHE = TAGS[3], TAGS[7]
ROLE_RUN, ROLE_SWEEP, ROLE_TRIAL, ROLE_CONFIRM, ROLE_REPORT, ROLE_THROUGHPUT = (
    "run", "sweep", "trial", "confirm", "report", "throughput")
TAG_STUDY = "study_name"  # a study's parent run and each of its trials
TAG_TRIAL_NUMBER = "trial_number"
TAG_TRIAL_STATE = "trial_state"  # RUNNING, then Optuna's COMPLETE, PRUNED or FAIL
TAG_ERROR = "error"  # why a run failed
TAG_BEST_RUN = "best_run_id"  # on a parent run: its best trial's run
TAG_BEST_TRIAL = "best_trial_number"
TAG_BEST_MODEL_URI = "best_model_uri"  # on a parent run: runs:/<best trial's run>/model, for mlflow.keras.load_model
TAG_BEST_MODEL_TRIAL = "best_model_trial"
TAG_RECIPE = "recipe_fingerprint"  # what the leaderboard matches a spec by (benchmark/study_identity.py)
TAG_SPEC_FINGERPRINT, TAG_DATA_FINGERPRINT, TAG_WEIGHTS_FINGERPRINT = "spec_fingerprint", "data_fingerprint", "weights_fingerprint"
TAG_CONFIRM_OF, TAG_CONFIRM_SEED, TAG_CONFIRM_RESPLIT = "confirm_of", "confirm_seed", "confirm_resplit"
TAG_UPDATED = "updated"  # when a report run was last rewritten
TAG_PREFIX_CACHE = "prefix_cache"  # "hit"/"miss" (below <layer>) or "off: <why>" (benchmark/prefix.py)
TAG_MODEL = "model"  # whether the run's artifacts hold its model (a sweep keeps its best search.keep_models)
MODEL_KEPT, MODEL_NOT_KEPT, MODEL_DROPPED = "kept", "not kept", "deleted: no longer among the study's best"
PROGRESS_METRICS = {"complete": "trials_complete", "pruned": "trials_pruned", "failed": "trials_failed"}
COMPUTE_METRIC = "trials_compute_s"  # all of a study's trials, wall time
ARTIFACT_MODEL_DIR = "model"  # an MLflow Keras model, kept by a trial among its study's best search.keep_models
ARTIFACT_MODEL = f"{ARTIFACT_MODEL_DIR}/data/model.keras"  # its Keras file
ARTIFACT_CURVES = "learning_curves.png"  # runs that keep their model
ARTIFACT_PREDICTIONS = "test_predictions.npz"  # labels and top-5 predictions per test image
ARTIFACT_HISTORY = "history.json"  # every epoch's logs
ARTIFACT_SPEC = "trial_spec.json"  # the resolved spec, to reload the trial's data
ARTIFACT_PLOTS = "plots"  # a report run's folder of PNGs
EXPERIMENT_PREFIX = "benchmark/"
# The experiment kind MLflow 3's UI knows for model training. The installed UI (3.17) still opens
# an experiment on its GenAI overview whatever this says (it follows the URL's workflowType, see
# TRAINING_VIEW: tested in Chromium); the tag tells MLflow's own tools what kind of experiment it is.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
STORE_ENV = "BENCHMARK_STORE"


def store_dir() -> Path:
    """The local store (SQLite database and artifacts): ./mlruns unless BENCHMARK_STORE says otherwise."""
    return Path(os.environ.get(STORE_ENV, "mlruns")).resolve()


def local_uri() -> str:
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


_exported_uri: str | None = None  # what point_mlflow_at() set (mlflow.set_tracking_uri exports it to the env)


def tracking_uri() -> str:
    """The user's MLFLOW_TRACKING_URI, else our local store. A value we exported ourselves is not
    the user's: BENCHMARK_STORE changing in-process must still move the store."""
    exported = os.environ.get("MLFLOW_TRACKING_URI")
    return exported if exported and exported != _exported_uri else local_uri()


def point_mlflow_at(uri: str) -> None:
    global _exported_uri
    users = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if users != uri:  # not the user's own setting: remember that we exported it
        _exported_uri = os.environ.get("MLFLOW_TRACKING_URI")


def display_uri() -> str:
    """The tracking URI as it may be shown or logged: never with a password."""
    return redact(tracking_uri())


def uses_local_store() -> bool:
    return tracking_uri() == local_uri()


# ---------------------------------------------------------------- links into the MLflow UI

MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
# MLflow 3's UI opens in its GenAI mode (traces, tokens) unless the URL asks for model training.
TRAINING_VIEW = "workflowType=machine_learning"


def ui_base() -> str:
    """The UI of the tracking server (without credentials: the browser asks), or of `mlflow ui`."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return MLFLOW_UI_DEFAULT
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path.rstrip("/"), "", ""))


def ui_command() -> str:
    """How to open the UI: start `mlflow ui` over the local store, or nothing to start."""
    return f"mlflow ui --backend-store-uri {local_uri()}" if uses_local_store() else ""


def experiment_url(experiment_id: str) -> str:
    """The experiment's runs table."""
    return f"{ui_base()}/#/experiments/{experiment_id}?{TRAINING_VIEW}"


def compare_url(experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare page for these runs: every param and metric side by side, and the
    parallel-coordinates, scatter and contour plots over them."""
    def as_list(values: list[str]) -> str:
        return urllib.parse.quote(json.dumps(values, separators=(",", ":")))

    return f"{ui_base()}/#/compare-runs?runs={as_list(run_ids)}&experiments={as_list([experiment_id])}&{TRAINING_VIEW}"


REACH_TIMEOUT_S = 5


def check_reachable(uri: str) -> None:
    """A tracking server that is down or silent fails here in seconds: MLflow's own client would
    retry each call for minutes. Any HTTP answer (even 401 or 404) means a server is there."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=REACH_TIMEOUT_S)
    except requests.RequestException as e:
        reason = "no answer" if isinstance(e, requests.Timeout) else "connection failed"
        raise BenchmarkError(
            f"the MLflow tracking server {redact(uri)} is unreachable ({reason} within {REACH_TIMEOUT_S} s); "
            f"start it or fix MLFLOW_TRACKING_URI (unset it to use the local store {store_dir()})"
        ) from None


def check_not_a_file_store(uri: str) -> None:
    if urllib.parse.urlsplit(uri).scheme in ("", "file"):
        raise BenchmarkError(
            f"MLFLOW_TRACKING_URI {redact(uri)} is a file store, which MLflow 3 no longer opens; unset it to use the "
            f"local SQLite store ({STORE_ENV}=DIR picks its folder) or set sqlite:///path/mlflow.db "
            f"(`mlflow migrate-filestore` converts an old file store)"
        )


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_database(database: Path) -> None:
    """A SQLite file this MLflow can use as its store (read only, nothing changed), or a one-line
    error naming it and the fix: damaged, not MLflow's, or of another MLflow schema version.
    A store that another process is creating looks like some of these for a few seconds (its
    tables before their schema version, then each version in turn): wait for its lock, look again."""
    problem = database_problem(database)
    lock = database.parent / ".init.lock"
    if problem and lock.exists():
        with open(lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)  # store_lock's holder has finished creating it
            problem = database_problem(database)
            fcntl.flock(handle, fcntl.LOCK_UN)
    if problem:
        raise BenchmarkError(problem)


def database_problem(database: Path) -> str | None:
    if not database.is_file() or database.stat().st_size == 0:
        return None  # MLflow creates the tables
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            found = db.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
    except sqlite3.DatabaseError as e:
        return (f"the MLflow database {database} is damaged ({e}); move it aside to start a new store there, "
                f"or restore it from a backup")
    if found is None:
        if tables:
            return f"{database} is not an MLflow database (its tables: {', '.join(sorted(tables)[:5])}); set {STORE_ENV} to another folder"
        return None
    version, (head, known) = found[0], schema_versions()
    if head is None or version == head:
        return None
    if version in known:
        return (f"the MLflow database {database} has schema version {version}; MLflow {mlflow.__version__} needs {head}: "
                f"back it up, then run `mlflow db upgrade sqlite:///{database}`")
    return (f"the MLflow database {database} was written by a newer MLflow (schema version {version}, unknown to MLflow "
            f"{mlflow.__version__}); upgrade MLflow (`pip install -U mlflow`) or set {STORE_ENV} to another folder")


def schema_versions() -> tuple[str | None, set[str]]:
    """(the schema revision this MLflow writes, every revision it knows), read from the text of its
    alembic migrations (importing alembic's script machinery costs seconds per command); (None,
    set()) where they cannot be read: then MLflow's own check applies."""
    folder = Path(mlflow.__file__).parent / "store" / "db_migrations" / "versions"
    revisions, parents = set(), set()
    for script in folder.glob("*.py"):
        text = script.read_text()
        revision = re.search(r"^revision\s*=\s*['\"](\w+)['\"]", text, re.MULTILINE)
        down = re.search(r"^down_revision\s*=\s*(.+)$", text, re.MULTILINE)
        if revision:
            revisions.add(revision.group(1))
            parents.update(re.findall(r"['\"](\w+)['\"]", down.group(1)) if down else [])
    heads = revisions - parents
    return (next(iter(heads)) if len(heads) == 1 else None), revisions


def check_store(uri: str) -> None:
    """What can be known about a store before MLflow touches it: fail in one line, change nothing."""
    check_not_a_file_store(uri)
    check_reachable(uri)
    database = sqlite_path(uri)
    if database is not None:
        for part in database.parents:
            if part.exists() and not part.is_dir():
                raise BenchmarkError(f"the MLflow store {database.parent} is under {part}, a file, not a folder; "
                                     f"set {STORE_ENV}=DIR or MLFLOW_TRACKING_URI to a store elsewhere")
        check_database(database)


def configure() -> str:
    """Point MLflow at our store, failing early (before anything trains) if it cannot be written."""
    uri = tracking_uri()
    check_store(uri)
    point_mlflow_at(uri)
    if uses_local_store():
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial MLflow database tables..."
        with store_lock():
            mlflow.search_experiments(max_results=1)  # creates the database, once, under the lock
    return uri


def configure_for_reading() -> str:
    """Point MLflow at our store without creating one: reading an empty place is an error."""
    uri = tracking_uri()
    check_store(uri)
    point_mlflow_at(uri)
    if uses_local_store() and not (store_dir() / "mlflow.db").is_file():
        raise BenchmarkError(
            f"no MLflow store at {store_dir()} (no mlflow.db); run a sweep first, or set {STORE_ENV}=DIR or "
            f"MLFLOW_TRACKING_URI to the store that holds the results"
        )
    return uri


@contextmanager
def store_lock() -> Iterator[None]:
    """Serialises creating the SQLite stores: two processes migrating one new database collide."""
    ensure_writable(store_dir())
    with open(store_dir() / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_writable(directory: Path) -> None:
    fix = f"fix its permissions, or set {STORE_ENV}=/writable/dir or MLFLOW_TRACKING_URI"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory):
            pass
    except OSError as e:
        raise BenchmarkError(f"the MLflow store {directory} is not writable ({e.strerror}); {fix}") from None
    database = directory / "mlflow.db"
    if database.exists() and not os.access(database, os.W_OK):
        raise BenchmarkError(f"the MLflow database {database} is read-only; {fix}")


def experiment_id(experiment: str) -> str:
    name = EXPERIMENT_PREFIX + experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        mark_as_model_training(found)
        return found.experiment_id
    artifacts = (store_dir() / "artifacts").as_uri() if uses_local_store() else None
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts, tags=EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException as e:  # another worker created it a moment ago
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise BenchmarkError(f"cannot create the MLflow experiment {name} ({str(e).splitlines()[0]})") from None
        return found.experiment_id


def mark_as_model_training(experiment) -> None:
    """Tags an experiment made before the kind tag existed (or by hand) with EXPERIMENT_KIND."""
    for key, value in EXPERIMENT_KIND.items():
        if key not in experiment.tags:  # a kind the user chose stays
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)


def tags_filter(**tags: str) -> str:
    """An mlflow.search_runs filter on tags: tags_filter(role="sweep", study_name=name)."""
    return " and ".join(f"tags.{key} = '{value}'" for key, value in tags.items())


def trial_tags(spec: TrialSpec, role: str, data_origin: str) -> dict[str, str]:
    from benchmark import runtime  # imports Keras

    values = (spec.backbone.name, spec.strategy_name, spec.experiment, role, runtime.git_commit(),
              runtime.device_description(), data_origin)
    tags = dict(zip(TAGS, values))  # feature_cache, the last of TAGS, comes with the trial's result
    tags.update({f"versions.{k}": v for k, v in runtime.package_versions().items()})
    return tags


@contextmanager
def open_run(spec: TrialSpec, role: str, data_origin: str, run_name: str, extra_tags: dict | None = None) -> Iterator:
    """A run (nested under the active one, if any) with the spec as params and the standard tags.
    An exception marks it FAILED with the error recorded, and propagates."""
    tags = {**trial_tags(spec, role, data_origin), **(extra_tags or {})}
    with mlflow.start_run(
        experiment_id=experiment_id(spec.experiment), run_name=run_name, nested=mlflow.active_run() is not None, tags=tags
    ) as run:
        mlflow.log_params(spec.params())
        try:
            yield run
        except BaseException as e:
            mlflow.set_tag(TAG_ERROR, redact(f"{type(e).__name__}: {e}")[:5000])
            raise


class EpochLogger:
    """Logs the per-epoch curves to a run as training goes (visible live in the UI): an epoch's
    metrics are written when it ends, except that epochs shorter than FLUSH_S are gathered into
    one write every FLUSH_S (a head on cached features runs tens of epochs a second; one store
    write each would cost more than the epochs), and whatever is left when training ends or
    fails (a context manager). By run id: trial processes log into a run their parent process
    owns. `.callback()` is the Keras callback."""

    FLUSH_S = 2.0

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.seconds = 0.0  # time spent logging, for the bookkeeping benchmark
        self.pending: list = []
        self.flushed = time.perf_counter()

    def __call__(self, epoch: int, logs: dict | None = None) -> None:
        now_ms = int(time.time() * 1000)
        logs = logs or {}
        self.pending += [mlflow.entities.Metric(k, float(logs[k]), now_ms, epoch + 1)  # Keras passes 0-based epochs
                         for k in EPOCH_METRICS if k in logs and np.isfinite(float(logs[k]))]
        if time.perf_counter() - self.flushed >= self.FLUSH_S:
            self.flush()

    def __enter__(self) -> EpochLogger:
        return self

    def __exit__(self, *_) -> None:
        self.flush()

    def flush(self, logs: dict | None = None) -> None:
        start = time.perf_counter()
        if self.pending:
            mlflow.MlflowClient().log_batch(self.run_id, metrics=self.pending)
            self.pending = []
        self.flushed = time.perf_counter()
        self.seconds += self.flushed - start

    def callback(self):
        import keras  # here, not at the top: reading the store (leaderboard, check) should not load TensorFlow

        return keras.callbacks.LambdaCallback(on_epoch_end=self, on_train_end=self.flush)


def log_result(result, run_id: str) -> None:
    """Final metrics and artifacts of a finished trial (benchmark.trial.TrialResult). By run id, not
    the active run: trial processes log into a run their parent process owns."""
    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(k, v, now, 0) for k, v in result.metrics.items() if np.isfinite(v)]
    tags = [RunTag(k, v) for k, v in result.tags.items()]
    client.log_batch(run_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if result.model_path is not None:  # a picture for the runs people open; every run has its metrics' charts
            plot_learning_curves(result.history, tmp / ARTIFACT_CURVES, title=result.title)
        np.savez_compressed(tmp / ARTIFACT_PREDICTIONS, labels=result.test_labels, top5=result.test_predictions)
        (tmp / ARTIFACT_HISTORY).write_text(json.dumps(result.history.epochs, indent=1))
        (tmp / ARTIFACT_SPEC).write_text(result.spec.model_dump_json(indent=1))  # reports reload its data
        client.log_artifacts(run_id, str(tmp))


def log_model(folder: str | Path, run_id: str) -> None:
    """A trial's saved MLflow model into its run (ARTIFACT_MODEL_DIR); the local copy is removed."""
    mlflow.MlflowClient().log_artifacts(run_id, str(folder), ARTIFACT_MODEL_DIR)
    shutil.rmtree(Path(folder).parent, ignore_errors=True)


def plot_learning_curves(history, path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(e["epoch"]) + 1 for e in history.epochs]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.2)  # tight_layout draws twice
    for name in ("loss", "val_loss"):
        loss_ax.plot(epochs, history.series(name), marker="o", label=name)
    for name in ("top1", "val_top1", "val_top5"):
        acc_ax.plot(epochs, history.series(name), marker="o", label=name)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
