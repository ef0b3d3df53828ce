"""Runtime trust: exact seeded speculative sampling, one generator shared safely, refused input.

Each test pins a case where the runtime once gave wrong output without a word or failed
inside a library: cloned random streams, two streams on one KV cache, `stop=""`, bytes
read as token ids, NaN from a tiny temperature, a lone surrogate in the tokenizer.
"""

from __future__ import annotations

import gc
import shutil
import threading
from math import erf, sqrt

import numpy as np
import pytest

from edgespec.contract.errors import EdgespecError, InputError
from edgespec.runtime.api import Generator
from edgespec.runtime.drafters import top_candidates
from edgespec.runtime.sampling import SamplingParams, probabilities
from edgespec.runtime.session import Session, SessionOptions
from edgespec.runtime.tokenizer import BundleTokenizer
from exactness import chi_square_pvalue, exact_distribution

PROMPT = "def add(a, b):\n    return"
OTHER = "class Stack:\n    def push(self, x):"


@pytest.fixture(scope="module")
def gen(tiny_bundle):
    return Generator(Session(tiny_bundle))


@pytest.fixture(scope="module")
def self_spec(tiny_bundle):
    """The tiny target drafting for itself: acceptance near 1, so a drafter whose random
    stream copies the verifier's shows at once."""
    spec = Generator(Session(tiny_bundle), Session(tiny_bundle), tree=False, drafter="model")
    spec.use_profiles = False
    return spec


# -- seeded speculative sampling --------------------------------------------------------------

def _upper_tail(stat: float, df: int) -> float:
    """P(chi2_df >= stat), Wilson-Hilferty (scipy is not a dependency)."""
    z = ((stat / df) ** (1 / 3) - (1 - 2 / (9 * df))) / sqrt(2 / (9 * df))
    return 0.5 * (1 - erf(z / sqrt(2)))


def two_sample_chi_square(a: dict, b: dict) -> float:
    """p-value that two equal-sized samples of sequences come from one distribution
    (Pearson, cells seen fewer than 10 times in both pooled)."""
    assert sum(a.values()) == sum(b.values())
    stat, cells, pooled_a, pooled_b = 0.0, 0, 0, 0
    for key in set(a) | set(b):
        x, y = a.get(key, 0), b.get(key, 0)
        if x + y < 10:
            pooled_a, pooled_b = pooled_a + x, pooled_b + y
        else:
            stat, cells = stat + (x - y) ** 2 / (x + y), cells + 1
    if pooled_a + pooled_b:
        stat, cells = stat + (pooled_a - pooled_b) ** 2 / (pooled_a + pooled_b), cells + 1
    return _upper_tail(stat, cells - 1)


def _first_tokens(generator, seeds, sampling) -> dict:
    counts = {}
    for seed in seeds:
        key = tuple(generator.generate(PROMPT, max_tokens=3, seed=seed, **sampling).token_ids)
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_seeded_speculative_sampling_is_exact(gen, self_spec):
    """Seeded speculative output follows the plain distribution: drafter and verifier draw
    from independent streams of one seed (they once both ran default_rng(seed): p = 0)."""
    sampling = dict(temperature=1.0, top_k=4)
    runs = 2000
    spec = _first_tokens(self_spec, range(runs), sampling)
    plain = _first_tokens(gen, range(runs, 2 * runs), sampling)  # seeds of its own: independent
    assert two_sample_chi_square(plain, spec) > 1e-3
    exact = exact_distribution(gen.target, SamplingParams(**sampling), 3, gen.encode(PROMPT))
    assert chi_square_pvalue(spec, exact, runs) > 1e-3
    # ... and a seed still fixes the output
    again = [self_spec.generate(PROMPT, max_tokens=24, seed=11, **sampling).token_ids for _ in range(2)]
    assert again[0] == again[1]


# -- one generator, several streams -----------------------------------------------------------

def test_two_threads_on_one_generator_get_their_own_tokens(gen):
    """A second thread's stream waits for the first to close; both get sequential runs' tokens."""
    prompts = [PROMPT, OTHER]
    expected = [gen.generate(p, max_tokens=24).token_ids for p in prompts]
    results, errors = {}, []
    start = threading.Barrier(2)

    def work(i):
        try:
            start.wait()
            results[i] = [gen.generate(prompts[i], max_tokens=24).token_ids for _ in range(4)]
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert results == {0: [expected[0]] * 4, 1: [expected[1]] * 4}


def test_other_thread_waits_for_an_open_stream(gen):
    expected = gen.generate(OTHER, max_tokens=12).token_ids
    first = gen.stream(PROMPT, max_tokens=12)
    next(first)
    got = []
    waiter = threading.Thread(target=lambda: got.append(gen.generate(OTHER, max_tokens=12).token_ids))
    waiter.start()
    waiter.join(timeout=0.5)
    assert waiter.is_alive() and not got  # waiting for `first`
    rest = [t for chunk in first for t in chunk.token_ids]  # runs to its end, then releases
    waiter.join(timeout=60)
    assert got == [expected] and rest


