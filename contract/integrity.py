"""Load-time checks of a bundle: its files against the sizes and sha256 recorded at export,
and its manifest against the graph ONNX Runtime loaded.

Without them a flipped byte in the weights runs and prints different text, and a
truncated file or a manifest that contradicts its graph fails deep inside ONNX
Runtime. Export records every file but the manifest in its `files`
({name: {"bytes", "sha256"}}); `verify` checks them, `check_graph` the rest.

What a load costs: sizes always (one stat per file). Hashing runs at ~1.5 GB/s on
an x86 core with SHA extensions (several times slower without), 0.7 s for a 1 GiB
bundle: too slow for every `edgespec run`. So each file is hashed once per state:
a verified file gets a stamp (size, mtime_ns, ctime_ns, inode and its sha256) in
the cache, `verified/<hash of the bundle path>.json`, written atomically, and a
later load that finds the same stats only stats (0.1-0.2 ms for a whole bundle).
Writing to a file changes its mtime and ctime (ctime cannot be set back), so a
changed file is hashed again; a copied or moved bundle is hashed once in its new
place. The bundle itself is never written, so read-only bundles work (with an
unwritable cache, every load hashes).

Bundles exported before these records have nothing to check against: a folder
given by path loads unchecked (re-export it to get the check); a preset bundle in
the cache gets its records on first use (export/upgrade.py), from its files as
they are then.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from .cache import cache_root
from .errors import BundleError, EdgespecError
from .files import atomic_write_text
from .manifest import MANIFEST_NAME, Manifest

# ONNX Runtime's element types of the KV cache, as numpy names (the manifest's io_dtype)
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "bfloat16",
               "tensor(double)": "float64"}
_BUFFER = 1 << 20  # bytes per read: faster here than 8 MiB, and never a whole model in memory
_PROGRESS_FROM = 256 << 20  # files this big show a progress bar while hashed


def record_files(bundle: Path) -> dict:
    """{relative name: {"bytes", "sha256"}} of every file in `bundle` but the manifest and
    hidden work files (a killed write's `.NAME.tmp-PID`, which a later run removes)."""
    bundle = Path(bundle)
    files = {}
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        name = path.relative_to(bundle).as_posix()
        if name == MANIFEST_NAME or any(part.startswith(".") for part in name.split("/")):
            continue
        files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path, progress=False)}
    return files


def stamp(bundle: Path, manifest: Manifest) -> None:
    """Stamp a bundle just published as verified: its files were hashed as they were written,
    so its first load need not read them all again."""
    bundle = Path(bundle)
    _write_stamp(bundle, {name: _stamp_of((bundle / name).stat(), recorded["sha256"])
                          for name, recorded in manifest.files.items()})


def verify(bundle: Path, manifest: Manifest) -> None:
    """Check the recorded files of `bundle`: sizes always, contents unless stamped as verified."""
    bundle = Path(bundle)
    stats = {}
    for name, recorded in manifest.files.items():
        path = bundle / name
        try:
            stats[name] = st = path.stat()
        except FileNotFoundError:
            raise BundleError(f"{path} is missing (export recorded {recorded['bytes']:,} bytes); "
                              "re-export the bundle") from None
        except OSError as e:
            raise BundleError(f"cannot read {path}: {e.strerror}") from None
        if st.st_size != recorded["bytes"]:
            raise BundleError(f"{path} has {st.st_size:,} bytes, export recorded {recorded['bytes']:,} "
                              "(truncated or replaced?); re-export the bundle")
    stamped = _read_stamp(bundle)
    fresh = {name: _stamp_of(st, manifest.files[name]["sha256"]) for name, st in stats.items()}
    unverified = [name for name in fresh if stamped.get(name) != fresh[name]]
    for name in unverified:
        try:
            actual = file_sha256(bundle / name)
        except OSError as e:
            raise BundleError(f"cannot read {bundle / name}: {e.strerror}") from None
        if actual != manifest.files[name]["sha256"]:
            raise BundleError(f"{bundle / name} does not match the sha256 recorded at export "
                              "(flipped bytes?); re-export the bundle")
    if unverified:
        _write_stamp(bundle, fresh)


