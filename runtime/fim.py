"""Fill-in-the-middle: the prompt a code model was trained to complete between a prefix and a suffix.

The special tokens come from the bundle's tokenizer, by their spelling in the
tokenizer families below, never from the model's name; a tokenizer without
them refuses FIM. The prompt is Qwen2.5-Coder's PSM order (prefix, suffix,
middle), with extra files first as repository context, as llama.cpp's
/infill sends them:

    <|repo_name|>myproject\\n                  (when the tokenizer has it)
    <|file_sep|>{name}\\n{text}\\n             (each extra file)
    <|file_sep|>filename\\n                    (the file being edited)
    <|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>

Without extra files only the last line is sent (Qwen's file-level format).
The middle ends at an end token (EOS, <|endoftext|>, <|fim_pad|>, a file
separator) or where it starts repeating the suffix's first line, which a
model often does: that copy is cut (SuffixStop). Prompt lookup needs nothing
of its own here: the n-gram drafter indexes the whole prompt, suffix and
extra files included, so a middle that copies from them is drafted for free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

from ..contract.errors import InputError
from .results import Chunk, Stats

# The special tokens' spellings per tokenizer family; all of them use PSM order.
SPELLINGS = (
    {"prefix": "<|fim_prefix|>", "suffix": "<|fim_suffix|>", "middle": "<|fim_middle|>", "pad": "<|fim_pad|>",
     "file_sep": "<|file_sep|>", "repo_name": "<|repo_name|>", "end": "<|endoftext|>"},  # Qwen2.5-Coder
    {"prefix": "<fim_prefix>", "suffix": "<fim_suffix>", "middle": "<fim_middle>", "pad": "<fim_pad>",
     "file_sep": "<file_sep>", "repo_name": "<repo_name>", "end": "<|endoftext|>"},  # StarCoder2
)
REQUIRED = ("prefix", "suffix", "middle")
# The repository and current file names llama.cpp's /infill sends: an editor gets the prompt it gets there.
REPO_NAME = "myproject"
CURRENT_FILE = "filename"
MIN_STOP_CHARS = 8  # a suffix line shorter than this (non-space) is too common to stop on
_INDENT = re.compile(r"^[ \t]*", re.MULTILINE)  # at every line start


class Infill(NamedTuple):
    """One fill-in-the-middle request: the text before and after the gap, and extra files."""
    prefix: str
    suffix: str
    extra: Sequence[tuple[str, str]] = ()


@dataclass(frozen=True)
class FimTokens:
    prefix: int
    suffix: int
    middle: int
    file_sep: int | None  # None: the tokenizer cannot take extra files
    repo_name: int | None
    end: frozenset[int]  # tokens that end a middle besides the bundle's EOS


def fim_tokens(tokenizer) -> FimTokens:
    """The FIM tokens of a BundleTokenizer (or a transformers tokenizer), or an InputError
    naming the bundle and the tokens it lacks."""
    best = None
    for spelling in SPELLINGS:
        ids = {role: tokenizer.convert_tokens_to_ids(text) for role, text in spelling.items()}
        ids = {role: i for role, i in ids.items() if i is not None}
        if all(role in ids for role in REQUIRED):
            end = {ids[r] for r in ("pad", "file_sep", "repo_name", "end", *REQUIRED) if r in ids}
            return FimTokens(ids["prefix"], ids["suffix"], ids["middle"], ids.get("file_sep"),
                             ids.get("repo_name"), frozenset(end))
        if best is None or len(ids) > len(best[1]):
            best = spelling, ids
    spelling, ids = best
    missing = ", ".join(spelling[r] for r in REQUIRED if r not in ids)
    name = getattr(tokenizer, "name", "this model")
    raise InputError(f"{name} cannot fill in the middle: its tokenizer lacks {missing}; use a code model "
                     f"trained for it (e.g. Qwen2.5-Coder) or complete without a suffix")


def prompt_ids(tokenizer, tokens: FimTokens, prefix: str, suffix: str,
               extra: Sequence[tuple[str, str]] = ()) -> list[int]:
    """Token ids of the FIM prompt (the module docstring's layout)."""
    for what, value in (("prefix", prefix), ("suffix", suffix)):
        if not isinstance(value, str):
            raise InputError(f"the FIM {what} must be text (got {type(value).__name__})")
    files = _files(extra)

    def text(s: str) -> list[int]:
        return tokenizer.encode(s, add_special_tokens=False) if s else []

    ids: list[int] = []
    if files:
        if tokens.file_sep is None:
            raise InputError(f"{getattr(tokenizer, 'name', 'this model')} has no file separator token: "
                             f"give the FIM prompt without extra files")
        if tokens.repo_name is not None:
            ids += [tokens.repo_name, *text(REPO_NAME + "\n")]
        for name, body in files:
            ids += [tokens.file_sep, *text(f"{name}\n{body}" + ("" if not body or body.endswith("\n") else "\n"))]
        ids += [tokens.file_sep, *text(CURRENT_FILE + "\n")]
    return ids + [tokens.prefix, *text(prefix), tokens.suffix, *text(suffix), tokens.middle]


def _files(extra) -> list[tuple[str, str]]:
    if extra is None:
        return []
    if isinstance(extra, (str, bytes, dict)):
        raise InputError(f"extra files must be a list of (filename, text) pairs (got {type(extra).__name__})")
    files = list(extra)
    for i, f in enumerate(files):
        if not (isinstance(f, (tuple, list)) and len(f) == 2 and all(isinstance(x, str) for x in f)):
            raise InputError(f"extra file {i} must be a (filename, text) pair of strings (got {f!r:.80})")
    return [tuple(f) for f in files]


class SuffixStop:
    """Cuts the middle where a line of it starts with the suffix's first non-blank line.

    That line counts only when distinctive (MIN_STOP_CHARS non-space characters) and only at
    the start of a line (after indentation), where a repeat of the suffix would stand. The
    blank lines the suffix opens with are cut with it. Text that may still turn out to be
    the repeat (the current line while it could become it, trailing whitespace) is held back.
    """

    def __init__(self, suffix: str, at_line_start: bool):
        """at_line_start: the middle begins a line (the prefix ends with a newline and indentation)."""
        m = re.search(r"^[ \t]*(\S[^\n]*)", suffix, re.MULTILINE)
        line = m.group(1).rstrip() if m else ""
        self.line = line if len(re.sub(r"\s", "", line)) >= MIN_STOP_CHARS else None
        self.head = suffix[:suffix.rfind("\n", 0, m.start(1)) + 1] if m else ""  # the blank lines before it
        self.at_line_start = at_line_start
        self.text, self.sent = "", 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """The text that is safe to emit after `piece`, and whether the middle has reached the suffix."""
        self.text += piece
        if self.line is None:
            return self._send(len(self.text)), False
        hit = self._find()
        if hit is not None:
            kept = self.text[:hit]
            if self.head and kept.endswith(self.head):
                kept = kept[:-len(self.head)]
            return self._send(len(kept)), True
        last = self.text.rfind("\n") + 1  # the current line's start
        end = len(self.text)
        if (last or self.at_line_start) and self.line.startswith(self.text[last:].lstrip(" \t")):
            end = last  # the current line may still become the repeat
        return self._send(len(self.text[:end].rstrip())), False

    def flush(self) -> str:
        """What is held back, once the middle has ended otherwise."""
        return self._send(len(self.text))

    def _find(self) -> int | None:
        """Where the line that repeats the suffix starts (lines before the sent text's are done)."""
        for m in _INDENT.finditer(self.text, self.text.rfind("\n", 0, self.sent) + 1):
            if (m.start() or self.at_line_start) and self.text.startswith(self.line, m.end()):
                return m.start()
        return None

    def _send(self, end: int) -> str:
        out = self.text[self.sent:max(end, self.sent)]
        self.sent = max(end, self.sent)
        return out


def middle_starts_line(prefix: str) -> bool:
    """Whether text after `prefix` starts a line: the prefix's last line is blank or indentation."""
    return not prefix or not prefix[prefix.rfind("\n") + 1:].strip(" \t")


def stream_middle(gen, prefix: str, suffix: str, extra: Sequence[tuple[str, str]] | None = None, *,
                  stats=None, **sampling) -> Iterator:
    """Chunks of the middle from `gen` (a runtime.api.Generator); see Generator.stream_fim."""
    tokens = fim_tokens(gen.tokenizer)
    ids = prompt_ids(gen.tokenizer, tokens, prefix, suffix, extra)
    cut = SuffixStop(suffix, middle_starts_line(prefix))
    stats = stats if stats is not None else Stats()
    steps = gen.stream(ids, stats=stats, end_tokens=tokens.end, **sampling)
    reached = False
    try:
        for chunk in steps:
            text, reached = cut.feed(chunk.text)
            if text or chunk.token_ids:
                yield Chunk(text, chunk.token_ids, chunk.from_draft)
            if reached:
                break
        else:
            rest = cut.flush()
            if rest:
                yield Chunk(rest, [], [])
    finally:
        steps.close()
        if reached:
            stats.finish_reason = "stop"
