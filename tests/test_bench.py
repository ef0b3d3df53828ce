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
    from edgespec.export.recipes import Recipe
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


def test_the_held_out_suite_has_the_code_suites_shapes_and_none_of_its_prompts():
    """`--prompts heldout`: prompts the drafting policy was never tuned on, three per category."""
    from edgespec.apps.bench import load_suite
    from edgespec.contract.errors import InputError
    held, tuned = load_suite("heldout"), load_suite("code")
    assert [p["category"] for p in held] == [p["category"] for p in tuned]
    texts = {m["content"] for p in tuned for m in p["messages"]}
    assert not {p["id"] for p in held} & {p["id"] for p in tuned}
    assert not any(m["content"] in texts for p in held for m in p["messages"])
    assert load_suite("heldout.json") == held
    with pytest.raises(InputError, match="no suite file held; give a suite JSON or a shipped suite: "
                                         "code, long, heldout"):
        load_suite("held")


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

    def last_logits(reply):
        scored.append(list(reply))
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
    assert scored == [[5], [5, 6]]  # the reply so far, after the prompt
    for r in modes.values():
        r.update(prefill_tok_s=1.0, acceptance_rate=0.0, tokens_per_pass=1.0,
                 split={"draft": 0.0, "verify": 1.0, "overhead": 0.0})
    cats = _categories([row], list(modes))["completion"]
    assert cats["same"]["max_divergence_gap"] is None
    assert cats["swap"]["max_divergence_gap"] == pytest.approx(0.05, abs=1e-6)
    assert cats["short"]["max_divergence_gap"] == pytest.approx(2.5)


@pytest.mark.parametrize("fixture", ["bench_bundles", "tiny_int4_bundle"])
def test_divergences_are_scored_on_a_fresh_target_sequence(fixture, request):
    """The scorer's logits are those a generation computes: the prompt prefilled (by the int8
    prefill graph where the bundle has one), the reply through the decode graph; it leaves the
    session's cache empty for the next trial."""
    import numpy as np
    from edgespec.apps.bench import _last_logits
    from edgespec.runtime.session import Session
    bundle = request.getfixturevalue(fixture)
    bundle = bundle[0] if isinstance(bundle, (list, tuple)) else bundle
    session = Session(bundle)
    prompt, reply = list(range(40, 130)), list(range(200, 210))
    session.prefill([1, 2, 3])  # whatever the previous trial left
    got = _last_logits(session, prompt, reply)
    assert session.cache.length == 0 and session.history == []
    fresh = Session(bundle)
    fresh.prefill(prompt)
    np.testing.assert_allclose(got, fresh.forward(reply)[-1], atol=1e-4)
    if fresh.prefill_sess is not None:  # not the prefill graph's view of the reply
        fresh.reset()
        assert np.abs(fresh.prefill(prompt + reply) - got).max() > 1e-3


def test_genai_anchors_can_run_another_bundle_of_the_same_tokenizer(bench_bundles, tmp_path):
    """--genai-target: the anchors run that bundle's graph (here the draft model's: genai's tokens
    are the draft's own greedy ones, not the target's); another tokenizer is refused by name."""
    import shutil
    from edgespec.apps.bench import run_suite
    from edgespec.contract.errors import InputError
    from edgespec.contract.manifest import read_manifest
    target, other = bench_bundles
    result = run_suite(target, None, modes=["plain", "genai"], prompts=PROMPTS[:1], max_tokens=12, repeats=1,
                       warmup=0, threads=1, progress=False, genai_target=other)
    alone = run_suite(other, None, modes=["plain"], prompts=PROMPTS[:1], max_tokens=12, repeats=1, warmup=0,
                      threads=1, progress=False)
    assert result["meta"]["genai_target"] == str(other)
    modes = result["prompts"][0]["modes"]
    assert modes["genai"]["token_ids"] == alone["prompts"][0]["modes"]["plain"]["token_ids"]
    assert modes["genai"]["token_ids"] != modes["plain"]["token_ids"]
    foreign = tmp_path / "foreign"
    shutil.copytree(other, foreign)
    manifest = read_manifest(foreign)
    manifest.tokenizer_sha256 = "0" * 64  # as a bundle of another tokenizer records it
    manifest.write(foreign)
    with pytest.raises(InputError) as e:
        run_suite(target, None, modes=["plain", "genai"], prompts=PROMPTS[:1], progress=False, genai_target=foreign)
    assert str(e.value) == (f"--genai-target foreign has another tokenizer than {target.name}; "
                            "the anchors must read the same token ids")


