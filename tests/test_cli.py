"""The ``specbench`` CLI end to end on the tiny session assets, and its error paths.

Project rules checked here: bad input gives ONE line naming the problem and the fix, exit code 2, no
traceback; finished results are never lost or overwritten (runs resume, rows are appended atomically).
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from click.testing import Result
from conftest import tiny_recipe
from typer.testing import CliRunner

from specbench import __version__
from specbench.cli import app
from specbench.jsonl import append_jsonl, read_jsonl

RUNNER = CliRunner()
ENV = {"COLUMNS": "250"}  # rich tables wide enough that no cell wraps
REC_DECODERS = {"baseline", "ground_truth", "codec_resynth"}
SPEED_FIELDS = ("tokens", "target_calls", "mean_accepted_len", "tokens_per_s", "lm_rtf", "e2e_rtf")
SCORE_FIELDS = ("wer", "cer", "sim", "sim_other", "asr_model", "speaker_model", "normalizer")
# summary columns that do not depend on wall-clock time
STABLE_COLS = ("decoder", "kind", "n", "repeats", "tokens", "target_calls", "mean_accepted_len", "speedup", "call_speedup", "wer", "cer", "sim", "sim_other")


# ---- helpers -------------------------------------------------------------------------------------
def invoke(*args: Any) -> Result:
    """Run the CLI in-process; whatever happens, no Python exception may escape to the user."""
    result = RUNNER.invoke(app, [str(a) for a in args], env=ENV)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    assert "Traceback" not in result.output
    return result


def ok(*args: Any) -> Result:
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def fails(*args: Any, code: int = 2) -> str:
    """Expect a user error: exit ``code`` and a single ``error: ...`` line on stderr; returns it."""
    result = invoke(*args)
    assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert err.startswith("error: "), result.output
    assert "\n" not in err, f"error is not one line: {err!r}"
    return err


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def rows(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path))


def rows_of(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def keys(records: list[dict[str, Any]]) -> list[str]:
    return [f"{r['decoder']}|{r['utt_id']}|{r['repeat']}" for r in records]


def summary(out: Path) -> list[dict[str, str]]:
    with (out / "summary.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def stable(table: list[dict[str, str]]) -> list[dict[str, Any]]:
    def val(v: str) -> Any:
        try:
            return round(float(v), 6)
        except ValueError:
            return v

    return [{c: val(r[c]) for c in STABLE_COLS if c in r} for r in table]


def write_wav(path: Path, seconds: float, sr: int = 16000, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr)).astype(np.float32)
    sf.write(str(path), wav, sr, subtype="PCM_16")


# ---- a finished run, shared by the tests below ---------------------------------------------------
@pytest.fixture(scope="module")
def first_run(tiny_assets: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`specbench run` of the tiny recipe (2 utterances, scoring on); snapshots of what it wrote."""
    work = tmp_path_factory.mktemp("cli-run")
    out = work / "run"
    recipe = write_recipe(work / "tiny.yaml", tiny_recipe(tiny_assets, out))
    result = ok("run", recipe)
    return {
        "work": work,
        "out": out,
        "recipe": recipe,
        "output": result.output,
        "records": (out / "records.jsonl").read_bytes(),
        "summary": summary(out),
    }


# ---- version, help, list -------------------------------------------------------------------------
def test_version() -> None:
    assert ok("--version").output.strip() == f"specbench {__version__}"


def test_help_lists_commands() -> None:
    out = ok("--help").output
    for cmd in ("run", "generate", "score", "report", "prepare", "train", "list"):
        assert re.search(rf"\b{cmd}\b", out), cmd
    assert "libritts" in ok("prepare", "--help").output
    assert "target" in ok("train", "--help").output


def test_list_shows_choices_and_assets() -> None:
    out = ok("list").output
    for word in (
        "baseline",
        "kmeans-mel",
        "encodec",
        "embedded",
        "faster-whisper",
        "seed-tts-eval",
        "whisper-english",
        "tiny",
        "small",
        "base",
        "large",
        "builtin:kmeans-mel-1024",
        "quickstart.yaml",
    ):
        assert word in out, word


# ---- recipe errors: exit 2, one line -------------------------------------------------------------
def test_run_missing_recipe(tmp_path: Path) -> None:
    err = fails("run", tmp_path / "nope.yaml")
    assert "recipe not found" in err and "nope.yaml" in err


