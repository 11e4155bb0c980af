"""REPORT: aggregate records + scores into ``summary.csv`` / ``summary.md``, a rich table and plots.

Definitions (docs/metrics.md): per (decoder, utterance) the median over repeats of each timing, then
``tokens_per_s`` = mean over utterances; ``speedup`` = mean tokens_per_s(method) / mean
tokens_per_s(baseline) over the SAME utterances; ``latency_speedup`` = Σ lm_seconds(baseline) /
Σ lm_seconds(method); ``call_speedup`` = Σ target_calls(baseline) / Σ target_calls(method);
``mean_accepted_len`` = Σ tokens / Σ rounds; ``draft_accept_rate`` = Σ accepted / Σ proposed;
``wer``/``cer``/``sim``/``sim_other`` = means over rows, ``wer_median`` = median per-utterance WER,
``asr_loops`` = number of scored clips whose transcript is an ASR repetition loop (the score rows'
``asr_loop``; :mod:`specbench.scoring.loops`), ``wer_delta`` [``wer_delta_lo``, ``wer_delta_hi``] = the
paired WER difference to the baseline over the same utterances with its 95 % bootstrap interval
(:func:`specbench.scoring.wer.paired_wer_delta`). The baseline is the decoder with method
``baseline`` and no ``draft`` named ``baseline`` (else the first such decoder); a baseline-method
decoder with a ``draft`` ran that draft alone and is compared like any other row.

With ``repeats > 1`` every metric is also computed on each repeat alone (speedups against the
baseline's rows of the same repeat) and ``<metric>_std`` is the sample standard deviation of those
per-repeat values: the headline value keeps the definition above, the spread says how stable it is.
Tables show such cells as ``value ± std``.

Several run folders can be reported together (:func:`report_runs`): each run is summarised on its own
(so speedups are always against the baseline rows of the SAME run) and the tables are stacked with a
``run`` column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

from specbench.config import RunConfig
from specbench.errors import RunStateError
from specbench.jsonl import read_jsonl, write_text_atomic

SPEED_COLS = [
    "tokens",
    "target_calls",
    "mean_accepted_len",
    "draft_accept_rate",
    "tokens_per_s",
    "lm_rtf",
    "e2e_rtf",
    "speedup",
    "latency_speedup",
    "call_speedup",
]
QUALITY_COLS = ["wer", "wer_median", "asr_loops", "cer", "sim", "sim_other"]
# paired against the baseline (shown as one cell ``delta [lo, hi]``); not computed per repeat
DELTA_COLS = ["wer_delta", "wer_delta_lo", "wer_delta_hi"]
# quality columns that are counts over all scored clips (every repeat), not means: no ``_std`` column
COUNT_COLS = ["asr_loops"]
# ``draft``: the draft model of a draft chain, or the model a "draft alone" baseline ran in the target's place
PARAM_COLS = ["proposer", "draft", "draft_alignment", "candidates", "rule", "gamma", "beta", "tau", "theta", "tree"]
# metrics that get a ``<metric>_std`` column over repeats (all but the counts: under sampling every
# repeat draws new tokens, so even counts such as target_calls vary between repeats)
STD_METRICS = [*SPEED_COLS, *(c for c in QUALITY_COLS if c not in COUNT_COLS)]
# numeric per-utterance columns a decoder may add to its records (e.g. PCG group statistics); they
# are averaged per decoder so that paper tables can show them without the report knowing each one
EXTRA_PREFIXES = ("group_",)


def accept_curve(d: pd.DataFrame) -> str:
    """``accept_at_pos[i]`` = Σ rounds whose i-th draft was accepted / Σ verify rounds, as 'a/b/c'."""
    lists = [x for x in d["accept_at_pos"] if isinstance(x, list) and x]
    if not lists:
        return ""
    width = max(len(x) for x in lists)
    totals = [sum(x[i] for x in lists if i < len(x)) for i in range(width)]
    rounds = max(1, int(d.loc[d["proposed"] > 0, "target_calls"].sum()))
    return "/".join(f"{t / rounds:.2f}" for t in totals)


def parse_curve(text: Any) -> list[float]:
    """The inverse of :func:`accept_curve` ('0.62/0.45' → [0.62, 0.45]; empty or NaN → [])."""
    if not isinstance(text, str) or not text.strip():
        return []
    return [float(x) for x in text.split("/")]


def load_frame(out: Path, scorer: str | None) -> pd.DataFrame:
    """Records joined with the scores of ``scorer`` (the newest scorer in the run when None)."""
    rec_path = out / "records.jsonl"
    if not rec_path.is_file():
        raise RunStateError(f"no records.jsonl in {out}: run `specbench run` or `specbench generate` first")
    rec = pd.DataFrame(list(read_jsonl(rec_path)))
    if rec.empty:
        raise RunStateError(f"{rec_path} holds no rows yet: run `specbench run` or `specbench generate` first")
    rec["key"] = rec["decoder"] + "|" + rec["utt_id"] + "|" + rec["repeat"].astype(str)
    score_path = out / "scores.jsonl"
    if score_path.is_file():
        sc = pd.DataFrame(list(read_jsonl(score_path)))
        if not sc.empty:
            chosen = scorer if scorer in set(sc["scorer"]) else sc["scorer"].iloc[-1]
            sc = sc[sc["scorer"] == chosen].drop_duplicates("key", keep="last")
            rec = rec.merge(sc.drop(columns=["scorer"]), on="key", how="left")
    return rec


def _baseline_name(df: pd.DataFrame) -> str | None:
    dec = df[df["kind"] == "decoder"]
    if "draft" in dec:  # a baseline that ran a draft model alone is a row to compare, not the reference
        dec = dec[dec["draft"].isna()]
    names = list(dict.fromkeys(dec.loc[dec["method"] == "baseline", "decoder"]))
    if "baseline" in names:
        return "baseline"
    return names[0] if names else None


def _per_utt(d: pd.DataFrame) -> pd.DataFrame:
    """One row per utterance: median of the timings over repeats, mean of the counts."""
    agg = {c: "median" for c in ("tokens_per_s", "lm_seconds", "lm_rtf", "e2e_rtf") if c in d}
    agg.update({c: "mean" for c in ("tokens", "target_calls", "rounds", "proposed", "accepted") if c in d})
    return d.groupby("utt_id", sort=False).agg(agg)


def _decoder_metrics(d: pd.DataFrame, base: pd.DataFrame | None) -> dict[str, Any]:
    """Every speed and quality metric of one decoder's rows ``d`` (``base``: the baseline's rows)."""
    u = _per_utt(d)
    row: dict[str, Any] = {
        "tokens": u["tokens"].mean(),
        "target_calls": u["target_calls"].mean(),
        "mean_accepted_len": d["tokens"].sum() / max(1, d["rounds"].sum()),
        "draft_accept_rate": d["accepted"].sum() / d["proposed"].sum() if d["proposed"].sum() else None,
        "tokens_per_s": u["tokens_per_s"].mean(),
        "lm_rtf": u["lm_rtf"].mean(),
        "e2e_rtf": u["e2e_rtf"].mean(),
    }
    if base is not None and not base.empty:
        b = _per_utt(base)
        common = u.index.intersection(b.index)
        if len(common):
            row["speedup"] = u.loc[common, "tokens_per_s"].mean() / b.loc[common, "tokens_per_s"].mean()
            row["latency_speedup"] = b.loc[common, "lm_seconds"].sum() / u.loc[common, "lm_seconds"].sum()
            calls = u.loc[common, "target_calls"].sum()
            row["call_speedup"] = b.loc[common, "target_calls"].sum() / calls if calls else None
    row.update(_quality(d))
    return row


def _wer_delta(d: pd.DataFrame, base: pd.DataFrame | None) -> dict[str, float]:
    """``wer_delta`` and its interval: per-utterance WER (mean over repeats) of ``d`` paired with the baseline's."""
    from specbench.scoring.wer import paired_wer_delta

    if base is None or "wer" not in d or "wer" not in base:
        return {}
    per_utt = [x[x["wer"].notna()].groupby("utt_id")["wer"].mean().astype(float).to_dict() for x in (d, base)]
    res = paired_wer_delta(per_utt[0], per_utt[1])
    return dict(zip(DELTA_COLS, res, strict=True)) if res else {}


