"""Read a Hugging Face checkpoint directory: config.json plus a lazy, name-addressed tensor source.

Weights come from `model.safetensors`, sharded safetensors (`model.safetensors.index.json`), or
PyTorch `.bin` files (single or `pytorch_model.bin.index.json`). `.bin` files are pickles and are
only ever opened with `torch.load(..., weights_only=True)`: a pickle that would run code is refused
before anything in it executes. Safetensors are preferred when both exist.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from trtbuild.convert.safetensors_io import TensorEntry, read_index, read_tensor
from trtbuild.common.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    import torch


class TensorSource(Protocol):
    """Name-addressed, lazily read tensors."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def get(self, name: str) -> torch.Tensor: ...
    def close(self) -> None: ...


class SafetensorsSource:
    """One or more safetensors files; each tensor is read on demand with plain reads."""

    def __init__(self, files: Iterable[Path]) -> None:
        self._files = sorted(set(files))
        self._where: dict[str, tuple[Path, TensorEntry]] = {}
        for path in self._files:
            for name, entry in read_index(path).items():
                if name in self._where:
                    raise CheckpointError(f"tensor {name!r} appears in both {self._where[name][0].name} and {path.name}")
                self._where[name] = (path, entry)
        self._handles: dict[Path, BinaryIO] = {}

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name][1].shape

    def get(self, name: str) -> torch.Tensor:
        path, entry = self._where[name]
        if path not in self._handles:
            self._handles[path] = open(path, "rb")
        return read_tensor(self._handles[path], entry)

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()


def load_bin(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    import torch

    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)  # legacy non-zip format
    except Exception as e:
        # torch's message is a page long and advises retrying with weights_only=False, which would run
        # the pickle's code: never passed on. The line naming a forbidden global is the useful one.
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        forbidden = next((ln for ln in lines if "GLOBAL" in ln or "global" in ln), None)
        detail = forbidden or next((ln for ln in lines if "weights_only" not in ln and "file an issue" not in ln
                                    and not ln.startswith("Check the documentation")), "")
        if isinstance(e, pickle.UnpicklingError) and (forbidden or _is_pickle(path)):
            raise CheckpointError(f"{path.name}: refused to unpickle (weights_only=True): {detail[:200]}") from None
        raise CheckpointError(f"{path.name}: not a safetensors file or a weights-only PyTorch checkpoint"
                              + (f" ({detail[:200]})" if detail else "")) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path.name}: does not hold a flat {{name: tensor}} state dict")
    return sd


def _is_pickle(path: Path) -> bool:
    """Starts as a pickle of protocol 2-5 (PROTO opcode), as torch's legacy format and plain pickles do."""
    with open(path, "rb") as f:
        head = f.read(2)
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


class DictSource:
    """Tensors already in memory (e.g. Medusa heads), under the names given."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self._tensors = tensors

    def names(self) -> list[str]:
        return list(self._tensors)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._tensors[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def close(self) -> None:
        pass


class TorchBinSource(DictSource):
    """PyTorch `.bin` state dicts, loaded with weights_only=True (and mmap where the format allows)."""

    def __init__(self, files: Iterable[Path]) -> None:
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted(set(files)):
            for name, t in load_bin(path).items():
                if name in tensors:
                    raise CheckpointError(f"tensor {name!r} appears in more than one .bin file")
                tensors[name] = t
        super().__init__(tensors)

    def close(self) -> None:
        self._tensors.clear()


class ChainedSource:
    """Several sources with disjoint names seen as one."""

    def __init__(self, *sources: TensorSource) -> None:
        self._owner: dict[str, TensorSource] = {}
        for src in sources:
            for name in src.names():
                if name in self._owner:
                    raise CheckpointError(f"tensor {name!r} appears in two inputs")
                self._owner[name] = src
        self._sources = sources

    def names(self) -> list[str]:
        return list(self._owner)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._owner[name].shape(name)

    def get(self, name: str) -> torch.Tensor:
        return self._owner[name].get(name)

    def close(self) -> None:
        for src in self._sources:
            src.close()


class MetaSource:
    """Shapes only, on the meta device: names and shapes of huge layouts without allocating weights."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: str = "bfloat16") -> None:
        self._shapes = dict(shapes)
        self._dtype = dtype

    def names(self) -> list[str]:
        return list(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        import torch

        return torch.empty(self._shapes[name], dtype=getattr(torch, self._dtype), device="meta")

    def close(self) -> None:
        pass


_REQUIRED = object()


def hf_field(hf: dict, key: str, kind: type[int] | type[float], default: object = _REQUIRED):
    """`hf[key]` as an int or float; absent or null gives `default` (an error if there is none)."""
    value = hf.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ConfigError(f"config.json lacks required field {key!r}")
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConfigError(f"config.json field {key!r} must be {'an integer' if kind is int else 'a number'}, "
                          f"got {value!r}")
    return kind(value)


@dataclass(frozen=True)
class HFCheckpoint:
    """A HF model directory: parsed config.json and the files its weights live in."""

    path: Path
    config: dict
    weight_files: tuple[Path, ...]
    weight_format: str  # "safetensors" | "bin"

    def open(self) -> TensorSource:
        if self.weight_format == "safetensors":
            return SafetensorsSource(self.weight_files)
        return TorchBinSource(self.weight_files)


def read_hf_dir(path: Path) -> HFCheckpoint:
    """Find config.json and the weight files of a HF directory; raise a clear error if absent."""
    if not path.is_dir():
        raise ConfigError(f"HF model directory not found: {path}")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{path} has no config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{cfg_path}: invalid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{cfg_path}: expected a JSON object")
    for fmt, single, index in (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                               ("bin", "pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (path / index).is_file():
            return HFCheckpoint(path, config, _files_from_index(path, index), fmt)
        if (path / single).is_file():
            return HFCheckpoint(path, config, (path / single,), fmt)
    raise ConfigError(f"{path} has no weights (model.safetensors[.index.json] or pytorch_model.bin[.index.json])")


def _files_from_index(path: Path, index_name: str) -> tuple[Path, ...]:
    try:
        weight_map = json.loads((path / index_name).read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_name}: not a valid shard index ({e})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"{index_name}: weight_map must map tensor names to file names")
    files = sorted({path / f for f in weight_map.values()})
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index_name} names shard files that do not exist: {', '.join(missing)}")
    return tuple(files)
