"""Tiny random Qwen2/Llama models with a byte-level tokenizer, built in-process for tests."""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_tokenizer(vocab_size: int = 320):
    """A byte-level BPE with 256 byte tokens, some merges, and chat specials: vocab <= vocab_size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL), special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [training_text()] + ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n",
              "the quick brown fox jumps over the lazy dog"] * 20
    tok.train_from_iterator(corpus, trainer)
    tok.add_special_tokens(SPECIAL)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_hf_model(folder: Path, arch: str = "qwen2", seed: int = 0, layers: int = 2,
                  vocab_size: int = 320, hidden: int = 64, train_steps: int = 60) -> Path:
    """Save a small model (random, then briefly trained on stdlib source so greedy text is not
    one repeated token and two seeds agree often but not always) + tokenizer as an HF folder
    (head_dim 16: ORT's GroupQueryAttention needs a multiple of 16)."""
    import torch
    import transformers
    folder = Path(folder)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=hidden // 16, num_key_value_heads=2,
                  head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
                  )
    tok = byte_tokenizer(vocab_size)
    common["eos_token_id"] = tok.eos_token_id
    if arch == "qwen2":
        config, cls = transformers.Qwen2Config(**common), transformers.Qwen2ForCausalLM
    elif arch == "llama":
        config, cls = transformers.LlamaConfig(**common), transformers.LlamaForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(config)
    if train_steps:
        _train(model, tok, train_steps, seed)
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def training_text() -> str:
    import textwrap
    import inspect
    return textwrap.dedent(inspect.getsource(textwrap))


def _train(model, tok, steps: int, seed: int) -> None:
    import torch
    ids = torch.tensor(tok.encode(training_text()))
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(ids) - 65, (8,), generator=g)
        batch = torch.stack([ids[s:s + 64] for s in starts])  # [8, 64]
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
