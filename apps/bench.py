"""Benchmark suites: edgespec's decoding modes against onnxruntime-genai on the same bundle.

`run_suite` tokenizes each prompt once (target tokenizer + chat template) and
feeds the same ids to every mode. A mode is a runner with `run(ids,
max_tokens) -> Trial`; edgespec modes share one loaded target (and draft)
session, the onnxruntime-genai anchors load the bundle's untouched builder
graph (`model.genai.onnx`, same weights) with the same thread count.

Per prompt: `warmup` untimed rounds, then `repeats` timed rounds, each round
running every mode once (interleaved against a shared machine's drift); medians of
decode / prefill tok/s, acceptance, tokens per target pass and the time split;
whether the ids equal the `plain` ids (and where they first differ, with the
target's logit gap between the two tokens there: batched and single-token
kernels round differently, so a lossless mode may take the other side of a
near-tie); decode tok/s as a ratio of the `genai` anchor, and over `plain`'s
within each round (paired: the machine's swings between rounds cancel). Per
category: medians over prompts, the worst prompt's paired ratio, and the
largest gap at any divergence.

Long prompts (the `long` category: files of Python's standard library with an
instruction) are about the wait before the first token, so every trial also
records its time to first token (request to first token, wall clock) and its
end-to-end time (to the last token), each paired against the `genai` anchor of
the same round. A prompt with a `followup` (the same file, another instruction)
also gets a prefix-reuse row: the prompt, then the followup through a Generator
that reuses the KV of the shared prefix; the followup's TTFT over the prompt's
says what the reuse saves.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from ..contract.errors import EdgespecError, InputError
from ..contract.manifest import read_manifest
from ..runtime.drafters import bench_modes
from ..runtime.memory import peak_rss_mb

# Each drafter registers the bench modes that run it (runtime/drafters.py); plain runs none.
EDGESPEC_MODES = ("plain", *bench_modes())
GENAI_MODES = ("genai", "genai-spec", "genai-ngram")
MODES = EDGESPEC_MODES + GENAI_MODES
DEFAULT_MODES = ("plain", "chain", "tree", "ngram", "auto", "genai", "genai-spec", "genai-ngram")
NEEDS_DRAFT = (*(mode for mode, (_, _, spec) in bench_modes().items() if spec.needs_draft), "genai-spec")
ANCHOR = "genai"
REFERENCE = "plain"  # outputs of every mode are compared with this one
GENAI_DRAFT_TOKENS = 4  # onnxruntime-genai's default max_draft_tokens
GENAI_NGRAM_SIZE = 3
# Shipped suites; with no categories named, the first alone. long.json's prompts are 1,000-3,500
# tokens: a prefill of one costs 15-90 s per mode on the 1.5B target at 2 threads, which would
# make the default run several times longer for a number it does not need (decode speed).
SHIPPED_SUITES = ("code.json", "long.json")
# code.json's shapes in prompts written after the drafting policy was tuned on code.json, and never
# used to tune it: `auto` is judged on these (`--prompts heldout`).
HELD_OUT_SUITE = "heldout.json"
FILE_TEMPLATE = "{file}:\n\n```\n{text}```\n\n{instruction}"  # a prompt naming a file, unless its suite has one


# ----------------------------------------------------------------------------- prompts

def load_suite(path: str | Path | None = None, categories: Sequence[str] | None = None,
               per_category: int | None = None) -> list[dict]:
    """Prompts of a suite file (or a shipped suite by name: code, long, heldout), optionally
    filtered. Default: the shipped code suite, or with `categories` named, code and long
    (`--categories long` picks the long prompts)."""
    folder = resources.files("edgespec.apps").joinpath("prompts")
    shipped = (*SHIPPED_SUITES, HELD_OUT_SUITE)
    if path is not None and not Path(path).exists():
        name = Path(path).name if Path(path).suffix == ".json" else f"{Path(path).name}.json"
        if name not in shipped or Path(path).parent != Path("."):
            raise InputError(f"no suite file {path}; give a suite JSON or a shipped suite: "
                             f"{', '.join(Path(n).stem for n in shipped)}")
        prompts, source = _read_suite(folder, name, name), name
    elif path is None:
        names = SHIPPED_SUITES if categories else SHIPPED_SUITES[:1]
        prompts = [p for name in names for p in _read_suite(folder, name, name)]
        source = " and ".join(names)
    else:
        source = str(path)
        prompts = _read_suite(Path(path).parent, Path(path).name, source)
    if categories:
        known = sorted({p["category"] for p in prompts})
        unknown = set(categories) - set(known)
        if unknown:
            raise EdgespecError(f"unknown categories {', '.join(sorted(unknown))} in {source} "
                                f"(has {', '.join(known)})")
        prompts = [p for p in prompts if p["category"] in categories]
    if per_category:
        seen: dict[str, int] = {}
        kept = []
        for p in prompts:
            seen[p["category"]] = seen.get(p["category"], 0) + 1
            if seen[p["category"]] <= per_category:
                kept.append(p)
        prompts = kept
    return prompts


def _read_suite(folder, name: str, source: str) -> list[dict]:
    """One suite file's prompts (`source`: its name in messages). A prompt gives `messages`, or
    a `file` (relative to the suite) and an `instruction`, which the suite's `template` joins
    into one user message; a `followup` instruction after the same file becomes
    `followup_messages`."""
    try:
        data = json.loads(folder.joinpath(name).read_bytes())
    except OSError as e:
        raise InputError(f"cannot read {source} ({e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise InputError(f"{source} is not JSON ({e})") from None
    prompts = data.get("prompts") if isinstance(data, dict) else data
    if not isinstance(prompts, list) or not all(isinstance(p, dict) for p in prompts):
        raise InputError(f"{source}: expected a list of prompts, or {{\"prompts\": [...]}}, each a JSON object")
    template = data.get("template", FILE_TEMPLATE) if isinstance(data, dict) else FILE_TEMPLATE
    for p in prompts:
        if "file" in p and "messages" not in p:
            p.update(_file_messages(folder, source, p, template))
        missing = {"id", "category", "messages"} - set(p)
        if missing:
            raise EdgespecError(f"prompt {p.get('id', '?')} in {source} lacks {', '.join(sorted(missing))}")
    return prompts



def _file_messages(folder, source: str, p: dict, template: str) -> dict:
    """`messages` (and `followup_messages`) of a prompt that names a file: the file first, so
    that the followup shares every token up to the instruction."""
    if not isinstance(p.get("instruction"), str):
        raise InputError(f"prompt {p.get('id', '?')} in {source} names a file but no instruction")
    try:
        text = folder.joinpath(p["file"]).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"prompt {p.get('id', '?')} in {source}: cannot read {p['file']} ({e})") from None
    name = Path(p["file"]).name

    def user(instruction: str) -> list[dict]:
        try:
            content = template.format(file=name, text=text, instruction=instruction)
        except (KeyError, IndexError, ValueError) as e:
            raise InputError(f"{source}: template {template!r} is not a format string of "
                             f"{{file}}, {{text}} and {{instruction}} ({type(e).__name__}: {e})") from None
        return [{"role": "user", "content": content}]
    out = {"messages": user(p["instruction"])}
    if isinstance(p.get("followup"), str):
        out["followup_messages"] = user(p["followup"])
    return out


# ----------------------------------------------------------------------------- trials

@dataclass
class Trial:
    token_ids: list[int]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float
    decode_tokens: int  # tokens produced after the first one (the prefill's)
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    target_passes: int = 0
    proposed: int = 0
    accepted: int = 0
    choices: dict | None = None  # auto: passes per choice (lookup long/short, model, none)
    ttft_seconds: float = 0.0  # request to first token, wall clock (the prefill and its setup)
    e2e_seconds: float = 0.0  # request to last token
    cached_prompt_tokens: int = 0  # prompt tokens whose KV a cache gave (not prefilled)

    @property
    def decode_tok_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def prefill_tok_s(self) -> float:
        """Prompt tokens prefilled (not taken from a cache) per second."""
        computed = self.prompt_tokens - self.cached_prompt_tokens
        return computed / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.decode_tokens / self.target_passes if self.target_passes else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def drafted_per_pass(self) -> float:
        """The draft size the drafter chose, on average (tree nodes beyond the root)."""
        return self.proposed / self.target_passes if self.target_passes else 0.0

    def split(self) -> dict:
        """Fractions of decode time spent drafting, verifying, and elsewhere."""
        if self.decode_seconds <= 0:
            return {"draft": 0.0, "verify": 0.0, "overhead": 0.0}
        draft = min(self.draft_seconds / self.decode_seconds, 1.0)
        verify = min(self.verify_seconds / self.decode_seconds, 1.0 - draft)
        return {"draft": draft, "verify": verify, "overhead": max(1.0 - draft - verify, 0.0)}

    def summary(self) -> dict:
        return {"new_tokens": len(self.token_ids), "prefill_seconds": self.prefill_seconds,
                "decode_seconds": self.decode_seconds, "decode_tok_s": self.decode_tok_s,
                "prefill_tok_s": self.prefill_tok_s, "tokens_per_pass": self.tokens_per_pass,
                "acceptance_rate": self.acceptance_rate, "drafted_per_pass": self.drafted_per_pass,
                "proposed": self.proposed,
                "accepted": self.accepted, "target_passes": self.target_passes, "split": self.split(),
                "choices": self.choices, "ttft_seconds": self.ttft_seconds, "e2e_seconds": self.e2e_seconds,
                "cached_prompt_tokens": self.cached_prompt_tokens}


# ----------------------------------------------------------------------------- runners

class EdgespecRunner:
    """One of edgespec's modes on already loaded sessions; `tracing` (runtime/trace.py), when
    given, records each run's passes for `--trace`."""

    def __init__(self, generator, tracing=None):
        self.gen = generator
        self.tracing = tracing

    def run(self, ids: list[int], max_tokens: int) -> Trial:
        from ..runtime.api import Stats
        stats = Stats()
        tokens = []
        t0 = time.perf_counter()
        first = None
        for chunk in self.gen.stream(_Ids(ids), max_tokens=max_tokens, stats=stats):
            if first is None and chunk.token_ids:
                first = time.perf_counter()
            tokens.extend(chunk.token_ids)
        end = time.perf_counter()
        return Trial(tokens, stats.prompt_tokens, stats.prefill_seconds, stats.decode_seconds,
                     max(stats.new_tokens - 1, 0), stats.draft_seconds, stats.verify_seconds,
                     stats.verify_passes, stats.proposed, stats.accepted, stats.drafter_choices,
                     ttft_seconds=(first or end) - t0, e2e_seconds=end - t0,
                     cached_prompt_tokens=stats.cached_prompt_tokens)


