"""Find a bundle by folder or preset name; a preset's bundle lives in the cache and is
prepared on first use by the `prepare` the caller passes (apps/prepare.py: an export in a
child process, its parity checked by the runtime, which export does not import)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

from ..contract.cache import cache_root
from ..contract.errors import BundleError, EdgespecError
from ..contract.files import remove_stale
from ..contract.manifest import MANIFEST_NAME, read_manifest
from .recipes import Recipe

# prepare(preset name, output folder, recipe, role): export the preset into the folder, replacing it
Prepare = Callable[[str, Path, Recipe, str], None]


def preset_bundle_dir(name: str, recipe: Recipe) -> Path:
    return cache_root() / "bundles" / f"{name}-{recipe.precision}"


def bundle_path(ref: str | Path, prepare: Prepare, recipe: Recipe | None = None) -> Path:
    """A bundle folder as given, or the cached bundle of a preset: checked and upgraded if it
    is there with this recipe, else made by `prepare`."""
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
    remove_stale(out.parent, out.name)  # puts back a bundle that a killed re-preparation set aside
    if (out / MANIFEST_NAME).is_file():
        from .upgrade import upgrade
        try:
            if Recipe.from_dict(read_manifest(out).quant) == recipe:
                upgrade(out)  # checks the files first
                return out
            # the old bundle stays usable until export renames the new one into place
            print(f"re-preparing {preset.name}: its recipe is now {recipe.to_dict()}", file=sys.stderr)
        except BundleError as e:  # a damaged cached bundle is ours to rebuild
            print(f"re-preparing {preset.name}: {e}", file=sys.stderr)
    else:
        # a folder here without a manifest: an older edgespec's interrupted re-preparation
        if out.is_dir() and not out.is_symlink():
            shutil.rmtree(out)
        print(f"preparing {preset.name} ({recipe.precision}) in {out} (first use)", file=sys.stderr)
    from .extras import require_export
    require_export()  # in this process: the message names the extra to install, before any work
    prepare(preset.name, out, recipe, preset.role)
    return out
