"""`edgespec quality BUNDLE` / `edgespec quality --compare SOURCE --out DIR`: what quantization costs.
`edgespec quality --tasks BUNDLE...`: what it costs in working code (quant/tasks.py)."""

from __future__ import annotations

import json

import click

from ..contract.files import atomic_write_text
from .options import MAX_TOKENS, THREADS


@click.command("quality")
@click.argument("bundles", metavar="[BUNDLE]...", nargs=-1, type=click.Path(file_okay=False))
@click.option("--tasks", is_flag=True,
              help="run the shipped programming tasks on each BUNDLE (greedy) and report the pass rates, "
                   "with the source model (torch) as the reference row")
@click.option("--max-tokens", type=MAX_TOKENS, default=None,
              help="with --tasks: tokens per reply (a reply stops after its code block) [default: 384]")
@click.option("--no-reference", is_flag=True, help="with --tasks: no reference row")
@click.option("--reference", type=click.Path(file_okay=False), default=None,
              help="bundle (e.g. an fp32 export) or HF folder to compare against [default: the bundle's source]")
@click.option("--compare", "compare_source", metavar="SOURCE", default=None,
              help="export SOURCE with each of --recipes into --out and report each")
@click.option("--recipes", default="int4,int8,fp32", show_default=True, help="with --compare: comma-separated")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="with --compare: folder for the bundles (one subfolder per recipe; existing ones are reused)")
@click.option("--windows", type=click.IntRange(min=1), default=8, show_default=True, help="text windows to evaluate")
@click.option("--window-len", type=click.IntRange(min=2), default=256, show_default=True, help="tokens per window")
@click.option("--threads", type=THREADS, default=None, help="intra-op threads [default: physical cores]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="also write the report here")
def quality_command(bundles, tasks, max_tokens, no_reference, reference, compare_source, recipes, out, windows,
                    window_len, threads, json_path):
    """Perplexity and top-1 agreement of BUNDLE vs its unquantized source, on Python stdlib text;
    with --tasks, the pass rate of each BUNDLE on programming tasks."""
    if tasks:
        return _tasks(bundles, compare_source, out, no_reference, reference, max_tokens, threads, json_path)
    if no_reference or max_tokens is not None:
        raise click.UsageError(f"{'--no-reference' if no_reference else '--max-tokens'} is for --tasks")
    if len(bundles) > 1:
        raise click.UsageError("give one BUNDLE (several are for --tasks)")
    bundle = bundles[0] if bundles else None
    from ..quant.quality import compare_recipes, format_report, quality_report
    if (bundle is None) == (compare_source is None):
        raise click.UsageError("give either a BUNDLE or --compare SOURCE --out DIR")
    if compare_source is not None:
        if out is None:
            raise click.UsageError("--compare needs --out DIR for the exported bundles")
        from ..export.recipes import RECIPES
        names = [r.strip() for r in recipes.split(",") if r.strip()]
        unknown = [n for n in names if n not in RECIPES]
        if unknown:
            raise click.BadParameter(f"unknown recipe(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}",
                                     param_hint="'--recipes'")
        report = compare_recipes(compare_source, names, out, reference=reference, windows=windows,
                                 window_len=window_len, threads=threads)
    else:
        if out is not None:
            raise click.UsageError("--out is for --compare; a single BUNDLE writes nothing but --json")
        report = quality_report(bundle, reference, windows=windows, window_len=window_len, threads=threads)
    click.echo(format_report(report))
    if json_path:
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        click.echo(f"report written to {json_path}", err=True)


def _tasks(bundles, compare_source, out, no_reference, reference, max_tokens, threads, json_path):
    from ..quant.tasks import format_row, tasks_report
    if not bundles:
        raise click.UsageError("--tasks needs at least one BUNDLE")
    if compare_source is not None or out is not None:
        raise click.UsageError("--tasks runs bundles that exist; export them first (--compare SOURCE --out DIR "
                               "exports one per recipe)")
    if no_reference and reference is not None:
        raise click.UsageError("--no-reference and --reference exclude each other")
    from ..quant.tasks import DEFAULT_MAX_TOKENS
    tasks_report(bundles, reference, with_reference=not no_reference,
                 max_tokens=max_tokens or DEFAULT_MAX_TOKENS, threads=threads,
                 json_path=json_path, on_row=lambda row: click.echo(format_row(row)))
    if json_path:
        click.echo(f"report written to {json_path}", err=True)
