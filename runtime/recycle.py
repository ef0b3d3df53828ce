"""Token recycling: draft from what the target already said about every token.

Each verify pass computes the target's distribution after every tree node.
The top-k of each row is kept in an adjacency table, token -> likely next
tokens (int32 [vocab, k]: 4.9 MB for a 152k vocabulary at k = 8, fixed
size), overwritten as fresher rows arrive. Drafting expands a tree from the
root best-first through that table: no model, no training.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import numpy as np

from .policy_config import DEFAULT, PolicyConfig
from .tree import DraftTree


class RecycleDrafter:
    name = "recycle"

    def __init__(self, vocab_size: int, k: int | None = None, rank_decay: float | None = None,
                 config: PolicyConfig = DEFAULT):
        """k, rank_decay: this table's own (None: the config's recycle_width, recycle_rank_decay)."""
        self.k = config.recycle_width if k is None else k
        # prior weight of the r-th candidate: rank_decay ** r
        self.rank_decay = config.recycle_rank_decay if rank_decay is None else rank_decay
        self.table = np.full((vocab_size, self.k), -1, dtype=np.int32)  # [vocab, k]

    @property
    def nbytes(self) -> int:
        return self.table.nbytes

    def start(self, prompt_len: int, end: int) -> None:
        pass

    def reset(self) -> None:
        """The table is knowledge about the model, not about one sequence: keep it."""

    def learn(self, tokens: Sequence[int], logits: np.ndarray) -> None:
        """Row i of logits [S, V] is the target's view after token tokens[i]."""
        top = np.argpartition(-logits, self.k, axis=-1)[:, : self.k]  # [S, k] unordered
        order = np.take_along_axis(logits, top, -1).argsort(-1)[:, ::-1]
        self.table[np.asarray(tokens)] = np.take_along_axis(top, order, -1)  # [S, k] best first

    def propose(self, context: Sequence[int], budget: int) -> DraftTree:
        tree = DraftTree(context[-1])
        heap = [(-1.0, 0)]  # (-score, node): expand the most promising node first
        while heap and len(tree) - 1 < budget:
            neg, node = heapq.heappop(heap)
            for r, t in enumerate(self.table[tree.tokens[node]]):
                if t < 0 or len(tree) - 1 >= budget:
                    break
                child = tree.add(node, int(t))
                heapq.heappush(heap, (neg * self.rank_decay ** (r + 1), child))
        return tree

    def observe(self, report) -> None:
        self.learn(report.tree.tokens, report.logits)
