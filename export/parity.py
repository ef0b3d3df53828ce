"""Does the bundle compute what the source model computes? Logits on fixed prompts.

Running the bundle is the runtime's job, and export does not import the runtime: the
caller passes a `BundleLogits` (the runtime's `session.bundle_logits`), through
ExportOptions.parity.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np

from ..contract.manifest import Manifest

PARITY_PROMPTS = (
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "import numpy as np\n\nclass Matrix:\n    def __init__(self, rows):\n",
    "The quick brown fox jumps over the lazy dog. In Python, a list comprehension",
)

# (bundle folder, its manifest (not yet written there), token lists, threads or None) ->
# logits [S, vocab] of each list, each from an empty cache
BundleLogits = Callable[[Path, Manifest, list[list[int]], int | None], list[np.ndarray]]


class TorchModel:
    """The unquantized model in transformers, float32."""
    kind = "torch"

    def __init__(self, hf_dir: str | Path):
        import torch
        from transformers import AutoModelForCausalLM
        self.path = Path(hf_dir)
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=torch.float32).eval()
        self.max_len = int(getattr(self.model.config, "max_position_embeddings", None) or sys.maxsize)

    def logits(self, ids: list[int]) -> np.ndarray:
        import torch
        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].float().numpy()  # [S, vocab]

    def describe(self) -> dict:
        return {"kind": self.kind, "path": str(self.path), "recipe": {"precision": "fp32 (torch)"}}


def torch_logits(hf_dir: Path, token_lists: list[list[int]]) -> list[np.ndarray]:
    model = TorchModel(hf_dir)
    return [model.logits(ids) for ids in token_lists]  # each [S, vocab]


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


def parity_report(hf_dir: Path, bundle: Path, manifest: Manifest, tokenizer, logits: BundleLogits,
                  threads: int | None = None, prompts=PARITY_PROMPTS) -> dict:
    tokens = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    report = compare(torch_logits(hf_dir, tokens), logits(bundle, manifest, tokens, threads))
    report["prompt_texts"] = list(prompts)
    return report
