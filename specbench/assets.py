"""Files shipped inside the package (``specbench/assets``), addressed as ``builtin:NAME``."""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets"
PREFIX = "builtin:"


def resolve_path(spec: str | Path) -> Path:
    """``builtin:NAME`` → ``specbench/assets/NAME.pt``; ``tiny:FAMILY[/PART]`` → a tiny random model part
    (specbench/targets/tiny.py); any other string is a filesystem path."""
    s = str(spec)
    if s.startswith(PREFIX):
        return ASSET_DIR / f"{s[len(PREFIX) :]}.pt"
    if s.startswith("tiny:"):  # the toolkit's tiny random HF models (specbench/targets/tiny.py), built on first use
        from specbench.targets.tiny import resolve_tiny

        return resolve_tiny(s)
    return Path(s).expanduser()


def list_builtin() -> list[str]:
    """Names of the shipped assets."""
    return sorted(f"{PREFIX}{p.stem}" for p in ASSET_DIR.glob("*.pt"))


def same_file(a: str | Path, b: str | Path) -> bool:
    """Do two checkpoint specs name the same file (``builtin:X`` vs its path, ``./x`` vs absolute)?"""
    if str(a) == str(b):
        return True
    pa, pb = resolve_path(a), resolve_path(b)
    try:
        return pa.resolve() == pb.resolve() or (pa.is_file() and pb.is_file() and pa.samefile(pb))
    except OSError:
        return False
