"""Statistical checks shared by the sampling-exactness tests."""

from __future__ import annotations

import numpy as np

from edgespec.runtime.sampling import probabilities


def exact_distribution(target, params, n_tokens, prompt=(5, 17, 33, 2, 99)):
    """Enumerate the target's distribution over its first n tokens (top-k keeps this small)."""
    prompt = list(prompt)
    dist = {(): 1.0}
    for _ in range(n_tokens):
        nxt = {}
        for seq, p in dist.items():
            target.reset()
            probs = probabilities(target.forward(prompt + list(seq))[-1], params)
            for t in np.flatnonzero(probs > 0):
                nxt[seq + (int(t),)] = p * probs[t]
        dist = nxt
    return dist


def chi_square_pvalue(counts, dist, runs):
    """Pearson chi-square, cells with expectation < 5 pooled; Wilson-Hilferty p-value."""
    from math import erf, sqrt
    if any(k not in dist for k in counts):
        return 0.0  # a sequence the target can never produce
    obs, exp, pooled_o, pooled_e = [], [], 0, 0.0
    for k, p in dist.items():
        e = p * runs
        if e < 5:
            pooled_o += counts.get(k, 0)
            pooled_e += e
        else:
            obs.append(counts.get(k, 0))
            exp.append(e)
    if pooled_e > 0:
        obs.append(pooled_o)
        exp.append(pooled_e)
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(obs) - 1
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / sqrt(2 / (9 * df))
    return 0.5 * (1 - erf(z / sqrt(2)))
