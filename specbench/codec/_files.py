"""Shared file handling of the codec backends that load Hugging Face style local snapshots.

Reading a weights file (safetensors or a plain ``torch.save`` state dict, never executing pickled
code), checking its keys against a module with one-line errors, and fingerprinting weights for codec ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from specbench.codec.encodec_codec import _file_sha1 as file_sha1
from specbench.codec.encodec_codec import _load_error as load_error
from specbench.codec.encodec_codec import _one_line as one_line
from specbench.errors import ModelError

__all__ = ["file_sha1", "load_error", "one_line", "combined_sha1", "read_json", "read_state_dict", "check_keys"]


def combined_sha1(*digests: str) -> str:
    """One SHA-1 hex digest naming several files (their digests in order); one digest is returned as is."""
    if len(digests) == 1:
        return digests[0]
    return hashlib.sha1("".join(digests).encode()).hexdigest()


def read_json(path: Path, where: str) -> dict[str, Any]:
    """A JSON object from ``path``; ModelError (naming the file and ``where``) when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path} as JSON ({type(exc).__name__}: {one_line(exc, 120)}): {where}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a JSON {type(data).__name__}, not an object: {where}")
    return data


def read_state_dict(path: Path, where: str) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or of a plain state dict saved with ``torch.save``.

    ``torch.load`` runs with ``weights_only=True``: a checkpoint is data, never code to execute.
    ModelError (one line, naming ``path`` and ``where``) for unreadable files and non-tensor content.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read {path} as a state dict ({load_error(exc)}): {where}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is a {type(state).__name__}, not a state dict of tensors: {where}")
    return dict(state)


def _show(keys: Iterable[str], n: int = 3) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_keys(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str, where: str) -> dict[str, torch.Tensor]:
    """The part of ``state`` to load into ``model``, or ModelError when the file does not fit it.

    Every parameter must be in the file, with its shape, and the file may hold nothing unknown. Buffers
    are lenient both ways: they are values a module computes itself in ``__init__`` (resampling filters,
    STFT windows, FSQ levels), so a checkpoint written by another version of a package may lack one or
    carry one that is no longer persistent; the module's own value is kept then. Weight-norm tensors
    saved under the old names (``weight_g`` / ``weight_v``) are renamed as ``load_state_dict`` would.
    """
    own = model.state_dict()
    state = _weight_norm_names(state, own)
    params = {name for name, _ in model.named_parameters()}
    buffers = {name for name, _ in model.named_buffers()}  # includes non-persistent ones
    missing = params - set(state)
    unknown = set(state) - set(own) - buffers
    if missing or unknown:
        detail = "; ".join(
            part
            for part in (
                f"missing {len(missing)} parameters ({_show(missing)})" if missing else "",
                f"{len(unknown)} unexpected keys ({_show(unknown)})" if unknown else "",
            )
            if part
        )
        raise ModelError(f"{path} does not fit {what} ({detail}): {where}")
    wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ModelError(
            f"{path} does not fit {what} ({len(wrong)} tensors of the wrong shape, e.g. {k}: {tuple(state[k].shape)} instead of {tuple(own[k].shape)}): {where}"
        )
    return {k: v for k, v in state.items() if k in own}


_OLD_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


def _weight_norm_names(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with ``torch.nn.utils.weight_norm``'s names (``P.weight_g``, ``P.weight_v``) renamed to those
    of ``torch.nn.utils.parametrizations.weight_norm`` where the module uses the latter: the renaming that
    torch's own load hook does (and transformers' ``from_pretrained``), so checkpoints of either era load."""
    out = {}
    for k, v in state.items():
        head, dot, leaf = k.rpartition(".")
        if leaf in _OLD_WEIGHT_NORM and k not in own:
            renamed = f"{head}{dot}{_OLD_WEIGHT_NORM[leaf]}"
            k = renamed if renamed in own else k
        out[k] = v
    return out
