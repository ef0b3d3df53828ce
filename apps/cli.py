"""The `edgespec` command: one subcommand per module, domain errors as one-line messages."""

from __future__ import annotations

import os
import sys

import click

from ..export.errors import EdgespecError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (EdgespecError, ValueError, FileNotFoundError) as e:
            if os.environ.get("EDGESPEC_DEBUG") == "1":
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(package_name="edgespec")
def cli():
    """edgespec: on-device LLM runtime with lossless speculative decoding."""


# True when the `edgespec` console script owns the process (not when `cli` is invoked from
# Python, e.g. by tests): only then may commands switch ONNX Runtime to its process-wide pool.
PROCESS_OWNED = False


def main():
    global PROCESS_OWNED
    PROCESS_OWNED = True
    from . import bench_cmd, chat_cmd, devices_cmd, export_cmd, quality_cmd, run_cmd, serve_cmd  # noqa: F401
    cli()
