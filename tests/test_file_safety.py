"""No command deletes what it did not create, and no failed write loses a file (issue 19, item 2).

--force replaces only a bundle; a replaced bundle stays whole until the new one is in place;
files are written to a temporary sibling and renamed; what killed runs left is cleaned up.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import psutil
import pytest
from click.testing import CliRunner

from edgespec.apps.prepare import bundle_path
from edgespec.contract import files
from edgespec.export import bundles, cache, gguf_export, pipeline, presets
from edgespec.contract.errors import EdgespecError
from edgespec.contract.manifest import MANIFEST_NAME, read_manifest
from edgespec.export.recipes import Recipe


def cli_export(*args):
    from edgespec.apps.cli import cli
    return CliRunner().invoke(cli, ["export", *map(str, args)])


def one_line_failure(result, message):
    """rc 1 and one line, "<prefix>: <message>" (the prefix is the CLI's)."""
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f": {message}"), result.output


def user_folder(path):
    path.mkdir(parents=True)
    (path / "main.py").write_text("print('precious')\n")
    return path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def hidden_siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


# --- --force replaces only a bundle --------------------------------------------------------------

def test_force_refuses_a_folder_that_is_not_a_bundle(tiny_hf, tmp_path):
    out = user_folder(tmp_path / "project")
    r = cli_export(tiny_hf, "-o", out, "--force", "--quant", "fp32")
    one_line_failure(r, f"output folder '{out}' is not an edgespec bundle (no edgespec.json); "
                        "--force replaces only a bundle: choose another -o")
    assert (out / "main.py").read_text() == "print('precious')\n"


def test_force_refuses_the_source_folder(tiny_hf, tmp_path):
    source = tmp_path / "model"
    shutil.copytree(tiny_hf, source)
    before = sorted(p.name for p in source.iterdir())
    r = cli_export(source, "-o", source, "--force", "--quant", "fp32")
    one_line_failure(r, f"output folder '{source}' is the source; choose another -o")
    r = cli_export(source, "-o", tmp_path, "--force", "--quant", "fp32")
    one_line_failure(r, f"output folder '{tmp_path}' holds the source '{source}'; choose another -o")
    assert sorted(p.name for p in source.iterdir()) == before


@pytest.mark.parametrize("given, word", [(".", "is"), ("..", "holds")])
def test_force_refuses_the_working_directory(tiny_hf, tmp_path, monkeypatch, given, word):
    """`-o . --force` in a project deleted the user's main.py."""
    project = user_folder(tmp_path / "work" / "project")
    (project / MANIFEST_NAME).write_text("{}")  # even a folder that looks like a bundle
    monkeypatch.chdir(project)
    r = cli_export(tiny_hf, "-o", given, "--force", "--quant", "fp32")
    one_line_failure(r, f"output folder '{project / given}' {word} the working directory; choose another -o")
    assert (project / "main.py").read_text() == "print('precious')\n"


def test_force_refuses_a_mount_point(tiny_hf, tmp_path, monkeypatch):
    out = user_folder(tmp_path / "disk")
    (out / MANIFEST_NAME).write_text("{}")
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: str(p) == str(out) or real_ismount(p))
    r = cli_export(tiny_hf, "-o", out, "--force", "--quant", "fp32")
    one_line_failure(r, f"output folder '{out}' is a mount point; choose a new folder inside it")
    assert (out / "main.py").exists()


