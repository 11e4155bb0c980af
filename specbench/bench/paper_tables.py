"""``specbench paper-table``: a run's results in the layout of the corresponding paper's table.

- ``ssd`` (SSD, Table 3): rows per (γ, β) of the draft chain with the β rule (β = 0 is the lossless
  ``exact`` control) — WER, SIM, LM-RTF, speedup, mean accepted length, draft acceptance rate.
- ``vadusa``: rows per (τ, tree budget) of heads-tree × tolerance; other heads decoders (dense tree,
  heads chains by number of heads) in a second table.
- ``pcg``: rows per (θ, γ) of the group rule — acceptance, mean accepted length, speedup, WER, SIM and
  any ``group_*`` statistics the records carry; other speculative decoders of the run (SSD, SD at the
  same γ) in a second table.

Below our tables, the paper's own numbers are printed in a separate, labelled block — only numbers
stated in docs/methods.md (the project's reading of the papers); anything else says "not reported".
They come from other models, data and hardware: they show the shape to expect, not a target to match.
The plots of :mod:`specbench.bench.plots` are written next to the Markdown (``plots/<method>-*.png``)
and embedded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from specbench.bench.report import DELTA_COLS, display_frame, load_summary
from specbench.errors import ConfigError, RunStateError
from specbench.jsonl import write_text_atomic

Select = Callable[[pd.Series], bool]
NR = "not reported"

SSD_PAPER = f"""Source: SSD, arXiv 2505.15380 (Interspeech 2025), as summarised in docs/methods.md §2. Target CosyVoice 2 LM
(24 layers), draft of 8 layers initialised from target layers {{1, 2}} + {{19..24}}; LibriTTS test-clean, 500 utterances,
A100. The paper's WER values read as percentages (3.67 = 3.67 %); specbench's `wer` is a fraction (0.05 = 5 %).

| paper row | γ | β | WER (%) | SS (SIM) | LM-RTF | speedup | NMOS | mean accepted length | draft acceptance rate |
|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|
| autoregressive baseline | – | – | 3.67 | 0.62 | 0.504 | 1.00 (by definition) | 3.96 | {NR} | {NR} |
| SSD | 3 | 0.4 | 5.70 | 0.63 | 0.360 | 1.40× | 3.94 | {NR} | {NR} |
| lossless SD (β = 0) | {NR} | 0 | {NR} | {NR} | 0.509 | "no speedup" | {NR} | {NR} | {NR} |
| draft model alone | – | – | 16.13 | {NR} | 0.222 | {NR} | {NR} | – | – |

Other (γ, β) cells of the paper's grid: {NR} (docs/methods.md states only the rows above)."""

VADUSA_PAPER = f"""Source: VADUSA, arXiv 2410.21951 (ICASSP 2025), as summarised in docs/methods.md §3.

| paper claim | value |
|:--|:--|
| speedup | up to 2.94× (abstract-level summaries also say ~4×) |
| WER | equal or better than autoregressive decoding |
| tokens / data | HuBERT, wav2vec 2.0 and EnCodec tokens; LibriTTS and LibriHeavy |
| number of draft heads | {NR} (specbench default K = 4) |
| per-(τ, tree budget) WER, SIM, speedup, mean accepted length | {NR} |"""

PCG_PAPER = f"""Source: PCG, arXiv 2511.13732 (ICASSP 2026), as summarised in docs/methods.md §4 (from secondary sources).

| paper claim | value |
|:--|:--|
| speed | about 40 % faster than standard speculative decoding |
| quality | WER, SIM and NMOS maintained |
| stress test | swapping 91.4 % of tokens within their groups moved WER by +0.007 and SIM by −0.027 |
| group storage | ≈ 37 MB for a 65k vocabulary |
| best θ | ≈ 0.45 |
| per-θ acceptance, mean accepted length, speedup, WER, SIM | {NR} |"""


def tree_budget(tree: object) -> str:
    """The node budget of a tree reference ('builtin:vadusa-32' → '32'); shapes without one keep their name."""
    if not isinstance(tree, str):
        return ""
    stem = tree.rsplit(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".json")
    m = re.search(r"(\d+)$", stem)
    return m.group(1) if m else stem


