"""The decode loop: prefill, then draft -> verify -> keep, one pass at a time.

`decode_steps` is a generator of `Step`s (the tokens one target pass emitted)
with all state passed in; nothing here knows about text. Plain decoding is
the same loop with no drafter: every tree is just the root.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .drafters import Drafter, PassReport
from .sampling import SamplingParams, probabilities, sample
from .session import Session
from .tree import DraftTree
from .verify import verify_greedy, verify_sampling


@dataclass
class Step:
    tokens: list[int]  # emitted by this pass, in order
    from_draft: list[bool]  # per token: a drafted token the target accepted
    proposed: int  # drafted nodes verified in this pass


@dataclass
class Timing:
    prefill: float = 0.0
    reused: int = 0  # prompt tokens whose KV was already cached
    draft: float = 0.0
    verify: float = 0.0
    passes: int = 0
    proposed: int = 0
    accepted: int = 0


def decode_steps(target: Session, prompt: Sequence[int], params: SamplingParams,
                 drafter: Drafter | None = None, budget: int = 8,
                 rng: np.random.Generator | None = None, timing: Timing | None = None,
                 reuse_cache: bool = False, end: int | None = None) -> Iterator[Step]:
    """Yield the target's tokens after `prompt`, several per pass when drafts are accepted.

    The target cache holds every context token but the last one (the root of the
    next tree); each pass feeds the tree and keeps the accepted path's rows.
    Runs until the caller stops iterating or the context is full. With
    `reuse_cache`, cached rows that match the start of the prompt are kept
    (multi-turn chat re-prefills only the new turn). `end`: the context length at which the
    caller will stop (default: the context limit), told to the drafter with the prompt's.

    rng: the verifier's random stream (default: from params.seed). A drafter that samples
    draws from a stream of its own (drafters.create spawns one): sharing a replay of
    this one would bias the output.
    """
    rng = rng or np.random.default_rng(params.seed)
    timing = timing or Timing()
    if drafter:
        drafter.start(len(prompt), min(end or target.max_len, target.max_len))
    cache = target.cache
    t0 = time.perf_counter()
    reused = target.reuse_prefix(prompt) if reuse_cache else 0
    if not reuse_cache:
        target.reset()
    last = target.prefill(prompt[reused:])  # [V]
    first = _pick(last[None], params, rng)
    timing.prefill = time.perf_counter() - t0
    timing.reused = reused
    context = list(prompt) + [first]
    yield Step([first], [False], 0)
    while len(context) < target.max_len:
        past = cache.length  # == len(context) - 1
        t0 = time.perf_counter()
        room = target.max_len - len(context)
        tree = drafter.propose(context, min(budget, room)) if drafter else DraftTree(context[-1])
        t1 = time.perf_counter()
        logits = target.forward(tree.tokens, tree.position_ids(past)[0],
                                tree.attention_bias(past)[0, 0])  # [S, V]
        if params.greedy:
            verdict = verify_greedy(tree, logits)
        else:
            verdict = verify_sampling(tree, probabilities(logits, params), rng)
        cache.keep(past, verdict.accepted)  # rows of root + accepted nodes, as a chain
        t2 = time.perf_counter()
        if drafter:
            drafter.observe(PassReport(verdict, tree, logits, (t1 - t0) * 1000, (t2 - t1) * 1000))
        timing.draft += t1 - t0
        timing.verify += t2 - t1
        timing.passes += 1
        timing.proposed += verdict.proposed
        timing.accepted += verdict.num_accepted
        tokens = verdict.tokens[: target.max_len - len(context)]
        context.extend(tokens)
        yield Step(tokens, [True] * verdict.num_accepted + [False], verdict.proposed)


def _pick(logits: np.ndarray, params: SamplingParams, rng) -> int:
    if params.greedy:
        return int(logits[-1].argmax())
    return sample(probabilities(logits[-1], params), rng)
