"""A second graph for prefill: the decoder with its linear layers as int8 x int8 products.

Prefill is compute-bound, and CPUs multiply int8 matrices far faster in the quantized GEMM
kernels (MatMulInteger: VNNI, and AMX tiles where the CPU has them) than in MatMulNBits,
whose 4-bit blocks are unpacked per block. So each MatMulNBits of the decoder (not the LM
head: prefill needs one row of logits) becomes: activations quantized per row to uint8
(symmetric, scale max|x| / 127, zero point 128) times the *same* weights re-quantized per
output channel to int8, scaled back to float. Each row's result depends on that row alone,
so prefill in passes of any size gives the same KV. The weights are the bundle's own
(dequantized from its blocks), never the source's, so prefill computes the bundle's model;
the difference to the decode graph is int8 rounding of weights already rounded to 4 bits.

The graph shares every other initializer with model.onnx (same external data file) and
adds `PREFILL_DATA` for the int8 weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..contract.manifest import Manifest
from .onnx_graph import MS, WeightFile

PREFILL_MODEL = "model.prefill.onnx"
PREFILL_DATA = PREFILL_MODEL + ".data"


def dequantize_nbits(q: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None,
                     n: int, k: int, bits: int, block: int) -> np.ndarray:
    """W [N, K] float32 of MatMulNBits' blocks: q [N, blocks, block*bits/8] uint8 (low bits first),
    scales [N*blocks], zero_points packed like q's rows (None: the midpoint 2^(bits-1))."""
    blocks = -(-k // block)
    q = q.reshape(n, blocks, -1)
    if bits == 4:
        values = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(n, blocks, block)
    elif bits == 8:
        values = q.reshape(n, blocks, block)
    else:
        raise ValueError(f"{bits}-bit MatMulNBits weights have no int8 prefill form")
    if zero_points is None:
        zeros = np.full((n, blocks), 1 << (bits - 1), np.float32)
    elif bits == 4:
        packed = zero_points.reshape(n, -1)
        zeros = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
    else:
        zeros = zero_points.reshape(n, blocks).astype(np.float32)
    w = (values.astype(np.float32) - zeros[:, :, None]) * scales.reshape(n, blocks, 1).astype(np.float32)
    return w.reshape(n, blocks * block)[:, :k]


def per_channel_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W [N, K] -> (W^T as int8 [K, N], scale [N]) with w ~= int8 * scale per output channel."""
    scale = np.abs(w).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q.T), scale


class _Rewriter:
    """Replaces MatMulNBits nodes with the row-quantized int8 product, one weight at a time."""

    def __init__(self, model: onnx.ModelProto, base: Path, store: WeightFile):
        self.graph = model.graph
        self.base = base
        self.store = store
        self.inits = {t.name: t for t in self.graph.initializer}
        self.quantized: dict[str, tuple[str, str]] = {}  # activation -> (uint8 rows, row scales)
        self.new_inits: list[onnx.TensorProto] = []
        self.consts: dict[str, str] = {}

    def array(self, name: str) -> np.ndarray:
        """An initializer's values, read from its external data file at its offset (or inline)."""
        tensor = self.inits[name]
        if tensor.data_location != TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor)
        info = {entry.key: entry.value for entry in tensor.external_data}
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        count = int(np.prod(tensor.dims)) if tensor.dims else 1
        with open(self.base / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            values = np.frombuffer(f.read(count * dtype.itemsize), dtype)
        if values.size != count:
            raise ValueError(f"{info['location']} ends inside {name}")
        return values.reshape(tuple(tensor.dims))

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in self.consts:
            self.new_inits.append(numpy_helper.from_array(value, f"/prefill/{name}"))
            self.consts[name] = f"/prefill/{name}"
        return self.consts[name]

    def rows(self, x: str, nodes: list) -> tuple[str, str]:
        """x [.., K] float -> (uint8 x / scale + 128, scale [.., 1]), scale = max|x| / 127 per row."""
        if x not in self.quantized:
            p = f"/prefill{x}"
            nodes += [
                helper.make_node("Abs", [x], [f"{p}/abs"], f"{p}/abs"),
                helper.make_node("ReduceMax", [f"{p}/abs", self.const("last_axis", np.array([-1], np.int64))],
                                 [f"{p}/max"], f"{p}/max", keepdims=1),
                helper.make_node("Mul", [f"{p}/max", self.const("inv127", np.array(1 / 127, np.float32))],
                                 [f"{p}/scale0"], f"{p}/scale0"),
                helper.make_node("Max", [f"{p}/scale0", self.const("tiny", np.array(1e-30, np.float32))],
                                 [f"{p}/scale"], f"{p}/scale"),
                helper.make_node("Div", [x, f"{p}/scale"], [f"{p}/scaled"], f"{p}/scaled"),
                helper.make_node("Round", [f"{p}/scaled"], [f"{p}/rounded"], f"{p}/rounded"),
                helper.make_node("Add", [f"{p}/rounded", self.const("offset", np.array(128, np.float32))],
                                 [f"{p}/shifted"], f"{p}/shifted"),
                helper.make_node("Cast", [f"{p}/shifted"], [f"{p}/u8"], f"{p}/u8", to=TensorProto.UINT8),
            ]
            self.quantized[x] = (f"{p}/u8", f"{p}/scale")
        return self.quantized[x]

    def replace(self, node: onnx.NodeProto, nodes: list) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        inputs = list(node.input) + [""] * (6 - len(node.input))
        a, q, scales, zeros, _g_idx, bias = inputs[:6]
        w = dequantize_nbits(self.array(q), self.array(scales), self.array(zeros) if zeros else None,
                             attrs["N"], attrs["K"], attrs.get("bits", 4), attrs["block_size"])
        w8, w_scale = per_channel_int8(w)
        name = node.name or node.output[0]
        b8 = self.store.tensor(f"{name}.int8", w8)
        bs = self.store.tensor(f"{name}.int8_scale", w_scale)
        self.new_inits += [b8, bs]
        a8, a_scale = self.rows(a, nodes)
        ins = [a8, b8.name, self.const("one", np.array(1.0, np.float32)), bs.name,
               self.const("zero_point", np.array(128, np.uint8)), ""] + ([bias] if bias else [])
        product = f"/prefill{name}/int8"
        nodes += [helper.make_node("MatMulIntegerToFloat", ins, [product], product, domain=MS),
                  helper.make_node("Mul", [product, a_scale], list(node.output), f"/prefill{name}/rescale")]


def wants_prefill_graph(manifest: Manifest) -> bool:
    """Targets of a 4-bit recipe: their prompts are where the time goes (a draft reads a
    window of the prompt at most), and a recipe that promises the source's exact model
    (`gguf`, int8, fp16, fp32) keeps one model for every row."""
    return manifest.role == "target" and manifest.quant.get("precision") == "int4"


def write_prefill_graph(bundle: Path, manifest: Manifest) -> dict:
    """Write PREFILL_MODEL (+ PREFILL_DATA) beside the bundle's graph; return the manifest's
    `prefill_graph` record. The LM head (the product that writes the logits) and products
    with g_idx stay as they are."""
    bundle = Path(bundle)
    converted = _rewrite(bundle, manifest.model_file, manifest.outputs["logits"])
    return {"model_file": PREFILL_MODEL, "data_file": PREFILL_DATA, "products": converted,
            "weights": "int8 per output channel, from the bundle's blocks",
            "activations": "uint8 per row, symmetric (max |x| / 127, zero point 128)"}


def _rewrite(bundle: Path, model_file: str, logits: str) -> int:
    model = onnx.load(str(bundle / model_file), load_external_data=False)
    store = WeightFile(bundle / PREFILL_DATA)
    rewriter = _Rewriter(model, bundle, store)
    nodes, converted = [], 0
    try:
        for node in model.graph.node:
            g_idx = len(node.input) > 4 and node.input[4]
            if node.op_type == "MatMulNBits" and node.domain == MS and logits not in node.output and not g_idx:
                rewriter.replace(node, nodes)
                converted += 1
            else:
                nodes.append(node)
    finally:
        store.close()
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(rewriter.new_inits)
    used = {name for n in nodes for name in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    onnx.save(model, str(bundle / PREFILL_MODEL))
    return converted
