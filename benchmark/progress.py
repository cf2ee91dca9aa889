"""Progress bars for the one-time work that can take a while (decoding a folder of images, the
feature pass, converting a backbone's weights): one tqdm bar on stderr, the same way everywhere;
and the time a process spends on work it does once for all its trials (`once_per_process`), which
a sweep's estimate of the time left leaves out.

A bar is drawn only on a terminal (tqdm's own test: nothing goes into a log file or a CI log),
never under `--quiet` (`hide`), and only once the work has lasted DELAY_S: quick work stays silent.
It is cleared when the work ends. numpy-free and Keras-free: benchmark.images uses it too.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from tqdm import tqdm

DELAY_S = 2.0
_hidden = False  # --quiet, or a sweep without its bar: no bar in this process
_position: int | None = None  # 1 in a trial's own process: the line below the sweep's bar of trials
_one_time_s = 0.0  # once_per_process's seconds since a trial last took them (take_one_time_s)


def bar(total: int, desc: str, unit: str, shown: bool = True, delay: float | None = None, **options) -> tqdm:
    """A tqdm bar of `total` `unit`s on stderr; drawn only on a terminal, when `shown` and not
    hidden, once `delay` (default DELAY_S) seconds have passed, and cleared when closed (use it as a context
    manager). `options` go to tqdm."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None if shown and not _hidden else True,
                delay=DELAY_S if delay is None else delay, leave=False, dynamic_ncols=True, position=_position, **options)


def hide(hidden: bool = True) -> None:
    """No bar from this process on (`--quiet`), or bars again."""
    global _hidden
    _hidden = hidden


@contextmanager
def hidden_unless(shown: bool) -> Iterator[None]:
    """No bar while inside, unless `shown` (a trial run for a sweep without its bar)."""
    before = _hidden
    hide(before or not shown)
    try:
        yield
    finally:
        hide(before)


def below_the_sweeps_bar() -> None:
    """In a trial's own process: bars go one line below the sweep process's bar of trials, not over it."""
    global _position
    _position = 1


@contextmanager
def once_per_process() -> Iterator[None]:
    """Times work a process does once for all its trials (building the frozen part they share,
    loading the data, measuring an architecture's size and speed): the trial that paid for it says
    so (take_one_time_s), and the sweep's estimate of the time left does not expect it again."""
    global _one_time_s
    started = time.perf_counter()
    try:
        yield
    finally:
        _one_time_s += time.perf_counter() - started


def take_one_time_s() -> float:
    """The seconds of once_per_process work since the last call."""
    global _one_time_s
    taken, _one_time_s = _one_time_s, 0.0
    return taken
