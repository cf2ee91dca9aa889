"""The bad-input corpus: every case must end with a one-line error that names the problem and the
fix, a non-zero exit, no traceback, and every store exactly as it was.

Malformed spec files are one file each under tests/bad_input/specs/ (their `# expect:` line lists
what the error must say; `# command:` overrides `run --backbone vgg16`; `# lines:` is how many
problems the error names, one per line, when it is more than one). Everything else is one row
of CASES below: the command line, what the error must say, and how to build the bad input.

Which store a case runs against: a case whose answer depends on the results in the store (its
command reads them before it meets the bad input) is marked needs_results and runs against a copy
of a real sweep's store (conftest's ci_store: the slow tier). Every other case runs in the fast
tier against a store without results (MLflow's tables, no run), made in about a second; both
stores must be left exactly as they were. The marks are kept honest by the slow tier:
test_a_case_needs_results_exactly_when_its_answer_depends_on_them runs every case of a command
that reads runs (READS_RESULTS) on both stores and fails where a case's answer (error, exit code,
stores unchanged) differs and it is not marked, or is the same and it is. (`run`, `sweep` and
`throughput` write to a store but never read its results before they check their input; every
case was compared on both stores when the corpus was split.)
"""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from helpers import free_port, full_device, write_official

from benchmark.cli import main

REPO = Path(__file__).resolve().parent.parent
SPECS = REPO / "tests" / "bad_input" / "specs"
SECRET = "s3cr3t-pw"
MAX_SECONDS = 20  # an unreachable server must fail this fast, not hang
PROCESS_START_S = 25  # and a case in its own process may first spend this starting Python and TensorFlow (busy machine)


# ---------------------------------------------------------------- building bad inputs


class RunsCode:
    """A pickle that runs a shell command when loaded (as a malicious data file would)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def sqlite_store(tmp: Path, name: str, *statements: str) -> None:
    """{tmp}/<name>/mlflow.db made of these SQL statements (no statement: random bytes, a damaged file)."""
    import sqlite3

    (tmp / name).mkdir()
    database = tmp / name / "mlflow.db"
    if not statements:
        database.write_bytes(os.urandom(20_000))
        return
    with contextlib.closing(sqlite3.connect(database)) as db:
        for statement in statements:
            db.execute(statement)
        db.commit()


def cifar_copy(tmp: Path, sample: Path) -> Path:
    folder = tmp / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        shutil.copy(sample / name, folder / name)
    return folder


def truncated(tmp: Path, sample: Path) -> Path:
    folder = cifar_copy(tmp, sample)
    content = (folder / "train").read_bytes()
    (folder / "train").write_bytes(content[: len(content) // 2])
    return folder


def wrong_shape(tmp: Path, sample: Path) -> Path:
    folder = tmp / "cifar-100-python"
    write_official(folder)
    batch = pickle.loads((folder / "train").read_bytes())
    batch[b"data"] = batch[b"data"][:, :1024]  # one channel instead of three
    (folder / "train").write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def code_pickle(tmp: Path, sample: Path) -> Path:
    folder = cifar_copy(tmp, sample)
    (folder / "train").write_bytes(pickle.dumps(RunsCode(tmp / "pwned")))
    return folder


def labels_out_of_range(tmp: Path, sample: Path) -> Path:
    folder = tmp / "cifar-100-python"
    write_official(folder)
    batch = pickle.loads((folder / "test").read_bytes())
    batch[b"fine_labels"][0] = 100
    (folder / "test").write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def ci_spec_with(tmp: Path, **replacements: str) -> Path:
    text = (REPO / "experiments" / "ci.toml").read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp / "ci.toml"
    path.write_text(text)
    return path


def spec_with_weights(weights: str) -> Callable[[Path, Path], Path]:
    return lambda tmp, sample: ci_spec_with(tmp, **{'weights = "none"': f'weights = "{weights.format(tmp=tmp)}"'})


def lite_spec_with_weights(weights: Callable[[Path], str]) -> Callable[[Path, Path], Path]:
    """The ci-transfer spec (EfficientNet-Lite0 with ImageNet weights) with another weights value."""

    def make(tmp: Path, sample: Path) -> Path:
        text = (REPO / "experiments" / "ci-transfer.toml").read_text()
        assert 'weights = "imagenet"' in text
        path = tmp / "lite.toml"
        path.write_text(text.replace('weights = "imagenet"', f'weights = "{weights(tmp)}"'))
        return path

    return make


def lite_checkpoint(name: str) -> Callable[[Path], str]:
    from benchmark import lite

    return lambda tmp: str(lite.wheel_checkpoint(name))


def code_checkpoint(tmp: Path) -> str:
    (tmp / "evil.pth").write_bytes(pickle.dumps(RunsCode(tmp / "pwned"), protocol=2))
    return str(tmp / "evil.pth")


def truncated_checkpoint(tmp: Path) -> str:
    content = Path(lite_checkpoint("efficientnetlite0")(tmp)).read_bytes()
    (tmp / "half.pth").write_bytes(content[: len(content) // 2])
    return str(tmp / "half.pth")


def garbage_h5(tmp: Path) -> None:
    (tmp / "garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4096))


def small_model_h5(tmp: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save_weights(tmp / "other.weights.h5")


def wrong_hash_cache(tmp: Path) -> None:
    """A corrupted ImageNet weights file where Keras caches downloads (KERAS_HOME)."""
    models = tmp / "keras" / "models"
    models.mkdir(parents=True)
    (models / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"not the real weights")


OWN_SPEC = """name = "own"
backbones = ["vgg16"]
strategies = {{ frozen = {{ unfreeze = 0 }} }}
[data]
{data}
image_size = 32
validation_fraction = 0.5
test_fraction = 0.5
augment = {{ flip = false, crop_padding = 0 }}
[backbone]
weights = "none"
image_size = 32
[training]
epochs = 1
"""


def own_images_spec(build: Callable[[Path], Path]) -> Callable[[Path, Path], Path]:
    """A small spec over the folder (or, for a .csv, the labels CSV) that `build` makes under tmp."""

    def make(tmp: Path, sample: Path) -> Path:
        target = build(tmp)
        data = f'source = "csv"\nlabels = "{target}"' if target.suffix == ".csv" else f'source = "folder"\ndir = "{target}"'
        path = tmp / "own.toml"
        path.write_text(OWN_SPEC.format(data=data), encoding="utf-8")
        return path

    return make


def picture(path: Path, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    return path


def pictures(tmp: Path, classes: dict[str, int], under: str = "pics") -> Path:
    """tmp/under/<class>/<i>.png, classes[name] images each."""
    for c, (name, count) in enumerate(classes.items()):
        (tmp / under / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            picture(tmp / under / name / f"{i}.png", seed=100 * c + i)
    return tmp / under


def with_bad_file(name: str, write: Callable[[Path], None]) -> Callable[[Path], Path]:
    """Two good classes, and one bad file `name` in the first (sorted first, so decoded first)."""

    def build(tmp: Path) -> Path:
        root = pictures(tmp, {"cat": 2, "dog": 2})
        write(root / "cat" / name)
        return root

    return build


def truncated_jpeg(path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    whole = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(whole, "JPEG")
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])


def decompression_bomb(path: Path) -> None:
    """A PNG of a few hundred bytes declaring 20000 x 20000 pixels (400 M: over twice Pillow's limit)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 20001))
                     + chunk(b"IEND", b""))


