"""Optuna storage: where studies live, and how URLs are shown (never with a password)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback

from benchmark import mlflow_store
from benchmark.errors import BenchmarkError
from benchmark.redaction import redact

# We rely on the RDB heartbeat on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STORAGE_ENV = "BENCHMARK_OPTUNA_STORAGE"
GRACE_ENV = "BENCHMARK_HEARTBEAT_GRACE_S"  # a worker silent this long is dead: its trial is failed (and retried)
CONNECT_TIMEOUT_S = 5


def default_storage() -> str:
    """SQLite next to the MLflow store: a URL optuna.load_study and optuna-dashboard open,
    shared safely by a few processes on one machine (use PostgreSQL across machines)."""
    return os.environ.get(STORAGE_ENV) or f"sqlite:///{mlflow_store.store_dir() / 'optuna.db'}"


def heartbeat_grace_s() -> int:
    """60 s unless BENCHMARK_HEARTBEAT_GRACE_S says otherwise; each worker beats every quarter of it."""
    text = os.environ.get(GRACE_ENV, "60")
    if not text.isdigit() or int(text) < 4:
        raise BenchmarkError(f"{GRACE_ENV}={text!r} is not a whole number of seconds >= 4; unset it for the default 60")
    return int(text)


def open_storage(url: str, heartbeat: bool = True) -> optuna.storages.RDBStorage:
    """The study's storage. The sweep's process beats the heartbeat; trial processes do not."""
    if "://" not in url:
        raise BenchmarkError(
            f"Optuna storage '{redact(url)}' is not a URL; use sqlite:///path/optuna.db or "
            f"postgresql://user@host/db (or leave --storage/{STORAGE_ENV} unset for the local SQLite file)"
        )
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # seconds to wait for another process's write lock
    else:  # a server that is down or silent fails in seconds, not at the OS's TCP timeout
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    if url.startswith("sqlite:///"):
        mlflow_store.ensure_writable(Path(url.removeprefix("sqlite:///")).parent)
    grace_s = heartbeat_grace_s()
    beat = (
        dict(
            heartbeat_interval=max(1, grace_s // 4),
            grace_period=grace_s,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
        if heartbeat
        else {}
    )
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **beat)
    except Exception as e:  # SQLAlchemy raises many types for bad URLs and dead servers
        cause = redact(str(e).splitlines()[0], url)[:200]  # a --storage URL's secret, wherever the driver quotes it
        raise BenchmarkError(
            f"cannot open the Optuna storage {redact(url)} ({cause}); check the URL and that the database is up, "
            f"or leave --storage/{STORAGE_ENV} unset for the local SQLite file"
        ) from None
