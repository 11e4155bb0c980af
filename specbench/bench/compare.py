"""COMPARE two runs (reference A, new B): per-decoder deltas of every metric and regression gates.

Decoders are matched by name. Only hardware-independent metrics gate, because CI machines differ and
wall-clock numbers move with load (this machine also trains models while tests run):

- ``mean_accepted_len`` relative drop larger than ``accepted_len_rel`` (default 2 %);
- ``target_calls`` relative rise larger than ``target_calls_rel`` (default 2 %);
- ``draft_accept_rate`` absolute drop larger than ``accept_rate_abs`` (default 0.02);
- ``wer`` absolute rise larger than ``wer_abs`` (default 0.05; every row with a WER, references too);
- exactness controls: in B, every decoder whose rule is lossless under greedy sampling (``exact``,
  ``greedy``, ``typical``, ``tolerance``, ``beta`` with β = 0, ``group`` with θ ≥ 1; docs/methods.md §6)
  in a greedy run must emit the same tokens as the baseline for every utterance: the ``tokens`` counts
  of records.jsonl, and the token sequences themselves when the run has them (``*.tokens.npy`` beside
  each wav, or ``tokens.jsonl`` in an exported reference);
- a decoder or a gated metric present in A but missing in B.

``tokens_per_s``, ``speedup``, ``latency_speedup``, ``lm_rtf`` and ``e2e_rtf`` are shown but never gate.
Token sequences that changed between A and B are counted and reported; they gate only with
``strict_tokens`` (greedy argmax paths may legitimately differ across CPUs and BLAS builds).

A side is a run folder or a ``summary.csv`` (then only the summary metrics are compared, plus the
records beside it when the CSV sits in a run folder). :func:`export_reference` freezes a run folder
into the small, audio-free reference that CI compares against (``results/ci/reference``).
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from specbench.errors import ConfigError, RunStateError
from specbench.jsonl import read_jsonl, write_jsonl, write_text_atomic


@dataclass(frozen=True)
class Tolerances:
    """Regression thresholds (the defaults are the documented CI gates)."""

    accepted_len_rel: float = 0.02
    target_calls_rel: float = 0.02
    accept_rate_abs: float = 0.02
    wer_abs: float = 0.05
    strict_tokens: bool = False


# metric -> (direction that is bad, relative or absolute, Tolerances field)
GATES: dict[str, tuple[str, str, str]] = {
    "mean_accepted_len": ("drop", "rel", "accepted_len_rel"),
    "target_calls": ("rise", "rel", "target_calls_rel"),
    "draft_accept_rate": ("drop", "abs", "accept_rate_abs"),
    "wer": ("rise", "abs", "wer_abs"),
}
WALL_CLOCK = ("tokens_per_s", "speedup", "latency_speedup", "lm_rtf", "e2e_rtf")
REPORTED = ("tokens", "call_speedup", "cer", "sim", "sim_other")
METRICS = (*GATES, *REPORTED, *WALL_CLOCK)
LOSSLESS_METRIC = "lossless_mismatches"
CHANGED_METRIC = "changed_token_utts"
CONFIG_KEYS = ("seed", "corpus", "codec", "model", "sampling", "decoders", "scoring", "repeats")
REFERENCE_FILES = ("summary.csv", "summary.md", "records.jsonl", "scores.jsonl", "tokens.jsonl", "config.yaml", "run.json", "README.md")


def lossless_under_greedy(rule: Any, beta: Any = None, theta: Any = None) -> bool:
    """Does this acceptance rule reproduce greedy decoding exactly when sampling is greedy?

    Under greedy sampling p and q are one-hot (sampling.warp), so every match-based rule accepts a
    candidate iff it is the target's argmax. ``beta`` with β > 0 and ``group`` with θ < 1 also accept
    other tokens (that is their point) and are lossy.
    """
    if not isinstance(rule, str):
        return False
    if rule in ("exact", "greedy", "typical") or rule.startswith("tolerance"):
        return True
    if rule == "beta":
        return _num(beta) == 0.0
    if rule == "group":
        return _num(theta) >= 1.0
    return False


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


@dataclass
class RunSide:
    """One side of a comparison: its summary, and (when available) records, config and tokens."""

    path: Path
    summary: pd.DataFrame
    root: Path | None = None
    records: pd.DataFrame | None = None
    config: dict[str, Any] | None = None
    env: dict[str, Any] | None = None
    token_store: dict[str, list[int]] | None = None

    def tokens(self, rec: pd.Series) -> np.ndarray | None:
        """The token sequence of a record, or None when this side did not keep it."""
        key = f"{rec['decoder']}|{rec['utt_id']}|{rec['repeat']}"
        if self.token_store is not None:
            toks = self.token_store.get(key)
            return None if toks is None else np.asarray(toks, dtype=np.int64)
        audio = rec.get("audio")
        if self.root is None or not isinstance(audio, str):
            return None
        path = self.root / Path(audio).with_suffix(".tokens.npy")
        return np.load(path).astype(np.int64) if path.is_file() else None


def load_side(path: Path) -> RunSide:
    """Read a run folder (``summary.csv``, else summarised from its records) or a summary CSV."""
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ConfigError(f"{path} is neither a run folder nor a summary CSV: pass a run's output_dir or its summary.csv")
        summary = _read_summary(path)
        root = path.parent if (path.parent / "records.jsonl").is_file() and path.name == "summary.csv" else None
    elif path.is_dir():
        root = path
        if (path / "summary.csv").is_file():
            summary = _read_summary(path / "summary.csv")
        elif (path / "records.jsonl").is_file():
            from specbench.bench.report import load_summary

            summary = load_summary(path)[0]
        else:
            raise RunStateError(f"{path} has neither summary.csv nor records.jsonl: pass a finished run folder (specbench run / report)")
    else:
        raise RunStateError(f"{path} does not exist: pass a run folder or a summary.csv")
    side = RunSide(path=path, summary=summary, root=root)
    if root is not None:
        if (root / "records.jsonl").is_file():
            side.records = pd.DataFrame(list(read_jsonl(root / "records.jsonl")))
        if (root / "config.yaml").is_file():
            side.config = yaml.safe_load((root / "config.yaml").read_text()) or {}
        if (root / "env.json").is_file():
            side.env = json.loads((root / "env.json").read_text())
        if (root / "tokens.jsonl").is_file():
            side.token_store = {r["key"]: r["tokens"] for r in read_jsonl(root / "tokens.jsonl")}
    return side


def _read_summary(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not a readable summary CSV ({type(exc).__name__}): pass the summary.csv a run wrote") from None
    if "decoder" not in table.columns:
        raise ConfigError(f"{path} has no 'decoder' column: pass the summary.csv that `specbench report` wrote")
    if table["decoder"].duplicated().any():
        raise ConfigError(f"{path} lists a decoder twice (a combined multi-run table?): compare one run's summary.csv at a time")
    return table


@dataclass
class Comparison:
    """The long delta table (one row per decoder × metric) and what failed."""

    deltas: pd.DataFrame
    regressions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.regressions


def _gate(metric: str, a: float, b: float, tol: Tolerances) -> tuple[bool, str]:
    """(is it a regression, the human description of the threshold)."""
    bad_dir, mode, attr = GATES[metric]
    limit = getattr(tol, attr)
    sign = -1.0 if bad_dir == "drop" else 1.0
    if mode == "rel":
        # from 0 any change is infinitely large in relative terms (keeps its direction)
        change = (b - a) / abs(a) if a != 0 else (0.0 if b == a else math.copysign(math.inf, b - a))
        what = f"relative {bad_dir} > {limit:.1%}"
    else:
        change = b - a
        what = f"absolute {bad_dir} > {limit:g}"
    # the epsilon keeps a change of exactly the tolerance (up to float error) on the passing side
    return sign * change > limit + 1e-9, what


def _lossless_decoders(records: pd.DataFrame) -> list[str]:
    """Decoders of a greedy run whose rule reproduces greedy decoding exactly."""
    if records is None or records.empty or "rule" not in records:
        return []
    out = []
    for name, d in records[records["kind"] == "decoder"].groupby("decoder", sort=False):
        temps = [s.get("temperature") for s in d.get("sampling", pd.Series(dtype=object)) if isinstance(s, dict)]
        greedy = bool(temps) and all(t == 0 for t in temps)
        first = d.iloc[0]
        if greedy and first.get("method") == "speculative" and lossless_under_greedy(first.get("rule"), first.get("beta"), first.get("theta")):
            out.append(str(name))
    return out


def exactness(side: RunSide) -> dict[str, tuple[int, int, str]]:
    """Per lossless decoder of ``side``: (utterance-repeats differing from the baseline, checked, how)."""
    rec = side.records
    if rec is None or rec.empty:
        return {}
    from specbench.bench.report import _baseline_name

    base_name = _baseline_name(rec)
    if base_name is None:
        return {}
    base = {(r["utt_id"], r["repeat"]): r for _, r in rec[rec["decoder"] == base_name].iterrows()}
    out: dict[str, tuple[int, int, str]] = {}
    for name in _lossless_decoders(rec):
        bad = checked = 0
        seqs = True
        for _, r in rec[rec["decoder"] == name].iterrows():
            b = base.get((r["utt_id"], r["repeat"]))
            if b is None:
                continue
            checked += 1
            same = int(r["tokens"]) == int(b["tokens"])
            mine, theirs = side.tokens(r), side.tokens(b)
            if mine is not None and theirs is not None:
                same = same and np.array_equal(mine, theirs)
            else:
                seqs = False
            bad += not same
        out[name] = (bad, checked, "token sequences" if seqs else "token counts")
    return out


def changed_tokens(a: RunSide, b: RunSide) -> dict[str, tuple[int, int]]:
    """Per decoder in both runs: (utterance-repeats whose tokens differ between A and B, compared)."""
    if a.records is None or b.records is None:
        return {}
    out: dict[str, tuple[int, int]] = {}
    ra = {(r["decoder"], r["utt_id"], r["repeat"]): r for _, r in a.records[a.records["kind"] == "decoder"].iterrows()}
    for _, rb in b.records[b.records["kind"] == "decoder"].iterrows():
        key = (rb["decoder"], rb["utt_id"], rb["repeat"])
        if key not in ra:
            continue
        x, y = a.tokens(ra[key]), b.tokens(rb)
        same = np.array_equal(x, y) if x is not None and y is not None else int(ra[key]["tokens"]) == int(rb["tokens"])
        bad, n = out.get(rb["decoder"], (0, 0))
        out[rb["decoder"]] = (bad + (not same), n + 1)
    return out


def current_schema(config: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe read through TODAY's schema (fields added since with their defaults filled in), so an
    older run folder's config compares equal to the same recipe written now; unchanged if it no longer validates."""
    from pydantic import ValidationError

    from specbench.config import RunConfig

    try:
        return RunConfig.model_validate(config).model_dump(mode="json")
    except ValidationError:  # an invalid or foreign config is compared as written
        return config


