"""One ONNX Runtime session over a bundle, with a preallocated KV cache.

Past and present are bound to the *same* buffer through IOBinding: the graph
reads the cache and writes the new rows in place, so a step costs nothing that
grows with the context, and rolling back is an offset change.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from ..contract.errors import BundleError, InputError
from ..contract.integrity import check_graph, verify
from ..contract.manifest import Manifest, read_manifest
from .memory import collapse_to_huge_pages, released_while_loading, zeros_on_demand


# Rows per prefill pass, from ORT's profiler on the 0.5B int4 bundle (2 threads, ORT 1.32; CPU
# time with spinning off, which other load barely moves). MatMulNBits costs about the same per row
# at 128-1,024 rows a pass. GroupQueryAttention's cost per row and visible key falls from 64 rows
# (1.50 us at 2,900 cached tokens) to 256 (1.23) and no further, and a pass computes its whole rows
# x keys block, masked triangle too, so much wider passes waste more. Prefill work per prompt token
# at 512 / 1,536 / 3,000 tokens: 64 rows 7.1 / 8.6 / 10.2 ms, 256 rows 6.6 / 7.1 / 8.4 (the builder
# graph in one pass, as onnxruntime-genai runs it: 8.5 / 9.3 / 11.2). A pass keeps ~0.12 MB per row
# in ORT's arena whatever the context (256 rows: 36 MB; 1,024: 117 MB).
PREFILL_CHUNK = 256


class KVCache:
    """Key and value buffers of every layer, `length` rows of which are valid, and the token
    each row was computed for (`tokens`). Only the cache's own writes change `tokens`, so what
    it says the rows hold is what they hold: a prefix reused by the next call, a prefix cache
    or a drafter catching up compares against it."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, max_len: int, dtype):
        shape = (1, num_kv_heads, max_len, head_dim)  # [1, kv_heads, max_len, head_dim]
        # Resident only as rows are written: a short reply does not hold a full-context cache.
        self.keys = [zeros_on_demand(shape, dtype) for _ in range(num_layers)]
        self.values = [zeros_on_demand(shape, dtype) for _ in range(num_layers)]
        self.key_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.keys]
        self.value_values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.values]
        self.max_len = max_len
        self.length = 0
        self.tokens: list[int] = []  # token of row i (after keep(), the kept path's, as a chain)
        # Leading rows a cold prefill of the same tokens would write identically: rows of the
        # prompt graph (Session.prefill) where a bundle has one, else every row. Only these are
        # reused across calls, so a warm start gives the tokens a cold one gives.
        self.prefilled = 0

    def wrote(self, start: int, stop: int, tokens, prefill: bool) -> None:
        """Rows start..stop were written for `tokens` by a pass of the prompt graph (prefill) or
        not."""
        self.length = stop
        self.tokens[start:] = tokens
        self.prefilled = stop if prefill and self.prefilled >= start else min(self.prefilled, start)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    def keep(self, start: int, indices) -> None:
        """Keep rows start+indices (ascending) as rows start.., drop the rest after start.

        After a tree pass the cache holds one row per node; this moves the
        accepted path into place so the cache equals a chain run over it.
        """
        n = len(indices)
        if list(indices) != list(range(n)):  # rows not already in place (a plain pass: never)
            idx = np.asarray(indices, dtype=np.int64)
            assert idx.ndim == 1 and np.all(np.diff(idx) > 0), "keep() needs ascending node indices"
            src = start + idx
            for a in self.keys + self.values:
                a[:, :, start:start + n] = a[:, :, src]  # fancy index copies first: overlap-safe
            self.tokens[start:] = [self.tokens[i] for i in src]
        del self.tokens[start + n:]
        self.length = start + n
        self.prefilled = min(self.prefilled, self.length)

    def rewind(self, n: int) -> None:
        """Forget the last n rows."""
        if not 0 <= n <= self.length:
            raise InputError(f"cannot rewind {n} of {self.length} cached tokens")
        self.length -= n
        del self.tokens[self.length:]
        self.prefilled = min(self.prefilled, self.length)

    def clear(self) -> None:
        self.length = self.prefilled = 0
        self.tokens = []

    @property
    def row_nbytes(self) -> int:
        """Bytes of one token's row over every layer, keys and values."""
        return sum(a[0, :, 0].nbytes for a in self.keys + self.values)

    def copy_rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of rows 0..n: keys, values [layers, kv_heads, n, head_dim] (a prefix cache's
        entry, which the cache's later writes leave alone)."""
        assert 0 <= n <= self.length, (n, self.length)
        return np.stack([a[0, :, :n] for a in self.keys]), np.stack([a[0, :, :n] for a in self.values])

    def write_rows(self, keys: np.ndarray, values: np.ndarray, tokens, start: int, stop: int) -> None:
        """Rows start..stop of keys, values [layers, kv_heads, >= stop, head_dim], computed for
        tokens[:stop], into place; the cache then holds `stop` rows (rows before `start` already
        hold the same prefix). The rows come from prefix caches, which keep prefilled rows only."""
        assert 0 <= start <= min(self.length, stop) and stop <= min(self.max_len, keys.shape[2]), (start, stop)
        assert self.tokens[:start] == list(tokens[:start]), "write_rows() after a different prefix"
        for layer, (k, v) in enumerate(zip(self.keys, self.values)):
            k[0, :, start:stop] = keys[layer, :, start:stop]
            v[0, :, start:stop] = values[layer, :, start:stop]
        self.wrote(start, stop, tokens[start:stop], prefill=True)


@dataclass
class SessionOptions:
    provider: str = "CPUExecutionProvider"
    threads: int | None = None  # intra-op threads; None = physical cores
    max_context: int | None = None  # KV rows to preallocate; None = the manifest's
    spin: bool = True  # let idle intra-op threads spin (fast for one session; off when two share cores)
    # Run on ONNX Runtime's process-wide pool, shared by all sessions: draft and target then
    # spin on one set of threads instead of fighting over the cores. Once that pool exists,
    # every later session of the process must use it, so only apps that own the process opt in.
    shared_pool: bool = False
    # Move the prepacked weights onto 2 MB pages after loading, in a background thread: faster
    # steps for seconds of one core, so for long-lived processes (memory.collapse_to_huge_pages).
    huge_pages: bool = False
    # Prompts through the bundle's int8 prefill graph when it has one (export/prefill_graph.py):
    # 2-4x faster prefill, each prompt row computed with int8 weights and activations.
    int8_prefill: bool = True


# What ONNX Runtime raises (each class derives from Exception alone) for a model it cannot
# read: a truncated or garbled model.onnx (InvalidProtobuf; InvalidArgument when empty), a
# missing file (NoSuchFile), weights it cannot read or a graph it cannot initialize (Fail),
# an invalid graph (InvalidGraph, NoModel). Not EPFail or RuntimeException: a provider's or
# the allocator's failure is no fault of the bundle.
_ORT_LOAD_ERRORS = (_ort_state.Fail, _ort_state.InvalidArgument, _ort_state.InvalidGraph,
                    _ort_state.InvalidProtobuf, _ort_state.NoModel, _ort_state.NoSuchFile)


def _ort_message(error: Exception) -> str:
    """The innermost reason of an ORT error's first line, without its '[ONNXRuntimeError] : 1 : FAIL :'."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", first)[-1].strip()


_GLOBAL_POOL: list[int] = []  # thread count of the process-wide pool, once created


def _use_global_pool(threads: int) -> int:
    """Create the process-wide intra-op pool once; return its thread count."""
    if not _GLOBAL_POOL:
        try:
            ort.set_global_thread_pool_sizes(threads, 1)
        except Exception as e:  # noqa: BLE001  (the embedding app created the pool already: use it)
            if "already" not in str(e):
                raise
        _GLOBAL_POOL.append(threads)
    elif _GLOBAL_POOL[0] != threads:
        warnings.warn(f"this process already runs on a shared {_GLOBAL_POOL[0]}-thread pool; "
                      f"using it instead of {threads} threads", stacklevel=3)
    return _GLOBAL_POOL[0]


def physical_cores() -> int:
    import psutil
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


class Session:
    """forward(tokens, positions, bias) over a bundle, appending to its KV cache."""

    def __init__(self, bundle: str | Path, options: SessionOptions | None = None,
                 manifest: Manifest | None = None, head: str = "full"):
        """head: "full", or "draft" for the bundle's frequent-token head when it has one
        (export/draft_vocab.py); `logit_ids` then maps logit columns to token ids."""
        options = options or SessionOptions()
        self.path = Path(bundle)
        self.manifest = manifest or read_manifest(self.path)
        m = self.manifest
        verify(self.path, m)  # sizes, and contents unless stamped as verified (contract/integrity.py)
        self.model_file = m.model_file
        self.logit_ids: np.ndarray | None = None  # [logit columns] token id of each; None: all
        if head == "draft" and m.draft_head:
            self.model_file = m.draft_head["model_file"]
            self.logit_ids = np.load(self.path / m.draft_head["vocab_file"])
        from ..devices.providers import session_providers
        so = ort.SessionOptions()
        threads = options.threads or physical_cores()
        if options.shared_pool or _GLOBAL_POOL:
            threads = _use_global_pool(threads)
            so.use_per_session_threads = False
        else:
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not options.spin and not _GLOBAL_POOL:
            # Idle pool threads of one session would spin on the cores the other session
            # (draft vs target) needs: sleep instead.
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = threads
        self.providers = session_providers(options.provider)
        prefill_file = (m.prefill_graph or {}).get("model_file") if head == "full" and options.int8_prefill else None
        with released_while_loading(self.path.glob("*.data")) as filled:
            self.sess = self._load(self.model_file, so)
            self.prefill_sess = self._load(prefill_file, so) if prefill_file else None
        self.huge_pages = collapse_to_huge_pages(filled) if options.huge_pages else None  # a thread
        self.dtype = np.dtype(m.io_dtype)
        self.max_len = min(options.max_context or m.max_context, m.max_context)
        self.cache = KVCache(m.num_layers, m.num_kv_heads, m.head_dim, self.max_len, self.dtype)
        self.last_fed = 0  # tokens the last sync() had to feed
        names = m.inputs
        self._past = [(names["past_key"] % i, names["past_value"] % i) for i in range(m.num_layers)]
        self._present = [(m.outputs["present_key"] % i, m.outputs["present_value"] % i)
                         for i in range(m.num_layers)]
        self._num_logits = m.inputs.get("num_logits")  # graphs that can skip the head on early rows
        self._binding = self._bind(self.sess)
        self._prefill_binding = self._bind(self.prefill_sess) if self.prefill_sess else None

    def _load(self, model_file: str, so: "ort.SessionOptions"):
        model_path = self.path / model_file
        try:
            # Constant folding would copy a tied embedding's weights (the builder reshapes the LM
            # head's int4 blocks for the Gather): 116 MB more at load for the 1.5B, no speed gained.
            sess = ort.InferenceSession(str(model_path), so, providers=self.providers,
                                        disabled_optimizers=["ConstantFolding"])
        except _ORT_LOAD_ERRORS as e:
            raise BundleError(f"cannot load {model_path}: {_ort_message(e)}; re-export the bundle") from None
        check_graph(sess, self.manifest, self.path, model_file)  # the manifest against the graph
        return sess

    def _bind(self, sess):
        """The cache buffers never move, so they are bound once: past and present alike (both
        graphs of a bundle read and write the same buffers)."""
        binding = sess.io_binding()
        binding.bind_output(self.manifest.outputs["logits"])  # first, so it stays output 0
        for layer, ((pk, pv), (ok, ov)) in enumerate(zip(self._past, self._present)):
            k, v = self.cache.key_values[layer], self.cache.value_values[layer]
            binding.bind_ortvalue_input(pk, k)
            binding.bind_ortvalue_input(pv, v)
            binding.bind_ortvalue_output(ok, k)
            binding.bind_ortvalue_output(ov, v)
        return binding

    def _logits_output(self, b):
        """Output 0 of the last run, without wrapping all 57 outputs (0.25 ms a step in Python)."""
        if hasattr(b, "get_outputs_as_ortvaluevector"):  # onnxruntime >= 1.23
            return b.get_outputs_as_ortvaluevector()[0]
        return b.get_outputs()[0]

    @property
    def history(self) -> list[int]:
        """The tokens whose KV the cache holds (read only: the cache's writes keep it)."""
        return self.cache.tokens

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    def forward(self, tokens, positions=None, bias=None, last: int | None = None,
                prompt: bool = False) -> np.ndarray:
        """Run `tokens` after the cached ones; return logits [S, vocab] (float32).

        last: only the last `last` rows of logits are needed ([last, vocab] is returned
        when the graph can skip the others, which saves the LM head's work on them).

        positions: int64 [S] absolute positions (default: a chain after the cache).
        bias: float [S, cache.length + S] additive attention bias (default: causal).
        prompt: run the bundle's prefill graph, if it has one (prefill's passes).
        The new rows land at cache.length.. and cache.length grows by S.
        """
        tokens = np.asarray(tokens, dtype=np.int64).reshape(1, -1)  # [1, S]
        s = tokens.shape[1]
        past = self.cache.length
        total = past + s
        if total > self.max_len:
            raise InputError(f"context full: {past} cached + {s} new tokens exceed the "
                             f"{self.max_len}-token context of {self.path.name}")
        if positions is None:
            positions = np.arange(past, total, dtype=np.int64)
        if bias is None:
            bias = causal_bias(past, s, self.dtype)
        m = self.manifest
        prompt = prompt and self._prefill_binding is not None
        b = self._prefill_binding if prompt else self._binding
        b.bind_cpu_input(m.inputs["input_ids"], tokens)
        b.bind_cpu_input(m.inputs["attention_mask"], np.ones((1, total), np.int64))  # [1, T]
        b.bind_cpu_input(m.inputs["position_ids"], np.asarray(positions, np.int64).reshape(1, s))  # [1, S]
        b.bind_cpu_input(m.inputs["attention_bias"],
                         np.ascontiguousarray(bias, dtype=self.dtype).reshape(1, 1, s, total))  # [1, 1, S, T]
        if self._num_logits:
            b.bind_cpu_input(self._num_logits, np.array([min(last or s, s)], np.int64))  # [1]
        b.bind_output(m.outputs["logits"])
        (self.prefill_sess if prompt else self.sess).run_with_iobinding(b)
        self.cache.wrote(past, total, tokens[0].tolist(), prefill=prompt or self.prefill_sess is None)
        logits = self._logits_output(b).numpy()[0]  # [S, vocab]
        return logits.astype(np.float32, copy=False)

    def prefill(self, tokens, chunk: int | None = None) -> np.ndarray:
        """Feed a prompt in passes of `chunk` tokens; return the last logits [vocab].

        chunk: None for PREFILL_CHUNK, or 64 on graphs without `num_logits`: those give every
        row logits ([chunk, vocab], 39 MB at 64 x 152k), which ORT's arena then keeps.
        """
        tokens = list(tokens)
        if not tokens:
            raise InputError("prefill needs at least one token")
        if chunk is None:
            chunk = PREFILL_CHUNK if self._num_logits else 64
        if not (isinstance(chunk, (int, np.integer)) and chunk >= 1):
            raise InputError(f"prefill chunk must be an integer >= 1 (got {chunk!r})")
        # One-row products take other kernels than wider ones (a GEMV), whose float rounding
        # differs and can tip an int8 rounding: on the prompt graph a one-row pass feeds its
        # token twice and drops the copy, and the last pass computes the LM head over two rows
        # (AVX2 CPUs round its one-row product apart), so every row is computed alike and passes
        # of any size give the same KV and the same logits, bit for bit.
        twice = self.prefill_sess is not None
        for i in range(0, len(tokens), chunk):
            part = tokens[i:i + chunk]
            head_rows = 2 if twice and i + chunk >= len(tokens) else 1  # logits of the last pass only
            if len(part) == 1 and twice:
                logits = self.forward(part * 2, last=2, prompt=True)[:1]
                self.cache.rewind(1)
                self.cache.prefilled = self.cache.length
            else:
                logits = self.forward(part, last=head_rows, prompt=True)  # [head_rows, vocab]
        return logits[-1]

    def reset(self) -> None:
        self.cache.clear()

    def score(self, tokens) -> np.ndarray:
        """Logits [S, vocab] of `tokens` as a fresh sequence, leaving the cache empty
        (parity and quality checks)."""
        self.reset()
        logits = self.forward(tokens).copy()
        self.reset()
        return logits

    def sync(self, tokens) -> np.ndarray:
        """Bring the cache to `tokens`: keep the shared prefix, feed the rest (at least the last
        token); return the logits after them [vocab]. Drafters follow the context this way."""
        tokens = list(tokens)
        n = self.reuse_prefix(tokens)
        self.last_fed = len(tokens) - n
        return self.prefill(tokens[n:])

    def reuse_prefix(self, tokens, exact: bool = False) -> int:
        """Keep the cached rows that match the start of `tokens` (at most all but the last);
        return how many. A conversation's next turn then prefills only what is new.
        exact: keep only rows a cold prefill would write identically (cache.prefilled), so the
        call's tokens do not depend on what ran before; drafters keep every row."""
        tokens = list(tokens)
        n = min(len(self.history), len(tokens) - 1, self.cache.length)
        if exact:
            n = min(n, self.cache.prefilled)
        if self.history[:n] != tokens[:n]:
            n = next(i for i in range(n) if self.history[i] != tokens[i])
        self.cache.rewind(self.cache.length - n)
        return n


def bundle_logits(bundle: Path, manifest: Manifest, token_lists: list[list[int]],
                  threads: int | None = None) -> list[np.ndarray]:
    """Logits [S, vocab] of each token list from an empty cache: how export's parity check runs a
    bundle it has just built (export/parity.py's BundleLogits; export does not import the runtime)."""
    session = Session(bundle, SessionOptions(threads=threads), manifest=manifest)
    return [session.score(ids) for ids in token_lists]


def causal_bias(past: int, s: int, dtype=np.float32) -> np.ndarray:
    """[S, past+S] bias: every cached token visible, new tokens causal among themselves."""
    bias = np.zeros((s, past + s), dtype)
    bias[:, past:] = np.triu(np.full((s, s), -np.inf, dtype), 1)
    return bias
