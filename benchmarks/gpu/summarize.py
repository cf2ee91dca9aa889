"""The numbers of a device run, small enough to come back in $OUT: each step's exit code and wall time
(steps.tsv from run_on_device.sh) and every MLflow run in the store ($BENCHMARK_STORE): throughput
runs with all their params and metrics, sweep trials with their searched values and final metrics.

    python3 benchmarks/gpu/summarize.py STEPS.tsv SUMMARY.json
"""

from __future__ import annotations

import csv
import json
import sys

TRIAL_PARAMS = ("backbone.name", "backbone.image_size", "training.learning_rate", "strategy.unfreeze",
                "training.batch_size", "training.mixed_precision", "training.jit_compile")
TAGS = ("role", "backbone", "strategy", "device", "git_commit", "versions.jax", "versions.jaxlib", "versions.keras")


def main(steps_path: str, summary_path: str) -> int:
    with open(steps_path) as f:
        steps = [{"step": r["step"], "rc": int(r["rc"]), "wall_s": float(r["wall_s"])} for r in csv.DictReader(f, delimiter="\t")]
    summary: dict = {"steps": steps, "runs": []}
    try:
        import mlflow

        from benchmark import mlflow_store

        mlflow.set_tracking_uri(mlflow_store.tracking_uri())
        names = {e.experiment_id: e.name for e in mlflow.search_experiments()}
        for run in mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time ASC"]):
            params = run.data.params
            if run.data.tags.get("role") != "throughput":
                params = {k: v for k, v in params.items() if k in TRIAL_PARAMS}
            summary["runs"].append({
                "experiment": names.get(run.info.experiment_id), "name": run.info.run_name, "status": run.info.status,
                "wall_s": round((run.info.end_time - run.info.start_time) / 1000, 1) if run.info.end_time else None,
                "tags": {k: v for k, v in run.data.tags.items() if k in TAGS}, "params": params, "metrics": run.data.metrics,
            })
    except Exception as e:  # the step times are worth returning even without a store
        summary["error"] = f"{type(e).__name__}: {e}"
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    for run in summary["runs"]:
        if run["tags"].get("role") == "throughput":
            m = run["metrics"]
            p = run["params"]
            print(f"throughput {run['name']} {p.get('dtype_policy')} jit={p.get('jit_compile')} "
                  f"on {run['tags'].get('device')}: "
                  f"train {m.get('train_images_per_sec', 0):,.0f} img/s, infer {m.get('infer_images_per_sec', 0):,.0f} img/s")
    print("steps: " + ", ".join(f"{s['step']} {s['wall_s']:.1f} s (rc {s['rc']})" for s in steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:3]))
