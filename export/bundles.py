"""Find a bundle by folder or preset name, exporting a preset on first use."""

from __future__ import annotations

import sys
from pathlib import Path

from ..quant.recipes import Recipe
from .cache import cache_root
from .errors import EdgespecError
from .manifest import MANIFEST_NAME, read_manifest


def preset_bundle_dir(name: str, recipe: Recipe) -> Path:
    return cache_root() / "bundles" / f"{name}-{recipe.precision}"


def bundle_path(ref: str | Path, recipe: Recipe | None = None) -> Path:
    """A bundle folder as given, or the cached bundle of a preset (exported if missing)."""
    from . import presets
    path = Path(ref)
    if path.is_dir():
        return path
    try:
        preset = presets.get(str(ref))
    except EdgespecError:
        raise EdgespecError(f"'{ref}' is neither a bundle folder nor a preset "
                            f"(presets: {', '.join(presets.names())})") from None
    recipe = recipe or preset.recipe()
    out = preset_bundle_dir(preset.name, recipe)
    if (out / MANIFEST_NAME).is_file() and Recipe.from_dict(read_manifest(out).quant) != recipe:
        print(f"re-preparing {preset.name}: its recipe is now {recipe.to_dict()}", file=sys.stderr)
        (out / MANIFEST_NAME).unlink()
    if not (out / MANIFEST_NAME).is_file():
        from .pipeline import ExportOptions, export
        print(f"preparing {preset.name} ({recipe.precision}) in {out} (first use)", file=sys.stderr)
        export(preset.name, out, ExportOptions(recipe=recipe, role=preset.role, force=True))
    else:
        from .upgrade import upgrade
        upgrade(out)
    return out
