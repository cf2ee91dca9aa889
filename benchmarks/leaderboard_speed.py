"""`leaderboard` and `check` over a store of 5,000 trial runs, as commands (goal: <= 5 s each, the
whole process with its imports).

    python benchmarks/leaderboard_speed.py [--runs 5000] [--repeats 3] [--store DIR] [--against TREE]

The store is filled the way sweeps fill it, without training: experiment `ci` (vgg16, resnet50 x
frozen, top), five studies per pair (the current spec's, and four of older versions of it, as a
spec that evolves leaves them), each with its MLflow parent run (made by parent_run.create and
summarised by parent_run.record_progress, as after every trial) and one child run per trial with
the full params, the sweep's tags, per-epoch and final metrics and a test_predictions.npz of
10,000 examples; 80% of trials complete, 15% pruned, 5% failed. Metric values are random: this
measures reading. The Optuna studies are kept in memory: neither command opens the Optuna storage.
--store DIR keeps the store (filled on the first call, reused after).

Prints the in-process leaderboard time (median of --repeats), then the wall time and the CPU time
(user + sys) of each command (median of --repeats), and the floor of any command that opens the
store, against the goal; with --against TREE, the same commands with the package of TREE too
(interleaved), and the CPU ratio.
"""

import argparse
import itertools
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_S = 5.0
EXPERIMENT = "ci"
STUDIES_PER_PAIR = 5  # the last one of the current spec
TEMPLATES = 5  # trial runs per study written through MLflow; the others are copies of them
TEST_SIZE = 10_000
REPO = Path(__file__).resolve().parent.parent


def fill(runs: int, seed: int = 0, studies_per_pair: int = STUDIES_PER_PAIR) -> None:
    """Studies, parent runs and child runs as sweeps leave them (same tags, params, artifacts and
    parent summaries), with random metric values instead of training. The first TEMPLATES trials of
    each study are written through MLflow's client; the others are copies of them (copy_runs)."""
    import mlflow
    import optuna

    from benchmark import mlflow_store, names, parent_run, study_identity, track
    from benchmark.spec import load_experiment

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(seed)
    mlflow_store.configure()
    experiment = load_experiment(EXPERIMENT)
    experiment_id = mlflow_store.experiment_id(EXPERIMENT)
    pairs = [(b, s) for b in experiment.backbones for s in experiment.strategies]
    per_study = runs // (len(pairs) * studies_per_pair)
    filled = 0
    with tempfile.TemporaryDirectory() as tmp:
        for backbone, strategy in pairs:
            spec = experiment.resolve(backbone, strategy)
            space = experiment.search_space(backbone, strategy)
            tags = track.trial_tags(spec, role=names.ROLE_TRIAL, data_origin="synthetic")
            for version in range(studies_per_pair):
                current = version == studies_per_pair - 1
                recipe = study_identity.experiment_recipe(experiment, spec) if current else study_identity.digest(version)
                fingerprint = study_identity.Fingerprint(recipe=recipe, data=study_identity.digest("data"),
                                                         weights=study_identity.digest("weights"))
                name = f"{EXPERIMENT}-{backbone}-{strategy}-{fingerprint.short}"
                parent = parent_run.create(spec, name, space, parent_run.identity_tags(fingerprint), experiment_id)
                study = optuna.create_study(study_name=name, direction="maximize")
                distributions = {"learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
                made = [trial_run(rng, spec, {**tags, names.TAG_STUDY: name, names.TAG_PARENT_RUN: parent}, number,
                                  experiment_id, Path(tmp)) for number in range(min(TEMPLATES, per_study))]
                made += copy_runs(made, per_study, name, lambda n: names.run_name(backbone, strategy, trial=n))
                for run_id, number, state, accuracy in made:
                    study.add_trial(optuna.trial.create_trial(
                        state=optuna.trial.TrialState[state], value=accuracy if state == "COMPLETE" else None,
                        params={"learning_rate": float(rng.uniform(1e-3, 1e-2))}, distributions=distributions,
                        user_attrs={names.ATTR_RUN_ID: run_id, "outcome": {"model_saved": True}},
                    ))
                parent_run.record_progress(study, parent)
                mlflow.MlflowClient().set_terminated(parent)
                filled += per_study
                print(f"  filled {filled} trial runs", flush=True)


def trial_run(rng, spec, tags: dict, number: int, experiment_id: str, tmp: Path) -> tuple[str, int, str, float]:
    """One trial's run as a sweep leaves it: (run id, trial number, state, validation accuracy)."""
    import mlflow
    from mlflow.entities import Metric, Param

    from benchmark import names, track

    client = mlflow.MlflowClient()
    state = str(rng.choice(["COMPLETE", "PRUNED", "FAIL"], p=[0.8, 0.15, 0.05]))
    study = tags[names.TAG_STUDY]
    tags = {**tags, names.TAG_TRIAL_NUMBER: str(number), names.TAG_TRIAL_STATE: state,
            names.TAG_FULL_NAME: names.trial_full_name(study, number)}
    run_name = names.run_name(spec.backbone.name, spec.strategy_name, trial=number)
    run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    now = int(time.time() * 1000)
    accuracy = float(rng.uniform(0.1, 0.8))
    metrics = [Metric(k, float(v), now, epoch) for epoch in range(3)
               for k, v in zip(names.EPOCH_METRICS, rng.uniform(0, 1, len(names.EPOCH_METRICS)))]
    if state == "COMPLETE":
        finals = dict(zip(names.FINAL_METRICS, rng.uniform(1, 1000, len(names.FINAL_METRICS))))
        finals.update({names.BEST_VAL_TOP1: accuracy, names.TEST_TOP1: accuracy, names.TEST_TOP5: min(1.0, accuracy + 0.2)})
        metrics += [Metric(k, float(v), now, 0) for k, v in finals.items()]
        labels = rng.integers(0, 100, TEST_SIZE)
        top5 = rng.integers(0, 100, (TEST_SIZE, 5))
        top5[: int(accuracy * TEST_SIZE), 0] = labels[: int(accuracy * TEST_SIZE)]
        predictions = tmp / names.ARTIFACT_PREDICTIONS
        np.savez_compressed(predictions, labels=labels, top5=top5)
        client.log_artifact(run_id, str(predictions))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in track.logged_params(spec).items()])
    client.set_terminated(run_id, status="FAILED" if state == "FAIL" else "FINISHED")
    return run_id, number, state, accuracy


