"""The sweep: Optuna trials and MLflow child runs match one to one; failures, pruning, resume,
several processes, and the best model reloads."""

import errno
import functools
import re
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Callable

import mlflow
import numpy as np
import optuna
import pytest

from benchmark import mlflow_store, names, parent_run, registry, sweep
from benchmark.errors import BenchmarkError
from benchmark.spec import load_experiment

REPO = Path(__file__).resolve().parent.parent
from helpers import CI_SWEEPS, pair_study  # noqa: E402  (what the shared ci_store fixture ran)


def ci(**search):
    experiment = load_experiment("ci")
    if search:
        experiment = experiment.model_copy(update={"search": experiment.search.model_copy(update=search)})
    return experiment


def fixed_learning_rates(by_trial: dict[int, float], default: float):
    """A stand-in for sweep.suggest that still records the value through Optuna."""

    def suggest(trial, spec, space):
        value = by_trial.get(trial.number, default)
        return {"learning_rate": trial.suggest_float("learning_rate", value, value)}

    return suggest


def child_runs(result: sweep.SweepResult):
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
        output_format="list",
    )
    return {int(r.data.tags["trial_number"]): r for r in runs}


def assert_optuna_matches_mlflow(result: sweep.SweepResult):
    children = child_runs(result)
    trials = {t.number: t for t in result.study.trials}
    assert sorted(children) == sorted(trials), "one child run per trial, same numbers"
    for number, trial in trials.items():
        run = children[number]
        assert run.data.tags["trial_state"] == trial.state.name
        assert run.info.run_id == trial.user_attrs["mlflow_run_id"]
        expected_status = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}[trial.state.name]
        assert run.info.status == expected_status
        if trial.state.name == "COMPLETE":
            assert run.data.metrics["best_val_top1"] == pytest.approx(trial.value)
            assert float(run.data.params["training.learning_rate"]) == pytest.approx(trial.params["learning_rate"])


@pytest.mark.slow
def test_ci_sweeps_track_every_trial_and_the_best_model_reloads(in_ci_store):
    """On the shared store of real ci sweeps (conftest.ci_store: two backbones)."""
    for (backbone, strategy), trials in CI_SWEEPS.items():
        study = pair_study(sweep.default_storage(), backbone, strategy)
        name = study.study_name
        parents = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                     filter_string=f"tags.role = 'sweep' and tags.study_name = '{name}'")
        assert len(parents) == 1
        result = sweep.SweepResult(study=study, parent_run_id=parents[0].info.run_id, counts=parent_run.trial_counts(study))
        assert result.counts["complete"] + result.counts["pruned"] == trials
        assert_optuna_matches_mlflow(result)

        parent = mlflow.get_run(result.parent_run_id)
        best = result.best_trial
        assert parent.data.tags["best_trial_number"] == str(best.number)
        assert parent.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
        assert parent.data.metrics["best_val_top1"] == pytest.approx(best.value)
        assert parent.data.metrics["trials_complete"] == result.counts["complete"]
        assert parent.data.metrics["trials_pruned"] == result.counts["pruned"]

    registry.register_custom_layers()
    model = mlflow.keras.load_model(parent.data.tags["best_model_uri"])
    child = best.user_attrs["mlflow_run_id"]
    saved = np.load(mlflow.artifacts.download_artifacts(run_id=child, artifact_path="test_predictions.npz"))
    data = sweep.load_dataset(ci().resolve(backbone, strategy).data)
    predicted = np.argmax(model.predict(data.x_test, verbose=0), axis=1)
    assert (predicted == saved["top5"][:, 0]).mean() > 0.99


@pytest.mark.slow
def test_a_sweep_of_a_searched_depth_runs_its_trials_in_a_child_process(store):
    result = sweep.run_sweep(ci(pruner="none"), "vgg16", strategy="top", trials=1, verbose=0)
    assert result.counts["complete"] == 1
    assert_optuna_matches_mlflow(result)
    trial = result.study.trials[0]
    assert 0 <= trial.params["unfreeze"] <= 4
    run = child_runs(result)[0]
    assert run.data.params["strategy.unfreeze"] == str(trial.params["unfreeze"])
    head = 512 * 100 + 100  # VGG16's pooled features -> 100 logits
    assert (run.data.metrics["params_trainable"] > head) == (trial.params["unfreeze"] > 0)
    assert parent_run.trial_record(trial)["process_start_s"] > 0  # it ran in a spawned trial process


@pytest.mark.slow
def test_rerun_resumes_to_the_target_without_exceeding_it(store):
    in_process = ci(pruner="none", trials_per_process=0)  # the other sweep tests run trials in a child process
    first = sweep.run_sweep(in_process, "vgg16", strategy="frozen", trials=2, verbose=0)
    assert len(first.study.trials) == 2
    again = sweep.run_sweep(in_process, "vgg16", strategy="frozen", trials=3, verbose=0)
    assert len(again.study.trials) == 3 and again.parent_run_id == first.parent_run_id
    done = sweep.run_sweep(in_process, "vgg16", strategy="frozen", trials=3, verbose=0)
    assert len(done.study.trials) == 3
    assert_optuna_matches_mlflow(done)


