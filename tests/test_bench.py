"""`edgespec bench`: the suite runs every mode on the same ids, speculative outputs equal plain
outputs, onnxruntime-genai's greedy ids equal edgespec's on the same weights, and the command
writes JSON and a PNG."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import make_hf_model  # noqa: E402

MODES = ["plain", "chain", "tree", "ngram", "genai"]
PROMPTS = [  # short: the tiny models have a 512-token context and a 320-token byte-level vocabulary
    {"id": "c1", "category": "completion", "messages": [{"role": "user", "content": "def add(a, b):"}]},
    {"id": "c2", "category": "completion",
     "messages": [{"role": "user", "content": "for i in range(10):\n    print(i)\n"}]},
    {"id": "e1", "category": "edit", "messages": [
        {"role": "user", "content": "Rename x to y:\n\nfor x in range(10):\n    print(x)\n    total = x + x\n"}]},
    {"id": "x1", "category": "explain",
     "messages": [{"role": "user", "content": "Explain: the quick brown fox jumps over the lazy dog"}]},
]


@pytest.fixture(scope="session")
def bench_bundles(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny qwen2 target and a llama draft with the same tokenizer, exported fp32."""
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.quant.recipes import Recipe
    root = tmp_path_factory.mktemp("bench")
    out = []
    for name, arch, seed in [("target", "qwen2", 0), ("draft", "llama", 1)]:
        hf = make_hf_model(root / f"hf-{name}", arch, seed=seed)
        export(str(hf), root / name, ExportOptions(recipe=Recipe("fp32"), force=True))
        out.append(root / name)
    return out[0], out[1]


@pytest.fixture(scope="session")
def suite_result(bench_bundles) -> dict:
    from edgespec.apps.bench import run_suite
    target, draft = bench_bundles
    return run_suite(target, draft, modes=MODES, prompts=PROMPTS, max_tokens=16, repeats=1, warmup=0,
                     threads=1, progress=False)


def test_shipped_suite_has_three_prompts_per_category():
    from edgespec.apps.bench import load_suite
    prompts = load_suite()
    by_cat = {}
    for p in prompts:
        by_cat.setdefault(p["category"], []).append(p)
        assert p["messages"] and all({"role", "content"} <= set(m) for m in p["messages"])
    assert {c: len(ps) for c, ps in by_cat.items()} == {"completion": 3, "edit": 3, "explain": 3}
    assert len({p["id"] for p in prompts}) == len(prompts)
    assert [p["id"] for p in load_suite(categories=["edit"], per_category=1)] == [by_cat["edit"][0]["id"]]


def test_suite_runs_every_mode_on_the_same_prompt(suite_result):
    assert suite_result["unsupported"] == {}
    assert [r["id"] for r in suite_result["prompts"]] == [p["id"] for p in PROMPTS]
    for row in suite_result["prompts"]:
        assert set(row["modes"]) == set(MODES)
        for mode, r in row["modes"].items():
            assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0, (row["id"], mode)
            assert r["new_tokens"] == len(r["token_ids"]) <= 16
            assert len(r["trials"]) == 1
            assert sum(r["split"].values()) == pytest.approx(1.0, abs=1e-6)
    for cat in ("completion", "edit", "explain", "all"):
        assert set(suite_result["categories"][cat]) == set(MODES)
    assert suite_result["peak_rss_mb"] > 0
    sizes = suite_result["categories"]["all"]
    assert sizes["plain"]["drafted_per_pass"] == 0 and sizes["chain"]["drafted_per_pass"] > 0  # chosen sizes


def test_ratios_are_against_genai(suite_result):
    for row in suite_result["prompts"]:
        anchor = row["modes"]["genai"]["decode_tok_s"]
        for r in row["modes"].values():
            assert r["ratio_vs_genai"] == pytest.approx(r["decode_tok_s"] / anchor)
        assert row["modes"]["genai"]["ratio_vs_genai"] == pytest.approx(1.0)
    completion = [r for r in suite_result["prompts"] if r["category"] == "completion"]
    expected = sorted(r["modes"]["tree"]["ratio_vs_genai"] for r in completion)
    assert suite_result["categories"]["completion"]["tree"]["ratio_vs_genai"] == pytest.approx(
        sum(expected) / 2)  # the median of two prompts


