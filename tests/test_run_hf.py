"""An hf-causal target through the whole CLI: `train heads` (frozen, 2 steps) and `specbench run` with
baseline, sd, ssd (layer-subset draft), vadusa (heads tree) and pcg, scored and reported. The model is
a tiny random Llama of a user-described family over the tiny session codec (quality meaningless,
plumbing real)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_recipe
from test_targets import MINI_FAMILY
from typer.testing import CliRunner

from specbench.cli import app
from specbench.jsonl import read_jsonl
from specbench.models.heads import load_heads
from specbench.targets.tiny import write_tiny_lm

RUNNER = CliRunner()


@pytest.fixture(scope="module")
def hf_setup(tiny_assets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hfrun")
    fam = root / "mini.yaml"
    fam.write_text(MINI_FAMILY)
    target = write_tiny_lm(str(fam), root / "target", layers=3, seed=0)
    draft = write_tiny_lm(str(fam), root / "draft", layers=1, seed=1)
    model = {"backend": "hf-causal", "path": str(target), "family": str(fam), "dtype": "float32"}
    return {"root": root, "family": fam, "target": target, "draft": draft, "model": model}


def _invoke(*args: str):
    res = RUNNER.invoke(app, list(args), env={"COLUMNS": "250"})
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res


def test_train_heads_on_an_hf_target_then_run_every_method(tiny_assets, hf_setup, tmp_path: Path) -> None:
    corpus, codec = tiny_assets["corpus"], tiny_assets["codec"]
    heads_cfg = {
        "target_model": hf_setup["model"],
        "train_manifest": str(corpus / "train.jsonl"),
        "dev_manifest": str(corpus / "dev.jsonl"),
        "codec": {"kind": "kmeans-mel", "path": str(codec)},
        "out_dir": str(tmp_path / "heads"),
        "n_heads": 3,
        "steps": 2,
        "eval_every": 2,
        "save_every": 2,
        "warmup_steps": 1,
        "batch_tokens": 400,
        "prompt_frames": 40,
        "device": "cpu",
    }
    cfg_path = tmp_path / "heads.yaml"
    cfg_path.write_text(yaml.safe_dump(heads_cfg))
    res = _invoke("train", "heads", "--config", str(cfg_path))
    assert res.exit_code == 0, res.output
    heads_path = tmp_path / "heads" / "heads.pt"
    heads, meta = load_heads(heads_path)
    assert heads.cfg.n_heads == 3 and heads.cfg.vocab == 33 and meta["target"].startswith("hf-causal:mini:target:")
    hist = list(read_jsonl(tmp_path / "heads" / "history.jsonl"))
    assert [r["step"] for r in hist] == [0, 2] and hist[-1]["dev_heads_loss"] != hist[0]["dev_heads_loss"]  # it learned something

    # calibrate a sparse tree for these heads on the HF target, and use it below
    cal = tiny_recipe(tiny_assets, tmp_path / "cal", model=hf_setup["model"], sampling={"temperature": 0.0, "max_tokens": 20})
    cal_path = tmp_path / "cal.yaml"
    cal_path.write_text(yaml.safe_dump(cal))
    res = _invoke("calibrate-tree", str(cal_path), "--heads", str(heads_path), "--budget", "6", "--out-dir", str(tmp_path / "trees"), "--max-rank", "4")
    assert res.exit_code == 0, res.output
    tree = json.loads((tmp_path / "trees" / "vadusa-6.json").read_text())
    assert len(tree["paths"]) == 6 and tree["model"].startswith("hf-causal:mini:target:")

    draft = str(hf_setup["draft"])
    recipe = tiny_recipe(
        tiny_assets,
        tmp_path / "run",
        model=hf_setup["model"],
        sampling={"temperature": 0.0, "max_tokens": 24},
        decoders=[
            {"name": "baseline"},
            {"name": "sd", "preset": "sd", "draft": draft},
            {"name": "ssd", "preset": "ssd", "draft": "layers:1"},
            {"name": "vadusa", "preset": "vadusa", "heads": str(heads_path), "tree": str(tmp_path / "trees" / "vadusa-6.json")},
            {"name": "pcg", "preset": "pcg", "draft": draft, "theta": 0.2},
        ],
    )
    recipe["scoring"] = {"reference": False}
    rpath = tmp_path / "hf.yaml"
    rpath.write_text(yaml.safe_dump(recipe))
    res = _invoke("run", str(rpath))
    assert res.exit_code == 0, res.output
    rows = [r for r in read_jsonl(tmp_path / "run" / "records.jsonl") if r["kind"] == "decoder"]
    assert {r["decoder"] for r in rows} == {"baseline", "sd", "ssd", "vadusa", "pcg"} and len(rows) == 10
    assert all(r["model"].startswith("hf-causal:mini:target:") for r in rows)
    tokens = {(r["decoder"], r["utt_id"]): np.load(tmp_path / "run" / r["audio"].replace(".wav", ".tokens.npy")).tolist() for r in rows}
    assert sum(len(t) for t in tokens.values()) > 0
    for (dec, utt), toks in tokens.items():
        if dec == "sd":  # greedy exact SD emits the baseline's tokens
            assert toks == tokens[("baseline", utt)]
    # a random model may emit EOS first: such a row is scored as all deletions, without SIM
    scores = {r["key"]: r for r in read_jsonl(tmp_path / "run" / "scores.jsonl")}
    for r in rows:
        sc = scores[f"{r['decoder']}|{r['utt_id']}|{r['repeat']}"]
        if r["tokens"] == 0:
            assert sc["wer"] == 1.0 and sc["sim"] is None and sc["hyp"] == ""
    assert any(r["accepted"] > 0 for r in rows if r["decoder"] == "ssd")  # the layer subset agrees sometimes
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "vadusa" in summary and "pcg" in summary
    env = json.loads((tmp_path / "run" / "env.json").read_text())
    assert "transformers" in json.dumps(env)


def test_build_groups_from_an_hf_target(hf_setup) -> None:
    res = _invoke("build-groups", "--model", str(hf_setup["target"]), "--family", str(hf_setup["family"]), "--theta", "0.1")
    assert res.exit_code == 0, res.output
    assert "hf-causal:mini:target" in res.output and "vocabulary" in res.output and "33" in res.output


def test_hf_run_errors_are_one_line(tiny_assets, hf_setup, tmp_path: Path) -> None:
    # a missing model directory
    recipe = tiny_recipe(tiny_assets, tmp_path / "r1", model={**hf_setup["model"], "path": str(tmp_path / "missing")})
    p = tmp_path / "r1.yaml"
    p.write_text(yaml.safe_dump(recipe))
    res = _invoke("run", str(p))
    assert res.exit_code == 2 and "missing not found" in res.output and "Traceback" not in res.output
    # backend hf-causal without a family
    recipe = tiny_recipe(tiny_assets, tmp_path / "r2", model={"backend": "hf-causal", "path": str(hf_setup["target"])})
    p.write_text(yaml.safe_dump(recipe))
    res = _invoke("run", str(p))
    assert res.exit_code == 2 and "model.family" in res.output
    # the family's codec is not the recipe's codec
    fam2 = tmp_path / "other.yaml"
    fam2.write_text(MINI_FAMILY.replace("codec: kmeans-mel", "codec: snac"))
    recipe = tiny_recipe(tiny_assets, tmp_path / "r3", model={**hf_setup["model"], "family": str(fam2)})
    p.write_text(yaml.safe_dump(recipe))
    res = _invoke("run", str(p))
    assert res.exit_code == 2 and "decoded by the snac codec" in res.output
    torch.set_num_threads(1)


def test_bench_times_transformers_generate_as_the_peer_baseline(tiny_assets, hf_setup, tmp_path: Path) -> None:
    recipe = tiny_recipe(
        tiny_assets,
        tmp_path / "bench",
        model=hf_setup["model"],
        sampling={"temperature": 0.0, "max_tokens": 16},
        decoders=[{"name": "baseline"}, {"name": "sd", "preset": "sd", "draft": str(hf_setup["draft"])}],
        scoring={"enabled": False},
    )
    rpath = tmp_path / "bench.yaml"
    rpath.write_text(yaml.safe_dump(recipe))
    md = tmp_path / "bench.md"
    res = _invoke("bench", str(rpath), "--out", str(md))
    assert res.exit_code == 0, res.output
    text = md.read_text()
    assert "transformers generate()" in text and "greedy_tokens_match" in text
    row = [line for line in text.splitlines() if line.startswith("| transformers generate()")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[3]) > 0 and cells[4] == "True"  # ratio, and greedy outputs agree


def test_shipped_hf_tiny_recipe_runs(tiny_assets, tmp_path: Path, monkeypatch) -> None:
    """recipes/hf_tiny.yaml as shipped (tiny:llasa built on first use: 65,536 speech tokens, XCodec2 layout),
    cut to one utterance and a short budget; every decoder's greedy output is checked against the baseline
    where the rule is lossless."""
    monkeypatch.setenv("SPECBENCH_TINY_DIR", str(tmp_path / "tiny"))
    out = tmp_path / "run"
    res = _invoke(
        "run",
        "recipes/hf_tiny.yaml",
        "--set",
        f"output_dir={out}",
        "--set",
        f"corpus.root={tiny_assets['corpus']}",
        "--set",
        "corpus.limit=1",
        "--set",
        "sampling.max_tokens=12",
        "--set",
        "scoring.enabled=false",
        "--set",
        "warmup=0",
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "tiny" / "llasa" / "tiny.json").is_file()
    rows = list(read_jsonl(out / "records.jsonl"))
    assert {r["decoder"] for r in rows} == {"baseline", "sd", "ssd", "vadusa", "pcg"}
    tok = {r["decoder"]: np.load(out / r["audio"].replace(".wav", ".tokens.npy")).tolist() for r in rows}
    assert tok["sd"] == tok["baseline"]  # exact SD under greedy
    assert next(r for r in rows if r["decoder"] == "pcg")["group_mean_size"] >= 1  # groups over 65,537 rows


def test_make_tiny_model_orpheus_and_snac_frames(tiny_assets, tmp_path: Path) -> None:
    """`make-tiny-model --family orpheus`: a Llama with Orpheus' special tokens and 28,672 flat SNAC ids; a run
    decodes the flat stream by regrouping 7-token frames (24 kHz audio)."""
    import soundfile as sf

    out = tmp_path / "orpheus"
    res = _invoke("make-tiny-model", "--family", "orpheus", "--out", str(out), "--arch", "qwen2")
    assert res.exit_code == 0, res.output
    info = json.loads((out / "tiny.json").read_text())
    assert info["arch"] == "qwen2" and (out / info["codec"]).exists()
    recipe = tiny_recipe(
        tiny_assets,
        tmp_path / "run",
        codec={"kind": "snac", "path": str(out / info["codec"])},
        model={"backend": "hf-causal", "path": str(out / "target"), "family": "orpheus"},
        sampling={"temperature": 0.0, "max_tokens": 30},
        decoders=[{"name": "baseline"}, {"name": "sd", "preset": "sd", "draft": "layers:1"}],
        scoring={"enabled": False},
    )
    recipe["corpus"]["limit"] = 1
    p = tmp_path / "orpheus.yaml"
    p.write_text(yaml.safe_dump(recipe))
    res = _invoke("run", str(p))
    assert res.exit_code == 0, res.output
    rows = [r for r in read_jsonl(tmp_path / "run" / "records.jsonl") if r["kind"] == "decoder"]
    assert len(rows) == 2
    from specbench.codec import load_codec

    rate = load_codec("snac", str(out / info["codec"])).frame_rate
    for r in rows:
        toks = np.load(tmp_path / "run" / r["audio"].replace(".wav", ".tokens.npy"))
        info_wav = sf.info(tmp_path / "run" / r["audio"])
        assert info_wav.samplerate == 24000
        # whole 7-token frames decode to audio of their duration (a trailing partial frame is dropped)
        assert abs(info_wav.frames / 24000 - (len(toks) // 7 * 7) / rate) < 0.02
    # an existing folder is never overwritten without --overwrite
    res = _invoke("make-tiny-model", "--family", "orpheus", "--out", str(out))
    assert res.exit_code == 2 and "--overwrite" in res.output
