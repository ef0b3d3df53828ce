"""First use of a preset, in a child process.

The export's memory (torch, transformers, a tensor being re-quantized) then never
shares the run's process: the run's memory line describes the run, and the
preparation reports its own wall time and peak RSS.

    python -m edgespec.export.prepare PRESET OUT RECIPE_JSON ROLE
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .errors import EdgespecError


def prepare(name: str, out: Path, recipe, role: str) -> None:
    """Export preset `name` into `out` (replacing what is there) in a child process."""
    started = time.time()
    command = [sys.executable, "-m", __name__, name, str(out), json.dumps(recipe.to_dict()), role]
    child = subprocess.Popen(command)
    try:
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(child.pid, 0)
            code, peak = os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024  # KiB on Linux
        else:
            code, peak = child.wait(), None
    except BaseException:  # Ctrl-C reached the child too: let it clean up its work folder
        child.wait()
        raise
    if code != 0:
        raise EdgespecError(f"preparing {name} failed (exit status {code}; its message is above)")
    minutes, seconds = divmod(round(time.time() - started), 60)
    print(f"prepared {name} in {minutes}:{seconds:02d}" + (f", peak RSS {peak:.0f} MiB" if peak else ""),
          file=sys.stderr)


def main(argv: list[str]) -> int:
    from ..quant.recipes import Recipe
    from .pipeline import ExportOptions, export
    name, out, recipe, role = argv
    try:
        export(name, Path(out), ExportOptions(recipe=Recipe.from_dict(json.loads(recipe)), role=role, force=True))
    except EdgespecError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