def test_speculative_and_genai_outputs_equal_plain(suite_result):
    """Lossless speculation; and onnxruntime-genai greedy on the builder graph gives the same ids
    as edgespec's plain greedy on the tree-attention graph (both run the same weights)."""
    for row in suite_result["prompts"]:
        plain = row["modes"]["plain"]["token_ids"]
        assert len(plain) > 1
        for mode in MODES:
            r = row["modes"][mode]
            assert r["token_ids"] == plain, (row["id"], mode, r["first_divergence"])
            assert r["matches_plain"] is True and r["first_divergence"] is None
            assert r["divergence"] is None
    drafted = [row["modes"][m] for row in suite_result["prompts"] for m in ("chain", "tree", "ngram")]
    assert sum(r["trials"][0]["proposed"] for r in drafted) > 0


def test_a_divergence_is_scored_where_it_happens():
    """Where a mode's ids leave plain's, the target scores the common prefix once: the gap between
    plain's token and the mode's there says whether it was a near-tie; a reply that stopped there
    is compared through the likeliest end token."""
    import numpy as np
    from edgespec.apps.bench import _categories, _compare, _explain_divergences
    row = {"id": "p", "category": "completion", "modes": {
        "plain": {"token_ids": [5, 6, 7], "decode_tok_s": 1.0},
        "same": {"token_ids": [5, 6, 7], "decode_tok_s": 1.0},
        "swap": {"token_ids": [5, 9, 7], "decode_tok_s": 1.0},
        "swap-too": {"token_ids": [5, 9, 8], "decode_tok_s": 1.0},  # parts at the same token: scored once
        "short": {"token_ids": [5, 6], "decode_tok_s": 1.0}}}
    scored = []

    def last_logits(ids):
        scored.append(list(ids))
        logits = np.zeros(12, np.float32)
        logits[[6, 9, 7, 1, 0]] = [2.0, 1.95, 0.5, 3.0, -1.0]
        return logits

    _compare(row)
    _explain_divergences(row, [100, 101], last_logits, eos=[0, 1])
    modes = row["modes"]
    assert modes["plain"]["divergence"] is None and modes["same"]["divergence"] is None
    swap = modes["swap"]["divergence"]
    assert (swap["at"], swap["plain_token"], swap["token"], swap["rank"]) == (1, 6, 9, 2)
    assert swap["logit_gap"] == pytest.approx(0.05, abs=1e-6)
    assert modes["swap-too"]["divergence"] == swap
    row["modes"]["later"] = {"token_ids": [5, 6, 7], "decode_tok_s": 1.0,  # its last trial matches
                             "replies": [[5, 6, 7, 8], [5, 6, 7], [5, 9, 7]]}
    _compare(row)
    later = row["modes"]["later"]
    assert later["matches_plain"] is False and later["first_divergence"] == 1  # the earliest parting
    assert later["token_ids"] == [5, 9, 7] and later["new_tokens"] == 3
    short = modes["short"]["divergence"]
    assert (short["at"], short["plain_token"], short["token"]) == (2, 7, 1)  # end token 1 beats 0
    assert short["logit_gap"] == pytest.approx(-2.5)
    assert scored == [[100, 101, 5], [100, 101, 5, 6]]
    for r in modes.values():
        r.update(prefill_tok_s=1.0, acceptance_rate=0.0, tokens_per_pass=1.0,
                 split={"draft": 0.0, "verify": 1.0, "overhead": 0.0})
    cats = _categories([row], list(modes))["completion"]
    assert cats["same"]["max_divergence_gap"] is None
    assert cats["swap"]["max_divergence_gap"] == pytest.approx(0.05, abs=1e-6)
    assert cats["short"]["max_divergence_gap"] == pytest.approx(2.5)


