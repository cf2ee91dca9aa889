"""The budget race: who leaves and why (made-up studies in a real Optuna storage), the budget, a
resumed race, and real races of the `ci` experiment (one worker, and two on PostgreSQL)."""

import math
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest

from benchmark import mlflow_store, names, race
from benchmark.errors import BenchmarkError
from benchmark.measure import pack_correct, unpack_correct
from benchmark.spec import RaceSpec, load_experiment, parse_duration

REPO = Path(__file__).resolve().parent.parent
VAL_IMAGES = 400


# ---------------------------------------------------------------- pieces


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("20m", 1200), ("1.5h", 5400), (" 2M ", 120)])
def test_a_duration_is_seconds_minutes_or_hours(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "20 minutes", "-5m", "1d", "m"])
def test_a_bad_duration_names_the_forms(text):
    with pytest.raises(ValueError, match="e.g. 90s, 20m, 1.5h"):
        parse_duration(text)


def test_holm_rejects_step_down():
    # sorted: 0.01 <= 0.05/3 rejected; 0.03 > 0.05/2 stops; 0.04 is not reached
    assert race.holm_rejected([0.04, 0.01, 0.03], 0.05) == [False, True, False]
    assert race.holm_rejected([0.001, 0.02, 0.04], 0.05) == [True, True, True]
    assert race.holm_rejected([], 0.05) == []


def test_right_and_wrong_answers_pack_into_a_short_string():
    correct = np.random.default_rng(0).random(5001) < 0.4
    packed = pack_correct(correct)
    assert len(packed) < 5001 / 4 + 10
    np.testing.assert_array_equal(unpack_correct(packed), correct)


@pytest.mark.parametrize("exit, shown", [
    (None, "racing"),
    ({"reason": "worse", "trials": 4, "p": 0.00213}, "worse p=.002 @4"),
    ({"reason": "worse", "trials": 6, "p": 1e-9}, "worse p<.001 @6"),
    ({"reason": "converged", "trials": 6, "p": None}, "converged @6"),
])
def test_the_race_cell_says_the_state(exit, shown):
    assert race.state_text(exit) == shown
    assert race.state_text(None, ended_by_budget=True) == "budget"


def test_a_budget_comes_from_the_command_line_before_the_spec():
    spec = RaceSpec(budget="10m")
    assert race.Budget.of(spec) == race.Budget(seconds=600)
    assert race.Budget.of(spec, budget_trials=7) == race.Budget(trials=7)
    assert race.Budget.of(RaceSpec()) is None
    with pytest.raises(BenchmarkError, match="--budget 20m"):
        race.check_budget(None)


def test_a_spec_with_a_bad_race_budget_is_refused():
    with pytest.raises(ValueError, match="not a duration"):
        RaceSpec(budget="soon")


# ---------------------------------------------------------------- a race on made-up studies


def answers(value: float, start: int = 0) -> str:
    """Right on round(value * VAL_IMAGES) validation images in a row, from `start`."""
    right = round(value * VAL_IMAGES)
    return pack_correct((np.arange(VAL_IMAGES) >= start) & (np.arange(VAL_IMAGES) < start + right))


# Each pair's validation top-1 by trial: A climbs by 0.02 a trial (more than the noise over 3
# trials), B climbs too but far below A, C stays where it started.
CURVES = {
    ("a", "frozen"): lambda k: min(0.95, 0.50 + 0.02 * k),
    ("b", "frozen"): lambda k: 0.10 + 0.02 * k,
    ("c", "frozen"): lambda k: 0.45,
}


def made_up_studies(storage) -> list:
    studies = []
    for pair in CURVES:
        study = optuna.create_study(study_name="-".join(pair), storage=storage, direction="maximize")
        study.set_user_attr(names.ATTR_DATA_FINGERPRINT, "same images")
        studies.append((pair, study))
    return studies


def made_up_trial(studies: dict, order: list):
    def run(standing: race.Standing) -> None:
        order.append(standing.pair)
        curve = CURVES[standing.pair]

        def objective(trial: optuna.Trial) -> float:
            value = curve(trial.number)
            trial.set_user_attr(names.ATTR_OUTCOME, {names.OUTCOME_VAL_CORRECT: answers(value)})
            return value

        studies[standing.pair].optimize(objective, n_trials=1)

    return run


def run_made_up_race(studies, budget: race.Budget, spec: RaceSpec):
    order, exits = [], []

    def leave(standing, record):
        exits.append((standing.pair, race.record_exit(standing, record)))

    ended = race.race_loop(studies, spec, 3, budget, made_up_trial(dict(studies), order), leave)
    return ended, order, exits


SPEC = RaceSpec(startup=2, min_trials=6, patience=3)