BUSY = ("generator busy: another stream() of this Generator is still open; "
        "finish or close() it first")


def test_interleaved_streams_in_one_thread_are_refused(gen):
    expected = gen.generate(PROMPT, max_tokens=12).token_ids
    first = gen.stream(PROMPT, max_tokens=12)
    tokens = list(next(first).token_ids)
    second = gen.stream(OTHER, max_tokens=12)
    with pytest.raises(EdgespecError) as e:
        next(second)
    assert str(e.value) == BUSY
    tokens += [t for chunk in first for t in chunk.token_ids]  # the open stream is untouched
    assert tokens == expected
    # closed and abandoned streams release the generator
    third = gen.stream(OTHER, max_tokens=12)
    next(third)
    third.close()
    fourth = gen.stream(OTHER, max_tokens=12)
    next(fourth)
    del fourth
    gc.collect()
    assert gen.generate(PROMPT, max_tokens=12).token_ids == expected


# -- refused input ----------------------------------------------------------------------------

EMPTY_STOP = ("stop strings must be non-empty (got ''): an empty one would end generation after the "
              "first token; leave it out")


@pytest.mark.parametrize("stop, message", [
    ("", EMPTY_STOP),
    (["\n", ""], EMPTY_STOP),
    ([None], "stop strings must be str (got None at index 0)"),
    (["x", 3], "stop strings must be str (got 3 at index 1)"),
    (5, "stop must be a string or a list of strings (got int 5)"),
])
def test_bad_stop_strings(gen, stop, message):
    with pytest.raises(InputError) as e:
        gen.generate(PROMPT, max_tokens=4, stop=stop)
    assert str(e.value) == message


@pytest.mark.parametrize("prompt, message", [
    (b"def add", "prompt is bytes; decode it to text first (prompt.decode('utf-8'))"),
    (bytearray(b"def add"), "prompt is bytearray; decode it to text first (prompt.decode('utf-8'))"),
    (None, "prompt must be text, token ids or a list of messages (got NoneType)"),
    (42, "prompt must be text, token ids or a list of messages (got int)"),
    ([{"role": "user", "content": None}],
     "message 0: content must be text or a list of text parts (got NoneType)"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": 7}],
     "message 1: content must be text or a list of text parts (got int)"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}],
     "message 0: only text content parts are supported (part 0 has type 'image_url')"),
    ([{"role": "user", "content": [{"type": "text", "text": None}]}],
     "message 0: text part 0 needs a string 'text' (got NoneType)"),
    ([{"role": "user", "content": ["hi"]}],
     "message 0: content parts must be objects like {'type': 'text', 'text': ...} (part 0 is str)"),
    ([{"role": 1, "content": "hi"}], "message 0: role must be a string (got int)"),
    ([{"content": "hi"}], "message 0 needs 'role' and 'content' (got keys ['content'])"),
    (["hi"], "message 0 must be a dict with 'role' and 'content' (got str)"),
    ([1, "x"], "message 0 must be a dict with 'role' and 'content' (got int)"),
    ([5, 99999], "token ids must be in [0, 512) (got 99999 at index 1)"),
])
def test_bad_prompts(gen, prompt, message):
    with pytest.raises(InputError) as e:
        gen.encode(prompt)
    assert str(e.value) == message.replace("512", str(gen.target.vocab_size))


def test_text_content_parts_are_joined(gen):
    parts = [{"role": "user", "content": [{"type": "text", "text": "def add"},
                                          {"type": "text", "text": "(a, b):"}]}]
    assert gen.encode(parts) == gen.encode([{"role": "user", "content": "def add(a, b):"}])


@pytest.mark.parametrize("text, index", [("ab\ud800c", 2), ("\udcff", 0)])
def test_lone_surrogates_are_refused_at_the_tokenizer(gen, text, index):
    """A str with lone surrogates (bytes that were not UTF-8, decoded with surrogateescape)
    once raised TypeError inside `tokenizers`."""
    code = f"U+{ord(text[index]):04X}"
    with pytest.raises(InputError) as e:
        gen.generate(text, max_tokens=2)
    assert str(e.value) == (f"prompt is not valid Unicode text: lone surrogate {code} at index {index} "
                            f"(bytes that are not UTF-8?); give UTF-8 text")
    with pytest.raises(InputError) as e:
        gen.encode([{"role": "system", "content": "x"}, {"role": "user", "content": text}])
    assert str(e.value) == (f"message 1 is not valid Unicode text: lone surrogate {code} at index {index} "
                            f"(bytes that are not UTF-8?); give UTF-8 text")


