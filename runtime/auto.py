"""Auto: prompt lookup or the draft model, pass by pass, by expected tokens per millisecond.

The policy behind `--drafter auto` (registered in drafters.py): which drafter
drafts each pass, how deep a lookup proposal is cut, and when the draft model
is worth (re)starting.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .policy import CostAwareLength, expected_tokens
from .tree import DraftTree


class AutoDrafter:
    """Lookup or model each pass, by expected tokens per millisecond.

    Lookup proposals fall in two kinds by the n-gram they followed: long (>=
    long_match tokens: the text is copying itself) and short (a 2-3 token
    coincidence). Each kind keeps a running per-token acceptance r (every
    drafted position up to the first rejection is a trial, as for the model),
    so a proposal cut to depth n is worth 1 + r + ... + r^n tokens for the
    profiled verify cost of its tree, and a short match's is cut where that
    rate peaks. A long match is verified whole: a copy run is all or nothing
    more often than one rate says (edit-rename-variable: 18 of 20 eight-token
    copies accepted whole, where r ~ 0.9 had cut them to four). The
    model's rate comes from its cost-aware length policy (E[tokens] / (k draft
    steps + verify of k+1)); both use live cost levels. The larger wins, and
    where the model is drafting (a few tokens behind at most) a lookup proposal
    must also start with the draft's first choice: on completion, lookup's
    coincidences otherwise cost a pass of 1-3 accepted tokens each (paired, in
    one process: +1-5% on the completions, +0-4% on explanations, edits
    unchanged: there the model is out while lookup copies). After
    `probe_every` declined proposals of a kind, one is verified uncut, so its
    estimate can recover when the text changes (edits start with fresh prose,
    then copy). Without a profile: lookup when it has a proposal, else the
    model. `choices` counts passes per kind.

    Entering the model costs a prefill (its prompt window, or `rejoin` recent
    tokens after a long run of lookup passes): 0.3 s for the 0.5B's 128-token
    window, a tenth of an edit's decode, while an edit uses the model for a few
    passes at its edit points. So the model (re)starts only after `ENTRY_MISSES`
    passes in a row that lookup did not deliver: fresh text shows itself within
    a few passes, an edit point does not last that long.

    And only where the text is one the draft predicts: the target's own top-1
    probability at the tokens it emits (a weighted mean over the last ~30)
    follows the 0.5B's agreement with the 1.5B's greedy choice. Over the
    suite's replies: means of 0.87-0.93 and agreement 0.87-0.92 on completion;
    0.75-0.77 and 0.79 on the two explanations where a chain lost 3-4% to
    plain decoding. Taken as the model's acceptance, it prices a model pass;
    the entry must pay back its prefill within `PAYBACK_TOKENS` tokens (fewer
    near max_tokens: an entry late in the reply never pays back), and by
    `ENTRY_MARGIN` times: on prose the confidence runs ahead of the draft.

    An edit copies its source: once the reply has copied a long run from the
    prompt, the rest of the prompt from there is expected to come by lookup, so
    the model's horizon is only what the reply has left beyond it. On
    edit-logging the 0.5B entered at an edit point after 11 tokens, spent 0.5 s
    on its prefill for a 34-token gap, and left the reply at 1.41x plain against
    1.74x without it (modeled from the passes' widths); completions that open by
    quoting the prompt's last lines keep their horizon.
    """

    name = "auto"
    PRIORS = {"long": 0.9, "short": 0.6}  # per-token acceptance before any evidence
    PRIOR_TRIALS = CostAwareLength.PRIOR_TRIALS
    CATCH_UP_PASSES = 4
    ENTRY_MISSES = 3
    PAYBACK_TOKENS = 96  # half a 200-token reply: replies end sooner than max_tokens
    # The estimate's own error: completion's entries were estimated to pay back 1.7-4.3 times
    # and did (1.06-1.26x plain); explanations' at 1.04-1.36 times went either way (0.80-1.06x:
    # a confidence of 0.73 met a draft accepted at 0.6, and the prefill was lost).
    ENTRY_MARGIN = 1.5
    CONFIDENCE_DECAY = 0.97
    PEEK_LAG = 4  # the model checks a lookup proposal's first token only this close behind
    CONFIDENCE_ROWS = 4  # emitted tokens scored per pass (each row costs ~0.2 ms at 152k)

    def __init__(self, lookup, model=None, verify_ms: Callable[[int], float] | None = None,
                 probe_every: int = 8, decay: float = 0.9, priors: dict | None = None,
                 draft_prefill_ms: float | None = None):
        """draft_prefill_ms: the draft's cost per token fed in a batch (profile: cost(8) / 8)."""
        self.lookup, self.model, self.verify_ms = lookup, model, verify_ms
        self.draft_prefill_ms = draft_prefill_ms
        self.probe_every, self.decay = probe_every, decay
        # kind -> [trials, successes]; the prior is worth PRIOR_TRIALS trials, so that one
        # rejected short match does not stop short matches (a copy often starts with one)
        self.evidence = {k: [self.PRIOR_TRIALS, r * self.PRIOR_TRIALS] for k, r in (priors or self.PRIORS).items()}
        self.idle = {k: 0 for k in self.evidence}
        self.chosen = None  # (member, kind) that drafted the last pass
        self.misses = 0  # passes in a row in which lookup delivered no token
        self._confidence = [0.0, 0.0]  # decayed sum of the target's top-1 probabilities, weight
        self.end: int | None = None  # context length where this generation stops (max_tokens)
        self.prompt_len: int | None = None  # context tokens that are the prompt
        self.to_copy = 0  # prompt tokens after the source of the last long copy
        self.choices = {"long": 0, "short": 0, "model": 0, "none": 0}
        self.peeks = self.vetoed = 0  # lookup proposals the model checked, and turned down

    def acceptance(self, kind: str) -> float:
        trials, successes = self.evidence[kind]
        return successes / trials

    @property
    def target_confidence(self) -> float | None:
        """The target's mean top-1 probability at recent emitted tokens (None: not seen yet)."""
        total, weight = self._confidence
        return total / weight if weight else None

    def _rate(self, r: float, depth: int, nodes: int) -> float:
        return expected_tokens(r, depth) / self.model.length.verify_ms(nodes + 1)

    def best_depth(self, kind: str, most: int) -> int:
        """The lookup chain length with the most expected tokens per ms for this kind."""
        r = self.acceptance(kind)
        return max(range(1, most + 1), key=lambda n: self._rate(r, n, n))

    def propose(self, context, budget):
        tree = self.lookup.propose(context, budget)
        model_pays = self.model is not None and self._model_pays(context)
        if len(tree) > 1:
            inner = self.lookup.inner
            kind = "long" if inner.last_match >= inner.long_match else "short"
            if self._prefer_lookup(kind, tree, model_pays) and self._model_agrees(context, tree, model_pays):
                self.chosen = (self.lookup, kind)
                self.choices[kind] += 1
                self._proposed_at = time.perf_counter()
                return tree
        if not model_pays:
            self.chosen = None
            self.choices["none"] += 1
            self._proposed_at = time.perf_counter()
            return DraftTree(context[-1])
        self.chosen = (self.model, "model")
        self.choices["model"] += 1
        return self.model.propose(context, budget)

    def _model_agrees(self, context, tree: DraftTree, model_pays: bool) -> bool:
        """Whether a lookup proposal survives the draft model's first token, where the model
        drafts on anyway: a draft step's check (kept for the model's own proposal if lookup
        loses) against a pass of 1.5-3 mostly rejected lookup tokens. Skipped where the model is
        out or behind: an edit's copy runs keep lookup's passes free."""
        model = self.model
        if not (model_pays and hasattr(model, "peek") and model.session.history) or model.lag(context) > self.PEEK_LAG:
            return True
        self.peeks += 1
        first = model.peek(context)
        if any(tree.tokens[i] == first for i in tree.children(0)):
            return True
        self.vetoed += 1
        return False

    def _model_pays(self, context) -> bool:
        """Whether the model beats a plain pass once its entry is counted.

        A draft that would feed more than `rejoin` tokens to (re)start (its
        prompt window, or the lag after lookup passes) enters only after
        `ENTRY_MISSES` lookup misses in a row, and then if the target's confidence
        says the restart pays back (`_entry_pays`), however far behind it is. Before
        that, a shorter catch-up is a prefill paid now for the few model passes
        likely before lookup takes over again (`CATCH_UP_PASSES`). (Pricing it so
        after lookup stopped delivering kept the draft out for good: each plain
        pass it declined made the catch-up longer.)
        """
        if self.verify_ms is None or self.draft_prefill_ms is None:
            return True
        if self.model.lag(context) > self.model.rejoin:  # it would (re)start: a prefill
            return self.misses >= self.ENTRY_MISSES and self._entry_pays(context)
        if self.misses >= self.ENTRY_MISSES:
            return True  # lookup is not delivering: the model drafts for more than a few passes
        if not self.model.session.history:
            return True
        lag = self.model.catch_up(context)
        length = self.model.length
        if lag <= 4 or length.k == 0 or getattr(length, "probing", False):
            return True  # (a probe must run, or stale evidence would keep the model out for good)
        catch_up = lag * self.draft_prefill_ms / self.CATCH_UP_PASSES
        return length.rate(length.k, extra_ms=catch_up) >= length.rate(0)

    def _locate_copy(self, copied) -> None:
        """Where in the prompt a long copy just accepted stands (`copied`: its last accepted
        tokens, before the target's own token, which may be an edit), and so how much of the
        prompt is left to copy."""
        end = self.lookup.inner.source_end(copied, self.prompt_len)
        if end is not None:
            self.to_copy = self.prompt_len - end

    def _entry_pays(self, context) -> bool:
        """Whether the model, accepted at the target's recent confidence, saves more than its
        (re)start costs within PAYBACK_TOKENS tokens (or the tokens left before max_tokens)."""
        confidence, length = self.target_confidence, self.model.length
        if confidence is None or not hasattr(length, "best_ms_per_token"):
            return True
        left = self.PAYBACK_TOKENS if self.end is None else self.end - len(context)
        horizon = min(self.PAYBACK_TOKENS, left - self.to_copy)  # (lookup copies the rest of an edit)
        saved = length.verify_ms(1) - length.best_ms_per_token(confidence)
        return saved * horizon > self.ENTRY_MARGIN * self.model.entry_tokens(context) * self.draft_prefill_ms

    def _prefer_lookup(self, kind: str, tree: DraftTree, model_pays: bool) -> bool:
        """Whether lookup drafts this pass (cutting `tree` to its best depth in place): it must
        beat the model's rate, or a plain pass's where the model would not draft."""
        if self.model is None or self.verify_ms is None:
            return True
        self.idle[kind] += 1
        if self.idle[kind] >= self.probe_every:
            return True  # a probe, uncut: a long copy can show it is one
        if kind != "long":  # a copy run is all or nothing more often than one rate says
            tree.prune(self.best_depth(kind, len(tree) - 1))
        length = self.model.length
        depth = int(tree.depths().max())
        rival = length.rate(length.k) if model_pays else length.rate(0)
        return self._rate(self.acceptance(kind), depth, len(tree) - 1) >= rival

    def observe(self, verdict, tree=None, logits=None):
        unmodelled = self.chosen is None or self.chosen[0] is self.lookup  # plain or lookup pass
        delivered = self.chosen is not None and self.chosen[0] is self.lookup and verdict.num_accepted > 0
        self.misses = 0 if delivered else self.misses + 1
        if logits is not None and unmodelled:
            self._observe_confidence(logits[verdict.accepted[-self.CONFIDENCE_ROWS:]])
        length = self.model.length if self.model is not None else None
        if unmodelled and tree is not None and hasattr(length, "observe_costs"):
            # the model's policy prices its drafts against these passes' verify costs
            length.observe_costs(None, (time.perf_counter() - self._proposed_at) * 1000, len(tree))
        if self.chosen is None:
            return
        member, kind = self.chosen
        member.observe(verdict, tree, logits)
        if member is self.lookup and tree is not None:
            depth = int(tree.depths().max())
            evidence = self.evidence[kind]
            evidence[0] = self.decay * evidence[0] + min(verdict.num_accepted + 1, depth)
            evidence[1] = self.decay * evidence[1] + verdict.num_accepted
            self.idle[kind] = 0
            n, accepted = self.lookup.inner.long_match, verdict.num_accepted
            if kind == "long" and accepted >= n and self.prompt_len is not None:
                self._locate_copy(verdict.tokens[accepted - n:accepted])

    def _observe_confidence(self, rows: np.ndarray) -> None:
        """Fold in the target's top-1 probability at each row (the rows that chose emitted tokens)."""
        rows = rows.astype(np.float32, copy=False)
        peak = rows.max(axis=1, keepdims=True)
        top1 = 1.0 / np.exp(rows - peak).sum(axis=1)  # [rows]
        total, weight = self._confidence
        for p in top1:
            total = self.CONFIDENCE_DECAY * total + float(p)
            weight = self.CONFIDENCE_DECAY * weight + 1.0
        self._confidence = [total, weight]

    def reset(self):
        self.lookup.reset()
        self._confidence = [0.0, 0.0]
        if self.model is not None:
            self.model.reset()
