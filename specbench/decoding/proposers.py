"""Proposers: what drafts candidate tokens for the target to verify.

Contract: ``begin(text_ids, prompt, first_token, capacity)`` once per utterance after the target's
prefill emitted ``first_token``; then per round ``propose(gamma, sampling, generator) -> (drafts [γ],
q [γ, V])`` and, after verification, ``commit(accepted, token)`` so the proposer's own state follows
the accepted prefix and the emitted token. ``sampled`` says whether candidates are drawn from q (ratio
rules allowed) or chosen deterministically (only match-based rules are lossless then).
"""

from __future__ import annotations

import torch

from specbench.decoding.sampling import Sampling, sample, warp
from specbench.models.codec_lm import CodecLM, KVCache


class DraftChainProposer:
    """A separate (smaller) codec LM drafting γ tokens autoregressively, with its own KV cache.

    After a round its cache holds everything up to the last token it has consumed; tokens it has not
    consumed yet (the emitted token, and the last draft when all γ were accepted) wait in ``pending``
    and are fed in one forward at the start of the next round.
    """

    sampled = True

    def __init__(self, draft: CodecLM) -> None:
        self.draft = draft
        self.cache: KVCache | None = None
        self.pending: list[int] = []
        self._drafts: list[int] = []
        self._base = 0
        self.calls = 0

    def begin(self, text_ids: torch.Tensor, prompt: torch.Tensor, first_token: int, capacity: int) -> None:
        """Prefill the draft on the same context as the target."""
        _, _, self.cache = self.draft.prefill(text_ids, prompt, capacity)
        self.pending = [first_token]
        self.calls = 0

    def propose(self, gamma: int, sampling: Sampling, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft ``gamma`` tokens x_i ~ q_i (argmax when greedy); returns them and q ``[γ, V]``."""
        assert self.cache is not None, "begin() must run before propose()"
        device = self.draft.head.weight.device
        self._base = self.cache.length
        feed = torch.tensor(self.pending, dtype=torch.long, device=device)
        self._fed_pending = len(self.pending)
        qs, drafts = [], []
        for i in range(gamma):
            logits, _ = self.draft(feed, self.cache)
            self.calls += 1
            q = warp(logits[-1], sampling)
            tok = int(q.argmax()) if sampling.greedy else int(sample(q, generator))
            qs.append(q)
            drafts.append(tok)
            if i < gamma - 1:
                feed = torch.tensor([tok], dtype=torch.long, device=device)
        self._drafts = drafts
        return torch.tensor(drafts, dtype=torch.long, device=device), torch.stack(qs) if qs else torch.empty(0, device=device)

    def commit(self, accepted: int, token: int) -> None:
        """Roll the draft cache back to the accepted prefix; queue what it has not consumed."""
        assert self.cache is not None
        gamma = len(self._drafts)
        consumed = min(accepted, gamma - 1) if gamma else 0  # the draft never consumed its last draft
        self.cache.crop(self._base + self._fed_pending + consumed)
        self.pending = ([self._drafts[-1]] if gamma and accepted == gamma else []) + [token]
