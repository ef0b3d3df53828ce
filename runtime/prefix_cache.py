"""A bounded LRU of KV prefixes in memory: a prompt that starts like an earlier one (two
conversations alternating on a server, a tool resending the same system prompt and files with
a new question) prefills only what is new.

An entry is a copy of a session's first rows, keyed by their token ids; a prompt uses the entry
with which it shares the longest common token prefix, to the token. Found by a linear scan: the
memory bound keeps entries few (1 GiB holds about 18k tokens of the 1.5B's 57 KB rows), and
comparing a 4k-token prompt with each entry costs microseconds in numpy, so neither a trie nor
hashes at block boundaries (which would round every match down to a block) would pay for
themselves. Entries are copies: evicting one never touches a running request, whose KV lives
in its session's cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..contract.errors import InputError


@dataclass
class KVRows:
    """The KV rows of a token prefix, copied out of a session's cache."""

    tokens: np.ndarray  # int32 [n]
    keys: np.ndarray  # [layers, kv_heads, n, head_dim]
    values: np.ndarray  # [layers, kv_heads, n, head_dim]

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.tokens.nbytes + self.keys.nbytes + self.values.nbytes


def token_array(tokens: Sequence[int]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int32)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


def copy_prefix(kv, tokens: np.ndarray) -> KVRows:
    """The first len(tokens) rows of KVCache `kv` as an entry."""
    keys, values = kv.copy_rows(len(tokens))
    return KVRows(tokens.copy(), keys, values)


class PrefixCache:
    """KV prefixes of one model, at most `max_bytes` of them, least recently used evicted first.
    Safe to share between threads (a server's /stats reads it while the model's thread writes)."""

    def __init__(self, max_bytes: int):
        if not (isinstance(max_bytes, int) and max_bytes >= 0):
            raise InputError(f"prefix cache size must be a whole number of bytes >= 0 (got {max_bytes!r})")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, KVRows] = OrderedDict()  # least recently used first
        self._next_key = 0
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, tokens: Sequence[int], at_least: int = 0) -> tuple[int, KVRows | None]:
        """The entry sharing the longest prefix with `tokens`, if longer than `at_least` (rows
        the caller holds already), and that length; else (0, None). Rows past the length belong
        to other tokens: use only the first `length`."""
        ids = token_array(tokens)
        with self._lock:
            best, found = at_least, None
            for key, entry in self._entries.items():
                n = common_prefix(entry.tokens, ids)
                if n > best:
                    best, found = n, key
            if found is None:
                self.misses += 1
                return 0, None
            self.hits += 1
            self._entries.move_to_end(found)
            return best, self._entries[found]

    def insert(self, tokens: Sequence[int], kv) -> None:
        """Keep a copy of the first len(tokens) rows of KVCache `kv` (the KV of `tokens`). Entries
        that are prefixes of it go (it serves them all); an entry that already begins with
        `tokens` is only marked used. As much of the start as fits when the whole does not."""
        ids = token_array(tokens)
        fits = self.max_bytes // (kv.row_nbytes + ids.itemsize)
        ids = ids[:fits]
        if not len(ids):
            return
        with self._lock:
            for key, entry in self._entries.items():
                if common_prefix(entry.tokens, ids) == len(ids):  # an entry covers it already
                    self._entries.move_to_end(key)
                    return
            for key in [k for k, e in self._entries.items() if common_prefix(e.tokens, ids) == len(e)]:
                self._drop(key)
            entry = copy_prefix(kv, ids)
            while self._entries and self.nbytes + entry.nbytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
                self.evictions += 1
            self._entries[self._next_key] = entry
            self._next_key += 1
            self.nbytes += entry.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def _drop(self, key: int) -> None:
        self.nbytes -= self._entries.pop(key).nbytes

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self.nbytes, "max_bytes": self.max_bytes,
                    "tokens": sum(len(e) for e in self._entries.values()), "hits": self.hits,
                    "misses": self.misses, "evictions": self.evictions}
