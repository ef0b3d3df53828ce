"""Auto: prompt lookup or the draft model, pass by pass, by expected tokens per millisecond.

The policy behind `--drafter auto` (registered in drafters.py): which drafter
drafts each pass, how deep a lookup proposal is cut, and when the draft model
is worth (re)starting.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .policy import CostAwareLength, expected_tokens
from .policy_config import DEFAULT, PolicyConfig
from .tree import DraftTree


class AutoDrafter:
    """Lookup or model each pass, by expected tokens per millisecond.

    Lookup proposals fall in two kinds by the n-gram they followed: long (a
    copy run) and short (a coincidence). Each kind keeps a running per-token
    acceptance r (every drafted position up to the first rejection is a trial,
    as for the model), so a proposal cut to depth n is worth 1 + r + ... + r^n
    tokens for the profiled verify cost of its tree; a short proposal is cut
    where that rate peaks, a long one verified whole. The model's rate comes
    from its cost-aware length policy. The larger wins; where the model is
    drafting, a lookup proposal must also start with the draft's first choice.
    A kind declined `auto_probe_every` times is verified once uncut, so its
    estimate can recover. Without a profile: lookup when it has a proposal,
    else the model. `choices` counts passes per kind.

    Entering the model costs a prefill (its prompt window, or `rejoin` recent
    tokens). It (re)starts only after `auto_entry_misses` lookup misses in a
    row, and only where the target's recent top-1 probability, taken as the
    draft's acceptance, repays that prefill `auto_entry_margin` times within
    `auto_payback_tokens` tokens (fewer near max_tokens, and fewer while lookup
    is expected to copy the rest of an edit's source). The numbers are
    PolicyConfig fields (policy_config.py), with what chose each.
    """

    name = "auto"

    def __init__(self, lookup, model=None, verify_ms: Callable[[int], float] | None = None,
                 probe_every: int | None = None, decay: float | None = None, priors: dict | None = None,
                 draft_prefill_ms: float | None = None, config: PolicyConfig = DEFAULT):
        """draft_prefill_ms: the draft's cost per token fed in a batch (from its profile).
        probe_every, decay, priors ({kind: acceptance}): this drafter's own values (None: the
        config's auto_probe_every, acceptance_decay, auto_long_prior and auto_short_prior)."""
        self.config = config
        if model is not None and draft_prefill_ms is not None and not isinstance(model.length, CostAwareLength):
            raise TypeError("a priced auto needs a model drafter whose length policy is CostAwareLength")
        self.lookup, self.model, self.verify_ms = lookup, model, verify_ms
        self.draft_prefill_ms = draft_prefill_ms
        self.probe_every = config.auto_probe_every if probe_every is None else probe_every
        self.decay = config.acceptance_decay if decay is None else decay
        priors = priors or {"long": config.auto_long_prior, "short": config.auto_short_prior}
        # kind -> [trials, successes]; the prior is worth prior_trials trials, so that one
        # rejected short match does not stop short matches (a copy often starts with one)
        n = config.prior_trials
        self.evidence = {k: [n, r * n] for k, r in priors.items()}
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
            kind = "long" if self.lookup.last_match >= self.lookup.long_match else "short"
            if self._prefer_lookup(kind, tree, model_pays) and self._model_agrees(context, tree, model_pays):
                self.chosen = (self.lookup, kind)
                self.choices[kind] += 1
                return tree
        if not model_pays:
            self.chosen = None
            self.choices["none"] += 1
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
        if not (model_pays and model.warm):
            return True
        if model.lag(context) > self.config.auto_peek_lag:
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
        `auto_entry_misses` lookup misses in a row, and then if the target's confidence
        says the restart pays back (`_entry_pays`), however far behind it is. Before
        that, a shorter catch-up is a prefill paid now for the few model passes
        likely before lookup takes over again (`auto_catch_up_passes`). (Pricing it so
        after lookup stopped delivering kept the draft out for good: each plain
        pass it declined made the catch-up longer.)
        """
        if self.verify_ms is None or self.draft_prefill_ms is None:
            return True
        misses_enough = self.misses >= self.config.auto_entry_misses
        if self.model.lag(context) > self.model.rejoin:  # it would (re)start: a prefill
            return misses_enough and self._entry_pays(context)
        if misses_enough:
            return True  # lookup is not delivering: the model drafts for more than a few passes
        if not self.model.warm:
            return True
        lag = self.model.catch_up(context)
        length = self.model.length
        if lag <= self.config.auto_free_catch_up or length.k == 0 or length.probing:
            return True  # (a probe must run, or stale evidence would keep the model out for good)
        catch_up = lag * self.draft_prefill_ms / self.config.auto_catch_up_passes
        return length.rate(length.k, extra_ms=catch_up) >= length.rate(0)

    def _locate_copy(self, copied) -> None:
        """Where in the prompt a long copy just accepted stands (`copied`: its last accepted
        tokens, before the target's own token, which may be an edit), and so how much of the
        prompt is left to copy: lookup is expected to copy it, so the model's entry must pay
        back within what the reply has left beyond it (on edit-logging, an entry at an edit
        point took the reply from 1.74x plain to 1.41x)."""
        end = self.lookup.source_end(copied, self.prompt_len)
        if end is not None:
            self.to_copy = self.prompt_len - end

    def _entry_pays(self, context) -> bool:
        """Whether the model, accepted at the target's recent confidence, saves more than its
        (re)start costs, `auto_entry_margin` times, within `auto_payback_tokens` tokens (or the
        tokens left before max_tokens)."""
        confidence, length = self.target_confidence, self.model.length
        if confidence is None:
            return True
        payback = self.config.auto_payback_tokens
        left = payback if self.end is None else self.end - len(context)
        horizon = min(payback, left - self.to_copy)  # (lookup copies the rest of an edit)
        saved = length.verify_ms(1) - length.best_ms_per_token(confidence)
        entry_ms = self.model.entry_tokens(context) * self.draft_prefill_ms
        return saved * horizon > self.config.auto_entry_margin * entry_ms

    def _prefer_lookup(self, kind: str, tree: DraftTree, model_pays: bool) -> bool:
        """Whether lookup drafts this pass (cutting `tree` to its best depth in place): it must
        beat the model's rate, or a plain pass's where the model would not draft."""
        if self.model is None or self.verify_ms is None:
            return True
        self.idle[kind] += 1
        if self.idle[kind] >= self.probe_every:
            return True  # a probe, uncut: a long copy can show it is one
        # A copy is all or nothing more often than one rate says (edit-rename-variable: 18 of 20
        # eight-token copies accepted whole, where r ~ 0.9 had cut them to four): cut short ones only.
        if kind != "long":
            tree.prune(self.best_depth(kind, len(tree) - 1))
        length = self.model.length
        depth = int(tree.depths().max())
        rival = length.rate(length.k) if model_pays else length.rate(0)
        return self._rate(self.acceptance(kind), depth, len(tree) - 1) >= rival

    def start(self, prompt_len: int, end: int) -> None:
        self.prompt_len, self.end = prompt_len, end
        self.lookup.start(prompt_len, end)
        if self.model is not None:
            self.model.start(prompt_len, end)

    def observe(self, report):
        verdict, tree = report.verdict, report.tree
        unmodelled = self.chosen is None or self.chosen[0] is self.lookup  # plain or lookup pass
        delivered = self.chosen is not None and self.chosen[0] is self.lookup and verdict.num_accepted > 0
        self.misses = 0 if delivered else self.misses + 1
        if unmodelled:
            if report.logits is not None:  # (a report may leave them out: a trace without them)
                self._observe_confidence(report.logits[verdict.accepted[-self.config.auto_confidence_rows:]])
            if self.model is not None:  # the model's policy prices its drafts against these costs
                self.model.length.observe_costs(None, report.verify_ms, len(tree))
        if self.chosen is None:
            return
        member, kind = self.chosen
        member.observe(report)
        if member is self.lookup:
            depth = int(tree.depths().max())
            evidence = self.evidence[kind]
            evidence[0] = self.decay * evidence[0] + min(verdict.num_accepted + 1, depth)
            evidence[1] = self.decay * evidence[1] + verdict.num_accepted
            self.idle[kind] = 0
            n, accepted = self.lookup.long_match, verdict.num_accepted
            if kind == "long" and accepted >= n and self.prompt_len is not None:
                self._locate_copy(verdict.tokens[accepted - n:accepted])

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
