"""The bars of one-time work: drawn on a terminal once the work lasts, nowhere else."""

import io
import sys
import time

from benchmark import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def on_a_terminal(monkeypatch) -> Terminal:
    """stderr a terminal (set in the test itself: pytest's capture takes stderr back after a fixture's setup)."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


def test_a_bar_is_drawn_on_a_terminal_once_the_work_has_lasted_its_delay(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    with progress.bar(10, "converting", "layer", delay=0.2) as meter:
        meter.update(4)
        assert terminal.getvalue() == ""  # not yet: quick work stays silent
        time.sleep(0.3)
        meter.update(3)
        assert "converting:  70%" in terminal.getvalue() and "7/10" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r")  # cleared when done, the cursor back at the line's start


def test_quick_work_draws_nothing_even_on_a_terminal(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    with progress.bar(10, "decoding", "img") as meter:
        meter.update(10)
    assert meter.n == 10 and terminal.getvalue() == ""


def test_no_bar_in_a_log_under_quiet_or_when_not_shown(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    with progress.bar(10, "in a log", "img", delay=0) as meter:
        meter.update(10)
    assert meter.n == 0 and log.getvalue() == ""  # disabled: it counts nothing either
    terminal = on_a_terminal(monkeypatch)
    with progress.bar(10, "not shown", "img", shown=False, delay=0) as meter:
        meter.update(10)
    try:
        progress.hide()
        with progress.bar(10, "quiet", "img", delay=0) as meter:
            meter.update(10)
    finally:
        progress.hide(False)
    with progress.hidden_unless(False), progress.bar(10, "a sweep without its bar", "img", delay=0) as meter:
        meter.update(10)
    assert terminal.getvalue() == ""
    with progress.hidden_unless(True), progress.bar(10, "shown", "img", delay=0) as meter:
        meter.update(10)
    assert "shown:" in terminal.getvalue()


def test_in_a_trials_process_a_bar_goes_below_the_sweeps_bar(monkeypatch):
    terminal = on_a_terminal(monkeypatch)
    monkeypatch.setattr(progress, "_position", None)
    progress.below_the_sweeps_bar()
    with progress.bar(10, "features", "img", delay=0) as meter:
        meter.update(10)
    assert terminal.getvalue().startswith("\n")  # one line down first (tqdm's position=1), then back up


def test_one_time_work_is_told_once():
    progress.take_one_time_s()
    with progress.once_per_process():
        time.sleep(0.05)
    with progress.once_per_process():
        time.sleep(0.05)
    assert 0.1 <= progress.take_one_time_s() < 5 and progress.take_one_time_s() == 0.0
