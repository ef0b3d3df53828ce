"""Traces and replays: a recorded generation decodes again offline, pass for pass where the
drafter is deterministic, and the policy's decisions are tested on what was recorded."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import replace

import pytest

from edgespec.contract.errors import InputError
from edgespec.devices.profile import Profile
from edgespec.runtime.policy_config import DEFAULT

# Code that repeats itself, so that lookup finds n-grams to follow once the reply quotes it.
PROMPT = ("def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\n"
          "for i in range(10):\n    print(add(i, i))\n")
MAX_TOKENS = 48


@pytest.fixture(scope="module")
def sessions(tiny_bundle, tiny_draft_bundle):
    from edgespec.runtime.session import Session
    return Session(tiny_bundle), Session(tiny_draft_bundle)


def _record(sessions, drafter: str, tree: bool = False, meta: dict | None = None) -> dict:
    """A greedy generation's trace, sized without profiles (the heuristic length policy)."""
    from edgespec.runtime.api import Generator
    from edgespec.runtime.trace import Tracing
    target, draft = sessions
    gen = Generator(target, draft, tree=tree, drafter=drafter)
    gen.use_profiles = False
    tracing = Tracing(gen)
    gen.generate(gen.encode(PROMPT), max_tokens=MAX_TOKENS)
    return tracing.trace(meta)


@pytest.fixture(scope="module")
def ngram_trace(sessions):
    return _record(sessions, "ngram", tree=True, meta={"prompt_id": "p1", "category": "completion", "mode": "ngram"})


@pytest.fixture(scope="module")
def chain_trace(sessions):
    return _record(sessions, "model", tree=False, meta={"prompt_id": "p1", "category": "completion", "mode": "chain"})


def _accepted(trace):
    return [p["accepted"] for p in trace["passes"]]


def test_a_trace_holds_the_reply_and_every_pass(ngram_trace):
    t = ngram_trace
    emitted = [tok for p in t["passes"] for tok in p["emitted"]]
    assert t["output"][1:] == emitted and len(t["output"]) > 8
    assert len(t["target_top"]["ids"]) == len(emitted)  # one row per emitted token
    assert all(ids[0] == tok for ids, tok in zip(t["target_top"]["ids"], emitted))  # greedy: the argmax
    assert len(t["draft"]["ids"]) == len(t["output"])  # the draft's top-k along the whole reply
    assert [p["size"] for p in t["passes"]] == [len(p["tokens"]) for p in t["passes"]]
    assert t["policy_config"]["auto_entry_misses"] == DEFAULT.auto_entry_misses
    assert t["costs"]["target_ms"] and t["costs"]["draft_ms"]["1"] > 0


def test_a_trace_keeps_the_fences_auto_finds_code_blocks_by(ngram_trace, sessions):
    """Replay prices auto's copy prior as the run did: from the tokenizer's fence tokens."""
    from edgespec.runtime.api import Generator
    from edgespec.runtime.auto import code_fences
    gen = Generator(*sessions, drafter="ngram")
    assert ngram_trace["code_fences"] == sorted(code_fences(gen.tokenizer.get_vocab()))



def test_lookup_replays_pass_for_pass(ngram_trace):
    """Prompt lookup is model-free and deterministic: the replay proposes the same trees and
    the target accepts as much of each."""
    from edgespec.runtime.replay import replay
    r = replay(ngram_trace, "ngram")
    assert r.accepted == _accepted(ngram_trace) and sum(r.accepted) > 0
    assert r.sizes == [p["size"] for p in ngram_trace["passes"]]
    assert r.tokens == len(ngram_trace["output"]) - 1 and r.tok_s > 0


def test_a_model_chain_replays_pass_for_pass(chain_trace):
    """The recorded draft answers every step along the reply as the draft did: the heuristic
    chain drafts the same tokens, so the same number are accepted each pass."""
    from edgespec.runtime.replay import replay
    assert chain_trace["length"] == "heuristic" and chain_trace["drafter"] == "model"
    r = replay(chain_trace, "chain", length="heuristic")
    assert r.accepted == _accepted(chain_trace) and sum(r.accepted) > 0


def test_plain_replay_emits_one_token_a_pass(chain_trace):
    from edgespec.runtime.replay import Costs, replay
    r = replay(chain_trace, "plain")
    assert r.passes == r.tokens == len(chain_trace["output"]) - 1 and set(r.accepted) == {0}
    costs = Costs.of(chain_trace)
    assert r.ms == pytest.approx(r.passes * (costs.target.cost(1) + costs.overhead_ms))


# A CPU where verifying wider costs little and the draft is nearly free: the model pays as soon
# as it may enter, so the entry rule alone decides when it does.
CHEAP_DRAFT = dict(target=Profile("t", "cpu", 2, 128, {1: 40.0, 2: 41.0, 4: 43.0, 9: 48.0}),
                   draft=Profile("d", "cpu", 2, 128, {1: 0.5, 8: 0.8}), draft_prefill_ms=0.1)


