"""A GGUF file's metadata and tensor table, read in well under a second; tensors as memory-mapped views.

gguf-py's GGUFReader wraps every element of every metadata array (150k vocabulary
strings and as many merges for Qwen) in its own numpy view: 8 s for SmolLM2's
file and 20 s for the 0.5B Qwen's here. This reader keeps scalars and strings and
only skips over arrays, which the faithful recipe never needs (the tokenizer is
read by transformers).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.errors import SourceError

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# metadata value types: struct format of the scalars, 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_FLOATS = {0: np.float32, 1: np.float16, 30: np.uint16}  # F32, F16, BF16 (raw bits)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] is the innermost (K of a weight matrix)
    type_id: int
    offset: int             # from the start of the file
    nbytes: int

    @property
    def type_name(self) -> str:
        from gguf import GGMLQuantizationType
        try:
            return GGMLQuantizationType(self.type_id).name
        except ValueError:
            return f"type {self.type_id}"


class GGUFFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.fields, self.tensors = self._parse()
        except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
            raise SourceError(f"{self.path}: truncated or corrupt GGUF ({type(e).__name__}: {e})") from None
        size = len(self._map)
        end = max((t.offset + t.nbytes for t in self.tensors.values()), default=0)
        if not self.tensors or end > size:
            raise SourceError(f"{self.path}: truncated or corrupt GGUF (tensor data ends at byte {end:,}, "
                              f"file has {size:,})")

    def _parse(self):
        buf, pos = self._map, 0

        def take(fmt):
            nonlocal pos
            value = struct.unpack_from(fmt, buf, pos)[0]
            pos += struct.calcsize(fmt)
            return value

        def string():
            nonlocal pos
            n = take("<Q")
            pos += n
            if pos > len(buf):
                raise ValueError("string runs past the end of the file")
            return bytes(buf[pos - n:pos]).decode("utf-8")

        def value(kind):
            nonlocal pos
            if kind in _SCALARS:
                return take(_SCALARS[kind])
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                inner, count = take("<I"), take("<Q")
                if inner in _SCALARS:
                    pos += count * struct.calcsize(_SCALARS[inner])
                else:
                    for _ in range(count):
                        value(inner)
                return None  # arrays are skipped (vocabulary, merges): see the module docstring
            raise ValueError(f"unknown metadata type {kind}")

        if bytes(buf[:4]) != MAGIC:
            raise SourceError(f"{self.path}: not a GGUF file (starts with {bytes(buf[:4])!r}, expected {MAGIC!r})")
        pos = 4
        version = take("<I")
        if version < 2:
            raise SourceError(f"{self.path}: GGUF version {version} is too old; convert it again with llama.cpp")
        n_tensors, n_fields = take("<Q"), take("<Q")
        fields = {}
        for _ in range(n_fields):
            key = string()
            fields[key] = value(take("<I"))
        infos = []
        for _ in range(n_tensors):
            name = string()
            dims = tuple(take("<Q") for _ in range(take("<I")))
            infos.append((name, dims, take("<I"), take("<Q")))
        alignment = int(fields.get("general.alignment") or DEFAULT_ALIGNMENT)
        start = pos + (-pos) % alignment
        tensors = {name: TensorInfo(name, dims, kind, start + offset, _nbytes(kind, dims))
                   for name, dims, kind, offset in infos}
        return fields, tensors

    def field(self, key: str, default=None):
        value = self.fields.get(key)
        return default if value is None else value

    def data(self, name: str) -> np.ndarray:
        """A read-only view of the tensor: [N, bytes per row] uint8 for block types, [N, K] (or [K])
        of its float type otherwise. Pages are read as they are touched."""
        t = self.tensors[name]
        k, rows = t.shape[0], int(np.prod(t.shape[1:], dtype=np.int64))
        if t.type_id in _FLOATS:
            array = np.frombuffer(self._map, _FLOATS[t.type_id], count=k * rows, offset=t.offset)
            return array.reshape(rows, k) if len(t.shape) > 1 else array
        return np.frombuffer(self._map, np.uint8, count=t.nbytes, offset=t.offset).reshape(rows, -1)

    def release(self, name: str) -> None:
        """Drop the tensor's pages from this process (they stay in the page cache and are read back
        if touched again): a model read tensor by tensor then never counts as resident all at once."""
        start, length = _page_range(self.tensors[name].offset, self.tensors[name].nbytes)
        if length and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, start, length)


def _page_range(offset: int, nbytes: int) -> tuple[int, int]:
    """The whole pages inside [offset, offset + nbytes): (start, length)."""
    start = offset + (-offset) % mmap.PAGESIZE
    end = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    return start, max(0, end - start)


def _nbytes(type_id: int, dims: tuple[int, ...]) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(type_id)]
    except (ValueError, KeyError):
        raise ValueError(f"unknown tensor type {type_id}") from None
    return int(np.prod(dims, dtype=np.int64)) // block * size
