"""An OpenAI-compatible HTTP API over Generators (FastAPI), with llama.cpp's fill-in-the-middle
/infill: `create_app(models) -> app`.

Each model has one worker thread: requests run one at a time in arrival order, a bounded
number wait (more get 429 with Retry-After), and a request whose client goes away is
stopped at the next token. Generation runs in the worker thread and hands pieces to the
event loop; nothing model-related (tokenizer included) runs anywhere else.

Every error is OpenAI's JSON error object: the caller's fault (APIError, the library's
EdgespecError) a 4xx, anything else a 500 of type server_error (and a traceback in the log).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import math
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException

from ..contract.errors import EdgespecError, InputError
from ..runtime.api import Chunk, Generator, Stats, content_text
from ..runtime.fim import Infill
from ..runtime.tool_calls import ToolCall, ToolError, ToolRequest

MAX_BODY = 1 << 20  # bytes


# ---------------------------------------------------------------- errors

class APIError(HTTPException):
    """An error sent as OpenAI's {"error": {message, type, param, code}} object."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(status, message, headers)
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


class _ErrorJSON(JSONResponse):
    """JSON with non-ASCII escaped: an error message may quote text that is not valid Unicode."""

    def render(self, content) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode("ascii")


def _error_response(exc: HTTPException) -> JSONResponse:
    body = getattr(exc, "body", None) or {"error": {
        "message": str(exc.detail), "type": "invalid_request_error", "param": None, "code": None}}
    return _ErrorJSON(body, status_code=exc.status_code, headers=exc.headers)


