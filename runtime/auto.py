"""Auto: each pass, the proposal with the most expected tokens per millisecond.

The policy behind `--drafter auto` (registered in drafters.py). Every pass it
prices its candidates in one currency and verifies the best:

- a plain pass: 1 token for a one-token target pass;
- prompt lookup's proposal cut after n nodes (every n): each node accepted with
  the calibrated chance for the length of the context match it continues (a
  copy's later tokens continue longer matches, so copies run on);
- the draft model's chain, before it is drafted: its length policy's expected
  tokens at the running acceptance, for its draft steps, the target pass, and
  the tokens the draft must read first (a catch-up, or on a (re)start its
  prompt window), spread over the passes it is expected to draft (those
  after what lookup is expected to copy first);
- once the model has drafted, its chain with lookup's proposal merged in, each
  node at its own calibrated chance (the model's by the draft's probability).

Acceptance estimates are policy.Calibration buckets learned online from every
verdict; costs are the device profile scaled by the passes timed live (the
model's length policy keeps that correction). Rules beyond the model, each kept
for its gain on held-out traces (README, "Drafting policy"): the model (re)starts
only after `auto_entry_misses` lookup misses in a row; its entry is priced as if
a reply that opens a code fence copies the rest of the prompt's last fenced block
(`block_left_to_copy`); and a model drafting in step gives way only to lookup's
long proposals (copies), not to guesses from two- or three-token matches.
(Gone: for no held-out gain, a probe verifying a long-declined lookup proposal
uncut and the draft's first token vetting lookup's proposals; an entry margin,
whose work the copy prior does and which live kept the model out of explanations;
the prompt left after a copy lookup located, which kept it out of an explanation
that had quoted its code.)
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from .policy import Calibration, CostAwareLength, best_cut, expected_tokens, node_probabilities
from .policy_config import DEFAULT, PolicyConfig
from .tree import DraftTree


class AutoDrafter:
    """Lookup, the model, both merged, or a plain pass: whichever promises most tokens per ms.

    Without a profile (verify_ms None) nothing is priced: lookup when it has a proposal, else
    the model. `chosen` is this pass's (member, kind), kind one of long/short (lookup, by the
    n-gram it followed), model, both (merged); `choices` counts passes per kind and none.
    """

    name = "auto"

    def __init__(self, lookup, model=None, verify_ms: Callable[[int], float] | None = None,
                 draft_prefill_ms: float | None = None, config: PolicyConfig = DEFAULT,
                 code_fences: frozenset[int] = frozenset()):
        """draft_prefill_ms: the draft's cost per token fed in a batch (from its profile).
        code_fences: the vocabulary's tokens that hold a markdown fence (```), by which the
        prompt's code blocks are found (empty: none are)."""
        self.config = config
        if model is not None and draft_prefill_ms is not None and not isinstance(model.length, CostAwareLength):
            raise TypeError("a priced auto needs a model drafter whose length policy is CostAwareLength")
        self.lookup, self.model, self.profile_ms = lookup, model, verify_ms
        self.draft_prefill_ms = draft_prefill_ms
        self.calibration = Calibration(config.lookup_match_edges, config.lookup_match_priors,
                                       config.prior_trials, config.lookup_acceptance_decay)
        # The draft's per-token acceptance by the target's recent confidence: what an entry is
        # priced at before the draft has drafted (it drafts where it is sure, so above that confidence)
        self.entry_calibration = Calibration(config.entry_confidence_edges, config.entry_acceptance_priors,
                                             config.prior_trials, config.acceptance_decay)
        self.chosen = None  # (member, kind) that drafted the last pass; None: plain
        self._proposal: DraftTree | None = None  # lookup's part of the last proposal
        self._model_nodes = 0  # the model's part of it: nodes 1.. of the merged tree
        self.misses = 0  # passes in a row in which lookup delivered no token
        self._confidence = [0.0, 0.0]  # decayed sum of the target's top-1 probabilities, weight
        self.end: int | None = None  # context length where this generation stops (max_tokens)
        self.prompt_len: int | None = None  # context tokens that are the prompt
        self.code_fences = code_fences
        self._block: int | None = None  # tokens in the prompt's last fenced code block (None: not read yet)
        self.choices = {"long": 0, "short": 0, "model": 0, "both": 0, "none": 0}

    # ------------------------------------------------------------------ estimates

    def verify_ms(self, size: int) -> float:
        """A target pass over `size` tokens: the profile, corrected live where the model keeps it."""
        if self.model is not None and isinstance(self.model.length, CostAwareLength):
            return self.model.length.verify_ms(size)
        return self.profile_ms(size)

    def prefill_ms(self) -> float:
        """The draft's cost per token fed in a batch: its profile's, at the level its length policy keeps."""
        return self.draft_prefill_ms * self.model.length.scale("draft")

    def lookup_accept(self) -> list[float]:
        """Per node of lookup's last proposal: its calibrated chance, given its parent."""
        return [1.0] + [self.calibration(e) for e in self.lookup.evidence[1:]]

    @property
    def target_confidence(self) -> float | None:
        """The target's mean top-1 probability at recent emitted tokens (None: not seen yet)."""
        total, weight = self._confidence
        return total / weight if weight else None

    def model_rate(self, context) -> tuple[float, bool]:
        """Expected tokens per ms if the model drafts this pass (0: it may not), and whether it
        must: a following draft whose length policy probes (not drafting gives no evidence)."""
        model, length = self.model, self.model.length
        if not model.warm or model.lag(context) > model.rejoin:  # a (re)start
            if self.misses < self.config.auto_entry_misses:
                return 0.0, False  # (lookup may deliver again: a restart there is paid for one pass)
            return self._entry_rate(context), False
        feed = max(0, model.catch_up(context) - self.config.draft_steady_feed)  # (a few: a draft step)
        return self._rate_paying(context, feed, length.k, length.acceptance), length.probing

    def _entry_rate(self, context) -> float:
        """The model's rate at the acceptance calibrated for the target's recent confidence,
        paying for its (re)start's prefill (`_rate_paying`)."""
        length, confidence = self.model.length, self.target_confidence
        a = length.acceptance if confidence is None else self.entry_calibration(confidence)
        k = max(range(length.k_max + 1), key=lambda k: length.rate(k, acceptance=a))
        return self._rate_paying(context, self.model.entry_tokens(context), k, a) if k else 0.0

    def _rate_paying(self, context, tokens: int, k: int, a: float) -> float:
        """The model's rate drafting k tokens a pass at acceptance a, the `tokens` it must read
        first (a catch-up, or a (re)start's prompt window) spread over the passes it is expected
        to draft: the next `auto_payback_tokens` (or those to max_tokens), less what lookup is
        expected to copy first (`copy_ahead`). A catch-up is priced as an entry is: the
        model pays it whenever it drafts next, and a plain pass only adds a token to it. Paid
        over the next 4 passes instead, a catch-up after a copy of 7 tokens priced the model
        under plain in an explanation, each plain pass after it made it dearer, and the model
        sat out 80 passes (explain-regex-tokenizer, 3 of 10 live rounds at 0.85-0.93x the chain).
        (Spread over lookup's recent share of the reply instead, an entry waited out a
        completion's opening copy; with the copy priced, the share added nothing.)"""
        length = self.model.length
        if not tokens:
            return length.rate(k, acceptance=a)
        left = self.config.auto_payback_tokens if self.end is None else self.end - len(context)
        horizon = min(self.config.auto_payback_tokens, left) - self.copy_ahead(context)
        passes = horizon / expected_tokens(a, k)
        if passes <= 0:
            return 0.0
        return length.rate(k, extra_ms=tokens * self.prefill_ms() / passes, acceptance=a)

    def copy_ahead(self, context) -> int:
        """Prompt tokens lookup is expected to copy into the rest of the reply: what is left of
        the prompt's last fenced code block once the reply opens a fence (`block_left_to_copy`:
        an edit's reply copies its code; without that prior, held-out replays entered edits in
        their opening words and lost 6%). (Gone: the prompt left after the source of the last
        copy lookup located. An entry is priced only after lookup's misses, where the reply has
        left that copy: explain-regex-tokenizer's reply quoted the prompt's pattern, and the
        142 tokens "ahead" kept the model out of its last 120 tokens, 1.08x plain live against
        the chain's 1.16x.)"""
        if self.prompt_len is None:
            return 0
        if self._block is None:
            self._block = last_code_block(context[:self.prompt_len], self.code_fences)
        if not self._block:
            return 0  # (no block to copy: the reply need not be sliced and scanned each priced pass)
        return block_left_to_copy(context[self.prompt_len:], self._block, self.code_fences,
                                  self.config.auto_copy_prior_tokens)

    # ------------------------------------------------------------------ the choice

    def propose(self, context, budget):
        tree = self.lookup.propose(context, budget)
        self._proposal, self._model_nodes = None, 0
        if self.profile_ms is None or (self.model is not None and self.draft_prefill_ms is None):
            return self._unpriced(context, budget, tree)
        plain = 1.0 / self.verify_ms(1)
        model, probing = self.model_rate(context) if self.model is not None else (0.0, False)
        if len(tree) > 1:
            n, rate = best_cut(tree, self.lookup_accept(), self.verify_ms)
            tree.prune(n)  # (also what a merge with the model's chain may add)
            if rate >= max(model, plain) and self._may_interrupt(context):
                return self._choose_lookup(tree)
        if model <= plain and not probing:
            return self._choose(None, "none", DraftTree(context[-1]))
        drafted = self.model.propose(context, budget)
        if len(tree) > 1 and len(drafted) > 1:
            merged, accept = self._merge(drafted, tree, budget)
            if self._rate(merged, accept) > self._rate(drafted, self.model.accept):
                self._proposal, self._model_nodes = tree, len(drafted) - 1
                return self._choose(self.model, "both", merged)
        return self._choose(self.model, "model", drafted)

    def _unpriced(self, context, budget, tree: DraftTree) -> DraftTree:
        if len(tree) > 1:
            return self._choose_lookup(tree)
        if self.model is None:
            return self._choose(None, "none", tree)
        return self._choose(self.model, "model", self.model.propose(context, budget))

    def _choose_lookup(self, tree: DraftTree) -> DraftTree:
        self._proposal = tree
        kind = "long" if self.lookup.last_match >= self.lookup.long_match else "short"
        return self._choose(self.lookup, kind, tree)

    def _choose(self, member, kind: str, tree: DraftTree) -> DraftTree:
        self.chosen = (member, kind) if member is not None else None
        self.choices[kind] += 1
        return tree

    def _rate(self, tree: DraftTree, accept) -> float:
        """Expected tokens per ms of verifying `tree` (the draft steps behind it are paid)."""
        return sum(node_probabilities(tree, accept)) / self.verify_ms(len(tree))

    def _merge(self, drafted: DraftTree, lookup: DraftTree, budget: int) -> tuple[DraftTree, list[float]]:
        """The model's tree with lookup's grafted in (within `budget` nodes), and each node's
        chance: the model's, lookup's, or the larger where both proposed it."""
        merged = DraftTree(drafted.tokens[0]).merge(drafted)  # (a copy: node i stays node i)
        accept = list(self.model.accept)
        at = {0: 0}  # lookup node -> merged node
        for i, p in enumerate(self.lookup_accept()[1:len(lookup)], start=1):
            parent = at[lookup.parents[i]]
            node = merged.find_child(parent, lookup.tokens[i])
            if node is None:
                if len(merged) - 1 >= budget:
                    lookup.prune(i - 1)  # (nodes not verified are no trials)
                    break
                node = merged.add(parent, lookup.tokens[i])
                accept.append(p)
            else:
                accept[node] = max(accept[node], p)
            at[i] = node
        return merged, accept

    def _may_interrupt(self, context) -> bool:
        """Whether lookup's proposal may take the pass from the model (it may still be merged into
        the model's chain): always, unless the model drafts in step with the context (it has read
        all but a draft step's feed) and lookup's match is short. Priced pass by pass, a guess from
        a two- or three-token match (calibrated ~0.45-0.6) outbids the model's chain, but live
        such passes emitted 1.3 tokens each between the model's 1.9 (b607bc0's traces). Replayed,
        held-out's worst prompts 0.979 -> 0.985x the best single mode, tuning's explanations
        0.975 -> 0.994x (explain-decorator 0.961 -> 1.012x)."""
        model = self.model
        in_step = model is not None and model.warm and model.lag(context) <= self.config.draft_steady_feed
        return not in_step or self.lookup.last_match >= self.lookup.long_match

    # ------------------------------------------------------------------ learning

    def start(self, prompt_len: int, end: int) -> None:
        self.prompt_len, self.end = prompt_len, end
        self._block = None
        self.lookup.start(prompt_len, end)
        if self.model is not None:
            self.model.start(prompt_len, end)

    def observe(self, report):
        verdict, tree = report.verdict, report.tree
        member = self.chosen[0] if self.chosen else None
        modelled = member is not None and member is self.model
        delivered = self._observe_lookup(self._proposal, verdict) if self._proposal is not None else 0
        self.misses = 0 if delivered else self.misses + 1
        if modelled:
            own = self._model_report(report)
            if self.target_confidence is not None:  # (the evidence an entry is priced on)
                chain = self.model.confidences
                trials = min(own.verdict.num_accepted + 1, len(chain))
                self.entry_calibration.observe_path([self.target_confidence] * trials, own.verdict.num_accepted)
            self.model.observe(own)
        elif self.model is not None:  # the model's policy prices its drafts against these costs
            length = self.model.length
            length.observe_costs(None, report.verify_ms, len(tree))
            if not length.probing:
                length.update(0, 0)  # a pass it did not draft: its probe comes due after enough of them
        if report.logits is not None:  # (a report may leave them out: a trace without them)
            self._observe_confidence(report.logits[verdict.accepted[-self.config.auto_confidence_rows:]])

    def _model_report(self, report):
        """The pass as the model drafted it: in a merged tree, its own nodes' verdict."""
        if not self._model_nodes:
            return report
        verdict, kept = report.verdict, 1
        while kept < len(verdict.accepted) and verdict.accepted[kept] <= self._model_nodes:
            kept += 1  # (the model's nodes are the merged tree's first)
        return dataclasses.replace(report, verdict=dataclasses.replace(verdict, accepted=verdict.accepted[:kept]))

    def _observe_lookup(self, tree: DraftTree, verdict) -> int:
        """Each lookup node whose parent was accepted is a trial of its evidence's bucket.
        Returns how many of the accepted tokens lookup proposed (along one of its paths)."""
        evidence, node, depth = self.lookup.evidence, 0, 0
        accepted = verdict.tokens[:verdict.num_accepted]
        while True:
            nxt = None
            for child in tree.children(node):
                hit = depth < len(accepted) and tree.tokens[child] == accepted[depth]
                self.calibration.observe(evidence[child], hit)
                nxt = child if hit else nxt
            if nxt is None:
                return depth
            node, depth = nxt, depth + 1

    def _observe_confidence(self, rows: np.ndarray) -> None:
        """Fold in the target's top-1 probability at each row (the rows that chose emitted tokens)."""
        rows = rows.astype(np.float32, copy=False)
        peak = rows.max(axis=1, keepdims=True)
        top1 = 1.0 / np.exp(rows - peak).sum(axis=1)  # [rows]
        total, weight, decay = *self._confidence, self.config.auto_confidence_decay
        for p in top1:
            total = decay * total + float(p)
            weight = decay * weight + 1.0
        self._confidence = [total, weight]

    def reset(self):
        self.lookup.reset()
        self._confidence = [0.0, 0.0]
        if self.model is not None:
            self.model.reset()


