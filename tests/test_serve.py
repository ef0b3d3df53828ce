"""`edgespec serve` as a real process on a free loopback port, driven by the official openai client."""

from __future__ import annotations

import json
import re
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

# The CLI in a subprocess (which sees the same package as the tests).
CLI = [sys.executable, "-c", "from edgespec.apps.cli import cli; cli()"]
MESSAGES = [{"role": "system", "content": "You write Python."},
            {"role": "user", "content": "def add(a, b):"}]


def build_slow_bundle(folder: Path) -> Path:
    """A wider random model with a 4096-token context whose EOS logit is pinned to 0 (its
    embedding row is zero): answers never end on their own and run for seconds, long enough
    to interrupt one or to keep the model busy while others queue."""
    if (folder / "edgespec.json").exists():
        return folder
    import torch
    import transformers
    from tiny_models import byte_tokenizer

    from edgespec.export.pipeline import ExportOptions, export
    from edgespec.export.recipes import Recipe
    tok = byte_tokenizer(320)
    config = transformers.Qwen2Config(
        vocab_size=320, hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=16,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[tok.eos_token_id] = 0
    hf = folder.with_name(folder.name + "-hf")
    model.save_pretrained(hf)
    tok.save_pretrained(hf)
    export(str(hf), folder, ExportOptions(recipe=Recipe("fp32"), force=True))
    return folder


@pytest.fixture(scope="session")
def slow_bundle(tmp_path_factory) -> Path:
    return build_slow_bundle(tmp_path_factory.getbasetemp() / "slow-bundle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, key: str | None = None) -> tuple[int, dict]:
    return post(url, None, key)


def post(url: str, body: bytes | None, key: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _wait(predicate, timeout=10.0):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


class Server:
    def __init__(self, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(os.environ["EDGESPEC_CACHE"]) / f"serve-{self.port}.log", "w+")
        self.proc = subprocess.Popen([*CLI, "serve", "--port", str(self.port), *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                if get(self.url + "/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.log.seek(0)
                raise RuntimeError(f"server did not start:\n{self.log.read()[-3000:]}")
            time.sleep(0.2)

    def health(self, model: str) -> dict:
        return get(self.url + "/health")[1]["models"][model]

    def client(self, key: str = "none") -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_draft_bundle):
    s = Server("--target", str(tiny_bundle), "--draft", str(tiny_draft_bundle))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def slow_server(slow_bundle):
    """One request at a time, one waiting; a key is required."""
    s = Server("--target", str(slow_bundle), "--draft", "none", "--queue-size", "1", "--api-key", "sesame",
               "--model-name", "slow")
    yield s
    s.stop()


def test_chat_completion_streamed_equals_plain_equals_generate(server, reference, tiny_bundle):
    client, model = server.client(), tiny_bundle.name
    plain = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=40)
    parts, last = [], None
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=40,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
        last = chunk
    direct = reference.generate(MESSAGES, max_tokens=40)
    text = plain.choices[0].message.content
    assert text and "".join(parts) == text == direct.text
    assert plain.choices[0].finish_reason == finish == direct.finish_reason
    assert plain.usage.prompt_tokens == last.usage.prompt_tokens == direct.stats.prompt_tokens
    assert plain.usage.completion_tokens == last.usage.completion_tokens == len(direct.token_ids)
    stats = plain.model_extra["edgespec"]
    assert stats["drafter"] != "none" and stats["proposed"] > 0 and stats["verify_passes"] > 0
    assert stats["decode_tok_s"] > 0


def test_completion_streamed_and_plain(server, reference, tiny_bundle):
    client, model, prompt = server.client(), tiny_bundle.name, "for i in range(10):\n"
    plain = client.completions.create(model=model, prompt=prompt, temperature=0, max_tokens=30)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt=prompt, temperature=0, max_tokens=30, stream=True) if c.choices)
    direct = reference.generate(prompt, max_tokens=30)
    assert plain.choices[0].text == streamed == direct.text
    assert plain.usage.total_tokens == direct.stats.prompt_tokens + len(direct.token_ids)
    # OpenAI's default for completions is 16 tokens
    assert client.completions.create(model=model, prompt=prompt, temperature=0).usage.completion_tokens <= 16


def test_models_and_health(server, tiny_bundle):
    assert [m.id for m in server.client().models.list()] == [tiny_bundle.name]
    assert server.health(tiny_bundle.name)["running"] == 0


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    (json.dumps({"model": "nope", "messages": MESSAGES}).encode(), 404, "model"),
    (json.dumps({"model": "@", "temperature": -1, "messages": MESSAGES}).encode(), 400, "temperature"),
    (json.dumps({"model": "@", "top_p": 0, "messages": MESSAGES}).encode(), 400, "top_p"),
    (json.dumps({"model": "@", "max_tokens": 0, "messages": MESSAGES}).encode(), 400, "max_tokens"),
    (json.dumps({"model": "@", "n": 2, "messages": MESSAGES}).encode(), 400, "n"),
    (json.dumps({"model": "@", "messages": []}).encode(), 400, "messages"),
    (json.dumps({"model": "@", "messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, "messages.0.role"),
    (json.dumps({"model": "@", "messages": [{"role": "user", "content": "x" * 4000}]}).encode(), 400, None),
])
def test_bad_requests_get_openai_errors(server, tiny_bundle, body, status, param):
    code, answer = post(server.url + "/v1/chat/completions", body.replace(b'"@"', f'"{tiny_bundle.name}"'.encode()))
    assert code == status, answer
    error = answer["error"]
    assert error["message"] and error["type"] and error["param"] == param
    _wait(lambda: server.health(tiny_bundle.name)["running"] == 0)  # the model is free again
    assert server.health(tiny_bundle.name)["queued"] == 0


def test_body_size_limit(server):
    """A declared body over the limit is refused before it is read."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 2000000\r\n\r\n{")
        data = b""
        while True:  # the reply may arrive in several segments; the server closes after it
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: *(\d+)", head, re.I)
            if length and len(body) >= int(length.group(1)):
                break
        head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["error"]["code"] == "request_too_large"


def test_openai_client_sees_errors(server):
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(model="gpt-4", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="does not fit"):
        server.client().completions.create(model=server.client().models.list().data[0].id, prompt="x" * 4000)


def test_api_key(slow_server):
    with pytest.raises(openai.AuthenticationError):
        slow_server.client("wrong").models.list()
    assert get(slow_server.url + "/v1/models")[0] == 401  # no key
    code, answer = get(slow_server.url + "/v1/models", key="sesame!")
    assert code == 401 and answer["error"]["code"] == "invalid_api_key"
    assert [m.id for m in slow_server.client("sesame").models.list()] == ["slow"]
    assert get(slow_server.url + "/health")[0] == 200  # open, for probes


def test_queue_then_429_and_disconnect_frees_the_model(slow_server):
    client = slow_server.client("sesame")
    before = slow_server.health("slow")
    # A: a long answer (~4000 tokens, many seconds); read its start, then keep it open
    a = client.chat.completions.create(model="slow", messages=MESSAGES, temperature=0, max_tokens=4000,
                                       stream=True)
    next(iter(a))
    assert slow_server.health("slow")["running"] == 1
    # B: waits its turn in the queue
    b_result = {}

    def ask_b():
        b_result["text"] = client.completions.create(model="slow", prompt="hello", temperature=0,
                                                     max_tokens=5).choices[0].text
    b = threading.Thread(target=ask_b)
    b.start()
    _wait(lambda: slow_server.health("slow")["queued"] == 1)
    # C: the queue is full
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="slow", messages=MESSAGES, max_tokens=5)
    assert int(e.value.response.headers["Retry-After"]) >= 1
    assert e.value.body["code"] == "rate_limit_exceeded"
    # A's client goes away: its generation stops, B runs
    t0 = time.time()
    a.close()
    b.join(20)
    assert not b.is_alive() and len(b_result["text"]) > 0
    assert time.time() - t0 < 5  # A alone would have run far longer
    _wait(lambda: slow_server.health("slow")["running"] == 0)
    after = slow_server.health("slow")
    assert after["served"] == before["served"] + 2 and after["cancelled"] == before["cancelled"] + 1
    assert after["queued"] == 0


def test_server_answer_equals_edgespec_run(server, tiny_bundle, tiny_draft_bundle):
    """The same single-turn question through `edgespec run` and the server gives the same text."""
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    question = MESSAGES[-1]["content"]
    r = CliRunner().invoke(cli, ["run", question, "--target", str(tiny_bundle), "--draft", str(tiny_draft_bundle),
                                 "--max-tokens", "40"])
    assert r.exit_code == 0, r.output
    served = server.client().chat.completions.create(
        model=tiny_bundle.name, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=40)
    assert served.choices[0].message.content and served.choices[0].message.content + "\n" in r.stdout


def _post_raw(url: str, body: bytes) -> tuple[int, str, dict]:
    """Status, content type and the JSON body, whatever the status."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers["Content-Type"], json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], json.loads(e.read())


@pytest.mark.parametrize("body, param, message", [
    (b"[" * 50_000 + b"]" * 50_000, None, "request body is nested too deeply"),
    (b"{not json", None, "request body is not valid JSON"),
    (b'{"model": "@"}', "messages", "messages: Field required"),
    (b'{"model": "@", "messages": [{"role": "user", "content": "a\\ud800b"}]}', None, "not valid Unicode"),
])
def test_every_error_is_an_openai_json_object_with_a_4xx(server, tiny_bundle, body, param, message):
    """Input at fault: a 400 JSON error, never the text/plain 500 of an uncaught exception."""
    body = body.replace(b'"@"', f'"{tiny_bundle.name}"'.encode())
    code, content_type, answer = _post_raw(server.url + "/v1/chat/completions", body)
    assert (code, content_type) == (400, "application/json"), answer
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert message in error["message"] and error["type"] == "invalid_request_error" and error["param"] == param
    assert server.health(tiny_bundle.name)["running"] == 0


def test_a_bug_is_a_json_500_and_fastapi_validation_a_json_400(tiny_bundle):
    """An exception that is not the caller's fault: OpenAI's error object of type server_error.
    FastAPI's own validation of typed parameters (a route that declares them) answers the same way."""
    from fastapi.testclient import TestClient

    from edgespec.apps.server import create_app
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    gen = Generator(Session(tiny_bundle))

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
        yield
    gen.stream = broken
    app = create_app({"m": gen})

    @app.get("/typed")
    async def typed(n: int):
        return {"n": n}
    client = TestClient(app, raise_server_exceptions=False)
    r = client.post("/v1/completions", json={"model": "m", "prompt": "hi"})
    assert (r.status_code, r.headers["content-type"]) == (500, "application/json")
    assert r.json() == {"error": {"message": "internal server error (RuntimeError); the server log has the details",
                                  "type": "server_error", "param": None, "code": None}}
    r = client.get("/typed?n=many")
    assert (r.status_code, r.headers["content-type"]) == (400, "application/json")
    assert r.json()["error"]["param"] == "query.n"


def test_port_0_serves_on_the_port_it_prints(tiny_bundle):
    proc = subprocess.Popen([*CLI, "serve", "--port", "0", "--target", str(tiny_bundle), "--draft", "none"],
                            stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(120, proc.kill)  # a hung start fails the test instead of blocking it
    timer.start()
    try:
        for line in proc.stderr:
            if line.startswith("serving "):
                break
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/v1", line).group(1))
        assert port != 0
        assert get(f"http://127.0.0.1:{port}/health")[0] == 200
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()


def test_a_request_sharing_a_long_prefix_is_served_from_the_prefix_cache(server, reference, tiny_bundle):
    """Two conversations alternating: the second turn of the first finds its start in the prefix
    cache (the previous call's KV is the other conversation's); `usage` and /stats say so."""
    import inspect
    import textwrap
    client, model = server.client(), tiny_bundle.name
    source = textwrap.dedent(inspect.getsource(textwrap))
    code = reference.tokenizer.decode(reference.encode(source)[:250])
    system = {"role": "system", "content": "You review Python."}
    a = [system, {"role": "user", "content": code + "\nExplain it."}]
    a2 = [system, {"role": "user", "content": code + "\nAdd type hints."}]
    before = get(server.url + "/stats")[1]["models"][model]
    answers = [client.chat.completions.create(model=model, messages=m, temperature=0, max_tokens=8)
               for m in (a, MESSAGES, a2)]
    r = answers[-1]
    ids, ids2 = reference.encode(a), reference.encode(a2)
    shared = next(i for i, (x, y) in enumerate(zip(ids, ids2)) if x != y)
    assert shared > 250
    assert r.usage.prompt_tokens_details.cached_tokens == shared
    assert r.model_extra["edgespec"]["cached_from"] == "memory"
    assert r.choices[0].message.content == reference.generate(a2, max_tokens=8).text
    after = get(server.url + "/stats")[1]["models"][model]
    assert after["prompt_tokens"] - before["prompt_tokens"] == sum(x.usage.prompt_tokens for x in answers)
    for source in ("previous call", "memory"):  # /stats adds up what each answer reported
        mine = sum(x.usage.prompt_tokens_details.cached_tokens for x in answers
                   if x.model_extra["edgespec"]["cached_from"] == source)
        assert after["cached_from"].get(source, 0) - before["cached_from"].get(source, 0) == mine
    assert after["cached_prompt_tokens"] - before["cached_prompt_tokens"] == \
        sum(x.usage.prompt_tokens_details.cached_tokens for x in answers)
    cache = after["prefix_cache"]
    assert cache["entries"] >= 2 and 0 < cache["bytes"] <= cache["max_bytes"] == 1024 << 20
    assert cache["hits"] >= 1


def test_prefix_cache_option(tiny_bundle):
    """`--prefix-cache-mb` refuses a negative size before loading anything; /stats of a model
    without a prefix cache (`--prefix-cache-mb 0`) says null."""
    from click.testing import CliRunner
    from fastapi.testclient import TestClient
    from edgespec.apps.cli import cli
    from edgespec.apps.server import create_app
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    r = CliRunner().invoke(cli, ["serve", "--target", str(tiny_bundle), "--prefix-cache-mb", "-1"])
    assert r.exit_code == 2 and "Invalid value for '--prefix-cache-mb': -1 is not in the range x>=0." in r.output
    gen = Generator(Session(tiny_bundle))
    client = TestClient(create_app({"m": gen}))
    r = client.post("/v1/completions", json={"model": "m", "prompt": "def f(x):", "max_tokens": 3})
    assert r.status_code == 200
    assert client.get("/stats").json() == {"models": {"m": {
        "requests": 1, "prompt_tokens": len(gen.encode("def f(x):")), "cached_prompt_tokens": 0, "cached_from": {},
        "prefix_cache": None}}}
