"""Proposers: what drafts candidate tokens for the target to verify.

Contract: ``begin(ctx, first_token, capacity)`` once per utterance after the target's
prefill emitted ``first_token``; then per round ``propose(root, hidden, sampling, generator, history) ->
Proposal`` where ``root`` is the token emitted last (not yet in the target cache), ``hidden`` the
target's last hidden state that produced it and ``history`` the generated tokens so far (root last;
read only by repetition-aware sampling: a sampled node's q is q' given ``history`` plus the candidates
on its path, methods.md §7); after verification ``commit(path, token)`` so the
proposer's own state follows the accepted nodes and the emitted token. ``sampled`` says whether
candidates are drawn from the q they carry (ratio rules allowed) or chosen deterministically (only
match-based rules are lossless then); ``calls`` counts drafter forwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, Protocol

import torch

from specbench.decoding.sampling import Sampling, repetition_mask, sample, tree_histories, warp
from specbench.decoding.tree import Proposal, TreeShape, chain_shape
from specbench.targets.base import Context, TargetCache, TargetModel

if TYPE_CHECKING:
    from specbench.models.heads import DraftHeads


class Proposer(Protocol):
    """What the generate loop needs from a drafter."""

    shape: TreeShape
    sampled: bool
    calls: int

    def begin(self, ctx: Context, first_token: int, capacity: int) -> None: ...

    def propose(self, root: int, hidden: torch.Tensor, sampling: Sampling, generator: torch.Generator, history: Sequence[int] = ()) -> Proposal: ...

    def commit(self, path: list[int], token: int) -> None: ...


class DraftChainProposer:
    """A separate (smaller) codec LM of the same speech space drafting γ tokens autoregressively, with its own KV cache.

    After a round its cache holds everything up to the last token it has consumed; tokens it has not
    consumed yet (the emitted token, and the last draft when all γ were accepted) wait in ``pending``
    and are fed in one forward at the start of the next round.
    """

    sampled = True

    def __init__(self, draft: TargetModel, gamma: int = 3, alignment: Literal["target", "own"] = "target") -> None:
        if gamma < 1:
            raise ValueError("gamma must be >= 1")
        if alignment not in ("target", "own"):
            raise ValueError(f"alignment must be target or own, not {alignment!r}")
        self.draft = draft
        self.gamma = gamma
        self.alignment = alignment
        self.shape = chain_shape(gamma)
        self.cache: TargetCache | None = None
        self.pending: list[int] = []
        self._drafts: list[int] = []
        self._base = 0
        self.calls = 0

    def begin(self, ctx: Context, first_token: int, capacity: int) -> None:
        """Prefill the draft on the target's draft context (``TargetModel.draft_context``); with
        ``alignment="own"`` an aligned draft predicts its own durations instead (an ablation)."""
        _, _, self.cache = self.draft.prefill(ctx if self.alignment == "target" else replace(ctx, durations=None), capacity)
        self.pending = [first_token]
        self.calls = 0

    def propose(self, root: int, hidden: torch.Tensor, sampling: Sampling, generator: torch.Generator, history: Sequence[int] = ()) -> Proposal:
        """Draft γ tokens x_i ~ q_i (argmax when greedy) as a one-path proposal ``[root, x_1..x_γ]``."""
        drafts, q = self.draft_chain(self.gamma, sampling, generator, history)
        device = drafts.device
        tokens = torch.cat([torch.tensor([root], dtype=torch.long, device=device), drafts])
        return Proposal(self.shape, tokens, torch.cat([torch.zeros_like(q[:1]), q]), sampled=True)

    def draft_chain(self, gamma: int, sampling: Sampling, generator: torch.Generator, history: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """Draft ``gamma`` tokens x_i ~ q_i (argmax when greedy); returns them and q ``[γ, V]``.

        With repetition-aware sampling q_i is q'_i given ``history`` + x_1..x_{i-1} (the draft's own
        chain), the rule the target's p'_i follows at verification.
        """
        assert self.cache is not None, "begin() must run before propose()"
        device = self.draft.device
        self._base = self.cache.length
        feed = torch.tensor(self.pending, dtype=torch.long, device=device)
        self._fed_pending = len(self.pending)
        qs, drafts = [], []
        w = sampling.repetition.window if sampling.repetition is not None else 0
        for i in range(gamma):
            logits, _ = self.draft.step(feed, self.cache)
            self.calls += 1
            over = repetition_mask([list(history[-w:]) + drafts], sampling, logits.shape[-1], device) if w else None
            q = warp(logits[-1], sampling, None if over is None else over[0])
            tok = int(q.argmax()) if sampling.greedy else int(sample(q, generator))
            qs.append(q)
            drafts.append(tok)
            if i < gamma - 1:
                feed = torch.tensor([tok], dtype=torch.long, device=device)
        self._drafts = drafts
        return torch.tensor(drafts, dtype=torch.long, device=device), torch.stack(qs) if qs else torch.empty(0, device=device)

    def commit(self, path: list[int], token: int) -> None:
        """Roll the draft cache back to the accepted prefix; queue what it has not consumed."""
        assert self.cache is not None
        accepted = len(path)
        gamma = len(self._drafts)
        consumed = min(accepted, gamma - 1) if gamma else 0  # the draft never consumed its last draft
        self.cache.crop(self._base + self._fed_pending + consumed)
        self.pending = ([self._drafts[-1]] if gamma and accepted == gamma else []) + [token]


class HeadsProposer:
    """Draft heads on the target's hidden state: a tree (or chain) of candidates in one round.

    Node at depth d takes a candidate of head d−1 (0-based) evaluated on ``hidden`` (the state that
    produced the root). ``candidates='topk'``: the node's rank-r token of that head (deterministic;
    autoregressive heads also condition on the parent's token, so siblings under different parents may
    differ). ``candidates='sample'``: every node's token is drawn from q = the warped distribution of its
    head (given its parent's token for autoregressive heads), so siblings are i.i.d. draws from one q:
    chains then admit the ratio rules (exact, beta, group) and trees the recursive-rejection ``exact``.
    Stateless between rounds: the heads need no cache.
    """

    def __init__(self, heads: DraftHeads, target: TargetModel, shape: TreeShape, candidates: str = "topk") -> None:
        if shape.max_depth > heads.cfg.n_heads:
            raise ValueError(f"tree {shape.name} is {shape.max_depth} deep but the heads checkpoint has {heads.cfg.n_heads} heads")
        if candidates not in ("topk", "sample"):
            raise ValueError("candidates must be 'topk' or 'sample'")
        self.heads, self.target, self.shape, self.candidates = heads, target, shape, candidates
        self.sampled = candidates == "sample"
        self.calls = 0
        dev = target.device
        param = next(heads.parameters())
        self._dtype = param.dtype
        # the target's speech-token embedding rows (speech space), read by autoregressive heads
        self._emb = target.speech_embeddings().detach().to(param.dtype) if heads.cfg.autoregressive else None
        # nodes grouped by depth, with their parents and ranks, precomputed once per shape
        self._levels = [
            (torch.tensor([i for i in range(1, len(shape.nodes)) if shape.depth[i] == d], device=dev), d, shape.max_rank(d))
            for d in range(1, shape.max_depth + 1)
        ]
        self._parents = torch.tensor(shape.parents, device=dev)
        self._ranks = torch.tensor(shape.ranks, device=dev)
        # plain top-k heads: every node's token in one function of h, compiled with the target's
        # ``model.compile`` (so heads and target run the same kind of path); one compiled function per
        # (heads, shape), shared by the proposers of every utterance
        self.compiled = bool(getattr(target, "compile", False)) and not heads.cfg.autoregressive
        self._topk_nodes = _compiled_topk(self) if self.compiled else self._topk_nodes_eager

    def begin(self, ctx: Context, first_token: int, capacity: int) -> None:
        self.calls = 0

    def _prev_emb(self, tokens: torch.Tensor) -> torch.Tensor | None:
        if self._emb is None:
            return None
        return self._emb[tokens]

    def propose(self, root: int, hidden: torch.Tensor, sampling: Sampling, generator: torch.Generator, history: Sequence[int] = ()) -> Proposal:
        """Candidates for every node of the shape (root first). Top-k candidates ignore RAS (match-based
        rules stay lossless whatever the candidates); sampled ones draw from q' (``history``)."""
        dev = hidden.device
        n = len(self.shape.nodes)
        tokens = torch.empty(n, dtype=torch.long, device=dev)
        tokens[0] = root
        h = hidden.reshape(1, -1).to(self._dtype)  # an HF target may run in bf16, the heads in fp32
        if self.sampled:
            return self._propose_sampled(tokens, h, sampling, generator, history)
        if not self.heads.cfg.autoregressive:
            tokens[1:] = self._topk_nodes(h)
            self.calls += len(self._levels)
            return Proposal(self.shape, tokens, None, sampled=False)
        for nodes, d, width in self._levels:
            par = self._parents[nodes]
            uniq, inverse = torch.unique(par, return_inverse=True)
            logits = self.heads.head_logits(h.expand(len(uniq), -1), d - 1, self._prev_emb(tokens[uniq]))
            self.calls += 1
            top = torch.topk(logits, width, dim=-1).indices  # [parents, R]
            tokens[nodes] = top[inverse, self._ranks[nodes]]
        return Proposal(self.shape, tokens, None, sampled=False)

    def _topk_nodes_eager(self, h: torch.Tensor) -> torch.Tensor:
        """Tokens of nodes ``1..n-1`` for plain heads: one evaluation per depth serves every node of that
        depth (nodes are ordered by depth, so the levels concatenate in node order)."""
        parts = []
        for nodes, d, width in self._levels:
            logits = self.heads.head_logits(h, d - 1)[0]
            top = torch.topk(logits, width).indices
            parts.append(top[self._ranks[nodes]])
        return torch.cat(parts)

    def _propose_sampled(self, tokens: torch.Tensor, h: torch.Tensor, sampling: Sampling, generator: torch.Generator, history: Sequence[int] = ()) -> Proposal:
        """Each node's token ~ q of its head given its parent (one head call per depth and distinct parent).

        With repetition-aware sampling q is q' given ``history`` (root last) + the tokens on the path to
        the parent, the history the target's p' at that parent sees (so plain heads get one q per parent).
        """
        q_all = torch.zeros(len(tokens), self.heads.cfg.vocab, device=h.device)
        ras = sampling.repetition is not None
        for nodes, d, _ in self._levels:
            par = self._parents[nodes]
            if self.heads.cfg.autoregressive or ras:
                uniq, inverse = torch.unique(par, return_inverse=True)
            if self.heads.cfg.autoregressive:
                logits = self.heads.head_logits(h.expand(len(uniq), -1), d - 1, self._prev_emb(tokens[uniq]))
            elif ras:
                logits = self.heads.head_logits(h, d - 1).expand(len(uniq), -1)
            else:
                logits, inverse = self.heads.head_logits(h, d - 1), torch.zeros_like(par)
            self.calls += 1
            over = None
            if ras:  # the shallower nodes (all ancestors of this depth) are drawn already
                hists = tree_histories(history, tokens[: int(nodes.min())].tolist(), self.shape.parents, sampling)
                over = repetition_mask([hists[u] for u in uniq.tolist()], sampling, logits.shape[-1], h.device)
            q = warp(logits, sampling, over)[inverse]  # [nodes, V]: each node's parent's q
            q_all[nodes] = q
            # one independent draw per row, so siblings are i.i.d. from their parent's q
            tokens[nodes] = q.argmax(-1) if sampling.greedy else sample(q, generator)
        return Proposal(self.shape, tokens, q_all, sampled=True)

    def commit(self, path: list[int], token: int) -> None:
        """Nothing to roll back: the next round starts from the target's hidden state."""


class _CompiledTopk:
    """The compiled ``_topk_nodes_eager`` of one (heads, shape); ``compile_seconds``: its first call."""

    def __init__(self, proposer: HeadsProposer) -> None:
        from specbench.models.static_lm import compile_fn

        self.proposer = proposer  # the first proposer of this key: its buffers are the graph's constants
        self.fn = compile_fn(proposer._topk_nodes_eager, proposer.target.device)
        self.compile_seconds = 0.0
        self._warm = False

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        if self._warm:
            return self.fn(h)
        import time

        t0 = time.perf_counter()
        out = self.fn(h)
        self.compile_seconds += time.perf_counter() - t0
        self._warm = True
        return out


_TOPK_CACHE: dict[tuple[int, TreeShape], tuple[DraftHeads, _CompiledTopk]] = {}


def _compiled_topk(p: HeadsProposer) -> _CompiledTopk:
    key = (id(p.heads), p.shape)
    hit = _TOPK_CACHE.get(key)
    if hit is None or hit[0] is not p.heads:
        hit = _TOPK_CACHE[key] = (p.heads, _CompiledTopk(p))  # holding the heads keeps id() unique
    return hit[1]


def heads_compile_seconds() -> float:
    """Seconds spent compiling heads functions so far (first calls of each (heads, shape))."""
    return sum(c.compile_seconds for _, c in _TOPK_CACHE.values())
