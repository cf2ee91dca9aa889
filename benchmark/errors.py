"""The one error type users see: a one-line message that names the problem and the fix."""


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
