"""What export keeps in the cache (assembled GGUFs, dequantized Hugging Face folders, preset
bundles), and what of the whole cache can be rebuilt, for `edgespec cache [--prune]`.

Where the cache is: contract/cache.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..contract.cache import cache_dir, location
from ..contract.files import remove_stale


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
        remove_stale(location() / name)


# --- what the cache holds, and what can go ---------------------------------------------------

# Top-level folders and what each holds (what prune removes: `entries`).
KINDS = {
    "gguf": "assembled GGUFs of presets (the source of their bundles; prunable while the packages are installed)",
    "hf": "Hugging Face folders dequantized from GGUFs (export input, rebuilt on demand)",
    "bundles": "prepared preset bundles",
    "verified": "integrity stamps of verified bundle files",
    "profiles": "device latency profiles",
    "prompts": "KV rows of long prompts (runtime/prompt_store.py), rebuilt by prefilling",
}


@dataclass
class Entry:
    kind: str
    path: Path
    bytes: int
    why: str | None = None  # why prune would remove it; None: kept


def entries() -> list[Entry]:
    """Every item of the cache's top-level folders, with its size and whether prune removes it:
    dequantized folders (rebuilt when an export needs them), work folders of dead processes,
    preset bundles of a recipe the preset no longer uses, and stamps of bundles that are gone."""
    from . import presets
    from .bundles import preset_bundle_dir
    from ..contract.files import _WORK, owner_alive
    root = location()
    current = {preset_bundle_dir(p, presets.get(p).recipe()).name for p in presets.names()}
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for item in sorted(folder.iterdir()):
            why = None
            work = _WORK.match(item.name)
            if work:
                why = None if owner_alive(item, int(work["pid"])) else "left by a killed export"
            elif folder.name == "hf":
                why = "dequantized source, rebuilt on demand"
            elif folder.name == "gguf" and _parts_installed(item.name):
                why = "assembled again from the installed packages on demand"
            elif folder.name == "prompts":
                why = "a prompt's KV, rebuilt by prefilling"
            elif folder.name == "bundles" and item.name not in current:
                why = "a recipe no preset uses now"
            elif folder.name == "verified" and not _stamped_bundle_exists(item):
                why = "its bundle is gone"
            found.append(Entry(folder.name, item, _size(item), why))
    return found


def prune(dry_run: bool = False) -> list[Entry]:
    """Remove what `entries` marks prunable; return it."""
    from ..contract.files import _remove
    gone = [e for e in entries() if e.why]
    if not dry_run:
        for e in gone:
            _remove(e.path)
    return gone


def _parts_installed(name: str) -> bool:
    """Whether the GGUF file `name` (or its .sha256) is a preset's whose parts are all installed."""
    from . import presets
    for preset in map(presets.get, presets.names()):
        if name in (preset.gguf_name, preset.gguf_name + ".sha256"):
            try:
                return all(part.locate().is_file() for part in preset.parts)
            except ModuleNotFoundError:
                return False
    return False


def _stamped_bundle_exists(stamp: Path) -> bool:
    import json
    try:
        bundle = json.loads(stamp.read_text()).get("bundle")
    except (OSError, ValueError, AttributeError):
        return False
    return bundle is None or Path(bundle).is_dir()


def _size(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if not p.is_dir() or p.is_symlink())
