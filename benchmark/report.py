"""Report: the pictures behind a leaderboard, and one self-contained HTML page with all of it.

Plots (matplotlib PNGs): accuracy vs throughput with the Pareto front, the learning curves of each
row's best trial, confusion matrices of the overall best trial (its classes, up to 100, and for
CIFAR-100's fine labels the 20 coarse superclasses), a grid of its test images with true and
predicted labels, and Optuna's optimization history and parameter importances for each study. They are written to a folder and logged to one
MLflow run per experiment (tag role=report), replaced on every report.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from benchmark import files, leaderboard, mlflow_store, mlflow_view, names  # noqa: E402
from benchmark.data import (  # noqa: E402
    CIFAR100_COARSE_LABEL_NAMES,
    CIFAR100_COARSE_OF_FINE,
    load_dataset,
)
from benchmark.redaction import redact  # noqa: E402
from benchmark.spec import TrialSpec  # noqa: E402
from benchmark.storage import default_storage, open_storage  # noqa: E402

SAMPLE_GRID = (4, 8)  # rows x columns of test images
MOST_CLASSES_IN_A_CONFUSION_MATRIX = 100  # more: not drawn, a note says why
MOST_CLASSES_NAMED_ON_AXES = 30  # more: the matrix's axes have no ticks
CIFAR100_SOURCES = ("keras", "dir", "sample")  # data sources whose fine classes have CIFAR-100's superclasses


@dataclass
class Figure:
    name: str  # file name, e.g. pareto.png
    title: str
    path: Path


@dataclass
class Report:
    board: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be drawn, and why


def build_report(experiment: str, board: pd.DataFrame, folder: Path, storage: str | None = None) -> Report:
    """Draw every plot for `board` into `folder`. A plot that cannot be drawn (a study with one
    trial, predictions from an older run) becomes a note instead of an error."""
    files.make_folder(folder, "the plots")
    report = Report(board=board)

    def add(name: str, title: str, draw, *args) -> None:
        path = folder / name
        try:
            draw(*args, path)
        except SkippedPlot as e:
            report.notes.append(f"{title}: {e}")
            return
        report.figures.append(Figure(name, title, path))

    add("pareto.png", "Accuracy vs inference throughput", plot_pareto, board)
    add(names.ARTIFACT_CURVES, "Learning curves of each row's best trial", plot_learning_curves, board)
    best = board.iloc[0]
    label = f"{best['backbone']} / {best['strategy']}"
    predictions = best_predictions(best["run_id"])
    if predictions is None:
        report.notes.append(f"confusion matrices and test images: run {best['run_id']} kept no test predictions")
    else:
        labels, predicted = predictions["labels"], predictions["top5"][:, 0]
        add("confusion_fine.png", f"Confusion matrix, {label}", plot_confusion, labels, predicted,
            predictions.get("class_names"), label)
        params = mlflow.get_run(best["run_id"]).data.params
        if params.get(names.PARAM_DATA_SOURCE) == "synthetic":
            report.notes.append("confusion matrix by superclass: synthetic classes have no CIFAR-100 superclasses")
        elif params.get(names.PARAM_DATA_SOURCE) in CIFAR100_SOURCES and params.get(names.PARAM_LABEL_MODE) == "fine":
            coarse = np.asarray(CIFAR100_COARSE_OF_FINE)
            add("confusion_coarse.png", f"Confusion matrix by superclass, {label}", plot_confusion,
                coarse[labels], coarse[predicted], CIFAR100_COARSE_LABEL_NAMES, label)
        add("test_images.png", f"Test images, {label}", plot_test_images, best["run_id"], labels, predicted, label)
    studies = {}
    for name in study_names(board):
        study = load_study(name, storage)
        if study is None:
            report.notes.append(f"study {name}: not in the Optuna storage {redact(storage or default_storage())}")
            continue
        studies[name] = study
    if leaderboard.raced(board) and studies:
        add("race.png", "The budget race: trials per pair over time", plot_race, board, studies)
    for name, study in studies.items():
        add(f"optuna_history_{name}.png", f"Optimization history, {name}", plot_optuna, study, "history")
        add(f"optuna_importance_{name}.png", f"Parameter importances, {name}", plot_optuna, study, "importance")
    return report


class SkippedPlot(Exception):
    """A plot that the data cannot support; its message says why."""


# ---------------------------------------------------------------- inputs


def best_predictions(run_id: str) -> dict[str, np.ndarray] | None:
    try:
        return leaderboard.test_predictions(run_id)
    except Exception:
        return None


def study_names(board: pd.DataFrame) -> list[str]:
    """The Optuna studies of the board's rows (single runs have none)."""
    return sorted({name for name in board["study"] if isinstance(name, str) and name})


