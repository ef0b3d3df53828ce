"""A shallower copy of a model: keep some decoder layers, drop the rest.

Self-speculation without training (CLaSp / Kangaroo without adapters): the
target's own first or selected layers, exported as a bundle of their own,
draft for the full target with the same tokenizer. Whether it pays depends
on how often the shallow copy agrees with the full model; `edgespec bench`
measures it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..contract.errors import EdgespecError

_LAYER = re.compile(r"^(model\.layers\.)(\d+)(\..*)$")


def parse_layers(spec: str, total: int) -> list[int]:
    """'0-19' or '0-13,21-27' or '0,1,2' -> sorted layer indices, checked against `total`."""
    kept: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise EdgespecError(f"--layers '{spec}': '{part}' is not N or N-M")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi >= total:
            raise EdgespecError(f"--layers '{spec}': {part} is outside the model's layers 0-{total - 1}")
        kept.update(range(lo, hi + 1))
    if not kept:
        raise EdgespecError(f"--layers '{spec}' keeps no layer")
    return sorted(kept)


def keep_layers(hf_dir: Path, layers: list[int], out: Path) -> Path:
    """Write an HF folder with only `layers` (renumbered 0..k-1); tensors are streamed one by one."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # removed by files.remove_stale if killed
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        new_index = {old: new for new, old in enumerate(layers)}
        tensors = {}
        for f in sorted(hf_dir.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                for name in h.keys():
                    m = _LAYER.match(name)
                    if m is None:
                        tensors[name] = h.get_tensor(name)
                    elif int(m.group(2)) in new_index:
                        tensors[f"{m.group(1)}{new_index[int(m.group(2))]}{m.group(3)}"] = h.get_tensor(name)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        del tensors
        config = json.loads((hf_dir / "config.json").read_text())
        config["num_hidden_layers"] = len(layers)
        if isinstance(config.get("layer_types"), list):
            config["layer_types"] = [config["layer_types"][i] for i in layers]
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for f in hf_dir.iterdir():
            if f.is_file() and f.suffix != ".safetensors" and f.name not in ("config.json",) \
                    and not f.name.endswith(".index.json"):
                shutil.copy2(f, tmp / f.name)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