def _is(col: str, pred: Callable[[object], bool]) -> Select:
    return lambda r: pred(r.get(col))


def _str(v: object) -> str:
    return v if isinstance(v, str) else ""


@dataclass(frozen=True)
class Layout:
    """How one paper's table is laid out: which rows, keyed by which settings, with which metrics."""

    method: str
    title: str
    recipe: str
    main: Select
    keys: tuple[tuple[str, str], ...]
    metrics: tuple[tuple[str, str], ...]
    other: Select
    other_keys: tuple[tuple[str, str], ...]
    paper: str
    empty_hint: str


COMMON_METRICS = (
    ("wer", "WER"),
    ("wer_median", "WER median"),
    ("wer_delta", "WER Δ vs baseline [95 % CI]"),
    ("sim", "SIM"),
    ("lm_rtf", "LM-RTF"),
    ("latency_speedup", "speedup (LM-RTF ratio)"),
    ("speedup", "speedup (tokens/s)"),
    ("mean_accepted_len", "mean accepted length"),
    ("draft_accept_rate", "draft acceptance rate"),
)

LAYOUTS: dict[str, Layout] = {
    "ssd": Layout(
        method="ssd",
        title="SSD (paper Table 3 layout): draft-model chain × β rule",
        recipe="recipes/ssd_sweep.yaml",
        main=lambda r: r.get("proposer") == "draft-chain" and r.get("rule") in ("beta", "exact"),
        keys=(("gamma", "γ"), ("beta", "β")),
        metrics=COMMON_METRICS,
        other=lambda r: isinstance(r.get("proposer"), str),
        other_keys=(("proposer", "proposer"), ("rule", "rule"), ("gamma", "γ"), ("beta", "β"), ("tau", "τ"), ("theta", "θ"), ("tree", "tree")),
        paper=SSD_PAPER,
        empty_hint="no draft-chain × beta/exact decoders in this run: run recipes/ssd_sweep.yaml (make table-ssd)",
    ),
    "vadusa": Layout(
        method="vadusa",
        title="VADUSA: draft heads tree × tolerance, rows per (τ, tree budget)",
        recipe="recipes/vadusa_sweep.yaml",
        main=lambda r: r.get("proposer") == "heads-tree" and _str(r.get("rule")).startswith("tolerance"),
        keys=(("tau", "τ"), ("tree_budget", "tree budget (nodes)"), ("rule", "rule")),
        metrics=COMMON_METRICS,
        other=lambda r: _str(r.get("proposer")).startswith("heads"),
        other_keys=(("proposer", "proposer"), ("rule", "rule"), ("gamma", "heads (γ)"), ("tau", "τ"), ("tree_budget", "tree")),
        paper=VADUSA_PAPER,
        empty_hint="no heads-tree × tolerance decoders in this run: run recipes/vadusa_sweep.yaml (make table-vadusa)",
    ),
    "pcg": Layout(
        method="pcg",
        title="PCG: draft-model chain × group rule, rows per θ",
        recipe="recipes/pcg_sweep.yaml",
        main=lambda r: r.get("rule") == "group",
        keys=(("theta", "θ"), ("gamma", "γ")),
        metrics=(
            ("draft_accept_rate", "acceptance (draft tokens)"),
            ("mean_accepted_len", "mean accepted length"),
            ("speedup", "speedup (tokens/s)"),
            ("latency_speedup", "speedup (LM-RTF ratio)"),
            ("wer", "WER"),
            ("wer_median", "WER median"),
            ("wer_delta", "WER Δ vs baseline [95 % CI]"),
            ("sim", "SIM"),
            ("lm_rtf", "LM-RTF"),
        ),
        other=lambda r: isinstance(r.get("proposer"), str),
        other_keys=(("proposer", "proposer"), ("rule", "rule"), ("gamma", "γ"), ("beta", "β"), ("tau", "τ"), ("tree", "tree")),
        paper=PCG_PAPER,
        empty_hint="no group-rule decoders in this run: run recipes/pcg_sweep.yaml (make table-pcg)",
    ),
}