def load_study(name: str, storage: str | None) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage or default_storage(), heartbeat=False))
    except KeyError:  # no such study in this storage
        return None


def trial_spec(run_id: str) -> TrialSpec:
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=names.ARTIFACT_SPEC)
    return TrialSpec.model_validate_json(Path(path).read_text())


# ---------------------------------------------------------------- plots


def save(fig, path: Path) -> None:
    try:
        fit_titles(fig)
        with files.replaced(path, "the plot") as partial:
            fig.savefig(partial, dpi=100, format=path.suffix.lstrip("."))
    finally:
        plt.close(fig)


def titles(fig) -> list:
    """Every title of the figure: each axes' (left, centre, right) and the figure's own."""
    found = [t for ax in fig.axes for t in (ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None))]
    return [t for t in [*found, fig._suptitle] if t is not None and t.get_text()]


def fit_titles(fig, margin: float = 4.0) -> None:
    """A title wider than the figure (a long study name) is wrapped onto more lines instead of cut
    at its edge, and the axes move down if the lines would reach above the figure."""
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    for text in titles(fig):
        extent = text.get_window_extent(renderer)
        if extent.x0 >= 0 and extent.x1 <= width:
            continue
        if ": " in text.get_text():  # "what: which study" first breaks after its colon
            text.set_text(text.get_text().replace(": ", ":\n", 1))
            extent = text.get_window_extent(renderer)
            if extent.x0 >= 0 and extent.x1 <= width:
                continue
        centre = (extent.x0 + extent.x1) / 2
        room = width - max(extent.x0, 0) - margin if text.get_horizontalalignment() == "left" else \
            2 * min(centre, width - centre) - 2 * margin
        longest = max(text.get_text().splitlines(), key=len)
        characters = max(10, int(len(longest) * room / extent.width))
        text.set_text("\n".join(textwrap.fill(line, characters) for line in text.get_text().splitlines()))
    above = max((t.get_window_extent(renderer).y1 for t in titles(fig)), default=0) - height + margin
    if above > 0 and fig.get_layout_engine() is None:
        fig.subplots_adjust(top=fig.subplotpars.top - above / height)


def row_label(row) -> str:
    return f"{row['backbone']}/{row['strategy']}"


