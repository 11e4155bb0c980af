"""``specbench train codec``: fit the built-in k-means codec on a manifest's audio."""

from __future__ import annotations

import random
import time
from pathlib import Path

from rich.progress import Progress

from specbench.audio import read_audio
from specbench.codec.kmeans_mel import KMeansMelCodec, MelConfig
from specbench.config import TrainCodecConfig
from specbench.data.manifest import load_manifest
from specbench.errors import RunStateError


def fit_codec(cfg: TrainCodecConfig, *, overwrite: bool = False) -> tuple[KMeansMelCodec, float]:
    """Fit on a seeded subset of ``max_utterances`` utterances; returns (codec, seconds)."""
    out = Path(cfg.out)
    if out.exists() and not overwrite:
        raise RunStateError(f"{out} exists: pass --overwrite to replace it or choose another --set out=PATH")
    manifest = load_manifest(cfg.manifest)
    utts = list(manifest.utterances)
    random.Random(cfg.seed).shuffle(utts)
    utts = sorted(utts[: cfg.max_utterances], key=lambda u: u.utt_id)
    t0 = time.perf_counter()
    wavs = []
    sr = 16000
    with Progress(transient=True) as progress:
        task = progress.add_task("reading audio", total=len(utts))
        for u in utts:
            wav, sr = read_audio(u.audio_path(manifest.root), target_sr=16000)
            wavs.append(wav)
            progress.advance(task)
    mel = MelConfig(frames_per_token=cfg.frames_per_token)
    codec = KMeansMelCodec.fit(wavs, sr, cfg.codebook_size, max_frames=cfg.max_frames, iters=cfg.iters, seed=cfg.seed, cfg=mel)
    codec.save(out)
    return codec, time.perf_counter() - t0