def code_fences(vocab: dict[str, int]) -> frozenset[int]:
    """The ids of a vocabulary's tokens that hold a markdown fence (```; byte-level BPE keeps
    backticks as they are)."""
    return frozenset(i for token, i in vocab.items() if "```" in token)


def last_code_block(prompt, code_fences: frozenset[int]) -> int:
    """Tokens between the prompt's last two markdown fences, fences paired from the first (an
    unclosed last fence opens a block the reply continues, not one it copies); 0 without a
    closed block."""
    fences = [i for i, token in enumerate(prompt) if token in code_fences]
    closed = len(fences) - len(fences) % 2
    return fences[closed - 1] - fences[closed - 2] - 1 if closed else 0


def block_left_to_copy(reply, block: int, code_fences: frozenset[int], wait: int) -> int:
    """Tokens of the prompt's last code block (`block` long) a reply is still expected to copy:
    the block less what the reply has written since it opened a fence in its first `wait`
    tokens; none once that fence is closed, or where the reply has written `wait` tokens
    without one (an explanation: its prose opens no fence; every edit recorded opens one at
    its first token)."""
    opened = next((i for i, token in enumerate(reply[:wait]) if token in code_fences), None)
    if opened is None:
        return block if len(reply) < wait else 0
    written = reply[opened + 1:]
    if any(token in code_fences for token in written):
        return 0
    return max(0, block - len(written))
