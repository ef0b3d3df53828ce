"""`edgespec devices`: execution providers, cores and memory of this machine."""

from __future__ import annotations

import click

from .cli import cli


@cli.command("devices")
def devices_command():
    """List execution providers, CPU cores and memory."""
    import onnxruntime as ort
    import psutil
    from ..devices.providers import available
    mem = psutil.virtual_memory()
    click.echo(f"onnxruntime {ort.__version__}")
    click.echo(f"providers: {', '.join(available())}")
    click.echo(f"cpu: {psutil.cpu_count(logical=False)} physical / {psutil.cpu_count()} logical cores")
    click.echo(f"memory: {mem.total / 2**30:.1f} GiB total, {mem.available / 2**30:.1f} GiB available")
