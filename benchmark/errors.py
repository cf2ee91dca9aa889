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


@contextlib.contextmanager
def tensorflow_start_up_silenced():
    """TensorFlow writes native start-up lines ("oneDNN custom operations are on", "Could not find
    cuda drivers") before its own log level applies; file descriptor 2 points at /dev/null while it
    loads, unless the user asked for TF's logs (TF_CPP_MIN_LOG_LEVEL below 3). Python errors still show."""
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3") != "3":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