def labels_csv(rows: list[str], files: int = 4) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        for i in range(files):
            picture(tmp / "pics" / f"{i}.png", seed=i)
        (tmp / "labels.csv").write_text("\n".join(["path,label,split", *rows]) + "\n")
        return tmp / "labels.csv"

    return build


def split_folders(tmp: Path) -> Path:
    pictures(tmp, {"cat": 2, "dog": 2}, under="pics/train")
    pictures(tmp, {"cat": 2, "emu": 2}, under="pics/test")
    return tmp / "pics"


def unix_socket(path: Path) -> None:
    """A socket's node at `path` (it stays after the socket is closed)."""
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))


class SilentServer:
    """Accepts connections and never answers: a server that hangs. Without timeouts, clients wait forever."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


# ---------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    argv: list[str]  # may hold {tmp}, {data}, {spec}, {silent}, {closed}, {secret}
    expect: tuple[str, ...]  # fragments the one error line must contain ({tmp} allowed)
    data: Callable[[Path, Path], Path] | None = None  # (tmp, sample) -> what {data} / {spec} stands for
    prepare: Callable[[Path], None] | None = None
    env: dict[str, str] | None = None  # may hold the same placeholders
    subprocess: bool = False  # run `python -m benchmark` (for faults that need their own process)
    wrap: str | None = None  # a shell prefix for that process, e.g. a read-only mount
    exit_code: int = 2
    lines: int = 1  # a spec with several problems names each on its own line
    watch: str | None = None  # a file or folder under {tmp} the case must also leave as it was (a damaged store)
    needs_results: bool = False  # its answer depends on the results in the store (slow tier: see the module docstring)
    keeps: tuple[str, int] | None = None  # a path under {tmp} and the kind of file (stat.S_IFMT) it must still be


RUN_CI = ["run", "--experiment", "ci", "--backbone", "vgg16", "--quiet"]
RUN_OWN = ["run", "--experiment", "{spec}", "--backbone", "vgg16", "--quiet"]
RUN_LITE = ["run", "--experiment", "{spec}", "--backbone", "efficientnetlite0", "--quiet"]
SWEEP_CI = ["sweep", "--experiment", "ci", "--backbone", "vgg16", "--strategy", "frozen", "--trials", "1", "--quiet"]
THROUGHPUT = ["throughput", "--backbone", "vgg16", "--image-size", "32"]
READ_ONLY = "not writable (Read-only file system)"
READ_ONLY_STORE = 'mount --bind -o ro "$BENCHMARK_STORE" "$BENCHMARK_STORE" &&'
FULL_DEVICE = 'mkdir -p "$FULL" && mount -t tmpfs -o size=16k tmpfs "$FULL" && { dd if=/dev/zero of="$FULL/fill" bs=1k 2>/dev/null; true; } &&'
PG_URL = "postgresql://bench:{secret}@127.0.0.1:{port}/optuna"

CASES = [
    # command line
    Case("no-command", [], ("required: COMMAND", "--help")),
    Case("unknown-command", ["frobnicate"], ("invalid choice: 'frobnicate'",)),
    Case("missing-backbone", ["run"], ("--backbone", "required")),
    Case("lr-not-a-number", ["run", "--backbone", "vgg16", "--lr", "abc"], ("--lr", "'abc'")),
    Case("lr-negative", ["run", "--backbone", "vgg16", "--lr", "-1"], ("--lr", "must be > 0")),
    Case("lr-infinite", ["run", "--backbone", "vgg16", "--lr", "inf"], ("--lr", "must be > 0 and finite")),
    Case("lr-nan", ["run", "--backbone", "vgg16", "--lr", "nan"], ("--lr", "must be > 0 and finite")),
    Case("timeout-infinite", ["sweep", "--backbone", "vgg16", "--timeout", "inf"], ("--timeout", "must be > 0 and finite")),
    Case("trials-zero", ["sweep", "--backbone", "vgg16", "--trials", "0"], ("--trials", "must be >= 1")),
    Case("timeout-negative", ["sweep", "--backbone", "vgg16", "--timeout", "-5"], ("--timeout", "must be > 0")),
    Case("unfreeze-negative", ["run", "--backbone", "vgg16", "--unfreeze", "-2"], ("--unfreeze", '"all"')),
    Case("format-unknown", ["leaderboard", "--format", "xml"], ("--format", "'xml'", "markdown")),
    Case("experiment-unknown", ["run", "--backbone", "vgg16", "--experiment", "nosuch"], ("unknown experiment 'nosuch'", "ci")),
    Case("experiment-file-missing", ["run", "--backbone", "vgg16", "--experiment", "{tmp}/missing.toml"],
         ("{tmp}/missing.toml does not exist",)),
    Case("strategy-unknown", RUN_CI + ["--strategy", "nosuch"], ("unknown strategy 'nosuch'", "frozen, top")),
    Case("backbone-unknown", ["run", "--backbone", "vgg61"], ("unknown backbone 'vgg61'", "vgg16")),
    Case("backbone-not-in-experiment", ["run", "--experiment", "ci", "--backbone", "mobilenetv2"],
         ("'mobilenetv2' is not in experiment 'ci'", "vgg16, resnet50")),
    Case("unfreeze-beyond-depth", RUN_CI + ["--strategy", "top", "--unfreeze", "99"],
         ("beyond vgg16's 13 weighted layers", "0..13")),
    Case("leaderboard-unknown-experiment", ["leaderboard", "--experiment", "nosuch"], ("nosuch",)),
    Case("leaderboard-spec-file-missing", ["leaderboard", "--experiment", "{tmp}/missing.toml"],
         ("{tmp}/missing.toml does not exist",)),
    Case("check-spec-file-missing", ["check", "--experiment", "{tmp}/missing.toml"], ("{tmp}/missing.toml does not exist",)),
    Case("sweep-backbone-list-with-a-hole", ["sweep", "--experiment", "ci", "--backbone", "vgg16,,resnet50"],
         ("--backbone", "comma-separated names", "'vgg16,,resnet50'")),
    Case("sweep-backbone-list-not-in-experiment", ["sweep", "--experiment", "ci", "--backbone", "vgg16,mobilenetv2"],
         ("'mobilenetv2' is not in experiment 'ci'", "vgg16, resnet50")),
    Case("sweep-strategy-list-unknown", ["sweep", "--experiment", "ci", "--strategy", "frozen,nosuch"],
         ("unknown strategy 'nosuch'", "frozen, top")),
    Case("confirm-top-zero", ["confirm", "--experiment", "ci", "--top", "0"], ("--top", "must be >= 1")),
    Case("confirm-seeds-not-a-number", ["confirm", "--experiment", "ci", "--seeds", "three"], ("--seeds", "'three'")),
    Case("throughput-image-size-missing", ["throughput", "--backbone", "vgg16"], ("--image-size", "required")),
    Case("throughput-backbone-unknown", ["throughput", "--backbone", "resnet5", "--image-size", "32"],
         ("unknown backbone 'resnet5'", "resnet50")),
    Case("throughput-image-size-below-minimum", ["throughput", "--backbone", "vgg16", "--image-size", "16"],
         ("image size 16", "vgg16's minimum of 32", "--image-size 32")),
    Case("throughput-batch-size-zero", THROUGHPUT + ["--batch-size", "0"], ("--batch-size", "must be >= 1")),
    Case("throughput-precision-unknown", THROUGHPUT + ["--precision", "fp8"], ("--precision", "'fp8'", "bf16")),
    Case("throughput-unfreeze-beyond-depth", THROUGHPUT + ["--unfreeze", "99"], ("beyond vgg16's 13 weighted layers", "0..13")),
    Case("throughput-tracking-refused", THROUGHPUT, ("127.0.0.1:{closed}", "MLFLOW_TRACKING_URI"),
         env={"MLFLOW_TRACKING_URI": "http://bench:{secret}@127.0.0.1:{closed}"}),
    # data directories
    Case("data-dir-missing", RUN_CI + ["--data-dir", "{tmp}/nowhere"], ("{tmp}/nowhere does not exist", "--data-dir")),
    Case("data-dir-empty", RUN_CI + ["--data-dir", "{tmp}"], ("{tmp}",)),
    Case("data-dir-is-a-file", RUN_CI + ["--data-dir", "{data}"], ("not a directory",),
         data=lambda tmp, sample: shutil.copy(sample / "meta", tmp / "meta") and tmp / "meta"),
    Case("data-truncated", RUN_CI + ["--data-dir", "{data}"], ("train", "re-stage"), data=truncated),
    Case("data-wrong-shape", RUN_CI + ["--data-dir", "{data}"], ("train", "3072"), data=wrong_shape),
    Case("data-labels-out-of-range", RUN_CI + ["--data-dir", "{data}"], ("test", "label"), data=labels_out_of_range),
    Case("data-subset-larger-than-the-data", ["run", "--experiment", "quick", "--backbone", "vgg16", "--data-dir", "{data}"],
         ("quick.toml: data.subset.train = 5000 is larger than the train split", "at most"),
         data=lambda tmp, sample: cifar_copy(tmp, sample)),
    Case("data-pickle-runs-code", RUN_CI + ["--data-dir", "{data}"], ("refusing", "system", "re-download"), data=code_pickle),
    # own images (source "folder" or "csv"): every one fails while indexing or decoding, before any model is built
    Case("images-folder-missing", RUN_OWN, ("image folder {tmp}/nowhere does not exist", "one subfolder per class"),
         data=own_images_spec(lambda tmp: tmp / "nowhere")),
    Case("images-folder-missing-data-dir", RUN_OWN + ["--data-dir", "{tmp}/elsewhere"], ("image folder {tmp}/elsewhere does not exist",),
         data=own_images_spec(lambda tmp: pictures(tmp, {"cat": 2, "dog": 2}))),
    Case("images-folder-empty", RUN_OWN, ("image folder {tmp}/empty holds no class folders", "{tmp}/empty/<class>/*.jpg"),
         data=own_images_spec(lambda tmp: (tmp / "empty").mkdir() or tmp / "empty")),
    Case("images-class-folder-without-images", RUN_OWN, ("class folder {tmp}/pics/dog holds no images", "remove the folder"),
         data=own_images_spec(lambda tmp: pictures(tmp, {"cat": 2, "dog": 0}))),
    Case("images-one-class", RUN_OWN, ("holds only one class folder (cat)", "at least two"),
         data=own_images_spec(lambda tmp: pictures(tmp, {"cat": 3}))),
    Case("images-text-named-jpg", RUN_OWN, ("{tmp}/pics/cat/a.jpg is not an image Pillow can read", "remove or replace the file"),
         data=own_images_spec(with_bad_file("a.jpg", lambda path: path.write_text("not a picture\n")))),
    Case("images-truncated-jpeg", RUN_OWN, ("{tmp}/pics/cat/a.jpg is truncated or damaged", "remove or replace the file"),
         data=own_images_spec(with_bad_file("a.jpg", truncated_jpeg))),
    Case("images-empty-file", RUN_OWN, ("{tmp}/pics/cat/a.png is empty (0 bytes)", "remove or replace the file"),
         data=own_images_spec(with_bad_file("a.png", lambda path: path.write_bytes(b"")))),
    Case("images-decompression-bomb", RUN_OWN, ("{tmp}/pics/cat/a.png is too large to decode safely", "400000000 pixels"),
         data=own_images_spec(with_bad_file("a.png", decompression_bomb))),
    Case("images-symlink-loop", RUN_OWN, ("{tmp}/pics/cat/a.jpg is a symbolic link loop", "remove the link"),
         data=own_images_spec(with_bad_file("a.jpg", lambda path: path.symlink_to(path)))),
    Case("images-dangling-symlink", RUN_OWN, ("{tmp}/pics/cat/a.jpg is a symbolic link to a missing file", "restore"),
         data=own_images_spec(with_bad_file("a.jpg", lambda path: path.symlink_to(path.parent / "gone.jpg")))),
    Case("images-split-folders-with-other-classes", RUN_OWN, ("train/ and test/ have different class folders",
                                                              "only in train/: dog; only in test/: emu"),
         data=own_images_spec(split_folders)),
    Case("images-csv-names-a-missing-file", RUN_OWN, ("{tmp}/labels.csv line 3 names pics/missing.png, which is not a file",),
         data=own_images_spec(labels_csv(["pics/0.png,cat,", "pics/missing.png,dog,"]))),
    Case("images-csv-unknown-split", RUN_OWN, ("{tmp}/labels.csv line 2 has split 'validation', which is not one of train, val, test",),
         data=own_images_spec(labels_csv(["pics/0.png,cat,validation", "pics/1.png,dog,"]))),
    # weights
    Case("weights-wrong-hash", ["run", "--experiment", "{spec}", "--backbone", "vgg16"],
         ("{tmp}/keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "hash", "copy the official file"),
         data=spec_with_weights("imagenet"), prepare=wrong_hash_cache,
         env={"KERAS_HOME": "{tmp}/keras"}, subprocess=True),  # Keras reads KERAS_HOME once, at import
    Case("weights-not-hdf5", ["run", "--experiment", "{spec}", "--backbone", "vgg16"],
         ("{tmp}/garbage.h5", "vgg16"), data=spec_with_weights("{tmp}/garbage.h5"), prepare=garbage_h5),
    Case("weights-wrong-shapes", ["run", "--experiment", "{spec}", "--backbone", "vgg16"],
         ("{tmp}/other.weights.h5", "vgg16"), data=spec_with_weights("{tmp}/other.weights.h5"), prepare=small_model_h5),
    Case("lite-checkpoint-runs-code", RUN_LITE, ("refusing to load {tmp}/evil.pth", "system"),
         data=lite_spec_with_weights(code_checkpoint)),
    Case("lite-checkpoint-truncated", RUN_LITE, ("{tmp}/half.pth", "truncated"), data=lite_spec_with_weights(truncated_checkpoint)),
    Case("lite-checkpoint-of-another-model", RUN_LITE, ("does not fit efficientnetlite0", "_blocks.3.", "pip install"),
         data=lite_spec_with_weights(lite_checkpoint("efficientnetlite2"))),
    Case("lite-checkpoint-missing", RUN_LITE, ("{tmp}/nowhere.pth", "does not exist"),
         data=lite_spec_with_weights(lambda tmp: f"{tmp}/nowhere.pth")),
    Case("spec-huge", ["run", "--backbone", "vgg16", "--experiment", "{tmp}/huge.toml"],
         ("{tmp}/huge.toml", "more than the 65,536 a spec may be"),
         prepare=lambda tmp: (tmp / "huge.toml").write_text('name = "huge"\n' + "# padding\n" * 500_000)),
    Case("spec-a-directory", ["run", "--backbone", "vgg16", "--experiment", "{tmp}/a-dir.toml"], ("{tmp}/a-dir.toml is a directory",),
         prepare=lambda tmp: (tmp / "a-dir.toml").mkdir()),
    # files the commands write
    Case("leaderboard-output-under-a-file", ["leaderboard", "--experiment", "ci", "--output", "{tmp}/a-file/index.html"],
         ("{tmp}/a-file is a file, not a folder",), prepare=lambda tmp: (tmp / "a-file").write_text("")),
    Case("leaderboard-output-is-a-directory", ["leaderboard", "--experiment", "ci", "--format", "html", "--output", "{tmp}"],
         ("{tmp}: it is a directory", "file name")),
    # (a read-only or full place passes the early check of the path: writing fails, after the rows are read)
    Case("leaderboard-output-read-only", ["leaderboard", "--experiment", "ci", "--output", "/proc/index.html"],
         ("cannot write the plots /proc/index_plots",), needs_results=True),
    Case("leaderboard-output-on-a-full-device",
         ["leaderboard", "--experiment", "ci", "--format", "html", "--no-plots", "--output", "{tmp}/full/index.html"],
         ("cannot write the leaderboard {tmp}/full/index.html (no space left on the device)",), subprocess=True,
         wrap=FULL_DEVICE, env={"FULL": "{tmp}/full"}, needs_results=True),
    Case("baseline-update-under-a-file", ["check", "--experiment", "ci", "--update", "--baseline", "{tmp}/a-file/ci.json"],
         ("{tmp}/a-file is a file, not a folder",), prepare=lambda tmp: (tmp / "a-file").write_text("")),
    # outputs that are not regular files: a device or a FIFO is written through, a link followed, the rest refused
    # (check --update writes its baseline by the same rule, after measuring for longer than a case may take:
    # tests/test_files.py writes "the baseline" to a full device)
    Case("leaderboard-output-is-a-socket", ["leaderboard", "--experiment", "ci", "--output", "{tmp}/sock"],
         ("cannot write the leaderboard {tmp}/sock: it is a socket, not a regular file", "pass a file name"),
         prepare=lambda tmp: unix_socket(tmp / "sock"), keeps=("sock", stat.S_IFSOCK)),
    Case("baseline-update-to-a-block-device", ["check", "--experiment", "ci", "--update", "--baseline", "{tmp}/disk"],
         ("cannot write the baseline {tmp}/disk: it is a block device, not a regular file", "pass a file name"),
         prepare=lambda tmp: os.mknod(tmp / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0)), keeps=("disk", stat.S_IFBLK)),
    Case("leaderboard-output-on-dev-full", ["leaderboard", "--experiment", "ci", "--no-plots", "--output", "{tmp}/full"],
         ("cannot write the leaderboard {tmp}/full (no space left on the device)",), prepare=lambda tmp: full_device(tmp / "full"),
         keeps=("full", stat.S_IFCHR), needs_results=True),
    Case("leaderboard-output-link-to-dev-full", ["leaderboard", "--experiment", "ci", "--no-plots", "--output", "{tmp}/link"],
         ("cannot write the leaderboard {tmp}/link (no space left on the device)",),
         prepare=lambda tmp: (tmp / "link").symlink_to(full_device(tmp / "full")), keeps=("link", stat.S_IFLNK),
         needs_results=True),
    # baselines
    Case("baseline-infinite-value", ["check", "--experiment", "ci", "--baseline", "{tmp}/bad.json"],
         ("{tmp}/bad.json", "finite number"), prepare=lambda tmp: (tmp / "bad.json").write_text(
             '{"experiment": "ci", "recorded_at": "x", "environment": {}, "rows": [{"backbone": "vgg16", '
             '"strategy": "frozen", "metrics": {"val_top1": {"value": Infinity, "tolerance": 0.03, '
             '"kind": "absolute", "direction": "higher"}}}]}')),
    Case("baseline-not-json", ["check", "--experiment", "ci", "--baseline", "{tmp}/bad.json"], ("{tmp}/bad.json", "JSON"),
         prepare=lambda tmp: (tmp / "bad.json").write_text("{not json")),
    Case("baseline-wrong-schema", ["check", "--experiment", "ci", "--baseline", "{tmp}/bad.json"], ("{tmp}/bad.json", "rows"),
         prepare=lambda tmp: (tmp / "bad.json").write_text('{"experiment": "ci", "rowz": []}')),
    Case("baseline-missing", ["check", "--experiment", "ci", "--baseline", "{tmp}/none.json"], ("{tmp}/none.json", "--update")),
    # stores and servers
    Case("storage-refused", SWEEP_CI + ["--storage", PG_URL.replace("{port}", "{closed}")],
         ("cannot open the Optuna storage", "bench:***@")),
    Case("storage-silent", SWEEP_CI + ["--storage", PG_URL.replace("{port}", "{silent}")],
         ("cannot open the Optuna storage", "bench:***@")),
    Case("storage-password-with-slash-colon-at", SWEEP_CI + ["--storage", "postgresql://bench:{secret}/x:y@z@127.0.0.1:{closed}/optuna"],
         ("cannot open the Optuna storage", "bench:***@127.0.0.1:{closed}/optuna")),
    Case("storage-password-percent-escaped", SWEEP_CI + ["--storage", "postgresql://bench:{secret}%40%2F@127.0.0.1:{closed}/optuna"],
         ("cannot open the Optuna storage", "bench:***@")),
    Case("storage-password-in-the-query", SWEEP_CI + ["--storage", "postgresql://bench@127.0.0.1:{closed}/optuna?password={secret}"],
         ("cannot open the Optuna storage", "?password=***")),
    Case("storage-sslpassword-in-the-query",
         SWEEP_CI + ["--storage", "postgresql://bench@127.0.0.1:{closed}/optuna?sslmode=disable&sslpassword={secret}"],
         ("cannot open the Optuna storage", "sslmode=disable&sslpassword=***")),
    Case("storage-mysql-password", SWEEP_CI + ["--storage", "mysql+pymysql://root:{secret}@127.0.0.1:{closed}/optuna"],
         ("cannot open the Optuna storage", "root:***@")),
    Case("storage-from-the-environment", SWEEP_CI, ("cannot open the Optuna storage", "bench:***@"),
         env={"BENCHMARK_OPTUNA_STORAGE": "postgresql://bench:{secret}@127.0.0.1:{closed}/optuna"}),
    Case("storage-not-a-url", SWEEP_CI + ["--storage", "optuna.db"], ("optuna.db", "sqlite:///")),
    Case("storage-under-a-file", SWEEP_CI + ["--storage", "sqlite:///{tmp}/a-file/optuna.db"], ("not writable",),
         prepare=lambda tmp: (tmp / "a-file").write_text("")),
    Case("tracking-refused", RUN_CI, ("127.0.0.1:{closed}", "MLFLOW_TRACKING_URI"),
         env={"MLFLOW_TRACKING_URI": "http://bench:{secret}@127.0.0.1:{closed}"}),
    Case("tracking-silent", SWEEP_CI, ("127.0.0.1:{silent}", "MLFLOW_TRACKING_URI"),
         env={"MLFLOW_TRACKING_URI": "http://bench:{secret}@127.0.0.1:{silent}"}),
    Case("tracking-password-with-slash-and-at", RUN_CI, ("bench:***@127.0.0.1:{closed}", "MLFLOW_TRACKING_URI"),
         env={"MLFLOW_TRACKING_URI": "http://bench:{secret}/x@y@127.0.0.1:{closed}"}),
    Case("tracking-password-percent-escaped", RUN_CI, ("bench:***@127.0.0.1:{closed}",),
         env={"MLFLOW_TRACKING_URI": "http://bench:{secret}%2F%3A@127.0.0.1:{closed}"}),
    Case("tracking-token-in-the-query", RUN_CI, ("?token=***", "MLFLOW_TRACKING_URI"),
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{closed}/?token={secret}"}),
    Case("tracking-access-token-https", ["leaderboard", "--experiment", "ci"], ("access_token=***",),
         env={"MLFLOW_TRACKING_URI": "https://127.0.0.1:{closed}/?access_token={secret}"}),
    Case("tracking-silent-leaderboard", ["leaderboard", "--experiment", "ci"], ("127.0.0.1:{silent}", "MLFLOW_TRACKING_URI"),
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{silent}"}),
    Case("store-under-a-file", RUN_CI, ("is under {tmp}/a-file, a file, not a folder", "BENCHMARK_STORE"), env={"BENCHMARK_STORE": "{tmp}/a-file/mlruns"},
         prepare=lambda tmp: (tmp / "a-file").write_text("")),
    Case("store-damaged", RUN_CI, ("the MLflow database {tmp}/damaged/mlflow.db is damaged", "move it aside"),
         env={"BENCHMARK_STORE": "{tmp}/damaged"}, prepare=lambda tmp: sqlite_store(tmp, "damaged"), watch="damaged"),
    Case("store-damaged-leaderboard", ["leaderboard", "--experiment", "ci"], ("{tmp}/damaged/mlflow.db is damaged",),
         env={"BENCHMARK_STORE": "{tmp}/damaged"}, prepare=lambda tmp: sqlite_store(tmp, "damaged"), watch="damaged"),
    Case("store-of-an-older-mlflow", SWEEP_CI, ("has schema version 0584bdc529eb", "mlflow db upgrade sqlite:///{tmp}/old/mlflow.db"),
         env={"BENCHMARK_STORE": "{tmp}/old"}, watch="old", prepare=lambda tmp: sqlite_store(
             tmp, "old", "CREATE TABLE alembic_version (version_num VARCHAR(32))",
             "INSERT INTO alembic_version VALUES ('0584bdc529eb')")),
    Case("store-of-a-newer-mlflow", ["leaderboard", "--experiment", "ci"], ("written by a newer MLflow", "pip install -U mlflow"),
         env={"BENCHMARK_STORE": "{tmp}/new"}, watch="new", prepare=lambda tmp: sqlite_store(
             tmp, "new", "CREATE TABLE alembic_version (version_num VARCHAR(32))",
             "INSERT INTO alembic_version VALUES ('ffffeeee0000')")),
    Case("store-not-mlflows", RUN_CI, ("{tmp}/foreign/mlflow.db is not an MLflow database", "BENCHMARK_STORE"),
         env={"BENCHMARK_STORE": "{tmp}/foreign"}, watch="foreign",
         prepare=lambda tmp: sqlite_store(tmp, "foreign", "CREATE TABLE notes (text)")),
    Case("tracking-file-uri", RUN_CI, ("file://{tmp}/mlruns is a file store", "migrate-filestore"),
         env={"MLFLOW_TRACKING_URI": "file://{tmp}/mlruns"}),
    Case("tracking-plain-path", ["leaderboard", "--experiment", "ci"], ("{tmp}/mlruns is a file store",),
         env={"MLFLOW_TRACKING_URI": "{tmp}/mlruns"}),
    Case("tracking-sqlite-under-a-file", RUN_CI, ("under {tmp}/a-file, a file, not a folder",),
         env={"MLFLOW_TRACKING_URI": "sqlite:///{tmp}/a-file/store/mlflow.db"},
         prepare=lambda tmp: (tmp / "a-file").write_text("")),
    Case("store-read-only-sweep", SWEEP_CI, (READ_ONLY, "BENCHMARK_STORE"), subprocess=True, wrap=READ_ONLY_STORE),
    Case("store-read-only-run", RUN_CI, (READ_ONLY, "BENCHMARK_STORE"), subprocess=True, wrap=READ_ONLY_STORE),
]


def spec_file_cases() -> list[Case]:
    cases = []
    for path in sorted(SPECS.glob("*.toml")):
        header = [line.decode("ascii", "replace") for line in path.read_bytes().splitlines() if line.startswith(b"# ")]
        fields = dict(line[2:].split(": ", 1) for line in header if ": " in line)
        command = fields.get("command", "run --backbone vgg16").split()
        expect = tuple(part.strip() for part in fields["expect"].split(" | "))
        cases.append(Case(f"spec-{path.stem}", command + ["--experiment", str(path)], expect,
                          lines=int(fields.get("lines", 1))))
    return cases


def corpus() -> list[Case]:
    return spec_file_cases() + CASES


def ids(cases: list[Case]) -> list[str]:
    return [case.id for case in cases]


NEED_NO_RESULTS = [case for case in corpus() if not case.needs_results]
NEED_RESULTS = [case for case in corpus() if case.needs_results]


# ---------------------------------------------------------------- the stores


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """A real local store without results (MLflow's tables, no experiment, no run), made by the
    package itself in about a second: every case that needs no results must leave it as it was."""
    from benchmark import mlflow_store

    path = tmp_path_factory.mktemp("empty") / "mlruns"
    with pytest.MonkeyPatch.context() as env:
        env.setenv(mlflow_store.STORE_ENV, str(path))
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        mlflow_store.configure()
    return path


@pytest.fixture(scope="module")
def corpus_store(ci_store, tmp_path_factory) -> Path:
    """A copy of a real sweep's store: every case must leave it exactly as it was."""
    copy = tmp_path_factory.mktemp("corpus") / "mlruns"
    shutil.copytree(ci_store, copy)
    return copy


@pytest.fixture(scope="module")
def silent_server() -> SilentServer:
    return SilentServer()


def fingerprint(*roots: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (path.stat().st_size, path.stat().st_mtime_ns)
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != ".init.lock"
    }


# ---------------------------------------------------------------- running a case


def fill(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


@contextlib.contextmanager
def hang_guard(seconds: int):
    """A case that hangs fails (with the stack where it hung) instead of stalling the suite."""

    def hung(signum, frame):
        raise TimeoutError(f"no answer after {seconds} s: a bad input must fail fast, not hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_in_process(argv: list[str], capfd) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capfd.readouterr().err


def run_as_process(argv: list[str], wrap: str | None, env: dict[str, str]) -> tuple[int, str]:
    command = [sys.executable, "-m", "benchmark", *argv]
    if wrap:  # in a private mount namespace (root inside it, as any user may): the mount is ours alone
        command = ["unshare", "--map-root-user", "--mount", "sh", "-c", f'{wrap} exec "$@"', "sh", *command]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    return out.returncode, out.stderr


def build_bad_input(case: Case, tmp: Path, silent_server: SilentServer, sample: Path) -> dict[str, str]:
    """Makes the case's bad input under tmp; returns what its placeholders stand for."""
    tmp.mkdir(exist_ok=True)
    values = {"tmp": str(tmp), "silent": str(silent_server.port), "closed": str(free_port()), "secret": SECRET}
    if case.data:
        values["data"] = values["spec"] = str(case.data(tmp, sample))
    if case.prepare:
        case.prepare(tmp)
    return values


@dataclass
class Answer:
    code: int
    err: str
    seconds: float
    changed: bool  # a store (or the case's watched file) differs afterwards


def run_case(case: Case, store: Path, values: dict[str, str], capfd, monkeypatch,
             also_unchanged: tuple[Path, ...] = ()) -> Answer:
    """The case's command, with BENCHMARK_STORE at this store."""
    env = {"BENCHMARK_STORE": str(store), **{k: fill(v, values) for k, v in (case.env or {}).items()}}
    for name in ("MLFLOW_TRACKING_URI", "BENCHMARK_OPTUNA_STORAGE", "KERAS_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [fill(arg, values) for arg in case.argv]
    watched = [store, *also_unchanged] + ([Path(values["tmp"]) / case.watch] if case.watch else [])
    before = fingerprint(*watched)

    started = time.perf_counter()
    with hang_guard(3 * MAX_SECONDS):
        if case.subprocess:
            code, err = run_as_process(argv, case.wrap, dict(os.environ))
        else:
            code, err = run_in_process(argv, capfd)
    return Answer(code, err, time.perf_counter() - started, changed=fingerprint(*watched) != before)


def assert_fails_cleanly(case: Case, answer: Answer, values: dict[str, str], tmp: Path) -> None:
    err = answer.err
    lines = err.strip().splitlines()
    assert answer.code == case.exit_code, err
    assert len(lines) == case.lines and lines[0].startswith("error: "), f"want {case.lines} lines, the first 'error: ', got:\n{err}"
    assert len(set(lines)) == len(lines), f"a problem named twice:\n{err}"
    for fragment in case.expect:
        assert fill(fragment, values) in err, err
    assert SECRET not in err
    limit = MAX_SECONDS + (PROCESS_START_S if case.subprocess else 0)
    assert answer.seconds < limit, f"took {answer.seconds:.0f} s"
    assert not answer.changed, "a rejected input changed a store"
    assert not (tmp / "pwned").exists(), "a data file ran code"
    if case.keeps:
        name, kind = case.keeps
        assert stat.S_IFMT(os.lstat(tmp / name).st_mode) == kind, f"{name} is no longer the kind of file it was"


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", NEED_NO_RESULTS, ids=ids(NEED_NO_RESULTS))
def test_bad_input_fails_cleanly(case, empty_store, silent_server, cifar_sample_dir, tmp_path, capfd, monkeypatch):
    values = build_bad_input(case, tmp_path, silent_server, Path(cifar_sample_dir))
    assert_fails_cleanly(case, run_case(case, empty_store, values, capfd, monkeypatch), values, tmp_path)


@pytest.mark.parametrize("case", NEED_RESULTS, ids=ids(NEED_RESULTS))
def test_bad_input_over_results_fails_cleanly(case, corpus_store, ci_store, silent_server, cifar_sample_dir, tmp_path, capfd,
                                              monkeypatch):
    values = build_bad_input(case, tmp_path, silent_server, Path(cifar_sample_dir))
    answer = run_case(case, corpus_store, values, capfd, monkeypatch, also_unchanged=(ci_store,))
    assert_fails_cleanly(case, answer, values, tmp_path)


def comparable(answer: Answer, store: Path, values: dict[str, str]) -> tuple[int, str, bool]:
    """What the user sees, with the paths and the port that differ from run to run written as placeholders."""
    err = answer.err.replace(str(store), "{store}").replace(values["tmp"], "{tmp}").replace(values["closed"], "{closed}")
    return answer.code, err, answer.changed


READS_RESULTS = ("leaderboard", "check", "confirm")  # the commands whose answer can depend on a store's runs


def cases_that_may_read_results() -> list[Case]:
    return [case for case in corpus() if case.needs_results or (case.argv and case.argv[0] in READS_RESULTS)]


@pytest.mark.parametrize("case", cases_that_may_read_results(), ids=ids(cases_that_may_read_results()))
def test_a_case_needs_results_exactly_when_its_answer_depends_on_them(case, corpus_store, ci_store, empty_store, silent_server,
                                                                       cifar_sample_dir, tmp_path, capfd, monkeypatch):
    """The case on a store without results and on a real sweep's: the same answer (error, exit code,
    stores unchanged) unless the case is marked needs_results, and a different one if it is."""
    without_results = tmp_path / "empty-store"
    shutil.copytree(empty_store, without_results)  # a copy: a case that needs results may write to it
    answers = []
    for name, store in (("no-results", without_results), ("results", corpus_store)):
        values = build_bad_input(case, tmp_path / name, silent_server, Path(cifar_sample_dir))
        answer = run_case(case, store, values, capfd, monkeypatch, also_unchanged=(ci_store,))
        answers.append(comparable(answer, store, values))
    on_empty, on_results = answers
    assert (on_empty != on_results) == case.needs_results, f"on a store without results: {on_empty}\nwith results: {on_results}"


def test_class_names_with_spaces_and_non_ascii_letters_work_end_to_end(tmp_path, store, capsys):
    """Not bad input: the folders a user names in their own language train and are tracked like any other."""
    from benchmark.data import load_dataset
    from benchmark.spec import load_experiment

    classes = {"chat noir": 4, "café crème": 4, "猫 ねこ": 4}
    root = pictures(tmp_path, classes)
    spec = own_images_spec(lambda tmp: root)(tmp_path, tmp_path)
    assert main(["run", "--experiment", str(spec), "--backbone", "vgg16", "--quiet"]) == 0, capsys.readouterr().err
    assert "test_top1" in capsys.readouterr().out
    data = load_dataset(load_experiment(spec).resolve("vgg16").data)
    assert data.class_names == sorted(classes) and data.sizes() == {"train": 3, "validation": 3, "test": 6}
