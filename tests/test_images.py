"""Own images: real files made with Pillow, indexed, decoded and stored; every bad input is a
one-line error naming the file, and a failed store leaves nothing in the cache."""

import io
import os
import struct
import sys
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from benchmark import images, progress
from benchmark.errors import BenchmarkError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
JPEG_TOLERANCE = 6


def solid(path, colour, size=(16, 16), mode="RGB", **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, **save)
    return path


def noise(seed, shape=(16, 16, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save_array(path, pixels, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def one_line_error(excinfo, *names):
    message = str(excinfo.value)
    assert "\n" not in message and excinfo.value.exit_code == 2
    for name in names:
        assert str(name) in message, (name, message)
    return message


def nothing_cached(cache_root):
    assert not cache_root.exists() or list(cache_root.iterdir()) == []


def two_class_folder(root, per_class=2):
    for c, colour in (("cat", RED), ("dog", BLUE)):
        for i in range(per_class):
            save_array(root / c / f"{i}.png", np.full((12, 12, 3), colour, np.uint8) + np.uint8(i))
    return root


# ---------------------------------------------------------------- decode: formats, modes, orientation, crop


@pytest.mark.parametrize("suffix, save, tolerance", [
    (".jpg", {"quality": 95}, JPEG_TOLERANCE),
    (".png", {}, 0),
    (".bmp", {}, 0),
    (".webp", {"lossless": True}, 0),
    (".tiff", {}, 0),
    (".JPEG", {"format": "JPEG", "quality": 95}, JPEG_TOLERANCE),
])  # fmt: skip
def test_each_format_decodes_to_its_colour(tmp_path, suffix, save, tolerance):
    path = solid(tmp_path / f"x{suffix}", (200, 40, 90), **save)
    pixels = images.decode(path, 8)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - (200, 40, 90)).max() <= tolerance


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "a.gif").n_frames == 3
    assert (images.decode(tmp_path / "a.gif", 8) == RED).all()


def palette_image(transparency=None):
    image = Image.new("P", (16, 16), 3)
    image.putpalette([0, 0, 0] * 3 + [10, 20, 30] + [0, 0, 0] * 252)
    return image


@pytest.mark.parametrize("make, save, expected", [
    (lambda: Image.new("L", (16, 16), 100), {}, (100, 100, 100)),
    (lambda: Image.new("LA", (16, 16), (100, 0)), {}, (100, 100, 100)),  # alpha dropped
    (lambda: palette_image(), {}, (10, 20, 30)),
    (lambda: palette_image(), {"transparency": 3}, (10, 20, 30)),  # the transparent entry keeps its colour
    (lambda: Image.new("RGBA", (16, 16), (200, 100, 50, 0)), {}, (200, 100, 50)),
    (lambda: Image.fromarray(np.full((16, 16), 65535, np.uint16)), {}, (255, 255, 255)),  # I;16 scaled
    (lambda: Image.fromarray(np.full((16, 16), 257 * 100, np.uint16)), {}, (100, 100, 100)),  # not clipped to 255
    (lambda: Image.new("1", (16, 16), 1), {}, (255, 255, 255)),
])  # fmt: skip
def test_each_png_mode_becomes_rgb(tmp_path, make, save, expected):
    image = make()
    image.save(tmp_path / "x.png", **save)
    assert Image.open(tmp_path / "x.png").mode == image.mode
    assert (images.decode(tmp_path / "x.png", 8) == expected).all()


@pytest.mark.parametrize("suffix", [".jpg", ".tiff"])
def test_cmyk_becomes_rgb(tmp_path, suffix):
    path = solid(tmp_path / f"x{suffix}", (0, 255, 255, 0), mode="CMYK")
    assert Image.open(path).mode == "CMYK"
    assert np.abs(images.decode(path, 8).astype(int) - RED).max() <= JPEG_TOLERANCE


@pytest.mark.parametrize("values, expected", [
    (np.full((16, 16), 0.5, np.float32), 128),  # F within 0..1: scaled by 255
    (np.full((16, 16), 200, np.int32), 200),  # I within 0..255: as it is
    (np.full((16, 16), 65535, np.int32), 255),  # I within 0..65535: 16-bit
])  # fmt: skip
def test_32_bit_tiffs_are_scaled_to_8_bits(tmp_path, values, expected):
    Image.fromarray(values).save(tmp_path / "x.tif")
    assert Image.open(tmp_path / "x.tif").mode in ("F", "I")
    assert (images.decode(tmp_path / "x.tif", 8) == expected).all()


@pytest.mark.parametrize("orientation, turns", [(6, -1), (8, 1), (3, 2), (1, 0)])  # 6: shown turned clockwise
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied(tmp_path, orientation, turns, suffix):
    stored = np.zeros((16, 32, 3), np.uint8)  # landscape, no symmetry: four quadrants of distinct colours
    stored[:8, :16], stored[:8, 16:], stored[8:, :16], stored[8:, 16:] = RED, GREEN, BLUE, (255, 255, 0)
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(tmp_path / f"x{suffix}", exif=exif, **({"quality": 100} if suffix == ".jpg" else {}))
    upright = np.rot90(stored, turns)
    side = min(upright.shape[:2])
    top, left = (upright.shape[0] - side) // 2, (upright.shape[1] - side) // 2
    expected = upright[top:top + side, left:left + side]
    decoded = images.decode(tmp_path / f"x{suffix}", side)
    if suffix == ".png":
        assert (decoded == expected).all()
    else:  # compare away from the JPEG's ringing at the colour edges
        assert np.abs(decoded.astype(int) - expected)[[2, 2, 13, 13], [2, 13, 2, 13]].max() <= 12


def test_the_centre_square_is_cropped_before_resizing(tmp_path):
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10], wide[:, 10:30], wide[:, 30:] = RED, BLUE, RED
    save_array(tmp_path / "wide.png", wide)
    assert (images.decode(tmp_path / "wide.png", 8) == BLUE).all()
    tall = np.transpose(wide, (1, 0, 2)).copy()
    save_array(tmp_path / "tall.png", tall)
    assert (images.decode(tmp_path / "tall.png", 20) == BLUE).all()


