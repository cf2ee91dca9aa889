"""What several test files share: the one place for test helpers (no test file imports another).
Fixtures are in conftest.py; the functions and constants they and the tests use are here."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
CI_SWEEPS = {("vgg16", "frozen"): 3, ("resnet50", "frozen"): 2}  # what the shared ci_store fixture sweeps


# ---------------------------------------------------------------- test processes sharing a run


def full_device(path: Path) -> Path:
    """A node of the kernel's /dev/full at `path` (every write fails: no space left on the device)."""
    import stat

    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    return path


def run_folder(tmp_path_factory) -> Path:
    """This run's temporary folder, shared by its test processes (each has its own inside it)."""
    own = tmp_path_factory.getbasetemp()
    return own.parent if os.environ.get("PYTEST_XDIST_WORKER") else own


def pair_study(storage, backbone: str, strategy: str, experiment: str = "ci"):
    """The newest Optuna study of one (experiment, backbone, strategy): its name ends in the spec's fingerprint."""
    import optuna

    from benchmark import sweep
    from benchmark.storage import open_storage

    opened = open_storage(storage, heartbeat=False) if isinstance(storage, str) else storage
    summaries = sweep.pair_studies(opened, experiment, backbone, strategy)
    if not summaries:
        raise KeyError(f"no study of {experiment}/{backbone}/{strategy} yet")
    return optuna.load_study(study_name=summaries[-1].study_name, storage=opened)


def write_official(folder: Path, train_size: int = 30, test_size: int = 20, protocol: int = 2, seed: int = 0) -> dict:
    """A small train/test/meta in the official CIFAR-100 layout (bytes keys, N x 3072 uint8 rows)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, size in (("train", train_size), ("test", test_size)):
        content = {
            b"batch_label": f"{name} batch".encode(),
            b"data": rng.integers(0, 256, size=(size, 3072), dtype=np.uint8),
            b"fine_labels": [int(v) for v in np.arange(size) % 100],
            b"coarse_labels": [int(v) for v in np.arange(size) % 20],
            b"filenames": [f"img_{i}.png".encode() for i in range(size)],
        }
        (folder / name).write_bytes(pickle.dumps(content, protocol=protocol))
        written[name] = content
    meta = {
        b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return written


# ---------------------------------------------------------------- servers


def free_port() -> int:
    """A port nothing listens on (a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(log: Path, *args: str, env: dict | None = None) -> Iterator[str]:
    """A real `mlflow server` on a free local port (its backend in `args` or `env`); yields its URL
    once /health answers, and stops it (and its workers) afterwards."""
    import sys

    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *args]
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"mlflow server did not start: {log.read_text()[-2000:]}")
                    time.sleep(0.5)
            yield url
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


# ---------------------------------------------------------------- a real browser

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0")  # fmt: skip


def chromium() -> str:
    """Headless Chromium's path; without it the test skips, or fails when CI=true."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "chromium not installed (apt-get install chromium); .ci/run installs it"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found
