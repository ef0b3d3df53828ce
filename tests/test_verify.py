"""Sampling, greedy verification, and a statistical check that tree speculative
sampling reproduces the target's distribution exactly (with a wrong verifier
shown to fail the same check)."""

import math

import numpy as np
import pytest

from edgespec.runtime.sampling import SamplingParams, probabilities, sample
from edgespec.runtime.tree import DraftTree
from edgespec.runtime.verify import Verdict, verify_greedy, verify_sampling


# -- sampling ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.5), "temperature must be >= 0 (got -0.5); use 0 for greedy decoding"),
    (dict(top_p=1.5), "top_p must be in (0, 1] (got 1.5); use 1 to disable it"),
    (dict(top_p=0.0), "top_p must be in (0, 1] (got 0.0); use 1 to disable it"),
    (dict(top_k=-1), "top_k must be >= 0 (got -1); 0 disables it"),
])
def test_validation_messages(kwargs, message):
    with pytest.raises(ValueError) as e:
        SamplingParams(**kwargs).validate()
    assert str(e.value) == message


def test_greedy_params_and_one_hot():
    assert SamplingParams().validate().greedy
    assert not SamplingParams(temperature=0.7).greedy
    logits = np.array([[0.1, 3.0, -1.0], [5.0, 4.0, 4.5]], np.float32)
    p = probabilities(logits, SamplingParams())
    assert p.dtype == np.float64
    np.testing.assert_array_equal(p, [[0, 1, 0], [1, 0, 0]])


BASE = np.array([0.5, 0.2, 0.15, 0.1, 0.05])


@pytest.mark.parametrize("top_k, top_p, kept", [
    (0, 1.0, [0, 1, 2, 3, 4]),
    (2, 1.0, [0, 1]),
    (0, 0.45, [0]),  # smallest set reaching 0.45 is {0}
    (0, 0.6, [0, 1]),
    (0, 0.75, [0, 1, 2]),
    (0, 0.55, [0, 1]),
    (3, 0.55, [0]),  # top-k first: renormalised p[0] = 0.5/0.85 = 0.59 already reaches 0.55
    (9, 1.0, [0, 1, 2, 3, 4]),  # k beyond the vocabulary keeps everything
])
def test_top_k_top_p_masks(top_k, top_p, kept):
    logits = np.log(BASE)[::-1] + 3.0  # reversed order, shifted: masks must follow values
    p = probabilities(logits, SamplingParams(temperature=1.0, top_k=top_k, top_p=top_p))[::-1]
    expected = np.zeros(5)
    expected[kept] = BASE[kept] / BASE[kept].sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=1e-15)


def test_temperature_and_batched_rows():
    logits = np.array([[1.0, 2.0, 3.0], [1000.0, 1000.0, 0.0]])  # second row: overflow-safe
    p = probabilities(logits, SamplingParams(temperature=0.5))
    e = np.exp([2.0, 4.0, 6.0])
    np.testing.assert_allclose(p[0], e / e.sum())
    np.testing.assert_allclose(p[1], [0.5, 0.5, 0.0])


class FixedUniform:
    def __init__(self, *us):
        self.us = list(us)

    def random(self):
        return self.us.pop(0)


def test_sample_inverse_cdf():
    probs = np.array([0.2, 0.0, 0.8])
    assert [sample(probs, FixedUniform(u)) for u in (0.0, 0.1999, 0.2, 0.9999)] == [0, 0, 2, 2]
    assert sample(np.array([0.0, 1.0, 0.0]), FixedUniform(0.99999999)) == 1
    a = [sample(BASE, np.random.default_rng(3)) for _ in range(5)]
    assert a == [sample(BASE, np.random.default_rng(3)) for _ in range(5)]
    counts = np.bincount([sample(BASE, np.random.default_rng(i)) for i in range(4000)], minlength=5)
    assert np.abs(counts / 4000 - BASE).max() < 0.03


# -- greedy verification -------------------------------------------------------

def one_hot_logits(best: list[int], vocab: int = 10) -> np.ndarray:
    logits = np.zeros((len(best), vocab), np.float32)  # [S, V]
    logits[np.arange(len(best)), best] = 1.0
    return logits


def test_verify_greedy_full_partial_none():
    t = DraftTree(0)
    t.add_path(0, [1, 2, 3])  # nodes 1, 2, 3
    t.add_path(0, [4, 5])  # nodes 4, 5
    # target argmax after each node
    full = verify_greedy(t, one_hot_logits([1, 2, 3, 7, 0, 0]))
    assert full.accepted == [0, 1, 2, 3] and full.next_token == 7
    assert full.tokens == [1, 2, 3, 7] and full.proposed == 5 and full.num_accepted == 3
    other_branch = verify_greedy(t, one_hot_logits([4, 0, 0, 0, 5, 6]))
    assert other_branch.accepted == [0, 4, 5] and other_branch.tokens == [4, 5, 6]
    partial = verify_greedy(t, one_hot_logits([1, 9, 3, 7, 0, 0]))
    assert partial.accepted == [0, 1] and partial.tokens == [1, 9]
    none = verify_greedy(t, one_hot_logits([8, 2, 3, 7, 5, 6]))
    assert none == Verdict([0], 8, 5, [8])
    bare = verify_greedy(DraftTree(3), one_hot_logits([6]))
    assert bare.tokens == [6] and bare.proposed == 0


