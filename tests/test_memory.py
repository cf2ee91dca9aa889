"""Memory of a sweep whose head-only trials run in its own process (search.trials_per_process =
"auto" runs them there): it must stay flat, trial after trial (benchmarks/memory_growth.py measures
500 trials; docs/performance.md)."""

import statistics

import psutil
import pytest

from benchmark import sweep
from benchmark.spec import load_experiment

TRIALS = 60
WARM_UP = 20  # trials before the first sample: the first ones build the frozen part, trace the head, fill caches
WINDOW = 10  # trials a sample is the median of (one trial's RSS moves with the allocator)
MAX_MIB_PER_TRIAL = 1.0


def cached_heads_in_process():
    """`ci` VGG16 frozen (synthetic images, 32 px, cached features): the cheapest head-only trials,
    with the median pruner (each trial reports to its study), in the sweep's process."""
    experiment = load_experiment("ci")
    experiment.backbones, experiment.strategies = ["vgg16"], {"frozen": experiment.strategies["frozen"]}
    assert experiment.search.trials_per_process == "auto" and experiment.search.pruner == "median"
    return experiment


@pytest.mark.slow
def test_in_process_head_trials_keep_the_sweeps_memory_flat(store):
    process, rss_mib = psutil.Process(), []

    def after_each_trial(line: str) -> None:
        if line.startswith("trial "):  # the sweep's line per trial, not its first line about the study
            rss_mib.append(process.memory_info().rss / 2**20)

    result = sweep.run_sweep(cached_heads_in_process(), "vgg16", "frozen", trials=TRIALS, verbose=0,
                             say=after_each_trial)

    assert sweep.trials_per_process(sweep.resolve(cached_heads_in_process(), "vgg16", "frozen", TRIALS, None, None)) == 0
    assert result.finished == TRIALS and len(rss_mib) == TRIALS
    early = statistics.median(rss_mib[WARM_UP - WINDOW:WARM_UP])
    late = statistics.median(rss_mib[-WINDOW:])
    per_trial = (late - early) / (TRIALS - WARM_UP)
    assert per_trial <= MAX_MIB_PER_TRIAL, (
        f"the sweep's resident memory grew {per_trial:.2f} MiB per trial from trial {WARM_UP} to {TRIALS} "
        f"({early:.0f} -> {late:.0f} MiB; after each trial: {[round(m) for m in rss_mib]})")
