"""Atomic file writes: write a temp file beside the destination, then rename it over the destination."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    """The process's umask, read without changing it where Linux exposes it (``os.umask`` can only be read by
    setting it, which would briefly give other threads' new files a zero umask)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o077)  # elsewhere: set-and-restore, with a restrictive value for the instant it is set
    os.umask(old)
    return old


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a fresh temp path in ``path``'s folder (created if missing); when the block ends normally the
    file there replaces ``path`` in one rename, so a reader or a crash never sees half a file; when it
    raises, the temp file is removed and ``path`` is untouched.

    The published file gets the permissions a plain ``open(path, "w")`` would give (``0o666 & ~umask``),
    not ``mkstemp``'s private 0600, so results and checkpoints stay readable by a shared group.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