def test_resizing_is_pillow_bilinear_and_same_size_is_exact(tmp_path):
    pixels = noise(0, (24, 24, 3))
    save_array(tmp_path / "x.png", pixels)
    assert (images.decode(tmp_path / "x.png", 24) == pixels).all()
    expected = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.Resampling.BILINEAR, reducing_gap=None))
    assert (images.decode(tmp_path / "x.png", 8) == expected).all()
    assert (images.decode(tmp_path / "x.png", 48) == np.asarray(Image.fromarray(pixels).resize((48, 48), Image.Resampling.BILINEAR))).all()


# ---------------------------------------------------------------- decode: bad files


def truncated_jpeg(path):
    whole = io.BytesIO()
    Image.fromarray(noise(1, (48, 48, 3))).save(whole, "JPEG", quality=95)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    return path


def test_bad_files_are_one_line_errors_naming_them(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.jpg").mkdir()  # an unreadable "file": as root, chmod 000 would still read
    cases = {
        "notes.jpg": "is not an image Pillow can read; remove or replace the file",
        "empty.png": "is empty (0 bytes); remove or replace the file",
        "half.jpg": "is truncated or damaged (image file is truncated",
        "folder.jpg": "cannot read",
        "missing.png": "cannot read",
    }
    truncated_jpeg(tmp_path / "half.jpg")
    for name, expected in cases.items():
        with pytest.raises(BenchmarkError) as excinfo:
            images.decode(tmp_path / name, 8)
        assert expected in one_line_error(excinfo, tmp_path / name)


def test_a_decompression_bomb_is_refused_by_pillows_own_check(tmp_path, monkeypatch):
    solid(tmp_path / "warns.png", RED, size=(12, 12))  # 144 pixels: over the limit (warning, made an error)
    solid(tmp_path / "errs.png", RED, size=(16, 16))  # 256 pixels: over twice the limit (Pillow's error)
    assert (images.decode(tmp_path / "errs.png", 8) == RED).all()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for name in ("warns.png", "errs.png"):
        with pytest.raises(BenchmarkError) as excinfo:
            images.decode(tmp_path / name, 8)
        assert "too large to decode safely" in one_line_error(excinfo, tmp_path / name)
        assert "decompression bomb" in str(excinfo.value)


def test_a_decompression_bomb_in_a_real_header(tmp_path):
    """20000 x 20000 pixels claimed by a PNG a few hundred bytes long: refused before any decoding."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 20001))
                                        + chunk(b"IEND", b""))
    with pytest.raises(BenchmarkError) as excinfo:
        images.decode(tmp_path / "bomb.png", 8)
    assert "400000000 pixels" in one_line_error(excinfo, tmp_path / "bomb.png")


def test_decoding_leaves_warnings_as_they_were(tmp_path):
    solid(tmp_path / "x.png", RED)
    before = list(warnings.filters)
    images.decode(tmp_path / "x.png", 8)
    assert warnings.filters == before


# ---------------------------------------------------------------- index_folder


def test_a_train_test_folder(tmp_path):
    for split in ("test", "train"):
        for c in ("dog", "cat"):
            for i in range(2):
                solid(tmp_path / split / c / f"{i}.png", RED)
    index = images.index_folder(tmp_path)
    assert index.class_names == ["cat", "dog"] and index.root == tmp_path and index.skipped == 0
    assert [index.name_of(i) for i in range(len(index))] == [
        "test/cat/0.png", "test/cat/1.png", "test/dog/0.png", "test/dog/1.png",
        "train/cat/0.png", "train/cat/1.png", "train/dog/0.png", "train/dog/1.png"]  # fmt: skip
    assert index.labels.dtype == np.int64 and index.labels.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert index.splits.tolist() == ["test"] * 4 + ["train"] * 4
    assert all(p.is_absolute() for p in index.paths)


def test_a_train_val_test_folder_with_capitalised_split_names(tmp_path):
    for split in ("Train", "VAL", "test"):
        for c in ("a", "b"):
            solid(tmp_path / split / c / "x.jpg", RED)
    index = images.index_folder(tmp_path)
    assert sorted(index.splits.tolist()) == ["test"] * 2 + ["train"] * 2 + ["val"] * 2
    assert dict(zip([index.name_of(i) for i in range(len(index))], index.splits.tolist())) == {
        "Train/a/x.jpg": "train", "Train/b/x.jpg": "train", "VAL/a/x.jpg": "val", "VAL/b/x.jpg": "val",
        "test/a/x.jpg": "test", "test/b/x.jpg": "test"}  # fmt: skip


def test_a_flat_folder_with_unicode_and_spaced_class_names_and_junk(tmp_path):
    names = ["猫", "café au lait", "Zebra", "apple"]
    for name in names:
        for i in (10, 2):
            solid(tmp_path / name / f"img {i}.JPG", RED, format="JPEG")
    cat = tmp_path / "猫"
    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / "._img 2.JPG").write_bytes(b"\0\5\26\7 resource fork")
    (cat / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (cat / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (cat / "notes.txt").write_text("taken in 2019\n")
    solid(cat / "nested" / "deep.png", RED)  # only files directly in a class folder are read
    (tmp_path / ".ipynb_checkpoints").mkdir()
    solid(tmp_path / ".ipynb_checkpoints" / "x-checkpoint.png", RED)
    (tmp_path / ".DS_Store").write_bytes(b"")
    solid(tmp_path / "loose.png", RED)  # in no class
    index = images.index_folder(tmp_path)
    assert index.class_names == sorted(names) == ["Zebra", "apple", "café au lait", "猫"]
    assert len(index) == 8 and index.skipped == 6 + 3
    assert index.splits.tolist() == [""] * 8
    assert [index.name_of(i) for i in range(2)] == ["Zebra/img 10.JPG", "Zebra/img 2.JPG"]  # str order
    assert [index.class_names[label] for label in index.labels] == [n for n in sorted(names) for _ in range(2)]


def test_linked_class_folders_and_files_are_followed(tmp_path):
    real = two_class_folder(tmp_path / "real")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(real / "cat", root / "cat")
    (root / "dog").mkdir()
    os.symlink(real / "dog" / "0.png", root / "dog" / "linked.png")
    os.symlink(root / "dog", root / "dog" / "loop")  # a folder inside a class folder: not read, so no loop
    index = images.index_folder(root)
    assert [index.name_of(i) for i in range(len(index))] == ["cat/0.png", "cat/1.png", "dog/linked.png"]
    assert index.skipped == 1


def test_nfd_and_nfc_spellings_of_a_class_are_one_class(tmp_path):
    solid(tmp_path / "train" / "cafe\u0301" / "x.png", RED)  # as a Mac writes it
    solid(tmp_path / "test" / "caf\u00e9" / "x.png", RED)
    for split in ("train", "test"):
        solid(tmp_path / split / "tea" / "x.png", RED)
    assert images.index_folder(tmp_path).class_names == ["caf\u00e9", "tea"]


def folder_error(root, *names) -> str:
    with pytest.raises(BenchmarkError) as excinfo:
        images.index_folder(root)
    return one_line_error(excinfo, *names)


def test_folder_errors_name_the_folder_and_the_fix(tmp_path):
    assert "does not exist or is not a folder" in folder_error(tmp_path / "nowhere", tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("")
    assert "does not exist or is not a folder" in folder_error(tmp_path / "a-file", tmp_path / "a-file")
    (tmp_path / "empty").mkdir()
    assert "holds no class folders" in folder_error(tmp_path / "empty", tmp_path / "empty")
    solid(tmp_path / "one" / "cat" / "x.png", RED)
    assert "only one class folder (cat); a classifier needs at least two" in folder_error(tmp_path / "one", "one")
    two = two_class_folder(tmp_path / "two")
    (two / "bird").mkdir()
    (two / "bird" / "notes.txt").write_text("todo")
    assert "holds no images" in folder_error(two, two / "bird")


def test_split_folders_must_hold_the_same_classes(tmp_path):
    for c in ("cat", "dog", "emu"):
        solid(tmp_path / "train" / c / "x.png", RED)
    for c in ("cat", "dog", "fox"):
        solid(tmp_path / "test" / c / "x.png", RED)
    message = folder_error(tmp_path, tmp_path)
    assert "train/ and test/ have different class folders (only in train/: emu; only in test/: fox)" in message
    solid(tmp_path / "test" / "emu" / "x.png", RED)
    (tmp_path / "test" / "fox" / "x.png").unlink()
    (tmp_path / "test" / "fox").rmdir()
    for c in ("cat", "dog"):
        solid(tmp_path / "val" / c / "x.png", RED)
    assert "train/ and val/ have different class folders (only in train/: emu)" in folder_error(tmp_path)
    solid(tmp_path / "val" / "emu" / "x.png", RED)
    assert len(images.index_folder(tmp_path)) == 9


def test_a_split_layout_needs_train_and_test_and_nothing_else(tmp_path):
    two_class_folder(tmp_path / "train")
    assert "has train/ but no test/ folder" in folder_error(tmp_path, tmp_path / "test")
    two_class_folder(tmp_path / "test")
    two_class_folder(tmp_path / "extra")
    assert "beside other folders (extra)" in folder_error(tmp_path, tmp_path)


def test_symbolic_link_loops_are_named(tmp_path):
    root = two_class_folder(tmp_path / "loops")
    os.symlink(root / "b", root / "a")
    os.symlink(root / "a", root / "b")
    assert "is a symbolic link loop" in folder_error(root, root / "a")
    os.unlink(root / "a")
    os.unlink(root / "b")
    os.symlink(root / "cat" / "y.jpg", root / "cat" / "x.jpg")
    os.symlink(root / "cat" / "x.jpg", root / "cat" / "y.jpg")
    assert "is a symbolic link loop" in folder_error(root, root / "cat" / "x.jpg")


def test_a_dangling_link_and_an_unreadable_folder_are_named(tmp_path, monkeypatch):
    root = two_class_folder(tmp_path / "root")
    os.symlink("/nonexistent/x.jpg", root / "cat" / "x.jpg")
    assert "symbolic link to a missing file or folder" in folder_error(root, root / "cat" / "x.jpg")
    os.unlink(root / "cat" / "x.jpg")
    # Tests run as root, whom chmod 000 does not stop: the listing is refused the way the OS refuses it.
    scandir = os.scandir

    def refusing(path):
        if os.fspath(path).endswith("dog"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert "cannot read folder" in folder_error(root, root / "dog", "Permission denied", "chmod")


# ---------------------------------------------------------------- index_csv


def test_a_csv_with_splits_and_relative_and_absolute_paths(tmp_path):
    solid(tmp_path / "pics" / "a.png", RED)
    solid(tmp_path / "pics" / "b.png", RED)
    elsewhere = solid(tmp_path / "elsewhere" / "c.png", RED)
    (tmp_path / "pics" / "labels.csv").write_text(
        "path,label,split\n"
        "b.png,zebra,train\n"
        f"{elsewhere},ant,test\n"
        "a.png, zebra ,val\n"
        "\n"
    )
    index = images.index_csv(tmp_path / "pics" / "labels.csv")
    assert index.paths == [tmp_path / "pics" / "b.png", elsewhere, tmp_path / "pics" / "a.png"]  # the CSV's order
    assert index.class_names == ["ant", "zebra"] and index.labels.tolist() == [1, 0, 1]
    assert index.splits.tolist() == ["train", "test", "val"] and index.root == tmp_path / "pics"
    assert [index.name_of(i) for i in range(3)] == ["b.png", str(elsewhere), "a.png"]


def test_a_csv_without_a_split_column_and_with_a_byte_order_mark(tmp_path):
    solid(tmp_path / "a.png", RED)
    (tmp_path / "l.csv").write_bytes("\ufeffpath,label\na.png,猫\na.png,dog\n".encode())
    index = images.index_csv(tmp_path / "l.csv")
    assert index.class_names == ["dog", "猫"] and index.splits.tolist() == ["", ""]


@pytest.mark.parametrize("text, expected", [
    ("file,label\na.png,x\n", "lacks the column(s) path (its first line names: file, label)"),
    ("path\na.png\n", "lacks the column(s) label"),
    ("", "lacks the column(s) path, label (its first line names: nothing)"),
    ("path,label\na.png,x\nb.png,y\nmissing.png,x\n", "line 4 names missing.png, which is not a file"),
    ("path,label\na.png,x\nsub,y\n", "line 3 names sub, which is not a file"),
    ("path,label,split\na.png,x,train\nb.png,y,validation\n",
     "line 3 has split 'validation', which is not one of train, val, test (or empty)"),
    ("path,label\na.png,x\nb.png,x\n", "names 1 class(es) (x); a classifier needs at least two"),
    ("path,label\na.png,\n", "line 2 has an empty label"),
])  # fmt: skip
def test_csv_errors_name_the_csv_and_the_line(tmp_path, text, expected):
    solid(tmp_path / "a.png", RED)
    solid(tmp_path / "b.png", RED)
    (tmp_path / "sub").mkdir()
    (tmp_path / "l.csv").write_text(text)
    with pytest.raises(BenchmarkError) as excinfo:
        images.index_csv(tmp_path / "l.csv")
    assert expected in one_line_error(excinfo, tmp_path / "l.csv")


def test_a_missing_csv(tmp_path):
    with pytest.raises(BenchmarkError) as excinfo:
        images.index_csv(tmp_path / "nope.csv")
    assert "path,label" in one_line_error(excinfo, tmp_path / "nope.csv")


# ---------------------------------------------------------------- store_images


def test_store_images_decodes_once_then_hits(tmp_path, capsys):
    root = two_class_folder(tmp_path / "photos", per_class=3)
    save_array(root / "cat" / "wide.jpg", np.zeros((20, 40, 3), np.uint8), quality=95)
    index = images.index_folder(root)
    cache_root = tmp_path / "cache"
    first = images.store_images(index, 12, cache_root, workers=1)
    assert first.status == "miss" and first.path == cache_root / f"images-12px-{first.key[:32]}"
    assert sorted(p.name for p in cache_root.iterdir()) == [first.path.name]  # no partial left beside it
    assert isinstance(first.images, np.memmap) and first.images.shape == (7, 12, 12, 3) and first.images.dtype == np.uint8
    assert not first.images.flags.writeable
    for i, path in enumerate(index.paths):
        assert (first.images[i] == images.decode(path, 12)).all()
        assert first.pixel_hashes[i] == np.array([images.pixel_hash(images.decode(path, 12))], dtype="S16")[0]
    assert capsys.readouterr().err == ""  # not a terminal: no bar in a log
    second = images.store_images(index, 12, cache_root, workers=1)
    assert second.status == "hit" and second.key == first.key and isinstance(second.images, np.memmap)
    assert (np.asarray(second.images) == np.asarray(first.images)).all()
    assert capsys.readouterr().err == ""  # a hit decodes nothing
    os.utime(index.paths[0], (0, 0))  # same bytes, new time: still a hit
    assert images.store_images(index, 12, cache_root, progress=False).status == "hit"
    assert images.store_images(index, 8, cache_root, workers=1, progress=False).status == "miss"  # another size


def test_changing_one_files_bytes_changes_the_key(tmp_path):
    root = two_class_folder(tmp_path / "photos")
    index = images.index_folder(root)
    cache_root = tmp_path / "cache"
    before = images.store_images(index, 8, cache_root, workers=1, progress=False)
    save_array(index.paths[-1], np.full((12, 12, 3), 7, np.uint8))
    after = images.store_images(index, 8, cache_root, workers=1, progress=False)
    assert after.status == "miss" and after.key != before.key and (after.images[-1] == 7).all()
    assert (after.images[:-1] == before.images[:-1]).all()
    relabelled = images.ImageIndex(index.paths, index.labels[::-1].copy(), index.splits, index.class_names, index.root)
    assert images.cache_key(relabelled, 8) != after.key
    assert images.cache_key(index, 8) == after.key


def test_workers_decode_the_same_arrays_as_one_process(tmp_path, monkeypatch):
    root = tmp_path / "photos"
    for i in range(10):
        save_array(root / ("cat" if i % 2 else "dog") / f"{i}.png", noise(i, (12 + i, 20, 3)))
    index = images.index_folder(root)
    monkeypatch.setattr(images, "IMAGES_PER_TASK", 3)  # 4 tasks for 2 processes
    alone = images.store_images(index, 8, tmp_path / "one", workers=1, progress=False)
    pooled = images.store_images(index, 8, tmp_path / "two", workers=2, progress=False)
    assert pooled.status == alone.status == "miss" and pooled.key == alone.key
    assert (np.asarray(pooled.images) == np.asarray(alone.images)).all()
    assert (pooled.pixel_hashes == alone.pixel_hashes).all()


def test_a_bad_file_in_a_worker_is_the_same_one_line_error_and_nothing_is_cached(tmp_path, monkeypatch):
    root = two_class_folder(tmp_path / "photos", per_class=4)
    (root / "dog" / "2.png").write_text("I am a note, not a PNG\n")
    index = images.index_folder(root)
    monkeypatch.setattr(images, "IMAGES_PER_TASK", 2)
    for workers in (1, 2):
        with pytest.raises(BenchmarkError) as excinfo:
            images.store_images(index, 8, tmp_path / "cache", workers=workers, progress=False)
        assert "is not an image Pillow can read; remove or replace the file" in one_line_error(excinfo, root / "dog" / "2.png")
        nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("spoil", ["truncated", "empty", "deleted", "bomb"])
def test_a_failed_store_leaves_nothing_in_the_cache(tmp_path, monkeypatch, spoil):
    root = two_class_folder(tmp_path / "photos")
    bad = root / "dog" / "1.png"
    index = images.index_folder(root)
    if spoil == "truncated":
        bad.unlink()
        bad = truncated_jpeg(root / "dog" / "1.png")
    elif spoil == "empty":
        bad.write_bytes(b"")
    elif spoil == "deleted":  # moved away after indexing
        bad.unlink()
    else:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(BenchmarkError) as excinfo:
        images.store_images(index, 8, tmp_path / "cache", workers=1, progress=False)
    one_line_error(excinfo, root / ("cat/0.png" if spoil == "bomb" else "dog/1.png"))  # a bomb: every image is one
    nothing_cached(tmp_path / "cache")


def test_an_unreadable_cache_is_decoded_again(tmp_path):
    index = images.index_folder(two_class_folder(tmp_path / "photos"))
    first = images.store_images(index, 8, tmp_path / "cache", workers=1, progress=False)
    expected, folder = np.array(first.images), first.path
    del first  # its memory map, before the file under it is spoiled
    (folder / images.IMAGES_FILE).write_bytes(b"garbage")
    again = images.store_images(index, 8, tmp_path / "cache", workers=1, progress=False)
    assert again.status == "miss" and again.path == folder and (np.asarray(again.images) == expected).all()
    assert images.store_images(index, 8, tmp_path / "cache").status == "hit"


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def bars_made(monkeypatch):
    """The progress bars store_images makes (the real ones), kept to be looked at."""
    made = []

    def recorded(*args, **options):
        made.append(progress.bar(*args, **options))
        return made[-1]

    monkeypatch.setattr(images, "bar", recorded)
    return made


def test_decoding_counts_every_image_on_a_bar_drawn_on_a_terminal_once_it_lasts(tmp_path, monkeypatch, bars_made):
    index = images.index_folder(two_class_folder(tmp_path / "photos", per_class=70))  # 140 images: 3 chunks
    monkeypatch.setattr("sys.stderr", Terminal())
    images.store_images(index, 8, tmp_path / "quick", workers=1)
    assert [(b.total, b.n) for b in bars_made] == [(140, 140)]  # (a disabled bar counts nothing)
    assert sys.stderr.getvalue() == ""  # done within DELAY_S: nothing drawn
    monkeypatch.setattr(progress, "DELAY_S", 0)
    images.store_images(index, 8, tmp_path / "drawn", workers=1)
    assert "decoding images (once)" in sys.stderr.getvalue() and bars_made[-1].n == 140


def test_decoding_draws_nothing_in_a_log_with_progress_off_or_hidden(tmp_path, monkeypatch, bars_made, capsys):
    index = images.index_folder(two_class_folder(tmp_path / "photos"))
    monkeypatch.setattr(progress, "DELAY_S", 0)
    images.store_images(index, 8, tmp_path / "log", workers=1)  # capsys: stderr is not a terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setattr("sys.stderr", Terminal())
    images.store_images(index, 8, tmp_path / "off", workers=1, progress=False)
    with progress.hidden_unless(False):
        images.store_images(index, 8, tmp_path / "hidden", workers=1)
    assert [(b.total, b.n) for b in bars_made] == [(len(index), 0)] * 3  # disabled: counts nothing
    assert sys.stderr.getvalue() == ""


# ---------------------------------------------------------------- duplicates across splits


def test_identical_pixels_across_splits_are_found_and_within_a_split_ignored(tmp_path):
    for seed, (split, c, i) in enumerate((s, c, i) for s in ("train", "test") for c in ("cat", "dog") for i in range(2)):
        save_array(tmp_path / split / c / f"{i}.png", noise(seed))
    leaked = noise(99)
    save_array(tmp_path / "train" / "cat" / "leak.png", leaked)
    save_array(tmp_path / "test" / "dog" / "leak.bmp", leaked)  # another format, same pixels
    save_array(tmp_path / "train" / "dog" / "twin.png", np.asarray(Image.open(tmp_path / "train" / "dog" / "0.png")))
    index = images.index_folder(tmp_path)
    stored = images.store_images(index, 16, tmp_path / "cache", workers=1, progress=False)
    groups = images.duplicates_across(stored.pixel_hashes, index.splits)
    names = [[index.name_of(i) for i in group] for group in groups]
    assert names == [["test/dog/leak.bmp", "train/cat/leak.png"]]
    line = images.describe_duplicates(groups, index)
    assert line.startswith("1 image(s) have identical copies in another split, e.g. test/dog/leak.bmp (test) = "
                           "train/cat/leak.png (train); remove") and "\n" not in line
    assert images.describe_duplicates([], index) == ""
    assert images.duplicates_across(stored.pixel_hashes, np.array(["train"] * len(index))) == []


def test_describe_duplicates_shows_three_examples():
    hashes = np.array([b"a", b"a", b"b", b"b", b"c", b"c", b"d", b"d"], dtype="S16")
    splits = np.array(["train", "test"] * 4)
    groups = images.duplicates_across(hashes, splits)
    assert groups == [(0, 1), (2, 3), (4, 5), (6, 7)]
    index = images.ImageIndex([images.Path(f"/r/{i}.png") for i in range(8)], np.zeros(8, np.int64), splits,
                              ["x", "y"], images.Path("/r"))
    line = images.describe_duplicates(groups, index)
    assert line.count(" = ") == 3 and "4.png (train) = 5.png (test) and 1 more;" in line


# ---------------------------------------------------------------- export_official_as_folder


def test_exported_arrays_come_back_pixel_for_pixel(tmp_path):
    x_train, y_train = noise(5, (12, 8, 8, 3)), np.array([2, 0, 1] * 4)
    x_test, y_test = noise(6, (3, 8, 8, 3)), np.array([1, 2, 0])
    out = images.export_official_as_folder(x_train, y_train, x_test, y_test, ["zebra", "ant", "bee"], tmp_path / "out")
    assert sorted(p.name for p in (out / "train" / "zebra").iterdir()) == ["01.png", "04.png", "07.png", "10.png"]
    assert sorted(p.name for p in (out / "test" / "ant").iterdir()) == ["0.png"]
    index = images.index_folder(out)
    assert index.class_names == ["ant", "bee", "zebra"]
    stored = images.store_images(index, 8, tmp_path / "cache", workers=1, progress=False)
    names = ["zebra", "ant", "bee"]
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        for i in range(len(x)):
            width = len(str(len(x) - 1))
            at = index.paths.index(out / split / names[y[i]] / f"{i:0{width}d}.png")
            assert (stored.images[at] == x[i]).all() and index.class_names[index.labels[at]] == names[y[i]]
            assert index.splits[at] == split


def test_export_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(BenchmarkError) as excinfo:
        images.export_official_as_folder(noise(0, (2, 8, 8, 3)), np.array([0, 1]), noise(1, (2, 8, 8, 3)),
                                         np.array([0, 1]), ["a", "b"], tmp_path / "mine")
    assert "choose a new folder" in one_line_error(excinfo, tmp_path / "mine")
    assert (tmp_path / "mine" / "holiday.jpg").read_bytes() == b"precious"
