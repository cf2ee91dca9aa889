"""The command line as a process. Bad input case by case: tests/test_bad_input.py."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_command_has_help():
    for command in ("run", "sweep", "throughput", "backbones"):
        out = subprocess.run([sys.executable, "-m", "benchmark", command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: python -m benchmark" in out.stdout


def test_errors_from_the_real_process_are_one_line_and_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, "-m", "benchmark", "run", "--experiment", "ci", "--backbone", "resnet5"]
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith("error: unknown backbone 'resnet5'")
    debug = subprocess.run(command[:3] + ["--debug"] + command[3:], capture_output=True, text=True, env=env)
    assert debug.returncode != 0
    assert "Traceback" in debug.stderr and "BenchmarkError: unknown backbone 'resnet5'" in debug.stderr
    assert not (tmp_path / "mlruns").exists()
