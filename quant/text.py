"""The evaluation text for quality checks: Python standard-library source, read from this interpreter.

Nothing is downloaded or shipped: the files come from the running Python's stdlib, and
each file's name and sha256 go into the report, so a number always says what it measured
(the stdlib differs between Python versions).
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..contract.errors import EdgespecError

# Plain, well-commented code and prose docstrings; no generated tables.
EVAL_MODULES = ("textwrap", "shlex", "fnmatch")


@dataclass(frozen=True)
class EvalText:
    text: str
    files: tuple[dict, ...]  # {"name", "bytes", "sha256"} in concatenation order
    sha256: str  # of the concatenated text (utf-8)
    python: str

    def describe(self) -> dict:
        return {"files": [dict(f) for f in self.files], "sha256": self.sha256, "python": self.python}


def stdlib_file(module: str) -> Path:
    """The stdlib source file of a top-level module, looked up without importing it (a local file
    of the same name on sys.path does not shadow it)."""
    path = Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"
    if not path.is_file():
        raise EdgespecError(f"evaluation text: {path} not found; this Python ({platform.python_version()}) "
                            f"has no source for stdlib module '{module}'")
    return path


def eval_text(modules: tuple[str, ...] = EVAL_MODULES) -> EvalText:
    parts, files = [], []
    for module in modules:
        data = stdlib_file(module).read_bytes()
        parts.append(data.decode("utf-8"))
        files.append({"name": f"{module}.py", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    text = "".join(parts)
    return EvalText(text=text, files=tuple(files), sha256=hashlib.sha256(text.encode()).hexdigest(),
                    python=platform.python_version())
