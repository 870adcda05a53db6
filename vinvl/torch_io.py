"""Reading ``torch.save`` files (legacy and zip serialization) with or without torch installed.

Official Oscar/VinVL checkpoints and the official coco_ir caption files were written by
PyTorch 1.x. torch is only a test extra here, so a small restricted reader handles both
formats when torch is missing.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = ["TorchFileError", "load_torch_file", "read_torch_file", "save_torch_file"]


class TorchFileError(ValueError):
    """A file that is not a readable torch.save file; the message names it."""


# ``torch.<Name>Storage`` classes named in torch.save pickles, and their numpy element types.
_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _Storage:
    """A storage named in the pickle; its bytes are attached once they have been read."""

    def __init__(self, dtype) -> None:
        self.dtype = dtype
        self.data: Optional[bytes] = None

    def array_itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize

    def array(self) -> np.ndarray:
        if self.dtype == "bfloat16":  # the upper half of a float32
            raw = np.frombuffer(self.data, dtype="<u2").astype(np.uint32) << 16
            return raw.view(np.float32)
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype).newbyteorder("<"))


class _TensorRef:
    """What ``torch._utils._rebuild_tensor_v2`` would build: a strided view of a storage."""

    def __init__(self, storage: _Storage, offset: int, size: Sequence[int], stride: Sequence[int]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return np.array(flat[self.offset])
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride]
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    return _TensorRef(storage, storage_offset, size, stride)


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch.save file without torch, refusing every global but the few it needs."""

    def __init__(self, handle, storages: Dict[str, _Storage]) -> None:
        super().__init__(handle)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not a plain container or tensor")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (PyTorch < 1.0 checkpoints) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(_TORCH_STORAGE_DTYPES[storage_type])
        return self.storages[key]


def read_torch_file(path: str) -> Any:
    """Read a ``torch.save`` file without torch: the zip format (PyTorch >= 1.6) and the legacy
    one (magic number, protocol, sys info, the object, its storage keys, raw storages).

    Only plain containers, strings, numbers and tensors are accepted (tensors come back as numpy
    arrays), so a downloaded file cannot run code on load.
    """
    storages: Dict[str, _Storage] = {}
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
                if pkl is None:
                    raise TorchFileError(f"{path} is a zip file but not a torch.save archive (no data.pkl)")
                root = pkl[: -len("data.pkl")]
                byteorder = root + "byteorder"
                if byteorder in names and archive.read(byteorder).strip() != b"little":
                    raise TorchFileError(f"{path} was written on a big-endian machine; not supported")
                obj = _TorchUnpickler(io.BytesIO(archive.read(pkl)), storages).load()
                for key, storage in storages.items():
                    storage.data = archive.read(f"{root}data/{key}")
        else:
            with open(path, "rb") as handle:
                if pickle.load(handle) != _LEGACY_MAGIC:
                    raise TorchFileError(f"{path} is not a torch.save file (no zip archive, no legacy magic number)")
                pickle.load(handle)  # protocol version
                sys_info = pickle.load(handle)
                if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
                    raise TorchFileError(f"{path} was written on a big-endian machine; not supported")
                obj = _TorchUnpickler(handle, storages).load()
                for key in pickle.load(handle):
                    storage = storages[str(key)]
                    count = int.from_bytes(handle.read(8), "little")
                    storage.data = handle.read(count * storage.array_itemsize())
    except TorchFileError:
        raise
    except Exception as exc:
        raise TorchFileError(f"cannot read {path} as a torch.save file: {exc}") from exc
    return _materialize(obj)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _TensorRef):
        return obj.materialize()
    if isinstance(obj, Mapping):
        return type(obj)((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def load_torch_file(path: str) -> Any:
    """A ``torch.save`` file's object with tensors as numpy arrays: through torch when it is
    installed (``weights_only=True``), else through :func:`read_torch_file`."""
    try:
        import torch
    except ImportError:
        return read_torch_file(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt/foreign files
        raise TorchFileError(f"cannot read {path} as a torch.save file: {exc}") from exc
    return _tensors_to_numpy(loaded, torch)


def _tensors_to_numpy(obj: Any, torch) -> Any:
    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(obj, Mapping):
        return type(obj)((k, _tensors_to_numpy(v, torch)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_tensors_to_numpy(v, torch) for v in obj)
    return obj


def save_torch_file(obj: Any, path: str) -> None:
    """``torch.save`` a plain Python object (no tensors), with torch when installed.

    Without torch the legacy serialization is written (magic number, protocol, sys info, the
    object, an empty storage list), which ``torch.load`` reads as well.
    """
    try:
        import torch
    except ImportError:
        with open(path, "wb") as f:
            for part in (
                _LEGACY_MAGIC,
                _LEGACY_PROTOCOL,
                {"protocol_version": _LEGACY_PROTOCOL, "little_endian": True, "type_sizes": _TYPE_SIZES},
                obj,
                [],
            ):
                pickle.dump(part, f, protocol=2)
        return
    torch.save(obj, path)


_LEGACY_PROTOCOL = 1001
_TYPE_SIZES = {"short": 2, "int": 4, "long": 4}
