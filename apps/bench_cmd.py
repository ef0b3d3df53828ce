"""`edgespec bench`: a prompt suite through edgespec's modes and onnxruntime-genai, as a table,
JSON and a plot. The work is `bench.run_suite`; this module parses flags and formats."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from ..contract.errors import EdgespecError
from ..contract.files import atomic_write_text
from .bench import DEFAULT_MODES, MODES
from .options import MAX_TOKENS, THREADS, Invocation, pass_invocation
from .run_cmd import DEFAULT_DRAFT, DEFAULT_TARGET


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _refuse_existing(path: Path | None, force: bool) -> None:
    if path is not None and path.exists() and not force:
        raise EdgespecError(f"{path} exists; pass --force to overwrite it")


@click.command("bench")
@pass_invocation
@click.option("--target", default=DEFAULT_TARGET, show_default=True, help="bundle folder or preset")
@click.option("--draft", default=DEFAULT_DRAFT, show_default=True, help="bundle, preset, or 'none'")
@click.option("--genai-target", default=None, help="bundle (same tokenizer) whose graph the onnxruntime-genai "
              "anchors run [default: the target's]; e.g. its builder's default recipe, int4 rtn block 32")
@click.option("--modes", default=None, help="comma-separated; default: " + ",".join(DEFAULT_MODES)
              + "; also " + ",".join(m for m in MODES if m not in DEFAULT_MODES))
@click.option("--categories", default=None,
              help="comma-separated prompt categories (default: the code suite's completion, edit, explain; "
                   "'long': file-sized prompts of 1,000-3,500 tokens, with time to first token and a "
                   "prefix-reuse row, a minute or more per mode on a 1.5B target)")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="suite JSON, or a shipped suite: code (default), long, heldout (prompts the drafting "
                   "policy was never tuned on)")
@click.option("--max-tokens", type=MAX_TOKENS, default=200, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=2, show_default=True,
              help="timed runs per prompt and mode")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="untimed runs before them")
@click.option("--threads", type=THREADS, default=lambda: min(2, os.cpu_count() or 2), show_default="2",
              help="intra-op threads for every mode")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the full results here")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write a PNG here")
@click.option("--trace", "trace_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="write a trace of each prompt and edgespec mode (its last timed run) into this folder, "
                   "for `edgespec replay`")
@click.option("--force", is_flag=True, help="overwrite existing --json / --plot files and --trace traces")
@click.option("--quick", is_flag=True, help="1 prompt per category, 1 repeat, no warm-up")
def bench_command(invocation: Invocation, target, draft, genai_target, modes, categories, prompts_file, max_tokens, repeats, warmup, threads,
                  json_out, plot_out, trace_dir, force, quick):
    """Benchmark decoding modes on a prompt suite against onnxruntime-genai."""
    from .bench import DEFAULT_MODES, NEEDS_DRAFT, load_suite, run_suite
    _refuse_existing(json_out, force)
    _refuse_existing(plot_out, force)
    _refuse_traces(trace_dir, force)
    mode_list = _csv(modes) or list(DEFAULT_MODES)
    if draft == "none" and not modes:  # the default list without the modes that need a draft
        mode_list = [m for m in mode_list if m not in NEEDS_DRAFT]
    if quick:
        repeats, warmup = 1, 0
    prompts = load_suite(prompts_file, _csv(categories) or None, per_category=1 if quick else None)
    result = run_suite(target, draft, genai_target=genai_target, modes=mode_list, prompts=prompts, max_tokens=max_tokens,
                       repeats=repeats, warmup=warmup, threads=threads, shared_pool=invocation.owns_process,
                       trace=trace_dir)
    print_table(result)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=1))
        click.echo(f"wrote {json_out}", err=True)
    if plot_out is not None:
        from .plots import plot_suite
        plot_suite(result, plot_out)
        click.echo(f"wrote {plot_out}", err=True)
    if trace_dir is not None:
        click.echo(f"wrote traces to {trace_dir} (edgespec replay {trace_dir})", err=True)


def _refuse_traces(folder: Path | None, force: bool) -> None:
    from ..runtime.trace import SUFFIXES
    if folder is not None and folder.is_dir() and not force and any(p.name.endswith(SUFFIXES) for p in folder.iterdir()):
        raise EdgespecError(f"{folder} holds traces already; pass --force to overwrite them, or choose another folder")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _matches(r: dict) -> str:
    gap = r.get("max_divergence_gap")
    return (r["matches_plain"] or "-") + ("" if gap is None else f" Δ{gap:.2f}")


def _paired(r: dict) -> str:
    if r.get("paired_vs_plain") is None:
        return "-"
    return f"{r['paired_vs_plain']:.2f} ({r['worst_vs_plain']:.2f})"


def print_table(result: dict) -> None:
    """Per-category medians, one row per mode, to stdout."""
    from rich.console import Console
    from rich.table import Table
    meta = result["meta"]
    anchor = meta["anchor"] + ("" if meta.get("genai_target", meta["target"]) == meta["target"]
                               else f" on {Path(meta['genai_target']).name}")
    table = Table(title=f"{Path(meta['target']).name} vs {anchor}: {meta['threads']} threads, "
                        f"{meta['max_tokens']} new tokens, median of {meta['repeats']}")
    for name, justify in [("category", "left"), ("mode", "left"), ("decode tok/s", "right"),
                          (f"x {meta['anchor']}", "right"), ("x plain (worst)", "right"), ("prefill tok/s", "right"),
                          ("drafted/pass", "right"), ("tok/pass", "right"), ("accept", "right"), ("draft/verify/other", "right"),
                          ("= plain", "right")]:
        table.add_column(name, justify=justify)
    for cat, modes in result["categories"].items():
        for i, (mode, r) in enumerate(modes.items()):
            split = r["split"]
            table.add_row(cat if i == 0 else "", mode, _fmt(r["decode_tok_s"], ".1f"),
                          _fmt(r["ratio_vs_genai"], ".2f"), _paired(r), _fmt(r["prefill_tok_s"], ".0f"),
                          _fmt(r.get("drafted_per_pass"), ".1f"), _fmt(r["tokens_per_pass"], ".2f"),
                          _fmt(r["acceptance_rate"], ".0%"),
                          "/".join(_fmt(split[k], ".0%") for k in ("draft", "verify", "overhead")),
                          _matches(r), end_section=i == len(modes) - 1)
    console = Console(width=max(Console().width, 150))
    console.print(table)
    if any(r.get("max_divergence_gap") is not None for modes in result["categories"].values()
           for r in modes.values()):
        console.print("= plain: prompts where every trial's ids equal plain's; Δ: the target's largest logit gap between "
                      "plain's token and the mode's where they first differ (small: a near-tie)")
    console.print("x plain: decode speed over plain's in the same round (median over rounds and prompts; "
                  "worst prompt in brackets)")
    for mode, reason in result["unsupported"].items():
        console.print(f"{mode}: not run ({reason})")
    print_latency(result, console)
    console.print(f"peak RSS {result['peak_rss_mb']:.0f} MB")


def print_latency(result: dict, console) -> None:
    """Per category (not "all": waits of short and long prompts do not mix), what a user waits:
    time to first token and prefill speed, decode speed, end to end; each against genai in the
    same round; then the category's prefix-reuse row."""
    from rich.table import Table
    meta, reuse = result["meta"], result.get("prefix_reuse", {})
    anchor = f"x {meta['anchor']}"
    table = Table(title=f"waits: time to first token, end to end ({meta['max_tokens']} new tokens)")
    for name in ("category", "mode", "prompt tok", "cached", "TTFT s", anchor, "prefill tok/s", anchor,
                 "decode tok/s", "e2e s", anchor):
        table.add_column(name, justify="left" if name in ("category", "mode") else "right")
    for cat, modes in result["categories"].items():
        if cat == "all":
            continue
        rows = list(modes.items())
        for i, (mode, r) in enumerate(rows):
            table.add_row(cat if i == 0 else "", mode, _fmt(r.get("prompt_tokens"), ".0f"),
                          _fmt(r.get("cached_prompt_tokens"), ".0f"), _fmt(r.get("ttft_seconds"), ".2f"),
                          _fmt(r.get("ttft_vs_genai"), ".2f"), _fmt(r["prefill_tok_s"], ".0f"),
                          _fmt(r.get("prefill_vs_genai"), ".2f"), _fmt(r["decode_tok_s"], ".1f"),
                          _fmt(r.get("e2e_seconds"), ".1f"), _fmt(r.get("e2e_vs_genai"), ".2f"),
                          end_section=i == len(rows) - 1 and cat not in reuse)
        if cat in reuse:
            r = reuse[cat]
            cached = _fmt(r["cached_prompt_tokens"], ".0f") + (  # a first request that was not cold says so
                f" (1st: {r['first_cached_prompt_tokens']:.0f})" if r.get("first_cached_prompt_tokens") else "")
            table.add_row("", f"{r.get('mode', 'plain')}, prefix reused", "", cached,
                          f"{_fmt(r['ttft_seconds'], '.2f')} ({_fmt(r['ttft_ratio'], '.2f')}x 1st)",
                          "", "", "", "", "", "", end_section=True)
    console.print(table)
    console.print(f"{anchor}: against {meta['anchor']} in the same round, above 1 = better (prefill: speed over "
                  f"{meta['anchor']}'s; TTFT, e2e: {meta['anchor']}'s time over the mode's)")
    if reuse:
        console.print("prefix reused: a second request after the prompt (same file, another instruction) through "
                      "the Generator's reuse path; its TTFT, and over the first request's (median, paired)")


def main():
    bench_command()