def models_in_store(result: sweep.SweepResult) -> dict[int, list[str]]:
    """Trial number -> the Keras file under its run's model/ folder, if any, for every trial of the study."""
    client = mlflow.MlflowClient()
    return {number: [f.path for f in client.list_artifacts(run.info.run_id, f"{names.ARTIFACT_MODEL_DIR}/data")
                     if f.path.endswith(".keras")] for number, run in child_runs(result).items()}


@pytest.mark.slow
def test_only_the_best_trials_model_stays_in_the_artifact_store_also_after_a_rerun_finds_a_new_best(store, monkeypatch):
    monkeypatch.setattr(sweep, "suggest", fixed_learning_rates({0: 1e-7, 1: 1e-6, 2: 3e-3}, default=1e-7))
    experiment = ci(pruner="none", trials_per_process=0)
    first = sweep.run_sweep(experiment, "vgg16", strategy="frozen", trials=2, verbose=0)
    best = parent_run.best_with_model(first.study).number
    assert models_in_store(first) == {n: [names.ARTIFACT_MODEL] if n == best else [] for n in (0, 1)}

    again = sweep.run_sweep(experiment, "vgg16", strategy="frozen", trials=4, verbose=0)  # trial 2 learns: a new best
    assert again.study.best_trial.number == 2
    assert models_in_store(again) == {0: [], 1: [], 2: [names.ARTIFACT_MODEL], 3: []}
    tags = {n: run.data.tags[names.TAG_MODEL] for n, run in child_runs(again).items()}
    assert tags[2] == names.MODEL_KEPT and tags[3] == names.MODEL_NOT_KEPT
    assert tags[best] == names.MODEL_DROPPED  # it was kept, then deleted when trial 2 beat it
    assert mlflow.get_run(again.parent_run_id).data.tags[names.TAG_BEST_MODEL_TRIAL] == "2"
    assert mlflow.get_run(again.parent_run_id).data.tags[names.TAG_BEST_MODEL_URI] == \
        f"runs:/{child_runs(again)[2].info.run_id}/model"
    assert len(list(store.rglob("*.keras"))) == 1  # no other copy of any model anywhere in the store
    # What a trial that keeps no model leaves on disk: its history, predictions and spec (and its
    # metrics' curves in the store); one that kept its model, even for a while, a picture of them.
    for number, run in child_runs(again).items():
        folder = Path(run.info.artifact_uri.removeprefix("file://"))
        assert (folder / names.ARTIFACT_CURVES).exists() == (tags[number] != names.MODEL_NOT_KEPT)
        if tags[number] == names.MODEL_NOT_KEPT:
            assert {f.name for f in folder.iterdir()} == {names.ARTIFACT_HISTORY, names.ARTIFACT_PREDICTIONS,
                                                         names.ARTIFACT_PER_CLASS, names.ARTIFACT_SPEC}
            assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 1_000_000


@pytest.mark.slow
def test_a_study_keeps_the_models_of_its_best_keep_models_trials(store, monkeypatch):
    monkeypatch.setattr(sweep, "suggest", fixed_learning_rates({0: 1e-7, 1: 3e-3, 2: 1e-3, 3: 1e-7}, default=1e-7))
    result = sweep.run_sweep(ci(pruner="none", trials_per_process=0, keep_models=2), "vgg16", strategy="frozen",
                             trials=4, verbose=0)
    top_two = parent_run.ranking(result.study.trials)[:2]
    assert sorted(top_two) == [1, 2]
    assert {n for n, files in models_in_store(result).items() if files} == set(top_two)


@pytest.mark.slow
def test_a_nan_trial_fails_and_the_sweep_goes_on(store, monkeypatch):
    # Trial 1 gets a learning rate at which the logits overflow float32: the loss becomes inf/NaN.
    monkeypatch.setattr(sweep, "suggest", fixed_learning_rates({1: 1e35}, default=3e-3))
    result = sweep.run_sweep(ci(pruner="none"), "vgg16", strategy="frozen", trials=2, verbose=0)
    states = {t.number: t.state.name for t in result.study.trials}
    assert states == {0: "COMPLETE", 1: "FAIL", 2: "COMPLETE"}  # the failed trial is replaced
    assert_optuna_matches_mlflow(result)
    failed = child_runs(result)[1]
    assert "loss became" in failed.data.tags["error"]


@pytest.mark.slow
def test_the_pruner_prunes_a_trial_that_learns_nothing(store, monkeypatch):
    monkeypatch.setattr(sweep, "suggest", fixed_learning_rates({1: 1e-9}, default=3e-3))
    experiment = ci(pruner="median", startup_trials=1, pruner_warmup_epochs=0)
    result = sweep.run_sweep(experiment, "vgg16", strategy="frozen", trials=2, verbose=0)
    states = [t.state.name for t in result.study.trials]
    assert states == ["COMPLETE", "PRUNED"]
    assert_optuna_matches_mlflow(result)


