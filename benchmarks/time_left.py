"""A sweep's estimates of the time left against the truth, trial by trial.

    BENCHMARK_STORE=/tmp/t/store BENCHMARK_CACHE_DIR=/tmp/t/cache KERAS_HOME=/tmp/t/keras \
        python -m benchmark sweep --experiment transfer --backbone efficientnetlite0 --strategy frozen
    python benchmarks/time_left.py sqlite:////tmp/t/store/optuna.db [--experiment transfer] [--all]

Replays the study's finished trials, in the order they finished, through the sweep's own estimator
(sweep.Progress, with the study's pruner as the sweep sees it) and prints, after each trial, the
estimate of the time left, the truth (when the last trial finished, less when this one did: both
from the storage) and their ratio; then the same estimate as a predicted finish: the study's time
so far plus the estimate, against its whole time (first trial's start to last trial's end). `--all`
replays every study in the storage and ends with how many estimates of each kind fell within 30%
from the second trial on. A ratio of the time left cannot stay within 30% near the end of a study
with a pruner, for any estimator: with one trial left, that trial is pruned or complete, a coin
toss that decides a 3-4x difference in what is left.
"""

import argparse

import optuna

from benchmark import sweep
from benchmark.spec import load_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)


def replay(study: optuna.Study, experiment_name: str) -> list[tuple[float, float]]:
    """Prints the study's estimates; returns (estimate / truth, predicted finish / true finish) after
    each of its trials but the last."""
    trials = sorted((t for t in study.trials if t.state in sweep.FINISHED), key=lambda t: t.datetime_complete)
    if len(trials) < 2:
        print(f"{study.study_name}: {len(trials)} finished trial(s), nothing to estimate")
        return []
    backbone, strategy = study.user_attrs["pair"][1:]
    experiment = load_experiment(experiment_name)
    spec = experiment.resolve(backbone, strategy)
    plan = sweep.Plan(spec=spec, space=None, search=experiment.search, target=len(trials), timeout_s=None, data=None,
                      fingerprint=None, name=study.study_name, recipe={})
    prunes = experiment.search.pruner != "none" and spec.training.optimizer != "lbfgs"
    lines, replayed = [], optuna.create_study(direction="maximize")
    progress = sweep.Progress(len(trials), lines.append, pruning=sweep.pruning_of(plan, prunes))
    began = min(t.datetime_start for t in trials)
    whole = (trials[-1].datetime_complete - began).total_seconds()
    print(f"{study.study_name}: {len(trials)} trials, {whole:.0f} s\n"
          "trial  state      took_s  estimate_s  truth_s  ratio  finish_ratio")
    ratios = []
    for k, trial in enumerate(trials[:-1]):
        replayed.add_trial(trial)
        progress(replayed, replayed.trials[-1])
        estimate = float(lines[-1].rsplit("~", 1)[1].removesuffix("s left"))
        truth = (trials[-1].datetime_complete - trial.datetime_complete).total_seconds()
        so_far = (trial.datetime_complete - began).total_seconds()
        ratios.append((estimate / truth, (so_far + estimate) / whole))
        print(f"{k + 1:5d}  {trial.state.name:9s} {trial.duration.total_seconds():6.1f}  {estimate:10.0f}  "
              f"{truth:7.0f}  {ratios[-1][0]:5.2f}  {ratios[-1][1]:12.2f}")
    return ratios


def within_30_percent(ratios: list[float]) -> str:
    return f"{sum(0.7 <= r <= 1.3 for r in ratios)}/{len(ratios)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage", help="the sweep's Optuna storage URL")
    parser.add_argument("--study", help="study name (default: the storage's only or first study)")
    parser.add_argument("--all", action="store_true", help="every study in the storage")
    parser.add_argument("--experiment", default="transfer", help="the swept spec, for its pruner (default: transfer)")
    args = parser.parse_args()
    names = optuna.get_all_study_names(args.storage)
    chosen = names if args.all else [args.study or names[0]]
    after_first = []
    for name in chosen:
        after_first += replay(optuna.load_study(study_name=name, storage=args.storage), args.experiment)[1:]
    print(f"within 30% from the second trial on: time left {within_30_percent([r for r, _ in after_first])}, "
          f"predicted finish {within_30_percent([f for _, f in after_first])}")


if __name__ == "__main__":
    main()