def plot_pareto(board: pd.DataFrame, path: Path) -> None:
    known = board[board["infer_images_per_sec"].notna() & board["val_top1"].notna()]
    if known.empty:
        raise SkippedPlot("no row has an inference throughput")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.11, top=0.9)
    params = known["params"].fillna(known["params"].max() if known["params"].notna().any() else 1.0)
    sizes = 40 + 600 * params / max(params.max(), 1.0)
    front = known["pareto_throughput"].astype(bool).to_numpy()
    for on_front, colour, label in ((True, "tab:orange", "on the Pareto front"), (False, "tab:blue", "dominated")):
        chosen = front == on_front
        if chosen.any():
            ax.scatter(known["infer_images_per_sec"][chosen], 100 * known["val_top1"][chosen], s=sizes[chosen],
                       alpha=0.45, c=colour, edgecolors="black", linewidths=0.6, label=label)
    line = known[front].sort_values("infer_images_per_sec")
    if len(line) > 1:  # one point is a front of its own: there is no line to draw
        ax.step(line["infer_images_per_sec"], 100 * line["val_top1"], where="post", color="tab:orange", alpha=0.7,
                label="Pareto front (accuracy vs throughput)")
    for _, row in known.iterrows():
        ax.annotate(row_label(row), (row["infer_images_per_sec"], 100 * row["val_top1"]), fontsize=8,
                    xytext=(6, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.12)
    ax.set(xlabel="inference images/s (log scale)", ylabel="validation top-1 (%)",
           title="Best trial per backbone x strategy (point area ~ parameters)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower left")
    save(fig, path)


def plot_race(board: pd.DataFrame, studies: dict[str, optuna.Study], path: Path) -> None:
    """Each raced pair's finished trials against the time since the race's first trial, and where
    each pair left the race (its `race` state)."""
    from optuna.trial import TrialState

    rows = board[board["study"].isin(list(studies)) & (board["race"] != "")]
    ended = {name: sorted(t.datetime_complete for t in studies[name].trials
                          if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.datetime_complete)
             for name in rows["study"]}
    starts = [times[0] for times in ended.values() if times]
    if not starts:
        raise SkippedPlot("no raced pair has a finished trial")
    start = min(starts)
    fig, ax = plt.subplots(figsize=(9, 5))
    fig.subplots_adjust(left=0.08, right=0.7, bottom=0.11, top=0.9)
    for _, row in rows.iterrows():
        times = ended[row["study"]]
        if not times:
            continue
        minutes = [(t - start).total_seconds() / 60 for t in times]
        line, = ax.step([0, *minutes], range(len(minutes) + 1), where="post", label=f"{row_label(row)}: {row['race']}")
        if not row["race"].startswith(("racing", "budget")):  # it left: where
            ax.plot(minutes[-1], len(minutes), "x", color=line.get_color(), markersize=9)
    ax.set(xlabel="minutes since the race's first trial ended", ylabel="finished trials",
           title="Trials per pair in the budget race (x: the pair left)")
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fit_titles(fig)
    save(fig, path)


def plot_learning_curves(board: pd.DataFrame, path: Path) -> None:
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.88, wspace=0.18)
    drawn = 0
    for _, row in board.iterrows():
        try:
            epochs = json.loads(Path(mlflow.artifacts.download_artifacts(
                run_id=row["run_id"], artifact_path=names.ARTIFACT_HISTORY)).read_text())
        except Exception:
            continue
        x = [int(e["epoch"]) + 1 for e in epochs]
        line, = loss_ax.plot(x, [e.get("val_loss", np.nan) for e in epochs], marker="o", label=row_label(row))
        acc_ax.plot(x, [100 * e.get("val_top1", np.nan) for e in epochs], marker="o", color=line.get_color(),
                    label=row_label(row))
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise SkippedPlot(f"no best trial kept its {names.ARTIFACT_HISTORY}")
    loss_ax.set(xlabel="epoch", ylabel="validation cross-entropy", title="validation loss")
    acc_ax.set(xlabel="epoch", ylabel="validation top-1 (%)", title="validation top-1")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    acc_ax.legend(fontsize=8)
    save(fig, path)


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]: how many test images of each class went to each class."""
    counts = np.zeros((classes, classes))
    np.add.at(counts, (np.asarray(labels), np.asarray(predicted)), 1)
    return counts


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each true class's row as fractions of its images (its recall on the diagonal); a class
    without test images stays 0."""
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def plot_confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str] | None, title: str,
                   path: Path) -> None:
    """Rows: true class, normalised to 1 (recall on the diagonal); columns: predicted class. Class
    names on the axes up to MOST_CLASSES_NAMED_ON_AXES classes (indices without saved names), no
    ticks beyond; more than MOST_CLASSES_IN_A_CONFUSION_MATRIX classes are not drawn."""
    classes = len(class_names) if class_names else int(max(labels.max(initial=0), predicted.max(initial=0))) + 1
    if classes > MOST_CLASSES_IN_A_CONFUSION_MATRIX:
        raise SkippedPlot(f"{classes} classes, more than the {MOST_CLASSES_IN_A_CONFUSION_MATRIX} a matrix can show")
    counts = confusion_counts(labels, predicted, classes)
    named = classes <= MOST_CLASSES_NAMED_ON_AXES
    fig, ax = plt.subplots(figsize=(9, 8) if named else (8, 7.5))
    fig.subplots_adjust(left=0.3 if named else 0.1, right=0.88, bottom=0.3 if named else 0.1, top=0.92)
    image = ax.imshow(row_normalised(counts), cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if named:
        shown = [str(name)[:24] for name in class_names] if class_names else [str(i) for i in range(classes)]
        ax.set_xticks(range(classes), shown, rotation=90, fontsize=7)
        ax.set_yticks(range(classes), shown, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    present = counts.sum(axis=1) > 0
    accuracy = counts.trace() / counts.sum() if len(labels) else np.nan
    balanced = float(np.mean(np.diag(row_normalised(counts))[present])) if present.any() else np.nan
    ax.set(xlabel="predicted", ylabel="true",
           title=f"{title}: {classes} classes, {len(labels)} test images, top-1 {100 * accuracy:.1f}%, "
                 f"balanced {100 * balanced:.1f}%")
    save(fig, path)


def plot_test_images(run_id: str, labels: np.ndarray, predicted: np.ndarray, title: str, path: Path) -> None:
    try:
        spec = trial_spec(run_id)
    except Exception:
        raise SkippedPlot(f"run {run_id} kept no {names.ARTIFACT_SPEC} to reload its test images") from None
    try:
        data = load_dataset(spec.data)
    except Exception as e:
        raise SkippedPlot(f"its data could not be loaded again ({e})") from None
    if not np.array_equal(data.y_test, labels):
        raise SkippedPlot("its data no longer matches the saved predictions (the data set changed)")
    rows, columns = SAMPLE_GRID
    shown = np.random.default_rng(0).choice(len(labels), size=min(rows * columns, len(labels)), replace=False)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.85))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.9, hspace=0.5, wspace=0.1)
    class_names = data.class_names
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        ax.imshow(data.x_test[i])
        right = labels[i] == predicted[i]
        ax.set_title(f"{class_names[labels[i]][:14]}\n→ {class_names[predicted[i]][:14]}", fontsize=7,
                     color="darkgreen" if right else "firebrick")
    fig.suptitle(f"{title}: true → predicted (green right, red wrong)")
    save(fig, path)


