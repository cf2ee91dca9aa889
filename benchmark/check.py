"""Regression checks: the leaderboard of an experiment against a baseline file kept in the repo.

A baseline (experiments/baselines/<experiment>.json) holds, per backbone x strategy, each checked
metric's value with its tolerance, and the environment it was recorded on. A metric holds when

  direction "higher" (accuracy, throughput): now >= baseline - allowed   (above + allowed: improvement)
  direction "equal"  (parameters, size):     |now - baseline| <= allowed
  allowed = tolerance           for kind "absolute" (accuracy: fractions, 0.03 = 3 points)
          = tolerance * |base|  for kind "relative" (throughput, size, parameters)

Throughput depends on the machine as much as on the code, so an inference throughput that looks
like a regression is measured again here before it is called one: the trial's model and its
backbone alone, side by side, best of RECHECK_REPEATS. The baseline is scaled by how fast this
machine runs that backbone against the rate recorded with the baseline (`reference_images_per_sec`),
so what is checked is what the project puts around a backbone (head, preprocessing, precision,
XLA), not the machine. A training throughput cannot be re-measured this way (it is the sweep's own
epoch timing) and is not checked by default.

`--update` also records each row's data fingerprint (the hash of the dataset its study's trials saw,
from the study's parent run). A row whose results now come from another dataset is not compared:
its verdict is `data changed` and the check fails. A baseline row without a fingerprint (recorded
before they were) is compared as before.

Exit codes: 0 every metric holds, 1 a regression (or a checked row has no results, or its data
changed), 2 a baseline that is missing or malformed, or no results to check.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import mlflow
import pandas as pd
from pydantic import ConfigDict, Field, ValidationError

from benchmark import files, leaderboard, names, spec, study_identity
from benchmark.errors import BenchmarkError, tensorflow_start_up_silenced

BASELINES_DIR = "baselines"  # under experiments/
CHECK_FAILED = 1

# Defaults for metrics a baseline does not have yet (`--update` keeps the tolerances already in a file).
DEFAULT_TOLERANCES: dict[str, tuple[str, float, str]] = {
    "val_top1": ("absolute", 0.03, "higher"),
    "test_top1": ("absolute", 0.03, "higher"),
    "test_top5": ("absolute", 0.03, "higher"),
    "params": ("relative", 0.0, "equal"),
    "model_size_mb": ("relative", 0.01, "equal"),
    "infer_images_per_sec": ("relative", 0.5, "higher"),
}
RECHECKED = "infer_images_per_sec"
RECHECK_REPEATS = 3
DATA = "data"  # a baseline row's field and the board's column (with_data): the data fingerprint of the row's study
DATA_CHANGED = "data changed"


class Record(spec.Strict):
    """A baseline file's parts: unknown keys and loose types (a number written as a string) are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, allow_inf_nan=False)


class MetricBaseline(Record):
    value: float
    tolerance: float = Field(ge=0)
    kind: Literal["absolute", "relative"]
    direction: Literal["higher", "equal"]
    # RECHECKED only: the images/s of the row's backbone alone on the machine that recorded `value`.
    reference_images_per_sec: float | None = Field(default=None, gt=0)


class RowBaseline(Record):
    backbone: str
    strategy: str
    data: str | None = None  # the data fingerprint of the row's study when recorded (absent in older baselines)
    metrics: dict[str, MetricBaseline] = Field(min_length=1)


class Baseline(Record):
    experiment: str
    recorded_at: str
    environment: dict[str, str]
    spread: str = ""  # where the measured run-to-run spread is written down
    rows: list[RowBaseline] = Field(min_length=1)


def baseline_path(experiment: str, path: str | Path | None = None) -> Path:
    """--baseline, else the first experiments/baselines/<experiment>.json found where experiment
    names are looked up (./experiments, then the repo's); a new one goes beside the experiments."""
    if path is not None:
        return Path(path)
    candidates = [d / BASELINES_DIR / f"{experiment}.json" for d in spec.experiment_dirs()]
    existing = [c for c in candidates if c.is_file()]
    if existing:
        return existing[0]
    return next((c for c in candidates if c.parent.parent.is_dir()), candidates[-1])