def test_a_race_drops_the_worse_pair_after_min_trials_stops_the_converged_one_and_ends_on_budget():
    studies = made_up_studies(optuna.storages.InMemoryStorage())
    (ended_by, trials_run), order, exits = run_made_up_race(studies, race.Budget(trials=20), SPEC)

    assert ended_by == "budget" and trials_run == 20
    assert order[:6] == [("a", "frozen"), ("b", "frozen"), ("c", "frozen")] * 2  # startup, in rounds in spec order
    assert order[6:9] == [("a", "frozen"), ("c", "frozen"), ("b", "frozen")]  # a round: the most promising first
    left = dict(exits)
    assert set(left) == {("b", "frozen"), ("c", "frozen")}
    assert left[("c", "frozen")]["reason"] == "converged"
    assert left[("c", "frozen")]["trials"] == 5  # its 2 startup trials and 3 that did not raise its best
    assert left[("b", "frozen")]["reason"] == "worse" and left[("b", "frozen")]["trials"] == 6  # not before min_trials
    assert left[("b", "frozen")]["p"] < 1e-6 and left[("b", "frozen")]["leader"] == "a/frozen"
    counts = {pair: order.count(pair) for pair in CURVES}
    assert counts == {("a", "frozen"): 9, ("b", "frozen"): 6, ("c", "frozen"): 5}  # the rest went to the leader
    for pair, study in studies:  # the state is in the studies, for every worker and a rerun
        assert study.user_attrs.get(names.ATTR_RACE_EXIT) == left.get(pair)


def test_a_budget_that_ends_during_startup_has_tried_every_pair():
    studies = made_up_studies(optuna.storages.InMemoryStorage())
    (ended_by, trials_run), order, exits = run_made_up_race(studies, race.Budget(trials=4), SPEC)
    assert (ended_by, trials_run) == ("budget", 4) and exits == []
    assert order == [("a", "frozen"), ("b", "frozen"), ("c", "frozen"), ("a", "frozen")]


