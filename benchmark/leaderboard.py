"""Leaderboard: the best trial of each backbone x strategy, read back from MLflow.

One row per (backbone, strategy) and kind: the best trial (by validation top-1: the test set never
chooses) of the study of the current spec (kind sweep), or the best single `benchmark run` (kind
run). Each row has its test accuracy with a 95% bootstrap interval from the per-image predictions
the trial kept, and a paired comparison with the best row on the same images: the exact McNemar
p-value (p_vs_best), a paired bootstrap interval of the top-1 difference, and tied_with_best when
p >= 0.05. Seed repeats (`confirm`) add the mean and std of their test top-1. Then size and speed,
the chosen hyperparameters, how many trials the study took and the compute they used. Studies of
older specs are never mixed into a row; `superseded` lists them after the current rows.
COLUMNS is the fixed result schema of every format (csv, json, markdown, html).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from benchmark import files, mlflow_store, mlflow_view, names, study_identity
from benchmark.errors import BenchmarkError
from benchmark.names import metric_column, param_column, tag_column
from benchmark.spec import ExperimentSpec, find_experiment, load_experiment

COLUMNS = (
    "backbone", "strategy", "kind",
    "val_top1", "val_top5",
    "test_top1", "test_top1_low", "test_top1_high",
    "test_top5", "test_top5_low", "test_top5_high",
    "test_balanced_accuracy",
    "p_vs_best", "diff_vs_best_low", "diff_vs_best_high", "tied_with_best",
    "confirm_runs", "confirm_test_top1_mean", "confirm_test_top1_std",
    "params", "model_size_mb", "infer_images_per_sec", "train_images_per_sec",
    "learning_rate", "unfreeze",
    "trials_complete", "trials_pruned", "trials_failed", "trials_interrupted", "compute_s", "race",
    "pareto_throughput", "pareto_size",
    "trial_number", "run_id", "study",
)  # fmt: skip
FORMATS = ("table", "markdown", "csv", "json", "html")
BOOTSTRAP_SAMPLES = 2000
SIGNIFICANCE = 0.05  # rows whose p_vs_best is at least this are tied with the best
TABLE_WIDTH = 100

# The columns of mlflow.search_runs' table that the leaderboard reads.
BACKBONE, STRATEGY, STUDY = tag_column(names.TAG_BACKBONE), tag_column(names.TAG_STRATEGY), tag_column(names.TAG_STUDY)
TRIAL_NUMBER, BEST_RUN = tag_column(names.TAG_TRIAL_NUMBER), tag_column(names.TAG_BEST_RUN)
RECIPE, CONFIRM_OF = tag_column(names.TAG_RECIPE), tag_column(names.TAG_CONFIRM_OF)
DATA_FINGERPRINT, RACE = tag_column(names.TAG_DATA_FINGERPRINT), tag_column(names.TAG_RACE)
VAL_TOP1, VAL_TOP5 = metric_column(names.BEST_VAL_TOP1), metric_column(names.BEST_VAL_TOP5)
TEST_TOP1, TEST_TOP5 = metric_column(names.TEST_TOP1), metric_column(names.TEST_TOP5)
TEST_BALANCED = metric_column(names.TEST_BALANCED_ACCURACY)
PARAMS, MODEL_SIZE = metric_column(names.PARAMS_TOTAL), metric_column(names.MODEL_SIZE_MB)
INFER_RATE, TRAIN_RATE = metric_column(names.INFER_IMAGES_PER_SEC), metric_column(names.TRAIN_IMAGES_PER_SEC)
LEARNING_RATE, OPTIMIZER = param_column(names.PARAM_LEARNING_RATE), param_column(names.PARAM_OPTIMIZER)
UNFREEZE = param_column(names.PARAM_UNFREEZE)
PROGRESS = {k: metric_column(name) for k, name in {**names.PROGRESS_METRICS, "compute_s": names.COMPUTE_METRIC}.items()}
RUN_COLUMNS = (
    VAL_TOP1, VAL_TOP5, TEST_TOP1, TEST_TOP5, TEST_BALANCED, PARAMS, MODEL_SIZE, INFER_RATE, TRAIN_RATE,
    LEARNING_RATE, OPTIMIZER, UNFREEZE, TRIAL_NUMBER, BACKBONE, STRATEGY, BEST_RUN, STUDY,
    RECIPE, CONFIRM_OF, DATA_FINGERPRINT, RACE, "end_time", "start_time", "status", "run_id", *PROGRESS.values(),
)  # fmt: skip
# What every run of a role has, as the benchmark writes it: a store without it was written by something else.
REQUIRED = {
    names.ROLE_SWEEP: (BACKBONE, STRATEGY, STUDY),
    names.ROLE_TRIAL: (BACKBONE, STRATEGY, STUDY, TRIAL_NUMBER, VAL_TOP1),
    names.ROLE_RUN: (BACKBONE, STRATEGY),
    names.ROLE_CONFIRM: (BACKBONE, STRATEGY, CONFIRM_OF),
}


def search(experiment_id: str, role: str, filter_string: str = "") -> pd.DataFrame:
    """mlflow.search_runs of one role into pandas, with every column the leaderboard reads present
    (NaN where a run has no value). A run without a column its role requires is an error naming it."""
    where = names.tags_filter(**{names.TAG_ROLE: role}) + (f" and {filter_string}" if filter_string else "")
    runs = mlflow.search_runs([experiment_id], filter_string=where, output_format="pandas")
    runs = runs.reindex(columns=list(dict.fromkeys([*runs.columns, *RUN_COLUMNS])))
    for column in REQUIRED[role]:
        lacking = runs.loc[runs[column].isna(), "run_id"]
        if len(lacking):
            kind, name = column.split(".", 1)
            raise BenchmarkError(
                f"run {lacking.iloc[0]} (role {role}) in the MLflow store {mlflow_store.display_uri()} has no {kind[:-1]} "
                f"'{name}', which the benchmark writes on every {role} run; point {mlflow_store.STORE_ENV}/MLFLOW_TRACKING_URI "
                f"at a store the benchmark wrote, or sweep into a fresh one"
            )
    return runs


def experiment_id_of(experiment: str) -> str:
    mlflow_store.point_mlflow_at(mlflow_store.tracking_uri())
    found = mlflow.get_experiment_by_name(names.experiment_name(experiment))
    if found is None:
        raise BenchmarkError(
            f"no experiment '{experiment}' in the MLflow store {mlflow_store.display_uri()}; run "
            f"`python -m benchmark sweep --experiment {experiment}` first, or point "
            f"{mlflow_store.STORE_ENV}/MLFLOW_TRACKING_URI at the store that holds it"
        )
    return found.experiment_id


def latest_swept_experiment() -> str:
    """The spec name of the store's most recent sweep: the experiment of its newest trial (or study,
    before its first trial), so that a resumed sweep counts when it ran, not when it began."""
    return latest_sweep()[0]


def latest_sweep() -> tuple[str, str | None]:
    """(spec name, spec file) of the store's most recent sweep (latest_swept_experiment); the file
    is the absolute path the sweep read its spec from, None for runs from before it was recorded."""
    newest = []
    for role in (names.ROLE_TRIAL, names.ROLE_SWEEP):
        runs = mlflow.search_runs(search_all_experiments=True, filter_string=names.tags_filter(**{names.TAG_ROLE: role}),
                                  order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        newest += [(run.info.start_time, run.data.tags.get(names.TAG_EXPERIMENT), run.data.tags.get(names.TAG_SPEC_FILE))
                   for run in runs]
    if not any(name for _, name, _ in newest):
        raise BenchmarkError(
            f"no sweep in the MLflow store {mlflow_store.display_uri()} yet, so no experiment to default to; pass "
            f"--experiment NAME, or run a sweep first (the README's first command)")
    _, name, spec_file = max((item for item in newest if item[1]), key=lambda item: item[0])
    return name, spec_file


# ---------------------------------------------------------------- which studies are current


def spec_of(experiment: str | ExperimentSpec) -> ExperimentSpec | None:
    """The spec an experiment name refers to, or None when no spec file of that name exists (a
    store read elsewhere): then each pair's newest study is its row."""
    if isinstance(experiment, ExperimentSpec):
        return experiment
    try:
        path = find_experiment(experiment)
    except BenchmarkError:
        return None
    return load_experiment(path)


