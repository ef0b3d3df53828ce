"""Cross-tokenizer drafting: a draft with another vocabulary, mapped through text, stays lossless."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from edgespec.runtime.cross_vocab import CrossVocabDrafter, make_cross_vocab
from edgespec.runtime.sampling import SamplingParams
from edgespec.runtime.scheduler import Timing, decode_steps
from edgespec.runtime.session import Session

from exactness import chi_square_pvalue, exact_distribution
from tiny_models import make_hf_model, training_text

PROMPT = "def add(a, b):\n    return"


@pytest.fixture(scope="module")
def target(tiny_bundle):
    return Session(tiny_bundle)


@pytest.fixture(scope="module")
def target_tok(tiny_bundle):
    return AutoTokenizer.from_pretrained(str(tiny_bundle))


@pytest.fixture(scope="module")
def cross_draft(tmp_path_factory):
    """A draft with a different byte-level BPE (vocab 300: fewer merges, other special ids)."""
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    tmp = tmp_path_factory.mktemp("cross")
    hf = make_hf_model(tmp / "x", "llama", seed=2, vocab_size=300, train_steps=100)  # 60: no agreement
    out = tmp / "x-fp32"
    export(str(hf), out, ExportOptions(recipe=Recipe("fp32")))
    return Session(out)


@pytest.fixture(scope="module")
def drafter(cross_draft, target_tok):
    # The tiny draft is rarely sure of anything: a low confidence stop lets it draft at all.
    return make_cross_vocab(cross_draft, target_tok, min_confidence=0.1)


@pytest.fixture(scope="module")
def self_text_drafter(tiny_bundle, target_tok):
    """The target drafting for itself, but through text (its tokenizer on both sides)."""
    return CrossVocabDrafter(Session(tiny_bundle), target_tok, target_tok, min_confidence=0.0)


def _run(target, prompt, params, drafter, n, rng=None, timing=None, reset=True):
    if drafter is not None and reset:
        drafter.reset()
    out = []
    for step in decode_steps(target, prompt, params, drafter, budget=6, rng=rng, timing=timing):
        out.extend(step.tokens)
        if len(out) >= n:
            break
    return out[:n]


def test_tokenizers_really_differ(drafter, target_tok):
    text = training_text()[:400]
    assert drafter.draft_tok.encode(text) != target_tok.encode(text)
    assert drafter.draft_tok.convert_tokens_to_ids("<|im_end|>") != target_tok.convert_tokens_to_ids("<|im_end|>")


@pytest.mark.parametrize("prompt_text", [PROMPT, training_text()[1000:1400]])
def test_greedy_equals_plain(target, target_tok, drafter, prompt_text):
    prompt = target_tok.encode(prompt_text)
    plain = _run(target, prompt, SamplingParams(), None, 60)
    timing = Timing()
    assert _run(target, prompt, SamplingParams(), drafter, 60, timing=timing) == plain
    assert 0 < timing.accepted <= timing.proposed
    assert timing.passes < 59


def test_self_draft_through_text_accepts_most(target, target_tok, self_text_drafter):
    """The target's own greedy text, mapped back, is the target's tokens: nearly all accepted
    (misses only where the target's greedy tokens are not the canonical tokenization)."""
    prompt = target_tok.encode(training_text()[1000:1400])
    plain = _run(target, prompt, SamplingParams(), None, 60)
    timing = Timing()
    assert _run(target, prompt, SamplingParams(), self_text_drafter, 60, timing=timing) == plain
    assert timing.accepted >= 0.8 * timing.proposed and timing.passes <= 20


def test_proposal_spells_the_drafts_text(target_tok, drafter):
    """Each proposal is a chain whose text is a prefix of the draft's own greedy continuation."""
    text = target_tok.encode(training_text()[1000:1400])
    draft, proposed = drafter.session, 0
    for cut in range(20, len(text), 10):
        context = text[:cut]
        drafter.reset()
        tree = drafter.propose(context, 6)
        assert len(tree) <= 7 and tree.parents == list(range(-1, len(tree) - 1))
        assert all(q is None for q in tree.q)
        draft.reset()
        cont = [int(draft.forward(drafter.draft_tok.encode(target_tok.decode(context)))[-1].argmax())]
        for _ in range(8):
            cont.append(int(draft.forward(cont[-1:])[-1].argmax()))
        assert drafter.draft_tok.decode(cont).startswith(target_tok.decode(tree.tokens[1:]))
        proposed += len(tree) - 1
    drafter.reset()
    assert proposed > 0


# -- edge cases ----------------------------------------------------------------------------------

def test_seam_and_misalignment(target_tok, drafter):
    """Drafted text that would merge with the context's last token maps to nothing; a
    non-canonical split inside the anchor is stepped over; the last token is held back."""
    context = target_tok.encode("Expan")
    assert target_tok.encode("Expand x")[:len(context)] != context  # "n" + "d" merge to "nd"
    assert drafter._to_target(context, "d x = 1") == []
    odd = target_tok.encode("Expan") + target_tok.encode("d")  # "n", "d": not canonical
    mapped = target_tok.decode(drafter._to_target(odd, " x = 1"))
    assert mapped.startswith(" x") and " x = 1".startswith(mapped)
    ok = target_tok.encode("def f(x):\n    return")
    mapped = drafter._to_target(ok, " x + 1\n")
    assert mapped and " x + 1\n".startswith(target_tok.decode(mapped))
    assert drafter._to_target(ok, " ") == []  # one token, held back as maybe incomplete


def test_bare_root_when_nothing_maps(target_tok, drafter):
    context = target_tok.encode("x = 'é ok")
    assert len(drafter.propose(context, 0)) == 1
    assert len(drafter.propose(context, 2)) <= 3
    for text in ["x = 'é", "日本"]:  # the context ends inside a multi-byte character
        ids = target_tok.encode(text)
        assert target_tok.decode(ids[:-1]).endswith("\ufffd")
        assert len(drafter.propose(ids[:-1], 6)) == 1
    drafter.reset()


def test_multibyte_context(target, target_tok, drafter):
    """Non-ASCII text in the context (characters split over byte tokens) stays aligned."""
    prompt = target_tok.encode("# naïve café — 日本語 ✓\ndef add(a, b):\n    return")
    plain = _run(target, prompt, SamplingParams(), None, 30)
    assert _run(target, prompt, SamplingParams(), drafter, 30) == plain
    drafter.reset()
    for cut in range(2, len(prompt) + 1):  # every prefix maps to a continuation of its text, or to nothing
        tree = drafter.propose(prompt[:cut], 6)
        before = target_tok.decode(prompt[:cut])
        if len(tree) > 1:
            assert not before.endswith("\ufffd")
            assert target_tok.decode(prompt[:cut] + tree.tokens[1:]).startswith(before)
    drafter.reset()


def test_long_context_keeps_a_stable_prefix(target, target_tok, drafter):
    """Past two windows the draft ids are a stable prefix plus a short re-encoded tail."""
    prompt = target_tok.encode(training_text()[:1500])[:200]
    plain = _run(target, prompt, SamplingParams(), None, 40)
    assert _run(target, prompt, SamplingParams(), drafter, 40) == plain
    context = prompt + plain
    ids = drafter._draft_ids(context)
    assert len(context) - len(drafter._stable) <= 2 * drafter.window
    full = drafter.draft_tok.encode(target_tok.decode(context))
    assert abs(len(ids) - len(full)) <= 4  # only the seams may tokenize differently
    assert drafter.draft_tok.decode(ids) == target_tok.decode(context)
    drafter.reset()


# -- sampling exactness ------------------------------------------------------------------------



def test_sampling_is_exact(target, target_tok, drafter):
    """First 3 tokens at temperature 0.9, top-k 4 over 2000 runs follow the target's exact
    distribution (chi-square p > 1e-3, total variation < 0.11), with drafts accepted."""
    params = SamplingParams(temperature=0.9, top_k=4)
    prompt = target_tok.encode(PROMPT)
    runs, rng, counts, timing = 2000, np.random.default_rng(5), {}, Timing()
    for _ in range(runs):
        key = tuple(_run(target, prompt, params, drafter, 3, rng=rng, timing=timing, reset=False))
        counts[key] = counts.get(key, 0) + 1
    dist = exact_distribution(target, params, 3, prompt)
    tv = 0.5 * sum(abs(counts.get(k, 0) / runs - dist.get(k, 0.0)) for k in set(dist) | set(counts))
    assert timing.accepted > 0
    assert chi_square_pvalue(counts, dist, runs) > 1e-3
    assert tv < 0.11
    drafter.reset()


def test_cross_drafter_through_the_api(tiny_bundle, cross_draft):
    """`drafter='cross'` accepts a draft with another vocabulary and stays lossless."""
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    target = Session(tiny_bundle)
    plain = Generator(target).generate("def add(a, b):", max_tokens=24)
    spec = Generator(target, cross_draft, drafter="cross").generate(
        "def add(a, b):", max_tokens=24)
    assert spec.token_ids == plain.token_ids
