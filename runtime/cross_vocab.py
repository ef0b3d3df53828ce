"""Drafting with a draft model whose tokenizer differs from the target's, through text.

Each proposal maps the context into the draft's vocabulary by text, lets the
draft continue greedily, and maps the drafted text back into target tokens:

  target ids --decode--> text --draft encode--> draft ids   (KV cache synced by common prefix)
  draft greedy continuation --decode--> drafted text
  target encode(anchor text + drafted text) = anchor tokens + new target tokens

The anchor is the text of the last `window` context tokens: re-tokenizing it
together with the drafted text lets the target's BPE merge across the seam
exactly as it would in the full text, and the result must reproduce the
anchor's own tokens before anything is proposed. The new target tokens become
one deterministic chain (q = None); the last one is dropped, since the drafted
text may end mid-word and the target would tokenize a longer text differently.
Whenever the mapping does not line up (the context's last token would merge
with the drafted text, an incomplete UTF-8 character, a non-canonical split in
the anchor) the proposal is the bare root: a wrong token would be rejected
anyway, but it costs verify width.

Why deterministic proposals through text: verification (`verify.py`) treats a
node with q = None as a delta proposal, and multi-candidate rejection sampling
with delta proposals emits tokens that follow the target's distribution
exactly, whatever the proposal is and however it was chosen from the context.
So this drafter is lossless for greedy and exact for sampling at every
temperature with no vocabulary alignment at all; the draft only needs to write
the same text. In the terms of the heterogeneous-vocabulary speculative
decoding literature (Timor et al., 2025) this is string-level exact matching
(SLEM: draft text re-tokenized by the target, verified token by token), with
the delta-q rejection step making it exact for sampling too. What it gives up:
at temperature > 0 a delta proposal x is accepted with probability p(x) only,
where a sampled proposal q is accepted with sum_x min(p, q), so acceptance
falls as the target's distribution spreads. The alternatives recover sampled
proposals. Token-level intersection (TLI) restricts and renormalises the
draft's distribution to the tokens both vocabularies share, a proper q over
target ids for ordinary rejection sampling; it costs a vocabulary intersection
table, and tokens outside the intersection (for a 49k draft and a 152k target,
most long target tokens) can never be drafted, so greedy acceptance drops.
String-level rejection sampling scores the drafted *string*: it needs the
draft's probability of every target-token string, a sum over the draft's
segmentations of it, i.e. extra draft passes per proposal. Both would raise
acceptance at high temperature; on a 2-core CPU, where coding use is greedy or
low temperature, the cheap exact delta scheme wins. A sampled variant can be
added later without touching verification.

Efficiency: the draft ids are kept as ids of a stable prefix of the text plus
a re-tokenized tail (between `window` and 2 * `window` target tokens); the
prefix grows by whole windows at clean boundaries, so each step encodes a few
dozen tokens' text, and the draft cache is rewound to the longest prefix it
shares with the new ids and fed only the difference (Session.sync).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..contract.errors import InputError
from .policy import DraftLength
from .policy_config import DEFAULT, PolicyConfig
from .session import Session
from .tree import DraftTree

_BAD = "\ufffd"  # what decode gives for an incomplete UTF-8 sequence


class CrossVocabDrafter:
    name = "cross"

    def __init__(self, session: Session, draft_tokenizer, target_tokenizer, max_draft: int | None = None,
                 min_confidence: float | None = None, window: int | None = None, length: DraftLength | None = None,
                 config: PolicyConfig = DEFAULT):
        """max_draft, min_confidence, window: this drafter's own (None: the config's cross_max_draft,
        heuristic_min_confidence, cross_window)."""
        max_draft = config.cross_max_draft if max_draft is None else max_draft
        min_confidence = config.heuristic_min_confidence if min_confidence is None else min_confidence
        window = config.cross_window if window is None else window
        if max_draft < 1 or window < 2:
            raise InputError(f"max_draft must be >= 1 and window >= 2 (got max_draft={max_draft}, "
                             f"window={window})")
        self.session = session
        self.config = config
        self.draft_tok = draft_tokenizer
        self.target_tok = target_tokenizer
        self.max_draft = max_draft
        self.min_confidence = min_confidence
        self.window = window
        self.length = length or DraftLength(k=max_draft, k_min=config.heuristic_k_min, k_max=max_draft)
        self._drafted = 0
        self.reset()

    def start(self, prompt_len: int, end: int) -> None:
        pass

    def reset(self) -> None:
        self.session.reset()
        self._stable: list[int] = []  # target tokens context[:a] whose text is encoded in _stable_ids
        self._stable_ids: list[int] = []  # draft ids of decode(_stable)

    # -- text <-> ids ----------------------------------------------------------

    def _decode_target(self, ids: Sequence[int]) -> str:
        return self.target_tok.decode(list(ids), skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)

    def _encode_draft(self, text: str) -> list[int]:
        return self.draft_tok.encode(text, add_special_tokens=False) if text else []

    def _splits_cleanly(self, ids: Sequence[int], i: int) -> bool:
        """decode(ids[:i]) + decode(ids[i:]) == decode(ids): no character or space straddles i."""
        return self._decode_target(ids[:i]) + self._decode_target(ids[i:]) == self._decode_target(ids)

    def _draft_ids(self, context: Sequence[int]) -> list[int] | None:
        """Draft ids for the context's text: stable prefix ids + the tail re-encoded; None if
        the text ends inside a character (the next target token completes it)."""
        a = len(self._stable)
        if list(context[:a]) != self._stable:  # another sequence: start over
            self._stable, self._stable_ids, a = [], [], 0
        if len(context) - a > 2 * self.window:  # grow the stable prefix by whole windows
            tail = list(context[a:])
            first = len(tail) - self.window  # the longest prefix that leaves a window's tail
            for cut in range(first, first - self.config.cross_split_search, -1):
                if self._splits_cleanly(tail, cut):
                    self._stable_ids += self._encode_draft(self._decode_target(tail[:cut]))
                    self._stable = list(context[:a + cut])
                    a += cut
                    break
        text = self._decode_target(context[a:])
        if text.endswith(_BAD):
            return None
        return self._stable_ids + self._encode_draft(text)

    def _to_target(self, context: Sequence[int], drafted: str) -> list[int]:
        """Target tokens that the drafted text adds after the context ([] if they don't line up)."""
        start = max(len(context) - self.window, 0)
        # move the anchor past a non-canonical split or a cut character
        for _ in range(self.config.cross_anchor_tries):
            anchor = list(context[start:])
            ids = self.target_tok.encode(self._decode_target(anchor) + drafted, add_special_tokens=False)
            k = len(anchor)
            j = next((i for i in range(min(k, len(ids))) if ids[i] != anchor[i]), min(k, len(ids)))
            if j == k:
                return ids[k:-1]  # the last token may merge with text the draft did not write
            if j >= k - 1 or start + j + 1 >= len(context):
                return []  # the context's last token merges with the drafted text
            start += j + 1
        return []

    # -- drafting --------------------------------------------------------------

    def propose(self, context: Sequence[int], budget: int) -> DraftTree:
        tree = DraftTree(context[-1])
        self._drafted = 0
        if budget <= 0:
            return tree
        ids = self._draft_ids(context)
        # drafted text usually needs no more draft tokens than target tokens, plus the dropped one
        steps = min(self.length.k, self.max_draft, budget) + 1
        if not ids or len(ids) + steps > self.session.max_len:
            return tree
        logits = self.session.sync(ids)  # [V] draft logits after the context
        out: list[int] = []
        for d in range(steps):
            z = np.exp(logits - logits.max(), dtype=np.float64)  # [V]
            best = int(logits.argmax())
            if d > 0 and z[best] / z.sum() < self.min_confidence:
                break  # the draft is unsure: the rest would mostly be rejected
            out.append(best)
            if d + 1 == steps:
                break
            logits = self.session.forward([best])[-1]
        # Decode the drafted ids after a few context ids, so spaces and characters that depend
        # on the previous token come out right; cut an incomplete character at the end.
        lead = ids[-self.config.cross_lead_ids:]
        before = self.draft_tok.decode(lead, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        full = self.draft_tok.decode(lead + out, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not full.startswith(before):
            return tree
        drafted = full[len(before):].split(_BAD, 1)[0]
        if not drafted:
            return tree
        tokens = self._to_target(context, drafted)[:budget]
        tree.add_path(0, tokens)
        self._drafted = len(tokens)
        return tree

    def observe(self, report) -> None:
        self.length.update(report.verdict.num_accepted, self._drafted)


def make_cross_vocab(draft_session: Session, target_tokenizer, **kwargs) -> CrossVocabDrafter:
    """The registry's factory: the draft's own tokenizer comes from its bundle folder."""
    from .tokenizer import BundleTokenizer
    draft_tokenizer = BundleTokenizer(draft_session.path)
    return CrossVocabDrafter(draft_session, draft_tokenizer, target_tokenizer, **kwargs)
