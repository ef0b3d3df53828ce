"""Prompt lookup: a model-free drafter that copies what followed earlier n-grams.

The suffix n-gram of the context (longest first, max_ngram down to min_ngram)
is looked up among its earlier occurrences, most recent first; the tokens that
followed each occurrence become a branch under the root, trie-merged, so
distinct continuations give a small tree. An index from n-gram to the
positions after its occurrences grows with the context, so a proposal costs
O(matches), not O(context).
"""

from __future__ import annotations

from typing import Sequence

from ..contract.errors import InputError
from .policy_config import DEFAULT, PolicyConfig
from .tree import DraftTree


class NgramDrafter:
    name = "ngram"

    def __init__(self, max_ngram: int | None = None, min_ngram: int | None = None, max_draft: int | None = None,
                 max_branches: int | None = None, max_matches: int | None = None, short_draft: int | None = None,
                 long_match: int | None = None, config: PolicyConfig = DEFAULT):
        """Each limit left None is the config's (lookup_max_ngram, lookup_min_ngram, ...)."""
        max_ngram = config.lookup_max_ngram if max_ngram is None else max_ngram
        min_ngram = config.lookup_min_ngram if min_ngram is None else min_ngram
        max_draft = config.lookup_max_draft if max_draft is None else max_draft
        max_branches = config.lookup_max_branches if max_branches is None else max_branches
        max_matches = config.lookup_max_matches if max_matches is None else max_matches
        short_draft = config.lookup_short_draft if short_draft is None else short_draft
        long_match = config.lookup_long_match if long_match is None else long_match
        if not 1 <= min_ngram <= max_ngram:
            raise InputError(f"need 1 <= min_ngram <= max_ngram (got min_ngram={min_ngram}, "
                             f"max_ngram={max_ngram})")
        if max_draft < 1 or max_branches < 1 or max_matches < 1:
            raise InputError(f"max_draft, max_branches and max_matches must be >= 1 (got "
                             f"{max_draft}, {max_branches}, {max_matches})")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.max_draft = max_draft  # longest branch (after a match of >= long_match tokens)
        self.short_draft = short_draft  # branch length after a shorter match
        self.long_match = long_match
        self.max_branches = max_branches  # distinct continuations per proposal
        self.max_matches = max_matches  # occurrences examined per n-gram length
        self.match_cap = config.lookup_match_cap  # longest match measured (the evidence of auto's calibration)
        self.reset()

    def start(self, prompt_len: int, end: int) -> None:
        pass

    def observe(self, report) -> None:
        pass  # (the context it is given next is all it learns from)

    def reset(self) -> None:
        """Forget the context (call between unrelated sequences)."""
        self.context: list[int] = []
        self.last_match = 0  # length of the n-gram the last proposal followed (0: none)
        # per node of the last proposal (root first): how many context tokens before it match
        # those before its source, up to match_cap (a copy's node deep in a long match scores high)
        self.evidence: list[int] = [0]
        # n-gram -> positions e (ascending) with context[e-n:e] == n-gram and e < len(context):
        # every indexed occurrence has at least one following token, context[e].
        self.index: dict[tuple[int, ...], list[int]] = {}

    def _update(self, context: Sequence[int]) -> None:
        old = self.context
        n_old = len(old)
        # Cheap continuity check: the context must extend the one we indexed.
        if len(context) < n_old or (n_old and context[n_old - 1] != old[-1]):
            self.reset()
            n_old = 0
        ctx = self.context
        ctx.extend(int(t) for t in context[n_old:])
        # new indexable ends: e in [n_old, len - 1] (an occurrence needs a follower)
        for e in range(max(n_old, 1), len(ctx)):
            for n in range(self.min_ngram, min(self.max_ngram, e) + 1):
                self.index.setdefault(tuple(ctx[e - n:e]), []).append(e)

    def _match_length(self, e: int, n: int) -> int:
        """How many tokens before position e equal the context's last ones (n are known to),
        counted up to match_cap."""
        ctx, most = self.context, min(self.match_cap, e)
        m = n
        while m < most and ctx[e - m - 1] == ctx[-m - 1]:
            m += 1
        return m

    def propose(self, context: Sequence[int], budget: int) -> DraftTree:
        """Draft tree with root context[-1] and at most `budget` nodes beyond it."""
        if len(context) == 0:
            raise InputError("propose needs a non-empty context (its last token is the root)")
        self._update(context)
        ctx = self.context
        tree = DraftTree(ctx[-1])
        budget = max(int(budget), 0)
        branches = 0
        self.last_match = 0
        self.evidence = [0]
        for n in range(min(self.max_ngram, len(ctx)), self.min_ngram - 1, -1):
            ends = self.index.get(tuple(ctx[-n:]), ())
            for e in reversed(ends[-self.max_matches:]):  # most recent first
                if budget <= 0 or branches >= self.max_branches:
                    return tree
                # a short match predicts little: draft a few tokens; a long one, up to max_draft
                cont = ctx[e:e + (self.short_draft if n < self.long_match else self.max_draft)]
                # walk the shared prefix, then add at most `budget` new nodes
                node, j = 0, 0
                while j < len(cont) and (c := tree.find_child(node, cont[j])) is not None:
                    node, j = c, j + 1
                new = cont[j:j + budget]
                if new:
                    self.last_match = max(self.last_match, n)
                    match = self._match_length(e, n)
                    self.evidence += [match + j + i for i in range(len(new))]
                    tree.add_path(node, new)
                    budget -= len(new)
                    branches += 1
        return tree
