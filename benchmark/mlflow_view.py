"""What the MLflow UI opens on: each experiment's shared view, and the links the commands print.

MLflow's UI restores a saved view from an experiment tag: `#/experiments/<id>/runs?viewStateShareKey=K`
loads the tag `mlflow.sharedViewState.K` (its own Share button works so). Every sweep, `confirm` and
leaderboard writes ours (names.SHARED_VIEW_KEY): the runs table with the result columns
(VIEW_METRICS), the searched hyperparameters, the backbone, strategy and dataset, best validation
top-1 first. Every experiment link (mlflow_store.experiment_url) opens it.

What MLflow 3.17's UI takes from a shared view (read from its bundle): the search facets
(orderByKey, orderByAsc, searchFilter...) and the table's state (selectedColumns, columnOrder...),
but not which runs are expanded (runsExpanded, runsPinned and runsHidden are dropped); and a table
sorted by a metric lists its runs flat, without nesting. So the view shows every run, trials,
parent runs and repeats, each a row of its own, best first: no run hides under a collapsed parent.
"""

from __future__ import annotations

import json
import logging
import os
import time

import mlflow
import pandas as pd

from benchmark import hparams, mlflow_store, names

log = logging.getLogger(__name__)

VIEW_NAME = "benchmark: results, best validation top-1 first"  # the name the UI's saved-views menu shows
VIEW_METRICS = (names.BEST_VAL_TOP1, names.TEST_TOP1, names.TEST_TOP5, names.PARAMS_TOTAL, names.INFER_IMAGES_PER_SEC)
VIEW_TAGS = (names.TAG_BACKBONE, names.TAG_STRATEGY)
DATASET_COLUMN = "attributes.`Dataset`"  # the data each run trained on (track.dataset)
MOST_RUNS_COMPARED = 100  # a study's compare link holds its best this many trials (each run id is 32 characters of URL)


def column(kind: str, name: str) -> str:
    """A column of the UI's runs table, as its view state names it: metrics.`test_top1`."""
    return f"{kind}.`{name}`"


def view_state(searched: list[str]) -> dict:
    """The runs table's state: our columns (the searched params `searched`), best_val_top1 first."""
    columns = [column("metrics", m) for m in VIEW_METRICS] + [column("params", p) for p in searched]
    return {
        "orderByKey": column("metrics", names.OBJECTIVE),
        "orderByAsc": False,
        "selectedColumns": columns + [column("tags", t) for t in VIEW_TAGS] + [DATASET_COLUMN],
    }


def searched_params(experiment_id: str) -> list[str]:
    """The params any of the experiment's studies searches (its parent run shows their ranges), in
    hparams.TABLE's order."""
    parents = mlflow.search_runs([experiment_id], filter_string=names.tags_filter(**{names.TAG_ROLE: names.ROLE_SWEEP}),
                                 output_format="list")
    searched = {key for run in parents for key, value in run.data.params.items() if value.startswith(hparams.SEARCHED)}
    return [entry.field for entry in hparams.TABLE if entry.field in searched]


def shared_state(experiment) -> dict | None:
    """The view state an experiment's tag holds now (None: none, or not ours to read)."""
    value = experiment.tags.get(names.shared_view_tag(names.SHARED_VIEW_KEY))
    try:
        return json.loads(json.loads(value)["state"]) if value else None
    except (ValueError, KeyError, TypeError):
        return None


def update(experiment_id: str) -> bool:
    """Writes the experiment's shared view if it is missing or other than it should be (a new study
    searches another hyperparameter). Returns whether it wrote."""
    state = view_state(searched_params(experiment_id))
    if shared_state(mlflow.get_experiment(experiment_id)) == state:
        return False
    now = int(time.time() * 1000)
    envelope = {"name": VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(state)}  # the UI's saved-view format
    mlflow.MlflowClient().set_experiment_tag(experiment_id, names.shared_view_tag(names.SHARED_VIEW_KEY),
                                             json.dumps(envelope))
    return True


def update_if_writable(experiment_id: str) -> None:
    """update(), for the commands that only read the store: one they cannot write keeps its view."""
    database = mlflow_store.store_dir() / "mlflow.db"
    if mlflow_store.uses_local_store() and not os.access(database, os.W_OK):  # a read-only mount, say
        return
    try:
        update(experiment_id)
    except mlflow.exceptions.MlflowException as e:
        log.warning("could not update the MLflow UI's view of experiment %s (%s)", experiment_id, str(e).splitlines()[0])


# ---------------------------------------------------------------- links into the UI


def study_trials(experiment_id: str, study: str) -> list[str]:
    """The run ids of a study's trials that reached a validation score, best first (at most MOST_RUNS_COMPARED)."""
    runs = mlflow.search_runs([experiment_id], output_format="pandas",
                              filter_string=names.tags_filter(**{names.TAG_ROLE: names.ROLE_TRIAL, names.TAG_STUDY: study}),
                              order_by=[f"{names.metric_column(names.OBJECTIVE)} DESC"], max_results=MOST_RUNS_COMPARED)
    objective = names.metric_column(names.OBJECTIVE)
    if objective not in runs:  # no trial logged a validation score yet (or none ran)
        return []
    return list(runs[runs[objective].notna()]["run_id"])


def study_compare_url(experiment_id: str, study: str) -> str:
    """MLflow's compare page over a study's trials ('' when none has a score yet): its parallel
    coordinates and scatter plots show how the searched values move the metrics."""
    trials = study_trials(experiment_id, study)
    return mlflow_store.compare_url(experiment_id, trials) if trials else ""


def row_links(experiment_id: str, board: pd.DataFrame) -> list[dict[str, str]]:
    """Per leaderboard row: its label, its best trial's run page and its study's compare page."""
    links = []
    for row in board.itertuples():
        study = row.study if isinstance(row.study, str) else ""
        links.append({"row": f"{row.backbone}/{row.strategy}", "run": mlflow_store.run_url(experiment_id, row.run_id),
                      "study": study, "compare": study_compare_url(experiment_id, study) if study else ""})
    return links
