"""Every file the package writes is all or nothing: written beside the target and renamed into
place, so a reader never sees half a file (or half a folder of them: `replaced_folder`) and a
failed write leaves the old one. A target that cannot be written (under a regular file, a
directory in its place, a read-only or full device) is a one-line BenchmarkError (exit 2) naming
the path.

The package replaces regular files only (`target`): a symbolic link is followed and its target
replaced (the link stays); a FIFO or a character device (a pipe, a terminal, /dev/stdout,
/dev/null, /dev/full) is written through, never replaced; any other kind of file is refused."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator, NamedTuple

from benchmark.errors import BenchmarkError

REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def cache_dir() -> Path:
    """$BENCHMARK_CACHE_DIR, else ~/.cache/benchmark/features (the XDG cache home if set): the
    activation cache (benchmark/cache.py), and under images/ the decoded own images (benchmark/images.py)."""
    if os.environ.get("BENCHMARK_CACHE_DIR"):
        return Path(os.environ["BENCHMARK_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "benchmark" / "features"


def unwritable(path: Path, what: str, error: OSError) -> BenchmarkError:
    reason = REASONS.get(error.errno, error.strerror or str(error))
    return BenchmarkError(f"cannot write {what} {path} ({reason}); choose a writable path or free the space")


def make_folder(folder: Path, what: str) -> Path:
    """`folder` and its parents, or a BenchmarkError naming the part in the way."""
    for part in [folder, *folder.parents]:
        if part.exists() and not part.is_dir():
            raise BenchmarkError(f"cannot write {what} under {folder}: {part} is a file, not a folder; choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable(folder, what, e) from None
    return folder


class Target(NamedTuple):
    path: Path  # where the bytes go: the file to replace, or the device or FIFO to write through
    through: bool  # written through (a FIFO, a character device), not replaced


# Links to a process's open files: /dev/stdout -> /proc/self/fd/1, /dev/fd/N
DESCRIPTOR = re.compile(r"/proc/(self|thread-self|\d+)(/task/\d+)?/fd/\d+|/dev/fd/\d+")
KINDS = {stat.S_IFBLK: "block device", stat.S_IFSOCK: "socket"}


def target(path: Path, what: str) -> Target:
    """Where writing `path` goes, by the one rule of the module docstring; a BenchmarkError for a
    directory or another kind of file the package must not replace."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode  # through symbolic links
    except (FileNotFoundError, NotADirectoryError):
        mode = None  # a new file (or a link to one); a file in the way of its folder is named below
    except OSError as e:
        raise unwritable(path, what, e) from None
    if mode is not None and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
        return Target(path, through=True)
    if mode is not None and stat.S_ISDIR(mode):
        raise BenchmarkError(f"cannot write {what} {path}: it is a directory; pass a file name")
    if mode is not None and not stat.S_ISREG(mode):
        kind = KINDS.get(stat.S_IFMT(mode), "special file")
        raise BenchmarkError(f"cannot write {what} {path}: it is a {kind}, not a regular file; pass a file name")
    if opens_a_descriptor(path):  # /dev/stdout redirected to a file: that file is the shell's, written as it is
        return Target(path, through=True)
    return Target(Path(os.path.realpath(path)), through=False)


def opens_a_descriptor(path: Path) -> bool:
    """Whether `path`, or a link on the way from it, is one of a process's open files."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if DESCRIPTOR.fullmatch(current):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False


def writes_through(path: Path) -> bool:
    """Whether writing `path` goes straight to a device or a FIFO (nothing to put beside it)."""
    try:
        return target(path, "").through
    except BenchmarkError:
        return False


def check_target(path: Path, what: str) -> Path:
    """Fail now, before any work, when `path` could not be written later."""
    where = target(path, what)
    if where.through:
        return Path(path)
    make_folder(where.path.parent, what)
    if not os.access(where.path.parent, os.W_OK):
        raise BenchmarkError(f"cannot write {what} {path} (its folder is not writable); choose a writable path")
    return Path(path)


@contextmanager
def replaced(path: Path, what: str) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without an
    error, removed when it fails. `what` names the file in errors ("the report", "the baseline").
    A FIFO or device is not replaced: the block writes to it directly (module docstring)."""
    check_target(path, what)
    where = target(path, what)
    if where.through:
        try:
            yield where.path
        except OSError as e:
            raise unwritable(Path(path), what, e) from None
        return
    try:
        # The temporary name ends as the target's does: writers that check the extension (Keras's) accept it.
        handle, name = tempfile.mkstemp(dir=where.path.parent, prefix=f".{where.path.name}.partial.",
                                        suffix=f".{where.path.name}")
        os.close(handle)
        keep_mode_and_owner(Path(name), where.path)
    except OSError as e:
        raise unwritable(Path(path), what, e) from None
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, where.path)
    except OSError as e:
        raise unwritable(Path(path), what, e) from None
    finally:
        partial.unlink(missing_ok=True)


def keep_mode_and_owner(partial: Path, replacing: Path) -> None:
    """The new file gets the old one's mode and owner, or a new file's (mkstemp's is private)."""
    try:
        old = os.stat(replacing)
    except FileNotFoundError:
        os.chmod(partial, 0o666 & ~umask())  # as a plain open() would create it
        return
    os.chmod(partial, stat.S_IMODE(old.st_mode))
    if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
        with suppress(PermissionError):  # only root may give a file away; anyone else writes their own
            os.chown(partial, old.st_uid, old.st_gid)


@contextmanager
def replaced_folder(folder: Path, what: str) -> Iterator[Path]:
    """A temporary folder beside `folder` to fill; it takes `folder`'s place (an older one there
    is removed first) when the block ends without an error, and is removed when it fails. If
    another process put its own `folder` there meanwhile, that one stays: it holds the same.
    A symbolic link is followed: its target is replaced, the link stays."""
    folder = Path(os.path.realpath(folder))
    make_folder(folder.parent, what)
    try:
        partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial"))
    except OSError as e:
        raise unwritable(folder, what, e) from None
    try:
        yield partial
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        try:
            os.replace(partial, folder)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not folder.is_dir():
                raise
    except OSError as e:
        raise unwritable(folder, what, e) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: Path, text: str, what: str) -> None:
    where = target(path, what)
    if not where.through:
        with replaced(path, what) as partial:
            partial.write_text(text)
        return
    try:  # appended: /dev/stdout opened anew must not truncate what the shell's file already holds
        with open(where.path, "a") as stream:
            stream.write(text)
    except OSError as e:
        raise unwritable(Path(path), what, e) from None
