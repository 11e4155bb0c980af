"""Loading and exporting codec-LM checkpoints (kind ``codec-lm``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from specbench.assets import resolve_path
from specbench.errors import ModelError
from specbench.models.checkpoint import load_checkpoint, save_atomic
from specbench.models.codec_lm import CodecLM, ModelConfig

KIND = "codec-lm"


def model_payload(model: CodecLM, codec_id: str, meta: dict[str, Any], half: bool = False) -> dict[str, Any]:
    """The dict stored for a model: kind, config, weights, codec id and free-form metadata."""
    state = {k: (v.detach().to("cpu", torch.float16) if half and v.is_floating_point() else v.detach().cpu()) for k, v in model.state_dict().items()}
    return {"kind": KIND, "config": model.cfg.to_dict(), "state_dict": state, "codec_id": codec_id, "meta": meta}


def export_model(model: CodecLM, path: str | Path, codec_id: str, meta: dict[str, Any], half: bool = True) -> None:
    """Write a weights-only checkpoint (fp16 by default: half the size, loaded back as fp32)."""
    save_atomic(model_payload(model, codec_id, meta, half=half), path)


def load_lm(spec: str | Path, device: torch.device | str = "cpu") -> tuple[CodecLM, dict[str, Any]]:
    """Load a ``codec-lm`` checkpoint (``builtin:NAME`` or a path) in fp32, eval mode."""
    path = resolve_path(spec)
    obj = load_checkpoint(path, KIND)
    try:
        cfg = ModelConfig(**obj["config"])
        model = CodecLM(cfg)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in obj["state_dict"].items()})
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ModelError(f"checkpoint {path} does not match the CodecLM architecture: {str(exc).splitlines()[0]}") from None
    model.to(device).eval()
    return model, obj
