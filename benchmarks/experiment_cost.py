"""What one trial of an experiment costs here, and so a sweep (upper bound: no trial pruned).

    python benchmarks/experiment_cost.py --experiment quick --backbone mobilenetv2 [--strategy top]

Runs one real trial with weights = "none" on synthetic data of the spec's split sizes: the same
compute as the real data and ImageNet weights, which offline machines do not have.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="quick")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--strategy")
    args = parser.parse_args()

    from benchmark.spec import SyntheticSpec, load_experiment
    from benchmark.trial import run_trial

    experiment = load_experiment(args.experiment)
    spec = experiment.resolve(args.backbone, args.strategy)
    subset, fraction = spec.data.subset, spec.data.validation_fraction
    validation = subset.validation or round(50_000 * fraction)
    train_size = max(round(validation / fraction), (subset.train or 50_000 - validation) + validation)
    data = spec.data.model_copy(
        update={"source": "synthetic", "synthetic": SyntheticSpec(train_size=train_size, test_size=subset.test or 10_000)}
    )
    space = experiment.search_space(spec.backbone.name, spec.strategy_name)
    unfreeze = (space.unfreeze.low + space.unfreeze.high) // 2 if spec.strategy.unfreeze == "search" else None
    spec = spec.model_copy(
        update={"data": data, "backbone": spec.backbone.model_copy(update={"weights": "none"})}
    ).with_values(unfreeze=unfreeze)

    started = time.perf_counter()
    result = run_trial(spec)
    seconds = time.perf_counter() - started
    m = result.metrics
    trials = spec.strategy.trials or experiment.search.trials
    print(
        f"{args.experiment}/{spec.backbone.name}/{spec.strategy_name} at {spec.backbone.image_size} px, "
        f"unfreeze={spec.strategy.unfreeze}, {len(result.history.epochs)} epochs of {subset.train or 'all'} images: "
        f"trial {seconds:.0f} s (train {m['train_images_per_sec']:.0f} img/s, infer {m['infer_images_per_sec']:.0f} img/s); "
        f"sweep of {trials} trials <= {trials * seconds / 60:.1f} min"
    )


if __name__ == "__main__":
    main()
