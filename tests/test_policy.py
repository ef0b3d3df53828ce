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
    assert abs(policy.scale("wide") - 2.0) < 0.01 and abs(policy.draft_ms - 6.0) < 0.1
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
    assert policy.k == 1 and "single" not in policy.relatives.timed
    for _ in range(10):
        policy.observe_costs(None, 33.0, size=1)  # plain passes 16% faster than profiled
    assert abs(policy.verify_ms(1) - 33.0) < 0.1 and abs(policy.verify_ms(2) - 45.2) < 0.1
    assert policy.k == 0


def test_untimed_costs_move_with_the_machine():
    """A neighbour's load slows every pass alike: kinds of pass not timed meanwhile (the draft
    sitting out, wide passes during plain runs) are priced at the new level, each as it ran
    against the level when last timed; a uniform slowdown leaves the choice of k as it was."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85)
    for _ in range(5):
        policy.observe_costs(8.0, _cpu_verify(3), size=3)  # the draft 20% faster than profiled
        policy.observe_costs(None, _cpu_verify(1), size=1)
    k = policy.k
    for _ in range(20):
        policy.observe_costs(None, 1.5 * _cpu_verify(1), size=1)  # then plain passes, 1.5x slower
    assert abs(policy.verify_ms(1) - 1.5 * _cpu_verify(1)) < 0.01 * _cpu_verify(1)
    # (the one-token relative takes up a little of it: one kind alone cannot tell the machine from itself)
    assert 1.4 * _cpu_verify(4) < policy.verify_ms(4) < 1.5 * _cpu_verify(4)
    assert 1.4 * 8.0 < policy.draft_ms < 1.5 * 8.0
    assert policy.k == k


def test_a_cold_first_pass_leaves_the_draft_priced_at_the_machine():
    """A process's first pass ran 3.6x its profile, the next ones as profiled: the level is the
    median of the first timings, so the draft, not yet timed, is priced at about its profile
    (set by that one pass, with the one-token pass's relative dragged down to match, it was
    priced 1.6-2.8x over and auto never entered it live)."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85)
    policy.observe_costs(None, 3.6 * _cpu_verify(1), size=1)
    for _ in range(4):
        policy.observe_costs(None, _cpu_verify(1), size=1)
    assert abs(policy.draft_ms - 10.0) < 0.5 and abs(policy.verify_ms(1) - _cpu_verify(1)) < 0.05 * _cpu_verify(1)
    assert policy.relatives.relative == {"single": 1.0, "wide": 1.0, "draft": 1.0}


def test_cost_relatives_outlive_a_generation():
    """What one generation learned of how the draft runs against the target is where the next
    one starts (before its draft is timed), not the profile's ratio."""
    first = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85)
    for _ in range(5):
        first.observe_costs(6.0, 1.2 * _cpu_verify(2), size=2)
    second = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85, relatives=first.relatives)
    fresh = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85)
    second.observe_costs(None, 1.2 * _cpu_verify(2), size=2)
    fresh.observe_costs(None, 1.2 * _cpu_verify(2), size=2)
    assert abs(second.draft_ms - 6.0) < 0.01 and abs(fresh.draft_ms - 12.0) < 0.01


