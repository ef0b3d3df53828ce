"""Drafters: `propose(context, budget) -> DraftTree`, registered by name.

A generation tells its drafter where it starts and stops (`start(prompt_len,
end)`); every pass the drafter proposes a tree rooted at context[-1] with at
most `budget` nodes beyond the root, and learns from `observe(report)` how
the proposal fared: the verdict, the target's logits at every node, and what
drafting and verifying cost, timed once by the decode loop.

A factory gets a DraftContext: the sessions, the sampling, the policy's
config, and the generation's drafter seeds (a SeedSequence), from which a
drafter that samples spawns its own child stream. A stream of its own matters:
a drafter drawing the verifier's uniforms would draw a token with the uniform
that then tests its acceptance, and seeded output would no longer follow the
target's distribution. What a drafter needs (a draft model or not) and which
bench modes run it is registered with its factory, and read from there by the
CLI, the Generator and `edgespec bench`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..contract.errors import InputError
from .sampling import SamplingParams, probabilities, sample
from .session import Session
from .policy import CostAwareLength, CostRelatives, DraftLength, LengthPolicy
from .policy_config import DEFAULT, PolicyConfig
from .tree import DraftTree
from .verify import Verdict


@dataclass
class PassReport:
    """One target pass over a proposal, as the decode loop saw it."""
    verdict: Verdict
    tree: DraftTree
    logits: np.ndarray | None  # [nodes, vocab]: the target's at every node (None: not recorded)
    draft_ms: float  # the drafter's propose()
    verify_ms: float  # the target's pass over the tree, verification, keeping the accepted rows


class Drafter(Protocol):
    name: str

    def start(self, prompt_len: int, end: int) -> None:
        """A generation begins: its first `prompt_len` context tokens are the prompt, and it
        stops before the context reaches `end` tokens."""

    def propose(self, context: Sequence[int], budget: int) -> DraftTree: ...

    def observe(self, report: PassReport) -> None: ...

    def reset(self) -> None: ...


@dataclass
class DraftContext:
    """What a drafter factory may use of the Generator it drafts for."""
    target: Session
    draft: Session | None
    tokenizer: Any  # the target's (a draft with another vocabulary maps through text)
    params: SamplingParams
    seeds: np.random.SeedSequence | None = None  # the generation's drafter seeds (None: fresh entropy)
    tree: bool = True  # model drafts may add siblings where verify width is cheap
    config: PolicyConfig = DEFAULT
    use_profiles: bool = True  # size drafts from cached device profiles (`edgespec devices --profile`)
    kept: dict = field(default_factory=dict)  # drafter state that outlives a generation, by drafter

    def own_rng(self) -> np.random.Generator:
        """A random stream for one drafter: a new child of the generation's drafter seeds."""
        return np.random.default_rng(self.seeds.spawn(1)[0] if self.seeds is not None else None)


@dataclass(frozen=True)
class DrafterSpec:
    factory: Callable[[DraftContext], Drafter]
    needs_draft: bool  # cannot run without a draft bundle (--draft)
    uses_draft: bool  # drafts with one when it is given
    bench: tuple[tuple[str, bool], ...]  # `edgespec bench` modes that run it: (mode, tree)


REGISTRY: dict[str, DrafterSpec] = {}


def register(name: str, needs_draft: bool = False, uses_draft: bool | None = None,
             bench: tuple[tuple[str, bool], ...] = ()):
    """bench: the modes of `edgespec bench` that run this drafter, each with the Generator's
    tree flag; `uses_draft` defaults to `needs_draft`."""
    def wrap(factory):
        REGISTRY[name] = DrafterSpec(factory, needs_draft, needs_draft if uses_draft is None else uses_draft, bench)
        return factory
    return wrap


def choices() -> list[str]:
    """Every drafter's name, and "none" (plain decoding)."""
    return [*REGISTRY, "none"]


def needs_draft(name: str) -> bool:
    return name in REGISTRY and REGISTRY[name].needs_draft


def bench_modes() -> dict[str, tuple[str, bool, DrafterSpec]]:
    """`edgespec bench` mode -> (drafter, tree flag, spec), in registration order."""
    return {mode: (name, tree, spec) for name, spec in REGISTRY.items() for mode, tree in spec.bench}


_CONFIGURED = object()  # default of a keyword whose None means something else: take the config's value


