"""Incremental detokenization that never emits half a UTF-8 character.

Decoding token by token breaks multi-byte characters and drops the spaces
that depend on the previous token, so each step decodes a short window
(from a few tokens back) and emits only the text that is new and complete.
"""

from __future__ import annotations


class Detokenizer:
    def __init__(self, tokenizer, prompt_tail: list[int] | None = None):
        self.tokenizer = tokenizer
        self.ids: list[int] = list(prompt_tail or [])
        self.prefix = 0  # window start
        self.read = len(self.ids)  # tokens already turned into text

    def add(self, tokens: list[int]) -> str:
        self.ids.extend(tokens)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # incomplete character (or nothing visible yet): wait for more tokens
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]

    def flush(self) -> str:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        self.prefix = self.read = len(self.ids)
        return after[len(before):]
