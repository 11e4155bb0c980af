"""``specbench calibrate-tree``: measure head acceptance on held-out utterances, write sparse trees."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from specbench.bench.runner import PromptCache, load_heads_for, resolve_manifest, select_items, text_length, token_budget
from specbench.codec import codec_from_config
from specbench.config import RunConfig
from specbench.decoding.calibrate import grow_tree, head_acceptance, save_tree
from specbench.decoding.sampling import Sampling
from specbench.decoding.tree import TreeShape
from specbench.device import resolve_device, set_threads
from specbench.errors import ConfigError
from specbench.targets import load_target

RULES = ("greedy", "tolerance", "typical", "exact")


def calibrate_tree(
    cfg: RunConfig,
    heads_spec: str,
    *,
    rule: str = "tolerance",
    tau: int = 3,
    tolerance: str = "sample",
    budgets: list[int],
    max_rank: int = 8,
    out_dir: Path,
    name: str = "vadusa",
    console: Console | None = None,
) -> list[tuple[Path, TreeShape, float]]:
    """Measure ``acc_d(r)`` on ``cfg``'s corpus (use a held-out split) and write one tree per budget.

    Files are ``out_dir/<name>-<budget>.json``; returns (path, shape, expected accepted length) each.
    """
    console = console or Console()
    if rule not in RULES:
        raise ConfigError(f"unknown rule '{rule}' for calibration: choose from {', '.join(RULES)}")
    if not budgets or min(budgets) < 1:
        raise ConfigError("give at least one --budget >= 1")
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    codec = codec_from_config(cfg.codec, device=str(device))
    target = load_target(cfg.model, device)
    target.check_codec(codec)
    heads = load_heads_for(heads_spec, target, codec, device)
    work = cfg.resolved_output_dir()
    manifest = resolve_manifest(cfg, work, console.print)
    utts = select_items(manifest.utterances, cfg.corpus.limit)
    prompts = PromptCache(manifest, codec, cfg.corpus.prompt_seconds, work)
    sampling = Sampling.from_config(cfg.sampling)
    items = [prompts.context(u) for u in utts]
    max_tokens = max(token_budget(cfg, text_length(u), codec.frame_rate) for u in utts)
    t0 = time.perf_counter()
    with console.status(f"calibrating {heads.cfg.n_heads} heads on {len(items)} utterances"):
        acc, positions = head_acceptance(target, heads, items, sampling, rule, tau=tau, mode=tolerance, max_rank=max_rank, max_tokens=max_tokens, seed=cfg.seed)
    seconds = time.perf_counter() - t0
    table = Table(title=f"acc_d(r) under {rule}{f' τ={tau} ({tolerance})' if rule == 'tolerance' else ''}, {positions} positions")
    table.add_column("head (depth)")
    for r in range(max_rank):
        table.add_column(f"r={r}", justify="right")
    for k in range(acc.shape[0]):
        table.add_row(str(k + 1), *(f"{v:.3f}" for v in acc[k].tolist()))
    console.print(table)
    meta: dict[str, Any] = {
        "rule": rule,
        "tau": tau if rule == "tolerance" else None,
        "tolerance": tolerance if rule == "tolerance" else None,
        "heads": heads_spec,
        "model": target.id,
        "sampling": cfg.sampling.model_dump(),
        "corpus": cfg.corpus.model_dump(),
        "positions": positions,
        "acc": [[round(v, 5) for v in row] for row in acc.tolist()],
        "calibration_seconds": round(seconds, 1),
    }
    out = []
    for b in sorted(set(budgets)):
        paths, expected = grow_tree(acc, b)
        shape = TreeShape(tuple(paths), name=f"{name}-{b}")
        path = out_dir / f"{name}-{b}.json"
        save_tree(path, shape, {**meta, "budget": b, "expected_accepted_len": round(expected, 4)})
        console.print(f"{path}: {shape.size} nodes, depth {shape.max_depth}, expected accepted length {expected:.3f}")
        out.append((path, shape, expected))
    return out