class _Ids(list):
    """Prompt token ids that `_generator`'s encode passes through unchanged."""


def _generator(target, draft, tree: bool, drafter: str | None, reuse_cache: bool = False):
    """A Generator that takes `_Ids` as an already tokenized prompt (same ids for every mode)."""
    from ..runtime.api import Generator

    class PretokenizedGenerator(Generator):
        def encode(self, prompt, tools=None, prefill=""):
            return list(prompt) if isinstance(prompt, _Ids) else super().encode(prompt, tools, prefill)

    return PretokenizedGenerator(target, draft, tree=tree, drafter=drafter, reuse_cache=reuse_cache)


class PrefixReuse:
    """A request, then a second one sharing its prefix (the same file, another instruction)
    through the Generator's reuse path; one token each, since what they measure is the time to
    the first. `generator()` gives a fresh Generator on a session with an empty cache, so the
    first request starts cold whatever a mode left there or a Generator kept from before."""

    def __init__(self, generator: Callable[[], object]):
        self.generator = generator

    def run(self, first: list[int], second: list[int]) -> tuple[Trial, Trial]:
        runner = EdgespecRunner(self.generator())
        return runner.run(first, 1), runner.run(second, 1)


class GenaiRunner:
    """onnxruntime-genai greedy on a bundle's builder graph; optionally its own speculation
    (`draft`: a `model.draft` section naming the draft bundle's builder graph; `ngram_size`:
    its prompt-lookup mode)."""

    def __init__(self, loaded: "GenaiModel", draft: bool = False, ngram_size: int = 0,
                 max_draft_tokens: int = GENAI_DRAFT_TOKENS):
        import onnxruntime_genai as og
        self.og = og
        self.model, self.context, self.eos = loaded
        self.speculative = draft or ngram_size > 0
        self.options = {}
        if draft:
            self.options = {"max_draft_tokens": max_draft_tokens}
        elif ngram_size:
            self.options = {"ngram_size": ngram_size, "max_draft_tokens": max_draft_tokens}

    def run(self, ids: list[int], max_tokens: int) -> Trial:
        og = self.og
        t_request = time.perf_counter()
        params = og.GeneratorParams(self.model)
        length = len(ids) + max_tokens
        params.set_search_options(max_length=min(length, self.context) if self.context else length,
                                  do_sample=False)
        if self.options:
            params.set_speculative_options(**self.options)
        generator = og.Generator(self.model, params)
        t0 = time.perf_counter()
        generator.append_tokens(_int32(ids))  # the prefill
        generator.generate_next_token()  # the first new token (from the prefill's logits)
        t1 = time.perf_counter()
        first = generator.token_count() - len(ids)
        while not generator.is_done():
            generator.generate_next_token()
        t2 = time.perf_counter()
        out = [int(t) for t in generator.get_sequence(0)[len(ids):]][:max_tokens]
        for i, t in enumerate(out):  # edgespec stops before the end token; count the same way
            if t in self.eos:
                out = out[:i]
                break
        trial = Trial(out, len(ids), t1 - t0, t2 - t1, max(len(out) - first, 0),
                      ttft_seconds=t1 - t_request, e2e_seconds=t2 - t_request)
        if self.speculative:
            # target passes: verify (+ re-anchor) passes of speculative rounds, plus plain steps
            # taken when nothing was drafted; all decode time not spent drafting counts as verify
            s = generator.get_speculative_stats()
            trial.draft_seconds = min(s.get("total_draft_ms", 0.0) / 1000, trial.decode_seconds)
            trial.verify_seconds = trial.decode_seconds - trial.draft_seconds
            trial.target_passes = (int(s.get("target_forward_passes", 0))
                                   + int(s.get("standard_fallback_steps", 0)))
            trial.proposed = int(s.get("draft_tokens_proposed", 0))
            trial.accepted = int(s.get("draft_tokens_accepted", 0))
        else:
            trial.verify_seconds = trial.decode_seconds
            trial.target_passes = trial.decode_tokens
        return trial