def copy_runs(templates: list[tuple[str, int, str, float]], total: int, study: str, run_name) -> list[tuple[str, int, str, float]]:
    """Trials len(templates)..total-1 of a study, each a copy of a template run (rows of runs, tags,
    params, metrics and latest_metrics, in one SQLite transaction) under its own id, number and
    names. A copy's validation accuracy is a little below its template's, so every study's best
    trial is a template run, which has its predictions; copies have no artifacts."""
    import sqlite3
    import uuid

    from benchmark import mlflow_store, names

    made = []
    with sqlite3.connect(mlflow_store.store_dir() / "mlflow.db") as db:
        for number in range(len(templates), total):
            source, _, state, accuracy = templates[number % len(templates)]
            run_id = uuid.uuid4().hex
            renamed = {names.TAG_TRIAL_NUMBER: str(number), names.TAG_FULL_NAME: names.trial_full_name(study, number),
                       names.TAG_RUN_NAME: run_name(number)}
            db.execute("INSERT INTO runs SELECT ?, ?, source_type, source_name, entry_point_name, user_id, status, "
                       "start_time + ?, end_time + ?, source_version, lifecycle_stage, replace(artifact_uri, ?, ?), "
                       "experiment_id, deleted_time FROM runs WHERE run_uuid = ?",
                       (run_id, renamed[names.TAG_RUN_NAME], number, number, source, run_id, source))
            db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                           [(key, renamed.get(key, value), run_id)
                            for key, value in db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (source,))])
            for table in ("params", "metrics", "latest_metrics"):
                columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})") if row[1] != "run_uuid"]
                db.execute(f"INSERT INTO {table} ({', '.join(columns)}, run_uuid) "
                           f"SELECT {', '.join(columns)}, ? FROM {table} WHERE run_uuid = ?", (run_id, source))
            made.append((run_id, number, state, accuracy * 0.99))
    return made


def timed(command: list[str], code: Path) -> tuple[float, float, str]:
    """(wall seconds, user + sys CPU seconds, stdout) of a command that must succeed, run with the
    package from the folder `code`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    shown = subprocess.run(command, capture_output=True, text=True, check=True, cwd=code,  # `-m` imports from cwd first
                           env={**os.environ, "PYTHONPATH": str(code)}).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), shown


def medians(commands: dict[str, list[str]], codes: dict[str, Path], repeats: int) -> dict:
    """(command, code) -> (median wall, median CPU, last stdout); the repeats interleaved, so that
    the machine's load falls on every command and code alike."""
    results = {key: [] for key in itertools.product(commands, codes)}
    for _ in range(repeats):
        for what, code in results:
            results[(what, code)].append(timed(commands[what], codes[code]))
    return {key: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[-1][2])
            for key, runs in results.items()}


