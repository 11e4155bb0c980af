"""Audio I/O with soundfile (no torchaudio), mono float32, and resampling with soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from specbench.atomic import atomic_path
from specbench.errors import DataError


def read_audio(path: str | Path, target_sr: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as mono float32 in [-1, 1]; resample to ``target_sr`` when given.

    Multi-channel audio is averaged to mono. Raises DataError for missing, empty or corrupt files.
    """
    import soundfile as sf

    p = Path(path)
    if not p.is_file():
        raise DataError(f"audio file not found: {p} (check the manifest or corpus path)")
    try:
        wav, sr = sf.read(str(p), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError subclasses
        raise DataError(f"cannot decode audio file {p}: {exc} (re-export it as WAV/FLAC)") from None
    if wav.shape[0] == 0:
        raise DataError(f"audio file is empty: {p}")
    mono = wav.mean(axis=1).astype(np.float32, copy=False)
    if target_sr is not None and sr != target_sr:
        mono = resample(mono, sr, target_sr)
        sr = target_sr
    return mono, sr


def resample(wav: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited resampling (soxr 'HQ'); identity when the rates match."""
    if sr_in == sr_out:
        return wav.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(wav.astype(np.float32, copy=False), sr_in, sr_out, quality="HQ").astype(np.float32)


def write_audio(path: str | Path, wav: np.ndarray, sr: int) -> None:
    """Write 16-bit PCM WAV atomically (temp file + rename), so a crash never leaves a half file."""
    import soundfile as sf

    with atomic_path(path, suffix=".tmp.wav") as tmp:
        sf.write(tmp, np.clip(np.asarray(wav, dtype=np.float32), -1.0, 1.0), sr, subtype="PCM_16", format="WAV")


def crop_seconds(wav: np.ndarray, sr: int, seconds: float | None) -> np.ndarray:
    """First ``seconds`` of ``wav`` (all of it when shorter or when ``seconds`` is None)."""
    if seconds is None:
        return wav
    return wav[: int(round(seconds * sr))]
