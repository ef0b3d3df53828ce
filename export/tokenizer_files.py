"""Tokenizer files of a bundle, and the hash that says two models share a tokenizer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "generation_config.json",
                   "vocab.json", "merges.txt", "tokenizer.model")

# End-of-turn tokens of common chat templates; a generation stops on any present in the vocabulary.
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")


def copy_tokenizer(src: Path, dst: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def tokenizer_sha256(folder: Path) -> str:
    """sha256 of the token <-> id mapping (vocabulary, merges, added tokens), not of formatting."""
    data = json.loads((Path(folder) / "tokenizer.json").read_text())
    model = data.get("model", {})
    canonical = {
        "type": model.get("type"),
        "vocab": model.get("vocab"),
        "merges": model.get("merges"),
        "added": sorted((t["id"], t["content"]) for t in data.get("added_tokens", [])),
    }
    blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


def stop_token_ids(folder: Path, tokenizer) -> list[int]:
    """EOS ids: generation config, tokenizer EOS, and end-of-turn tokens the vocabulary has."""
    ids: set[int] = set()
    gen = Path(folder) / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return sorted(int(i) for i in ids)