def test_no_chat_template_suggests_raw(gen, tiny_bundle, tmp_path):
    folder = tmp_path / "plain-lm"
    folder.mkdir()
    shutil.copy(tiny_bundle / "tokenizer.json", folder)
    tokenizer = BundleTokenizer(folder)
    tokenizer.chat_template = None
    message = "plain-lm has no chat template: pass the prompt as plain text (CLI: --raw)"
    with pytest.raises(InputError) as e:
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert str(e.value) == message
    plain = Generator(gen.target)
    plain.tokenizer = tokenizer
    with pytest.raises(InputError) as e:
        plain.encode([{"role": "user", "content": "hi"}])
    assert str(e.value) == f"{gen.target.path.name} has no chat template: pass the prompt as plain text (CLI: --raw)"


# -- tiny temperatures, bad sampling values ---------------------------------------------------

@pytest.mark.parametrize("temperature", [1e-320, 1e-300])
def test_tiny_temperature_is_greedy(gen, self_spec, temperature):
    greedy = gen.generate(PROMPT, max_tokens=16).token_ids
    assert gen.generate(PROMPT, max_tokens=16, temperature=temperature, seed=1).token_ids == greedy
    assert self_spec.generate(PROMPT, max_tokens=16, temperature=temperature, seed=1).token_ids == greedy
    self_spec.tree = True  # drafts by top_candidates, not by sampling
    try:
        assert self_spec.generate(PROMPT, max_tokens=16, temperature=temperature, seed=1).token_ids == greedy
    finally:
        self_spec.tree = False
    logits = np.array([[1.0, 3.0, -2.0], [0.0, 0.0, 1e-6]], dtype=np.float32)
    p = probabilities(logits, SamplingParams(temperature=temperature, top_k=2))
    assert np.array_equal(p, [[0, 1, 0], [0, 0, 1]])
    top, probs = top_candidates(logits[0], 2, SamplingParams(temperature=temperature))  # a tree's drafts
    assert top.tolist() == [1, 0] and probs.tolist() == [1.0, 0.0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0 (got nan); use 0 for greedy decoding"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0 (got inf); use 0 for greedy decoding"),
    (dict(temperature="hot"), "temperature must be a finite number >= 0 (got 'hot'); use 0 for greedy decoding"),
    (dict(top_p=float("nan")), "top_p must be in (0, 1] (got nan); use 1 to disable it"),
    (dict(top_k=2.5), "top_k must be an integer >= 0 (got 2.5); 0 disables it"),
    (dict(seed=-1), "seed must be a non-negative integer or None (got -1)"),
    (dict(seed=1.5), "seed must be a non-negative integer or None (got 1.5)"),
    (dict(max_tokens=0), "max_tokens must be an integer >= 1 (got 0)"),
])
def test_bad_sampling_values_are_input_errors(gen, kwargs, message):
    with pytest.raises(InputError) as e:
        gen.generate(PROMPT, **kwargs)
    assert str(e.value) == message


def test_caller_errors_are_input_errors(gen, tiny_bundle):
    """Every ValueError a caller can cause is an InputError (still a ValueError)."""
    from edgespec.runtime import drafters
    from edgespec.runtime.cross_vocab import CrossVocabDrafter
    from edgespec.runtime.ngram import NgramDrafter
    from edgespec.runtime.tree import DraftTree
    with pytest.raises(InputError, match="unknown drafter 'nope'"):
        Generator(gen.target, drafter="nope")
    with pytest.raises(InputError, match="unknown drafter 'nope'"):
        drafters.create("nope", gen.draft_context(SamplingParams()))
    with pytest.raises(InputError, match="does not fit the 16-token context"):
        Generator(Session(tiny_bundle, SessionOptions(max_context=16))).generate("x " * 40)
    with pytest.raises(InputError, match="min_ngram <= max_ngram"):
        NgramDrafter(min_ngram=3, max_ngram=2)
    with pytest.raises(InputError, match="non-empty context"):
        NgramDrafter().propose([], 4)
    with pytest.raises(InputError, match="max_draft must be >= 1"):
        CrossVocabDrafter(gen.target, gen.tokenizer, gen.tokenizer, max_draft=0)
    with pytest.raises(InputError, match="parent 5 is not a node"):
        DraftTree(1).add(5, 2)
    with pytest.raises(InputError, match="max_nodes must be >= 0"):
        DraftTree(1).prune(-1)
    small = Session(tiny_bundle, SessionOptions(max_context=16))
    with pytest.raises(InputError, match="context full"):
        small.forward(list(range(20)))
    with pytest.raises(InputError, match="cannot rewind 3 of 0 cached tokens"):
        small.cache.rewind(3)
    with pytest.raises(InputError, match="prefill needs at least one token"):
        small.prefill([])
