"""Drafters: `propose(context, budget) -> DraftTree`, registered by name.

Every drafter proposes a tree rooted at context[-1] with at most `budget`
nodes beyond the root, and learns from `observe(verdict, tree, logits)` how
its last proposal fared and what the target computed for every node.

A factory gets the generation's drafter seeds (a SeedSequence): a drafter that
samples spawns its own child stream from it. A stream of its own matters: a
drafter drawing the verifier's uniforms would draw a token with the uniform
that then tests its acceptance, and seeded output would no longer follow the
target's distribution.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol, Sequence

import numpy as np

from ..contract.errors import InputError
from .sampling import SamplingParams, probabilities, sample
from .session import Session
from .policy import CostAwareLength, DraftLength
from .policy_config import DEFAULT, PolicyConfig
from .tree import DraftTree
from .verify import Verdict


class Drafter(Protocol):
    name: str

    def propose(self, context: Sequence[int], budget: int) -> DraftTree: ...

    def observe(self, verdict: Verdict, tree: DraftTree, logits: np.ndarray) -> None: ...

    def reset(self) -> None: ...


REGISTRY: dict[str, Callable[..., Drafter]] = {}


def register(name: str):
    def wrap(factory):
        REGISTRY[name] = factory
        return factory
    return wrap


NEEDS_DRAFT_MODEL = {"model", "cross", "self"}
_CONFIGURED = object()  # default of a keyword whose None means something else: take the config's value


def create(name: str, gen, params: SamplingParams, seeds: np.random.SeedSequence | None = None) -> Drafter:
    """A fresh drafter for one generation by `gen` (a runtime.api.Generator). seeds: the
    generation's seeds for drafters, independent of the verifier's (None: fresh entropy)."""
    if name not in REGISTRY:
        raise InputError(f"unknown drafter '{name}'; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](gen, params, seeds)


def _own_rng(seeds: np.random.SeedSequence | None) -> np.random.Generator:
    """A random stream for one drafter: a new child of the generation's drafter seeds."""
    return np.random.default_rng(seeds.spawn(1)[0] if seeds is not None else None)


def top_candidates(logits: np.ndarray, width: int, params: SamplingParams):
    """The `width` most likely tokens, best first, and their probabilities — without sorting
    or normalising the whole vocabulary (that alone costs milliseconds at 152k tokens)."""
    temperature = params.temperature if params.temperature > 0 else 1.0
    if width == 1:
        top = np.array([logits.argmax()])
    else:
        top = np.argpartition(-logits, width)[:width] if width < logits.shape[-1] else np.arange(logits.shape[-1])
        top = top[np.argsort(-logits[top])]  # [width]
    shifted = logits - logits[top[0]]  # [V], max 0
    # Divide after the shift, in float64: 1e-320 is 0 in float32, and unshifted logits over
    # a tiny temperature overflow to inf (inf - inf = NaN); shifted, the rest fall to -inf.
    with np.errstate(over="ignore"):  # (an overflow here is the -inf it should be)
        scaled = np.divide(shifted, temperature, dtype=np.float64) if temperature != 1.0 else shifted
        z = np.exp(scaled, dtype=np.float32).sum()
    return top, np.exp(scaled[top]) / z


