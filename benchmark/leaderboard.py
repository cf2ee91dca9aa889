"""Leaderboard: the best trial of each backbone x strategy, read back from MLflow.

One row per (backbone, strategy): its best trial by validation top-1 (the test set never chooses),
with test accuracy and a 95% bootstrap interval from the per-example predictions the trial kept,
size and speed, the chosen hyperparameters, how many trials it took and the compute they used.
COLUMNS is the fixed result schema of every format (csv, json, markdown, html).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from benchmark import track
from benchmark.errors import BenchmarkError

COLUMNS = (
    "backbone", "strategy",
    "val_top1", "val_top5",
    "test_top1", "test_top1_low", "test_top1_high",
    "test_top5", "test_top5_low", "test_top5_high",
    "params", "model_size_mb", "infer_images_per_sec", "train_images_per_sec",
    "learning_rate", "unfreeze",
    "trials_complete", "trials_pruned", "trials_failed", "compute_s",
    "pareto_throughput", "pareto_size",
    "trial_number", "run_id",
)  # fmt: skip
FORMATS = ("table", "markdown", "csv", "json", "html")
BOOTSTRAP_SAMPLES = 2000
TABLE_WIDTH = 100

RUN_COLUMNS = (
    *(f"metrics.{name}" for name in ("best_val_top1", "best_val_top5", "test_top1", "test_top5", "params_total",
                                     "model_size_mb", "infer_images_per_sec", "train_images_per_sec")),
    "params.training.learning_rate", "params.strategy.unfreeze", "tags.trial_number", "tags.backbone",
    "tags.strategy", "tags.best_run_id", "end_time", "start_time", "status", "run_id",
    *(f"metrics.trials_{k}" for k in ("complete", "pruned", "failed", "compute_s")),
)  # fmt: skip


def search(experiment_id: str, filter_string: str) -> pd.DataFrame:
    """mlflow.search_runs into pandas, with every column the leaderboard reads present (NaN if no run has it)."""
    runs = mlflow.search_runs([experiment_id], filter_string=filter_string, output_format="pandas")
    return runs.reindex(columns=list(dict.fromkeys([*runs.columns, *RUN_COLUMNS])))


def experiment_id_of(experiment: str) -> str:
    track.point_mlflow_at(track.tracking_uri())
    found = mlflow.get_experiment_by_name(track.EXPERIMENT_PREFIX + experiment)
    if found is None:
        raise BenchmarkError(
            f"no experiment '{experiment}' in the MLflow store {track.display_uri()}; run "
            f"`python -m benchmark sweep --experiment {experiment} --backbone NAME` first, or point "
            f"{track.STORE_ENV}/MLFLOW_TRACKING_URI at the store that holds it"
        )
    return found.experiment_id


def candidate_runs(experiment: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(candidates, bookkeeping). Candidates: each sweep's best trial run and every single
    `benchmark run` that completed. Bookkeeping: per sweep and per single run, its backbone,
    strategy, trials complete/pruned/failed and compute seconds.

    A sweep's counts, compute and best run come from its parent run, which the sweep rewrites
    after every trial (sweep.record_progress): a leaderboard over thousands of trials reads a
    few dozen runs, not every trial's params, tags and metrics."""
    experiment_id = experiment_id_of(experiment)
    sweeps = search(experiment_id, "tags.role = 'sweep'")
    singles = search(experiment_id, "tags.role = 'run'")
    if sweeps.empty and singles.empty:
        raise BenchmarkError(
            f"experiment '{experiment}' has no sweeps or runs in {track.display_uri()}; run "
            f"`python -m benchmark sweep --experiment {experiment} --backbone NAME` first"
        )
    best_ids = sweeps["tags.best_run_id"].dropna().tolist()
    best = search(experiment_id, f"attributes.run_id IN ({', '.join(repr(i) for i in best_ids)})") if best_ids else sweeps[:0]
    single_done = (singles["status"] == "FINISHED") & singles["metrics.test_top1"].notna()
    started = pd.to_datetime(singles["start_time"], utc=True)
    ended = pd.to_datetime(singles["end_time"], utc=True).fillna(pd.Timestamp.now(tz="UTC"))  # still running
    books = pd.concat([
        pd.DataFrame({
            "backbone": sweeps["tags.backbone"], "strategy": sweeps["tags.strategy"],
            "complete": sweeps["metrics.trials_complete"], "pruned": sweeps["metrics.trials_pruned"],
            "failed": sweeps["metrics.trials_failed"], "compute_s": sweeps["metrics.trials_compute_s"],
        }),
        pd.DataFrame({
            "backbone": singles["tags.backbone"], "strategy": singles["tags.strategy"],
            "complete": single_done.astype(float), "pruned": 0.0,
            "failed": ((singles["status"] != "RUNNING") & ~single_done).astype(float),
            "compute_s": (ended - started).dt.total_seconds().clip(lower=0),
        }),
    ], ignore_index=True)  # fmt: skip
    candidates = pd.concat([best, singles[single_done]], ignore_index=True)
    return candidates[candidates["metrics.best_val_top1"].notna()], books.fillna(0.0)


