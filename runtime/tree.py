"""DraftTree: the token tree that one verify pass feeds to the target.

Node 0 is the root: the last accepted token, whose KV is not yet in the cache.
Every other node is a drafted token. The whole tree goes to the target in node
order, each node at position `past_len + depth` and seeing only the cached
context and its own ancestors, so one pass scores every root-to-node path.

Invariant: parents[i] < i (parents come before children), so node order is a
topological order and truncating the node list keeps a valid tree.

`q[i]` is the draft distribution node i's token was *sampled* from, or None if
it was chosen deterministically (argmax, top-k, lookup). Children of one parent
sampled i.i.d. from the same distribution share one q array. Deterministic
nodes trie-merge (same parent, same token: one node); sampled nodes never do,
because verification relies on each sampled token being an independent draw.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..contract.errors import InputError


class DraftTree:
    def __init__(self, root_token: int):
        self.tokens: list[int] = [int(root_token)]
        self.parents: list[int] = [-1]
        self.q: list[np.ndarray | None] = [None]
        self._depth: list[int] = [0]
        self._children: list[list[int]] = [[]]

    def __len__(self) -> int:
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"DraftTree(tokens={self.tokens}, parents={self.parents})"

    # -- building --------------------------------------------------------------

    def add(self, parent: int, token: int, q: np.ndarray | None = None) -> int:
        """Append `token` as a new child of `parent`; return its node index."""
        if not 0 <= parent < len(self):
            raise InputError(f"parent {parent} is not a node of this {len(self)}-node tree; "
                             f"use an index in [0, {len(self) - 1}]")
        i = len(self)
        assert parent < i, "parents must come before children"
        self.tokens.append(int(token))
        self.parents.append(int(parent))
        self.q.append(q)
        self._depth.append(self._depth[parent] + 1)
        self._children.append([])
        self._children[parent].append(i)
        return i

    def find_child(self, parent: int, token: int) -> int | None:
        """The deterministic child of `parent` with `token`, if any (trie lookup)."""
        for c in self._children[parent]:
            if self.tokens[c] == token and self.q[c] is None:
                return c
        return None

    def add_path(self, parent: int, tokens: Sequence[int],
                 qs: Sequence[np.ndarray | None] | None = None) -> list[int]:
        """Add tokens as a chain under `parent`; return the chain's node indices.

        A deterministic token (q None) reuses an existing deterministic child
        with the same token, so paths from several drafters share prefixes.
        """
        if qs is not None and len(qs) != len(tokens):
            raise InputError(f"add_path got {len(tokens)} tokens but {len(qs)} draft "
                             f"distributions; pass one q (or None) per token")
        nodes = []
        for j, t in enumerate(tokens):
            q = None if qs is None else qs[j]
            node = self.find_child(parent, int(t)) if q is None else None
            parent = self.add(parent, t, q) if node is None else node
            nodes.append(parent)
        return nodes

    @classmethod
    def chain(cls, root: int, tokens: Sequence[int],
              qs: Sequence[np.ndarray | None] | None = None) -> "DraftTree":
        tree = cls(root)
        tree.add_path(0, tokens, qs)
        return tree

    def merge(self, other: "DraftTree") -> "DraftTree":
        """Graft `other` (same root token) into this tree in place; return self."""
        if other.tokens[0] != self.tokens[0]:
            raise InputError(f"cannot merge trees with different roots "
                             f"({other.tokens[0]} into {self.tokens[0]}); drafts must start "
                             f"from the same last accepted token")
        where = [0] * len(other)  # other's node -> our node
        for j in range(1, len(other)):
            parent, t, q = where[other.parents[j]], other.tokens[j], other.q[j]
            node = self.find_child(parent, t) if q is None else None
            where[j] = self.add(parent, t, q) if node is None else node
        return self

    def prune(self, max_nodes: int) -> "DraftTree":
        """Keep the root and the first `max_nodes` drafted nodes (insertion order); in place.

        Node order is topological, so any prefix is a tree. Drafters add their
        best nodes first; list the nodes in priority order before pruning.
        """
        if max_nodes < 0:
            raise InputError(f"max_nodes must be >= 0 (got {max_nodes})")
        n = min(len(self), max_nodes + 1)
        del self.tokens[n:], self.parents[n:], self.q[n:], self._depth[n:], self._children[n:]
        for kids in self._children:
            kids[:] = [c for c in kids if c < n]
        return self

    # -- reading ---------------------------------------------------------------

    def children(self, i: int) -> list[int]:
        return list(self._children[i])

    def depths(self) -> np.ndarray:
        return np.asarray(self._depth, dtype=np.int64)  # [S]

    def path(self, i: int) -> list[int]:
        """Node indices from the root to i, inclusive."""
        out = []
        while i >= 0:
            out.append(i)
            i = self.parents[i]
        return out[::-1]

    def path_tokens(self, i: int) -> list[int]:
        return [self.tokens[j] for j in self.path(i)]

    def ancestors(self) -> np.ndarray:
        """anc[i, j] = node j is i or an ancestor of i."""
        s = len(self)
        anc = np.zeros((s, s), dtype=bool)  # [S, S]
        for i, p in enumerate(self.parents):
            assert p < i, f"node {i} has parent {p}: parents must come before children"
            if p >= 0:
                anc[i] = anc[p]
            anc[i, i] = True
        return anc

    def position_ids(self, past_len: int) -> np.ndarray:
        return (past_len + self.depths())[None, :]  # [1, S]

    def attention_bias(self, past_len: int) -> np.ndarray:
        """0 where a node may attend (all past rows, its ancestors and itself), -inf elsewhere."""
        s = len(self)
        bias = np.full((1, 1, s, past_len + s), -np.inf, dtype=np.float32)  # [1, 1, S, past + S]
        bias[..., :past_len] = 0.0
        bias[0, 0, :, past_len:][self.ancestors()] = 0.0  # [S, S] tree block
        return bias
