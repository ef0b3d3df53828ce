"""First use of a preset: its bundle exported in a child process, the export's parity check
run by the runtime.

export makes bundles and runtime opens them, and neither imports the other; this module,
above both, joins them for `edgespec.load` and the commands. The child keeps the export's
memory (torch, transformers, a tensor being re-quantized) out of the run's process: the
run's memory line describes the run, and the preparation reports its own wall time and
peak RSS.

    python -m edgespec.apps.prepare PRESET OUT RECIPE_JSON ROLE
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..contract.errors import EdgespecError
from ..export import bundles
from ..export.recipes import Recipe


def bundle_path(ref: str | Path, recipe: Recipe | None = None, isolated: bool = True) -> Path:
    """A bundle folder as given, or the cached bundle of a preset, prepared if missing: in a
    child process unless not `isolated`."""
    return bundles.bundle_path(ref, prepare if isolated else export_preset, recipe)


def export_preset(name: str, out: Path, recipe: Recipe, role: str) -> None:
    """Export preset `name` into `out` (replacing what is there), parity checked, in this process."""
    from ..export.pipeline import ExportOptions, export
    from ..runtime.session import bundle_logits
    export(name, out, ExportOptions(recipe=recipe, role=role, force=True, parity=bundle_logits))


def prepare(name: str, out: Path, recipe: Recipe, role: str) -> None:
    """export_preset in a child process."""
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
    name, out, recipe, role = argv
    try:
        export_preset(name, Path(out), Recipe.from_dict(json.loads(recipe)), role)
    except EdgespecError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
