import hashlib
import io
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import write_official

from benchmark import data
from benchmark.data import (
    load_dataset,
    read_official_dir,
    stratified_split,
    stratified_subset,
)
from benchmark.errors import BenchmarkError
from benchmark.spec import DataSpec, SubsetSpec, SyntheticSpec

REPO = Path(__file__).resolve().parent.parent
FIX_HINTS = ("re-stage", "--data-dir")


class Py2StylePickler(pickle._Pickler):
    """Writes bytes the way Python 2 wrote str (SHORT_BINSTRING/BINSTRING), as in the official files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes_as_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes_as_py2_str


def py2_style_dumps(obj) -> bytes:
    buffer = io.BytesIO()
    Py2StylePickler(buffer, protocol=2).dump(obj)
    # GLOBAL is a text opcode, so renaming numpy 2's module to the official numpy 1 name is a plain replace
    return buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def assert_one_line_with_fix(error: BenchmarkError, *names: str) -> None:
    message = str(error)
    assert "\n" not in message
    for name in names:
        assert name in message
    assert any(hint in message for hint in FIX_HINTS), message


# ---------------------------------------------------------------- the real sample


def test_sample_has_the_documented_sizes_shapes_and_names(cifar_sample_dir):
    (x_train, y_train), (x_test, y_test), names = read_official_dir(cifar_sample_dir, "fine")
    assert x_train.shape == (1117, 32, 32, 3) and x_train.dtype == np.uint8
    assert x_test.shape == (916, 32, 32, 3) and x_test.dtype == np.uint8
    assert y_train.shape == (1117,) and y_train.dtype == np.int64
    assert y_test.shape == (916,)
    assert set(y_train.tolist()) == set(range(100))
    assert len(names) == 100 and names[0] == "apple" and names[99] == "worm"
    assert y_train[:5].tolist() == [19, 29, 0, 11, 1]  # the official file's first labels


def test_sample_coarse_labels_have_20_classes(cifar_sample_dir):
    (_, y_train), (_, y_test), names = read_official_dir(cifar_sample_dir, "coarse")
    assert set(y_train.tolist()) == set(range(20))
    assert y_test.max() == 19
    assert names[:2] == ["aquatic_mammals", "fish"] and len(names) == 20


def test_the_superclass_table_matches_the_official_labels(cifar_sample_dir):
    (_, fine), (_, fine_test), _ = read_official_dir(cifar_sample_dir, "fine")
    (_, coarse), (_, coarse_test), coarse_names = read_official_dir(cifar_sample_dir, "coarse")
    table = np.asarray(data.CIFAR100_COARSE_OF_FINE)
    assert np.array_equal(table[fine], coarse) and np.array_equal(table[fine_test], coarse_test)
    assert len(np.unique(fine)) == 100  # the sample covers every fine class, so every entry was checked
    assert list(data.CIFAR100_COARSE_LABEL_NAMES) == coarse_names


def test_rows_are_converted_from_channel_first_to_channels_last(cifar_sample_dir):
    with open(cifar_sample_dir / "train", "rb") as handle:
        raw = pickle.load(handle, encoding="bytes")[b"data"]  # the trusted sample, read plainly
    (x_train, _), _, _ = read_official_dir(cifar_sample_dir, "fine")
    i = 7
    row = raw[i]
    for channel in range(3):
        np.testing.assert_array_equal(x_train[i, :, :, channel], row[channel * 1024 : (channel + 1) * 1024].reshape(32, 32))
    # one pixel by hand: row 5, column 9, blue
    assert x_train[i, 5, 9, 2] == row[2 * 1024 + 5 * 32 + 9]
    assert x_train.flags["C_CONTIGUOUS"]


def test_dir_source_accepts_the_parent_folder(cifar_sample_dir):
    dataset = load_dataset(DataSpec(source="dir", dir=cifar_sample_dir.parent))
    assert dataset.origin == f"dir:{cifar_sample_dir.resolve()}"
    assert dataset.class_names[0] == "apple"


def test_sample_source_reads_the_slice_inside_the_package():
    dataset = load_dataset(DataSpec(source="sample", validation_fraction=0.1))
    assert dataset.origin == "sample"
    assert dataset.sizes() == {"train": 1005, "validation": 112, "test": 916}
    assert len(set(dataset.y_train)) == len(set(dataset.y_test)) == 100
    assert data.SAMPLE_DIR.is_relative_to(Path(data.__file__).parent)
    assert (data.SAMPLE_DIR.parent / "README.md").is_file()
    # the official meta file, byte for byte (the README's md5)
    assert hashlib.md5((data.SAMPLE_DIR / "meta").read_bytes()).hexdigest() == "7973b15100ade9c7d40fb424638fde48"


def test_an_installed_package_ships_the_sample():
    import tomllib

    package_data = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = package_data["package-data"]["benchmark"]
    shipped = {p for pattern in patterns for p in Path(data.__file__).parent.glob(pattern)}
    assert {data.SAMPLE_DIR / name for name in ("train", "test", "meta")} <= shipped


def test_load_dataset_carves_validation_from_train_and_keeps_test_whole(cifar_sample_dir):
    dataset = load_dataset(DataSpec(source="dir", dir=cifar_sample_dir, validation_fraction=0.1, seed=0))
    assert dataset.sizes() == {"train": 1005, "validation": 112, "test": 916}  # 112 = round(1117 * 0.1)
    assert dataset.num_classes == 100
    (x_train, y_train), (x_test, y_test), _ = read_official_dir(cifar_sample_dir, "fine")
    np.testing.assert_array_equal(dataset.x_test, x_test)
    np.testing.assert_array_equal(dataset.y_test, y_test)
    keep, held = stratified_split(y_train, 0.1, seed=0)
    np.testing.assert_array_equal(dataset.x_val, x_train[held])
    np.testing.assert_array_equal(dataset.y_train, y_train[keep])


def test_split_of_the_sample_is_stratified_disjoint_and_complete(cifar_sample_dir):
    (_, labels), _, _ = read_official_dir(cifar_sample_dir, "fine")
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert len(held) == 112
    assert len(np.intersect1d(keep, held)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([keep, held])), np.arange(len(labels)))
    counts = np.bincount(labels, minlength=100)
    held_counts = np.bincount(labels[held], minlength=100)
    kept_counts = np.bincount(labels[keep], minlength=100)
    assert (kept_counts[counts >= 2] >= 1).all()
    assert (held_counts[counts >= 2] >= 1).all()  # 112 held >= 100 classes, so every class gets one
    assert np.abs(held_counts - counts * 0.1).max() <= 1


def test_split_is_deterministic_for_a_seed_and_changes_with_it(cifar_sample_dir):
    (_, labels), _, _ = read_official_dir(cifar_sample_dir, "fine")
    first = stratified_split(labels, 0.1, seed=3)
    again = stratified_split(labels, 0.1, seed=3)
    other = stratified_split(labels, 0.1, seed=4)
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[0], again[0])
    assert not np.array_equal(first[1], other[1])


def test_split_keeps_one_per_class_when_few_can_be_held():
    labels = np.repeat(np.arange(10), 3)  # 30 examples, 3 held: not every class can give one
    keep, held = stratified_split(labels, 0.1, seed=0)
    assert len(held) == 3
    assert set(labels[keep].tolist()) == set(range(10))
    assert np.bincount(labels[held], minlength=10).max() == 1


def test_split_total_is_exact_with_singleton_classes():
    labels = np.array([0, 1, 2, 2, 2, 2, 3, 3])
    keep, held = stratified_split(labels, 0.5, seed=1)
    assert len(held) == 4 and len(keep) == 4
    kept, held_labels = set(labels[keep].tolist()), set(labels[held].tolist())
    assert {2, 3} <= kept and {2, 3} <= held_labels


# ---------------------------------------------------------------- subsets


def test_subset_has_the_exact_size_and_class_proportions():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    idx = stratified_subset(labels, 10, seed=0)
    assert len(idx) == 10 and len(set(idx.tolist())) == 10
    assert np.bincount(labels[idx]).tolist() == [5, 3, 2]
    assert (np.diff(idx) > 0).all()  # sorted
    np.testing.assert_array_equal(idx, stratified_subset(labels, 10, seed=0))


def test_subset_of_the_sample_is_proportional(cifar_sample_dir):
    (_, labels), _, _ = read_official_dir(cifar_sample_dir, "fine")
    idx = stratified_subset(labels, 500, seed=0)
    assert len(idx) == 500
    quota = np.bincount(labels, minlength=100) * 500 / len(labels)
    assert np.abs(np.bincount(labels[idx], minlength=100) - quota).max() < 1


def test_load_dataset_applies_subsets_after_the_split(cifar_sample_dir):
    spec = DataSpec(source="dir", dir=cifar_sample_dir, subset=SubsetSpec(train=300, validation=50, test=200))
    dataset = load_dataset(spec)
    assert dataset.sizes() == {"train": 300, "validation": 50, "test": 200}
    assert len(np.unique(dataset.y_train)) == 100  # 300 of 1005 still reaches every class (>= 4 each)


def test_subset_larger_than_its_split_names_the_split_size(cifar_sample_dir):
    spec = DataSpec(source="dir", dir=cifar_sample_dir, subset=SubsetSpec(validation=200))
    with pytest.raises(BenchmarkError) as caught:
        load_dataset(spec)
    message = str(caught.value)
    assert "data.subset.validation = 200" in message and "112" in message


# ---------------------------------------------------------------- the restricted unpickler


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.marker}",)


def test_pickle_that_runs_a_command_is_refused(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_official(folder)
    marker = tmp_path / "pwned.txt"
    (folder / "train").write_bytes(pickle.dumps({b"data": _Exploit(marker)}, protocol=2))
    with pytest.raises(BenchmarkError) as caught:
        read_official_dir(folder, "fine")
    message = str(caught.value)
    assert f"refusing to load {folder / 'train'}" in message
    assert ".system" in message and "re-download the official files" in message
    assert not marker.exists()


def test_the_refused_pickle_really_would_run_the_command(tmp_path):
    # shows the previous test guards against a working exploit, not a malformed file
    marker = tmp_path / "control.txt"
    pickle.loads(pickle.dumps(_Exploit(marker), protocol=2))
    assert marker.read_text().strip() == "pwned"


@pytest.mark.parametrize("protocol", [2, 4, pickle.DEFAULT_PROTOCOL])
def test_official_style_pickles_load(tmp_path, protocol):
    folder = tmp_path / "cifar-100-python"
    written = write_official(folder, train_size=30, test_size=20, protocol=protocol)
    (x_train, y_train), (x_test, y_test), names = read_official_dir(folder, "fine")
    assert x_train.shape == (30, 32, 32, 3) and x_test.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(x_train.transpose(0, 3, 1, 2).reshape(30, 3072), written["train"][b"data"])
    assert y_test.tolist() == written["test"][b"fine_labels"]
    assert names[0] == "fine_0" and len(names) == 100
    if protocol == 2:  # Python 3 writes bytes at protocol 2 through _codecs.encode: it must be admitted
        assert b"_codecs" in (folder / "train").read_bytes()


def test_python2_protocol2_pickles_like_the_official_release_load(tmp_path):
    folder = tmp_path / "cifar-100-python"
    written = write_official(folder, train_size=12, test_size=8)
    for name in ("train", "test"):
        (folder / name).write_bytes(py2_style_dumps(written[name]))
    blob = (folder / "train").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in blob and b"_codecs" not in blob
    (x_train, y_train), (x_test, _), _ = read_official_dir(folder, "coarse")
    np.testing.assert_array_equal(x_train.transpose(0, 3, 1, 2).reshape(12, 3072), written["train"][b"data"])
    assert y_train.tolist() == written["train"][b"coarse_labels"] and len(x_test) == 8


# ---------------------------------------------------------------- errors name the file and the fix


def test_missing_dir_is_reported(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(BenchmarkError) as caught:
        read_official_dir(missing, "fine")
    assert_one_line_with_fix(caught.value, str(missing), "does not exist")


def test_empty_dir_lists_the_missing_files(tmp_path):
    with pytest.raises(BenchmarkError) as caught:
        load_dataset(DataSpec(source="dir", dir=tmp_path))
    assert_one_line_with_fix(caught.value, str(tmp_path), "train, test, meta")


def test_empty_file_is_reported(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_official(folder)
    (folder / "test").write_bytes(b"")
    with pytest.raises(BenchmarkError) as caught:
        read_official_dir(folder, "fine")
    assert_one_line_with_fix(caught.value, str(folder / "test"), "empty or truncated")


def test_truncated_file_is_reported(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_official(folder)
    full = (folder / "train").read_bytes()
    (folder / "train").write_bytes(full[: len(full) // 2])
    with pytest.raises(BenchmarkError) as caught:
        read_official_dir(folder, "fine")
    assert_one_line_with_fix(caught.value, str(folder / "train"), "truncated")


@pytest.mark.parametrize(
    "file, content, fragments",
    [
        (
            "train",
            {b"data": np.zeros((30, 3000), np.uint8), b"fine_labels": [0] * 30, b"coarse_labels": [0] * 30},
            ("(30, 3000)", "3072"),
        ),
        ("test", {b"images": np.zeros((2, 3072), np.uint8)}, ("lacks data, fine_labels", "found: images")),
        ("train", {b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 5, 100]}, ("0..100", "outside 0..99")),
        ("train", {b"data": np.zeros((3, 3072), np.uint8), b"fine_labels": [0, 1]}, ("not 3 integers",)),
    ],
    ids=["wrong image shape", "wrong keys", "labels out of range", "label count differs from images"],
)
def test_malformed_official_files_are_reported(tmp_path, file, content, fragments):
    folder = tmp_path / "cifar-100-python"
    write_official(folder)
    (folder / file).write_bytes(pickle.dumps(content, protocol=2))
    with pytest.raises(BenchmarkError) as caught:
        read_official_dir(folder, "fine")
    assert_one_line_with_fix(caught.value, str(folder / file), *fragments)


def test_empty_validation_split_is_an_error():
    spec = DataSpec(source="synthetic", synthetic=SyntheticSpec(train_size=4, test_size=4), validation_fraction=0.1)
    with pytest.raises(BenchmarkError, match="empty validation split"):
        load_dataset(spec)


# ---------------------------------------------------------------- synthetic


def test_synthetic_has_official_shapes_and_balanced_labels():
    dataset = load_dataset(DataSpec(source="synthetic", synthetic=SyntheticSpec(train_size=1000, test_size=300)))
    assert dataset.sizes() == {"train": 900, "validation": 100, "test": 300}
    assert dataset.x_train.shape == (900, 32, 32, 3) and dataset.x_train.dtype == np.uint8
    assert dataset.y_train.dtype == np.int64
    assert dataset.origin == "synthetic" and dataset.class_names[0] == "synthetic_00" and dataset.num_classes == 100
    assert np.bincount(dataset.y_test, minlength=100).tolist() == [3] * 100
    train_counts = np.bincount(np.concatenate([dataset.y_train, dataset.y_val]), minlength=100)
    assert train_counts.tolist() == [10] * 100
    assert 20 < dataset.x_train.std() and dataset.x_train.min() < 30 and dataset.x_train.max() > 225


def test_synthetic_is_deterministic_for_a_seed():
    first = data.make_synthetic(200, 100, "fine", seed=5)
    again = data.make_synthetic(200, 100, "fine", seed=5)
    other = data.make_synthetic(200, 100, "fine", seed=6)
    for (x1, y1), (x2, y2) in zip(first[:2], again[:2]):
        assert x1.tobytes() == x2.tobytes() and y1.tobytes() == y2.tobytes()
    assert first[0][0].tobytes() != other[0][0].tobytes()


def test_synthetic_test_set_does_not_depend_on_train_size():
    _, test_small, _ = data.make_synthetic(100, 50, "fine", seed=0)
    _, test_large, _ = data.make_synthetic(900, 50, "fine", seed=0)
    assert test_small[0].tobytes() == test_large[0].tobytes()


def test_synthetic_coarse_has_20_classes():
    (_, y_train), (_, y_test), names = data.make_synthetic(200, 40, "coarse", seed=0)
    assert np.bincount(y_train).tolist() == [10] * 20 and len(names) == 20


def nearest_class_mean_accuracy(train, test, num_classes):
    (x_train, y_train), (x_test, y_test) = train, test
    flat_train = x_train.reshape(len(x_train), -1).astype(np.float32)
    flat_test = x_test.reshape(len(x_test), -1).astype(np.float32)
    means = np.stack([flat_train[y_train == c].mean(axis=0) for c in range(num_classes)])
    distances = (flat_test**2).sum(1)[:, None] - 2 * flat_test @ means.T + (means**2).sum(1)[None, :]
    return float((distances.argmin(axis=1) == y_test).mean())


def test_synthetic_is_learnable_from_pixels():
    train, test, _ = data.make_synthetic(1000, 500, "fine", seed=0)
    assert nearest_class_mean_accuracy(train, test, 100) > 0.5  # chance is 0.01


# ---------------------------------------------------------------- module hygiene


def test_importing_data_does_not_import_keras_or_tensorflow():
    code = "import sys, benchmark.data; print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------- source "keras" (offline)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache dir. KERAS_HOME is read once at keras import, so patch what it set."""
    keras = pytest.importorskip("keras")
    from keras.src.backend import config

    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setattr(config, "_KERAS_DIR", str(home))
    assert keras.src.backend.config.keras_home() == str(home)
    return home


