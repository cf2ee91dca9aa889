"""`leaderboard` and `check` over stores of many trials: what they ask the store does not grow with
the number of trial runs (the same SQL statements, the same runs read), so their time does not
either. The stores are real, filled by benchmarks/leaderboard_speed.py (its timings are in
docs/performance.md; no test here is timed)."""

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine

from benchmark import check, cli, leaderboard, mlflow_store, mlflow_view, names

pytestmark = pytest.mark.slow  # fills two MLflow stores

REPO = Path(__file__).resolve().parent.parent


def speed_benchmark():
    spec = importlib.util.spec_from_file_location("leaderboard_speed", REPO / "benchmarks" / "leaderboard_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StoreReads:
    """Counts, while active, the SQL statements sent to any MLflow store and the runs its searches
    return: those of the searches for one study's trials (the compare links) apart."""

    def __init__(self, monkeypatch):
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        self.statements, self.runs, self.link_runs, self.active = 0, 0, 0, False
        original = SqlAlchemyStore._search_runs

        def search_runs(store, experiment_ids, filter_string, *args, **kwargs):
            runs, token = original(store, experiment_ids, filter_string, *args, **kwargs)
            if self.active and names.TAG_STUDY in filter_string and f"'{names.ROLE_TRIAL}'" in filter_string:
                self.link_runs += len(runs)
            elif self.active:
                self.runs += len(runs)
            return runs, token

        monkeypatch.setattr(SqlAlchemyStore, "_search_runs", search_runs)
        event.listen(Engine, "before_cursor_execute", self.count)

    def count(self, *_):
        self.statements += self.active

    def during(self, command) -> dict[str, int]:
        self.statements, self.runs, self.link_runs, self.active = 0, 0, 0, True
        try:
            assert command() == 0
        finally:
            self.active = False
        return {"statements": self.statements, "runs": self.runs, "link_runs": self.link_runs}

    def close(self):
        event.remove(Engine, "before_cursor_execute", self.count)


@pytest.fixture
def reads(monkeypatch):
    counter = StoreReads(monkeypatch)
    yield counter
    counter.close()


def filled_store(path: Path, monkeypatch, trial_runs: int) -> Path:
    monkeypatch.setenv("BENCHMARK_STORE", str(path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    speed_benchmark().fill(trial_runs, studies_per_pair=1)  # a study for each of the 4 pairs of ci
    baseline = path / "baseline.json"
    mlflow_store.configure_for_reading()
    assert cli.main(["leaderboard", "--experiment", "ci"]) == 0  # its first call opens the store: not counted
    board = leaderboard.leaderboard("ci")
    check.write_baseline(check.updated_baseline("ci", check.with_data(board, "ci"), None, spread=""), baseline)
    return baseline


def test_leaderboard_and_check_ask_the_store_the_same_however_many_trials(tmp_path, monkeypatch, reads, capsys):
    asked = {}
    for trial_runs in (20, 200):  # 5 and 50 trials per study
        baseline = filled_store(tmp_path / f"store-{trial_runs}", monkeypatch, trial_runs)
        asked[trial_runs] = {
            "leaderboard": reads.during(lambda: cli.main(["leaderboard", "--experiment", "ci"])),
            "check": reads.during(lambda: cli.main(["check", "--experiment", "ci", "--baseline", str(baseline)])),
        }
        shown = capsys.readouterr()
        assert "check passed" in shown.out and shown.out.count("resnet50") >= 2
    few, many = asked[20], asked[200]
    assert few["check"] == many["check"] and many["check"]["link_runs"] == 0, asked
    for key in ("statements", "runs"):
        assert few["leaderboard"][key] == many["leaderboard"][key], asked
    assert 0 < many["leaderboard"]["runs"] < 20  # parent runs and best runs, never every trial
    # The terminal table's compare link of each of its 4 rows holds that study's best trials, at most
    # MOST_RUNS_COMPARED: the only runs read that grow with the trials, and only up to that.
    assert few["leaderboard"]["link_runs"] < many["leaderboard"]["link_runs"] <= 4 * mlflow_view.MOST_RUNS_COMPARED


def test_mcnemar_without_scipy_stats_is_scipys_binomial_test():
    """mcnemar_exact takes the binomial tail from scipy.special (scipy.stats alone costs every
    leaderboard a second to import); it is scipy.stats.binomtest's two-sided p-value."""
    from scipy.stats import binomtest

    for n, k in itertools.product([1, 2, 3, 10, 51, 100, 999, 10_000], [0, 1, 2, 5, 50, 499, 5000]):
        if k > n:
            continue
        row = np.zeros(n + 7, bool)
        best = np.zeros(n + 7, bool)
        best[:k] = True  # k images only the best gets right
        row[k:n] = True  # n - k only the row gets right
        expected = binomtest(min(k, n - k), n, 0.5).pvalue
        assert leaderboard.mcnemar_exact(row, best) == pytest.approx(expected, rel=1e-9, abs=1e-300), (n, k)