class GenaiModel(NamedTuple):
    model: object  # onnxruntime_genai.Model
    context: int  # max_length cap (0: unknown)
    eos: set[int]


def genai_model(target: Path, threads: int, draft: Path | None = None) -> GenaiModel:
    """An onnxruntime-genai model for a bundle's builder graph with `threads` intra-op
    threads; with `draft`, a `model.draft` section naming the draft bundle's builder graph
    (which turns on onnxruntime-genai's draft-model speculation)."""
    import onnxruntime_genai as og
    base = json.loads((target / "genai_config.json").read_text())
    overlay = {"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}
    if draft is not None:
        draft_decoder = json.loads((draft / "genai_config.json").read_text())["model"]["decoder"]
        # onnxruntime-genai joins the filename to the target's folder: make it relative to that
        draft_decoder["filename"] = os.path.relpath((draft / draft_decoder["filename"]).resolve(),
                                                    target.resolve())
        draft_decoder.setdefault("session_options", {})["intra_op_num_threads"] = threads
        overlay["model"]["draft"] = draft_decoder
    config = og.Config(str(target))
    config.overlay(json.dumps(overlay))
    return GenaiModel(og.Model(config), int(base["model"].get("context_length") or 0),
                      _as_set(base["model"].get("eos_token_id")))


def _int32(ids):
    import numpy as np
    return np.asarray(ids, dtype=np.int32)


def _as_set(v) -> set[int]:
    if v is None:
        return set()
    return {int(x) for x in v} if isinstance(v, list) else {int(v)}


def _genai_missing(bundle: Path) -> str | None:
    """Why onnxruntime-genai cannot run this bundle, or None."""
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as e:
        return f"onnxruntime-genai is not installed ({e})"
    config = bundle / "genai_config.json"
    if not config.is_file():
        return f"{bundle.name} has no genai_config.json"
    filename = json.loads(config.read_text())["model"]["decoder"].get("filename", "")
    if not (bundle / filename).is_file():
        return f"{bundle.name}/{filename} (the builder graph) is missing"
    return None


def _first_load(target_path: Path, threads: int):
    """Load the target's graph once, unmeasured, before any mode loads its models.

    The first large ONNX Runtime session a process loads runs slower than later loads
    of the same graph: 1.5B int4, one step, 35.4 / 33.4 / 32.9 ms for the first / second
    / third load in one process; unloading the first and loading it again is fast, an
    earlier load that was freed does not help. In a bench that loads edgespec's target
    first, plain decoding measured 0.95x onnxruntime-genai; with genai's model loaded
    first, 1.01x. With this load first, no measured mode pays that and another not.
    """
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(str(target_path / read_manifest(target_path).model_file), so,
                                providers=["CPUExecutionProvider"])


def _runners(modes, target_path: Path, draft_path: Path | None, genai_path: Path, threads: int,
             shared_pool: bool = False, trace: bool = False):
    """mode -> zero-argument factory of its runner; sessions are loaded once and shared.
    genai_path: the bundle the onnxruntime-genai anchors run (the target's, or --genai-target).
    trace: edgespec runners record their passes, each with the draft's distributions where there
    is a draft (lent to the modes that do not draft with it)."""
    from ..runtime.session import Session, SessionOptions
    loaded: dict[str, object] = {}

    def session(which: str):
        """As `load()` sets them up. On the process-wide pool one target serves every mode;
        otherwise 'target' spins its idle threads (fastest alone) while with a draft model both
        sessions sleep when idle, so neither steals the other's cores."""
        if shared_pool and which == "target-quiet":
            which = "target"
        if which not in loaded:
            path = draft_path if which == "draft" else target_path
            loaded[which] = Session(path, SessionOptions(threads=threads, spin=shared_pool or which == "target",
                                                         shared_pool=shared_pool, huge_pages=True),
                                     head="draft" if which == "draft" else "full")
            if loaded[which].huge_pages:  # as in chat and serve; done before anything is timed
                loaded[which].huge_pages.join()
        return loaded[which]

    def genai(draft: bool):
        key = "genai-draft" if draft else "genai"  # genai and genai-ngram share one model
        if key not in loaded:
            loaded[key] = genai_model(genai_path, threads, draft_path if draft else None)
        return loaded[key]

    memo: dict = {}  # the draft's distributions along a reply, shared by the modes' traces

    def edgespec(tree: bool, drafter: str | None, draft: bool):
        def runner():
            gen = _generator(session("target-quiet" if draft else "target"), session("draft") if draft else None,
                             tree, drafter)
            if not trace:
                return EdgespecRunner(gen)
            from ..runtime.trace import Tracing
            return EdgespecRunner(gen, Tracing(gen, session("draft") if draft_path else None, memo))
        return runner

    factories: dict[str, Callable[[], object]] = {"plain": edgespec(True, "none", False)}
    for mode, (drafter, tree, spec) in bench_modes().items():
        factories[mode] = edgespec(tree, drafter, spec.needs_draft or (spec.uses_draft and draft_path is not None))
    factories |= {
        "genai": lambda: GenaiRunner(genai(False)),
        "genai-spec": lambda: GenaiRunner(genai(True), draft=True),
        "genai-ngram": lambda: GenaiRunner(genai(False), ngram_size=GENAI_NGRAM_SIZE),
    }

    def reuse_generator():
        target = session("target")
        target.reset()  # what the last mode left is not the pair's to reuse
        return _generator(target, None, True, "none", reuse_cache=True)

    return {m: factories[m] for m in modes}, lambda: session("target"), PrefixReuse(reuse_generator)


# ----------------------------------------------------------------------------- the suite

def run_suite(target: str | Path, draft: str | Path | None = None, modes: Sequence[str] = DEFAULT_MODES,
              prompts: Sequence[dict] | str | Path | None = None, max_tokens: int = 200, repeats: int = 2,
              warmup: int = 1, threads: int = 2, progress: bool = True, shared_pool: bool = False,
              genai_target: str | Path | None = None, trace: str | Path | None = None) -> dict:
    """Run every prompt through every mode; return the JSON-ready results (see module doc).

    shared_pool: edgespec sessions on ONNX Runtime's process-wide pool, as `edgespec run` uses it.
    genai_target: a bundle of the same tokenizer whose graph the onnxruntime-genai anchors run
    instead of the target's (e.g. the recipe its own builder makes by default: int4 rtn block 32).
    trace: a folder to write a trace of each prompt and edgespec mode into (its last timed run,
    runtime/trace.py), for `edgespec replay`; the draft's pass over the reply runs after the run.
    """
    from .prepare import bundle_path
    modes = list(dict.fromkeys(modes))
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise InputError(f"unknown modes {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if not modes:
        raise InputError(f"no modes given; choose from {', '.join(MODES)}")
    if repeats < 1 or warmup < 0 or max_tokens < 1 or threads < 1:
        raise InputError(f"need repeats >= 1, warmup >= 0, max_tokens >= 1, threads >= 1 "
                         f"(got {repeats}, {warmup}, {max_tokens}, {threads})")
    if draft in (None, "none") and any(m in NEEDS_DRAFT for m in modes):
        needy = [m for m in modes if m in NEEDS_DRAFT]
        raise EdgespecError(f"modes {', '.join(needy)} need a draft model; pass one (--draft) "
                            f"or drop them from --modes")
    if prompts is None or isinstance(prompts, (str, Path)):
        prompts = load_suite(prompts)
    prompts = list(prompts)
    if not prompts:
        raise InputError("no prompts to run")
    target_path = bundle_path(target)
    draft_path = bundle_path(draft) if draft not in (None, "none") else None
    genai_path = bundle_path(genai_target) if genai_target else target_path
    if read_manifest(genai_path).tokenizer_sha256 != read_manifest(target_path).tokenizer_sha256:
        raise InputError(f"--genai-target {genai_path.name} has another tokenizer than {target_path.name}; "
                         "the anchors must read the same token ids")

    unsupported: dict[str, str] = {}
    for m in modes:
        if m in GENAI_MODES:
            reason = _genai_missing(genai_path) or (_genai_missing(draft_path) if m == "genai-spec" else None)
            if reason:
                unsupported[m] = reason
    encode = _encoder(target_path)
    encoded = [(encode(p["messages"]), encode(p["followup_messages"]) if p.get("followup_messages") else None)
               for p in prompts]
    _check_context(prompts, encoded, max_tokens, target_path)
    ballast = _first_load(target_path, threads)  # noqa: F841  (kept alive until the suite ends)
    factories, target_session, prefix_reuse = _runners([m for m in modes if m not in unsupported], target_path,
                                                       draft_path, genai_path, threads, shared_pool,
                                                       trace=trace is not None)
    runners: dict[str, object] = {}
    for m, make in factories.items():
        try:
            runners[m] = make()
        except EdgespecError:
            raise
        except Exception as e:  # onnxruntime-genai refusing a config: record it, keep benchmarking
            if m not in GENAI_MODES:
                raise
            unsupported[m] = f"{type(e).__name__}: {e}"
    eos = read_manifest(target_path).eos_token_ids

    from tqdm import tqdm
    pairs = sum(followup is not None for _, followup in encoded)
    bar = tqdm(total=(len(prompts) * len(runners) + pairs) * (warmup + repeats), desc="bench", unit="run",
               file=sys.stderr, disable=not progress, leave=False)
    rows = []
    try:
        for p, (ids, followup) in zip(prompts, encoded):
            row = {"id": p["id"], "category": p["category"], "prompt_tokens": len(ids), "modes": {}}
            # Round-robin: every round runs each mode once, so a slow spell of a shared machine
            # (seen here: 20% swings over a minute) lands on all modes alike, not on one. Each
            # round starts one mode later, so over as many rounds as modes each mode has run in
            # every place: a swing with a period near a round's (here +-17% over ~20 s, against
            # ~10 s trials) favours no mode for its place in the order.
            trials: dict[str, list] = {m: [] for m in runners}
            reused: list[tuple[Trial, Trial]] = []
            for round_ in range(warmup + repeats):
                for m, runner in _rotated(list(runners.items()), round_):
                    bar.set_postfix_str(f"{p['id']} {m}")
                    trial = runner.run(ids, max_tokens)
                    if round_ >= warmup:
                        trials[m].append(trial)
                    if trace is not None and round_ == warmup + repeats - 1 and getattr(runner, "tracing", None):
                        _write_trace(runner.tracing, Path(trace), p, m, target_path, draft_path)
                    bar.update()
                if followup is not None:
                    bar.set_postfix_str(f"{p['id']} prefix reuse")
                    pair = prefix_reuse.run(ids, followup)
                    if round_ >= warmup:
                        reused.append(pair)
                    bar.update()
            for m in runners:
                row["modes"][m] = _aggregate(trials[m])
            _compare(row)
            _pair(row, trials)
            _explain_divergences(row, ids, lambda reply: _last_logits(target_session(), ids, reply), eos)
            if reused:
                row["prefix_reuse"] = _reuse_row(reused, ids, followup)
            rows.append(row)
    finally:
        bar.close()

    return {
        "meta": {**_meta(target_path, draft_path, modes, threads, max_tokens, repeats, warmup),
                 "genai_target": str(genai_path)},
        "unsupported": unsupported,
        "prompts": rows,
        "categories": _categories(rows, [m for m in modes if m in runners]),
        "prefix_reuse": _reuse_categories(rows),
        "peak_rss_mb": peak_rss_mb(),
    }


def _write_trace(tracing, folder: Path, p: dict, mode: str, target: Path, draft: Path | None) -> None:
    """The trace of a mode's last run of prompt `p` (none if it decoded no pass)."""
    from ..runtime.trace import trace_name, write_trace
    trace = tracing.trace({"prompt_id": p["id"], "category": p["category"], "mode": mode, "target": target.name,
                           "draft": draft.name if draft else None})
    if trace is not None:
        folder.mkdir(parents=True, exist_ok=True)
        write_trace(folder / trace_name(p["id"], mode), trace)


def _check_context(prompts: Sequence[dict], encoded: list, max_tokens: int, target_path: Path) -> None:
    """Refuse, before anything loads, a prompt whose reply would not fit the target's context:
    edgespec would stop at the end of it and onnxruntime-genai (a longer context) would not."""
    context = read_manifest(target_path).max_context
    for p, (ids, followup) in zip(prompts, encoded):
        longest = max(len(ids), len(followup or ()))
        if longest >= context:
            raise InputError(f"prompt {p['id']} has {longest} tokens, which leaves no room for a reply in the "
                             f"{context}-token context of {target_path.name}; leave it out (--categories) "
                             f"or export the target with a larger --max-context")
        if len(ids) + max_tokens > context:
            raise InputError(f"prompt {p['id']} has {len(ids)} tokens: with --max-tokens {max_tokens} it needs "
                             f"{len(ids) + max_tokens} of the {context}-token context of {target_path.name}; "
                             f"lower --max-tokens to {context - len(ids)}")


def _encoder(target_path: Path):
    """Chat-template encoding with the target's tokenizer, as the Generator does it."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(target_path))
    if not tok.chat_template:
        raise EdgespecError(f"{target_path.name} has no chat template; the suite's prompts are chat messages")

    def encode(messages):
        return list(tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                            return_dict=False))
    return encode


def _aggregate(trials: list[Trial]) -> dict:
    med = lambda f: statistics.median(f(t) for t in trials)  # noqa: E731
    split = {k: statistics.median(t.split()[k] for t in trials) for k in ("draft", "verify", "overhead")}
    return {
        "decode_tok_s": med(lambda t: t.decode_tok_s),
        "prefill_tok_s": med(lambda t: t.prefill_tok_s),
        "ttft_seconds": med(lambda t: t.ttft_seconds),
        "e2e_seconds": med(lambda t: t.e2e_seconds),
        "cached_prompt_tokens": med(lambda t: t.cached_prompt_tokens),
        "acceptance_rate": med(lambda t: t.acceptance_rate),
        "tokens_per_pass": med(lambda t: t.tokens_per_pass),
        "drafted_per_pass": med(lambda t: t.drafted_per_pass),
        "split": split,
        "new_tokens": len(trials[-1].token_ids),
        "token_ids": trials[-1].token_ids,
        # Trials can part from one another: each reply's drafter sizes its passes from costs timed
        # live, so trials verify at different widths, and a one-token pass rounds differently from
        # a wider one (up to 0.3 in a logit on the 1.5B; README): near-ties fall either way.
        "replies": [list(ids) for ids in dict.fromkeys(tuple(t.token_ids) for t in trials)],  # distinct
        "trials": [t.summary() for t in trials],
    }


def _first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _compare(row: dict) -> None:
    """Add matches_plain / first_divergence and ratio_vs_genai to each mode of one prompt
    (matching: every trial's reply equals plain's last)."""
    modes = row["modes"]
    ref = modes.get(REFERENCE, {}).get("token_ids")
    anchor = modes.get(ANCHOR, {}).get("decode_tok_s")
    for m, r in modes.items():
        if ref is None:
            r["matches_plain"], r["first_divergence"] = None, None
            continue
        # Every trial's reply counts, not only the last: `token_ids` becomes the one that
        # parts from plain's first, so that is the one whose divergence gets scored.
        parted = [(at, seq) for seq in r.get("replies") or [r["token_ids"]]
                  if (at := _first_divergence(seq, ref)) is not None]
        r["matches_plain"] = not parted
        r["first_divergence"] = None
        if parted:
            r["first_divergence"], r["token_ids"] = min(parted, key=lambda p: p[0])
            r["new_tokens"] = len(r["token_ids"])
        r["ratio_vs_genai"] = r["decode_tok_s"] / anchor if anchor else None


def _pair(row: dict, trials: dict[str, list[Trial]]) -> None:
    """Add paired_vs_plain to each mode of one prompt: the median over rounds of its decode
    speed over plain's *in the same round*. A shared machine's speed swings between rounds
    (plain's own trials of one prompt spread 26% here), which a ratio of medians carries
    into the comparison and a ratio within one round mostly cancels. Against the genai
    anchor, paired the same way: prefill speed over genai's, and genai's time to first token
    and end-to-end time over the mode's (above 1: sooner than genai)."""
    for m, ts in trials.items():
        r = row["modes"][m]
        if REFERENCE in trials:
            r["paired_vs_plain"] = _paired(ts, trials[REFERENCE], lambda t: t.decode_tok_s)
        if ANCHOR in trials:
            anchor = trials[ANCHOR]
            r["prefill_vs_genai"] = _paired(ts, anchor, lambda t: t.prefill_tok_s)
            r["ttft_vs_genai"] = _paired(anchor, ts, lambda t: t.ttft_seconds)
            r["e2e_vs_genai"] = _paired(anchor, ts, lambda t: t.e2e_seconds)


def _paired(tops: list[Trial], bottoms: list[Trial], value: Callable[[Trial], float]) -> float | None:
    """Median over rounds of value(top) / value(bottom) within each round."""
    ratios = [value(t) / value(b) for t, b in zip(tops, bottoms) if value(b) > 0]
    return statistics.median(ratios) if ratios else None


def _reuse_row(pairs: list[tuple[Trial, Trial]], ids: list[int], followup: list[int]) -> dict:
    """One prompt's prefix-reuse row: medians of the first request and of the second, which
    shares `shared_prefix_tokens` with it, and the second's TTFT over the first's (paired)."""
    def side(ts: list[Trial]) -> dict:
        return {"prompt_tokens": ts[0].prompt_tokens,
                "cached_prompt_tokens": statistics.median(t.cached_prompt_tokens for t in ts),
                "ttft_seconds": statistics.median(t.ttft_seconds for t in ts),
                "prefill_tok_s": statistics.median(t.prefill_tok_s for t in ts)}
    firsts, seconds = [p[0] for p in pairs], [p[1] for p in pairs]
    shared = _first_divergence(ids, followup)
    return {"mode": REFERENCE, "shared_prefix_tokens": min(len(ids), len(followup)) if shared is None else shared,
            "first": side(firsts), "second": side(seconds),
            "ttft_ratio": _paired(seconds, firsts, lambda t: t.ttft_seconds),
            "trials": [{"first": a.summary(), "second": b.summary()} for a, b in pairs]}


def _reuse_categories(rows: list[dict]) -> dict:
    """Per category with prefix-reuse rows (and "all"): medians over its prompts; the worst
    (largest) TTFT ratio."""
    out = {}
    for cat, members in by_category([r for r in rows if r.get("prefix_reuse")]).items():
        rs = [r["prefix_reuse"] for r in members]
        out[cat] = {"prompts": len(rs),
                    "shared_prefix_tokens": median(r["shared_prefix_tokens"] for r in rs),
                    "cached_prompt_tokens": median(r["second"]["cached_prompt_tokens"] for r in rs),
                    "first_cached_prompt_tokens": median(r["first"]["cached_prompt_tokens"] for r in rs),
                    "first_ttft_seconds": median(r["first"]["ttft_seconds"] for r in rs),
                    "ttft_seconds": median(r["second"]["ttft_seconds"] for r in rs),
                    "ttft_ratio": median(r["ttft_ratio"] for r in rs),
                    "worst_ttft_ratio": max((r["ttft_ratio"] for r in rs if r["ttft_ratio"] is not None),
                                            default=None)}
    return out


def _last_logits(session, prompt: list[int], reply: list[int]):
    """The target's logits after `prompt` + `reply` ([vocab]) as a generation computes them: the
    prompt through prefill (its int8 graph where the bundle has one), the reply through the
    decode graph (in one pass); the cache is left empty."""
    session.reset()
    try:
        logits = session.prefill(prompt)
        return session.forward(reply, last=1)[-1] if reply else logits
    finally:
        session.reset()


def _explain_divergences(row: dict, ids: list[int], last_logits: Callable, eos: Sequence[int]) -> None:
    """For each mode whose ids differ from plain's, score the common prefix once with the target
    and record the logit gap between plain's token and the mode's at the first difference (a
    reply that ended there took the likeliest end token). A gap of a few hundredths is a
    near-tie that the kernels' rounding decides; a large one would be a bug."""
    ref = row["modes"].get(REFERENCE, {}).get("token_ids")
    scored: dict[int, object] = {}  # divergence point -> logits (modes often part at the same token)
    for r in row["modes"].values():
        r["divergence"] = None
        at = r.get("first_divergence")
        if ref is None or at is None:
            continue
        if at not in scored:
            scored[at] = last_logits(ref[:at])  # [vocab]
        logits = scored[at]
        end = max(eos, key=lambda t: logits[t]) if eos else None
        ours, theirs = (seq[at] if at < len(seq) else end for seq in (ref, r["token_ids"]))
        if ours is None or theirs is None:
            continue
        r["divergence"] = {"at": at, "plain_token": int(ours), "token": int(theirs),
                           "logit_gap": float(logits[ours] - logits[theirs]),
                           "rank": int((logits > logits[theirs]).sum())}  # 0: the scored argmax


def _max_gap(rs: list[dict]) -> float | None:
    gaps = [abs(r["divergence"]["logit_gap"]) for r in rs if r.get("divergence")]
    return max(gaps) if gaps else None


def median(values) -> float | None:
    """The median of the values that are not None (None if there are none)."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def by_category(rows: list[dict]) -> dict[str, list[dict]]:
    """Prompt rows by their "category", and all of them under "all" (no groups for no rows)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["category"], []).append(r)
    if groups:
        groups["all"] = list(rows)
    return groups


def _categories(rows: list[dict], modes: list[str]) -> dict:
    """Per category (and "all"): medians over its prompts, per mode."""
    out = {}
    for cat, members in by_category(rows).items():
        out[cat] = {}
        for m in modes:
            rs = [r["modes"][m] for r in members]
            matches = [r["matches_plain"] for r in rs if r["matches_plain"] is not None]
            out[cat][m] = {
                "prompts": len(rs),
                "prompt_tokens": median(r.get("prompt_tokens") for r in members),
                "decode_tok_s": median(r["decode_tok_s"] for r in rs),
                "prefill_tok_s": median(r["prefill_tok_s"] for r in rs),
                "ttft_seconds": median(r.get("ttft_seconds") for r in rs),
                "e2e_seconds": median(r.get("e2e_seconds") for r in rs),
                "cached_prompt_tokens": median(r.get("cached_prompt_tokens") for r in rs),
                "prefill_vs_genai": median(r.get("prefill_vs_genai") for r in rs),
                "ttft_vs_genai": median(r.get("ttft_vs_genai") for r in rs),
                "e2e_vs_genai": median(r.get("e2e_vs_genai") for r in rs),
                "acceptance_rate": median(r["acceptance_rate"] for r in rs),
                "tokens_per_pass": median(r["tokens_per_pass"] for r in rs),
                "drafted_per_pass": median(r.get("drafted_per_pass", 0.0) for r in rs),
                "ratio_vs_genai": median(r["ratio_vs_genai"] for r in rs),
                "paired_vs_plain": median(r.get("paired_vs_plain") for r in rs),
                "worst_vs_plain": min((r["paired_vs_plain"] for r in rs if r.get("paired_vs_plain") is not None),
                                      default=None),
                "matches_plain": f"{sum(matches)}/{len(matches)}" if matches else None,
                "max_divergence_gap": _max_gap(rs),
                "split": {k: median(r["split"][k] for r in rs) for k in ("draft", "verify", "overhead")},
            }
    return out


def _rotated(items: list, by: int) -> list:
    """`items` started `by` places later (wrapping round)."""
    by %= len(items)
    return items[by:] + items[:by]


def _meta(target: Path, draft: Path | None, modes, threads, max_tokens, repeats, warmup) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    versions = {}
    for pkg in ("edgespec", "onnxruntime", "onnxruntime-genai"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {"target": str(target), "draft": str(draft) if draft else None, "modes": list(modes),
            "anchor": ANCHOR, "reference": REFERENCE, "threads": threads, "max_tokens": max_tokens,
            "repeats": repeats, "warmup": warmup, "genai_max_draft_tokens": GENAI_DRAFT_TOKENS,
            "genai_ngram_size": GENAI_NGRAM_SIZE, "versions": versions,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
