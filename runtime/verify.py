"""Verification: which drafted nodes the target accepts, and its next token.

Both verifiers walk the tree from the root. The tokens a pass emits are the
accepted nodes' tokens (root excluded) followed by `next_token`, the target's
own token at the last accepted node (bonus when everything matched, correction
otherwise), so every pass emits at least one token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampling import sample
from .tree import DraftTree


@dataclass
class Verdict:
    accepted: list[int]  # node indices on the accepted path, starting with the root 0
    next_token: int  # the target's token at the last accepted node
    proposed: int  # drafted nodes in the tree (root excluded), for stats
    tokens: list[int]  # emitted by this pass: accepted drafted tokens + next_token

    @property
    def num_accepted(self) -> int:
        return len(self.accepted) - 1


def _verdict(tree: DraftTree, accepted: list[int], next_token: int) -> Verdict:
    tokens = [tree.tokens[i] for i in accepted[1:]] + [int(next_token)]
    return Verdict(accepted, int(next_token), len(tree) - 1, tokens)


def _check(tree: DraftTree, scores: np.ndarray, what: str) -> None:
    if scores.ndim != 2 or scores.shape[0] != len(tree):
        raise ValueError(f"{what} must be [S, V] with S = {len(tree)} tree nodes "
                         f"(got shape {scores.shape}); feed the whole tree in node order")
    if max(tree.tokens) >= scores.shape[1]:
        raise ValueError(f"draft token {max(tree.tokens)} is outside the target vocabulary "
                         f"of {scores.shape[1]}; draft and target must share a tokenizer")


def verify_greedy(tree: DraftTree, logits: np.ndarray) -> Verdict:
    """Longest path whose every token is the target's argmax at its parent."""
    logits = np.asarray(logits)  # [S, V]
    _check(tree, logits, "logits")
    best = logits.argmax(-1)  # [S] target's greedy token after each node
    node, accepted = 0, [0]
    while True:
        nxt = next((c for c in tree.children(node) if tree.tokens[c] == best[node]), None)
        if nxt is None:
            return _verdict(tree, accepted, best[node])
        node = nxt
        accepted.append(node)


def verify_sampling(tree: DraftTree, probs: np.ndarray, rng: np.random.Generator) -> Verdict:
    """Multi-candidate rejection sampling (SpecInfer; recursive rejection sampling).

    At each node, with the target's distribution p there, try the children in
    order. Child token x was drawn from q (a delta at x when q is None): accept
    with probability min(1, p(x)/q(x)); on rejection the leftover target mass is
    p <- norm(max(p - q, 0)), and the next child is tried against that. When
    no child is accepted, the next token is drawn from the current p.

    The emitted tokens follow the target distribution exactly provided each
    child was drawn from its q independently of its siblings: deterministic
    children trivially, children sampled i.i.d. with replacement from one q
    (SpecInfer's theorem). Siblings drawn *without* replacement are not exact.
    """
    probs = np.asarray(probs, dtype=np.float64)  # [S, V]
    _check(tree, probs, "probs")
    node, accepted = 0, [0]
    while True:
        p = probs[node]  # [V] target distribution after the path root..node
        for c in tree.children(node):
            x, q = tree.tokens[c], tree.q[c]
            qx = 1.0 if q is None else float(q[x])
            # accept x w.p. min(1, p(x)/q(x)): u < p/q  <=>  u*q < p
            if rng.random() * qx < p[x]:
                break
            # rejected: the target mass q did not cover, p <- norm(max(p - q, 0))
            if q is None:
                r = p.copy()
                r[x] = 0.0  # max(p - delta_x, 0)
            else:
                r = np.maximum(p - q, 0.0)  # [V]
            total = r.sum()
            # total == 0 means p <= q everywhere, i.e. p == q: rejection had
            # probability 0 and only rounding got us here; keep p.
            if total > 1e-12:
                p = r / total
        else:
            return _verdict(tree, accepted, sample(p, rng))
        node = c
        accepted.append(node)
