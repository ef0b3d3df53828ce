"""The draft length follows the device's cost curve and the running acceptance."""

import pytest
from edgespec.runtime.policy import CostAwareLength, DraftLength, expected_tokens
from edgespec.runtime.policy_config import DEFAULT


def test_expected_tokens():
    assert expected_tokens(0.0, 5) == 1.0
    assert expected_tokens(1.0, 5) == 6.0
    assert abs(expected_tokens(0.5, 2) - 1.75) < 1e-12


def test_free_extra_tokens_grow_drafts():
    """Verifying more tokens costs nothing extra and drafting is cheap: draft the maximum."""
    policy = CostAwareLength(verify_ms=lambda s: 40.0, draft_ms=0.5, k_max=10)
    for _ in range(5):
        policy.update(accepted=policy.k, proposed_depth=policy.k)
    assert policy.k == 10


def test_tokens_as_expensive_as_steps_stop_drafting():
    """Each extra verified token costs a full step: drafting cannot pay, whatever the acceptance."""
    policy = CostAwareLength(verify_ms=lambda s: 40.0 * s, draft_ms=5.0, k_max=10)
    assert policy.k == 0
    policy.update(accepted=0, proposed_depth=0)
    assert policy.k == 0


def test_live_costs_set_the_curve_level():
    """Passes timed slower than the profile scale the whole curve; a cheaper live draft step
    than profiled lengthens drafts."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=30.0, prior=0.9)
    k_slow_draft = policy.k
    for _ in range(30):
        policy.observe_costs(draft_ms_per_step=6.0, verify_ms=2 * _cpu_verify(4), size=4)
    assert abs(policy.verify_scale - 2.0) < 0.01 and abs(policy.draft_ms - 6.0) < 0.1
    assert abs(policy.verify_ms(8) - 2 * _cpu_verify(8)) < 0.5
    assert policy.k > k_slow_draft


def test_one_token_passes_keep_their_own_level():
    """Where plain passes run faster than the profile says (2 MB pages) and wider ones do not,
    a marginal draft that paid on the profile's curve stops paying — and only then."""
    curve = {1: 39.1, 2: 45.2, 3: 52.5, 4: 62.0, 6: 79.2, 8: 102.4}
    import numpy as np
    verify = lambda s: float(np.interp(s, list(curve), list(curve.values())))  # noqa: E731
    policy = CostAwareLength(verify_ms=verify, draft_ms=10.7, prior=0.65, cost_decay=0.5)
    assert policy.k == 1  # 1.65 tokens in 10.7 + 45.2 ms beat one in 39.1 ms
    for _ in range(10):
        policy.observe_costs(10.7, 45.2, size=2)  # wider passes as profiled
    assert policy.k == 1 and policy.single_scale is None
    for _ in range(10):
        policy.observe_costs(None, 33.0, size=1)  # plain passes 16% faster than profiled
    assert abs(policy.verify_ms(1) - 33.0) < 0.1 and abs(policy.verify_ms(2) - 45.2) < 0.1
    assert policy.k == 0


def test_low_acceptance_shrinks_then_probes():
    """A realistic CPU curve: good acceptance drafts several tokens, bad acceptance stops."""
    curve = {1: 43.5, 2: 47, 3: 56, 4: 67, 6: 88, 8: 111, 12: 158, 16: 212}
    import numpy as np
    verify = lambda s: float(np.interp(s, list(curve), list(curve.values())))  # noqa: E731
    policy = CostAwareLength(verify_ms=verify, draft_ms=13.5, prior=0.9)
    assert policy.k >= 2
    for _ in range(30):
        policy.update(accepted=0, proposed_depth=max(policy.k, 1))
    assert policy.k == 0
    for _ in range(policy.probe_every):
        policy.update(accepted=0, proposed_depth=0)
        policy.observe_costs(None, verify(1), 1)  # each pass's costs follow its update
    assert policy.k == 1  # a probe keeps the estimate alive


