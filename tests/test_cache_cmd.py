"""`edgespec cache`: sizes by kind; --prune removes only what can be rebuilt."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from click.testing import CliRunner
from edgespec.apps.cli import cli
from edgespec.contract.cache import cache_dir
from edgespec.export import cache, presets
from edgespec.export.bundles import preset_bundle_dir


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_cache_lists_sizes_and_prunes_only_what_can_be_rebuilt(tmp_path, monkeypatch, tiny_bundle):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    gguf = cache.gguf_dir() / "model.gguf"
    gguf.write_bytes(b"g" * 3000)
    dequantized = cache.hf_dir() / "0123456789abcdef"
    dequantized.mkdir()
    (dequantized / "model.safetensors").write_bytes(b"w" * 5000)
    killed = cache.hf_dir() / f".fedcba9876543210.tmp-{_dead_pid()}"
    killed.mkdir()
    (killed / "part").write_bytes(b"x" * 700)
    live = cache.hf_dir() / f".aaaaaaaaaaaaaaaa.tmp-{os.getpid()}"
    live.mkdir()
    current = preset_bundle_dir("smollm2-135m", presets.get("smollm2-135m").recipe())
    shutil.copytree(tiny_bundle, current)
    outdated = cache.bundles_dir() / "smollm2-135m-int8"
    shutil.copytree(tiny_bundle, outdated)
    stamps = cache_dir("verified")
    (stamps / "a.json").write_text(json.dumps({"bundle": str(current), "files": {}}))
    (stamps / "b.json").write_text(json.dumps({"bundle": str(tmp_path / "gone"), "files": {}}))

    r = CliRunner().invoke(cli, ["cache"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0] == f"cache {tmp_path / 'cache'}"
    assert "  0123456789abcdef" in r.output and "(prunable: dequantized source, rebuilt on demand)" in r.output
    assert "(prunable: left by a killed export)" in r.output
    assert "(prunable: a recipe no preset uses now)" in r.output
    assert "(prunable: its bundle is gone)" in r.output
    assert sum("prunable" in line for line in lines if line.startswith("  ")) == 4
    assert all(e.path.exists() for e in cache.entries())  # listing removes nothing

    r = CliRunner().invoke(cli, ["cache", "--prune"])
    assert r.exit_code == 0, r.output
    kept = {p for p in (gguf, current, live, stamps / "a.json")}
    assert all(p.exists() for p in kept)
    assert not any(p.exists() for p in (dequantized, killed, outdated, stamps / "b.json"))
    assert [e for e in cache.entries() if e.why] == []


def test_prune_dry_run_removes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    dequantized = cache.hf_dir() / "0123456789abcdef"
    dequantized.mkdir()
    r = CliRunner().invoke(cli, ["cache", "--prune", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would remove 1 items" in r.output
    assert dequantized.exists()


def test_an_assembled_gguf_is_prunable_only_while_its_packages_are_installed(tmp_path, monkeypatch):
    """The GGUF a preset was assembled into can be assembled again from its installed parts; a GGUF
    no installed preset can rebuild (here any other file) stays."""
    import pytest
    preset = presets.get("smollm2-135m")
    try:
        installed = all(p.locate().is_file() for p in preset.parts)
    except ModuleNotFoundError:
        installed = False
    if not installed:
        pytest.skip(preset.install)
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    assembled = cache.gguf_dir() / preset.gguf_name
    assembled.write_bytes(b"g" * 100)
    other = cache.gguf_dir() / "someone-elses.gguf"
    other.write_bytes(b"g" * 100)
    whys = {e.path.name: e.why for e in cache.entries()}
    assert whys == {preset.gguf_name: "assembled again from the installed packages on demand",
                    "someone-elses.gguf": None}