def check_graph(sess, manifest: Manifest, bundle: Path, model_file: str) -> None:
    """The manifest's num_layers, io_dtype, num_kv_heads, head_dim and vocab_size against the
    inputs and outputs of the loaded graph (ORT's metadata: nothing more to read). Dimensions
    the graph leaves symbolic are not checked."""
    m = manifest

    def contradicts(field: str, graph_value, what: str):
        raise BundleError(f"{Path(bundle) / MANIFEST_NAME}: {field} is {json.dumps(getattr(m, field))} but "
                          f"{model_file} has {graph_value} ({what}); re-export the bundle")

    pattern = re.escape(m.inputs["past_key"]).replace("%d", r"\d+")
    past = [i for i in sess.get_inputs() if re.fullmatch(pattern, i.name)]  # [1, kv_heads, past, head_dim]
    if len(past) != m.num_layers:
        contradicts("num_layers", len(past), f"{m.inputs['past_key'].replace('%d', 'N')} inputs")
    if past:
        dtype = _ORT_DTYPES.get(past[0].type, past[0].type)
        if dtype != m.io_dtype:
            contradicts("io_dtype", json.dumps(dtype), f"element type of {past[0].name}")
        for field, axis in (("num_kv_heads", 1), ("head_dim", 3)):
            dim = past[0].shape[axis] if len(past[0].shape) == 4 else None
            if isinstance(dim, int) and dim != getattr(m, field):
                contradicts(field, dim, f"axis {axis} of {past[0].name}")
    logits = next((o for o in sess.get_outputs() if o.name == m.outputs["logits"]), None)
    if logits is None:
        raise BundleError(f"{Path(bundle) / MANIFEST_NAME}: outputs.logits is {json.dumps(m.outputs['logits'])} "
                          f"but {model_file} has no such output; re-export the bundle")
    vocab = logits.shape[-1] if logits.shape else None
    if model_file == m.model_file and isinstance(vocab, int) and vocab != m.vocab_size:
        contradicts("vocab_size", vocab, f"last axis of {logits.name}")  # a draft head has fewer columns


def file_sha256(path: Path, progress: bool = True) -> str:
    """progress: a bar for big files (not inside another task's bar, such as an export's)."""
    from tqdm import tqdm
    h, buffer = hashlib.sha256(), bytearray(_BUFFER)
    view = memoryview(buffer)
    size = os.path.getsize(path)
    with open(path, "rb", buffering=0) as f, tqdm(
            total=size, desc=f"hashing {Path(path).name}", unit="B", unit_scale=True,
            unit_divisor=1024, file=sys.stderr, leave=False,
            disable=not progress or size < _PROGRESS_FROM) as bar:
        while n := f.readinto(buffer):
            h.update(view[:n])
            bar.update(n)
    return h.hexdigest()


# --- stamps: "these files, at these stats, had their recorded sha256" -------------------------

def _stamp_path(bundle: Path) -> Path:
    key = hashlib.sha256(str(bundle.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "verified" / f"{key}.json"


def _stamp_of(st: os.stat_result, sha256: str) -> list:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha256]


def _read_stamp(bundle: Path) -> dict:
    try:
        data = json.loads(_stamp_path(bundle).read_text())
    except (OSError, ValueError):  # none yet, a damaged one or no cache: hash again
        return {}
    if not isinstance(data, dict) or data.get("bundle") != str(bundle.resolve()):
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _write_stamp(bundle: Path, files: dict) -> None:
    path = _stamp_path(bundle)
    try:
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps({"bundle": str(bundle.resolve()), "files": files}))
    except (OSError, EdgespecError):  # an unwritable cache: the next load hashes again
        pass
