"""Quality check: fp32 equals its torch source, int4 stays close to fp32, the report says what it measured."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner
from edgespec.apps.cli import cli
from edgespec.contract.errors import EdgespecError
from edgespec.quant.quality import cut_windows, quality_report
from edgespec.quant.text import EVAL_MODULES, stdlib_file

# Measured on the conftest tiny qwen2 (8 windows x 256 tokens): int4 vs fp32 bundle agreed on 92-93% of
# positions with perplexity +0.5%; the thresholds leave a margin for other seeds and ORT versions.
INT4_MIN_AGREEMENT = 0.80
INT4_MAX_PPL_RATIO = 1.10


@pytest.fixture(scope="module")
def fp32_vs_torch(tiny_bundle, tiny_hf):
    return quality_report(tiny_bundle, tiny_hf, threads=2)


@pytest.fixture(scope="module")
def int4_vs_fp32(tiny_int4_bundle, tiny_bundle):
    return quality_report(tiny_int4_bundle, tiny_bundle, threads=2)


def test_fp32_bundle_agrees_with_torch_source(fp32_vs_torch):
    r = fp32_vs_torch
    assert r["reference"]["kind"] == "torch"
    assert r["top1_agreement"] == 1.0
    assert abs(r["perplexity"] / r["reference_perplexity"] - 1) < 1e-3
    assert r["mean_kl"] < 1e-6
    assert 1.5 < r["perplexity"] < 320  # trained a little: better than uniform over the vocabulary


def test_int4_close_to_fp32_bundle(int4_vs_fp32, fp32_vs_torch):
    r = int4_vs_fp32
    assert r["reference"]["kind"] == "bundle" and r["recipe"]["precision"] == "int4"
    assert r["top1_agreement"] >= INT4_MIN_AGREEMENT
    assert r["perplexity"] / r["reference_perplexity"] < INT4_MAX_PPL_RATIO
    assert r["bundle_bytes"] - r["prefill_graph_bytes"] < fp32_vs_torch["bundle_bytes"] / 2  # the model's graph
    assert r["prefill_graph_bytes"] > 0 == fp32_vs_torch["prefill_graph_bytes"]
    g = r["prompt_graph"]  # the int8 prefill graph: close to the bundle's decode graph
    assert g["top1_vs_decode_graph"] >= 0.9 and g["kl_vs_decode_graph"] < r["mean_kl"]
    assert g["top1_agreement"] >= INT4_MIN_AGREEMENT and fp32_vs_torch["prompt_graph"] is None
    # the fp32 bundle is the same model as torch: both references give the same perplexity
    assert r["reference_perplexity"] == pytest.approx(fp32_vs_torch["perplexity"], rel=1e-3)


def test_report_names_what_was_measured(int4_vs_fp32):
    r = int4_vs_fp32
    names = [f["name"] for f in r["text"]["files"]]
    assert names == [f"{m}.py" for m in EVAL_MODULES]
    for f, m in zip(r["text"]["files"], EVAL_MODULES):
        assert f["sha256"] == hashlib.sha256(stdlib_file(m).read_bytes()).hexdigest()
    assert (r["windows"], r["window_len"]) == (8, 256)
    assert r["tokens"] == 8 * 256 and r["predicted_tokens"] == 8 * 255
    assert r["text_tokens"] >= r["tokens"]


def test_default_reference_is_the_source(tiny_bundle, tiny_hf, monkeypatch):
    monkeypatch.chdir(tiny_hf.parent)  # the manifest names the source as export was given it
    r = quality_report(tiny_bundle, windows=2, window_len=64, threads=2)
    assert r["reference"]["kind"] == "torch" and r["top1_agreement"] == 1.0
    assert (r["windows"], r["tokens"]) == (2, 128)


def test_missing_source_asks_for_reference(tiny_bundle, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "edgespec.json").read_text())
    manifest["source"]["name"] = manifest["source"]["path"] = str(tmp_path / "gone")
    (bundle / "edgespec.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgespecError, match="--reference"):
        quality_report(bundle, windows=1, window_len=16)


def test_windows_do_not_overlap_and_shrink_to_fit():
    ids = list(range(1000))
    chunks = cut_windows(ids, 4, 100)
    assert [c[0] for c in chunks] == [0, 250, 500, 750] and all(len(c) == 100 for c in chunks)
    assert len(cut_windows(ids, 8, 300)) == 3
    with pytest.raises(EdgespecError, match="fewer than one window"):
        cut_windows(ids[:50], 8, 100)


def test_cli_prints_table_and_writes_json(tiny_int4_bundle, tiny_bundle, tmp_path):
    out = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["quality", str(tiny_int4_bundle), "--reference", str(tiny_bundle),
                                      "--windows", "2", "--window-len", "64", "--threads", "2",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and tiny_int4_bundle.name in result.output and "textwrap.py" in result.output
    assert f"{tiny_int4_bundle.name}: prompts run its int8 prefill graph: perplexity" in result.output
    assert json.loads(out.read_text())["windows"] == 2


def test_cli_compare_reuses_bundles_and_checks_recipe(tiny_hf, tiny_bundle, tiny_int4_bundle, tmp_path):
    shutil.copytree(tiny_bundle, tmp_path / "fp32")
    result = CliRunner().invoke(cli, ["quality", "--compare", str(tiny_hf), "--recipes", "fp32",
                                      "--out", str(tmp_path), "--windows", "2", "--window-len", "64"])
    assert result.exit_code == 0, result.output
    assert "100.0%" in result.output  # fp32 vs its torch source
    shutil.copytree(tiny_int4_bundle, tmp_path / "int8")  # wrong recipe in the int8 slot: refused, not reused
    result = CliRunner().invoke(cli, ["quality", "--compare", str(tiny_hf), "--recipes", "int8",
                                      "--out", str(tmp_path)])
    assert result.exit_code != 0 and "remove it or choose another --out" in result.output


def test_cli_missing_bundle_is_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["quality", str(tmp_path / "nope")])
    assert result.exit_code != 0
    assert result.output.strip().count("\n") == 0 and "not found" in result.output
