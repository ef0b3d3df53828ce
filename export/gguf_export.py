"""GGUF -> bundle, streamed from the memory-mapped file one tensor at a time.

Two kinds of recipe take this path. The faithful one (`--quant gguf`) transcodes the
GGUF's quant blocks into MatMulNBits weights (gguf_transcode.py), not re-quantized: the
bundle computes what the GGUF computes. The compact int4 ones (round to nearest)
re-quantize each dequantized tensor with onnxruntime's quantizer. Either way the graph
is built from the file (gguf_decoder.py): no fp32 model on disk or in memory, no
onnxruntime-genai builder (which needs one: minutes and ~20 GB for the 1.5B). The
tokenizer comes from the GGUF's metadata through transformers. The parity check runs
the same architecture in float64 from the GGUF's blocks (gguf_reference.py).

Called by pipeline.export once the output folder is checked and its work folder claimed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..contract import __version__, files
from ..contract.errors import InputError, SourceError
from ..contract.manifest import Manifest
from . import presets, sources
from .draft_vocab import default_size, write_draft_head
from .prefill_graph import wants_prefill_graph, write_prefill_graph
from .gguf_decoder import GENAI_MODEL, build_decoder
from .gguf_model import GGUFModel
from .gguf_transcode import Requant
from .parity import PARITY_PROMPTS, BundleLogits, compare
from .publish import context_rows, publish
from .tokenizer_files import stop_token_ids, tokenizer_sha256

MODEL_FILE = "model.onnx"
REFERENCE = "float64 dequantization of the GGUF's blocks, same architecture (numpy)"


def streams(source: str, recipe) -> bool:
    """Whether SOURCE exports by this path: the faithful recipe always (it refuses what it cannot
    read); a compact int4 one (round to nearest) when SOURCE is a GGUF whose architecture and
    block types the graph builder reads. Others go through onnxruntime-genai's builder."""
    if recipe.precision == "gguf":
        return True
    if recipe.precision != "int4" or recipe.algo != "rtn":
        return False
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        sources.check_magic(path)
    elif source in presets.names() and not path.exists():
        path = sources.gguf_file(source)[0]  # assembled once, kept in the cache
    else:
        return False
    try:
        GGUFModel(path)
    except SourceError:
        return False
    return True


def requant_for(recipe) -> Requant | None:
    """The compact encoding of an int4 recipe; None for the faithful one (the GGUF's own blocks)."""
    return None if recipe.precision == "gguf" else Requant(recipe.block_size, recipe.symmetric)


def export_gguf(source: str, out: Path, work: Path, options) -> Manifest:
    """Export SOURCE (a .gguf file or preset) into `out` with options.recipe (faithful, or compact
    int4); `work` is the export's claimed work folder (removed here). options: pipeline.ExportOptions."""
    from .layers import parse_layers
    recipe = options.recipe
    stages = ["read GGUF", "build graph", "tokenizer", "parity", "finish"]
    bar = tqdm(total=len(stages), desc="export", unit="stage", file=sys.stderr, leave=True)
    started = time.time()
    try:
        bar.set_postfix_str(stages[0])
        path, kind, name, sha256 = sources.gguf_file(source)
        model = GGUFModel(path)  # refuses a truncated or corrupt file before any work
        cfg = model.config
        info = sources.GGUFInfo(architecture=cfg.architecture, tied_embeddings=cfg.tied_embeddings,
                                chat_template=model.field("tokenizer.chat_template"))
        kept = parse_layers(options.layers, cfg.num_layers) if options.layers else None
        max_context = context_rows(options.max_context, cfg.context_length)
        bar.update()
        bar.set_postfix_str(stages[1])
        bundle = work / "bundle"
        bundle.mkdir()
        summary = build_decoder(model, bundle / MODEL_FILE, recipe.accuracy_level, max_context, kept,
                                requant_for(recipe))
        bar.update()
        bar.set_postfix_str(stages[2])
        sources.save_tokenizer(path, info, bundle)
        _write_generation_config(bundle, cfg)
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(bundle))
        preset_role = presets.get(name).role if kind == "preset" else None
        role = options.role or ("draft" if kept is not None else preset_role or "target")  # as pipeline.export
        manifest = Manifest(
            architecture=cfg.architecture, role=role, vocab_size=cfg.vocab_size,
            tokenizer_sha256=tokenizer_sha256(bundle), num_layers=len(summary.layers), num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, hidden_size=cfg.hidden_size,
            max_context=max_context, io_dtype="float32",
            quant={**recipe.to_dict(), "layout": summary.layout, "gguf_types": summary.gguf_types},
            source={"kind": kind, "name": name, "sha256": sha256,
                    "path": name if kind == "preset" else str(Path(source).expanduser().absolute())},
            edgespec_version=__version__, eos_token_ids=stop_token_ids(bundle, tok), bos_token_id=tok.bos_token_id,
        )
        manifest.inputs["num_logits"] = "num_logits"
        manifest.genai_model_file = GENAI_MODEL
        _write_genai_config(bundle, manifest)
        manifest.layers_kept = kept
        manifest.draft_head = _draft_head(bundle, manifest, options.draft_vocab, summary.head_has_offsets)
        if wants_prefill_graph(manifest):
            bar.set_postfix_str("int8 prefill graph")
            manifest.prefill_graph = write_prefill_graph(bundle, manifest)
        bar.update()
        bar.set_postfix_str(stages[3])
        if options.parity:
            manifest.parity = parity(model, bundle, manifest, tok, kept, options.parity, options.threads)
        bar.update()
        bar.set_postfix_str(stages[4])
        publish(bundle, manifest, out, path, started)
        bar.update()
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _draft_head(bundle: Path, manifest: Manifest, asked: int | None, head_has_offsets: bool) -> dict | None:
    """The frequent-token draft head (draft_vocab.py) if asked for or a draft's default; it slices the
    head's rows, which a head with block minimums (an extra side product) does not allow."""
    size = asked if asked is not None else default_size(manifest)
    if size and head_has_offsets:
        if asked:
            raise InputError(f"--draft-vocab {size}: this GGUF's LM head has block minimums (a side "
                             "product), which the draft head cannot slice; pass --draft-vocab 0")
        return None
    return write_draft_head(bundle, manifest, size) if size else None