def _extra_cols(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(EXTRA_PREFIXES) and pd.api.types.is_numeric_dtype(df[c])]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per decoder (then the reference rows), columns named as the metric definitions."""
    rows: list[dict[str, Any]] = []
    dec = df[df["kind"] == "decoder"]
    base_name = _baseline_name(df)
    base = dec[dec["decoder"] == base_name] if base_name is not None else None
    extras = _extra_cols(dec)
    for name in list(dict.fromkeys(dec["decoder"])):
        d = dec[dec["decoder"] == name]
        row: dict[str, Any] = {"decoder": name, "kind": "decoder", "n": int(d["utt_id"].nunique()), "repeats": int(d["repeat"].nunique())}
        for p in PARAM_COLS:
            if p in d and d[p].notna().any():
                row[p] = d[p].dropna().iloc[0]
        if "accept_at_pos" in d and d["proposed"].sum():
            row["accept_at_pos"] = accept_curve(d)
        row.update(_decoder_metrics(d, base))
        if name != base_name:
            row.update(_wer_delta(d, base))
        for c in extras:
            if d[c].notna().any():
                row[c] = d[c].astype(float).mean()
        if row["repeats"] > 1:
            row.update(_repeat_spread(d, base))
        rows.append(row)
    for name in list(dict.fromkeys(df.loc[df["kind"] == "reference", "decoder"])):
        d = df[df["decoder"] == name]
        rows.append({"decoder": name, "kind": "reference", "n": int(d["utt_id"].nunique()), "repeats": 1, **_quality(d)})
    metric_cols = [x for c in SPEED_COLS + QUALITY_COLS for x in (c, f"{c}_std")]
    at = metric_cols.index("wer_median_std") + 1
    metric_cols[at:at] = DELTA_COLS
    cols = ["decoder", "kind", *PARAM_COLS, "n", "repeats", *metric_cols, *extras, "accept_at_pos"]
    table = pd.DataFrame(rows)
    return table.reindex(columns=[c for c in cols if c in table.columns])


def _repeat_spread(d: pd.DataFrame, base: pd.DataFrame | None) -> dict[str, float]:
    """``<metric>_std``: sample std over repeats of the metric computed on each repeat alone."""
    per_rep = []
    for rep in sorted(d["repeat"].unique()):
        b = base[base["repeat"] == rep] if base is not None else None
        per_rep.append(_decoder_metrics(d[d["repeat"] == rep], b))
    out: dict[str, float] = {}
    for c in STD_METRICS:
        vals = pd.Series([r.get(c) for r in per_rep], dtype=float).dropna()
        if len(vals) > 1:
            out[f"{c}_std"] = float(vals.std(ddof=1))
    return out


def _asr_loops(d: pd.DataFrame) -> int | None:
    """How many scored rows of ``d`` are ASR loops: the rows' ``asr_loop`` flag, recomputed from ``hyp``
    for rows scored before the flag existed; None when no row carries either."""
    from specbench.scoring.loops import is_asr_loop

    scored = d[d["wer"].notna()] if "wer" in d else d.iloc[:0]
    flags = scored["asr_loop"] if "asr_loop" in scored else pd.Series(None, index=scored.index, dtype=object)
    hyps = scored["hyp"] if "hyp" in scored else pd.Series(None, index=scored.index, dtype=object)
    known = [bool(f) if pd.notna(f) else is_asr_loop(str(h)) for f, h in zip(flags, hyps, strict=True) if pd.notna(f) or isinstance(h, str)]
    return int(sum(known)) if known else None


def _quality(d: pd.DataFrame) -> dict[str, Any]:
    """Means over scored rows (counts for :data:`COUNT_COLS`); WER/CER pooled over the corpus when the
    normaliser's convention says so."""
    out = {c: (d[c].astype(float).mean() if c in d and d[c].notna().any() else None) for c in QUALITY_COLS if c not in COUNT_COLS}
    # robust to the few clips on which a small ASR loops ("pah, pah, pah ...": per-utterance WER ≫ 1)
    out["wer_median"] = float(d["wer"].astype(float).median()) if "wer" in d and d["wer"].notna().any() else None
    out["asr_loops"] = _asr_loops(d)  # ... and how many such clips there are
    if "normalizer" in d and d["normalizer"].notna().any():
        from specbench.scoring.wer import DEFAULT_AGGREGATION, aggregate_cer, aggregate_wer

        name = str(d["normalizer"].dropna().iloc[0]).split("@")[0]
        mode = next((m for k, m in DEFAULT_AGGREGATION.items() if name.startswith(k)), "mean")
        rows = d[d["wer"].notna()].to_dict("records")
        if rows and mode == "corpus":
            out["wer"], out["cer"] = aggregate_wer(rows, mode), aggregate_cer(rows, mode)
    return out