def test_run_unknown_key(tmp_path: Path) -> None:
    err = fails("run", write_recipe(tmp_path / "r.yaml", {"name": "x", "sampling": {"temprature": 0.5}}))
    assert "sampling.temprature" in err and "unknown key" in err


def test_run_invalid_yaml(tmp_path: Path) -> None:
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ndecoders: [baseline\n", encoding="utf-8")
    err = fails("run", p)
    assert "not valid YAML" in err and "line" in err


def test_run_binary_file_as_recipe(tmp_path: Path) -> None:
    p = tmp_path / "prompt.wav"
    p.write_bytes(b"RIFF\xff\xfe\x00\x81" + os.urandom(64))
    assert "UTF-8" in fails("run", p)


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ("sampling.temperature=-1", "sampling.temperature"),
        ("sampling.top_p=0", "sampling.top_p"),
        ("device=gpu", "device"),
        ("decoders=[]", "decoders"),
        ("sampling.temperature", "key.path=value"),
        ("decoders.3.name=x", "decoders.3.name=x"),
        ("name=a[/]b", "a[/]b"),  # text that looks like rich markup is printed verbatim
    ],
)
def test_run_bad_set(override: str, expect: str) -> None:
    err = fails("run", "recipes/quickstart.yaml", "--set", override)
    assert expect in err


def test_error_text_is_not_rich_markup(tmp_path: Path) -> None:
    root = tmp_path / "[old]" / "LibriTTS"
    assert str(root) in fails("prepare", "libritts", "--root", root)


# ---- run end to end, resume, growth, refusal -----------------------------------------------------
def test_run_writes_every_file(first_run: dict[str, Any]) -> None:
    out: Path = first_run["out"]
    recs = rows(out / "records.jsonl")
    utts = sorted({r["utt_id"] for r in recs})
    assert len(utts) == 2
    assert sorted(keys(recs)) == sorted(f"{d}|{u}|0" for d in REC_DECODERS for u in utts)
    for r in recs:
        assert r["decoder"] in REC_DECODERS and r["speaker"] and r["text"]
        assert r["codec_id"] and r["model"]
        for field in ("audio", "prompt_audio", "ref_audio"):
            p = Path(r[field])
            assert (p if p.is_absolute() else out / p).is_file(), (field, r[field])
        if r["decoder"] == "baseline":
            assert r["kind"] == "decoder" and r["method"] == "baseline" and isinstance(r["seed"], int)
            for field in SPEED_FIELDS:
                assert isinstance(r[field], (int, float)) and r[field] >= 0, field
            # the first token comes from the prefill; one more call only when EOS ends the utterance
            assert r["tokens"] > 0 and r["target_calls"] == r["tokens"] - 1 + int(r["hit_eos"])
            assert r["mean_accepted_len"] == pytest.approx(1.0)
            assert 0 < r["tokens"] <= 30  # sampling.max_tokens of the tiny recipe
        else:
            assert r["kind"] == "reference"

    scores = rows(out / "scores.jsonl")
    assert sorted(s["key"] for s in scores) == sorted(keys(recs))
    for s in scores:
        for field in SCORE_FIELDS:
            assert field in s, field
        assert 0 <= s["wer"] and 0 <= s["cer"] and -1 <= s["sim"] <= 1
        assert s["sim_other"] is not None  # 2 utterances of 2 different test speakers
        assert s["asr_model"].startswith("faster-whisper:whisper-tiny.en") and s["speaker_model"] and s["normalizer"]

    table = first_run["summary"]
    by_name = {r["decoder"]: r for r in table}
    assert set(by_name) == REC_DECODERS
    assert float(by_name["baseline"]["speedup"]) == pytest.approx(1.0)
    assert float(by_name["baseline"]["call_speedup"]) == pytest.approx(1.0)
    assert by_name["baseline"]["n"] == "2" and by_name["baseline"]["kind"] == "decoder"
    for col in ("tokens_per_s", "lm_rtf", "e2e_rtf", "mean_accepted_len", "wer", "cer", "sim", "sim_other"):
        assert by_name["baseline"][col] != "", col
    assert by_name["ground_truth"]["wer"] != "" and by_name["ground_truth"]["kind"] == "reference"
    md = (out / "summary.md").read_text()
    assert "speedup" in md and "asr: faster-whisper:whisper-tiny.en" in md
    header = [c.strip() for c in md.split("\n\n", 1)[1].splitlines()[0].strip("|").split("|")]
    md_base = next(line for line in md.splitlines() if line.startswith("| baseline"))
    assert float([c.strip() for c in md_base.strip("|").split("|")][header.index("speedup")]) == pytest.approx(1.0)

    env = json.loads((out / "env.json").read_text())
    for field in ("git_commit", "torch", "device", "packages"):
        assert env.get(field), field
    assert env["device"] == "cpu" and env["packages"]["specbench"] == __version__
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["name"] == "tiny" and cfg["sampling"]["max_tokens"] == 30 and cfg["output_dir"] == str(out)
    assert "specbench summary" in first_run["output"] and "baseline" in first_run["output"]


