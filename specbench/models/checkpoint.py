"""Checkpoint files: a dict with ``kind``, ``config`` and weights, written atomically.

Every file specbench writes carries a ``kind`` so a loader can refuse a file of the wrong kind with a
message that says which kind it is and what was expected.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch

from specbench.atomic import atomic_path
from specbench.errors import ModelError

MADE_BY = {"codec-lm": "specbench train target", "heads": "specbench train heads"}  # the command that writes each checkpoint kind


def save_atomic(obj: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_torch_file(path: Path) -> Any:
    """``torch.load`` of a file ``torch.save`` wrote (a zip archive), refusing anything else BEFORE unpickling:
    random bytes fed to the unpickler can raise odd errors (even print a stray SystemError) instead of failing cleanly."""
    if not zipfile.is_zipfile(path):
        raise ValueError("not a torch.save archive")
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint(path: str | Path, expected_kind: str) -> dict[str, Any]:
    """Load a checkpoint and check its ``kind``; ModelError names the file and the fix."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"checkpoint not found: {p} (fix the path, or train one with `{MADE_BY.get(expected_kind, 'specbench train')}`)")
    try:
        obj = read_torch_file(p)
    except Exception as exc:
        raise ModelError(f"cannot read checkpoint {p}: {exc} (is it a specbench checkpoint?)") from None
    kind = obj.get("kind") if isinstance(obj, dict) else None
    if kind != expected_kind:
        raise ModelError(
            f"{p} is a '{kind or type(obj).__name__}' file, expected a checkpoint of kind '{expected_kind}': "
            f"point at a file written by `{MADE_BY.get(expected_kind, 'specbench train')}`"
        )
    return obj