@pytest.mark.slow
def test_the_real_sample_sweeps(store, cifar_sample_dir):
    result = sweep.run_sweep(ci(pruner="none"), "vgg16", strategy="frozen", trials=2, data_dir=cifar_sample_dir, verbose=0)
    assert result.counts["complete"] == 2
    assert_optuna_matches_mlflow(result)
    run = child_runs(result)[0]
    assert run.data.tags["data_origin"].startswith("dir:")
    assert run.data.params["data.source"] == "dir"


def sweep_command(store: Path, trials: int) -> tuple[list[str], dict[str, str]]:
    """`python -m benchmark sweep` of ci/vgg16/frozen as a user runs it, and an environment pointing at `store`."""
    env = {**os.environ, "BENCHMARK_STORE": str(store)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("BENCHMARK_OPTUNA_STORAGE", None)
    command = [sys.executable, "-m", "benchmark", "sweep", "--experiment", "ci", "--backbone", "vgg16",
               "--strategy", "frozen", "--trials", str(trials), "--quiet"]
    return command, env


@pytest.mark.slow
def test_two_processes_share_the_embedded_storage(store):
    command, env = sweep_command(store, trials=4)
    workers = [subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    assert not any("database is locked" in out for out in outputs), outputs
    study = pair_study(sweep.default_storage(), "vgg16", "frozen")
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert 4 <= len(finished) <= 5  # a worker may finish the trial it had started when the target was reached
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'trial'", output_format="list")
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == sorted(numbers)
    parents = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'sweep'", output_format="list")
    assert len(parents) == 1
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}


def write_trials_flat_out(trials: int) -> None:
    """One of several processes that open one fresh store at the same moment and record trials
    in Optuna and MLflow as fast as they can, through the sweep's own functions."""
    mlflow_store.configure()
    with mlflow_store.store_lock():
        storage = sweep.open_storage(sweep.default_storage())
    with mlflow_store.store_lock():
        study = optuna.create_study(study_name="contention", storage=storage, direction="maximize", load_if_exists=True)
    experiment_id = mlflow_store.experiment_id("contention")
    for _ in range(trials):
        trial = study.ask()
        with mlflow.start_run(experiment_id=experiment_id, tags={"trial_number": str(trial.number)}):
            value = trial.suggest_float("x", 0.0, 1.0)
            mlflow.log_metrics({"best_val_top1": value, "epochs_run": 1.0})
            trial.report(value, 0)
            study.tell(trial, value)


@pytest.mark.slow
def test_four_processes_racing_on_one_fresh_sqlite_store(store):
    """Far more write contention than real sweeps (whose trials take seconds): no "database is
    locked", no corruption, every trial once in Optuna and once in MLflow."""
    workers, trials = 4, 25
    code = f"import sys; sys.path.insert(0, 'tests'); import test_sweep; test_sweep.write_trials_flat_out({trials})"
    env = {**os.environ, "BENCHMARK_STORE": str(store)}
    processes = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(workers)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0] * workers, outputs
    assert not any("locked" in out for out in outputs), outputs
    for database in ("mlflow.db", "optuna.db"):
        with sqlite3.connect(store / database) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    numbers = [t.number for t in optuna.load_study(study_name="contention", storage=sweep.default_storage()).trials]
    assert sorted(numbers) == list(range(workers * trials))
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=1000)
    assert sorted(int(r.data.tags["trial_number"]) for r in runs) == list(range(workers * trials))
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_two_phase_search_never_samples_a_frozen_phase_two():
    experiment = ci()
    spec = experiment.resolve("vgg16", "top")
    spec = spec.model_copy(update={"strategy": spec.strategy.model_copy(update={"schedule": "two_phase", "head_epochs": 1})})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    space = experiment.search_space("vgg16")
    assert space.unfreeze.low == 0
    depths = [sweep.suggest(study.ask(), spec, space)["unfreeze"] for _ in range(30)]
    assert min(depths) == 1 and max(depths) <= space.unfreeze.high


def test_weight_decay_is_searched_on_a_log_scale_when_the_space_has_it():
    experiment = ci()
    spec = experiment.resolve("vgg16", "frozen")
    space = experiment.search_space("vgg16").model_validate(
        {**experiment.search_space("vgg16").model_dump(), "weight_decay": {"low": 0.01, "high": 100.0}})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    decays = [sweep.suggest(study.ask(), spec, space)["weight_decay"] for _ in range(40)]
    assert 0.01 <= min(decays) and max(decays) <= 100.0
    assert sum(d < 1.0 for d in decays) >= 10 and sum(d > 1.0 for d in decays) >= 10  # log scale: both decades sides
    assert spec.with_values(weight_decay=decays[0]).training.weight_decay == decays[0]
    assert "weight_decay" not in sweep.suggest(study.ask(), spec, experiment.search_space("vgg16"))


