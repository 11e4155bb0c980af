"""The SpeechCodec contract: waveform <-> one stream of discrete tokens."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch


@runtime_checkable
class SpeechCodec(Protocol):
    """A speech tokenizer the codec LM is trained on.

    ``encode(wav, sr)`` resamples to ``sample_rate`` itself and returns ``LongTensor[T]`` with values in
    ``[0, vocab_size)`` at ``frame_rate`` tokens per second; ``decode(tokens)`` returns ``(wav, sr)``.
    ``id`` names the codec and its weights, so a checkpoint can refuse tokens from another codec.
    Codecs may also offer ``token_vectors() -> FloatTensor[vocab_size, d]`` (the acoustic vector each
    token stands for); training with ``history_noise`` needs it to find a token's nearest neighbours.
    """

    id: str
    sample_rate: int
    frame_rate: float
    vocab_size: int

    def encode(self, wav: np.ndarray, sr: int) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor) -> tuple[np.ndarray, int]: ...


def mono_at(wav: np.ndarray, sr: int, rate: int, codec: str) -> np.ndarray:
    """The encoder input every neural codec needs: a mono float32 waveform resampled from ``sr`` to ``rate``.

    DataError (one line, names ``codec``) for anything but a 1-D waveform; empty input stays empty (the
    caller returns no tokens).
    """
    from specbench.audio import resample
    from specbench.errors import DataError

    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise DataError(f"{codec} encode expects a mono 1-D waveform, got shape {x.shape}: average the channels first")
    return resample(x, sr, rate)