def load_baseline(path: Path, experiment: str) -> Baseline:
    if not path.is_file():
        raise BenchmarkError(
            f"no baseline at {path}; record one from the current results with "
            f"`python -m benchmark check --experiment {experiment} --update` (or pass --baseline PATH)"
        )
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"baseline {path} is not valid JSON ({e}); fix it or rewrite it with --update") from None
    try:
        baseline = Baseline.model_validate(content)
    except ValidationError as e:
        problems = "; ".join(spec.describe_error(err) for err in e.errors())
        raise BenchmarkError(f"baseline {path} is malformed: {problems}; fix it or rewrite it with --update") from None
    if baseline.experiment != experiment:
        raise BenchmarkError(
            f"baseline {path} was recorded for experiment '{baseline.experiment}', not '{experiment}'; "
            f"pass --experiment {baseline.experiment} or the right --baseline"
        )
    unknown = sorted({m for row in baseline.rows for m in row.metrics} - set(leaderboard.COLUMNS))
    if unknown:
        raise BenchmarkError(
            f"baseline {path} checks unknown metrics {', '.join(unknown)}; use leaderboard columns such as "
            f"{', '.join(DEFAULT_TOLERANCES)}"
        )
    return baseline


# ---------------------------------------------------------------- comparing


def allowed(metric: MetricBaseline) -> float:
    return metric.tolerance if metric.kind == "absolute" else metric.tolerance * abs(metric.value)


def verdict(metric: MetricBaseline, now: float) -> str:
    if now is None or not math.isfinite(now):
        return "missing"
    delta, slack = now - metric.value, allowed(metric) + 1e-12
    if metric.direction == "equal":
        return "ok" if abs(delta) <= slack else "changed"
    if delta < -slack:
        return "regression"
    return "improvement" if delta > slack else "ok"


FAILING = ("regression", "changed", "missing", DATA_CHANGED)


def current_data(board: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(backbone, strategy) -> the data fingerprint of the row's study, where the board has one."""
    if DATA not in board:
        return {}
    known = board.dropna(subset=[DATA])
    return dict(zip(zip(known["backbone"], known["strategy"]), known[DATA]))


def data_changed(row: RowBaseline, now: str | None) -> bool:
    """The baseline records the dataset its row saw, and the row's results now come from another one."""
    return row.data is not None and now is not None and now != row.data


def whole_row(label: str, verdict: str) -> dict:
    """A line about a row as a whole, not one of its metrics."""
    return {"row": label, "metric": "-", "baseline": float("nan"), "now": float("nan"), "delta": float("nan"),
            "tolerance": "-", "verdict": verdict}


def compare(baseline: Baseline, board: pd.DataFrame) -> pd.DataFrame:
    """One line per checked metric: row, metric, baseline, now, delta, tolerance, verdict; one line
    (DATA_CHANGED) for a row whose data changed, whose metrics are not compared."""
    results = board.set_index(["backbone", "strategy"])
    data = current_data(board)
    lines = []
    for row in baseline.rows:
        key = (row.backbone, row.strategy)
        found = results.loc[key] if key in results.index else None
        if data_changed(row, data.get(key)):
            lines.append(whole_row(f"{row.backbone}/{row.strategy}", DATA_CHANGED))
            continue
        for name, metric in row.metrics.items():
            now = float(found[name]) if found is not None and pd.notna(found[name]) else float("nan")
            lines.append({
                "row": f"{row.backbone}/{row.strategy}", "metric": name, "baseline": metric.value, "now": now,
                "delta": now - metric.value, "tolerance": describe_tolerance(metric), "verdict": verdict(metric, now),
            })  # fmt: skip
    checked = {(r.backbone, r.strategy) for r in baseline.rows}
    for backbone, strategy in results.index:
        if (backbone, strategy) not in checked:
            lines.append(whole_row(f"{backbone}/{strategy}", "new (not in the baseline)"))
    return pd.DataFrame(lines, columns=["row", "metric", "baseline", "now", "delta", "tolerance", "verdict"])


def data_notes(baseline: Baseline, board: pd.DataFrame) -> list[str]:
    """One line per row whose data changed: what differs and what to do."""
    data, notes = current_data(board), []
    for row in baseline.rows:
        now = data.get((row.backbone, row.strategy))
        if data_changed(row, now):
            notes.append(
                f"{row.backbone}/{row.strategy}: the dataset differs from the one the baseline was recorded on "
                f"(data fingerprint {short(now)}, recorded {short(row.data)}), so its metrics are not compared; if "
                f"the change is meant, record a new baseline with "
                f"`python -m benchmark check --experiment {baseline.experiment} --update`")
    return notes


def short(fingerprint: str) -> str:
    return fingerprint[: study_identity.SHORT]


def recheck_throughput(table: pd.DataFrame, baseline: Baseline, current: spec.ExperimentSpec | None,
                       rates=None) -> tuple[pd.DataFrame, list[str]]:
    """Measure again each RECHECKED metric that looks like a regression (see the module's text).
    Returns the table with those lines' `now` and verdict updated, and one note per line.
    `rates(trial_spec) -> (model, backbone alone)` defaults to throughput.model_and_backbone_rates."""
    rates = rates or (lambda trial: measuring_tools().model_and_backbone_rates(trial, RECHECK_REPEATS))
    metrics = {f"{r.backbone}/{r.strategy}": (r, r.metrics.get(RECHECKED)) for r in baseline.rows}
    table, notes = table.copy(), []
    for index, line in table[(table["metric"] == RECHECKED) & (table["verdict"] == "regression")].iterrows():
        row, metric = metrics[line["row"]]
        looked = f"{line['row']} {RECHECKED} looked like a regression ({number(line['now'])} against {number(metric.value)})"
        if current is None:
            notes.append(f"{looked}; not measured again: no spec file for experiment '{baseline.experiment}'")
            continue
        try:
            trial = current.resolve(row.backbone, row.strategy)
        except BenchmarkError as e:
            notes.append(f"{looked}; not measured again: {e}")
            continue
        model_now, backbone_now = rates(trial)
        now = max(float(line["now"]), model_now)
        expected, why = metric.value, "the baseline records no rate of the backbone alone (rewrite it with --update)"
        if metric.reference_images_per_sec:
            speed = backbone_now / metric.reference_images_per_sec
            expected = metric.value * speed
            why = (f"its backbone alone runs {number(backbone_now)} img/s here against "
                   f"{number(metric.reference_images_per_sec)} where the baseline was recorded (x{speed:.2f}), "
                   f"so the baseline here is {number(expected)}")
        result = verdict(metric.model_copy(update={"value": expected}), now)
        table.loc[index, ["now", "delta", "verdict"]] = [now, now - metric.value, result]
        notes.append(f"{looked}; measured again, best of {RECHECK_REPEATS}: {number(model_now)} img/s; {why}: {result}")
    return table, notes


def describe_tolerance(metric: MetricBaseline) -> str:
    sign = "±" if metric.direction == "equal" else "-"
    if metric.kind == "relative":
        return f"{sign}{100 * metric.tolerance:g}%"
    return f"{sign}{metric.tolerance:g}"


def failed(table: pd.DataFrame) -> bool:
    return bool(table["verdict"].isin(FAILING).any())


def number(value: float) -> str:
    if pd.isna(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4g}"


def render(table: pd.DataFrame, fmt: str = "table") -> str:
    shown = table.assign(**{c: table[c].map(number) for c in ("baseline", "now", "delta")})
    shown["verdict"] = shown["verdict"].map(lambda v: v.upper() if v in FAILING else v)
    if fmt == "markdown":
        lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
        lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in shown.itertuples(index=False)]
        return "\n".join(lines) + "\n"
    return shown.to_string(index=False) + "\n"


