"""Leaderboard time over a store of 1,000 runs (goal: <= 3 s).

    python benchmarks/leaderboard_speed.py [--runs 1000] [--repeats 3]

The store is filled the way sweeps fill it, without training: 5 backbones x 4 strategies, each a
real Optuna study with its MLflow parent run (summarised by parent_run.record_progress, as after every
trial) and one child run per trial with the full params (a real TrialSpec), the sweep's tags,
final and per-epoch metrics and a test_predictions.npz of 10,000 examples (CIFAR-100's test set);
80% of trials complete, 15% pruned, 5% failed. Metric values are random: this measures reading.
Prints the in-process leaderboard time (search_runs + bootstrap intervals + formatting; median of
--repeats), the wall time of the whole command (`python -m benchmark leaderboard`, with its
imports), and the floor of any command that opens the store, each against the goal.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_S = 3.0
BACKBONES = ("vgg16", "resnet50", "mobilenetv2", "densenet121", "efficientnetv2b0")
STRATEGIES = ("frozen", "top", "full", "two_phase")
TEST_SIZE = 10_000


def fill(runs: int, seed: int = 0) -> None:
    """Studies, parent runs and child runs as sweeps leave them (same tags, params, artifacts and
    parent summaries), with random metric values instead of training."""
    import mlflow
    import optuna
    from mlflow.entities import Metric, Param, RunTag

    from benchmark import mlflow_store, names, parent_run, sweep, track
    from benchmark.spec import load_experiment

    rng = np.random.default_rng(seed)
    mlflow_store.configure()
    experiment_id = mlflow_store.experiment_id("ci")
    spec = load_experiment("ci").resolve("vgg16", "frozen")
    params = [Param(k, v) for k, v in spec.params().items()]
    base_tags = track.trial_tags(spec, role="trial", data_origin="synthetic")
    client = mlflow.MlflowClient()
    groups = [(b, s) for b in BACKBONES for s in STRATEGIES]
    per_group = runs // len(groups)
    storage = sweep.open_storage(sweep.default_storage(), heartbeat=False)
    distributions = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    with tempfile.TemporaryDirectory() as tmp:
        for g, (backbone, strategy) in enumerate(groups):
            name = f"ci-{backbone}-{strategy}"
            study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
            group_tags = {**base_tags, "backbone": backbone, "strategy": strategy, "study_name": name}
            parent = client.create_run(experiment_id, run_name=name, tags={**group_tags, "role": "sweep"}).info.run_id
            for number in range(per_group):
                state = rng.choice(["COMPLETE", "PRUNED", "FAIL"], p=[0.8, 0.15, 0.05])
                tags = {**group_tags, "trial_number": str(number), "trial_state": state, "mlflow.parentRunId": parent}
                run_id = client.create_run(experiment_id, run_name=f"{name}-t{number:03d}", tags=tags).info.run_id
                now = int(time.time() * 1000)
                accuracy = float(rng.uniform(0.1, 0.8))
                metrics = [Metric(k, float(v), now, epoch) for epoch in range(3)
                           for k, v in zip(names.EPOCH_METRICS, rng.uniform(0, 1, len(names.EPOCH_METRICS)))]
                if state == "COMPLETE":
                    finals = dict(zip(names.FINAL_METRICS, rng.uniform(1, 1000, len(names.FINAL_METRICS))))
                    finals.update(best_val_top1=accuracy, test_top1=accuracy, test_top5=min(1.0, accuracy + 0.2))
                    metrics += [Metric(k, float(v), now, 0) for k, v in finals.items()]
                    labels = rng.integers(0, 100, TEST_SIZE)
                    top5 = rng.integers(0, 100, (TEST_SIZE, 5))
                    top5[: int(accuracy * TEST_SIZE), 0] = labels[: int(accuracy * TEST_SIZE)]
                    np.savez_compressed(Path(tmp) / "test_predictions.npz", labels=labels, top5=top5)
                    client.log_artifact(run_id, str(Path(tmp) / "test_predictions.npz"))
                client.log_batch(run_id, metrics=metrics, params=params, tags=[RunTag("x", "y")])
                client.set_terminated(run_id, status="FAILED" if state == "FAIL" else "FINISHED")
                study.add_trial(optuna.trial.create_trial(
                    state=optuna.trial.TrialState[state], value=accuracy if state == "COMPLETE" else None,
                    params={"learning_rate": float(rng.uniform(1e-3, 1e-2))}, distributions=distributions,
                    user_attrs={"mlflow_run_id": run_id, "outcome": {"model_saved": True}},
                ))
            parent_run.record_progress(study, parent)
            print(f"  filled {(g + 1) * per_group} runs", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ["BENCHMARK_STORE"] = tempfile.mkdtemp(prefix="benchmark-leaderboard-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    started = time.perf_counter()
    fill(args.runs)
    print(f"filled a store with {args.runs} runs in {time.perf_counter() - started:.0f} s")

    from benchmark import leaderboard

    seconds, board = [], None
    for _ in range(args.repeats + 1):  # the first call also opens the database: counted separately
        start = time.perf_counter()
        board = leaderboard.leaderboard("ci")
        leaderboard.render(board, "table")
        seconds.append(time.perf_counter() - start)
    first, median = seconds[0], statistics.median(seconds[1:])

    start = time.perf_counter()
    command = [sys.executable, "-m", "benchmark", "leaderboard", "--experiment", "ci"]
    shown = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    command_s = time.perf_counter() - start

    # The floor under any command that reads the store: Python, MLflow's import and opening the database.
    floor = [sys.executable, "-c", "import mlflow, pandas; from benchmark import mlflow_store; mlflow_store.configure_for_reading(); "
             "mlflow.search_experiments()"]
    start = time.perf_counter()
    subprocess.run(floor, check=True, capture_output=True)
    floor_s = time.perf_counter() - start

    print(shown)
    print(f"runs: {args.runs}, rows: {len(board)}")
    print(f"leaderboard in-process, first call (opens the store): {first:.2f} s = {first / GOAL_S:.2f} x goal")
    print(f"leaderboard in-process, median of {args.repeats}:       {median:.2f} s = {median / GOAL_S:.2f} x goal")
    print(f"`python -m benchmark leaderboard` wall time:           {command_s:.2f} s = {command_s / GOAL_S:.2f} x goal")
    print(f"  of which the floor (python + import mlflow + open the store, no query): {floor_s:.2f} s; "
          f"the rest: {command_s - floor_s:.2f} s = {(command_s - floor_s) / GOAL_S:.2f} x goal")


if __name__ == "__main__":
    main()
