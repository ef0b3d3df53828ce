"""Every tuned number of the drafting policy, in one frozen record.

The draft-length policies (policy.py), the drafters (drafters.py, ngram.py,
recycle.py, cross_vocab.py) and auto's choice per pass (auto.py) read their
thresholds from a PolicyConfig: `DEFAULT` unless they are given another. Each
field's comment says what chose its value; "bench" figures are speedups over
plain decoding on a 2-core CPU, Qwen2.5-Coder-1.5B int4 verifying and the 0.5B
drafting, on the named prompts of the shipped suite; "set with" names the
commit that introduced a value no measurement has revisited. To try another
value for one generator: `gen.policy_config = dataclasses.replace(DEFAULT, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PolicyConfig:
    # -- acceptance estimates, shared by the draft model's length policy and auto's lookup kinds --
    # with draft_prior: one early rejection no longer stops the draft; bench binary-search 1.01 -> 1.31x (ac6969f)
    prior_trials: float = 4.0
    # per-trial forgetting of acceptance evidence, model and lookup alike; set with the policy (3a057c4)
    acceptance_decay: float = 0.9

    # -- the draft model's length, priced from the device profile (policy.CostAwareLength) --
    # acceptance of a same-family draft before evidence: bench explain-decorator 0.94 -> 1.22x (ac6969f)
    draft_prior: float = 0.8
    # buckets of the draft's probability, priors their middles: code.json's traces accepted 0.41/0.68/0.79/0.91/0.99
    draft_confidence_edges: tuple[float, ...] = (0.3, 0.5, 0.7, 0.85, 0.95)
    # longest chain a pass may draft (the draft's confidence stops it sooner); set with the policy (3a057c4)
    length_k_max: int = 10
    # passes without drafting before a probe; held-out replay, completions 0.97 -> 0.99x best at 16 -> 4 (tuning same)
    length_probe_every: int = 4
    # a rejected probe doubles the wait up to this: a probe pays the draft's catch-up, 10% lost at 16 (ac6969f)
    length_probe_max: int = 64
    # weight of the running level when a timed pass updates the live costs; set with live costs (bbbd452)
    cost_decay: float = 0.8
    # first timings whose median sets the level, and pairs each kind's relative (a cold first pass ran 3.6x the profile)
    cost_relative_first: int = 3
    # then a running mean of pairs (drift-free, so quicker than 0.98 was against the level; replayed auto unchanged)
    cost_relative_decay: float = 0.9
    # a kind's timing pairs with another's at most this many passes before; at 4, a load that began between went 17% into a relative
    cost_pair_passes: int = 1

    # -- without a profile: HF assisted generation's +1/-1 schedule (policy.DraftLength) --
    # first chain length; set with the package (3984bf9)
    heuristic_k: int = 3
    # shortest chain the schedule falls to; set with the package (3984bf9)
    heuristic_k_min: int = 1
    # longest chain the schedule grows to; set with the package (3984bf9)
    heuristic_k_max: int = 8
    # a draft's top-1 probability below this stops the chain; the cost-aware stop beat it by 2-6% (3984bf9)
    heuristic_min_confidence: float = 0.3

    # -- the model drafter (drafters.ModelDrafter, drafters._auto) --
    # prompt tokens a draft reads first: its prefill is decode time, 0.3 s for the 0.5B (c4b806e)
    draft_window: int = 128
    # further behind than this, a draft restarts from this many recent tokens: 0.1 s for the 0.5B (d0ae963)
    draft_rejoin: int = 32
    # tree siblings per depth; set with the package (3984bf9)
    draft_branch_width: int = 2
    # least draft probability of a tree sibling; set with the package (3984bf9)
    draft_branch_min_prob: float = 0.1
    # a draft sync that fed at most this many tokens is timed as a draft step, more as a prefill (bbbd452)
    draft_steady_feed: int = 4
    # auto adds siblings only where verifying this many tokens costs <= tree_cost_ratio x one (bbbd452)
    tree_probe_size: int = 8
    # on the 2-core CPU each extra verified token cost ~25% of a pass and trees lost (bbbd452)
    tree_cost_ratio: float = 1.5
    # the draft's prefill cost per token is its profile's cost(prefill_batch) / prefill_batch; 8 (9a06240)
    # priced the 0.5B's 128-token prefill 1.6x what it cost (1.96 ms a token against 1.24; 32: 1.40)
    prefill_batch: int = 32

    # -- prompt lookup (ngram.NgramDrafter) --
    # longest suffix n-gram looked up; set with the package (3984bf9)
    lookup_max_ngram: int = 4
    # shortest n-gram that counts as a match (one token is not enough); set with the package (3984bf9)
    lookup_min_ngram: int = 2
    # branch length after a long match; set with the package (3984bf9)
    lookup_max_draft: int = 10
    # branch length after a shorter, coincidental match; set when drafts were sized by match (3088007)
    lookup_short_draft: int = 3
    # a match of at least this many tokens is a copy (long); set when drafts were sized by match (3088007)
    lookup_long_match: int = 4
    # distinct continuations per proposal; 4 -> 2 when drafts were sized by match (3088007)
    lookup_max_branches: int = 2
    # earlier occurrences examined per n-gram length; set with the package (3984bf9)
    lookup_max_matches: int = 16
    # a match is measured back this far, no further: the evidence's last bucket starts at 16
    lookup_match_cap: int = 16

    # -- auto: lookup or the model, pass by pass (auto.AutoDrafter) --
    # bucket edges of a lookup token's evidence, the match it continues (tokens): 2, 3, 4-5, 6-9, 10-15, 16+
    lookup_match_edges: tuple[float, ...] = (3, 4, 6, 10, 16)
    # acceptance per bucket before evidence: measured 0.45/0.55/0.60/0.86/0.98/0.97 on code.json's traces (AMD)
    lookup_match_priors: tuple[float, ...] = (0.45, 0.55, 0.6, 0.85, 0.95, 0.97)
    # per-trial forgetting of those buckets: a copy's proposal is up to 10 trials, so 0.9 forgot all but its last
    # pass (16+ read 0.84-0.90 after edits that accepted 0.97 of them); tuning edits 0.924 -> 0.955x best at 0.97
    lookup_acceptance_decay: float = 0.97
    # buckets of the target's recent top-1 probability, by which an entry is priced
    entry_confidence_edges: tuple[float, ...] = (0.7, 0.8, 0.9)
    # the draft's acceptance per bucket before evidence: code.json's chain replays accepted 0.67/0.87/0.84/0.90
    entry_acceptance_priors: tuple[float, ...] = (0.67, 0.87, 0.84, 0.9)
    # rule: misses in a row before the draft (re)starts; held-out replay, completions 0.96 -> 1.00x best at 0 -> 3
    auto_entry_misses: int = 3
    # an entry's prefill or a catch-up is spread over this many tokens at most; at 96 and a 1.5x margin (b607bc0) no explanation entered live
    auto_payback_tokens: int = 200
    # rule: an entry is priced as if the reply copies what is left of the prompt's last fenced block from the
    # fence it opens in its first this many tokens (replayed edits 1.00 -> 1.07x best); a reply of prose opens
    # none (explanations' first fence: token 47 or none; every recorded edit's: token 0); 8-64 replay alike,
    # and live the 64 it lapsed at before kept the model out of explain-regex-tokenizer's first 64 tokens
    auto_copy_prior_tokens: int = 16
    # the target's confidence as a mean over ~30 emitted tokens: 0.87-0.93 completing, 0.75-0.77 explaining (b01fec8)
    auto_confidence_decay: float = 0.97
    # emitted tokens whose confidence is scored per pass: a row costs ~0.33 ms at 152k tokens; 1, 2, 4: same replays
    auto_confidence_rows: int = 1

    # -- token recycling (recycle.RecycleDrafter) --
    # next-token candidates kept per token: 4.9 MB at 152k tokens; set with recycling (3a057c4)
    recycle_width: int = 8
    # prior weight of a token's r-th candidate is rank_decay ** r; set with recycling (3a057c4)
    recycle_rank_decay: float = 0.45

    # -- a draft with another tokenizer (cross_vocab.CrossVocabDrafter) --
    # longest drafted chain, in draft tokens; set with the drafter (ab3152e)
    cross_max_draft: int = 6
    # target tokens re-tokenized around the seam; set with the drafter (ab3152e)
    cross_window: int = 32
    # positions tried, back from the window, for a clean text split; set with the drafter (ab3152e)
    cross_split_search: int = 8
    # anchor moves tried past non-canonical splits before giving up; set with the drafter (ab3152e)
    cross_anchor_tries: int = 3
    # draft ids decoded before the drafted ones, so leading spaces come out right; set with the drafter (ab3152e)
    cross_lead_ids: int = 4


DEFAULT = PolicyConfig()
