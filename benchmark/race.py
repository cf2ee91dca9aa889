"""A budget race over an experiment's backbone x strategy pairs (`sweep --budget 20m`).

Every pair is its own study, as in a grid sweep; the race decides which study gets the next
trial. Each pair first gets `race.startup` trials, in rounds; then the racing pair with the fewest trials gets
one (ties: the most promising first), so the pairs still racing advance in rounds. Before every
trial the race reads the studies and lets pairs leave, on validation results only:

- worse: the pair's best trial is significantly worse than the leader's best on the same
  validation images (exact McNemar test on the images each got right, Holm-corrected over the
  pairs still racing, `race.alpha`), after `race.min_trials` finished trials;
- converged: the pair's last `race.patience` finished trials raised its best validation top-1 by no
  more than one standard error of that best (the validation noise);
- failed: its last FAILS_TO_LEAVE trials failed.

A pair that left keeps its study and its leaderboard row; it gets no more trials. The race ends
when the budget is spent (trial time or finished trials, summed over the experiment's current
studies: a rerun resumes, a grid's trials count) or when no pair is left racing.

The state lives in the studies (each exit is a study user attribute, names.ATTR_RACE_EXIT, and a
tag on the pair's parent run), so several `sweep --budget` workers on one storage run one race.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime
from typing import Callable

import mlflow
from mlflow.entities import RunTag
import numpy as np
import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from benchmark import names, parent_run, progress, sweep
from benchmark.errors import BenchmarkError
from benchmark.measure import unpack_correct
from benchmark.spec import ExperimentSpec, RaceSpec, pairs_of, parse_duration
from benchmark.storage import default_storage

FAILS_TO_LEAVE = 3  # consecutive failed trials after which a pair leaves the race


# ---------------------------------------------------------------- the budget


@dataclass(frozen=True)
class Budget:
    seconds: float | None = None  # trial time, summed over the pairs' studies
    trials: int | None = None  # finished trials, summed likewise

    @classmethod
    def of(cls, race: RaceSpec, budget: str | None = None, budget_trials: int | None = None) -> Budget | None:
        """The command line's budget, else the spec's; None when neither gives one (no race)."""
        if budget is not None or budget_trials is not None:
            return cls(parse_duration(budget) if budget is not None else None, budget_trials)
        if race.budget is not None or race.budget_trials is not None:
            return cls(parse_duration(race.budget) if race.budget is not None else None, race.budget_trials)
        return None

    def __str__(self) -> str:
        parts = ([f"{self.seconds:.0f}s of trial time"] if self.seconds is not None else []) + \
                ([f"{self.trials} trials"] if self.trials is not None else [])
        return " or ".join(parts)

    def spent(self, standings: list[Standing]) -> bool:
        """Whether another trial would exceed the budget (trials running elsewhere count as spent)."""
        if self.trials is not None and sum(s.given for s in standings) >= self.trials:
            return True
        return self.seconds is not None and sum(s.seconds for s in standings) >= self.seconds


# ---------------------------------------------------------------- what the studies say


@dataclass
class Standing:
    """One pair's study as the race sees it now."""

    pair: tuple[str, str]
    study: optuna.Study
    trials: list[optuna.trial.FrozenTrial]
    exit: dict | None  # why it left the race (names.ATTR_RACE_EXIT), None while racing

    @classmethod
    def read(cls, pair: tuple[str, str], study: optuna.Study) -> Standing:
        return cls(pair, study, study.get_trials(deepcopy=False), study.user_attrs.get(names.ATTR_RACE_EXIT))

    @property
    def label(self) -> str:
        return "/".join(self.pair)

    @property
    def finished_trials(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.trials if t.state in sweep.FINISHED]

    @property
    def finished(self) -> int:
        return len(self.finished_trials)

    @property
    def running(self) -> int:
        return sum(t.state == TrialState.RUNNING for t in self.trials)

    @property
    def given(self) -> int:
        """Trials the race has given this pair: finished or running."""
        return self.finished + self.running

    @property
    def seconds(self) -> float:
        """Trial time so far: the ended trials' and the running ones' until now."""
        now = datetime.now()
        return sum(((t.datetime_complete or now) - t.datetime_start).total_seconds()
                   for t in self.trials if t.datetime_start is not None)

    @cached_property  # read once: `trials` is a snapshot
    def best(self) -> optuna.trial.FrozenTrial | None:
        """The best completed trial that recorded its validation answers (ties: the earliest)."""
        done = [t for t in self.trials if t.state == TrialState.COMPLETE and t.value is not None
                and parent_run.trial_record(t).get(names.OUTCOME_VAL_CORRECT)]
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    @property
    def promise(self) -> float:
        best = self.best
        return best.value if best is not None else -math.inf

    def val_correct(self) -> np.ndarray:
        return unpack_correct(parent_run.trial_record(self.best)[names.OUTCOME_VAL_CORRECT])

    @property
    def data(self) -> str:
        return self.study.user_attrs.get(names.ATTR_DATA_FINGERPRINT, "")


