"""Traces: what a generation's drafter did, pass by pass, kept so that a replay can judge another.

A TraceRecorder drafts in place of the drafter it wraps (Generator.drafter_wrapper) and writes
down, per target pass, the proposal, what auto chose and the n-gram lookup followed, what the
target accepted and emitted, and what drafting and verifying cost. The target's rows that chose
the emitted tokens are only copied while the clock runs; their top-k probabilities are taken
after the generation, as is the draft model's top-k at every position of the reply (one run of
the draft over its prompt window and the reply). Costs come from the device profiles where they
are cached, else from the recorded passes and that run's own timing. runtime/replay.py decodes
the reply again from a trace under any drafter and PolicyConfig.

Format (JSON, gzip when the name ends in .gz), version VERSION:
  format, version    "edgespec-trace", 1
  meta               who recorded it: bench's prompt_id, category, mode, target, draft
  drafter, length    the drafter's name ("plain": none) and its model's length policy
                     ("cost", "heuristic" or null)
  tree, budget       the Generator's tree flag and drafted nodes per pass
  max_len, end       the target's context, where the generation would stop (max_tokens)
  vocab_size         the target's vocabulary
  prompt, output     token ids; output: the first token (the prefill's), then every pass's
                     emitted tokens (the last pass may run past an end token the Generator cut)
  code_fences        the vocabulary's tokens that hold a markdown fence (auto finds the
                     prompt's code blocks by them); optional, none where absent
  policy_config      every PolicyConfig field the generation ran with
  costs              target_ms {tokens: ms of a target pass} and its source ("profile" or
                     "passes": medians of the recorded verify times by tree size); overhead_ms
                     (the loop's median time per pass beside drafting and verifying); draft_ms
                     {tokens: ms of a draft pass}, draft_prefill_ms (per token fed in a
                     batch) and draft_source ("profile" or "timed": the draft run), or null
  target_top         k, ids, probs: row i is the target's top-k after output[:i + 1] (the row
                     that chose output[i + 1])
  draft              k, window, offset, max_len, ids, probs: row i is the draft's top-k after
                     prompt[offset:] + output[:i + 1], offset where ModelDrafter's first
                     proposal starts reading; step_ms, prefill_ms: that run's timing; null
                     without a draft model
  passes             per target pass: context (its length), budget, chosen (auto's kind: long,
                     short, model, both, none; else the drafter's name), match (lookup's n-gram, or
                     null), tokens and parents (the tree, root first), size, accepted, emitted,
                     draft_ms, verify_ms, wall_ms (to the next proposal; not on the last pass)
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..contract.errors import InputError
from ..contract.files import atomic_write_bytes
from .drafters import Drafter, PassReport, kept_code_fences, top_candidates
from .policy import CostAwareLength, DraftLength
from .sampling import SamplingParams
from .tree import DraftTree

FORMAT = "edgespec-trace"
VERSION = 1
TARGET_TOP = 8  # target probabilities kept per emitted token
DRAFT_TOP = 4  # draft probabilities kept per reply position (a tree's siblings come from the top 3)
SUFFIXES = (".trace.json.gz", ".trace.json")
_GREEDY = SamplingParams()
_REQUIRED = ("meta", "drafter", "budget", "max_len", "end", "vocab_size", "prompt", "output", "policy_config",
             "costs", "target_top", "draft", "passes")


class TraceRecorder:
    """A drafter recording the passes of the drafter it wraps (None: plain decoding) for one
    generation; it forwards start, propose, observe and reset unchanged."""

    def __init__(self, inner: Drafter | None):
        self.inner = inner
        self.name = inner.name if inner is not None else "plain"
        self.prompt_len: int | None = None
        self.end: int | None = None
        self.prompt: list[int] | None = None
        self.output: list[int] = []  # the prefill's token, then each pass's
        self.passes: list[dict] = []
        # per pass [emitted, V]: the target rows that chose its tokens (0.6 MB a token at 152k)
        self.rows: list[np.ndarray] = []
        self._started = 0.0  # perf_counter at the last proposal

    @property
    def choices(self) -> dict | None:
        """The wrapped drafter's choice counts (auto's), which the Generator reports."""
        return getattr(self.inner, "choices", None)

    def start(self, prompt_len: int, end: int) -> None:
        self.prompt_len, self.end = prompt_len, end
        if self.inner is not None:
            self.inner.start(prompt_len, end)

    def propose(self, context: Sequence[int], budget: int) -> DraftTree:
        now = time.perf_counter()
        if self.passes:  # the last pass, from its proposal to this one: the loop's time is in it too
            self.passes[-1]["wall_ms"] = (now - self._started) * 1000
        self._started = now
        tree = self.inner.propose(context, budget) if self.inner is not None else DraftTree(context[-1])
        if self.prompt is None:
            self.prompt, self.output = list(context[:self.prompt_len]), list(context[self.prompt_len:])
        self.passes.append({"context": len(context), "budget": int(budget), "chosen": self._chosen(),
                            "match": self._match()})
        return tree

    def observe(self, report: PassReport) -> None:
        if self.inner is not None:
            self.inner.observe(report)
        verdict, tree = report.verdict, report.tree
        emitted = [int(t) for t in verdict.tokens]
        self.passes[-1].update(tokens=list(tree.tokens), parents=list(tree.parents), size=len(tree),
                               accepted=verdict.num_accepted, emitted=emitted,
                               draft_ms=report.draft_ms, verify_ms=report.verify_ms)
        self.output.extend(emitted)
        if report.logits is not None:
            self.rows.append(report.logits[verdict.accepted])  # [emitted, V] a copy: top-k after the clock

    def reset(self) -> None:
        if self.inner is not None:
            self.inner.reset()

    def _chosen(self) -> str:
        if hasattr(self.inner, "chosen"):  # auto: (member, kind) of this pass, or None
            return self.inner.chosen[1] if self.inner.chosen else "none"
        return self.name

    def _match(self) -> int | None:
        lookup = getattr(self.inner, "lookup", self.inner)  # auto's lookup member, or lookup itself
        match = getattr(lookup, "last_match", None)
        return None if match is None else int(match)

    def length_policy(self) -> str | None:
        model = getattr(self.inner, "model", self.inner)
        length = getattr(model, "length", None)
        return {CostAwareLength: "cost", DraftLength: "heuristic"}.get(type(length))


class Tracing:
    """Records every generation of a Generator: each one's drafter is wrapped in a TraceRecorder,
    and `trace()` turns the last into a trace, off the clock (after the generation).

    draft: the draft session whose distributions along the reply the trace keeps (default: the
    Generator's; bench lends the draft of its model modes to its plain and lookup ones).
    memo: draft distributions shared between Tracings, by prompt and reply (modes of one prompt
    mostly emit the same reply: the draft then runs over it once)."""

    def __init__(self, gen, draft=None, memo: dict | None = None):
        self.gen = gen
        self.draft = draft if draft is not None else gen.draft
        self.memo = {} if memo is None else memo
        self.last: TraceRecorder | None = None
        gen.drafter_wrapper = self._wrap

    def _wrap(self, drafter: Drafter | None) -> TraceRecorder:
        self.last = TraceRecorder(drafter)
        return self.last

    def trace(self, meta: dict | None = None) -> dict | None:
        """The last generation's trace, or None if it had no target pass (one token, or none)."""
        rec = self.last
        passes = [p for p in rec.passes if "emitted" in p] if rec is not None else []
        if not passes:
            return None
        gen, config = self.gen, self.gen.policy_config
        prompt, output = rec.prompt, rec.output
        target_ids, target_probs = top_rows(np.concatenate(rec.rows) if rec.rows else np.zeros((0, 1)), TARGET_TOP)
        draft = None
        if self.draft is not None:
            key = (tuple(prompt), tuple(output), config.draft_window, id(self.draft))
            if key not in self.memo:
                self.memo[key] = draft_distributions(self.draft, prompt, output, config.draft_window)
            draft = self.memo[key]
        return {
            "format": FORMAT, "version": VERSION, "meta": dict(meta or {}),
            "drafter": rec.name, "length": rec.length_policy(), "tree": bool(gen.tree), "budget": int(gen.budget),
            "max_len": int(gen.target.max_len), "end": rec.end, "vocab_size": int(gen.target.vocab_size),
            "prompt": prompt, "output": output,
            "code_fences": sorted(kept_code_fences(gen.tokenizer, gen.drafter_state)),
            "policy_config": asdict(config),
            "costs": costs(passes, gen.target, self.draft, draft, gen.budget, config.prefill_batch),
            "target_top": {"k": TARGET_TOP, "ids": target_ids, "probs": target_probs},
            "draft": draft, "passes": passes,
        }


def top_rows(rows: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """Each row's k likeliest tokens and their softmax probabilities (float32, as drafters
    compute them: a replayed confidence threshold compares the same numbers)."""
    ids, probs = [], []
    for row in rows:  # [V]
        top, p = top_candidates(row, min(k, row.shape[-1]), _GREEDY)
        ids.append([int(t) for t in top])
        probs.append(np.asarray(p, np.float32).tolist())
    return ids, probs


def draft_distributions(session, prompt: list[int], output: list[int], window: int | None, k: int = DRAFT_TOP) -> dict:
    """The draft's top-k after every prefix of the reply, as a model drafter following it sees
    them: from where its first proposal starts reading (the context's last `window` tokens then)
    and one token a step, as its catch-ups mostly feed. Times the run: its first sync is a
    prefill, the steps are draft steps. Leaves the session empty."""
    offset = max(0, len(prompt) + 1 - window) if window else 0
    ids_of = session.logit_ids  # logit column -> token id (a frequent-token head), or None
    ids, probs, steps = [], [], []

    def keep(logits):
        (top,), (p,) = top_rows(logits[None], k)
        ids.append([int(ids_of[t]) for t in top] if ids_of is not None else top)
        probs.append(p)

    session.reset()
    try:
        fed = prompt[offset:] + output[:1]
        t0 = time.perf_counter()
        keep(session.sync(fed))
        prefill_ms = (time.perf_counter() - t0) * 1000 / len(fed)
        for token in output[1:]:
            if session.cache.length + 1 > session.max_len:
                break  # the draft's context is full: later positions have no row
            t0 = time.perf_counter()
            keep(session.forward([token])[-1])
            steps.append((time.perf_counter() - t0) * 1000)
    finally:
        session.reset()
    return {"k": k, "window": window, "offset": offset, "max_len": int(session.max_len), "ids": ids, "probs": probs,
            "step_ms": statistics.median(steps) if steps else None, "prefill_ms": prefill_ms}


def costs(passes: list[dict], target, draft_session, draft: dict | None, budget: int, batch: int) -> dict:
    """What a target pass over s tokens (s = 1..budget+1) and a draft pass cost: the cached
    device profiles where there are some, else the recorded verify times (median by tree size)
    and the draft run's timing (`batch`: a prefill's cost per token is cost(batch) / batch)."""
    from ..devices.profile import cached
    sizes = range(1, budget + 2)
    # The decode loop's own time per pass (detokenizing, bookkeeping): what is left of a pass's
    # wall time, proposal to proposal, beside drafting and verifying.
    left = [p["wall_ms"] - p["draft_ms"] - p["verify_ms"] for p in passes if "wall_ms" in p]
    out = {"overhead_ms": max(statistics.median(left), 0.0) if left else 0.0}
    profile = cached(target)
    if profile is not None:
        out["target_ms"], out["target_source"] = {str(s): profile.cost(s) for s in sizes}, "profile"
    else:
        by_size: dict[int, list[float]] = {}
        for p in passes:
            by_size.setdefault(p["size"], []).append(p["verify_ms"])
        out["target_ms"] = {str(s): statistics.median(ms) for s, ms in sorted(by_size.items())}
        out["target_source"] = "passes"
    profile = cached(draft_session) if draft_session is not None else None
    if profile is not None:
        out["draft_ms"] = {str(s): profile.cost(s) for s in sizes}
        out["draft_prefill_ms"], out["draft_source"] = profile.cost(batch) / batch, "profile"
    elif draft is not None and draft["step_ms"] is not None:
        step, prefill = draft["step_ms"], draft["prefill_ms"]
        out["draft_ms"] = {"1": step} | ({str(batch): batch * prefill} if batch * prefill > step else {})
        out["draft_prefill_ms"], out["draft_source"] = prefill, "timed"
    else:
        out["draft_ms"] = out["draft_prefill_ms"] = out["draft_source"] = None
    return out


def trace_name(prompt_id: str, mode: str) -> str:
    """A trace's file name for a prompt and a mode (characters a file name may not hold: _)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{prompt_id}.{mode}")
    return safe + SUFFIXES[0]


def write_trace(path: str | Path, trace: dict) -> Path:
    """Write a trace all or nothing (gzip when the name ends in .gz)."""
    data = json.dumps(trace, separators=(",", ":")).encode()
    if str(path).endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    return atomic_write_bytes(path, data)


def load_trace(path: str | Path) -> dict:
    """A trace file, checked: refused with a one-line error naming the file when it is
    unreadable, truncated, of another format version, or inconsistent."""
    path = Path(path)
    again = "record it again (edgespec bench --trace DIR)"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read trace {path}: {e.strerror or e}") from None
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        trace = json.loads(data)
    except (OSError, EOFError, zlib.error) as e:  # gzip: a truncated or damaged file
        raise InputError(f"trace {path} is truncated or damaged ({e}); {again}") from None
    except (ValueError, RecursionError) as e:  # JSON (and UTF-8) errors are ValueErrors
        raise InputError(f"trace {path} is not JSON ({type(e).__name__}: {e}); {again}") from None
    if not isinstance(trace, dict) or trace.get("format") != FORMAT:
        raise InputError(f"{path} is not an edgespec trace (no \"format\": \"{FORMAT}\")")
    if trace.get("version") != VERSION:
        raise InputError(f"trace {path} has format version {trace.get('version')!r}; this edgespec reads "
                         f"version {VERSION}: {again}")
    missing = [key for key in _REQUIRED if key not in trace]
    if missing:
        raise InputError(f"trace {path} lacks {', '.join(missing)}; {again}")
    output, passes = trace["output"], trace["passes"]
    emitted = sum(len(p.get("emitted", ())) for p in passes)
    if not output or emitted != len(output) - 1 or len(trace["target_top"]["ids"]) not in (0, emitted):
        raise InputError(f"trace {path} is inconsistent: {len(output)} output tokens, {emitted} emitted by its "
                         f"{len(passes)} passes, {len(trace['target_top']['ids'])} target rows; {again}")
    return trace


def trace_files(paths: Sequence[str | Path]) -> list[Path]:
    """Trace files given by name, or found in folders (*.trace.json.gz, *.trace.json)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.name.endswith(SUFFIXES))
            if not inside:
                raise InputError(f"no traces in {path} (*{SUFFIXES[0]}); record some with edgespec bench --trace DIR")
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise InputError(f"no trace file or folder {path}")
    return found
