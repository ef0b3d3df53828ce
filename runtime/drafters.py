"""Drafters: `propose(context, budget) -> DraftTree`, registered by name.

Every drafter proposes a tree rooted at context[-1] with at most `budget`
nodes beyond the root, and learns from `observe(verdict, tree, logits)` how
its last proposal fared and what the target computed for every node.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from .sampling import SamplingParams, probabilities, sample
from .session import Session
from .policy import DraftLength
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


def create(name: str, gen, params: SamplingParams) -> Drafter:
    """A fresh drafter for one generation by `gen` (a runtime.api.Generator)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown drafter '{name}'; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name](gen, params)


def top_candidates(logits: np.ndarray, width: int, params: SamplingParams):
    """The `width` most likely tokens, best first, and their probabilities — without sorting
    or normalising the whole vocabulary (that alone costs milliseconds at 152k tokens)."""
    temperature = params.temperature if params.temperature > 0 else 1.0
    top = np.argpartition(-logits, width)[:width] if width < logits.shape[-1] else np.arange(logits.shape[-1])
    top = top[np.argsort(-logits[top])]  # [width]
    scaled = logits / temperature if temperature != 1.0 else logits
    peak = scaled[top[0]]
    z = np.exp(scaled - peak, dtype=np.float32).sum()
    return top, np.exp(scaled[top] - peak) / z


class ModelDrafter:
    """A small model drafts a chain, greedily or by sampling; `tree` adds top-k siblings.

    The draft session's cache follows the context: before drafting, it is
    rewound to the longest prefix it shares with the context and fed the rest
    (the first call prefills the prompt). A tree is the draft's chain plus, at
    each depth, the next most likely tokens as leaf siblings, kept while their
    path probability stays above `branch_min_prob` and the node budget lasts:
    the alternatives cost no extra draft step, only verify width.
    """

    name = "model"

    def __init__(self, session: Session, params: SamplingParams = SamplingParams(), tree: bool = False,
                 length: DraftLength | None = None, min_confidence: float = 0.3,
                 branch_width: int = 2, branch_min_prob: float = 0.1, rng: np.random.Generator | None = None):
        self.session = session
        self.params = params
        self.tree = tree
        self.length = length or DraftLength()
        self.min_confidence = min_confidence
        self.branch_width = branch_width
        self.branch_min_prob = branch_min_prob
        self.rng = rng or np.random.default_rng(params.seed)
        self._depth = 0

    def reset(self) -> None:
        self.session.reset()

    def propose(self, context: Sequence[int], budget: int) -> DraftTree:
        tree = DraftTree(context[-1])
        depth = min(self.length.k, budget, self.session.max_len - len(context) - 1)
        if depth <= 0:
            self._depth = 0
            return tree
        logits = self.session.sync(context)  # [V] draft logits after the context
        node, used = 0, 0
        deterministic = self.params.greedy or self.tree
        width = 1 + (self.branch_width if self.tree else 0)
        for d in range(depth):
            if deterministic:
                order, probs = top_candidates(logits, width, self.params)  # [width], [width]
                confidence = float(probs[0])
            else:
                p = probabilities(logits, self.params)  # [V] the proposal distribution q
                confidence = float(p.max())
            # Stop on the draft's confidence *before* drawing: a stop that looked at the drawn
            # token would change the proposal distribution q and bias sampled output.
            if d > 0 and confidence < self.min_confidence:
                break  # the draft is unsure: verifying more would mostly waste target work
            if deterministic:
                token, q = int(order[0]), None
            else:
                token, q = sample(p, self.rng), p
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
            logits = self.session.forward([token])[-1]
            self.session.history.append(token)
        self._depth = tree.depths().max() if len(tree) > 1 else 0
        return tree

    def observe(self, verdict: Verdict, tree: DraftTree | None = None, logits=None) -> None:
        self.length.update(verdict.num_accepted, int(self._depth))


@register("model")
def _model(gen, params):
    return ModelDrafter(gen.draft, params, tree=gen.tree, length=gen._length_policy())


@register("self")
def _self(gen, params):
    """The target's own shallow copy (`edgespec export --layers`) drafting as a model would."""
    t, d = gen.target.manifest, gen.draft.manifest
    if not d.layers_kept or d.source.get("sha256") != t.source.get("sha256"):
        from ..export.errors import EdgespecError
        raise EdgespecError(f"drafter 'self' needs a draft exported from the target's own source with "
                            f"--layers; {gen.draft.path.name} is not one (use --drafter model)")
    return _model(gen, params)


@register("cross")
def _cross(gen, params):
    """A draft with another tokenizer, through text (see runtime/cross_vocab.py)."""
    from .cross_vocab import make_cross_vocab
    return make_cross_vocab(gen.draft, gen.tokenizer)


@register("ngram")
def _ngram(gen, params, **kwargs):
    from .ngram import NgramDrafter
    return _NgramAdapter(NgramDrafter(**kwargs))


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
def _recycle(gen, params):
    from .recycle import RecycleDrafter
    if gen.recycler is None:
        gen.recycler = RecycleDrafter(gen.target.vocab_size)
    return gen.recycler


@register("mixed")
def _mixed(gen, params):
    """Lookup, the draft model when there is one, and recycled candidates, in one tree."""
    members = [_ngram(gen, params)]
    if gen.draft is not None:
        members.append(_model(gen, params))
    members.append(_recycle(gen, params))
    return MixedDrafter(members)


@register("auto")
def _auto(gen, params):
    """Prompt lookup when the context repeats itself, else the draft model (if any, and if
    the device profile says a draft step is cheap enough to pay).

    Measured on a 2-core CPU: lookup alone doubles decode speed on edits, where
    output copies the input, but guesses wrong on fresh text; the draft model
    pays a little on fresh text and costs time on edits, where lookup already
    drafts long chains. So each pass takes lookup's proposal when it has one and
    asks the model only when it does not.
    """
    members = [_ngram(gen, params)]
    if gen.draft is not None and _draft_model_may_pay(gen):
        members.append(_model(gen, params))
    return FallbackDrafter(members)


MAX_DRAFT_COST = 0.2  # draft step / target step above which a model draft did not pay (measured)


def _draft_model_may_pay(gen) -> bool:
    """From the device profiles: is a draft step cheap enough against a target step?

    On a 2-core CPU the 0.5B draft costs 0.34 of a 1.5B step (14.2 vs 41.8 ms) and
    its chains measured 0.94-1.00x of plain decoding, so `auto` leaves it out there.
    Profiles missing from the cache are measured here once (a few seconds: passes
    of 1-8 tokens) and cached, as `edgespec devices --profile` would.
    """
    from ..devices.profile import QUICK_SIZES, load_or_measure
    target = load_or_measure(gen.target, sizes=QUICK_SIZES)
    draft = load_or_measure(gen.draft, sizes=QUICK_SIZES)
    return draft.cost(1) <= MAX_DRAFT_COST * target.cost(1)


class FallbackDrafter:
    """The first member with a non-empty proposal drafts this pass, and learns how it fared."""

    name = "fallback"

    def __init__(self, members: list):
        self.members = members
        self.chosen = None

    def propose(self, context, budget):
        for member in self.members:
            tree = member.propose(context, budget)
            if len(tree) > 1:
                self.chosen = member
                return tree
        self.chosen = self.members[-1]
        return tree

    def observe(self, verdict, tree=None, logits=None):
        if self.chosen is not None:
            self.chosen.observe(verdict, tree, logits)

    def reset(self):
        for member in self.members:
            member.reset()
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
