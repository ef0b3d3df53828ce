"""Optional dependencies: `pip install edgespec` runs bundles without torch; turning sources
into bundles (and bench/quality, which score source models) needs the `export` extra."""

from __future__ import annotations

from importlib.util import find_spec

from ..contract.errors import MissingPackageError

EXPORT_MODULES = ("torch", "transformers", "onnxruntime_genai", "gguf", "onnx_ir")


def require(modules: tuple[str, ...], extra: str, what: str) -> None:
    """Refuse, before any work, a command whose tools are not installed."""
    missing = [m for m in modules if find_spec(m) is None]
    if missing:
        raise MissingPackageError(f"{what} needs {', '.join(missing)}, which this install lacks: "
                                  f"pip install 'edgespec[{extra}]'")


def require_export(what: str = "exporting a bundle") -> None:
    require(EXPORT_MODULES, "export", what)