@pytest.fixture
def no_network(monkeypatch):
    """Name resolution fails at once, as on this project's offline machines: never download here."""

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", offline)


def test_keras_source_fails_fast_offline_with_staging_advice(keras_home, no_network):
    started = time.monotonic()
    with pytest.raises(BenchmarkError) as caught:
        load_dataset(DataSpec(source="keras"))
    elapsed = time.monotonic() - started
    message = str(caught.value)
    archive = keras_home / "datasets" / "cifar-100-python-target_archive"
    assert message.startswith("CIFAR-100 could not be downloaded (")
    assert f"copy the official cifar-100-python.tar.gz to {archive}" in message
    assert "--data-dir /path/to/cifar-100-python" in message and "\n" not in message
    assert "needs no download: --experiment transfer" in message  # the way out that works offline
    assert "Name or service not known" in message
    assert elapsed < 5, f"offline failure took {elapsed:.1f}s"


def test_keras_source_rejects_a_staged_archive_with_the_wrong_hash(keras_home, no_network, cifar_sample_dir):
    archive = keras_home / "datasets" / "cifar-100-python-target_archive"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_sample_dir, arcname="cifar-100-python")
    with pytest.raises(BenchmarkError) as caught:
        load_dataset(DataSpec(source="keras"))
    message = str(caught.value)
    assert "hash did not match" in message and str(archive) in message
    assert not archive.exists()  # Keras deleted it before trying to download


