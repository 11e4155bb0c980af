"""LibriTTS manifest builder on a tiny fake tree, and manifest loading errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from specbench.data.libritts import build_manifest, resolve_subset_dir
from specbench.data.manifest import load_manifest
from specbench.errors import DataError

SR = 24000
SUBSET = "test-clean"
SPEAKERS = {"19": "198", "26": "495", "32": "21631"}  # speaker -> chapter
DURATIONS = (0.4, 0.6, 0.8)  # seconds of utterance 1, 2, 3 of every speaker
TEXTS = ("The cat sat on the mat.", "A quick brown fox.", "Hello there, friend.")


def utt_id(spk: str, idx: int) -> str:
    return f"{spk}_{SPEAKERS[spk]}_{idx:06d}_000000"


def make_tree(root: Path, *, phonemes: bool = True, speakers: dict[str, str] = SPEAKERS) -> Path:
    """``root/test-clean/<spk>/<chapter>/<utt>.{wav,normalized.txt,original.txt[,phonemes.txt]}``."""
    rng = np.random.default_rng(0)
    for spk, chapter in speakers.items():
        folder = root / SUBSET / spk / chapter
        folder.mkdir(parents=True)
        for idx, (dur, text) in enumerate(zip(DURATIONS, TEXTS, strict=True), 1):
            stem = folder / utt_id(spk, idx)
            wav = (0.1 * rng.standard_normal(int(dur * SR))).astype(np.float32)
            sf.write(str(stem) + ".wav", wav, SR, subtype="PCM_16")
            Path(str(stem) + ".normalized.txt").write_text(text + "\n", encoding="utf-8")
            Path(str(stem) + ".original.txt").write_text(text, encoding="utf-8")
            if phonemes:
                Path(str(stem) + ".phonemes.txt").write_text(f"ph-{spk}-{idx}\n", encoding="utf-8")
    return root


def one_line_error(exc_info: pytest.ExceptionInfo[DataError]) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


def test_build_manifest(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "LibriTTS")
    man = build_manifest(root, SUBSET)
    assert man.path == root / f"{SUBSET}.jsonl" and man.path.is_file()
    assert len(man) == 9
    assert man.speakers() == sorted(SPEAKERS)

    loaded = load_manifest(man.path)
    assert [u.utt_id for u in loaded.utterances] == [u.utt_id for u in man.utterances]
    by_id = {u.utt_id: u for u in loaded.utterances}
    for spk in SPEAKERS:
        for idx, (dur, text) in enumerate(zip(DURATIONS, TEXTS, strict=True), 1):
            u = by_id[utt_id(spk, idx)]
            assert u.speaker == spk and u.text == text and u.split == SUBSET
            assert u.phonemes == f"ph-{spk}-{idx}"
            assert u.duration == pytest.approx(dur, abs=1e-3)
            assert not Path(u.audio).is_absolute()
            assert u.audio_path(loaded.root).resolve() == (root / SUBSET / spk / SPEAKERS[spk] / f"{u.utt_id}.wav").resolve()
            # the prompt: another utterance of the same speaker, and its audio exists
            assert u.prompt_utt_id is not None and u.prompt_utt_id != u.utt_id
            assert by_id[u.prompt_utt_id].speaker == spk
            assert u.prompt_audio == by_id[u.prompt_utt_id].audio
            assert u.prompt_path(loaded.root).is_file()


def test_prompts_prefer_long_enough_and_are_reproducible(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    # only utterance 3 (0.8 s) of each speaker is long enough; utterance 3 itself falls back to the others
    man = build_manifest(root, SUBSET, min_prompt_seconds=0.7, seed=3)
    for u in man.utterances:
        if u.utt_id.endswith("_000003_000000"):
            assert u.prompt_utt_id != u.utt_id and u.prompt_utt_id.startswith(f"{u.speaker}_")
        else:
            assert u.prompt_utt_id == utt_id(u.speaker, 3)
    first = man.path.read_text(encoding="utf-8")
    build_manifest(root, SUBSET, min_prompt_seconds=0.7, seed=3)
    assert man.path.read_text(encoding="utf-8") == first


def test_single_utterance_speaker_gets_no_prompt(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    lonely = root / SUBSET / "40" / "222"
    lonely.mkdir(parents=True)
    sf.write(str(lonely / "40_222_000001_000000.wav"), np.zeros(SR // 2, dtype=np.float32), SR)
    (lonely / "40_222_000001_000000.normalized.txt").write_text("Alone.", encoding="utf-8")
    (lonely / "40_222_000001_000000.phonemes.txt").write_text("@l'oUn", encoding="utf-8")
    man = load_manifest(build_manifest(root, SUBSET).path)
    alone = next(u for u in man.utterances if u.speaker == "40")
    assert alone.prompt_utt_id is None and alone.prompt_audio is None
    with pytest.raises(DataError):
        alone.prompt_path(man.root)


def test_phonemes_from_espeak(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    from specbench.text import phonemize_one

    root = make_tree(tmp_path, phonemes=False, speakers={"19": "198"})
    man = build_manifest(root, SUBSET, workers=1)
    assert len(man) == 3
    for u in man.utterances:
        assert u.phonemes and u.phonemes == phonemize_one(u.text)
    assert "k'at" in next(u for u in man.utterances if u.text.startswith("The cat")).phonemes


def test_explicit_out_path(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "corpus")
    out = tmp_path / "elsewhere" / "m.jsonl"
    build_manifest(root, SUBSET, out=out)
    assert out.is_file() and not (root / f"{SUBSET}.jsonl").exists()
    for u in load_manifest(out).utterances:
        assert u.audio_path(out.parent).is_file()


def test_resolve_subset_dir(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "LibriTTS")
    subset_dir = root / SUBSET
    assert resolve_subset_dir(root, SUBSET) == subset_dir
    assert resolve_subset_dir(subset_dir, SUBSET) == subset_dir  # the subset folder itself
    assert resolve_subset_dir(tmp_path, SUBSET) == subset_dir  # the folder above LibriTTS/
    # building from the subset folder itself writes the same manifest next to it
    man = build_manifest(subset_dir, SUBSET)
    assert man.path == root / f"{SUBSET}.jsonl" and len(man) == 9


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        build_manifest(tmp_path / "nope", SUBSET)
    assert "corpus root not found" in one_line_error(err)


def test_missing_subset_lists_contents(tmp_path: Path) -> None:
    (tmp_path / "dev-clean").mkdir()
    (tmp_path / "train-clean-100").mkdir()
    with pytest.raises(DataError) as err:
        build_manifest(tmp_path, SUBSET)
    msg = one_line_error(err)
    assert f"'{SUBSET}' not found" in msg and "dev-clean, train-clean-100" in msg
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        resolve_subset_dir(empty, SUBSET)
    assert "no folders" in one_line_error(err)


def test_no_wavs(tmp_path: Path) -> None:
    (tmp_path / SUBSET / "19" / "198").mkdir(parents=True)
    (tmp_path / SUBSET / "stray.wav").write_bytes(b"")  # not at <spk>/<chapter>/ depth
    with pytest.raises(DataError) as err:
        build_manifest(tmp_path, SUBSET)
    assert "no <speaker>/<chapter>/<utt>.wav files" in one_line_error(err)


def test_wavs_without_transcripts(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    for txt in list((root / SUBSET / "26").rglob("*.normalized.txt")):
        txt.unlink()
    with pytest.raises(DataError) as err:
        build_manifest(root, SUBSET)
    msg = one_line_error(err)
    assert "3 of 9 wavs" in msg and ".normalized.txt" in msg
    assert not (root / f"{SUBSET}.jsonl").exists()


def test_corrupt_wav(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    bad = root / SUBSET / "19" / "198" / "19_198_000009_000000"
    Path(str(bad) + ".wav").write_bytes(np.random.default_rng(1).bytes(4000))
    Path(str(bad) + ".normalized.txt").write_text("Broken.", encoding="utf-8")
    with pytest.raises(DataError) as err:
        build_manifest(root, SUBSET)
    msg = one_line_error(err)
    assert "19_198_000009_000000.wav" in msg
    assert not (root / f"{SUBSET}.jsonl").exists()


# --- load_manifest -----------------------------------------------------------------------------------

ROW = {"utt_id": "u1", "speaker": "s", "text": "hi", "phonemes": "h'aI", "audio": "a.wav", "duration": 1.0}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_manifest_ok_keeps_extra(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", [json.dumps({**ROW, "voice": "en-us"}), "", json.dumps({**ROW, "utt_id": "u2"})])
    man = load_manifest(path)
    assert [u.utt_id for u in man.utterances] == ["u1", "u2"]
    assert man.utterances[0].extra == {"voice": "en-us"} and man.utterances[0].split == "train"


def test_load_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_manifest(tmp_path / "nope.jsonl")
    assert "manifest not found" in one_line_error(err)


def test_load_manifest_row_lacking_fields(tmp_path: Path) -> None:
    row = {k: v for k, v in ROW.items() if k not in ("audio", "duration")}
    path = write_lines(tmp_path / "m.jsonl", [json.dumps(ROW), json.dumps(row)])
    with pytest.raises(DataError) as err:
        load_manifest(path)
    msg = one_line_error(err)
    assert "row 2" in msg and "audio, duration" in msg


@pytest.mark.parametrize("row", ["5", '"text"', "[1, 2]", "null"])
def test_load_manifest_row_not_an_object(tmp_path: Path, row: str) -> None:
    path = write_lines(tmp_path / "m.jsonl", [json.dumps(ROW), row])
    with pytest.raises(DataError) as err:
        load_manifest(path)
    assert "row 2" in one_line_error(err)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_load_manifest_empty(tmp_path: Path, content: str) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_manifest(path)
    assert "is empty" in one_line_error(err)


def test_load_manifest_bad_json(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "m.jsonl", ["{not json", json.dumps(ROW)])
    with pytest.raises(DataError) as err:
        load_manifest(path)
    assert "not valid JSON lines" in one_line_error(err)
