"""The import layering of edgespec: no circles, and imports only go down the layers.

Every module of the package is parsed with `ast`, and every import counts, at the top of a
file or inside a function: a lazy import is where a circle hides. The modules and their
imports form a graph that must have no cycle, and an import from one subpackage into another
must go down the layers declared once, below.
"""

from __future__ import annotations

import ast
import tomllib
from collections import deque
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "edgespec"

# Lowest first. A module imports its own subpackage and those of lower layers only; subpackages
# sharing a layer never import each other. `edgespec` is the package's own __init__ (`load`).
LAYERS = (
    ("contract",),          # errors, files, the manifest, integrity records, where the cache is
    ("devices",),           # execution providers, latency profiles
    ("runtime", "export"),  # runtime opens prepared bundles; export makes them (its parity check
                            # runs the bundle through a callable its caller passes)
    ("quant",),             # quality of bundles against their sources: runs both
    ("apps",),              # CLI, bench, first use of a preset (export, then runtime)
    (PACKAGE,),
)


class Import(NamedTuple):
    target: str  # dotted module name
    where: str   # file:line, the file relative to the package root


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """{dotted package: folder}, as pyproject.toml maps them."""
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: (root / folder).resolve() for package, folder in setuptools["package-dir"].items()}


def modules(dirs: dict[str, Path]) -> dict[str, Path]:
    """{dotted module: file} of every .py file directly in a package folder."""
    found = {}
    for package, folder in dirs.items():
        for path in sorted(folder.glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path], root: Path) -> list[Import]:
    """The package's modules that `name` imports anywhere in its file."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    label = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".")
                module = ".".join(parts[:len(parts) - node.level + 1] + ([module] if module else []))
            # `from X import y`: y is module X.y if there is one, else a name inside X
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import edgespec.x.y` names a module inside
                target = target.rpartition(".")[0]
            imp = Import(target, f"{label}:{node.lineno}")
            if target and target != name and imp not in found:  # `from X import a, b`: one import
                found.append(imp)
    return found


def graph(dirs: dict[str, Path]) -> dict[str, list[Import]]:
    """{module: the package's modules it imports}."""
    known = modules(dirs)
    return {name: imports(name, path, known, dirs[PACKAGE]) for name, path in known.items()}


def subpackage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def circles(edges: dict[str, list[Import]]) -> list[str]:
    """A shortest circle through each module that is on one (a module already named in an
    earlier circle starts none), as 'a -> b (file:line) -> a (file:line)'."""
    found, named = [], set()
    for start in sorted(edges):
        if start in named:
            continue
        cycle = _shortest_cycle(start, edges)
        if cycle:
            named.update(i.target for i in cycle)
            found.append(" -> ".join([start] + [f"{i.target} ({i.where})" for i in cycle]))
    return found


def _shortest_cycle(start: str, edges: dict[str, list[Import]]) -> list[Import] | None:
    """Breadth first from `start` back to it: the imports along the way, or None."""
    reached_by: dict[str, tuple[str, Import]] = {}  # module -> (the module importing it, the import)
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for imp in edges.get(node, []):
            if imp.target == start:
                cycle = [imp]
                while node != start:
                    node, step = reached_by[node]
                    cycle.append(step)
                return cycle[::-1]
            if imp.target not in reached_by:
                reached_by[imp.target] = (node, imp)
                queue.append(imp.target)
    return None


def layer_violations(edges: dict[str, list[Import]], layers=LAYERS) -> list[str]:
    rank = {pkg: i for i, tier in enumerate(layers) for pkg in tier}
    found = []
    for name, imps in sorted(edges.items()):
        src = subpackage(name)
        for imp in imps:
            dst = subpackage(imp.target)
            if dst == src:
                continue
            if src not in rank or dst not in rank:
                found.append(f"{name}: subpackage {src if src not in rank else dst} has no layer in LAYERS")
            elif rank[dst] >= rank[src]:
                below = [p for tier in layers[:rank[src]] for p in tier]
                found.append(f"{name} imports {imp.target} ({imp.where}): {src} may import only "
                             f"{', '.join(below) or 'nothing of the package'}")
    return found


# --- the package ------------------------------------------------------------------------------

def test_the_package_has_no_import_circles():
    found = circles(graph(package_dirs()))
    assert not found, "import circles:\n" + "\n".join(found)


def test_imports_go_down_the_layers():
    found = layer_violations(graph(package_dirs()))
    assert not found, "imports against the layers:\n" + "\n".join(found)


def test_every_subpackage_has_a_layer_and_is_walked():
    dirs = package_dirs()
    declared = {pkg for tier in LAYERS for pkg in tier}
    assert {subpackage(p) for p in dirs} == declared
    on_disk = {PACKAGE} | {f"{PACKAGE}.{d.name}" for d in ROOT.iterdir() if (d / "__init__.py").is_file()}
    assert on_disk == set(dirs), "a package folder pyproject.toml does not map (the walk would miss it)"
    assert "edgespec.runtime.api" in modules(dirs)


# --- apps: the console script, and only it, tells the commands that the process is theirs ----

# `run` and `bench` with loading replaced by a report of the pool they were asked for
_REPORTING = """
import edgespec.apps.bench as bench, edgespec.apps.prepare as prepare, edgespec.runtime.api as api
from edgespec.contract.errors import EdgespecError
def report(*args, shared_pool, **kwargs):
    raise EdgespecError(f"shared_pool={shared_pool}")
prepare.bundle_path = lambda ref, *args, **kwargs: ref
api.load = bench.run_suite = report
from edgespec.apps.cli import main
main()
"""
_COMMANDS = (["run", "hi", "--target", "t", "--draft", "none"], ["bench", "--target", "t", "--draft", "none"])


def _report(*args, shared_pool, **kwargs):
    from edgespec.contract.errors import EdgespecError
    raise EdgespecError(f"shared_pool={shared_pool}")


def test_only_the_console_script_shares_the_process_wide_pool(monkeypatch):
    import subprocess
    import sys
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    monkeypatch.setattr("edgespec.apps.prepare.bundle_path", lambda ref, *args, **kwargs: ref)
    monkeypatch.setattr("edgespec.runtime.api.load", _report)
    monkeypatch.setattr("edgespec.apps.bench.run_suite", _report)
    for args in _COMMANDS:
        script = subprocess.run([sys.executable, "-c", _REPORTING, *args], capture_output=True, text=True,
                                timeout=120)
        assert script.stderr.strip().splitlines()[-1] == "Error: shared_pool=True", script.stderr[-2000:]
        in_python = CliRunner().invoke(cli, args)  # a Python caller of the group: not its process
        assert in_python.output.strip().splitlines()[-1] == "Error: shared_pool=False"


# --- the checker itself, on a package made here ----------------------------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return {"edgespec": tmp_path, **{f"edgespec.{d}": tmp_path / d for d in ("contract", "runtime", "export")}}


def test_a_lazy_import_closing_a_circle_is_found(tmp_path):
    dirs = _package(tmp_path, {
        "__init__.py": "", "contract/__init__.py": "", "export/__init__.py": "",
        "runtime/__init__.py": "",
        "runtime/api.py": "from .fim import middle\n",
        "runtime/fim.py": "import os\n\n\ndef middle():\n    from .api import Chunk\n",
        "runtime/tree.py": "from . import fim\n",
    })
    assert circles(graph(dirs)) == [
        "edgespec.runtime.api -> edgespec.runtime.fim (runtime/api.py:1) -> edgespec.runtime.api (runtime/fim.py:5)"]


def test_an_import_up_or_across_a_layer_is_named(tmp_path):
    dirs = _package(tmp_path, {
        "__init__.py": "", "contract/__init__.py": "", "runtime/__init__.py": "", "export/__init__.py": "",
        "contract/errors.py": "def f():\n    import edgespec.runtime.session\n",
        "runtime/session.py": "from ..contract import errors\nfrom ..export.manifest import read\n",
        "export/manifest.py": "from ..contract.errors import E\n",
    })
    layers = (("contract",), ("runtime", "export"), ("edgespec",))
    assert layer_violations(graph(dirs), layers) == [
        "edgespec.contract.errors imports edgespec.runtime.session (contract/errors.py:2): "
        "contract may import only nothing of the package",
        "edgespec.runtime.session imports edgespec.export.manifest (runtime/session.py:2): "
        "runtime may import only contract",
    ]
