"""Tool calls: OpenAI `tools` shown to the model through the bundle's chat template, and the
calls in its answer parsed back.

The template decides how tools are shown. Qwen2.5's (Hermes style) lists them in the system
turn and asks for each call as

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

which is the one call format parsed here; a template that shows tools but asks for another
format is refused by name, as is a template without a tools section (tools would be dropped).
Qwen2.5-Coder often writes the same JSON in a ```json code block instead, and after a
forced `<tool_call>` may end its turn without the closing tag; both count as calls, as in
llama.cpp's parser for this format. A call counts only if its JSON names one of the given
tools and its arguments are an object; anything else stays text, so malformed output reaches
the caller as content, never as an error. Decoding is not constrained: `tool_choice` can
only steer, by starting the assistant's reply with the call's opening (`prefill`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Sequence

from ..contract.errors import EdgespecError, InputError

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FENCE = re.compile(r"(?:^|(?<=\n))[ \t]*```json[ \t]*\n")  # a ```json line opens a code block
FENCE_PARTIAL = re.compile(r"[ \t]*(?:`{1,3}|```j|```js|```jso|```json[ \t]*)")  # may still become one
FENCE_END = re.compile(r"\n[ \t]*```")
CALL_START = ('{"name"', '[{"name"')  # what a code block's JSON must start with (spaces aside) to be a call
CHOICES = ("auto", "none", "required")
PROBE = "edgespec_probe"  # a tool name no template writes by itself


class ToolError(InputError):
    """A tools-related value the caller got wrong; `param` names it as OpenAI's error object does."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ToolChoice:
    mode: str  # auto, none, required, function
    name: str | None = None  # the function tool_choice names (mode "function")

    @property
    def prefill(self) -> str:
        """The start of the assistant's reply that steers it into a call: the opening tag
        (required), or the opening up to the named function's arguments."""
        if self.mode == "required":
            return OPEN + "\n"
        if self.mode == "function":
            return f'{OPEN}\n{{"name": {json.dumps(self.name, ensure_ascii=False)}, "arguments":'
        return ""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text (OpenAI's function.arguments)
    id: str = ""

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


# ---------------------------------------------------------------- requests

def check_tools(tools) -> list[dict]:
    """OpenAI function tools, checked: [{"type": "function", "function": {"name", "description",
    "parameters"}}]. None or [] means no tools."""
    if tools is None:
        return []
    if not isinstance(tools, (list, tuple)):
        raise ToolError(f"tools must be a list of tools (got {type(tools).__name__})", "tools")
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise ToolError(f'{where} must be an object like {{"type": "function", "function": {{"name": ...}}}} '
                            f"(got {type(tool).__name__})", where)
        if tool.get("type") != "function":
            got = "is missing" if "type" not in tool else f"{tool['type']!r} is not supported"
            raise ToolError(f'{where}.type {got}: edgespec serves function tools ("type": "function")',
                            f"{where}.type")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ToolError(f"{where}.function must be an object with the function's name "
                            f"(got {type(function).__name__})", f"{where}.function")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            got = "is missing" if name is None else f"must be a non-empty string (got {name!r:.40})"
            raise ToolError(f"{where}.function.name {got}: every tool needs a name", f"{where}.function.name")
        if name in names:
            raise ToolError(f"{where}.function.name {name!r} is given twice; tool names must be unique",
                            f"{where}.function.name")
        names.add(name)
        if not isinstance(function.get("description", ""), str):
            raise ToolError(f"{where}.function.description must be a string "
                            f"(got {type(function['description']).__name__})", f"{where}.function.description")
        if not isinstance(function.get("parameters", {}), dict):
            raise ToolError(f"{where}.function.parameters must be a JSON schema object "
                            f"(got {type(function['parameters']).__name__})", f"{where}.function.parameters")
    return [dict(t) for t in tools]


def check_choice(choice, tools: Sequence[dict]) -> ToolChoice:
    """OpenAI's tool_choice: "auto" (None too), "none", "required", or
    {"type": "function", "function": {"name": ...}} naming one of `tools`."""
    form = '"auto", "none", "required" or {"type": "function", "function": {"name": ...}}'
    if choice is None:
        return ToolChoice("auto")
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise ToolError(f"tool_choice {choice!r} is not one of {form}", "tool_choice")
        mode, name = choice, None
    else:
        if not (isinstance(choice, dict) and choice.get("type") == "function"):
            raise ToolError(f"tool_choice {choice!r:.80} is not one of {form}", "tool_choice")
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise ToolError(f"tool_choice {choice!r:.80} names no function; give {form}", "tool_choice")
        mode = "function"
    if mode in ("required", "function") and not tools:
        what = repr(choice) if mode == "required" else f"naming {name!r}"
        raise ToolError(f"tool_choice {what} needs tools; give the functions in 'tools'", "tool_choice")
    if mode == "function" and name not in {t["function"]["name"] for t in tools}:
        known = ", ".join(t["function"]["name"] for t in tools)
        raise ToolError(f"tool_choice names function {name!r}, which is not among the tools ({known})",
                        "tool_choice")
    return ToolChoice(mode, name)


def check_message(i: int, m: dict) -> dict:
    """Message i with tool calls (assistant) or a tool result, as chat templates read it:
    each call's arguments an object (OpenAI sends a JSON string; Qwen's template writes it with
    `tojson`), an assistant's missing content ""."""
    if m.get("role") != "assistant" or not m.get("tool_calls"):
        return m
    calls = m["tool_calls"]
    where = f"messages[{i}].tool_calls"
    if not isinstance(calls, (list, tuple)):
        raise ToolError(f"message {i}: tool_calls must be a list of calls (got {type(calls).__name__})", where)
    form = '{"type": "function", "function": {"name": ..., "arguments": "{...}"}}'
    checked = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise ToolError(f"message {i}: tool_calls[{j}] must be {form} (got {call!r:.80})", f"{where}[{j}]")
        name, arguments = function.get("name"), function.get("arguments", "{}")
        if not isinstance(name, str) or not name:
            raise ToolError(f"message {i}: tool_calls[{j}].function.name must be a non-empty string "
                            f"(got {name!r:.40})", f"{where}[{j}].function.name")
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except (json.JSONDecodeError, RecursionError) as e:
                raise ToolError(f"message {i}: tool_calls[{j}].function.arguments is not JSON ({e}); send them "
                                f"as the server returned them", f"{where}[{j}].function.arguments") from None
        if not isinstance(arguments, dict):
            raise ToolError(f"message {i}: tool_calls[{j}].function.arguments must be a JSON object "
                            f"(got {type(arguments).__name__})", f"{where}[{j}].function.arguments")
        checked.append({**call, "type": "function", "function": {**function, "arguments": arguments}})
    return {**m, "content": m.get("content") or "", "tool_calls": checked}


# ---------------------------------------------------------------- the chat template

def render(tokenizer, messages: list[dict], tools: Sequence[dict] | None, prefill: str = "") -> str:
    """The prompt text: `messages` and `tools` through the chat template, then `prefill` (the start
    of the assistant's reply). Refuses, naming the bundle, a template that would drop the tools
    or the tool calls and results in `messages`, or that asks for calls in another format."""
    name = getattr(tokenizer, "name", "this model")
    uses = next((f"message {i} {'is a tool result' if m.get('role') == 'tool' else 'has tool calls'}"
                 for i, m in enumerate(messages) if m.get("role") == "tool" or m.get("tool_calls")), None)
    if tools:
        probe = _render(tokenizer, [{"role": "user", "content": "hi"}], _probe_tools())
        if probe is None or PROBE not in probe:
            raise InputError(f"{name}'s chat template has no tools section, so it cannot show the model tools; "
                             f"use a bundle whose template renders them (e.g. Qwen2.5-Coder) or send no tools")
        if OPEN not in probe:
            raise InputError(f"{name}'s chat template asks for tool calls in a format edgespec does not parse "
                             f"(it parses {OPEN} JSON {CLOSE}, Qwen2.5's); send no tools")
    if uses:
        probe = _render(tokenizer, _probe_conversation(), _probe_tools())
        if probe is None or f"{PROBE}_call" not in probe or f"{PROBE}_result" not in probe:
            raise InputError(f"{name}'s chat template cannot render tool calls and results ({uses}); "
                             f"use a bundle whose template renders them (e.g. Qwen2.5-Coder)")
    return tokenizer.apply_chat_template(messages, tools=list(tools) if tools else None,
                                         add_generation_prompt=True, tokenize=False) + prefill


def _render(tokenizer, messages, tools) -> str | None:
    """The template's text for a probe, or None where the template refuses it."""
    from jinja2 import TemplateError
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    except (EdgespecError, TemplateError, TypeError):  # raise_exception (an unknown role), or a template error
        return None


def _probe_tools() -> list[dict]:
    return [{"type": "function", "function": {"name": PROBE, "description": "",
                                              "parameters": {"type": "object", "properties": {}}}}]


def _probe_conversation() -> list[dict]:
    call = {"id": "call_0", "type": "function", "function": {"name": f"{PROBE}_call", "arguments": {}}}
    return [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": f"{PROBE}_result"}]


# ---------------------------------------------------------------- the model's answer

class CallSplitter:
    """Splits the model's text, piece by piece, into content and tool calls.

    `feed(piece)` and `finish(complete)` return events: str (content to send now) or ToolCall.
    Text that may still turn out to open a call (a partial `<tool_call>`, a ```json line being
    written, trailing whitespace) is held back, never sent and taken back; a call's text is held
    until it closes, then sent as a call or, if it is not one, as text. Whitespace before a call,
    and after the last one when nothing else follows, is dropped. `max_calls` (1: OpenAI's
    parallel_tool_calls=false) ends the reply at that call: what the model writes after it is dropped.
    """

    def __init__(self, names, max_calls: int | None = None):
        self.names = frozenset(names)
        self.max_calls = max_calls
        self.calls = 0
        self.mode = "text"  # or "tag" (inside <tool_call>), "fence" (inside ```json)
        self.buf = ""  # undecided text (in a call: its body)
        self.opening = ""  # in a call: the text that opened it (whitespace before it included)
        self.line_start = True  # the buffer starts a line
        self.after_call = False  # whitespace that follows a call is dropped if nothing else does

    @property
    def done(self) -> bool:
        return self.max_calls is not None and self.calls >= self.max_calls

    def feed(self, piece: str) -> list:
        if self.done:
            return []
        self.buf += piece
        events: list = []
        while not self.done and self._step(events):
            pass
        return _merge(events)

    def finish(self, complete: bool = True) -> list:
        """The rest, once the model has stopped: `complete` when it ended its turn (not cut by
        max_tokens), so that a call whose closing is missing still counts if its JSON is whole."""
        if self.done:
            return []
        events: list = []
        if self.mode != "text":
            calls = self._parse(self.buf) if complete else None
            if calls:
                self._emit_calls(calls, events)
            else:
                events.append(self.opening + self.buf)
        elif self.buf and not (self.after_call and not self.buf.strip()):
            events.append(self.buf)
        self.buf, self.mode = "", "text"
        return _merge(events)

    def _step(self, events: list) -> bool:
        """Consume what can be decided in the buffer; False when more text is needed."""
        if self.mode == "text":
            return self._text(events)
        if self.mode == "fence" and not _may_be_call(self.buf):
            events.append(self.opening)  # an ordinary code block: it is text, from its opening line
            self.mode, self.line_start, self.after_call = "text", True, False
            return bool(self.buf)
        end = _call_end(self.buf, self.mode)
        if end is None:
            return False
        body, rest = self.buf[:end[0]], self.buf[end[1]:]
        calls = self._parse(body)
        if calls:
            self._emit_calls(calls, events)
        else:
            events.append(self.opening + self.buf[:end[1]])
            self.line_start, self.after_call = self.buf[:end[1]].endswith("\n"), False
        self.buf, self.mode = rest, "text"
        return bool(rest)

    def _text(self, events: list) -> bool:
        """Outside a call: send the text up to a call's opening (entering the call) or up to what
        must be held back."""
        tag = self.buf.find(OPEN)
        fence = next((m for m in FENCE.finditer(self.buf) if m.start() or self.line_start), None)
        starts = [(tag, "tag", tag + len(OPEN))] if tag >= 0 else []
        if fence:
            starts.append((fence.start(), "fence", fence.end()))
        if starts:
            at, mode, body = min(starts)
            text = self.buf[:at]
            kept = text.rstrip()
            if kept:
                events.append(kept)
                self.after_call = False
            self.opening = text[len(kept):] + self.buf[at:body]
            self.buf, self.mode = self.buf[body:], mode
            return True
        send = self.buf[:len(self.buf) - _held(self.buf, self.line_start)]
        if send:  # it ends with text that is not whitespace
            events.append(send)
            self.line_start, self.after_call = send.endswith("\n"), False
            self.buf = self.buf[len(send):]
        return False

    def _emit_calls(self, calls: list[tuple[str, str]], events: list) -> None:
        for name, arguments in calls:
            if self.done:
                break
            events.append(ToolCall(name, arguments, "call_" + uuid.uuid4().hex[:24]))
            self.calls += 1
        self.after_call = self.line_start = True

    def _parse(self, body: str) -> list[tuple[str, str]] | None:
        """The calls a call's body holds (one JSON object, a list of them, or several objects),
        or None if any of it is not a call to one of the tools."""
        text = body.strip()
        inner = re.fullmatch(r"```(?:json)?[ \t]*\n(.*?)(?:\n[ \t]*```)?", text, re.DOTALL)
        if inner:  # Qwen2.5-Coder sometimes fences the JSON inside the tags too
            text = inner.group(1).strip()
        decoder, calls, at = json.JSONDecoder(), [], 0
        try:
            while at < len(text):
                value, at = decoder.raw_decode(text, at)
                for call in value if isinstance(value, list) else [value]:
                    parsed = self._call(call)
                    if parsed is None:
                        return None
                    calls.append(parsed)
                at = len(text) - len(text[at:].lstrip())
        except (json.JSONDecodeError, RecursionError):
            return None
        return calls or None

    def _call(self, value) -> tuple[str, str] | None:
        if not isinstance(value, dict) or value.get("name") not in self.names:
            return None
        arguments = value.get("arguments", {})
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except (json.JSONDecodeError, RecursionError):
                return None
        if not isinstance(arguments, dict):
            return None
        return value["name"], json.dumps(arguments, ensure_ascii=False)


def parse(text: str, tools: Sequence[dict], prefill: str = "", complete: bool = True,
          max_calls: int | None = None) -> tuple[str | None, list[ToolCall]]:
    """(content, calls) of a whole answer (`prefill` the start of the reply the model continued);
    content is None when there are calls and no other text."""
    splitter = CallSplitter([t["function"]["name"] for t in tools], max_calls)
    events = splitter.feed(prefill + text) + splitter.finish(complete)
    content = "".join(e for e in events if isinstance(e, str))
    calls = [e for e in events if isinstance(e, ToolCall)]
    return (content or None) if calls else content, calls


def _call_end(buf: str, mode: str) -> tuple[int, int] | None:
    """(end of the body, end of the call's text) once the call's closing is in `buf`. Inside
    <tool_call>, another opening closes the call before it too."""
    if mode == "fence":
        m = FENCE_END.search(buf)
        return (m.start(), m.end()) if m else None
    ends = [(i, i + len(CLOSE)) for i in [buf.find(CLOSE)] if i >= 0]
    ends += [(i, i) for i in [buf.find(OPEN)] if i >= 0]
    return min(ends) if ends else None


def _may_be_call(body: str) -> bool:
    """Whether a ```json block that starts with `body` may still hold a call's JSON."""
    compact = re.sub(r"\s+", "", body)
    return any(compact.startswith(s) or s.startswith(compact) for s in CALL_START)


def _held(buf: str, line_start: bool) -> int:
    """How much of the buffer's end to hold back: a partial <tool_call>, a line that may become
    a ```json opening, and the whitespace before them or at the end (it may stand before a call)."""
    hold = 0
    for n in range(min(len(OPEN) - 1, len(buf)), 0, -1):
        if buf.endswith(OPEN[:n]):
            hold = n
            break
    line = buf.rfind("\n") + 1
    if (line or line_start) and FENCE_PARTIAL.fullmatch(buf[line:]):
        hold = max(hold, len(buf) - line)
    return len(buf) - len(buf[:len(buf) - hold].rstrip())


def _merge(events: list) -> list:
    """Adjacent text events as one."""
    merged: list = []
    for e in events:
        if isinstance(e, str) and merged and isinstance(merged[-1], str):
            merged[-1] += e
        elif e != "":
            merged.append(e)
    return merged


@dataclass(frozen=True)
class ToolRequest:
    """A chat request's tools, tool_choice and parallel_tool_calls, checked: which tools the
    template shows, the reply's prefill, and how the answer is read."""
    tools: list[dict]
    choice: ToolChoice
    max_calls: int | None = None  # 1: parallel_tool_calls=false

    @classmethod
    def check(cls, tools, choice=None, parallel: bool = True) -> ToolRequest:
        tools = check_tools(tools)
        return cls(tools, check_choice(choice, tools), None if parallel else 1)

    @property
    def shown(self) -> list[dict]:
        """The tools the template renders: none for tool_choice "none" (the model answers in text)."""
        return [] if self.choice.mode == "none" else self.tools

    @property
    def parsing(self) -> bool:
        return bool(self.shown)

    def splitter(self) -> CallSplitter:
        return CallSplitter([t["function"]["name"] for t in self.tools], self.max_calls)

    def parse(self, text: str, finish: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls) of the model's whole text, which continued the prefill."""
        return parse(text, self.tools, self.choice.prefill, finish != "length", self.max_calls)

    def finish_reason(self, finish: str, calls: int) -> str:
        """"tool_calls" when the answer has calls and was not cut short (or ended at max_calls)."""
        done = self.max_calls is not None and calls >= self.max_calls
        return "tool_calls" if calls and (finish != "length" or done) else finish