def test_a_resumed_race_continues_where_it_stopped(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = run_made_up_race(made_up_studies(storage), race.Budget(trials=12), SPEC)
    assert first[0] == ("budget", 12) and first[2] == []  # nobody has left yet
    reloaded = [(pair, optuna.load_study(study_name="-".join(pair), storage=storage)) for pair in CURVES]
    (ended_by, trials_run), order, exits = run_made_up_race(reloaded, race.Budget(trials=20), SPEC)
    assert (ended_by, trials_run) == ("budget", 8)  # the 12 finished trials count
    assert {pair for pair, _ in exits} == {("b", "frozen"), ("c", "frozen")}
    assert {pair: sum(t.state.name == "COMPLETE" for t in study.trials) for pair, study in reloaded} == \
        {("a", "frozen"): 9, ("b", "frozen"): 6, ("c", "frozen"): 5}  # as the race run in one go


def test_a_race_ends_when_every_pair_has_left():
    studies = made_up_studies(optuna.storages.InMemoryStorage())
    spec = RaceSpec(startup=2, min_trials=2, patience=2)
    (ended_by, trials_run), order, exits = run_made_up_race(studies, race.Budget(trials=1000), spec)
    assert ended_by == "every pair left" and trials_run < 1000
    assert all(s.user_attrs.get(names.ATTR_RACE_EXIT) for _, s in studies)


def test_pairs_tied_with_the_leader_stay_in_the_race():
    """Pairs 1-2 points below the leader, each right on some images the leader gets wrong: no
    significant difference, no exit. The same gap all on one side would be significant."""
    studies = made_up_studies(optuna.storages.InMemoryStorage())
    for (pair, study), value, start in zip(studies, (0.60, 0.59, 0.58), (0, 10, 20)):
        for _ in range(6):
            study.add_trial(optuna.trial.create_trial(
                value=value, user_attrs={names.ATTR_OUTCOME: {names.OUTCOME_VAL_CORRECT: answers(value, start)}}))
    standings = [race.Standing.read(pair, study) for pair, study in studies]
    assert race.decide_exits(standings, RaceSpec(startup=2, min_trials=2, patience=10), 3) == []
    assert race.mcnemar(standings[2].val_correct(), standings[0].val_correct()) > 0.05  # 20 vs 12 images
    one_sided = unpack_correct(answers(0.58))
    assert race.mcnemar(one_sided, standings[0].val_correct()) < 0.01  # 8 vs 0 images: 2 x 0.5^8


def test_a_pair_whose_trials_keep_failing_leaves():
    studies = made_up_studies(optuna.storages.InMemoryStorage())
    (_, failing), = [s for s in studies if s[0] == ("b", "frozen")]
    for _ in range(race.FAILS_TO_LEAVE):
        failing.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    standings = [race.Standing.read(pair, study) for pair, study in studies]
    exits = race.decide_exits(standings, SPEC, 3)
    assert [(s.pair, record["reason"]) for s, record in exits] == [(("b", "frozen"), "failed")]


# ---------------------------------------------------------------- real races


def ci_frozen_race(store: Path, storage: str, trials: int) -> list[str]:
    return [sys.executable, "-m", "benchmark", "sweep", "--experiment", "ci", "--strategy", "frozen",
            "--budget-trials", str(trials), "--storage", storage, "--quiet"]


def race_env(store: Path) -> dict:
    import os

    env = {**os.environ, "BENCHMARK_STORE": str(store)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("BENCHMARK_OPTUNA_STORAGE", None)
    return env


def studies_of(storage: str) -> dict[tuple[str, str], optuna.Study]:
    found = {}
    for summary in optuna.get_all_study_summaries(storage):
        pair = tuple(summary.user_attrs[names.ATTR_PAIR][1:])
        found[pair] = optuna.load_study(study_name=summary.study_name, storage=storage)
    return found


def assert_no_trial_after_its_pair_left(studies: dict) -> None:
    for study in studies.values():
        exit = study.user_attrs.get(names.ATTR_RACE_EXIT)
        if exit is None:
            continue
        left_at = datetime.fromisoformat(exit["at"])
        late = [t.number for t in study.trials if t.datetime_start > left_at]
        assert late == [], f"{study.study_name}: trials {late} started after the pair left at {exit['at']}"
        finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(finished) >= exit["trials"]


@pytest.mark.slow
def test_a_race_of_the_ci_pairs_records_each_exit_and_the_leaderboard_shows_it(store):
    storage = f"sqlite:///{store.parent / 'optuna.db'}"
    done = subprocess.run(ci_frozen_race(store, storage, 8), env=race_env(store), cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    studies = studies_of(storage)
    assert set(studies) == {("vgg16", "frozen"), ("resnet50", "frozen")}
    finished = {pair: sum(t.state.name in ("COMPLETE", "PRUNED") for t in s.trials) for pair, s in studies.items()}
    assert sum(finished.values()) <= 8 and min(finished.values()) >= 2  # the budget; every pair's startup trials
    exits = {pair: s.user_attrs.get(names.ATTR_RACE_EXIT) for pair, s in studies.items()}
    assert any(exits.values())  # random-init resnet50 sits far below vgg16 on these images
    assert_no_trial_after_its_pair_left(studies)
    lines = [line for line in done.stdout.splitlines() if "leaves the race" in line]
    assert len(lines) == sum(e is not None for e in exits.values())  # one line per exit

    mlflow.set_tracking_uri(mlflow_store.tracking_uri())
    parents = {(r.data.tags["backbone"], r.data.tags["strategy"]): r.data.tags for r in
               mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'sweep'", output_format="list")}
    from benchmark import leaderboard

    board = leaderboard.leaderboard("ci")
    for pair, exit in exits.items():
        expected = race.state_text(exit, ended_by_budget=sum(finished.values()) >= 8)
        assert parents[pair][names.TAG_RACE] == expected
        assert board.set_index(["backbone", "strategy"]).loc[pair, "race"] == expected
        if exit is not None:
            assert parents[pair][names.TAG_RACE_REASON] == exit["reason"]
            assert int(parents[pair][names.TAG_RACE_TRIALS]) == exit["trials"]
    best = studies[tuple(board.iloc[0][["backbone", "strategy"]])].best_trial
    record = best.user_attrs[names.ATTR_OUTCOME]
    assert math.isclose(unpack_correct(record[names.OUTCOME_VAL_CORRECT]).mean(), best.value, abs_tol=1e-6)
    assert "race" in leaderboard.render(board, "table").splitlines()[0]


@pytest.mark.slow
def test_two_race_workers_on_postgres_never_run_a_trial_for_a_pair_that_left(store, new_database):
    storage = new_database()
    workers = [subprocess.Popen(ci_frozen_race(store, storage, 10), env=race_env(store), cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    studies = studies_of(storage)
    assert_no_trial_after_its_pair_left(studies)
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for s in studies.values() for t in s.trials)
    assert finished <= 10 + 1  # a worker may finish the trial it started as the other spent the budget
    workers_seen = {t.user_attrs["worker"]["pid"] for s in studies.values() for t in s.trials}
    assert len(workers_seen) == 2  # both raced


@pytest.mark.parametrize("argv, message", [
    (["--budget", "10m", "--trials", "3"], "drop --trials/--timeout"),
    (["--budget", "soon"], "not a duration"),
    (["--budget-trials", "0"], "--budget-trials"),
])
def test_a_bad_budget_is_one_line_and_exit_2(argv, message, store):
    done = subprocess.run([sys.executable, "-m", "benchmark", "sweep", "--experiment", "ci", *argv],
                          env=race_env(store), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not store.exists()  # nothing recorded