def _config_notes(a: RunSide, b: RunSide) -> list[str]:
    notes = []
    if a.config is not None and b.config is not None:
        ca, cb = current_schema(a.config), current_schema(b.config)
        diff = [k for k in CONFIG_KEYS if ca.get(k) != cb.get(k)]
        if diff:
            notes.append(f"the two runs' recipes differ in: {', '.join(diff)} (deltas may reflect the recipe, not the code)")
    if a.env and b.env:
        da, db = a.env.get("device_name", a.env.get("device")), b.env.get("device_name", b.env.get("device"))
        if (a.env.get("device"), a.env.get("cpu")) != (b.env.get("device"), b.env.get("cpu")):
            notes.append(f"different hardware (A: {da}, {a.env.get('cpu')}; B: {db}, {b.env.get('cpu')}): wall-clock deltas are not meaningful")
    return notes


def compare_runs(a: RunSide, b: RunSide, tol: Tolerances = Tolerances()) -> Comparison:
    """Deltas of every metric for decoders matched by name, and the regressions among them."""
    sa, sb = a.summary.set_index("decoder"), b.summary.set_index("decoder")
    rows: list[dict[str, Any]] = []
    cmp = Comparison(pd.DataFrame(), notes=_config_notes(a, b))
    for name in sa.index:
        if name not in sb.index:
            cmp.regressions.append(f"{name}: decoder is in the reference but missing from the new run")
            continue
        ra, rb = sa.loc[name], sb.loc[name]
        if "n" in sa and "n" in sb and _num(ra.get("n")) != _num(rb.get("n")):
            cmp.notes.append(f"{name}: different numbers of utterances (A {ra.get('n')}, B {rb.get('n')})")
        for metric in METRICS:
            va, vb = _num(ra.get(metric)), _num(rb.get(metric))
            if math.isnan(va) and math.isnan(vb):
                continue
            delta = vb - va
            rel = delta / abs(va) if not math.isnan(va) and va != 0 else math.nan
            row = {"decoder": name, "metric": metric, "a": va, "b": vb, "delta": delta, "rel_delta": rel, "gated": metric in GATES}
            if metric in GATES:
                if math.isnan(vb):
                    row["status"] = "REGRESSION"
                    cmp.regressions.append(f"{name}: {metric} was {va:.4g} in the reference and is missing now")
                elif math.isnan(va):
                    row["status"] = "new"
                else:
                    bad, what = _gate(metric, va, vb, tol)
                    if bad:
                        row["status"] = "REGRESSION"
                        cmp.regressions.append(f"{name}: {metric} {va:.4g} → {vb:.4g} ({_signed(delta, rel, metric)}; gate: {what})")
                    else:
                        improved = delta > 0 if GATES[metric][0] == "drop" else delta < 0
                        row["status"] = "same" if delta == 0 else ("better" if improved else "within tolerance")
            else:
                row["status"] = "not gated (wall clock)" if metric in WALL_CLOCK else "reported"
            rows.append(row)
    for name in sb.index.difference(sa.index, sort=False):
        cmp.notes.append(f"{name}: new decoder (not in the reference), not compared")

    ex_a, ex_b = exactness(a), exactness(b)
    if ex_a and b.records is None:
        cmp.notes.append(f"exactness controls ({', '.join(ex_a)}) NOT checked: B has no records.jsonl (pass a run folder, not a bare CSV)")
    for name, (bad, checked, how) in ex_b.items():
        va = ex_a.get(name, (math.nan,))[0]
        rows.append(
            {
                "decoder": name,
                "metric": LOSSLESS_METRIC,
                "a": va,
                "b": bad,
                "delta": bad - va,
                "rel_delta": math.nan,
                "gated": True,
                "status": "REGRESSION" if bad else "same",
            }
        )
        if bad:
            cmp.regressions.append(
                f"{name}: lossless under greedy sampling but {bad}/{checked} utterances differ from the baseline ({how}): an exactness bug in the decoder"
            )
    for name, (bad, _, _) in ex_a.items():
        if bad:
            cmp.notes.append(f"{name}: the REFERENCE itself breaks the lossless control ({bad} utterances): regenerate it")
    for name, (bad, n) in changed_tokens(a, b).items():
        rows.append(
            {
                "decoder": name,
                "metric": CHANGED_METRIC,
                "a": 0,
                "b": bad,
                "delta": bad,
                "rel_delta": math.nan,
                "gated": tol.strict_tokens,
                "status": ("REGRESSION" if tol.strict_tokens else "reported") if bad else "same",
            }
        )
        if bad and tol.strict_tokens:
            cmp.regressions.append(f"{name}: {bad}/{n} utterances produce different tokens than the reference (--strict-tokens)")
        elif bad:
            cmp.notes.append(f"{name}: {bad}/{n} utterances produce different tokens than the reference (not gated)")
    cmp.deltas = pd.DataFrame(rows, columns=["decoder", "metric", "a", "b", "delta", "rel_delta", "gated", "status"])
    return cmp


