"""The report's plots, drawn from made-up boards and studies (the end-to-end page: test_leaderboard.py)."""

from __future__ import annotations

import matplotlib
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