class ModelDrafter:
    """A small model drafts a chain, greedily or by sampling; `tree` adds top-k siblings.

    The draft session's cache follows the context: before drafting, it is
    rewound to the longest prefix it shares with the context and fed the rest
    (the first call prefills the prompt). The chain stops where the length
    policy says: a cost-aware one prices each token by the draft's confidence
    in its path (up to k_max tokens); the heuristic one stops at k tokens or
    when the confidence drops below `min_confidence`. A tree is the draft's
    chain plus, at each depth, the next most likely tokens as leaf siblings
    (`branch_width` of them), kept while their path probability stays above
    `branch_min_prob` and the node budget lasts: the alternatives cost no extra
    draft step, only verify width.
    """

    name = "model"

    def __init__(self, session: Session, params: SamplingParams = SamplingParams(), tree: bool = False,
                 length: DraftLength | None = None, min_confidence: float | None = None,
                 branch_width: int | None = None, branch_min_prob: float | None = None,
                 rng: np.random.Generator | None = None, window: int | None | object = _CONFIGURED,
                 rejoin: int | None = None, config: PolicyConfig = DEFAULT):
        """rng: the stream sampled drafts are drawn from. It must not replay the verifier's
        uniforms (as a generator built from the same seed would); None: fresh entropy.
        window: the draft reads only the last `window` tokens of the prompt (and everything
        after it): its prefill is paid in decode time, and a draft only has to guess the next
        few tokens. None: the whole prompt.
        rejoin: when other drafters drafted so many passes that the draft is more than this
        many tokens behind, it restarts from the last `rejoin` tokens instead of reading all
        it missed, so auto's catch-up cost is bounded.
        min_confidence, branch_width, branch_min_prob, window, rejoin: this drafter's own
        values (unset: the config's heuristic_min_confidence, draft_branch_width,
        draft_branch_min_prob, draft_window, draft_rejoin)."""
        self.session = session
        self.config = config
        self.window = config.draft_window if window is _CONFIGURED else window
        self.rejoin = config.draft_rejoin if rejoin is None else rejoin
        self._offset: int | None = None  # context tokens the draft skips (first proposal; moved on rejoin)
        self._step_ms, self._proposed_at = None, time.perf_counter()
        self.params = params
        self.tree = tree
        self.length = length or DraftLength.from_config(config)
        self.min_confidence = config.heuristic_min_confidence if min_confidence is None else min_confidence
        self.branch_width = config.draft_branch_width if branch_width is None else branch_width
        self.branch_min_prob = config.draft_branch_min_prob if branch_min_prob is None else branch_min_prob
        self.rng = rng if rng is not None else np.random.default_rng()
        self._depth = 0
        self._peeked, self._peek_s = None, 0.0  # (context, logits, seconds) of the last peek
        self.ids = session.logit_ids  # logit column -> token id (a frequent-token draft head), or None
        self.vocab_size = session.vocab_size

    def reset(self) -> None:
        self.session.reset()
        self._offset, self._peeked = None, None

    def lag(self, context: Sequence[int]) -> int:
        """Context tokens the draft has not read yet."""
        return len(context) - (self._offset or 0) - len(self.session.history)

    def catch_up(self, context: Sequence[int]) -> int:
        """Tokens the draft's next proposal must feed before drafting (at most `rejoin`)."""
        return min(self.lag(context), self.rejoin)

    def _entry_offset(self, context: Sequence[int]) -> int:
        """Where a (re)start reads the context from: the prompt window the first time, else
        `rejoin` tokens back."""
        if self._offset is None:
            return max(0, len(context) - self.window) if self.window else 0
        return len(context) - self.rejoin

    def entry_tokens(self, context: Sequence[int]) -> int:
        """Tokens a (re)start feeds."""
        return len(context) - self._entry_offset(context)

    def peek(self, context: Sequence[int]) -> int:
        """The token the draft ranks first after `context`; the step is kept for the next
        proposal after the same context."""
        started = time.perf_counter()
        logits = self._logits_after(context)
        self._peeked = (list(context), logits, time.perf_counter() - started)
        best = int(np.argmax(logits))
        return int(self.ids[best]) if self.ids is not None else best

    def _logits_after(self, context: Sequence[int]) -> np.ndarray:
        """Bring the draft session to `context` (from its offset) and return its next logits,
        or the logits a `peek` at this context already computed."""
        peeked, self._peeked = self._peeked, None
        if peeked is not None and peeked[0] == list(context):
            self._peek_s = peeked[2]
            return peeked[1]
        if self._offset is None or self.lag(context) > self.rejoin:  # (far behind: other drafters')
            self._offset = self._entry_offset(context)
        return self.session.sync(context[self._offset:])

    def propose(self, context: Sequence[int], budget: int) -> DraftTree:
        started = time.perf_counter()
        self._peek_s = 0.0
        tree = DraftTree(context[-1])
        priced = hasattr(self.length, "worth_including")  # a cost-aware policy prices each token
        most = self.length.k_max if priced and self.length.k else self.length.k
        depth = min(most, budget, self.session.max_len - len(context) - 1)
        self._steps = 0
        if depth <= 0:
            self._depth, self._step_ms = 0, None
            self._proposed_at = time.perf_counter()
            return tree
        logits = self._logits_after(context)  # [V] draft logits after the context
        self._steps = 1
        node, used, path_prob = 0, 0, 1.0
        deterministic = self.params.greedy or self.tree
        width = 1 + (self.branch_width if self.tree else 0)
        for d in range(depth):
            if deterministic:
                order, probs = top_candidates(logits, width, self.params)  # [width], [width]
                if self.ids is not None:
                    order = self.ids[order]
                confidence = float(probs[0])
            else:
                p = probabilities(logits, self.params)  # [V'] the proposal distribution q
                confidence = float(p.max())
            # Stop on the draft's confidence *before* drawing: a stop that looked at the drawn
            # token would change the proposal distribution q and bias sampled output.
            if priced and not self.length.worth_including(d, path_prob * confidence):
                break  # the draft is unsure: verifying more would mostly waste target work
            if not priced and d > 0 and confidence < self.min_confidence:
                break
            path_prob *= confidence
            if deterministic:
                token, q = int(order[0]), None
            else:
                token, q = sample(p, self.rng), p
                if self.ids is not None:  # q over the whole vocabulary: 0 for tokens the head lacks
                    token, q = int(self.ids[token]), np.zeros(self.vocab_size, p.dtype)
                    q[self.ids] = p
            child = tree.add(node, token, q)
            used += 1
            if self.tree:
                for alt, prob in zip(order[1:], probs[1:]):
                    if used >= budget or float(prob) < self.branch_min_prob:
                        break
                    tree.add(node, int(alt))
                    used += 1
            node = child
            if d + 1 == depth or used >= budget:
                break
            if priced and not self.length.worth_looking(d + 1, path_prob):
                break
            logits = self.session.forward([token])[-1]
            self.session.history.append(token)
            self._steps += 1
        self._depth = tree.depths().max() if len(tree) > 1 else 0
        self._proposed_at = time.perf_counter()
        # A sync that fed a whole prompt is a prefill, not a draft step's cost.
        steady = self._depth and self.session.last_fed <= self.config.draft_steady_feed
        spent = self._proposed_at - started + self._peek_s
        self._step_ms = spent * 1000 / self._steps if steady else None
        return tree

    def observe(self, verdict: Verdict, tree: DraftTree | None = None, logits=None) -> None:
        self.length.update(verdict.num_accepted, int(self._depth))
        if hasattr(self.length, "observe_costs") and tree is not None:
            verify_ms = (time.perf_counter() - self._proposed_at) * 1000
            self.length.observe_costs(self._step_ms, verify_ms, len(tree))


