"""Benchmark plots: decode tok/s per category and mode against the onnxruntime-genai anchor,
and what a user waits: time to first token and end to end."""

from __future__ import annotations

from pathlib import Path

from ..contract.files import replacing
from ..runtime.drafters import bench_modes

SPECULATIVE = (*bench_modes(), "genai-spec", "genai-ngram")


def plot_suite(result: dict, path: str | Path) -> Path:
    """Write a three-panel PNG of a `run_suite` result: tok/s bars (dashed line = genai); the
    waits (time to first token under the rest of the reply, prefill tok/s annotated, and the
    prefix-reuse request's TTFT); tokens per target pass (acceptance annotated) for the
    speculative modes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = result["categories"]
    names = [c for c in cats if c != "all"] + (["all"] if "all" in cats else [])
    modes = [m for m in result["meta"]["modes"] if any(m in cats[c] for c in names)]
    spec = [m for m in modes if m in SPECULATIVE]
    anchor = result["meta"].get("anchor", "genai")
    colors = {m: f"C{i}" for i, m in enumerate(modes)}

    fig, (ax1, ax_wait, ax2) = plt.subplots(3, 1, figsize=(max(8, 1.6 * len(names) * max(len(modes), 1) / 3), 13),
                                            height_ratios=[3, 3, 2])
    width = 0.8 / max(len(modes), 1)
    for i, m in enumerate(modes):
        shown = [(j, c) for j, c in enumerate(names)
                 if cats[c].get(m) and cats[c][m]["decode_tok_s"] is not None]
        bars = ax1.bar([j - 0.4 + (i + 0.5) * width for j, _ in shown],
                       [cats[c][m]["decode_tok_s"] for _, c in shown], width, label=m, color=colors[m])
        for bar, (_, c) in zip(bars, shown):
            ratio = cats[c][m].get("ratio_vs_genai")
            if ratio is not None and m != anchor:
                ax1.annotate(f"{ratio:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                             ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                             textcoords="offset points")
    for j, c in enumerate(names):
        row = cats[c].get(anchor)
        if row and row["decode_tok_s"]:
            ax1.hlines(row["decode_tok_s"], j - 0.45, j + 0.45, colors="black", linestyles="dashed",
                       linewidth=1, label=f"{anchor} (anchor)" if j == 0 else None)
    ax1.set_xticks(range(len(names)), names)
    ax1.set_ylabel("decode tok/s (median over prompts)")
    meta = result["meta"]
    ax1.set_title(f"{Path(meta['target']).name}"
                  + (f" + {Path(meta['draft']).name}" if meta.get("draft") else "")
                  + f", {meta['threads']} threads, {meta['max_tokens']} new tokens; labels: ratio vs {anchor}")
    ax1.legend(fontsize=8, ncol=min(len(modes) + 1, 4))
    ax1.margins(y=0.15)

    _plot_waits(ax_wait, result, [c for c in names if c != "all"], modes, colors, anchor)

    width = 0.8 / max(len(spec), 1)
    for i, m in enumerate(spec):
        for j, c in enumerate(names):
            row = cats[c].get(m)
            if not row or row["tokens_per_pass"] is None:
                continue
            x = j - 0.4 + (i + 0.5) * width
            ax2.bar(x, row["tokens_per_pass"], width, color=colors[m], label=m if j == 0 else None)
            ax2.annotate(f"{row['acceptance_rate']:.0%}", (x, row["tokens_per_pass"]), ha="center",
                         va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax2.axhline(1.0, color="gray", linewidth=0.8)
    ax2.set_xticks(range(len(names)), names)
    ax2.set_ylabel("tokens per target pass")
    ax2.set_title("speculative modes: tokens per pass (labels: draft acceptance rate)")
    if spec:
        ax2.legend(fontsize=8, ncol=min(len(spec), 5))
    ax2.margins(y=0.15)

    fig.tight_layout()
    path = Path(path)
    try:
        with replacing(path) as tmp:  # a failed write keeps the old plot
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return path


def _plot_waits(ax, result: dict, names: list[str], modes: list[str], colors: dict, anchor: str) -> None:
    """Per category and mode, a bar of the end-to-end time: time to first token solid, the rest
    of the reply pale on top (labels: prefill tok/s, TTFT against the anchor); a hatched bar for the request that reused
    the prompt's prefix (label: its TTFT over the first request's)."""
    cats, reuse = result["categories"], result.get("prefix_reuse", {})
    slots = len(modes) + (1 if any(c in reuse for c in names) else 0)
    width = 0.8 / max(slots, 1)
    for i, m in enumerate(modes):
        for j, c in enumerate(names):
            row = cats[c].get(m)
            if not row or row.get("ttft_seconds") is None:
                continue
            x = j - 0.4 + (i + 0.5) * width
            ttft, e2e = row["ttft_seconds"], row.get("e2e_seconds") or row["ttft_seconds"]
            ax.bar(x, ttft, width, color=colors[m], label=m if j == 0 else None)
            ax.bar(x, max(e2e - ttft, 0.0), width, bottom=ttft, color=colors[m], alpha=0.3)
            ratio = row.get("ttft_vs_genai")
            label = f"{row['prefill_tok_s']:.0f}" + (f", {ratio:.2f}x" if ratio is not None and m != anchor else "")
            ax.annotate(label, (x, ttft), ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                        textcoords="offset points")
    for j, c in enumerate(names):
        if c not in reuse or reuse[c]["ttft_seconds"] is None:
            continue
        x = j - 0.4 + (slots - 0.5) * width
        r = reuse[c]
        ax.bar(x, r["ttft_seconds"], width, color="white", edgecolor="black", hatch="//",
               label="prefix reused (TTFT)" if not any(k in reuse for k in names[:j]) else None)
        ax.annotate(f"{r['ttft_ratio']:.2f}x 1st", (x, r["ttft_seconds"]), ha="center", va="bottom",
                    fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("seconds (median over prompts)")
    ax.set_title(f"waits: time to first token (solid) + rest of the reply (pale) = end to end\n"
                 f"labels: prefill tok/s, TTFT ratio vs {anchor} (>1: sooner)", fontsize=10)
    ax.legend(fontsize=8, ncol=min(slots, 5))
    ax.margins(y=0.2)
