"""Does the bundle compute what the source model computes? Logits on fixed prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PARITY_PROMPTS = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import numpy as np\n\nclass Matrix:\n    def __init__(self, rows):\n",
    "The quick brown fox jumps over the lazy dog. In Python, a list comprehension",
)


def torch_logits(hf_dir: Path, token_lists: list[list[int]]) -> list[np.ndarray]:
    from ..quant.quality import TorchModel
    model = TorchModel(hf_dir)
    return [model.logits(ids) for ids in token_lists]  # each [S, vocab]


def bundle_logits(session, token_lists: list[list[int]]) -> list[np.ndarray]:
    return [session.score(ids) for ids in token_lists]  # each [S, vocab]


def compare(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """max |diff| of logits and top-1 agreement over every position of every prompt."""
    diffs = [float(np.abs(r - c).max()) for r, c in zip(reference, candidate)]
    agree = [np.mean(r.argmax(-1) == c.argmax(-1)) for r, c in zip(reference, candidate)]
    positions = sum(len(r) for r in reference)
    return {
        "prompts": len(reference),
        "positions": positions,
        "max_abs_diff": max(diffs),
        "top1_agreement": float(sum(a * len(r) for a, r in zip(agree, reference)) / positions),
    }


def parity_report(hf_dir: Path, session, tokenizer, prompts=PARITY_PROMPTS) -> dict:
    tokens = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    report = compare(torch_logits(hf_dir, tokens), bundle_logits(session, tokens))
    report["prompt_texts"] = list(prompts)
    return report
