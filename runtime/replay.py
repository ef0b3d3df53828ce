"""Replay: a drafting policy judged offline, by decoding a recorded reply again on simulated time.

Greedy decoding emits the same reply whatever drafts, so a trace (runtime/trace.py) of one
generation is enough to ask what another drafter, or another PolicyConfig, would have done. The
real drafter classes run on the true context pass by pass (NgramDrafter, ModelDrafter with the
real length policies, AutoDrafter); a proposal is verified against the recorded reply (the
deepest path that matches it is accepted, the reply's next token follows); passes cost what
the trace's costs say, and the drafters observe those simulated times, so the live cost
correction sees them too.

The draft model is a RecordedDraft: after n context tokens it answers with the draft's
recorded top-k at position n of the reply, as logits that give those probabilities. Where a
drafted chain has left the reply, the true draft would see its own tokens; the replay answers
with the recorded distribution at the same position (its tokens are rejected from there on
either way, but their confidence sizes the chain and its siblings). The draft always reads from
the recorded window: a rejoin after lookup passes, or another draft_window, changes what is
priced, not the distributions. Recorded top-k only: a tree sibling past the draft's top 4 is a
filler token that is never accepted.

Time per pass: the draft's feeds (each step, catch-up or prefill: a draft pass over its tokens,
from the profile up to the tabled sizes and at the prefill cost per token beyond), a target
pass over the tree, and the decode loop's recorded median overhead per pass. A lookup proposal
costs nothing, nor does a drafter's own Python work per step (next to a 0.5B draft's ~13 ms
step, little; next to a tiny test model's, most of it). Without profiles the target's curve is
only as good as the tree sizes the recorded passes used (a plain trace knows one size: wider
passes cost the same). Greedy replies only: a sampled reply depends on what was drafted.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..contract.errors import InputError
from ..devices.profile import Profile
from .auto import AutoDrafter
from .drafters import ModelDrafter, PassReport
from .ngram import NgramDrafter
from .policy import CostAwareLength, DraftLength
from .policy_config import DEFAULT, PolicyConfig
from .sampling import SamplingParams
from .trace import load_trace, trace_files
from .tree import DraftTree
from .verify import Verdict

LENGTHS = ("cost", "heuristic")  # the model's length policy: priced from the costs, or HF's schedule
_GREEDY = SamplingParams()


@dataclass
class Costs:
    """What passes cost in a replay (ms)."""
    target: Profile  # a target pass over s tokens: .cost(s)
    draft: Profile | None = None  # a draft pass over s tokens
    draft_prefill_ms: float | None = None  # per token, past the draft's tabled sizes
    overhead_ms: float = 0.0  # the decode loop's own time per pass

    @classmethod
    def of(cls, trace: dict) -> Costs:
        c = trace["costs"]
        draft = _profile("draft", c["draft_ms"]) if c.get("draft_ms") else None
        return cls(_profile("target", c["target_ms"]), draft, c.get("draft_prefill_ms"), c.get("overhead_ms", 0.0))

    def feed_ms(self, n: int) -> float:
        """A draft pass feeding n tokens (a step, a catch-up, a prefill)."""
        if n <= 0:
            return 0.0
        if n > max(self.draft.pass_ms) and self.draft_prefill_ms is not None:
            return n * self.draft_prefill_ms
        return self.draft.cost(n)


def _profile(name: str, ms: dict) -> Profile:
    return Profile(name, "trace", 0, 0, {int(s): float(v) for s, v in ms.items()})


class RecordedRows:
    """Recorded top-k distributions as logit rows over one set of columns (`ids`): a row gives
    its tokens log p, and spreads what is left over filler columns, each below its k-th
    probability (`ranked`; else only below its first), so a softmax gives back the recorded
    probabilities. Fillers stand for tokens past the top k: their ids lie past the vocabulary,
    so no reply token is one."""

    def __init__(self, ids: list[list[int]], probs: list[list[float]], vocab_size: int, ranked: bool = True):
        union = sorted({t for row in ids for t in row})
        self.column = {t: i for i, t in enumerate(union)}
        self.top, self.probs = ids, probs
        self.fillers = [self._fillers(p, vocab_size, ranked) for p in probs]
        most = max(self.fillers, default=0)
        self.ids = np.array(union + [vocab_size + j for j in range(most)], dtype=np.int64)  # [columns]
        self.width = len(self.ids)
        self._cache: dict[int, np.ndarray] = {}

    @staticmethod
    def _fillers(probs: list[float], vocab_size: int, ranked: bool) -> int:
        rest = 1.0 - sum(probs)
        if not probs or rest <= 1e-6:
            return 0
        least = min(probs) if ranked else probs[0]
        return min(max(vocab_size - len(probs), 1), math.ceil(rest / max(least, 1e-12)) + 1)

    def __len__(self) -> int:
        return len(self.top)

    def logits(self, i: int) -> np.ndarray:
        """Row i [columns]; all equal where nothing was recorded."""
        if not 0 <= i < len(self.top) or not self.top[i]:
            return np.zeros(self.width, np.float32)
        if i not in self._cache:
            row = np.full(self.width, -np.inf, np.float32)  # [columns]
            for t, p in zip(self.top[i], self.probs[i]):
                row[self.column[t]] = np.log(max(p, 1e-30))
            m = self.fillers[i]
            if m:
                base = len(self.column)
                row[base:base + m] = np.log((1.0 - sum(self.probs[i])) / m)
            self._cache[i] = row
        return self._cache[i]


class RecordedDraft:
    """A draft session that answers from the trace: the logits after the first n tokens of the
    context are the recorded draft row for position n of the reply (see the module doc), and
    every token it is fed costs what the trace says (`ms`: this pass's draft time so far)."""

    def __init__(self, rows: RecordedRows, prompt_len: int, max_len: int, vocab_size: int, costs: Costs):
        self.rows, self.prompt_len, self.costs = rows, prompt_len, costs
        self.max_len, self.vocab_size = max_len, vocab_size
        self.logit_ids = rows.ids  # logit column -> token id
        self.history: list[int] = []
        self.last_fed = 0
        self.context_len = 0  # the true context's length: the replay sets it before each proposal
        self.ms = 0.0
        self._length = 0  # context tokens behind the draft's last logits

    def sync(self, tokens) -> np.ndarray:
        """As Session.sync: keep the shared prefix, feed the rest. A drafter syncs on a slice of
        the context that ends where it ends."""
        tokens = list(tokens)
        n = min(len(self.history), len(tokens) - 1)
        if self.history[:n] != tokens[:n]:
            n = next(i for i in range(n) if self.history[i] != tokens[i])
        self.history, self.last_fed = tokens, len(tokens) - n
        self.ms += self.costs.feed_ms(self.last_fed)
        self._length = self.context_len
        return self._logits()

    def forward(self, tokens) -> np.ndarray:
        self.history = self.history + list(tokens)
        self.ms += self.costs.feed_ms(len(tokens))
        self._length += len(tokens)
        return self._logits()[None]  # [1, columns]

    def reset(self) -> None:
        self.history = []

    def _logits(self) -> np.ndarray:
        return self.rows.logits(self._length - self.prompt_len - 1)  # row i: after output[:i + 1]


@dataclass
class Replay:
    """One drafter's replay of one trace."""
    drafter: str
    tokens: int  # decoded after the first (the prefill's), as bench counts them
    ms: float  # simulated decode time
    accepted: list[int] = field(default_factory=list)  # per pass
    kinds: list[str] = field(default_factory=list)  # per pass: auto's choice, else the drafter's name
    sizes: list[int] = field(default_factory=list)  # per pass: tree nodes, root included
    choices: dict | None = None  # auto's passes per kind
    policy: object = field(default=None, repr=False)  # the drafter, as the replay left it

    @property
    def passes(self) -> int:
        return len(self.accepted)

    @property
    def tok_s(self) -> float:
        return 1000 * self.tokens / self.ms if self.ms > 0 else 0.0


# --------------------------------------------------------------------------- drafters

@dataclass(frozen=True)
class ReplaySpec:
    factory: Callable  # (draft: RecordedDraft | None, costs, config, length, code_fences) -> drafter or None
    needs_draft: bool


def _model(draft, costs: Costs, config: PolicyConfig, length: str, tree: bool) -> ModelDrafter:
    policy = (CostAwareLength(costs.target.cost, costs.draft.cost(1), config=config) if length == "cost"
              else DraftLength.from_config(config))
    return ModelDrafter(draft, _GREEDY, tree=tree, length=policy, rng=np.random.default_rng(0), config=config)


def _auto(draft, costs: Costs, config: PolicyConfig, length: str, fences: frozenset[int]):
    """As drafters._auto builds it: priced (length "cost") or not (no profiles)."""
    lookup = NgramDrafter(config=config)
    if length == "heuristic":
        return AutoDrafter(lookup, _model(draft, costs, config, length, True) if draft else None, config=config,
                           code_fences=fences)
    if draft is None:
        return AutoDrafter(lookup, None, costs.target.cost, config=config, code_fences=fences)
    tree = costs.target.cost(config.tree_probe_size) <= config.tree_cost_ratio * costs.target.cost(1)
    prefill = costs.draft_prefill_ms
    if prefill is None:
        prefill = costs.draft.cost(config.prefill_batch) / config.prefill_batch
    return AutoDrafter(lookup, _model(draft, costs, config, length, tree), costs.target.cost,
                       draft_prefill_ms=prefill, config=config, code_fences=fences)


# The drafters a replay runs, by bench mode name.
REPLAYERS: dict[str, ReplaySpec] = {
    "plain": ReplaySpec(lambda draft, costs, config, length, fences: None, needs_draft=False),
    "chain": ReplaySpec(lambda draft, costs, config, length, fences: _model(draft, costs, config, length, False), True),
    "tree": ReplaySpec(lambda draft, costs, config, length, fences: _model(draft, costs, config, length, True), True),
    "ngram": ReplaySpec(lambda draft, costs, config, length, fences: NgramDrafter(config=config), needs_draft=False),
    "auto": ReplaySpec(_auto, needs_draft=False),
}


def has_draft(trace: dict) -> bool:
    """Whether the trace kept the draft model's distributions and costs (model drafters replay)."""
    return bool(trace.get("draft")) and bool(trace["costs"].get("draft_ms"))


# --------------------------------------------------------------------------- the replay

def replay(trace: dict, drafter: str, config: PolicyConfig = DEFAULT, length: str = "cost",
           costs: Costs | None = None, profiles: Costs | None = None) -> Replay:
    """Decode the trace's reply again with `drafter` (a REPLAYERS name) under `config`.
    length: the draft model's length policy, "cost" (priced from the costs, as with device
    profiles) or "heuristic" (as without). costs: what passes cost, the trace's own unless
    given; profiles: what the drafter is told they cost before it times any (`costs` unless
    given: a profile that is off, as a shared machine's often is)."""
    if drafter not in REPLAYERS:
        raise InputError(f"cannot replay drafter '{drafter}'; choose from {', '.join(REPLAYERS)}")
    if length not in LENGTHS:
        raise InputError(f"unknown length policy '{length}'; choose from {', '.join(LENGTHS)}")
    spec = REPLAYERS[drafter]
    if spec.needs_draft and not has_draft(trace):
        raise InputError(f"replaying {drafter} needs the draft model's distributions, which this trace lacks; "
                         f"record it with a draft model (edgespec bench --draft ... --trace DIR)")
    costs = costs or Costs.of(trace)
    prompt, output = trace["prompt"], trace["output"]
    full = prompt + output
    draft = None
    if has_draft(trace):
        recorded = trace["draft"]
        draft = RecordedDraft(RecordedRows(recorded["ids"], recorded["probs"], trace["vocab_size"]), len(prompt),
                              recorded["max_len"], trace["vocab_size"], costs)
    # auto reads the target's top-1 probability only: fillers need only stay below it
    target = RecordedRows(trace["target_top"]["ids"], trace["target_top"]["probs"], trace["vocab_size"], ranked=False)
    policy = spec.factory(draft, profiles or costs, config, length, frozenset(trace.get("code_fences", ())))
    if policy is not None:
        policy.start(len(prompt), trace["end"])
    result = Replay(drafter, len(output) - 1, 0.0)
    context = full[:len(prompt) + 1]
    while len(context) < len(full):
        if draft is not None:
            draft.context_len, draft.ms = len(context), 0.0
        room = trace["max_len"] - len(context)
        tree = policy.propose(context, min(trace["budget"], room)) if policy is not None else DraftTree(context[-1])
        kind = _kind(policy)  # (before observe: auto's choice of this pass)
        verdict = verify_against(tree, full, len(context))
        draft_ms = draft.ms if draft is not None else 0.0
        verify_ms = costs.target.cost(len(tree))
        if policy is not None:
            logits = _target_logits(target, tree, verdict, len(context) - len(prompt) - 1)  # [S, columns]
            policy.observe(PassReport(verdict, tree, logits, draft_ms, verify_ms))
        context.extend(verdict.tokens)
        result.ms += draft_ms + verify_ms + costs.overhead_ms
        result.accepted.append(verdict.num_accepted)
        result.kinds.append(kind)
        result.sizes.append(len(tree))
    choices = getattr(policy, "choices", None)
    result.choices = dict(choices) if choices else None
    result.policy = policy
    return result


def verify_against(tree: DraftTree, full: list[int], at: int) -> Verdict:
    """Greedy verification against the recorded reply: the deepest path whose tokens are the
    reply's from position `at` on, then the reply's next token (none past its end)."""
    node, accepted = 0, [0]
    while at + len(accepted) - 1 < len(full):
        want = full[at + len(accepted) - 1]
        child = next((c for c in tree.children(node) if tree.tokens[c] == want), None)
        if child is None:
            break
        node = child
        accepted.append(node)
    nxt = at + len(accepted) - 1
    tokens = [tree.tokens[i] for i in accepted[1:]] + ([full[nxt]] if nxt < len(full) else [])
    return Verdict(accepted, full[nxt] if nxt < len(full) else -1, len(tree) - 1, tokens)


def _target_logits(rows: RecordedRows, tree: DraftTree, verdict: Verdict, first: int) -> np.ndarray:
    """[nodes, columns]: at the accepted path's nodes, the target's recorded distribution that
    chose each emitted token (row `first` for the root's); elsewhere flat."""
    logits = np.zeros((len(tree), rows.width), np.float32)  # [S, columns]
    for i, node in enumerate(verdict.accepted):
        logits[node] = rows.logits(first + i)
    return logits


def _kind(drafter) -> str:
    if drafter is None:
        return "plain"
    if hasattr(drafter, "chosen"):
        return drafter.chosen[1] if drafter.chosen else "none"
    return drafter.name


def live(trace: dict) -> float:
    """The recorded generation's tokens per second, its passes timed as replays count them
    (draft, verify and the loop's median overhead per pass)."""
    overhead = trace["costs"].get("overhead_ms", 0.0)
    ms = sum(p["draft_ms"] + p["verify_ms"] + overhead for p in trace["passes"])
    return 1000 * (len(trace["output"]) - 1) / ms if ms > 0 else 0.0


# --------------------------------------------------------------------------- configs and suites

def policy_config(settings: Sequence[str], base: PolicyConfig = DEFAULT) -> PolicyConfig:
    """`base` with NAME=VALUE settings (`--set`), each a PolicyConfig field of its type."""
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    changes = {}
    for setting in settings:
        name, sep, value = (part.strip() for part in setting.partition("="))
        if not sep or not name:
            raise InputError(f"--set {setting}: expected NAME=VALUE, e.g. --set auto_entry_misses=1")
        if name not in fields:
            raise InputError(f"unknown PolicyConfig field '{name}' in --set {setting}; "
                             f"the fields are listed in runtime/policy_config.py")
        default = getattr(base, name)
        if isinstance(default, tuple):  # bucket edges or priors: numbers separated by commas
            kind, parse = f"{len(default)} numbers separated by commas", lambda v: tuple(float(x) for x in v.split(","))
        else:
            kind, parse = ("an integer" if isinstance(default, int) else "a number"), type(default)
        try:
            changes[name] = parse(value)
        except ValueError:
            raise InputError(f"--set {setting}: {name} takes {kind} (default {default}), not '{value}'") from None
        values = changes[name] if isinstance(default, tuple) else (changes[name],)
        if isinstance(default, tuple) and len(values) != len(default):
            raise InputError(f"--set {setting}: {name} takes {kind} (default {default})")
        if not all(math.isfinite(v) for v in values):
            raise InputError(f"--set {setting}: {name} takes finite numbers (default {default})")
    return dataclasses.replace(base, **changes)


MODE_ORDER = ("plain", "chain", "tree", "ngram", "auto")  # whose trace a prompt's replays start from


def replay_suite(paths: Sequence[str | Path], drafters: Sequence[str] = tuple(REPLAYERS),
                 config: PolicyConfig = DEFAULT, length: str = "cost") -> dict:
    """Replay every drafter on one trace per prompt (one with the draft's distributions, by
    MODE_ORDER), with auto's speed over the best other mode's and over plain's. `live`: each
    mode's recorded speed, where its trace is there. (Per-category medians: apps/replay_cmd.py.)"""
    unknown = [d for d in drafters if d not in REPLAYERS]
    if unknown:
        raise InputError(f"cannot replay {', '.join(unknown)}; choose from {', '.join(REPLAYERS)}")
    prompts: dict[str, list[tuple[Path, dict]]] = {}
    for path in trace_files(paths):
        trace = load_trace(path)
        meta = trace["meta"]
        prompts.setdefault(str(meta.get("prompt_id") or path.name.split(".")[0]), []).append((path, trace))
    rows = []
    for pid, traces in prompts.items():
        def rank(item):
            mode = item[1]["meta"].get("mode")
            return (not has_draft(item[1]), MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER))
        path, trace = min(traces, key=rank)
        costs = trace["costs"]
        row = {"id": pid, "category": trace["meta"].get("category") or "-", "trace": str(path),
               "tokens": len(trace["output"]) - 1, "modes": {}, "skipped": [],
               "costs": f"{costs['target_source']}/{costs.get('draft_source') or '-'}"}
        lives = {t["meta"].get("mode"): live(t) for _, t in traces}
        for name in drafters:
            if REPLAYERS[name].needs_draft and not has_draft(trace):
                row["skipped"].append(name)
                continue
            r = replay(trace, name, config, length)
            row["modes"][name] = {"tok_s": r.tok_s, "passes": r.passes, "tokens_per_pass": r.tokens / max(r.passes, 1),
                                  "choices": r.choices, "live_tok_s": lives.get(name)}
        row["auto_vs_best"], row["auto_vs_plain"] = _auto_ratios(row["modes"])
        rows.append(row)
    return {"prompts": rows, "config": dataclasses.asdict(config), "length": length}


def _auto_ratios(modes: dict) -> tuple[float | None, float | None]:
    if "auto" not in modes:
        return None, None
    auto = modes["auto"]["tok_s"]
    others = [m["tok_s"] for name, m in modes.items() if name != "auto"]
    best = auto / max(others) if others and max(others) > 0 else None
    plain = auto / modes["plain"]["tok_s"] if modes.get("plain", {}).get("tok_s") else None
    return best, plain

