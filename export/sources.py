"""SOURCE string -> a Hugging Face folder the graph builder can read.

A source is a Hugging Face model folder (used as-is), a GGUF file (dequantized to fp32
through transformers' GGUF loader, once, into the cache), or a preset name (its packaged
GGUF assembled first). Every problem a user can fix is a SourceError naming the value.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..contract.errors import SourceError
from . import cache, presets
from .gguf_assembly import CHUNK, assemble, file_sha256

# Architectures that transformers and onnxruntime-genai's builder both handle and that we test.
SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral", "phi3", "gemma", "qwen3")

GGUF_MAGIC = b"GGUF"
WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


@dataclass(frozen=True)
class ResolvedSource:
    hf_dir: Path                   # config.json, weights, tokenizer files (chat template included)
    kind: str                      # "hf" | "gguf" | "preset"
    source_sha256: str             # gguf: the file's sha256; hf: sha256 over config + weight files
    name: str
    gguf_path: Path | None = None


def _stage(msg: str) -> None:
    print(f"edgespec: {msg}", file=sys.stderr, flush=True)


def check_architecture(arch: str | None, where: str) -> str:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise SourceError(f"{where}: unsupported architecture {arch!r}; "
                          f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return arch


# --- Hugging Face folders --------------------------------------------------------------------

def _weight_files(folder: Path) -> list[Path]:
    return sorted({f for pattern in WEIGHT_PATTERNS for f in folder.glob(pattern) if f.is_file()})


def hf_folder_sha256(folder: Path) -> str:
    """sha256 over config.json and the weight files, in name order (name, size, then bytes)."""
    h = hashlib.sha256()
    for f in [folder / "config.json", *_weight_files(folder)]:
        h.update(f"{f.name}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as src:
            while chunk := src.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _check_hf_folder(folder: Path) -> str:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SourceError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise SourceError(f"{config_path}: unreadable config ({e})") from None
    arch = check_architecture(config.get("model_type"), str(folder))
    if not _weight_files(folder):
        raise SourceError(f"{folder} has config.json but no weights (*.safetensors or pytorch_model*.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SourceError(f"{folder} has no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    return arch


def _from_hf_folder(folder: Path) -> ResolvedSource:
    _check_hf_folder(folder)
    return ResolvedSource(hf_dir=folder, kind="hf", source_sha256=hf_folder_sha256(folder),
                          name=folder.resolve().name)


# --- GGUF files -------------------------------------------------------------------------------

@dataclass(frozen=True)
class GGUFInfo:
    architecture: str | None
    tied_embeddings: bool          # no separate output.weight: the LM head reuses the embeddings
    chat_template: str | None


def _field_str(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    if field is None or not field.data:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")


def check_magic(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise SourceError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")


def read_gguf_info(path: Path) -> GGUFInfo:
    """Check magic bytes and that every tensor lies inside the file; SourceError otherwise."""
    check_magic(path)
    from gguf import GGUFReader
    try:
        reader = GGUFReader(path)
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # the reader fails in many ways on a short file (IndexError, ValueError, ...)
        raise SourceError(f"{path}: truncated or corrupt GGUF ({type(e).__name__}: {e})") from e
    size = path.stat().st_size
    if not reader.tensors or end > size:
        raise SourceError(f"{path}: truncated or corrupt GGUF (tensor data ends at byte {end:,}, "
                          f"file has {size:,})")
    return GGUFInfo(architecture=_field_str(reader, "general.architecture"),
                    tied_embeddings=all(t.name != "output.weight" for t in reader.tensors),
                    chat_template=_field_str(reader, "tokenizer.chat_template"))


def _dequantize(gguf_path: Path, info: GGUFInfo, out: Path) -> None:
    """GGUF -> fp32 safetensors + tokenizer in `out` (a fresh folder)."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    _stage(f"dequantizing {gguf_path.name} to fp32 through transformers (once; cached)")
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    except Exception as e:
        raise SourceError(f"{gguf_path}: transformers could not load this GGUF ({type(e).__name__}: {e})") from e
    # The weights are plain fp32 tensors now, but the model still carries the GGUF "quantizer",
    # which refuses save_pretrained; drop it (cheaper than rebuilding the model: no second copy).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.tie_word_embeddings = info.tied_embeddings
    if not info.tied_embeddings:
        _retie_duplicate_head(model)
    _stage(f"writing fp32 safetensors to {out.parent}")
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(gguf_path, info, out)
    _stage(f"dequantized in {time.perf_counter() - t0:.1f} s")


