"""`edgespec cache`: what the cache holds and its size; `--prune` removes what can be rebuilt."""

from __future__ import annotations

import click


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


@click.command("cache")
@click.option("--prune", is_flag=True, help="remove dequantized sources, work folders of killed exports, "
              "bundles of recipes no preset uses now and stamps of bundles that are gone")
@click.option("--dry-run", is_flag=True, help="with --prune: list what would go, remove nothing")
def cache_command(prune, dry_run):
    """List the cache ($EDGESPEC_CACHE, default ~/.cache/edgespec) by kind, with sizes."""
    from ..contract.cache import location
    from ..export import cache
    entries = cache.entries()
    click.echo(f"cache {location()}")
    for kind in dict.fromkeys(e.kind for e in entries):
        mine = [e for e in entries if e.kind == kind]
        what = cache.KINDS.get(kind, "")
        click.echo(f"{kind + '/':10s} {_mib(sum(e.bytes for e in mine)):>14s}  {what}")
        for e in mine:
            mark = f"  (prunable: {e.why})" if e.why else ""
            click.echo(f"  {e.path.name:46s} {_mib(e.bytes):>14s}{mark}")
    total = sum(e.bytes for e in entries)
    prunable = [e for e in entries if e.why]
    click.echo(f"total {_mib(total)}; prunable {_mib(sum(e.bytes for e in prunable))} in {len(prunable)} items")
    if prune:
        gone = cache.prune(dry_run=dry_run)
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {len(gone)} items, {_mib(sum(e.bytes for e in gone))}", err=True)