def plot_optuna(study: optuna.Study, kind: str, path: Path) -> None:
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if kind == "importance" and len(complete) < 2:
        raise SkippedPlot(f"parameter importances need 2 completed trials, the study has {len(complete)}")
    if not complete:
        raise SkippedPlot("the study has no completed trial")
    with warnings.catch_warnings(), quiet_logger("optuna"):
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        if kind == "history":
            ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name="validation top-1")
            add_pruned_trials(ax, study)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))  # trial numbers
        else:
            ax = optuna.visualization.matplotlib.plot_param_importances(study)
    fig = ax.figure
    fig.set_size_inches(8, 4.5)
    title = ax.get_title(loc="left") or ax.get_title()  # Optuna puts some titles on the left
    ax.set_title("")
    ax.set_title(f"{title}: {study.study_name}", loc="left")
    fig.subplots_adjust(left=0.17 if kind == "importance" else 0.1, right=0.97 if kind == "importance" else 0.74,
                        bottom=0.13, top=0.9)  # the history legend sits right of the axes
    save(fig, path)


@contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """`name`'s warnings are silenced while plotting, and its level restored after: the level is
    process-wide, and a sweep in the same process still wants Optuna's warnings."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def add_pruned_trials(ax, study: optuna.Study) -> None:
    """Optuna's history plot shows completed trials only; a pruned trial is drawn at the last
    value it reported, so the plot shows what the pruner stopped."""
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values]
    if not pruned:
        return
    last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
    ax.scatter([t.number for t in pruned], last, marker="x", color="tab:gray", zorder=3,
               label="pruned (last reported value)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)


# ---------------------------------------------------------------- MLflow and HTML


def log_report(experiment: str, report: Report, tables: dict[str, str]) -> str:
    """Log the plots and tables to the experiment's report run (one per experiment, reused)."""
    experiment_id = leaderboard.experiment_id_of(experiment)
    existing = mlflow.search_runs([experiment_id], filter_string=names.tags_filter(**{names.TAG_ROLE: names.ROLE_REPORT}),
                                  order_by=["attributes.start_time ASC"], output_format="list")
    client = mlflow.MlflowClient()
    if existing:
        run_id = existing[0].info.run_id
    else:
        run_name = f"{experiment}-leaderboard"
        tags = {names.TAG_ROLE: names.ROLE_REPORT, names.TAG_EXPERIMENT: experiment, names.TAG_RUN_NAME: run_name}
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
        client.set_terminated(run_id)
    for figure in report.figures:
        client.log_artifact(run_id, str(figure.path), names.ARTIFACT_PLOTS)
    for name, text in tables.items():
        client.log_text(run_id, text, name)
    client.set_tag(run_id, names.TAG_UPDATED, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return run_id


def html_page(experiment: str, report: Report) -> str:
    """One self-contained page: the table and every plot embedded, no scripts, no external files."""
    board = report.board
    shown = pd.DataFrame(leaderboard.display_rows(board))
    shown.insert(0, "#", range(1, len(shown) + 1))
    ci = [
        f"[{leaderboard.percent(lo)}, {leaderboard.percent(hi)}]"
        for lo, hi in zip(board["test_top1_low"], board["test_top1_high"])
    ]
    shown.insert(shown.columns.get_loc("test@1±CI") + 1, "test@1 95% CI", ci)
    table = shown.to_html(index=False, classes="leaderboard", border=0, escape=True)
    images = "\n".join(
        f'<figure><img alt="{html.escape(f.title)}" src="data:image/png;base64,'
        f'{base64.b64encode(f.path.read_bytes()).decode()}"><figcaption>{html.escape(f.title)}</figcaption></figure>'
        for f in report.figures
    )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in report.notes)
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return PAGE.format(
        title=html.escape(f"Leaderboard: {experiment}"),
        meta=html.escape(f"{len(board)} row{'' if len(board) == 1 else 's'} from {mlflow_store.display_uri()}, generated {generated}"),
        compare=compare_link(experiment, board),
        legend=html.escape(leaderboard.LEGEND),
        table=table,
        images=images,
        notes=f"<h2>Not drawn</h2><ul>{notes}</ul>" if notes else "",
        data=html.escape(json.dumps(leaderboard.to_records(board), indent=1)),
    )