def summary(table: pd.DataFrame) -> str:
    counts = table["verdict"].value_counts()
    bad = int(sum(counts.get(v, 0) for v in FAILING))
    parts = [f"{int(n)} {v}" for v, n in counts.items()]
    head = "FAILED" if bad else "passed"
    return f"check {head}: {', '.join(parts)}"


# ---------------------------------------------------------------- updating


def environment_of(run_id: str) -> dict[str, str]:
    tags = mlflow.get_run(run_id).data.tags
    environment = (names.TAG_DEVICE, names.TAG_GIT_COMMIT, names.TAG_DATA_ORIGIN)
    keep = {k: v for k, v in tags.items() if k.startswith(names.VERSION_TAG_PREFIX) or k in environment}
    return dict(sorted(keep.items()))


def measuring_tools():
    """benchmark.throughput, with TensorFlow loaded (and its devices probed) out of sight: its
    native start-up lines would be the only noise `check` prints."""
    with tensorflow_start_up_silenced():
        import keras  # noqa: F401

        from benchmark import measure, model, runtime, throughput, train  # noqa: F401
    return throughput


def reference_rates(current: spec.ExperimentSpec | None, board: pd.DataFrame) -> dict[tuple[str, str], float]:
    """(backbone, strategy) -> inference images/s of the row's backbone alone on this machine."""
    if current is None:
        return {}
    throughput = measuring_tools()
    rates = {}
    for result in board.itertuples():
        trial = current.resolve(result.backbone, result.strategy)
        rates[(result.backbone, result.strategy)] = throughput.backbone_rate(trial, RECHECK_REPEATS)
    return rates


