"""Long prompts cost no correctness: chunked prefill equals one pass, and trees, lookup, the
draft's window and KV keep/rewind stay lossless at 3-4k positions, up to the context's end.

Tiny models re-exported with a 4,096-token context (their source says 512 positions).
"""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest

from edgespec.contract.errors import InputError
from edgespec.runtime.api import Generator
from edgespec.runtime.drafters import ModelDrafter
from edgespec.runtime.sampling import SamplingParams
from edgespec.runtime.scheduler import decode_steps
from edgespec.runtime.session import Session
from edgespec.runtime.tree import DraftTree

from drafting import EveryNthPass

CONTEXT = 4096


def _long_bundle(hf, out):
    """`hf` exported with a CONTEXT-token context (its config raised to that many positions)."""
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    src = out.with_name(out.name + "-hf")
    shutil.copytree(hf, src)
    config = json.loads((src / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (src / "config.json").write_text(json.dumps(config))
    export(str(src), out, ExportOptions(recipe=Recipe("fp32"), max_context=CONTEXT, force=True))
    return out


@pytest.fixture(scope="module")
def target(tiny_hf, tmp_path_factory):
    return Session(_long_bundle(tiny_hf, tmp_path_factory.mktemp("long") / "qwen2"))


@pytest.fixture(scope="module")
def draft(tiny_draft_hf, tmp_path_factory):
    return Session(_long_bundle(tiny_draft_hf, tmp_path_factory.mktemp("long") / "llama"))


@pytest.fixture(scope="module")
def text_ids(target):
    """Python's argparse module as tokens: code no test model was trained on, with repeats."""
    import argparse
    ids = Generator(target).encode(inspect.getsource(argparse))
    assert len(ids) > CONTEXT
    return ids


def _greedy(gen: Generator, ids, max_tokens: int):
    gen.use_profiles = False  # tiny drafts cost what tiny targets do: pin verification, not policy
    return gen.generate(ids, max_tokens=max_tokens)


def test_prefill_in_chunks_of_any_size_equals_one_pass(target, text_ids):
    """Same last logits and KV rows as one pass over the prompt: bit for bit where each pass has
    several rows; within 1e-5 for one-row passes (ORT's one-row matmul rounds differently)."""
    ids = text_ids[:3000]
    target.reset()
    one = target.forward(ids)[-1].copy()  # [V] one pass over the whole prompt
    rows = [a[:, :, :len(ids)].copy() for a in target.cache.keys + target.cache.values]
    for chunk in (1, 7, 64, 1000, len(ids), None):  # None: prefill's own passes
        target.reset()
        last = target.prefill(ids, chunk=chunk)
        assert target.cache.length == len(ids)
        tolerance = dict(rtol=0, atol=1e-5 if chunk == 1 else 0, err_msg=f"chunk {chunk}")
        np.testing.assert_allclose(last, one, **tolerance)
        for a, b in zip(target.cache.keys + target.cache.values, rows):
            np.testing.assert_allclose(a[:, :, :len(ids)], b, **tolerance)
    target.reset()


def test_prefill_takes_few_wide_passes(target, text_ids, monkeypatch):
    """A 3,000-token prompt is fed in 12 passes of at most 256 rows (64-row passes cost 10-20%
    more work per token at 1.5-3.5k tokens: runtime/session.py PREFILL_CHUNK)."""
    widths = []
    forward = target.forward

    def recording(tokens, *args, **kwargs):
        widths.append(len(tokens))
        return forward(tokens, *args, **kwargs)

    monkeypatch.setattr(target, "forward", recording)
    target.reset()
    target.prefill(text_ids[:3000])
    assert len(widths) == 12 and max(widths) == 256 and sum(widths) == 3000
    target.reset()


@pytest.mark.parametrize("chunk", [0, -1, 2.5])
def test_prefill_refuses_a_chunk_below_one(target, chunk):
    target.reset()
    with pytest.raises(InputError) as e:
        target.prefill([1, 2, 3], chunk=chunk)
    assert str(e.value) == f"prefill chunk must be an integer >= 1 (got {chunk!r})"
    assert target.cache.length == 0


@pytest.fixture(scope="module")
def near_end(target, text_ids):
    """A 3,900-token prompt and plain greedy's reply to it, which runs to the context's end
    (this prompt's reply has several distinct tokens; the draft guesses some, lookup more)."""
    ids = text_ids[200:4100]
    plain = _greedy(Generator(target), ids, CONTEXT)
    assert plain.finish_reason == "length" and len(ids) + len(plain.token_ids) == CONTEXT
    return ids, plain.token_ids


@pytest.mark.parametrize("drafter", ["model", "auto", "ngram"])
def test_reply_to_the_context_end_equals_plain_greedy(target, draft, near_end, drafter):
    """Trees (the draft's top-k siblings; lookup's branches) verified up to the last position."""
    ids, plain = near_end
    gen = Generator(target, None if drafter == "ngram" else draft, tree=True, drafter=drafter)
    spec = _greedy(gen, ids, CONTEXT)
    assert spec.token_ids == plain
    assert spec.finish_reason == "length"
    assert spec.stats.accepted > 0 and spec.stats.verify_passes < len(plain)


def test_keep_and_rewind_at_high_positions_equal_a_fresh_run(target, text_ids):
    """After a tree pass at position 3,200 and keep(path), and after a rewind there, the cache
    and the next logits equal a fresh run over the same tokens."""
    ids, more = text_ids[:3200], text_ids[3200:3210]
    target.reset()
    target.prefill(ids)
    past = target.cache.length
    tree = DraftTree(more[0])
    a = tree.add(0, more[1])
    tree.add(0, (more[1] + 1) % target.vocab_size)
    tree.add(a, (more[2] + 1) % target.vocab_size)
    b = tree.add(a, more[2])  # not next to its parent: keep() must move its row
    target.forward(tree.tokens, tree.position_ids(past)[0], tree.attention_bias(past)[0, 0])
    target.cache.keep(past, [0, a, b])
    kept = [k[:, :, :target.cache.length].copy() for k in target.cache.keys + target.cache.values]
    after = target.forward([more[3]])[-1].copy()
    target.reset()
    fresh = target.forward(ids + more[:4])  # [3204, V]
    for k, f in zip(kept, target.cache.keys + target.cache.values):
        np.testing.assert_allclose(k, f[:, :, :k.shape[2]], rtol=0, atol=1e-5)
    np.testing.assert_allclose(after, fresh[-1], rtol=0, atol=1e-5)
    rows = [f[:, :, :3204].copy() for f in target.cache.keys + target.cache.values]
    target.cache.rewind(700)  # back to position 2,504, then the same tokens again
    again = target.forward((ids + more[:4])[-700:])
    np.testing.assert_allclose(again, fresh[-700:], rtol=0, atol=1e-5)
    for r, f in zip(rows, target.cache.keys + target.cache.values):
        np.testing.assert_allclose(f[:, :, :3204], r, rtol=0, atol=1e-5)
    target.reset()


@pytest.fixture(scope="module")
def long_plain(target, text_ids):
    """A 3,500-token prompt and the first 48 tokens of plain greedy's reply."""
    ids = text_ids[500:4000]
    return ids, _greedy(Generator(target), ids, 48).token_ids


def test_windowed_draft_over_a_long_prompt_stays_lossless(target, draft, long_plain):
    """The draft reads the last `window` prompt tokens (not 3,500): its guesses change, the
    output does not, and its cache holds exactly the window and what followed."""
    ids, plain = long_plain
    params = SamplingParams()
    drafter = ModelDrafter(draft, params, window=128)
    out = []
    for step in decode_steps(target, ids, params, drafter, budget=4):
        out.extend(step.tokens)
        if len(out) >= 48:
            break
    assert out[:48] == plain
    assert drafter._offset == len(ids) + 1 - 128
    assert draft.history == (ids + out)[drafter._offset:drafter._offset + len(draft.history)]
    assert draft.cache.length == len(draft.history) < 128 + 48


def test_draft_rejoining_over_a_long_prompt_stays_lossless(target, draft, long_plain):
    """A draft used one pass in eight restarts from the last `rejoin` tokens each time, at
    positions past 3,500, and the output stays plain greedy's."""
    ids, plain = long_plain
    params = SamplingParams()
    drafter = ModelDrafter(draft, params, window=128, rejoin=4)

    out, offsets = [], set()
    for step in decode_steps(target, ids, params, EveryNthPass(drafter, 8), budget=4):
        out.extend(step.tokens)
        offsets.add(drafter._offset)
        if len(out) >= 48:
            break
    assert out[:48] == plain
    offsets.discard(None)  # (before its first proposal)
    assert len(offsets) > 2 and min(offsets) > 3000  # it restarted more than once, past 3,000
    assert len(draft.history) <= 4 + 4  # rejoin tokens plus one proposal's
