"""Speaker embeddings for SIM (SIM-o): cosine of generated audio vs the speaker prompt.

The only speaker model that ships inside a PyPI wheel is resemblyzer 0.1.4's GE2E d-vector
(3-layer LSTM, 256-d, 16 kHz), wrapped by :class:`EmbeddedGe2e`. Absolute cosines depend on the model;
compare SIM only between rows with the same ``speaker_model`` id.
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from specbench.audio import resample
from specbench.config import SpeakerConfig
from specbench.errors import DependencyError, ModelError

GE2E_SR = 16_000
#: Shorter clips are zero-padded to this length so VAD and the mel front end always get whole frames.
MIN_SECONDS = 0.3
_INSTALL_HINT = (
    "resemblyzer must be installed without its broken pins: `pip install --no-deps resemblyzer==0.1.4` "
    "plus `pip install webrtcvad-wheels librosa` (`make setup` does this)"
)


@runtime_checkable
class SpeakerBackend(Protocol):
    """Speaker-embedding model.

    ``embed(wav, sr)`` resamples a mono float waveform to the model's own rate and returns a 1-D
    float32 embedding with unit L2 norm; ``id`` names the model and its weights.
    """

    id: str

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray: ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b) = a·b / (‖a‖ ‖b‖) in float64; 0.0 when either vector is all zeros."""
    a64 = np.asarray(a, dtype=np.float64).reshape(-1)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1)
    if a64.shape != b64.shape:
        raise ValueError(f"cosine needs vectors of one size, got {a64.size} and {b64.size}")
    denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    return float(a64 @ b64) / denom if denom > 0 else 0.0


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the caller's setting.

    Measured on the 2-core box: one GE2E LSTM call took 0.3–7 s with 2 threads and 13–90 ms with 1
    (thread contention with other jobs), so resemblyzer always runs single-threaded.
    """
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


class EmbeddedGe2e:
    """resemblyzer 0.1.4 GE2E d-vector (bundled ``pretrained.pt``, or ``cfg.model``: a weights file in
    resemblyzer's format). Loads lazily on the first :meth:`embed`."""

    def __init__(self, cfg: SpeakerConfig) -> None:
        self.cfg = cfg
        try:
            with warnings.catch_warnings():
                # resemblyzer imports the deprecated scipy.ndimage.morphology namespace.
                warnings.simplefilter("ignore", DeprecationWarning)
                import resemblyzer  # noqa: F401
            version = importlib.metadata.version("resemblyzer")
        except (ImportError, importlib.metadata.PackageNotFoundError) as exc:
            raise DependencyError(f"speaker similarity cannot import resemblyzer ({exc}): {_INSTALL_HINT}") from None
        self._weights: Path | None = None
        suffix = ""
        if cfg.model:
            self._weights = Path(cfg.model).expanduser()
            if not self._weights.is_file():
                raise ModelError(
                    f"speaker model {self._weights} not found: scoring.speaker.model must be a resemblyzer "
                    "VoiceEncoder .pt file (omit it to use the bundled GE2E weights)"
                )
            suffix = f":{self._weights.name}"
        self.id = f"resemblyzer-ge2e@{version}{suffix}"
        self._encoder: Any = None

    def _load(self) -> Any:
        if self._encoder is None:
            from resemblyzer import VoiceEncoder

            from specbench.device import resolve_device

            with _torch_threads(1):
                self._encoder = VoiceEncoder(resolve_device(self.cfg.device), verbose=False, weights_fpath=self._weights)
        return self._encoder

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Unit-norm 256-d GE2E embedding of ``wav``.

        Pipeline: resample to 16 kHz → resemblyzer ``preprocess_wav`` (volume normalisation + VAD
        trimming of long silences) → ``embed_utterance`` (mean of 1.6 s partials, L2-normalised).
        Degenerate generations never crash: silent audio skips ``preprocess_wav`` (its dBFS maths
        divides by zero), audio the VAD trims to nothing is embedded untrimmed, and clips (before or
        after trimming) shorter than :data:`MIN_SECONDS` are zero-padded.
        """
        from resemblyzer import preprocess_wav

        encoder = self._load()
        # NaN/inf from a broken generation would smear across neighbours in the resampler; zero them first.
        audio = resample(np.nan_to_num(np.asarray(wav, dtype=np.float32).reshape(-1), posinf=0.0, neginf=0.0), sr, GE2E_SR)
        min_len = int(MIN_SECONDS * GE2E_SR)
        if audio.size < min_len:
            audio = np.pad(audio, (0, min_len - audio.size))
        with _torch_threads(1):
            prepared = np.zeros(0, dtype=np.float32)
            if np.any(audio):
                with np.errstate(all="ignore"):
                    prepared = preprocess_wav(audio, source_sr=GE2E_SR)
            if prepared.size == 0 or not np.all(np.isfinite(prepared)):
                prepared = audio
            elif prepared.size < min_len:
                prepared = np.pad(prepared, (0, min_len - prepared.size))
            emb = np.asarray(encoder.embed_utterance(prepared.astype(np.float32, copy=False)), dtype=np.float64)
        norm = float(np.linalg.norm(emb))
        if not np.isfinite(norm) or norm == 0.0:
            raise ModelError(f"speaker model {self.id} returned a degenerate embedding (norm {norm}); check its weights")
        return (emb / norm).astype(np.float32)
