"""The MLflow store: where runs go (BENCHMARK_STORE's local SQLite store, or the user's
MLFLOW_TRACKING_URI), links into its UI, and every check that fails in one line, changing nothing,
before MLflow touches a store that is damaged, foreign, unreachable or not writable. Creating a
local store is serialised by a file lock. Also each experiment's MLflow id (created on first use).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sqlite3
import tempfile
import urllib.parse
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import mlflow

from benchmark import names
from benchmark.errors import BenchmarkError
from benchmark.redaction import redact

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
    """The experiment's runs table, in the view every sweep writes (benchmark/mlflow_view.py). The
    link names the runs tab: from the experiment's bare address the UI redirects to it and, on the
    way, drops the shared view (MLflow 3.17, tested in Chromium)."""
    return f"{ui_base()}/#/experiments/{experiment_id}/runs?viewStateShareKey={names.SHARED_VIEW_KEY}&{TRAINING_VIEW}"


def run_url(experiment_id: str, run_id: str) -> str:
    """One run's page: its params, metrics, charts and artifacts."""
    return f"{ui_base()}/#/experiments/{experiment_id}/runs/{run_id}"


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
    name = names.experiment_name(experiment)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        mark_as_model_training(found)
        return found.experiment_id
    artifacts = (store_dir() / "artifacts").as_uri() if uses_local_store() else None
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts, tags=names.EXPERIMENT_KIND)
    except mlflow.exceptions.MlflowException as e:  # another worker created it a moment ago
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise BenchmarkError(f"cannot create the MLflow experiment {name} ({str(e).splitlines()[0]})") from None
        return found.experiment_id


def mark_as_model_training(experiment) -> None:
    """Tags an experiment made before the kind tag existed (or by hand) with names.EXPERIMENT_KIND."""
    for key, value in names.EXPERIMENT_KIND.items():
        if key not in experiment.tags:  # a kind the user chose stays
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
