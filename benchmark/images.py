"""Own images: a folder of class subfolders or a labels CSV, indexed, then decoded once into a cache.

  index_folder(root)      root/<class>/* , or root/train|val|test/<class>/*  -> ImageIndex
  index_csv(csv_path)     path,label[,split] rows                            -> ImageIndex
  decode(path, size)      one file -> uint8 (size, size, 3): EXIF rotation, RGB, centre crop, bilinear
  store_images(index, size, cache_root)  every image decoded once (in parallel) into one memory-mapped
                          uint8 (N, size, size, 3) .npy under cache_root, keyed by the files' bytes -> StoredImages
  duplicates_across(pixel_hashes, splits), describe_duplicates(...)  identical pixels in two splits
  export_official_as_folder(...)  CIFAR-style arrays -> root/train|test/<class>/<i>.png

Every problem with the user's files is a one-line BenchmarkError naming the file or folder and
the fix. numpy, Pillow and tqdm only: nothing here imports Keras.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import errno
import hashlib
import json
import multiprocessing
import os
import time
import unicodedata
import warnings
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TextIO

import numpy as np
import PIL
from PIL import Image, ImageOps

from benchmark import files
from benchmark.errors import BenchmarkError
from benchmark.progress import bar

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
# Keras admits .bmp .gif .jpeg .jpg .png; Pillow decodes these too on every machine we run on.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CSV_COLUMNS = ("path", "label")
CSV_SPLIT_COLUMN = "split"
IMAGES_FILE = "images.npy"
HASHES_FILE = "pixel_hashes.npy"
PIXEL_HASH_BYTES = 16
IMAGES_PER_TASK = 64
REPLACE_FILE = "remove or replace the file"
EXAMPLES_SHOWN = 5


@dataclass
class ImageIndex:
    """Which files, in which order, with which labels; nothing decoded yet."""

    paths: list[Path]  # absolute
    labels: np.ndarray  # int64 (N,), indices into class_names
    splits: np.ndarray  # str (N,): "train", "val", "test", or "" where the source names none
    class_names: list[str]  # sorted
    root: Path  # the folder, or the CSV's folder; names in messages and the cache key are relative to it
    skipped: int = 0  # files and folders left out (junk, other extensions, nested folders), for the caller to say so

    def __len__(self) -> int:
        return len(self.paths)

    def name_of(self, i: int) -> str:
        """The i-th file relative to root (as the user knows it), or its absolute path if outside root."""
        try:
            return self.paths[i].relative_to(self.root).as_posix()
        except ValueError:
            return self.paths[i].as_posix()


@dataclass
class StoredImages:
    images: np.ndarray  # uint8 (N, size, size, 3), memory-mapped read-only, in the index's order
    pixel_hashes: np.ndarray  # S16 (N,): 16 bytes of blake2b of each decoded image (compare as arrays: numpy
    # drops an S16 item's trailing zero bytes when it hands it out as bytes)
    key: str  # sha256 hex of what the pixels depend on (see cache_key)
    path: Path  # the cache folder
    status: str  # "hit" (read from the cache) or "miss" (decoded, then saved)
    seconds: float


# ---------------------------------------------------------------- indexing a folder


def index_folder(root: str | os.PathLike) -> ImageIndex:
    """The images of `root`, laid out one of two ways:

      root/train/<class>/*, root/test/<class>/* and optionally root/val/<class>/*
          (split folder names matched case-insensitively; every split must have the same classes)
      root/<class>/*
          (splits all "": the caller carves validation and test splits)

    Class names are the class folders' names (Unicode NFC) sorted in Python's str order; labels
    index them. Only files directly inside a class folder are read: nested folders are skipped,
    as are hidden entries (".DS_Store", "._photo.jpg", ".ipynb_checkpoints"), "Thumbs.db",
    "desktop.ini" and any file whose extension is not one of IMAGE_EXTENSIONS (any case);
    `skipped` counts them. Files are ordered by their path relative to root. Symbolic links are
    followed; one that loops or points nowhere is an error.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    _check_link(root)
    if not root.is_dir():
        raise BenchmarkError(f"image folder {root} does not exist or is not a folder; pass a folder that holds one "
                             f"subfolder per class (or train/ and test/ folders of class subfolders)")
    folders, skipped = _listing(root)
    split_folders = {name.casefold(): path for name, path in folders.items() if name.casefold() in SPLITS}
    if split_folders:
        return _index_split_layout(root, folders, split_folders, skipped)
    classes, skipped_inside = _class_files(root, folders)
    return _make_index(root, {"": classes}, skipped + skipped_inside)


def _index_split_layout(root: Path, folders: dict[str, Path], split_folders: dict[str, Path], skipped: int) -> ImageIndex:
    others = sorted(set(folders) - {path.name for path in split_folders.values()})
    if others:
        raise BenchmarkError(f"image folder {root} holds split folders ({', '.join(sorted(split_folders))}) beside "
                             f"other folders ({_few(others)}); move those into the splits' class folders or out of {root}")
    for needed in ("train", "test"):
        if needed not in split_folders:
            raise BenchmarkError(f"image folder {root} has {', '.join(f'{s}/' for s in sorted(split_folders))} but no "
                                 f"{needed}/ folder; add {root / needed}/<class>/ folders, or put the class folders "
                                 f"directly in {root}")
    per_split = {}
    for split in (s for s in SPLITS if s in split_folders):
        class_folders, skipped_here = _listing(split_folders[split])
        per_split[split], skipped_inside = _class_files(split_folders[split], class_folders)
        skipped += skipped_here + skipped_inside
    _check_same_classes(root, per_split)
    return _make_index(root, per_split, skipped)


def _listing(folder: Path) -> tuple[dict[str, Path], int]:
    """{name: path} of `folder`'s visible subfolders, and how many other entries it holds."""
    subfolders, skipped = {}, 0
    for path in _entries(folder):
        if path.name.startswith("."):
            skipped += 1
        elif _kind(path) == "folder":
            subfolders[path.name] = path
        else:
            skipped += 1
    return subfolders, skipped


def _class_files(parent: Path, folders: dict[str, Path]) -> tuple[dict[str, list[Path]], int]:
    """{class name: its image files} for the class folders of `parent`, and how many entries were skipped."""
    if not folders:
        raise BenchmarkError(f"image folder {parent} holds no class folders; put the images of each class in a "
                             f"subfolder named after the class ({parent}/<class>/*.jpg)")
    classes, skipped = {}, 0
    for name, folder in folders.items():
        images = []
        for path in _entries(folder):
            if _is_image_name(path.name) and _kind(path) == "file":
                images.append(path)
            else:
                skipped += 1
        if not images:
            raise BenchmarkError(f"class folder {folder} holds no images ({' '.join(IMAGE_EXTENSIONS)}; subfolders are "
                                 f"not read); add its images or remove the folder")
        classes[unicodedata.normalize("NFC", name)] = images  # a Mac's NFD "café" and Linux's NFC one are one class
    if len(classes) < 2:
        raise BenchmarkError(f"image folder {parent} holds only one class folder ({_few(list(classes))}); a classifier "
                             f"needs at least two: add a folder for each other class")
    return classes, skipped


def _check_same_classes(root: Path, per_split: dict[str, dict[str, list[Path]]]) -> None:
    train = set(per_split["train"])
    for split, classes in per_split.items():
        if set(classes) != train:
            only_train, only_here = sorted(train - set(classes)), sorted(set(classes) - train)
            differences = [f"only in train/: {_few(only_train)}" if only_train else "",
                           f"only in {split}/: {_few(only_here)}" if only_here else ""]
            raise BenchmarkError(f"image folder {root}: train/ and {split}/ have different class folders "
                                 f"({'; '.join(d for d in differences if d)}); give every split the same class folders")


def _make_index(root: Path, per_split: dict[str, dict[str, list[Path]]], skipped: int) -> ImageIndex:
    class_names = sorted({name for classes in per_split.values() for name in classes})
    label_of = {name: i for i, name in enumerate(class_names)}
    rows = [(path, label_of[name], split) for split, classes in per_split.items()
            for name, paths in classes.items() for path in paths]
    rows.sort(key=lambda row: row[0].relative_to(root).as_posix())
    return ImageIndex(paths=[path for path, _, _ in rows], labels=np.array([r[1] for r in rows], dtype=np.int64),
                      splits=np.array([r[2] for r in rows], dtype=str), class_names=class_names, root=root,
                      skipped=skipped)


def _entries(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(folder / entry.name for entry in entries)
    except OSError as e:
        raise BenchmarkError(f"cannot read folder {folder} ({_reason(e)}); make it readable (chmod +rx) or move it "
                             f"out of the image folder") from None


def _kind(path: Path) -> str:
    """"folder", "file" or "other", following symbolic links."""
    _check_link(path)
    return "folder" if path.is_dir() else "file" if path.is_file() else "other"


def _check_link(path: Path) -> None:
    if not path.is_symlink():
        return
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        raise BenchmarkError(f"{path} is a symbolic link loop; remove the link or point it at a real folder") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BenchmarkError(f"{path} is a symbolic link loop; remove the link or point it at a real folder") from None
        raise BenchmarkError(f"{path} is a symbolic link to a missing file or folder ({_reason(e)}); remove the link "
                             f"or restore what it points to") from None


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


# ---------------------------------------------------------------- indexing a CSV


def index_csv(csv_path: str | os.PathLike) -> ImageIndex:
    """The images a CSV lists, in its order: a header row naming `path,label` and optionally
    `split`, then one row per image. Relative paths start at the CSV's folder (absolute ones are
    taken as they are); labels are any strings (class names = the sorted distinct labels);
    split is train, val, test or empty. Files are not filtered by extension: each listed one is
    an image or decode() says it is not."""
    csv_path = Path(os.path.abspath(Path(csv_path).expanduser()))
    if not csv_path.is_file():
        raise BenchmarkError(f"labels CSV {csv_path} does not exist or is not a file; pass a CSV whose first line "
                             f"is path,label (or path,label,split)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:  # -sig: Excel's byte order mark
            rows = _read_csv_rows(csv_path, handle)
    except csv.Error as e:
        raise BenchmarkError(f"labels CSV {csv_path} is not valid CSV ({_one_line(e)}); save it as plain CSV "
                             f"(comma-separated, UTF-8)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise BenchmarkError(f"cannot read labels CSV {csv_path} ({_reason(e)}); save it as UTF-8 text and make it "
                             f"readable") from None
    class_names = sorted({label for _, label, _ in rows})
    if len(class_names) < 2:
        raise BenchmarkError(f"labels CSV {csv_path} names {len(class_names)} class(es) ({_few(class_names)}); a "
                             f"classifier needs at least two: add rows with other labels")
    label_of = {name: i for i, name in enumerate(class_names)}
    return ImageIndex(paths=[path for path, _, _ in rows], labels=np.array([label_of[r[1]] for r in rows], np.int64),
                      splits=np.array([r[2] for r in rows], dtype=str), class_names=class_names, root=csv_path.parent)


def _read_csv_rows(csv_path: Path, handle: TextIO) -> list[tuple[Path, str, str]]:
    reader = csv.DictReader(handle)
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [column for column in CSV_COLUMNS if column not in header]
    if missing:
        raise BenchmarkError(f"labels CSV {csv_path} lacks the column(s) {', '.join(missing)} (its first line names: "
                             f"{_few(header) or 'nothing'}); make its first line path,label (or path,label,split)")
    reader.fieldnames = header
    rows = []
    for row in reader:
        where = f"labels CSV {csv_path} line {reader.line_num}"
        path, label = (row["path"] or "").strip(), (row["label"] or "").strip()
        split = (row.get(CSV_SPLIT_COLUMN) or "").strip()
        if not path or not label:
            raise BenchmarkError(f"{where} has an empty {'path' if not path else 'label'}; fill it in or remove the line")
        if split and split not in SPLITS:
            raise BenchmarkError(f"{where} has split {split!r}, which is not one of {', '.join(SPLITS)} (or empty); "
                                 f"correct it")
        image = Path(os.path.abspath(csv_path.parent / Path(path).expanduser()))
        if not image.is_file():
            raise BenchmarkError(f"{where} names {path}, which is not a file ({image} does not exist or is a folder); "
                                 f"correct the path (relative paths start at the CSV's folder) or remove the line")
        rows.append((image, label, split))
    return rows


# ---------------------------------------------------------------- decoding one image


def decode(path: str | os.PathLike, size: int) -> np.ndarray:
    """One image file as uint8 (size, size, 3) RGB, the way Keras's
    image_dataset_from_directory(crop_to_aspect_ratio=True, interpolation="bilinear") sees it:

      1. Pillow opens the file and loads all of it (a truncated file fails here); a GIF gives its
         first frame; an image over Pillow's MAX_IMAGE_PIXELS is refused (decompression bomb).
      2. ImageOps.exif_transpose turns it upright as its EXIF Orientation tag says.
      3. To RGB (to_rgb): alpha is dropped, not composited (transparent pixels keep the colour
         they store, as Keras's decode_image(channels=3) does); 16-bit and 32-bit modes are scaled.
      4. The largest centred square is cropped, then resized to size x size with Pillow's
         BILINEAR (reducing_gap=None). Unlike Keras's tf.image.resize (antialias=False), Pillow's
         filter widens when it shrinks an image (antialiased), so downscaled pixels are smoother
         than Keras's: the same geometry, slightly different values.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
        return _centre_square(to_rgb(upright), size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BenchmarkError(f"{path} is too large to decode safely ({_one_line(e)}); shrink the image or remove "
                             f"it") from None
    except Image.UnidentifiedImageError:
        raise BenchmarkError(f"{path} is {_not_an_image(path)}; {REPLACE_FILE}") from None
    except OSError as e:
        if e.errno is not None:  # the file system's error: missing, a folder, permission denied
            raise BenchmarkError(f"cannot read {path} ({_reason(e)}); make it a readable file or remove it") from None
        raise BenchmarkError(f"{path} is truncated or damaged ({_one_line(e)}); {REPLACE_FILE}") from None
    except Exception as e:  # Pillow's parsers raise many types (SyntaxError, ValueError, struct.error...) on damaged files
        raise BenchmarkError(f"{path} cannot be decoded ({type(e).__name__}: {_one_line(e)}); {REPLACE_FILE}") from None


def _not_an_image(path: Path) -> str:
    try:
        if path.stat().st_size == 0:
            return "empty (0 bytes)"
    except OSError:
        pass
    return "not an image Pillow can read"


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any mode. Alpha (LA, RGBA, PA, a palette's transparency) is dropped. I;16 (16-bit
    PNG) is scaled by 255/65535, not clipped. I (32-bit integer) and F (float): values within
    0..255 are taken as they are, within 0..65535 scaled as 16-bit, floats within 0..1 by 255;
    anything else is stretched from its minimum to its maximum."""
    if image.mode.startswith("I;16"):
        return _grey_to_rgb(np.asarray(image).astype(np.float64) * (255 / 65535))
    if image.mode in ("I", "F"):
        return _grey_to_rgb(_scaled_to_8_bits(np.asarray(image).astype(np.float64), image.mode == "F"))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # P -> RGB directly warns about transparency in bytes
    return image if image.mode == "RGB" else image.convert("RGB")


def _scaled_to_8_bits(values: np.ndarray, floats: bool) -> np.ndarray:
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if floats and low >= 0 and high <= 1:
        return values * 255
    if low >= 0 and high <= 255:
        return values
    if low >= 0 and high <= 65535:
        return values * (255 / 65535)
    return (values - low) * (255 / (high - low))


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    eight_bits = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(eight_bits[..., None], 3, axis=-1))


def _centre_square(image: Image.Image, size: int) -> np.ndarray:
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    # crop first, then resize: resize(box=...) would blend in pixels outside the box at the edges
    square = image.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.uint8)


# ---------------------------------------------------------------- decoding all images once, into the cache


def store_images(index: ImageIndex, size: int, cache_root: str | os.PathLike, workers: int | None = None,
                 progress: bool = True) -> StoredImages:
    """Every image of `index` decoded (decode) into cache_root/images-{size}px-{key}/images.npy,
    uint8 (N, size, size, 3) in the index's order, with pixel_hashes.npy beside it; returned
    memory-mapped. A second call over the same files (same bytes, relative paths and labels) reads
    the cache instead (status "hit"); a folder that cannot be read is decoded again.

    On a miss, `workers` processes (default os.cpu_count(); spawned, not forked: the parent may run
    JAX or TensorFlow threads) each decode IMAGES_PER_TASK images at a time straight into the
    memory-mapped file, so memory stays bounded whatever N is; workers=1 decodes in this process.
    (Spawned workers import the caller's main script: a script must call this under
    `if __name__ == "__main__":`, as the CLI does.)
    `progress`: a bar on a terminal's stderr when decoding lasts (benchmark.progress). The folder is written whole or not at all: a
    file that fails to decode raises its BenchmarkError and leaves nothing in cache_root.
    `cache_root` is e.g. benchmark.cache.cache_dir().
    """
    if len(index) == 0 or size < 1:
        raise ValueError(f"nothing to store: {len(index)} images at {size} px")
    started = time.perf_counter()
    key = cache_key(index, size)
    folder = Path(cache_root) / f"images-{size}px-{key[:32]}"
    stored = _read_cache(folder, len(index), size)
    status = "hit"
    if stored is None:
        status = "miss"
        with files.replaced_folder(folder, "the image cache") as partial:
            _decode_into(partial, index.paths, size, workers or os.cpu_count() or 1, progress)
        stored = _read_cache(folder, len(index), size)
        if stored is None:
            raise BenchmarkError(f"the image cache {folder} could not be read back after writing it; check the disk, "
                                 f"or set BENCHMARK_CACHE_DIR to another folder")
    images, hashes = stored
    return StoredImages(images=images, pixel_hashes=hashes, key=key, path=folder, status=status,
                        seconds=time.perf_counter() - started)


def cache_key(index: ImageIndex, size: int) -> str:
    """sha256 over the format version, Pillow's version, the size and, per image, its relative path,
    label and the sha256 of its file's bytes: changing one image changes the key."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "pillow": PIL.__version__, "size": size}).encode())
    for i, path in enumerate(index.paths):
        digest.update(json.dumps([index.name_of(i), int(index.labels[i]), _file_sha256(path)]).encode())
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as e:
        raise BenchmarkError(f"cannot read {path} ({_reason(e)}); make it a readable file, or index the images "
                             f"again if it was moved or deleted") from None


def _read_cache(folder: Path, count: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    if not folder.is_dir():
        return None
    try:
        images = np.load(folder / IMAGES_FILE, mmap_mode="r")
        hashes = np.load(folder / HASHES_FILE)
    except (OSError, ValueError):
        return None
    if images.shape != (count, size, size, 3) or images.dtype != np.uint8 or hashes.shape != (count,):
        return None
    return images, hashes


def _decode_into(folder: Path, paths: list[Path], size: int, workers: int, progress: bool) -> None:
    images_file = folder / IMAGES_FILE
    np.lib.format.open_memmap(images_file, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3)).flush()
    hashes = np.zeros(len(paths), dtype=f"S{PIXEL_HASH_BYTES}")
    chunks = [(start, paths[start:start + IMAGES_PER_TASK]) for start in range(0, len(paths), IMAGES_PER_TASK)]
    with contextlib.closing(_decoded_chunks(images_file, chunks, size, min(workers, len(chunks)))) as decoded, \
            bar(len(paths), "decoding images (once)", "img", shown=progress) as meter:
        for start, chunk_hashes in decoded:  # closing: a failure here still stops the workers first
            hashes[start:start + len(chunk_hashes)] = chunk_hashes
            meter.update(len(chunk_hashes))
    np.save(folder / HASHES_FILE, hashes)


def _decoded_chunks(images_file: Path, chunks: list[tuple[int, list[Path]]], size: int, workers: int):
    """(start, pixel hashes) of each chunk once its images are in images_file, in completion order."""
    if workers <= 1:
        for start, paths in chunks:
            yield start, _raise_failure(decode_chunk(images_file, start, paths, size))
        return
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pending = {pool.submit(decode_chunk, images_file, start, paths, size) for start, paths in chunks}
        while pending:
            done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                result = future.result()
                yield result[0], _raise_failure(result)
    except BrokenProcessPool:
        raise BenchmarkError("an image-decoding process died (killed for memory, a crash in an image decoder, or a "
                             "script that starts processes without `if __name__ == \"__main__\":`); decode with one "
                             "worker to find the file, or free memory", exit_code=1) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # before the partial folder is removed under running workers


def decode_chunk(images_file: Path, start: int, paths: list[Path], size: int) -> tuple[int, np.ndarray | str]:
    """Run in a worker: decode `paths` into rows start... of images_file. (start, their pixel hashes),
    or (start, the message of the first file's BenchmarkError): a message crosses processes intact."""
    images = np.load(images_file, mmap_mode="r+")
    hashes = np.zeros(len(paths), dtype=f"S{PIXEL_HASH_BYTES}")
    try:
        for offset, path in enumerate(paths):
            pixels = decode(path, size)
            images[start + offset] = pixels
            hashes[offset] = pixel_hash(pixels)
    except BenchmarkError as e:
        return start, str(e)
    finally:
        images.flush()
        del images
    return start, hashes


def _raise_failure(result: tuple[int, np.ndarray | str]) -> np.ndarray:
    if isinstance(result[1], str):
        raise BenchmarkError(result[1])
    return result[1]


def pixel_hash(pixels: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=PIXEL_HASH_BYTES).digest()


# ---------------------------------------------------------------- leakage between splits


def duplicates_across(pixel_hashes: np.ndarray, splits: np.ndarray) -> list[tuple[int, ...]]:
    """Groups of indices (ascending, groups ordered by first index) whose decoded pixels are
    identical and which sit in more than one split. Copies within one split are left alone: they
    weigh an image twice but leak nothing. `splits` are the splits the caller will use (after
    carving validation and test out of a flat folder)."""
    splits = np.asarray(splits)
    _, group_of = np.unique(np.asarray(pixel_hashes), return_inverse=True)
    order = np.argsort(group_of, kind="stable")
    bounds = np.flatnonzero(np.diff(group_of[order])) + 1
    groups = [tuple(int(i) for i in members) for members in np.split(order, bounds)
              if len(members) > 1 and len(set(splits[members])) > 1]
    return sorted(groups)


def describe_duplicates(groups: Sequence[tuple[int, ...]], index: ImageIndex, splits: np.ndarray | None = None) -> str:
    """One warning line about duplicates_across's groups ("" when there are none), with up to 3 examples."""
    if not groups:
        return ""
    splits = index.splits if splits is None else np.asarray(splits)
    examples = "; ".join(" = ".join(f"{index.name_of(i)} ({splits[i] or 'no split'})" for i in group)
                         for group in groups[:3])
    more = f" and {len(groups) - 3} more" if len(groups) > 3 else ""
    return (f"{len(groups)} image(s) have identical copies in another split, e.g. {examples}{more}; remove the "
            f"copies from all but one split so the test split measures unseen images")


# ---------------------------------------------------------------- arrays -> a folder of images


def export_official_as_folder(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                              class_names: Sequence[str], out_dir: str | os.PathLike) -> Path:
    """Writes out_dir/train/<class>/<i>.png and out_dir/test/<class>/<i>.png (lossless PNG) from
    uint8 (N, H, W, 3) arrays; i is the image's index in its split, zero-padded so that sorted
    file names keep the original order. The folder is written whole (files.replaced_folder);
    an existing non-empty out_dir is refused rather than replaced."""
    out_dir = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise BenchmarkError(f"{out_dir} already exists and is not an empty folder; choose a new folder to export into")
    for name in class_names:
        if not name or name.startswith(".") or "/" in name or "\0" in name or list(class_names).count(name) > 1:
            raise BenchmarkError(f"class name {name!r} cannot be a folder name (empty, hidden, a path, or twice); "
                                 f"rename the class")
    with files.replaced_folder(out_dir, "the exported images") as partial:
        for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
            _write_split(partial / split, np.asarray(x), np.asarray(y), class_names)
    return out_dir


def _write_split(folder: Path, x: np.ndarray, y: np.ndarray, class_names: Sequence[str]) -> None:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
        raise ValueError(f"expected uint8 (N, H, W, 3) images with N labels, got {x.dtype} {x.shape} and {len(y)} labels")
    width = len(str(max(len(x) - 1, 0)))
    for name in class_names:
        (folder / name).mkdir(parents=True)
    for i, (pixels, label) in enumerate(zip(x, y)):
        Image.fromarray(pixels).save(folder / class_names[int(label)] / f"{i:0{width}d}.png", format="PNG")


# ---------------------------------------------------------------- messages


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(names[:EXAMPLES_SHOWN])
    return shown + (f" and {len(names) - EXAMPLES_SHOWN} more" if len(names) > EXAMPLES_SHOWN else "")


def _reason(error: BaseException) -> str:
    return getattr(error, "strerror", None) or _one_line(error)


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