def current_recipes(spec: ExperimentSpec) -> dict[tuple[str, str], str]:
    """(backbone, strategy) -> the recipe fingerprint of the spec as it is now."""
    pairs = [spec.resolve(backbone, strategy) for backbone in spec.backbones for strategy in spec.strategies]
    return {(trial.backbone.name, trial.strategy_name): study_identity.experiment_recipe(spec, trial) for trial in pairs}


def is_current(runs: pd.DataFrame, recipes: dict[tuple[str, str], str] | None) -> pd.Series:
    if recipes is None:
        return pd.Series(True, index=runs.index)
    keys = zip(runs[BACKBONE], runs[STRATEGY])
    return pd.Series([recipes.get(k) == r for k, r in zip(keys, runs[RECIPE])], index=runs.index,
                     dtype=bool)


def newest_per_pair(parents: pd.DataFrame) -> pd.Series:
    """True for each pair's most recently started study among `parents`."""
    order = parents.sort_values("start_time", kind="stable")
    newest = order.groupby([BACKBONE, STRATEGY]).tail(1).index
    return pd.Series(parents.index.isin(newest), index=parents.index)


def split_studies(sweeps: pd.DataFrame, recipes) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(current, superseded) parent runs: one current study per pair (of the spec's recipe; the
    newest if several share it); every other study of the experiment is superseded."""
    matching = sweeps[is_current(sweeps, recipes)]
    current = matching[newest_per_pair(matching)] if not matching.empty else matching
    return current, sweeps.drop(current.index)


# ---------------------------------------------------------------- reading runs


def candidate_runs(experiment: str | ExperimentSpec, superseded: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(candidates, bookkeeping). Candidates: each current study's best trial run (kind sweep),
    every completed single `benchmark run` of the current recipe (kind run) and, with
    `superseded`, the best trial of every other study (kind superseded). Bookkeeping: per study
    and per single run, its pair, kind, trials complete/pruned/failed and compute seconds.

    A sweep's counts, compute and best run come from its parent run, which the sweep rewrites
    after every trial (parent_run.record_progress): a leaderboard over thousands of trials reads a
    few dozen runs, not every trial's params, tags and metrics."""
    spec = spec_of(experiment)
    name = spec.name if spec else str(experiment)
    experiment_id = experiment_id_of(name)
    sweeps = search(experiment_id, names.ROLE_SWEEP)
    singles = search(experiment_id, names.ROLE_RUN)
    if sweeps.empty and singles.empty:
        raise BenchmarkError(
            f"experiment '{name}' has no sweeps or runs in {mlflow_store.display_uri()}; run "
            f"`python -m benchmark sweep --experiment {name}` first"
        )
    recipes = current_recipes(spec) if spec else None
    current, older = split_studies(sweeps, recipes)
    parents = pd.concat([current.assign(kind="sweep"), older.assign(kind="superseded")] if superseded
                        else [current.assign(kind="sweep")], ignore_index=True)
    singles = singles[is_current(singles, recipes)]
    best = best_trial_runs(experiment_id, parents)
    single_done = (singles["status"] == "FINISHED") & singles[TEST_TOP1].notna()
    started = pd.to_datetime(singles["start_time"], utc=True)
    ended = pd.to_datetime(singles["end_time"], utc=True).fillna(pd.Timestamp.now(tz="UTC"))  # still running
    books = pd.concat([
        pd.DataFrame({
            "backbone": parents[BACKBONE], "strategy": parents[STRATEGY], "kind": parents["kind"],
            "study": parents[STUDY], **{key: parents[column] for key, column in PROGRESS.items()},
            "race": parents[RACE],
        }),
        pd.DataFrame({
            "backbone": singles[BACKBONE], "strategy": singles[STRATEGY], "kind": "run", "study": "",
            "complete": single_done.astype(float), "pruned": 0.0,
            "failed": (~singles["status"].isin(["RUNNING", "KILLED"]) & ~single_done).astype(float),
            "interrupted": (singles["status"] == "KILLED").astype(float),
            "compute_s": (ended - started).dt.total_seconds().clip(lower=0), "race": "",
        }),
    ], ignore_index=True)  # fmt: skip
    candidates = pd.concat([best, singles[single_done].assign(kind="run", study="")], ignore_index=True)
    candidates["study"] = candidates["study"].fillna("")  # a NaN key would drop the row from groupby
    books = books.fillna({"study": "", "race": "", "complete": 0.0, "pruned": 0.0, "failed": 0.0, "interrupted": 0.0, "compute_s": 0.0})
    return candidates[candidates[VAL_TOP1].notna()], books


