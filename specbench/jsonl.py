"""JSON-lines files: atomic whole-file writes and crash-safe appends."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from specbench.atomic import atomic_path


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Yield one dict per non-empty line. A torn last line (crash mid-append) is skipped."""
    p = Path(path)
    with p.open("r", encoding="utf-8") as fh:
        lines = fh.readlines()
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                return  # an interrupted append; the row is regenerated on resume
            raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    """Write all rows to ``path`` atomically (temp file + fsync + rename)."""
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """Append one row and fsync, so a finished row survives Ctrl-C or a crash.

    A torn last line left by an interrupted append is dropped first (a complete row that only lacks
    its newline gets one), so the new row starts on a line of its own instead of being glued onto it.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a+b") as fh:
        end = fh.seek(0, os.SEEK_END)
        if end:
            fh.seek(end - 1)
            if fh.read(1) != b"\n":
                _mend_torn_tail(fh)
        fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _mend_torn_tail(fh: Any) -> None:
    """Truncate an unparsable last line (its row is regenerated on resume), or end a complete one."""
    fh.seek(0)
    data = fh.read()
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
    except ValueError:
        fh.truncate(cut)
        return
    fh.write(b"\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
