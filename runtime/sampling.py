"""Sampling parameters and logits -> probabilities (temperature, top-k, top-p)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass; 1 disables it
    top_k: int = 0  # 0 disables it
    seed: int | None = None

    def validate(self) -> "SamplingParams":
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (got {self.temperature}); "
                             f"use 0 for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {self.top_p}); use 1 to disable it")
        if not (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0):
            raise ValueError(f"top_k must be >= 0 (got {self.top_k}); 0 disables it")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


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
    x = x / params.temperature
    v = x.shape[-1]
    if 0 < params.top_k < v:
        kth = np.partition(x, v - params.top_k, axis=-1)[..., v - params.top_k, None]  # [..., 1]
        x = np.where(x >= kth, x, -np.inf)
    p = np.exp(x - x.max(-1, keepdims=True))  # [..., V]
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
