"""quality.py's measurement of a bundle exported from a GGUF, against that GGUF's own model in
float64 (export/gguf_reference.py) instead of an fp32 model in torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..contract.errors import EdgespecError
from ..export import sources
from ..export.gguf_model import GGUFModel
from ..export.gguf_reference import Reference
from . import quality
from .text import eval_text


def quality_vs_gguf(bundle, windows: int | None = None, window_len: int | None = None,
                    threads: int | None = None) -> dict:
    """Top-1 agreement, perplexity, KL and max |logit diff| of `bundle` against its GGUF's
    float64 reference: the layers run once over all windows, the LM head once per window."""
    from tokenizers import Tokenizer
    from ..runtime.session import Session, SessionOptions
    bundle = Path(bundle)
    session = Session(bundle, SessionOptions(threads=threads))
    manifest = session.manifest
    path, _, _, sha256 = sources.gguf_file(manifest.source.get("path") or manifest.source.get("name"))
    if sha256 != manifest.source.get("sha256"):
        raise EdgespecError(f"{path} is not the GGUF '{bundle}' was exported from (sha256 differs)")
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    ids = tok.encode(eval_text().text, add_special_tokens=False).ids
    length = min(window_len or quality.DEFAULT_WINDOW_LEN, session.max_len)
    chunks = quality.cut_windows(ids, windows or quality.DEFAULT_WINDOWS, length)
    reference = Reference(GGUFModel(path), manifest.layers_kept)
    totals = {"nll": 0.0, "ref_nll": 0.0, "kl": 0.0, "agree": 0, "positions": 0}
    max_diff = 0.0
    for chunk, hidden in zip(chunks, reference.hidden(chunks)):
        ref = reference.head([hidden])[0]  # [S, vocab]
        logits = session.score(chunk)
        max_diff = max(max_diff, float(np.abs(logits - ref).max()))
        for key, value in quality.window_stats(chunk, logits, ref).items():
            totals[key] += value
    predicted = len(chunks) * (length - 1)
    return {"bundle": str(bundle), "recipe": manifest.quant, "reference": "GGUF float64 (numpy)",
            "windows": len(chunks), "window_len": length, "top1_agreement": totals["agree"] / totals["positions"],
            "max_abs_diff": max_diff, "perplexity": float(np.exp(totals["nll"] / predicted)),
            "reference_perplexity": float(np.exp(totals["ref_nll"] / predicted)),
            "mean_kl": totals["kl"] / totals["positions"]}
