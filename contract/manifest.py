"""The bundle manifest, `edgespec.json`: everything the runtime needs to know about a graph.

Read tolerant of extra keys (newer writers), written complete. Quantization and
provenance live here, never guessed from file names. The manifest is written
last during export, so a folder without it is not a bundle.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BundleError
from .files import atomic_write_text

MANIFEST_NAME = "edgespec.json"
FORMAT_VERSION = 1
DRAFT_DATA = "draft_head.data"  # the weights of a draft head's graph (`draft_head`), next to it


@dataclass
class Manifest:
    architecture: str
    role: str
    vocab_size: int
    tokenizer_sha256: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    max_context: int
    io_dtype: str  # numpy dtype name of logits, KV cache and attention_bias
    quant: dict
    source: dict  # kind, name, sha256
    edgespec_version: str
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    model_file: str = "model.onnx"
    genai_model_file: str | None = None  # the builder's untouched graph, for onnxruntime-genai baselines
    inputs: dict = field(default_factory=lambda: {
        "input_ids": "input_ids",
        "attention_mask": "attention_mask",
        "position_ids": "position_ids",
        "attention_bias": "attention_bias",
        "past_key": "past_key_values.%d.key",
        "past_value": "past_key_values.%d.value",
    })
    outputs: dict = field(default_factory=lambda: {
        "logits": "logits",
        "present_key": "present.%d.key",
        "present_value": "present.%d.value",
    })
    parity: dict = field(default_factory=dict)
    sizes: dict = field(default_factory=dict)
    layers_kept: list[int] | None = None
    # A graph whose LM head covers only frequent tokens, for drafting (export/draft_vocab.py):
    # {"model_file", "vocab_file", "size", "corpus", "corpus_sha256"}; its weights in DRAFT_DATA
    draft_head: dict | None = None
    # The decoder for prompts with int8 x int8 products (export/prefill_graph.py):
    # {"model_file", "data_file", "products", "weights", "activations"}; None: prompts run model_file
    prefill_graph: dict | None = None
    # Every file of the bundle but this manifest, {name: {"bytes", "sha256"}}, checked at load
    # (contract/integrity.py); empty for bundles exported before the check existed.
    files: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, folder: Path) -> Path:
        return atomic_write_text(Path(folder) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=2) + "\n")


def read_manifest(folder: str | Path) -> Manifest:
    """Load a bundle's manifest, with errors that say what is wrong with the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"bundle '{folder}' not found: no such folder")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise BundleError(
            f"'{folder}' is not an edgespec bundle: it has no {MANIFEST_NAME} "
            "(an interrupted export, or a folder from another tool); re-run `edgespec export`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is corrupt: {e}; re-export the bundle") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} is corrupt: it holds a JSON {type(data).__name__}, not an object; "
                          "re-export the bundle")
    missing = [f.name for f in dataclasses.fields(Manifest)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in data]
    if missing:
        raise BundleError(f"{path} lacks required keys {missing}; re-export the bundle")
    _check_types(path, data)
    manifest = Manifest.from_dict(data)
    if manifest.format_version > FORMAT_VERSION:
        raise BundleError(
            f"{path} has format version {manifest.format_version}; this edgespec reads up to "
            f"{FORMAT_VERSION}: upgrade edgespec")
    return manifest


def bundle_bytes(bundle: Path, manifest: Manifest) -> int:
    """Size on disk of the graph and its weights (model.onnx*, a draft head's and a prefill graph's files),
    as export records it."""
    head = manifest.draft_head or {}
    extra = {head.get("model_file"), head.get("vocab_file"), DRAFT_DATA} if head else set()
    prefill = manifest.prefill_graph or {}
    extra |= {prefill.get("model_file"), prefill.get("data_file")} if prefill else set()
    return sum(f.stat().st_size for f in Path(bundle).iterdir()
               if f.name.startswith(manifest.model_file) or f.name in extra)


def prefill_graph_bytes(bundle: Path, manifest: Manifest) -> int:
    """Size on disk of the prefill graph's files (part of bundle_bytes; 0 without one)."""
    prefill = manifest.prefill_graph or {}
    return sum((Path(bundle) / prefill[key]).stat().st_size for key in ("model_file", "data_file") if key in prefill)


def _check_types(path: Path, data: dict) -> None:
    """Every known key holds what its Manifest field declares, and each `files` entry is
    {"bytes": int, "sha256": str} under a name inside the bundle."""
    hints = typing.get_type_hints(Manifest)
    for f in dataclasses.fields(Manifest):
        if f.name in data and not _conforms(data[f.name], hints[f.name]):
            raise BundleError(f"{path}: field '{f.name}' should be {f.type}, not {json.dumps(data[f.name])}; "
                              "re-export the bundle")
    for name, entry in data.get("files", {}).items():
        inside = not Path(name).is_absolute() and ".." not in Path(name).parts
        if not (inside and isinstance(entry, dict) and _conforms(entry.get("bytes"), int)
                and _conforms(entry.get("sha256"), str)):
            raise BundleError(f"{path}: files entry {json.dumps(name)} should map a name inside the bundle to "
                              f'{{"bytes": int, "sha256": str}}, not {json.dumps(entry)}; re-export the bundle')


def _conforms(value, hint) -> bool:
    """isinstance for the hints Manifest uses: int, str, dict, list[int], X | None (bool is no int)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)