@register("model")
def _model(gen, params, seeds=None):
    return ModelDrafter(gen.draft, params, tree=gen.tree, length=gen._length_policy(), rng=_own_rng(seeds),
                        config=gen.policy_config)


@register("self")
def _self(gen, params, seeds=None):
    """The target's own shallow copy (`edgespec export --layers`) drafting as a model would."""
    t, d = gen.target.manifest, gen.draft.manifest
    if not d.layers_kept or d.source.get("sha256") != t.source.get("sha256"):
        from ..contract.errors import EdgespecError
        raise EdgespecError(f"drafter 'self' needs a draft exported from the target's own source with "
                            f"--layers; {gen.draft.path.name} is not one (use --drafter model)")
    return _model(gen, params, seeds)


@register("cross")
def _cross(gen, params, seeds=None):
    """A draft with another tokenizer, through text (see runtime/cross_vocab.py)."""
    from .cross_vocab import make_cross_vocab
    return make_cross_vocab(gen.draft, gen.tokenizer, config=gen.policy_config)


@register("ngram")
def _ngram(gen, params, seeds=None):
    from .ngram import NgramDrafter
    return _NgramAdapter(NgramDrafter(config=gen.policy_config))


class _NgramAdapter:
    name = "ngram"

    def __init__(self, inner):
        self.inner = inner

    def propose(self, context, budget):
        return self.inner.propose(context, budget)

    def observe(self, verdict, tree=None, logits=None):
        pass

    def reset(self):
        self.inner.reset()


