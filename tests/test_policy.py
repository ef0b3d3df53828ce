"""The draft length follows the device's cost curve and the running acceptance."""

from edgespec.runtime.policy import CostAwareLength, DraftLength, expected_tokens


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
    assert policy.k == 1  # a probe keeps the estimate alive


def test_heuristic_schedule():
    d = DraftLength(k=3)
    d.update(3, 3)
    assert d.k == 4
    d.update(1, 4)
    assert d.k == 3


def test_auto_leaves_out_a_draft_model_the_profile_says_is_too_slow(tiny_bundle, tiny_draft_bundle, monkeypatch):
    from edgespec.devices import profile as prof
    from edgespec.runtime import drafters
    from edgespec.runtime.api import Generator
    from edgespec.runtime.sampling import SamplingParams
    from edgespec.runtime.session import Session
    gen = Generator(Session(tiny_bundle), Session(tiny_draft_bundle), drafter="auto")

    def fake(cost_of_draft):
        def load_or_measure(session, **kwargs):
            ms = {1: 40.0, 2: 44.0} if session is gen.target else cost_of_draft
            return prof.Profile(str(session.path), "cpu", 2, 128, ms)
        return load_or_measure

    monkeypatch.setattr(prof, "load_or_measure", fake({1: 14.0, 2: 16.0}))  # 0.35 of a target step
    assert len(drafters.create("auto", gen, SamplingParams()).members) == 1
    monkeypatch.setattr(prof, "load_or_measure", fake({1: 4.0, 2: 5.0}))  # 0.1 of a target step
    assert len(drafters.create("auto", gen, SamplingParams()).members) == 2


def test_profile_is_measured_once_and_cached(tiny_bundle):
    from edgespec.devices.profile import QUICK_SIZES, cached, load_or_measure
    from edgespec.runtime.session import Session
    s = Session(tiny_bundle)
    first = load_or_measure(s, sizes=QUICK_SIZES)
    assert sorted(first.pass_ms) == list(QUICK_SIZES) and all(v > 0 for v in first.pass_ms.values())
    assert cached(s).pass_ms == first.pass_ms
    assert load_or_measure(s, sizes=QUICK_SIZES).pass_ms == first.pass_ms  # not measured again
