"""The `edgespec` command: one subcommand per module, domain errors as one-line messages.

Only the project's own errors (EdgespecError) become one line: any other exception is a bug
and keeps its traceback. EDGESPEC_DEBUG=1 keeps the traceback of every error.

The group lists its commands in COMMANDS; a command module imports nothing of this one, so
the listing makes no circle. main() is the console script: it tells the commands that the
process is theirs (options.Invocation).
"""

from __future__ import annotations

import errno
import io
import os
import sys

import click

from ..contract.errors import EdgespecError
from . import bench_cmd, cache_cmd, chat_cmd, devices_cmd, export_cmd, quality_cmd, replay_cmd, run_cmd, serve_cmd
from .options import Invocation

COMMANDS = (run_cmd.run_command, chat_cmd.chat_command, serve_cmd.serve_command, export_cmd.export_command,
            bench_cmd.bench_command, replay_cmd.replay_command, quality_cmd.quality_command,
            devices_cmd.devices_command, cache_cmd.cache_command)


def _debug() -> bool:
    return os.environ.get("EDGESPEC_DEBUG") == "1"


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgespecError as e:
            if _debug():
                raise
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, commands=COMMANDS)
@click.version_option(package_name="edgespec")
def cli():
    """edgespec: on-device LLM runtime with lossless speculative decoding."""


class _Stdout(io.FileIO):
    """File descriptor 1, remembering the first write that failed (a full disk, a closed pipe):
    that an OSError came from writing the output, not from a command's own files."""

    failure: OSError | None = None

    def write(self, b) -> int:
        try:
            return super().write(b)
        except OSError as e:
            self.failure = self.failure or e
            raise


def _watch_stdout() -> _Stdout | None:
    """Put sys.stdout on a _Stdout, keeping its encoding and buffering (None: started without one)."""
    old = sys.stdout
    if old is None:
        return None
    raw = _Stdout(old.fileno(), "w", closefd=False)
    old.flush()
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(raw), encoding=old.encoding, errors=old.errors,
                                  line_buffering=old.line_buffering, write_through=old.write_through)
    return raw


def _output_failed(out: _Stdout):
    """stdout cannot take more: point it at /dev/null, so that the interpreter's final flush
    stays quiet, and exit 1, with one line unless the reader is gone (a closed pipe, as for
    `edgespec run ... | head -c1`, ends quietly like other Unix tools)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, out.fileno())
    os.close(devnull)
    if out.failure.errno != errno.EPIPE:
        click.echo(f"Error: cannot write output: {out.failure.strerror}", err=True)
    sys.exit(1)


def main():
    out = _watch_stdout()
    code = 0
    try:
        try:
            cli(obj=Invocation(owns_process=True))
        except SystemExit as e:  # how click ends every command
            code = e.code
        if out is not None:
            sys.stdout.flush()  # output still buffered fails here, inside the guard, not at exit
    except OSError:
        if out is None or out.failure is None or _debug():
            raise
    if out is not None and out.failure is not None:
        _output_failed(out)
    sys.exit(code)