def _envs(out: Path) -> list[dict[str, Any]]:
    """``env.json`` then ``env-2.json``, ``env-3.json`` ... (one per generation session)."""
    paths = [out / "env.json"] + sorted(out.glob("env-*.json"), key=lambda p: int(p.stem.split("-")[1]) if p.stem.split("-")[1].isdigit() else 0)
    envs = []
    for p in paths:
        if p.is_file():
            try:
                envs.append(json.loads(p.read_text()))
            except json.JSONDecodeError:
                continue
    return envs


def header_lines(out: Path, df: pd.DataFrame, cfg: RunConfig | None) -> list[str]:
    """Provenance printed above every table: device, CPU, versions, commit, scorers, settings.

    A run resumed on another machine has several env files; when their devices or commits differ the
    header says so, because timings of different devices must not be compared.
    """
    envs = _envs(out)
    env = envs[0] if envs else {}
    first = df.iloc[0]
    lines = [
        f"run: {out.name}"
        + (f" | seed {cfg.seed} | repeats {cfg.repeats}" if cfg else "")
        + (f" | generated {env['timestamp']}" if env.get("timestamp") else ""),
        f"device: {env.get('device', '?')} ({env.get('device_name', '?')}) | CPU: {env.get('cpu', '?')} x{env.get('cpu_count', '?')}"
        f" | threads {env.get('torch_threads', '?')} | python {env.get('python', '?')} | torch {env.get('torch', '?')} | CUDA {env.get('cuda')}"
        f" | commit {env.get('git_commit', '?')}" + (f" | shards {env['shards']} (Ray workers)" if env.get("shards", 1) > 1 else ""),
        f"model: {first.get('model', '?')} | codec: {first.get('codec_id', '?')}",
    ]
    if len(envs) > 1:
        devices = sorted({f"{e.get('device', '?')} ({e.get('device_name', '?')})" for e in envs})
        commits = sorted({str(e.get("git_commit", "?")) for e in envs})
        note = f"sessions: {len(envs)} (env.json … env-{len(envs)}.json)"
        if len(devices) > 1:
            note += f" | WARNING: rows were generated on different devices ({', '.join(devices)}): timings are not comparable"
        if len(commits) > 1:
            note += f" | commits differ: {', '.join(commits)}"
        lines.append(note)
    if cfg:
        s = cfg.sampling
        lines.append(
            f"sampling: temperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p} | corpus: {cfg.corpus.kind}:{cfg.corpus.root}/{cfg.corpus.subset}"
        )
    if "asr_model" in df and df["asr_model"].notna().any():
        scored = df[df["asr_model"].notna()].iloc[0]
        lines.append(f"asr: {scored['asr_model']} | speaker: {scored['speaker_model']} | normalizer: {scored['normalizer']}")
    return lines


