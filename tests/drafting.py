"""Drafter wrappers shared by tests."""

from __future__ import annotations

from edgespec.runtime.tree import DraftTree


class EveryNthPass:
    """`drafter` drafts one pass in `n` (the first of each n); the others are plain passes, so the
    draft falls behind the context and must catch up or restart."""

    def __init__(self, drafter, n: int):
        self.drafter, self.n, self.passes = drafter, n, 0

    def start(self, prompt_len, end):
        self.drafter.start(prompt_len, end)

    def propose(self, context, budget):
        self.passes += 1
        return self.drafter.propose(context, budget) if self.passes % self.n == 1 else DraftTree(context[-1])

    def observe(self, report):
        if self.passes % self.n == 1:
            self.drafter.observe(report)
