"""Prompts' KV rows on disk, so that `run` and `chat` reopened with the same system prompt and
files prefill only what is new (llama.cpp's prompt cache, for many prompts at once).

One file per prompt in <cache root>/prompts, named `BUNDLE-FIRST-ALL.kv`: the bundle's identity,
a hash of the prompt's first BLOCK token ids and a hash of all of them. A new prompt's
candidates are the files of its bundle that begin with the same BLOCK tokens; their
headers hold the token ids themselves, so the match is the exact longest common prefix and a
hash collision cannot return a wrong one. A file is used only after every check passes (format
version, bundle identity, shapes and dtype, length, sha256 of tokens and rows); one that fails
is ignored with a warning and replaced by the next write of its prompt. Files are written
atomically (contract/files.py); the folder stays under its byte bound by removing the files used
least recently (a hit touches its file).

Only prompts of at least `min_tokens` (256) are stored: shorter ones are mostly one-off
questions whose files would push out the system prompts and pasted files that do come back,
and they prefill in a few seconds anyway.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract.errors import EdgespecError, InputError
from .prefix_cache import KVRows, common_prefix, token_array

FORMAT = "edgespec-prompt-cache"
VERSION = 1
MAGIC = b"EDGESPEC-KV\n"
MIN_TOKENS = 256
BLOCK = 64  # tokens hashed into a file's name: past a chat template's preamble (~20 for Qwen)
MAX_BYTES = 2 << 30
_LENGTH = struct.Struct("<I")  # header bytes after the magic
_TEMP = re.compile(r"^\..+\.tmp-(?P<pid>\d+)-[0-9a-f]+\.kv$")  # contract/files.replacing's temporaries


class PromptCacheWarning(UserWarning):
    """A prompt cache file was ignored (stale, corrupt) or could not be written."""


class _Unusable(Exception):
    """Why one file cannot be used."""


def prompts_dir() -> Path:
    from ..contract.cache import cache_dir
    return cache_dir("prompts")


def bundle_identity(session) -> str:
    """sha256 of what a session's KV rows depend on: the bundle's files (their sha256s, recorded
    at export and checked at load; for older bundles the source, recipe and file sizes and
    times), the graphs it runs (prompts may run a prefill graph of their own) and the provider
    computing them."""
    m = session.manifest
    if m.files:
        files = m.files
    else:
        files = {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(session.path.iterdir())
                 if p.is_file() and p.name != "edgespec.json"}
        files = {"source": m.source, "quant": m.quant, "layers_kept": m.layers_kept, "files": files}
    basis = {"files": files, "graph": session.model_file, "io_dtype": m.io_dtype,
             "provider": session.sess.get_providers()[0]}
    if session.prefill_sess is not None:
        basis["prompt_graph"] = m.prefill_graph["model_file"]
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def _hash(ids: np.ndarray) -> str:
    return hashlib.sha256(ids.astype("<i4").tobytes()).hexdigest()


class PromptStore:
    """The prompt cache of one session's bundle (see the module docstring)."""

    def __init__(self, session, folder: str | Path | None = None, max_bytes: int = MAX_BYTES,
                 min_tokens: int = MIN_TOKENS):
        self.folder = Path(folder) if folder is not None else prompts_dir()
        self.identity = bundle_identity(session)
        if min_tokens < BLOCK:
            raise InputError(f"prompt cache min_tokens must be >= {BLOCK} (got {min_tokens})")
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        m = session.manifest
        self.shape = [m.num_layers, m.num_kv_heads, m.head_dim]
        self.dtype = np.dtype(m.io_dtype)
        self.reads = self.writes = 0
        self._bad: set[Path] = set()  # files that failed a check here: rewritten, never used

    # --- lookup ---------------------------------------------------------------------------

    def lookup(self, tokens: Sequence[int], at_least: int = 0) -> tuple[int, KVRows | None]:
        """The stored prompt sharing the longest prefix with `tokens`, if longer than `at_least`:
        (length, its rows), only the first `length` of which belong to `tokens`; else (0, None)."""
        ids = token_array(tokens)
        if len(ids) < BLOCK:
            return 0, None
        candidates = []
        for path in self.folder.glob(self._prefix(ids) + "*.kv"):
            if path in self._bad:  # warned about once
                continue
            try:
                header, stored = self._read_head(path)
            except FileNotFoundError:  # another process evicted it
                continue
            except (_Unusable, OSError) as e:
                self._ignore(path, e)
                continue
            n = common_prefix(stored, ids)
            if n > at_least:
                candidates.append((n, path.name, path, header))
        for n, _, path, header in sorted(candidates, reverse=True):
            try:
                rows = self._read(path, header)
            except FileNotFoundError:
                continue
            except (_Unusable, OSError) as e:
                self._ignore(path, e)
                continue
            self.reads += 1
            _touch(path)
            return n, rows
        return 0, None

    def _ignore(self, path: Path, reason: Exception) -> None:
        self._bad.add(path)
        if isinstance(reason, OSError):
            reason = f"cannot read it ({reason.strerror or reason})"
        _warn(f"ignoring prompt cache file {path}: {reason}")

    def _prefix(self, ids: np.ndarray) -> str:
        return f"{self.identity[:16]}-{_hash(ids[:BLOCK])[:16]}-"

    def _read_head(self, path: Path) -> tuple[dict, np.ndarray]:
        """The checked header and the stored token ids (not yet checksummed)."""
        with open(path, "rb") as f:
            header = _parse_header(f, path)
            expected = self._expected(header)
            if expected:
                raise _Unusable(expected)
            size = os.fstat(f.fileno()).st_size
            if size != header["_payload_at"] + header["payload_bytes"]:
                raise _Unusable(f"{size} bytes, its header says {header['_payload_at'] + header['payload_bytes']} "
                                f"(truncated?)")
            stored = np.frombuffer(f.read(4 * header["tokens"]), "<i4")
        return header, stored

    def _expected(self, header: dict) -> str:
        """What in a parsed header does not fit this bundle ('' when all does)."""
        if header.get("format") != FORMAT:
            return f"not a prompt cache file (format {header.get('format')!r})"
        if header.get("version") != VERSION:
            return f"format version {header.get('version')!r}, this edgespec reads version {VERSION}"
        if header.get("bundle") != self.identity:
            return "made for another bundle (or another version of this one)"
        if header.get("shape") != self.shape or header.get("dtype") != self.dtype.str:
            return (f"KV shape {header.get('shape')} {header.get('dtype')}, the bundle has "
                    f"{self.shape} {self.dtype.str}")
        n = header.get("tokens")
        if not (type(n) is int and n >= 1 and isinstance(header.get("sha256"), str)):
            return "header without a token count or checksum"
        row = 2 * self.dtype.itemsize * int(np.prod(self.shape))
        if header.get("payload_bytes") != n * (4 + row):
            return f"payload of {header.get('payload_bytes')} bytes for {n} tokens (expected {n * (4 + row)})"
        return ""

    def _read(self, path: Path, header: dict) -> KVRows:
        with open(path, "rb") as f:
            f.seek(header["_payload_at"])
            payload = f.read()
        if len(payload) != header["payload_bytes"]:
            raise _Unusable(f"payload of {len(payload)} bytes, its header says {header['payload_bytes']} (truncated?)")
        if hashlib.sha256(payload).hexdigest() != header["sha256"]:
            raise _Unusable("payload checksum mismatch (corrupt file)")
        n = header["tokens"]
        layers, heads, dim = self.shape
        tokens = np.frombuffer(payload, "<i4", n).astype(np.int32)
        rows = np.frombuffer(payload, self.dtype, offset=4 * n).reshape(2, layers, heads, n, dim)
        return KVRows(tokens, rows[0], rows[1])  # [layers, kv_heads, n, head_dim] each

    # --- store ----------------------------------------------------------------------------

    def store(self, tokens: Sequence[int], kv) -> Path | None:
        """Write the first len(tokens) rows of KVCache `kv` (the KV of `tokens`) when at least
        `min_tokens` of them are not stored yet: a question after stored files does not copy the
        files again (their file serves it), a conversation is rewritten as it grows. Files of
        prompts that this one extends go. A failed write (a full disk) is a warning only."""
        ids = token_array(tokens)
        if len(ids) - self._stored_prefix(ids) < self.min_tokens:
            return None
        keys, values = kv.copy_rows(len(ids))  # [layers, kv_heads, n, head_dim] each
        parts = [ids.astype("<i4"), keys.astype(self.dtype, copy=False), values.astype(self.dtype, copy=False)]
        digest = hashlib.sha256()
        for p in parts:
            digest.update(memoryview(np.ascontiguousarray(p)).cast("B"))
        header = json.dumps({"format": FORMAT, "version": VERSION, "bundle": self.identity, "shape": self.shape,
                             "dtype": self.dtype.str, "tokens": len(ids),
                             "payload_bytes": sum(p.nbytes for p in parts), "sha256": digest.hexdigest()}).encode()
        path = self.folder / f"{self._prefix(ids)}{_hash(ids)[:32]}.kv"
        from ..contract.files import replacing
        try:
            with replacing(path) as tmp, open(tmp, "wb") as f:
                f.write(MAGIC + _LENGTH.pack(len(header)) + header)
                for p in parts:
                    f.write(memoryview(np.ascontiguousarray(p)).cast("B"))
        except EdgespecError as e:
            _warn(f"prompt cache not written: {e}")
            return None
        self.writes += 1
        self._bad.discard(path)
        try:
            self._drop_prefixes_of(ids, path)
            self._evict(keep=path)
        except OSError as e:
            _warn(f"prompt cache not trimmed: cannot remove a file in {self.folder}: {e.strerror or e}")
        return path

    def _stored(self, ids: np.ndarray):
        """(path, token ids) of the usable-looking files that begin like `ids`."""
        if len(ids) < BLOCK:
            return
        for path in self.folder.glob(self._prefix(ids) + "*.kv"):
            if path in self._bad:
                continue
            try:
                yield path, self._read_head(path)[1]
            except (OSError, _Unusable):
                continue

    def _stored_prefix(self, ids: np.ndarray) -> int:
        """The longest prefix of `ids` that a file holds (that file is touched: it is in use)."""
        best, used = 0, None
        for path, stored in self._stored(ids):
            n = common_prefix(stored, ids)
            if n > best:
                best, used = n, path
        if used is not None:
            _touch(used)
        return best

    def _drop_prefixes_of(self, ids: np.ndarray, written: Path) -> None:
        for path, stored in list(self._stored(ids)):
            if path != written and common_prefix(stored, ids) == len(stored):
                path.unlink(missing_ok=True)

    def _evict(self, keep: Path) -> None:
        """Remove the least recently used files (of any bundle) until the folder fits its bound;
        and temporaries of writers that were killed."""
        from ..contract.files import owner_alive
        files = []
        for entry in self.folder.iterdir():
            temp = _TEMP.match(entry.name)
            try:
                if temp and not owner_alive(entry, int(temp["pid"])):
                    entry.unlink()
                elif entry.suffix == ".kv" and not temp:
                    st = entry.stat()
                    files.append((st.st_mtime, entry, st.st_size))
            except OSError:
                continue
        total = sum(size for _, _, size in files)
        for _, entry, size in sorted(files):
            if total <= self.max_bytes:
                break
            if entry != keep:
                entry.unlink(missing_ok=True)
                total -= size

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.glob("*.kv"))


def _parse_header(f, path: Path) -> dict:
    start = f.read(len(MAGIC) + _LENGTH.size)
    if len(start) < len(MAGIC) + _LENGTH.size or not start.startswith(MAGIC):
        raise _Unusable("not a prompt cache file (no edgespec header)")
    (length,) = _LENGTH.unpack(start[len(MAGIC):])
    raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _Unusable("unreadable header (corrupt or truncated file)") from None
    if not isinstance(header, dict):
        raise _Unusable("unreadable header (corrupt file)")
    header["_payload_at"] = len(start) + length
    return header


def _touch(path: Path) -> None:
    try:
        os.utime(path)
    except OSError:
        pass


def _warn(message: str) -> None:
    warnings.warn(message, PromptCacheWarning, stacklevel=3)