# columns whose numbers are settings or counts: shown as integers when integral (γ 3, not 3.000)
INT_LIKE = {"gamma", "tau", "n", "repeats", "asr_loops"}


def _fmt(v: Any, col: str = "") -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if col in INT_LIKE and isinstance(v, float) and v.is_integer():
        return str(int(v))
    if col in PARAM_COLS and isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def _delta_cell(delta: Any, lo: Any, hi: Any) -> str:
    """``+0.071 [-0.016, +0.156]``; empty when there is no paired difference."""
    if delta is None or pd.isna(delta):
        return ""
    return f"{delta:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def display_frame(summary: pd.DataFrame, keep_empty: bool = False) -> pd.DataFrame:
    """The table as strings for humans: ``value ± std`` cells, no ``kind`` column, no empty columns
    (``keep_empty``: keep them, for layouts whose columns are fixed)."""
    shown = summary.drop(columns=[c for c in ("kind",) if c in summary.columns])
    out = pd.DataFrame(index=shown.index)
    for col in shown.columns:
        if col.endswith("_std") and col.removesuffix("_std") in shown.columns or col in DELTA_COLS[1:]:
            continue
        cells = shown[col].map(lambda v, c=col: _fmt(v, c))
        if col == "wer_delta" and {"wer_delta_lo", "wer_delta_hi"} <= set(shown.columns):
            cells = pd.Series([_delta_cell(*v) for v in shown[DELTA_COLS].itertuples(index=False)], index=shown.index)
        std_col = f"{col}_std"
        if std_col in shown.columns:
            std = shown[std_col]
            cells = pd.Series([f"{c} ± {_fmt(s)}" if c and not pd.isna(s) else c for c, s in zip(cells, std, strict=True)], index=shown.index)
        if keep_empty or (cells != "").any():
            out[col] = cells
    return out


def to_markdown(summary: pd.DataFrame, header: list[str], plots: list[Path] | None = None, plots_base: Path | None = None) -> str:
    """Markdown table with the provenance header as a list above it (and the plots below it).

    ``plots`` are linked relative to ``plots_base`` (the folder the Markdown file is written to).
    """
    body = display_frame(summary).to_markdown(index=False)
    text = "\n".join(f"- {line}" for line in header) + "\n\n" + body + "\n"
    if plots:
        links = [f"![{p.stem}]({p.relative_to(plots_base).as_posix() if plots_base else p.as_posix()})" for p in plots]
        text += "\n" + "\n\n".join(links) + "\n"
    return text


