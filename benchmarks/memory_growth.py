"""Resident memory and time per trial over many head-only trials in the sweep's own process.

    python benchmarks/memory_growth.py [--trials 500] [--pruner median] [--plot docs/memory_growth.png]
    python benchmarks/memory_growth.py --trials 150 --diff 50 150   # what is kept: tracemalloc and gc diffs
    python benchmarks/memory_growth.py --reopen-cost                 # the pruner's study, reopened vs kept open

One `ci` study (VGG16 frozen, synthetic images, 32 px, 3 epochs, cached features), in a fresh
store, feature cache and Optuna storage: head-only trials on cached features run in the sweep's
process (search.trials_per_process = "auto"). After every trial the sweep's resident memory
(VmRSS) and the time since the previous trial ended are recorded (from the progress line the
sweep prints after each trial); printed at trials 10, 50, 100, 150, ... With --diff A B, a
tracemalloc snapshot and a count of live objects by type at trial A and at trial B, and the
largest differences per trial (tracemalloc slows the trials: use it for the diff, not the times). --reopen-cost times, without
training, what a trial's pruner paid to reach its study when it opened it anew for every trial
(an engine, the tables' check, every trial read again) against a study kept open, at 10, 100 and
500 trials in the study.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import psutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

WINDOW = 10  # trials per time sample: the median of the WINDOW trials ending at a checkpoint
BASE = 20  # memory growth is counted from this trial: the first ones build, trace and fill caches


def fresh_stores() -> None:
    root = Path(tempfile.mkdtemp(prefix="benchmark-memory-"))
    os.environ["BENCHMARK_STORE"] = str(root / "mlruns")  # the Optuna storage (SQLite) lives there too
    os.environ["BENCHMARK_CACHE_DIR"] = str(root / "feature-cache")
    for name in ("MLFLOW_TRACKING_URI", "BENCHMARK_OPTUNA_STORAGE"):
        os.environ.pop(name, None)


def ci_frozen(pruner: str):
    from benchmark.spec import load_experiment

    spec = load_experiment("ci")
    spec.backbones, spec.strategies = ["vgg16"], {"frozen": spec.strategies["frozen"]}
    spec.search.pruner = pruner
    return spec


class Recorder:
    """Called with the sweep's line after each trial: resident memory and the trial's time."""

    def __init__(self, diff: tuple[int, int] | None = None, echo_every: int = 50, save: Path | None = None):
        self.process = psutil.Process()
        self.rss_mib: list[float] = []
        self.seconds: list[float] = []  # wall time
        self.cpu_seconds: list[float] = []  # the process's user + system time: steadier on a shared machine
        self.last, self.last_cpu = time.perf_counter(), self.cpu()
        self.diff, self.echo_every = diff, echo_every
        self.snapshots: dict[int, tuple] = {}
        self.save = save  # the series so far, rewritten every 10 trials (a long run stopped early keeps them)

    def __call__(self, line: str) -> None:
        if not line.startswith("trial "):
            return  # the study's first line
        now, cpu = time.perf_counter(), self.cpu()
        self.seconds.append(now - self.last)
        self.cpu_seconds.append(cpu - self.last_cpu)
        self.rss_mib.append(self.process.memory_info().rss / 2**20)
        trial = len(self.rss_mib)
        if self.diff and trial in self.diff:
            self.snapshots[trial] = snapshot()
        if trial % self.echo_every == 0:
            print(f"  trial {trial}: {self.rss_mib[-1]:.0f} MiB, {self.seconds[-1]:.3f} s, "
                  f"{self.cpu_seconds[-1]:.3f} CPU s", flush=True)
        if self.save and trial % 10 == 0:
            self.write(self.save)
        self.last, self.last_cpu = time.perf_counter(), self.cpu()  # the snapshot's time is not the next trial's

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"rss_mib": self.rss_mib, "wall_s": self.seconds, "cpu_s": self.cpu_seconds}))

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system


def snapshot() -> tuple:
    import tracemalloc

    gc.collect()
    types = Counter(type(o).__name__ for o in gc.get_objects())
    return tracemalloc.take_snapshot(), types


def print_diff(recorder: Recorder, first: int, last: int, rows: int = 25) -> None:
    (old, old_types), (new, new_types) = recorder.snapshots[first], recorder.snapshots[last]
    trials = last - first
    print(f"\ntracemalloc: allocations still held, trial {first} -> {last}, per trial (largest first)")
    for stat in new.compare_to(old, "traceback")[:rows]:
        frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback[-6:]]
        print(f"  {stat.size_diff / trials / 1024:8.1f} KiB {stat.count_diff / trials:7.1f} blocks  {' <- '.join(reversed(frames))}")
    total = sum(s.size_diff for s in new.compare_to(old, "filename"))
    print(f"  all Python allocations: {total / trials / 1024:.1f} KiB per trial")
    print(f"\nlive objects by type, trial {first} -> {last}, per trial (largest growth first)")
    growth = Counter({name: new_types[name] - old_types.get(name, 0) for name in new_types})
    for name, count in growth.most_common(rows):
        print(f"  {count / trials:8.1f} {name}")


def window_median(seconds: list[float], trial: int) -> float:
    return statistics.median(seconds[max(0, trial - WINDOW):trial])


def checkpoints(trials: int) -> list[int]:
    return [t for t in [10, BASE, *range(50, trials + 1, 50), trials] if t <= trials and (t == trials or t % 10 == 0)]


def report(recorder: Recorder, trials: int) -> list[str]:
    rss, wall, cpu = recorder.rss_mib, recorder.seconds, recorder.cpu_seconds
    lines = [f"| trial | RSS (MiB) | RSS growth since trial {BASE} (MiB/trial) | CPU s per trial | wall s per trial |",
             "|---|---|---|---|---|"]
    for t in checkpoints(trials):
        growth = f"{(rss[t - 1] - rss[BASE - 1]) / (t - BASE):+.3f}" if t > BASE else ""
        lines.append(f"| {t} | {rss[t - 1]:.0f} | {growth} | {window_median(cpu, t):.3f} | {window_median(wall, t):.3f} |")
    late = checkpoints(trials)[-1]
    lines += ["", f"(per trial: the median of the {WINDOW} trials up to the one named; CPU s: the sweep process's "
                  "user + system time, all its threads)", "",
              f"RSS {rss[BASE - 1]:.0f} -> {rss[late - 1]:.0f} MiB from trial {BASE} to {late}: "
              f"**{(rss[late - 1] - rss[BASE - 1]) / (late - BASE):+.3f} MiB per trial** (goal <= 1); CPU time per trial "
              f"{window_median(cpu, 10):.3f} -> {window_median(cpu, late):.3f} s: "
              f"**{window_median(cpu, late) / window_median(cpu, 10):.2f}x** (goal within 10%); wall time "
              f"{window_median(wall, 10):.3f} -> {window_median(wall, late):.3f} s."]
    return lines


def plot(recorder: Recorder, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trials = range(1, len(recorder.rss_mib) + 1)
    fig, (rss_ax, time_ax) = plt.subplots(1, 2, figsize=(11, 4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.85, wspace=0.22)
    rss_ax.plot(trials, recorder.rss_mib)
    rss_ax.set(xlabel="trial", ylabel="MiB", title="the sweep's resident memory after each trial")
    rss_ax.set_ylim(0, 1.15 * max(recorder.rss_mib))
    for series, label in ((recorder.cpu_seconds, "CPU s"), (recorder.seconds, "wall s")):
        smoothed = [window_median(series, t) for t in trials]
        time_ax.plot(trials, smoothed, label=f"{label} (median of the last {WINDOW})")
    time_ax.set(xlabel="trial", ylabel="s", title="time per trial",
                ylim=(0, 2 * max(window_median(recorder.cpu_seconds, t) for t in trials)))
    time_ax.legend()
    for ax in (rss_ax, time_ax):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reopen_cost(sizes=(10, 100, 500), repeats: int = 5) -> list[str]:
    import optuna
    from optuna.trial import TrialState

    from benchmark.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{tempfile.mkdtemp(prefix='benchmark-reopen-')}/optuna.db"
    study = optuna.create_study(study_name="s", storage=open_storage(url, heartbeat=False), direction="maximize")
    finished = (TrialState.COMPLETE, TrialState.PRUNED)  # what the median pruner reads

    def reopened(number: int) -> None:
        storage = open_storage(url, heartbeat=False)
        opened = optuna.load_study(study_name="s", storage=storage)
        storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), number)
        opened._get_trials(deepcopy=False, states=finished)

    kept = optuna.load_study(study_name="s", storage=open_storage(url, heartbeat=False))

    def kept_open(number: int) -> None:
        kept._storage.get_trial_id_from_study_id_trial_number(kept._study_id, number)
        kept._get_trials(deepcopy=False, states=finished)

    process = psutil.Process()
    lines = ["| trials in the study | reopened per trial (CPU ms) | kept open (CPU ms) |", "|---|---|---|"]
    for size in sizes:
        while len(study.trials) < size:  # a trial as a sweep leaves it: a parameter, user attributes, 3 epochs
            trial = study.ask()
            trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True)
            trial.set_user_attr("worker", {"host": "h", "pid": 1})
            for epoch in range(3):
                trial.report(0.5, epoch)
            study.tell(trial, 0.5)
        row = []
        for reach in (reopened, kept_open):
            reach(size - 1)  # warm
            before = sum(process.cpu_times()[:2])
            for _ in range(repeats):
                reach(size - 1)
            row.append((sum(process.cpu_times()[:2]) - before) / repeats * 1000)
        lines.append(f"| {size} | {row[0]:.0f} | {row[1]:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--pruner", default="median", choices=["median", "none"])
    parser.add_argument("--diff", type=int, nargs=2, metavar=("A", "B"), help="tracemalloc/gc diff of trials A and B")
    parser.add_argument("--plot", type=Path, help="a PNG of RSS and time per trial")
    parser.add_argument("--save", type=Path, help="the per-trial series as JSON")
    parser.add_argument("--from-json", type=Path, help="report (and --plot) the series a --save wrote, without running")
    parser.add_argument("--reopen-cost", action="store_true", help="only the pruner's study: reopened vs kept open")
    parser.add_argument("--fresh-heads", action="store_true",
                        help="a new compiled head per trial (trial.REUSE_HEADS = False), for comparison")
    args = parser.parse_args()
    if args.reopen_cost:
        print("\n".join(reopen_cost()))
        return
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        recorder = Recorder()
        recorder.rss_mib, recorder.seconds, recorder.cpu_seconds = saved["rss_mib"], saved["wall_s"], saved["cpu_s"]
        trials = len(recorder.rss_mib)
        print("\n".join(report(recorder, trials)))
        if args.plot:
            plot(recorder, args.plot, f"{trials} in-process `ci` head-only trials (VGG16 frozen, pruner {args.pruner})")
        return
    fresh_stores()
    if args.diff:
        import tracemalloc

        tracemalloc.start(8)
    from benchmark import sweep, trial

    trial.REUSE_HEADS = not args.fresh_heads
    recorder = Recorder(tuple(args.diff) if args.diff else None, save=args.save)
    started = time.perf_counter()
    result = sweep.run_sweep(ci_frozen(args.pruner), "vgg16", "frozen", trials=args.trials, verbose=0, say=recorder)
    wall = time.perf_counter() - started
    states = Counter(t.state.name for t in result.study.trials)
    print(f"\n{args.trials} trials of ci vgg16/frozen in the sweep's process (pruner {args.pruner}, "
          f"{'a new head per trial' if args.fresh_heads else 'reused heads'}): {dict(states)}, {wall:.0f} s")
    print("\n".join(report(recorder, args.trials)))
    if args.diff:
        print_diff(recorder, *args.diff)
    if args.save:
        recorder.write(args.save)
    if args.plot:
        plot(recorder, args.plot, f"{args.trials} in-process `ci` head-only trials (VGG16 frozen, pruner {args.pruner})")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