def test_divergences_are_scored_on_a_fresh_target_sequence(bench_bundles):
    """The scorer's logits are the last row of a plain run over the ids, and it leaves the
    session's cache empty for the next trial."""
    import numpy as np
    from edgespec.apps.bench import _last_logits
    from edgespec.runtime.session import Session
    session = Session(bench_bundles[0])
    ids = list(range(40, 130))
    session.prefill([1, 2, 3])  # whatever the previous trial left
    got = _last_logits(session, ids)
    assert session.cache.length == 0 and session.history == []
    np.testing.assert_allclose(got, Session(bench_bundles[0]).forward(ids)[-1], atol=1e-4)


def test_draft_modes_without_a_draft_are_refused(bench_bundles):
    from edgespec.apps.bench import run_suite
    from edgespec.export.errors import EdgespecError
    with pytest.raises(EdgespecError, match="need a draft"):
        run_suite(bench_bundles[0], None, modes=["plain", "tree"], prompts=PROMPTS, progress=False)
    with pytest.raises(ValueError, match="unknown modes"):
        run_suite(bench_bundles[0], None, modes=["plain", "beam"], prompts=PROMPTS, progress=False)


def test_bench_command_writes_json_and_png(bench_bundles, tmp_path):
    from click.testing import CliRunner
    from edgespec.apps import bench_cmd  # noqa: F401  (registers the command)
    from edgespec.apps.cli import cli
    target, draft = bench_bundles
    suite = tmp_path / "suite.json"
    suite.write_text(json.dumps({"prompts": PROMPTS}))
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    args = ["bench", "--target", str(target), "--draft", str(draft), "--prompts", str(suite),
            "--modes", "plain,tree,ngram,genai,genai-spec,genai-ngram", "--max-tokens", "12",
            "--threads", "1", "--quick", "--json", str(out_json), "--plot", str(out_png)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "genai" in result.output and "decode tok/s" in result.output
    data = json.loads(out_json.read_text())
    assert [r["id"] for r in data["prompts"]] == ["c1", "e1", "x1"]  # --quick: one per category
    assert data["meta"]["repeats"] == 1 and data["meta"]["warmup"] == 0
    ran = set(data["prompts"][0]["modes"])
    assert ran | set(data["unsupported"]) == {"plain", "tree", "ngram", "genai", "genai-spec", "genai-ngram"}
    for mode in ran:  # onnxruntime-genai's own speculation is lossless too
        assert all(r["modes"][mode]["matches_plain"] for r in data["prompts"]), mode
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "--force" in again.output


def test_modes_are_paired_with_plain_round_by_round(suite_result):
    """x plain divides speeds measured in the same round: a machine twice as fast in round 2 leaves
    a mode 10% ahead and then 10% behind plain at a median of 1.0, where the ratio of medians
    (29 / 30) would blame the mode; the category reports the worst prompt."""
    from edgespec.apps.bench import Trial, _categories, _pair

    def trial(tok_s):
        return Trial([1], 1, 0.1, 100 / tok_s, 100)
    rows = []
    for name, plain, auto in [("p1", [20, 40], [22, 36]), ("p2", [30, 30], [27, 27])]:
        row = {"id": name, "category": "explain", "modes": {"plain": {}, "auto": {}}}
        _pair(row, {"plain": [trial(t) for t in plain], "auto": [trial(t) for t in auto]})
        rows.append(row)
    assert rows[0]["modes"]["auto"]["paired_vs_plain"] == pytest.approx(1.0)
    assert rows[1]["modes"]["auto"]["paired_vs_plain"] == pytest.approx(0.9)
    for row in rows:
        for r in row["modes"].values():
            r.update(decode_tok_s=1.0, prefill_tok_s=1.0, acceptance_rate=0.0, tokens_per_pass=1.0,
                     ratio_vs_genai=None, matches_plain=True, split={"draft": 0, "verify": 1, "overhead": 0})
    auto = _categories(rows, ["plain", "auto"])["explain"]["auto"]
    assert auto["paired_vs_plain"] == pytest.approx(0.95) and auto["worst_vs_plain"] == pytest.approx(0.9)
    for row in suite_result["prompts"]:  # a real run: plain over itself is exactly 1
        assert row["modes"]["plain"]["paired_vs_plain"] == 1.0
        assert row["modes"]["chain"]["paired_vs_plain"] > 0