def race_defaults(race: RaceSpec, startup_trials: int) -> tuple[int, int]:
    """(startup, min_trials) with their defaults: the sampler's startup trials (at least 1)."""
    startup = race.startup or max(1, startup_trials)
    return startup, race.min_trials or startup


# ---------------------------------------------------------------- leaving the race


def holm_rejected(p_values: list[float], alpha: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level alpha."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def best_values(trials: list[optuna.trial.FrozenTrial]) -> list[float]:
    """The best validation top-1 after each finished trial, in the order they ended (pruned trials
    add nothing; -inf before the first completed one)."""
    best, values = -math.inf, []
    for t in sorted(trials, key=lambda t: (t.datetime_complete or datetime.max, t.number)):
        if t.state == TrialState.COMPLETE and t.value is not None:
            best = max(best, t.value)
        values.append(best)
    return values


def converged(standing: Standing, patience: int, startup: int) -> bool:
    """The last `patience` finished trials (after the pair's startup trials) raised its best by no
    more than one standard error of that best on its validation images."""
    finished = standing.finished_trials
    if len(finished) < startup + patience or standing.best is None:
        return False
    values = best_values(finished)
    best, before = values[-1], values[-1 - patience]
    share = min(1.0, max(0.0, best))  # a top-1; an objective outside [0, 1] has no binomial noise
    noise = math.sqrt(share * (1 - share) / len(standing.val_correct()))
    return best - before <= noise


def failing(standing: Standing) -> bool:
    ended = sorted((t for t in standing.trials if t.state != TrialState.RUNNING and t.state != TrialState.WAITING),
                   key=lambda t: t.number)[-FAILS_TO_LEAVE:]
    return len(ended) == FAILS_TO_LEAVE and all(t.state == TrialState.FAIL and not parent_run.interrupted(t) for t in ended)


def decide_exits(standings: list[Standing], race: RaceSpec, startup_trials: int) -> list[tuple[Standing, dict]]:
    """The pairs that leave the race now, and why (the names.ATTR_RACE_EXIT record of each)."""
    startup, min_trials = race_defaults(race, startup_trials)
    racing = [s for s in standings if s.exit is None]
    leaving: dict[int, dict] = {}
    for i, s in enumerate(racing):
        if failing(s):
            leaving[i] = exit_record("failed", s)
        elif converged(s, race.patience, startup):
            leaving[i] = exit_record("converged", s)
    ranked = [s for s in standings if s.best is not None]
    if ranked:
        leader = max(ranked, key=lambda s: s.promise)
        leader_correct = leader.val_correct()
        answers = {i: s.val_correct() for i, s in enumerate(racing) if i not in leaving and s is not leader
                   and s.best is not None and s.finished >= min_trials and s.data == leader.data}
        contenders = [(i, racing[i]) for i, correct in answers.items() if len(correct) == len(leader_correct)]
        p_values = [mcnemar(answers[i], leader_correct) for i, _ in contenders]
        for (i, s), p, rejected in zip(contenders, p_values, holm_rejected(p_values, race.alpha)):
            if rejected and s.promise < leader.promise:
                leaving[i] = exit_record("worse", s, p=p, leader=leader.label)
    return [(racing[i], record) for i, record in sorted(leaving.items())]


def mcnemar(correct: np.ndarray, leader_correct: np.ndarray) -> float:
    from benchmark.leaderboard import mcnemar_exact

    return mcnemar_exact(correct, leader_correct)


def exit_record(reason: str, standing: Standing, p: float | None = None, leader: str = "") -> dict:
    return {"reason": reason, "trials": standing.finished, "p": p, "leader": leader,
            "at": datetime.now().isoformat(timespec="milliseconds")}  # local time, as Optuna's trial times


def state_text(exit: dict | None, ended_by_budget: bool = False) -> str:
    """The leaderboard's `race` cell: 'worse p=0.002 @4', 'converged @6', 'racing', 'budget'."""
    if exit is None:
        return "budget" if ended_by_budget else "racing"
    p = exit.get("p")
    shown = "" if p is None else " p<.001" if p < 0.001 else f" p={p:.3f}".replace("=0.", "=.")
    return f"{exit['reason']}{shown} @{exit['trials']}"


def record_exit(standing: Standing, record: dict, parent_run_id: str | None = None) -> dict:
    """On the study (where every worker reads it; the first worker to decide wins) and on the
    parent run. Returns the exit recorded."""
    recorded = standing.study.user_attrs.get(names.ATTR_RACE_EXIT)
    if recorded is None:
        standing.study.set_user_attr(names.ATTR_RACE_EXIT, record)
        recorded = record
    standing.exit = recorded
    if parent_run_id is None:
        return recorded
    tags = {names.TAG_RACE: state_text(recorded), names.TAG_RACE_REASON: recorded["reason"],
            names.TAG_RACE_TRIALS: str(recorded["trials"])}
    if recorded.get("p") is not None:
        tags[names.TAG_RACE_P] = f"{recorded['p']:.6g}"
    mlflow.MlflowClient().log_batch(parent_run_id, tags=[RunTag(key, value) for key, value in tags.items()])  # one write
    return recorded


def next_pair(standings: list[Standing], startup: int) -> Standing | None:
    """The pair that gets the next trial: of the pairs short of their startup trials, the one with
    the fewest (in the experiment's order: startup goes in rounds, so a budget that ends during it
    leaves no pair untried); after startup, the racing pair with the fewest trials, the most
    promising first."""
    racing = [s for s in standings if s.exit is None]
    starting = [s for s in racing if s.given < startup]
    if starting:
        return min(starting, key=lambda s: s.given)  # min keeps the first of equals
    return min(racing, key=lambda s: (s.given, -s.promise), default=None)


# ---------------------------------------------------------------- the race


@dataclass
class Entrant:
    pair: tuple[str, str]
    plan: sweep.Plan
    opened: sweep.OpenedStudy
    loop: sweep.TrialLoop | None = None


@dataclass
class RaceResult:
    pairs: list[sweep.PairResult]
    states: dict[tuple[str, str], str]  # the `race` cell of each pair
    budget: Budget
    ended_by: str  # "budget" or "every pair left"
    trials_run: int = 0  # by this worker


def run_race(
    experiment: ExperimentSpec,
    budget: Budget,
    pairs: list[tuple[str, str]] | None = None,
    storage: str | None = None,
    data_dir=None,
    verbose: int = 0,
    say: Callable[[str], None] = print,
    progress_bar: bool = False,
) -> RaceResult:
    """Race the pairs (default: every pair) for `budget`; see the module's docstring."""
    budget = check_budget(budget)
    pairs = pairs if pairs is not None else pairs_of(experiment)
    plans = [sweep.resolve(experiment, backbone, strategy, None, None, data_dir) for backbone, strategy in pairs]
    storage_url = storage or default_storage()
    entrants = []
    for pair, plan in zip(pairs, plans):
        opened = sweep.open_study(plan, storage_url, lambda line, pair=pair: say(f"[{'/'.join(pair)}] {line}"), racing=True)
        entrants.append(Entrant(pair, plan, opened))
    race = experiment.search.race
    startup, _ = race_defaults(race, experiment.search.startup_trials)
    say(f"race over {len(entrants)} pairs for {budget}: {startup} startup trial(s) each, then rounds; "
        f"a pair leaves when worse than the leader (McNemar, Holm, alpha {race.alpha}) or converged")
    mark_racing(entrants)
    bar = progress.bar(budget.trials or round(budget.seconds or 0), f"race {experiment.name}",
                       "trial" if budget.trials else "s", progress_bar, delay=0)
    by_pair = {e.pair: e for e in entrants}

    def leave(standing: Standing, record: dict) -> None:
        recorded = record_exit(standing, record, by_pair[standing.pair].opened.parent_run_id)
        if recorded is record:
            say(f"[{standing.label}] leaves the race: {exit_sentence(recorded)}")

    def run_trial(standing: Standing) -> None:
        run_one_trial(by_pair[standing.pair], entrants, verbose, RaceLine(standing.label, say, bar), progress_bar)

    try:
        ended_by, trials_run = race_loop([(e.pair, e.opened.study) for e in entrants], race,
                                         experiment.search.startup_trials, budget, run_trial, leave,
                                         lambda standings: show_progress(bar, budget, standings))
    finally:
        bar.close()
        for e in entrants:
            if e.loop is not None:
                e.loop.close()
    return finish(entrants, budget, ended_by, trials_run, say)


def race_loop(studies: list[tuple[tuple[str, str], optuna.Study]], race: RaceSpec, startup_trials: int, budget: Budget,
              run_trial: Callable[[Standing], None], leave: Callable[[Standing, dict], None],
              shown: Callable[[list[Standing]], None] = lambda standings: None) -> tuple[str, int]:
    """Read the studies, let pairs leave, give the next trial, until the budget is spent or no
    pair races. Returns why it ended ("budget" or "every pair left") and the trials it ran."""
    startup, _ = race_defaults(race, startup_trials)
    trials_run = 0
    while True:
        standings = [Standing.read(pair, study) for pair, study in studies]
        for standing, record in decide_exits(standings, race, startup_trials):
            leave(standing, record)
        shown(standings)
        if budget.spent(standings):
            return "budget", trials_run
        chosen = next_pair(standings, startup)
        if chosen is None:
            return "every pair left", trials_run
        run_trial(chosen)
        trials_run += 1


def exit_sentence(exit: dict) -> str:
    if exit["reason"] == "worse":
        return (f"its best is worse than {exit['leader']}'s on the validation images (McNemar p={exit['p']:.3g}, "
                f"Holm-corrected) after {exit['trials']} trials")
    if exit["reason"] == "converged":
        return f"converged after {exit['trials']} trials (its last trials raised the best by less than the validation noise)"
    return f"its last {FAILS_TO_LEAVE} trials failed (after {exit['trials']} finished); see their runs' error tag"


def mark_racing(entrants: list[Entrant]) -> None:
    client = mlflow.MlflowClient()
    for e in entrants:
        exit = e.opened.study.user_attrs.get(names.ATTR_RACE_EXIT)
        client.set_tag(e.opened.parent_run_id, names.TAG_RACE, state_text(exit))


def show_progress(bar: tqdm, budget: Budget, standings: list[Standing]) -> None:
    if bar.disable:
        return
    done = sum(s.finished for s in standings) if budget.trials else round(sum(s.seconds for s in standings))
    bar.update(max(0, min(done, bar.total or done) - bar.n))
    bar.set_postfix_str(f"{sum(s.exit is None for s in standings)} racing", refresh=True)


def run_one_trial(entrant: Entrant, entrants: list[Entrant], verbose: int, line: RaceLine, progress_bars: bool = False) -> None:
    """One trial of the pair's study. A pair's trial process is kept while it races; another
    pair's is ended first, so the race holds one trial process at a time."""
    for other in entrants:
        if other is not entrant and other.loop is not None and other.loop.runner.isolated:
            other.loop.close()
            other.loop = None
    if entrant.loop is None:
        entrant.loop = sweep.TrialLoop(entrant.plan, entrant.opened, verbose, progress_bars)
    entrant.loop.run(1, [line])


class RaceLine:
    """One line per trial: the pair, its state, params, value, the pair's best."""

    def __init__(self, label: str, say: Callable[[str], None], bar: tqdm):
        self.label, self.say, self.bar = label, say, bar

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = f" val_top1={trial.value:.4f}" if trial.value is not None else ""
        if trial.state == TrialState.PRUNED and trial.intermediate_values:
            value = f" val_top1={max(trial.intermediate_values.values()):.4f} (at prune)"
        try:
            best = f" best={study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = ""
        took = trial.duration.total_seconds() if trial.duration else 0.0
        line = f"[{self.label}] trial #{trial.number} {trial.state.name} {sweep.format_params(trial.params)}{value}{best} {took:.1f}s"
        if self.bar.disable:
            self.say(line)
        else:
            with tqdm.external_write_mode():
                self.say(line)


def finish(entrants: list[Entrant], budget: Budget, ended_by: str, trials_run: int, say: Callable[[str], None]) -> RaceResult:
    """Each pair's parent run summarised and its race state tagged; the result per pair."""
    client = mlflow.MlflowClient()
    results, states = [], {}
    for e in entrants:
        study = e.opened.study
        exit = study.user_attrs.get(names.ATTR_RACE_EXIT)
        states[e.pair] = state_text(exit, ended_by_budget=ended_by == "budget")
        client.set_tag(e.opened.parent_run_id, names.TAG_RACE, states[e.pair])
        parent_run.summarize(study, e.opened.parent_run_id)
        counts = parent_run.trial_counts(study)
        finished = counts["complete"] + counts["pruned"]
        results.append(sweep.PairResult(*e.pair, result=sweep.SweepResult(
            study=study, parent_run_id=e.opened.parent_run_id, counts=counts, target=finished)))
    say(f"race ended: {ended_by}; this worker ran {trials_run} trial(s)")
    return RaceResult(pairs=results, states=states, budget=budget, ended_by=ended_by, trials_run=trials_run)


def check_budget(budget: Budget | None) -> Budget:
    if budget is None:
        raise BenchmarkError("a race needs a budget: give --budget 20m (trial time) or --budget-trials N, "
                             "or set [search.race] budget in the spec")
    return budget

