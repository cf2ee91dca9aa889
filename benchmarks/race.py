"""The grid vs the budget race, side by side in one run, on one experiment.

    python benchmarks/race.py --experiment transfer-probe [--strategy frozen] [--out docs/race-transfer-probe.json]
    python benchmarks/race.py --experiment transfer --stores DIR --shares 0.5   # DIR's finished sweeps read, not rerun

Three sweeps, each into its own fresh store and feature cache (each pays its own feature passes):
1. the grid: every pair its spec's trials (`sweep --experiment X`);
2. the race at the grid's budget: `sweep --budget S`, S = the grid's trial time, summed over its studies;
3. the race at half of it.
For each: trial time, trials, the best row by validation and its test top-1, and whether the race's
rows tied with its best (the leaderboard's `=` rows, McNemar on test at 5%) hold the grid's best pair.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent


def sweep(folder: Path, experiment: str, strategies: list[str], extra: list[str]) -> float:
    """Runs one sweep as a command into `folder`; returns its wall seconds."""
    import time

    env = {**os.environ, "BENCHMARK_STORE": str(folder / "mlruns"), "BENCHMARK_CACHE_DIR": str(folder / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("BENCHMARK_OPTUNA_STORAGE", None)
    command = [sys.executable, "-m", "benchmark", "sweep", "--experiment", experiment, "--quiet", *extra]
    for strategy in strategies:
        command += ["--strategy", strategy]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    (folder / "sweep.log").write_text(done.stdout + done.stderr)
    wall = time.perf_counter() - started
    (folder / "wall_s").write_text(f"{wall:.1f}\n")
    return wall


def swept(folder: Path, experiment: str, strategies: list[str], extra: list[str]) -> float:
    """A sweep into `folder`, or the wall seconds of the one an earlier run finished there."""
    if (folder / "wall_s").exists():
        return float((folder / "wall_s").read_text())
    return sweep(folder, experiment, strategies, extra)


def outcome(folder: Path, experiment: str) -> dict:
    """What a sweep's store says (the leaderboard command's JSON): trial time and trials over its
    studies, the best row and its tied set, each pair's race state."""
    env = {**os.environ, "BENCHMARK_STORE": str(folder / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "benchmark", "leaderboard", "--experiment", experiment, "--format", "json"],
                          env=env, cwd=REPO, capture_output=True, text=True, check=True)
    rows = json.loads(done.stdout)
    best = rows[0]
    pair = lambda row: f"{row['backbone']}/{row['strategy']}"  # noqa: E731
    return {
        "trial_time_s": sum(row["compute_s"] for row in rows),
        "trials": sum(row["trials_complete"] + row["trials_pruned"] for row in rows),
        "best": pair(best),
        "best_val_top1": best["val_top1"],
        "best_test_top1": best["test_top1"],
        "tied_with_best": list(dict.fromkeys([pair(best), *(pair(row) for row in rows if row["tied_with_best"])])),
        "race": {pair(row): row["race"] for row in rows},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="transfer-probe")
    parser.add_argument("--strategy", action="append", default=[], help="only these strategies (repeatable)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument("--stores", type=Path,
                        help="the folder of an earlier run of this script: its finished sweeps are read, the others run")
    parser.add_argument("--shares", default="1,0.5", help="the races' budgets as shares of the grid's (default 1,0.5)")
    args = parser.parse_args()

    root = args.stores or Path(tempfile.mkdtemp(prefix="benchmark-race-"))
    results = {}
    wall = swept(root / "grid", args.experiment, args.strategy, [])
    results["grid"] = {**outcome(root / "grid", args.experiment), "wall_s": wall}
    budget = results["grid"]["trial_time_s"]
    races = {1.0: "race at the grid's budget", 0.5: "race at half of it"}
    for share in (float(text) for text in args.shares.split(",")):
        name = races.get(share, f"race at {share:g} of it")
        folder = root / name.replace(" ", "-").replace("'", "")
        wall = swept(folder, args.experiment, args.strategy, ["--budget", f"{budget * share:.0f}s"])
        results[name] = {**outcome(folder, args.experiment), "wall_s": wall, "budget_s": round(budget * share)}
    grid_best = results["grid"]["best"]
    print(f"{args.experiment}: grid vs race (stores under {root})")
    print(f"{'':28} {'trial time':>10} {'trials':>6} {'best by val':>28} {'val@1':>6} {'test@1':>6}  {'tied with best':40} holds grid's best")
    for name, r in results.items():
        holds = "-" if name == "grid" else ("yes" if grid_best in r["tied_with_best"] else "no")
        r["holds_grid_best"] = holds
        print(f"{name:28} {r['trial_time_s']:9.0f}s {r['trials']:6d} {r['best']:>28} {100 * r['best_val_top1']:6.1f} "
              f"{100 * r['best_test_top1']:6.1f}  {', '.join(r['tied_with_best']):40} {holds}")
    for name, r in results.items():
        if name != "grid":
            print(f"{name}: " + ", ".join(f"{pair} {state}" for pair, state in r["race"].items()))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
