"""What a generation gives back: Chunks as the text streams, Stats of the call, and the
collected Result of generate(). Their own module, so that the streams built on
Generator.stream (fim.py) make theirs without importing api.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Chunk:
    text: str
    token_ids: list[int]
    from_draft: list[bool]


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    cached_prompt_tokens: int = 0  # prompt tokens whose KV came from a cache, not a prefill
    cached_from: str = ""  # which: "previous call" (the session's own), "memory" (prefix LRU), "disk"
    decode_seconds: float = 0.0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    overhead_seconds: float = 0.0
    verify_passes: int = 0
    proposed: int = 0
    accepted: int = 0
    drafter: str = "none"
    drafter_choices: dict | None = None  # auto: passes drafted by lookup (long/short match) vs model
    finish_reason: str = ""

    @property
    def decode_tok_s(self) -> float:
        return (self.new_tokens - 1) / self.decode_seconds if self.decode_seconds > 0 else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def accepted_per_pass(self) -> float:
        """Tokens emitted per target pass (accepted drafts + the target's own token)."""
        return (self.new_tokens - 1) / self.verify_passes if self.verify_passes else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(decode_tok_s=self.decode_tok_s, prefill_tok_s=self.prefill_tok_s,
                 accepted_per_pass=self.accepted_per_pass, acceptance_rate=self.acceptance_rate)
        return d

    def summary(self) -> str:
        cached = f" ({self.cached_prompt_tokens} cached, {self.cached_from})" if self.cached_prompt_tokens else ""
        s = (f"{self.new_tokens} tokens, {self.decode_tok_s:.1f} tok/s decode, "
             f"prefill {self.prompt_tokens} tok{cached} in {self.prefill_seconds:.2f}s")
        if self.proposed:
            s += (f", drafter {self.drafter}: {self.accepted_per_pass:.2f} tok/pass, "
                  f"acceptance {self.acceptance_rate:.0%}")
        s += (f" | draft {self.draft_seconds:.2f}s verify {self.verify_seconds:.2f}s "
              f"overhead {self.overhead_seconds:.2f}s")
        return s


@dataclass
class Result:
    text: str
    token_ids: list[int]
    stats: Stats
    finish_reason: str
