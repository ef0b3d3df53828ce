"""Runtime: KV cache operations, lossless speculative decoding, exact sampling, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from edgespec.contract.errors import EdgespecError
from edgespec.runtime.api import Generator
from edgespec.runtime.drafters import ModelDrafter
from edgespec.runtime.sampling import SamplingParams
from edgespec.runtime.scheduler import decode_steps
from edgespec.runtime.session import Session, SessionOptions
from edgespec.runtime.tree import DraftTree
from drafting import EveryNthPass
from exactness import chi_square_pvalue, exact_distribution

PROMPT = "def add(a, b):\n    return"


@pytest.fixture(scope="module")
def target(tiny_bundle):
    return Session(tiny_bundle)


@pytest.fixture(scope="module")
def draft(tiny_draft_bundle):
    return Session(tiny_draft_bundle)


@pytest.fixture(scope="module")
def self_draft(tiny_bundle):
    return Session(tiny_bundle)


def test_keep_equals_fresh_chain(target):
    """After a tree pass and keep(path), the cache and the next logits equal a chain run."""
    prompt = [5, 17, 33, 2, 99]
    target.reset()
    target.prefill(prompt)
    past = target.cache.length
    tree = DraftTree(40)
    a = tree.add(0, 41)
    tree.add(0, 42)
    b = tree.add(a, 43)
    tree.add(a, 44)
    target.forward(tree.tokens, tree.position_ids(past)[0], tree.attention_bias(past)[0, 0])
    target.cache.keep(past, [0, a, b])
    kept = [k[:, :, :target.cache.length].copy() for k in target.cache.keys]
    after = target.forward([45])
    target.reset()
    fresh = target.forward(prompt + [40, 41, 43, 45])
    for k, f in zip(kept, target.cache.keys):
        assert np.abs(k - f[:, :, :k.shape[2]]).max() < 1e-5
    assert np.abs(after[-1] - fresh[-1]).max() < 1e-4


def test_rewind_then_regenerate(target):
    target.reset()
    ref = target.forward([1, 2, 3, 4, 5, 6])[-1]
    target.cache.rewind(3)
    again = target.forward([4, 5, 6])[-1]
    assert np.abs(ref - again).max() < 1e-5
    with pytest.raises(ValueError, match="cannot rewind 99 of 6"):
        target.cache.rewind(99)


def _greedy(gen, **kw):
    # Tiny drafts cost as much as tiny targets, so a cached device profile would (rightly) stop
    # the model from drafting: these tests pin verification, so they use the heuristic length.
    gen.use_profiles = False
    return gen.generate(PROMPT, max_tokens=48, **kw)


@pytest.mark.parametrize("tree", [False, True])
def test_speculative_greedy_equals_plain(target, draft, tree):
    plain = _greedy(Generator(target))
    spec = _greedy(Generator(target, draft, tree=tree, drafter="model"))
    assert spec.token_ids == plain.token_ids
    assert spec.text == plain.text
    st = spec.stats
    assert 0 < st.accepted < st.proposed, "a different draft must be partly rejected"
    assert st.verify_passes < plain.stats.verify_passes


def test_self_draft_accepts_everything(target, self_draft):
    spec = _greedy(Generator(target, self_draft, tree=False, drafter="model"))
    assert spec.stats.acceptance_rate == 1.0
    assert spec.token_ids == _greedy(Generator(target)).token_ids


@pytest.mark.parametrize("name", ["ngram", "recycle", "mixed", "auto"])
def test_every_drafter_greedy_equals_plain(target, draft, name):
    plain = _greedy(Generator(target))
    spec = _greedy(Generator(target, None if name in ("ngram", "recycle") else draft, drafter=name))
    assert spec.token_ids == plain.token_ids and spec.stats.proposed > 0


@pytest.mark.parametrize("name", ["ngram", "mixed"])
def test_model_free_and_composed_sampling_is_exact(target, draft, name):
    """n-gram trees (deterministic nodes) and a merged n-gram + model + recycle tree keep
    sampling exact (same check as test_sampling_is_exact)."""
    from edgespec.runtime import drafters
    params = SamplingParams(temperature=0.9, top_k=4)
    gen = Generator(target, draft if name == "mixed" else None, drafter=name)
    rng = np.random.default_rng(5)
    runs, prompt, counts = 3000, [5, 17, 33, 2, 99, 5, 17, 33], {}
    for _ in range(runs):
        out = []
        for step in decode_steps(target, prompt, params, drafters.create(name, gen.draft_context(params)), budget=4, rng=rng):
            out.extend(step.tokens)
            if len(out) >= 3:
                break
        counts[tuple(out[:3])] = counts.get(tuple(out[:3]), 0) + 1
    dist = exact_distribution(target, params, 3, prompt)
    assert chi_square_pvalue(counts, dist, runs) > 1e-3


def _first_tokens(target, draft, params, n_tokens, tree, runs, seed):
    rng = np.random.default_rng(seed)
    prompt = [5, 17, 33, 2, 99]
    counts = {}
    for _ in range(runs):
        drafter = ModelDrafter(draft, params, tree=tree, rng=rng) if draft is not None else None
        out = []
        for step in decode_steps(target, prompt, params, drafter, budget=4, rng=rng):
            out.extend(step.tokens)
            if len(out) >= n_tokens:
                break
        key = tuple(out[:n_tokens])
        counts[key] = counts.get(key, 0) + 1
    return counts




@pytest.mark.parametrize("mode", ["plain", "chain", "tree"])
def test_sampling_is_exact(target, draft, mode):
    """First 3 tokens at temperature 0.9, top-k 4 (64 outcomes) over 3000 runs follow the target's
    exact distribution: chi-square p-value > 1e-3, and total variation < 0.10 (sampling noise alone
    gives ~0.06 at this size: 64 cells, 3000 draws)."""
    params = SamplingParams(temperature=0.9, top_k=4)
    runs = 3000
    counts = _first_tokens(target, None if mode == "plain" else draft, params, 3, mode == "tree", runs, 11)
    dist = exact_distribution(target, params, 3)
    tv = 0.5 * sum(abs(counts.get(k, 0) / runs - dist.get(k, 0.0)) for k in set(dist) | set(counts))
    assert chi_square_pvalue(counts, dist, runs) > 1e-3
    assert tv < 0.10


def test_sampling_test_has_power(target):
    """The same check rejects a sampler that is slightly off (temperature 1.2 instead of 0.9)."""
    runs = 3000
    counts = _first_tokens(target, None, SamplingParams(temperature=1.2, top_k=4), 3, False, runs, 11)
    dist = exact_distribution(target, SamplingParams(temperature=0.9, top_k=4), 3)
    assert chi_square_pvalue(counts, dist, runs) < 1e-3


def test_stop_string_and_max_tokens(target):
    gen = Generator(target)
    full = gen.generate(PROMPT, max_tokens=30)
    assert full.finish_reason == "length" and full.stats.new_tokens == 30
    stop = full.text[5:8]
    cut = gen.generate(PROMPT, max_tokens=30, stop=[stop])
    assert cut.text == full.text[:full.text.index(stop)] and cut.finish_reason == "stop"
    streamed = "".join(c.text for c in gen.stream(PROMPT, max_tokens=30))
    assert streamed == full.text


def test_chat_messages_use_template(target):
    gen = Generator(target)
    ids = gen.encode([{"role": "user", "content": "hi"}])
    assert gen.tokenizer.decode(ids).startswith("<|im_start|>user\nhi<|im_end|>")


# -- bad input ---------------------------------------------------------------------------------

def test_bad_sampling_values(target):
    gen = Generator(target)
    with pytest.raises(ValueError, match=r"temperature must be >= 0 \(got -0.5\)"):
        gen.generate(PROMPT, temperature=-0.5)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] \(got 1.5\)"):
        gen.generate(PROMPT, top_p=1.5)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] \(got 0"):
        gen.generate(PROMPT, top_p=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        gen.generate("")


def test_prompt_longer_than_context(tiny_bundle):
    gen = Generator(Session(tiny_bundle, SessionOptions(max_context=16)))
    with pytest.raises(ValueError, match="does not fit the 16-token context"):
        gen.generate("x " * 40)


def test_mismatched_tokenizer(tiny_bundle, tmp_path):
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    from tiny_models import make_hf_model
    hf = make_hf_model(tmp_path / "other", "llama", seed=3, vocab_size=300, train_steps=0)
    export(str(hf), tmp_path / "b", ExportOptions(recipe=Recipe("fp32")))
    with pytest.raises(EdgespecError, match="cannot draft for .*vocabulary 300 vs target 320; tokenizer sha256.*--drafter cross"):
        Generator(Session(tiny_bundle), Session(tmp_path / "b"))


def _run_cli(*args):
    from edgespec.apps.cli import cli
    return CliRunner().invoke(cli, ["run", *map(str, args)])


def test_cli_run_streams_and_reports(tiny_bundle, tiny_draft_bundle):
    r = _run_cli(PROMPT, "--target", tiny_bundle, "--draft", tiny_draft_bundle, "--raw", "--max-tokens", 20)
    assert r.exit_code == 0, r.output
    plain = Generator(Session(tiny_bundle)).generate(PROMPT, max_tokens=20)
    assert plain.text in r.output and "tok/s" in r.output


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature must be >= 0 (got -1.0)"),
    (["--top-p", "2"], "top_p must be in (0, 1] (got 2.0)"),
])
def test_cli_bad_values(tiny_bundle, args, message):
    r = _run_cli(PROMPT, "--target", tiny_bundle, "--draft", "none", *args)
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output


def test_cli_missing_manifest(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"")
    r = _run_cli(PROMPT, "--target", tmp_path, "--draft", "none")
    assert r.exit_code == 1 and "has no edgespec.json" in r.output and "Traceback" not in r.output


def test_reused_prompt_cache_gives_same_tokens(tiny_bundle):
    """A second turn that extends the first reuses its KV rows and generates what a fresh run does."""
    fresh = Generator(Session(tiny_bundle))
    chat = Generator(Session(tiny_bundle), reuse_cache=True)
    first = chat.generate(PROMPT, max_tokens=12)
    second_prompt = PROMPT + first.text + "\ndef sub(a, b):"
    second = chat.generate(second_prompt, max_tokens=12)
    assert second.stats.cached_prompt_tokens > len(chat.encode(PROMPT)) - 1
    assert second.token_ids == fresh.generate(second_prompt, max_tokens=12).token_ids
    # an abandoned stream leaves the cache consistent for the next call
    for _ in chat.stream(second_prompt, max_tokens=12):
        break
    assert chat.generate(second_prompt, max_tokens=12).token_ids == second.token_ids


def test_recycle_table_stays_within_its_bound(target):
    """Token recycling's table is fixed-size: int32 [vocab, 8], whatever the generation length."""
    gen = Generator(target, drafter="recycle")
    bound = target.vocab_size * 8 * 4
    gen.generate(PROMPT, max_tokens=200)
    assert gen.recycler.nbytes == bound
    assert (gen.recycler.table >= 0).any()
    gen.generate(PROMPT + " x", max_tokens=200)
    assert gen.recycler.nbytes == bound