def save_tokenizer(gguf_path: Path, info: GGUFInfo, out: Path) -> None:
    """The GGUF's tokenizer as Hugging Face files in `out`, from its metadata alone (no weights read)."""
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except Exception as e:
        raise SourceError(f"{gguf_path}: transformers could not read this GGUF's tokenizer "
                          f"({type(e).__name__}: {e})") from e
    if tokenizer.chat_template is None and info.chat_template:
        tokenizer.chat_template = info.chat_template
    tokenizer.save_pretrained(out)


DUPLICATE_HEAD_TOLERANCE = 0.1  # relative Frobenius distance; quantization noise is ~0.05-0.08


def _retie_duplicate_head(model) -> None:
    """Tie the LM head back to the embeddings when the GGUF stored one matrix twice.

    llama.cpp's converters write `output.weight` for tied models too (Qwen2.5
    ties its embeddings, yet its GGUFs carry both tensors at different quant
    types). Two copies double the largest matrix of a small model and make an
    int4 bundle larger than its GGUF. When the two differ by no more than
    quantization noise they are one matrix: keep the output copy (usually the
    higher-precision one) for both. Genuinely untied models differ by ~100%.
    """
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    if head.shape != embed.shape:
        return
    rel = float((head - embed).norm() / embed.norm())
    if rel > DUPLICATE_HEAD_TOLERANCE:
        return
    _stage(f"GGUF stores the tied embedding twice (copies differ by {rel:.1%}, quantization noise): "
           "tying them again")
    embed.data.copy_(head.data)
    model.config.tie_word_embeddings = True
    model.tie_weights()


def _from_gguf(path: Path, kind: str, name: str, sha256: str | None = None) -> ResolvedSource:
    """The cached HF folder of this GGUF, made once (keyed by the GGUF's sha256). Written in a
    temporary folder and renamed, so an interrupted dequantization leaves nothing that looks complete."""
    check_magic(path)  # before hashing a large file
    sha256 = sha256 or file_sha256(path)
    root = cache.hf_dir()
    out = root / sha256[:16]
    resolved = ResolvedSource(hf_dir=out, kind=kind, source_sha256=sha256, name=name, gguf_path=path)
    if (out / "config.json").is_file():
        return resolved
    info = read_gguf_info(path)
    check_architecture(info.architecture, str(path))
    tmp = root / f".{sha256[:16]}.tmp-{os.getpid()}"  # removed by files.remove_stale if killed
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dequantize(path, info, tmp)
        (tmp / "edgespec_source.json").write_text(json.dumps(
            {"gguf": path.name, "sha256": sha256}, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)  # an incomplete leftover without config.json
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():  # else a concurrent run finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return resolved


# --- entry point --------------------------------------------------------------------------------

def gguf_file(source: str) -> tuple[Path, str, str, str]:
    """The GGUF behind SOURCE, checked but not dequantized: (path, kind, name, sha256), for recipes
    that read the file itself (export/faithful.py)."""
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        check_magic(path)
        return path, "gguf", path.stem, file_sha256(path)
    if source in presets.names() and not path.exists():
        preset = presets.get(source)
        return assemble(preset), "preset", preset.name, preset.sha256  # verified against preset.sha256
    if not path.is_dir():
        resolve(source)  # raises the usual error: no such source, or a file that is not a GGUF
    raise SourceError(f"SOURCE '{source}' is a folder, not a GGUF file; the faithful recipe (--quant gguf) "
                      "transcodes a GGUF's blocks: give a .gguf file or a preset, or choose another --quant")


def resolve(source: str) -> ResolvedSource:
    path = Path(source).expanduser()
    if path.is_dir():
        return _from_hf_folder(path)
    if path.is_file() and path.suffix.lower() == ".gguf":
        return _from_gguf(path, kind="gguf", name=path.stem)
    if path.is_file():
        raise SourceError(f"SOURCE '{source}' is a file but not a .gguf file; "
                          "give a Hugging Face folder, a .gguf file, or a preset name")
    if source in presets.names():
        preset = presets.get(source)
        gguf_path = assemble(preset)  # verified against preset.sha256
        return _from_gguf(gguf_path, kind="preset", name=preset.name, sha256=preset.sha256)
    raise SourceError(f"SOURCE '{source}' not found: not a folder, a .gguf file, or a preset "
                      f"(known presets: {', '.join(presets.names())})")
