"""How much to draft: chain length chosen per pass from costs and running acceptance.

With per-token acceptance a, a chain of k drafted tokens yields
E(k) = (1 - a^(k+1)) / (1 - a) tokens per pass (the accepted prefix plus the
target's own token) and costs k draft steps plus one target pass over k+1
tokens. The policy picks the k (0 = do not draft) that maximizes E(k)/cost(k),
using the device profile for costs and an exponential moving estimate of a.

Within a pass, the draft's own confidence is a better guide than the average:
a drafted token is verified only while the chance that it is accepted (the
product along its path of each token's calibrated acceptance: the draft's
probability, corrected per probability bucket by what the target accepted,
see Calibration) times what a token costs at the current rate beats one more verified token,
and the draft takes another step only while the path so far, times the
running acceptance, pays for that step too (as in SVIP). Replayed over the
suite's greedy traces with this CPU's costs, this beats a fixed k=3 chain
with a 0.3 confidence stop by 7% on completion and 13% on explanation;
live, side by side with the k + 0.3 stop it replaced, by 2-6%.
"""

from __future__ import annotations

import statistics
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from .policy_config import DEFAULT, PolicyConfig
from .tree import DraftTree


def expected_tokens(a: float, k: int) -> float:
    if a >= 1.0:
        return k + 1.0
    return (1.0 - a ** (k + 1)) / (1.0 - a)


class Calibration:
    """P(a drafted token is accepted | its evidence, its path accepted so far), learned online.

    Evidence is a number the drafter knows when it drafts (the draft's own probability of the
    token, or the length of the context match a lookup token continues); it falls in a bucket
    between `edges`, and each bucket keeps decayed counts of trials and acceptances, starting
    from its prior worth `trials` trials. Only tokens whose path was accepted are trials: the
    estimate is the chance of the next token given the last one held.
    """

    def __init__(self, edges: Sequence[float], priors: Sequence[float], trials: float, decay: float):
        if len(priors) != len(edges) + 1:
            raise ValueError(f"{len(edges)} bucket edges need {len(edges) + 1} priors (got {len(priors)})")
        self.edges, self.decay = tuple(edges), decay
        self.counts = [[trials, p * trials] for p in priors]  # per bucket: [trials, acceptances]

    @classmethod
    def identity(cls, edges: Sequence[float], trials: float, decay: float) -> Calibration:
        """Buckets of a probability whose priors are the bucket's middle: the draft trusted
        until the target says otherwise."""
        bounds = (0.0, *edges, 1.0)
        return cls(edges, [(lo + hi) / 2 for lo, hi in zip(bounds, bounds[1:])], trials, decay)

    def bucket(self, evidence: float) -> int:
        return bisect_right(self.edges, evidence)

    def __call__(self, evidence: float) -> float:
        trials, accepted = self.counts[self.bucket(evidence)]
        return accepted / trials

    def observe(self, evidence: float, accepted: bool) -> None:
        counts = self.counts[self.bucket(evidence)]
        counts[0] = self.decay * counts[0] + 1.0
        counts[1] = self.decay * counts[1] + float(accepted)

    def observe_path(self, evidence: Sequence[float], accepted: int) -> None:
        """A chain whose tokens had `evidence` and whose first `accepted` were accepted."""
        for depth, e in enumerate(evidence[:accepted + 1]):
            self.observe(e, depth < accepted)


def node_probabilities(tree: DraftTree, accept: Sequence[float]) -> list[float]:
    """P(node reached) for every node, from each drafted node's acceptance given its parent
    (`accept[i]`, root's ignored). Children of one node are exclusive (the target picks one
    token): where their estimates add up past 1 they are scaled down to 1."""
    reach = [1.0] * len(tree)
    for i in range(len(tree)):
        kids = tree.children(i)
        total = sum(accept[c] for c in kids)
        scale = 1.0 / total if total > 1.0 else 1.0
        for c in kids:
            reach[c] = reach[i] * accept[c] * scale
    return reach


def best_cut(tree: DraftTree, accept: Sequence[float], cost_ms: Callable[[int], float]) -> tuple[int, float]:
    """The number of drafted nodes n (a prefix in insertion order, so a tree) with the most
    expected tokens per ms, n >= 1, and that rate; cost_ms(s): verifying s tokens."""
    reach = node_probabilities(tree, accept)
    best, rate, tokens = 0, 0.0, 1.0
    for n in range(1, len(tree)):
        tokens += reach[n]
        r = tokens / cost_ms(n + 1)
        if r > rate:
            best, rate = n, r
    return best, rate


