"""BundleTokenizer (no transformers at run time) agrees with transformers' tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgespec.runtime.tokenizer import BundleTokenizer

TEXTS = ["def add(a, b):\n    return a + b\n", "héllo wörld ✓ 日本", "  leading spaces\n\n\ttabs"]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Write fizzbuzz."},
            {"role": "assistant", "content": "```python\nprint(1)\n```"}, {"role": "user", "content": "again"}]


def bundles(tiny_bundle):
    out = [tiny_bundle]
    real = Path.home() / ".cache" / "edgespec" / "bundles"
    out += [p for p in sorted(real.glob("*-int4")) if (p / "edgespec.json").is_file()]
    return out


def test_matches_transformers(tiny_bundle):
    from transformers import AutoTokenizer
    for folder in bundles(tiny_bundle):
        ours, ref = BundleTokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
        for text in TEXTS:
            ids = ref.encode(text, add_special_tokens=False)
            assert ours.encode(text) == ids, folder
            assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
        expected = ref.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
        assert ours.apply_chat_template(MESSAGES, tokenize=False) == expected, folder
        assert ours.eos_token_id == ref.eos_token_id


def test_missing_tokenizer_file(tmp_path):
    from edgespec.contract.errors import EdgespecError
    with pytest.raises(EdgespecError, match="has no tokenizer.json"):
        BundleTokenizer(tmp_path)
