"""A draft graph whose LM head covers only frequent tokens (FR-Spec's idea).

A draft step on a CPU is bound by the bytes it reads, and the 0.5B Qwen's LM
head (152k rows plus their scales) is a third of them. A draft only proposes:
the target verifies every token, so a head over the 32k most frequent tokens
loses nothing but the rare proposal, and speeds every step. The rows are
ranked by how often the tokenizer emits each token on a fixed code and prose
corpus (the running Python's standard library), ties and the rest by token id
(BPE merges earlier tokens first: the id is a frequency prior).

The bundle gains `model.draft.onnx` (the same graph and weights, but the head
reads a sliced copy stored in `draft_head.data`) and `draft_vocab.npy` (row ->
token id); `Session(..., head="draft")` loads it.
"""

from __future__ import annotations

import hashlib
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor, set_external_data

from ..contract.errors import InputError
from ..contract.manifest import DRAFT_DATA, Manifest
from .last_logits import lm_head

DRAFT_MODEL = "model.draft.onnx"
DRAFT_VOCAB = "draft_vocab.npy"
CORPUS_BYTES = 4_000_000  # ~1M tokens: enough to rank the 32k most frequent
DEFAULT_SIZE = 32768  # the 32k most frequent of the 152k Qwen tokens


def default_size(manifest: Manifest) -> int | None:
    """The head a bundle gets unless told otherwise: drafts with a large vocabulary only."""
    if manifest.role == "draft" and manifest.vocab_size > 2 * DEFAULT_SIZE:
        return DEFAULT_SIZE
    return None


def corpus_files(limit: int = CORPUS_BYTES) -> list[Path]:
    """Standard-library sources in a fixed order, up to `limit` bytes: code, comments, docs."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files, total = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if path.parent.name.startswith("test") or path.name.startswith("test"):
            continue
        size = path.stat().st_size
        if total + size > limit:
            continue
        files.append(path)
        total += size
    return files


def rank_tokens(bundle: Path, size: int, always: list[int]) -> tuple[np.ndarray, str]:
    """The `size` token ids a draft head keeps, and a digest of the corpus that ranked them."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    digest = hashlib.sha256()
    counts: Counter = Counter()
    texts = []
    for path in corpus_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        digest.update(text.encode())
        texts.append(text)
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        counts.update(enc.ids)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    keep = list(dict.fromkeys(int(t) for t in always if 0 <= t < vocab))  # specials first, in order
    chosen = set(keep)
    for token, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(keep) >= size:
            break
        if token not in chosen:
            keep.append(token)
            chosen.add(token)
    for token in range(vocab):  # fill up by id when the corpus did not reach `size` tokens
        if len(keep) >= size:
            break
        if token not in chosen:
            keep.append(token)
            chosen.add(token)
    return np.array(sorted(keep), np.int64), digest.hexdigest()


def write_draft_head(bundle: Path, manifest: Manifest, size: int, ids=None) -> dict:
    """Add the sliced-head draft graph to `bundle`; return the manifest's `draft_head` entry.

    ids: the token ids to keep (default: the `size` most frequent, see rank_tokens)."""
    bundle = Path(bundle)
    if not 2 <= size < manifest.vocab_size:
        raise InputError(f"--draft-vocab {size} must be at least 2 and below the vocabulary size "
                         f"{manifest.vocab_size}")
    corpus, corpus_sha = "given", ""
    if ids is None:
        always = list(manifest.eos_token_ids) + _added_tokens(bundle)
        ids, corpus_sha = rank_tokens(bundle, size, always)
        corpus = f"python {sysconfig.get_python_version()} stdlib"
    ids = np.unique(np.asarray(ids, np.int64))
    model = onnx.load(str(bundle / manifest.model_file), load_external_data=False)
    head = lm_head(model.graph, manifest.outputs["logits"])
    by_name = {t.name: t for t in model.graph.initializer}
    data, offset = bytearray(), 0
    for slot, name in enumerate(head.input):
        if slot == 0 or name not in by_name:
            continue
        sliced = _slice_rows(_read(bundle, by_name[name]), ids, head, slot)
        if sliced is None:
            continue
        tensor = numpy_helper.from_array(sliced, name + "/draft")
        raw = tensor.raw_data
        pad = (-offset) % 64
        data += b"\0" * pad
        offset += pad
        set_external_data(tensor, DRAFT_DATA, offset=offset, length=len(raw))
        tensor.ClearField("raw_data")
        data += raw
        offset += len(raw)
        model.graph.initializer.append(tensor)
        head.input[slot] = tensor.name
    used = {name for node in model.graph.node for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]  # not the full head's blocks, unless shared
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for attr in head.attribute:
        if attr.name == "N":
            attr.i = len(ids)
    for value in list(model.graph.output) + list(model.graph.value_info):
        if value.name in head.output:  # declared [batch, seq, vocab]: now [batch, seq, len(ids)]
            dims = value.type.tensor_type.shape.dim
            if dims:
                dims[-1].ClearField("dim_param")
                dims[-1].dim_value = len(ids)
    (bundle / DRAFT_DATA).write_bytes(bytes(data))
    np.save(bundle / DRAFT_VOCAB, ids)
    onnx.save(model, str(bundle / DRAFT_MODEL))
    return {"model_file": DRAFT_MODEL, "vocab_file": DRAFT_VOCAB, "size": int(len(ids)),
            "corpus": corpus, "corpus_sha256": corpus_sha}


def _added_tokens(bundle: Path) -> list[int]:
    import json
    data = json.loads((bundle / "tokenizer.json").read_text(encoding="utf-8"))
    return [int(t["id"]) for t in data.get("added_tokens", [])]


def _read(bundle: Path, tensor: onnx.TensorProto) -> np.ndarray:
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    if copy.data_location == onnx.TensorProto.EXTERNAL:
        load_external_data_for_tensor(copy, str(bundle))  # fills raw_data
        copy.data_location = onnx.TensorProto.DEFAULT
        del copy.external_data[:]
    return numpy_helper.to_array(copy)


def _slice_rows(array: np.ndarray, ids: np.ndarray, head: onnx.NodeProto, slot: int):
    """The head's weight-side input restricted to the kept vocabulary rows (None: not per-row)."""
    if head.op_type == "MatMul":  # B [hidden, vocab]
        return np.ascontiguousarray(array[:, ids]) if slot == 1 else None
    n = next(a.i for a in head.attribute if a.name == "N")
    if array.shape[0] == n:  # B [N, blocks, blob], scales [N, blocks], zero points [N, ...], bias [N]
        return np.ascontiguousarray(array[ids])
    if array.ndim == 1 and array.size % n == 0:  # flattened per-row tensors
        return np.ascontiguousarray(array.reshape(n, -1)[ids].reshape(-1))
    return None  # g_idx and other per-input-channel tensors
