"""REPORT: aggregate records + scores into ``summary.csv`` / ``summary.md`` and a rich table.

Definitions (docs/metrics.md): per (decoder, utterance) the median over repeats of each timing, then
``tokens_per_s`` = mean over utterances; ``speedup`` = mean tokens_per_s(method) / mean
tokens_per_s(baseline) over the SAME utterances; ``latency_speedup`` = Σ lm_seconds(baseline) /
Σ lm_seconds(method); ``call_speedup`` = Σ target_calls(baseline) / Σ target_calls(method);
``mean_accepted_len`` = Σ tokens / Σ rounds; ``draft_accept_rate`` = Σ accepted / Σ proposed;
``wer``/``cer``/``sim``/``sim_other`` = means over rows. The baseline is the decoder with method
``baseline`` named ``baseline`` (else the first baseline-method decoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

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
QUALITY_COLS = ["wer", "cer", "sim", "sim_other"]
PARAM_COLS = ["proposer", "rule", "gamma", "beta", "tau", "theta", "tree"]


def accept_curve(d: pd.DataFrame) -> str:
    """``accept_at_pos[i]`` = Σ rounds whose i-th draft was accepted / Σ verify rounds, as 'a/b/c'."""
    lists = [x for x in d["accept_at_pos"] if isinstance(x, list) and x]
    if not lists:
        return ""
    width = max(len(x) for x in lists)
    totals = [sum(x[i] for x in lists if i < len(x)) for i in range(width)]
    rounds = max(1, int(d.loc[d["proposed"] > 0, "target_calls"].sum()))
    return "/".join(f"{t / rounds:.2f}" for t in totals)


def load_frame(out: Path, scorer: str | None) -> pd.DataFrame:
    """Records joined with the scores of ``scorer`` (the newest scorer in the run when None)."""
    rec_path = out / "records.jsonl"
    if not rec_path.is_file():
        raise RunStateError(f"no records.jsonl in {out}: run `specbench run` or `specbench generate` first")
    rec = pd.DataFrame(list(read_jsonl(rec_path)))
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
    names = list(dict.fromkeys(dec.loc[dec["method"] == "baseline", "decoder"]))
    if "baseline" in names:
        return "baseline"
    return names[0] if names else None


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per decoder (then the reference rows), columns named as the metric definitions."""
    rows: list[dict[str, Any]] = []
    dec = df[df["kind"] == "decoder"]
    base_name = _baseline_name(df)
    per_utt = None
    if not dec.empty:
        agg = {c: "median" for c in ("tokens_per_s", "lm_seconds", "lm_rtf", "e2e_rtf") if c in dec}
        agg.update({c: "mean" for c in ("tokens", "target_calls", "rounds", "proposed", "accepted") if c in dec})
        per_utt = dec.groupby(["decoder", "utt_id"], sort=False).agg(agg).reset_index()
    for name in list(dict.fromkeys(dec["decoder"])):
        d = dec[dec["decoder"] == name]
        u = per_utt[per_utt["decoder"] == name]
        row: dict[str, Any] = {"decoder": name, "kind": "decoder", "n": int(d["utt_id"].nunique()), "repeats": int(d["repeat"].nunique())}
        for p in PARAM_COLS:
            if p in d and d[p].notna().any():
                row[p] = d[p].dropna().iloc[0]
        if "accept_at_pos" in d and d["proposed"].sum():
            row["accept_at_pos"] = accept_curve(d)
        row["tokens"] = u["tokens"].mean()
        row["target_calls"] = u["target_calls"].mean()
        row["mean_accepted_len"] = d["tokens"].sum() / max(1, d["rounds"].sum())
        row["draft_accept_rate"] = d["accepted"].sum() / d["proposed"].sum() if d["proposed"].sum() else None
        row["tokens_per_s"] = u["tokens_per_s"].mean()
        row["lm_rtf"] = u["lm_rtf"].mean()
        row["e2e_rtf"] = u["e2e_rtf"].mean()
        if row["repeats"] > 1:
            row["tokens_per_s_std"] = d.groupby("repeat")["tokens_per_s"].mean().std(ddof=1)
        if base_name is not None:
            b = per_utt[per_utt["decoder"] == base_name].set_index("utt_id")
            m = u.set_index("utt_id")
            common = m.index.intersection(b.index)
            if len(common):
                row["speedup"] = m.loc[common, "tokens_per_s"].mean() / b.loc[common, "tokens_per_s"].mean()
                row["latency_speedup"] = b.loc[common, "lm_seconds"].sum() / m.loc[common, "lm_seconds"].sum()
                calls = m.loc[common, "target_calls"].sum()
                row["call_speedup"] = b.loc[common, "target_calls"].sum() / calls if calls else None
        row.update(_quality(d))
        rows.append(row)
    for name in list(dict.fromkeys(df.loc[df["kind"] == "reference", "decoder"])):
        d = df[df["decoder"] == name]
        rows.append({"decoder": name, "kind": "reference", "n": int(d["utt_id"].nunique()), "repeats": 1, **_quality(d)})
    cols = ["decoder", "kind", *PARAM_COLS, "n", "repeats", *SPEED_COLS, "tokens_per_s_std", *QUALITY_COLS, "accept_at_pos"]
    table = pd.DataFrame(rows)
    return table.reindex(columns=[c for c in cols if c in table.columns])


