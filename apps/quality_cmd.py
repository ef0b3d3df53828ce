"""`edgespec quality BUNDLE` / `edgespec quality --compare SOURCE --out DIR`: what quantization costs."""

from __future__ import annotations

import json

import click

from ..export.files import atomic_write_text
from .cli import cli
from .options import THREADS


@cli.command("quality")
@click.argument("bundle", required=False, type=click.Path(file_okay=False))
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
def quality_command(bundle, reference, compare_source, recipes, out, windows, window_len, threads, json_path):
    """Perplexity and top-1 agreement of BUNDLE vs its unquantized source, on Python stdlib text."""
    from ..quant.quality import compare_recipes, format_report, quality_report
    if (bundle is None) == (compare_source is None):
        raise click.UsageError("give either a BUNDLE or --compare SOURCE --out DIR")
    if compare_source is not None:
        if out is None:
            raise click.UsageError("--compare needs --out DIR for the exported bundles")
        from ..quant.recipes import RECIPES
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
