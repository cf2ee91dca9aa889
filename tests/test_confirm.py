"""Seed repeats: `confirm` retrains the best configuration of the top rows with new seeds, as runs
of their own role, resumably; the leaderboard shows their mean and std."""

import mlflow
import numpy as np
import pytest

from benchmark import cli, confirm, leaderboard, report
from benchmark.spec import load_experiment


def confirm_runs():
    return mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'confirm'", output_format="list")


@pytest.mark.slow
def test_confirmations_repeat_the_best_trial_with_new_seeds_and_resume(ci_store_copy, capsys):
    experiment = load_experiment("ci")
    best = leaderboard.leaderboard(experiment).iloc[0]
    selected = report.trial_spec(best["run_id"])
    assert cli.main(["confirm", "--experiment", "ci", "--top", "1", "--seeds", "2", "--quiet"]) == 0
    runs = confirm_runs()
    assert len(runs) == 2 and {r.data.tags["confirm_of"] for r in runs} == {best["run_id"]}
    for run in runs:
        k = int(run.data.tags["confirm_seed"])
        assert run.data.params["training.seed"] == str(selected.training.seed + k * confirm.SEED_STEP)
        assert run.data.params["data.seed"] == str(selected.data.seed)  # the split stays
        assert float(run.data.params["training.learning_rate"]) == pytest.approx(selected.training.learning_rate)
        assert run.data.tags["study_name"] == best["study"] and run.info.status == "FINISHED"
        # nested under the study's parent run, beside the trial it repeats, by a name the UI shows whole
        assert run.data.tags["mlflow.parentRunId"] == mlflow.get_run(best["run_id"]).data.tags["mlflow.parentRunId"]
        assert run.info.run_name == f"{best['backbone']} {best['strategy']} #{best['trial_number']} seed {k}"
        assert run.data.tags["full_name"] == f"{best['study']}-t{best['trial_number']:03d}-seed{k}"
    scores = [r.data.metrics["test_top1"] for r in runs]
    row = leaderboard.leaderboard(experiment).set_index("run_id").loc[best["run_id"]]
    assert row["confirm_runs"] == 2
    assert row["confirm_test_top1_mean"] == pytest.approx(np.mean(scores))
    assert row["confirm_test_top1_std"] == pytest.approx(np.std(scores, ddof=1))
    assert row["trials_complete"] == best["trials_complete"]  # repeats are not trials
    capsys.readouterr()

    assert cli.main(["confirm", "--experiment", "ci", "--top", "1", "--seeds", "2", "--quiet"]) == 0
    assert "2 repeat(s) already finished earlier" in capsys.readouterr().out
    assert len(confirm_runs()) == 2  # nothing retrained


def test_confirm_without_sweeps_is_a_one_line_error(store, capsys):
    assert cli.main(["confirm", "--experiment", "ci"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no MLflow store at") and err.count("\n") == 1
