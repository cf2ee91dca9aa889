"""What users see when something goes wrong: one-line errors that name the problem and the fix,
and no native log noise around them."""

import contextlib
import os
import sys


class BenchmarkError(Exception):
    """A problem with the user's input or environment, reported without a traceback.

    exit_code 2 means bad input (spec, arguments, data, store); 1 means a run that failed.
    """

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


class SpecError(BenchmarkError):
    """Every problem found in one spec file, reported all at once, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class SpecValueError(BenchmarkError):
    """A spec value that the data cannot satisfy (a subset larger than its split...). The message
    names the field; `ExperimentSpec.naming_its_file` adds the spec file it is written in."""


TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


def quiet_tensorflow_by_default() -> None:
    """Before TensorFlow is imported: its C++ log lines are noise here, unless the user chose a level."""
    os.environ.setdefault(TF_LOG_LEVEL, "3")


def tensorflow_logs_asked_for() -> bool:
    """Only a level of 0 or 1 asks for TensorFlow's info or warning lines. 2 (common in ML shells)
    hides warnings and 3 errors too: neither asks to see its start-up lines around our error."""
    return os.environ.get(TF_LOG_LEVEL, "").strip() in ("0", "1")


@contextlib.contextmanager
def tensorflow_start_up_silenced():
    """TensorFlow writes native start-up lines ("oneDNN custom operations are on", "Could not find
    cuda drivers", then "failed call to cuInit" when it first looks for devices) whatever its log
    level says; file descriptor 2 points at /dev/null while it loads and probes its devices, unless
    the user asked for TF's logs (tensorflow_logs_asked_for). Python errors still show."""
    if tensorflow_logs_asked_for():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
        probe_tensorflow_devices()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def probe_tensorflow_devices() -> None:
    """TensorFlow probes CUDA the first time it lists its devices (under a millisecond); without a
    GPU the probe logs an error. Nothing to probe where TensorFlow is not loaded (the JAX backend)."""
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None:
        tensorflow.config.list_physical_devices()