def _quality(d: pd.DataFrame) -> dict[str, Any]:
    """Means over scored rows; WER/CER pooled over the corpus when the normaliser's convention says so."""
    out = {c: (d[c].astype(float).mean() if c in d and d[c].notna().any() else None) for c in QUALITY_COLS}
    if "normalizer" in d and d["normalizer"].notna().any():
        from specbench.scoring.wer import DEFAULT_AGGREGATION, aggregate_cer, aggregate_wer

        name = str(d["normalizer"].dropna().iloc[0]).split("@")[0]
        mode = next((m for k, m in DEFAULT_AGGREGATION.items() if name.startswith(k)), "mean")
        rows = d[d["wer"].notna()].to_dict("records")
        if rows and mode == "corpus":
            out["wer"], out["cer"] = aggregate_wer(rows, mode), aggregate_cer(rows, mode)
    return out


def header_lines(out: Path, df: pd.DataFrame, cfg: RunConfig | None) -> list[str]:
    """Provenance printed above every table: device, CPU, versions, commit, scorers, settings."""
    env_path = out / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    first = df.iloc[0]
    lines = [
        f"run: {out.name}" + (f" | seed {cfg.seed} | repeats {cfg.repeats}" if cfg else ""),
        f"device: {env.get('device', '?')} ({env.get('device_name', '?')}) | CPU: {env.get('cpu', '?')} x{env.get('cpu_count', '?')}"
        f" | torch {env.get('torch', '?')} | CUDA {env.get('cuda')} | commit {env.get('git_commit', '?')}",
        f"model: {first.get('model', '?')} | codec: {first.get('codec_id', '?')}",
    ]
    if cfg:
        s = cfg.sampling
        lines.append(
            f"sampling: temperature {s.temperature}, top_k {s.top_k}, top_p {s.top_p} | corpus: {cfg.corpus.kind}:{cfg.corpus.root}/{cfg.corpus.subset}"
        )
    if "asr_model" in df and df["asr_model"].notna().any():
        scored = df[df["asr_model"].notna()].iloc[0]
        lines.append(f"asr: {scored['asr_model']} | speaker: {scored['speaker_model']} | normalizer: {scored['normalizer']}")
    return lines


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def to_markdown(summary: pd.DataFrame, header: list[str]) -> str:
    """Markdown table with the provenance header as a list above it."""
    shown = summary.drop(columns=["kind"])
    body = shown.map(_fmt).to_markdown(index=False)
    return "\n".join(f"- {line}" for line in header) + "\n\n" + body + "\n"


def print_table(summary: pd.DataFrame, header: list[str], console: Console | None = None) -> None:
    """The summary as a rich table on the terminal."""
    console = console or Console(width=None if Console().is_terminal else 200)
    table = Table(title="specbench summary", caption="\n".join(header), caption_justify="left")
    shown = summary.drop(columns=["kind"]).dropna(axis=1, how="all")
    for col in shown.columns:
        table.add_column(col, justify="left" if col == "decoder" else "right")
    for _, row in shown.iterrows():
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def report_step(out: Path, cfg: RunConfig | None = None, log: Any = print, console: Console | None = None) -> pd.DataFrame:
    """Write summary.csv and summary.md for a run folder and print the table."""
    from specbench.bench.runner import scorer_ids

    scorer = "|".join(scorer_ids(cfg).values()) if cfg and cfg.scoring.enabled else None
    df = load_frame(out, scorer)
    summary = summarize(df)
    header = header_lines(out, df, cfg)
    summary.to_csv(out / "summary.csv.tmp", index=False)
    (out / "summary.csv.tmp").replace(out / "summary.csv")
    write_text_atomic(out / "summary.md", to_markdown(summary, header))
    print_table(summary, header, console)
    log(f"report: {out / 'summary.md'}")
    return summary
