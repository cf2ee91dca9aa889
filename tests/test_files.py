"""All-or-nothing writes: the old file stays whole when a write fails, nothing half-written is
left behind, and each unwritable target is a one-line error naming it."""

import os
import subprocess
import sys

import pytest

from benchmark import files
from benchmark.errors import BenchmarkError


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "report" / "index.html"
    files.write_text(target, "first", "the report")
    files.write_text(target, "second", "the report")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["index.html"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~files.umask())  # as open() makes it, not mkstemp's 0600


def test_a_write_that_fails_keeps_the_old_file_whole(tmp_path):
    target = tmp_path / "ci.json"
    target.write_text("the old baseline")
    with pytest.raises(RuntimeError):
        with files.replaced(target, "the baseline") as partial:
            partial.write_text("half of the new")
            raise RuntimeError("the process fails here")
    assert target.read_text() == "the old baseline" and [p.name for p in tmp_path.iterdir()] == ["ci.json"]


def test_targets_that_cannot_be_written_name_the_obstacle(tmp_path):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(BenchmarkError, match=f"{tmp_path}/a-file is a file, not a folder"):
        files.write_text(tmp_path / "a-file" / "deeper" / "x.html", "x", "the report")
    with pytest.raises(BenchmarkError, match="it is a directory; pass a file name"):
        files.write_text(tmp_path, "x", "the report")
    assert (tmp_path / "a-file").read_text() == ""


def test_a_full_device_is_named_and_the_old_file_survives(tmp_path):
    """On a 16 KB tmpfs in a private mount namespace (as any user may make one)."""
    full = tmp_path / "full"
    full.mkdir()
    script = (
        "from pathlib import Path\n"
        "from benchmark import files\n"
        f"target = Path({str(full)!r}) / 'index.html'\n"
        "target.write_text('old page')\n"
        "try:\n"
        "    with open(target.parent / 'fill', 'wb', buffering=0) as fill:\n"
        "        while True: fill.write(bytes(1024))\n"
        "except OSError: pass\n"
        "try:\n"
        "    files.write_text(target, 'x' * 100_000, 'the leaderboard')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
        "print(target.read_text(), sorted(p.name for p in target.parent.iterdir()))\n"
    )
    command = ["unshare", "--map-root-user", "--mount", "sh", "-c",
               f'mount -t tmpfs -o size=16k tmpfs "{full}" && exec "$@"', "sh", sys.executable, "-c", script]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    error, listing = out.stdout.splitlines()
    assert error == f"BenchmarkError cannot write the leaderboard {full}/index.html (no space left on the device); " \
                    "choose a writable path or free the space"
    assert listing == "old page ['fill', 'index.html']"
