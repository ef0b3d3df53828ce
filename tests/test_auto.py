"""Auto's decisions on recorded replies: four traces of the 1.5B target with the 0.5B draft
(tests/data/traces, code.json's tuning prompts, recorded by `edgespec bench --trace` on a 2-core
AMD EPYC, whose device profiles they carry) replayed offline pass by pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edgespec.devices.profile import Profile
from edgespec.runtime.policy_config import DEFAULT
from edgespec.runtime.replay import Costs, replay
from edgespec.runtime.trace import load_trace

TRACES = Path(__file__).parent / "data" / "traces"
MODES = ("plain", "chain", "tree", "ngram")


@pytest.fixture(scope="module")
def traces() -> dict:
    return {p.name.split(".")[0]: load_trace(p) for p in sorted(TRACES.glob("*.trace.json.gz"))}


@pytest.mark.parametrize("prompt", ["completion-lru-cache", "edit-rename-variable", "explain-decorator"])
def test_auto_keeps_up_with_the_best_single_drafter_on_each_reply(traces, prompt):
    """The issue's bar, on replies the policy was tuned on: auto >= 0.97x the best of plain,
    chain, tree and lookup, and never below plain."""
    trace = traces[prompt]
    others = {mode: replay(trace, mode).tok_s for mode in MODES}
    auto = replay(trace, "auto").tok_s
    assert auto >= 0.97 * max(others.values()), (auto, others)
    assert auto >= others["plain"]


def test_an_edit_is_copied_by_lookup_and_the_model_stays_out(traces):
    """The reply copies its prompt with a few changes: lookup drafts every copy, and since the
    prompt left to copy shortens the model's payback horizon, its prefill is never paid at an
    edit point. Entering anyway (entry rules loosened) is slower."""
    trace = traces["edit-rename-variable"]
    r = replay(trace, "auto")
    assert r.choices["long"] >= 50 and r.choices["model"] == r.choices["both"] == 0
    assert r.policy.to_copy > 0
    loose = replay(trace, "auto", replace(DEFAULT, auto_entry_misses=0, auto_entry_margin=0.5))
    assert loose.choices["model"] > 0 and loose.tok_s < 0.95 * r.tok_s


def test_an_edit_keeps_the_model_out_when_the_draft_looks_cheaper_than_it_is(traces):
    """A profile taken on a shared CPU is often 15% off. Told the draft costs 15% less than it
    does, auto still keeps the model out of an edit: lookup takes the passes where it copies,
    so the model's prefill could pay back only over the rest (lookup_share), not the reply."""
    trace = traces["edit-logging"]
    costs = Costs.of(trace)
    cheap = Costs(costs.target, Profile("draft", "cpu", 2, 128, {s: 0.85 * ms for s, ms in costs.draft.pass_ms.items()}),
                  0.85 * costs.draft_prefill_ms, costs.overhead_ms)
    told = replay(trace, "auto", profiles=cheap)
    assert told.choices["model"] == 0
    assert told.tok_s >= 0.99 * replay(trace, "auto").tok_s


def test_the_entry_margin_keeps_an_unsure_draft_out_of_an_explanation(traces):
    """On an explanation the target is unsure (top-1 ~0.75) and the draft's chain pays little:
    at the configured margin its prefill is not paid, and the reply is faster than with the
    model let in at half that margin."""
    trace = traces["explain-decorator"]
    r = replay(trace, "auto")
    assert r.choices["model"] == 0 and r.choices["short"] > 0
    assert 0.6 < r.policy.target_confidence < 0.9
    eager = replay(trace, "auto", replace(DEFAULT, auto_entry_margin=0.5))
    assert eager.choices["model"] > 0 and eager.tok_s < r.tok_s


def test_a_completion_is_drafted_by_the_model_which_vets_lookup(traces):
    """Fresh code: the model drafts most passes; while it follows the context, its first token
    checks each lookup proposal, and turns some down (those passes the model drafts instead).
    With the check off, no proposal is checked."""
    trace = traces["completion-lru-cache"]
    r = replay(trace, "auto")
    assert r.choices["model"] > sum(r.choices.values()) / 2
    assert r.policy.peeks > 0 and 0 < r.policy.vetoed <= r.policy.peeks
    unchecked = replay(trace, "auto", replace(DEFAULT, auto_peek_lag=-1))
    assert unchecked.policy.peeks == 0


def test_a_merged_tree_is_verified_where_width_is_cheap(traces):
    """Where a target pass over 16 tokens costs about one over 1, lookup's proposal grafted
    onto the model's chain adds expected tokens for nothing, and auto verifies both; on the
    recorded CPU's curve (a fourth token costs ~25% of a pass) it does not."""
    trace = traces["completion-lru-cache"]
    costs = Costs.of(trace)
    one = costs.target.cost(1)
    flat = Costs(Profile("flat", "cpu", 2, 128, {1: one, 16: 1.05 * one}), costs.draft,
                 costs.draft_prefill_ms, costs.overhead_ms)
    assert replay(trace, "auto").choices["both"] == 0
    assert replay(trace, "auto", costs=flat).choices["both"] > 0


def test_lookup_acceptance_is_learned_per_match_length(traces):
    """Replaying the edit moves each match-length bucket's estimate from its prior toward what
    the target accepted there: long matches (copies) high, two-token matches lower."""
    r = replay(traces["edit-rename-variable"], "auto")
    cal = r.policy.calibration
    assert cal.counts != [[DEFAULT.prior_trials, p * DEFAULT.prior_trials] for p in DEFAULT.lookup_match_priors]
    assert cal(16) > 0.8 and cal(6) > 0.9 and cal(2) < cal(6)