class LengthPolicy(Protocol):
    """How long a model's draft chain runs: what a drafter asks while drafting, and tells after."""
    k: int  # tokens the next proposal is expected to draft (0: none)
    probing: bool  # drafting only to test the acceptance again

    def longest(self) -> int:
        """Most tokens the next proposal may draft."""

    def keeps(self, depth: int, path_prob: float, confidence: float) -> bool:
        """Whether the token at `depth` (0 = first), drafted with `confidence` after a path the
        draft gives `path_prob`, goes into the proposal."""

    def looks(self, depth: int, path_prob: float) -> bool:
        """Whether to pay a draft step for the token at `depth`, before seeing its confidence."""

    def accepts(self, confidence: float) -> float:
        """The chance a token the draft gives `confidence` is accepted (its path held)."""

    def update(self, accepted: int, proposed_depth: int, confidences: Sequence[float] = ()) -> None:
        """A proposal `proposed_depth` deep had `accepted` tokens accepted; `confidences`: the
        draft's, per token of its chain."""

    def observe_costs(self, draft_ms_per_step: float | None, verify_ms: float, size: int) -> None: ...


@dataclass
class DraftLength:
    """Heuristic schedule (HF assisted generation): +1 after a fully accepted draft, -1 after a
    rejection; a chain stops early where the draft's confidence falls below `min_confidence`.
    Used when no device profile is known."""
    k: int = DEFAULT.heuristic_k
    k_min: int = DEFAULT.heuristic_k_min
    k_max: int = DEFAULT.heuristic_k_max
    min_confidence: float = DEFAULT.heuristic_min_confidence
    probing = False

    @classmethod
    def from_config(cls, config: PolicyConfig) -> DraftLength:
        return cls(config.heuristic_k, config.heuristic_k_min, config.heuristic_k_max,
                   config.heuristic_min_confidence)

    def longest(self) -> int:
        return self.k

    def keeps(self, depth: int, path_prob: float, confidence: float) -> bool:
        return depth == 0 or confidence >= self.min_confidence

    def accepts(self, confidence: float) -> float:
        return confidence  # (uncalibrated: this schedule's stop reads the confidence itself)

    def looks(self, depth: int, path_prob: float) -> bool:
        return True

    def observe_costs(self, draft_ms_per_step: float | None, verify_ms: float, size: int) -> None:
        pass  # (no costs to weigh)

    def update(self, accepted: int, proposed_depth: int, confidences: Sequence[float] = ()) -> None:
        if proposed_depth and accepted >= proposed_depth:
            self.k = min(self.k + 1, self.k_max)
        elif accepted < proposed_depth:
            self.k = max(self.k - 1, self.k_min)


@dataclass
class CostRelatives:
    """How each kind of pass runs against the machine's level, and how often each was timed: a
    machine's trait, kept across generations. The level is how the first kind of pass timed
    (the anchor) runs against its profile; the anchor's relative stays 1. Were every relative
    free, they could drift together against the level: one slow first pass set a high level
    and every timed kind's relative low to match, leaving a kind not yet timed (the draft,
    before it enters) priced at the inflated level, so auto never entered the draft live.
    A relative is learned only from pairs: a kind's timing against another kind's in the same
    pass or the one before (the machine drifts over seconds; a pass apart it is the same machine)."""
    relative: dict[str, float] = field(default_factory=lambda: {"single": 1.0, "wide": 1.0, "draft": 1.0})
    timed: dict[str, int] = field(default_factory=dict)
    first_pairs: dict[str, list[float]] = field(default_factory=dict)  # a kind's first pairs' ratios
    anchor: str | None = None

    def known(self, kind: str, first: int) -> bool:
        """Whether `kind`'s relative is learned enough to read the level from its timings."""
        return kind == self.anchor or len(self.first_pairs.get(kind, ())) >= first


