"""Last-row logits and frequent-token draft heads: same numbers, fewer of them, lossless drafting."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from edgespec.export.draft_vocab import rank_tokens, write_draft_head
from edgespec.contract.manifest import read_manifest
from edgespec.export.tree_attention import rewrite_file
from edgespec.export.upgrade import upgrade
from edgespec.runtime.api import Generator
from edgespec.runtime.drafters import ModelDrafter
from edgespec.runtime.sampling import SamplingParams
from edgespec.runtime.session import Session
from exactness import chi_square_pvalue, exact_distribution
from test_runtime import PROMPT, _first_tokens

TOKENS = [5, 17, 33, 2, 99, 40, 41, 7]


@pytest.fixture(scope="module")
def target(tiny_bundle):
    return Session(tiny_bundle)


def _with_head(bundle, tmp_path, ids):
    """A copy of `bundle` with a draft head over `ids`."""
    copy = tmp_path / f"{bundle.name}-head"
    shutil.copytree(bundle, copy)
    manifest = read_manifest(copy)
    manifest.draft_head = write_draft_head(copy, manifest, len(ids), ids=ids)
    manifest.write(copy)
    return copy


def test_last_rows_equal_full_logits(target):
    assert target.manifest.inputs.get("num_logits") == "num_logits"
    target.reset()
    full = target.forward(TOKENS)
    target.reset()
    last = target.forward(TOKENS, last=1)
    assert last.shape == (1, full.shape[1])
    assert np.abs(last[0] - full[-1]).max() < 1e-5
    target.reset()
    assert np.abs(target.prefill(TOKENS, chunk=3) - full[-1]).max() < 1e-4


def test_upgrade_adds_num_logits_to_an_old_bundle(tiny_bundle, target, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    shutil.copy2(old / "model.genai.onnx", old / "model.onnx")  # the graph before this feature
    rewrite_file(old / "model.onnx")
    manifest = read_manifest(old)
    del manifest.inputs["num_logits"]
    manifest.files = {}  # nor had it per-file records
    manifest.write(old)
    before = Session(old).forward(TOKENS)
    assert upgrade(old) is True and upgrade(old) is False
    after = Session(old)
    assert after.manifest.inputs["num_logits"] == "num_logits"
    assert np.abs(after.prefill(TOKENS) - before[-1]).max() < 1e-5


@pytest.mark.parametrize("fixture", ["tiny_bundle", "tiny_int4_bundle"])
def test_draft_head_logits_are_the_full_head_columns(fixture, request, tmp_path):
    bundle = request.getfixturevalue(fixture)
    ids = np.arange(0, 320, 3)
    head = Session(_with_head(bundle, tmp_path, ids), head="draft")
    assert np.array_equal(head.logit_ids, ids)
    full = Session(bundle).forward(TOKENS)
    sliced = head.forward(TOKENS)
    assert sliced.shape == (len(TOKENS), len(ids))
    assert np.abs(sliced - full[:, ids]).max() < 1e-4
    assert Session(head.path).forward(TOKENS).shape == full.shape  # the target graph is untouched


def test_rank_tokens_keeps_specials_and_frequent_tokens(tiny_bundle):
    ids, digest = rank_tokens(tiny_bundle, 100, always=[319, 318])
    assert len(ids) == 100 and {318, 319} <= set(ids.tolist()) and len(digest) == 64
    assert 32 in ids  # the space byte, the commonest token of any code corpus
    again, _ = rank_tokens(tiny_bundle, 100, always=[319, 318])
    assert np.array_equal(ids, again)


def test_draft_vocab_bounds(tiny_bundle, tmp_path):
    manifest = read_manifest(tiny_bundle)
    with pytest.raises(ValueError, match="--draft-vocab 320 must be at least 2 and below the vocabulary size 320"):
        write_draft_head(tmp_path, manifest, 320)


def _without_target_favourites(target, n=2):
    """Every token but the target's n likeliest first tokens: q = 0 where p is largest."""
    target.reset()
    first = target.forward([5, 17, 33, 2, 99])[-1]
    favourites = np.argsort(-first)[:n]
    return np.setdiff1d(np.arange(first.shape[0]), favourites)


def test_self_draft_through_a_partial_head_is_lossless(tiny_bundle, target, tmp_path):
    """The target drafting for itself through a head that lacks ")": greedy output is unchanged,
    and only the positions where the target wants ")" are rejected."""
    prompt, close = "import os\nimport sys\n", 8  # the tiny model answers with runs of "(" and ")"
    drafter = Session(_with_head(tiny_bundle, tmp_path, np.setdiff1d(np.arange(320), [close])), head="draft")
    plain = Generator(target)
    plain.use_profiles = False
    spec = Generator(target, drafter, tree=False, drafter="model")
    spec.use_profiles = False
    a, b = plain.generate(prompt, max_tokens=48), spec.generate(prompt, max_tokens=48)
    assert a.token_ids == b.token_ids
    assert close in a.token_ids, "the output must use the token the head lacks"
    assert 0 < b.stats.accepted < b.stats.proposed


@pytest.mark.parametrize("tree", [False, True])
def test_sampling_through_a_partial_head_is_exact(target, tiny_draft_bundle, tmp_path, tree):
    """A draft that can never propose the target's two favourite first tokens still samples the
    target's exact distribution (chi-square p > 1e-3 and total variation < 0.10 over 3000 runs,
    as test_runtime.test_sampling_is_exact)."""
    ids = _without_target_favourites(target)
    draft = Session(_with_head(tiny_draft_bundle, tmp_path, ids), head="draft")
    params = SamplingParams(temperature=0.9, top_k=4)
    runs = 3000
    counts = _first_tokens(target, draft, params, 3, tree, runs, 11)
    dist = exact_distribution(target, params, 3)
    tv = 0.5 * sum(abs(counts.get(k, 0) / runs - dist.get(k, 0.0)) for k in set(dist) | set(counts))
    assert chi_square_pvalue(counts, dist, runs) > 1e-3
    assert tv < 0.10
