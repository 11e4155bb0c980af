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
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from specbench.decoding.sampling import sample

if TYPE_CHECKING:
    from specbench.decoding.groups import Groups

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


GROUP_RESIDUALS = ("thinning", "exact")


def _ratio(pk: torch.Tensor, qk: torch.Tensor) -> torch.Tensor:
    """min(1, P/Q) with the guards of :func:`ratio_rule` (same ops, so singleton groups match it bit for bit)."""
    r = torch.where(qk > 0, pk / qk.clamp(min=1e-30), (pk > 0).to(pk.dtype))
    return r.clamp(max=1.0)


def _group_residual_exact(pj: torch.Tensor, qj: torch.Tensor, groups: Groups, generator: torch.Generator) -> tuple[int, int]:
    """(t', k') with k' ~ norm(max(0, P_c − Q_c)) over all labels, then t' ∝ p_j(t') w_{k',t'} on G_{k'}.

    One draw over the full label space, a second only when |G_{k'}| > 1; (t' ~ p_j, −1) when the
    coarse residual has no mass. With singleton groups this is the residual draw of :func:`ratio_rule`.
    """
    residual = (groups.coarse(pj) - groups.coarse(qj)).clamp(min=0.0)
    mass = float(residual.sum())
    if mass > RESIDUAL_EPS:
        k = int(sample(residual / mass, generator))
        return groups.sample_member(pj, k, generator), k
    return int(sample(pj, generator)), -1


def _group_residual(pj: torch.Tensor, qj: torch.Tensor, groups: Groups, generator: torch.Generator, residual: str, max_tries: int) -> tuple[int, int]:
    """The correction (token, label) after a rejected group-level draft, by thinning or exactly.

    Thinning: draw t' ~ p_j and k' ~ w_{·,t'} — jointly (t', k') ∝ p_j(t') w_{k',t'}, so k' ~ P_c and
    t' | k' ∝ p_j(t') w_{k',t'} on G_{k'} — and keep the pair with probability max(0, 1 − Q_c(k')/P_c(k')).
    A kept k' is then distributed ∝ P_c(k')·(1 − Q_c(k')/P_c(k'))⁺ = (P_c − Q_c)⁺(k'), the coarse residual,
    and t' has the required conditional. Each try succeeds with probability TV(P_c, Q_c); after
    ``max_tries`` failures the exact sparse residual is drawn, which leaves the output law unchanged.
    Each try costs two gathers over one group instead of two passes over all nnz memberships.
    """
    if residual == "thinning":
        for _ in range(max_tries):
            t = int(sample(pj, generator))
            k = groups.sample_label(t, generator)
            pk, qk = groups.mass_tensor(pj, k), groups.mass_tensor(qj, k)
            keep = (1.0 - qk / pk).clamp(min=0.0) if float(pk) > 0 else pk.new_zeros(())
            if bool(torch.rand((), generator=generator, device=pj.device) < keep):
                return t, k
    return _group_residual_exact(pj, qj, groups, generator)


def group_rule(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    generator: torch.Generator,
    groups: Groups,
    residual: Literal["thinning", "exact"] = "thinning",
    max_tries: int = 64,
    labels: list[int] | None = None,
) -> Verdict:
    """PCG: speculative sampling over Acoustic Similarity Groups (methods.md §4).

    With W the group weights (columns sum to 1), P_c = W p_i and Q_c = W q_i are distributions over
    group labels, P_c(k) = Σ_{t∈G_k} w_{k,t} p_i(t). u_i ~ U[0, 1) are drawn for all γ positions up
    front. For i = 1..γ, with x_i ~ q_i the draft: sample a label k ~ w_{·,x_i} (no draw when
    |S(x_i)| = 1) — so k ~ Q_c — and accept x_i iff u_i < min(1, P_c(k)/Q_c(k)) (each computed by
    gathering G_k only). At the first rejection j emit t' where k' ~ norm(max(0, P_c − Q_c)) and
    t' ∝ p_j(t') w_{k',t'} on G_{k'} (``residual``: ``thinning`` or ``exact``, see
    :func:`_group_residual`; p_j itself when the coarse residual has no mass); when all γ are
    accepted emit the bonus y ~ p_{γ+1}.

    Guarantee: the label behind each emitted token is distributed exactly as P_c (rejection sampling
    on labels, as in Leviathan et al. 2023); the token is not target-distributed (an accepted draft is
    ∝ q(t) w_{k,t} within its group). Acceptance per position α_c = 1 − TV(P_c, Q_c) ≥ 1 − TV(p, q)
    (W is a Markov kernel: data processing). Singleton groups (θ ≥ 1) with ``residual="exact"``
    consume the generator exactly like :func:`exact` and return the same verdicts.

    ``labels``, when given, receives the label behind each emitted token in order: k for each
    accepted draft, k' for the correction, −1 for a token drawn from p directly (bonus, no-mass
    fallback). ``groups`` must live on p's device (:meth:`Groups.to`).
    """
    if residual not in GROUP_RESIDUALS:
        raise ValueError(f"unknown group residual '{residual}': use one of {', '.join(GROUP_RESIDUALS)}")
    gamma = drafts.numel()
    n = gamma
    if gamma:
        u = torch.rand(gamma, generator=generator, device=p.device)
        for i in range(gamma):
            k = groups.sample_label(int(drafts[i]), generator)
            # x_i ~ q_i and w_{k,x_i} > 0 give Q_c(k) > 0; _ratio guards numerically dead drafts anyway
            if not bool(u[i] < _ratio(groups.mass_tensor(p[i], k), groups.mass_tensor(q[i], k))):
                n = i
                break
            if labels is not None:
                labels.append(k)
    if n < gamma:
        token, label = _group_residual(p[n], q[n], groups, generator, residual, max_tries)
        if labels is not None:
            labels.append(label)
        return Verdict(n, token)
    if labels is not None:
        labels.append(-1)
    return Verdict(gamma, int(sample(p[gamma], generator)))


def make_group(groups: Groups, residual: Literal["thinning", "exact"] = "thinning", max_tries: int = 64) -> ChainRule:
    """The PCG rule over fixed ``groups`` (a named callable, e.g. ``group_0.45_thinning``).

    The groups are moved to p's device on first use and reused (:meth:`Groups.on`).
    """
    if residual not in GROUP_RESIDUALS:
        raise ValueError(f"unknown group residual '{residual}': use one of {', '.join(GROUP_RESIDUALS)}")
    if max_tries < 0:
        raise ValueError(f"max_tries must be >= 0, got {max_tries}")

    def group(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator: torch.Generator) -> Verdict:
        return group_rule(p, q, drafts, generator, groups.on(p.device), residual, max_tries)

    group.__name__ = f"group_{groups.theta:g}_{residual}"
    return group


def build_rule(name: str, beta: float = 0.0) -> ChainRule:
    """The chain rule named in a decoder config (``exact`` | ``greedy`` | ``beta``)."""
    if name == "exact":
        return exact
    if name == "greedy":
        return greedy
    if name == "beta":
        return make_beta(beta)
    raise ValueError(f"unknown chain rule '{name}'")