def _fake_keras_load_data(calls: list):
    def load_data(label_mode="fine"):
        calls.append((label_mode, socket.getdefaulttimeout()))
        rng = np.random.default_rng(0)
        images = lambda n: rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)  # noqa: E731
        labels = lambda n: (np.arange(n) % 100).astype(np.uint8).reshape(n, 1)  # noqa: E731
        return (images(200), labels(200)), (images(100), labels(100))

    return load_data


def test_keras_source_reads_class_names_from_the_extracted_meta(keras_home, monkeypatch, cifar_sample_dir):
    import keras

    calls = []
    monkeypatch.setattr(keras.datasets.cifar100, "load_data", _fake_keras_load_data(calls))
    extracted = keras_home / "datasets" / "cifar-100-python-target" / "cifar-100-python"
    extracted.mkdir(parents=True)
    shutil.copy(cifar_sample_dir / "meta", extracted / "meta")
    dataset = load_dataset(DataSpec(source="keras"))
    assert dataset.origin == "keras"
    assert dataset.class_names[0] == "apple"
    assert dataset.sizes() == {"train": 180, "validation": 20, "test": 100}
    assert dataset.y_train.shape == (180,) and dataset.y_train.dtype == np.int64
    assert calls == [("fine", data.DOWNLOAD_SOCKET_TIMEOUT_S)]
    assert socket.getdefaulttimeout() is None  # restored after the download


