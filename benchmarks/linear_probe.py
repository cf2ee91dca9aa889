"""The Adam-trained head against the L-BFGS linear probe, side by side in one run.

    python benchmarks/linear_probe.py --experiment transfer                    # Lite0/1/2 frozen, 160 px
    python benchmarks/linear_probe.py --experiment transfer --backbone efficientnetlite0 --image-size 224
    python benchmarks/linear_probe.py --experiment ci                          # VGG16, ResNet50, random init

For each backbone: the experiment's frozen pair swept as written (its head trained by its
optimizer, epochs and search space), then the same pair with training.optimizer = "lbfgs" and
the L2 strength searched (--l2-low..--l2-high, log scale) instead, each sweep in a fresh store
with the same number of trials and no pruning, on the same features (one feature cache for
both: the first sweep pays the feature pass, shown in its wall time). Prints a markdown table:
the trial each sweep's validation picks, its test top-1, the trials' compute without the feature
pass, and the sweep's wall time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import mlflow  # noqa: E402

from benchmark import mlflow_store, sweep  # noqa: E402
from benchmark.spec import ExperimentSpec, load_experiment  # noqa: E402


def variant(experiment: ExperimentSpec, backbone: str, image_size: int | None, trials: int, probe: bool,
            l2: tuple[float, float]) -> ExperimentSpec:
    """The experiment's frozen pair for one backbone; with `probe`, fitted by L-BFGS instead."""
    raw = experiment.model_dump(mode="json")
    raw["backbones"] = [backbone]
    raw["strategies"] = {"frozen": raw["strategies"]["frozen"]}
    raw["search"].update(pruner="none", trials=trials, per_backbone={})
    if image_size:
        raw["backbone"]["image_size"] = image_size
    if probe:
        raw["training"].update(optimizer="lbfgs")
        raw["strategies"]["frozen"]["space"] = None
        raw["search"]["space"].update(weight_decay=None, finetune_lr_scale=None, l2={"low": l2[0], "high": l2[1]})
    return ExperimentSpec.model_validate(raw)


def sweep_row(experiment: ExperimentSpec, backbone: str) -> dict:
    os.environ["BENCHMARK_STORE"] = tempfile.mkdtemp(prefix="benchmark-probe-")
    started = time.perf_counter()
    result = sweep.run_sweep(experiment, backbone, "frozen", verbose=0, say=lambda line: print("  ", line, flush=True))
    wall = time.perf_counter() - started
    best = result.study.best_trial
    runs = mlflow.search_runs([mlflow_store.experiment_id(experiment.name)], filter_string="tags.role = 'trial'")
    heads = sum(t.user_attrs["outcome"]["compute_s"] for t in result.study.trials) - runs["metrics.features_s"].sum()
    return {"val": best.value, "test": best.user_attrs["outcome"]["test_top1"], "params": best.params,
            "wall": wall, "heads": heads, "trials": len(result.study.trials)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="transfer")
    parser.add_argument("--backbone", action="append", help="default: every backbone of the experiment")
    parser.add_argument("--image-size", type=int, help="default: the experiment's")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--l2-low", type=float, default=1e-5)
    parser.add_argument("--l2-high", type=float, default=1.0)
    args = parser.parse_args()
    experiment = load_experiment(args.experiment)
    os.environ.setdefault("BENCHMARK_CACHE_DIR", str(Path(tempfile.mkdtemp(prefix="benchmark-probe-cache-"))))
    lines = ["| backbone | head | px | val top-1 | test top-1 | chosen | trials' compute without the feature pass | sweep wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for backbone in args.backbone or experiment.backbones:
        for probe in (False, True):
            spec = variant(experiment, backbone, args.image_size, args.trials, probe, (args.l2_low, args.l2_high))
            head = "L-BFGS logistic regression" if probe else f"{spec.training.optimizer}, {spec.strategies['frozen'].epochs or spec.training.epochs} epochs"
            print(f"== {backbone}: {head}", flush=True)
            row = sweep_row(spec, backbone)
            chosen = " ".join(f"{k}={v:.3g}" for k, v in row["params"].items())
            lines.append(f"| {backbone} | {head} | {spec.backbone.image_size} | {row['val']:.3f} | {row['test']:.3f} | "
                         f"{chosen} | {row['heads']:.0f} s for {row['trials']} | {row['wall']:.0f} s |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
