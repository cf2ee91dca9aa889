"""The report's plots, drawn from made-up boards and studies (the end-to-end page: test_leaderboard.py)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib
import numpy as np
import optuna
import pandas as pd
import pytest

from benchmark import report

matplotlib.use("Agg")


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions would have saved, still open."""
    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig))
    return figures


def board(*rows: tuple[str, float, float, bool]) -> pd.DataFrame:
    return pd.DataFrame([{"backbone": b, "strategy": "frozen", "infer_images_per_sec": speed, "val_top1": top1,
                          "params": 1e6, "pareto_throughput": front} for b, speed, top1, front in rows])


def legend_labels(fig) -> list[str]:
    return [text.get_text() for text in fig.axes[0].get_legend().get_texts()]


def test_a_front_of_one_point_has_no_line_in_the_legend(drawn, tmp_path):
    report.plot_pareto(board(("a", 100.0, 0.5, True), ("b", 50.0, 0.4, False)), tmp_path / "p.png")
    assert legend_labels(drawn[0]) == ["on the Pareto front", "dominated"]
    assert drawn[0].axes[0].get_lines() == []


def test_a_front_of_two_points_is_drawn_as_a_line(drawn, tmp_path):
    report.plot_pareto(board(("a", 100.0, 0.5, True), ("b", 50.0, 0.6, True)), tmp_path / "p.png")
    assert legend_labels(drawn[0]) == ["on the Pareto front", "Pareto front (accuracy vs throughput)"]
    assert len(drawn[0].axes[0].get_lines()) == 1


def study_with_a_pruned_trial() -> optuna.Study:
    study = optuna.create_study(direction="maximize", study_name="s")
    complete = optuna.trial.TrialState.COMPLETE
    for value in (0.3, 0.5):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}, state=complete,
                                                  intermediate_values={0: value, 1: value}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={}, distributions={},
                                              intermediate_values={0: 0.05, 1: 0.1}))
    return study


def test_the_history_plot_shows_pruned_trials_at_their_last_value_on_whole_trial_numbers(drawn, tmp_path):
    report.plot_optuna(study_with_a_pruned_trial(), "history", tmp_path / "h.png")
    ax = drawn[0].axes[0]
    assert "pruned (last reported value)" in legend_labels(drawn[0])
    pruned = [c for c in ax.collections if c.get_label() == "pruned (last reported value)"][0]
    assert pruned.get_offsets().tolist() == [[2.0, 0.1]]
    drawn[0].canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plotting_leaves_optunas_log_level_as_it_was(drawn, tmp_path):
    """A report drawn in a sweep's process must not silence the sweep's Optuna warnings after it."""
    optuna_logger = optuna.logging.get_logger("optuna")
    before = optuna_logger.level
    optuna_logger.setLevel(10)
    try:
        report.plot_optuna(study_with_a_pruned_trial(), "history", tmp_path / "h.png")
        assert optuna_logger.level == 10
    finally:
        optuna_logger.setLevel(before)


# ---------------------------------------------------------------- the confusion matrix, any number of classes

THREE_LABELS = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
THREE_PREDICTED = np.array([0, 0, 0, 1, 1, 0, 2, 2, 0, 0])


def tick_labels(ax) -> tuple[list[str], list[str]]:
    return [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]


def test_a_three_class_confusion_matrix_is_normalised_by_true_class_with_names_on_both_axes(drawn, tmp_path):
    report.plot_confusion(THREE_LABELS, THREE_PREDICTED, ["cat", "dog", "fox"], "vgg16 / frozen", tmp_path / "c.png")
    ax = drawn[0].axes[0]
    shown = np.asarray(ax.images[0].get_array())
    assert np.allclose(shown, [[3 / 4, 1 / 4, 0], [1 / 2, 1 / 2, 0], [2 / 4, 0, 2 / 4]])
    assert tick_labels(ax) == (["cat", "dog", "fox"], ["cat", "dog", "fox"])
    assert ax.get_ylabel() == "true" and ax.get_xlabel() == "predicted"
    assert "3 classes, 10 test images, top-1 60.0%, balanced 58.3%" in ax.get_title()