def test_verify_rejects_bad_shapes():
    t = DraftTree.chain(0, [1, 2])
    with pytest.raises(ValueError, match=r"S = 3 tree nodes \(got shape \(2, 10\)\)"):
        verify_greedy(t, np.zeros((2, 10)))
    with pytest.raises(ValueError, match="outside the target vocabulary of 2"):
        verify_sampling(t, np.full((3, 2), 0.5), np.random.default_rng(0))


def test_verify_sampling_matches_when_draft_is_target():
    # p == q: every sampled draft token is accepted (min(1, p/q) = 1)
    rng = np.random.default_rng(0)
    p = np.array([0.1, 0.6, 0.3])
    t = DraftTree.chain(0, [1, 2, 0], qs=[p, p, p])
    v = verify_sampling(t, np.tile(p, (4, 1)), rng)
    assert v.accepted == [0, 1, 2, 3] and len(v.tokens) == 4
    # a one-hot target behaves like greedy: deterministic child accepted iff it is the argmax
    hot = np.eye(3)[[1, 2, 0, 2]]  # [S, V]
    v = verify_sampling(t, hot, rng)
    assert v.tokens == [1, 2, 0, 2]


# -- speculative sampling is exact: a statistical test --------------------------
#
# Synthetic models over a vocabulary of 8: the next-token logits depend on the
# last two tokens (64 states) through a fixed random matrix. The draft's matrix
# differs from the target's, so a fair share of drafted tokens is rejected.

V = 8
PROMPT = [3, 5]
N_RUNS = 20_000
_g = np.random.default_rng(1234)
W_TARGET = 1.5 * _g.normal(size=(V * V, V))  # [64, V]
W_DRAFT = W_TARGET + 1.5 * _g.normal(size=(V * V, V))  # [64, V] correlated, not equal


def node_states(tree: DraftTree, context: list[int]) -> np.ndarray:
    """State (last two tokens) after each node's path: prev token * V + token."""
    prev = [context[-2]] + [tree.tokens[p] for p in tree.parents[1:]]
    return np.asarray(prev) * V + np.asarray(tree.tokens)  # [S]


def chain_drafter(context, q_table, rng, k=3):
    a, b = context[-2], context[-1]
    tokens, qs = [], []
    for _ in range(k):
        q = q_table[a * V + b]  # [V]
        x = sample(q, rng)
        tokens.append(x)
        qs.append(q)
        a, b = b, x
    return DraftTree.chain(context[-1], tokens, qs)


def tree_drafter(context, q_table, rng):
    """Top-2 deterministic children on 2 levels, then a sampled chain of 3, then
    a second i.i.d. sampled root child (with replacement, sharing the root's q)."""
    a, b = context[-2], context[-1]
    tree = DraftTree(b)
    for x in np.argsort(-q_table[a * V + b])[:2]:
        node = tree.add(0, int(x))
        for y in np.argsort(-q_table[b * V + x])[:2]:
            tree.add(node, int(y))
    tree.merge(chain_drafter(context, q_table, rng))
    q0 = q_table[a * V + b]
    tree.add(0, sample(q0, rng), q0)
    return tree


def speculative_prefix(drafter, verifier, p_table, q_table, rng, n=3):
    out = list(PROMPT)
    while len(out) < len(PROMPT) + n:
        tree = drafter(out, q_table, rng)
        probs = p_table[node_states(tree, out)]  # [S, V] target at every node
        out += verifier(tree, probs, rng).tokens
    return out[len(PROMPT):len(PROMPT) + n]


def accept_always(tree, probs, rng):
    """Deliberately wrong: takes the first child everywhere without a test."""
    node, accepted = 0, [0]
    while tree.children(node):
        node = tree.children(node)[0]
        accepted.append(node)
    return Verdict(accepted, -1, len(tree) - 1,
                   [tree.tokens[i] for i in accepted[1:]] + [sample(probs[node], rng)])


def no_residual(tree, probs, rng):
    """Deliberately wrong: on rejection resamples from p instead of norm(max(p - q, 0))."""
    node, accepted = 0, [0]
    while True:
        p = probs[node]
        for c in tree.children(node):
            x, q = tree.tokens[c], tree.q[c]
            if rng.random() * (1.0 if q is None else q[x]) < p[x]:
                break
        else:
            toks = [tree.tokens[i] for i in accepted[1:]]
            return Verdict(accepted, -1, len(tree) - 1, toks + [sample(p, rng)])
        node = c
        accepted.append(c)