def _invalid(errors: list[dict]) -> APIError:
    """The first of pydantic's (or FastAPI's) validation errors as a 400 naming the field."""
    err = errors[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    got = f" (got {err['input']!r:.80})" if param and "input" in err else ""
    return APIError(400, f"{param}: {err['msg']}{got}" if param else err["msg"], param=param)


def _library_error(exc: EdgespecError) -> APIError:
    """A refusal from the library (prompt, sampling values, stop strings): the request's fault."""
    message = str(exc)
    return APIError(400, message, param=getattr(exc, "param", None),
                    code="context_length_exceeded" if "does not fit" in message else None)


class BodyLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` (declared or streamed) with 413."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _error_response(self._too_large())(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()
            return message
        await self.app(scope, limited, send)

    def _too_large(self) -> APIError:
        return APIError(413, f"request body over {self.max_bytes} bytes", code="request_too_large")


class ApiKey:
    """ASGI middleware: the routes that generate (/v1/..., /infill) need `Authorization: Bearer KEY`
    (constant-time compare); /health and /stats stay open for probes."""

    def __init__(self, app, key: str):
        if not key:
            raise InputError("the API key is empty")
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"].startswith("/v1/") or scope["path"] == "/infill"):
            scheme, _, token = dict(scope["headers"]).get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = APIError(401, "missing or wrong API key (send Authorization: Bearer KEY)",
                                 code="invalid_api_key")
                return await _error_response(error)(scope, receive, send)
        await self.app(scope, receive, send)


# ---------------------------------------------------------------- requests

class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # other OpenAI fields are accepted and unused
    model: str
    stream: bool = False
    stream_options: dict | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)  # extension
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    logprobs: Any = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict | None = None

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def check_supported(self) -> None:
        """Refuse what we would otherwise silently ignore."""
        unsupported = [("n", self.n != 1), ("logprobs", bool(self.logprobs)),
                       ("presence_penalty", self.presence_penalty != 0),
                       ("frequency_penalty", self.frequency_penalty != 0), ("logit_bias", bool(self.logit_bias))]
        for name, bad in unsupported:
            if bad:
                raise APIError(400, f"{name}={getattr(self, name)!r} is not supported by edgespec", param=name)
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 4 or not all(stops):
            raise APIError(400, f"give at most 4 non-empty stop strings (got {self.stop!r})", param="stop")


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None  # null in an assistant's message with tool_calls
    tool_calls: list | None = None  # an assistant's, as OpenAI returns them
    tool_call_id: str | None = None  # a tool result's

    def text(self, i: int) -> str:
        try:
            return content_text(i, self.content)
        except InputError as e:
            raise APIError(400, str(e), param=f"messages[{i}].content") from None

    def to_dict(self, i: int) -> dict:
        """The message as the chat template reads it (tool calls checked by the runtime)."""
        calls = self.role == "assistant" and self.tool_calls
        message = {"role": "system" if self.role == "developer" else self.role,
                   "content": self.content if calls and self.content is None else self.text(i)}
        if calls:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


class ChatRequest(_Request):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True

    def prompt(self) -> list[dict]:
        return [m.to_dict(i) for i, m in enumerate(self.messages)]

    def tool_request(self) -> ToolRequest | None:
        """The checked tools (runtime/tool_calls.py), or None when the request has none."""
        try:
            tools = ToolRequest.check(self.tools, self.tool_choice, self.parallel_tool_calls)
        except ToolError as e:
            raise APIError(400, str(e), param=e.param) from None
        return tools if tools.tools else None


class CompletionRequest(_Request):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def text(self) -> str | Infill:
        """The prompt, or with a (non-empty) suffix a fill-in-the-middle request."""
        for name, bad in [("echo", self.echo), ("best_of", self.best_of not in (None, 1))]:
            if bad:
                raise APIError(400, f"{name} is not supported by edgespec", param=name)
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise APIError(400, f"give one prompt (got {len(self.prompt)})", param="prompt")
            prompt = self.prompt[0]
        else:
            prompt = self.prompt
        return Infill(prompt, self.suffix) if self.suffix else prompt


class _ExtraFile(BaseModel):
    filename: str = "tmp"  # llama.cpp's default
    text: str


class InfillRequest(BaseModel):
    """llama.cpp's /infill body, with its sampling defaults. Its tuning fields for its own
    server (cache_prompt, samplers, n_indent, t_max_predict_ms...) are accepted and unused."""
    model_config = ConfigDict(extra="allow")
    model: str | None = None  # needed only when the server has several models
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[_ExtraFile] = Field(default_factory=list)
    prompt: str = ""  # appended to the prefix, as llama.cpp does
    n_predict: int = Field(-1, ge=-1)  # -1: until an end token or the context is full
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    seed: int = -1  # -1: random
    stop: str | list[str] = Field(default_factory=list)
    stream: bool = False

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data):
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def check_supported(self) -> None:
        if self.n_predict == 0:
            raise APIError(400, "n_predict=0 would generate nothing; give -1 (no limit) or a count >= 1",
                           param="n_predict")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        if not all(stops):
            raise APIError(400, f"stop strings must be non-empty (got {self.stop!r})", param="stop")

    def infill(self) -> Infill:
        return Infill(self.input_prefix + self.prompt, self.input_suffix,
                      [(f.filename, f.text) for f in self.input_extra])


async def _parse(request: Request, cls):
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON ({e})", code="invalid_json") from None
    except RecursionError:  # the parser recurses once per level of [ or {
        raise APIError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        parsed = cls.model_validate(data)
    except ValidationError as e:
        raise _invalid(e.errors()) from None
    parsed.check_supported()
    return parsed


# ---------------------------------------------------------------- one worker per model

class _Done:
    def __init__(self, error: BaseException | None = None):
        self.error = error


class ModelWorker:
    """Runs one generation at a time on its own thread; `queue_size` more may wait."""

    def __init__(self, name: str, gen: Generator, queue_size: int):
        self.name, self.gen, self.queue_size = name, gen, queue_size
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"edgespec-{name}")
        self._turn: asyncio.Lock | None = None  # FIFO; made on the server's event loop
        self.admitted = 0  # running + waiting
        self.running = False
        self.served = 0
        self.cancelled = 0
        self._seconds = 0.0  # running mean of request durations, for Retry-After
        self.requests = 0  # that reached the model (counted before their answer ends)
        self.prompt_tokens = 0  # over those requests
        self.cached_prompt_tokens = 0  # of which came from a cache...
        self.cached_from: dict[str, int] = {}  # ...by cache: "previous call", "memory", "disk"

    def status(self) -> dict:
        return {"running": int(self.running), "queued": self.admitted - int(self.running),
                "queue_size": self.queue_size, "served": self.served, "cancelled": self.cancelled}

    def cache_stats(self) -> dict:
        """Prompt tokens served and how many came from a cache, with the prefix cache's size."""
        cache = self.gen.prefix_cache
        return {"requests": self.requests, "prompt_tokens": self.prompt_tokens,
                "cached_prompt_tokens": self.cached_prompt_tokens, "cached_from": dict(self.cached_from),
                "prefix_cache": cache.stats() if cache is not None else None}

    def _count(self, stats: Stats) -> None:
        self.requests += 1
        self.prompt_tokens += stats.prompt_tokens
        n = stats.cached_prompt_tokens
        if n:
            self.cached_prompt_tokens += n
            self.cached_from[stats.cached_from] = self.cached_from.get(stats.cached_from, 0) + n

    def admit(self) -> None:
        if self.admitted >= 1 + self.queue_size:
            retry = max(1, math.ceil(self._seconds * self.admitted))
            raise APIError(429, f"model {self.name} is busy: 1 request running and {self.queue_size} "
                                f"waiting; retry in {retry}s", type="rate_limit_error",
                           code="rate_limit_exceeded", headers={"Retry-After": str(retry)})
        self.admitted += 1

    async def stream(self, request: Request, prompt, params: dict, stats: Stats) -> AsyncIterator[Chunk]:
        """Wait for the model, then yield its chunks. Call `admit()` first. Closing this
        iterator (or the client going away) stops the generation at the next token."""
        loop = asyncio.get_running_loop()
        if self._turn is None:
            self._turn = asyncio.Lock()
        try:
            await self._turn.acquire()
        except BaseException:
            self.admitted -= 1
            raise
        chunks: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        started = time.perf_counter()

        def work() -> bool:  # on the model's thread; True when stopped early
            error, stopped = None, False
            try:
                steps = (self.gen.stream_fim(*prompt, stats=stats, **params) if isinstance(prompt, Infill)
                         else self.gen.stream(prompt, stats=stats, **params))
                try:
                    for chunk in steps:
                        if stop.is_set():
                            stopped = True
                            break
                        loop.call_soon_threadsafe(chunks.put_nowait, chunk)
                finally:
                    steps.close()  # leaves the KV cache consistent
                    self._count(stats)
            except BaseException as e:  # handed to the request; the thread lives on
                error = e
            loop.call_soon_threadsafe(chunks.put_nowait, _Done(error))
            return stopped

        def finished(future):
            seconds = time.perf_counter() - started
            self._seconds = 0.8 * self._seconds + 0.2 * seconds if self.served else seconds
            self.served += 1
            self.cancelled += bool(future.result())
            self.running = False
            self.admitted -= 1
            self._turn.release()

        if await request.is_disconnected():  # gave up while waiting
            self.admitted -= 1
            self.cancelled += 1
            self._turn.release()
            return
        self.running = True
        loop.run_in_executor(self._thread, work).add_done_callback(finished)
        try:
            while True:
                item = await chunks.get()
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    return
                yield item
        finally:
            stop.set()

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)


# ---------------------------------------------------------------- the app

def create_app(models: dict[str, Generator], *, api_key: str | None = None, queue_size: int = 4,
               max_body: int = MAX_BODY) -> FastAPI:
    """An OpenAI-compatible app serving `models` (name -> Generator)."""
    if not models:
        raise InputError("no models to serve")
    if queue_size < 0:
        raise InputError(f"queue_size must be >= 0 (got {queue_size})")
    workers = {name: ModelWorker(name, gen, queue_size) for name, gen in models.items()}
    created = int(time.time())
    app = FastAPI(title="edgespec", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    if api_key is not None:
        app.add_middleware(ApiKey, key=api_key)  # outermost: checked before the body is read
    app.state.workers = workers

    @app.exception_handler(HTTPException)
    async def _http_error(request, exc):
        return _error_response(exc)

    @app.exception_handler(EdgespecError)
    async def _refused(request, exc):
        return _error_response(_library_error(exc))

    @app.exception_handler(RequestValidationError)
    async def _request_invalid(request, exc):
        return _error_response(_invalid(exc.errors()))

    @app.exception_handler(Exception)  # a bug: Starlette still logs the traceback
    async def _server_error(request, exc):
        return _error_response(APIError(500, f"internal server error ({type(exc).__name__}); "
                                              f"the server log has the details", type="server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": {n: w.status() for n, w in workers.items()}}

    @app.get("/stats")
    async def cache_stats():
        """Per model: prompt tokens served, how many came from a cache (and which), and the
        prefix cache's entries and bytes."""
        return {"models": {n: w.cache_stats() for n, w in workers.items()}}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": n, "object": "model", "created": created,
                                            "owned_by": "edgespec"} for n in workers]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _parse(request, ChatRequest)
        max_tokens = body.max_completion_tokens or body.max_tokens
        return await _complete(request, body, body.prompt(), max_tokens, chat=True, tools=body.tool_request())

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _parse(request, CompletionRequest)
        return await _complete(request, body, body.text(), body.max_tokens, chat=False)

    @app.post("/infill")
    async def infill(request: Request):
        """llama.cpp's fill-in-the-middle endpoint, which editor plugins (llama.vim, llama.vscode) speak."""
        body = await _parse(request, InfillRequest)
        if body.model is None and len(workers) > 1:
            raise APIError(400, f"this server has several models ({sorted(workers)}): name one in 'model'",
                           param="model")
        name = body.model or next(iter(workers))
        worker = _worker(name)
        max_tokens = body.max_tokens or (body.n_predict if body.n_predict > 0 else worker.gen.target.max_len)
        params = dict(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                      seed=body.seed if body.seed >= 0 else None, stop=body.stop or None)
        stats = Stats()
        chunks, first = await _start(request, worker, body.infill(), params, stats)
        if body.stream:
            return _SSE(_infill_events(chunks, first, stats, name))
        text = await _gather(request, chunks, first)
        if text is None:
            return JSONResponse({}, status_code=499)
        return JSONResponse({"content": text, **_infill_summary(stats, name)})

    def _worker(name: str) -> ModelWorker:
        worker = workers.get(name)
        if worker is None:
            raise APIError(404, f"model {name!r} does not exist; this server has {sorted(workers)}",
                           param="model", code="model_not_found")
        return worker

    async def _start(request: Request, worker: ModelWorker, prompt, params: dict, stats: Stats):
        """Admit a request and wait for its first chunk: errors in the prompt or parameters surface
        here, as 400s, before any response is sent."""
        worker.admit()
        chunks = worker.stream(request, prompt, params, stats)
        try:
            return chunks, await anext(chunks, None)
        except BaseException:
            await chunks.aclose()
            raise

    async def _complete(request: Request, body: _Request, prompt, max_tokens: int | None, chat: bool,
                        tools: ToolRequest | None = None):
        worker = _worker(body.model)
        params = dict(max_tokens=max_tokens or worker.gen.target.max_len, temperature=body.temperature,
                      top_p=body.top_p, top_k=body.top_k, seed=body.seed, stop=body.stop)
        if tools is not None:
            params.update(tools=tools.shown, prefill=tools.choice.prefill)
        stats = Stats()
        chunks, first = await _start(request, worker, prompt, params, stats)
        meta = dict(id=("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, created=int(time.time()),
                    model=body.model)
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return _SSE(_events(request, chunks, first, stats, meta, chat, usage, tools))
        return await _collect(request, chunks, first, stats, meta, chat, tools)

    return app


def _usage(stats: Stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens,
            "prompt_tokens_details": {"cached_tokens": stats.cached_prompt_tokens}}


async def _gather(request, chunks, first) -> str | None:
    """The whole text of a stream that starts with `first` (None: the client went away)."""
    text, last_check = [], time.monotonic()
    try:
        item = first
        while item is not None:
            text.append(item.text)
            if time.monotonic() - last_check > 0.25:  # a client that went away frees the model
                last_check = time.monotonic()
                if await request.is_disconnected():
                    return None
            item = await anext(chunks, None)
    finally:
        await chunks.aclose()
    return "".join(text)


async def _collect(request, chunks, first, stats, meta, chat, tools: ToolRequest | None = None) -> JSONResponse:
    text = await _gather(request, chunks, first)
    if text is None:
        return JSONResponse({}, status_code=499)
    finish = stats.finish_reason
    choice = ({"index": 0, "message": {"role": "assistant", "content": text}} if chat else
              {"index": 0, "text": text})
    if tools is not None and tools.parsing:
        content, calls = tools.parse(text, finish)
        choice["message"]["content"] = content
        if calls:
            choice["message"]["tool_calls"] = [c.to_openai() for c in calls]
        finish = tools.finish_reason(finish, len(calls))
    choice.update(finish_reason=finish, logprobs=None)
    return JSONResponse({**meta, "object": "chat.completion" if chat else "text_completion",
                         "choices": [choice], "usage": _usage(stats), "edgespec": stats.to_dict()})


async def _events(request, chunks, first, stats, meta, chat, usage,
                  tools: ToolRequest | None = None) -> AsyncIterator[str]:
    """Server-sent events: OpenAI's chunk objects, then `data: [DONE]`. With tools, the text
    goes through a CallSplitter: content deltas until a call opens, each call as tool_calls deltas."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    splitter = tools.splitter() if tools is not None and tools.parsing else None

    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**meta, 'object': kind, 'choices': choices, **extra})}\n\n"

    def piece(text: str, finish=None) -> dict:
        if chat:
            return {"index": 0, "delta": {"content": text} if text or finish is None else {},
                    "finish_reason": finish, "logprobs": None}
        return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}

    def split(events: list) -> list[str]:
        """Content and calls from the splitter as events; a call as OpenAI sends it: its id, type
        and name (arguments ""), then its arguments."""
        out, index = [], splitter.calls - sum(isinstance(e, ToolCall) for e in events)
        for e in events:
            if not isinstance(e, ToolCall):
                out.append(event([piece(e)]))
                continue
            head = {"index": index, "id": e.id, "type": "function", "function": {"name": e.name, "arguments": ""}}
            for call in (head, {"index": index, "function": {"arguments": e.arguments}}):
                out.append(event([{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None,
                                   "logprobs": None}]))
            index += 1
        return out

    try:
        if chat:
            yield event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                          "finish_reason": None, "logprobs": None}])
        if splitter is not None:
            for e in split(splitter.feed(tools.choice.prefill)):
                yield e
        item = first
        while item is not None:
            if splitter is not None:
                for e in split(splitter.feed(item.text)):
                    yield e
            elif item.text:
                yield event([piece(item.text)])
            try:
                item = await anext(chunks, None)
            except Exception as e:  # headers are sent: report in the stream
                yield _stream_error(e)
                return
        finish = stats.finish_reason
        if splitter is not None:
            for e in split(splitter.finish(finish != "length")):
                yield e
            finish = tools.finish_reason(finish, splitter.calls)
        yield event([piece("", finish)], edgespec=stats.to_dict())
        if usage:
            yield event([], usage=_usage(stats))
        yield "data: [DONE]\n\n"
    finally:
        await chunks.aclose()


def _infill_summary(stats: Stats, model: str) -> dict:
    """llama.cpp's closing fields of an /infill answer (its timings in ms), and ours."""
    prompt_n = stats.prompt_tokens - stats.cached_prompt_tokens
    prompt_ms, predicted_ms = 1000 * stats.prefill_seconds, 1000 * stats.decode_seconds
    timings = {"prompt_n": prompt_n, "prompt_ms": prompt_ms,
               "prompt_per_second": 1000 * prompt_n / prompt_ms if prompt_ms else 0.0,
               "predicted_n": stats.new_tokens, "predicted_ms": predicted_ms,
               "predicted_per_second": 1000 * stats.new_tokens / predicted_ms if predicted_ms else 0.0}
    return {"stop": True, "model": model, "tokens_predicted": stats.new_tokens,
            "tokens_evaluated": stats.prompt_tokens, "tokens_cached": stats.cached_prompt_tokens,
            "truncated": False, "timings": timings, "edgespec": stats.to_dict()}


async def _infill_events(chunks, first, stats, model) -> AsyncIterator[str]:
    """llama.cpp's stream: `{"content": ..., "stop": false}` events, then one with the summary."""
    try:
        item = first
        while item is not None:
            if item.text:
                yield f"data: {json.dumps({'content': item.text, 'stop': False})}\n\n"
            try:
                item = await anext(chunks, None)
            except Exception as e:  # headers are sent: report in the stream
                yield _stream_error(e)
                return
        yield f"data: {json.dumps({'content': '', **_infill_summary(stats, model)})}\n\n"
    finally:
        await chunks.aclose()


def _stream_error(e: Exception) -> str:
    """An error after the headers went out, as an event."""
    err = (_library_error(e) if isinstance(e, EdgespecError) else
           APIError(500, f"generation failed: {e}", type="server_error"))
    return f"data: {json.dumps(err.body)}\n\n"


class _SSE(StreamingResponse):
    """An event stream whose generator is closed however the response ends (client gone included),
    so the model is freed at once rather than when the generator is garbage-collected."""

    def __init__(self, events: AsyncIterator[str]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
