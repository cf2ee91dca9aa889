"""Seed repeats: the best configuration of each top row, retrained with new training seeds.

A row's selected trial is the best of many on validation, so its own test score is optimistic;
retraining its configuration with N new seeds (the split fixed unless `resplit`) gives the mean
and spread a result should be quoted with. Each repeat is an MLflow run of role `confirm`, nested
under its study's parent run beside the trials, tagged with the trial run it repeats (confirm_of)
and its repeat number (confirm_seed); rerunning skips
the repeats already finished, so it resumes like a sweep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mlflow
import pandas as pd

from benchmark import leaderboard, mlflow_view, names, report, study_identity, track, trial
from benchmark.data import load_dataset
from benchmark.errors import BenchmarkError
from benchmark.spec import ExperimentSpec, TrialSpec

SEED_STEP = 1000  # repeat k trains with seed + k * SEED_STEP: far from the seeds a study's trials used


@dataclass
class Repeat:
    row: str
    seed: int
    test_top1: float
    skipped: bool  # finished by an earlier invocation


def repeat_spec(spec: TrialSpec, k: int, resplit: bool) -> TrialSpec:
    training = spec.training.model_copy(update={"seed": spec.training.seed + k * SEED_STEP})
    data = spec.data.model_copy(update={"seed": spec.data.seed + k * SEED_STEP}) if resplit else spec.data
    return spec.model_copy(update={"training": training, "data": data})


def finished_repeats(experiment_id: str, run_id: str, resplit: bool) -> dict[int, float]:
    """confirm_seed -> test_top1 of the finished repeats of one trial run."""
    runs = mlflow.search_runs(
        [experiment_id], output_format="list",
        filter_string=names.tags_filter(**{names.TAG_ROLE: names.ROLE_CONFIRM, names.TAG_CONFIRM_OF: run_id,
                                           names.TAG_CONFIRM_RESPLIT: str(resplit)}) + " and attributes.status = 'FINISHED'",
    )
    return {int(r.data.tags[names.TAG_CONFIRM_SEED]): r.data.metrics[names.TEST_TOP1] for r in runs if names.TEST_TOP1 in r.data.metrics}


def top_rows(experiment: ExperimentSpec, top: int) -> pd.DataFrame:
    board = leaderboard.leaderboard(experiment, intervals=False)
    rows = board[board["kind"] == "sweep"].head(top)
    if rows.empty:
        raise BenchmarkError(f"experiment '{experiment.name}' has no sweep results to confirm; "
                             f"run `python -m benchmark sweep --experiment {experiment.name}` first")
    return rows


def run_confirm(experiment: ExperimentSpec, top: int = 3, seeds: int = 3, resplit: bool = False,
                verbose: int = 0, say: Callable[[str], None] = print) -> list[Repeat]:
    rows = top_rows(experiment, top)
    experiment_id = leaderboard.experiment_id_of(experiment.name)
    mlflow_view.update(experiment_id)
    repeats = []
    for number, row in enumerate(rows.itertuples(), start=1):
        label = f"{row.backbone}/{row.strategy}"
        base = report.trial_spec(row.run_id)  # the selected trial's own spec: its searched values included
        parent = mlflow.get_run(row.run_id).data.tags.get(names.TAG_PARENT_RUN)  # its study's parent run
        done = finished_repeats(experiment_id, row.run_id, resplit)
        data = None
        for k in range(1, seeds + 1):
            if k in done:
                repeats.append(Repeat(label, k, done[k], skipped=True))
                continue
            spec = repeat_spec(base, k, resplit)
            if data is None or resplit:
                data = load_dataset(spec.data)
                data_input = track.dataset(spec.data, data.origin, study_identity.data_fingerprint(data))
            result = repeat_once(spec, data, row, k, resplit, verbose, parent, data_input)
            repeats.append(Repeat(label, k, result, skipped=False))
            say(f"[{number}/{len(rows)} {label}] repeat {k}/{seeds} (seed {spec.training.seed}"
                f"{f', split seed {spec.data.seed}' if resplit else ''}): test_top1={result:.4f}")
    return repeats


def repeat_once(spec: TrialSpec, data, row, k: int, resplit: bool, verbose: int, parent: str | None = None,
                data_input=None) -> float:
    tags = {names.TAG_CONFIRM_OF: row.run_id, names.TAG_CONFIRM_SEED: str(k), names.TAG_CONFIRM_RESPLIT: str(resplit),
            names.TAG_STUDY: row.study, names.TAG_TRIAL_NUMBER: str(row.trial_number)}
    if parent:  # a single `run` has none
        tags[names.TAG_PARENT_RUN] = parent
    full_name = names.trial_full_name(row.study or spec.experiment, row.trial_number) + f"-seed{k}" + ("-resplit" if resplit else "")
    tags[names.TAG_FULL_NAME] = full_name
    name = names.run_name(spec.backbone.name, spec.strategy_name, trial=row.trial_number, seed=k, resplit=resplit)
    prepared = trial.prepare(spec, data)
    with track.open_run(spec, names.ROLE_CONFIRM, data.origin, run_name=name, extra_tags=tags, data_input=data_input) as run:
        # a repeat keeps its curves and predictions, not a model
        record = trial.run_tracked(prepared, run.info.run_id, keep=False, verbose=verbose)
    return record.metrics[names.TEST_TOP1]


def summary(repeats: list[Repeat]) -> list[str]:
    lines = []
    for row in dict.fromkeys(r.row for r in repeats):
        scores = pd.Series([r.test_top1 for r in repeats if r.row == row])
        spread = f" ± {100 * scores.std(ddof=1):.1f}" if len(scores) > 1 else ""
        lines.append(f"{row}: test_top1 {100 * scores.mean():.1f}{spread} over {len(scores)} seeds")
    return lines
