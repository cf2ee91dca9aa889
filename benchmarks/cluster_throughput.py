"""Trials per hour of one `ci` sweep with 1 and with 2 worker processes sharing a PostgreSQL study.

    python benchmarks/cluster_throughput.py [--trials 8] [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

For each worker count: a fresh PostgreSQL database for the study and a fresh local MLflow store,
then N copies of `python -m benchmark sweep --experiment ci --backbone vgg16 --strategy frozen
--trials T` started together (the README's per-worker command). Wall time runs from the start to
the last worker's exit. Prints trials per hour (finished = complete + pruned), per-trial time
and the 2-worker/1-worker ratio, as a markdown table for docs/performance.md.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid

import optuna
import psycopg


def fresh_database(admin_url: str) -> str:
    name = f"bench_tph_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def run_workers(workers: int, trials: int, admin_url: str) -> dict:
    storage = fresh_database(admin_url)
    env = {**os.environ, "BENCHMARK_STORE": tempfile.mkdtemp(prefix="benchmark-tph-"), "BENCHMARK_OPTUNA_STORAGE": storage}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "benchmark", "sweep", "--experiment", "ci", "--backbone", "vgg16",
               "--strategy", "frozen", "--trials", str(trials), "--quiet"]
    started = time.perf_counter()
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for _ in range(workers)]
    codes = [p.wait() for p in processes]
    wall = time.perf_counter() - started
    assert codes == [0] * workers, codes
    from benchmark import sweep
    from benchmark.storage import open_storage

    name = sweep.pair_studies(open_storage(storage, heartbeat=False), "ci", "vgg16", "frozen")[-1].study_name
    states = [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    with psycopg.connect(admin_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE {storage.rsplit('/', 1)[1]} WITH (FORCE)")
    finished = sum(s in ("COMPLETE", "PRUNED") for s in states)
    return {"workers": workers, "finished": finished, "pruned": states.count("PRUNED"), "wall_s": wall,
            "trials_per_hour": finished / wall * 3600, "s_per_trial": wall / finished}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    rows = [run_workers(workers, args.trials, args.admin_url) for workers in (1, 2)]
    print(f"cores: {os.cpu_count()}, target trials: {args.trials}\n")
    print("| workers | finished (pruned) | wall s | s/trial | trials/hour |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workers']} | {r['finished']} ({r['pruned']}) | {r['wall_s']:.0f} | {r['s_per_trial']:.1f} "
              f"| {r['trials_per_hour']:.0f} |")
    print(f"\n2 workers / 1 worker: {rows[1]['trials_per_hour'] / rows[0]['trials_per_hour']:.2f}x trials per hour")


if __name__ == "__main__":
    main()
