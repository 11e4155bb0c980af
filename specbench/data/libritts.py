"""Manifest builder for a LOCAL LibriTTS / LibriTTS-R tree (and the built-in corpus, which uses its layout).

Layout: ``ROOT/SUBSET/<speaker>/<chapter>/<utt>.wav`` with ``<utt>.normalized.txt`` beside each wav
(``<utt>.phonemes.txt`` is used when present, else espeak-ng phonemizes the text). Nothing is ever
downloaded. Every utterance gets a speaker prompt: another utterance of the same speaker, preferably one
at least ``min_prompt_seconds`` long, chosen with a seeded generator so manifests are reproducible.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from specbench.data.manifest import Manifest, Utterance, save_manifest
from specbench.errors import DataError
from specbench.text import phonemize


def resolve_subset_dir(root: str | Path, subset: str) -> Path:
    """``ROOT/SUBSET`` (or ROOT itself when it already is the subset folder); DataError when absent."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"corpus root not found: {root} (pass --root pointing at your local LibriTTS folder)")
    for cand in (root / subset, root / "LibriTTS" / subset, root / "LibriTTS_R" / subset):
        if cand.is_dir():
            return cand
    if root.name == subset:
        return root
    have = sorted(p.name for p in root.iterdir() if p.is_dir())[:8]
    raise DataError(f"subset '{subset}' not found under {root} (it has: {', '.join(have) or 'no folders'}); pass the folder that contains {subset}/")


def scan_tree(subset_dir: Path) -> list[tuple[Path, str, str]]:
    """(wav, speaker, text) for every ``<spk>/<chapter>/<utt>.wav`` with its ``.normalized.txt``."""
    wavs = sorted(subset_dir.glob("*/*/*.wav"))
    if not wavs:
        raise DataError(f"no <speaker>/<chapter>/<utt>.wav files under {subset_dir}: is this a LibriTTS subset folder?")
    out: list[tuple[Path, str, str]] = []
    missing: list[Path] = []
    for wav in wavs:
        txt = wav.with_suffix(".normalized.txt")
        if not txt.is_file():
            missing.append(txt)
            continue
        text = " ".join(txt.read_text(encoding="utf-8").split())
        if text:
            out.append((wav, wav.parent.parent.name, text))
    if missing:
        raise DataError(
            f"{len(missing)} of {len(wavs)} wavs under {subset_dir} lack a transcript, e.g. {missing[0]}: "
            "LibriTTS needs <utt>.normalized.txt beside each <utt>.wav"
        )
    return out


def build_manifest(
    root: str | Path,
    subset: str,
    out: str | Path | None = None,
    *,
    min_prompt_seconds: float = 3.0,
    seed: int = 0,
    workers: int = 2,
) -> Manifest:
    """Scan a LibriTTS-layout subset and write ``out`` (default ``ROOT/SUBSET.jsonl``) atomically."""
    import soundfile as sf

    subset_dir = resolve_subset_dir(root, subset)
    entries = scan_tree(subset_dir)
    out_path = Path(out) if out else subset_dir.parent / f"{subset}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)

    durations: list[float] = []
    for wav, _, _ in entries:
        try:
            durations.append(float(sf.info(str(wav)).duration))
        except Exception as exc:
            raise DataError(f"cannot read audio header of {wav}: {exc} (re-export or delete the file)") from None

    phonemes: list[str | None] = []
    todo: list[int] = []
    for i, (wav, _, _) in enumerate(entries):
        side = wav.with_suffix(".phonemes.txt")
        if side.is_file():
            phonemes.append(side.read_text(encoding="utf-8").strip())
        else:
            phonemes.append(None)
            todo.append(i)
    if todo:
        done = phonemize([entries[i][2] for i in todo], workers=workers)
        for i, ph in zip(todo, done, strict=True):
            phonemes[i] = ph

    utts = []
    for (wav, spk, text), dur, ph in zip(entries, durations, phonemes, strict=True):
        rel = _relative(wav, out_path.parent)
        phones, starts = read_alignment(wav)
        utts.append(
            Utterance(utt_id=wav.stem, speaker=spk, text=text, phonemes=ph or "", audio=rel, duration=dur, split=subset, phones=phones, phone_starts=starts)
        )
    assign_prompts(utts, min_prompt_seconds=min_prompt_seconds, seed=seed)
    save_manifest(out_path, utts)
    return Manifest(path=out_path, utterances=utts)


def read_alignment(wav: Path) -> tuple[str | None, list[float] | None]:
    """``(phones, phone_starts)`` from the ``<utt>.align.json`` sidecar when present (the built-in corpus)."""
    side = wav.with_suffix(".align.json")
    if not side.is_file():
        return None, None
    try:
        obj = json.loads(side.read_text(encoding="utf-8"))
        phones, starts = obj["phones"], [float(t) for t in obj["starts"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"alignment file {side} is corrupt ({exc}): delete it and rerun `specbench prepare`") from None
    if len(phones) != len(starts):
        raise DataError(f"alignment file {side} has {len(phones)} phones but {len(starts)} start times: delete it and rerun `specbench prepare`")
    return " ".join(phones), starts


def assign_prompts(utts: list[Utterance], *, min_prompt_seconds: float, seed: int) -> None:
    """Give each utterance another utterance of its speaker as prompt (long enough ones preferred)."""
    by_spk: dict[str, list[Utterance]] = defaultdict(list)
    for u in utts:
        by_spk[u.speaker].append(u)
    rng = random.Random(seed)
    for spk in sorted(by_spk):
        group = by_spk[spk]
        for u in group:
            others = [o for o in group if o.utt_id != u.utt_id]
            if not others:
                continue
            long_enough = [o for o in others if o.duration >= min_prompt_seconds]
            choice = rng.choice(long_enough or others)
            u.prompt_audio = choice.audio
            u.prompt_utt_id = choice.utt_id


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(path.resolve())
