"""The decoder graph of a llama/qwen2 GGUF, built from the file itself (no fp32 model anywhere).

The graph honours the runtime's contract (runtime/session.py, Manifest defaults):
input_ids, attention_mask, position_ids, attention_bias [1, 1, S, T], num_logits,
past_key_values.N.key/value [1, kv_heads, T, head_dim] bound as one shared buffer
with present.N.key/value, and logits of the last num_logits rows. Each layer is
the same template (SimplifiedLayerNormalization, MatMulNBits, GroupQueryAttention
with rotary and tree-attention inputs, SiLU MLP); weights stream from the
memory-mapped GGUF into the external data file one tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..contract.manifest import Manifest
from .gguf_model import DecoderConfig, GGUFModel
from .gguf_transcode import Encoded, Requant, concat_rows
from .onnx_graph import MS, Graph, WeightFile

DATA_SUFFIX = ".data"
GENAI_MODEL = "model.genai.onnx"  # the same graph for onnxruntime-genai (bench anchors), same weights
INT8_COMPUTE = 4  # MatMulNBits accuracy_level with int8 activations


@dataclass
class DecoderSummary:
    """What the build did, for the manifest's quant record."""
    layers: list[int]
    gguf_types: dict[str, int] = field(default_factory=dict)  # GGUF type -> weights transcoded
    layout: str = "planes"
    head_has_offsets: bool = False
    requant: Requant | None = None  # compact recipes: every weight re-quantized so


def layout_for(accuracy_level: int) -> str:
    """5-8 bit blocks as two 4-bit planes for fp32 compute; as int8 where activations are int8 too."""
    return "int8" if accuracy_level == INT8_COMPUTE else "planes"


