"""The built-in offline corpus: English sentences spoken by espeak-ng voices, in LibriTTS layout.

Speakers are espeak-ng voice variants × pitch, all at one speaking rate. Training uses six variants at
three pitches; the four test speakers are held out: seen variants at pitches never heard in training
(42 and 58, between the training pitches). A wider grid (16 variants × two pitch/rate settings) trained
for 100 min on 2 cores gave a model that babbled (greedy WER ~0.9 even on training speakers, teacher-forced
loss 1.99 on unseen-variant speakers vs 1.36 on seen ones): six timbres are what a 6 M-parameter model
learns to read aloud within an hour or two of CPU time. The variants are the ones whose speech survives the
1024-entry codec best. Sentences come from
Debian's fortunes (see :mod:`specbench.data.fortunes`) and are split so that train, dev and test never
share a sentence. Everything is deterministic under ``seed``; files that exist are not synthesised again,
so an interrupted prepare resumes. Audio comes from libespeak-ng itself, which also reports where every
phone starts: each utterance gets an ``.align.json`` sidecar with its phones and their start times.
"""

from __future__ import annotations

import functools
import json
import os
import random
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from specbench.audio import resample, write_audio
from specbench.data.espeak_lib import espeak_library
from specbench.data.fortunes import DEFAULT_FORTUNE_DIR, load_sentences
from specbench.data.libritts import build_manifest
from specbench.data.manifest import Manifest
from specbench.errors import DataError, DependencyError

SAMPLE_RATE = 16000
VARIANTS = ("m7", "m5", "m4", "f2", "klatt", "klatt2")
TRAIN_PITCHES = (35, 50, 65)
RATE = 140  # words per minute; slower espeak is easier for the ASR
TEST_SPEAKER_GRID = (("m7", 58), ("f2", 42), ("klatt", 58), ("m5", 42))  # (variant, unseen pitch)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an espeak-ng voice variant at a fixed pitch and rate."""

    speaker_id: str
    variant: str
    pitch: int
    rate: int

    @property
    def voice(self) -> str:
        return f"en-us+{self.variant}"


def _speaker(variant: str, pitch: int) -> Speaker:
    return Speaker(f"{variant}p{pitch}", variant, pitch, RATE)


def split_speakers() -> tuple[list[Speaker], list[Speaker]]:
    """(train speakers, held-out test speakers), in a fixed order."""
    train = [_speaker(v, p) for v in VARIANTS for p in TRAIN_PITCHES]
    return train, [_speaker(v, p) for v, p in TEST_SPEAKER_GRID]


@dataclass(frozen=True)
class Item:
    utt_id: str
    speaker: Speaker
    text: str


def plan_items(sentences: list[str], n_train: int, n_dev: int, n_test_per_speaker: int, seed: int) -> dict[str, list[Item]]:
    """Assign disjoint sentence sets to splits and a speaker to each sentence (seeded)."""
    train_spk, test_spk = split_speakers()
    n_test = n_test_per_speaker * len(test_spk)
    need = n_train + n_dev + n_test
    if len(sentences) < need:
        raise DataError(f"only {len(sentences)} usable sentences for {need} requested: lower --n-train")
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    rng = random.Random(seed + 1)
    test_idx, dev_idx, train_idx = order[:n_test], order[n_test : n_test + n_dev], order[n_test + n_dev : need]

    def make(split: str, idx: list[int], speakers: list[Speaker], round_robin: bool) -> list[Item]:
        items = []
        for j, si in enumerate(idx):
            spk = speakers[j % len(speakers)] if round_robin else rng.choice(speakers)
            items.append(Item(f"{spk.speaker_id}_{split}_{j:06d}_000000", spk, sentences[si]))
        return items

    return {
        "train": make("train", train_idx, train_spk, round_robin=False),
        "dev": make("dev", dev_idx, train_spk, round_robin=True),
        "test": make("test", test_idx, test_spk, round_robin=True),
    }


