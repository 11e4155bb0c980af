"""Acceptance rules for chain speculative decoding: pure functions of tensors and a torch.Generator.

Contract (every rule): ``rule(p, q, drafts, generator) -> Verdict`` where ``drafts`` ``[γ]`` are the
draft tokens, ``q`` ``[γ, V]`` the draft distributions they were proposed under, and ``p`` ``[γ+1, V]``
the target distributions at the γ draft positions plus the bonus position, all after the SAME logit
transform (:func:`specbench.decoding.sampling.warp`). The verdict is the number ``n`` of leading drafts
accepted and the one token emitted after them (a correction at position n, or the bonus from p_γ).
No model inside, so the rules are tested exhaustively on synthetic distributions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from specbench.decoding.sampling import sample

RESIDUAL_EPS = 1e-9


@dataclass(frozen=True)
class Verdict:
    """``accepted`` leading draft tokens are kept, then ``token`` is emitted."""

    accepted: int
    token: int


class ChainRule(Protocol):
    """Signature shared by the chain rules."""

    def __call__(self, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator) -> Verdict: ...


def ratio_rule(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator, beta: float = 0.0) -> Verdict:
    """Speculative sampling with an optional additive relaxation β (SSD).

    For i = 1..γ accept x_i iff u_i < min(1, p_i(x_i) / q_i(x_i)) + β, with u_i ~ U[0, 1) drawn for all
    positions up front. At the first rejection j emit y ~ norm(max(0, p_j − q_j)) (p_j itself when that
    residual has no mass); when all γ are accepted emit the bonus y ~ p_{γ+1}. β = 0 is lossless (the
    output is distributed exactly as p, Leviathan et al. 2023); β ≥ 1 accepts every draft.
    """
    gamma = drafts.numel()
    if gamma:
        u = torch.rand(gamma, generator=generator, device=p.device)
        idx = torch.arange(gamma, device=p.device)
        px, qx = p[idx, drafts], q[idx, drafts]
        # x_i was drawn from q_i, so q_i(x_i) > 0; the clamp only guards numerically dead drafts
        ratio = torch.where(qx > 0, px / qx.clamp(min=1e-30), (px > 0).float())
        ok = u < ratio.clamp(max=1.0) + beta
        n = int(ok.to(torch.int64).cumprod(0).sum())
    else:
        n = 0
    if n < gamma:
        residual = (p[n] - q[n]).clamp(min=0.0)
        mass = float(residual.sum())
        dist = residual / mass if mass > RESIDUAL_EPS else p[n]
        return Verdict(n, int(sample(dist, generator)))
    return Verdict(gamma, int(sample(p[gamma], generator)))


def exact(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator) -> Verdict:
    """Lossless speculative sampling: :func:`ratio_rule` with β = 0."""
    return ratio_rule(p, q, drafts, generator, 0.0)


def greedy(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator) -> Verdict:
    """Accept x_i iff x_i = argmax p_i; emit argmax p at the first mismatch (or the bonus position).

    Lossless with respect to greedy decoding; uses no randomness.
    """
    gamma = drafts.numel()
    top = p.argmax(-1)
    match = (top[:gamma] == drafts).to(torch.int64)
    n = int(match.cumprod(0).sum()) if gamma else 0
    return Verdict(n, int(top[n]))


def make_beta(beta: float) -> ChainRule:
    """The SSD rule with a fixed β (a named callable so records can say which β ran)."""

    def beta_rule(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator) -> Verdict:
        return ratio_rule(p, q, drafts, generator, beta)

    beta_rule.__name__ = f"beta_{beta:g}"
    return beta_rule


def build_rule(name: str, beta: float = 0.0) -> ChainRule:
    """The chain rule named in a decoder config (``exact`` | ``greedy`` | ``beta``)."""
    if name == "exact":
        return exact
    if name == "greedy":
        return greedy
    if name == "beta":
        return make_beta(beta)
    raise ValueError(f"unknown chain rule '{name}'")
