"""``specbench bench``: speed of every decoder of a recipe in ONE process, as ratios to the baseline.

Not a test (timings are noisy here); run it with ``make bench``. Every decoder decodes the same
utterances with the same seeds, interleaved per utterance, ``repeats`` times; per-utterance medians are
then compared. With profiling on, each target forward and each proposal is timed with device sync, so
the report also gives the draft cost ratio c = (draft seconds / draft call) ÷ (target seconds / target
call of the baseline) and the loop's own overhead = 1 − (target + draft seconds) / loop seconds.
A second table times one target forward over n new tokens (the verify step) relative to n = 1, and
one forward over every tree a heads-tree decoder uses (root + nodes, tree mask), on a cache holding the
first utterance's prompt plus half the baseline's mean decode (``cache_slots``): attention work, and on
the static paths the attention window, grow with the context, so a prompt-only cache understates them.

Peer baseline: when the target has a reference implementation (``reference_generate``: an hf-causal
target's own transformers ``generate()``), it decodes the same utterances with the same budget and
sampling, interleaved with the decoders, and a third table gives specbench-baseline tokens/s ÷
transformers tokens/s (and whether the greedy tokens agree), so no speedup is measured against a slow
home-made baseline.

Eager vs compiled: with ``model.compile: true`` (builtin backend) the bench loads the models twice, on
the eager path and on the compiled static-shape path (specbench/models/static_lm.py), interleaves the
two per utterance, and reports every table per ``path``. Compilation happens before timing: every
static cache gets one capacity (the largest any utterance needs, so one graph per bucket), the buckets
the decoders use are compiled explicitly, then each decoder's warm-up decode (discarded) compiles the
heads; ``compile_s`` is that time and ``compile_s_timed`` whatever was compiled during timed decodes
(0 unless a shape was missed). The cost-model table gives, per decoder, its measured step cost, verify
cost, draft / heads cost, α and τ, the bound of docs/metrics.md ("Cost-model bound") and
``bound_fraction`` = measured latency speedup ÷ bound; it is also written as ``<out>.csv``.
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
    history: int = 0,
) -> tuple[dict[str, tuple[int, float]], int]:
    """Median seconds of one target forward on a prefilled cache: over n new tokens (causal chain) and
    over each tree's root + nodes with its tree mask. Returns ``(label -> (tokens fed, seconds), cache
    slots the forwards attend to)``.

    ``history`` tokens are appended after the prompt first (one at a time: a shape every decode path has
    built), so attention spans a decode's typical context rather than the prompt alone: on the static
    paths the attention window, and everywhere the attention work, grow with it."""
    jobs: list[tuple[str, int, torch.Tensor | None, torch.Tensor | None]] = [(str(n), n, None, None) for n in sizes]
    for name, shape in (trees or {}).items():
        jobs.append((f"tree {name}", shape.size + 1, shape.mask(m.device), shape.position_offsets(m.device)))
    out: dict[str, tuple[int, float]] = {}
    with torch.inference_mode():
        n_max = max(n for _, n, _, _ in jobs)
        _, _, cache = m.target.prefill(ctx, capacity=n_max + 2 + history)
        for i in range(history):
            m.target.step(torch.full((1,), i % m.target.speech_vocab, device=m.device), cache)
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
    return out, base


def _bench_paths(cfg: RunConfig) -> list[str]:
    """Decode paths to time: eager and compiled when ``model.compile`` asks for it, else eager."""
    if cfg.model.compile:
        return ["eager", "compiled"]
    return ["eager"]


def _with_path(cfg: RunConfig, path: str) -> RunConfig:
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"compile": path == "compiled"})})


def _prepare_compiled(m: Any, cfg: RunConfig, contexts: list[tuple[Any, int]]) -> None:
    """One static capacity for every cache (target and drafts) and the buckets the decoders use, compiled."""
    from specbench.models.static_lm import BUCKETS, bucket

    nodes, sizes = 1, {1, 2}
    for d in cfg.decoders:
        if d.method != "speculative":
            continue
        n = m.resources.tree(d.tree).size if d.proposer == "heads-tree" and d.tree else d.gamma
        nodes = max(nodes, n)
        sizes.add(bucket(n + 1))

    def context_len(ctx: Any) -> int:  # slots the prefill fills, read off its cache (any backend, any text input)
        with torch.inference_mode():
            return int(m.target.prefill(ctx)[2].length)

    need = max(context_len(ctx) + budget for ctx, budget in contexts) + nodes + 1 + BUCKETS[-1]
    models = [m.target, *m.resources.drafts.values()]
    for model in models:
        model.static.min_capacity = need
    m.target.static.warm_up(need, tuple(sorted(sizes)))
    for draft in m.resources.drafts.values():
        draft.static.warm_up(need, (1, 2))


def _compile_seconds(m: Any) -> float:
    from specbench.decoding.proposers import heads_compile_seconds

    models = [m.target, *m.resources.drafts.values()]
    return sum(float(getattr(x, "compile_seconds", 0.0)) for x in models) + heads_compile_seconds()


def run_bench(cfg: RunConfig, out_md: Path | None = None, console: Console | None = None) -> pd.DataFrame:
    """Time every decoder of ``cfg`` (no scoring, nothing written but the optional Markdown table and
    its ``.csv`` cost-model table); per decode path (eager, compiled) when ``model.compile`` is on."""
    console = console or Console()
    if not console.is_terminal:  # logs and CI: do not squeeze the tables into 80 columns
        console = Console(width=220)
    out = cfg.resolved_output_dir()
    manifest = resolve_manifest(cfg, out, console.print)
    items = select_items(manifest.utterances, cfg.corpus.limit)
    paths = _bench_paths(cfg)
    models: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    s = Sampling.from_config(cfg.sampling)
    prompts = None
    for path in paths:
        t0 = time.perf_counter()
        m = models[path] = load_models(_with_path(cfg, path))
        if prompts is None:
            prompts = PromptCache(manifest, m.codec, cfg.corpus.prompt_seconds, out)
        if path == "compiled":
            _prepare_compiled(m, cfg, [(prompts.context(u), token_budget(cfg, text_length(u), m.codec.frame_rate)) for u in items])
        for d in cfg.decoders:  # warm-up, discarded (compiles the heads' functions on the compiled path)
            decode_one(m, d, prompts.context(items[0]), s, 40, 0)
        compile_s[path] = time.perf_counter() - t0 if path == "compiled" else 0.0
    assert prompts is not None
    m0 = models[paths[0]]
    compiled_before = {p: _compile_seconds(models[p]) for p in paths}
    peer = getattr(m0.target, "reference_generate", None)
    if peer is not None:  # warm-up of the peer, discarded
        peer(prompts.context(items[0]), 8, s)
    rows, peer_rows = [], []
    for rep in range(cfg.repeats):
        for i, u in enumerate(items):
            ctx, budget = prompts.context(u), token_budget(cfg, text_length(u), m0.codec.frame_rate)
            for path in paths:
                for d in cfg.decoders:
                    toks, st = decode_one(models[path], d, ctx, s, budget, cfg.seed + 1000 * rep + i, profile=True)
                    rows.append({"path": path, "decoder": d.name, "utt": u.utt_id, "rep": rep, **st.to_row()})
                    if d.name == cfg.decoders[0].name and path == paths[0]:
                        base_tokens = toks.tolist()
            if peer is not None:
                synchronize(m0.device)
                t0 = time.perf_counter()
                ptoks = peer(ctx, budget, s, seed=cfg.seed + 1000 * rep + i)
                synchronize(m0.device)
                seconds = time.perf_counter() - t0
                peer_rows.append({"utt": u.utt_id, "tokens": ptoks.numel(), "seconds": seconds, "same_tokens": ptoks.tolist() == base_tokens})
    compiled_timed = {p: _compile_seconds(models[p]) - compiled_before[p] for p in paths}
    df = pd.DataFrame(rows)
    base = cfg.decoders[0].name
    # verify forwards are timed half-way into a typical decode: the baseline's mean tokens / 2 after the prompt
    history = int(df[(df["decoder"] == base) & (df["path"] == paths[0])]["tokens"].mean() // 2)
    summaries, verifies, costs = [], [], []
    for path in paths:
        m = models[path]
        dfp = df[df["path"] == path]
        summary = _decoder_table(cfg, dfp, base)
        trees = {d.tree: m.resources.tree(d.tree) for d in cfg.decoders if d.proposer == "heads-tree" and d.tree}
        sizes = sorted({1, 2, 4, 8, 16} | {d.gamma + 1 for d in cfg.decoders if d.method == "speculative" and d.proposer != "heads-tree"})
        vc, cache_len = verify_cost(m, prompts.context(items[0]), sizes=tuple(sizes), trees=trees, history=history)
        one = vc["1"][1]
        verify = pd.DataFrame([{"forward": label, "tokens": n, "cache_slots": cache_len, "ms": 1000 * t, "cost_vs_1": t / one} for label, (n, t) in vc.items()])
        costs.append(_cost_table(cfg, dfp, summary, {label: t / one for label, (_, t) in vc.items()}, path, compile_s[path], compiled_timed[path]))
        summaries.append(summary.assign(path=path)[["path", *summary.columns]])
        verifies.append(verify.assign(path=path)[["path", *verify.columns]])
    summary, verify, cost = pd.concat(summaries, ignore_index=True), pd.concat(verifies, ignore_index=True), pd.concat(costs, ignore_index=True)
    peer_table = None
    if peer_rows:
        p = pd.DataFrame(peer_rows)
        base_rows = df[(df["decoder"] == base) & (df["path"] == paths[0])]
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
    _print(console, summary, "decoders (ratios vs " + base + " of the same path)")
    _print(console, verify, "one target forward over n new tokens")
    _print(console, cost, "cost model: measured speedup vs its bound (docs/metrics.md)")
    if peer_table is not None:
        _print(console, peer_table, f"{base} vs the model's own transformers generate() (same prompts, budget, sampling)")
    if out_md:
        dev = str(m0.device) if m0.device.type == "cpu" else torch.cuda.get_device_name(m0.device)
        load = _load_average()
        text = (
            f"- device: {dev} | torch {torch.__version__} | threads {torch.get_num_threads()} | utterances {len(items)} x repeats {cfg.repeats}"
            + (f" | load average at the end {load}" if load else "")
            + f" | paths {', '.join(paths)}\n\n"
            + summary.to_markdown(index=False, floatfmt=".3f")
            + "\n\n"
            + verify.to_markdown(index=False, floatfmt=".3f")
            + "\n\n"
            + cost.to_markdown(index=False, floatfmt=".3f")
            + "\n"
            + ("\n" + peer_table.to_markdown(index=False, floatfmt=".3f") + "\n" if peer_table is not None else "")
        )
        write_text_atomic(out_md, text)
        write_text_atomic(Path(out_md).with_suffix(".csv"), cost.to_csv(index=False, float_format="%.4f"))
    return summary


def _load_average() -> str:
    try:
        import os

        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return ""


def _decoder_table(cfg: RunConfig, df: pd.DataFrame, base: str) -> pd.DataFrame:
    """The per-decoder ratio table of one decode path (ratios vs that path's baseline)."""
    per = df.groupby(["decoder", "utt"], sort=False).median(numeric_only=True).reset_index()
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
    return pd.DataFrame(table)


def chain_bound(tau: float, gamma: int, c: float, verify: float) -> float:
    """Cost-model speedup bound of a draft chain: ``τ / (γ·c + verify_{γ+1})`` (docs/metrics.md)."""
    return tau / (gamma * c + verify)


def tree_bound(tau: float, heads_cost: float, verify: float) -> float:
    """Cost-model speedup bound of heads (tree or chain): ``τ / (heads_cost + verify_tree)``."""
    return tau / (heads_cost + verify)


def iid_accepted_len(alpha: float, gamma: int) -> float:
    """``E[accepted + 1] = (1 − α^{γ+1}) / (1 − α)`` under i.i.d. per-position acceptance α."""
    return gamma + 1.0 if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def _cost_table(
    cfg: RunConfig, df: pd.DataFrame, summary: pd.DataFrame, vcost: dict[str, float], path: str, compile_s: float, compile_timed: float
) -> pd.DataFrame:
    """Per decoder: costs (ratios to one target step of this path), α, τ, measured speedup, bound."""
    base = cfg.decoders[0].name
    bd = df[df["decoder"] == base]
    t_step = bd["target_seconds"].sum() / max(1, bd["target_calls"].sum())
    rows = []
    for d, srow in zip(cfg.decoders, summary.to_dict("records"), strict=True):
        dd = df[df["decoder"] == d.name]
        row: dict[str, Any] = {"path": path, "decoder": d.name, "step_ms": 1000 * t_step}
        for k in (2, 4, 8, 16):
            row[f"verify_cost_{k}"] = vcost.get(str(k))
        tau = float(srow["mean_accepted_len"])
        alpha = srow["draft_accept_rate"]
        rounds_cost = dd["draft_seconds"].sum() / max(1, dd["target_calls"].sum()) / t_step  # drafting per verify round
        draft_cost = heads_cost = verify = bound = bound_iid = None
        if d.method != "speculative":
            verify, bound = 1.0, 1.0
        elif d.proposer == "draft-chain":
            draft_cost = srow["draft_cost_c"]
            verify = vcost.get(str(d.gamma + 1))
            if draft_cost is not None and verify is not None:
                bound = chain_bound(tau, d.gamma, draft_cost, verify)
                if alpha is not None:
                    bound_iid = chain_bound(iid_accepted_len(float(alpha), d.gamma), d.gamma, draft_cost, verify)
        else:
            heads_cost = rounds_cost
            verify = vcost.get(f"tree {d.tree}") if d.proposer == "heads-tree" else vcost.get(str(d.gamma + 1))
            if verify is not None:
                bound = tree_bound(tau, heads_cost, verify)
        measured = float(srow["latency_speedup"])
        row.update(
            verify_cost_round=verify,
            draft_cost=draft_cost,
            heads_cost=heads_cost,
            alpha=alpha,
            mean_accepted_len=tau,
            speedup=float(srow["speedup"]),
            latency_speedup=measured,
            bound=bound,
            bound_iid=bound_iid,
            bound_fraction=measured / bound if bound else None,
            loop_overhead=srow["loop_overhead"],
            compile_s=compile_s,
            compile_s_timed=compile_timed,
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _print(console: Console, df: pd.DataFrame, title: str) -> None:
    t = Table(title=title)
    for c in df.columns:
        t.add_column(c, justify="left" if c == "decoder" else "right")
    for _, r in df.iterrows():
        t.add_row(*("" if v is None or (isinstance(v, float) and pd.isna(v)) else f"{v:.3f}" if isinstance(v, float) else str(v) for v in r))
    console.print(t)
