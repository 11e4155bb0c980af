"""``specbench bench``: speed of every decoder of a recipe in ONE process, as ratios to the baseline.

Not a test (timings are noisy here); run it with ``make bench``. Every decoder decodes the same
utterances with the same seeds, interleaved per utterance, ``repeats`` times; per-utterance medians are
then compared. With profiling on, each target forward and each proposal is timed with device sync, so
the report also gives the draft cost ratio c = (draft seconds / draft call) ÷ (target seconds / target
call of the baseline) and the loop's own overhead = 1 − (target + draft seconds) / loop seconds.
A second table times one target forward over n new tokens (the verify step) relative to n = 1, and
one forward over every tree a heads-tree decoder uses (root + nodes, tree mask).

Peer baseline: when the target has a reference implementation (``reference_generate``: an hf-causal
target's own transformers ``generate()``), it decodes the same utterances with the same budget and
sampling, interleaved with the decoders, and a third table gives specbench-baseline tokens/s ÷
transformers tokens/s (and whether the greedy tokens agree), so no speedup is measured against a slow
home-made baseline.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from specbench.bench.runner import PromptCache, decode_one, load_models, resolve_manifest, select_items, text_length, token_budget
from specbench.config import RunConfig
from specbench.decoding.sampling import Sampling
from specbench.decoding.tree import TreeShape
from specbench.device import synchronize
from specbench.jsonl import write_text_atomic


def verify_cost(
    m: Any,
    ctx: Any,
    sizes: tuple[int, ...] = (1, 2, 4, 8, 16),
    trees: dict[str, TreeShape] | None = None,
    reps: int = 30,
) -> dict[str, tuple[int, float]]:
    """Median seconds of one target forward on a prefilled cache: over n new tokens (causal chain) and
    over each tree's root + nodes with its tree mask. Returns ``label -> (tokens fed, seconds)``."""
    jobs: list[tuple[str, int, torch.Tensor | None, torch.Tensor | None]] = [(str(n), n, None, None) for n in sizes]
    for name, shape in (trees or {}).items():
        jobs.append((f"tree {name}", shape.size + 1, shape.mask(m.device), shape.position_offsets(m.device)))
    out: dict[str, tuple[int, float]] = {}
    with torch.inference_mode():
        n_max = max(n for _, n, _, _ in jobs)
        _, _, cache = m.target.prefill(ctx, capacity=n_max + 2)
        base = cache.length
        for label, n, mask, offsets in jobs:
            toks = torch.arange(n, device=m.device) % m.target.speech_vocab
            times = []
            for _ in range(reps):
                synchronize(m.device)
                t0 = time.perf_counter()
                if mask is None:
                    m.target.step(toks, cache)
                else:
                    m.target.step(toks, cache, depths=offsets, tree_mask=mask)
                synchronize(m.device)
                times.append(time.perf_counter() - t0)
                cache.crop(base)
            out[label] = (n, statistics.median(times))
    return out