def _signed(delta: float, rel: float, metric: str) -> str:
    if metric in GATES and GATES[metric][1] == "rel" and not math.isnan(rel):
        return f"{rel:+.1%}"
    return f"{delta:+.4g}"


def compare(a: Path, b: Path, tol: Tolerances = Tolerances()) -> Comparison:
    """Load both sides and compare them (A = reference, B = new)."""
    return compare_runs(load_side(a), load_side(b), tol)


def _cell(v: float) -> str:
    if math.isnan(v):
        return "-"
    return f"{v:.4g}"


WIDE_MAX_DECODERS = 8  # up to this many decoders: one column each; beyond, one row per decoder × metric


def print_comparison(cmp: Comparison, a: Path, b: Path, console: Console | None = None) -> None:
    """The deltas as a table (metrics × decoders, or long rows for big sweeps), then regressions and notes."""
    console = console or Console(width=None if Console().is_terminal else 200)
    d = cmp.deltas
    metrics = [m for m in (*METRICS, LOSSLESS_METRIC, CHANGED_METRIC) if m in set(d["metric"])]
    decoders = list(dict.fromkeys(d["decoder"]))
    title = f"compare: A = {a}  →  B = {b}"
    caption = "cell: B (Δ vs A) | red = regression | * reported, never gates | dim = wall clock"

    def cell(r: pd.Series) -> Text:
        m = r["metric"]
        text = f"{_cell(r['b'])} ({_signed(r['delta'], r['rel_delta'], m)})" if not math.isnan(r["delta"]) else _cell(r["b"])
        return Text(text, style="bold red" if r["status"] == "REGRESSION" else ("dim" if m in WALL_CLOCK else ""))

    def label(m: str) -> str:
        return m if (m in GATES or m == LOSSLESS_METRIC or (m == CHANGED_METRIC and bool(d.loc[d["metric"] == m, "gated"].any()))) else f"{m} *"

    table = Table(title=title, caption=caption, caption_justify="left")
    if len(decoders) <= WIDE_MAX_DECODERS:
        table.add_column("metric")
        for name in decoders:
            table.add_column(name, justify="right")
        for m in metrics:
            cells = []
            for name in decoders:
                hit = d[(d["decoder"] == name) & (d["metric"] == m)]
                cells.append(cell(hit.iloc[0]) if not hit.empty else Text(""))
            table.add_row(Text(label(m), style="dim" if m in WALL_CLOCK else ""), *cells)
    else:
        for col in ("decoder", "metric", "B (Δ vs A)", "status"):
            table.add_column(col, justify="right" if col == "B (Δ vs A)" else "left")
        for _, r in d.iterrows():
            table.add_row(str(r["decoder"]), label(r["metric"]), cell(r), str(r["status"]))
    console.print(table)
    for note in cmp.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if cmp.regressions:
        console.print(f"[bold red]REGRESSION[/]: {len(cmp.regressions)} problem(s)", highlight=False)
        for r in cmp.regressions:
            console.print(f"  - {r}", highlight=False, soft_wrap=True)
    else:
        console.print("[bold green]OK[/]: no regression in the gated metrics", highlight=False)