def best_trial_runs(experiment_id: str, parents: pd.DataFrame) -> pd.DataFrame:
    """The best trial's run of each parent, with the parent's kind and study name."""
    known = parents.dropna(subset=[BEST_RUN])
    if known.empty:
        return parents[:0].drop(columns=["kind"]).assign(kind=[], study=[])
    ids = ", ".join(repr(i) for i in known[BEST_RUN])
    best = search(experiment_id, names.ROLE_TRIAL, f"attributes.run_id IN ({ids})")
    of = known.set_index(BEST_RUN)
    return best.assign(kind=best["run_id"].map(of["kind"]), study=best["run_id"].map(of[STUDY]))


def data_fingerprints(experiment: str) -> dict[str, str]:
    """study name -> the data fingerprint its parent run records: a hash of the dataset its trials
    saw (benchmark/study_identity.py). A parent run written before the tag existed has none."""
    parents = search(experiment_id_of(experiment), names.ROLE_SWEEP).dropna(subset=[DATA_FINGERPRINT])
    return dict(zip(parents[STUDY], parents[DATA_FINGERPRINT]))


def confirmations(experiment: str | ExperimentSpec) -> pd.DataFrame:
    """Finished seed repeats (`confirm`): confirm_of (the trial run they repeat) and test_top1."""
    spec = spec_of(experiment)
    runs = search(experiment_id_of(spec.name if spec else str(experiment)), names.ROLE_CONFIRM)
    done = runs[(runs["status"] == "FINISHED") & runs[TEST_TOP1].notna()]
    return pd.DataFrame({names.TAG_CONFIRM_OF: done[CONFIRM_OF], names.TEST_TOP1: done[TEST_TOP1]})


