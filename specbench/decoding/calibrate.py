"""Sparse-tree calibration (VADUSA's "TTS-oriented" tree, methods.md §3).

1. ``acc_d(r)`` = P(the rank-r candidate of head d is accepted | its parent is on the accepted path)
   under a chosen acceptance rule, measured along the target's own generations on held-out utterances:
   the target decodes x_1..x_T; one teacher-forced pass gives the target's p after every prefix and its
   hidden states; the heads' candidates at every position are scored with the rule's EXPECTED
   acceptance (:func:`specbench.decoding.tree_rules.expected_acceptance`, no sampling noise).
2. The tree grows greedily: the frontier holds the children of nodes already in the tree, valued
   Π_d acc_d(r_d) along their path; the most valuable one joins until the node budget is spent.
   Expected accepted length (bonus included) = 1 + Σ_nodes value (independence approximation).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from specbench.atomic import atomic_path
from specbench.decoding.generate import generate
from specbench.decoding.sampling import Sampling, repetition_mask, warp
from specbench.decoding.tree import TreeShape
from specbench.decoding.tree_rules import expected_acceptance
from specbench.targets.base import Context, TargetModel


@torch.inference_mode()
def head_acceptance(
    target: TargetModel,
    heads: Any,
    items: Iterable[Context],
    sampling: Sampling,
    rule: str,
    *,
    tau: int = 1,
    mode: str = "sample",
    max_rank: int = 8,
    max_tokens: int = 600,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """``acc [K, R]`` (mean expected acceptance of head k's rank-r candidate) and the positions used.

    For generated tokens x_1..x_T let H_j be the target state that predicts x_{j+1} (H_0 from the
    prefill) and P_j = warp(LM head(H_j)) (with repetition-aware sampling: p' given x_1..x_j, the
    distribution the loop verifies against). Head k at H_j proposes x_{j+2+k}; its parent on the path is
    x_{j+1+k}, so its candidate c is judged against P_{j+1+k}. Autoregressive heads condition on
    x_{j+1+k} (the parent token along the path).
    """
    dev = target.device
    hdtype = next(heads.parameters()).dtype
    emb = target.speech_embeddings().detach().to(hdtype) if heads.cfg.autoregressive else None
    k_heads = heads.cfg.n_heads
    total = torch.zeros(k_heads, max_rank, device=dev)
    count = torch.zeros(k_heads, device=dev)
    for i, ctx in enumerate(items):
        gen = torch.Generator(device=dev).manual_seed(seed + i)
        toks, _ = generate(target, ctx, sampling, max_tokens, gen)
        toks = toks.to(dev)
        t = toks.numel()
        if t < 2:
            continue
        logits0, h0, cache = target.prefill(ctx, capacity=t + 2)
        logits, hid = target.step(toks, cache)
        hidden = torch.cat([h0[None], hid]).to(hdtype)  # H_0..H_T
        all_logits = torch.cat([logits0[None], logits])
        over = None
        if sampling.repetition is not None:
            hist = toks.tolist()
            over = repetition_mask([hist[:j] for j in range(t + 1)], sampling, all_logits.shape[-1], dev)
        p = warp(all_logits, sampling, over)  # P_0..P_T
        for k in range(k_heads):
            n = t - 1 - k  # positions j = 0..t-2-k keep the parent x_{j+1+k} inside the generation
            if n <= 0:
                continue
            prev = None if emb is None else emb[toks[k : k + n]]
            cand = torch.topk(heads.head_logits(hidden[:n], k, prev), max_rank, dim=-1).indices  # [n, R]
            parent_p = p[1 + k : 1 + k + n]  # P_{j+1+k}
            acc = expected_acceptance(rule, parent_p[:, None, :].expand(-1, max_rank, -1), cand, tau=tau, mode=mode)
            total[k] += acc.sum(0)
            count[k] += n
    return (total / count.clamp(min=1)[:, None]).cpu(), int(count[0].item())


def grow_tree(acc: torch.Tensor, budget: int) -> tuple[list[tuple[int, ...]], float]:
    """Greedy best-first tree of ``budget`` nodes from ``acc [K, R]``; returns (paths, expected length).

    A path (r_1..r_d) is worth Π_i acc[i-1, r_i]; only children of included nodes are candidates.
    """
    k_heads, ranks = acc.shape
    vals = acc.tolist()
    frontier: list[tuple[float, tuple[int, ...]]] = [(-vals[0][r], (r,)) for r in range(ranks)]
    heapq.heapify(frontier)
    paths: list[tuple[int, ...]] = []
    expected = 1.0
    while frontier and len(paths) < budget:
        neg, path = heapq.heappop(frontier)
        paths.append(path)
        expected += -neg
        d = len(path)
        if d < k_heads:
            for r in range(ranks):
                heapq.heappush(frontier, (neg * vals[d][r], path + (r,)))
    return paths, expected


def save_tree(path: str | Path, shape: TreeShape, meta: dict[str, Any]) -> None:
    """Write a tree file (JSON: name, paths and calibration metadata) atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump({**shape.to_dict(), **meta}, f, indent=1)
