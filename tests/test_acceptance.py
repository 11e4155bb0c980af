"""Invariants of the chain acceptance rules (methods.md §1, §2, §6): statistical, fixed seeds."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from specbench.decoding.acceptance import exact, greedy, make_beta, ratio_rule

V = 8
N = 20000


def _dists(seed: int, gamma: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(gamma + 1, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(gamma, V, generator=g) * 1.5, -1)
    return p, q


def _first_tokens(rule, p: torch.Tensor, q: torch.Tensor, seed: int) -> torch.Tensor:
    """The first emitted token of many rounds: x_1 if accepted else the correction."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(N, dtype=torch.long)
    for i in range(N):
        drafts = torch.stack([torch.multinomial(q[j], 1, generator=g)[0] for j in range(q.shape[0])])
        v = rule(p, q, drafts, g)
        out[i] = drafts[0] if v.accepted >= 1 else v.token
    return out


def _chi2_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=V).double()
    expected = probs.double() / probs.double().sum() * samples.numel()
    keep = expected > 0
    expected = expected * counts[keep].sum() / expected[keep].sum()  # scipy wants equal totals exactly
    assert counts[~keep].sum() == 0, "a token with zero target probability was emitted"
    return float(chisquare(counts[keep].numpy(), expected[keep].numpy()).pvalue)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_emits_target_distribution(seed: int) -> None:
    p, q = _dists(seed, gamma=3)
    assert _chi2_pvalue(_first_tokens(exact, p, q, seed), p[0]) > 1e-3


def test_exact_second_position_also_target_distributed() -> None:
    """Given the first draft was accepted, the second emitted token still follows p_2."""
    p, q = _dists(5, gamma=2)
    g = torch.Generator().manual_seed(5)
    seconds = []
    for _ in range(N):
        drafts = torch.stack([torch.multinomial(q[j], 1, generator=g)[0] for j in range(2)])
        v = exact(p, q, drafts, g)
        if v.accepted >= 1:
            seconds.append(int(drafts[1]) if v.accepted >= 2 else v.token)
    assert _chi2_pvalue(torch.tensor(seconds), p[1]) > 1e-3


def test_wrong_residual_would_be_caught() -> None:
    """The chi-square test has power: resampling from p instead of the residual is detected."""
    p, q = _dists(0, gamma=3)

    def buggy(p_, q_, drafts, g):
        v = exact(p_, q_, drafts, g)
        if v.accepted < drafts.numel():
            return type(v)(v.accepted, int(torch.multinomial(p_[v.accepted], 1, generator=g)[0]))
        return v

    assert _chi2_pvalue(_first_tokens(buggy, p, q, 0), p[0]) < 1e-6


def test_beta_zero_equals_exact_under_same_stream() -> None:
    p, q = _dists(3, gamma=4)
    beta0 = make_beta(0.0)
    for s in range(300):
        drafts = torch.multinomial(q, 1, generator=torch.Generator().manual_seed(s))[:, 0]
        a = exact(p, q, drafts, torch.Generator().manual_seed(1000 + s))
        b = beta0(p, q, drafts, torch.Generator().manual_seed(1000 + s))
        assert a == b


def test_beta_one_accepts_everything_so_output_follows_draft() -> None:
    p, q = _dists(4, gamma=3)
    rule = make_beta(1.0)
    g = torch.Generator().manual_seed(4)
    firsts = []
    for _ in range(N):
        drafts = torch.stack([torch.multinomial(q[j], 1, generator=g)[0] for j in range(3)])
        v = rule(p, q, drafts, g)
        assert v.accepted == 3
        firsts.append(int(drafts[0]))
    assert _chi2_pvalue(torch.tensor(firsts), q[0]) > 1e-3


def test_beta_acceptance_grows_with_beta() -> None:
    p, q = _dists(6, gamma=4)
    rates = []
    for beta in (0.0, 0.2, 0.4):
        g = torch.Generator().manual_seed(6)
        total = 0
        for _ in range(3000):
            drafts = torch.stack([torch.multinomial(q[j], 1, generator=g)[0] for j in range(4)])
            total += ratio_rule(p, q, drafts, g, beta).accepted
        rates.append(total)
    assert rates[0] < rates[1] < rates[2]


def test_exact_acceptance_rate_matches_theory() -> None:
    """P(accept x_1) = α = Σ_v min(p(v), q(v))."""
    p, q = _dists(7, gamma=1)
    alpha = float(torch.minimum(p[0], q[0]).sum())
    g = torch.Generator().manual_seed(7)
    acc = sum(exact(p, q, torch.multinomial(q[0], 1, generator=g), g).accepted for _ in range(N)) / N
    assert abs(acc - alpha) < 4 * (alpha * (1 - alpha) / N) ** 0.5 + 1e-3


def test_greedy_rule() -> None:
    p = torch.eye(V)[[2, 5, 1, 7]]  # argmax per position: 2, 5, 1, bonus 7
    q = torch.full((3, V), 1.0 / V)
    g = torch.Generator().manual_seed(0)
    assert greedy(p, q, torch.tensor([2, 5, 1]), g).__dict__ == {"accepted": 3, "token": 7}
    assert greedy(p, q, torch.tensor([2, 4, 1]), g).__dict__ == {"accepted": 1, "token": 5}
    assert greedy(p, q, torch.tensor([0, 5, 1]), g).__dict__ == {"accepted": 0, "token": 2}


def test_exact_with_one_hot_distributions_is_greedy() -> None:
    """Under temperature 0 both p and q are one-hot: the exact rule must behave as the greedy rule."""
    g = torch.Generator().manual_seed(0)
    for s in range(200):
        gg = torch.Generator().manual_seed(s)
        p = torch.eye(V)[torch.randint(0, V, (4,), generator=gg)]
        drafts = torch.where(torch.rand(3, generator=gg) < 0.6, p[:3].argmax(-1), torch.randint(0, V, (3,), generator=gg))
        q = torch.eye(V)[drafts]
        assert exact(p, q, drafts, g) == greedy(p, q, drafts, g)