def rope_cache(config: DecoderConfig, positions: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [positions, head_dim / 2] of every position's rotary angles (computed in float64)."""
    inv_freq = config.rope_theta ** (-np.arange(0, config.head_dim, 2, dtype=np.float64) / config.head_dim)
    angles = np.arange(positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def build_decoder(model: GGUFModel, path: Path, accuracy_level: int, max_positions: int,
                  layers: list[int] | None = None, requant: Requant | None = None) -> DecoderSummary:
    """Write `path` (model.onnx) and `path`.data for `model`; layers: the GGUF layers to keep (default all);
    requant: re-quantize every weight so (compact recipes) instead of transcoding its blocks."""
    cfg = model.config
    layers = list(range(cfg.num_layers)) if layers is None else list(layers)
    summary = DecoderSummary(layers=layers, layout=str(requant) if requant else layout_for(accuracy_level),
                             requant=requant)
    store = WeightFile(path.with_name(path.name + DATA_SUFFIX))
    g = Graph(store, accuracy_level)
    try:
        _build(g, model, summary, max_positions)
    finally:
        store.close()
    model_proto = g.model()
    onnx.save(model_proto, str(path))
    onnx.save(genai_graph(model_proto), str(path.with_name(GENAI_MODEL)))
    return summary


def genai_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The decoder as onnxruntime-genai runs it: no tree-attention bias (attention is causal) and
    logits of every row (no num_logits). Its initializers point at the same external data file."""
    genai = onnx.ModelProto()
    genai.CopyFrom(model)
    graph = genai.graph
    dropped = {"attention_bias", "num_logits"}
    kept_inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    slice_node = next(n for n in graph.node if n.op_type == "Slice" and n.name == "/num_logits/last_rows")
    rows, all_rows = slice_node.output[0], slice_node.input[0]
    nodes = [n for n in graph.node if n.name not in ("/num_logits/starts", "/num_logits/last_rows")]
    for node in nodes:
        node.input[:] = ["" if name in dropped else all_rows if name == rows else name for name in node.input]
    del graph.node[:]
    graph.node.extend(nodes)
    return genai


def _build(g: Graph, model: GGUFModel, summary: DecoderSummary, max_positions: int) -> None:
    cfg = model.config
    names = Manifest.__dataclass_fields__["inputs"].default_factory()
    outputs = Manifest.__dataclass_fields__["outputs"].default_factory()
    kv_shape = ["batch_size", cfg.num_kv_heads, "past_sequence_length", cfg.head_dim]
    ids = g.input(names["input_ids"], TensorProto.INT64, ["batch_size", "sequence_length"])
    mask = g.input(names["attention_mask"], TensorProto.INT64, ["batch_size", "total_sequence_length"])
    positions = g.input(names["position_ids"], TensorProto.INT64, ["batch_size", "sequence_length"])
    bias = g.input(names["attention_bias"], TensorProto.FLOAT,
                   ["batch_size", 1, "sequence_length", "total_sequence_length"])  # [1, 1, S, T]
    num_logits = g.input("num_logits", TensorProto.INT64, [1])

    # GroupQueryAttention's lengths: seqlens_k = tokens in the mask - 1, and the total length
    count = g.node("ReduceSum", [mask, g.constant([1])], "/mask/count", keepdims=0)  # [B]
    seqlens = g.node("Cast", [g.node("Sub", [count, g.constant(1)], "/mask/last")], "/mask/seqlens_k",
                     to=TensorProto.INT32)
    total = g.node("Cast", [g.node("Gather", [g.node("Shape", [mask], "/mask/shape"), g.constant(1)],
                                   "/mask/total", axis=0)], "/mask/total_length", to=TensorProto.INT32)
    cos, sin = rope_cache(cfg, max_positions)
    rope = (g.initializer("cos_cache", cos), g.initializer("sin_cache", sin))

    head_name = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
    head = _weights(g, model, summary, head_name, "lm_head", gather=cfg.tied_embeddings)
    summary.head_has_offsets = bool(head.offsets)
    table = head if cfg.tied_embeddings else _weights(g, model, summary, "token_embd.weight", "embed_tokens",
                                                       matmul=False, gather=True, layout="int8")
    hidden = g.embedding(ids, table, "/embed_tokens")  # [B, S, hidden]

    residual, out = hidden, None
    for index, layer in enumerate(summary.layers):
        past = (names["past_key"] % index, names["past_value"] % index)
        present = (outputs["present_key"] % index, outputs["present_value"] % index)
        for name in past:
            g.input(name, TensorProto.FLOAT, kv_shape)
        for name in present:
            g.output(name, TensorProto.FLOAT, kv_shape[:2] + ["total_sequence_length", cfg.head_dim])
        residual, out = _layer(g, model, summary, cfg, layer, index, residual, out,
                               (seqlens, total), rope, positions, bias, past, present)

    final = g.node("SkipSimplifiedLayerNormalization",
                   [residual, out, g.initializer("final_norm.weight", model.vector("output_norm.weight"))],
                   "/final_norm", outputs=["/final_norm/out"], domain=MS, epsilon=cfg.rms_eps)
    starts = g.node("Neg", [num_logits], "/num_logits/starts")
    last = g.node("Slice", [final, starts, g.constant([np.iinfo(np.int64).max]), g.constant([1])],
                  "/num_logits/last_rows")  # [B, num_logits, hidden]
    g.linear(last, head, out=outputs["logits"])
    g.output(outputs["logits"], TensorProto.FLOAT, ["batch_size", "logits_length", cfg.vocab_size])


def _layer(g: Graph, model: GGUFModel, summary: DecoderSummary, cfg: DecoderConfig, layer: int, index: int,
           residual: str, previous: str | None, lengths, rope, positions, bias, past, present):
    """One decoder layer; returns (residual stream, this layer's MLP output)."""
    blk, at = f"blk.{layer}", f"/layers.{index}"
    attn_norm = g.initializer(f"layers.{index}.attn_norm.weight", model.vector(f"{blk}.attn_norm.weight"))
    if previous is None:  # first layer: the residual stream is the embedding itself
        x = g.node("SimplifiedLayerNormalization", [residual, attn_norm], f"{at}/attn_norm",
                   epsilon=cfg.rms_eps, axis=-1, stash_type=1)
    else:  # add the previous layer's output to the stream and normalize, in one op
        x, residual = g.node("SkipSimplifiedLayerNormalization", [residual, previous, attn_norm],
                             f"{at}/attn_norm", outputs=[f"{at}/attn_norm/out", "", "", f"{at}/attn_norm/sum"],
                             domain=MS, epsilon=cfg.rms_eps)[0::3]
    biases = [model.vector(f"{blk}.attn_{p}.bias") if model.has(f"{blk}.attn_{p}.bias") else None for p in "qkv"]
    qkv = _products(g, model, summary, x, f"layers.{index}.attn.qkv_proj",
                    [(f"{blk}.attn_{p}.weight", f"layers.{index}.attn.{p}_proj") for p in "qkv"], biases, split=False)
    q, k, v = qkv if len(qkv) == 3 else (qkv[0], "", "")  # packed QKV: GroupQueryAttention splits it
    attn = g.node("GroupQueryAttention",
                  [q, k, v, past[0], past[1], lengths[0], lengths[1], rope[0], rope[1], positions, bias],
                  f"{at}/attn", outputs=[f"{at}/attn/out", present[0], present[1]], domain=MS,
                  num_heads=cfg.num_heads, kv_num_heads=cfg.num_kv_heads, scale=float(cfg.head_dim ** -0.5),
                  do_rotary=1, rotary_interleaved=int(cfg.rope_interleaved), local_window_size=-1,
                  softcap=0.0)[0]  # [B, S, heads * head_dim]
    o = g.linear(attn, _weights(g, model, summary, f"{blk}.attn_output.weight", f"layers.{index}.attn.o_proj"))
    ffn_norm = g.initializer(f"layers.{index}.ffn_norm.weight", model.vector(f"{blk}.ffn_norm.weight"))
    x, residual = g.node("SkipSimplifiedLayerNormalization", [residual, o, ffn_norm], f"{at}/ffn_norm",
                         outputs=[f"{at}/ffn_norm/out", "", "", f"{at}/ffn_norm/sum"],
                         domain=MS, epsilon=cfg.rms_eps)[0::3]
    gate, up = _products(g, model, summary, x, f"layers.{index}.mlp.gate_up_proj",
                         [(f"{blk}.ffn_gate.weight", f"layers.{index}.mlp.gate_proj"),
                          (f"{blk}.ffn_up.weight", f"layers.{index}.mlp.up_proj")])  # [B, S, ffn] each
    silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{at}/mlp/sigmoid")], f"{at}/mlp/silu")
    hidden = g.node("Mul", [silu, up], f"{at}/mlp/gated")  # [B, S, ffn]
    down = g.linear(hidden, _weights(g, model, summary, f"{blk}.ffn_down.weight", f"layers.{index}.mlp.down_proj"))
    return residual, down


def _products(g: Graph, model: GGUFModel, summary: DecoderSummary, x: str, fused: str, tensors, biases=None,
              split: bool = True) -> list[str]:
    """x times several weights: one MatMulNBits over their stacked rows when they share a layout
    (then Split, or with split=False the stacked output alone), else one product each.
    tensors: [(GGUF name, graph name)]; biases: one per tensor, or None."""
    parts = [_encoded(model, summary, name) for name, _ in tensors]
    biases = biases or [None] * len(parts)
    if all(isinstance(p, Encoded) for p in parts) and len({(p.bits, p.block, p.planes) for p in parts}) == 1:
        rows = [p.weight.shape[0] for p in parts]
        bias = None if all(b is None for b in biases) else np.concatenate(
            [b if b is not None else np.zeros(n, np.float32) for b, n in zip(biases, rows)])
        y = g.linear(x, g.weights(fused, concat_rows(parts)), bias)
        if not split:
            return [y]
        return g.node("Split", [y, g.constant(rows)], f"/{fused}/split", outputs=len(parts), axis=-1)
    return [g.linear(x, g.weights(name, w), b) for (_, name), w, b in zip(tensors, parts, biases)]


def _encoded(model: GGUFModel, summary: DecoderSummary, name: str, layout: str | None = None):
    kind = model.type_of(name)
    summary.gguf_types[kind] = summary.gguf_types.get(kind, 0) + 1
    return model.encoded(name, summary.requant or layout or summary.layout)


def _weights(g: Graph, model: GGUFModel, summary: DecoderSummary, name: str, as_name: str,
             matmul: bool = True, gather: bool = False, layout: str | None = None):
    return g.weights(as_name, _encoded(model, summary, name, layout), matmul=matmul, gather=gather)