def test_auto_enters_the_model_after_the_configured_lookup_misses(ngram_trace):
    """On the recorded reply, with lookup missing from the start, auto's draft model enters
    after auto_entry_misses plain passes: three by default, one when the config says one."""
    from edgespec.runtime.replay import Costs, replay
    costs = Costs(**CHEAP_DRAFT)
    assert len(ngram_trace["prompt"]) + 1 > DEFAULT.draft_rejoin  # entering is a prefill: the rule applies
    assert [p["match"] for p in ngram_trace["passes"][:4]] == [0] * 4  # lookup has nothing at first
    kinds = replay(ngram_trace, "auto", costs=costs).kinds
    assert kinds[:4] == ["none"] * 3 + ["model"]
    kinds = replay(ngram_trace, "auto", replace(DEFAULT, auto_entry_misses=1), costs=costs).kinds
    assert kinds[:2] == ["none", "model"]


def test_auto_keeps_the_model_out_where_its_prefill_does_not_pay(ngram_trace):
    """Costs decide too: a draft step as dear as a target pass never pays its entry."""
    from edgespec.runtime.replay import Costs, replay
    dear = Costs(CHEAP_DRAFT["target"], Profile("d", "cpu", 2, 128, {1: 40.0, 8: 120.0}), 15.0)
    r = replay(ngram_trace, "auto", costs=dear)
    assert "model" not in r.kinds and r.choices["model"] == 0


def test_a_damaged_or_foreign_trace_is_refused(ngram_trace, tmp_path):
    from edgespec.runtime.trace import load_trace, write_trace
    path = write_trace(tmp_path / "p1.ngram.trace.json.gz", ngram_trace)
    assert load_trace(path)["output"] == ngram_trace["output"]
    cut = tmp_path / "cut.trace.json.gz"
    cut.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
    with pytest.raises(InputError, match=re.escape(f"trace {cut} is truncated or damaged")):
        load_trace(cut)
    old = tmp_path / "old.trace.json.gz"
    old.write_bytes(gzip.compress(json.dumps({**ngram_trace, "version": 0}).encode()))
    with pytest.raises(InputError, match=re.escape(f"trace {old} has format version 0; this edgespec reads version 1")):
        load_trace(old)
    other = tmp_path / "other.trace.json"
    other.write_text(json.dumps({"prompts": []}))
    with pytest.raises(InputError, match=re.escape(f"{other} is not an edgespec trace")):
        load_trace(other)


def test_replay_command_prints_a_table_and_refuses_unknown_settings(ngram_trace, chain_trace, tmp_path, monkeypatch):
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    from edgespec.runtime.trace import trace_name, write_trace
    monkeypatch.setenv("COLUMNS", "250")  # (no cell wraps)
    for trace in (ngram_trace, chain_trace):
        write_trace(tmp_path / trace_name("p1", trace["meta"]["mode"]), trace)
    r = CliRunner().invoke(cli, ["replay", str(tmp_path), "--set", "auto_entry_misses=1"])
    assert r.exit_code == 0, r.output
    assert "replayed decode tok/s" in r.output and "auto/best" in r.output and "p1" in r.output
    assert "completion" in r.output and "settings: auto_entry_misses=1" in r.output
    r = CliRunner().invoke(cli, ["replay", str(tmp_path), "--set", "nosuchfield=1"])
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: unknown PolicyConfig field 'nosuchfield' in --set nosuchfield=1; "
                                "the fields are listed in runtime/policy_config.py")
    r = CliRunner().invoke(cli, ["replay", str(tmp_path), "--set", "auto_entry_misses=two"])
    assert r.exit_code == 1 and "auto_entry_misses takes an integer (default 3), not 'two'" in r.output


def test_bench_writes_a_trace_per_prompt_and_mode(tiny_bundle, tiny_draft_bundle, tmp_path):
    """Each edgespec mode's last timed run, with the draft's distributions lent to the modes
    that do not draft with it; each trace's reply is the one bench measured."""
    from edgespec.apps.bench import run_suite
    from edgespec.runtime.replay import has_draft
    from edgespec.runtime.trace import load_trace
    prompts = [{"id": "c1", "category": "completion", "messages": [{"role": "user", "content": PROMPT}]}]
    result = run_suite(tiny_bundle, tiny_draft_bundle, modes=["plain", "ngram", "chain"], prompts=prompts,
                       max_tokens=16, repeats=1, warmup=0, threads=1, progress=False, trace=tmp_path / "traces")
    for mode in ("plain", "ngram", "chain"):
        trace = load_trace(tmp_path / "traces" / f"c1.{mode}.trace.json.gz")
        assert trace["meta"]["mode"] == mode and has_draft(trace)
        reply = result["prompts"][0]["modes"][mode]["token_ids"]
        assert trace["output"][:len(reply)] == reply