def test_self_speculation_with_a_shallow_copy(tiny_hf, target, draft, tmp_path):
    """`export --layers 0` makes a 1-layer copy of the 2-layer target; as a 'self' draft it is
    lossless, and its logits match the truncated torch model (the export's own parity check)."""
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    from edgespec.runtime.session import bundle_logits
    m = export(str(tiny_hf), tmp_path / "shallow", ExportOptions(recipe=Recipe("fp32"), layers="0", parity=bundle_logits))
    assert m.num_layers == 1 and m.layers_kept == [0] and m.role == "draft"
    assert m.parity["max_abs_diff"] < 1e-4
    shallow = Session(tmp_path / "shallow")
    spec = _greedy(Generator(target, shallow, drafter="self"))
    assert spec.token_ids == _greedy(Generator(target)).token_ids and spec.stats.proposed > 0
    with pytest.raises(EdgespecError, match="drafter 'self' needs a draft exported from the target"):
        Generator(target, draft, drafter="self").generate(PROMPT, max_tokens=4)


def test_layers_spec_errors():
    from edgespec.export.layers import parse_layers
    assert parse_layers("0-2,5", 8) == [0, 1, 2, 5]
    with pytest.raises(EdgespecError, match="outside the model's layers 0-7"):
        parse_layers("0-8", 8)
    with pytest.raises(EdgespecError, match="is not N or N-M"):
        parse_layers("a-b", 8)