def write_comparison(cmp: Comparison, out: Path, a: Path, b: Path) -> None:
    """The long delta table as CSV (``.csv``) or Markdown (anything else) with the verdict."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        tmp = out.with_name(out.name + ".tmp")
        cmp.deltas.to_csv(tmp, index=False)
        tmp.replace(out)
        return
    verdict = "REGRESSION" if cmp.regressions else "OK"
    lines = [f"# compare: {a} → {b}: {verdict}", ""]
    lines += [f"- regression: {r}" for r in cmp.regressions] + [f"- note: {n}" for n in cmp.notes]
    shown = cmp.deltas.copy()
    for c in ("a", "b", "delta"):
        shown[c] = shown[c].map(_cell)
    shown["rel_delta"] = shown["rel_delta"].map(lambda v: "" if math.isnan(v) else f"{v:+.2%}")
    write_text_atomic(out, "\n".join(lines) + "\n\n" + shown.to_markdown(index=False) + "\n")


def export_reference(run_dir: Path, dest: Path) -> list[Path]:
    """Freeze a finished run into a small reference folder for :func:`compare` (no audio).

    Copies summary.csv/.md, records.jsonl, scores.jsonl, config.yaml, run.json and env*.json, and
    gathers the decoders' ``*.tokens.npy`` into one ``tokens.jsonl`` (key → token list), because the
    audio folders are git-ignored and a text file diffs readably. Refuses a destination holding other
    files, so a mistyped path never deletes anything unrelated.
    """
    if not (run_dir / "records.jsonl").is_file() or not (run_dir / "summary.csv").is_file():
        raise RunStateError(f"{run_dir} is not a finished run (needs records.jsonl and summary.csv): run `specbench run` on it first")
    if dest.exists():
        if not dest.is_dir():
            raise RunStateError(f"{dest} exists and is not a folder: choose another --out")
        stray = [p.name for p in dest.iterdir() if p.name not in REFERENCE_FILES and not (p.name.startswith("env") and p.suffix == ".json")]
        if stray:
            raise RunStateError(f"{dest} holds files that are not part of a reference ({', '.join(sorted(stray)[:5])}): choose an empty or reference folder")
        for p in dest.iterdir():
            p.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in ("summary.csv", "records.jsonl", "scores.jsonl", "config.yaml", "run.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, dest / name)
            written.append(dest / name)
    if (run_dir / "summary.md").is_file():  # without the plot links: the reference keeps no images
        lines = (run_dir / "summary.md").read_text().splitlines()
        write_text_atomic(dest / "summary.md", "\n".join(x for x in lines if not x.startswith("![")).rstrip() + "\n")
        written.append(dest / "summary.md")
    for env in sorted(run_dir.glob("env*.json")):
        shutil.copyfile(env, dest / env.name)
        written.append(dest / env.name)
    side = RunSide(path=run_dir, summary=pd.DataFrame(), root=run_dir)
    tokens = []
    for rec in read_jsonl(run_dir / "records.jsonl"):
        if rec.get("kind") != "decoder":
            continue
        toks = side.tokens(pd.Series(rec))
        if toks is not None:
            tokens.append({"key": f"{rec['decoder']}|{rec['utt_id']}|{rec['repeat']}", "tokens": toks.tolist()})
    if tokens:
        write_jsonl(dest / "tokens.jsonl", tokens)
        written.append(dest / "tokens.jsonl")
    env = json.loads((run_dir / "env.json").read_text()) if (run_dir / "env.json").is_file() else {}
    write_text_atomic(
        dest / "README.md",
        f"# CI regression reference\n\nExported from `{run_dir}` by `specbench export-reference` (`make ci-reference`), "
        f"generated at commit {env.get('git_commit', '?')} on {env.get('device', '?')} ({env.get('cpu', '?')}).\n"
        "CI runs `recipes/ci.yaml` into a fresh folder and `specbench compare` against this folder; regenerate it with "
        "`make ci-reference` after an intended change of the models or decoders (see README.md, CI regression).\n",
    )
    written.append(dest / "README.md")
    return written
