"""The int8 prefill graph (export/prefill_graph.py): the bundle's own weights, rows independent
of each other (chunked prefill equals one pass), and a warm start that gives a cold start's tokens."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgespec.contract.integrity import record_files
from edgespec.contract.manifest import read_manifest
from edgespec.export.prefill_graph import PREFILL_DATA, PREFILL_MODEL, dequantize_nbits
from edgespec.export.upgrade import upgrade
from edgespec.runtime.api import Generator
from edgespec.runtime.prefix_cache import PrefixCache
from edgespec.runtime.session import Session, SessionOptions


@pytest.fixture(scope="module")
def ids(tiny_int4_bundle):
    import inspect
    import shlex
    return Generator(Session(tiny_int4_bundle)).encode(inspect.getsource(shlex))[:300]


def test_int4_targets_get_a_prefill_graph_and_exact_recipes_do_not(tiny_int4_bundle, tiny_bundle, tiny_draft_bundle):
    import onnx
    graph = onnx.load(str(tiny_int4_bundle / "model.onnx"), load_external_data=False).graph
    products = sum(n.op_type == "MatMulNBits" for n in graph.node)
    assert read_manifest(tiny_int4_bundle).prefill_graph["products"] == products - 1  # all but the LM head
    assert (tiny_int4_bundle / PREFILL_MODEL).is_file() and (tiny_int4_bundle / PREFILL_DATA).is_file()
    assert read_manifest(tiny_bundle).prefill_graph is None  # fp32: one model for every row
    assert Session(tiny_int4_bundle).prefill_sess is not None
    assert Session(tiny_int4_bundle, SessionOptions(int8_prefill=False)).prefill_sess is None


@pytest.mark.parametrize("zero_points", [False, True])
def test_dequantized_blocks_equal_what_matmulnbits_computes(zero_points):
    """The int8 weights start from the blocks exactly as onnxruntime reads them."""
    n, k, block = 24, 96, 32
    rng = np.random.default_rng(0)
    q = rng.integers(0, 256, (n, k // block, block // 2), dtype=np.uint8)
    scales = rng.random(n * k // block, dtype=np.float32) * 0.1
    zeros = rng.integers(0, 256, (n * ((k // block + 1) // 2),), dtype=np.uint8) if zero_points else None
    inits = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scales, "s")]
    inits += [numpy_helper.from_array(zeros, "z")] if zero_points else []
    node = helper.make_node("MatMulNBits", ["x", "q", "s"] + (["z"] if zero_points else []), ["y"],
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=block, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [k, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [k, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    w_ort = sess.run(None, {"x": np.eye(k, dtype=np.float32)})[0].T  # [N, K]
    np.testing.assert_allclose(dequantize_nbits(q, scales, zeros, n, k, 4, block), w_ort, rtol=1e-6, atol=1e-7)


def test_prefill_graph_chunks_equal_one_pass(tiny_int4_bundle, ids):
    """Each row's activations are quantized alone, so passes of any size write the same KV, bit
    for bit (a one-row pass runs as two rows: one-row kernels round differently)."""
    s = Session(tiny_int4_bundle)
    one = s.prefill(ids, chunk=len(ids)).copy()
    rows = [a[:, :, :len(ids)].copy() for a in s.cache.keys + s.cache.values]
    for chunk in (1, 7, 64, None):
        s.reset()
        last = s.prefill(ids, chunk=chunk)
        tolerance = dict(rtol=0, atol=0, err_msg=f"chunk {chunk}")  # one-row passes too
        np.testing.assert_allclose(last, one, **tolerance)
        for a, b in zip(s.cache.keys + s.cache.values, rows):
            np.testing.assert_allclose(a[:, :, :len(ids)], b, **tolerance)
        assert s.cache.prefilled == len(ids)


def test_prefill_graph_computes_the_bundles_model(tiny_int4_bundle, ids):
    """Its logits against the decode graph's, every row: int8 rounding of 4-bit weights only."""
    s = Session(tiny_int4_bundle)
    s.reset()
    prompt = s.forward(ids, prompt=True).copy()  # [S, V] from the prefill graph
    s.reset()
    decode = s.forward(ids)  # [S, V] from model.onnx
    agree = (prompt.argmax(-1) == decode.argmax(-1)).mean()
    assert agree >= 0.95, agree
    assert np.abs(prompt - decode).max() < 0.1 * np.abs(decode).max()