def leaderboard(experiment: str, intervals: bool = True, require_complete: bool = True) -> pd.DataFrame:
    """The leaderboard of an experiment, sorted by validation top-1 (best first). Without
    require_complete, an experiment whose trials all failed or were pruned gives an empty table."""
    candidates, books = candidate_runs(experiment)
    if candidates.empty and not require_complete:
        return pd.DataFrame(columns=list(COLUMNS))
    if candidates.empty:
        raise BenchmarkError(
            f"experiment '{experiment}' has no completed trial yet in {track.display_uri()} "
            f"(only running, pruned or failed ones); let a sweep finish one"
        )
    totals = books.groupby(["backbone", "strategy"]).sum()
    rows = [
        summarize_group(group, totals.loc[key])
        for key, group in candidates.groupby(["tags.backbone", "tags.strategy"], sort=False)
    ]
    board = pd.DataFrame(rows, columns=list(COLUMNS))
    if intervals:
        add_bootstrap_intervals(board)
    board["pareto_throughput"] = pareto_front(board["val_top1"], board["infer_images_per_sec"])
    board["pareto_size"] = pareto_front(board["val_top1"], -board["model_size_mb"])
    return board.sort_values(["val_top1", "test_top1"], ascending=False, kind="stable").reset_index(drop=True)


def summarize_group(candidates: pd.DataFrame, totals: pd.Series) -> dict:
    # Best validation top-1; ties go to the earliest run, as in Optuna's own best_trial.
    best = candidates.sort_values(["metrics.best_val_top1", "start_time"], ascending=[False, True], kind="stable").iloc[0]
    return {
        "backbone": best["tags.backbone"],
        "strategy": best["tags.strategy"],
        "val_top1": best["metrics.best_val_top1"],
        "val_top5": best["metrics.best_val_top5"],
        "test_top1": best["metrics.test_top1"],
        "test_top5": best["metrics.test_top5"],
        "params": best["metrics.params_total"],
        "model_size_mb": best["metrics.model_size_mb"],
        "infer_images_per_sec": best["metrics.infer_images_per_sec"],
        "train_images_per_sec": best["metrics.train_images_per_sec"],
        "learning_rate": float(best["params.training.learning_rate"]),
        "unfreeze": best["params.strategy.unfreeze"],
        "trials_complete": int(totals["complete"]),
        "trials_pruned": int(totals["pruned"]),
        "trials_failed": int(totals["failed"]),
        "compute_s": float(totals["compute_s"]),
        "trial_number": int(best["tags.trial_number"]) if pd.notna(best["tags.trial_number"]) else -1,
        "run_id": best["run_id"],
    }


# ---------------------------------------------------------------- statistics


def test_predictions(run_id: str) -> dict[str, np.ndarray]:
    """labels and top-5 predictions per test image, as the trial saved them."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="test_predictions.npz")
    with np.load(path) as saved:
        return {"labels": saved["labels"], "top5": saved["top5"]}


def bootstrap_interval(correct: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of an accuracy from per-example correctness.
    Resampling n examples with replacement and counting the correct ones is a Binomial(n, k/n)
    draw, so the bootstrap is drawn that way: the same distribution, without n x samples indices."""
    n = len(correct)
    if n == 0:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = rng.binomial(n, float(np.mean(correct)), size=samples) / n
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def add_bootstrap_intervals(board: pd.DataFrame) -> None:
    for i, run_id in enumerate(board["run_id"]):
        try:
            saved = test_predictions(run_id)
        except Exception:  # a run from before predictions were kept, or a lost artifact: no interval
            continue
        labels, top5 = saved["labels"], saved["top5"]
        board.loc[i, ["test_top1_low", "test_top1_high"]] = bootstrap_interval(top5[:, 0] == labels)
        board.loc[i, ["test_top5_low", "test_top5_high"]] = bootstrap_interval((top5 == labels[:, None]).any(axis=1))


