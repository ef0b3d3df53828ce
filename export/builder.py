"""Run onnxruntime-genai's model builder (GroupQueryAttention + MatMulNBits graphs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..contract.errors import EdgespecError
from .recipes import Recipe


def build_graph(hf_dir: Path, out_dir: Path, recipe: Recipe, work_dir: Path, log_path: Path) -> Path:
    """Build `out_dir/model.onnx` (+ external data, genai_config.json) from an HF folder.

    The builder runs in a child process so its peak memory (the whole fp32
    model) is returned to the OS before we load anything else.
    fp16 graphs are built for the CUDA target: the builder's CPU fp16 path
    emits MultiHeadAttention, which has no tree-attention inputs, while its
    fp16 GroupQueryAttention graph also runs on CPU.
    """
    provider = "cuda" if recipe.precision == "fp16" else "cpu"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder",
           "-i", str(hf_dir), "-o", str(out_dir), "-p", recipe.precision, "-e", provider,
           "-c", str(work_dir)]
    options = recipe.builder_options()
    if options:
        cmd += ["--extra_options"] + [f"{k}={v}" for k, v in options.items()]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = Path(log_path).read_text(errors="replace").strip().splitlines()[-8:]
        raise EdgespecError("onnxruntime-genai model builder failed:\n  " + "\n  ".join(tail))
    model = out_dir / "model.onnx"
    if not model.is_file():
        raise EdgespecError(f"model builder produced no model.onnx in {out_dir} (log: {log_path})")
    return model