def parity(model: GGUFModel, bundle: Path, manifest: Manifest, tok, layers, logits: BundleLogits,
           threads: int | None) -> dict:
    """Logits of the bundle (run by `logits`, see parity.py) vs the GGUF's float64 reference on
    the fixed prompts."""
    from .gguf_reference import Reference
    tokens = [tok.encode(p, add_special_tokens=False) for p in PARITY_PROMPTS]
    report = compare(Reference(model, layers).logits(tokens), logits(bundle, manifest, tokens, threads))
    report["prompt_texts"] = list(PARITY_PROMPTS)
    report["reference"] = REFERENCE
    return report


def _write_genai_config(bundle: Path, m: Manifest) -> None:
    """onnxruntime-genai's config for the plain graph (gguf_decoder.genai_graph), so that bench's
    onnxruntime-genai anchors run this bundle's weights. Its rotary cache ends at max_context."""
    config = {
        "model": {
            "type": m.architecture, "vocab_size": m.vocab_size, "context_length": m.max_context,
            "bos_token_id": m.bos_token_id if m.bos_token_id is not None else m.eos_token_ids[0],
            "eos_token_id": m.eos_token_ids if len(m.eos_token_ids) > 1 else m.eos_token_ids[0],
            "pad_token_id": m.eos_token_ids[0],
            "decoder": {
                "filename": GENAI_MODEL, "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "head_size": m.head_dim, "hidden_size": m.hidden_size, "num_attention_heads": m.num_heads,
                "num_hidden_layers": m.num_layers, "num_key_value_heads": m.num_kv_heads,
                "inputs": {"input_ids": m.inputs["input_ids"], "attention_mask": m.inputs["attention_mask"],
                           "position_ids": m.inputs["position_ids"], "past_key_names": m.inputs["past_key"],
                           "past_value_names": m.inputs["past_value"]},
                "outputs": {"logits": m.outputs["logits"], "present_key_names": m.outputs["present_key"],
                            "present_value_names": m.outputs["present_value"]},
            },
        },
        "search": {"do_sample": False, "max_length": m.max_context, "min_length": 0, "num_beams": 1,
                   "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
                   "temperature": 1.0, "top_k": 50, "top_p": 1.0, "early_stopping": True,
                   "length_penalty": 1.0, "diversity_penalty": 0.0, "no_repeat_ngram_size": 0},
    }
    files.atomic_write_text(bundle / "genai_config.json", json.dumps(config, indent=4) + "\n")


def _write_generation_config(bundle: Path, cfg) -> None:
    """What the builder path gets from save_pretrained: the GGUF's BOS and EOS ids."""
    config = {k: v for k, v in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_token_id))
              if v is not None}
    files.atomic_write_text(bundle / "generation_config.json", json.dumps(config, indent=2) + "\n")