@pytest.mark.slow
def test_a_sigkilled_sweep_resumes_with_nothing_left_running(store):
    import signal

    import psutil

    command, env = sweep_command(store, trials=3)  # trials 1 and 2: two chances to be caught training
    command[command.index("ci")] = str(uncached_spec(store.parent, epochs=5))  # trials of seconds, not a fraction of one
    storage = f"sqlite:///{store / 'optuna.db'}"
    first = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_a_training_trial(first, storage)
    trial_processes = psutil.Process(first.pid).children(recursive=True)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    _, alive = psutil.wait_procs(trial_processes, timeout=5)  # killed by the kernel with it (PR_SET_PDEATHSIG)
    assert not alive, "the trial process outlived its sweep"
    killed = next(t.number for t in pair_study(storage, "vgg16", "frozen").trials
                  if t.state.name == "RUNNING")

    rerun = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "1 interrupted trial(s) marked FAIL" in rerun.stdout and "1 interrupted run(s) marked KILLED" in rerun.stdout
    study = pair_study(storage, "vgg16", "frozen")
    states = {t.number: t.state.name for t in study.trials}
    assert states[killed] == "FAIL" and states[0] in ("COMPLETE", "PRUNED")
    assert sum(s in ("COMPLETE", "PRUNED") for s in states.values()) == 3 and "RUNNING" not in states.values()
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'trial'", output_format="list")
    by_number = {int(r.data.tags["trial_number"]): r for r in runs}
    assert sorted(by_number) == sorted(states)  # every trial exactly once in MLflow
    assert all(r.info.status != "RUNNING" for r in runs)
    assert by_number[killed].info.status == "KILLED" and by_number[killed].data.tags["trial_state"] == "FAIL"


@functools.lru_cache(maxsize=None)
def opened_storage(url: str):
    """The storage, opened once for a test's polling: opening it (an engine, the schema check) costs
    more than a poll, and under load long enough to miss a trial's few seconds of training."""
    from benchmark.storage import open_storage

    return open_storage(url, heartbeat=False)


def trials_of(storage: str) -> list:
    """The ci vgg16/frozen study's trials, as a running sweep has stored them so far."""
    try:
        return pair_study(opened_storage(storage), "vgg16", "frozen").trials
    except Exception:  # the storage or study does not exist yet
        return []


def states_of(trials: list) -> list[str]:
    return [t.state.name for t in trials]


def wait_until(process: subprocess.Popen, storage: str, done: Callable[[list], bool]) -> list:
    """Until `done` holds for the study's trials, read from the storage while the sweep runs."""
    import time

    deadline = time.monotonic() + 300
    while not done(trials := trials_of(storage)):
        assert process.poll() is None and time.monotonic() < deadline, f"sweep ended early: {states_of(trials)}"
        time.sleep(0.05)
    return trials