def print_table(summary: pd.DataFrame, header: list[str], console: Console | None = None, title: str = "specbench summary") -> None:
    """The summary as a rich table on the terminal."""
    console = console or Console(width=None if Console().is_terminal else 200)
    # Text, not markup strings: '[run] ...' headers and odd decoder names must print literally
    table = Table(title=title, caption=Text("\n".join(header)), caption_justify="left")
    shown = display_frame(summary)
    for col in shown.columns:
        table.add_column(col, justify="left" if col in ("decoder", "run") else "right")
    for _, row in shown.iterrows():
        table.add_row(*(Text(str(v)) for v in row.tolist()))
    console.print(table)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """CSV written atomically (a crash never leaves half a summary for CI to read)."""
    tmp = path.with_name(path.name + ".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(path)


def _scorer_of(cfg: RunConfig | None) -> str | None:
    from specbench.bench.runner import scorer_ids

    return "|".join(scorer_ids(cfg).values()) if cfg and cfg.scoring.enabled else None


def load_summary(out: Path, cfg: RunConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(summary, joined frame, header) of one run folder; ``cfg`` defaults to its ``config.yaml``."""
    if cfg is None and (out / "config.yaml").is_file():
        from specbench.bench.runner import load_run_config

        cfg = load_run_config(out)
    df = load_frame(out, _scorer_of(cfg))
    return summarize(df), df, header_lines(out, df, cfg)


def report_step(out: Path, cfg: RunConfig | None = None, log: Any = print, console: Console | None = None, plots: bool = True) -> pd.DataFrame:
    """Write summary.csv, summary.md and ``plots/*.png`` for a run folder and print the table."""
    df = load_frame(out, _scorer_of(cfg))
    summary = summarize(df)
    header = header_lines(out, df, cfg)
    write_csv(summary, out / "summary.csv")
    written: list[Path] = []
    if plots:
        from specbench.bench.plots import write_plots

        written = write_plots(out, summary)
    write_text_atomic(out / "summary.md", to_markdown(summary, header, written, out))
    print_table(summary, header, console)
    log(f"report: {out / 'summary.md'}" + (f" (+ {len(written)} plots in {out / 'plots'})" if written else ""))
    return summary


def run_labels(dirs: list[Path]) -> list[str]:
    """Short, unique labels for run folders: the folder name, or the path when names collide."""
    names = [d.name for d in dirs]
    return [d.name if names.count(d.name) == 1 else str(d) for d in dirs]


def combine(summaries: list[pd.DataFrame], labels: list[str]) -> pd.DataFrame:
    """Stack per-run summaries with a leading ``run`` column (each keeps its own baseline)."""
    parts = [s.assign(run=label) for s, label in zip(summaries, labels, strict=True)]
    table = pd.concat(parts, ignore_index=True)
    return table[["run", *[c for c in table.columns if c != "run"]]]


def report_runs(runs: list[tuple[Path, RunConfig | None]], out: Path | None = None, log: Any = print, console: Console | None = None) -> pd.DataFrame:
    """Report one run folder in place, or several as one combined table.

    One run: its ``summary.*`` and ``plots/`` are (re)written (the report step of ``specbench run``).
    Several runs: the run folders are left untouched; the combined table is printed and, with ``out``
    (a ``.md`` path), written to ``out``, ``out`` with suffix ``.csv`` and ``<out dir>/plots/<stem>-*.png``.
    """
    if len(runs) == 1 and out is None:
        return report_step(runs[0][0], runs[0][1], log, console)
    labels = run_labels([d for d, _ in runs])
    summaries, header = [], []
    for (d, cfg), label in zip(runs, labels, strict=True):
        s, _, h = load_summary(d, cfg)
        summaries.append(s)
        header += [f"[{label}] {line}" for line in h] if len(runs) > 1 else h
    table = combine(summaries, labels) if len(runs) > 1 else summaries[0]
    if out is not None:
        from specbench.bench.plots import write_plots

        out.parent.mkdir(parents=True, exist_ok=True)
        written = write_plots(out.parent, table, prefix=f"{out.stem}-")
        write_csv(table, out.with_suffix(".csv"))
        write_text_atomic(out, to_markdown(table, header, written, out.parent))
        log(f"report: {out} and {out.with_suffix('.csv')}" + (f" (+ {len(written)} plots in {out.parent / 'plots'})" if written else ""))
    print_table(table, header, console, title="specbench summary" + (f" ({len(runs)} runs)" if len(runs) > 1 else ""))
    return table