def test_rerun_resumes_grows_and_refuses_changed_config(first_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(first_run["out"], out)
    recipe = write_recipe(tmp_path / "tiny.yaml", {**yaml.safe_load(first_run["recipe"].read_text()), "output_dir": str(out)})
    before = (out / "records.jsonl").read_bytes()
    scores_before = (out / "scores.jsonl").read_bytes()

    # same command again: nothing to do, nothing duplicated
    result = ok("run", recipe)
    assert "already" in result.output
    assert (out / "records.jsonl").read_bytes() == before
    assert (out / "scores.jsonl").read_bytes() == scores_before
    assert not (out / "env-2.json").exists()  # no generation session happened

    # a larger limit: only the new utterance's rows are added (appended after the old ones)
    ok("run", recipe, "--set", "corpus.limit=3")
    after = (out / "records.jsonl").read_bytes()
    assert after.startswith(before)
    old, new = rows_of(before), rows(out / "records.jsonl")
    added = new[len(old) :]
    assert len({r["utt_id"] for r in added}) == 1 and {r["decoder"] for r in added} == REC_DECODERS
    assert added[0]["utt_id"] not in {r["utt_id"] for r in old}
    assert len(set(keys(new))) == len(new) == 9
    scores = rows(out / "scores.jsonl")
    assert len(scores) == len({s["key"] for s in scores}) == 9
    assert (out / "env-2.json").is_file() and json.loads((out / "env.json").read_text())  # env.json kept
    assert {r["decoder"]: r["n"] for r in summary(out)}["baseline"] == "3"

    # a setting the rows depend on changed: refused, nothing touched
    snapshot = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    err = fails("run", recipe, "--set", "corpus.limit=3", "--set", "sampling.temperature=0.7")
    assert "sampling" in err and "another output_dir" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snapshot
    fails("generate", recipe, "--set", "sampling.temperature=0.7")  # the generate step refuses too
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == snapshot


def test_generate_score_report_match_run(first_run: dict[str, Any], tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "steps"
    recipe = write_recipe(tmp_path / "tiny.yaml", tiny_recipe(tiny_assets, out))
    ok("generate", recipe)
    assert (out / "records.jsonl").is_file()
    assert not (out / "scores.jsonl").exists() and not (out / "summary.csv").exists()
    ok("score", out)
    assert (out / "scores.jsonl").is_file() and not (out / "summary.csv").exists()
    ok("report", out)
    assert stable(summary(out)) == stable(first_run["summary"])
    assert sorted(keys(rows(out / "records.jsonl"))) == sorted(keys(rows_of(first_run["records"])))
    # rescoring with the same scorer adds nothing
    scores = (out / "scores.jsonl").read_bytes()
    ok("score", out)
    assert (out / "scores.jsonl").read_bytes() == scores


def test_teacher_forced_reference_row(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    """scoring.teacher_forced adds a scored reference row whose tokens are the per-step argmax."""
    out = tmp_path / "tf"
    recipe = tiny_recipe(tiny_assets, out)
    recipe["scoring"] = {"reference": False, "teacher_forced": True}
    ok("run", write_recipe(tmp_path / "tf.yaml", recipe))
    recs = rows(out / "records.jsonl")
    assert {r["decoder"] for r in recs} == {"baseline", "teacher_forced"}
    tf = [r for r in recs if r["decoder"] == "teacher_forced"]
    assert all(r["kind"] == "reference" for r in tf) and len(tf) == 2
    for r in tf:
        tokens = np.load((out / r["audio"]).with_suffix(".tokens.npy"))
        assert tokens.size > 0 and r["audio_seconds"] > 0
    table = {r["decoder"]: r for r in summary(out)}
    assert table["teacher_forced"]["wer"] != "" and table["teacher_forced"]["kind"] == "reference"


def test_score_step_sends_clips_to_the_asr_in_batch_size_chunks(tiny_assets: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scoring.asr.batch_size clips per transcribe call (what the transformers backend batches)."""
    from specbench.bench.runner import load_run_config, score_step

    out = tmp_path / "batched"
    recipe = tiny_recipe(tiny_assets, out)
    recipe["decoders"] = [{"name": "baseline"}, {"name": "again", "method": "baseline"}]
    ok("generate", write_recipe(tmp_path / "b.yaml", recipe))
    n_rows = len(rows(out / "records.jsonl"))
    calls: list[int] = []

    class FakeAsr:
        id = "fake-asr"

        def transcribe(self, wavs: list[np.ndarray], sr: int) -> list[str]:
            calls.append(len(wavs))
            return [f"clip {len(calls)}.{i}" for i in range(len(wavs))]

    monkeypatch.setattr("specbench.scoring.build_asr", lambda cfg: FakeAsr())
    cfg = load_run_config(out, ["scoring.asr.batch_size=3"])
    assert score_step(cfg, out, log=lambda *a: None) == n_rows
    assert calls == [3] * (n_rows // 3) + ([n_rows % 3] if n_rows % 3 else [])
    hyps = [r["hyp"] for r in read_jsonl(out / "scores.jsonl")]
    assert len(hyps) == n_rows and len(set(hyps)) == n_rows  # each row got its own clip's transcript


def test_score_and_report_need_a_run_folder(tmp_path: Path) -> None:
    assert "not a specbench run folder" in fails("score", tmp_path)
    assert "not a specbench run folder" in fails("report", tmp_path)


# ---- interrupted appends -------------------------------------------------------------------------
def test_torn_last_line_is_skipped_then_regenerated(first_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(first_run["out"], out)
    recipe = write_recipe(tmp_path / "tiny.yaml", {**yaml.safe_load(first_run["recipe"].read_text()), "output_dir": str(out)})
    path = out / "records.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    full = rows(path)

    # 1. a crash while appending the LAST row: half of it is on disk, without its newline
    path.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    assert rows(path) == full[:-1]  # read_jsonl: "a torn last line (crash mid-append) is skipped"
    ok("run", recipe)
    again = rows(path)  # "the row is regenerated on resume", and the file is clean JSON lines again
    assert keys(again) == keys(full)
    assert all(json.loads(line) for line in path.read_bytes().splitlines())
    assert len(rows(out / "scores.jsonl")) == len(full)

    # 2. a torn fragment when nothing needs regenerating: rerun works, rows intact
    with path.open("ab") as fh:
        fh.write(b'{"decoder": "baseline", "utt_')
    ok("run", recipe)
    assert keys(rows(path)) == keys(full)
    # later appends never glue onto a torn line (scoring off: only records matter here, and it is slow)
    ok("run", recipe, "--set", "corpus.limit=3", "--set", "scoring.enabled=false")
    grown = rows(path)
    assert len(grown) == len(full) + 3 and len(set(keys(grown))) == len(grown)
    assert all(json.loads(line) for line in path.read_bytes().splitlines())


def test_jsonl_append_after_torn_line(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    with p.open("a") as fh:
        fh.write('{"a": 2, "b"')  # interrupted append
    assert rows(p) == [{"a": 1}]
    append_jsonl(p, {"a": 2})
    append_jsonl(p, {"a": 3})
    assert rows(p) == [{"a": 1}, {"a": 2}, {"a": 3}]
    with p.open("a") as fh:
        fh.write('{"a": 4}')  # a complete row that lacks only its newline is kept
    append_jsonl(p, {"a": 5})
    assert rows(p) == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}, {"a": 5}]
    # only the LAST line may be torn: damage in the middle is an error, not silently dropped
    p.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(json.JSONDecodeError):
        rows(p)


# ---- run error paths -----------------------------------------------------------------------------
def test_run_libritts_missing_root(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    root = tmp_path / "no-libritts"
    corpus = {"kind": "libritts", "root": str(root), "subset": "test-clean"}
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_assets, tmp_path / "out", corpus=corpus))
    err = fails("run", recipe)
    assert str(root) in err and "not found" in err
    assert not (tmp_path / "out" / "records.jsonl").exists()


def test_run_checkpoint_of_wrong_kind(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_assets, tmp_path / "out", model={"checkpoint": str(tiny_assets["codec"])}))
    err = fails("run", recipe)
    assert "kind" in err and "codec-lm" in err and str(tiny_assets["codec"]) in err
    assert not (tmp_path / "out" / "records.jsonl").exists()


def test_run_codec_of_wrong_kind(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_assets, tmp_path / "out", codec={"kind": "kmeans-mel", "path": str(tiny_assets["model"])}))
    err = fails("run", recipe)
    assert "codec-lm" in err and "specbench train codec" in err


def test_run_missing_checkpoint_names_a_real_command(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_assets, tmp_path / "out", model={"checkpoint": str(missing)}))
    err = fails("run", recipe)
    assert "not found" in err and str(missing) in err
    # the fix it names must be a command that exists
    commands = re.findall(r"`specbench ([^`]+)`", err)
    assert commands, err
    for cmd in commands:
        ok(*cmd.split(), "--help")


def test_run_corrupt_checkpoint(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "junk.pt"
    bad.write_bytes(random.Random(0).randbytes(4096))  # fixed junk: the test must not depend on the draw
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_assets, tmp_path / "out", model={"checkpoint": str(bad)}))
    assert str(bad) in fails("run", recipe)


def test_run_corrupt_prompt_audio_in_manifest(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    corpus: Path = tiny_assets["corpus"]
    src = rows(corpus / "test.jsonl")[0]
    corrupt = tmp_path / "audio" / "prompt.wav"
    corrupt.parent.mkdir()
    corrupt.write_bytes(os.urandom(2048))
    row = {**src, "audio": str(corpus / src["audio"]), "prompt_audio": str(corrupt)}
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(row) + "\n", encoding="utf-8")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_assets, tmp_path / "out", corpus={"kind": "manifest", "manifest": str(manifest)}))
    err = fails("run", recipe)
    assert str(corrupt) in err and "audio" in err


def test_run_manifest_missing(tiny_assets: dict[str, Any], tmp_path: Path) -> None:
    manifest = tmp_path / "none.jsonl"
    recipe = write_recipe(tmp_path / "r.yaml", tiny_recipe(tiny_assets, tmp_path / "out", corpus={"kind": "manifest", "manifest": str(manifest)}))
    err = fails("run", recipe)
    assert str(manifest) in err and "specbench prepare" in err


# ---- prepare -------------------------------------------------------------------------------------
def test_prepare_synthetic_without_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from specbench.data import espeak_lib

    monkeypatch.setattr(espeak_lib, "LIBRARY", "libespeak-ng-not-installed.so")
    espeak_lib.espeak_library.cache_clear()
    try:
        err = fails("prepare", "synthetic", "--out", tmp_path / "corpus", "--splits", "test")
    finally:
        espeak_lib.espeak_library.cache_clear()
    assert "espeak-ng" in err and "apt-get" in err
    assert not (tmp_path / "corpus" / "test.jsonl").exists()


def test_prepare_libritts_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "LibriTTS"
    err = fails("prepare", "libritts", "--root", root)
    assert str(root) in err and "--root" in err


def test_prepare_libritts_missing_subset(tmp_path: Path) -> None:
    (tmp_path / "train-clean-100").mkdir()
    err = fails("prepare", "libritts", "--root", tmp_path, "--subset", "test-clean")
    assert "test-clean" in err and "train-clean-100" in err


def make_libritts(root: Path) -> Path:
    """``root/test-clean/<spk>/<chapter>/<utt>.{wav,normalized.txt,phonemes.txt}``: 2 speakers × 2 utts."""
    texts = {"1": "The cat sat on the mat.", "2": "A quick brown fox jumps."}
    for s, spk in enumerate(("19", "26")):
        folder = root / "test-clean" / spk / "198"
        for idx, text in texts.items():
            stem = folder / f"{spk}_198_00000{idx}_000000"
            write_wav(stem.with_suffix(".wav"), 0.5 + 0.1 * int(idx), seed=s * 10 + int(idx))
            Path(f"{stem}.normalized.txt").write_text(text + "\n", encoding="utf-8")
            Path(f"{stem}.phonemes.txt").write_text("D@ k'at s'at\n", encoding="utf-8")
    return root


def test_prepare_libritts_tiny_tree(tmp_path: Path) -> None:
    root = make_libritts(tmp_path / "LibriTTS")
    result = ok("prepare", "libritts", "--root", root)
    manifest = root / "test-clean.jsonl"
    assert manifest.is_file() and "4 utterances, 2 speakers" in result.output
    utts = rows(manifest)
    assert len(utts) == 4 and {u["speaker"] for u in utts} == {"19", "26"}
    for u in utts:
        assert u["phonemes"] == "D@ k'at s'at" and u["text"] and u["duration"] > 0
        assert u["prompt_utt_id"] != u["utt_id"] and u["prompt_utt_id"].split("_")[0] == u["speaker"]
        assert (root / u["audio"]).is_file() and (root / u["prompt_audio"]).is_file()
    out = tmp_path / "custom" / "m.jsonl"
    ok("prepare", "libritts", "--root", root, "--out", out)
    custom = rows(out)
    assert [u["utt_id"] for u in custom] == [u["utt_id"] for u in utts]
    assert all((out.parent / u["audio"]).is_file() for u in custom)  # paths valid relative to the new location


def test_prepare_libritts_corrupt_wav(tmp_path: Path) -> None:
    root = make_libritts(tmp_path / "LibriTTS")
    bad = next((root / "test-clean").glob("*/*/*.wav"))
    bad.write_bytes(os.urandom(1000))
    err = fails("prepare", "libritts", "--root", root)
    assert str(bad) in err
    assert not (root / "test-clean.jsonl").exists()


# ---- train ---------------------------------------------------------------------------------------
def test_train_target_refuses_existing_run(tmp_path: Path) -> None:
    out = tmp_path / "train"
    out.mkdir()
    last = out / "last.pt"
    last.write_bytes(b"precious checkpoint bytes")
    err = fails("train", "target", "--set", f"out_dir={out}")
    assert "--resume" in err and str(out) in err
    assert last.read_bytes() == b"precious checkpoint bytes"
    assert sorted(p.name for p in out.iterdir()) == ["last.pt"]


def test_train_target_resume_without_checkpoint(tmp_path: Path) -> None:
    err = fails("train", "target", "--resume", "--set", f"out_dir={tmp_path / 'fresh'}")
    assert "nothing to resume" in err


def test_train_target_bad_config(tmp_path: Path) -> None:
    assert "d_modle" in fails("train", "target", "--set", "model.d_modle=1")
    assert "stepz" in fails("train", "target", "--set", "stepz=1")
    assert "not found" in fails("train", "target", "--config", tmp_path / "nope.yaml")


def test_run_refuses_to_mix_codec_syntheses(first_run: dict[str, Any], tmp_path: Path) -> None:
    """Rows added to a folder must be decoded as its earlier audio was: a folder from before the smoothing
    (env.json without codec_synthesis) grows only under codec.synthesis_kernel [1]."""
    out = tmp_path / "run"
    shutil.copytree(first_run["out"], out)
    recipe = write_recipe(tmp_path / "tiny.yaml", {**yaml.safe_load(first_run["recipe"].read_text()), "output_dir": str(out)})
    env = json.loads((out / "env.json").read_text())
    assert env["models"]["codec_synthesis"] == "smooth[1-2-1]+griffin-lim48"
    del env["models"]["codec_synthesis"]  # as written before the synthesis was recorded
    (out / "env.json").write_text(json.dumps(env))

    def results() -> dict[str, bytes]:  # rows, scores and sessions (config.yaml records the latest command)
        return {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".json", ".csv", ".md") and p.name != "run.json"}

    snapshot = results()
    err = fails("run", recipe, "--set", "corpus.limit=3")
    assert "smooth[1]+griffin-lim48" in err and "smooth[1-2-1]" in err and "another output_dir" in err
    assert results() == snapshot
    ok("run", recipe, "--set", "corpus.limit=3", "--set", "codec.synthesis_kernel=[1]")
    assert json.loads((out / "env-2.json").read_text())["models"]["codec_synthesis"] == "smooth[1]+griffin-lim48"


def test_run_folder_from_an_older_schema_resumes(tiny_assets, tmp_path) -> None:
    """A run.json written before fields were added to codec/model (no backend, no semantic_path...) still
    matches the same recipe today: the rerun resumes instead of refusing the folder."""
    out = tmp_path / "old"
    recipe = tiny_recipe(tiny_assets, out, scoring={"enabled": False})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert invoke("run", str(path)).exit_code == 0
    run_json = json.loads((out / "run.json").read_text())
    run_json["fingerprint"]["model"] = {"checkpoint": recipe["model"]["checkpoint"]}
    run_json["fingerprint"]["codec"] = {k: recipe["codec"][k] for k in ("kind", "path")} | {"bandwidth": 1.5}
    (out / "run.json").write_text(json.dumps(run_json))
    res = invoke("run", str(path))
    assert res.exit_code == 0 and "already in" in res.output