def wait_for_a_training_trial(process: subprocess.Popen, storage: str) -> None:
    """Until a trial has finished and the next one has trained an epoch."""
    wait_until(process, storage, lambda trials: any(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
               and any(t.state.name == "RUNNING" and t.intermediate_values for t in trials))


SMALLER_DATA = {  # a third of ci's images: an uncached epoch of about a second
    "subset = { validation = 200, test = 300 }": "subset = { validation = 80, test = 100 }",
    "synthetic = { train_size = 1000, test_size = 300 }": "synthetic = { train_size = 400, test_size = 100 }",
}


def uncached_spec(folder: Path, epochs: int = 3) -> Path:
    """ci on fewer images with every epoch through the backbone (no feature cache): trials of a
    few seconds, or with 2000 epochs trials that cannot end by themselves within a test."""
    text = (REPO / "experiments" / "ci.toml").read_text()
    for old, new in {"\nepochs = 3\n": f'\nepochs = {epochs}\nfeature_cache = "off"\n', **SMALLER_DATA}.items():
        assert old in text, old
        text = text.replace(old, new)
    path = folder / f"ci-uncached-{epochs}.toml"
    path.write_text(text)
    return path


def fill_up(folder: Path) -> Path:
    """Writes zeros into `folder` until its file system is full."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(bytes(1 << 20))
                out.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return filler


@pytest.mark.slow
def test_a_full_artifact_disk_fails_that_trial_and_the_sweep_goes_on(store):
    """Artifacts on their own small file system (a tmpfs in the sweep's private mount namespace):
    full while trial 1 runs, freed once it has failed."""
    command, env = sweep_command(store, trials=2)
    command[command.index("ci")] = str(uncached_spec(store.parent))  # trial 1 lasts while the disk fills
    artifacts = store / "artifacts"
    artifacts.mkdir(parents=True)
    mount = f'mount -t tmpfs -o size=400m tmpfs "{artifacts}" && exec "$@"'
    sweep_process = subprocess.Popen(["unshare", "--map-root-user", "--mount", "sh", "-c", mount, "sh", *command],
                                     env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = f"sqlite:///{store / 'optuna.db'}"
    seen_by_sweep = Path(f"/proc/{sweep_process.pid}/root") / artifacts.relative_to("/")  # inside its namespace
    wait_until(sweep_process, storage, lambda trials: states_of(trials)[:1] == ["COMPLETE"])
    filler = fill_up(seen_by_sweep)
    wait_until(sweep_process, storage, lambda trials: len(trials) > 1 and trials[1].state.name != "RUNNING")
    filler.unlink()
    out, _ = sweep_process.communicate(timeout=600)

    assert sweep_process.returncode == 0, out
    states = states_of(trials_of(storage))
    # Trial 1 fails; so does any trial that opened its run (which writes the spec) before the disk was freed.
    failed = range(1, len(states) - 1)
    assert states[0] == states[-1] == "COMPLETE" and {states[n] for n in failed} == {"FAIL"}, states
    assert "Trial 1 failed" in out and "No space left on device" in out and "Traceback" not in out, out
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'trial'", output_format="list")
    by_number = {int(r.data.tags["trial_number"]): r for r in runs}
    assert sorted(by_number) == list(range(len(states)))
    for n in failed:
        assert by_number[n].info.status == "FAILED" and "No space left on device" in by_number[n].data.tags["error"]
    assert {by_number[n].info.status for n in (0, len(states) - 1)} == {"FINISHED"}


def first_trial(storage: str):
    return (trials_of(storage) or [None])[0]


MOMENTS = {  # when Ctrl-C comes, read from the storage
    "a trial being set up": lambda trial: trial.state.name == "RUNNING",  # its MLflow run may not exist yet
    "the trial process starting": lambda trial: trial.state.name == "RUNNING" and "mlflow_run_id" in trial.user_attrs
    and not trial.intermediate_values,
    "a trial training": lambda trial: trial.state.name == "RUNNING" and len(trial.intermediate_values) >= 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", MOMENTS)
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(store, tmp_path, moment):
    """At a moment read from the storage (not after a sleep): exit 130 at once, nothing left RUNNING."""
    import signal
    import time

    command, env = sweep_command(store, trials=2)
    command[command.index("ci")] = str(uncached_spec(tmp_path, epochs=2000))
    storage = f"sqlite:///{store / 'optuna.db'}"
    # Started as a shell starts a foreground job: SIGINT at its default even where this test runs with
    # it ignored (a background job of a non-interactive shell), which the sweep would respect.
    sweep_process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not ((trial := first_trial(storage)) and MOMENTS[moment](trial)):
            assert sweep_process.poll() is None and time.monotonic() < deadline, f"the sweep ended first: {trial}"
            time.sleep(0.05)
        os.killpg(sweep_process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
        interrupted = time.monotonic()
        out, err = sweep_process.communicate(timeout=120)
    finally:  # a sweep that did not stop would train 2000 epochs beside the rest of the suite
        if sweep_process.poll() is None:
            os.killpg(sweep_process.pid, signal.SIGKILL)
    assert sweep_process.returncode == 130, out + err
    assert time.monotonic() - interrupted < 60  # not after training 2000 epochs
    assert "rerun the same command to resume" in err and "Traceback" not in out + err
    assert "KeyboardInterrupt" not in out + err and "failed" not in out + err  # no Optuna warning: it was not a failure
    study = pair_study(storage, "vgg16", "frozen")
    assert [t.state.name for t in study.trials] == ["FAIL"]  # Optuna's only state for it, marked interrupted:
    assert study.trials[0].user_attrs[names.ATTR_INTERRUPTED] is True
    assert parent_run.trial_counts(study) == {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 1}
    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    status = {(r.data.tags["role"], r.info.status, r.data.tags.get(names.TAG_TRIAL_STATE)) for r in runs}
    expected = {("sweep", "KILLED", None), ("trial", "KILLED", names.TRIAL_STATE_INTERRUPTED)}
    assert status == expected or (moment == "a trial being set up" and status == {("sweep", "KILLED", None)}), status
    parent = next(r for r in runs if r.data.tags["role"] == "sweep")
    assert (parent.data.metrics["trials_failed"], parent.data.metrics["trials_interrupted"]) == (0, 1)


def test_optuna_warns_of_a_failed_trial_in_one_line_and_not_of_an_interrupted_one(capfd):
    study = optuna.create_study()

    def objective(trial):
        if trial.number == 0:
            raise ValueError("boom")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        study.optimize(objective, n_trials=2, catch=(Exception,))
    lines = capfd.readouterr().err.splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "Trial 0 failed with parameters: {} because of the following error: ValueError('boom').",
        "Trial 0 failed with value None."]  # nothing about trial 1, and no traceback


# ---------------------------------------------------------------- one study is one spec


def in_process(experiment, **training):
    """The experiment with trials in the sweep's own process (and any training fields changed)."""
    search = experiment.search.model_copy(update={"trials_per_process": 0})
    return experiment.model_copy(update={
        "search": search, "training": experiment.training.model_copy(update=training)})


@pytest.mark.slow
def test_a_changed_spec_starts_a_new_study_and_the_old_trials_stay_out_of_its_row(store):
    from benchmark import leaderboard

    said = []
    first = sweep.run_sweep(in_process(ci(pruner="none")), "vgg16", "frozen", trials=2, verbose=0)
    changed = in_process(ci(pruner="none"), epochs=2)
    second = sweep.run_sweep(changed, "vgg16", "frozen", trials=1, verbose=0, say=said.append)
    assert second.study.study_name != first.study.study_name and len(second.study.trials) == 1
    assert second.study.study_name.startswith("ci-vgg16-frozen-")
    assert f"a new study: training.epochs 3 -> 2 since {first.study.study_name} (2 trials, kept as it was)" in said[0]
    assert len(first.study.trials) == 2  # the old study is as it was

    row = leaderboard.leaderboard(changed).set_index(["backbone", "strategy"]).loc[("vgg16", "frozen")]
    assert row["study"] == second.study.study_name and row["trials_complete"] == 1
    assert row["run_id"] == second.best_trial.user_attrs["mlflow_run_id"]
    board = leaderboard.leaderboard(changed, superseded=True)
    assert list(board["kind"]) == ["sweep", "superseded"] and board.loc[1, "study"] == first.study.study_name
    assert leaderboard.leaderboard(ci(pruner="none")).loc[0, "study"] == first.study.study_name  # the old spec's row
    with pytest.raises(BenchmarkError, match="only from older versions of its spec.*--superseded"):
        leaderboard.leaderboard(in_process(ci(pruner="none"), epochs=5))  # a spec no study has run yet

    said.clear()  # an unchanged rerun resumes its own study
    again = sweep.run_sweep(changed, "vgg16", "frozen", trials=1, verbose=0, say=said.append)
    assert again.study.study_name == second.study.study_name and "nothing to do" in said[0]
    assert "new study" not in said[0]


def test_the_fingerprint_covers_the_data_and_the_weights_not_the_study_size(tmp_path):
    from benchmark import study_identity
    from benchmark.data import load_dataset

    experiment = ci()
    spec = experiment.resolve("vgg16", "frozen")
    space = experiment.search_space("vgg16", "frozen")
    data = load_dataset(spec.data)
    base = study_identity.fingerprint(spec, space, experiment.search, data)
    bigger = experiment.search.model_copy(update={"trials": 40, "timeout_s": 60.0, "trials_per_process": 0})
    assert study_identity.fingerprint(spec, space, bigger, data) == base
    data.y_test = data.y_test[::-1].copy()
    assert study_identity.fingerprint(spec, space, experiment.search, data).data != base.data
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"one")
    with_file = spec.model_copy(update={"backbone": spec.backbone.model_copy(update={"weights": str(weights)})})
    first = study_identity.weights_fingerprint(with_file)
    weights.write_bytes(b"two")
    assert study_identity.weights_fingerprint(with_file) != first != base.weights


@pytest.mark.slow
def test_the_parent_run_shows_searched_params_as_ranges_and_the_best_values_as_metrics(store):
    result = sweep.run_sweep(in_process(ci(pruner="none")), "vgg16", "top", trials=1, verbose=0)
    parent = mlflow.get_run(result.parent_run_id)
    assert parent.data.params["training.learning_rate"] == "searched 0.001..0.01 (log)"
    assert parent.data.params["strategy.unfreeze"] == "searched 0..4"
    assert parent.data.params["training.epochs"] == "3"  # not searched: the spec's value
    best = result.best_trial
    assert parent.data.metrics["best_learning_rate"] == pytest.approx(best.params["learning_rate"])
    assert parent.data.tags["spec_fingerprint"].startswith(result.study.study_name.rsplit("-", 1)[1])
    names = [r.info.run_name for r in mlflow.search_runs(search_all_experiments=True, output_format="list")]
    assert len(names) == len(set(names))


@pytest.mark.slow
def test_a_whole_experiment_sweep_fills_every_row_and_resumes(store):
    from benchmark import leaderboard

    said = []
    experiment = in_process(ci(pruner="none"))
    smaller = {"subset": experiment.data.subset.model_copy(update={"validation": 80, "test": 100}),
               "synthetic": experiment.data.synthetic.model_copy(update={"train_size": 400, "test_size": 100})}
    experiment = experiment.model_copy(update={"data": experiment.data.model_copy(update=smaller)})  # as SMALLER_DATA
    results = sweep.run_experiment(experiment, trials=1, verbose=0, say=said.append)
    pairs = [(b, s) for b in experiment.backbones for s in experiment.strategies]
    assert [(p.backbone, p.strategy) for p in results] == pairs and all(p.reached for p in results)
    assert said[0].startswith("[1/4 vgg16/frozen] study ci-vgg16-frozen-")
    board = leaderboard.leaderboard(experiment)
    assert sorted(zip(board["backbone"], board["strategy"])) == sorted(pairs) and set(board["kind"]) == {"sweep"}
    said.clear()
    again = sweep.run_experiment(experiment, trials=1, verbose=0, say=said.append)
    assert all(p.reached for p in again) and sum("nothing to do" in line for line in said) == 4


@pytest.mark.slow
def test_a_failing_pair_does_not_stop_the_others_and_the_exit_code_is_1(store, tmp_path, capsys):
    from benchmark import cli

    spec = tmp_path / "two.toml"  # ci, frozen only, trials in-process, and vgg16's weights a file that is not there
    text = (REPO / "experiments" / "ci.toml").read_text().replace('[strategies.top]\nunfreeze = "search"\n', "")
    text = text.replace("startup_trials = 2", "startup_trials = 2\ntrials_per_process = 0")
    spec.write_text(text + '\n[backbone_overrides.vgg16]\nweights = "missing.h5"\n')
    code = cli.main(["sweep", "--experiment", str(spec), "--trials", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "experiment ci: 1 of 2 pairs reached their target" in out
    assert "vgg16/frozen: FAILED: backbone.weights = 'missing.h5' for vgg16 is not a file" in out
    assert "resnet50/frozen: 1 of 1 trials" in out
    assert re.search(r"^resnet50 +frozen ", out, re.M), out  # the leaderboard's table ends the run
    assert "next: python -m benchmark leaderboard" in out
    assert re.search(r"then open http://127\.0\.0\.1:5000/#/experiments/\d+/runs\?viewStateShareKey=benchmark&"
                     r"workflowType=machine_learning \(the runs", out)
    assert re.search(r"^study ci-resnet50-frozen-\w+'s trials side by side: http://127\.0\.0\.1:5000/#/compare-runs\?runs=", out, re.M)


@pytest.mark.slow
def test_a_sweep_that_ends_short_of_its_target_exits_1_naming_the_error(store, capsys, monkeypatch):
    from benchmark import cli

    monkeypatch.setattr(sweep, "suggest", fixed_learning_rates({}, default=1e35))  # every trial's loss overflows
    code = cli.main(["sweep", "--experiment", "ci", "--backbone", "vgg16", "--strategy", "frozen", "--trials", "1",
                     "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(r"ended short of its target: 0 of 1 trials finished, 2 failed; most frequent error \(2x\): "
                     r"\w+: .*loss became", out), out


def test_a_new_study_whose_recipe_is_the_same_says_the_data_changed():
    from types import SimpleNamespace

    from benchmark import study_identity

    recipe = {"trial": {"training": {"epochs": 3}}}
    old = SimpleNamespace(study_name="own-vgg16-frozen-11111111", n_trials=2, user_attrs={
        names.ATTR_RECIPE: recipe, names.ATTR_DATA_FINGERPRINT: "before", names.ATTR_WEIGHTS_FINGERPRINT: "w"})
    now = study_identity.Fingerprint(recipe="r", data="after", weights="w")
    assert sweep.superseded_note([old], "own-vgg16-frozen-22222222", recipe, now) == (
        ", a new study: the data changed (same recipe) since own-vgg16-frozen-11111111 (2 trials, kept as it was)")
    changed_recipe = {"trial": {"training": {"epochs": 5}}}
    assert "training.epochs 3 -> 5" in sweep.superseded_note([old], "x", changed_recipe, now)
    older = SimpleNamespace(study_name="old", n_trials=1, user_attrs={names.ATTR_RECIPE: recipe})  # before these attrs
    assert "the same recipe on other data or weights" in sweep.superseded_note([older], "x", recipe, now)


def test_the_duplicates_tag_counts_and_says_what_was_dropped():
    from benchmark.data import Dataset

    empty = np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64)
    data = Dataset(*empty, *empty, *empty, class_names=["a", "b"], origin="folder:/x", content_key="k")
    assert sweep.duplicates_tag(data) == "0"
    data.duplicate_groups, data.duplicates = 2, "2 image(s) have identical copies in another split, e.g. a; remove the copies"
    assert sweep.duplicates_tag(data).endswith("(or set data.drop_duplicates = true)")
    data.dropped_duplicates = 3
    assert sweep.duplicates_tag(data) == ("2 image(s) have identical copies in another split, e.g. a; "
                                          "data.drop_duplicates removed 3 of them from train/val")


def test_the_progress_line_goes_above_a_bar_of_the_studys_trials():
    import io

    from tqdm import tqdm

    study = optuna.create_study(direction="maximize")
    stream, lines = io.StringIO(), []
    bar = tqdm(total=3, file=stream, disable=False, unit="trial")
    progress = sweep.Progress(3, lines.append, bar)
    complete = optuna.trial.TrialState.COMPLETE
    for value in (0.25, 0.5):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}, state=complete))
        progress(study, study.trials[-1])
    assert [line.split(" ")[:4] for line in lines] == [["trial", "1/3", "#0", "COMPLETE"], ["trial", "2/3", "#1", "COMPLETE"]]
    assert bar.n == 2 and "best=0.5000 (#1)" in stream.getvalue() and "2/3" in stream.getvalue()


