"""Option types shared by the commands: a bad value is refused while the command line is
parsed, with the option's name, before any model is loaded or exported."""

from __future__ import annotations

import os
from dataclasses import dataclass

import click

SEED = click.IntRange(min=0)
BUDGET = click.IntRange(min=1)  # drafted tokens per pass; no drafting is --drafter none
MAX_TOKENS = click.IntRange(min=1)
MAX_CONTEXT = click.IntRange(min=1)


class Threads(click.ParamType):
    """Intra-op threads: at least 1 and at most the machine's logical cores (more only
    oversubscribe the cores, which slows every pass)."""

    name = "integer"

    def convert(self, value, param, ctx) -> int:
        n = click.INT.convert(value, param, ctx)
        cores = os.cpu_count()
        if n < 1:
            self.fail(f"{n} is not a thread count; give at least 1", param, ctx)
        if cores is not None and n > cores:
            self.fail(f"{n} is more than the {cores} logical cores of this machine; give at most {cores}",
                      param, ctx)
        return n


THREADS = Threads()


@dataclass(frozen=True)
class Invocation:
    """What the caller of the `edgespec` group tells its commands, as click's `obj`: whether the
    process is the command's own. The console script's main() says so, and only then may a
    command switch ONNX Runtime to its process-wide thread pool (every later session of the
    process must share it); a Python caller, such as a test's CliRunner, passes none."""

    owns_process: bool = False


pass_invocation = click.make_pass_decorator(Invocation, ensure=True)


def not_empty(what: str):
    """A click callback refusing an empty string (each of a repeatable option's values)."""

    def check(ctx, param, value):
        values = value if isinstance(value, tuple) else (value,)
        if any(v == "" for v in values):
            raise click.BadParameter(f"{what} is empty; give some text", ctx=ctx, param=param)
        return value
    return check
