"""THE generation loop shared by every decoder.

A decoder is a proposer × an acceptance rule. Each round feeds the last emitted token (the root) plus
the proposer's candidate nodes to the target in ONE forward (a chain causally; a tree with its tree
mask and depth positions), gets p after every node, lets the rule pick the accepted path and emit one
more token, and compacts the target cache to that path (a crop for chains). The autoregressive
baseline is the same loop with no proposer: one forward, one token. Repetition-aware sampling
(``sampling.repetition``, methods.md §7) is applied here to the target's distribution at every
position: p' given the generated tokens, plus, after a candidate node, the candidates on its path.
Timings bracket prefill and loop with device synchronisation, so GPU numbers measure finished work.
"""

from __future__ import annotations

import time

import torch

from specbench.decoding.acceptance import ChainRule
from specbench.decoding.proposers import Proposer
from specbench.decoding.sampling import Sampling, next_token, repetition_mask, tree_histories, warp
from specbench.decoding.stats import DecodeStats
from specbench.decoding.tree_rules import TreeRule, as_tree_rule
from specbench.device import synchronize
from specbench.targets.base import Context, TargetModel


@torch.inference_mode()
def generate(
    target: TargetModel,
    ctx: Context,
    sampling: Sampling,
    max_tokens: int,
    generator: torch.Generator,
    proposer: Proposer | None = None,
    rule: TreeRule | ChainRule | None = None,
    profile: bool = False,
) -> tuple[torch.Tensor, DecodeStats]:
    """Decode speech tokens after the context (text + speaker prompt) until EOS or ``max_tokens``.

    Returns the generated tokens (EOS excluded, on CPU) and their :class:`DecodeStats`; a round counts
    when it emits at least one speech token (the prefill's first token is round 1), so the baseline's
    mean accepted length is exactly 1. All randomness comes from ``generator``. ``profile`` also
    times every target forward and every proposal (with device sync), so that the loop's own
    overhead = loop_seconds − target_seconds − draft_seconds can be reported (benchmarks only).
    """
    if (proposer is None) != (rule is None):
        raise ValueError("a proposer needs an acceptance rule (and the baseline neither)")
    device = target.device
    stats = DecodeStats()
    depth = nodes = 0
    if proposer is not None:
        tree_rule = as_tree_rule(rule)  # type: ignore[arg-type]
        shape = proposer.shape
        depth, nodes = shape.max_depth, shape.size
        stats.accept_at_pos = [0] * depth
        mask = None if shape.is_chain else shape.mask(device)
        offsets = shape.position_offsets(device)
    synchronize(device)
    t0 = time.perf_counter()
    capacity = max_tokens + nodes + 1  # slots after the context: every emitted token plus one round's nodes
    logits, hidden, cache = target.prefill(ctx, capacity=capacity)
    synchronize(device)
    t1 = time.perf_counter()
    eos = target.eos
    out: list[int] = []
    last = next_token(logits, sampling, generator)
    if last == eos:
        stats.hit_eos = True
    else:
        out.append(last)
        stats.rounds = 1
        if proposer is not None:
            proposer.begin(target.draft_context(ctx, cache), last, capacity)
    step = torch.empty(1, dtype=torch.long, device=device)
    while not stats.hit_eos and len(out) < max_tokens:
        if proposer is None:
            step.fill_(last)
            ta = _tick(profile, device)
            logits, _ = target.step(step, cache)
            stats.target_seconds += _tick(profile, device) - ta
            stats.target_calls += 1
            emitted = [next_token(logits[-1], sampling, generator, out)]
        else:
            ta = _tick(profile, device)
            prop = proposer.propose(last, hidden, sampling, generator, out)
            tb = _tick(profile, device)
            base = cache.length
            if mask is None:
                logits, hid = target.step(prop.tokens, cache)
            else:
                logits, hid = target.step(prop.tokens, cache, depths=offsets, tree_mask=mask)
            stats.target_seconds += _tick(profile, device) - tb
            stats.draft_seconds += tb - ta
            stats.target_calls += 1
            over = None
            if sampling.repetition is not None:  # RAS: p' after node i sees out (root last) + node i's path
                hists = tree_histories(out, prop.tokens.tolist(), prop.shape.parents, sampling)
                over = repetition_mask(hists, sampling, logits.shape[-1], logits.device)
            verdict = tree_rule(warp(logits, sampling, over), prop, generator)
            path = verdict.path
            if mask is None:
                cache.crop(base + 1 + len(path))  # keep the root and the accepted drafts
            else:
                cache.keep(list(range(base + 1)) + [base + i for i in path])
            hidden = hid[path[-1] if path else 0]
            proposer.commit(path, verdict.token)
            stats.proposed += depth
            stats.accepted += len(path)
            for i in range(len(path)):
                stats.accept_at_pos[i] += 1
            emitted = prop.tokens[path].tolist() + [verdict.token]
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


@torch.inference_mode()
def teacher_forced_tokens(target: TargetModel, ctx: Context, codes: torch.Tensor) -> torch.Tensor:
    """The target's argmax at every step of ``codes`` given the TRUE history (teacher forcing).

    ``x̂_t = argmax_{v < speech_vocab} p(v | text, prompt, codes_{<t})`` for ``t = 0..len(codes)-1``, in one
    full-sequence forward; EOS is excluded so the output has exactly ``len(codes)`` speech tokens. No error
    can accumulate, so the decoded audio scores what the model's per-step predictions are worth: an upper
    bound for free-running greedy decoding, which separates "the model predicts badly" from "its own
    mistakes derail it" (the gap between this row and ``baseline``). Returns tokens on CPU.
    """
    logits, _ = target.score(ctx, codes)
    return logits[: codes.numel(), : target.speech_vocab].argmax(-1).cpu()