def test_quiet_by_default_epoch_lines_with_v_and_no_bar_with_quiet():
    from benchmark import cli

    parse = cli.build_parser().parse_args
    plain, verbose, quiet = (parse(["sweep", *extra]) for extra in ([], ["-v"], ["--quiet"]))
    assert [cli.keras_verbosity(a) for a in (plain, verbose, quiet)] == [0, 2, 0]
    assert [a.quiet for a in (plain, verbose, quiet)] == [False, False, True]  # the bar: unless --quiet
    for command in (["run", "--backbone", "vgg16"], ["confirm"]):
        assert cli.keras_verbosity(parse([*command, "--verbose"])) == 2


def test_the_time_left_leaves_out_the_one_time_work_of_the_first_trial():
    """The first trial paid for its process, the feature pass and its frozen part (35 of its 40 s): after it, the
    estimate is the 5 s left of it a trial, not 40 s; once a second trial has run, the first
    (which also paid for work nothing measured) no longer counts."""
    import datetime

    study, lines = optuna.create_study(direction="maximize"), []
    progress = sweep.Progress(10, lines.append)
    start = datetime.datetime(2026, 1, 1)
    for number, (seconds, outcome) in enumerate([(40.0, {"process_start_s": 5.0, "features_s": 20.0, "one_time_s": 10.0}),
                                                 (4.0, {"process_start_s": 0.0, "features_s": 0.01})]):
        study.add_trial(optuna.trial.FrozenTrial(
            number=number, state=optuna.trial.TrialState.COMPLETE, value=0.5, datetime_start=start,
            datetime_complete=start + datetime.timedelta(seconds=seconds), params={}, distributions={},
            user_attrs={"outcome": outcome}, system_attrs={}, intermediate_values={}, trial_id=number))
        progress(study, study.trials[-1])
    assert [line.rsplit(", ", 1)[1] for line in lines] == ["~45s left", "~32s left"]  # 9 x 5 s, then 8 x 4 s