def pareto_front(accuracy: pd.Series, other: pd.Series, tolerance: float = 0.01) -> pd.Series:
    """True for rows no other row beats on both accuracy and `other` (both higher is better).
    Values of `other` within `tolerance` (relative) count as equal: the same architecture saved
    twice differs by a few bytes, and that should not put a worse recipe on the front.
    Rows missing either value are never on the front."""
    a, b = accuracy.to_numpy(float), other.to_numpy(float)
    known = np.isfinite(a) & np.isfinite(b)
    on_front = []
    for i in range(len(a)):
        slack = tolerance * abs(b[i])
        dominated = known & (a >= a[i]) & (b >= b[i] - slack) & ((a > a[i]) | (b > b[i] + slack))
        on_front.append(bool(known[i] and not dominated.any()))
    return pd.Series(on_front, index=accuracy.index)


# ---------------------------------------------------------------- formats


def to_records(board: pd.DataFrame) -> list[dict]:
    return json.loads(board.to_json(orient="records"))


def render(board: pd.DataFrame, fmt: str) -> str:
    if fmt == "table":
        return terminal_table(board)
    if fmt == "markdown":
        return markdown_table(board)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        return json.dumps(to_records(board), indent=1) + "\n"
    raise BenchmarkError(f"unknown format '{fmt}'; choose one of: {', '.join(FORMATS)}")


def pareto_marks(row) -> str:
    return ("T" if row["pareto_throughput"] else "") + ("S" if row["pareto_size"] else "")


def percent(value: float) -> str:
    return "-" if pd.isna(value) else f"{100 * value:.1f}"


def plus_minus(value: float, low: float, high: float) -> str:
    if pd.isna(low) or pd.isna(high):
        return percent(value)
    return f"{percent(value)}±{100 * (high - low) / 2:.1f}"


def millions(value: float) -> str:
    return "-" if pd.isna(value) else f"{value / 1e6:.1f}M"


def rate(value: float) -> str:
    if pd.isna(value):
        return "-"
    return f"{value:.0f}" if value < 10_000 else f"{value / 1e3:.0f}k"


def size(megabytes: float) -> str:
    if pd.isna(megabytes):
        return "-"
    return f"{megabytes:.1f}" if megabytes < 100 else f"{megabytes:.0f}"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def shortened(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def display_rows(board: pd.DataFrame) -> list[dict[str, str]]:
    """The compact, human form of each row (terminal and markdown)."""
    return [
        {
            "backbone": shortened(str(row["backbone"]), 18),
            "strategy": shortened(str(row["strategy"]), 10),
            "val@1": percent(row["val_top1"]),
            "test@1±CI": plus_minus(row["test_top1"], row["test_top1_low"], row["test_top1_high"]),
            "test@5": percent(row["test_top5"]),
            "params": millions(row["params"]),
            "MB": size(row["model_size_mb"]),
            "inf/s": rate(row["infer_images_per_sec"]),
            "trn/s": rate(row["train_images_per_sec"]),
            "lr": f"{row['learning_rate']:.1e}",
            "unf": str(row["unfreeze"]),
            "c/p/f": f"{row['trials_complete']}/{row['trials_pruned']}/{row['trials_failed']}",
            "time": duration(row["compute_s"]),
            "PF": pareto_marks(row),
        }
        for _, row in board.iterrows()
    ]


LEGEND = (
    "Best trial per backbone x strategy by validation top-1 (%). test@1±CI: half the width of its 95% "
    "bootstrap interval. inf/s, trn/s: images per second. c/p/f: trials complete/pruned/failed; "
    "time: compute of all its trials. PF: on the Pareto front of accuracy vs throughput (T) or size (S)."
)
TERMINAL_HIDDEN = ("trn/s",)  # to fit 100 columns; every other format has it


def terminal_table(board: pd.DataFrame) -> str:
    rows = display_rows(board)
    headers = [h for h in rows[0] if h not in TERMINAL_HIDDEN]
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    left = {"backbone", "strategy", "PF"}

    def line(cells: dict[str, str]) -> str:
        return " ".join(cells[h].ljust(widths[h]) if h in left else cells[h].rjust(widths[h]) for h in headers).rstrip()

    lines = [line({h: h for h in headers}), *(line(r) for r in rows)]
    return "\n".join(lines + wrap(LEGEND, TABLE_WIDTH)) + "\n"


def wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width)


def markdown_table(board: pd.DataFrame) -> str:
    rows = display_rows(board)
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in headers) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + LEGEND + "\n"


def write(text: str, output: Path | None) -> None:
    if output is None:
        print(text, end="")
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
