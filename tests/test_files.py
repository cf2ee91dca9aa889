"""All-or-nothing writes: the old file stays whole when a write fails, nothing half-written is
left behind, and each unwritable target is a one-line error naming it."""

import os
import socket
import stat
import subprocess
import sys
import threading

import pytest
from helpers import full_device

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


# ---------------------------------------------------------------- only regular files are replaced


def kind(path) -> int:
    return stat.S_IFMT(os.lstat(path).st_mode)


def test_a_symbolic_link_stays_and_its_target_is_replaced(tmp_path):
    (tmp_path / "kept").mkdir()
    real = tmp_path / "kept" / "ci.json"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "ci.json"
    link.symlink_to(real)
    files.write_text(link, "new", "the baseline")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new" and stat.S_IMODE(real.stat().st_mode) == 0o640  # the old file's mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ci.json", "kept"] and os.listdir(real.parent) == ["ci.json"]


def test_a_link_to_a_missing_file_creates_the_file_and_keeps_the_link(tmp_path):
    link = tmp_path / "index.html"
    link.symlink_to(tmp_path / "pages" / "index.html")
    (tmp_path / "pages").mkdir()
    files.write_text(link, "page", "the report")
    assert link.is_symlink() and (tmp_path / "pages" / "index.html").read_text() == "page"


def test_a_fifo_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    read = {}
    reader = threading.Thread(target=lambda: read.update(text=fifo.read_text()))
    reader.start()
    files.write_text(fifo, "the table\n", "the leaderboard")
    reader.join(10)
    assert read == {"text": "the table\n"} and kind(fifo) == stat.S_IFIFO
    assert os.listdir(tmp_path) == ["pipe"]


def test_a_character_device_is_written_through_and_a_full_one_is_one_error(tmp_path):
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    files.write_text(null, "discarded", "the leaderboard")
    assert kind(null) == stat.S_IFCHR
    full = full_device(tmp_path / "full")
    with pytest.raises(BenchmarkError) as error:
        files.write_text(full, "x" * 10_000, "the baseline")
    assert str(error.value) == f"cannot write the baseline {full} (no space left on the device); " \
                               "choose a writable path or free the space"
    assert kind(full) == stat.S_IFCHR and sorted(os.listdir(tmp_path)) == ["full", "null"]


def test_other_kinds_of_file_are_refused_before_any_work(tmp_path):
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    os.mknod(tmp_path / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    try:
        for name, what in (("sock", "socket"), ("disk", "block device")):
            with pytest.raises(BenchmarkError, match=f"{tmp_path}/{name}: it is a {what}, not a regular file; pass a file name"):
                files.check_target(tmp_path / name, "the report")
        assert kind(tmp_path / "sock") == stat.S_IFSOCK and kind(tmp_path / "disk") == stat.S_IFBLK
    finally:
        sock.close()


def stdout_of(target: str, shell_redirect: str) -> str:
    script = f"from benchmark import files; files.write_text({target!r}, 'the table\\n', 'the leaderboard')"
    command = f'{sys.executable} -c "{script}" {shell_redirect}'
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_dev_stdout_in_a_pipe_and_redirected_to_a_file_is_written_through(tmp_path):
    assert stdout_of("/dev/stdout", "| cat") == "the table\n"
    shell_file = tmp_path / "out.txt"
    shell_file.write_text("before\n")
    stdout_of("/dev/stdout", f">> {shell_file}")
    assert shell_file.read_text() == "before\nthe table\n"  # appended to the shell's file, not renamed over it


def test_a_folder_behind_a_symbolic_link_is_replaced_and_the_link_stays(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "old.txt").write_text("old")
    link = tmp_path / "cache"
    link.symlink_to(tmp_path / "real")
    with files.replaced_folder(link, "the cache") as partial:
        (partial / "new.txt").write_text("new")
    assert link.is_symlink() and os.listdir(tmp_path / "real") == ["new.txt"]
    assert sorted(os.listdir(tmp_path)) == ["cache", "real"]
