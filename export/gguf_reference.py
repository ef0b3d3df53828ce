"""The GGUF's own model in float64 numpy: what a faithful bundle must compute.

Layer by layer over all sequences at once, so each weight is dequantized once per
call and then dropped: memory stays at one float64 matrix (the LM head in row
chunks), never a float copy of the model. The architecture is the graph's
(gguf_decoder.py): RMSNorm, RoPE in the GGUF's row order, grouped-query causal
attention, SiLU MLP.
"""

from __future__ import annotations

import numpy as np

from .gguf_decoder import rope_cache
from .gguf_model import GGUFModel

HEAD_ROWS = 8192  # vocabulary rows of the LM head dequantized at a time


class Reference:
    def __init__(self, model: GGUFModel, layers: list[int] | None = None):
        self.model = model
        self.config = model.config
        self.layers = list(range(self.config.num_layers)) if layers is None else list(layers)

    def logits(self, token_lists: list[list[int]]) -> list[np.ndarray]:
        """float64 logits [S, vocab] of each token list, each a fresh sequence."""
        return self.head(self.hidden(token_lists))

    def hidden(self, token_lists: list[list[int]]) -> list[np.ndarray]:
        """The final normalized hidden states [S, hidden] of each token list."""
        m, cfg = self.model, self.config
        table = "token_embd.weight"
        hidden = [m.dequantized(table, np.asarray(ids)) for ids in token_lists]  # each [S, hidden]
        cos, sin = rope_cache(cfg, max(len(ids) for ids in token_lists), np.float64)
        for layer in self.layers:
            blk = f"blk.{layer}"
            w = {p: m.dequantized(f"{blk}.attn_{p}.weight") for p in "qkv"}
            b = {p: m.vector(f"{blk}.attn_{p}.bias").astype(np.float64) if m.has(f"{blk}.attn_{p}.bias") else 0.0
                 for p in "qkv"}
            wo = m.dequantized(f"{blk}.attn_output.weight")
            attn_norm = m.vector(f"{blk}.attn_norm.weight").astype(np.float64)
            hidden = [h + self._attention(_rms(h, attn_norm, cfg.rms_eps), w, b, wo, cos, sin) for h in hidden]
            del w, wo
            ffn_norm = m.vector(f"{blk}.ffn_norm.weight").astype(np.float64)
            gate, up = m.dequantized(f"{blk}.ffn_gate.weight"), m.dequantized(f"{blk}.ffn_up.weight")
            down = m.dequantized(f"{blk}.ffn_down.weight")
            for i, h in enumerate(hidden):
                x = _rms(h, ffn_norm, cfg.rms_eps)
                g = x @ gate.T
                hidden[i] = h + ((g / (1 + np.exp(-g))) * (x @ up.T)) @ down.T
            del gate, up, down
        final = m.vector("output_norm.weight").astype(np.float64)
        return [_rms(h, final, cfg.rms_eps) for h in hidden]

    def head(self, normed: list[np.ndarray]) -> list[np.ndarray]:
        """Hidden states [S, hidden] -> logits [S, vocab], the LM head dequantized in row chunks."""
        m, cfg = self.model, self.config
        head = "token_embd.weight" if cfg.tied_embeddings else "output.weight"
        out = [np.empty((len(h), cfg.vocab_size)) for h in normed]
        for start in range(0, cfg.vocab_size, HEAD_ROWS):
            rows = slice(start, min(start + HEAD_ROWS, cfg.vocab_size))
            w = m.dequantized(head, rows)  # [rows, hidden]
            for o, h in zip(out, normed):
                o[:, rows] = h @ w.T
        m.release(head)
        return out

    def _attention(self, x, w, b, wo, cos, sin):
        cfg = self.config
        s, hd = len(x), cfg.head_dim
        q = (x @ w["q"].T + b["q"]).reshape(s, cfg.num_heads, hd)
        k = (x @ w["k"].T + b["k"]).reshape(s, cfg.num_kv_heads, hd)
        v = (x @ w["v"].T + b["v"]).reshape(s, cfg.num_kv_heads, hd)
        q, k = (_rotate(t, cos[:s], sin[:s], cfg.rope_interleaved) for t in (q, k))
        group = cfg.num_heads // cfg.num_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # [S, heads, head_dim]
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        scores = scores + np.triu(np.full((s, s), -np.inf), 1)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probs = scores / scores.sum(-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", probs, v).reshape(s, cfg.num_heads * hd)
        return out @ wo.T


def _rms(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rotate(t: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """RoPE on [S, heads, head_dim]: pairs (2i, 2i+1) when interleaved, else (i, i + head_dim/2)."""
    c, s = cos[:, None, :], sin[:, None, :]  # [S, 1, head_dim/2]
    if interleaved:
        x1, x2 = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2], out[..., 1::2] = x1 * c - x2 * s, x2 * c + x1 * s
        return out
    half = t.shape[-1] // 2
    x1, x2 = t[..., :half], t[..., half:]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)
