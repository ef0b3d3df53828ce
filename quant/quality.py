"""How much does quantization cost? Perplexity and top-1 agreement of a bundle against a reference.

The text is stdlib source (quant/text.py), tokenised with the bundle's tokenizer and cut
into non-overlapping windows spread over it. Each window runs through the bundle in one
forward from an empty cache and through the reference (the unquantized source model in
torch, or another bundle such as an fp32 export), and the report gives

- perplexity: exp(mean next-token NLL), log-softmax in float64, for the bundle and the reference;
- top-1 agreement: the fraction of positions where both pick the same argmax;
- mean KL(reference || bundle) per position, in nats;

with the recipe, the bundle's size on disk, what was counted, the text files and hashes.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np

from ..contract.errors import EdgespecError, InputError
from ..contract.manifest import MANIFEST_NAME, Manifest, bundle_bytes, prefill_graph_bytes, read_manifest
from ..export.parity import TorchModel
from ..export.recipes import RECIPES, Recipe
from .text import eval_text

DEFAULT_WINDOWS = 8
DEFAULT_WINDOW_LEN = 256
_ROWS = 32  # log-softmax rows at a time: float64 [32, 151936] is 39 MB


# --- models that give logits [S, vocab] for one window --------------------------------------

class BundleModel:
    kind = "bundle"

    def __init__(self, folder: str | Path, threads: int | None = None):
        from ..runtime.session import Session, SessionOptions
        self.path = Path(folder)
        self.session = Session(self.path, SessionOptions(threads=threads))
        self.manifest = self.session.manifest
        self.max_len = self.session.max_len

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.session.score(ids)  # [S, vocab]

    def prompt_logits(self, ids: list[int]) -> np.ndarray | None:
        """[S, vocab] from the bundle's prefill graph, the model a prompt's rows go through
        (export/prefill_graph.py); None without one."""
        s = self.session
        if s.prefill_sess is None:
            return None
        s.reset()
        try:
            return s.forward(ids, prompt=True).copy()
        finally:
            s.reset()

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "recipe": self.manifest.quant}


def open_reference(reference, manifest: Manifest, bundle: Path, threads: int | None = None):
    """A reference model from a bundle folder, an HF folder, or (None) the bundle's source."""
    if reference is None:
        return TorchModel(_source_hf_dir(manifest, bundle))
    if isinstance(reference, (BundleModel, TorchModel)):
        return reference
    folder = Path(reference)
    if (folder / MANIFEST_NAME).is_file():
        ref = BundleModel(folder, threads)
        if ref.manifest.tokenizer_sha256 != manifest.tokenizer_sha256:
            raise EdgespecError(f"reference bundle '{folder}' has another tokenizer than '{bundle}'; "
                                "compare bundles exported from the same model")
        return ref
    if (folder / "config.json").is_file():
        from ..export.tokenizer_files import tokenizer_sha256
        if (folder / "tokenizer.json").is_file() and tokenizer_sha256(folder) != manifest.tokenizer_sha256:
            raise EdgespecError(f"reference '{folder}' has another tokenizer than '{bundle}'; "
                                "give the folder the bundle was exported from")
        return TorchModel(folder)
    raise EdgespecError(f"reference '{folder}' is neither an edgespec bundle ({MANIFEST_NAME}) nor a "
                        "Hugging Face model folder (config.json)")


def _source_hf_dir(manifest: Manifest, bundle: Path) -> Path:
    from ..export import sources
    source = manifest.source or {}
    name = source.get("path") or source.get("name")  # a "path", where the manifest records one, is exact
    hint = "pass --reference with the source's Hugging Face folder or an fp32 bundle of it"
    try:
        resolved = sources.resolve(str(name))
    except EdgespecError as e:
        raise EdgespecError(f"the source of '{bundle}' ('{name}') is not available as a reference ({e}); "
                            f"{hint}") from None
    if source.get("sha256") and resolved.source_sha256 != source["sha256"]:
        raise EdgespecError(f"'{name}' resolves to {resolved.hf_dir}, which is not the model '{bundle}' "
                            f"was exported from (sha256 differs); {hint}")
    return resolved.hf_dir


# --- the measurement ------------------------------------------------------------------------

