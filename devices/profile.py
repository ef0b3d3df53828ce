"""Latency profiles: what one pass over S tokens costs on this device.

Speculation pays only if verifying k+1 tokens costs much less than k+1
single steps. The curve depends on the model, the provider and the thread
count, so it is measured once per (bundle, provider, threads) and cached.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..contract.files import atomic_write_text

SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
# enough to size chains, and 32 for a draft's prefill rate per token (the 0.5B fed 128 tokens at
# 1.24 ms each where cost(8) / 8 said 1.96); measured on first use
QUICK_SIZES = (1, 2, 3, 4, 6, 8, 32)


@dataclass
class Profile:
    bundle: str
    provider: str
    threads: int
    context: int
    pass_ms: dict[int, float] = field(default_factory=dict)  # tokens per pass -> median ms

    def cost(self, s: int) -> float:
        """ms for one pass over s tokens, interpolated linearly between measured sizes
        (and extrapolated along the last segment beyond them)."""
        xs = sorted(self.pass_ms)
        ys = [self.pass_ms[x] for x in xs]
        if s > xs[-1] and len(xs) > 1:
            return float(ys[-1] + (s - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]))
        return float(np.interp(s, xs, ys))

    def to_json(self) -> str:
        d = asdict(self)
        d["pass_ms"] = {str(k): v for k, v in self.pass_ms.items()}
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Profile":
        d = json.loads(text)
        d["pass_ms"] = {int(k): float(v) for k, v in d["pass_ms"].items()}
        return cls(**d)


def profile_key(session) -> str:
    m = session.manifest
    ident = json.dumps([m.source, m.quant, m.num_layers, session.providers[0], session.threads,
                        session.model_file], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def profile_path(session) -> Path:
    from ..contract.cache import cache_root
    return cache_root() / "profiles" / f"{session.path.name}-{profile_key(session)}.json"


def measure(session, sizes=SIZES, context: int = 128, repeats: int = 5, progress=None) -> Profile:
    """Median time of one pass over s tokens after `context` cached tokens, for each s.

    Sizes take turns, one pass each per round: policies price drafts by the curve's shape (the
    live level sets the rest), and on a shared CPU whose speed drifts over seconds, sizes
    measured one after another would each be timed at another speed."""
    rng = np.random.default_rng(0)
    vocab = session.vocab_size
    session.reset()
    session.prefill(rng.integers(0, vocab, context).tolist())
    sizes = [s for s in sizes if context + s <= session.max_len]
    times: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(repeats + 1):  # the first round warms up
        for s in sizes:
            tokens = rng.integers(0, vocab, s).tolist()
            t0 = time.perf_counter()
            session.forward(tokens)
            times[s].append((time.perf_counter() - t0) * 1000)
            session.cache.rewind(s)
    result = {}
    for s in sizes:
        result[s] = float(np.median(times[s][1:]))
        if progress:
            progress(s, result[s])
    session.reset()
    return Profile(str(session.path), session.providers[0], session.threads, context, result)


def load_or_measure(session, remeasure: bool = False, progress=None, sizes=SIZES) -> Profile:
    """The cached profile if it covers `sizes`, else a fresh measurement (then cached)."""
    path = profile_path(session)
    if path.is_file() and not remeasure:
        profile = Profile.from_json(path.read_text())
        if set(sizes) <= set(profile.pass_ms) or max(profile.pass_ms) + profile.context >= session.max_len:
            return profile
    profile = measure(session, sizes=sizes, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, profile.to_json())
    return profile


def cached(session) -> Profile | None:
    path = profile_path(session)
    return Profile.from_json(path.read_text()) if path.is_file() else None
