"""PNG plots of a summary table (matplotlib, Agg backend; no display and no global pyplot state).

- ``pareto.png``: speedup vs WER, one point per decoder, coloured by proposer × rule family, with each
  family's Pareto front (no other point of the family is both faster and lower-WER) and the WER of
  the reference rows (ground truth, codec round trip) as horizontal lines.
- ``accepted_len_vs_<p>.png``: mean accepted length against each of γ / τ / θ that a family swept,
  one line per setting of the family's other swept parameters (error bars = std over repeats).
- ``accept_at_pos.png``: per-position acceptance ``accept_at_pos[i]``, one panel per family.

All functions take the table written by :func:`specbench.bench.report.summarize` (or several of them
stacked with a ``run`` column) and skip a plot whose columns are absent (e.g. WER without scoring).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pandas as pd

from specbench.bench.report import parse_curve

SWEEP_AXES = {"gamma": "γ (draft length / heads)", "tau": "τ (tolerance)", "theta": "θ (group threshold)"}
SETTING_COLS = ["gamma", "beta", "tau", "theta", "tree"]
SYMBOLS = {"gamma": "γ", "beta": "β", "tau": "τ", "theta": "θ", "tree": "tree"}
MAX_LEGEND = 14


def _figure(width: float = 6.4, height: float = 4.6) -> Any:
    """A Figure bound to the Agg canvas explicitly, so plotting works headless and thread-safely."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _val(v: Any) -> str:
    """A parameter value for a label (3.0 → '3', 0.4 → '0.4', 'builtin:vadusa-32' → 'vadusa-32')."""
    if isinstance(v, str):
        try:  # grouping keys arrive as strings ('2.0')
            v = float(v)
        except ValueError:
            return v.rsplit(":", 1)[-1]
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).rsplit(":", 1)[-1]


def family(row: pd.Series) -> str:
    """'baseline', 'draft alone' or 'proposer × rule' of a speculative decoder (prefixed by the run when stacked)."""
    prop, rule = row.get("proposer"), row.get("rule")
    if isinstance(prop, str) and row.get("candidates") == "sample" and prop.startswith("heads"):
        prop += " (sampled)"  # same proposer, different candidates: a different method
    if isinstance(prop, str):
        name = f"{prop} × {rule}"
    else:  # a baseline-method row that ran a draft model in the target's place
        name = "draft alone" if isinstance(row.get("draft"), str) else "baseline"
    run = row.get("run")
    return f"{run}: {name}" if isinstance(run, str) else name


def _decoders(table: pd.DataFrame) -> pd.DataFrame:
    d = table[table["kind"] == "decoder"] if "kind" in table else table
    return d.assign(family=d.apply(family, axis=1))


def pareto_front(points: pd.DataFrame, x: str = "speedup", y: str = "wer") -> pd.DataFrame:
    """Rows not dominated by another (higher ``x`` and lower ``y``, one of them strictly), by ``x``."""
    pts = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[False, True])
    keep, best = [], math.inf
    for idx, row in pts.iterrows():
        if row[y] < best:
            keep.append(idx)
            best = row[y]
    return pts.loc[keep].sort_values(x)


