"""Where edgespec keeps its files (GGUFs, dequantized folders, bundles, stamps, profiles, prompts).

`$EDGESPEC_CACHE` if set, else `$XDG_CACHE_HOME/edgespec` (default `~/.cache/edgespec`).
Read from the environment on every call, so a test can point it at a temporary folder.
What export keeps there, and what can go, is export/cache.py's.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    root = location()
    root.mkdir(parents=True, exist_ok=True)
    return root


def location() -> Path:
    """Where the cache is, without creating it (listing an absent cache makes nothing)."""
    env = os.environ.get("EDGESPEC_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "edgespec"


def cache_dir(name: str) -> Path:
    path = cache_root() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
