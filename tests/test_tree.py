import numpy as np
import pytest

from edgespec.runtime.tree import DraftTree

# Hand-built 8-node tree (node: token):
#   0:10 ─┬─ 1:11 ─┬─ 3:13 ── 6:16
#         │        └─ 4:14
#         └─ 2:12 ── 5:15 ── 7:17
PARENTS = [-1, 0, 0, 1, 1, 2, 3, 5]
VISIBLE = [{0}, {0, 1}, {0, 2}, {0, 1, 3}, {0, 1, 4}, {0, 2, 5}, {0, 1, 3, 6}, {0, 2, 5, 7}]


def hand_tree() -> DraftTree:
    t = DraftTree(10)
    for i, p in enumerate(PARENTS[1:], start=1):
        assert t.add(p, 10 + i) == i
    return t


def test_positions_and_depths():
    t = hand_tree()
    assert len(t) == 8
    assert t.depths().tolist() == [0, 1, 1, 2, 2, 2, 3, 3]
    assert t.depths().dtype == np.int64
    pos = t.position_ids(past_len=3)
    assert pos.shape == (1, 8) and pos.dtype == np.int64
    assert pos.tolist() == [[3, 4, 4, 5, 5, 5, 6, 6]]


def test_attention_bias_pattern():
    t = hand_tree()
    past = 3
    bias = t.attention_bias(past)
    assert bias.shape == (1, 1, 8, 11) and bias.dtype == np.float32
    expected = np.full((8, 11), -np.inf, np.float32)
    expected[:, :past] = 0
    for i, vis in enumerate(VISIBLE):
        for j in vis:
            expected[i, past + j] = 0
    np.testing.assert_array_equal(bias[0, 0], expected)
    assert set(np.unique(bias).tolist()) == {0.0, -np.inf}
    # no past: pure tree block; a chain gives the causal mask
    assert DraftTree(1).attention_bias(0).tolist() == [[[[0.0]]]]
    chain = DraftTree.chain(1, [2, 3, 4]).attention_bias(2)[0, 0]
    causal = np.where(np.tril(np.ones((4, 4), bool)), 0, -np.inf)
    np.testing.assert_array_equal(chain[:, 2:], causal)


def test_children_and_path():
    t = hand_tree()
    assert t.children(0) == [1, 2]
    assert t.children(1) == [3, 4]
    assert t.children(6) == []
    assert t.path(6) == [0, 1, 3, 6]
    assert t.path(7) == [0, 2, 5, 7]
    assert t.path(0) == [0]
    assert t.path_tokens(7) == [10, 12, 15, 17]


def test_add_path_trie_merge():
    t = DraftTree(5)
    a = t.add_path(0, [1, 2, 3])
    b = t.add_path(0, [1, 2, 4])  # shares 1, 2
    assert a == [1, 2, 3] and b == [1, 2, 4]
    assert len(t) == 5
    assert t.add_path(0, [1, 2]) == [1, 2]  # fully shared: nothing new
    assert len(t) == 5
    # sampled nodes never merge (independent draws), nor do children under them
    q = np.full(8, 1 / 8)
    c = t.add_path(0, [1, 2], qs=[q, None])
    assert c == [5, 6] and t.q[5] is q and t.q[6] is None
    # a deterministic token does not merge into a sampled sibling
    assert t.add_path(5, [2]) == [6]
    assert t.add_path(0, [1]) == [1]
    with pytest.raises(ValueError, match="2 tokens but 1 draft"):
        t.add_path(0, [1, 2], qs=[None])


def test_chain_and_merge():
    q = np.ones(4) / 4
    t = DraftTree.chain(7, [1, 2, 3], qs=[None, q, None])
    assert t.tokens == [7, 1, 2, 3] and t.parents == [-1, 0, 1, 2]
    assert t.q[2] is q and t.q[1] is None
    other = DraftTree(7)
    other.add_path(0, [1, 9])
    other.add_path(0, [2, 2])
    t.merge(other)
    assert t.tokens == [7, 1, 2, 3, 9, 2, 2]
    assert t.parents == [-1, 0, 1, 2, 1, 0, 5]
    with pytest.raises(ValueError, match="different roots"):
        t.merge(DraftTree(8))


def test_prune_keeps_a_prefix():
    t = hand_tree().prune(4)
    assert t.tokens == [10, 11, 12, 13, 14]
    assert t.children(1) == [3, 4] and t.children(2) == []
    assert t.attention_bias(0).shape == (1, 1, 5, 5)
    assert t.add(2, 99) == 5


def test_errors_and_invariant():
    t = DraftTree(0)
    with pytest.raises(ValueError, match=r"parent 3 is not a node of this 1-node tree"):
        t.add(3, 1)
    with pytest.raises(ValueError, match="parent -1"):
        t.add(-1, 1)
    t.add(0, 1)
    t.parents[1] = 1  # corrupted by hand: an internal invariant, so an assert
    with pytest.raises(AssertionError, match="parents must come before children"):
        t.attention_bias(0)