def test_keras_source_falls_back_to_generic_names(keras_home, monkeypatch):
    import keras

    monkeypatch.setattr(keras.datasets.cifar100, "load_data", _fake_keras_load_data([]))
    dataset = load_dataset(DataSpec(source="keras"))
    assert dataset.class_names[:2] == ["class_00", "class_01"] and dataset.num_classes == 100


def test_cifar10_source_shares_the_keras_loader_and_its_offline_advice(keras_home, no_network):
    with pytest.raises(BenchmarkError) as caught:
        load_dataset(DataSpec(source="cifar10"))
    message = str(caught.value)
    archive = keras_home / "datasets" / "cifar-10-batches-py-target_archive"
    assert message.startswith("CIFAR-10 could not be downloaded (")
    assert f"copy the official cifar-10-python.tar.gz to {archive}" in message and "\n" not in message
    assert "--data-dir" not in message  # a cifar-100-python folder is no way to CIFAR-10
    assert "Name or service not known" in message


def test_cifar10_source_returns_official_shapes_and_its_ten_names(monkeypatch):
    keras = pytest.importorskip("keras")
    fake = ((np.zeros((4, 32, 32, 3), np.uint8), np.arange(4).reshape(-1, 1)),
            (np.zeros((2, 32, 32, 3), np.uint8), np.arange(2).reshape(-1, 1)))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: fake)
    (x, y), (xt, yt), names = data.load_keras_cifar("cifar10")
    assert x.shape == (4, 32, 32, 3) and y.tolist() == [0, 1, 2, 3] and yt.dtype == np.int64
    assert names[0] == "airplane" and names[-1] == "truck" and len(names) == 10