def test_one_early_rejection_does_not_stop_the_draft():
    """The prior is worth several trials: a same-family draft whose first token is rejected
    keeps drafting; a draft rejected again and again stops."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.5)
    policy.update(accepted=0, proposed_depth=1)
    assert policy.k >= 1
    for _ in range(4):
        policy.update(accepted=0, proposed_depth=max(policy.k, 1))
    assert policy.k == 0


def test_rejected_probes_wait_longer():
    """Each rejected probe doubles the wait for the next (a probe pays the draft's catch-up);
    an accepted one brings back the short wait."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.5, prior=0.2)
    assert policy.k == 0

    def passes_to_probe():
        n = 0
        while not policy.probing:
            policy.update(accepted=0, proposed_depth=0)
            n += 1
        return n

    gaps = []
    for _ in range(4):
        gaps.append(passes_to_probe())
        policy.update(accepted=0, proposed_depth=1)  # the probe's token is rejected
    assert gaps == [16, 32, 64, 64]
    passes_to_probe()
    policy.update(accepted=1, proposed_depth=1)
    assert passes_to_probe() == 16


def test_heuristic_schedule():
    d = DraftLength(k=3)
    d.update(3, 3)
    assert d.k == 4
    d.update(1, 4)
    assert d.k == 3


CPU_CURVE = {1: 40.0, 2: 44.0, 3: 56.0, 4: 66.0, 8: 113.0}


def _cpu_verify(s):
    from edgespec.devices.profile import Profile
    return Profile("cpu", "cpu", 2, 128, CPU_CURVE).cost(s)  # extrapolates past 8 tokens


def test_confidence_prices_each_drafted_token():
    """A token is verified while the draft's confidence in its path pays for one more verified
    token; another draft step is taken only while the path so far could pay for it too."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85)
    per_token = policy.ms_per_token()
    assert 20 < per_token < 40  # the chain's expected ms per emitted token on this curve
    added = [_cpu_verify(d + 2) - _cpu_verify(d + 1) for d in range(4)]  # 4, 12, 10, 11.75 ms
    for depth in range(4):
        assert policy.worth_including(depth, 0.99)
        assert not policy.worth_including(depth, 0.9 * added[depth] / per_token)
        assert policy.worth_including(depth, 1.1 * added[depth] / per_token)
    assert policy.worth_looking(1, 0.99)
    assert not policy.worth_looking(1, 0.6)  # 0.6 * 0.85 * ~28 ms < 10 ms step + 12 ms verify


def test_drafting_looks_past_an_expensive_token_to_cheap_ones():
    """Where the third verified token is dear and the next ones nearly free, a draft step whose
    own token does not pay is still taken for the run it starts; where they all are dear, not."""
    uneven = {1: 40.0, 2: 44.0, 3: 60.0, 4: 61.0, 5: 62.0, 6: 63.0}
    steep = {1: 40.0, 2: 44.0, 3: 60.0, 4: 76.0, 5: 92.0, 6: 108.0}
    for curve, takes_it in ((uneven, True), (steep, False)):
        policy = CostAwareLength(verify_ms=lambda s, c=curve: c[min(s, 6)], draft_ms=5.0, prior=0.9, k_max=5)
        path = 0.9
        one_token = path * policy.acceptance * policy.ms_per_token()
        assert one_token < policy.draft_ms + curve[3] - curve[2]  # the next token alone does not pay
        assert policy.worth_looking(1, path) is takes_it
        drafted = 0.8 * (curve[3] - curve[2]) / policy.ms_per_token()  # its step paid, alone it does not pay
        assert policy.worth_including(1, drafted) is takes_it


class _ConfidenceSession:
    """A draft session stub whose next-token distribution has a given top probability per
    position: token i+1 follows token i with probability confidence[i]."""

    def __init__(self, confidence, vocab=64):
        self.confidence, self.vocab = confidence, vocab
        self.history, self.max_len, self.logit_ids, self.vocab_size, self.last_fed = [], 1000, None, vocab, 1

    def _logits(self, position):
        import numpy as np
        c = self.confidence[min(position, len(self.confidence) - 1)]
        p = np.full(self.vocab, (1 - c) / (self.vocab - 1))
        p[(position + 1) % self.vocab] = c
        return np.log(p).astype(np.float32)

    def sync(self, tokens):
        self.history = list(tokens)
        return self._logits(len(tokens) - 1)

    def forward(self, tokens):  # (a session's cache records the tokens it was fed)
        self.history = self.history + list(tokens)
        return self._logits(len(self.history) - 1)[None]

    def reset(self):
        self.history = []


def test_model_chain_runs_while_confident_and_stops_where_unsure():
    """The cost-aware chain is not cut at the policy's k: six confident tokens are drafted, and
    it stops at the first token the draft is unsure of — before drafting it."""
    from edgespec.runtime.drafters import ModelDrafter
    sure, unsure = 0.995, 0.1
    session = _ConfidenceSession([sure] * 6 + [unsure] * 10)
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=2.0, prior=0.85, k_max=10)
    drafter = ModelDrafter(session, length=policy, window=None)
    assert policy.k < 6
    tree = drafter.propose([0], budget=16)
    assert list(tree.tokens[1:]) == [1, 2, 3, 4, 5, 6]
    session = _ConfidenceSession([unsure] * 10)
    assert len(ModelDrafter(session, length=policy, window=None).propose([0], budget=16)) == 1  # root only


class _Stub:
    """A drafter proposing a fixed chain; as lookup it reports the n-gram it followed."""

    long_match = 4

    def __init__(self, chain, last_match=0, length=None):
        self.chain, self.last_match, self.length = chain, last_match, length
        self.seen = []

    @property
    def warm(self):
        return bool(getattr(self, "session", None) is not None and self.session.history)

    def start(self, prompt_len, end):
        pass

    def propose(self, context, budget):
        from edgespec.runtime.tree import DraftTree
        tree = DraftTree(context[-1])
        if self.chain:
            tree.add_path(0, self.chain[:budget])
        return tree

    def observe(self, report):
        self.seen.append(report.verdict.num_accepted)
        if self.length is not None:
            self.length.update(report.verdict.num_accepted, len(report.tree) - 1)

    def reset(self):
        pass


def _stub_model(offset, rejoin):
    """A model drafter stub that reports how far behind its (empty) draft session is."""
    from types import MethodType, SimpleNamespace
    from edgespec.runtime.drafters import ModelDrafter
    model = _Stub([7, 8, 9], length=CostAwareLength(_cpu_verify, draft_ms=12.0, prior=0.9, cost_decay=1.0))
    model.session, model._offset, model.rejoin = SimpleNamespace(history=[]), offset, rejoin
    model.lag = MethodType(ModelDrafter.lag, model)
    model.catch_up = MethodType(ModelDrafter.catch_up, model)
    return model


def _pass(auto, lookup_accepts, context=(1, 2, 3)):
    """One pass: lookup's proposals get `lookup_accepts` tokens accepted, the model's all."""
    from types import SimpleNamespace
    tree = auto.propose(list(context), 8)
    kind = auto.chosen[1] if auto.chosen else "none"
    accepted = len(tree) - 1 if kind == "model" else min(lookup_accepts, len(tree) - 1)
    auto.observe(_report(SimpleNamespace(num_accepted=accepted), tree))
    return kind


def _report(verdict, tree, logits=None):
    """A pass report whose verify cost is the profile's own (no live correction)."""
    from edgespec.runtime.drafters import PassReport
    return PassReport(verdict, tree, logits, draft_ms=0.0, verify_ms=_cpu_verify(len(tree)))


def test_auto_follows_what_each_drafter_delivers():
    """Lookup drafts while it delivers (sized to its acceptance); when its proposals keep
    failing the model drafts instead, and lookup is re-tried every `probe_every` passes."""
    from edgespec.runtime.auto import AutoDrafter
    # cost_decay=1: keep the profile's costs (stubs take microseconds, not a CPU's milliseconds)
    model = _Stub([7, 8, 9], length=CostAwareLength(_cpu_verify, draft_ms=12.0, prior=0.9, cost_decay=1.0))
    lookup = _Stub([4, 5, 6, 7, 8, 9, 10], last_match=4)
    auto = AutoDrafter(lookup, model, _cpu_verify, probe_every=6, priors={"long": 0.9, "short": 0.5})
    assert 3 <= auto.best_depth("long", 8) <= 5  # at r = 0.9 on this curve, 3-5 tokens per pass pay best
    assert len(auto.propose([1, 2, 3], 8)) == 8  # but a long match is verified whole: copies run on
    auto.lookup.last_match = 2
    assert len(auto.propose([1, 2, 3], 8)) - 1 == auto.best_depth("short", 7) < 7  # a short one is cut
    auto = AutoDrafter(lookup, model, _cpu_verify, probe_every=6, priors={"long": 0.9, "short": 0.5})
    lookup.last_match = 4
    assert [_pass(auto, 7) for _ in range(3)] == ["long"] * 3
    assert auto.best_depth("long", 8) > 5  # everything accepted: longer lookups pay
    kinds = [_pass(auto, 0) for _ in range(24)]
    # Cheap short lookups still pay at r ~ 0.6 on this curve; some ten failures move r below it.
    assert kinds[0] == "long" and "model" in kinds[:12]
    after = kinds[kinds.index("model"):]
    assert after[:5] == ["model"] * 5 and after[5] == "long"  # then one probe per 6 passes
    assert after.count("long") <= len(after) // 6 + 1
    assert auto.acceptance("long") < 0.65  # (failing whole copies are declined within a few passes)
    lookup.last_match = 2  # short matches have their own, lower estimate: the model drafts
    assert _pass(auto, 0) == "model"


def test_auto_counts_the_drafts_catch_up_after_lookup_runs():
    """After lookup passes the draft is behind; while lookup delivers, feeding a long lag costs
    more than a model pass brings, so auto takes a plain pass, while a short lag (or the first
    sync) lets the model draft. A draft behind by more than a few tokens enters only after
    auto_entry_misses lookup misses, and then whatever its lag."""
    from edgespec.runtime.auto import AutoDrafter
    model = _stub_model(offset=0, rejoin=128)
    auto = AutoDrafter(_Stub([]), model, _cpu_verify, draft_prefill_ms=3.3)
    context = list(range(300))
    entry = [_pass(auto, 0, context) for _ in range(DEFAULT.auto_entry_misses + 1)]
    assert entry == ["none"] * DEFAULT.auto_entry_misses + ["model"]  # then the prompt prefill is not weighed
    model.session.history = context[:296]
    assert _pass(auto, 0, context) == "model"  # 4 tokens behind
    model.length = CostAwareLength(_cpu_verify, draft_ms=12.0, prior=0.9, cost_decay=1.0)
    model.session.history = context[:200]
    auto.misses = 0  # lookup has just delivered
    tree = auto.propose(context, 8)  # 100 behind: 330 ms of catch-up over 4 passes
    assert len(tree) == 1 and auto.chosen is None and auto.choices["none"] == DEFAULT.auto_entry_misses + 1
    auto.misses = DEFAULT.auto_entry_misses  # lookup stopped delivering: the model drafts from now on,
    assert _pass(auto, 0, context) == "model"  # so its catch-up is paid once, however long
    model.rejoin, length = 128, model.length
    for _ in range(10):  # the draft stops agreeing: not drafting pays more
        length.update(accepted=0, proposed_depth=1)
    assert length.k == 0 and not length.probing
    for _ in range(length.probe_every):
        length.update(accepted=0, proposed_depth=0)
    assert length.probing
    assert _pass(auto, 0, context) == "model"  # the probe runs, 100 tokens behind or not


def test_auto_skips_the_models_prefill_at_an_edits_short_gaps():
    """An edit: lookup copies, with two-pass gaps at the edit points. The draft never pays its
    prefill there; fresh text (lookup missing auto_entry_misses passes in a row) brings it in."""
    from edgespec.runtime.auto import AutoDrafter
    model = _stub_model(offset=None, rejoin=32)
    copy = [4, 5, 6, 7]
    lookup = _Stub(copy, last_match=6)
    auto = AutoDrafter(lookup, model, _cpu_verify, draft_prefill_ms=3.3)
    context, kinds = list(range(300)), []
    for _ in range(4):
        lookup.chain = []
        kinds += [_pass(auto, 0, context) for _ in range(DEFAULT.auto_entry_misses - 1)]
        lookup.chain = copy
        kinds.append(_pass(auto, 4, context))
    assert kinds.count("long") == 4 and "model" not in kinds
    lookup.chain = []
    fresh = [_pass(auto, 0, context) for _ in range(DEFAULT.auto_entry_misses + 1)]
    assert fresh == ["none"] * DEFAULT.auto_entry_misses + ["model"]


def test_auto_takes_a_short_lookup_over_a_plain_pass_while_the_model_waits():
    """A short match that loses to the model's rate still beats a plain pass, so while the
    model waits to enter (lookup has not missed auto_entry_misses passes) lookup drafts. One
    rejected short match does not stop short matches: the prior is worth prior_trials."""
    from edgespec.runtime.auto import AutoDrafter
    model = _stub_model(offset=None, rejoin=32)
    lookup = _Stub([4, 5], last_match=2)
    auto = AutoDrafter(lookup, model, _cpu_verify, draft_prefill_ms=3.3, priors={"long": 0.9, "short": 0.45})
    context = list(range(300))
    auto.propose(context, 8)
    assert auto.chosen[1] == "short"
    auto.misses = DEFAULT.auto_entry_misses  # now the model would draft: it promises more
    auto.propose(context, 8)
    assert auto.chosen[1] == "model"
    auto = AutoDrafter(lookup, model, _cpu_verify, draft_prefill_ms=3.3)
    assert _pass(auto, 0, context) == "short"
    assert auto.acceptance("short") == pytest.approx((0.9 * 0.6 * 4) / (0.9 * 4 + 1))  # 0.47


def _confident_pass(auto, context, top1):
    """A pass in which the target's top-1 probability at the emitted token is `top1`."""
    import numpy as np
    from types import SimpleNamespace
    tree = auto.propose(list(context), 8)
    kind = auto.chosen[1] if auto.chosen else "none"
    row = np.full(64, (1 - top1) / 63)
    row[0] = top1
    logits = np.log(np.tile(row, (len(tree), 1))).astype(np.float32) + 5.0  # unnormalised
    auto.observe(_report(SimpleNamespace(num_accepted=0, accepted=[0]), tree, logits))
    return kind


def test_auto_enters_the_model_only_where_the_targets_confidence_pays_its_prefill():
    """Taking the target's recent top-1 probability as the draft's acceptance, the model's
    prompt prefill (128 tokens x 3.3 ms) must pay back auto_entry_margin times within auto_payback_tokens
    tokens. On this curve with a 12 ms draft step that takes ~0.68 (~0.57 without the margin):
    unsure text stays plain, confident text brings the model in. A restart from `rejoin`
    tokens costs less, so it pays at a confidence that the first entry did not; near
    max_tokens nothing pays."""
    from types import MethodType
    from edgespec.runtime.auto import AutoDrafter
    from edgespec.runtime.drafters import ModelDrafter
    model = _stub_model(offset=None, rejoin=32)
    model.window = 128
    model._entry_offset = MethodType(ModelDrafter._entry_offset, model)
    model.entry_tokens = MethodType(ModelDrafter.entry_tokens, model)
    auto = AutoDrafter(_Stub([]), model, _cpu_verify, draft_prefill_ms=3.3)
    context = list(range(300))
    assert [_confident_pass(auto, context, 0.3) for _ in range(12)] == ["none"] * 12
    assert auto.target_confidence == pytest.approx(0.3, abs=1e-4)
    kinds = []
    while "model" not in kinds and len(kinds) < 40:
        kinds.append(_confident_pass(auto, context, 0.99))
    assert 8 <= len(kinds) - 1 <= 14  # the weighted mean climbs from 0.3 past ~0.68
    auto._confidence = [0.65, 1.0]
    model._offset = None  # at 0.65 the prefill pays back 1.4 times: not enough
    assert not auto._entry_pays(context)
    auto._confidence = [0.5, 1.0]
    model._offset = None  # a first entry feeds the 128-token window: not at 0.5
    assert not auto._entry_pays(context)
    model._offset = 0  # a restart feeds `rejoin` = 32 tokens: at 0.5 it pays
    assert auto._entry_pays(context)
    auto.end = len(context) + 10  # but not 10 tokens before max_tokens
    assert not auto._entry_pays(context)


def test_auto_leaves_an_edits_gaps_to_lookup_while_its_source_is_left_to_copy():
    """An edit copies its prompt: after a long copy, lookup is expected to copy the rest of the
    prompt from the copy's source on, so the model's prefill must pay back within what the reply
    has left beyond that. A completion that quoted the prompt's last lines keeps its horizon."""
    from types import MethodType, SimpleNamespace
    from edgespec.runtime.auto import AutoDrafter
    from edgespec.runtime.drafters import ModelDrafter
    from edgespec.runtime.ngram import NgramDrafter
    prompt = list(range(1000, 1300))

    def after_copy(start):
        """The model's entry check after the reply copied prompt[start:start+10], then a long
        lookup pass copied 8 more and the target's own token (an edit) followed."""
        model = _stub_model(offset=None, rejoin=32)
        model.window = 128
        model._entry_offset = MethodType(ModelDrafter._entry_offset, model)
        model.entry_tokens = MethodType(ModelDrafter.entry_tokens, model)
        auto = AutoDrafter(NgramDrafter(), model, _cpu_verify, draft_prefill_ms=3.3)
        auto.prompt_len, auto.end = len(prompt), len(prompt) + 200
        auto._confidence = [0.9, 1.0]
        context = prompt + prompt[start:start + 10]
        tree = auto.propose(context, 8)
        assert auto.chosen[1] == "long" and tree.tokens[1:] == prompt[start + 10:start + 18]
        emitted = prompt[start + 10:start + 18] + [7]  # the copy, then an edit
        auto.observe(_report(SimpleNamespace(num_accepted=8, tokens=emitted), tree))
        context += emitted
        auto.propose(context, 8)
        return auto.to_copy, auto._entry_pays(context)

    assert after_copy(100) == (300 - 118, False)  # 182 tokens to copy, 181 left in the reply
    assert after_copy(272) == (300 - 290, True)  # a quote of the last lines: 10 left to copy


def test_auto_takes_lookup_only_where_the_drafting_model_agrees_with_its_first_token():
    """While the model drafts, a lookup proposal is checked against the draft's first token (one
    draft step, which the model's own proposal then reuses): disagreeing, the model drafts."""
    from dataclasses import replace
    from edgespec.runtime.auto import AutoDrafter
    from edgespec.runtime.drafters import ModelDrafter

    class Counting(_ConfidenceSession):
        syncs = 0

        def sync(self, tokens):
            Counting.syncs += 1
            return super().sync(tokens)

    session = Counting([0.99] * 64)  # the draft's top token after n context tokens is n
    model = ModelDrafter(session, length=CostAwareLength(_cpu_verify, draft_ms=2.0, prior=0.9), window=None)
    model.propose([0, 1, 2, 3, 4], budget=4)  # drafting already: its cache follows the context
    context = [0, 1, 2, 3, 4, 5]
    for chain, chosen, first in (([9, 10, 11, 12, 13, 14], "model", 6), ([6, 7, 8, 9, 10, 11], "long", 6)):
        auto = AutoDrafter(_Stub(chain, last_match=8), model, _cpu_verify, draft_prefill_ms=1.0)
        syncs = Counting.syncs
        tree = auto.propose(context, 8)
        assert (auto.chosen[1], tree.tokens[1], auto.peeks, auto.vetoed) == (chosen, first, 1, chosen == "model")
        assert Counting.syncs == syncs + 1  # the check's step is the model's first step
    never_close = replace(DEFAULT, auto_peek_lag=-1)  # (never this close behind)
    unchecked = AutoDrafter(_Stub([9, 10, 11, 12, 13, 14], last_match=8), model, _cpu_verify, draft_prefill_ms=1.0,
                            config=never_close)
    assert unchecked.propose(context, 8).tokens[1] == 9 and unchecked.chosen[1] == "long"


def test_auto_without_profiles_takes_lookup_first():
    from edgespec.runtime.auto import AutoDrafter
    model = _Stub([7, 8], length=DraftLength())
    auto = AutoDrafter(_Stub([4, 5], last_match=2), model, verify_ms=None)
    assert _pass(auto, 0) == "short"
    auto.lookup.chain = []
    assert _pass(auto, 0) == "model"
    assert AutoDrafter(_Stub([]), None, _cpu_verify).propose([1, 2], 8).tokens == [2]  # nothing to draft


def test_auto_measures_missing_profiles_and_sizes_the_model_from_them(tiny_bundle, tiny_draft_bundle, monkeypatch):
    """A draft step as costly as a target step: the cost-aware length stops the model drafting."""
    from edgespec.devices import profile as prof
    from edgespec.runtime import drafters
    from edgespec.runtime.api import Generator
    from edgespec.runtime.sampling import SamplingParams
    from edgespec.runtime.session import Session
    gen = Generator(Session(tiny_bundle), Session(tiny_draft_bundle), drafter="auto")
    asked = []

    def fake(cost_of_draft):
        def load_or_measure(session, **kwargs):
            asked.append(session)
            ms = CPU_CURVE if session is gen.target else cost_of_draft
            return prof.Profile(str(session.path), "cpu", 2, 128, ms)
        return load_or_measure

    monkeypatch.setattr(prof, "load_or_measure", fake({1: 40.0, 2: 44.0}))
    auto = drafters.create("auto", gen.draft_context(SamplingParams()))
    assert gen.draft in asked and auto.model.length.k == 0
    monkeypatch.setattr(prof, "load_or_measure", fake({1: 4.0, 2: 5.0}))
    assert drafters.create("auto", gen.draft_context(SamplingParams())).model.length.k >= 1


def test_profile_is_measured_once_and_cached(tiny_bundle):
    from edgespec.devices.profile import QUICK_SIZES, cached, load_or_measure
    from edgespec.runtime.session import Session
    s = Session(tiny_bundle)
    first = load_or_measure(s, sizes=QUICK_SIZES)
    assert sorted(first.pass_ms) == list(QUICK_SIZES) and all(v > 0 for v in first.pass_ms.values())
    assert cached(s).pass_ms == first.pass_ms
    assert load_or_measure(s, sizes=QUICK_SIZES).pass_ms == first.pass_ms  # not measured again