def test_rows_of_the_decode_graph_are_not_reused_across_calls(tiny_int4_bundle, ids):
    """A chat's next turn re-prefills the previous reply (its rows came from the decode graph),
    so warm and cold starts give the same tokens; a drafter's own follow-up keeps every row."""
    warm = Generator(Session(tiny_int4_bundle), drafter="none", reuse_cache=True, prefix_cache=PrefixCache(64 << 20))
    first = warm.generate(ids[:200], max_tokens=12)
    turn = ids[:200] + first.token_ids + ids[250:270]
    second = warm.generate(turn, max_tokens=12)
    assert second.stats.cached_prompt_tokens == 200
    cold = Generator(Session(tiny_int4_bundle), drafter="none").generate(turn, max_tokens=12)
    assert second.token_ids == cold.token_ids
    s = warm.target  # holds the second turn's prompt (prompt graph) and reply (decode graph)
    third = turn + second.token_ids + ids[280:290]
    assert s.cache.prefilled == len(turn)
    assert s.reuse_prefix(third, exact=False) == len(turn) + len(second.token_ids) - 1  # the last reply token is never fed
    assert s.reuse_prefix(third, exact=True) == len(turn)


def test_upgrade_adds_the_prefill_graph_to_an_older_bundle(tiny_int4_bundle, tmp_path, ids):
    old = tmp_path / "old"
    shutil.copytree(tiny_int4_bundle, old)
    (old / PREFILL_MODEL).unlink()
    (old / PREFILL_DATA).unlink()
    manifest = dataclasses.replace(read_manifest(old), prefill_graph=None)
    manifest.files = record_files(old)
    manifest.write(old)
    assert Session(old).prefill_sess is None
    assert upgrade(old) is True and upgrade(old) is False
    assert read_manifest(old).prefill_graph == read_manifest(tiny_int4_bundle).prefill_graph
    np.testing.assert_array_equal(Session(old).prefill(ids), Session(tiny_int4_bundle).prefill(ids))


def test_prompt_caches_on_disk_tell_the_prompt_graph_apart(tiny_int4_bundle):
    """Rows from the int8 prefill graph and from the decode graph are different KV: a disk
    entry written by one is never found by a session running the other."""
    from edgespec.runtime.prompt_store import bundle_identity
    with_graph = bundle_identity(Session(tiny_int4_bundle))
    without = bundle_identity(Session(tiny_int4_bundle, SessionOptions(int8_prefill=False)))
    assert with_graph != without
    assert with_graph == bundle_identity(Session(tiny_int4_bundle))


def test_smoothing_moves_an_outlier_channel_into_the_weights():
    """One activation channel 100x the others: with one int8 scale per row the rest of the row
    rounds to a few levels; smoothed (x / s, w * s) the product is several times closer."""
    from edgespec.export.prefill_graph import per_channel_int8, smoothing
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 256)).astype(np.float32)
    x[:, 7] *= 100.0
    w = rng.standard_normal((96, 256)).astype(np.float32)

    def int8_product(x, w):
        scale = np.abs(x).max(axis=1, keepdims=True) / 127
        w8, w_scale = per_channel_int8(w)
        return (np.rint(x / scale) @ w8.astype(np.float32)) * scale * w_scale

    exact = x @ w.T
    s = smoothing(np.abs(x).max(axis=0), np.abs(w).max(axis=0))
    plain = np.abs(int8_product(x, w) - exact).mean()
    smoothed = np.abs(int8_product(x / s, w * s) - exact).mean()
    assert smoothed < plain / 3, (smoothed, plain)


def test_the_manifest_says_how_prompts_are_computed(tiny_int4_bundle):
    record = read_manifest(tiny_int4_bundle).prefill_graph
    assert record["smoothing"].startswith("SmoothQuant factors sqrt(max|x| / max|w|) per channel from 512 tokens of heapq")
    assert record["activations"] == "uint8 per row, symmetric (max |x| / 127, zero point 128)"
