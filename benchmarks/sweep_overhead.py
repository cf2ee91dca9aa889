"""Bookkeeping share and memory of a `ci` sweep, measured in one run.

    python benchmarks/sweep_overhead.py [--trials 12] [--backbone vgg16]

Bookkeeping = sweep wall time - the trials' own compute (data preparation, model building,
training, measuring). What is left is Optuna (sampling, storage, pruning) and MLflow (runs, params,
metrics, artifacts, the best model). Resident memory is read after every trial: trials run in one
process, and Keras sessions are cleared between them.
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
    args = parser.parse_args()
    os.environ["BENCHMARK_STORE"] = tempfile.mkdtemp(prefix="benchmark-overhead-")
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from benchmark import sweep
    from benchmark.spec import load_experiment

    process = psutil.Process()
    rss_mb = []

    def record_memory(message: str) -> None:
        rss_mb.append(process.memory_info().rss / 2**20)
        print(f"{message}  rss={rss_mb[-1]:.0f} MiB", flush=True)

    experiment = load_experiment("ci")
    experiment.search.pruner = "none"  # full-length trials: the share is measured on real work
    started = time.perf_counter()
    result = sweep.run_sweep(experiment, args.backbone, args.strategy, trials=args.trials, verbose=0, say=record_memory)
    wall = time.perf_counter() - started
    compute = sum(t.user_attrs.get("compute_s", 0.0) for t in result.study.trials)
    trial_lines = rss_mb[1 : 1 + args.trials]
    print()
    print(f"sweep: {args.trials} trials of ci/{args.backbone}/{args.strategy}, python {sys.version.split()[0]}")
    print(f"wall time            {wall:8.1f} s")
    print(f"trial compute        {compute:8.1f} s")
    print(f"bookkeeping          {wall - compute:8.1f} s  = {(wall - compute) / wall:.1%} of wall time (goal <= 2%)")
    print(f"per trial            {(wall - compute) / args.trials * 1000:8.0f} ms of Optuna + MLflow")
    print(f"rss after trial 1    {trial_lines[0]:8.0f} MiB")
    print(f"rss after trial {len(trial_lines):<4} {trial_lines[-1]:8.0f} MiB")
    half = len(trial_lines) // 2
    growth = (trial_lines[-1] - trial_lines[half]) / max(1, len(trial_lines) - 1 - half)
    print(f"growth, 2nd half     {growth:8.1f} MiB per trial")


if __name__ == "__main__":
    main()