def trial_runs_in_store() -> int:
    import mlflow

    from benchmark import leaderboard, names

    where = names.tags_filter(**{names.TAG_ROLE: names.ROLE_TRIAL})
    return len(mlflow.search_runs([leaderboard.experiment_id_of(EXPERIMENT)], filter_string=where,
                                  output_format="list", max_results=50_000))


def write_baseline(path: Path) -> None:
    """A baseline of the current results (`check --update` without measuring throughput here)."""
    from benchmark import check, leaderboard

    board = leaderboard.leaderboard(EXPERIMENT)
    board = check.with_data(board[board["kind"] == "sweep"].reset_index(drop=True), EXPERIMENT)
    check.write_baseline(check.updated_baseline(EXPERIMENT, board, None, spread=""), path)


def line(what: str, seconds: float) -> str:
    return f"{what:<58} {seconds:6.2f} s = {seconds / GOAL_S:.2f} x goal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5000, help="trial runs in the store (default: 5000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--store", type=Path, help="keep the store here (filled once, reused after)")
    parser.add_argument("--against", type=Path, help="also time the commands with the package (and experiments/) "
                        "of this folder, e.g. a `git worktree` of another commit, side by side")
    args = parser.parse_args()
    store = args.store or Path(tempfile.mkdtemp(prefix="benchmark-leaderboard-"))
    os.environ["BENCHMARK_STORE"] = str(store.resolve())
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"

    if not (store / "mlflow.db").is_file():
        started = time.perf_counter()
        fill(args.runs)
        print(f"filled a store with {args.runs} trial runs in {time.perf_counter() - started:.0f} s")
    from benchmark import leaderboard, mlflow_store

    mlflow_store.configure_for_reading()
    trials = trial_runs_in_store()

    seconds, board = [], None
    for _ in range(args.repeats + 1):  # the first call also opens the database: counted separately
        start = time.perf_counter()
        board = leaderboard.leaderboard(EXPERIMENT)
        leaderboard.render(board, "table")
        seconds.append(time.perf_counter() - start)
    first, median = seconds[0], statistics.median(seconds[1:])

    baseline = store / "baseline.json"
    write_baseline(baseline)
    python = [sys.executable, "-m", "benchmark"]
    commands = {
        "leaderboard": [*python, "leaderboard", "--experiment", EXPERIMENT],
        "check": [*python, "check", "--experiment", EXPERIMENT, "--baseline", str(baseline)],
        # The floor under any command that reads the store: Python, MLflow's import and opening the database.
        "floor": [sys.executable, "-c", "import mlflow, pandas; from benchmark import mlflow_store; "
                  "mlflow_store.configure_for_reading(); mlflow.search_experiments()"],
    }
    codes = {"this": REPO, **({"against": args.against.resolve()} if args.against else {})}
    measured = medians(commands, codes, args.repeats)

    print(measured[("leaderboard", "this")][2])
    print(measured[("check", "this")][2].splitlines()[-1])
    print(f"trial runs in the store: {trials}, leaderboard rows: {len(board)}, load average: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    print(f"leaderboard in-process, first call (opens the store): {first:.2f} s = {first / GOAL_S:.2f} x goal")
    print(f"leaderboard in-process, median of {args.repeats}: {median:.2f} s = {median / GOAL_S:.2f} x goal")
    print(f"commands, median of {args.repeats} (CPU: user + sys), with the package of this tree"
          + (f" and of {args.against}" if args.against else ""))
    header = "| command | " + " | ".join(f"{code} wall s | {code} CPU s" for code in codes) + " | this wall x goal |"
    print(header + (" this / against CPU |" if args.against else ""))
    for what in commands:
        cells = [f"{measured[(what, code)][0]:.2f} | {measured[(what, code)][1]:.2f}" for code in codes]
        ratio = f" {measured[(what, 'this')][1] / measured[(what, 'against')][1]:.2f} |" if args.against else ""
        print(f"| {what} | " + " | ".join(cells) + f" | {measured[(what, 'this')][0] / GOAL_S:.2f} |" + ratio)


if __name__ == "__main__":
    main()