def leaderboard(experiment: str | ExperimentSpec, intervals: bool = True, require_complete: bool = True,
                superseded: bool = False) -> pd.DataFrame:
    """The leaderboard of an experiment (a name, or its spec): the current studies' rows sorted by
    validation top-1 (best first), each compared with the best row on the same test images; then,
    with `superseded`, the rows of studies of older specs. Without require_complete, an experiment
    whose trials all failed or were pruned gives an empty table."""
    experiment = spec_of(experiment) or experiment  # read the spec file once
    candidates, books = candidate_runs(experiment, superseded)
    if candidates.empty and not require_complete:
        return pd.DataFrame(columns=list(COLUMNS))
    if candidates.empty and not superseded and not candidate_runs(experiment, superseded=True)[0].empty:
        raise BenchmarkError(
            f"experiment '{spec_name(experiment)}' has results only from older versions of its spec in "
            f"{mlflow_store.display_uri()}; sweep the spec as it is now, or see the old ones with --superseded"
        )
    if candidates.empty:
        raise BenchmarkError(
            f"experiment '{spec_name(experiment)}' has no completed trial yet in {mlflow_store.display_uri()} "
            f"(only running, pruned or failed ones); let a sweep finish one"
        )
    races = books.drop_duplicates("study").set_index("study")["race"]  # a budget race's state of each study's pair
    totals = books.drop(columns="race").groupby(["backbone", "strategy", "kind", "study"]).sum()
    rows = [
        summarize_group(group, totals.loc[key])
        for key, group in candidates.groupby([BACKBONE, STRATEGY, "kind", "study"], sort=False)
    ]
    board = pd.DataFrame(rows, columns=list(COLUMNS))
    board["race"] = board["study"].map(races).fillna("").astype(str)
    board["pareto_throughput"] = pareto_front(board["val_top1"], board["infer_images_per_sec"])
    board["pareto_size"] = pareto_front(board["val_top1"], -board["model_size_mb"])
    board["old"] = board["kind"] == "superseded"  # after every current row
    board = board.sort_values(["old", "val_top1", "test_top1"], ascending=[True, False, False], kind="stable")
    board = board.drop(columns="old").reset_index(drop=True)
    add_confirmations(board, confirmations(experiment))
    if intervals:
        add_statistics(board)
    return board


