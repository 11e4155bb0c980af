"""Helpers shared by the scoring backends: offline mode, optional imports, torch threads/dtypes, weights files.

Private to :mod:`specbench.scoring`; the contracts the backends rely on are in each docstring.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from specbench.errors import ConfigError, DependencyError

#: Weight files one of which a Hugging Face ``save_pretrained`` directory holds (single file or sharded).
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def force_offline() -> None:
    """Put huggingface_hub (and so transformers and speechbrain) in offline mode for this process.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, when it is first imported, so the variable is set
    before any import and, when the module is already loaded, its constant is flipped too. A code path
    that unexpectedly falls back to the hub then fails at once instead of reaching for the network.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of ``str(exc)`` (or the exception's type name), cut to ``limit`` characters.

    Library errors often span many lines; the CLI prints SpecbenchErrors on one line, so wrapped
    messages keep only their headline.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def require(module: str, dist: str, extra: str, what: str) -> Any:
    """Import ``module`` (from the distribution ``dist``) or raise a one-line DependencyError.

    The message tells the user to ``pip install 'specbench[extra]'``. Import-time failures other than a
    missing module (e.g. torchaudio's OSError for a CUDA-only extension library) count as "not usable"
    too. The distribution is checked as well, so an unrelated package with the same module name (PyPI's
    ``whisper`` is Graphite's database) is not mistaken for the one we need.
    """
    hint = f"{what} needs the {dist} package: run `pip install 'specbench[{extra}]'`"
    try:
        mod = importlib.import_module(module)
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        raise DependencyError(f"{hint} (a different '{module}' module is installed)") from None
    except (ImportError, OSError) as exc:
        raise DependencyError(f"{hint} (import failed: {one_line(exc, 160)})") from None
    return mod


def version(dist: str) -> str:
    """Installed version of distribution ``dist`` (``"missing"`` when it is not installed)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the caller's setting.

    Scorers run next to generation in one process; restoring keeps their thread choice from leaking
    into the timed decoding that follows.
    """
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def torch_dtype(compute_type: str | None, device_type: str, allowed: tuple[str, ...], key: str) -> str:
    """Validate ``compute_type`` for a torch backend and return its name (``None`` → ``float32``).

    ``allowed`` lists the names this backend supports; float16 is refused on CPU, where torch's half
    kernels are missing or slower than float32. Raises a one-line ConfigError naming ``key``.
    """
    name = compute_type or "float32"
    if name not in allowed:
        raise ConfigError(f"{key}: '{name}' is not supported by this backend; choose one of {', '.join(allowed)}")
    if name == "float16" and device_type != "cuda":
        raise ConfigError(f"{key}: float16 needs a CUDA device (device is {device_type}); use float32 on CPU")
    return name


def hf_dir_missing(path: Path, groups: list[tuple[str, ...]]) -> list[str]:
    """Which of ``groups`` (alternatives: any one file of a group will do) are absent from directory ``path``."""
    return [" or ".join(g) for g in groups if not any((path / f).is_file() for f in g)]