def test_windowed_draft_stays_lossless(target, draft):
    """A draft reading only the last 4 prompt tokens proposes worse guesses, never other output."""
    plain = _greedy(Generator(target))
    gen = Generator(target, draft, tree=False, drafter="model")
    gen.use_profiles = False
    params = SamplingParams()
    drafter = ModelDrafter(draft, params, window=4)
    out = []
    for step in decode_steps(target, gen.encode(PROMPT), params, drafter, budget=4):
        out.extend(step.tokens)
        if len(out) >= 48:
            break
    assert out[:48] == plain.token_ids
    ids = gen.encode(PROMPT)
    assert drafter._offset == len(ids) + 1 - 4  # fixed at the first proposal: prompt + first token
    assert draft.history == (ids + out)[drafter._offset:drafter._offset + len(draft.history)]


def test_draft_far_behind_restarts_from_its_window(target, draft):
    """When other drafters drafted many passes, the model drafter reads the last `rejoin`
    tokens afresh instead of all it missed, and output stays plain greedy's."""
    plain = _greedy(Generator(target))
    gen = Generator(target, draft, tree=False, drafter="model")
    params = SamplingParams()
    drafter = ModelDrafter(draft, params, window=4, rejoin=4)
    ids = gen.encode(PROMPT)

    out, offsets = [], set()
    for step in decode_steps(target, ids, params, EveryNthPass(drafter, 10), budget=4):
        out.extend(step.tokens)
        offsets.add(drafter._offset)
        if len(out) >= 48:
            break
    assert out[:48] == plain.token_ids
    assert len(offsets) > 2  # it restarted more than once
    assert len(draft.history) <= 4 + 4  # rejoin tokens plus one proposal's, not all it missed


def test_a_generation_tells_auto_where_it_stops_and_how_sure_the_target_is(target):
    """Auto weighs the model's entry over the tokens left before max_tokens and from the
    target's top-1 probabilities at the tokens it emitted: the stream hands it both."""
    gen = Generator(target, drafter="auto")  # lookup alone: every pass shows the target's rows
    gen.use_profiles = False
    seen = []

    def watch(auto):
        observe = auto.observe

        def watched(report):
            observe(report)
            seen.append((auto.end, auto.target_confidence))
        auto.observe = watched
        return auto
    gen.drafter_wrapper = watch
    gen.generate(PROMPT, max_tokens=9)
    assert seen and all(end == len(gen.encode(PROMPT)) + 9 for end, _ in seen)
    assert all(0.0 < confidence <= 1.0 for _, confidence in seen)
