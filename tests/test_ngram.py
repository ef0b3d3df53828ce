import numpy as np
import pytest

from edgespec.runtime.ngram import NgramDrafter


def Ngram(**kw):
    """These tests pin the lookup itself: every match length drafts up to max_draft tokens."""
    kw.setdefault("min_ngram", 1)
    kw.setdefault("max_branches", 4)
    kw.setdefault("short_draft", kw.get("max_draft", 10))
    return NgramDrafter(**kw)


def branches(tree) -> list[list[int]]:
    """Token paths (root excluded) from the root to every leaf, in node order."""
    leaves = [i for i in range(len(tree)) if not tree.children(i) and i > 0]
    return [tree.path_tokens(i)[1:] for i in leaves]


def test_proposes_continuation_of_repeated_phrase():
    ctx = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    tree = Ngram().propose(ctx, budget=10)
    assert tree.tokens[0] == 3
    assert branches(tree) == [[4, 5, 9, 1, 2, 3]]  # runs to the end of the context
    assert all(q is None for q in tree.q)
    short = Ngram(max_draft=2).propose(ctx, budget=10)
    assert branches(short) == [[4, 5]]


def test_prefers_longer_ngram_match():
    # (9, 1, 2) was followed by 4; the more recent (1, 2) by 6
    ctx = [9, 1, 2, 4, 4, 0, 5, 1, 2, 6, 6, 0, 9, 1, 2]
    one = Ngram(max_branches=1, max_draft=2).propose(ctx, budget=10)
    assert branches(one) == [[4, 4]]
    two = Ngram(max_branches=2, max_draft=2).propose(ctx, budget=10)
    assert [two.tokens[c] for c in two.children(0)] == [4, 6]  # longer match first
    only_bigrams = Ngram(max_ngram=2, max_branches=1, max_draft=2).propose(ctx, budget=10)
    assert branches(only_bigrams) == [[6, 6]]  # most recent occurrence first


def test_tree_with_two_distinct_continuations():
    ctx = [5, 1, 7, 7, 5, 1, 8, 8, 5, 1]
    tree = Ngram(max_draft=3).propose(ctx, budget=10)
    assert tree.tokens[0] == 1
    assert branches(tree) == [[8, 8, 5], [7, 7, 5]]  # most recent first; unigram matches merge
    assert len(tree) == 7


def test_budget_respected_and_branches_are_real_continuations():
    rng = np.random.default_rng(0)
    for trial in range(30):
        ctx = rng.integers(0, 4, size=int(rng.integers(1, 60))).tolist()
        for budget in (0, 1, 3, 7, 12):
            tree = Ngram(max_draft=5).propose(ctx, budget)
            assert len(tree) - 1 <= budget
            assert tree.tokens[0] == ctx[-1]
            for path in branches(tree):  # root + path occurred earlier in the context
                seq = [ctx[-1]] + path
                starts = range(min(len(ctx) - len(seq) + 1, len(ctx) - 1))  # before the suffix
                assert any(ctx[i:i + len(seq)] == seq for i in starts)


def test_no_match_gives_bare_root():
    tree = Ngram().propose([1, 2, 3], budget=8)
    assert len(tree) == 1 and tree.tokens == [3]
    assert len(Ngram().propose([4], budget=8)) == 1
    with pytest.raises(ValueError, match="non-empty context"):
        Ngram().propose([], budget=8)
    with pytest.raises(ValueError, match="min_ngram=3, max_ngram=2"):
        Ngram(max_ngram=2, min_ngram=3)


def brute_index(ctx, lo, hi):
    index = {}
    for e in range(1, len(ctx)):  # occurrences followed by at least one token
        for n in range(lo, min(hi, e) + 1):
            index.setdefault(tuple(ctx[e - n:e]), []).append(e)
    return index


def test_incremental_index_equals_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(10):
        ctx = rng.integers(0, 5, size=150).tolist()
        inc = Ngram(max_ngram=3, min_ngram=1, max_draft=4)
        end = 1
        while end < len(ctx):
            end = min(len(ctx), end + int(rng.integers(1, 6)))  # grows by a few tokens a step
            got = inc.propose(ctx[:end], budget=6)
            fresh = Ngram(max_ngram=3, min_ngram=1, max_draft=4).propose(ctx[:end], budget=6)
            assert (got.tokens, got.parents) == (fresh.tokens, fresh.parents)
        assert inc.index == brute_index(ctx, 1, 3)


def test_unrelated_context_rebuilds_and_reset():
    d = Ngram()
    d.propose([1, 2, 3, 1, 2, 3, 1, 2], budget=4)
    tree = d.propose([7, 8, 7], budget=4)  # shorter: not a continuation, index rebuilt
    assert branches(tree) == [[8, 7]]
    assert d.index == brute_index([7, 8, 7], 1, 4)
    d.reset()
    assert d.index == {} and d.context == []


def test_short_match_drafts_few_tokens_long_match_many():
    """Defaults follow the CPU cost curve: 3 tokens after a 2-3 token match, 10 after 4+."""
    body = list(range(10, 40))
    short = NgramDrafter().propose([1, 2] + body + [7, 1, 2], budget=16)  # suffix (1, 2) matches
    assert short.tokens[1:] == body[:3]
    long = NgramDrafter().propose([1, 2, 3, 4] + body + [7, 1, 2, 3, 4], budget=16)
    assert long.tokens[1:] == body[:10]
    assert len(NgramDrafter().propose([5, 6, 9, 5], budget=16)) == 1  # a 1-token match is not enough