# ---------------------------------------------------------------- sources "folder" and "csv": own images


def png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def noise_image(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def flat_folder(root: Path, classes=("cat", "dog", "emu"), per_class: int = 10) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            png(root / name / f"{i:02d}.png", noise_image(100 * c + i))
    return root


def own(root: Path, **fields) -> DataSpec:
    return DataSpec(**{"source": "folder", "dir": root, "image_size": 8, **fields})


@pytest.fixture
def image_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BENCHMARK_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "images"


def pairs(x: np.ndarray, y: np.ndarray) -> list:
    return sorted(zip([image.tobytes() for image in x], y.tolist()))


def test_the_exported_sample_loads_as_a_folder_with_the_same_pixels_and_labels(tmp_path, image_cache, capsys):
    """export-sample, then source "folder" at 32 px: every split holds exactly the images and labels
    of source "sample" (the same validation images: the split is drawn per class, and each class's
    images keep their order). The order differs: the folder is read class by class."""
    from benchmark.cli import main

    assert main(["export-sample", str(tmp_path / "exported")]) == 0
    assert "wrote 1,117 train and 916 test images of 100 classes" in capsys.readouterr().out
    sample = load_dataset(DataSpec(source="sample", validation_fraction=0.2))
    folder = load_dataset(DataSpec(source="folder", dir=tmp_path / "exported", image_size=32, validation_fraction=0.2))
    assert folder.class_names == sample.class_names and folder.image_size == 32
    for split in ("train", "val", "test"):
        mine, theirs = getattr(folder, f"x_{split}"), getattr(sample, f"x_{split}")
        assert pairs(mine, getattr(folder, f"y_{split}")) == pairs(theirs, getattr(sample, f"y_{split}")), split
        assert not np.array_equal(mine, theirs), f"{split}: the order was expected to differ (class by class)"
    assert folder.duplicate_groups == 0 and folder.content_key is not None
    assert isinstance(folder.x_test, data.Rows)  # read from the image cache's file, not copied into memory


def test_export_sample_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    from benchmark.cli import main

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    assert main(["export-sample", str(tmp_path / "taken")]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err


def test_a_flat_folder_carves_a_stratified_test_split_then_validation(tmp_path, image_cache):
    loaded = load_dataset(own(flat_folder(tmp_path / "flat"), test_fraction=0.2, validation_fraction=0.25))
    assert loaded.sizes() == {"train": 18, "validation": 6, "test": 6}
    for labels in (loaded.y_train, loaded.y_val, loaded.y_test):
        assert np.bincount(labels).tolist() == [len(labels) // 3] * 3
    everything = pairs(np.concatenate([loaded.x_train, loaded.x_val, loaded.x_test]),
                       np.concatenate([loaded.y_train, loaded.y_val, loaded.y_test]))
    assert len(set(everything)) == 30  # disjoint and complete
    again = load_dataset(own(tmp_path / "flat", test_fraction=0.2, validation_fraction=0.25))
    assert np.array_equal(again.x_test, loaded.x_test) and again.content_key == loaded.content_key
    other = load_dataset(own(tmp_path / "flat", test_fraction=0.2, validation_fraction=0.25, seed=1))
    assert not np.array_equal(other.x_test, loaded.x_test) and other.content_key != loaded.content_key


def test_the_splits_of_a_flat_folder_are_read_from_the_image_cache_not_copied(tmp_path, image_cache):
    """A carved split (rows scattered over the cache) holds its row numbers, not its pixels: a
    batch is read from the cache's file when asked for, in the order asked."""
    loaded = load_dataset(own(flat_folder(tmp_path / "flat"), test_fraction=0.2, validation_fraction=0.25))
    (cache,) = image_cache.glob("images-8px-*")
    stored = np.load(cache / "images.npy")
    pixels_held = []
    for split in ("train", "val", "test"):
        rows = getattr(loaded, f"x_{split}")
        assert isinstance(rows, data.Rows) and rows.path == cache / "images.npy" and rows.shape[1:] == (8, 8, 3)
        assert np.all(np.diff(rows.index) > 0)  # in file order: reads go forward through the file
        pixels_held += [v.nbytes for v in vars(rows).values() if isinstance(v, np.ndarray) and v is not rows.index]
        np.testing.assert_array_equal(np.asarray(rows), stored[rows.index])
        backwards = np.arange(len(rows))[::-1]
        np.testing.assert_array_equal(rows[backwards], stored[rows.index[backwards]])
        np.testing.assert_array_equal(rows[2], stored[rows.index[2]])
        np.testing.assert_array_equal(rows[1:4], stored[rows.index[1:4]])
    assert pixels_held == []
    assert loaded.x_train.index.nbytes == 8 * 18  # 8 bytes a row, whatever the image size


def test_a_val_folder_replaces_the_carved_validation_split(tmp_path, image_cache):
    for s, (split, count) in enumerate((("train", 6), ("val", 2), ("test", 3))):
        for c, name in enumerate(("a", "b")):
            for i in range(count):  # a seed of its own per image: no chance copies
                png(tmp_path / "d" / split / name / f"{i}.png", noise_image(100 * s + 10 * c + i))
    loaded = load_dataset(own(tmp_path / "d"))
    assert loaded.sizes() == {"train": 12, "validation": 4, "test": 6}
    assert all(isinstance(x, data.Rows) for x in (loaded.x_train, loaded.x_val, loaded.x_test))
    without_val = tmp_path / "d" / "val"
    shutil.rmtree(without_val)
    assert load_dataset(own(tmp_path / "d", validation_fraction=0.5)).sizes() == {"train": 6, "validation": 6, "test": 6}


def test_a_csv_keeps_the_splits_it_names_and_carves_the_rest(tmp_path, image_cache):
    rows = ["path,label,split"]
    for i in range(20):
        png(tmp_path / "pics" / f"{i}.png", noise_image(i))
        split = "test" if i in (0, 1) else "train" if i < 6 else ""
        rows.append(f"pics/{i}.png,{'left' if i % 2 else 'right'},{split}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    loaded = load_dataset(DataSpec(source="csv", labels=tmp_path / "labels.csv", image_size=8, test_fraction=0.25,
                                   validation_fraction=0.25))
    # 14 rows without a split: 4 (0.25, rounded) to test; then 0.25 of the 4 + 10 training rows to validation
    assert loaded.sizes() == {"train": 10, "validation": 4, "test": 6}
    assert loaded.class_names == ["left", "right"] and loaded.origin == f"csv:{tmp_path / 'labels.csv'}"


def test_one_changed_image_changes_the_content_key_and_the_data_fingerprint(tmp_path, image_cache):
    from benchmark import study_identity

    root = flat_folder(tmp_path / "flat")
    before = load_dataset(own(root))
    png(root / "dog" / "03.png", noise_image(999))
    after = load_dataset(own(root))
    assert before.content_key != after.content_key
    assert study_identity.data_fingerprint(before) != study_identity.data_fingerprint(after)
    assert study_identity.data_fingerprint(after) == study_identity.data_fingerprint(load_dataset(own(root)))


def test_duplicates_across_splits_are_reported_and_dropped_from_the_training_side(tmp_path, image_cache):
    for s, (split, count) in enumerate((("train", 5), ("val", 2), ("test", 2))):
        for c, name in enumerate(("a", "b")):
            for i in range(count):  # a seed of its own per image (hash() of a str changes per process)
                png(tmp_path / "d" / split / name / f"{i}.png", noise_image(100 * s + 10 * c + i))
    test_image = tmp_path / "d" / "test" / "a" / "0.png"
    val_image = tmp_path / "d" / "val" / "b" / "1.png"
    shutil.copy(test_image, tmp_path / "d" / "train" / "a" / "0.png")  # train = test
    shutil.copy(test_image, tmp_path / "d" / "val" / "a" / "0.png")  # val = test
    shutil.copy(val_image, tmp_path / "d" / "train" / "b" / "4.png")  # train = val
    kept = load_dataset(own(tmp_path / "d"))
    assert kept.duplicate_groups == 2 and kept.dropped_duplicates == 0 and kept.sizes()["train"] == 10
    assert kept.duplicates.startswith("2 image(s) have identical copies in another split, e.g. test/a/0.png (test) = ")
    assert "\n" not in kept.duplicates
    dropped = load_dataset(own(tmp_path / "d", drop_duplicates=True))
    assert dropped.dropped_duplicates == 3
    assert dropped.sizes() == {"train": 8, "validation": 3, "test": 4}
    seen = {image.tobytes() for image in dropped.x_test}
    assert not seen & {image.tobytes() for image in np.concatenate([dropped.x_train, dropped.x_val])}
    assert not {i.tobytes() for i in dropped.x_val} & {i.tobytes() for i in dropped.x_train}
    assert dropped.content_key != kept.content_key


def test_subsets_of_own_images_are_stratified_per_split(tmp_path, image_cache):
    loaded = load_dataset(own(flat_folder(tmp_path / "flat"), subset=SubsetSpec(train=6, test=3)))
    assert loaded.sizes()["train"] == 6 and np.bincount(loaded.y_train).tolist() == [2, 2, 2]
    with pytest.raises(BenchmarkError, match="data.subset.train = 99 is larger than the train split"):
        load_dataset(own(tmp_path / "flat", subset=SubsetSpec(train=99)))


def test_the_images_are_decoded_once_into_the_image_cache(tmp_path, image_cache):
    root = flat_folder(tmp_path / "flat", per_class=4)
    load_dataset(own(root))
    assert len(list(image_cache.glob("images-8px-*"))) == 1
    load_dataset(own(root, image_size=16))
    assert len(list(image_cache.glob("images-*px-*"))) == 2
