"""Where edgespec keeps assembled GGUFs, dequantized Hugging Face folders and bundles.

`$EDGESPEC_CACHE` if set, else `$XDG_CACHE_HOME/edgespec` (default `~/.cache/edgespec`).
Read from the environment on every call, so a test can point it at a temporary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from .files import remove_stale


def cache_root() -> Path:
    root = _root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _root() -> Path:
    env = os.environ.get("EDGESPEC_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "edgespec"


def cache_dir(name: str) -> Path:
    path = cache_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def gguf_dir() -> Path:
    """Assembled GGUF files and the `.sha256` stamps of verified ones."""
    return cache_dir("gguf")


def hf_dir() -> Path:
    """Hugging Face folders dequantized from GGUFs, one per GGUF sha256 prefix."""
    return cache_dir("hf")


def bundles_dir() -> Path:
    return cache_dir("bundles")


def remove_stale_work() -> None:
    """Remove what killed runs left in the cache: `.SHA.tmp-PID` dequantization folders (GBs for
    a preset) and `.NAME.partial-PID` exports; a bundle a killed replacement left aside goes back."""
    for name in ("hf", "bundles"):
        remove_stale(_root() / name)
