"""The bundle's tokenizer without transformers (which would pull in torch: +350 MB of RSS).

`tokenizers` reads tokenizer.json; the chat template is rendered with jinja2
the way transformers renders it (sandboxed, trim_blocks, lstrip_blocks, with
`raise_exception` and `strftime_now`). The methods keep transformers' names
and keyword arguments so either tokenizer can be passed around.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ..contract.errors import BundleError, EdgespecError, InputError


class BundleTokenizer:
    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer
        folder = Path(folder)
        self.name = folder.name  # the bundle, in messages
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise BundleError(f"{folder} has no tokenizer.json; re-export the bundle")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001  (narrowed below)
            if type(e) is not Exception:  # tokenizers raises the base class itself for a file it cannot parse
                raise
            raise BundleError(f"{path} is not a tokenizer file tokenizers can read ({e}); "
                              "re-export the bundle") from None
        config_path = folder / "tokenizer_config.json"
        self.config = _read_json(config_path) if config_path.is_file() else {}
        template = folder / "chat_template.jinja"
        self.chat_template = _read_text(template) if template.is_file() else self.config.get("chat_template")
        self._template = None

    def _special(self, name: str) -> str | None:
        value = self.config.get(name)
        return value.get("content") if isinstance(value, dict) else value

    @property
    def eos_token_id(self) -> int | None:
        eos = self._special("eos_token")
        return self._tok.token_to_id(eos) if eos else None

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def get_vocab(self) -> dict[str, int]:
        return self._tok.get_vocab(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        _check_unicode(text, "prompt")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True,
                            return_dict: bool = False, **kwargs):
        if not self.chat_template:
            raise InputError(f"{self.name} has no chat template: pass the prompt as plain text (CLI: --raw)")
        messages = list(messages)
        for i, m in enumerate(messages):  # name the message; the rendered text's index would not
            content = m.get("content") if isinstance(m, dict) else None
            if isinstance(content, str):
                _check_unicode(content, f"message {i}")
        if self._template is None:
            self._template = _environment().from_string(self.chat_template)
        text = self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self._special("bos_token") or "", eos_token=self._special("eos_token") or "",
            **kwargs)
        return self.encode(text) if tokenize else text


def _check_unicode(text: str, what: str) -> None:
    """Refuse a str that cannot be UTF-8 (lone surrogates: bytes that were not UTF-8, decoded
    with surrogateescape), which `tokenizers` rejects with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(f"{what} is not valid Unicode text: lone surrogate U+{ord(text[e.start]):04X} at "
                         f"index {e.start} (bytes that are not UTF-8?); give UTF-8 text") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path} holds a JSON {type(data).__name__}, not an object; re-export the bundle")
    return data


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); re-export the bundle") from None


def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise EdgespecError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