def plot_pareto(table: pd.DataFrame, path: Path) -> Path | None:
    """Speedup (tokens/s ratio vs the baseline) against WER; None when either column is missing."""
    dec = _decoders(table)
    if "wer" not in dec or "speedup" not in dec or dec[["speedup", "wer"]].dropna().empty:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    fams = list(dict.fromkeys(dec["family"]))
    for fam, color in zip(fams, _colors(len(fams)), strict=True):
        pts = dec[dec["family"] == fam].dropna(subset=["speedup", "wer"])
        if pts.empty:
            continue
        marker = "*" if fam.endswith("baseline") else "D" if fam.endswith("draft alone") else "o"
        ax.scatter(pts["speedup"], pts["wer"], color=color, marker=marker, s=90 if marker == "*" else 28, label=fam, zorder=3)
        front = pareto_front(pts)
        if len(front) > 1:
            ax.plot(front["speedup"], front["wer"], color=color, lw=1.2, alpha=0.8, zorder=2)
        if len(dec) <= 16:
            for _, r in pts.iterrows():
                ax.annotate(str(r["decoder"]), (r["speedup"], r["wer"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    refs = table[table["kind"] == "reference"] if "kind" in table else table.iloc[0:0]
    for ls, (_, r) in zip(itertools.cycle(("--", ":", "-.")), refs.dropna(subset=["wer"]).iterrows()):
        label = str(r["decoder"]) + (f" ({r['run']})" if isinstance(r.get("run"), str) else "")
        ax.axhline(r["wer"], color="grey", ls=ls, lw=1, label=f"{label} WER")
    ax.axvline(1.0, color="black", lw=0.6, alpha=0.4)
    ax.set_xlabel("speedup (tokens/s vs baseline, same utterances)")
    ax.set_ylabel("WER (lower is better)")
    ax.set_title("speedup vs WER (lines: Pareto front per family)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.savefig(path)
    return path


def _swept(rows: pd.DataFrame, cols: list[str]) -> list[str]:
    return [c for c in cols if c in rows and rows[c].dropna().nunique() > 1]


def plot_accepted_len(table: pd.DataFrame, axis: str, path: Path) -> Path | None:
    """Mean accepted length vs ``axis`` for every family that swept it; None when none did."""
    dec = _decoders(table)
    spec = dec[~dec["family"].str.endswith(("baseline", "draft alone"))]
    if axis not in spec or "mean_accepted_len" not in spec:
        return None
    series: list[tuple[str, pd.DataFrame]] = []
    for fam in dict.fromkeys(spec["family"]):
        rows = spec[spec["family"] == fam].dropna(subset=[axis, "mean_accepted_len"])
        if rows[axis].nunique() < 2:
            continue
        others = [c for c in _swept(rows, SETTING_COLS) if c != axis]
        groups = rows.groupby([rows[c].astype(str) for c in others], sort=True) if others else [((), rows)]
        for key, g in groups:
            key = key if isinstance(key, tuple) else (key,)
            setting = ", ".join(f"{SYMBOLS[c]}={_val(v)}" for c, v in zip(others, key, strict=True))
            series.append((f"{fam}" + (f" {setting}" if setting else ""), g.sort_values(axis)))
    if not series:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for (label, g), color in zip(series, _colors(len(series)), strict=True):
        std = g["mean_accepted_len_std"] if "mean_accepted_len_std" in g else None
        ax.errorbar(g[axis].astype(float), g["mean_accepted_len"], yerr=std, color=color, marker="o", ms=4, lw=1.2, capsize=2, label=label)
    ax.axhline(1.0, color="black", lw=0.6, alpha=0.4)
    ax.set_xlabel(SWEEP_AXES.get(axis, axis))
    ax.set_ylabel("mean accepted length (tokens / round)")
    ax.set_title(f"mean accepted length vs {SYMBOLS.get(axis, axis)}")
    ax.grid(alpha=0.3)
    if len(series) <= MAX_LEGEND:
        ax.legend(fontsize=7, loc="best")
    fig.savefig(path)
    return path


def plot_accept_at_pos(table: pd.DataFrame, path: Path) -> Path | None:
    """``accept_at_pos[i]`` curves, one panel per family; None when no decoder drafted."""
    from matplotlib.ticker import MaxNLocator

    if "accept_at_pos" not in table:
        return None
    dec = _decoders(table)
    dec = dec.assign(curve=dec["accept_at_pos"].map(parse_curve))
    dec = dec[dec["curve"].map(len) > 0]
    if dec.empty:
        return None
    fams = list(dict.fromkeys(dec["family"]))
    cols = min(3, len(fams))
    nrows = math.ceil(len(fams) / cols)
    fig = _figure(4.2 * cols + 0.8, 3.4 * nrows + 0.4)
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, fam in zip(axes, fams, strict=False):
        rows = dec[dec["family"] == fam]
        # many curves (a grid sweep): colour by one swept setting and label each value once
        swept = _swept(rows, ["beta", "tau", "theta", "tree", "gamma"])
        by = swept[0] if swept and len(rows) > MAX_LEGEND else None
        keys = list(dict.fromkeys(rows[by].map(_val))) if by else list(rows["decoder"])
        colors = dict(zip(keys, _colors(len(keys)), strict=True))
        seen: set[str] = set()
        for _, r in rows.iterrows():
            key = _val(r[by]) if by else str(r["decoder"])
            label = (f"{SYMBOLS[by]}={key}" if by else key) if key not in seen else None
            seen.add(key)
            xs = list(range(1, len(r["curve"]) + 1))
            ax.plot(xs, r["curve"], marker="o", ms=3, lw=1, color=colors[key], label=label, alpha=0.85)
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("draft position i (tree: depth)")
        ax.set_ylabel("rounds accepting position i / rounds")
        ax.set_title(fam, fontsize=9)
        ax.grid(alpha=0.3)
        if len(seen) <= MAX_LEGEND:
            ax.legend(fontsize=6, loc="best")
    for ax in axes[len(fams) :]:
        ax.set_visible(False)
    fig.suptitle("per-position acceptance (accept_at_pos)")
    fig.savefig(path)
    return path


def write_plots(run_dir: Path, table: pd.DataFrame, *, prefix: str = "", plots_dir: Path | None = None) -> list[Path]:
    """Write every applicable plot of ``table`` as ``<run_dir>/plots/<prefix><name>.png``; returns the paths.

    ``plots_dir`` overrides the folder (``specbench paper-table`` writes into ``results/plots``).
    Old plots of the same names are replaced; plots that no longer apply are removed so a folder
    never shows a figure from an earlier state of the run.
    """
    folder = plots_dir or run_dir / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Any]] = [("pareto", lambda p: plot_pareto(table, p))]
    jobs += [(f"accepted_len_vs_{axis}", lambda p, a=axis: plot_accepted_len(table, a, p)) for axis in SWEEP_AXES]
    jobs.append(("accept_at_pos", lambda p: plot_accept_at_pos(table, p)))
    written = []
    for name, fn in jobs:
        path = folder / f"{prefix}{name}.png"
        tmp = path.with_name(path.stem + ".tmp.png")  # matplotlib picks the format from the suffix
        if fn(tmp) is not None:
            tmp.replace(path)
            written.append(path)
        elif path.exists():
            path.unlink()
    return written