def run_bench(cfg: RunConfig, out_md: Path | None = None, console: Console | None = None) -> pd.DataFrame:
    """Time every decoder of ``cfg`` (no scoring, nothing written but the optional Markdown table)."""
    console = console or Console()
    if not console.is_terminal:  # logs and CI: do not squeeze the tables into 80 columns
        console = Console(width=200)
    out = cfg.resolved_output_dir()
    manifest = resolve_manifest(cfg, out, console.print)
    items = select_items(manifest.utterances, cfg.corpus.limit)
    m = load_models(cfg)
    prompts = PromptCache(manifest, m.codec, cfg.corpus.prompt_seconds, out)
    s = Sampling(cfg.sampling.temperature, cfg.sampling.top_k, cfg.sampling.top_p)
    for d in cfg.decoders:  # warm-up, discarded
        decode_one(m, d, prompts.context(items[0]), s, 40, 0)
    peer = getattr(m.target, "reference_generate", None)
    if peer is not None:  # warm-up of the peer, discarded
        peer(prompts.context(items[0]), 8, s)
    rows, peer_rows = [], []
    for rep in range(cfg.repeats):
        for i, u in enumerate(items):
            ctx, budget = prompts.context(u), token_budget(cfg, text_length(u), m.codec.frame_rate)
            for d in cfg.decoders:
                toks, st = decode_one(m, d, ctx, s, budget, cfg.seed + 1000 * rep + i, profile=True)
                rows.append({"decoder": d.name, "utt": u.utt_id, "rep": rep, **st.to_row()})
                if d.name == cfg.decoders[0].name:
                    base_tokens = toks.tolist()
            if peer is not None:
                synchronize(m.device)
                t0 = time.perf_counter()
                ptoks = peer(ctx, budget, s, seed=cfg.seed + 1000 * rep + i)
                synchronize(m.device)
                seconds = time.perf_counter() - t0
                peer_rows.append({"utt": u.utt_id, "tokens": ptoks.numel(), "seconds": seconds, "same_tokens": ptoks.tolist() == base_tokens})
    df = pd.DataFrame(rows)
    per = df.groupby(["decoder", "utt"], sort=False).median(numeric_only=True).reset_index()
    base = cfg.decoders[0].name
    b = per[per["decoder"] == base].set_index("utt")
    t_step = b["target_seconds"].sum() / max(1, b["target_calls"].sum())
    table = []
    for d in cfg.decoders:
        x = per[per["decoder"] == d.name].set_index("utt")
        dd = df[df["decoder"] == d.name]
        draft_step = dd["draft_seconds"].sum() / dd["draft_calls"].sum() if dd["draft_calls"].sum() else None
        table.append(
            {
                "decoder": d.name,
                "tokens_per_s": x["tokens_per_s"].mean(),
                "speedup": x["tokens_per_s"].mean() / b["tokens_per_s"].mean(),
                "latency_speedup": b["lm_seconds"].sum() / x["lm_seconds"].sum(),
                "call_speedup": b["target_calls"].sum() / max(1, x["target_calls"].sum()),
                "mean_accepted_len": dd["tokens"].sum() / dd["rounds"].sum(),
                "draft_accept_rate": dd["accepted"].sum() / dd["proposed"].sum() if dd["proposed"].sum() else None,
                "target_ms_per_call": 1000 * dd["target_seconds"].sum() / dd["target_calls"].sum(),
                "draft_cost_c": draft_step / t_step if draft_step else None,
                "loop_overhead": 1 - (dd["target_seconds"].sum() + dd["draft_seconds"].sum()) / dd["loop_seconds"].sum(),
            }
        )
    summary = pd.DataFrame(table)
    trees = {d.tree: m.resources.tree(d.tree) for d in cfg.decoders if d.proposer == "heads-tree" and d.tree}
    vc = verify_cost(m, prompts.context(items[0]), trees=trees)
    one = vc["1"][1]
    verify = pd.DataFrame([{"forward": label, "tokens": n, "ms": 1000 * t, "cost_vs_1": t / one} for label, (n, t) in vc.items()])
    peer_table = None
    if peer_rows:
        p = pd.DataFrame(peer_rows)
        base_rows = df[df["decoder"] == base]
        base_tps = base_rows["tokens"].sum() / (base_rows["prefill_seconds"].sum() + base_rows["loop_seconds"].sum())
        peer_tps = p["tokens"].sum() / p["seconds"].sum()
        peer_table = pd.DataFrame(
            [
                {
                    "peer": "transformers generate()",
                    "peer_tokens_per_s": peer_tps,
                    f"{base}_tokens_per_s": base_tps,
                    "ratio": base_tps / peer_tps,
                    "greedy_tokens_match": bool(p["same_tokens"].all()) if s.greedy else None,
                }
            ]
        )
    _print(console, summary, "decoders (ratios vs " + base + ")")
    _print(console, verify, "one target forward over n new tokens")
    if peer_table is not None:
        _print(console, peer_table, f"{base} vs the model's own transformers generate() (same prompts, budget, sampling)")
    if out_md:
        dev = str(m.device) if m.device.type == "cpu" else torch.cuda.get_device_name(m.device)
        text = (
            f"- device: {dev} | torch {torch.__version__} | threads {torch.get_num_threads()} | utterances {len(items)} x repeats {cfg.repeats}\n\n"
            + summary.to_markdown(index=False, floatfmt=".3f")
            + "\n\n"
            + verify.to_markdown(index=False, floatfmt=".3f")
            + "\n"
            + ("\n" + peer_table.to_markdown(index=False, floatfmt=".3f") + "\n" if peer_table is not None else "")
        )
        write_text_atomic(out_md, text)
    return summary


def _print(console: Console, df: pd.DataFrame, title: str) -> None:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c, justify="left" if c == "decoder" else "right")
    for _, r in df.iterrows():
        t.add_row(*("" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{v:.3f}" if isinstance(v, float) else str(v) for v in r))
    console.print(t)
