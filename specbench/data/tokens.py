"""Codec tokens of a whole manifest, computed once and cached beside it (``<manifest>.<codec id>.npz``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.progress import Progress

from specbench.atomic import atomic_path
from specbench.audio import read_audio
from specbench.codec.base import SpeechCodec
from specbench.data.manifest import Manifest


def token_cache_path(manifest: Manifest, codec: SpeechCodec) -> Path:
    """Where the tokens of ``manifest`` under ``codec`` are cached."""
    return manifest.path.with_name(f"{manifest.path.stem}.{codec.id}.npz")


def tokenize_manifest(manifest: Manifest, codec: SpeechCodec) -> dict[str, np.ndarray]:
    """``utt_id -> int16/int32 token array`` for every utterance; cached and reused when complete."""
    path = token_cache_path(manifest, codec)
    wanted = [u.utt_id for u in manifest.utterances]
    if path.is_file():
        with np.load(path) as z:
            ids, offsets, codes = list(z["utt_ids"]), z["offsets"], z["codes"]
        if set(wanted) <= set(ids):
            return {u: codes[offsets[i] : offsets[i + 1]] for i, u in enumerate(ids)}
    out: dict[str, np.ndarray] = {}
    dtype = np.int16 if codec.vocab_size <= 32767 else np.int32
    with Progress(transient=True) as progress:
        task = progress.add_task(f"tokenising {manifest.path.name}", total=len(manifest))
        for u in manifest.utterances:
            wav, sr = read_audio(u.audio_path(manifest.root))
            out[u.utt_id] = codec.encode(wav, sr).numpy().astype(dtype)
            progress.advance(task)
    ids = list(out)
    lengths = np.array([len(out[i]) for i in ids])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, utt_ids=np.array(ids), offsets=offsets, codes=np.concatenate([out[i] for i in ids]))
    return out
