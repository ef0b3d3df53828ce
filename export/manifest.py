"""The bundle manifest, `edgespec.json`: everything the runtime needs to know about a graph.

Read tolerant of extra keys (newer writers), written complete. Quantization and
provenance live here, never guessed from file names. The manifest is written
last during export, so a folder without it is not a bundle.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgespecError

MANIFEST_NAME = "edgespec.json"
FORMAT_VERSION = 1


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
    # {"model_file", "vocab_file", "size", "corpus", "corpus_sha256"}
    draft_head: dict | None = None
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path


def read_manifest(folder: str | Path) -> Manifest:
    """Load a bundle's manifest, with errors that say what is wrong with the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdgespecError(f"bundle '{folder}' not found: no such folder")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise EdgespecError(
            f"'{folder}' is not an edgespec bundle: it has no {MANIFEST_NAME} "
            "(an interrupted export, or a folder from another tool); re-run `edgespec export`")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise EdgespecError(f"{path} is corrupt: {e}") from None
    missing = [f.name for f in dataclasses.fields(Manifest)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in data]
    if missing:
        raise EdgespecError(f"{path} lacks required keys {missing}; re-export the bundle")
    manifest = Manifest.from_dict(data)
    if manifest.format_version > FORMAT_VERSION:
        raise EdgespecError(
            f"{path} has format version {manifest.format_version}; this edgespec reads up to "
            f"{FORMAT_VERSION}: upgrade edgespec")
    return manifest
