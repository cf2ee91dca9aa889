"""Reads PyTorch state dicts (.pth) into numpy arrays without torch, and without running anything
the file asks for.

Two layouts exist. The zip layout (torch >= 1.6) is an archive <prefix>/data.pkl, the pickled
dict, plus one raw record <prefix>/data/<key> per storage (and <prefix>/byteorder). The legacy
layout is five pickles in a row (magic number, protocol version, sys info, the dict, the list of
storage keys) followed, for each key in that order, by an int64 element count and the raw bytes.

In both, each tensor pickles as a call torch._utils._rebuild_tensor_v2(storage, offset, size,
stride, ...) whose storage is a persistent id ('storage', torch.FloatStorage, key, location,
numel). The unpickler here resolves those few names to stand-ins of its own that only check and
record the arguments, and refuses every other name before anything is called.
"""

import hashlib
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from benchmark.errors import BenchmarkError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "FloatStorage": "f4", "DoubleStorage": "f8", "HalfStorage": "f2", "BFloat16Storage": "u2",
    "LongStorage": "i8", "IntStorage": "i4", "ShortStorage": "i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?",
}  # fmt: skip
MESSAGES = {
    "damaged": "PyTorch checkpoint {path} is truncated or damaged ({detail}); download or reinstall it",
    "foreign": "{path} is not a PyTorch checkpoint ({detail}); pass a .pth file written by torch.save",
    "not a state dict": "PyTorch checkpoint {path} does not hold a state dict ({detail}); save model.state_dict() instead",
    "refused": "refusing to load {path}: it asks to run {detail}, which a PyTorch state dict never does; "
    "use a checkpoint from a trusted source",
    "unsupported": "refusing to load {path}: it asks for {detail}, which this reader does not support (it reads "
    "state dicts of dense tensors); re-save it with torch.save(model.state_dict(), ...)",
    "unsafe": "refusing to load {path}: {detail}; use a checkpoint from a trusted source",
}


class CheckpointError(BenchmarkError):
    """A PyTorch checkpoint that is missing, damaged, foreign or unsafe; one line naming file and fix."""


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with _open(Path(path)) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """name -> array from a torch.save'd state dict, in file order; dtypes as stored (float32 stays
    float32, num_batches_tracked is int64), except bfloat16, which numpy lacks: widened to float32."""
    path = Path(path)
    with _open(path) as handle:
        head = handle.read(4)
        handle.seek(0)
        try:
            if not head:
                raise _Problem("it is empty")
            if head == b"PK\x03\x04":
                state, stored, byteorder = _read_zip(handle)
            elif head[:1] == pickle.PROTO:  # torch always pickles at protocol 2 or later
                state, stored, byteorder = _read_legacy(handle)
            else:
                raise _Problem("it is neither a zip archive nor a pickle", "foreign")
            return _arrays(_tensors_of(state), stored, byteorder)
        except _Problem as problem:
            raise CheckpointError(problem.message(path)) from None
        except Exception as e:  # whatever else a malformed pickle or zip provokes
            raise CheckpointError(_Problem(f"{type(e).__name__}: {e}").message(path)) from None


def _open(path: Path):
    if path.is_dir():
        raise CheckpointError(f"PyTorch checkpoint {path} is a directory, not a file; pass the .pth file")
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise CheckpointError(f"PyTorch checkpoint {path} does not exist; check the path") from None
    except OSError as e:
        raise CheckpointError(f"cannot read PyTorch checkpoint {path} ({e.strerror}); check its permissions") from None


class _Problem(Exception):
    """Raised where the path is not known; read_state_dict words it with MESSAGES[kind]."""

    def __init__(self, detail: str, kind: str = "damaged"):
        super().__init__(detail)
        self.detail, self.kind = detail, kind

    def message(self, path: Path) -> str:
        detail = " ".join(self.detail.split())
        return MESSAGES[self.kind].format(path=path, detail=detail if len(detail) <= 200 else detail[:197] + "...")


def _expect(condition: bool, detail: str) -> None:
    if not condition:
        raise _Problem(detail)


# ---------------------------------------------------------------- stand-ins the pickles resolve to


def _refuse_build(self, state):
    # BUILD could otherwise rewrite a checked tensor, or a storage type that every later load shares;
    # the stand-ins are tuples as well, which BUILD cannot change even without this
    raise _Problem("it asks to overwrite a tensor, storage or torch function, which a state dict never does", "unsafe")


