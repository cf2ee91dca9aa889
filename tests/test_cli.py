"""The command line as a process. Bad input case by case: tests/test_bad_input.py."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_every_command_has_help():
    for command in ("run", "sweep", "backbones"):
        out = subprocess.run([sys.executable, "-m", "benchmark", command, "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage: python -m benchmark" in out.stdout


def test_errors_from_the_real_process_have_no_traceback(tmp_path):
    env = {**os.environ, "BENCHMARK_STORE": str(tmp_path / "mlruns")}
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "--backbone", "resnet5"], capture_output=True, text=True, env=env
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: unknown backbone 'resnet5'")
    assert "Traceback" not in out.stderr