class CostAwareLength:
    """Pick k to maximize expected tokens per millisecond.

    verify_ms(s): target pass over s tokens; draft_ms: one draft step.
    """

    def __init__(self, verify_ms: Callable[[int], float], draft_ms: float, k_max: int | None = None,
                 prior: float | None = None, decay: float | None = None, probe_every: int | None = None,
                 cost_decay: float | None = None, config: PolicyConfig = DEFAULT,
                 relatives: CostRelatives | None = None):
        """prior: per-token acceptance before any evidence, worth `config.prior_trials` trials.
        probe_every: passes without drafting before a probe; each probe that is rejected doubles
        the wait (up to `config.length_probe_max`): a probe pays the draft's catch-up over every
        token it missed. k_max, prior, decay, probe_every, cost_decay: this policy's own values
        (None: the config's length_k_max, draft_prior, acceptance_decay, length_probe_every,
        cost_decay). relatives: how each kind of pass runs against the machine's level, shared
        with earlier generations on the same models (what they learned of this machine)."""
        self.config = config
        self.profile_ms = verify_ms
        self.draft_profile_ms = draft_ms
        self.k_max = config.length_k_max if k_max is None else k_max
        self.decay = config.acceptance_decay if decay is None else decay
        self.trials = config.prior_trials  # pseudo-counts of the prior
        self.successes = (config.draft_prior if prior is None else prior) * config.prior_trials
        self.probe_every = self.probe_gap = config.length_probe_every if probe_every is None else probe_every
        self.idle = 0
        # Live costs: a shared CPU runs faster or slower than when the profile was taken (here, a
        # neighbour's load swung pass times 1.5x within a reply). The profile gives each cost's
        # shape; timed passes set one machine level (their time over the profile's); each kind
        # of pass keeps how it runs against that level, learned more slowly. A kind not timed for
        # a while moves with the level: the draft before it enters, or wide passes during plain
        # runs. Priced on the profile alone where untimed, a spell at 1.4x the profile's target
        # times made the draft's entry look 1.4x cheaper than it was (replays of the held-out
        # traces under it: edits 1.14x -> 0.97x the best single mode).
        self.cost_decay = config.cost_decay if cost_decay is None else cost_decay
        self.level: float | None = None  # (set by the first timed passes: the profile's until then)
        self._level_timings: list[float] = []  # the first timed passes' levels, whose median sets it
        self._passes = 0  # passes timed in this generation
        self._recent: dict[str, tuple[int, float]] = {}  # kind -> (pass, the level its last timing read)
        # A one-token pass is memory-bound where wider ones are compute-bound, so the two move
        # apart under conditions the profile did not see: on 2 MB pages (chat, serve, bench) a
        # 1.5B pass over 1 token took 29-38 ms against 41-43 ms on 4 KB pages, over 4 tokens
        # 60-71 against 62-69. Priced on one level, drafts that lost to plain passes were
        # taken. So one-token passes, wider ones and draft steps each keep their own relative.
        self.relatives = CostRelatives() if relatives is None else relatives
        # What a token the draft gives probability p is worth: a same-family draft's p is close
        # to the target's acceptance, and the buckets learn where it is not.
        self.calibration = Calibration.identity(config.draft_confidence_edges, self.trials, self.decay)
        self.k = self.best_k()

    @property
    def acceptance(self) -> float:
        return self.successes / self.trials

    def scale(self, kind: str) -> float:
        """Live over profiled cost of a kind of pass: "single" (a one-token target pass), "wide"
        (a target pass over several), "draft" (the draft's)."""
        return (self.level or 1.0) * self.relatives.relative[kind]

    @property
    def draft_ms(self) -> float:
        """One draft step, live."""
        return self.scale("draft") * self.draft_profile_ms

    def verify_ms(self, s: int) -> float:
        return self.scale("single" if s == 1 else "wide") * self.profile_ms(s)

    def rate(self, k: int, extra_ms: float = 0.0, acceptance: float | None = None) -> float:
        """Expected tokens per ms with k drafted tokens (and `extra_ms` more work per pass), at the
        running acceptance or at `acceptance`."""
        a = self.acceptance if acceptance is None else acceptance
        return expected_tokens(a, k) / (k * self.draft_ms + self.verify_ms(k + 1) + extra_ms)

    def best_ms_per_token(self, acceptance: float) -> float:
        """What an emitted token would cost at the best k if the acceptance were `acceptance`."""
        return 1.0 / max(self.rate(k, acceptance=acceptance) for k in range(self.k_max + 1))

    def best_k(self) -> int:
        return max(range(self.k_max + 1), key=self.rate)

    @property
    def probing(self) -> bool:
        """Drafting only to test the acceptance again (the rates alone say not to draft)."""
        return self.k > 0 and self.best_k() == 0

    def ms_per_token(self) -> float:
        """What an emitted token costs at the current expected rate."""
        return 1.0 / self.rate(self.k)

    def longest(self) -> int:
        return self.k_max if self.k else 0  # (the draft's confidence stops the chain sooner)

    def keeps(self, depth: int, path_prob: float, confidence: float) -> bool:
        return self.worth_including(depth, path_prob * self.accepts(confidence))

    def accepts(self, confidence: float) -> float:
        return self.calibration(confidence)

    def looks(self, depth: int, path_prob: float) -> bool:
        return self.worth_looking(depth, path_prob)

    def worth_including(self, depth: int, path_prob: float) -> bool:
        """Whether the drafted token at `depth` (0 = first), whose path the draft gives
        `path_prob`, is worth verifying: its draft step is paid; it adds one verified token
        (or starts a run of them that pays, see `_run_pays`)."""
        return self._run_pays(depth + 1, path_prob, steps_paid=1)

    def worth_looking(self, depth: int, path_prob: float) -> bool:
        """Whether to pay a draft step for the token at `depth`, before knowing its
        confidence: the path so far times the running acceptance must pay for the step
        and the wider verify (or for a run of steps, see `_run_pays`)."""
        return self._run_pays(depth + 1, path_prob * self.acceptance, steps_paid=0)

    def _run_pays(self, nodes: int, first_prob: float, steps_paid: int) -> bool:
        """Whether verifying n more drafted tokens after a tree of `nodes` pays for some n:
        the first is accepted with `first_prob`, each later one with the running acceptance
        on top; each is worth what a token costs at the current rate, against the draft
        steps not yet paid and the verify's growth. Looking past the next token matters where
        the cost curve is uneven: on this CPU a third verified token cost 12.7 ms and a fourth
        7 ms, and a one-token look stopped 28 of a completion's 53 chains after one token."""
        per_token, a = self.ms_per_token(), self.acceptance
        base, prob, gain = self.verify_ms(nodes), first_prob, 0.0
        for n in range(1, self.k_max + 2 - nodes):
            gain += prob * per_token
            if gain > (n - steps_paid) * self.draft_ms + self.verify_ms(nodes + n) - base:
                return True
            prob *= a
        return False

    def observe_costs(self, draft_ms_per_step: float | None, verify_ms: float, size: int) -> None:
        """Fold in one pass's measured costs (draft step, if any drafted, and a verify over size)."""
        self._passes += 1
        self._observe_cost("single" if size == 1 else "wide", verify_ms / self.profile_ms(size))
        if draft_ms_per_step is not None:
            self._observe_cost("draft", draft_ms_per_step / self.draft_profile_ms)
        self._choose_k()  # (keeps a due probe: a pass's costs come after its update)

    def _observe_cost(self, kind: str, scale: float) -> None:
        """A pass of `kind` ran at `scale` times its profiled cost. A kind's relative (but the
        anchor's) is learned from pairs (`_PAIRS`): its timing over the level that the kind it
        pairs with read at most `cost_pair_passes` passes before; the median of its first few
        pairs, then a running mean. Until then its timings do not move the level. Set against
        the running level instead, a relative kept its first three timings' guess however many
        came after, since the level took up each later one: a process's first request timed
        wide passes 1.07-1.11x the one-token pass (0.97-1.0x, paired, over later ones), and auto
        stayed out of the draft on the completions that followed. The level is the median of
        the first timings that may move it (a process's first pass ran 3.6x the profile, the
        next ones 1.1x), then follows each."""
        relatives, rel, config = self.relatives, self.relatives.relative, self.config
        relatives.anchor = relatives.anchor or kind
        relatives.timed[kind] = relatives.timed.get(kind, 0) + 1
        if kind != relatives.anchor:
            reference = self._reference(kind)
            if reference is not None:
                pairs = relatives.first_pairs.setdefault(kind, [])
                if len(pairs) < config.cost_relative_first:
                    pairs.append(scale / reference)
                    rel[kind] = statistics.median(pairs)
                else:
                    rel[kind] += (1 - config.cost_relative_decay) * (scale / reference - rel[kind])
            if not relatives.known(kind, config.cost_relative_first):
                return
        level = scale / rel[kind]
        self._recent[kind] = (self._passes, level)
        if len(self._level_timings) < config.cost_relative_first:
            self._level_timings.append(level)
            self.level = statistics.median(self._level_timings)
        else:
            self.level = self.cost_decay * self.level + (1 - self.cost_decay) * level

    # What a kind's timing pairs with: verify passes with the other verify kind, a draft step
    # with its own pass's verify (draft steps and verifies alone would pair in a circle).
    _PAIRS = {"single": "wide", "wide": "single", "draft": "wide"}

    def _reference(self, kind: str) -> float | None:
        """The level that the latest timing of the kind `kind` pairs with read, if recent enough."""
        at, level = self._recent.get(self._PAIRS[kind], (None, None))
        return level if at is not None and at >= self._passes - self.config.cost_pair_passes else None

    def update(self, accepted: int, proposed_depth: int, confidences: Sequence[float] = ()) -> None:
        self.calibration.observe_path(confidences, accepted)
        if self.probing:  # the next probe waits longer unless this one was accepted whole
            paid = proposed_depth and accepted >= proposed_depth
            longest = self.config.length_probe_max
            self.probe_gap = self.probe_every if paid else min(2 * self.probe_gap, longest)
            self.idle = 0
        # Each drafted position up to the first rejection is one Bernoulli trial of a.
        trials = min(accepted + 1, proposed_depth)
        if trials:
            self.trials = self.decay * self.trials + trials
            self.successes = self.decay * self.successes + accepted
            self.idle = 0
        else:
            self.idle += 1
        self._choose_k()

    def _choose_k(self) -> None:
        self.k = self.best_k()
        if self.k == 0 and self.idle >= self.probe_gap:
            self.k = 1  # not drafting gives no evidence: probe now and then, in case text got easier