def exact_prefix_distribution(p_table) -> np.ndarray:
    """P(x1, x2, x3) by enumeration of all V^3 = 512 outcomes."""
    a, b = PROMPT
    p1 = p_table[a * V + b]  # [V]
    p2 = p_table[b * V + np.arange(V)]  # [V, V]: row x1
    p3 = p_table[(np.arange(V)[:, None] * V + np.arange(V)[None, :])]  # [V, V, V]: (x1, x2) -> x3
    return (p1[:, None, None] * p2[:, :, None] * p3).ravel()  # [512]


def chi2_sf(x: float, df: int) -> float:
    """Chi-square upper tail by the Wilson-Hilferty cube-root normal approximation."""
    z = ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def goodness_of_fit(samples: list[list[int]], exact: np.ndarray):
    """(tv, tv_threshold, chi2 p-value) of the empirical 3-token prefixes vs `exact`.

    The TV threshold is derived from the sample size: the mean + 5 standard
    deviations of the TV between `exact` and 2,000 simulated multinomial
    samples of the same size (0.018 to 0.047 for the cases below, where the
    wrong verifiers score 0.2 to 0.6). Chi-square pools the cells expected to
    hold fewer than 5 samples into one; a prefix of probability 0 showing up
    at all gives p-value 0.
    """
    n = len(samples)
    idx = np.asarray(samples) @ np.array([V * V, V, 1])  # [n] outcome index
    counts = np.bincount(idx, minlength=V ** 3)
    tv = 0.5 * np.abs(counts / n - exact).sum()
    null = np.random.default_rng(99).multinomial(n, exact, size=2000)  # [2000, 512]
    null_tv = 0.5 * np.abs(null / n - exact).sum(1)
    threshold = null_tv.mean() + 5 * null_tv.std()
    if counts[exact == 0].any():  # an impossible prefix was generated
        return tv, threshold, 0.0
    expected = n * exact
    big, small = expected >= 5, (expected > 0) & (expected < 5)
    obs, exp = counts[big], expected[big]
    if small.any():
        obs, exp = np.append(obs, counts[small].sum()), np.append(exp, expected[small].sum())
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    return tv, threshold, chi2_sf(chi2, len(obs) - 1)


CASES = {
    # name: (target params, draft params)
    "plain": (SamplingParams(temperature=1.0),) * 2,
    "temp_top_p": (SamplingParams(temperature=0.7, top_p=0.8),) * 2,
    "mismatched_params": (SamplingParams(temperature=0.8, top_k=4), SamplingParams(temperature=1.3)),
}


def run_case(drafter, verifier, case, seed):
    p_params, q_params = CASES[case]
    p_table = probabilities(W_TARGET, p_params)  # [64, V]
    q_table = probabilities(W_DRAFT, q_params)  # [64, V]
    rng = np.random.default_rng(seed)
    samples = [speculative_prefix(drafter, verifier, p_table, q_table, rng) for _ in range(N_RUNS)]
    return goodness_of_fit(samples, exact_prefix_distribution(p_table))


@pytest.mark.parametrize("drafter, case", [
    (chain_drafter, "plain"),
    (tree_drafter, "plain"),
    (tree_drafter, "temp_top_p"),
    (chain_drafter, "mismatched_params"),
])
def test_speculative_sampling_is_exact(drafter, case):
    tv, threshold, p_value = run_case(drafter, verify_sampling, case, seed=7)
    assert tv < threshold, f"TV {tv:.4f} >= {threshold:.4f}"
    assert p_value > 1e-3, f"chi-square p-value {p_value:.2e}"


@pytest.mark.parametrize("verifier, drafter", [
    (accept_always, chain_drafter),
    (no_residual, tree_drafter),
])
def test_wrong_verifiers_fail_the_same_check(verifier, drafter):
    tv, threshold, p_value = run_case(drafter, verifier, "plain", seed=7)
    assert tv > threshold and p_value < 1e-6


def test_speculative_greedy_equals_target_greedy():
    p_table = probabilities(W_TARGET, SamplingParams())  # one-hot rows
    q_table = probabilities(W_DRAFT, SamplingParams(temperature=1.0))
    rng = np.random.default_rng(0)
    for a in range(V):
        for b in range(V):
            ctx = [a, b]
            plain = list(ctx)
            for _ in range(12):
                plain.append(int(np.argmax(W_TARGET[plain[-2] * V + plain[-1]])))
            spec = list(ctx)
            while len(spec) < len(plain):
                tree = tree_drafter(spec, q_table, rng)
                logits = W_TARGET[node_states(tree, spec)]  # [S, V]
                spec += verify_greedy(tree, logits).tokens
            assert spec[:len(plain)] == plain
