"""Fill-in-the-middle: prompt assembly from the tokenizer's special tokens, the suffix stop,
lossless lookup over a FIM prompt, and the three ways in (`run --suffix`, /infill, suffix).

CI has no Qwen bundle: `fim_bundle` is the tiny model with Qwen2.5-Coder's FIM tokens in its
tokenizer (its last six merges turned into them). The Qwen checks run where
EDGESPEC_QWEN_BUNDLE names a Qwen2.5-Coder bundle folder (e.g. the 0.5B preset's).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgespec.contract.errors import InputError

FIM_TOKENS = ["<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
FIRST_FIM_ID = 311  # the tiny tokenizer's merges 311..316 become the FIM tokens, in Qwen's order
PREFIX = "def wrap(text, width=70):\n    "
SUFFIX = "\n    return lines\n"
QWEN = Path(os.environ.get("EDGESPEC_QWEN_BUNDLE", "/nonexistent"))
needs_qwen = pytest.mark.skipif(not (QWEN / "edgespec.json").is_file(),
                                reason="set EDGESPEC_QWEN_BUNDLE to a Qwen2.5-Coder bundle folder")


def add_fim_tokens(hf: Path) -> None:
    """Turn the tokenizer's last len(FIM_TOKENS) merges into the FIM special tokens, ids kept:
    their vocabulary entries renamed, their merges dropped (no later merge uses them), and
    the tokens added as specials in tokenizer.json and tokenizer_config.json alike (`tokenizers`
    keeps an added token's id only where the vocabulary has the token)."""
    path = hf / "tokenizer.json"
    data = json.loads(path.read_text())
    model = data["model"]
    ids = range(FIRST_FIM_ID, FIRST_FIM_ID + len(FIM_TOKENS))
    gone = {t for t, i in model["vocab"].items() if i in ids}
    assert len(gone) == len(FIM_TOKENS)
    names = dict(zip(ids, FIM_TOKENS))
    model["vocab"] = {names.get(i, t): i for t, i in model["vocab"].items()}
    model["merges"] = [m for m in model["merges"] if "".join(m) not in gone and not set(m) & gone]
    data["added_tokens"] += [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for i, t in zip(ids, FIM_TOKENS)]
    path.write_text(json.dumps(data))
    config_path = hf / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    decoder = config.setdefault("added_tokens_decoder", {})
    for i, t in zip(ids, FIM_TOKENS):
        decoder[str(i)] = {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True}
    config_path.write_text(json.dumps(config))


@pytest.fixture(scope="session")
def fim_bundle(tiny_hf, tmp_path_factory) -> Path:
    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    hf = tmp_path_factory.mktemp("hf") / "qwen2-fim"
    shutil.copytree(tiny_hf, hf)
    add_fim_tokens(hf)
    out = tmp_path_factory.mktemp("bundles") / "qwen2-fim"
    export(str(hf), out, ExportOptions(recipe=Recipe("fp32"), force=True))
    return out


@pytest.fixture(scope="module")
def gen(fim_bundle):
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    return Generator(Session(fim_bundle))


def encode(gen, text: str) -> list[int]:
    return gen.tokenizer.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------- the prompt

def test_prompt_ids_from_the_tokenizers_special_tokens(gen):
    from edgespec.runtime.fim import fim_tokens, prompt_ids
    tokens = fim_tokens(gen.tokenizer)
    pre, mid, suf, pad, repo, sep = range(FIRST_FIM_ID, FIRST_FIM_ID + 6)
    assert (tokens.prefix, tokens.middle, tokens.suffix) == (pre, mid, suf)
    assert (tokens.file_sep, tokens.repo_name) == (sep, repo)
    assert tokens.end == {pre, mid, suf, pad, repo, sep, gen.tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    ids = prompt_ids(gen.tokenizer, tokens, PREFIX, SUFFIX)
    assert ids == [pre, *encode(gen, PREFIX), suf, *encode(gen, SUFFIX), mid]
    # the special tokens split the text: the same ids as the documented text encoded whole
    assert ids == encode(gen, f"<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>")
    extra = [("util.py", "def helper():\n    pass"), ("README", "")]
    ids = prompt_ids(gen.tokenizer, tokens, PREFIX, SUFFIX, extra)
    assert ids == [repo, *encode(gen, "myproject\n"), sep, *encode(gen, "util.py\ndef helper():\n    pass\n"),
                   sep, *encode(gen, "README\n"), sep, *encode(gen, "filename\n"),
                   pre, *encode(gen, PREFIX), suf, *encode(gen, SUFFIX), mid]
    assert gen.tokenizer.decode(ids) == (
        "<|repo_name|>myproject\n<|file_sep|>util.py\ndef helper():\n    pass\n<|file_sep|>README\n"
        f"<|file_sep|>filename\n<|fim_prefix|>{PREFIX}<|fim_suffix|>{SUFFIX}<|fim_middle|>")


def test_starcoder_spelling_and_missing_file_separator(gen):
    from edgespec.runtime.fim import FimTokens, fim_tokens, prompt_ids

    class Vocab:  # a tokenizer that knows only StarCoder2's FIM tokens
        name = "starcoder-like"
        ids = {"<fim_prefix>": 1, "<fim_middle>": 2, "<fim_suffix>": 3, "<fim_pad>": 4}

        def convert_tokens_to_ids(self, token):
            return self.ids.get(token)

    tokens = fim_tokens(Vocab())
    assert tokens == FimTokens(prefix=1, suffix=3, middle=2, file_sep=None, repo_name=None, end=frozenset({1, 2, 3, 4}))
    with pytest.raises(InputError) as e:
        prompt_ids(gen.tokenizer, tokens, "a", "b", [("x.py", "x = 1")])
    assert str(e.value) == "qwen2-fim has no file separator token: give the FIM prompt without extra files"


@pytest.mark.parametrize("extra, message", [
    ("x.py", "extra files must be a list of (filename, text) pairs (got str)"),
    ([("x.py", 1)], "extra file 0 must be a (filename, text) pair of strings (got ('x.py', 1))"),
])
def test_bad_extra_files_refused(gen, extra, message):
    with pytest.raises(InputError) as e:
        gen.generate_fim(PREFIX, SUFFIX, extra, max_tokens=2)
    assert str(e.value) == message


def test_bundle_without_fim_tokens_refuses(tiny_bundle):
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    with pytest.raises(InputError) as e:
        Generator(Session(tiny_bundle)).generate_fim(PREFIX, SUFFIX)
    assert str(e.value) == (
        "qwen2-fp32 cannot fill in the middle: its tokenizer lacks <|fim_prefix|>, <|fim_suffix|>, "
        "<|fim_middle|>; use a code model trained for it (e.g. Qwen2.5-Coder) or complete without a suffix")


@needs_qwen
def test_qwen_prompt_ids():
    from edgespec.runtime.fim import fim_tokens, prompt_ids
    from edgespec.runtime.tokenizer import BundleTokenizer
    tok = BundleTokenizer(QWEN)
    tokens = fim_tokens(tok)
    assert (tokens.prefix, tokens.middle, tokens.suffix, tokens.file_sep, tokens.repo_name) == (
        151659, 151660, 151661, 151664, 151663)
    assert tokens.end >= {151643, 151662}  # <|endoftext|>, <|fim_pad|>
    assert prompt_ids(tok, tokens, "def f(x):\n    ", "\n    return y\n") == [
        151659, 750, 282, 2075, 982, 257, 151661, 198, 262, 470, 379, 198, 151660]


# ---------------------------------------------------------------- the suffix stop

def feed_all(stop, pieces) -> tuple[str, bool]:
    out = []
    for piece in pieces:
        text, hit = stop.feed(piece)
        out.append(text)
        if hit:
            return "".join(out), True
    return "".join(out) + stop.flush(), False


@pytest.mark.parametrize("suffix, starts_line, middle, want, reached", [
    # the repeat of the suffix's first line is cut, the lines before it kept
    ("    return result\n", True, "    result = []\n    return result\n\ndef g():", "    result = []\n", True),
    # the blank lines the suffix opens with are cut with it
    ("\n\n    return result\n", False, "x = 1\n\n    return result", "x = 1", True),
    ("\n\n    return result\n", False, "x = 1\n\n\n    return result", "x = 1\n", True),
    # the middle may repeat the suffix at once
    ("    return result\n", True, "    return result", "", True),
    # only at a line start: mid-line, the text is the middle's own
    ("    return result\n", True, "    x = return result\n", "    x = return result\n", False),
    # the first line starts no line when the cursor stands after code
    ("return result\n", False, "return result", "return result", False),
    # a short line (under 8 non-space characters) is too common to stop on
    ("    pass\n", True, "    x = 1\n    pass\n", "    x = 1\n    pass\n", False),
    # a middle that only starts like the suffix is emitted whole in the end
    ("    return result\n", True, "    return res", "    return res", False),
])
def test_suffix_stop_cuts_the_repeat(suffix, starts_line, middle, want, reached):
    from edgespec.runtime.fim import SuffixStop
    for pieces in ([middle], list(middle)):  # whole, and one character at a time
        assert feed_all(SuffixStop(suffix, starts_line), pieces) == (want, reached)


def test_suffix_stop_holds_back_only_what_may_be_the_repeat():
    from edgespec.runtime.fim import SuffixStop
    stop = SuffixStop("\n    return result\n", at_line_start=True)
    assert stop.feed("    x = 1\n") == ("    x = 1", False)  # the newline may belong to the suffix
    assert stop.feed("    ret") == ("", False)
    assert stop.feed("ry = 2\n") == ("\n    retry = 2", False)


def test_generate_fim_stops_at_the_suffix(gen):
    """The tiny model writes `_ss....` whatever the suffix: with the suffix starting so, the raw
    generation runs to max_tokens and the middle is cut where it begins."""
    from edgespec.runtime.fim import fim_tokens, prompt_ids
    prefix, suffix = "x = 1\n", "_ss..........\n"
    tokens = fim_tokens(gen.tokenizer)
    raw = gen.generate(prompt_ids(gen.tokenizer, tokens, prefix, suffix), max_tokens=20, end_tokens=tokens.end)
    assert raw.text.startswith("_ss..........") and raw.finish_reason == "length"
    middle = gen.generate_fim(prefix, suffix, max_tokens=20)
    assert (middle.text, middle.finish_reason) == ("", "stop")


@needs_qwen
def test_qwen_middle_stops_at_the_suffix():
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    g = Generator(Session(QWEN))
    prefix, suffix = 'import os\n\ndef list_py(folder):\n    """Python files in folder."""\n', "    return result\n"
    middle = g.generate_fim(prefix, suffix, max_tokens=60)
    assert middle.finish_reason == "stop" and middle.text.startswith("    result = []\n")
    assert middle.text.endswith("\n") and "return result" not in middle.text


# ---------------------------------------------------------------- lookup over the FIM prompt

def test_lookup_drafts_from_the_suffix(gen):
    """The n-gram drafter indexes the whole prompt: a middle that reaches the suffix's first
    tokens gets the rest of the suffix proposed."""
    from edgespec.runtime.fim import fim_tokens, prompt_ids
    from edgespec.runtime.ngram import NgramDrafter
    suffix = "\n    lines = wrapper.wrap(text)\n    return lines\n"
    ids = prompt_ids(gen.tokenizer, fim_tokens(gen.tokenizer), PREFIX, suffix)
    suffix_ids = encode(gen, suffix)
    tree = NgramDrafter().propose(ids + suffix_ids[:4], budget=8)
    assert tree.tokens[1:5] == suffix_ids[4:8]


@pytest.mark.parametrize("drafter", ["ngram", "auto"])
def test_fim_with_lookup_equals_plain(fim_bundle, gen, drafter):
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    extra = [("wrap.py", "def wrap(text, width=70):\n    return TextWrapper(width=width).wrap(text)\n")]
    plain = gen.generate_fim(PREFIX, SUFFIX, extra, max_tokens=40)
    spec = Generator(Session(fim_bundle), drafter=drafter).generate_fim(PREFIX, SUFFIX, extra, max_tokens=40)
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    assert spec.stats.proposed > 0 and spec.stats.accepted > 0


@needs_qwen
@pytest.mark.parametrize("drafter", ["ngram", "auto"])
def test_qwen_fim_with_lookup_equals_plain(drafter):
    """A middle that is a near copy of a function in the prompt (bisect_left's loop, with
    bisect_right's in the prefix): lookup accepts many tokens, and the output is plain greedy's."""
    import bisect
    import inspect

    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    source = inspect.getsource(bisect)
    start = source.index("def bisect_right")
    cut = source.index("    return lo\n", source.index("def bisect_left"))
    gap = source.rindex("    if key is None:\n", 0, cut)
    prefix, suffix = source[start:gap], source[cut:]
    target = Session(QWEN)
    plain = Generator(target).generate_fim(prefix, suffix, max_tokens=48)
    spec = Generator(target, drafter=drafter).generate_fim(prefix, suffix, max_tokens=48)
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    assert spec.stats.accepted > 0


# ---------------------------------------------------------------- the CLI

def test_run_with_suffix_prints_the_middle(fim_bundle, gen):
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    r = CliRunner().invoke(cli, ["run", PREFIX, "--suffix", SUFFIX, "--target", str(fim_bundle), "--draft", "none",
                                 "--max-tokens", "12", "--no-prompt-cache"])
    assert r.exit_code == 0, r.output
    want = gen.generate_fim(PREFIX, SUFFIX, max_tokens=12)
    assert r.stdout == want.text + "\n"
    assert "12 tokens" in r.stderr and "| first token " in r.stderr and "s, total " in r.stderr


def test_run_with_suffix_on_a_bundle_without_fim_tokens(tiny_bundle):
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    r = CliRunner().invoke(cli, ["run", PREFIX, "--suffix", SUFFIX, "--target", str(tiny_bundle), "--draft", "none"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "qwen2-fp32 cannot fill in the middle: its tokenizer lacks <|fim_prefix|>" in r.output


# ---------------------------------------------------------------- the server

@pytest.fixture(scope="module")
def fim_server(fim_bundle):
    from test_serve import Server
    s = Server("--target", str(fim_bundle), "--draft", "none", "--drafter", "ngram", "--api-key", "sesame")
    yield s
    s.stop()


def infill(server, body: dict, key: str | None = "sesame"):
    from test_serve import post
    return post(server.url + "/infill", json.dumps(body).encode(), key)


def test_infill_answers_like_llama_cpp(fim_server, fim_bundle, gen):
    extra = [{"filename": "wrap.py", "text": "import textwrap\n"}]
    code, answer = infill(fim_server, {"input_prefix": PREFIX[:-4], "prompt": PREFIX[-4:], "input_suffix": SUFFIX,
                                       "input_extra": extra, "n_predict": 16, "temperature": 0,
                                       "cache_prompt": True, "samplers": ["top_k", "infill"]})  # llama.vim's hints
    assert code == 200, answer
    want = gen.generate_fim(PREFIX, SUFFIX, [("wrap.py", "import textwrap\n")], max_tokens=16)
    assert set(answer) == {"content", "stop", "model", "tokens_predicted", "tokens_evaluated", "tokens_cached",
                           "truncated", "timings", "edgespec"}
    assert answer["content"] == want.text and answer["stop"] is True and answer["model"] == fim_bundle.name
    assert answer["tokens_predicted"] == len(want.token_ids) == 16
    assert answer["tokens_evaluated"] == want.stats.prompt_tokens and answer["truncated"] is False
    assert set(answer["timings"]) == {"prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                                      "predicted_per_second"}
    assert answer["timings"]["predicted_n"] == 16 and answer["timings"]["prompt_ms"] > 0
    assert answer["edgespec"]["drafter"] == "ngram"


def test_infill_streams_events(fim_server, gen):
    import urllib.request
    body = {"input_prefix": PREFIX, "input_suffix": SUFFIX, "n_predict": 16, "temperature": 0, "stream": True}
    req = urllib.request.Request(fim_server.url + "/infill", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Authorization": "Bearer sesame"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: "):]) for line in r.read().decode().splitlines() if line]
    *pieces, last = events
    assert pieces and all(e == {"content": e["content"], "stop": False} and e["content"] for e in pieces)
    assert "".join(e["content"] for e in pieces) == gen.generate_fim(PREFIX, SUFFIX, max_tokens=16).text
    assert last["content"] == "" and last["stop"] is True and last["tokens_predicted"] == 16


def test_infill_needs_the_api_key(fim_server):
    code, answer = infill(fim_server, {"input_prefix": PREFIX}, key=None)
    assert code == 401 and answer["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("body, param, message", [
    ({"n_predict": 0}, "n_predict", "n_predict=0 would generate nothing; give -1 (no limit) or a count >= 1"),
    ({"stop": [""]}, "stop", "stop strings must be non-empty (got [''])"),
    ({"model": "nope"}, "model", "model 'nope' does not exist; this server has ['qwen2-fim']"),
    ({"input_extra": [{"filename": "x.py"}]}, "input_extra.0.text", "input_extra.0.text: Field required"),
])
def test_infill_bad_requests(fim_server, body, param, message):
    code, answer = infill(fim_server, {"input_prefix": PREFIX, **body})
    assert code in (400, 404), answer
    assert answer["error"]["param"] == param and answer["error"]["message"].startswith(message)


def test_completions_with_suffix(fim_server, fim_bundle, gen):
    client, model = fim_server.client("sesame"), fim_bundle.name
    plain = client.completions.create(model=model, prompt=PREFIX, suffix=SUFFIX, temperature=0, max_tokens=16)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt=PREFIX, suffix=SUFFIX, temperature=0, max_tokens=16, stream=True) if c.choices)
    want = gen.generate_fim(PREFIX, SUFFIX, max_tokens=16)
    assert plain.choices[0].text == streamed == want.text
    assert plain.usage.prompt_tokens == want.stats.prompt_tokens
    assert plain.choices[0].finish_reason == want.finish_reason


@pytest.fixture(scope="module")
def plain_server(tiny_bundle):
    from test_serve import Server
    s = Server("--target", str(tiny_bundle), "--draft", "none")
    yield s
    s.stop()


def test_fim_on_a_bundle_without_fim_tokens_is_a_400(plain_server, tiny_bundle):
    message = ("qwen2-fp32 cannot fill in the middle: its tokenizer lacks <|fim_prefix|>, <|fim_suffix|>, "
               "<|fim_middle|>; use a code model trained for it (e.g. Qwen2.5-Coder) or complete without a suffix")
    code, answer = infill(plain_server, {"input_prefix": PREFIX, "input_suffix": SUFFIX}, key=None)
    assert (code, answer["error"]["message"]) == (400, message)
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError) as e:
        plain_server.client().completions.create(model=tiny_bundle.name, prompt=PREFIX, suffix=SUFFIX)
    assert e.value.body["message"] == message
