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

from ..export.errors import EdgespecError


class BundleTokenizer:
    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise EdgespecError(f"{folder} has no tokenizer.json; re-export the bundle")
        self._tok = Tokenizer.from_file(str(path))
        config_path = folder / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = folder / "chat_template.jinja"
        self.chat_template = template.read_text() if template.is_file() else self.config.get("chat_template")
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
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = True,
                            return_dict: bool = False, **kwargs):
        if not self.chat_template:
            raise EdgespecError("this bundle has no chat template; pass a string prompt")
        if self._template is None:
            self._template = _environment().from_string(self.chat_template)
        text = self._template.render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token=self._special("bos_token") or "", eos_token=self._special("eos_token") or "",
            **kwargs)
        return self.encode(text) if tokenize else text


def _environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise EdgespecError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, indent=indent, ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
