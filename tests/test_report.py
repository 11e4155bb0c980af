"""Reports, plots, paper tables, `specbench compare` and the CI regression mechanism.

Most tests build synthetic run folders by hand (records, scores, token files, config) so that every
number is known and the gates can be probed exactly; one test runs recipes/ci.yaml on the tiny
session assets end to end.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from specbench.bench.compare import Tolerances, compare, lossless_under_greedy
from specbench.bench.report import load_frame, summarize, write_csv
from specbench.cli import app
from specbench.jsonl import write_jsonl

RUNNER = CliRunner()
ENV = {"COLUMNS": "250"}
PNG = b"\x89PNG\r\n\x1a\n"
SCORER = "asr-x|spk-y|norm-z"

# (name, params, mean accepted length, lossless tokens?)
SSD_DECODERS: list[dict[str, Any]] = [
    {"name": "baseline", "method": "baseline"},
    {"name": "sd", "method": "speculative", "proposer": "draft-chain", "rule": "exact", "gamma": 3, "mal": 2.0},
    {"name": "ssd_gamma2_beta0.4", "method": "speculative", "proposer": "draft-chain", "rule": "beta", "gamma": 2, "beta": 0.4, "mal": 2.4},
    {"name": "ssd_gamma3_beta0.4", "method": "speculative", "proposer": "draft-chain", "rule": "beta", "gamma": 3, "beta": 0.4, "mal": 2.8},
    {"name": "ssd_gamma3_beta0.2", "method": "speculative", "proposer": "draft-chain", "rule": "beta", "gamma": 3, "beta": 0.2, "mal": 2.5},
]


# ---- synthetic run folders ---------------------------------------------------------------------------
def invoke(*args: Any) -> Result:
    result = RUNNER.invoke(app, [str(a) for a in args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def _recipe_decoder(d: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in d.items() if k in ("name", "method", "proposer", "rule", "gamma", "beta", "tau", "theta", "tree")}
    if d.get("proposer") == "draft-chain":
        keep["draft"] = "builtin:draft-ssd"
    if str(d.get("proposer", "")).startswith("heads"):
        keep["heads"] = "heads.pt"
    if keep.get("rule", "").startswith("tolerance"):
        keep["tolerance"] = keep["rule"].split("-")[1]
        keep["rule"] = "tolerance"
    return keep


def make_run(
    out: Path,
    decoders: list[dict[str, Any]] = SSD_DECODERS,
    *,
    utts: int = 4,
    repeats: int = 1,
    temperature: float = 0.0,
    wer: dict[str, float] | None = None,
    speed: float = 1.0,
    mal_scale: dict[str, float] | None = None,
    jitter: float = 0.0,
    scored: bool = True,
    extra: dict[str, dict[str, float]] | None = None,
) -> Path:
    """A finished run folder with known numbers: lossless decoders (greedy) copy the baseline's tokens.

    ``mal`` per decoder sets mean_accepted_len; ``speed`` scales every tokens/s (a wall-clock change);
    ``jitter`` makes repeats differ; ``wer`` sets per-decoder WER (default 0.2); ``extra`` adds record fields.
    """
    out.mkdir(parents=True, exist_ok=True)
    recs, scores = [], []
    for rep in range(repeats):
        for u in range(utts):
            utt = f"spk{u}_utt{u}"
            n = 100 + 10 * u
            base_tokens = np.random.default_rng(u * 10 + rep).integers(0, 1000, n)
            for d in decoders:
                spec = d.get("method") == "speculative"
                lossless = spec and lossless_under_greedy(d.get("rule"), d.get("beta"), d.get("theta")) and temperature == 0
                toks = base_tokens if not spec or lossless else np.random.default_rng(1000 + u * 10 + rep).integers(0, 1000, n - 7)
                mal = d.get("mal", 1.0) * (mal_scale or {}).get(d["name"], 1.0)
                rounds = max(1, round(len(toks) / mal))
                gamma = d.get("gamma", 3) if spec else 0
                proposed = rounds * gamma if spec else 0
                accepted = max(0, len(toks) - rounds) if spec else 0
                tps = 200.0 * (mal / 2 if spec else 1.0) * speed * (1 + jitter * (rep - (repeats - 1) / 2))
                lm = len(toks) / tps
                audio = f"audio/{d['name']}/{utt}.r{rep}.wav"
                tok_path = out / audio.replace(".wav", ".tokens.npy")
                tok_path.parent.mkdir(parents=True, exist_ok=True)
                np.save(tok_path, np.asarray(toks, dtype=np.int32))
                params = {k: d.get(k) for k in ("proposer", "rule", "beta", "tau", "theta", "tree")}
                recs.append(
                    {
                        "decoder": d["name"],
                        "method": d.get("method", "baseline"),
                        **params,
                        "gamma": gamma if d.get("proposer") != "heads-tree" else None,
                        "kind": "decoder",
                        "utt_id": utt,
                        "speaker": f"spk{u}",
                        "repeat": rep,
                        "tokens": len(toks),
                        "target_calls": rounds,
                        "rounds": rounds,
                        "proposed": proposed,
                        "accepted": accepted,
                        "accept_at_pos": [max(0, round(rounds * (0.8**i) * mal / 3)) for i in range(gamma)] if spec else [],
                        "lm_seconds": lm,
                        "tokens_per_s": tps,
                        "lm_rtf": lm / (len(toks) / 50),
                        "e2e_rtf": (lm + 0.1) / (len(toks) / 50),
                        "audio": audio,
                        "model": "builtin:target-small",
                        "codec_id": "kmeans-test",
                        "sampling": {"temperature": temperature},
                        **(extra or {}).get(d["name"], {}),
                    }
                )
                w = (wer or {}).get(d["name"], 0.2)
                scores.append(_score(d["name"], utt, rep, w))
    for u in range(utts):
        recs.append({"decoder": "ground_truth", "method": "ground_truth", "kind": "reference", "utt_id": f"spk{u}_utt{u}", "repeat": 0, "model": "m"})
        scores.append(_score("ground_truth", f"spk{u}_utt{u}", 0, 0.05))
    write_jsonl(out / "records.jsonl", recs)
    if scored:
        write_jsonl(out / "scores.jsonl", scores)
    cfg = {
        "name": "synthetic",
        "output_dir": str(out),
        "repeats": repeats,
        "sampling": {"temperature": temperature},
        "decoders": [_recipe_decoder(d) for d in decoders],
    }
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    (out / "env.json").write_text(json.dumps({"device": "cpu", "device_name": "CPU", "cpu": "Test CPU", "torch": "2.x", "cuda": None, "git_commit": "abc123"}))
    write_csv(summarize(load_frame(out, None)), out / "summary.csv")
    return out


def _score(decoder: str, utt: str, rep: int, wer: float) -> dict[str, Any]:
    return {
        "key": f"{decoder}|{utt}|{rep}",
        "scorer": SCORER,
        "asr_model": "asr-x",
        "speaker_model": "spk-y",
        "normalizer": "norm-z",
        "wer": wer,
        "cer": wer / 2,
        "sim": 0.7,
        "sim_other": 0.5,
    }


def summary_of(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "summary.csv").set_index("decoder")


# ---- report -------------------------------------------------------------------------------------------
def test_summary_has_std_over_repeats_and_markdown_shows_it(tmp_path: Path) -> None:
    out = make_run(tmp_path / "run", repeats=3, jitter=0.1)
    s = summary_of(out)
    assert s.loc["baseline", "speedup"] == pytest.approx(1.0)
    assert s.loc["baseline", "repeats"] == 3
    # tokens/s differ by ±10 % between repeats: the std is the spread of the per-repeat means
    assert s.loc["baseline", "tokens_per_s_std"] == pytest.approx(200 * 0.1, rel=1e-6)
    assert s.loc["baseline", "speedup_std"] == pytest.approx(0.0, abs=1e-12)  # same jitter for all decoders
    assert s.loc["ssd_gamma3_beta0.4", "mean_accepted_len"] == pytest.approx(2.8, rel=0.02)
    res = invoke("report", out)
    assert res.exit_code == 0, res.output
    md = (out / "summary.md").read_text()
    assert " ± " in md and "device: cpu (CPU)" in md and "commit abc123" in md
    assert "![pareto](plots/pareto.png)" in md


def test_report_writes_plots_for_swept_parameters(tmp_path: Path) -> None:
    out = make_run(tmp_path / "run")
    res = invoke("report", out)
    assert res.exit_code == 0, res.output
    for name in ("pareto", "accepted_len_vs_gamma", "accept_at_pos"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == PNG, name
    assert not (out / "plots" / "accepted_len_vs_theta.png").exists()  # θ was not swept
    # a rerun without scores: no WER, so the Pareto plot is removed rather than left stale
    (out / "scores.jsonl").unlink()
    assert invoke("report", out).exit_code == 0
    assert not (out / "plots" / "pareto.png").exists() and (out / "plots" / "accept_at_pos.png").is_file()


def test_report_several_runs_is_one_table_with_a_run_column(tmp_path: Path) -> None:
    a = make_run(tmp_path / "cpu", decoders=SSD_DECODERS[:2])
    b = make_run(tmp_path / "gpu", decoders=SSD_DECODERS[:2], speed=5.0)
    before = sorted(p.name for p in a.iterdir())
    res = invoke("report", a, b, "--out", tmp_path / "both" / "combined.md")
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "both" / "combined.csv")
    assert list(table.columns[:2]) == ["run", "decoder"]
    assert set(table["run"]) == {"cpu", "gpu"}
    # each run is measured against its OWN baseline: 5× faster hardware does not show up as speedup
    base = table[table["decoder"] == "baseline"]
    assert base["speedup"].tolist() == pytest.approx([1.0, 1.0])
    assert table.loc[table["run"] == "gpu", "tokens_per_s"].iloc[0] == pytest.approx(5 * table.loc[table["run"] == "cpu", "tokens_per_s"].iloc[0])
    md = (tmp_path / "both" / "combined.md").read_text()
    assert "[cpu] device: cpu" in md and "[gpu] run: gpu" in md and "plots/combined-pareto.png" in md
    assert sorted(p.name for p in a.iterdir()) == before  # run folders untouched


def test_plot_labels_show_parameter_values_compactly() -> None:
    from specbench.bench.plots import _val

    # grouping keys reach the legend as strings; γ=2.0 and γ=2 must read the same
    assert [_val(v) for v in ("2.0", 2.0, 0.45, "0.4", "builtin:vadusa-32", "dense-small", 3)] == ["2", "2", "0.45", "0.4", "vadusa-32", "dense-small", "3"]


def test_report_of_a_non_run_folder_is_one_line(tmp_path: Path) -> None:
    res = invoke("report", tmp_path)
    assert res.exit_code == 2 and "not a specbench run folder" in res.output


# ---- compare ------------------------------------------------------------------------------------------
def test_lossless_under_greedy_rules() -> None:
    assert lossless_under_greedy("exact") and lossless_under_greedy("greedy") and lossless_under_greedy("typical")
    assert lossless_under_greedy("tolerance-sample") and lossless_under_greedy("tolerance-top")
    assert lossless_under_greedy("beta", beta=0.0) and not lossless_under_greedy("beta", beta=0.4)
    assert lossless_under_greedy("group", theta=1.0) and not lossless_under_greedy("group", theta=0.45)
    assert not lossless_under_greedy(None) and not lossless_under_greedy(float("nan"))


def test_compare_identical_runs_passes(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    res = invoke("compare", a, b, "--out", tmp_path / "d.csv")
    assert res.exit_code == 0, res.output
    assert "OK: no regression" in res.output
    deltas = pd.read_csv(tmp_path / "d.csv")
    assert (deltas.loc[deltas["gated"], "status"].isin(["same"])).all()
    # the greedy-lossless control was checked on token sequences
    row = deltas[(deltas["decoder"] == "sd") & (deltas["metric"] == "lossless_mismatches")].iloc[0]
    assert row["b"] == 0 and row["status"] == "same"


def test_wall_clock_changes_never_gate(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", speed=0.3)  # 3× slower machine, same tokens and calls
    res = invoke("compare", a, b)
    assert res.exit_code == 0, res.output
    cmp = compare(a, b)
    tps = cmp.deltas[(cmp.deltas["decoder"] == "baseline") & (cmp.deltas["metric"] == "tokens_per_s")].iloc[0]
    assert tps["rel_delta"] == pytest.approx(-0.7) and tps["status"] == "not gated (wall clock)"


def test_planted_regressions_are_each_reported(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", mal_scale={"ssd_gamma3_beta0.4": 0.95}, wer={"ssd_gamma2_beta0.4": 0.3}, speed=2.0)
    # the greedy-lossless control now emits one wrong token (same count: only the sequence shows it)
    npy = b / "audio" / "sd" / "spk1_utt1.r0.tokens.npy"
    toks = np.load(npy)
    toks[5] += 1
    np.save(npy, toks)
    res = invoke("compare", a, b)
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.strip().startswith("- ")]
    text = "\n".join(lines)
    assert "ssd_gamma3_beta0.4: mean_accepted_len" in text  # -5 % > 2 %
    assert "ssd_gamma3_beta0.4: target_calls" in text  # fewer tokens per round → more calls
    assert "ssd_gamma3_beta0.4: draft_accept_rate" in text  # and fewer accepted drafts per proposal
    assert "ssd_gamma2_beta0.4: wer 0.2 → 0.3" in text
    assert "sd: lossless under greedy sampling but 1/4 utterances differ" in text and "token sequences" in text
    assert "tokens_per_s" not in text and "speedup" not in text  # 2× faster is not a regression either
    assert len(lines) == 5
    # looser tolerances (and the control fixed) let the same pair pass
    np.save(npy, np.load(a / "audio" / "sd" / "spk1_utt1.r0.tokens.npy"))
    res = invoke("compare", a, b, "--accepted-len-tol", "0.1", "--target-calls-tol", "0.1", "--accept-rate-tol", "0.1", "--wer-tol", "0.15")
    assert res.exit_code == 0, res.output


def test_gates_sit_exactly_at_the_tolerances() -> None:
    from specbench.bench.compare import RunSide, compare_runs

    def side(mal: float, calls: float, acc: float, wer: float) -> RunSide:
        row = {"decoder": "x", "kind": "decoder", "mean_accepted_len": mal, "target_calls": calls, "draft_accept_rate": acc, "wer": wer}
        return RunSide(path=Path("x"), summary=pd.DataFrame([row]))

    a = side(3.0, 100.0, 0.7, 0.30)
    assert compare_runs(a, side(3.0 * 0.98, 102.0, 0.68, 0.35)).ok  # every change exactly at its tolerance
    for b in (side(3.0 * 0.979, 100, 0.7, 0.3), side(3.0, 102.1, 0.7, 0.3), side(3.0, 100, 0.679, 0.3), side(3.0, 100, 0.7, 0.351)):
        assert len(compare_runs(a, b).regressions) == 1
    tol = Tolerances(accepted_len_rel=0.5, target_calls_rel=0.5, accept_rate_abs=0.5, wer_abs=0.5)
    assert compare_runs(a, side(2.0, 140, 0.3, 0.7), tol).ok
    assert compare_runs(a, side(4.0, 50, 0.9, 0.0)).ok  # improvements never gate
    missing = compare_runs(a, side(3.0, 100, math.nan, 0.3))
    assert missing.regressions == ["x: draft_accept_rate was 0.7 in the reference and is missing now"]


def test_compare_summary_csvs_and_missing_decoders(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", decoders=SSD_DECODERS[:3])
    only = tmp_path / "only.csv"
    shutil.copyfile(b / "summary.csv", only)  # a bare CSV: metrics only, no token checks
    res = invoke("compare", a / "summary.csv", only)
    assert res.exit_code == 1
    assert "ssd_gamma3_beta0.4: decoder is in the reference but missing from the new run" in res.output
    assert invoke("compare", only, a / "summary.csv").exit_code == 0  # new decoders are only noted
    res = invoke("compare", a, tmp_path / "nope")
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "bad.txt").write_text("x")
    assert invoke("compare", a, tmp_path / "bad.txt").exit_code == 2


def test_export_reference_then_compare_and_changed_tokens(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    ref = tmp_path / "results" / "ci" / "reference"
    res = invoke("export-reference", run, "--out", ref)
    assert res.exit_code == 0, res.output
    names = {p.name for p in ref.iterdir()}
    assert {"summary.csv", "records.jsonl", "scores.jsonl", "tokens.jsonl", "config.yaml", "README.md"} <= names
    assert not (ref / "audio").exists()
    tokens = [json.loads(x) for x in (ref / "tokens.jsonl").read_text().splitlines()]
    assert len(tokens) == 4 * len(SSD_DECODERS)
    assert invoke("compare", ref, run).exit_code == 0  # tokens from tokens.jsonl vs *.tokens.npy
    # the whole run drifts the same way (e.g. another CPU): reported, gated only with --strict-tokens
    for d in ("baseline", "sd"):
        npy = run / "audio" / d / "spk0_utt0.r0.tokens.npy"
        t = np.load(npy)
        t[0] += 1
        np.save(npy, t)
    res = invoke("compare", ref, run)
    assert res.exit_code == 0 and "baseline: 1/4 utterances produce different tokens than the reference (not gated)" in res.output
    res = invoke("compare", ref, run, "--strict-tokens")
    assert res.exit_code == 1 and "--strict-tokens" in res.output
    # a reference folder is refreshed in place, but a folder with other files is refused
    assert invoke("export-reference", run, "--out", ref).exit_code == 0
    (ref / "notes.txt").write_text("mine")
    res = invoke("export-reference", run, "--out", ref)
    assert res.exit_code == 2 and "notes.txt" in res.output and (ref / "notes.txt").is_file()


# ---- paper tables -------------------------------------------------------------------------------------
def test_paper_table_ssd(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    out = tmp_path / "results" / "ssd.md"
    res = invoke("paper-table", "ssd", run, "--out", out)
    assert res.exit_code == 0, res.output
    md = out.read_text()
    ours, paper = md.split("## paper numbers")
    header = next(x for x in ours.splitlines() if x.startswith("|   γ") or x.startswith("| γ"))
    assert "WER" in header and "SIM" in header and "LM-RTF" in header and "mean accepted length" in header
    rows = [x for x in ours.split("## specbench results")[1].split("###")[0].splitlines() if x.startswith("|")][2:]
    assert len(rows) == 5  # baseline + sd (β = 0) + three (γ, β) points
    assert rows[0].split("|")[1].strip() == "–" and "baseline" in rows[0]
    assert "| 3.67 | 0.62 | 0.504 |" in paper and "| 5.70 | 0.63 | 0.360 | 1.40× |" in paper and "not reported" in paper
    assert "![ssd-pareto](plots/ssd-pareto.png)" in md
    assert (tmp_path / "results" / "plots" / "ssd-accepted_len_vs_gamma.png").read_bytes()[:8] == PNG


def test_paper_tables_vadusa_and_pcg(tmp_path: Path) -> None:
    vad = [
        {"name": "baseline", "method": "baseline"},
        *[
            {"name": f"v_tau{t}_{b}", "method": "speculative", "proposer": "heads-tree", "rule": "tolerance-sample", "tau": t, "tree": f"builtin:vadusa-{b}"}
            | {"mal": 1.5 + t / 4}
            for t in (1, 3)
            for b in (16, 32)
        ],
        {"name": "hchain_gamma2", "method": "speculative", "proposer": "heads-chain", "rule": "tolerance-sample", "tau": 3, "gamma": 2, "mal": 1.8},
    ]
    run = make_run(tmp_path / "vadusa", decoders=vad)
    out = tmp_path / "res" / "vadusa.md"
    assert invoke("paper-table", "vadusa", run, "--out", out).exit_code == 0
    md = out.read_text()
    assert "tree budget (nodes)" in md and "2.94×" in md
    cells = [c.strip() for c in next(x for x in md.splitlines() if "v_tau3_32" in x).split("|")]
    assert cells[1:3] == ["3", "32"]  # τ, tree budget
    assert "### other decoders in this run" in md and "hchain_gamma2" in md
    assert (tmp_path / "res" / "plots" / "vadusa-accepted_len_vs_tau.png").is_file()

    pcg = [
        {"name": "baseline", "method": "baseline"},
        *[
            {"name": f"pcg_theta{t}", "method": "speculative", "proposer": "draft-chain", "rule": "group", "theta": t, "gamma": 3, "mal": 3.0 - t}
            for t in (0.3, 0.45, 1.0)
        ],
        {"name": "ssd", "method": "speculative", "proposer": "draft-chain", "rule": "beta", "beta": 0.4, "gamma": 3, "mal": 2.5},
    ]
    extra = {f"pcg_theta{t}": {"group_accept_rate": 0.9 - t / 2} for t in (0.3, 0.45, 1.0)}
    run = make_run(tmp_path / "pcg", decoders=pcg, temperature=0.7, extra=extra)
    out = tmp_path / "res" / "pcg.md"
    assert invoke("paper-table", "pcg", run, "--out", out).exit_code == 0
    md = out.read_text()
    assert "θ" in md and "group_accept_rate" in md and "91.4 %" in md and "0.45" in md
    # asking for a table the run has no rows for is a one-line error naming the recipe to run
    res = invoke("paper-table", "vadusa", run, "--out", tmp_path / "x.md")
    assert res.exit_code == 2 and "vadusa_sweep.yaml" in res.output
    assert invoke("paper-table", "medusa", run).exit_code == 2


# ---- the CI recipe end to end on the tiny assets ----------------------------------------------------
def test_ci_recipe_on_tiny_assets_and_regression_gate(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    """recipes/ci.yaml with its paths swapped for the tiny assets (scoring and reference rows off, for
    time): export it as the reference, compare a copy (no regression), then break the lossless control."""
    model = str(tiny_assets["model"])
    overrides = [
        f"corpus.root={tiny_assets['corpus']}",
        "corpus.limit=2",
        f"codec.path={tiny_assets['codec']}",
        f"model.checkpoint={model}",
        f"decoders.1.draft={model}",
        f"decoders.2.draft={model}",
        "sampling.max_tokens=20",
        "warmup=0",
        "scoring.enabled=false",
        "scoring.reference=false",
        f"output_dir={tmp_path / 'run'}",
    ]
    res = invoke("run", "recipes/ci.yaml", *[x for o in overrides for x in ("--set", o)])
    assert res.exit_code == 0, res.output
    assert set(summary_of(tmp_path / "run").index) == {"baseline", "sd", "ssd"}
    ref = tmp_path / "reference"
    assert invoke("export-reference", tmp_path / "run", "--out", ref).exit_code == 0
    new = tmp_path / "new"
    shutil.copytree(tmp_path / "run", new)  # stands in for the fresh run (`make ci-regression` reruns it)
    res = invoke("compare", ref, new)
    assert res.exit_code == 0, res.output
    assert "lossless_mismatches" in res.output  # the sd control (exact rule, greedy) was checked
    npy = next((new / "audio" / "sd").glob("*.tokens.npy"))
    t = np.load(npy)
    t[-1] = (t[-1] + 1) % 32
    np.save(npy, t)
    res = invoke("compare", ref, new)
    assert res.exit_code == 1 and "sd: lossless under greedy sampling but 1/2 utterances differ" in res.output


# the timing and count columns of a one-round-per-token decoder row (for hand-made summary frames)
TIMING = {
    "tokens": 10,
    "target_calls": 10,
    "rounds": 10,
    "proposed": 0,
    "accepted": 0,
    "lm_seconds": 0.1,
    "tokens_per_s": 100.0,
    "lm_rtf": 0.5,
    "e2e_rtf": 0.6,
}


def test_wer_median_is_robust_to_one_looping_clip() -> None:
    """``wer`` is the mean of per-utterance WER; ``wer_median`` its median, which one ASR loop cannot move."""
    rows = []
    for i, w in enumerate([0.2, 0.3, 0.4, 0.5, 10.0]):  # the last clip: the ASR repeated a word 50 times
        base = {"decoder": "baseline", "method": "baseline", "kind": "decoder", "utt_id": f"u{i}", "repeat": 0}
        rows.append(
            {
                **base,
                **TIMING,
                "audio_seconds": 0.2,
                "wer": w,
                "cer": w / 2,
                "sim": 0.8,
                "sim_other": 0.5,
                "normalizer": "seed-tts-eval-v1",
            }
        )
    table = summarize(pd.DataFrame(rows))
    row = table.iloc[0]
    assert row["wer"] == pytest.approx(11.4 / 5) and row["wer_median"] == pytest.approx(0.4)


def test_asr_loops_are_counted_next_to_wer() -> None:
    """``asr_loops`` counts scored clips whose transcript loops: the rows' ``asr_loop`` flag, or the flag
    recomputed from ``hyp`` for rows scored before it existed; unscored rows do not count."""
    from specbench.bench.report import display_frame

    loop = "and I'm pleased" + " to be here" * 40
    timing = {"tokens": 10, "target_calls": 10, "rounds": 10, "proposed": 0, "accepted": 0, "lm_seconds": 0.1, "audio_seconds": 0.2}
    timing.update({"tokens_per_s": 100.0, "lm_rtf": 0.5, "e2e_rtf": 0.6, "sim": 0.8, "sim_other": 0.5})
    scored = [(0.2, "a b c", False), (0.3, "d e f", None), (12.0, loop, None), (9.0, "x", True), (None, None, None)]  # flag None: recompute
    rows = [
        {"decoder": "baseline", "method": "baseline", "kind": "decoder", "utt_id": f"u{i}", "repeat": 0, **timing, "wer": w, "hyp": hyp, "asr_loop": flag}
        for i, (w, hyp, flag) in enumerate(scored)
    ]
    rows.append({"decoder": "ground_truth", "method": "ground_truth", "kind": "reference", "utt_id": "u0", "repeat": 0, "wer": 0.1, "hyp": "a b"})
    table = summarize(pd.DataFrame(rows)).set_index("decoder")
    assert table.loc["baseline", "asr_loops"] == 2 and table.loc["ground_truth", "asr_loops"] == 0
    cols = list(table.columns)
    assert cols.index("asr_loops") == cols.index("wer_median") + 1 and "asr_loops_std" not in cols
    assert display_frame(table.reset_index()).set_index("decoder").loc["baseline", "asr_loops"] == "2"
    # score rows without a transcript or flag (older runs, hand-made tables) leave the column empty
    bare = summarize(pd.DataFrame([{k: v for k, v in r.items() if k not in ("hyp", "asr_loop")} for r in rows]))
    assert bare["asr_loops"].isna().all()


def test_wer_delta_is_paired_against_the_baseline() -> None:
    """``wer_delta`` = mean over utterances of the capped per-utterance WER difference to the baseline (repeats
    averaged first), with its bootstrap interval; none for the baseline and the reference rows; shown as one cell."""
    from specbench.bench.report import display_frame

    timing = TIMING
    rows = []
    for i in range(6):
        for rep in (0, 1):
            rows.append({"decoder": "baseline", "method": "baseline", "kind": "decoder", "utt_id": f"u{i}", "repeat": rep, **timing, "wer": 0.1 * i})
            # worse by 0.2 on average over the two repeats; u5's 5.0 is an ASR loop, capped at 1
            w = 5.0 if i == 5 else 0.1 * i + (0.1 if rep == 0 else 0.3)
            rows.append({"decoder": "ssd", "method": "speculative", "kind": "decoder", "utt_id": f"u{i}", "repeat": rep, **timing, "wer": w})
    rows.append({"decoder": "ground_truth", "method": "ground_truth", "kind": "reference", "utt_id": "u0", "repeat": 0, "wer": 0.0})
    table = summarize(pd.DataFrame(rows)).set_index("decoder")
    expected = (5 * 0.2 + (1.0 - 0.5)) / 6
    assert table.loc["ssd", "wer_delta"] == pytest.approx(expected)
    assert table.loc["ssd", "wer_delta_lo"] <= expected <= table.loc["ssd", "wer_delta_hi"]
    assert pd.isna(table.loc["baseline", "wer_delta"]) and pd.isna(table.loc["ground_truth", "wer_delta"])
    shown = display_frame(table.reset_index()).set_index("decoder")
    assert "wer_delta_lo" not in shown.columns and shown.loc["baseline", "wer_delta"] == ""
    lo, hi = table.loc["ssd", "wer_delta_lo"], table.loc["ssd", "wer_delta_hi"]
    assert shown.loc["ssd", "wer_delta"] == f"{expected:+.3f} [{lo:+.3f}, {hi:+.3f}]"