def compare_link(experiment: str, board: pd.DataFrame) -> str:
    """Links into the MLflow UI: the experiment's runs, the rows side by side on MLflow's compare page
    (parallel coordinates, scatter, every column), and per row its best trial and its study's trials."""
    url = leaderboard.compare_url(experiment, board)
    if not url:
        return ""
    experiment_id = leaderboard.experiment_id_of(experiment)

    def link(href: str, text: str) -> str:
        return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'

    start = f" (start <code>{html.escape(mlflow_store.ui_command())}</code> first)" if mlflow_store.ui_command() else ""
    rows = "".join(
        f"<li>{html.escape(row['row'])}: {link(row['run'], 'its best trial')}"
        + (f", {link(row['compare'], 'its study’s trials side by side')}" if row["compare"] else "") + "</li>"
        for row in mlflow_view.row_links(experiment_id, board))
    return (f'<p class="meta">In the MLflow UI{start}: {link(mlflow_store.experiment_url(experiment_id), "the runs, best first")}, '
            f'{link(url, "these rows side by side")}</p><ul class="meta">{rows}</ul>')


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table.leaderboard {{ border-collapse: collapse; font-size: 0.9rem; }}
table.leaderboard th, table.leaderboard td {{ padding: 0.25rem 0.6rem; border-bottom: 1px solid #ddd; text-align: right; }}
table.leaderboard tr:first-child td {{ font-weight: bold; }}
table.leaderboard td:nth-child(2), table.leaderboard td:nth-child(3), table.leaderboard th:nth-child(2),
table.leaderboard th:nth-child(3) {{ text-align: left; }}
figure {{ display: inline-block; margin: 1rem 1rem 1rem 0; vertical-align: top; }}
figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption, .meta {{ color: #666; font-size: 0.85rem; }}
details pre {{ font-size: 0.75rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="meta">{meta}</p>
{table}
<p class="meta">{legend}</p>
{compare}
<h2>Plots</h2>
{images}
{notes}
<details><summary>All columns (JSON)</summary><pre>{data}</pre></details>
</body>
</html>
"""
