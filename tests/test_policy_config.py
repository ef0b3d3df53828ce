"""The drafting policy's tuned numbers live in one frozen PolicyConfig, and they decide."""

import ast
import dataclasses
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edgespec.runtime.policy_config import DEFAULT, PolicyConfig

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"
# The modules whose numbers decide how drafts are made and sized.
POLICY_MODULES = ("auto.py", "policy.py", "drafters.py", "ngram.py", "recycle.py", "cross_vocab.py")
# Numbers that are arithmetic, not tuning: 0 and 1 (identities, first and last, one token), 2
# (halving and doubling), 1000 (seconds to milliseconds). A minus sign is an operator in `ast`.
ARITHMETIC = {0, 1, 2, 1000}


def _numeric_literals(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        value = node.value if isinstance(node, ast.Constant) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in ARITHMETIC:
            found.append(f"{path.name}:{node.lineno}: {value!r}")
    return found


def test_no_tuned_number_outside_the_config():
    """Every tuned number is a PolicyConfig field; the policy modules only name them."""
    found = [hit for name in POLICY_MODULES for hit in _numeric_literals(RUNTIME / name)]
    assert found == [], "tuned numbers outside runtime/policy_config.py:\n" + "\n".join(found)


def test_every_field_says_what_chose_it():
    """Each field is preceded by its one-line provenance comment."""
    lines = (RUNTIME / "policy_config.py").read_text().splitlines()
    fields = {f.name for f in dataclasses.fields(PolicyConfig)}
    seen = set()
    for i, line in enumerate(lines):
        m = re.match(r"    (\w+): [\w|\[\], .]+ = ", line)
        if m and m.group(1) in fields:
            seen.add(m.group(1))
            assert lines[i - 1].strip().startswith("# "), f"{m.group(1)} has no provenance comment"
    assert seen == fields


def test_the_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT.auto_entry_misses = 5


def _verify_ms(s: int) -> float:
    """A 2-core CPU's verify curve for the 1.5B (ms per pass over s tokens)."""
    curve = {1: 40.0, 2: 44.0, 3: 56.0, 4: 66.0, 8: 113.0}
    return float(np.interp(s, list(curve), list(curve.values())))


def test_the_draft_prior_decides_whether_the_model_drafts():
    """Same costs, same (no) evidence: the default prior drafts, a pessimistic one does not,
    and its probe comes after the config's idle passes."""
    from edgespec.runtime.policy import CostAwareLength
    assert CostAwareLength(_verify_ms, draft_ms=10.5).k >= 1
    doubtful = replace(DEFAULT, draft_prior=0.3, length_probe_every=4)
    policy = CostAwareLength(_verify_ms, draft_ms=10.5, config=doubtful)
    assert policy.k == 0
    for _ in range(3):
        policy.update(accepted=0, proposed_depth=0)
    assert not policy.probing
    policy.update(accepted=0, proposed_depth=0)
    assert policy.probing


class _DraftSession:
    """A draft session stand-in: after n context tokens its top token is n, with probability 0.9."""

    def __init__(self, vocab=64):
        self.vocab = self.vocab_size = vocab
        self.history, self.max_len, self.logit_ids, self.last_fed = [], 1000, None, 1

    def _logits(self, n):
        p = np.full(self.vocab, 0.1 / (self.vocab - 1))
        p[n % self.vocab] = 0.9
        return np.log(p).astype(np.float32)

    def sync(self, tokens):
        self.history = list(tokens)
        return self._logits(len(self.history))

    def forward(self, tokens):  # (a session's cache records the tokens it was fed)
        self.history = self.history + list(tokens)
        return self._logits(len(self.history))[None]

    def reset(self):
        self.history = []


def _passes_until_the_model_drafts(config: PolicyConfig) -> list[str]:
    """What auto drafts, pass by pass, on fresh text (lookup finds nothing) until the model enters."""
    from edgespec.runtime.auto import AutoDrafter
    from edgespec.runtime.drafters import ModelDrafter, PassReport
    from edgespec.runtime.ngram import NgramDrafter
    from edgespec.runtime.policy import CostAwareLength
    length = CostAwareLength(_verify_ms, draft_ms=12.0, config=config)
    model = ModelDrafter(_DraftSession(), length=length, config=config)
    auto = AutoDrafter(NgramDrafter(config=config), model, _verify_ms, draft_prefill_ms=3.3, config=config)
    context, kinds = list(range(300)), []
    while "model" not in kinds and len(kinds) < 10:
        tree = auto.propose(context, 8)
        kinds.append(auto.chosen[1] if auto.chosen else "none")
        auto.observe(PassReport(SimpleNamespace(num_accepted=0, tokens=[0]), tree, None, 0.0, _verify_ms(len(tree))))
    return kinds


def test_the_entry_threshold_decides_when_the_model_enters():
    """The draft model's prefill is paid only after the config's number of lookup misses."""
    assert _passes_until_the_model_drafts(DEFAULT) == ["none"] * 3 + ["model"]
    assert _passes_until_the_model_drafts(replace(DEFAULT, auto_entry_misses=1)) == ["none", "model"]


def test_a_generators_config_reaches_the_drafters_it_builds(tiny_bundle, tiny_draft_bundle):
    from edgespec.runtime import drafters
    from edgespec.runtime.api import Generator
    from edgespec.runtime.sampling import SamplingParams
    from edgespec.runtime.session import Session
    gen = Generator(Session(tiny_bundle), Session(tiny_draft_bundle), drafter="auto")
    gen.use_profiles = False
    gen.policy_config = replace(DEFAULT, lookup_max_ngram=3, draft_window=64, auto_copy_prior_tokens=5)
    auto = drafters.create("auto", gen.draft_context(SamplingParams()))
    assert (auto.config.auto_copy_prior_tokens, auto.lookup.max_ngram, auto.model.window) == (5, 3, 64)
    lookup, model, _ = drafters.create("mixed", gen.draft_context(SamplingParams())).members
    assert (lookup.max_ngram, model.window) == (3, 64)