def test_draft_modes_without_a_draft_are_refused(bench_bundles):
    from edgespec.apps.bench import run_suite
    from edgespec.contract.errors import EdgespecError
    with pytest.raises(EdgespecError, match="need a draft"):
        run_suite(bench_bundles[0], None, modes=["plain", "tree"], prompts=PROMPTS, progress=False)
    with pytest.raises(ValueError, match="unknown modes"):
        run_suite(bench_bundles[0], None, modes=["plain", "beam"], prompts=PROMPTS, progress=False)


def test_bench_command_writes_json_and_png(bench_bundles, tmp_path):
    from click.testing import CliRunner
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


# ----------------------------------------------------------------------------- long prompts

def _long_prompts() -> list[dict]:
    from edgespec.apps.bench import load_suite
    return load_suite(categories=["long"])


@pytest.fixture(scope="session")
def long_target(bench_bundles, tmp_path_factory) -> Path:
    """The bench target's model with 4,096 positions (the long prompts are ~3,000 of its byte-level
    tokens), exported fp32."""
    import shutil
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    root = tmp_path_factory.mktemp("long")
    hf = shutil.copytree(bench_bundles[0].parent / "hf-target", root / "hf")
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    export(str(hf), root / "target", ExportOptions(recipe=Recipe("fp32"), max_context=4096, force=True))
    return root / "target"


@pytest.fixture(scope="session")
def long_result(long_target) -> dict:
    from edgespec.apps.bench import run_suite
    return run_suite(long_target, None, modes=["plain", "ngram", "genai"], prompts=_long_prompts()[:1],
                     max_tokens=8, repeats=1, warmup=0, threads=1, progress=False)


def test_each_mode_runs_in_every_place_of_the_round():
    """Each round starts one mode later: over as many rounds as modes, every mode has run first,
    second, ... once, so a machine's swing in step with the round favours none by its place."""
    from edgespec.apps.bench import _rotated

    modes = ["plain", "chain", "tree", "ngram", "auto"]
    orders = [_rotated(modes, r) for r in range(len(modes))]
    assert orders[1] == ["chain", "tree", "ngram", "auto", "plain"]
    for place in range(len(modes)):
        assert sorted(order[place] for order in orders) == sorted(modes)
    assert _rotated(modes, len(modes) + 2) == orders[2]


def test_long_suite_holds_files_with_instructions_of_1000_to_3500_tokens():
    """Real files (stdlib modules, under their NOTICE) with edit, explain and test-writing
    instructions; each stored Qwen token count is of the text the suite builds now (its character
    count matches), within 1,000-3,500 and spread out; the default run leaves them out."""
    from importlib import resources
    from edgespec.apps.bench import load_suite
    prompts = _long_prompts()
    assert len(prompts) >= 4 and {p["category"] for p in prompts} == {"long"}
    assert {p["task"] for p in prompts} == {"edit", "explain", "tests"}
    folder = resources.files("edgespec.apps").joinpath("prompts")
    notice = folder.joinpath("stdlib/NOTICE").read_text()
    assert "Python Software Foundation" in notice and folder.joinpath("stdlib/LICENSE").is_file()
    for p in prompts:
        content = p["messages"][0]["content"]
        assert p["chars"] == len(content), p["id"]  # the stored count is of this text
        assert 1000 <= p["tokens"] <= 3500, p["id"]
        assert 2.0 <= p["chars"] / p["tokens"] <= 5.0, p["id"]
        source = folder.joinpath(p["file"]).read_text()
        assert Path(p["file"]).name in notice
        assert source in content and content.endswith(p["instruction"])
        followup = p["followup_messages"][0]["content"]
        assert followup.endswith(p["followup"]) and followup[:content.index(p["instruction"])] == \
            content[:content.index(p["instruction"])]  # the same file first: a shared prefix
    tokens = sorted(p["tokens"] for p in prompts)
    assert tokens[0] < 1200 and tokens[-1] > 3000 and tokens == [p["tokens"] for p in prompts]  # cheapest first
    assert "long" not in {p["category"] for p in load_suite()}
    assert [p["id"] for p in load_suite(categories=["long"], per_category=1)] == [prompts[0]["id"]]


