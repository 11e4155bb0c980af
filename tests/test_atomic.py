"""Atomic writes: all or nothing, and readable like any other file the user writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from specbench.atomic import atomic_path
from specbench.jsonl import write_text_atomic


def test_published_file_has_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "sub" / "a.txt", "hello")
    finally:
        os.umask(old)
    p = tmp_path / "sub" / "a.txt"
    assert p.read_text() == "hello"
    assert stat.S_IMODE(p.stat().st_mode) == 0o644  # mkstemp alone would leave 0600
    assert [q.name for q in p.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    p = tmp_path / "result.json"
    p.write_text("finished")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert p.read_text() == "finished"
    assert [q.name for q in tmp_path.iterdir()] == ["result.json"]
