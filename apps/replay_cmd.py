"""`edgespec replay`: drafting policies judged offline on traces that `edgespec bench --trace`
recorded. The work is `runtime.replay.replay_suite`; this module parses flags and formats."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click

from ..contract.files import atomic_write_text
from ..runtime.replay import LENGTHS, REPLAYERS
from .bench_cmd import _csv, _fmt, _refuse_existing


@click.command("replay")
@click.argument("traces", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--drafters", default=",".join(REPLAYERS), show_default=True,
              help="comma-separated drafters to replay (bench mode names)")
@click.option("--set", "settings", multiple=True, metavar="NAME=VALUE",
              help="a PolicyConfig field for the replay (runtime/policy_config.py); repeatable")
@click.option("--length", type=click.Choice(LENGTHS), default="cost", show_default=True,
              help="the draft model's length policy: priced from the trace's costs (as with device profiles), "
                   "or the heuristic schedule (as without)")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="write the full results here")
@click.option("--force", is_flag=True, help="overwrite an existing --json file")
def replay_command(traces, drafters, settings, length, json_out, force):
    """Replay drafters on recorded traces (files, or folders of them): simulated decode speed per
    prompt and category, and auto's over the best other mode's and plain's."""
    from ..runtime.replay import policy_config, replay_suite
    _refuse_existing(json_out, force)
    config = policy_config(settings)
    names = _csv(drafters) or list(REPLAYERS)
    result = replay_suite(traces, names, config, length)
    result["categories"] = categories(result["prompts"], names)
    print_replay(result, settings)
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=1))
        click.echo(f"wrote {json_out}", err=True)


def categories(rows: list[dict], drafters: list[str]) -> dict:
    """Per category (and "all"): medians over its prompts of each drafter's replayed and recorded
    speed, and of auto's ratios."""
    from .bench import by_category, median
    return {cat: {"prompts": len(members),
                  "modes": {d: {"tok_s": median(r["modes"].get(d, {}).get("tok_s") for r in members),
                                "live_tok_s": median(r["modes"].get(d, {}).get("live_tok_s") for r in members)}
                            for d in drafters},
                  "auto_vs_best": median(r["auto_vs_best"] for r in members),
                  "auto_vs_plain": median(r["auto_vs_plain"] for r in members)}
            for cat, members in by_category(rows).items()}


def _speed(mode: dict | None) -> str:
    """Replayed tok/s, and the recorded run's in brackets where the trace of that mode is there."""
    if not mode or mode.get("tok_s") is None:
        return "-"
    live = mode.get("live_tok_s")
    return f"{mode['tok_s']:.1f}" + ("" if live is None else f" ({live:.1f})")


def _choices(mode: dict | None) -> str:
    """Auto's passes per kind, as l(ong) s(hort) m(odel) b(oth) n(one)."""
    c = (mode or {}).get("choices")
    return "-" if not c else " ".join(f"{k[0]}{v}" for k, v in c.items() if v)


def print_replay(result: dict, settings=()) -> None:
    """Per prompt, then per category (medians over its prompts), to stdout."""
    from rich.console import Console
    from rich.table import Table
    drafters = list(next(iter(result["categories"].values()))["modes"])
    console = Console(width=max(Console().width, 150))
    table = Table(title="replayed decode tok/s per prompt (recorded run's in brackets)")
    for name in ("category", "prompt", "tokens", *drafters, "auto/best", "auto/plain", "auto's passes"):
        table.add_column(name, justify="left" if name in ("category", "prompt", "auto's passes") else "right")
    rows = result["prompts"]
    for i, r in enumerate(rows):
        first = i == 0 or rows[i - 1]["category"] != r["category"]
        last = i == len(rows) - 1 or rows[i + 1]["category"] != r["category"]
        table.add_row(r["category"] if first else "", r["id"], str(r["tokens"]),
                      *(_speed(r["modes"].get(d)) for d in drafters), _fmt(r["auto_vs_best"], ".2f"),
                      _fmt(r["auto_vs_plain"], ".2f"), _choices(r["modes"].get("auto")), end_section=last)
    console.print(table)
    table = Table(title="per category: medians over prompts")
    for name in ("category", "prompts", *drafters, "auto/best", "auto/plain"):
        table.add_column(name, justify="left" if name == "category" else "right")
    for cat, c in result["categories"].items():
        table.add_row(cat, str(c["prompts"]), *(_speed(c["modes"][d]) for d in drafters),
                      _fmt(c["auto_vs_best"], ".2f"), _fmt(c["auto_vs_plain"], ".2f"))
    console.print(table)
    skipped = sorted({d for r in rows for d in r["skipped"]})
    if skipped:
        console.print(f"not replayed on traces without the draft's distributions: {', '.join(skipped)}", soft_wrap=True)
    console.print("auto/best: auto's replayed speed over the best other drafter's; auto's passes: l(ong) and "
                  "s(hort) lookup, m(odel), b(oth: model and lookup merged), n(one: plain)", soft_wrap=True)
    console.print(f"simulated time: draft feeds, target passes and the loop's overhead per pass priced from each "
                  f"trace's costs, lookup free; draft length policy: {result['length']}", soft_wrap=True)
    sources = Counter(r["costs"] for r in rows)
    console.print("costs (target/draft): " + ", ".join(f"{k} on {n} prompt{'s' if n > 1 else ''}"
                                                       for k, n in sources.items())
                  + " (profile: cached device profiles; passes, timed: the recording's own timing)", soft_wrap=True)
    if settings:
        console.print(f"settings: {', '.join(settings)}", soft_wrap=True)


def main():
    replay_command()