def test_a_confusion_matrix_has_no_ticks_above_30_classes_and_is_not_drawn_above_100(drawn, tmp_path):
    labels = np.arange(400) % 40
    report.plot_confusion(labels, labels, [f"class {i}" for i in range(40)], "t", tmp_path / "c.png")
    assert drawn[0].axes[0].get_xticks().size == 0 and drawn[0].axes[0].get_yticks().size == 0
    report.plot_confusion(THREE_LABELS, THREE_PREDICTED, None, "t", tmp_path / "c.png")  # no saved names: indices
    assert tick_labels(drawn[1].axes[0])[0] == ["0", "1", "2"]
    with pytest.raises(report.SkippedPlot, match="101 classes, more than the 100"):
        report.plot_confusion(np.arange(101), np.arange(101), [str(i) for i in range(101)], "t", tmp_path / "c.png")
    assert len(drawn) == 2


def report_of(predictions: dict, source: str, monkeypatch, tmp_path) -> report.Report:
    """build_report's figures and notes for a best row with these predictions, the other plots stubbed."""
    monkeypatch.setattr(report, "best_predictions", lambda run_id: predictions)
    params = {"data.source": source, "data.label_mode": "fine"}
    monkeypatch.setattr(report.mlflow, "get_run", lambda run_id: SimpleNamespace(data=SimpleNamespace(params=params)))
    for plot in ("plot_pareto", "plot_learning_curves", "plot_test_images"):
        monkeypatch.setattr(report, plot, lambda *args: None)
    row = {"backbone": "vgg16", "strategy": "frozen", "run_id": "r1", "study": ""}
    return report.build_report("x", pd.DataFrame([row]), tmp_path / "plots")


def test_the_report_draws_a_three_class_matrix_with_its_names_and_notes_one_above_100(drawn, monkeypatch, tmp_path):
    three = {"labels": THREE_LABELS, "top5": np.stack([THREE_PREDICTED] * 3, axis=1), "class_names": ["a", "b", "c"]}
    drawn_report = report_of(three, "images", monkeypatch, tmp_path)
    assert "confusion_fine.png" in [f.name for f in drawn_report.figures]
    assert "confusion_coarse.png" not in [f.name for f in drawn_report.figures]  # not CIFAR-100: no superclasses
    confusion = [fig for fig in drawn if fig.axes[0].get_ylabel() == "true"]
    assert len(confusion) == 1 and tick_labels(confusion[0].axes[0])[1] == ["a", "b", "c"]

    labels = np.arange(500) % 120
    many = {"labels": labels, "top5": np.stack([labels] * 5, axis=1), "class_names": [str(i) for i in range(120)]}
    skipped = report_of(many, "images", monkeypatch, tmp_path)
    assert "confusion_fine.png" not in [f.name for f in skipped.figures]
    assert any("120 classes, more than the 100" in note for note in skipped.notes)


# ---------------------------------------------------------------- titles that fit


def title_extents(fig) -> list:
    fig.canvas.draw()
    return [t.get_window_extent() for t in report.titles(fig)]


def test_a_title_longer_than_the_figure_is_wrapped_not_cut(drawn, tmp_path):
    study = study_with_a_pruned_trial()
    study.study_name = "transfer-efficientnetlite0-two_phase-ffb9701d-with-a-name-longer-than-the-figure"
    report.plot_optuna(study, "history", tmp_path / "h.png")
    fig = drawn[0]
    width, height = fig.bbox.width, fig.bbox.height
    assert any(e.x1 > width for e in title_extents(fig))  # as Optuna's plot has it: cut at the right edge
    report.fit_titles(fig)
    assert all(0 <= e.x0 and e.x1 <= width and e.y1 <= height for e in title_extents(fig))
    title = report.titles(fig)[0].get_text()
    assert title.count("\n") >= 1 and title.replace("\n", "").replace(" ", "") == \
        f"Optimization History Plot: {study.study_name}".replace(" ", "")
