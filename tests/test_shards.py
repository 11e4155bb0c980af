"""Sharded runs on Ray (``--shards N``): the rows equal a one-process run's, and failures lose nothing.

One local Ray cluster (2 CPUs, so 2 CPU shards of one torch thread each) serves the whole module; the
CLI uses it as it is. The one-process run of the same recipe is the reference every sharded run must
reproduce exactly, timings aside: tokens (``.tokens.npy``), accepted lengths, target calls, WER and SIM.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import yaml
from conftest import tiny_recipe
from typer.testing import CliRunner

from specbench.bench.shards import EXIT_HOOK_ENV
from specbench.cli import app
from specbench.jsonl import read_jsonl

RUNNER = CliRunner()
ENV = {"COLUMNS": "250"}
FAILURE_LINE = re.compile(r"^shard (\d+) failed on decoder (\S+), utt_id (\S+), repeat (\d+): (.+)$", re.M)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    yield
    ray.shutdown()


def invoke(*args: Any, env: dict[str, str] | None = None):
    result = RUNNER.invoke(app, [str(a) for a in args], env={**ENV, **(env or {})})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def recipe_file(tiny_assets: dict[str, Any], work: Path, name: str) -> tuple[Path, Path]:
    """Baseline + SD (the target drafting for itself) under SAMPLING, 2 repeats, every reference row, scoring on."""
    out = work / name
    recipe = tiny_recipe(
        tiny_assets,
        out,
        repeats=2,
        sampling={"temperature": 0.9, "top_k": 20, "max_tokens": 30},
        decoders=[{"name": "baseline"}, {"name": "sd", "preset": "sd", "draft": str(tiny_assets["model"]), "gamma": 3}],
        scoring={"teacher_forced": True},
    )
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path, out


def key(r: dict[str, Any]) -> str:
    return f"{r['decoder']}|{r['utt_id']}|{r['repeat']}"


def volatile(field: str) -> bool:
    """Record fields that may differ between two runs of the same rows: timings, and how many shards ran."""
    return field.endswith(("_seconds", "_s", "_rtf")) or field == "shards"  # _s: tokens_per_s, group_build_s


def load_run(out: Path) -> dict[str, Any]:
    recs = list(read_jsonl(out / "records.jsonl"))
    scores = list(read_jsonl(out / "scores.jsonl")) if (out / "scores.jsonl").is_file() else []
    assert len({key(r) for r in recs}) == len(recs), "a record is duplicated"
    assert len({s["key"] for s in scores}) == len(scores), "a score row is duplicated"
    tokens = {}
    for r in recs:
        path = (out / r["audio"]).with_suffix(".tokens.npy")
        if r["decoder"] != "ground_truth":
            tokens[key(r)] = np.load(path)
    return {"records": {key(r): r for r in recs}, "scores": {s["key"]: s for s in scores}, "tokens": tokens}


def assert_same_rows(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a["records"]) == sorted(b["records"])
    for k, ra in a["records"].items():
        rb = b["records"][k]
        assert {f: v for f, v in ra.items() if not volatile(f)} == {f: v for f, v in rb.items() if not volatile(f)}, k
    assert sorted(a["tokens"]) == sorted(b["tokens"])
    for k, ta in a["tokens"].items():
        assert np.array_equal(ta, b["tokens"][k]), k
    assert sorted(a["scores"]) == sorted(b["scores"])
    for k, sa in a["scores"].items():
        sb = b["scores"][k]
        for f in ("scorer", "hyp", "wer", "cer", "sim", "sim_other"):
            assert sa[f] == sb[f], (k, f)


@pytest.fixture(scope="module")
def one_shard(tiny_assets: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The one-process run (no Ray) every sharded run is compared with."""
    work = tmp_path_factory.mktemp("shards")
    recipe, out = recipe_file(tiny_assets, work, "one")
    res = invoke("run", recipe)
    assert res.exit_code == 0, res.output
    run = load_run(out)
    assert {r["shards"] for r in run["records"].values()} == {1}
    assert json.loads((out / "env.json").read_text())["shards"] == 1
    return {"work": work, "run": run}


