"""A runtime-only install (`pip install edgespec`, no extras) loads and runs a bundle: the
export, quality and bench dependencies are hidden from the import system here."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What only export, quality and bench need: pyproject's extras, never its core dependencies.
HIDDEN = ("torch", "transformers", "onnxruntime_genai", "gguf", "accelerate", "onnx_ir",
          "sentencepiece", "matplotlib", "safetensors", "huggingface_hub")

RUNNER = textwrap.dedent("""
    import sys
    for name in {hidden!r}:
        sys.modules[name] = None  # `import name` now fails as if it were not installed
    sys.argv = ["edgespec"] + {args!r}
    from edgespec.apps.cli import main
    main()
""")


def _requirement_names(reqs: list[str]) -> set[str]:
    import re
    return {re.split(r"[<>=!~\\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


def test_core_dependencies_leave_out_export_and_bench_tools():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _requirement_names(project["dependencies"])
    heavy = {"torch", "transformers", "onnxruntime-genai", "gguf", "accelerate", "onnx-ir", "matplotlib"}
    assert core & heavy == set()
    # everything the runtime imports is declared
    assert {"onnxruntime", "numpy", "tokenizers", "jinja2", "psutil", "click"} <= core
    extras = project["optional-dependencies"]
    assert heavy - {"matplotlib"} <= _requirement_names(extras["export"])


def test_a_bundle_runs_without_export_dependencies(tiny_bundle):
    args = ["run", "--raw", "--draft", "none", "--max-tokens", "4", "def add(a, b):", "--target", str(tiny_bundle)]
    code = RUNNER.format(hidden=HIDDEN, args=args)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "tok/s" in r.stderr  # the stats line: the reply was generated


def test_export_without_its_tools_says_which_extra_to_install(tiny_hf, tmp_path):
    code = RUNNER.format(hidden=HIDDEN, args=["export", str(tiny_hf), "-o", str(tmp_path / "out")])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: exporting a bundle needs torch, transformers, onnxruntime_genai, gguf, onnx_ir, "
        "which this install lacks: pip install 'edgespec[export]'")
    assert not (tmp_path / "out").exists()
