"""The Python API: `edgespec.load(target, draft=None)` -> Generator with generate() and stream()."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..contract.errors import EdgespecError, InputError
from . import drafters
from .detok import Detokenizer
from .memory import trim_heap
from .policy_config import DEFAULT
from .prefix_cache import PrefixCache
from .prompt_store import PromptStore
from .results import Chunk, Result, Stats
from .sampling import SamplingParams
from .scheduler import Timing, decode_steps
from .session import Session, SessionOptions


def check_compatible(target: Session, draft: Session) -> None:
    t, d = target.manifest, draft.manifest
    problems = []
    if t.vocab_size != d.vocab_size:
        problems.append(f"vocabulary {d.vocab_size} vs target {t.vocab_size}")
    if t.tokenizer_sha256 != d.tokenizer_sha256:
        problems.append(f"tokenizer sha256 {d.tokenizer_sha256[:12]} vs target {t.tokenizer_sha256[:12]}")
    if problems:
        raise EdgespecError(
            f"draft {draft.path.name} cannot draft for {target.path.name}: " + "; ".join(problems) +
            ". Choose a draft exported from the same tokenizer, use --drafter cross, or --draft none")


BUSY = ("generator busy: another stream() of this Generator is still open; "
        "finish or close() it first")


class Generator:
    """A target (and a drafter) that generates from prompts, one sequence at a time.

    The sessions' KV caches and the drafter's state belong to the sequence being
    generated, so a stream holds the Generator from its first step until it ends or is
    closed (or garbage-collected). Another thread's stream waits for it; a second stream
    opened in the same thread while one is open raises EdgespecError ("generator busy"),
    since waiting there would never end. Iterate one stream at a time per thread, and
    close() one you abandon; for parallel generations load one Generator per thread.
    """

    def __init__(self, target: Session, draft: Session | None = None, tree: bool = True,
                 budget: int = 8, drafter: str | None = None, reuse_cache: bool = False,
                 prefix_cache: PrefixCache | None = None, prompt_store: PromptStore | None = None):
        """reuse_cache: keep the KV of a prompt prefix shared with the previous call
        (a chat's next turn prefills only what is new).
        prefix_cache: also reuse the longest prefix shared with any earlier call still in this
        bounded in-memory LRU (a server's alternating conversations); each call adds its own.
        prompt_store: also reuse prompts stored on disk by earlier processes, and store long
        prompts there (`run` and `chat` reopened with the same system prompt and files)."""
        self._lock = threading.Lock()  # held by the open stream (a plain Lock: GC may close it on any thread)
        self._owner: int | None = None  # the thread whose stream holds it
        self.reuse_cache = reuse_cache
        self.prefix_cache = prefix_cache
        self.prompt_store = prompt_store
        self.use_profiles = True  # size drafts from cached device profiles (`edgespec devices --profile`)
        self.policy_config = DEFAULT  # the drafting policy's tuned numbers (runtime/policy_config.py)
        self.drafter_state: dict = {}  # drafter state that outlives a call (token recycling's table)
        # Called with each generation's drafter (None: plain) and drafting in its place: a
        # trace.TraceRecorder around it records the passes (`edgespec bench --trace`).
        self.drafter_wrapper = None
        from .tokenizer import BundleTokenizer
        self.target = target
        self.draft = draft
        if draft is not None and drafter != "cross":  # the cross-vocab drafter maps through text
            check_compatible(target, draft)
        self.tree = tree
        self.budget = budget
        self.drafter_name = drafter or ("auto" if draft is not None else "none")
        if self.drafter_name not in drafters.choices():
            raise InputError(f"unknown drafter '{self.drafter_name}'; choose one of "
                             f"none, {', '.join(sorted(drafters.REGISTRY))}")
        if drafters.needs_draft(self.drafter_name) and draft is None:
            raise EdgespecError(f"drafter '{self.drafter_name}' needs a draft bundle (--draft)")
        self.tokenizer = BundleTokenizer(target.path)
        self.eos = set(target.manifest.eos_token_ids)
        trim_heap()  # reading the tokenizer left freed heap behind

    def draft_context(self, params: SamplingParams, seeds: np.random.SeedSequence | None = None):
        """What this Generator gives a drafter factory for one generation (drafters.create)."""
        return drafters.DraftContext(self.target, self.draft, self.tokenizer, params, seeds, self.tree,
                                     self.policy_config, self.use_profiles, self.drafter_state)

    @property
    def recycler(self):
        """Token recycling's table, once a generation has built it."""
        return self.drafter_state.get("recycle")

    def _drafter(self, params: SamplingParams, seeds: np.random.SeedSequence):
        drafter = None
        if self.drafter_name != "none":
            drafter = drafters.create(self.drafter_name, self.draft_context(params, seeds))
        return drafter if self.drafter_wrapper is None else self.drafter_wrapper(drafter)

    def encode(self, prompt: str | Sequence[int] | Sequence[dict], tools: Sequence[dict] | None = None,
               prefill: str = "") -> list[int]:
        """Text, token ids, or chat messages (rendered by the chat template) -> token ids.
        Messages only: `tools` (OpenAI function tools) go through the template too, and the
        prompt ends with `prefill`, the start of the assistant's reply (runtime/tool_calls.py)."""
        if isinstance(prompt, str):
            if not prompt:
                raise InputError("prompt is empty; give some text or a list of messages")
            _messages_only(tools, prefill, "text")
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        if isinstance(prompt, (bytes, bytearray)):  # a list of ints to Python: not token ids
            raise InputError(f"prompt is {type(prompt).__name__}; decode it to text first "
                             f"(prompt.decode('utf-8'))")
        if not isinstance(prompt, Iterable) or isinstance(prompt, dict):
            raise InputError(f"prompt must be text, token ids or a list of messages "
                             f"(got {type(prompt).__name__})")
        items = list(prompt)
        if not items:
            raise InputError("prompt is empty; give some text, token ids or a list of messages")
        if all(isinstance(t, (int, np.integer)) for t in items):  # already token ids
            vocab = self.target.vocab_size
            bad = next((i for i, t in enumerate(items) if not 0 <= t < vocab), None)
            if bad is not None:
                raise InputError(f"token ids must be in [0, {vocab}) (got {items[bad]} at index {bad})")
            _messages_only(tools, prefill, "token ids")
            return [int(t) for t in items]
        messages = [_message(i, m) for i, m in enumerate(items)]
        if not self.tokenizer.chat_template:
            raise InputError(f"{self.target.path.name} has no chat template: pass the prompt as plain "
                             f"text (CLI: --raw)")
        if tools or prefill or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            from .tool_calls import check_tools, render
            return self.tokenizer.encode(render(self.tokenizer, messages, check_tools(tools), prefill))
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    def stream(self, prompt, max_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
               top_k: int = 0, seed: int | None = None, stop: str | Sequence[str] | None = None,
               stats: Stats | None = None, end_tokens: Iterable[int] = (), tools: Sequence[dict] | None = None,
               prefill: str = "") -> Iterator[Chunk]:
        """Chunks of text as the target emits them. The stream holds this Generator from its
        first step until it ends or is closed (see the class docstring).

        tools, prefill: with messages, tools shown to the model and the start of its reply
        (see encode); runtime.tool_calls.parse(prefill + text, tools) finds the calls.
        seed: one seed for the whole generation; the verifier and each sampling drafter
        draw from independent child streams of it (None: fresh entropy).
        end_tokens: token ids that end the generation besides the bundle's EOS."""
        params = SamplingParams(temperature, top_p, top_k, seed).validate()
        if not (isinstance(max_tokens, (int, np.integer)) and max_tokens >= 1):
            raise InputError(f"max_tokens must be an integer >= 1 (got {max_tokens!r})")
        stops = _stop_strings(stop)
        ids = self.encode(prompt, tools, prefill)
        limit = self.target.max_len
        if len(ids) >= limit:
            raise InputError(f"prompt of {len(ids)} tokens does not fit the {limit}-token context "
                             f"of {self.target.path.name}; shorten it or export with a larger --max-context")
        with self._turn():
            yield from self._chunks(ids, params, max_tokens, stops, stats if stats is not None else Stats(),
                                    self.eos | {int(t) for t in end_tokens})

    @contextmanager
    def _turn(self):
        """Hold the generator for one stream (the KV caches are one sequence's)."""
        me = threading.get_ident()
        if self._owner == me:  # only this thread sets its own id: no race in the check
            raise EdgespecError(BUSY)
        self._lock.acquire()
        self._owner = me
        try:
            yield
        finally:
            self._owner = None
            self._lock.release()

    def _chunks(self, ids: list[int], params: SamplingParams, max_tokens: int, stops: list[str],
                stats: Stats, eos: set[int]) -> Iterator[Chunk]:
        stats.prompt_tokens = len(ids)
        stats.drafter = self.drafter_name
        timing = Timing()
        # One seed sequence per generation, split: a drafter sharing the verifier's uniforms
        # would draw a token with the uniform that then tests its acceptance (biased output).
        verifier_seeds, drafter_seeds = np.random.SeedSequence(params.seed).spawn(2)
        drafter = self._drafter(params, drafter_seeds)
        detok = Detokenizer(self.tokenizer)
        # A stop string may begin in text already emitted: keep just enough of it to see one.
        tail_len = max((len(s) for s in stops), default=1) - 1
        emitted_tail, held = "", ""
        t_restore = time.perf_counter()
        stats.cached_from = self._restore(ids)
        t_restore = time.perf_counter() - t_restore
        # the cache now holds the rows to reuse, as its `tokens` say: decode_steps keeps them
        steps = decode_steps(self.target, ids, params, drafter, self.budget,
                             np.random.default_rng(verifier_seeds), timing, reuse_cache=True,
                             end=len(ids) + max_tokens)
        t_start = time.perf_counter()
        finish = "length"
        try:
            for step in steps:
                tokens, flags = step.tokens, step.from_draft
                for i, t in enumerate(tokens):
                    if t in eos:
                        tokens, flags, finish = tokens[:i], flags[:i], "stop"
                        break
                room = max_tokens - stats.new_tokens
                tokens, flags = tokens[:room], flags[:room]
                stats.new_tokens += len(tokens)
                piece = detok.add(tokens) if tokens else ""
                done = finish == "stop" or stats.new_tokens >= max_tokens
                if done:
                    piece += detok.flush()
                text, cut = _apply_stops(held + piece, stops, emitted_tail)
                if cut:
                    finish, done = "stop", True
                    held = ""
                else:  # hold back a tail that may be the start of a stop string
                    keep = _stop_prefix_len(text, stops) if not done else 0
                    text, held = text[:len(text) - keep], text[len(text) - keep:]
                emitted_tail = (emitted_tail + text)[-tail_len:] if tail_len else ""
                if text or tokens:
                    yield Chunk(text, tokens, flags)
                if done:
                    break
        finally:
            steps.close()
            if drafter is not None:
                drafter.reset()
            stats.finish_reason = finish
            stats.prefill_seconds = timing.prefill + t_restore
            stats.cached_prompt_tokens = timing.reused
            stats.cached_from = stats.cached_from if timing.reused else ""
            stats.decode_seconds = max(time.perf_counter() - t_start - timing.prefill, 0.0)
            stats.draft_seconds = timing.draft
            stats.verify_seconds = timing.verify
            stats.overhead_seconds = max(stats.decode_seconds - timing.draft - timing.verify, 0.0)
            stats.verify_passes = timing.passes
            stats.proposed = timing.proposed
            stats.accepted = timing.accepted
            choices = getattr(drafter, "choices", None)
            stats.drafter_choices = dict(choices) if choices else None
            self._remember(ids)  # after the clock stops: a copy (and a disk write) is not decoding

    def _restore(self, ids: list[int]) -> str:
        """Put the KV of the longest cached prefix of `ids` (all but its last token, whose
        logits must be computed) in the target's cache, `history` naming its tokens; return
        where it came from. The session's own rows count when reuse_cache is on; the LRU and the
        disk are asked in turn for a longer prefix (copying only the rows beyond what is kept)."""
        target = self.target
        wanted = ids[:-1]
        if self.reuse_cache:
            kept = target.reuse_prefix(ids, exact=True)
        else:
            kept = 0
            target.reset()
        best, found, source = kept, None, "previous call"
        if self.prefix_cache is not None:
            n, rows = self.prefix_cache.lookup(wanted, at_least=best)
            if n > best:
                best, found, source = n, rows, "memory"
        if self.prompt_store is not None:
            n, rows = self.prompt_store.lookup(wanted, at_least=best)
            if n > best:
                best, found, source = n, rows, "disk"
        if found is not None:
            target.cache.write_rows(found.keys, found.values, ids, kept, best)
        return source if best else ""

    def _remember(self, ids: list[int]) -> None:
        """After a call whose prefill completed: the rows a cold prefill writes alike into the LRU
        (the prompt's; the reply's too where the bundle has no separate prefill graph: the next
        turn extends them), the prompt's but its last token onto disk."""
        target = self.target
        n = min(len(target.history), target.cache.prefilled)  # rows a cold prefill writes alike
        if n < len(ids) - 1 or target.history[:len(ids) - 1] != ids[:-1]:
            return  # stopped before the prompt's rows were all written
        if self.prefix_cache is not None:
            self.prefix_cache.insert(target.history[:n], target.cache)
        if self.prompt_store is not None:
            self.prompt_store.store(ids[:-1], target.cache)

    def generate(self, prompt, **kwargs) -> Result:
        stats = Stats()
        return _result(list(self.stream(prompt, stats=stats, **kwargs)), stats)

    def stream_fim(self, prefix: str, suffix: str, extra: Sequence[tuple[str, str]] | None = None,
                   **kwargs) -> Iterator[Chunk]:
        """Chunks of the middle between `prefix` and `suffix`, fed raw in the bundle's
        fill-in-the-middle format (runtime/fim.py), `extra` files [(filename, text)] as
        repository context. Ends at an end token or where the middle reaches the suffix
        (its repeat is cut); takes stream()'s sampling and stop arguments."""
        from .fim import stream_middle
        return stream_middle(self, prefix, suffix, extra, **kwargs)

    def generate_fim(self, prefix: str, suffix: str, extra: Sequence[tuple[str, str]] | None = None,
                     **kwargs) -> Result:
        stats = Stats()
        return _result(list(self.stream_fim(prefix, suffix, extra, stats=stats, **kwargs)), stats)


def _result(chunks: list[Chunk], stats: Stats) -> Result:
    return Result("".join(c.text for c in chunks), [t for c in chunks for t in c.token_ids],
                  stats, stats.finish_reason)


def _message(i: int, m) -> dict:
    """Message i with its content as text (content_text)."""
    if not isinstance(m, dict):
        raise InputError(f"message {i} must be a dict with 'role' and 'content' (got {type(m).__name__})")
    if "role" not in m or ("content" not in m and not m.get("tool_calls")):
        raise InputError(f"message {i} needs 'role' and 'content' (got keys {list(m)})")
    if not isinstance(m["role"], str):
        raise InputError(f"message {i}: role must be a string (got {type(m['role']).__name__})")
    if m.get("tool_calls"):  # an assistant's calls: its content may be null
        from .tool_calls import check_message
        content = m.get("content")
        return check_message(i, {**m, "content": "" if content is None else content_text(i, content)})
    return m if isinstance(m["content"], str) else {**m, "content": content_text(i, m["content"])}


def _messages_only(tools, prefill: str, got: str) -> None:
    if tools or prefill:
        raise InputError(f"tools and prefill need the prompt as a list of messages (got {got})")


def content_text(i: int, content) -> str:
    """Message i's content as text: a string, or OpenAI's text parts joined (the server's too)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise InputError(f"message {i}: content must be text or a list of text parts "
                         f"(got {type(content).__name__})")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise InputError(f"message {i}: content parts must be objects like {{'type': 'text', 'text': ...}} "
                             f"(part {j} is {type(part).__name__})")
        if part.get("type") != "text":
            raise InputError(f"message {i}: only text content parts are supported "
                             f"(part {j} has type {part.get('type')!r})")
        if not isinstance(part.get("text"), str):
            raise InputError(f"message {i}: text part {j} needs a string 'text' "
                             f"(got {type(part.get('text')).__name__})")
        texts.append(part["text"])
    return "".join(texts)


def _stop_strings(stop) -> list[str]:
    """Stop strings as a list; refuse "" (it would end generation after the first token)."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, (list, tuple)):
        raise InputError(f"stop must be a string or a list of strings (got {type(stop).__name__} {stop!r})")
    for i, s in enumerate(stops):
        if not isinstance(s, str):
            raise InputError(f"stop strings must be str (got {s!r} at index {i})")
        if not s:
            raise InputError("stop strings must be non-empty (got ''): an empty one would end "
                             "generation after the first token; leave it out")
    return list(stops)


def _apply_stops(text: str, stops: list[str], before: str) -> tuple[str, bool]:
    """Cut `text` at the first stop string (which may start in already emitted text)."""
    if not stops:
        return text, False
    full = before + text
    hits = [full.find(s, max(len(before) - len(s) + 1, 0)) for s in stops]
    hits = [h for h in hits if h >= 0]
    if not hits:
        return text, False
    return full[len(before):min(hits)] if min(hits) >= len(before) else "", True


def _stop_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of some stop string."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                best = max(best, n)
                break
    return best


def load(target: str | Path, draft: str | Path | None = None, *, tree: bool = True, budget: int = 8,
         drafter: str | None = None, threads: int | None = None, provider: str = "cpu",
         max_context: int | None = None, reuse_cache: bool = False, shared_pool: bool = False,
         huge_pages: bool = False) -> Generator:
    """Load a target bundle folder and optionally a draft's, ready to generate. (Presets are
    prepared into folders above the runtime: `edgespec.load` and the CLI do it, apps/prepare.py.)

    shared_pool: draft and target share ONNX Runtime's process-wide thread pool (about 10%
    faster speculation on a 2-core CPU); every later session of the process then shares it.
    huge_pages: move the weights onto 2 MB pages in the background after loading (faster
    steps after seconds of one core; see runtime/memory.py): for processes that generate a lot.
    """
    drafting = draft not in (None, "none")
    # Idle threads of one session's pool spin on the cores the other session needs next:
    # with a draft model, both pools sleep when idle (ORT's process-wide pool would avoid
    # this, but once it exists every session of the process must use it).
    options = SessionOptions(provider=provider, threads=threads, max_context=max_context,
                             spin=shared_pool or not drafting, shared_pool=shared_pool and drafting,
                             huge_pages=huge_pages)
    target_session = Session(target, options)
    draft_session = None
    if drafting:
        # A draft with a frequent-token head drafts through it; the cross-vocabulary drafter
        # decodes the draft's own tokens to text, so it keeps the full head.
        draft_session = Session(draft, options, head="full" if drafter == "cross" else "draft")
    return Generator(target_session, draft_session, tree=tree, budget=budget, drafter=drafter,
                     reuse_cache=reuse_cache)
