"""Bundle integrity at load: recorded sizes and sha256, a manifest checked against its graph,
and one BundleError (never a traceback from ORT or tokenizers) for a damaged bundle.

Every test damages its own copy of the tiny bundle, never the shared fixture."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from edgespec.contract.errors import BundleError
from edgespec.contract.manifest import read_manifest
from edgespec.export.upgrade import upgrade
from edgespec.runtime.session import Session
from edgespec.runtime.tokenizer import BundleTokenizer

TOKENS = [5, 17, 33, 2]


@pytest.fixture
def bundle(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def _edit_manifest(bundle, **changes):
    path = bundle / "edgespec.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def _flip_byte(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x01]))


def _count_hashes(monkeypatch) -> list:
    from edgespec.contract import integrity
    hashed = []
    real = integrity.file_sha256

    def counting(path):
        hashed.append(path.name)
        return real(path)
    monkeypatch.setattr(integrity, "file_sha256", counting)
    return hashed


def test_export_records_every_file_but_the_manifest(tiny_bundle):
    files = read_manifest(tiny_bundle).files
    on_disk = {p.name for p in tiny_bundle.iterdir() if p.name != "edgespec.json"}
    assert set(files) == on_disk and "model.onnx.data" in files and "tokenizer.json" in files
    for name, recorded in files.items():
        data = (tiny_bundle / name).read_bytes()
        assert recorded == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_intact_bundle_is_hashed_once_then_only_stat(bundle, monkeypatch):
    hashed = _count_hashes(monkeypatch)
    Session(bundle).forward(TOKENS)
    assert sorted(hashed) == sorted(read_manifest(bundle).files)
    hashed.clear()
    Session(bundle).forward(TOKENS)
    assert hashed == []  # the stamp holds: sizes and stats checked, nothing read
    st = os.stat(bundle / "tokenizer.json")
    os.utime(bundle / "tokenizer.json", ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    Session(bundle)
    assert hashed == ["tokenizer.json"]  # a touched file is hashed again, the rest not


def test_flipped_weight_byte_is_refused(bundle):
    data = bundle / "model.onnx.data"
    _flip_byte(data, data.stat().st_size // 2)
    with pytest.raises(BundleError) as e:
        Session(bundle)
    assert str(e.value) == (f"{data} does not match the sha256 recorded at export (flipped bytes?); "
                            "re-export the bundle")


def test_flipped_byte_after_a_verified_load_is_refused_even_with_its_mtime_restored(bundle):
    Session(bundle)  # verified and stamped
    data = bundle / "model.onnx.data"
    st = data.stat()
    _flip_byte(data, 1000)
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: ctime still moved
    with pytest.raises(BundleError, match="model.onnx.data does not match the sha256 recorded at export"):
        Session(bundle)


@pytest.mark.parametrize("name", ["model.onnx.data", "model.onnx"])
def test_truncated_file_is_refused_before_ort(bundle, name):
    path = bundle / name
    size = path.stat().st_size
    os.truncate(path, size // 2)
    with pytest.raises(BundleError) as e:
        Session(bundle)
    assert str(e.value) == (f"{path} has {size // 2:,} bytes, export recorded {size:,} "
                            "(truncated or replaced?); re-export the bundle")


def test_missing_file_is_refused(bundle):
    size = (bundle / "model.onnx.data").stat().st_size
    (bundle / "model.onnx.data").unlink()
    with pytest.raises(BundleError) as e:
        Session(bundle)
    assert str(e.value) == (f"{bundle / 'model.onnx.data'} is missing (export recorded {size:,} bytes); "
                            "re-export the bundle")


@pytest.mark.parametrize("name, reason", [
    ("model.onnx", "Protobuf parsing failed."),
    ("model.onnx.data", "are out of bounds or can not be read in full."),
])
def test_unrecorded_bundle_that_ort_cannot_load_is_one_bundle_error(bundle, name, reason):
    """A bundle from before the records: ORT's own failure, reworded."""
    _edit_manifest(bundle, files={})
    os.truncate(bundle / name, (bundle / name).stat().st_size // 2)
    with pytest.raises(BundleError) as e:
        Session(bundle)
    msg = str(e.value)
    assert msg.startswith(f"cannot load {bundle / 'model.onnx'}: ") and "\n" not in msg
    assert msg.endswith(f"{reason}; re-export the bundle") and "[ONNXRuntimeError]" not in msg


@pytest.mark.parametrize("content, reason", [
    (b"garbage {", "expected value at line 1 column 1"),
    (b'{"model": {"type": "BPE", "vocab": 5}}', "invalid type: integer `5`, expected a map at line 1 column 38"),
    (b"\xff\xfe garbage", "stream did not contain valid UTF-8"),
])
def test_garbage_tokenizer_json_is_one_bundle_error(bundle, content, reason):
    path = bundle / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(BundleError) as e:
        BundleTokenizer(bundle)
    assert str(e.value) == f"{path} is not a tokenizer file tokenizers can read ({reason}); re-export the bundle"
    with pytest.raises(BundleError, match="tokenizer.json has"):  # the session's record saw it first
        Session(bundle)


def test_garbage_tokenizer_config_is_one_bundle_error(bundle):
    path = bundle / "tokenizer_config.json"
    path.write_text("{oops")
    with pytest.raises(BundleError) as e:
        BundleTokenizer(bundle)
    assert str(e.value) == (f"{path} is not valid JSON (Expecting property name enclosed in double quotes: "
                            "line 1 column 2 (char 1)); re-export the bundle")


@pytest.mark.parametrize("field, value, graph", [
    ("num_layers", 3, "2 (past_key_values.N.key inputs)"),
    ("vocab_size", 321, "320 (last axis of logits)"),
    ("io_dtype", "float16", '"float32" (element type of past_key_values.0.key)'),
    ("num_kv_heads", 4, "2 (axis 1 of past_key_values.0.key)"),
])
def test_manifest_contradicting_the_graph_is_refused(bundle, field, value, graph):
    path = _edit_manifest(bundle, **{field: value})
    with pytest.raises(BundleError) as e:
        Session(bundle)
    assert str(e.value) == (f"{path}: {field} is {json.dumps(value)} but model.onnx has {graph}; "
                            "re-export the bundle")


@pytest.mark.parametrize("field, value, expected", [
    ("num_layers", "28", "int"),
    ("vocab_size", None, "int"),
    ("eos_token_ids", "x", "list[int]"),
    ("eos_token_ids", [1, "2"], "list[int]"),
    ("bos_token_id", 1.5, "int | None"),
    ("quant", ["int4"], "dict"),
    ("files", [], "dict"),
])
def test_wrongly_typed_manifest_field_is_refused(bundle, field, value, expected):
    path = _edit_manifest(bundle, **{field: value})
    with pytest.raises(BundleError) as e:
        Session(bundle)
    assert str(e.value) == (f"{path}: field '{field}' should be {expected}, not {json.dumps(value)}; "
                            "re-export the bundle")


def test_malformed_files_entry_and_manifest_are_refused(bundle):
    path = _edit_manifest(bundle, files={"../escape": {"bytes": 1, "sha256": "00"}})
    with pytest.raises(BundleError) as e:
        read_manifest(bundle)
    assert str(e.value) == (f'{path}: files entry "../escape" should map a name inside the bundle to '
                            '{"bytes": int, "sha256": str}, not {"bytes": 1, "sha256": "00"}; re-export the bundle')
    path.write_text("[1, 2]")
    with pytest.raises(BundleError) as e:
        read_manifest(bundle)
    assert str(e.value) == f"{path} is corrupt: it holds a JSON list, not an object; re-export the bundle"


def test_upgrade_records_an_old_bundle_once_and_never_records_damage(bundle, capsys):
    _edit_manifest(bundle, files={})  # exported before the records
    assert upgrade(bundle) is True and upgrade(bundle) is False
    assert "recording file hashes of" in capsys.readouterr().err
    assert set(read_manifest(bundle).files) >= {"model.onnx", "model.onnx.data", "tokenizer.json"}
    _flip_byte(bundle / "model.onnx.data", 10)
    with pytest.raises(BundleError, match="model.onnx.data does not match the sha256"):
        upgrade(bundle)


def test_cli_names_the_damaged_file_on_one_line(bundle):
    from edgespec.apps.cli import cli
    data = bundle / "model.onnx.data"
    os.truncate(data, 100)
    r = CliRunner().invoke(cli, ["run", "hi", "--target", str(bundle), "--draft", "none", "--raw"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"{data} has 100 bytes, export recorded" in r.output and "re-export the bundle" in r.output