def spec_name(experiment: str | ExperimentSpec) -> str:
    return experiment.name if isinstance(experiment, ExperimentSpec) else str(experiment)


def summarize_group(candidates: pd.DataFrame, totals: pd.Series) -> dict:
    # Best validation top-1; ties go to the earliest run, as in Optuna's own best_trial.
    best = candidates.sort_values([VAL_TOP1, "start_time"], ascending=[False, True], kind="stable").iloc[0]
    return {
        "backbone": best[BACKBONE],
        "strategy": best[STRATEGY],
        "kind": best["kind"],
        "val_top1": best[VAL_TOP1],
        "val_top5": best[VAL_TOP5],
        "test_top1": best[TEST_TOP1],
        "test_top5": best[TEST_TOP5],
        "test_balanced_accuracy": best[TEST_BALANCED],
        "params": best[PARAMS],
        "model_size_mb": best[MODEL_SIZE],
        "infer_images_per_sec": best[INFER_RATE],
        "train_images_per_sec": best[TRAIN_RATE],
        # A linear probe (lbfgs) has no learning rate: its spec's value was never used.
        "learning_rate": float("nan") if best.get(OPTIMIZER) == "lbfgs" else float(best[LEARNING_RATE]),
        "unfreeze": best[UNFREEZE],
        "trials_complete": int(totals["complete"]),
        "trials_pruned": int(totals["pruned"]),
        "trials_failed": int(totals["failed"]),
        "trials_interrupted": int(totals["interrupted"]),
        "compute_s": float(totals["compute_s"]),
        "trial_number": int(best[TRIAL_NUMBER]) if pd.notna(best[TRIAL_NUMBER]) else -1,
        "run_id": best["run_id"],
        "study": best["study"] if isinstance(best["study"], str) else "",
        "confirm_runs": 0,
    }


def add_confirmations(board: pd.DataFrame, confirms: pd.DataFrame) -> None:
    """Mean and std (ddof 1) of test top-1 over each row's seed repeats."""
    grouped = confirms.groupby(names.TAG_CONFIRM_OF)[names.TEST_TOP1]
    stats = pd.DataFrame({"n": grouped.count(), "mean": grouped.mean(), "std": grouped.std(ddof=1)})
    for i, run_id in enumerate(board["run_id"]):
        if run_id in stats.index:
            board.loc[i, ["confirm_runs", "confirm_test_top1_mean", "confirm_test_top1_std"]] = (
                int(stats.loc[run_id, "n"]), stats.loc[run_id, "mean"], stats.loc[run_id, "std"])
    board["confirm_runs"] = board["confirm_runs"].astype(int)


# ---------------------------------------------------------------- statistics


def compare_url(experiment: str, board: pd.DataFrame) -> str:
    """MLflow's compare page for the board's rows (their runs), or '' when no row has a run."""
    run_ids = [r for r in board["run_id"] if isinstance(r, str)]
    return mlflow_store.compare_url(experiment_id_of(experiment), run_ids) if run_ids else ""


def ui_lines(experiment: str, board: pd.DataFrame) -> list[str]:
    """Where the board's runs are in the MLflow UI: the experiment's runs, the rows side by side (with
    more than one), and per row its best trial and its study's trials side by side."""
    experiment_id = experiment_id_of(experiment)
    start = f" (start it: {mlflow_store.ui_command()})" if mlflow_store.ui_command() else ""
    lines = [f"in the MLflow UI{start}:", f"  the runs, best first: {mlflow_store.experiment_url(experiment_id)}"]
    if len(board) > 1:
        lines.append(f"  these rows side by side: {compare_url(experiment, board)}")
    for link in mlflow_view.row_links(experiment_id, board):
        lines.append(f"  {link['row']}: its best trial {link['run']}")
        if link["compare"]:
            lines.append(f"    its study's trials side by side: {link['compare']}")
    return lines