def test_a_relatives_first_guess_gives_way_to_later_pairs():
    """The first wide passes ran 1.3x the one-token pass's level (a process's first request),
    later ones 0.86x with one-token passes between: the relatives follow the pairs, so the
    draft's entry is priced at what passes cost now. Set against the running level, the
    relatives kept their first guess (wide 1.20x, draft 1.21x after 30 pairs)."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85)
    for _ in range(3):
        policy.observe_costs(None, _cpu_verify(1), size=1)
    for _ in range(3):
        policy.observe_costs(None, _cpu_verify(1), size=1)
        policy.observe_costs(13.0, 1.3 * _cpu_verify(2), size=2)
    assert abs(policy.verify_ms(2) - 1.3 * _cpu_verify(2)) < 0.01 * _cpu_verify(2)
    for _ in range(30):
        policy.observe_costs(None, _cpu_verify(1), size=1)
        policy.observe_costs(8.6, 0.86 * _cpu_verify(2), size=2)
    assert abs(policy.verify_ms(2) - 0.86 * _cpu_verify(2)) < 0.03 * _cpu_verify(2)
    assert abs(policy.draft_ms - 8.6) < 0.45


def test_a_load_that_starts_between_passes_is_the_machines():
    """A neighbour's load that begins between a wide pass and the next one-token pass is the
    machine's, not the one-token pass's: only the pass right after pairs with the wide one."""
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.0, prior=0.85)
    for _ in range(5):
        policy.observe_costs(None, _cpu_verify(2), size=2)
        policy.observe_costs(None, _cpu_verify(1), size=1)
    for _ in range(10):
        policy.observe_costs(None, 1.5 * _cpu_verify(1), size=1)
    assert policy.relatives.relative["single"] < 1.06
    assert abs(policy.verify_ms(2) - 1.5 * _cpu_verify(2)) < 0.08 * _cpu_verify(2)


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
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=10.5, prior=0.2, probe_every=16)
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


def test_calibration_learns_each_bucket_from_its_own_trials():
    """Each bucket starts at its prior (worth `trials` trials) and follows its own verdicts; a
    chain's tokens past the first rejection are no trials."""
    from edgespec.runtime.policy import Calibration
    cal = Calibration.identity((0.5, 0.9), trials=4.0, decay=1.0)
    assert [cal(0.2), cal(0.7), cal(0.95)] == pytest.approx([0.25, 0.7, 0.95])  # bucket middles
    cal.observe_path([0.95, 0.95, 0.7, 0.2], accepted=2)  # two accepted, the third rejected
    assert cal.counts[2] == pytest.approx([6.0, 0.95 * 4 + 2])
    assert cal.counts[1] == pytest.approx([5.0, 0.7 * 4])  # one failure
    assert cal.counts[0] == pytest.approx([4.0, 1.0])  # after the rejection: untouched
    for _ in range(40):  # an overconfident draft: 0.95s are accepted half the time
        cal.observe(0.95, False)
        cal.observe(0.95, True)
    assert cal(0.95) == pytest.approx(0.5, abs=0.05) and cal(0.2) == 0.25
    with pytest.raises(ValueError, match="2 bucket edges need 3 priors"):
        Calibration((0.5, 0.9), (0.5,), 4.0, 1.0)


def test_a_tree_is_worth_its_reachable_nodes():
    """Expected tokens of a tree: 1 (the target's own) + the chance each node is reached;
    siblings exclude each other, so their chances are scaled to add up to at most 1."""
    from edgespec.runtime.policy import best_cut, node_probabilities
    from edgespec.runtime.tree import DraftTree
    tree = DraftTree(0)
    a = tree.add(0, 1)
    tree.add(a, 2)
    b = tree.add(0, 3)
    tree.add(b, 4)
    reach = node_probabilities(tree, [1.0, 0.9, 0.5, 0.6, 1.0])  # 0.9 + 0.6 > 1: scaled by 1/1.5
    assert reach == pytest.approx([1.0, 0.6, 0.3, 0.4, 0.4])
    flat = lambda s: 10.0  # verifying is free: everything pays
    assert best_cut(tree, [1.0, 0.9, 0.5, 0.6, 1.0], flat) == (4, pytest.approx(2.7 / 10))
    dear = lambda s: 10.0 * s  # each token costs a pass: only the likeliest first token pays
    assert best_cut(tree, [1.0, 0.9, 0.5, 0.6, 1.0], dear)[0] == 1


def test_calibration_shortens_an_overconfident_drafts_chains():
    """The draft says 0.93 at every token; the target accepts a third of them. Before any
    verdict the chain runs long, after the calibration has learned that bucket it stops after
    one token (the draft's own confidences are what the calibration is keyed on)."""
    from edgespec.runtime.drafters import ModelDrafter
    session = _ConfidenceSession([0.93] * 32)
    policy = CostAwareLength(verify_ms=_cpu_verify, draft_ms=2.0, prior=0.85, k_max=10)
    drafter = ModelDrafter(session, length=policy, window=None)
    tree = drafter.propose([0], budget=16)
    assert len(tree) - 1 >= 4 and drafter.confidences == pytest.approx([0.93] * (len(tree) - 1), abs=1e-5)
    for _ in range(20):
        policy.update(accepted=1, proposed_depth=3, confidences=[0.93, 0.93, 0.93])  # 1 of 2 trials
        policy.update(accepted=0, proposed_depth=3, confidences=[0.93, 0.93, 0.93])  # 0 of 1
    assert policy.accepts(0.93) == pytest.approx(1 / 3, abs=0.05)
    assert len(ModelDrafter(session, length=policy, window=None).propose([0], budget=16)) <= 2


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
