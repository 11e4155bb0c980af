"""Target models behind one contract (:class:`~specbench.targets.base.TargetModel`) and their backends.

A backend is one module with a loader and one line in :data:`BACKENDS`. ``builtin`` wraps specbench's
own ``CodecLM`` checkpoints; ``hf-causal`` any local Hugging Face causal LM over codec tokens, described
by a family template (specbench/targets/families.py). Drafts are loaded through the target's backend, so
a draft always lives in the target's speech space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from specbench.targets.base import Context, TargetCache, TargetModel

if TYPE_CHECKING:
    from specbench.config import ModelRef

__all__ = ["BACKENDS", "Context", "TargetCache", "TargetModel", "load_draft", "load_target"]


def _load_builtin(ref: ModelRef, device: torch.device) -> TargetModel:
    from specbench.targets.builtin import load_builtin

    return load_builtin(ref.checkpoint, device, compile=ref.compile)


def _load_hf(ref: ModelRef, device: torch.device) -> TargetModel:
    from specbench.targets.hf_causal import load_hf_causal

    return load_hf_causal(
        ref.path or "", ref.family or "", device, dtype=ref.dtype, attention=ref.attention, decode_path="compiled" if ref.compile else "eager"
    )


BACKENDS: dict[str, Callable[[ModelRef, torch.device], TargetModel]] = {"builtin": _load_builtin, "hf-causal": _load_hf}


def load_target(ref: ModelRef, device: torch.device | str) -> TargetModel:
    """The target named by a recipe's ``model:`` block, on ``device``, in eval mode."""
    return BACKENDS[ref.backend](ref, torch.device(device))


def load_draft(spec: str, target: TargetModel, ref: ModelRef, device: torch.device | str) -> TargetModel:
    """A draft model for ``target``: for ``builtin`` a codec-lm checkpoint; for ``hf-causal`` a local
    model directory of the same family (e.g. Llasa-1B for Llasa-8B) or ``layers:N`` (the target's
    first N layers with its own embeddings, final norm and head, sharing the target's weights).
    ``ref.compile`` applies to the draft as to the target (the same decode path for both)."""
    if ref.backend == "builtin":
        from specbench.targets.builtin import load_builtin

        return load_builtin(spec, device, compile=ref.compile)
    from specbench.targets.hf_causal import HFCausalTarget, load_hf_causal

    assert isinstance(target, HFCausalTarget)
    if spec.startswith("layers:"):
        return target.layer_subset(spec)
    return load_hf_causal(
        spec, ref.family or "", torch.device(device), dtype=ref.dtype, attention=ref.attention, decode_path="compiled" if ref.compile else "eager"
    )