def with_data(board: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """The board with each row's data fingerprint (DATA), read from its study's parent run."""
    return board.assign(**{DATA: board["study"].map(leaderboard.data_fingerprints(experiment))})


def updated_baseline(experiment: str, board: pd.DataFrame, previous: Baseline | None, spread: str,
                     references: dict[tuple[str, str], float] | None = None) -> Baseline:
    """The current results as a baseline; tolerances (and the set of metrics) kept from `previous`;
    `references` (reference_rates) go with each row's RECHECKED metric."""
    old_rows = {(r.backbone, r.strategy): r for r in previous.rows} if previous else {}
    data = current_data(board)
    rows = []
    for result in board.itertuples():
        old = old_rows.get((result.backbone, result.strategy))
        metrics = {}
        for name in old.metrics if old else DEFAULT_TOLERANCES:
            value = getattr(result, name)
            if pd.isna(value):
                continue
            if old and name in old.metrics:
                template = old.metrics[name]
                kind, tolerance, direction = template.kind, template.tolerance, template.direction
            else:
                kind, tolerance, direction = DEFAULT_TOLERANCES[name]
            reference = (references or {}).get((result.backbone, result.strategy)) if name == RECHECKED else None
            metrics[name] = MetricBaseline(value=float(value), tolerance=tolerance, kind=kind, direction=direction,
                                           reference_images_per_sec=reference)
        rows.append(RowBaseline(backbone=result.backbone, strategy=result.strategy,
                                data=data.get((result.backbone, result.strategy)), metrics=metrics))
    return Baseline(
        experiment=experiment,
        recorded_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        environment=environment_of(board.iloc[0]["run_id"]),
        spread=previous.spread if previous else spread,
        rows=rows,
    )


def describe_changes(previous: Baseline | None, new: Baseline) -> list[str]:
    if previous is None:
        return [f"new baseline with {len(new.rows)} rows"]
    before = {(r.backbone, r.strategy, m): v.value for r in previous.rows for m, v in r.metrics.items()}
    after = {(r.backbone, r.strategy, m): v.value for r in new.rows for m, v in r.metrics.items()}
    changes = []
    for key in sorted(set(before) | set(after)):
        label = f"{key[0]}/{key[1]} {key[2]}"
        if key not in after:
            changes.append(f"{label}: removed (was {number(before[key])})")
        elif key not in before:
            changes.append(f"{label}: added {number(after[key])}")
        elif before[key] != after[key]:
            changes.append(f"{label}: {number(before[key])} -> {number(after[key])}")
    return data_changes(previous, new) + changes or ["no values changed"]


def data_changes(previous: Baseline, new: Baseline) -> list[str]:
    """One line per row recorded on another dataset than before."""
    before = {(r.backbone, r.strategy): r for r in previous.rows}
    changes = []
    for row in new.rows:
        old = before.get((row.backbone, row.strategy))
        if old is not None and data_changed(old, row.data):
            changes.append(f"{row.backbone}/{row.strategy}: data changed "
                           f"(fingerprint {short(old.data)} -> {short(row.data)})")
    return changes


def write_baseline(baseline: Baseline, path: Path) -> None:
    files.write_text(path, json.dumps(baseline.model_dump(exclude_none=True), indent=1) + "\n", "the baseline")


def run_check(experiment: str | spec.ExperimentSpec, baseline_file: str | Path | None = None, update: bool = False,
              fmt: str = "table", say=print) -> int:
    """The `check` command: 0 when every metric holds, 1 on a regression, 2 (BenchmarkError) when
    there is nothing to compare. The rows checked are the current spec's studies (kind sweep)."""
    current = leaderboard.spec_of(experiment)
    experiment = current.name if current else str(experiment)
    path = baseline_path(experiment, baseline_file)
    previous = None
    if not update:
        previous = load_baseline(path, experiment)
    else:
        files.check_target(path, "the baseline")  # before the measurements, not after
    if update and path.exists():
        try:
            previous = load_baseline(path, experiment)
        except BenchmarkError as e:
            say(f"replacing it: {e}")
    # Sweeps whose every trial failed are a regression to report (rows MISSING), not "no results".
    board = leaderboard.leaderboard(current or experiment, require_complete=update)
    board = with_data(board[board["kind"] == "sweep"].reset_index(drop=True), experiment)
    if update and board.empty:
        raise BenchmarkError(f"experiment '{experiment}' has no sweep results to record (only single runs); "
                             f"run `python -m benchmark sweep --experiment {experiment}` first")
    if update:
        new = updated_baseline(experiment, board, previous, spread=f"experiments/{BASELINES_DIR}/README.md",
                               references=reference_rates(current, board))
        write_baseline(new, path)
        for line in describe_changes(previous, new):
            say(line)
        for row in new.rows:
            if RECHECKED in row.metrics and row.metrics[RECHECKED].reference_images_per_sec:
                say(f"{row.backbone}/{row.strategy}: its backbone alone runs "
                    f"{number(row.metrics[RECHECKED].reference_images_per_sec)} img/s here (the machine's reference)")
        say(f"wrote {path}")
        return 0
    table, notes = recheck_throughput(compare(previous, board), previous, current)
    say(render(table, fmt), end="")
    for note in notes + data_notes(previous, board):
        say(note)
    say(summary(table) + (f"; baseline {path} (recorded {previous.recorded_at} on {previous.environment.get('device', '?')})"))
    return CHECK_FAILED if failed(table) else 0
