"""Per-utterance decoding statistics, named and defined as in docs/metrics.md."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DecodeStats:
    """Counters and timings of one generation.

    ``target_calls`` counts target forwards after prefill; ``rounds`` counts verify rounds (for the
    autoregressive baseline every call is a round that emits one token). ``proposed``/``accepted`` count
    draft tokens; ``accept_at_pos[i]`` counts rounds whose i-th draft token was accepted.
    ``lm_seconds`` = prefill + loop, measured with device synchronisation.
    """

    tokens: int = 0
    target_calls: int = 0
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    accept_at_pos: list[int] = field(default_factory=list)
    draft_calls: int = 0
    target_seconds: float = 0.0
    draft_seconds: float = 0.0
    prefill_seconds: float = 0.0
    loop_seconds: float = 0.0
    hit_eos: bool = False

    @property
    def lm_seconds(self) -> float:
        return self.prefill_seconds + self.loop_seconds

    @property
    def mean_accepted_len(self) -> float:
        """tokens / rounds, bonus token included (baseline = 1.0)."""
        return self.tokens / self.rounds if self.rounds else 0.0

    @property
    def draft_accept_rate(self) -> float | None:
        """accepted / proposed draft tokens (None without a drafter)."""
        return self.accepted / self.proposed if self.proposed else None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.lm_seconds if self.lm_seconds > 0 else 0.0

    def to_row(self) -> dict[str, Any]:
        """Flat dict for records.jsonl (raw counters plus derived metrics)."""
        row = asdict(self)
        row.update(
            lm_seconds=self.lm_seconds,
            mean_accepted_len=self.mean_accepted_len,
            draft_accept_rate=self.draft_accept_rate,
            tokens_per_s=self.tokens_per_s,
        )
        return row