class _StorageType(NamedTuple):
    name: str
    dtype: np.dtype  # raw element type; the byte order is applied when the bytes are read
    __setstate__ = _refuse_build


class _StorageRef(NamedTuple):
    key: str
    type: _StorageType
    base: int  # element offset into the root storage (legacy storage views), else 0
    numel: int  # elements visible through this reference
    __setstate__ = _refuse_build


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    __setstate__ = _refuse_build


class _Rebuild(NamedTuple):
    """Stands in for one torch._utils function."""

    build: Callable[..., _TensorRef]
    __setstate__ = _refuse_build

    def __call__(self, *args) -> _TensorRef:
        return self.build(*args)


class _Dict(dict):
    """Stands in for collections.OrderedDict (dicts keep order anyway)."""

    def __setstate__(self, state):
        pass  # torch's OrderedDict carries _metadata (module versions) here; arrays need none of it


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _rebuild_tensor(storage, offset, size, stride) -> _TensorRef:
    _expect(isinstance(storage, _StorageRef), f"a tensor's storage is a {type(storage).__name__}")
    _expect(_is_count(offset), f"a tensor's storage offset is {offset!r}, not a non-negative int")
    _expect(type(size) is tuple and type(stride) is tuple and len(size) == len(stride)
            and all(map(_is_count, size + stride)),
            f"a tensor's size {size!r} and stride {stride!r} are not tuples of non-negative ints of one length")
    extent = offset if 0 in size else offset + 1 + sum((n - 1) * step for n, step in zip(size, stride))
    _expect(extent <= storage.numel, f"a tensor needs {extent} elements of storage {storage.key!r}, which holds {storage.numel}")
    return _TensorRef(storage, offset, size, stride)


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks, metadata=None) -> _TensorRef:
    _expect(type(requires_grad) is bool and isinstance(hooks, dict), "a tensor's requires_grad or hooks are malformed")
    return _rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad, hooks) -> _TensorRef:
    _expect(isinstance(data, _TensorRef), f"a parameter holds a {type(data).__name__}, not a tensor")
    return data