def test_predictions(run_id: str) -> dict:
    """labels and top-5 predictions per test image, as the trial saved them, and class_names: the
    names by class index (None from a trial that saved none)."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.ARTIFACT_PREDICTIONS)
    with np.load(path) as saved:
        class_names = [str(name) for name in saved["class_names"]] if "class_names" in saved.files else None
        return {"labels": saved["labels"], "top5": saved["top5"], "class_names": class_names or None}


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


def mcnemar_exact(row_correct: np.ndarray, best_correct: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of two classifiers on the same examples: under the null
    the discordant pairs split Binomial(b + c, 1/2), which is symmetric: p = twice the lower tail,
    at most 1 (scipy.stats.binomtest's two-sided p; scipy.special alone imports a second faster)."""
    from scipy.special import bdtr

    b = int(np.sum(best_correct & ~row_correct))
    c = int(np.sum(row_correct & ~best_correct))
    return 1.0 if b + c == 0 else min(1.0, 2 * float(bdtr(min(b, c), b + c, 0.5)))


def paired_bootstrap(row_correct: np.ndarray, best_correct: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """95% paired bootstrap interval of top-1(row) - top-1(best), resampling test images. Each
    image's difference is +1, -1 or 0, so resampling n images is a Multinomial(n, shares) draw:
    the same distribution without n x samples indices."""
    n = len(row_correct)
    difference = row_correct.astype(int) - best_correct.astype(int)
    shares = [np.mean(difference == 1), np.mean(difference == -1)]
    counts = np.random.default_rng(seed).multinomial(n, [*shares, max(0.0, 1 - sum(shares))], size=samples)
    low, high = np.percentile((counts[:, 0] - counts[:, 1]) / n, [2.5, 97.5])
    return float(low), float(high)


def add_statistics(board: pd.DataFrame) -> None:
    """Bootstrap intervals per row, and each row's paired comparison with the best row (the
    first: best validation top-1) on the same test images. Rows whose predictions are lost, or
    were made on other test images, get no comparison (NaN)."""
    board["tied_with_best"] = pd.array([pd.NA] * len(board), dtype="boolean")
    correct = {}
    for i, run_id in enumerate(board["run_id"]):
        try:
            saved = test_predictions(run_id)
        except Exception:  # a run from before predictions were kept, or a lost artifact: no interval
            continue
        labels, top5 = saved["labels"], saved["top5"]
        correct[i] = (labels, top5[:, 0] == labels)
        board.loc[i, ["test_top1_low", "test_top1_high"]] = bootstrap_interval(correct[i][1])
        if pd.notna(board.loc[i, "test_top5"]):  # a trial with 5 classes or fewer logs no top-5
            board.loc[i, ["test_top5_low", "test_top5_high"]] = bootstrap_interval((top5 == labels[:, None]).any(axis=1))
    if 0 not in correct:
        return
    best_labels, best_correct = correct[0]
    for i, (labels, row_correct) in correct.items():
        if labels.shape != best_labels.shape or not np.array_equal(labels, best_labels):
            continue
        p = mcnemar_exact(row_correct, best_correct)
        board.loc[i, ["p_vs_best", "diff_vs_best_low", "diff_vs_best_high"]] = (p, *paired_bootstrap(row_correct, best_correct))
        board.loc[i, "tied_with_best"] = bool(p >= SIGNIFICANCE)


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


def versus_best(row) -> str:
    """'best' for the first row; the p-value, with '=' when tied with the best at 5%, '+' when
    better than it on test (the row chosen on validation is not the best on test)."""
    if row.name == 0:
        return "best"
    p = row["p_vs_best"]
    if pd.isna(p):
        return "-"
    shown = "<.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}"
    better = bool(row["diff_vs_best_low"] + row["diff_vs_best_high"] > 0)  # NaN compares False
    return ("=" if bool(row["tied_with_best"]) else "+" if better else "") + shown


def confirmed(row) -> str:
    if pd.isna(row["confirm_runs"]) or not row["confirm_runs"]:
        return "-"
    std = row["confirm_test_top1_std"]
    spread = f"±{100 * std:.1f}" if pd.notna(std) else ""
    return f"{percent(row['confirm_test_top1_mean'])}{spread}/{int(row['confirm_runs'])}"


def kind_mark(kind: str) -> str:
    return {"sweep": "", "run": " (run)", "superseded": " (old)"}.get(kind, "")


def display_rows(board: pd.DataFrame) -> list[dict[str, str]]:
    """The compact, human form of each row (terminal and markdown)."""
    return [
        {
            "backbone": shortened(str(row["backbone"]), 18),
            "strategy": shortened(str(row["strategy"]), 10) + kind_mark(row["kind"]),
            "val@1": percent(row["val_top1"]),
            "test@1±CI": plus_minus(row["test_top1"], row["test_top1_low"], row["test_top1_high"]),
            "p": versus_best(row),
            "seeds@1": confirmed(row),
            "test@5": percent(row["test_top5"]),
            "bal@1": percent(row["test_balanced_accuracy"]),
            "params": millions(row["params"]),
            "MB": size(row["model_size_mb"]),
            "inf/s": rate(row["infer_images_per_sec"]),
            "trn/s": rate(row["train_images_per_sec"]),
            "lr": f"{row['learning_rate']:.1e}",
            "unf": str(row["unfreeze"]),
            "c/p/f": f"{row['trials_complete']}/{row['trials_pruned']}/{row['trials_failed']}",
            "time": duration(row["compute_s"]),
            "race": str(row["race"]),
            "PF": pareto_marks(row),
        }
        for _, row in board.iterrows()
    ]


OTHER_ACCURACIES = ("test@5: test top-5, '-' with 5 classes or fewer (every label is among the top 5). bal@1: test "
                    "balanced accuracy, the mean of the per-class recalls. ")  # not in the terminal table
LEGEND = (
    "Best trial per backbone x strategy by validation top-1 (%); (run): the best single run, (old): a study "
    "of an older spec. test@1±CI: half the width of its 95% bootstrap interval. p: exact McNemar test against "
    "the best row on the same test images; '=' marks a row not distinguishable from the best at 5% (tied), '+' one "
    "better than it on test. "
    "seeds@1: test top-1 mean±std/count over seed repeats (`confirm`), the number to quote. "
    f"{OTHER_ACCURACIES}"
    "inf/s, trn/s: images per second. c/p/f: trials complete/pruned/failed; "
    "time: compute of all its trials. PF: on the Pareto front of accuracy vs throughput (T) or size (S)."
)
RACE_LEGEND = (" race: the pair in a budget race (sweep --budget): racing, budget (still in when the budget was spent), "
               "worse p=P @N (left after N trials: worse than the leader on the validation images, McNemar, Holm), "
               "converged @N, failed @N.")
TERMINAL_HIDDEN = ("trn/s", "test@5", "bal@1", "MB", "params", "lr")  # to fit 100 columns; every other format has them
TERMINAL_LEGEND = LEGEND.replace("inf/s, trn/s: images per second", "inf/s: inference images per second").replace(
    OTHER_ACCURACIES, "")


def raced(board: pd.DataFrame) -> bool:
    """Whether any row's pair was in a budget race (the `race` column has a state)."""
    return "race" in board and bool((board["race"].fillna("") != "").any())


def terminal_table(board: pd.DataFrame) -> str:
    rows = display_rows(board)
    hidden = TERMINAL_HIDDEN if raced(board) else (*TERMINAL_HIDDEN, "race")
    headers = [h for h in rows[0] if h not in hidden]
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    left = {"backbone", "strategy", "race", "PF"}

    def line(cells: dict[str, str]) -> str:
        return " ".join(cells[h].ljust(widths[h]) if h in left else cells[h].rjust(widths[h]) for h in headers).rstrip()

    lines = [line({h: h for h in headers}), *(line(r) for r in rows)]
    return "\n".join(lines + wrap(TERMINAL_LEGEND + (RACE_LEGEND if raced(board) else ""), TABLE_WIDTH)) + "\n"


def wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width)


def markdown_table(board: pd.DataFrame) -> str:
    rows = display_rows(board)
    headers = [h for h in rows[0] if h != "race" or raced(board)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r[h].replace("|", "\\|") for h in headers) + " |" for r in rows]
    return "\n".join(lines) + "\n\n" + LEGEND + (RACE_LEGEND if raced(board) else "") + "\n"


def write(text: str, output: Path | None) -> None:
    if output is None:
        print(text, end="")
        return
    files.write_text(output, text, "the leaderboard")
