"""What both export paths (the builder's, pipeline.py; the GGUF's, gguf_export.py) share:
the KV rows a bundle preallocates, and the end of an export, where the bundle is recorded
and swapped into place."""

from __future__ import annotations

import time
from pathlib import Path

from ..contract import files
from ..contract.errors import InputError
from ..contract.integrity import record_files, stamp
from ..contract.manifest import Manifest, bundle_bytes

DEFAULT_MAX_CONTEXT = 4096


def context_rows(asked: int | None, limit: int) -> int:
    """KV rows a bundle preallocates: as asked, else the model's limit up to DEFAULT_MAX_CONTEXT."""
    rows = asked or min(limit, DEFAULT_MAX_CONTEXT)
    if rows > limit:
        raise InputError(f"--max-context {rows} exceeds the model's {limit} positions")
    return rows


def publish(bundle: Path, manifest: Manifest, out: Path, source_gguf: Path | None, started: float) -> None:
    """Record the bundle's sizes (its own, its GGUF's, the export's seconds since `started`) and
    files (sizes and sha256, checked at load: contract/integrity.py), write its manifest last,
    and swap it into `out`: an old bundle there stays whole until then."""
    manifest.sizes = {"bundle_bytes": bundle_bytes(bundle, manifest),
                      "source_gguf_bytes": source_gguf.stat().st_size if source_gguf else None,
                      "export_seconds": round(time.time() - started, 1)}
    manifest.files = record_files(bundle)
    manifest.write(bundle)
    files.replace_folder(bundle, out)
    stamp(out, manifest)
