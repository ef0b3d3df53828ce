"""`edgespec devices`: execution providers, cores and memory; `--profile` measures pass costs."""

from __future__ import annotations

import click

from .options import THREADS


@click.command("devices")
@click.option("--profile", "bundles", multiple=True,
              help="bundle or preset to profile: cost of one pass over 1..32 tokens (repeatable)")
@click.option("--threads", type=THREADS, default=None, help="intra-op threads (default: physical cores)")
@click.option("--provider", default="cpu", show_default=True)
@click.option("--remeasure", is_flag=True, help="ignore a cached profile")
def devices_command(bundles, threads, provider, remeasure):
    """List execution providers, CPU cores and memory; profile bundles."""
    import onnxruntime as ort
    import psutil
    from ..devices.providers import available
    mem = psutil.virtual_memory()
    click.echo(f"onnxruntime {ort.__version__}")
    click.echo(f"providers: {', '.join(available())}")
    click.echo(f"cpu: {psutil.cpu_count(logical=False)} physical / {psutil.cpu_count()} logical cores")
    click.echo(f"memory: {mem.total / 2**30:.1f} GiB total, {mem.available / 2**30:.1f} GiB available")
    for ref in bundles:
        from ..devices.profile import load_or_measure, profile_path
        from .prepare import bundle_path
        from ..runtime.session import Session, SessionOptions
        session = Session(bundle_path(ref), SessionOptions(provider=provider, threads=threads))
        click.echo(f"\nprofile of {session.path.name} ({session.providers[0]}, {session.threads} threads):")
        profile = load_or_measure(session, remeasure=remeasure,
                                  progress=lambda s, ms: click.echo(f"  measured {s} tokens: {ms:.1f} ms", err=True))
        base = profile.pass_ms[1]
        for s, ms in sorted(profile.pass_ms.items()):
            click.echo(f"  {s:3d} tokens/pass: {ms:7.1f} ms  ({ms / base:4.2f}x one token, "
                       f"{1000 * s / ms:6.1f} tok/s)")
        click.echo(f"  cached in {profile_path(session)}")
