"""Sampling parameters and logits -> probabilities (temperature, top-k, top-p)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..contract.errors import InputError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass; 1 disables it
    top_k: int = 0  # 0 disables it
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        """Refuse values that would give NaN, an error deep in the loop, or silently other output."""
        t, k = self.temperature, self.top_k
        if not (_is_number(t) and math.isfinite(t)):
            raise InputError(f"temperature must be a finite number >= 0 (got {_show(t)}); "
                             f"use 0 for greedy decoding")
        if t < 0:
            raise InputError(f"temperature must be >= 0 (got {_show(t)}); use 0 for greedy decoding")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):  # (NaN fails every comparison)
            raise InputError(f"top_p must be in (0, 1] (got {_show(self.top_p)}); use 1 to disable it")
        if not _is_integer(k):
            raise InputError(f"top_k must be an integer >= 0 (got {_show(k)}); 0 disables it")
        if k < 0:
            raise InputError(f"top_k must be >= 0 (got {_show(k)}); 0 disables it")
        if self.seed is not None and not (_is_integer(self.seed) and self.seed >= 0):
            raise InputError(f"seed must be a non-negative integer or None (got {_show(self.seed)})")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def _is_integer(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _show(x) -> str:
    """A value as the caller wrote it: 0.5 for np.float64(0.5), quotes only around strings."""
    return repr(x) if isinstance(x, str) else str(x)


def probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Logits [V] or [S, V] -> float64 probabilities of the same shape.

    Temperature, then top-k (ties at the k-th value are kept), then top-p
    (smallest set whose mass reaches top_p, at least one token), renormalised.
    Greedy gives a one-hot at the argmax.
    """
    x = np.asarray(logits, dtype=np.float64)  # [..., V]
    if params.greedy:
        p = np.zeros_like(x)
        np.put_along_axis(p, x.argmax(-1)[..., None], 1.0, axis=-1)
        return p
    # Shift to max 0 *before* dividing: at a temperature of 1e-320 the scaled logits would
    # overflow to inf (inf - inf = NaN); shifted, they fall to -inf and the result is greedy.
    with np.errstate(over="ignore"):  # (an overflow here is the -inf it should be)
        x = (x - x.max(-1, keepdims=True)) / params.temperature  # [..., V], max 0
    v = x.shape[-1]
    if 0 < params.top_k < v:
        kth = np.partition(x, v - params.top_k, axis=-1)[..., v - params.top_k, None]  # [..., 1]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x)  # [..., V]
    p /= p.sum(-1, keepdims=True)
    if params.top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")  # [..., V] descending
        sorted_p = np.take_along_axis(p, order, axis=-1)
        mass_before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of strictly better tokens
        keep_sorted = mass_before < params.top_p  # first token always kept (mass_before = 0)
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        p = np.where(keep, p, 0.0)
        p /= p.sum(-1, keepdims=True)
    return p


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One token from probs [V] by inverse CDF on a single uniform (reproducible)."""
    cdf = np.cumsum(probs)  # [V]
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, len(cdf) - 1)