def test_long_prompt_reports_ttft_prefill_and_prefix_reuse(long_result):
    """Every mode's time to first token, prefill tok/s and end-to-end time, paired against
    genai; the followup (same file, another instruction) reuses the prompt's prefix."""
    row = long_result["prompts"][0]
    assert row["prompt_tokens"] > 1000
    for mode, r in row["modes"].items():
        assert 0 < r["ttft_seconds"] <= r["e2e_seconds"], mode
        assert r["prefill_tok_s"] > 0 and r["cached_prompt_tokens"] == 0, mode
        for ratio in ("ttft_vs_genai", "prefill_vs_genai", "e2e_vs_genai"):
            assert r[ratio] > 0, (mode, ratio)
    genai = row["modes"]["genai"]
    assert genai["ttft_vs_genai"] == genai["prefill_vs_genai"] == genai["e2e_vs_genai"] == 1.0
    plain = row["modes"]["plain"]["trials"][0]
    assert plain["e2e_seconds"] == pytest.approx(plain["ttft_seconds"] + plain["decode_seconds"], abs=0.05)

    reuse = row["prefix_reuse"]
    first, second = reuse["first"], reuse["second"]
    assert first["prompt_tokens"] == row["prompt_tokens"] and first["cached_prompt_tokens"] == 0
    assert second["cached_prompt_tokens"] == reuse["shared_prefix_tokens"] > 0.9 * row["prompt_tokens"]
    assert 0 < second["ttft_seconds"] < first["ttft_seconds"]
    assert reuse["ttft_ratio"] == pytest.approx(second["ttft_seconds"] / first["ttft_seconds"])

    cat = long_result["categories"]["long"]["plain"]
    assert cat["prompt_tokens"] == row["prompt_tokens"] and cat["ttft_seconds"] == row["modes"]["plain"]["ttft_seconds"]
    assert long_result["prefix_reuse"]["long"]["ttft_ratio"] == reuse["ttft_ratio"]
    json.dumps(long_result)


def test_bench_long_category_prints_waits_and_plots_them(long_target, tmp_path):
    """`--categories long` runs the long suite (--quick: its shortest prompt); the table shows
    TTFT, prefill, e2e and the prefix-reuse row; JSON and the PNG carry them."""
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(cli, ["bench", "--target", str(long_target), "--draft", "none", "--categories",
                                      "long", "--modes", "plain,genai", "--max-tokens", "4", "--threads", "1",
                                      "--quick", "--json", str(out_json), "--plot", str(out_png)])
    assert result.exit_code == 0, result.output
    for column in ("TTFT s", "prefill tok/s", "e2e s", "x genai", "plain, prefix reused", "x 1st)"):
        assert column in result.output, column
    data = json.loads(out_json.read_text())
    assert [r["id"] for r in data["prompts"]] == [_long_prompts()[0]["id"]]
    assert data["prefix_reuse"]["long"]["cached_prompt_tokens"] > 0
    assert data["categories"]["long"]["plain"]["ttft_seconds"] > 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_prompt_and_reply_beyond_the_context_are_refused(bench_bundles):
    """Before anything loads: a prompt that fills the target's context, and a reply that would
    run past it (edgespec would stop there, onnxruntime-genai would not)."""
    import re
    from transformers import AutoTokenizer
    from edgespec.apps.bench import run_suite
    from edgespec.contract.errors import InputError
    target = bench_bundles[0]
    tok = AutoTokenizer.from_pretrained(str(target))
    long = _long_prompts()[0]
    n = len(tok.apply_chat_template(long["messages"], add_generation_prompt=True, tokenize=True, return_dict=False))
    with pytest.raises(InputError, match=re.escape(
            f"prompt {long['id']} has {n} tokens, which leaves no room for a reply in the 512-token context "
            f"of {target.name}; leave it out (--categories) or export the target with a larger --max-context")):
        run_suite(target, None, modes=["plain"], prompts=[long], progress=False)
    short = PROMPTS[0]
    n = len(tok.apply_chat_template(short["messages"], add_generation_prompt=True, tokenize=True, return_dict=False))
    with pytest.raises(InputError, match=re.escape(
            f"prompt c1 has {n} tokens: with --max-tokens 510 it needs {n + 510} of the 512-token context "
            f"of {target.name}; lower --max-tokens to {512 - n}")):
        run_suite(target, None, modes=["plain"], prompts=[short], max_tokens=510, progress=False)