ALLOWED = {
    ("collections", "OrderedDict"): _Dict,
    ("torch._utils", "_rebuild_tensor"): _Rebuild(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Rebuild(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Rebuild(_rebuild_parameter),
} | {("torch", name): _StorageType(name, np.dtype(code)) for name, code in STORAGE_DTYPES.items()}


class _Unpickler(pickle.Unpickler):
    """Resolves only ALLOWED names; storage ids go to `storages` (key -> root type and numel)."""

    def __init__(self, file, storages: dict[str, tuple[_StorageType, int]] | None = None):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[module, name]
        except KeyError:
            kind = "unsupported" if module.split(".")[0] in ("torch", "__torch__") else "refused"
            raise _Problem(f"{module}.{name}", kind) from None

    def persistent_load(self, pid) -> _StorageRef:
        _expect(self.storages is not None, "a persistent id outside the state dict")
        _expect(type(pid) is tuple and len(pid) in (5, 6) and pid[0] == "storage", f"persistent id {pid!r} is not a storage")
        storage_type, key, location, numel = pid[1:5]
        _expect(isinstance(storage_type, _StorageType), f"storage type {storage_type!r} is not a torch storage class")
        _expect(type(key) is str and type(location) is str and _is_count(numel), f"storage id {pid!r} is malformed")
        root_type, root_numel = self.storages.setdefault(key, (storage_type, numel))
        _expect(root_numel * root_type.dtype.itemsize == numel * storage_type.dtype.itemsize,
                f"storage {key!r} is declared with two sizes")
        view = pid[5] if len(pid) == 6 else None  # legacy storage views: (view key, offset, numel) into the root
        if view is None:
            return _StorageRef(key, storage_type, 0, numel)
        _expect(type(view) is tuple and len(view) == 3 and _is_count(view[1]) and _is_count(view[2])
                and view[1] + view[2] <= numel, f"storage view {view!r} does not fit storage {key!r}")
        return _StorageRef(key, storage_type, view[1], view[2])


# ---------------------------------------------------------------- the two layouts


def _read_legacy(handle) -> tuple[object, dict[str, bytes], str]:
    try:
        magic = _Unpickler(handle).load()
    except _Problem:  # a refused name, above all
        raise
    except Exception:
        raise _Problem("it is a pickle but not a torch.save stream", "foreign") from None
    if magic != LEGACY_MAGIC:
        raise _Problem("it is a pickle without torch's magic number", "foreign")
    version = _Unpickler(handle).load()
    _expect(version == LEGACY_PROTOCOL, f"legacy protocol version {version!r}, expected {LEGACY_PROTOCOL}")
    sys_info = _Unpickler(handle).load()
    _expect(isinstance(sys_info, dict) and type(sys_info.get("little_endian")) is bool, "malformed sys info")
    storages: dict[str, tuple[_StorageType, int]] = {}
    state = _Unpickler(handle, storages).load()
    keys = _Unpickler(handle).load()
    _expect(type(keys) is list and sorted(keys) == sorted(storages), "the storage list does not match the tensors")
    stored = {key: _legacy_storage(handle, key, *storages[key]) for key in keys}
    return state, stored, "<" if sys_info["little_endian"] else ">"


def _legacy_storage(handle, key: str, storage_type: _StorageType, numel: int) -> bytes:
    header = handle.read(8)
    _expect(len(header) == 8, f"storage {key!r} is cut off before its size")
    _expect(struct.unpack("<q", header)[0] == numel, f"storage {key!r} has another size than declared")
    nbytes = numel * storage_type.dtype.itemsize
    left = os.fstat(handle.fileno()).st_size - handle.tell()  # checked first: read(n) allocates n bytes
    _expect(nbytes <= left, f"storage {key!r} holds {left} of its {nbytes} bytes")
    return handle.read(nbytes)


def _read_zip(handle) -> tuple[object, dict[str, bytes], str]:
    with zipfile.ZipFile(handle) as archive:
        names = set(archive.namelist())
        pickles = [name for name in names if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise _Problem(f"a zip archive with {len(pickles)} <name>/data.pkl records, expected 1", "foreign")
        prefix = pickles[0].removesuffix("data.pkl")
        storages: dict[str, tuple[_StorageType, int]] = {}
        with archive.open(pickles[0]) as pickled:
            state = _Unpickler(pickled, storages).load()
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        _expect(byteorder in ("little", "big"), f"byteorder record says {byteorder!r}")
        stored = {key: _zip_storage(archive, prefix + "data/" + key, numel * storage_type.dtype.itemsize)
                  for key, (storage_type, numel) in storages.items()}
    return state, stored, "<" if byteorder == "little" else ">"


def _zip_storage(archive: zipfile.ZipFile, name: str, nbytes: int) -> bytes:
    try:
        size = archive.getinfo(name).file_size
    except KeyError:
        raise _Problem(f"record {name} is missing") from None
    _expect(size == nbytes, f"record {name} holds {size} bytes, expected {nbytes}")
    return archive.read(name)  # checks the CRC


# ---------------------------------------------------------------- arrays


def _tensors_of(state) -> dict[str, _TensorRef]:
    if not isinstance(state, dict):
        raise _Problem(f"it holds a {type(state).__name__}, not a dict", "not a state dict")
    for name, value in state.items():
        if type(name) is not str or not isinstance(value, _TensorRef):
            raise _Problem(f"entry {name!r} is a {type(value).__name__}, not a tensor", "not a state dict")
    return dict(state)


def _arrays(tensors: dict[str, _TensorRef], stored: dict[str, bytes], byteorder: str) -> dict[str, np.ndarray]:
    # overlapping views (stride 0) can name far more elements than the file holds; a few times the
    # stored bytes covers tied weights, anything beyond is a memory bomb
    needed = sum(math.prod(t.size) * t.storage.type.dtype.itemsize for t in tensors.values())
    budget = 4 * sum(len(data) for data in stored.values()) + (1 << 20)
    if needed > budget:
        raise _Problem(f"its tensors would take {needed} bytes, more than {budget} from its stored data", "unsafe")
    return {name: _array(tensor, stored[tensor.storage.key], byteorder) for name, tensor in tensors.items()}


def _array(tensor: _TensorRef, data: bytes, byteorder: str) -> np.ndarray:
    storage = tensor.storage
    dtype = storage.type.dtype.newbyteorder(byteorder)
    flat = np.frombuffer(data, dtype, count=storage.numel, offset=storage.base * dtype.itemsize)
    strides = tuple(step * dtype.itemsize for step in tensor.stride)
    view = np.lib.stride_tricks.as_strided(flat[tensor.offset :], tensor.size, strides, writeable=False)
    array = view.astype(dtype.newbyteorder("="), order="C")
    if storage.type.name == "BFloat16Storage":  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array