def synthesize(item: Item, wav_path: Path) -> tuple[str, list[str], list[float]]:
    """Speak ``item`` with libespeak-ng, write 16 kHz mono PCM to ``wav_path``.

    Returns ``(phonemes, phones, starts)``: the ``-x`` phoneme string, the phone tokens spoken and the
    second at which each starts (the synthesiser's own timing; :mod:`specbench.data.espeak_lib`).
    """
    lib = espeak_library()
    spoken = lib.speak(item.text, item.speaker.voice, rate=item.speaker.rate, pitch=item.speaker.pitch)
    write_audio(wav_path, resample(spoken.wav, spoken.sample_rate, SAMPLE_RATE), SAMPLE_RATE)
    return lib.x_phonemes(item.text), spoken.phones, [round(t, 5) for t in spoken.starts]


def _write_item(split_dir: Path, item: Item) -> None:
    """Synthesise one item into its LibriTTS-layout folder (skipped when complete).

    libespeak-ng carries state from one synthesis to the next (measured: the same sentence and voice
    came out 114,596 or 115,049 samples long, phone starts shifted by up to 20 ms, depending on what the
    process had spoken before), so a corpus built by a pool of workers depended on how items were
    scheduled. Each item is therefore spoken in a child forked from a worker whose library is initialised
    but has never spoken: every item starts from the same state and the audio depends only on the item.
    """
    chapter = item.utt_id.split("_")[1]
    folder = split_dir / item.speaker.speaker_id / chapter
    wav = folder / f"{item.utt_id}.wav"
    if wav.is_file() and (folder / f"{item.utt_id}.phonemes.txt").is_file() and (folder / f"{item.utt_id}.align.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    if not hasattr(os, "fork"):  # no fork (Windows): in process, order-dependent timings
        _speak_item(folder, item)
        return
    espeak_library()  # initialised once per worker, before the first fork; it never speaks itself
    pid = os.fork()
    if pid == 0:  # the child: speak, write, leave without running the parent's cleanup
        code = 0
        try:
            _speak_item(folder, item)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent through the exit code
            print(f"espeak-ng failed on {item.utt_id}: {exc}", file=sys.stderr)
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise DependencyError(f"espeak-ng could not synthesise {item.utt_id} ({item.speaker.voice}): check the espeak-ng install and rerun prepare")


def _speak_item(folder: Path, item: Item) -> None:
    wav = folder / f"{item.utt_id}.wav"
    phonemes, phones, starts = synthesize(item, wav)
    (folder / f"{item.utt_id}.normalized.txt").write_text(item.text + "\n", encoding="utf-8")
    (folder / f"{item.utt_id}.original.txt").write_text(item.text + "\n", encoding="utf-8")
    (folder / f"{item.utt_id}.align.json").write_text(json.dumps({"phones": phones, "starts": starts}) + "\n", encoding="utf-8")
    (folder / f"{item.utt_id}.phonemes.txt").write_text(phonemes + "\n", encoding="utf-8")  # written last: marks the item complete


def prepare_synthetic(
    out_dir: str | Path,
    *,
    splits: tuple[str, ...] = ("train", "dev", "test"),
    n_train: int = 9500,
    n_dev: int = 160,
    n_test_per_speaker: int = 60,
    seed: int = 0,
    workers: int = 2,
    fortune_dir: Path = DEFAULT_FORTUNE_DIR,
) -> dict[str, Manifest]:
    """Synthesise the requested splits under ``out_dir/<split>/`` and write ``out_dir/<split>.jsonl``."""
    espeak_library()  # a missing library fails here, before any work
    out = Path(out_dir)
    plan = plan_items(load_sentences(fortune_dir), n_train, n_dev, n_test_per_speaker, seed)
    unknown = [s for s in splits if s not in plan]
    if unknown:
        raise DataError(f"unknown split(s) {unknown}: choose from train, dev, test")
    manifests: dict[str, Manifest] = {}
    for split in splits:
        items = plan[split]
        split_dir = out / split
        # processes, not threads: libespeak-ng keeps global state (one library per worker process)
        with Progress(transient=True) as progress, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
            task = progress.add_task(f"synthesising {split}", total=len(items))
            for _ in pool.map(functools.partial(_write_item, split_dir), items, chunksize=16):
                progress.advance(task)
        manifests[split] = build_manifest(out, split, out / f"{split}.jsonl", seed=seed, workers=workers)
    return manifests