def test_two_shards_write_the_rows_of_one_process(ray_cluster, tiny_assets, one_shard) -> None:
    recipe, out = recipe_file(tiny_assets, one_shard["work"], "two")
    res = invoke("run", recipe, "--shards", 2)
    assert res.exit_code == 0, res.output
    run = load_run(out)
    assert len(run["records"]) == 2 * 2 * 2 + 2 * 3  # (baseline, sd) × 2 utterances × 2 repeats + 3 reference rows × 2
    assert_same_rows(one_shard["run"], run)
    assert {r["shards"] for r in run["records"].values()} == {2}
    assert any(r["accepted"] > 0 for r in run["records"].values() if r["decoder"] == "sd")
    env = json.loads((out / "env.json").read_text())
    assert env["shards"] == 2 and len(env["workers"]) == 2 and len({w["pid"] for w in env["workers"]}) == 2
    assert all(w["torch_threads"] == 1 and w["device"] == "cpu" and w["thread_env_in_time"] for w in env["workers"])
    assert (out / "summary.csv").is_file()
    # a rerun finds nothing to do and starts no worker
    before = (out / "records.jsonl").read_bytes(), (out / "scores.jsonl").read_bytes()
    res = invoke("run", recipe, "--shards", 2)
    assert res.exit_code == 0 and "already" in res.output
    assert ((out / "records.jsonl").read_bytes(), (out / "scores.jsonl").read_bytes()) == before


def test_killed_worker_loses_no_finished_row_and_a_rerun_completes(ray_cluster, tiny_assets, one_shard) -> None:
    recipe, out = recipe_file(tiny_assets, one_shard["work"], "killed")
    # shard 0 dies (os._exit) when handed its 3rd generation item
    res = invoke("run", recipe, "--shards", 2, env={EXIT_HOOK_ENV: "generate_item:2"})
    assert res.exit_code == 1, res.output
    failures = FAILURE_LINE.findall(res.output)
    assert len(failures) == 1, res.output
    shard, decoder, utt, repeat, message = failures[0]
    assert shard == "0" and "worker process died" in message
    assert re.search(r"^error: generation: 1 item failed on workers .*rerun the same command", res.output, re.M), res.output
    partial = load_run(out)
    total = len(one_shard["run"]["records"])
    assert len(partial["records"]) == total - 1 and f"{decoder}|{utt}|{repeat}" not in partial["records"]
    assert sorted(partial["scores"]) == sorted(partial["records"])  # the finished rows were scored in the same run
    # the rerun (no hook) does only the missing row; every row exactly once, equal to the one-process run
    res = invoke("run", recipe, "--shards", 2)
    assert res.exit_code == 0, res.output
    assert "generation: 1 new rows" in res.output and "scoring: 1 new rows" in res.output
    assert_same_rows(one_shard["run"], load_run(out))


def test_an_item_error_is_one_line_and_the_workers_go_on(ray_cluster, tiny_assets, one_shard, tmp_path) -> None:
    """A missing prompt file fails that utterance's rows (one line each, with the error); the workers go on with the rest."""
    from specbench.bench.runner import select_items
    from specbench.data.manifest import load_manifest
    from specbench.jsonl import write_jsonl

    corpus = Path(tiny_assets["corpus"])
    bad = select_items(load_manifest(corpus / "test.jsonl").utterances, 2)[1].utt_id
    rows = list(read_jsonl(corpus / "test.jsonl"))
    for r in rows:
        if r["utt_id"] == bad:
            r["prompt_audio"] = str(tmp_path / "missing.wav")
    manifest = corpus / f"test-bad-{tmp_path.name}.jsonl"  # beside the corpus: its relative audio paths still resolve
    write_jsonl(manifest, rows)
    recipe, out = recipe_file(tiny_assets, tmp_path, "bad")
    data = yaml.safe_load(recipe.read_text())
    data.update(corpus={"kind": "manifest", "manifest": str(manifest), "limit": 2}, scoring={"enabled": False, "teacher_forced": True}, repeats=1)
    recipe.write_text(yaml.safe_dump(data))
    try:
        res = invoke("generate", recipe, "--shards", 2)
    finally:
        manifest.unlink()
    assert res.exit_code == 1, res.output
    failures = FAILURE_LINE.findall(res.output)
    expected = ("baseline", "sd", "ground_truth", "codec_resynth", "teacher_forced")
    assert sorted((d, u) for _, d, u, _, _ in failures) == sorted((d, bad) for d in expected), res.output
    assert all(m.startswith("DataError: audio file not found") and "missing.wav" in m for *_, m in failures)
    recs = list(read_jsonl(out / "records.jsonl"))
    assert len(recs) == len(expected) and bad not in {r["utt_id"] for r in recs}


def test_more_shards_than_the_cluster_has_is_a_one_line_error(ray_cluster, tiny_assets, tmp_path) -> None:
    recipe, out = recipe_file(tiny_assets, tmp_path, "three")
    res = invoke("generate", recipe, "--shards", 3)
    assert res.exit_code == 2, res.output
    assert res.stderr.strip().startswith("error: --shards 3 needs 3 CPUs for generation") and "\n" not in res.stderr.strip()
    assert not (out / "records.jsonl").exists()


def test_one_shard_never_imports_ray() -> None:
    code = "import sys; import specbench.bench.runner, specbench.bench.shards, specbench.cli; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