@register("recycle")
def _recycle(gen, params, seeds=None):
    from .recycle import RecycleDrafter
    if gen.recycler is None:
        gen.recycler = RecycleDrafter(gen.target.vocab_size, config=gen.policy_config)
    return gen.recycler


@register("mixed")
def _mixed(gen, params, seeds=None):
    """Lookup, the draft model when there is one, and recycled candidates, in one tree."""
    members = [_ngram(gen, params, seeds)]
    if gen.draft is not None:
        members.append(_model(gen, params, seeds))
    members.append(_recycle(gen, params, seeds))
    return MixedDrafter(members)


@register("auto")
def _auto(gen, params, seeds=None):
    """Prompt lookup or the draft model, pass by pass, whichever promises more tokens per ms.

    Measured on a 2-core CPU: lookup doubles decode speed on edits, where output
    copies the input, but guesses wrong on fresh text, where the draft model
    pays; a tree holding both branches costs verify width that this CPU's
    verify curve does not give away. So each pass picks one (runtime/auto.py).
    """
    from .auto import AutoDrafter
    config = gen.policy_config
    lookup = _ngram(gen, params, seeds)
    if not gen.use_profiles:
        return AutoDrafter(lookup, _model(gen, params, seeds) if gen.draft is not None else None, config=config)
    from ..devices.profile import QUICK_SIZES, load_or_measure
    target = load_or_measure(gen.target, sizes=QUICK_SIZES)  # cached, or measured now (seconds)
    if gen.draft is None:
        return AutoDrafter(lookup, None, target.cost, config=config)
    draft = load_or_measure(gen.draft, sizes=QUICK_SIZES)
    # Siblings of the chain cost verify width: worth it only where width is nearly free.
    tree = gen.tree and target.cost(config.tree_probe_size) <= config.tree_cost_ratio * target.cost(1)
    length = CostAwareLength(target.cost, draft.cost(1), config=config)
    model = ModelDrafter(gen.draft, params, tree=tree, length=length, rng=_own_rng(seeds), config=config)
    batch = config.prefill_batch
    return AutoDrafter(lookup, model, target.cost, draft_prefill_ms=draft.cost(batch) / batch, config=config)


class MixedDrafter:
    """Several drafters' trees merged under one node budget, verified in one pass.

    Members propose in priority order, each with the budget the earlier ones
    left; shared prefixes trie-merge, so a lookup branch that agrees with the
    model's chain costs nothing extra, and one that disagrees is a sibling the
    target can still pick. Every member observes every pass.
    """

    name = "mixed"

    def __init__(self, members: list, shares: list[float] | None = None):
        self.members = members
        self.shares = shares or [1.0] * len(members)

    def propose(self, context, budget):
        tree = DraftTree(context[-1])
        for member, share in zip(self.members, self.shares):
            room = budget - (len(tree) - 1)
            if room <= 0:
                break
            tree.merge(member.propose(context, max(1, int(round(room * share)))))
        return tree.prune(budget)

    def observe(self, verdict, tree=None, logits=None):
        for member in self.members:
            member.observe(verdict, tree, logits)

    def reset(self):
        for member in self.members:
            member.reset()
