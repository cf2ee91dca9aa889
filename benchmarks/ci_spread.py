"""Run-to-run spread of every metric `benchmark check` compares, over repeated `ci` sweeps.

    python benchmarks/ci_spread.py [--repeats 3] [--backbones vgg16 resnet50] [--stores DIR ...]

Each repeat runs the same sweeps as .ci/run (`python -m benchmark sweep --experiment ci
--backbone B --quiet`) in a fresh store, then reads the leaderboard. Prints, per row and metric,
the values of every repeat, the spread (max - min; relative for throughput, size, parameters)
and the tolerance of the baseline next to it, as a markdown table for experiments/baselines/README.md.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import pandas as pd

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def sweep(backbones: list[str]) -> str:
    """The .ci/run sweeps into a fresh store; returns the store."""
    store = tempfile.mkdtemp(prefix="benchmark-spread-")
    env = {**os.environ, "BENCHMARK_STORE": store}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("BENCHMARK_OPTUNA_STORAGE", None)
    for backbone in backbones:
        command = [sys.executable, "-m", "benchmark", "sweep", "--experiment", "ci", "--backbone", backbone, "--strategy", "frozen",
                   "--quiet"]
        subprocess.run(command, env=env, check=True, capture_output=True)
    return store


def results(store: str) -> pd.DataFrame:
    os.environ["BENCHMARK_STORE"] = store
    from benchmark import leaderboard

    return leaderboard.leaderboard("ci")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backbones", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--stores", nargs="+", help="read these stores (of earlier repeats) instead of sweeping again")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)

    from benchmark import check

    stores = args.stores or []
    for repeat in range(0 if args.stores else args.repeats):
        started = time.perf_counter()
        stores.append(sweep(args.backbones))
        print(f"repeat {repeat + 1}: {time.perf_counter() - started:.0f} s, store {stores[-1]}", flush=True)
    boards = [results(store) for store in stores]
    args.repeats = len(boards)

    baseline = None
    try:
        baseline = check.load_baseline(check.baseline_path("ci"), "ci")
    except Exception:
        pass
    tolerances = {(r.backbone, r.strategy, m): check.describe_tolerance(v) for r in (baseline.rows if baseline else [])
                  for m, v in r.metrics.items()}

    print(f"\n| row | metric | {' | '.join(f'run {i + 1}' for i in range(args.repeats))} | spread | tolerance |")
    print("|---|---|" + "---|" * args.repeats + "---|---|")
    for backbone, strategy in boards[0][["backbone", "strategy"]].itertuples(index=False):
        for metric, (kind, _, _) in check.DEFAULT_TOLERANCES.items():
            values = [b.set_index(["backbone", "strategy"]).loc[(backbone, strategy), metric] for b in boards]
            low, high = min(values), max(values)
            spread = f"{high - low:.4f}" if kind == "absolute" else f"{100 * (high - low) / max(abs(low), 1e-12):.1f}%"
            shown = " | ".join(check.number(v) for v in values)
            tolerance = tolerances.get((backbone, strategy, metric), "-")
            print(f"| {backbone}/{strategy} | {metric} | {shown} | {spread} | {tolerance} |")


if __name__ == "__main__":
    main()
