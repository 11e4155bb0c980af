"""THE generation loop shared by every decoder.

A decoder is a proposer × an acceptance rule. Each round feeds the last emitted token plus the γ
drafted tokens to the target in ONE forward, gets p for the γ+1 positions, lets the rule keep n
drafts and emit one more token, and rolls the target cache (and the proposer) back to that prefix.
The autoregressive baseline is the same loop with no proposer (γ = 0): one forward, one token.
Timings bracket prefill and loop with device synchronisation, so GPU numbers measure finished work.
"""

from __future__ import annotations

import time

import torch

from specbench.decoding.acceptance import ChainRule
from specbench.decoding.proposers import DraftChainProposer
from specbench.decoding.sampling import Sampling, next_token, warp
from specbench.decoding.stats import DecodeStats
from specbench.device import synchronize
from specbench.models.codec_lm import CodecLM


@torch.inference_mode()
def generate(
    target: CodecLM,
    text_ids: torch.Tensor,
    prompt: torch.Tensor,
    sampling: Sampling,
    max_tokens: int,
    generator: torch.Generator,
    proposer: DraftChainProposer | None = None,
    rule: ChainRule | None = None,
    gamma: int = 0,
    profile: bool = False,
) -> tuple[torch.Tensor, DecodeStats]:
    """Decode speech tokens after ``[text][SEP][prompt]`` until EOS or ``max_tokens``.

    Returns the generated tokens (EOS excluded, on CPU) and their :class:`DecodeStats`; a round counts
    when it emits at least one speech token (the prefill's first token is round 1), so the baseline's
    mean accepted length is exactly 1. All randomness comes from ``generator``. ``profile`` also
    times every target forward and every proposal (with device sync), so that the loop's own
    overhead = loop_seconds − target_seconds − draft_seconds can be reported (benchmarks only).
    """
    if (proposer is None) != (rule is None) or (proposer is not None and gamma < 1):
        raise ValueError("a proposer needs an acceptance rule and gamma >= 1 (and the baseline neither)")
    device = target.head.weight.device
    text_ids, prompt = text_ids.to(device), prompt.to(device)
    stats = DecodeStats()
    if proposer is not None:
        stats.accept_at_pos = [0] * gamma
    synchronize(device)
    t0 = time.perf_counter()
    capacity = text_ids.numel() + prompt.numel() + max_tokens + gamma + 2
    logits, _, cache = target.prefill(text_ids, prompt, capacity=capacity)
    synchronize(device)
    t1 = time.perf_counter()
    eos = target.cfg.eos
    out: list[int] = []
    last = next_token(logits, sampling, generator)
    if last == eos:
        stats.hit_eos = True
    else:
        out.append(last)
        stats.rounds = 1
        if proposer is not None:
            proposer.begin(text_ids, prompt, last, capacity)
    step = torch.empty(1, dtype=torch.long, device=device)
    while not stats.hit_eos and len(out) < max_tokens:
        if proposer is None:
            step.fill_(last)
            ta = _tick(profile, device)
            logits, _ = target(step, cache)
            stats.target_seconds += _tick(profile, device) - ta
            stats.target_calls += 1
            emitted = [next_token(logits[-1], sampling, generator)]
        else:
            ta = _tick(profile, device)
            drafts, q = proposer.propose(gamma, sampling, generator)
            tb = _tick(profile, device)
            feed = torch.cat([torch.tensor([last], dtype=torch.long, device=device), drafts])
            logits, _ = target(feed, cache)
            stats.target_seconds += _tick(profile, device) - tb
            stats.draft_seconds += tb - ta
            stats.target_calls += 1
            verdict = rule(warp(logits, sampling), q, drafts, generator)  # type: ignore[misc]
            n = verdict.accepted
            cache.crop(cache.length - (gamma - n))  # keep `last` and the accepted drafts
            proposer.commit(n, verdict.token)
            stats.proposed += gamma
            stats.accepted += n
            for i in range(n):
                stats.accept_at_pos[i] += 1
            emitted = drafts[:n].tolist() + [verdict.token]
        added = 0
        for tok in emitted:
            if tok == eos:
                stats.hit_eos = True
                break
            out.append(tok)
            added += 1
            if len(out) >= max_tokens:
                break
        if added:
            stats.rounds += 1
        last = emitted[-1]
    synchronize(device)
    t2 = time.perf_counter()
    stats.tokens = len(out)
    stats.prefill_seconds = t1 - t0
    stats.loop_seconds = t2 - t1
    if proposer is not None:
        stats.draft_calls = proposer.calls
    return torch.tensor(out, dtype=torch.long), stats


def _tick(profile: bool, device: torch.device) -> float:
    """A synchronised timestamp when profiling (0.0 otherwise, so the sums stay 0)."""
    if not profile:
        return 0.0
    synchronize(device)
    return time.perf_counter()