def create(name: str, ctx: DraftContext) -> Drafter:
    """A fresh drafter for one generation."""
    if name not in REGISTRY:
        raise InputError(f"unknown drafter '{name}'; choose one of {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name].factory(ctx)


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
    policy says (policy.LengthPolicy): a cost-aware one prices each token by the
    draft's confidence in its path; the heuristic one stops at k tokens or when
    the confidence drops below its minimum. A tree is the draft's
    chain plus, at each depth, the next most likely tokens as leaf siblings
    (`branch_width` of them), kept while their path probability stays above
    `branch_min_prob` and the node budget lasts: the alternatives cost no extra
    draft step, only verify width.
    """

    name = "model"

    def __init__(self, session: Session, params: SamplingParams = SamplingParams(), tree: bool = False,
                 length: LengthPolicy | None = None, branch_width: int | None = None, branch_min_prob: float | None = None,
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
        branch_width, branch_min_prob, window, rejoin: this drafter's own values (unset: the
        config's draft_branch_width, draft_branch_min_prob, draft_window, draft_rejoin)."""
        self.session = session
        self.config = config
        self.window = config.draft_window if window is _CONFIGURED else window
        self.rejoin = config.draft_rejoin if rejoin is None else rejoin
        self._offset: int | None = None  # context tokens the draft skips (first proposal; moved on rejoin)
        self.params = params
        self.tree = tree
        self.length = length or DraftLength.from_config(config)
        self.branch_width = config.draft_branch_width if branch_width is None else branch_width
        self.branch_min_prob = config.draft_branch_min_prob if branch_min_prob is None else branch_min_prob
        self.rng = rng if rng is not None else np.random.default_rng()
        self._depth = self._steps = 0  # of the last proposal: its depth, the draft steps it took
        self._steady = False  # whether those steps fed a few tokens each (a prefill is no step)
        self.confidences: list[float] = []  # of the last proposal: the draft's, per chain token
        self.accept: list[float] = []  # ... per node: its calibrated chance, given its parent
        self.ids = session.logit_ids  # logit column -> token id (a frequent-token draft head), or None
        self.vocab_size = session.vocab_size

    def start(self, prompt_len: int, end: int) -> None:
        pass

    def reset(self) -> None:
        self.session.reset()
        self._offset = None

    @property
    def warm(self) -> bool:
        """Whether the draft holds any of the context (it has drafted since its last reset)."""
        return bool(self.session.history)

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

    def _logits_after(self, context: Sequence[int]) -> np.ndarray:
        """Bring the draft session to `context` (from its offset) and return its next logits."""
        if self._offset is None or self.lag(context) > self.rejoin:  # (far behind: other drafters')
            self._offset = self._entry_offset(context)
        return self.session.sync(context[self._offset:])

    def propose(self, context: Sequence[int], budget: int) -> DraftTree:
        tree = DraftTree(context[-1])
        depth = min(self.length.longest(), budget, self.session.max_len - len(context) - 1)
        self._depth = self._steps = 0
        self._steady = False
        self.confidences, self.accept = [], [1.0]
        if depth <= 0:
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
            if not self.length.keeps(d, path_prob, confidence):
                break  # the draft is unsure: verifying more would mostly waste target work
            chance = self.length.accepts(confidence)
            path_prob *= chance
            self.confidences.append(confidence)
            self.accept.append(chance)
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
                    self.accept.append(self.length.accepts(float(prob)))
                    used += 1
            node = child
            if d + 1 == depth or used >= budget:
                break
            if not self.length.looks(d + 1, path_prob):
                break
            logits = self.session.forward([token])[-1]
            self._steps += 1
        self._depth = tree.depths().max() if len(tree) > 1 else 0
        # A sync that fed a whole prompt is a prefill, not a draft step's cost.
        self._steady = bool(self._depth) and self.session.last_fed <= self.config.draft_steady_feed
        return tree

    def observe(self, report: PassReport) -> None:
        self.length.update(report.verdict.num_accepted, int(self._depth), self.confidences)
        step_ms = report.draft_ms / self._steps if self._steady else None
        self.length.observe_costs(step_ms, report.verify_ms, len(report.tree))


def _length_policy(ctx: DraftContext) -> LengthPolicy:
    """Cost-aware draft length when both models have a device profile, else the heuristic."""
    if ctx.use_profiles:
        from ..devices.profile import cached
        target, draft = cached(ctx.target), cached(ctx.draft)
        if target is not None and draft is not None:
            return CostAwareLength(target.cost, draft.cost(1), config=ctx.config, relatives=_relatives(ctx))
    return DraftLength.from_config(ctx.config)


def _relatives(ctx: DraftContext) -> CostRelatives:
    """How this machine runs each kind of pass against its level, as earlier generations found it."""
    return ctx.kept.setdefault("cost_relatives", CostRelatives())


@register("model", needs_draft=True, bench=(("chain", False), ("tree", True)))
def _model(ctx: DraftContext) -> ModelDrafter:
    return ModelDrafter(ctx.draft, ctx.params, tree=ctx.tree, length=_length_policy(ctx), rng=ctx.own_rng(),
                        config=ctx.config)


@register("self", needs_draft=True)
def _self(ctx: DraftContext) -> ModelDrafter:
    """The target's own shallow copy (`edgespec export --layers`) drafting as a model would."""
    t, d = ctx.target.manifest, ctx.draft.manifest
    if not d.layers_kept or d.source.get("sha256") != t.source.get("sha256"):
        from ..contract.errors import EdgespecError
        raise EdgespecError(f"drafter 'self' needs a draft exported from the target's own source with "
                            f"--layers; {ctx.draft.path.name} is not one (use --drafter model)")
    return _model(ctx)


@register("cross", needs_draft=True)
def _cross(ctx: DraftContext):
    """A draft with another tokenizer, through text (see runtime/cross_vocab.py)."""
    from .cross_vocab import make_cross_vocab
    return make_cross_vocab(ctx.draft, ctx.tokenizer, config=ctx.config)


@register("ngram", bench=(("ngram", True),))
def _ngram(ctx: DraftContext):
    from .ngram import NgramDrafter
    return NgramDrafter(config=ctx.config)


@register("recycle", bench=(("recycle", True),))
def _recycle(ctx: DraftContext):
    """The table is knowledge about the model, not one sequence: it outlives the generation."""
    from .recycle import RecycleDrafter
    if "recycle" not in ctx.kept:
        ctx.kept["recycle"] = RecycleDrafter(ctx.target.vocab_size, config=ctx.config)
    return ctx.kept["recycle"]


@register("mixed", uses_draft=True, bench=(("mixed", True),))
def _mixed(ctx: DraftContext):
    """Lookup, the draft model when there is one, and recycled candidates, in one tree."""
    members = [_ngram(ctx)]
    if ctx.draft is not None:
        members.append(_model(ctx))
    members.append(_recycle(ctx))
    return MixedDrafter(members)


@register("auto", uses_draft=True, bench=(("auto", True),))
def _auto(ctx: DraftContext):
    """Prompt lookup or the draft model, pass by pass, whichever promises more tokens per ms.

    Measured on a 2-core CPU: lookup doubles decode speed on edits, where output
    copies the input, but guesses wrong on fresh text, where the draft model
    pays; a tree holding both branches costs verify width that this CPU's
    verify curve does not give away. So each pass picks one (runtime/auto.py).
    """
    from .auto import AutoDrafter
    config = ctx.config
    lookup = _ngram(ctx)
    if not ctx.use_profiles:
        return AutoDrafter(lookup, _model(ctx) if ctx.draft is not None else None, config=config)
    from ..devices.profile import QUICK_SIZES, load_or_measure
    target = load_or_measure(ctx.target, sizes=QUICK_SIZES)  # cached, or measured now (seconds)
    if ctx.draft is None:
        return AutoDrafter(lookup, None, target.cost, config=config)
    draft = load_or_measure(ctx.draft, sizes=QUICK_SIZES)
    # Siblings of the chain cost verify width: worth it only where width is nearly free.
    tree = ctx.tree and target.cost(config.tree_probe_size) <= config.tree_cost_ratio * target.cost(1)
    length = CostAwareLength(target.cost, draft.cost(1), config=config, relatives=_relatives(ctx))
    model = ModelDrafter(ctx.draft, ctx.params, tree=tree, length=length, rng=ctx.own_rng(), config=config)
    batch = config.prefill_batch
    return AutoDrafter(lookup, model, target.cost, draft_prefill_ms=draft.cost(batch) / batch, config=config,
                       code_fences=kept_code_fences(ctx.tokenizer, ctx.kept))


def kept_code_fences(tokenizer, kept: dict) -> frozenset[int]:
    """The tokenizer's tokens that hold a markdown fence, read once into `kept` (a Generator's
    drafter state): reading Qwen's vocabulary takes ~250 ms."""
    from .auto import code_fences
    if "code_fences" not in kept:
        kept["code_fences"] = code_fences(tokenizer.get_vocab() if tokenizer is not None else {})
    return kept["code_fences"]


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

    def start(self, prompt_len: int, end: int) -> None:
        for member in self.members:
            member.start(prompt_len, end)

    def observe(self, report: PassReport) -> None:
        for member in self.members:
            member.observe(report)

    def reset(self):
        for member in self.members:
            member.reset()
