"""Every file the package writes is all or nothing: written beside the target and renamed into
place, so a reader never sees half a file (or half a folder of them: `replaced_folder`) and a
failed write leaves the old one. A target that cannot be written (under a regular file, a
directory in its place, a read-only or full device) is a one-line BenchmarkError (exit 2) naming
the path."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def check_target(path: Path, what: str) -> Path:
    """Fail now, before any work, when `path` could not be written later."""
    if path.is_dir():
        raise BenchmarkError(f"cannot write {what} {path}: it is a directory; pass a file name")
    make_folder(path.parent, what)
    if not os.access(path.parent, os.W_OK):
        raise BenchmarkError(f"cannot write {what} {path} (its folder is not writable); choose a writable path")
    return path


@contextmanager
def replaced(path: Path, what: str) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed onto `path` when the block ends without an
    error, removed when it fails. `what` names the file in errors ("the report", "the baseline")."""
    path = check_target(Path(path), what)
    try:
        # The temporary name ends as the target's does: writers that check the extension (Keras's) accept it.
        handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.partial.", suffix=f".{path.name}")
        os.close(handle)
        os.chmod(name, 0o666 & ~umask())  # as a plain open() would create it (mkstemp's is private)
    except OSError as e:
        raise unwritable(path, what, e) from None
    partial = Path(name)
    try:
        yield partial
        os.replace(partial, path)
    except OSError as e:
        raise unwritable(path, what, e) from None
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def replaced_folder(folder: Path, what: str) -> Iterator[Path]:
    """A temporary folder beside `folder` to fill; it takes `folder`'s place (an older one there
    is removed first) when the block ends without an error, and is removed when it fails. If
    another process put its own `folder` there meanwhile, that one stays: it holds the same."""
    folder = Path(folder)
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
    with replaced(path, what) as partial:
        partial.write_text(text)
