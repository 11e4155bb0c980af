"""Candidate trees: the static shape (from rank paths) and one round's concrete proposal.

A tree shape is a list of rank paths, e.g. ``[(0,), (1,), (0, 0), (0, 1), (1, 0)]``: the node at
depth d takes the rank-``r_d`` candidate of draft head d under its parent. Node 0 is the root (the
token already chosen this round, fed first); nodes are ordered by depth, then lexicographically, so
a parent always precedes its children. One target forward scores every node with the tree attention
mask (node i sees the cache, itself and its ancestors) at speech positions ``prefix + depth``.
A chain of γ drafts is the tree ``[(0,), (0, 0), ...]`` with one path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from specbench.assets import ASSET_DIR
from specbench.errors import ConfigError

TREE_DIR = ASSET_DIR / "trees"


@dataclass(frozen=True)
class TreeShape:
    """Static tree buffers from rank paths. ``parents[0] = -1`` (root); ``depth[0] = 0``."""

    paths: tuple[tuple[int, ...], ...]
    name: str = "custom"

    def __post_init__(self) -> None:
        seen = set(self.paths)
        if len(seen) != len(self.paths):
            raise ConfigError(f"tree {self.name}: duplicate paths")
        for p in self.paths:
            if not p or any(r < 0 for r in p):
                raise ConfigError(f"tree {self.name}: path {list(p)} must be a non-empty list of ranks >= 0")
            if len(p) > 1 and p[:-1] not in seen:
                raise ConfigError(f"tree {self.name}: path {list(p)} has no parent {list(p[:-1])}; every prefix of a path must be a path")

    @cached_property
    def nodes(self) -> list[tuple[int, ...]]:
        """Node paths in order: root ``()`` first, then by depth and lexicographically."""
        return [()] + sorted(self.paths, key=lambda p: (len(p), p))

    @property
    def size(self) -> int:
        """Number of candidate nodes (root excluded)."""
        return len(self.paths)

    @cached_property
    def max_depth(self) -> int:
        return max((len(p) for p in self.paths), default=0)

    @cached_property
    def parents(self) -> list[int]:
        index = {p: i for i, p in enumerate(self.nodes)}
        return [-1] + [index[p[:-1]] for p in self.nodes[1:]]

    @cached_property
    def depth(self) -> list[int]:
        return [len(p) for p in self.nodes]

    @cached_property
    def ranks(self) -> list[int]:
        """Rank of each node under its parent's head distribution (root: 0)."""
        return [p[-1] if p else 0 for p in self.nodes]

    @cached_property
    def children(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.nodes]
        for i, par in enumerate(self.parents):
            if par >= 0:
                out[par].append(i)
        return out

    @cached_property
    def is_chain(self) -> bool:
        return all(len(c) <= 1 for c in self.children)

    def ancestors(self, i: int) -> list[int]:
        """Node ``i`` and its ancestors, root first."""
        out = []
        while i >= 0:
            out.append(i)
            i = self.parents[i]
        return out[::-1]

    def mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """``[n+1, n+1]`` bool: row i sees column j iff j is i or an ancestor of i."""
        n = len(self.nodes)
        m = torch.zeros(n, n, dtype=torch.bool)
        for i in range(n):
            m[i, self.ancestors(i)] = True
        return m.to(device)

    def position_offsets(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Depth of every node: position id = prefix length + depth."""
        return torch.tensor(self.depth, dtype=torch.long, device=device)

    def max_rank(self, depth: int) -> int:
        """Largest rank used at ``depth`` (1-based), i.e. how many top-k candidates head depth-1 needs."""
        return max((p[-1] for p in self.paths if len(p) == depth), default=-1) + 1

    def to_dict(self) -> dict:
        return {"name": self.name, "paths": [list(p) for p in self.paths]}


def chain_shape(gamma: int) -> TreeShape:
    """The one-path tree of γ rank-0 drafts."""
    return TreeShape(tuple((0,) * d for d in range(1, gamma + 1)), name=f"chain-{gamma}")


def dense_shape(width: int, depth: int) -> TreeShape:
    """Every path of ranks < ``width`` down to ``depth`` (``width**1 + ... + width**depth`` nodes)."""
    paths: list[tuple[int, ...]] = []
    level: list[tuple[int, ...]] = [()]
    for _ in range(depth):
        level = [p + (r,) for p in level for r in range(width)]
        paths.extend(level)
    return TreeShape(tuple(paths), name=f"dense-{width}x{depth}")


BUILTIN_SHAPES = {"dense-small": lambda: dense_shape(2, 3)}  # 14 nodes: 2 + 4 + 8


def load_tree(spec: str) -> TreeShape:
    """A tree by name (``dense-small``, ``chain-N``, ``builtin:NAME`` = a shipped calibrated tree) or JSON path."""
    if spec in BUILTIN_SHAPES:
        return BUILTIN_SHAPES[spec]()
    if spec.startswith("chain-") and spec[6:].isdigit():
        return chain_shape(int(spec[6:]))
    path = TREE_DIR / f"{spec.split(':', 1)[1]}.json" if spec.startswith("builtin:") else Path(spec)
    if not path.is_file():
        shipped = sorted(p.stem for p in TREE_DIR.glob("*.json")) if TREE_DIR.is_dir() else []
        raise ConfigError(
            f"tree file not found: {path} (use dense-small, chain-N, builtin:NAME with NAME in {shipped}, or a file written by `specbench calibrate-tree`)"
        )
    try:
        obj = json.loads(path.read_text())
        return TreeShape(tuple(tuple(int(r) for r in p) for p in obj["paths"]), name=str(obj.get("name", path.stem)))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a tree file ({exc}): write one with `specbench calibrate-tree`") from None


@dataclass
class Proposal:
    """One round's candidates: ``tokens[0]`` is the root; node i > 0 has parent ``shape.parents[i]``.

    ``q[i]`` (``[n+1, V]``, row 0 unused) is the distribution node i's token was drawn from when
    ``sampled``; deterministic proposals (top-k of a head) carry no q (None).
    """

    shape: TreeShape
    tokens: torch.Tensor
    q: torch.Tensor | None
    sampled: bool
    extra: dict = field(default_factory=dict)
