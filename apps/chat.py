"""A multi-turn conversation over a Generator: history, system prompt, context policy, save/load.

UI-free: `chat_cmd` is the terminal front end. The generator should be loaded with
`reuse_cache=True`, so each turn prefills only what is new since the previous one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..contract.errors import EdgespecError, InputError
from ..runtime.api import Generator, Stats

SAVE_FORMAT = "edgespec-chat"
ROLES = ("user", "assistant")


class ContextFull(EdgespecError):
    """The newest message does not fit the context even with every older turn dropped."""


class Reply:
    """One streamed answer. Iterate for text pieces; `close()` stops it early.

    However it ends (finished, closed, or an error after some text), the text produced
    so far goes into the conversation, so an interrupted answer keeps its partial text.
    """

    def __init__(self, chat: Chat, dropped: int):
        self.chat = chat
        self.dropped = dropped  # oldest turns dropped so that the conversation fits the context
        self.stats = Stats()
        self.text = ""
        self.finish_reason = ""  # stop, length, context (the context filled up), interrupted, error
        self._pieces = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def close(self) -> None:
        self._pieces.close()

    def _run(self) -> Iterator[str]:
        chat = self.chat
        stream = chat.gen.stream(chat.conversation(), max_tokens=chat.max_tokens, stats=self.stats,
                                 **chat.sampling)
        early = "interrupted"  # unless the stream runs to its end
        try:
            for chunk in stream:
                self.text += chunk.text
                # Every step yields, text or not: a consumer checks for Ctrl-C between pieces,
                # and tokens without visible text (specials, half a character) can run long.
                yield chunk.text
            early = ""
        except Exception:
            early = "error"
            raise
        finally:
            stream.close()
            full = self.stats.prompt_tokens + self.stats.new_tokens >= chat.gen.target.max_len
            self.finish_reason = (early or ("context" if self.stats.finish_reason == "length" and full
                                            else self.stats.finish_reason))
            chat._answered(self)


class Chat:
    """A conversation: an optional system prompt plus alternating user/assistant messages."""

    def __init__(self, gen: Generator, system: str | None = None, max_tokens: int = 256,
                 sampling: dict | None = None):
        if max_tokens < 1:
            raise InputError(f"max_tokens must be >= 1 (got {max_tokens})")
        self.gen = gen
        self.system = system or None
        self.messages: list[dict] = []  # user/assistant turns, oldest first
        self.max_tokens = max_tokens
        self.sampling = dict(sampling or {})  # temperature, top_p, top_k, seed for gen.stream
        self.last: Reply | None = None

    def conversation(self) -> list[dict]:
        return self._with_system(self.messages)

    def reply(self, text: str) -> Reply:
        """Add a user message and start the answer (dropping the oldest turns if the context is short)."""
        if not text.strip():
            raise InputError("message is empty")
        self.messages, dropped = self._fit(self.messages + [{"role": "user", "content": text}])
        return Reply(self, dropped)

    def _answered(self, reply: Reply) -> None:
        if reply.text or reply.finish_reason not in ("interrupted", "error"):
            self.messages.append({"role": "assistant", "content": reply.text})
        else:  # stopped before any text: nothing to keep, forget the question too
            self.messages.pop()
        self.last = reply

    def tokens(self, messages: list[dict] | None = None) -> int:
        """Tokens the conversation (or these messages after the system prompt) takes in the context."""
        conversation = self._with_system(self.messages if messages is None else messages)
        return len(self.gen.encode(conversation)) if conversation else 0

    def _with_system(self, messages: list[dict]) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def _fit(self, messages: list[dict]) -> tuple[list[dict], int]:
        """Context policy: drop the oldest turns (never the system prompt or the newest message)
        until the prompt leaves room for an answer. Returns the messages and how many turns went."""
        limit = self.gen.target.max_len
        room = min(self.max_tokens, limit // 4)  # answer room we try to keep
        dropped = 0
        while True:
            n = self.tokens(messages)
            if n + room <= limit:
                return messages, dropped
            if len(messages) <= 1:
                if n < limit:
                    return messages, dropped  # it fits, with less room for the answer
                what = "message with the system prompt" if self.system else "message"
                raise ContextFull(f"{what} takes {n} tokens, more than the {limit}-token context; "
                                  f"shorten it" + (" or the system prompt (/system)" if self.system else ""))
            end = 1  # the oldest user message and the answers that follow it
            while end < len(messages) - 1 and messages[end]["role"] != "user":
                end += 1
            messages = messages[end:]
            dropped += 1

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = []
        self.last = None

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the conversation to `path` as JSON, all or nothing: a failed write (a full disk)
        leaves the file that was there."""
        from ..contract.files import FileExists, atomic_write_text
        path = Path(path).expanduser()
        if path.exists() and not overwrite:
            raise FileExists(f"{path} exists; choose another name or overwrite it with /save! {path}")
        data = {"format": SAVE_FORMAT, "version": 1, "system": self.system, "messages": self.messages}
        return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    def load(self, path: str | Path) -> Path:
        """Replace the conversation with a saved one: our format, or a plain list of
        {role, content} messages (a leading system message becomes the system prompt)."""
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
            raise EdgespecError(f"{path} is not JSON ({e})") from None
        system, messages = parse_conversation(data, str(path))
        self.system, self.messages, self.last = system, messages, None
        return path


def parse_conversation(data, where: str) -> tuple[str | None, list[dict]]:
    if isinstance(data, dict):
        if data.get("format", SAVE_FORMAT) != SAVE_FORMAT:
            raise EdgespecError(f"{where}: unknown format {data.get('format')!r} (expected {SAVE_FORMAT!r})")
        system, messages = data.get("system"), data.get("messages")
    else:
        system, messages = None, data
    if not isinstance(messages, list):
        raise EdgespecError(f"{where}: expected a list of messages")
    messages = list(messages)
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        system = messages.pop(0).get("content")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise EdgespecError(f"{where}: message {i} must be {{role: user|assistant, content: text}} "
                                f"(got {m!r:.80})")
    if system is not None and not isinstance(system, str):
        raise EdgespecError(f"{where}: system prompt must be text (got {system!r:.80})")
    return system or None, [{"role": m["role"], "content": m["content"]} for m in messages]


def format_stats(reply: Reply | None) -> str:
    """The /stats text: speed, speculation and time split of the last answer."""
    if reply is None:
        return "no answer yet"
    s = reply.stats
    lines = [
        f"answer:   {s.new_tokens} tokens ({reply.finish_reason})",
        f"decode:   {s.decode_tok_s:.1f} tok/s over {s.decode_seconds:.2f}s",
        f"prefill:  {s.prompt_tokens} prompt tokens, {s.cached_prompt_tokens} reused from the cache"
        + (f" ({s.cached_from})" if s.cached_prompt_tokens else "") + f", {s.prefill_seconds:.3f}s",
    ]
    if s.drafter != "none":
        lines.append(f"drafter:  {s.drafter}, {s.accepted_per_pass:.2f} tokens per target pass, "
                     f"acceptance {s.acceptance_rate:.0%} ({s.accepted}/{s.proposed} drafted)")
    else:
        lines.append("drafter:  none (no speculation)")
    lines.append(f"time:     draft {s.draft_seconds:.2f}s, verify {s.verify_seconds:.2f}s, "
                 f"overhead {s.overhead_seconds:.2f}s, {s.verify_passes} target passes")
    return "\n".join(lines)
