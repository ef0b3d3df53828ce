"""A second graph for prefill: the decoder with its linear layers as int8 x int8 products.

Prefill is compute-bound, and CPUs multiply int8 matrices far faster in the quantized GEMM
kernels (MatMulInteger: VNNI, and AMX tiles where the CPU has them) than in MatMulNBits,
whose 4-bit blocks are unpacked per block. So each MatMulNBits of the decoder (not the LM
head: prefill needs one row of logits) becomes: activations quantized per row to uint8
(symmetric, scale max|x| / 127, zero point 128) times the *same* weights re-quantized per
output channel to int8, scaled back to float. Each row's result depends on that row alone,
so prefill in passes of any size gives the same KV. The weights are the bundle's own
(dequantized from its blocks), never the source's, so prefill computes the bundle's model
up to int8 rounding. One scale per row would let a few outlier channels take the
activations' whole range, so each product is smoothed first (SmoothQuant): channel j of
the activations divided by s_j, column j of the weights multiplied by it, with s from the
activations' range on a few hundred tokens of stdlib code run through the bundle's graph.

The graph shares every other initializer with model.onnx (same external data file) and
adds `PREFILL_DATA` for the int8 weights.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..contract.manifest import Manifest
from .onnx_graph import MS, WeightFile

PREFILL_MODEL = "model.prefill.onnx"
PREFILL_DATA = PREFILL_MODEL + ".data"
# Calibration for smoothing: stdlib modules that neither `edgespec quality`'s text nor the
# long-prompt suite reads, so the measurements stay held out.
CALIBRATION_MODULES = ("heapq", "functools")
CALIBRATION_TOKENS = 512


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
    """Replaces MatMulNBits nodes with the row-quantized int8 product. Products reading the same
    activations are done together: they share its quantization and its smoothing."""

    def __init__(self, model: onnx.ModelProto, base: Path, store: WeightFile, ranges: dict[str, np.ndarray]):
        self.graph = model.graph
        self.base = base
        self.store = store
        self.ranges = ranges  # activation -> max |x| per channel over the calibration text
        self.inits = {t.name: t for t in self.graph.initializer}
        self.quantized: dict[str, tuple[str, str]] = {}  # activation -> (uint8 rows, row scales)
        self.weights: dict[str, tuple[str, str]] = {}  # product -> (int8 W^T, per-channel scales)
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

    def weight(self, node: onnx.NodeProto) -> np.ndarray:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        _, q, scales, zeros = (list(node.input) + [""] * 4)[:4]
        return dequantize_nbits(self.array(q), self.array(scales), self.array(zeros) if zeros else None,
                                attrs["N"], attrs["K"], attrs.get("bits", 4), attrs["block_size"])

    def group(self, x: str, members: list[onnx.NodeProto], nodes: list) -> None:
        """Quantize x's rows (after smoothing, if calibrated) and every member's weights."""
        weights = [self.weight(node) for node in members]  # [N, K] each
        smooth = None
        if x in self.ranges:
            smooth = smoothing(self.ranges[x], np.max([np.abs(w).max(axis=0) for w in weights], axis=0))
        for node, w in zip(members, weights):
            w8, w_scale = per_channel_int8(w if smooth is None else w * smooth[None, :])
            name = node.name or node.output[0]
            b8, bs = self.store.tensor(f"{name}.int8", w8), self.store.tensor(f"{name}.int8_scale", w_scale)
            self.new_inits += [b8, bs]
            self.weights[name] = (b8.name, bs.name)
        p = f"/prefill{x}"
        rows = x
        if smooth is not None:  # x / s: outlier channels shrink, the weights' columns grew by s
            rows = f"{p}/smoothed"
            inverse = self.store.tensor(f"{p}/inverse_smoothing", (1.0 / smooth).astype(np.float32))
            self.new_inits.append(inverse)
            nodes.append(helper.make_node("Mul", [x, inverse.name], [rows], rows))
        nodes += [
            helper.make_node("Abs", [rows], [f"{p}/abs"], f"{p}/abs"),
            helper.make_node("ReduceMax", [f"{p}/abs", self.const("last_axis", np.array([-1], np.int64))],
                             [f"{p}/max"], f"{p}/max", keepdims=1),
            helper.make_node("Mul", [f"{p}/max", self.const("inv127", np.array(1 / 127, np.float32))],
                             [f"{p}/scale0"], f"{p}/scale0"),
            helper.make_node("Max", [f"{p}/scale0", self.const("tiny", np.array(1e-30, np.float32))],
                             [f"{p}/scale"], f"{p}/scale"),
            helper.make_node("Div", [rows, f"{p}/scale"], [f"{p}/scaled"], f"{p}/scaled"),
            helper.make_node("Round", [f"{p}/scaled"], [f"{p}/rounded"], f"{p}/rounded"),
            helper.make_node("Add", [f"{p}/rounded", self.const("offset", np.array(128, np.float32))],
                             [f"{p}/shifted"], f"{p}/shifted"),
            helper.make_node("Cast", [f"{p}/shifted"], [f"{p}/u8"], f"{p}/u8", to=TensorProto.UINT8),
        ]
        self.quantized[x] = (f"{p}/u8", f"{p}/scale")

    def replace(self, node: onnx.NodeProto, nodes: list) -> None:
        a, bias = node.input[0], (list(node.input) + [""] * 6)[5]
        a8, a_scale = self.quantized[a]
        name = node.name or node.output[0]
        b8, bs = self.weights[name]
        ins = [a8, b8, self.const("one", np.array(1.0, np.float32)), bs,
               self.const("zero_point", np.array(128, np.uint8)), ""] + ([bias] if bias else [])
        product = f"/prefill{name}/int8"
        nodes += [helper.make_node("MatMulIntegerToFloat", ins, [product], product, domain=MS),
                  helper.make_node("Mul", [product, a_scale], list(node.output), f"/prefill{name}/rescale")]


def smoothing(x_max: np.ndarray, w_max: np.ndarray) -> np.ndarray:
    """SmoothQuant's per-channel factors s = sqrt(max|x| / max|w|) [K]: activations are divided by
    s and the weights' columns multiplied, which moves outlier channels' range from the
    per-row activation scale (one for all K channels) to the per-channel weight scales."""
    s = np.sqrt(np.maximum(x_max, 1e-8) / np.maximum(w_max, 1e-8))
    s = np.where((x_max > 0) & (w_max > 0), s, 1.0)
    return np.clip(s, 1e-4, 1e4).astype(np.float32)


def calibration_ids(bundle: Path) -> list[int]:
    """CALIBRATION_TOKENS tokens of stdlib code no evaluation here reads; [] where this
    Python ships no stdlib sources (the graph is then built without smoothing)."""
    from tokenizers import Tokenizer
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / f"{module}.py" for module in CALIBRATION_MODULES]
    if not all(f.is_file() for f in files):
        return []
    text = "".join(f.read_text(encoding="utf-8") for f in files)
    return Tokenizer.from_file(str(bundle / "tokenizer.json")).encode(text, add_special_tokens=False).ids[
        :CALIBRATION_TOKENS]


def activation_ranges(bundle: Path, manifest: Manifest, model: onnx.ModelProto, names: list[str],
                      ids: list[int]) -> dict[str, np.ndarray]:
    """max |x| per channel [K] of each named activation, `ids` run through the bundle's graph."""
    import onnxruntime as ort
    if not ids:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in names)
    path = bundle / ".calibration.onnx"  # beside the weights its initializers point into
    onnx.save(probe, str(path))
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    finally:
        path.unlink()
    m, ranges = manifest, {}
    for start in range(0, len(ids), m.max_context):  # passes that fit the graph's rotary tables
        part = ids[start:start + m.max_context]
        s = len(part)
        feeds = {m.inputs["input_ids"]: np.array([part], np.int64),
                 m.inputs["attention_mask"]: np.ones((1, s), np.int64),
                 m.inputs["position_ids"]: np.arange(s, dtype=np.int64)[None],
                 m.inputs["attention_bias"]: np.triu(np.full((s, s), -np.inf, np.float32), 1)[None, None]}
        if "num_logits" in m.inputs:
            feeds[m.inputs["num_logits"]] = np.array([1], np.int64)
        empty = np.zeros((1, m.num_kv_heads, 0, m.head_dim), np.float32)
        for layer in range(m.num_layers):
            feeds[m.inputs["past_key"] % layer] = feeds[m.inputs["past_value"] % layer] = empty
        for name, out in zip(names, sess.run(names, feeds)):
            peak = np.abs(out).reshape(-1, out.shape[-1]).max(axis=0)
            ranges[name] = np.maximum(ranges[name], peak) if name in ranges else peak
    return ranges


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
    model = onnx.load(str(bundle / manifest.model_file), load_external_data=False)
    logits = manifest.outputs["logits"]
    products = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.domain == MS
                and logits not in n.output and not (len(n.input) > 4 and n.input[4])]
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in products:
        groups.setdefault(node.input[0], []).append(node)
    ids = calibration_ids(bundle)
    ranges = activation_ranges(bundle, manifest, model, list(groups), ids)
    store = WeightFile(bundle / PREFILL_DATA)
    rewriter = _Rewriter(model, bundle, store, ranges)
    converted = {id(n) for n in products}
    nodes: list[onnx.NodeProto] = []
    try:
        for node in model.graph.node:
            if id(node) not in converted:
                nodes.append(node)
                continue
            if node.input[0] not in rewriter.quantized:
                rewriter.group(node.input[0], groups[node.input[0]], nodes)
            rewriter.replace(node, nodes)
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
    smoothing_note = (f"SmoothQuant factors sqrt(max|x| / max|w|) per channel from {len(ids)} tokens of "
                      f"{', '.join(CALIBRATION_MODULES)}.py" if ranges else "none (no calibration text)")
    return {"model_file": PREFILL_MODEL, "data_file": PREFILL_DATA, "products": len(products),
            "weights": "int8 per output channel, from the bundle's blocks",
            "activations": "uint8 per row, symmetric (max |x| / 127, zero point 128)",
            "smoothing": smoothing_note}
