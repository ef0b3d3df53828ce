"""A GGUF decoder read straight from the memory-mapped file: its shape, and its tensors one at a time.

Used by the faithful recipe's graph builder (gguf_decoder.py) and by its float64
reference (gguf_reference.py); neither ever holds more than one weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract.errors import SourceError
from .gguf_file import GGUFFile
from .gguf_transcode import (FLOAT_TYPES, SUPPORTED, Encoded, Requant, concat_rows, decode, encode, float_weight,
                             requantize)

# Architectures whose GGUF graph we build ourselves, and whether llama.cpp's converter stored their
# q/k rows in the interleaved rotary order (llama's is permuted for GGML's "normal" RoPE; qwen2 keeps
# the Hugging Face order and uses GGML's NeoX RoPE).
ROPE_INTERLEAVED = {"llama": True, "qwen2": False}
CHUNK_WEIGHTS = 1 << 23  # weights decoded at a time: bounds the temporaries of one large matrix


@dataclass(frozen=True)
class DecoderConfig:
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_eps: float
    rope_theta: float
    rope_interleaved: bool
    context_length: int
    tied_embeddings: bool  # no output.weight: the LM head is the embedding table
    bos_token_id: int | None
    eos_token_id: int | None


class GGUFModel:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = GGUFFile(self.path)  # checks that every tensor lies inside the file
        self.tensors = self.file.tensors
        self.config = self._config()
        self._check_types()

    def field(self, key: str, default=None):
        return self.file.field(key, default)

    def _config(self) -> DecoderConfig:
        arch = self.field("general.architecture")
        where = f"{self.path.name}"
        if arch not in ROPE_INTERLEAVED:
            raise SourceError(f"{where}: the faithful GGUF recipe supports {', '.join(ROPE_INTERLEAVED)} "
                             f"models, not {arch!r}; export with --quant int4 instead")
        scaling = self.field(f"{arch}.rope.scaling.type")
        if (scaling not in (None, "none")) or "rope_freqs.weight" in self.tensors:
            raise SourceError(f"{where}: RoPE scaling ({scaling or 'rope_freqs.weight'}) is not supported by the "
                             "faithful GGUF recipe; export with --quant int4 instead")
        heads = int(self.field(f"{arch}.attention.head_count"))
        hidden = int(self.field(f"{arch}.embedding_length"))
        head_dim = int(self.field(f"{arch}.attention.key_length", hidden // heads))
        rotary = int(self.field(f"{arch}.rope.dimension_count", head_dim))
        if rotary != head_dim:
            raise SourceError(f"{where}: RoPE on {rotary} of {head_dim} head dimensions is not supported by the "
                             "faithful GGUF recipe; export with --quant int4 instead")
        return DecoderConfig(
            architecture=arch,
            num_layers=int(self.field(f"{arch}.block_count")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(self.field(f"{arch}.attention.head_count_kv", heads)),
            head_dim=head_dim,
            vocab_size=int(self.tensors["token_embd.weight"].shape[1]),
            rms_eps=float(self.field(f"{arch}.attention.layer_norm_rms_epsilon")),
            rope_theta=float(self.field(f"{arch}.rope.freq_base", 10000.0)),
            rope_interleaved=ROPE_INTERLEAVED[arch],
            context_length=int(self.field(f"{arch}.context_length")),
            tied_embeddings="output.weight" not in self.tensors,
            bos_token_id=_opt_int(self.field("tokenizer.ggml.bos_token_id")),
            eos_token_id=_opt_int(self.field("tokenizer.ggml.eos_token_id")),
        )

    def _check_types(self) -> None:
        """Every weight matrix is of a type we transcode: refused before any work, by name."""
        for t in self.tensors.values():
            if len(t.shape) == 2 and t.type_name not in SUPPORTED:
                raise SourceError(f"{self.path.name}: tensor {t.name} has GGUF block type {t.type_name}, which the "
                                  f"faithful recipe does not transcode (supported: {', '.join(SUPPORTED)}); "
                                  "export with --quant int4 instead")

    def has(self, name: str) -> bool:
        return name in self.tensors

    def type_of(self, name: str) -> str:
        return self.tensors[name].type_name

    def vector(self, name: str) -> np.ndarray:
        """A 1-D float tensor (norm weights, biases) as float32."""
        return float_weight(self.type_of(name), self.file.data(name).reshape(-1)).copy()

    def release(self, name: str) -> None:
        """Done reading `name` (see GGUFFile.release)."""
        self.file.release(name)

    def _rows(self, name: str):
        t = self.tensors[name]
        return t.type_name, self.file.data(name), int(t.shape[0])  # data: [N, bytes per row] or float [N, K]

    def encoded(self, name: str, layout: str | Requant) -> Encoded | np.ndarray:
        """The weight `name` [N, K] laid out for MatMulNBits: its own blocks transcoded (layout
        "planes" or "int8"; a float tensor stays float32 [N, K]), or re-quantized (a Requant)."""
        kind, data, k = self._rows(name)
        if kind in FLOAT_TYPES and not isinstance(layout, Requant):
            weight = float_weight(kind, data).reshape(-1, k).copy()
            self.file.release(name)
            return weight
        step = max(1, CHUNK_WEIGHTS // k)
        parts = [self._encode_rows(kind, data[i:i + step], k, layout) for i in range(0, data.shape[0], step)]
        self.file.release(name)
        return parts[0] if len(parts) == 1 else concat_rows(parts)

    @staticmethod
    def _encode_rows(kind: str, rows, k: int, layout: str | Requant) -> Encoded:
        if not isinstance(layout, Requant):
            return encode(decode(kind, rows, k), layout)
        if kind in FLOAT_TYPES:
            weight = float_weight(kind, rows).reshape(-1, k)
        else:
            weight = decode(kind, np.asarray(rows), k).dequantize().astype(np.float32)
        return requantize(weight, layout)

    def dequantized(self, name: str, rows=None) -> np.ndarray:
        """Float64 [len(rows), K] of `name` (rows: a slice or an index array; default all), the
        reference values (the GGUF's blocks, exactly)."""
        kind, data, k = self._rows(name)
        picked = data[rows] if rows is not None else data
        if kind in FLOAT_TYPES:
            weight = float_weight(kind, picked).reshape(-1, k).astype(np.float64)
        else:
            weight = decode(kind, np.asarray(picked), k).dequantize()
        if rows is None:
            self.file.release(name)
        return weight


def _opt_int(value) -> int | None:
    return None if value is None else int(value)