def finished_trials(study, progress, trials):
    """(state, seconds) trials added to `study` one by one, each followed by the Progress callback."""
    import datetime

    start = datetime.datetime(2026, 1, 1)
    complete = optuna.trial.TrialState.COMPLETE
    for state, seconds in trials:
        number = len(study.trials)
        study.add_trial(optuna.trial.FrozenTrial(
            number=number, state=state, value=0.5 if state == complete else None, datetime_start=start,
            datetime_complete=start + datetime.timedelta(seconds=seconds), params={}, distributions={},
            user_attrs={}, system_attrs={}, intermediate_values={0: 0.1}, trial_id=number))
        progress(study, study.trials[-1])


def test_the_time_left_expects_pruned_trials_once_the_pruner_may_prune():
    """The pruner stops no trial before 2 complete ones, then at 1/4 of the epochs at the earliest."""
    study, lines = optuna.create_study(direction="maximize"), []
    progress = sweep.Progress(10, lines.append, pruning=sweep.Pruning(startup_trials=2, earliest_share=0.25))
    complete, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED
    finished_trials(study, progress, [(complete, 30.0), (complete, 10.0), (complete, 14.0), (pruned, 2.0), (complete, 12.0)])
    assert [line.rsplit(", ~", 1)[1] for line in lines] == [
        "180s left",  # 1 more trial it cannot prune (30 s), 8 pruned at 1/2 odds (7.5 s) or complete (30 s)
        "50s left",  # the first trial no longer counts: 8 x (1/2 x 2.5 + 1/2 x 10)
        "63s left",  # complete 12 s; 1 trial it could have pruned, not pruned: odds 1/3; 7 x (1/3 x 3 + 2/3 x 12)
        "42s left",  # a pruned one, 2 s: odds 2/4; 6 x (1/2 x 2 + 1/2 x 12)
        "40s left",  # 1 pruned of 3 it could have: odds 2/5; 5 x (2/5 x 2 + 3/5 x 12)
    ]


def test_without_a_pruner_every_trial_left_is_expected_complete():
    study, lines = optuna.create_study(direction="maximize"), []
    progress = sweep.Progress(4, lines.append)
    finished_trials(study, progress, [(optuna.trial.TrialState.COMPLETE, s) for s in (9.0, 3.0, 5.0)])
    assert [line.rsplit(", ~", 1)[1] for line in lines] == ["27s left", "6s left", "4s left"]


def test_the_time_left_sees_the_pruner_of_the_spec():
    from benchmark.spec import load_experiment

    experiment = load_experiment("transfer")

    def pruning(strategy, prunes=True):
        plan = sweep.Plan(spec=experiment.resolve("efficientnetlite0", strategy), space=None, search=experiment.search,
                          target=4, timeout_s=None, data=None, fingerprint=None, name="", recipe={})
        return sweep.pruning_of(plan, prunes)

    assert pruning("frozen") == sweep.Pruning(startup_trials=3, earliest_share=10 / 60)  # 60 epochs, warm-up 10
    assert pruning("two_phase") == sweep.Pruning(startup_trials=3, earliest_share=10 / 33)  # 30 head epochs + 3
    assert pruning("frozen", prunes=False) is None
