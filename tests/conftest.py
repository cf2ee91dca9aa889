import fcntl
import os
import tempfile
import uuid
from pathlib import Path

import pytest
from helpers import CI_SWEEPS, run_folder

# The suite answers the same whatever the caller's shell exports (ML shells often set TF_CPP_MIN_LOG_LEVEL,
# KERAS_BACKEND, MLFLOW_TRACKING_URI...): before anything imports Keras, every variable of the package, MLflow,
# Keras and TensorFlow's logging goes; a test that needs one sets it itself. Kept: the suite's own inputs (CI,
# CIFAR100_SAMPLE_DIR, BENCHMARK_TEST_POSTGRES) and CUDA_VISIBLE_DEVICES, which picks the hardware it runs on.
for name in [name for name in os.environ if name.startswith(("BENCHMARK_", "MLFLOW_", "KERAS_", "TF_CPP_"))]:
    if name != "BENCHMARK_TEST_POSTGRES":
        del os.environ[name]
os.environ["KERAS_BACKEND"] = "tensorflow"  # whatever ~/.keras/keras.json says; the JAX tests set their own
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # the CLI's default; unset, importing Keras (JAX) sets 1 for later processes

REPO = Path(__file__).resolve().parent.parent
# Tests (and the processes they start) never write the user's ~/.cache; tests about the cache set their own.
os.environ["BENCHMARK_CACHE_DIR"] = tempfile.mkdtemp(prefix="benchmark-test-feature-cache-")
DEFAULT_CIFAR100_SAMPLE = REPO / "benchmark" / "cifar100_sample" / "cifar-100-python"  # ships with the package


STORE_OF_A_REAL_SWEEP = {"ci_store", "in_ci_store", "ci_store_copy"}


def pytest_collection_modifyitems(items):
    """The fast tier (`-m "not slow"`) leaves out every test that reads the shared ci_store: the
    first of them pays for a real sweep of two backbones. Other slow tests carry the mark themselves."""
    for item in items:
        if STORE_OF_A_REAL_SWEEP & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)



ADMIN_URL = os.environ.get("BENCHMARK_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET = "pg-s3cret-7431"


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    import psycopg

    try:
        with psycopg.connect(ADMIN_URL, connect_timeout=3) as connection:
            connection.execute("select 1")
    except psycopg.Error as e:
        message = f"PostgreSQL not reachable at {ADMIN_URL} ({e}); start it or set BENCHMARK_TEST_POSTGRES"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI a missing service is a broken setup, never a skip
        pytest.skip(message)
    return ADMIN_URL


@pytest.fixture
def new_database(postgres_admin):
    """Creates fresh databases; returns their URLs with a password in them. Dropped afterwards."""
    import psycopg

    created = []

    def create() -> str:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(postgres_admin, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        created.append(name)
        return f"postgresql://postgres:{SECRET}@127.0.0.1:5432/{name}"

    yield create
    with psycopg.connect(postgres_admin, autocommit=True) as connection:
        for name in created:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def cifar_sample_dir() -> Path:
    """The real CIFAR-100 slice (official layout); CIFAR100_SAMPLE_DIR overrides where it lives."""
    path = Path(os.environ.get("CIFAR100_SAMPLE_DIR", DEFAULT_CIFAR100_SAMPLE))
    if not all((path / name).is_file() for name in ("train", "test", "meta")):
        message = f"CIFAR-100 sample not found at {path} (needs train, test, meta); set CIFAR100_SAMPLE_DIR"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI a missing data set is a broken setup, never a skip
        pytest.skip(message)
    return path


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh local MLflow + Optuna store for one test (what ./mlruns is for a user)."""
    path = tmp_path / "mlruns"
    monkeypatch.setenv("BENCHMARK_STORE", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BENCHMARK_OPTUNA_STORAGE", raising=False)
    return path


@pytest.fixture(scope="session")
def ci_store(tmp_path_factory):
    """A store filled by a real `ci` sweep of two backbones (CI_SWEEPS; trials in-process to save
    the spawns), shared read-only by the leaderboard and check tests: made once for the whole run,
    by the first test process that needs it (the others wait for it and read the same folder)."""
    from benchmark import sweep
    from benchmark.spec import load_experiment

    shared = run_folder(tmp_path_factory)
    path, done = shared / "ci-store" / "mlruns", shared / "ci-store.done"
    with open(shared / "ci-store.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            fill_ci_store(path, sweep, load_experiment)
            done.touch()
    return path


def fill_ci_store(path: Path, sweep, load_experiment) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BENCHMARK_STORE", str(path))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.delenv("BENCHMARK_OPTUNA_STORAGE", raising=False)
        experiment = load_experiment("ci")
        search = experiment.search.model_copy(update={"trials_per_process": 0})
        experiment = experiment.model_copy(update={"search": search})
        for (backbone, strategy), trials in CI_SWEEPS.items():
            sweep.run_sweep(experiment, backbone, strategy=strategy, trials=trials, verbose=0, say=lambda _: None)


@pytest.fixture
def in_ci_store(ci_store, monkeypatch):
    """Point this test at the shared ci_store (read it; copy it before writing)."""
    import mlflow

    from benchmark import mlflow_store

    monkeypatch.setenv("BENCHMARK_STORE", str(ci_store))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BENCHMARK_OPTUNA_STORAGE", raising=False)
    mlflow.set_tracking_uri(mlflow_store.local_uri())
    return ci_store


@pytest.fixture
def ci_store_copy(ci_store, tmp_path, monkeypatch):
    """A private copy of the ci_store for a test that writes: its artifacts too (the runs' and the
    experiments' artifact URIs point into the copy), so nothing a test logs lands in the shared store
    while other test processes read it."""
    import shutil

    import mlflow

    from benchmark import mlflow_store

    copy = tmp_path / "ci-store-copy"
    shutil.copytree(ci_store, copy)
    point_artifacts_at(copy / "mlflow.db", str(ci_store), str(copy))
    monkeypatch.setenv("BENCHMARK_STORE", str(copy))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BENCHMARK_OPTUNA_STORAGE", raising=False)
    mlflow.set_tracking_uri(mlflow_store.local_uri())
    return copy


def point_artifacts_at(database: Path, old: str, new: str) -> None:
    """Rewrites the artifact locations an MLflow SQLite store holds (absolute paths) from `old` to `new`."""
    import sqlite3

    with sqlite3.connect(database) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                              ("logged_models", "artifact_location")):
            if table in tables:
                db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (old, new))
    db.close()
