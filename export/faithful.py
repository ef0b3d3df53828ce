"""GGUF -> bundle that computes what the GGUF computes (`--quant gguf`).

The GGUF's quant blocks are transcoded into MatMulNBits weights (gguf_transcode.py),
not re-quantized, and the graph is built from the file (gguf_decoder.py): no fp32
model on disk or in memory, no onnxruntime-genai builder. The tokenizer comes from
the GGUF's metadata through transformers. The parity check runs the same
architecture in float64 from the GGUF's blocks (gguf_reference.py).

Called by pipeline.export once the output folder is checked and its work folder claimed.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .. import __version__
from ..quant.quality import bundle_bytes
from . import files, presets, sources
from .draft_vocab import default_size, write_draft_head
from .errors import InputError
from .gguf_decoder import build_decoder
from .gguf_model import GGUFModel
from .manifest import Manifest
from .pipeline import context_rows, publish
from .parity import PARITY_PROMPTS, bundle_logits, compare
from .tokenizer_files import stop_token_ids, tokenizer_sha256

MODEL_FILE = "model.onnx"
REFERENCE = "float64 dequantization of the GGUF's blocks, same architecture (numpy)"


def export_faithful(source: str, out: Path, work: Path, options) -> Manifest:
    """Export SOURCE (a .gguf file or preset) into `out` with the faithful recipe; `work` is the
    export's claimed work folder (removed here). options: pipeline.ExportOptions."""
    from .layers import parse_layers
    recipe = options.recipe
    stages = ["read GGUF", "transcode", "tokenizer", "parity", "finish"]
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
        summary = build_decoder(model, bundle / MODEL_FILE, recipe.accuracy_level, max_context, kept)
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
        manifest.layers_kept = kept
        manifest.draft_head = _draft_head(bundle, manifest, options.draft_vocab, summary.head_has_offsets)
        bar.update()
        bar.set_postfix_str(stages[3])
        if options.parity:
            manifest.parity = parity(model, bundle, manifest, tok, kept, options.threads)
        bar.update()
        bar.set_postfix_str(stages[4])
        manifest.sizes = {"bundle_bytes": bundle_bytes(bundle, manifest), "source_gguf_bytes": path.stat().st_size,
                          "export_seconds": round(time.time() - started, 1)}
        publish(bundle, manifest, out)
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


def parity(model: GGUFModel, bundle: Path, manifest: Manifest, tok, layers, threads) -> dict:
    """Logits of the bundle vs the GGUF's float64 reference on the fixed prompts."""
    from ..runtime.session import Session, SessionOptions
    from .gguf_reference import Reference
    tokens = [tok.encode(p, add_special_tokens=False) for p in PARITY_PROMPTS]
    session = Session(bundle, SessionOptions(threads=threads), manifest=manifest)
    try:
        report = compare(Reference(model, layers).logits(tokens), bundle_logits(session, tokens))
    finally:
        del session
    report["prompt_texts"] = list(PARITY_PROMPTS)
    report["reference"] = REFERENCE
    return report


def _write_generation_config(bundle: Path, cfg) -> None:
    """What the builder path gets from save_pretrained: the GGUF's BOS and EOS ids."""
    config = {k: v for k, v in (("bos_token_id", cfg.bos_token_id), ("eos_token_id", cfg.eos_token_id))
              if v is not None}
    files.atomic_write_text(bundle / "generation_config.json", json.dumps(config, indent=2) + "\n")
