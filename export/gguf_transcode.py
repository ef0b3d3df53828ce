"""GGUF quant blocks -> MatMulNBits / GatherBlockQuantized weights, without re-quantizing.

Every GGUF block type used by llama.cpp's common files is, per weight,

    w[n, k] = scale[n, k // block] * (q[n, k] - zero) + offset[n, k // 32]

with small unsigned integers q, one constant zero point per type and an optional
per-32 additive offset (the "min" of Q4_1, Q5_1 and the K-quants). `decode` reads a
tensor's raw blocks into that form (`Blocks`); `encode` lays it out for ONNX
Runtime's MatMulNBits:

- q of at most 4 bits: one 4-bit plane; scales in fp32 (fp16 d times a 6-bit
  sub-scale is exact in fp32), a uint8 zero point per block;
- q of 5-8 bits, layout "planes": q = 16*hi + lo, so the weight is the sum of
  two 4-bit planes (scale s on lo, 16*s on hi), laid side by side along K and
  multiplied with [x, x]. ONNX Runtime 1.32's fp32 MatMulNBits kernel exists for
  4 bits only (8 bits dequantizes the whole matrix every call: ~70x slower here);
- layout "int8": q in one 8-bit MatMulNBits, fast only with int8 activations
  (accuracy_level 4), which is where the exporter uses it;
- the offsets never fit the kernel (its zero points are integers): they become a
  side product, (x summed over 32-wide blocks) @ offset^T, a [K/32, N] fp32 MatMul.

Float zero points would fit the offsets into MatMulNBits, but that path dequantizes
every call too (80 ms against 1.1 ms for a 1536x8960 weight, one row, fp32 compute).
The float64 dequantization of `Blocks` is the reference the exported graph is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..contract.errors import SourceError

QK_K = 256  # weights per K-quant super-block
OFFSET_BLOCK = 32  # the offsets' block, along K


@dataclass
class Blocks:
    """w[n, k] = scale[n, k // block] * (q[n, k] - zero) + offset[n, k // 32], for rows n of a tensor."""
    q: np.ndarray                 # uint8 [N, K], values < 2**bits
    bits: int                     # 4, 5, 6 or 8: the range of q
    block: int                    # weights per scale along K: 16 or 32
    scale: np.ndarray             # float32 [N, K // block]
    zero: int                     # one zero point for the whole tensor
    offset: np.ndarray | None     # float32 [N, K // 32], or None

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    def dequantize(self) -> np.ndarray:
        """The weights in float64 [N, K]: the reference the graph is checked against."""
        n, k = self.q.shape
        w = (self.q.astype(np.float64) - self.zero).reshape(n, k // self.block, self.block)
        w = (w * self.scale.astype(np.float64)[:, :, None]).reshape(n, k)
        if self.offset is not None:
            w = (w.reshape(n, k // OFFSET_BLOCK, OFFSET_BLOCK)
                 + self.offset.astype(np.float64)[:, :, None]).reshape(n, k)
        return w


# --- GGUF block layouts (ggml-quants.c; gguf-py's quants.py dequantizes the same way) -----------

def _f16(raw: np.ndarray) -> np.ndarray:
    """[rows, 2] bytes -> float32 [rows]."""
    return np.ascontiguousarray(raw).view(np.float16)[:, 0].astype(np.float32)


def _nibbles(qs: np.ndarray, group: int) -> np.ndarray:
    """Bytes [b, group/2 * m] holding element j in the low nibble and j + group/2 in the high one,
    per run of `group` elements -> uint8 [b, group * m]."""
    b = qs.shape[0]
    qs = qs.reshape(b, -1, 1, group // 2)
    return (qs >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1) & 0x0F).reshape(b, -1)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """[b, 4] bytes: a little-endian uint32 whose bit j belongs to element j -> uint8 [b, 32]."""
    bits = np.ascontiguousarray(qh).view(np.uint32)  # [b, 1]
    return ((bits >> np.arange(32, dtype=np.uint32)) & 1).astype(np.uint8)


def _q4_0(blocks):  # 18 bytes / 32: d, 16 bytes of nibbles; w = d * (q - 8)
    return _nibbles(blocks[:, 2:], 32), 4, 32, _f16(blocks[:, :2])[:, None], 8, None


def _q4_1(blocks):  # 20 bytes / 32: d, m, nibbles; w = d * q + m
    return _nibbles(blocks[:, 4:], 32), 4, 32, _f16(blocks[:, :2])[:, None], 0, _f16(blocks[:, 2:4])[:, None]


def _q5_0(blocks):  # 22 bytes / 32: d, qh (32 high bits), nibbles; w = d * (q - 16)
    q = _nibbles(blocks[:, 6:], 32) | (_high_bits(blocks[:, 2:6]) << 4)
    return q, 5, 32, _f16(blocks[:, :2])[:, None], 16, None


def _q5_1(blocks):  # 24 bytes / 32: d, m, qh, nibbles; w = d * q + m
    q = _nibbles(blocks[:, 8:], 32) | (_high_bits(blocks[:, 4:8]) << 4)
    return q, 5, 32, _f16(blocks[:, :2])[:, None], 0, _f16(blocks[:, 2:4])[:, None]


def _q8_0(blocks):  # 34 bytes / 32: d, int8 q; w = d * q = d * ((q + 128) - 128)
    q = (blocks[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return q, 8, 32, _f16(blocks[:, :2])[:, None], 128, None


def _k_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 bytes -> the 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K super-block."""
    b = packed.shape[0]
    d, m, m_d = np.split(packed.reshape(b, 3, 4), 3, axis=1)
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1).reshape(b, 8)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1).reshape(b, 8)
    return sc.astype(np.float32), mn.astype(np.float32)


def _q4_k(blocks):  # 144 bytes / 256: d, dmin, 12 scale bytes, 128 bytes of nibbles; w = d*sc*q - dmin*m
    d, dmin = _f16(blocks[:, :2])[:, None], _f16(blocks[:, 2:4])[:, None]
    sc, mn = _k_scales(blocks[:, 4:16])
    return _nibbles(blocks[:, 16:], 64), 4, 32, d * sc, 0, -(dmin * mn)


def _q5_k(blocks):  # 176 bytes / 256: d, dmin, scales, qh[32], qs[128]; w = d*sc*q - dmin*m
    d, dmin = _f16(blocks[:, :2])[:, None], _f16(blocks[:, 2:4])[:, None]
    sc, mn = _k_scales(blocks[:, 4:16])
    b = blocks.shape[0]
    high = (blocks[:, 16:48].reshape(b, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    q = _nibbles(blocks[:, 48:], 64) | (high.reshape(b, QK_K) << 4)
    return q, 5, 32, d * sc, 0, -(dmin * mn)


def _q6_k(blocks):  # 210 bytes / 256: ql[128], qh[64], int8 scales[16], d; w = d*sc*(q - 32)
    b = blocks.shape[0]
    low = _nibbles(blocks[:, :128], 128)  # [b, 256]: runs of 128 (64 low + 64 high nibbles)
    high = (blocks[:, 128:192].reshape(b, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = low | (high.reshape(b, QK_K) << 4)
    sc = blocks[:, 192:208].view(np.int8).astype(np.float32)
    return q, 6, 16, _f16(blocks[:, 208:210])[:, None] * sc, 32, None


# name -> (weights per block, bytes per block, decoder)
DECODERS = {
    "Q4_0": (32, 18, _q4_0), "Q4_1": (32, 20, _q4_1), "Q5_0": (32, 22, _q5_0), "Q5_1": (32, 24, _q5_1),
    "Q8_0": (32, 34, _q8_0), "Q4_K": (QK_K, 144, _q4_k), "Q5_K": (QK_K, 176, _q5_k), "Q6_K": (QK_K, 210, _q6_k),
}
FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED = tuple(DECODERS) + FLOAT_TYPES


def decode(type_name: str, raw: np.ndarray, k: int) -> Blocks:
    """Rows of a GGUF tensor (uint8 [N, bytes per row]) holding `k` weights each -> Blocks."""
    if type_name not in DECODERS:
        raise SourceError(f"GGUF block type {type_name} is not supported by the faithful recipe "
                         f"(supported: {', '.join(SUPPORTED)}); export with --quant int4 instead")
    per_block, nbytes, fn = DECODERS[type_name]
    n = raw.shape[0]
    assert raw.shape[1] == k // per_block * nbytes, (type_name, raw.shape, k)
    blocks = np.ascontiguousarray(raw).reshape(n * (k // per_block), nbytes)
    q, bits, block, scale, zero, offset = fn(blocks)
    return Blocks(q=q.reshape(n, k), bits=bits, block=block, scale=scale.reshape(n, k // block),
                  zero=zero, offset=None if offset is None else offset.reshape(n, k // OFFSET_BLOCK))


# --- MatMulNBits layouts ------------------------------------------------------------------------

@dataclass
class Encoded:
    """One linear layer's MatMulNBits inputs (+ the offsets' side product), rows n of the weight."""
    bits: int                     # MatMulNBits `bits`: 4 or 8
    block: int                    # MatMulNBits `block_size`
    planes: int                   # the input is [x] * planes along K (2 for q of 5-8 bits as two 4-bit planes)
    weight: np.ndarray            # uint8 [N, K * planes // block, block * bits // 8]
    scales: np.ndarray            # float32 [N, K * planes // block]
    zero_points: np.ndarray | None  # uint8 [N, ceil(K * planes // block * bits / 8)]; None: the kernel default
    offset: np.ndarray | None     # float32 [N, K // 32]


def pack4(values: np.ndarray) -> np.ndarray:
    """uint8 [..., 2m] of 4-bit values -> [..., m], element 2i in the low nibble."""
    return values[..., 0::2] | (values[..., 1::2] << 4)


def encode(blocks: Blocks, layout: str) -> Encoded:
    """Blocks -> MatMulNBits arrays. layout: "planes" (4-bit kernels only; fp32 compute is fast)
    or "int8" (8-bit kernels for q over 4 bits; fast with int8 activations)."""
    n, k = blocks.shape
    nb = k // blocks.block
    if blocks.bits <= 4:
        planes, bits = [(blocks.q, blocks.scale, blocks.zero)], 4
    elif layout == "planes":
        hi_zero, lo_zero = divmod(blocks.zero, 16)
        planes, bits = [(blocks.q & 0x0F, blocks.scale, lo_zero), (blocks.q >> 4, blocks.scale * 16, hi_zero)], 4
    elif layout == "int8":
        planes, bits = [(blocks.q, blocks.scale, blocks.zero)], 8
    else:
        raise ValueError(f"unknown layout {layout!r}")
    q = np.concatenate([p[0] for p in planes], axis=1) if len(planes) > 1 else planes[0][0]
    scales = np.concatenate([p[1] for p in planes], axis=1) if len(planes) > 1 else planes[0][1]
    zeros = np.repeat(np.array([p[2] for p in planes], np.uint8), nb)  # [blocks of one row]
    if bits == 4:
        q = pack4(q)
        default = np.all(zeros == 8)
        zeros = pack4(np.concatenate([zeros, np.zeros(len(zeros) % 2, np.uint8)]))
    else:
        default = np.all(zeros == 128)
    kp = k * len(planes)
    return Encoded(bits=bits, block=blocks.block, planes=len(planes),
                   weight=np.ascontiguousarray(q).reshape(n, kp // blocks.block, blocks.block * bits // 8),
                   scales=np.ascontiguousarray(scales, dtype=np.float32),
                   zero_points=None if default else np.ascontiguousarray(np.broadcast_to(zeros, (n, len(zeros)))),
                   offset=blocks.offset)


def default_zero_points(w: Encoded) -> np.ndarray:
    """The zero points MatMulNBits assumes when none are given (8 for 4 bits, 128 for 8), as an array."""
    count = w.scales.shape[1]
    zeros = np.full((w.weight.shape[0], count + (count % 2 if w.bits == 4 else 0)), 1 << (w.bits - 1), np.uint8)
    return pack4(zeros) if w.bits == 4 else zeros


def float_weight(type_name: str, data: np.ndarray) -> np.ndarray:
    """An unquantized GGUF tensor (F32/F16/BF16) as float32 (BF16 arrives as raw uint8 or uint16)."""
    if type_name == "BF16":
        raw = np.ascontiguousarray(data).view(np.uint16)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    assert type_name in ("F32", "F16"), type_name
    return np.asarray(data, dtype=np.float32)


@dataclass(frozen=True)
class Requant:
    """A compact recipe's encoding: 4-bit blocks of `block` weights, symmetric (the kernel's
    zero point 8) or with a fitted uint8 zero point per block."""
    block: int
    symmetric: bool

    def __str__(self) -> str:  # the manifest's layout record
        return f"int4-b{self.block}-{'sym' if self.symmetric else 'asym'}"


def requantize(w: np.ndarray, rq: Requant) -> Encoded:
    """float32 W [N, K] -> 4-bit MatMulNBits arrays by onnxruntime's quantizer. The block shrinks
    (halving) to one that divides K, so lookups (GatherBlockQuantized) need no padding."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits
    n, k = w.shape
    block = rq.block
    while k % block and block > 16:
        block //= 2
    nb = -(-k // block)
    q = np.zeros((n, nb, block // 2), np.uint8)
    scales = np.zeros(n * nb, np.float32)
    zeros = np.zeros(n * -(-nb // 2), np.uint8)
    quantize_matmul_4bits(q, np.ascontiguousarray(w.T, dtype=np.float32), scales, zeros, block, n, k, rq.symmetric)
    return Encoded(bits=4, block=block, planes=1, weight=q, scales=scales.reshape(n, nb),
                   zero_points=None if rq.symmetric else zeros.reshape(n, -1), offset=None)


def concat_rows(parts: list[Encoded]) -> Encoded:
    """Encoded weights stacked along N (row chunks of one tensor, or q/k/v fused into one product);
    all parts share bits, block and planes. A part without zero points or offsets gets the defaults."""
    first = parts[0]
    assert all((p.bits, p.block, p.planes) == (first.bits, first.block, first.planes) for p in parts)
    zeros = None
    if any(p.zero_points is not None for p in parts):
        zeros = np.concatenate([p.zero_points if p.zero_points is not None else default_zero_points(p)
                                for p in parts])
    offset = None
    if any(p.offset is not None for p in parts):
        width = next(p.offset.shape[1] for p in parts if p.offset is not None)
        offset = np.concatenate([p.offset if p.offset is not None else np.zeros((p.weight.shape[0], width), np.float32)
                                 for p in parts])
    return Encoded(bits=first.bits, block=first.block, planes=first.planes,
                   weight=np.concatenate([p.weight for p in parts]), scales=np.concatenate([p.scales for p in parts]),
                   zero_points=zeros, offset=offset)
