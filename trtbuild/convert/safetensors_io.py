"""Streaming safetensors I/O: read one tensor at a time without mmap, write a file tensor by tensor.

The `safetensors` library validates a file's header (`safe_open`); the bytes of each tensor are
then read with plain `pread`s, so the converter's resident memory holds one tensor at a time rather
than every page of a memory-mapped multi-GB file. The writer knows every name, dtype and shape
up front (the rank layout), writes the header first and then appends each tensor as it is
produced: the output is a standard safetensors file (checked by `safe_open` in the tests).
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from trtbuild.common.errors import CheckpointError

if TYPE_CHECKING:
    import torch

_CHUNK = 8 << 20

# safetensors dtype code <-> torch dtype name
_ST_TO_TORCH = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}
_TORCH_TO_ST = {v: k for k, v in _ST_TO_TORCH.items()}


@dataclass(frozen=True)
class TensorEntry:
    dtype: str  # torch dtype name, e.g. "bfloat16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_index(path: Path) -> dict[str, TensorEntry]:
    """Validate `path` with the safetensors library and return {name: entry} from its header."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt"):
            pass
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
    except Exception as e:  # the library's errors are not one class; name the file and the reason
        raise CheckpointError(f"corrupted safetensors file {path.name}: {e}") from None
    index: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_TO_TORCH:
            raise CheckpointError(f"{path.name}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        index[name] = TensorEntry(_ST_TO_TORCH[info["dtype"]], tuple(info["shape"]), 8 + n + start, 8 + n + end)
    return index


def read_tensor(f: BinaryIO, entry: TensorEntry) -> torch.Tensor:
    """Read one tensor's bytes from an open file (no mmap)."""
    import torch

    dtype = getattr(torch, entry.dtype)
    nbytes = entry.end - entry.start
    buf = bytearray(nbytes)
    f.seek(entry.start)
    if f.readinto(buf) != nbytes:
        raise CheckpointError(f"{getattr(f, 'name', 'file')}: truncated data for a tensor")
    if nbytes == 0:
        return torch.empty(entry.shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(entry.shape)


class StreamingWriter:
    """Write a safetensors file whose tensors arrive one at a time, in the planned order.

    plan: ordered {name: (torch dtype name, shape)}. `write(name, tensor)` must be called for
    every planned name, in order, with a matching dtype and shape; `close()` checks completeness.
    """

    def __init__(self, path: Path, plan: dict[str, tuple[str, tuple[int, ...]]]) -> None:
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        self._order: list[tuple[str, str, tuple[int, ...]]] = []
        for name, (dtype, shape) in plan.items():
            size = _itemsize(dtype)
            for s in shape:
                size *= s
            header[name] = {"dtype": _TORCH_TO_ST[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
            self._order.append((name, dtype, tuple(shape)))
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment
        self._f = open(path, "wb")
        self._hash = hashlib.sha256()
        self._emit(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def _emit(self, data) -> None:
        self._hash.update(data)
        view = memoryview(data)
        for i in range(0, len(view), _CHUNK):  # 8 MiB writes: ~3x faster than one huge write here
            self._f.write(view[i:i + _CHUNK])

    @property
    def sha256(self) -> str:
        """Hex sha256 of everything written so far (the whole file once closed)."""
        return self._hash.hexdigest()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        exp_name, dtype, shape = self._order[self._next]
        if name != exp_name:
            raise CheckpointError(f"writer expected tensor {exp_name!r}, got {name!r}")
        if str(tensor.dtype).removeprefix("torch.") != dtype or tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"tensor {name!r}: expected {dtype}{list(shape)}, got "
                f"{str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}")
        import torch

        t = tensor.detach().contiguous().cpu()
        if t.numel():
            self._emit(memoryview(t.view(-1).view(torch.uint8).numpy()))
        self._next += 1

    def close(self) -> None:
        self._f.close()
        if self._next != len(self._order):
            missing = [n for n, _, _ in self._order[self._next:]]
            raise CheckpointError(f"writer closed with {len(missing)} tensors unwritten: {missing[:5]}")

    def abort(self) -> None:
        self._f.close()


def _itemsize(dtype: str) -> int:
    return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
            "int16": 2, "int8": 1, "uint8": 1, "bool": 1}[dtype]


def sha256_file(path: Path, stop: threading.Event | None = None, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks; gives up early (returns "") once `stop` is set."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if stop is not None and stop.is_set():
                return ""
            h.update(block)
    return h.hexdigest()
