"""Bookkeeping share and memory of a `ci` sweep, measured in one run.

    python benchmarks/sweep_overhead.py [--trials 12] [--backbone vgg16]

Bookkeeping = sweep wall time - the trials' own compute (data preparation, model building,
training, measuring). What is left is Optuna (sampling, storage, pruning) and MLflow (runs, params,
metrics, artifacts, the best model). Resident memory of the sweep's process and of the trial
process is read after every trial (--trials-per-process 0 runs trials in the sweep's process).
"""

import argparse
import os
import sys
import tempfile
import time

import psutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--strategy", default="frozen")
    parser.add_argument("--trials-per-process", type=int, default=None, help="default: the spec's")
    args = parser.parse_args()
    os.environ["BENCHMARK_STORE"] = tempfile.mkdtemp(prefix="benchmark-overhead-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from benchmark import parent_run, sweep
    from benchmark.spec import load_experiment

    process = psutil.Process()
    rss_mb, child_mb = [], []

    def record_memory(message: str) -> None:
        rss_mb.append(process.memory_info().rss / 2**20)
        child_mb.append(sum(c.memory_info().rss for c in process.children(recursive=True)) / 2**20)
        print(f"{message}  rss: sweep {rss_mb[-1]:.0f} MiB, trial process {child_mb[-1]:.0f} MiB", flush=True)

    experiment = load_experiment("ci")
    experiment.search.pruner = "none"  # full-length trials: the share is measured on real work
    if args.trials_per_process is not None:
        experiment.search.trials_per_process = args.trials_per_process
    started = time.time()
    result = sweep.run_sweep(experiment, args.backbone, args.strategy, trials=args.trials, verbose=0, say=record_memory)
    ended = time.time()
    wall = ended - started
    trials = result.study.trials
    compute = sum(parent_run.trial_record(t).get("compute_s", 0.0) for t in trials)
    process_start = sum(parent_run.trial_record(t).get("process_start_s", 0.0) for t in trials)
    in_trials = sum(t.duration.total_seconds() for t in trials)
    setup = trials[0].datetime_start.timestamp() - started
    summary = ended - trials[-1].datetime_complete.timestamp()
    between = wall - setup - summary - in_trials
    trial_lines = rss_mb[1 : 1 + args.trials]
    child_lines = child_mb[1 : 1 + args.trials]
    print()
    print(f"sweep: {args.trials} trials of ci/{args.backbone}/{args.strategy}, python {sys.version.split()[0]}")
    per_trial = (in_trials - compute - process_start + between) / len(trials)
    print(f"wall time                 {wall:8.1f} s")
    print(f"  once, before trials     {setup:8.1f} s  (stores, depth check, data)")
    print(f"  trials                  {in_trials:8.1f} s  of which compute {compute:.1f} s, "
          f"starting trial processes {process_start:.1f} s")
    print(f"  between trials          {between:8.1f} s  (Optuna sampling, storage, callbacks)")
    print(f"  once, after trials      {summary:8.1f} s  (best model in MLflow's Keras flavour)")
    print(f"bookkeeping per trial     {per_trial * 1000:8.0f} ms = {per_trial * len(trials) / in_trials:.1%} of trial wall time (goal <= 2%)")
    print(f"bookkeeping, whole sweep  {wall - compute - process_start:8.1f} s  = "
          f"{(wall - compute - process_start) / wall:.1%} of wall time (one-time costs included)")
    print(f"trials per process   {experiment.search.trials_per_process} (0 = in the sweep's process)")
    print(f"sweep process rss    after trial 1 {trial_lines[0]:6.0f} MiB, after trial {len(trial_lines)} {trial_lines[-1]:6.0f} MiB")
    print(f"trial process rss    per trial: {' '.join(f'{m:.0f}' for m in child_lines)} MiB")
    total = [a + b for a, b in zip(trial_lines, child_lines)]
    print(f"peak total rss       {max(total):8.0f} MiB")


if __name__ == "__main__":
    main()
