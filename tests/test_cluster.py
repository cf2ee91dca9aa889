"""Sweeps across processes and machines: a real PostgreSQL (127.0.0.1:5432 here, or
$BENCHMARK_TEST_POSTGRES) and a real `mlflow server`. Each test gets its own fresh databases.

Its storage URLs carry a password (the local server trusts every login, so any password works):
it must never show up in output, MLflow params or tags, or Optuna's records."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import requests
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback

from helpers import free_port, pair_study
from helpers import mlflow_server as start_mlflow_server

from benchmark import mlflow_store

pytestmark = pytest.mark.slow  # real PostgreSQL databases, sweeps in several processes, an mlflow server

REPO = Path(__file__).resolve().parent.parent
from conftest import SECRET  # noqa: E402  (the password in the new_database fixture's URLs)


def sweep_env(store: Path, storage: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "BENCHMARK_STORE": str(store), "BENCHMARK_OPTUNA_STORAGE": storage}
    env.pop("MLFLOW_TRACKING_URI", None)
    return {**env, **extra}


SWEEP = [sys.executable, "-m", "benchmark", "sweep", "--experiment", "ci", "--backbone", "vgg16",
         "--strategy", "frozen", "--quiet"]


def trial_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'trial'", output_format="list")


def assert_no_secret_recorded(study: optuna.Study, outputs: list[str]) -> None:
    for out in outputs:
        assert SECRET not in out
    assert "postgres:***@127.0.0.1" in outputs[0]  # the URL is shown, redacted
    for run in mlflow.search_runs(search_all_experiments=True, output_format="list"):
        recorded = [*run.data.params.values(), *run.data.tags.values()]
        assert not any(SECRET in value for value in recorded), run.info.run_id
    for trial in study.trials:
        assert SECRET not in repr(trial.user_attrs) + repr(trial.system_attrs)
    assert SECRET not in repr(study.user_attrs)


def test_two_workers_share_one_study_on_postgres(store, new_database):
    storage = new_database()
    env = sweep_env(store, storage)
    workers = [subprocess.Popen(SWEEP + ["--trials", "4"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    study = pair_study(storage, "vgg16", "frozen")
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(len(numbers)))  # unique, none lost
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(finished) <= 5  # a worker may finish the trial it had started when the target was reached
    assert len({t.user_attrs["worker"]["pid"] for t in study.trials}) == 2  # both worked
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    assert sorted(int(r.data.tags["trial_number"]) for r in trial_runs()) == sorted(numbers)
    assert_no_secret_recorded(study, outputs)
    assert dashboard_studies(storage) == {study.study_name: len(numbers)}  # what the compose stack's dashboard shows


def dashboard_studies(storage: str) -> dict[str, int]:
    """optuna-dashboard on the storage, as compose runs it: study names and trial counts from its API."""
    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"), "--port", str(port), "--quiet",
                                  storage], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        api = f"http://127.0.0.1:{port}/api/studies"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = requests.get(api, timeout=5).json()["study_summaries"]
                break
            except requests.RequestException:
                assert dashboard.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.5)
        return {s["study_name"]: len(requests.get(f"{api}/{s['study_id']}", timeout=10).json()["trials"]) for s in studies}
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)


def test_a_worker_killed_on_another_machine_is_failed_by_the_heartbeat_and_retried(store, new_database):
    """Worker A runs in its own UTS namespace with another host name, so to worker B its pid means
    nothing: only the heartbeat can tell that A died."""
    storage = new_database()
    env = sweep_env(store, storage, BENCHMARK_HEARTBEAT_GRACE_S="8")
    elsewhere = ["unshare", "--map-root-user", "--uts", "sh", "-c", 'hostname other-machine && exec "$@"', "sh"]
    worker_a = subprocess.Popen(elsewhere + SWEEP + ["--trials", "2"], env=env, cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while "RUNNING" not in trial_states(storage):
        assert worker_a.poll() is None and time.monotonic() < deadline, "worker A ended before its first trial"
        time.sleep(0.5)
    time.sleep(2)  # into its training
    os.kill(worker_a.pid, signal.SIGKILL)
    worker_a.wait()

    worker_b = subprocess.run(SWEEP + ["--trials", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert worker_b.returncode == 0, worker_b.stdout + worker_b.stderr

    study = pair_study(storage, "vgg16", "frozen")
    killed = study.trials[0]
    assert killed.state.name == "FAIL" and killed.user_attrs["worker"]["host"] == "other-machine"
    retries = [t for t in study.trials if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params  # RetryHeartbeatStaleTrialCallback
    assert retries[0].state.name in ("COMPLETE", "PRUNED")
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 2
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = {int(r.data.tags["trial_number"]): r for r in trial_runs()}
    assert runs[killed.number].info.status == "KILLED" and runs[killed.number].data.tags["trial_state"] == "FAIL"
    assert "RUNNING" not in {r.info.status for r in runs.values()}


def trial_states(storage: str) -> list[str]:
    try:
        return [t.state.name for t in pair_study(storage, "vgg16", "frozen").trials]
    except KeyError:  # no study yet
        return []


@pytest.fixture
def mlflow_server(new_database, tmp_path):
    """`mlflow server` configured as docker/compose.yaml configures it, on a PostgreSQL backend."""
    settings = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]["mlflow"]["environment"]
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": new_database(), "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "served"),
           "MLFLOW_SERVER_ALLOWED_HOSTS": settings["MLFLOW_SERVER_ALLOWED_HOSTS"]}
    env.pop("MLFLOW_TRACKING_URI", None)
    with start_mlflow_server(tmp_path / "server.log", "--serve-artifacts", env=env) as url:
        yield url


def test_runs_land_on_an_mlflow_server_backed_by_postgres(store, new_database, mlflow_server, tmp_path):
    storage = new_database()
    env = sweep_env(store, storage, MLFLOW_TRACKING_URI=mlflow_server)
    out = subprocess.run(SWEEP + ["--trials", "2"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (store / "mlflow.db").exists()  # nothing went to the local store

    mlflow.set_tracking_uri(mlflow_server)
    study = pair_study(storage, "vgg16", "frozen")
    runs = trial_runs()
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == [t.number for t in study.trials]
    best = max(runs, key=lambda r: r.data.metrics.get("best_val_top1", -1))
    assert best.data.metrics["best_val_top1"] == pytest.approx(study.best_value)
    assert best.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
    spec = mlflow.artifacts.download_artifacts(run_id=best.info.run_id, artifact_path="trial_spec.json", dst_path=str(tmp_path))
    assert '"experiment": "ci"' in Path(spec).read_text()
    assert_no_secret_recorded(study, [out.stdout + out.stderr])
    # the compose file's allowed hosts: other containers reach it as mlflow:5000, a foreign Host header is refused
    api = f"{mlflow_server}/api/2.0/mlflow/experiments/search?max_results=1"  # /health answers every Host
    assert requests.get(api, headers={"Host": "mlflow:5000"}, timeout=5).status_code == 200
    assert requests.get(api, headers={"Host": "attacker.example"}, timeout=5).status_code == 403