def cut_windows(ids: list[int], windows: int, window_len: int) -> list[list[int]]:
    """`windows` non-overlapping slices of `window_len` tokens, evenly spread over `ids`
    (fewer when the text is too short for that many)."""
    if windows < 1 or window_len < 2:
        raise InputError(f"need at least 1 window of at least 2 tokens (got {windows} x {window_len})")
    count = min(windows, len(ids) // window_len)
    if count == 0:
        raise EdgespecError(f"the evaluation text has {len(ids)} tokens, fewer than one window of {window_len}")
    stride = len(ids) // count
    return [ids[i * stride:i * stride + window_len] for i in range(count)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)  # [R, vocab]
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


def window_stats(ids: list[int], logits: np.ndarray, ref: np.ndarray) -> dict:
    """Per-window sums: NLL of tokens 1.. (bundle and reference), argmax matches, KL(ref || bundle)."""
    nll = ref_nll = kl = 0.0
    targets = np.asarray(ids[1:] + [-1])  # no target after the last position
    for start in range(0, len(ids), _ROWS):
        rows = slice(start, start + _ROWS)
        lp, rlp = _log_softmax(logits[rows]), _log_softmax(ref[rows])  # [R, vocab]
        t = targets[rows]
        has = t >= 0
        r = np.arange(len(t))[has]
        nll -= lp[r, t[has]].sum()
        ref_nll -= rlp[r, t[has]].sum()
        kl += (np.exp(rlp) * (rlp - lp)).sum()
    return {"nll": nll, "ref_nll": ref_nll, "kl": kl,
            "agree": int((logits.argmax(-1) == ref.argmax(-1)).sum()), "positions": len(ids)}


def quality_report(bundle: str | Path, reference=None, windows: int = DEFAULT_WINDOWS,
                   window_len: int = DEFAULT_WINDOW_LEN, threads: int | None = None) -> dict:
    """Measure `bundle` against `reference` (bundle folder, HF folder, or None = the bundle's source)."""
    from tqdm import tqdm
    from transformers import AutoTokenizer
    started = time.time()
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    model = BundleModel(bundle, threads)
    ref = open_reference(reference, manifest, bundle, threads)
    text = eval_text()
    tok = AutoTokenizer.from_pretrained(str(bundle))
    ids = tok.encode(text.text, add_special_tokens=False, verbose=False)
    length = min(window_len, model.max_len, ref.max_len)
    chunks = cut_windows(ids, windows, length)
    totals = {"nll": 0.0, "ref_nll": 0.0, "kl": 0.0, "agree": 0, "positions": 0}
    prompt: dict[str, dict] = {"prompt": {}, "prompt_vs_decode": {}}  # the prefill graph's sums, if any
    for chunk in tqdm(chunks, desc=f"quality {bundle.name}", unit="window", file=sys.stderr, disable=None,
                      leave=False):
        logits, ref_logits = model.logits(chunk), ref.logits(chunk)  # [S, vocab] each
        if logits.shape != ref_logits.shape:
            raise EdgespecError(f"bundle logits {logits.shape} and reference logits {ref_logits.shape} differ "
                                "in shape; the reference must share the bundle's vocabulary")
        for key, value in window_stats(chunk, logits, ref_logits).items():
            totals[key] += value
        prompt_logits = model.prompt_logits(chunk)
        if prompt_logits is not None:
            for name, against in (("prompt", ref_logits), ("prompt_vs_decode", logits)):
                for key, value in window_stats(chunk, prompt_logits, against).items():
                    prompt[name][key] = prompt[name].get(key, 0) + value
    predicted = len(chunks) * (length - 1)
    return {
        "bundle": str(bundle),
        "recipe": manifest.quant,
        "bundle_bytes": bundle_bytes(bundle, manifest),
        "prefill_graph_bytes": prefill_graph_bytes(bundle, manifest),
        "reference": ref.describe(),
        "text": text.describe(),
        "text_tokens": len(ids),
        "windows": len(chunks),
        "window_len": length,
        "tokens": len(chunks) * length,
        "predicted_tokens": predicted,
        "perplexity": math.exp(totals["nll"] / predicted),
        "reference_perplexity": math.exp(totals["ref_nll"] / predicted),
        "top1_agreement": totals["agree"] / totals["positions"],
        "mean_kl": totals["kl"] / totals["positions"],
        # the prefill graph, which computes prompt rows: against the reference and the decode graph
        "prompt_graph": {
            "perplexity": math.exp(prompt["prompt"]["nll"] / predicted),
            "top1_agreement": prompt["prompt"]["agree"] / totals["positions"],
            "mean_kl": prompt["prompt"]["kl"] / totals["positions"],
            "top1_vs_decode_graph": prompt["prompt_vs_decode"]["agree"] / totals["positions"],
            "kl_vs_decode_graph": prompt["prompt_vs_decode"]["kl"] / totals["positions"],
        } if prompt["prompt"] else None,
        "seconds": round(time.time() - started, 2),
    }


# --- one source, several recipes -------------------------------------------------------------

def compare_recipes(source: str, recipes=("int4", "int8", "fp32"), out_root: str | Path = "quality",
                    reference=None, windows: int = DEFAULT_WINDOWS, window_len: int = DEFAULT_WINDOW_LEN,
                    threads: int | None = None) -> list[dict]:
    """Export `source` with each recipe into out_root/<recipe> (reusing a bundle already there) and
    report each against one reference (default: the source model in torch)."""
    from ..export import sources
    from ..export.pipeline import ExportOptions, export
    from ..runtime.session import bundle_logits
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise InputError(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    resolved = sources.resolve(source)
    out_root = Path(out_root)
    bundles = []
    for name in recipes:
        recipe: Recipe = RECIPES[name]
        folder = out_root / name
        if (folder / MANIFEST_NAME).is_file():
            _check_reusable(folder, recipe, resolved.source_sha256)
            print(f"edgespec: reusing {folder}", file=sys.stderr, flush=True)
        else:
            export(source, folder, ExportOptions(recipe=recipe, threads=threads, parity=bundle_logits))
        bundles.append(folder)
    ref = None
    reports = []
    for folder in bundles:
        if ref is None:  # opened once, after the exports, and shared by every report
            ref = open_reference(reference if reference is not None else resolved.hf_dir,
                                 read_manifest(folder), folder, threads)
        reports.append(quality_report(folder, ref, windows=windows, window_len=window_len, threads=threads))
    return reports


def _check_reusable(folder: Path, recipe: Recipe, source_sha256: str) -> None:
    m = read_manifest(folder)
    if m.quant != recipe.to_dict():
        raise EdgespecError(f"'{folder}' holds a bundle with recipe {m.quant}, not {recipe.to_dict()}; "
                            "remove it or choose another --out")
    if m.source.get("sha256") != source_sha256:
        raise EdgespecError(f"'{folder}' holds a bundle of another source ({m.source.get('name')}); "
                            "remove it or choose another --out")


# --- the table ------------------------------------------------------------------------------

def format_report(report: dict | list[dict]) -> str:
    """One row per bundle, then what the reference and the text were."""
    reports = [report] if isinstance(report, dict) else list(report)
    if not reports:
        return "no reports"
    rows = [("bundle", "recipe", "size", "ppl", "ref ppl", "top-1", "KL")]
    for r in reports:
        rows.append((Path(r["bundle"]).name, _recipe_label(r["recipe"]), _size(r["bundle_bytes"]),
                     f"{r['perplexity']:.3f}", f"{r['reference_perplexity']:.3f}",
                     f"{r['top1_agreement']:.1%}", f"{r['mean_kl']:.3g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    for r in reports:
        g = r.get("prompt_graph")
        if g:
            lines.append(f"{Path(r['bundle']).name}: prompts run its int8 prefill graph: perplexity "
                         f"{g['perplexity']:.3f}, top-1 {g['top1_agreement']:.1%} (KL {g['mean_kl']:.3g}) against the "
                         f"reference, {g['top1_vs_decode_graph']:.1%} (KL {g['kl_vs_decode_graph']:.3g}) against "
                         f"its own decode graph")
    first = reports[0]
    ref = first["reference"]
    files = ", ".join(f["name"] for f in first["text"]["files"])
    lines.append(f"reference: {ref['kind']} {ref['path']}; text: {files} (Python {first['text']['python']}), "
                 f"{first['windows']} windows x {first['window_len']} tokens; "
                 f"{sum(r['seconds'] for r in reports):.1f} s")
    return "\n".join(lines)


def _recipe_label(quant: dict) -> str:
    label = quant.get("precision", "?")
    if "block_size" in quant:
        label += f" b{quant['block_size']} acc{quant.get('accuracy_level')}"
        if quant.get("algo", "rtn") != "rtn":
            label += f" {quant['algo']}"
    return label


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"
