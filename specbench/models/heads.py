"""Medusa-style draft heads on a frozen (or jointly fine-tuned) target codec LM (VADUSA, methods.md §3).

Let ``h_t`` be the target's last hidden state (after ``ln_f``) at the position whose LM-head logits
give ``p(x_{t+1})``. Head ``k`` (0-based, ``k = 0..K-1``) predicts ``x_{t+2+k}`` from ``h_t`` alone:

    z_k^0 = h_t                                   (plain heads)
    z_k^0 = h_t + A_k · e(x_{t+1+k})              (autoregressive heads)
    z_k^{j+1} = z_k^j + SiLU(W_k^j z_k^j + b_k^j)  for j = 0..n_layers-1
    logits_k = U_k z_k^{n_layers} + c_k

``W``, ``b`` and ``A`` start at zero and ``(U_k, c_k)`` is a copy of the target's LM head, so at
initialisation every head reproduces the target's next-token logits exactly (a strong start: the
t+1 distribution is the best cheap guess for t+2 before any training). ``e(x)`` is the target's own
embedding row ``tok_emb[speech_offset + x]``; the heads do not own that table, the caller passes the
embeddings in. For head 0 the conditioning token ``x_{t+1}`` is the root (already chosen by the
target); for head ``k > 0`` it is the token drafted at depth ``k``.

Checkpoint kind ``heads``: config, fp16 weights, the checkpoint spec of the target the heads belong to
(``target``), the codec id and free-form ``meta`` (training config, history, per-head accuracy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specbench.assets import resolve_path
from specbench.errors import ModelError
from specbench.models.checkpoint import load_checkpoint, save_atomic
from specbench.targets.base import TargetModel

KIND = "heads"


@dataclass
class HeadsConfig:
    """Architecture of a set of draft heads; stored in every heads checkpoint."""

    d_model: int
    vocab: int  # output classes = the target's speech_vocab + 1 (EOS last)
    n_heads: int = 4
    n_layers: int = 1
    autoregressive: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DraftHead(nn.Module):
    """One head: optional token conditioning, ``n_layers`` zero-initialised SiLU residual blocks, projection."""

    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(cfg.d_model, cfg.d_model) for _ in range(cfg.n_layers))
        # A_k: no bias, so a zero A_k contributes exactly nothing whatever the embedding
        self.prev = nn.Linear(cfg.d_model, cfg.d_model, bias=False) if cfg.autoregressive else None
        self.proj = nn.Linear(cfg.d_model, cfg.vocab)
        for blk in self.blocks:
            nn.init.zeros_(blk.weight)
            nn.init.zeros_(blk.bias)
        if self.prev is not None:
            nn.init.zeros_(self.prev.weight)

    def forward(self, h: torch.Tensor, prev_emb: torch.Tensor | None = None) -> torch.Tensor:
        """``h, prev_emb: [..., d]`` → logits ``[..., vocab]`` (see the module docstring for the math)."""
        z = h if self.prev is None else h + self.prev(prev_emb)
        for blk in self.blocks:
            z = z + F.silu(blk(z))
        return self.proj(z)


class DraftHeads(nn.Module):
    """K draft heads; head ``k`` (0-based) predicts the token ``k + 2`` steps after the state it reads."""

    def __init__(self, cfg: HeadsConfig) -> None:
        super().__init__()
        if cfg.n_heads < 1 or cfg.n_layers < 0:
            raise ValueError(f"need n_heads >= 1 and n_layers >= 0, got {cfg.n_heads} and {cfg.n_layers}")
        self.cfg = cfg
        self.heads = nn.ModuleList(DraftHead(cfg) for _ in range(cfg.n_heads))

    @classmethod
    def from_target(cls, target: TargetModel, n_heads: int = 4, n_layers: int = 1, autoregressive: bool = False) -> DraftHeads:
        """Heads sized for ``target`` whose projections are copies of its LM head restricted to speech
        space (logits equal at init; a head without bias gets a zero bias). The heads are fp32."""
        cfg = HeadsConfig(d_model=target.hidden_size, vocab=target.speech_vocab + 1, n_heads=n_heads, n_layers=n_layers, autoregressive=autoregressive)
        heads = cls(cfg).to(target.device)
        weight, bias = target.output_head()
        with torch.no_grad():
            for head in heads.heads:
                head.proj.weight.copy_(weight)
                if bias is None:
                    head.proj.bias.zero_()
                else:
                    head.proj.bias.copy_(bias)
        return heads

    def _check(self, k: int, prev_emb: torch.Tensor | None) -> None:
        if not 0 <= k < self.cfg.n_heads:
            raise IndexError(f"head {k} does not exist: these heads are numbered 0..{self.cfg.n_heads - 1}")
        # a missing embedding would silently turn an autoregressive head into a plain one (and a stray
        # one would be ignored by a plain head): both are caller bugs, so refuse them loudly
        if self.cfg.autoregressive and prev_emb is None:
            raise ValueError(f"autoregressive head {k} needs prev_emb (the embedding of the token before the one it predicts)")
        if not self.cfg.autoregressive and prev_emb is not None:
            raise ValueError("these heads are not autoregressive: pass prev_emb=None")

    def head_logits(self, h: torch.Tensor, k: int, prev_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of head ``k`` (0-based): ``h: [N, d]`` target hidden states, ``prev_emb: [N, d]``
        (autoregressive heads only: the target's embedding of token ``t+1+k``) → ``[N, vocab]``."""
        self._check(k, prev_emb)
        return self.heads[k](h, prev_emb)

    def forward(self, h: torch.Tensor, prev_embs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """All heads on the same states: ``h: [..., d]``, ``prev_embs``: K tensors ``[..., d]``
        (autoregressive only; entry k conditions head k) → ``[K, ..., vocab]``."""
        if prev_embs is not None and len(prev_embs) != self.cfg.n_heads:
            raise ValueError(f"prev_embs has {len(prev_embs)} entries, expected one per head ({self.cfg.n_heads})")
        out = []
        for k in range(self.cfg.n_heads):
            prev = prev_embs[k] if prev_embs is not None else None
            self._check(k, prev)
            out.append(self.heads[k](h, prev))
        return torch.stack(out)


def check_compatible(heads: DraftHeads, target: TargetModel, where: str = "heads") -> None:
    """ModelError unless ``heads`` can read ``target``'s hidden states and share its vocabulary."""
    if heads.cfg.d_model != target.hidden_size or heads.cfg.vocab != target.speech_vocab + 1:
        raise ModelError(
            f"{where} (d_model {heads.cfg.d_model}, vocab {heads.cfg.vocab}) do not fit a target with d_model {target.hidden_size} and "
            f"vocab {target.speech_vocab + 1}: use the heads trained for this target (`specbench train heads`)"
        )


def heads_payload(heads: DraftHeads, target_spec: str, codec_id: str, meta: dict[str, Any], half: bool = False) -> dict[str, Any]:
    """The dict stored for a set of heads (``half``: fp16 floating-point weights)."""
    state = {k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu()) for k, v in heads.state_dict().items()}
    return {"kind": KIND, "config": heads.cfg.to_dict(), "state_dict": state, "target": str(target_spec), "codec_id": codec_id, "meta": meta}


def save_heads(heads: DraftHeads, path: str | Path, target_spec: str, codec_id: str, meta: dict[str, Any]) -> None:
    """Write a weights-only heads checkpoint atomically (fp16 on disk, loaded back as fp32)."""
    save_atomic(heads_payload(heads, target_spec, codec_id, meta, half=True), path)


def load_heads(spec: str | Path, device: torch.device | str = "cpu") -> tuple[DraftHeads, dict[str, Any]]:
    """Load a ``heads`` checkpoint (``builtin:NAME`` or a path) in fp32, eval mode → ``(heads, payload)``."""
    path = resolve_path(spec)
    obj = load_checkpoint(path, KIND)
    try:
        heads = DraftHeads(HeadsConfig(**obj["config"]))
        heads.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()})
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelError(f"checkpoint {path} does not match the DraftHeads architecture: {str(exc).splitlines()[0]}") from None
    heads.to(device).eval()
    return heads, obj
