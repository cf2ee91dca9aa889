"""Screenshots of the MLflow UI as the project's links open it, for the README: the experiment's
runs (its shared view) and the best row's study on MLflow's compare page.

    python benchmarks/mlflow_screenshots.py --experiment transfer      # writes docs/mlflow_runs.png, docs/mlflow_compare.png

It reads the local store (BENCHMARK_STORE, default ./mlruns), serves it with `mlflow server` on a
free port, updates the experiment's view (as every sweep does) and photographs the pages in
headless Chromium (apt-get install chromium). The UI's assistant panel, on the right of every
page, is cut off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
WINDOW = (2000, 900)
ASSISTANT_PANEL_PX = 520  # the right edge of every page at this window size
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_server(backend_uri: str, log: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
                                   "--host", "127.0.0.1", "--port", str(port)], stdout=out, stderr=out,
                                  start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"mlflow server did not start: {log.read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def screenshot(url: str, path: Path, workdir: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not installed (apt-get install chromium)")
    shot = workdir / "page.png"
    profile = workdir / "profile"
    shutil.rmtree(profile, ignore_errors=True)  # a fresh browser: nothing remembered from the last page
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={shot}", url],
                   capture_output=True, timeout=180, check=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    matplotlib.image.imsave(path, pixels[:, : WINDOW[0] - ASSISTANT_PANEL_PX])
    print(f"wrote {path} ({url})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", default="transfer")
    parser.add_argument("--output", type=Path, default=REPO / "docs")
    args = parser.parse_args()

    from benchmark import leaderboard, mlflow_store, mlflow_view

    backend = mlflow_store.configure_for_reading()
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(backend, Path(tmp) / "server.log") as url:
        os.environ["MLFLOW_TRACKING_URI"] = url  # the links point at this server
        mlflow_store.point_mlflow_at(url)
        board = leaderboard.leaderboard(args.experiment, intervals=False)
        experiment_id = leaderboard.experiment_id_of(args.experiment)
        mlflow_view.update(experiment_id)
        screenshot(mlflow_store.experiment_url(experiment_id), args.output / "mlflow_runs.png", Path(tmp))
        study = next(s for s in board["study"] if isinstance(s, str) and s)
        screenshot(mlflow_view.study_compare_url(experiment_id, study), args.output / "mlflow_compare.png", Path(tmp))


if __name__ == "__main__":
    main()
