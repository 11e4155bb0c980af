"""Device selection, thread count and device synchronisation for honest timings."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

from specbench.errors import ConfigError


def resolve_device(spec: str) -> torch.device:
    """``auto`` → ``cuda`` when available else ``cpu``; ``cuda[:n]`` must exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device '{spec}' requested but CUDA is not available here: use device: auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device '{spec}' does not exist ({torch.cuda.device_count()} CUDA devices): pick another index")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that wall-clock timers measure finished work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def set_threads(n: int | None) -> None:
    """Set torch's intra-op threads when ``n`` is given."""
    if n is not None:
        torch.set_num_threads(n)


@functools.cache
def _libc_malloc_trim() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None


def release_host_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Why: CPU training on variable-length batches leaves glibc arenas fragmented: RSS grew by tens of MB
    per step (5.7 GB after 110 steps of the small preset) and a trim drops it back (4.9 → 3.2 GB), so
    it is freed-but-retained heap. Trimming every 50 steps bounds it for ~2 % of throughput.
    """
    trim = _libc_malloc_trim()
    if trim is not None:
        trim(0)
