"""Does augmentation through cached views help a frozen head? Side by side in one run.

    python benchmarks/feature_views.py                         # Lite0, transfer's frozen pair, views 4 and 8
    python benchmarks/feature_views.py --backbone efficientnetlite2 --views 8

The `transfer` experiment's frozen pair swept as written (augmentation off: one set of features),
then with flips and shifts (data.augment flip = true, crop_padding = 4) served by V cached views
(training.feature_views = V), each sweep in a fresh store and feature cache with the same trials,
no pruning. Prints a markdown table: the trial validation picks, its test top-1, the feature
pass and the whole sweep's wall time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402

from benchmark import mlflow_store, sweep  # noqa: E402
from benchmark.spec import ExperimentSpec, load_experiment  # noqa: E402


def variant(backbone: str, views: int, trials: int) -> ExperimentSpec:
    raw = load_experiment("transfer").model_dump(mode="json")
    raw["backbones"] = [backbone]
    raw["strategies"] = {"frozen": raw["strategies"]["frozen"]}
    raw["search"].update(pruner="none", trials=trials)
    if views:
        raw["data"]["augment"] = {"flip": True, "crop_padding": 4}
        raw["training"]["feature_views"] = views
    return ExperimentSpec.model_validate(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnetlite0")
    parser.add_argument("--views", type=int, action="append", help="default: 4 and 8")
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    lines = ["| training images | val top-1 | test top-1 | chosen | feature pass | sweep wall time |",
             "|---|---|---|---|---|---|"]
    for views in [0, *(args.views or [4, 8])]:
        os.environ["BENCHMARK_STORE"] = tempfile.mkdtemp(prefix="benchmark-views-")
        os.environ["BENCHMARK_CACHE_DIR"] = tempfile.mkdtemp(prefix="benchmark-views-cache-")
        spec = variant(args.backbone, views, args.trials)
        started = time.perf_counter()
        result = sweep.run_sweep(spec, args.backbone, "frozen", verbose=0, say=lambda line: print("  ", line, flush=True))
        wall = time.perf_counter() - started
        runs = mlflow.search_runs([mlflow_store.experiment_id(spec.name)], filter_string="tags.role = 'trial'")
        best = result.study.best_trial
        chosen = " ".join(f"{k}={v:.3g}" for k, v in best.params.items())
        what = f"{views} views with flips and shifts" if views else "plain (augmentation off)"
        lines.append(f"| {what} | {best.value:.3f} | {best.user_attrs['outcome']['test_top1']:.3f} | {chosen} | "
                     f"{runs['metrics.features_s'].max():.0f} s | {wall:.0f} s |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
