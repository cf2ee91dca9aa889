"""A sweep's estimates of the time left against the truth, trial by trial.

    BENCHMARK_STORE=/tmp/t/store BENCHMARK_CACHE_DIR=/tmp/t/cache KERAS_HOME=/tmp/t/keras \
        python -m benchmark sweep --experiment transfer --backbone efficientnetlite0 --strategy frozen
    python benchmarks/time_left.py sqlite:////tmp/t/store/optuna.db [--experiment transfer]

Replays the study's finished trials, in the order they finished, through the sweep's own estimator
(sweep.Progress, with the study's pruner as the sweep sees it) and prints, after each trial, the
estimate of the time left, the truth (when the last trial finished, less when this one did: both
from the storage) and their ratio. The goal: within 30% (ratio 0.7-1.3) from the second trial on.
"""

import argparse

import optuna

from benchmark import sweep
from benchmark.spec import load_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storage", help="the sweep's Optuna storage URL")
    parser.add_argument("--study", help="study name (default: the storage's only or first study)")
    parser.add_argument("--experiment", default="transfer", help="the swept spec, for its pruner (default: transfer)")
    args = parser.parse_args()
    study = optuna.load_study(study_name=args.study or optuna.get_all_study_names(args.storage)[0], storage=args.storage)
    trials = sorted((t for t in study.trials if t.state in sweep.FINISHED), key=lambda t: t.datetime_complete)
    backbone, strategy = study.user_attrs["pair"][1:]
    experiment = load_experiment(args.experiment)
    spec = experiment.resolve(backbone, strategy)
    plan = sweep.Plan(spec=spec, space=None, search=experiment.search, target=len(trials), timeout_s=None, data=None,
                      fingerprint=None, name=study.study_name, recipe={})
    prunes = experiment.search.pruner != "none" and spec.training.optimizer != "lbfgs"
    lines, replay = [], optuna.create_study(direction="maximize")
    progress = sweep.Progress(len(trials), lines.append, pruning=sweep.pruning_of(plan, prunes))
    print(f"{study.study_name}: {len(trials)} trials\ntrial  state      took_s  estimate_s  truth_s  ratio")
    for k, trial in enumerate(trials[:-1]):
        replay.add_trial(trial)
        progress(replay, replay.trials[-1])
        estimate = float(lines[-1].rsplit("~", 1)[1].removesuffix("s left"))
        truth = (trials[-1].datetime_complete - trial.datetime_complete).total_seconds()
        print(f"{k + 1:5d}  {trial.state.name:9s} {trial.duration.total_seconds():6.1f}  {estimate:10.0f}  "
              f"{truth:7.0f}  {estimate / truth:5.2f}")


if __name__ == "__main__":
    main()
