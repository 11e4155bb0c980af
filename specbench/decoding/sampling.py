"""The logit transform shared by target and draft (one function, so p and q are always comparable).

``probs = softmax(top_p(top_k(logits / T)))``; ``T = 0`` means greedy and yields the one-hot
distribution of the argmax, so acceptance rules see the same p that greedy decoding follows.

Repetition-aware sampling (RAS, VALL-E 2 / CosyVoice 2; methods.md §7) is part of the same transform:
given which tokens are over the repetition threshold in the history of a position (the ``over`` mask,
:func:`repetition_mask`), :func:`warp` returns the EFFECTIVE distribution p' of the two-stage draw
"draw from the warped p; if that token is over, redraw from the fallback f". Every decoder verifies
against p' and every draft proposes from q' (the same rule with its own history), so the lossless
rules stay lossless with RAS on. With RAS off (``Sampling.repetition is None``) nothing changes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from specbench.config import SamplingConfig


@dataclass(frozen=True)
class Repetition:
    """RAS parameters: a token is *over* when it occurs ≥ ``threshold`` = ⌈window·ratio⌉ times among
    the last ``window`` generated tokens (``window ≥ 1``, ``ratio ∈ (0, 1]``; defaults live in
    ``SamplingConfig``)."""

    window: int
    ratio: float

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"repetition window must be >= 1, got {self.window}")
        if not 0.0 < self.ratio <= 1.0:
            raise ValueError(f"repetition ratio must be in (0, 1], got {self.ratio}")

    @property
    def threshold(self) -> int:
        """⌈window·ratio⌉ (≥ 1; the 1e-9 absorbs float error, e.g. 10 × 0.3 = 3.0000000000000004)."""
        return max(1, math.ceil(self.window * self.ratio - 1e-9))


@dataclass(frozen=True)
class Sampling:
    """Temperature / top-k / top-p. ``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 1`` disable.

    ``repetition``: repetition-aware sampling, None = off.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition: Repetition | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def from_config(cls, cfg: SamplingConfig) -> Sampling:
        """The transform of a recipe's ``sampling:`` section (:class:`~specbench.config.SamplingConfig`);
        ``repetition_window: 0`` turns RAS off."""
        rep = Repetition(cfg.repetition_window, cfg.repetition_ratio) if cfg.repetition_window > 0 else None
        return cls(cfg.temperature, cfg.top_k, cfg.top_p, rep)


def warp(logits: torch.Tensor, s: Sampling, over: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities ``[..., V]`` after the transform (float32, rows sum to 1).

    ``over`` (bool ``[..., V]``, from :func:`repetition_mask`; None = nothing over) applies RAS: with
    w the warped distribution and O the over tokens of a row, the row becomes

        p'(x) = w(x)·1[x ∉ O] + w(O)·f(x),   w(O) = Σ_{y ∈ O} w(y),

    the law of "x ~ w; if x ∈ O, redraw x ~ f". The fallback f is the full untempered distribution
    softmax(logits) (VALL-E 2's random sampling; T = 1, no top-k / top-p), so a redraw may land in O
    again. Greedy: w is one-hot at x* = argmax, and f is one-hot at the argmax over tokens NOT in O
    (the plain argmax when every token is over), so p' stays one-hot: greedy RAS takes the most likely
    non-repeated token whenever the argmax is over the threshold. Rows with O = ∅ are returned
    unchanged, bit for bit.
    """
    w = _warp(logits, s)
    if over is None:
        return w
    some = over.any(-1, keepdim=True)
    logits = logits.float()
    if s.greedy:
        free = logits.masked_fill(over, float("-inf"))
        choice = torch.where(over.all(-1), logits.argmax(-1), free.argmax(-1))
        f = torch.nn.functional.one_hot(choice, logits.shape[-1]).float()
    else:
        f = torch.softmax(logits, -1)
    mass = (w * over).sum(-1, keepdim=True)
    return torch.where(some, w.masked_fill(over, 0.0) + mass * f, w)


def _warp(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The temperature / top-k / top-p transform alone (no RAS)."""
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


def repetition_mask(histories: Sequence[Sequence[int]], s: Sampling, vocab: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """Bool ``[len(histories), vocab]``: row i marks the tokens over the RAS threshold in ``histories[i]``.

    ``histories[i]`` is the generated tokens before position i (oldest first; only the last
    ``window`` are read): token v is over iff it occurs ≥ ⌈window·ratio⌉ times among them. Returns
    None when RAS is off or no row has a token over, which :func:`warp` treats as "no change".
    """
    rep = s.repetition
    if rep is None:
        return None
    hits: list[tuple[int, int]] = []
    for i, hist in enumerate(histories):
        tail = hist[-rep.window :] if len(hist) > rep.window else hist
        if len(tail) >= rep.threshold:
            hits.extend((i, v) for v, c in Counter(tail).items() if c >= rep.threshold)
    if not hits:
        return None
    mask = torch.zeros(len(histories), vocab, dtype=torch.bool)
    rows, cols = zip(*hits, strict=True)
    mask[list(rows), list(cols)] = True
    return mask.to(device)


def tree_histories(history: Sequence[int], tokens: Sequence[int], parents: Sequence[int], s: Sampling) -> list[list[int]]:
    """Per-node RAS histories of a candidate tree (a chain is a one-path tree).

    ``history`` = the committed tokens, ending with the root (``tokens[0]``); node i > 0 with parent
    ``parents[i]`` (parents precede children) gets history(parent) + [tokens[i]], so the distribution
    AFTER node i is judged on the committed tokens plus the candidates along its path. Only the last
    ``window`` tokens are kept (all that :func:`repetition_mask` reads); empty lists when RAS is off.
    """
    if s.repetition is None:
        return [[] for _ in tokens]
    w = s.repetition.window
    out = [list(history[-w:])]
    for i in range(1, len(tokens)):
        out.append((out[parents[i]] + [int(tokens[i])])[-w:])
    return out


def sample(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row of ``probs`` (``[V]`` → scalar tensor, ``[n, V]`` → ``[n]``)."""
    if probs.dim() == 1:
        return torch.multinomial(probs, 1, generator=generator)[0]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def next_token(logits: torch.Tensor, s: Sampling, generator: torch.Generator, history: Sequence[int] = ()) -> int:
    """The next token from last-position ``logits [V]``: argmax when greedy (fast path), else a draw;
    with RAS, from p' given the generated ``history`` (:func:`warp`)."""
    over = repetition_mask([history], s, logits.shape[-1], logits.device)
    if over is not None:
        p = warp(logits, s, over[0])
        return int(p.argmax()) if s.greedy else int(sample(p, generator))
    if s.greedy:
        return int(logits.argmax())
    return int(sample(warp(logits, s), generator))
