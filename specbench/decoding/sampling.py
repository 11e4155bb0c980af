"""The logit transform shared by target and draft (one function, so p and q are always comparable).

``probs = softmax(top_p(top_k(logits / T)))``; ``T = 0`` means greedy and yields the one-hot
distribution of the argmax, so acceptance rules see the same p that greedy decoding follows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """Temperature / top-k / top-p. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def warp(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Probabilities ``[..., V]`` after the transform (float32, rows sum to 1)."""
    logits = logits.float()
    if s.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, -1).cumsum(-1)
        # drop a token when the mass BEFORE it already reaches top_p (the first token always stays)
        drop_sorted = (cum - torch.softmax(sorted_logits, -1)) >= s.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.softmax(logits, -1)


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``probs`` (``[V]`` → scalar tensor, ``[n, V]`` → ``[n]``)."""
    if probs.dim() == 1:
        return torch.multinomial(probs, 1, generator=generator)[0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def next_token(logits: torch.Tensor, s: Sampling, generator: torch.Generator) -> int:
    """The next token from last-position ``logits [V]``: argmax when greedy (fast path), else a draw."""
    if s.greedy:
        return int(logits.argmax())
    return int(sample(warp(logits, s), generator))
