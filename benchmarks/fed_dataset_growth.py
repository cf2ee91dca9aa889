"""Resident memory over repeated fits' datasets of cached features (runtime.fed_once), made anew
for every fit (as train.fed_features does for every trial) or made once and reused.

    python benchmarks/fed_dataset_growth.py new     # a new dataset per fit
    python benchmarks/fed_dataset_growth.py reuse   # one dataset for every fit

`ci`-sized features (800 x 512 training, 200 x 512 validation, 100 classes, batch 64); each "fit"
iterates 3 epochs of training and validation batches; RSS every 20 fits. One mode per process.
"""

import os
import sys

import psutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import keras
    import numpy as np

    from benchmark import runtime

    mode = sys.argv[1] if len(sys.argv) > 1 else "new"
    rng = np.random.default_rng(0)
    x, vx = rng.normal(size=(800, 512)).astype(np.float32), rng.normal(size=(200, 512)).astype(np.float32)
    y, vy = (keras.utils.to_categorical(rng.integers(0, 100, n), 100) for n in (800, 200))
    process, fed = psutil.Process(), None
    for fit in range(1, 121):
        runtime.seed_everything(0)
        if mode == "new" or fed is None:
            fed = runtime.fed_once(x, y, 64, shuffle=True), runtime.fed_once(vx, vy, 64, shuffle=False)
        for dataset, _, batches in fed:
            batch = iter(dataset)
            for _ in range(3 * batches["steps"]):
                next(batch)
        if fit % 20 == 0:
            print(mode, fit, f"{process.memory_info().rss / 2**20:.1f} MiB", flush=True)


if __name__ == "__main__":
    main()