def _sort_key(v: object) -> tuple[int, float, str]:
    """Numbers before names, numerically; keeps 'dense-small' after 16/32/64."""
    try:
        return (0, float(v), "")  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def _section(rows: pd.DataFrame, keys: tuple[tuple[str, str], ...], metrics: tuple[tuple[str, str], ...], extra: list[str]) -> str:
    """One Markdown table: settings, metrics (± std over repeats), extra stats, then the decoder name."""
    metric_cols = [c for c, _ in metrics] + extra
    cols = [c for c, _ in keys] + [x for c in metric_cols for x in (c, f"{c}_std")] + ["decoder"]
    if "wer_delta" in metric_cols:  # its interval, shown in the same cell by display_frame
        cols += DELTA_COLS[1:]
    frame = rows.reindex(columns=cols)
    shown = display_frame(frame.assign(kind="decoder"), keep_empty=True)
    shown = shown[[c for c in shown.columns if not c.endswith("_std")]]
    names = dict(keys) | dict(metrics)
    shown = shown.rename(columns={c: names.get(c, c) for c in shown.columns})
    return shown.to_markdown(index=False)


def paper_table(method: str, run_dir: Path, out: Path, plots_dir: Path | None = None) -> Path:
    """Write ``out`` (Markdown) for ``run_dir`` in the layout of ``method``'s paper; returns ``out``."""
    if method not in LAYOUTS:
        raise ConfigError(f"unknown paper table '{method}': use {', '.join(LAYOUTS)}")
    layout = LAYOUTS[method]
    summary, _, header = load_summary(run_dir)
    summary = summary.assign(tree_budget=summary["tree"].map(tree_budget) if "tree" in summary else "")
    dec = summary[summary["kind"] == "decoder"]
    if "beta" in dec and method == "ssd":
        # exact is the β = 0 point of the β rule (methods.md §2): show it in the grid as such
        dec = dec.assign(beta=dec["beta"].where(dec["rule"] != "exact", 0.0))
    is_main = dec.apply(layout.main, axis=1) if not dec.empty else pd.Series(dtype=bool)
    main = dec[is_main]
    if main.empty:
        raise RunStateError(f"{run_dir}: {layout.empty_hint}")
    main = main.sort_values([c for c, _ in layout.keys if c in main], key=lambda s: s.map(_sort_key))
    baseline = dec[~dec.apply(lambda r: isinstance(r.get("proposer"), str), axis=1)]
    # the baseline has no draft: its recorded γ = 0 would read as a grid point
    baseline = baseline.assign(**{c: "–" for c in ("gamma", "beta", "tau", "theta", "tree", "tree_budget", "rule", "proposer") if c in baseline})
    others = dec[~is_main & dec.apply(layout.other, axis=1)]
    refs = summary[summary["kind"] == "reference"]
    extra = [c for c in summary.columns if c.startswith("group_") and not c.endswith("_std")] if method == "pcg" else []

    plots_dir = plots_dir or out.parent / "plots"
    from specbench.bench.plots import write_plots

    plots = write_plots(run_dir, summary, prefix=f"{method}-", plots_dir=plots_dir)

    parts = [f"# {layout.title}", ""]
    parts += [f"- {line}" for line in header]
    parts += [
        f"- produced by: `specbench run {layout.recipe}` then `specbench paper-table {method} {run_dir} --out {out}`",
        "- speedups are against the baseline rows of the same run and the same utterances; timings are only comparable within one device",
        "",
        "## specbench results",
        "",
        _section(pd.concat([baseline, main]), layout.keys, layout.metrics, extra),
    ]
    if not others.empty:
        parts += ["", "### other decoders in this run", "", _section(pd.concat([baseline, others]), layout.other_keys, layout.metrics, [])]
    if not refs.empty:
        parts += [
            "",
            "### ceilings (reference audio scored the same way)",
            "",
            _section(refs, (), (("wer", "WER"), ("wer_median", "WER median"), ("sim", "SIM"), ("sim_other", "SIM to other speakers")), []),
        ]
    parts += ["", "## paper numbers (for reference; other model, data and hardware)", "", layout.paper]
    if plots:
        parts += ["", "## plots", ""]
        parts += [f"![{p.stem}]({_rel(p, out.parent)})\n" for p in plots]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(parts).rstrip() + "\n")
    return out


def _rel(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it is inside it (the usual results/plots case), else absolute."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.resolve().as_posix()