def test_force_replaces_a_bundle_and_a_failed_swap_keeps_it(tiny_hf, tiny_bundle, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    (out / "old-marker").write_text("from the old bundle")
    real_rename = os.rename

    def failing_rename(src, dst):  # the new bundle cannot be moved in
        if os.path.basename(src) == "bundle" and str(dst) == str(out):
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    options = pipeline.ExportOptions(recipe=Recipe("fp32"), force=True)
    with pytest.raises(EdgespecError, match=f"^cannot write to {out}: Input/output error$"):
        pipeline.export(str(tiny_hf), out, options)
    assert (out / "old-marker").exists() and read_manifest(out).quant == {"precision": "fp32"}
    assert hidden_siblings(out) == []

    monkeypatch.setattr(os, "rename", real_rename)
    pipeline.export(str(tiny_hf), out, options)
    assert not (out / "old-marker").exists() and read_manifest(out).parity == {}
    assert hidden_siblings(out) == []


# --- preset bundles: the old one stays usable ----------------------------------------------------

@pytest.fixture
def cached_preset_bundle(tiny_bundle, tmp_path, monkeypatch):
    """smollm2-135m's cached bundle (a copy of the tiny bundle, relabelled as its int4 recipe)."""
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    recipe = presets.get("smollm2-135m").recipe()
    out = bundles.preset_bundle_dir("smollm2-135m", recipe)
    shutil.copytree(tiny_bundle, out)
    manifest = read_manifest(out)
    manifest.quant = recipe.to_dict()
    manifest.write(out)
    return out


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def _must_not_run(*args, **kwargs):
    raise AssertionError("called")


def test_interrupted_repreparation_keeps_the_old_bundle(cached_preset_bundle, tiny_hf, monkeypatch):
    out = cached_preset_bundle
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    manifest = read_manifest(out)
    manifest.quant = Recipe("int4", block_size=64).to_dict()  # the preset's recipe changed since
    manifest.write(out)
    old[MANIFEST_NAME] = (out / MANIFEST_NAME).read_bytes()
    real_resolve = pipeline.sources.resolve
    monkeypatch.setattr(pipeline.sources, "resolve", lambda source: real_resolve(str(tiny_hf)))
    monkeypatch.setattr(pipeline, "build_graph", _interrupt)  # Ctrl-C while building (builder path)
    monkeypatch.setattr(gguf_export, "build_decoder", _interrupt)  # (or while streaming from the GGUF)
    with pytest.raises(KeyboardInterrupt):
        bundle_path("smollm2-135m", isolated=False)
    assert read_manifest(out).quant == Recipe("int4", block_size=64).to_dict()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert hidden_siblings(out) == []


def test_killed_replacement_is_undone_on_next_use(cached_preset_bundle, monkeypatch):
    """Killed between renaming the old bundle aside and the new one in: the next use puts the old back."""
    out = cached_preset_bundle
    aside = out.with_name(f".{out.name}.old-{dead_pid()}")
    os.rename(out, aside)
    monkeypatch.setattr(pipeline, "export", _must_not_run)  # no re-export: the bundle is there
    assert bundle_path("smollm2-135m", isolated=False) == out
    assert read_manifest(out).quant == presets.get("smollm2-135m").recipe().to_dict()
    assert hidden_siblings(out) == []


def test_damaged_cached_bundle_is_prepared_again(cached_preset_bundle, monkeypatch, capsys):
    """A flipped byte in a preset's cached bundle: first use rebuilds it, instead of running it
    or telling the user to re-export what edgespec itself prepared."""
    out = cached_preset_bundle
    data = out / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    calls = []
    monkeypatch.setattr(pipeline, "export", lambda source, dest, options: calls.append((source, dest, options)))
    assert bundle_path("smollm2-135m", isolated=False) == out
    assert [(s, d, o.force) for s, d, o in calls] == [("smollm2-135m", out, True)]
    err = capsys.readouterr().err
    assert f"re-preparing smollm2-135m: {data} does not match the sha256 recorded at export" in err


# --- files: a failed write keeps the old file -----------------------------------------------------

@pytest.fixture
def file_size_limit():
    """Writes past `limit` bytes fail with EFBIG, as a full disk fails them with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(n: int | None):  # None: back to the limit the test started with
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft if n is None else n, hard))
    yield limit
    limit(None)


def test_save_force_on_a_failed_write_keeps_the_old_save(tiny_bundle, tmp_path, file_size_limit):
    from edgespec.apps.chat import Chat
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    chat = Chat(Generator(Session(tiny_bundle)))
    chat.messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = chat.save(tmp_path / "talk.json")
    old = path.read_bytes()
    chat.messages += [{"role": "user", "content": "x" * 4000}, {"role": "assistant", "content": "y" * 4000}]
    file_size_limit(1024)
    with pytest.raises(EdgespecError) as e:
        chat.save(path, overwrite=True)  # /save! FILE
    file_size_limit(None)
    assert str(e.value) == f"cannot write to {path}: File too large"
    assert path.read_bytes() == old and json.loads(old)["messages"][1]["content"] == "hello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.json"]


def test_manifest_write_failure_keeps_the_old_manifest(tiny_bundle, tmp_path, file_size_limit):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = read_manifest(tiny_bundle)
    manifest.write(bundle)
    old = (bundle / MANIFEST_NAME).read_bytes()
    manifest.parity = {"notes": "z" * 10_000}
    file_size_limit(len(old))
    with pytest.raises(EdgespecError, match=f"^cannot write to {bundle / MANIFEST_NAME}: File too large$"):
        manifest.write(bundle)
    file_size_limit(None)
    assert (bundle / MANIFEST_NAME).read_bytes() == old
    assert [p.name for p in bundle.iterdir()] == [MANIFEST_NAME]


def test_no_space_left_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "bench.json"
    path.write_text('{"old": true}')
    os.chmod(path, 0o640)
    real_write = os.write
    written = []

    def full_disk(fd, data):  # half of the first write lands, then the disk is full
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(real_write(fd, bytes(data[:len(data) // 2])))
        return written[-1]

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(EdgespecError, match=f"^cannot write to {path}: No space left on device$"):
        files.atomic_write_text(path, json.dumps({"new": "x" * 100}))
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]
    files.atomic_write_text(path, '{"new": true}')
    assert path.read_text() == '{"new": true}' and (path.stat().st_mode & 0o777) == 0o640


# --- what killed runs left --------------------------------------------------------------------

def test_stale_work_folders_are_removed_live_ones_kept(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path / "cache"))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = dead_pid()
        out = tmp_path / "out"
        made = {}
        for folder, name in [(tmp_path, f".out.partial-{dead}"), (tmp_path, f".out.partial-{live.pid}"),
                             (tmp_path, f".other.partial-{dead}"),  # another output's: not ours to judge
                             (cache.hf_dir(), f".0123456789abcdef.tmp-{dead}"),
                             (cache.hf_dir(), f".fedcba9876543210.tmp-{live.pid}"),
                             (cache.hf_dir(), f".0123456789abcdef-layers-0-1.tmp-{dead}"),
                             (cache.bundles_dir(), f".qwen2.5-coder-1.5b-int4.partial-{dead}")]:
            made[name] = folder / name
            (folder / name / "build").mkdir(parents=True)
            (folder / name / "build" / "model.onnx.data").write_bytes(b"\0" * 1000)
        monkeypatch.setattr(pipeline.sources, "resolve", _interrupt)  # stop right after the cleanup
        with pytest.raises(KeyboardInterrupt):
            pipeline.export(str(tiny_hf), out, pipeline.ExportOptions(recipe=Recipe("fp32")))
        kept = sorted(name for name, path in made.items() if path.exists())
        assert kept == sorted([f".out.partial-{live.pid}", f".other.partial-{dead}",
                               f".fedcba9876543210.tmp-{live.pid}"])
    finally:
        live.kill()
        live.wait()


def test_a_live_pid_keeps_its_folder_unless_it_started_after_it(tmp_path, monkeypatch):
    mine = tmp_path / f".out.partial-{os.getpid()}"
    mine.mkdir()
    assert files.remove_stale(tmp_path, "out") == [] and mine.exists()
    # a later process that took the PID of the one that made the folder started after it was made
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: time.time() + 60)
    assert files.remove_stale(tmp_path, "out") == [mine] and not mine.exists()


# --- an output that cannot be written: one line, before any work ----------------------------------

def test_unwritable_output_is_one_line_before_the_build(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline.sources, "resolve", _interrupt)  # the check comes before any work
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = cli_export(tiny_hf, "-o", blocker / "out", "--quant", "fp32")
    one_line_failure(r, f"cannot write to {blocker / 'out'}: Not a directory")

    read_only = tmp_path / "read-only"  # chmod does not stop root: refuse as the OS would
    read_only.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if os.path.dirname(os.fspath(path)) == str(read_only):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    r = cli_export(tiny_hf, "-o", read_only / "out", "--quant", "fp32")
    one_line_failure(r, f"cannot write to {read_only / 'out'}: Permission denied")
    assert list(read_only.iterdir()) == []
