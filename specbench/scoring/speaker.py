"""Speaker embeddings for SIM (SIM-o): cosine of generated audio vs the speaker prompt.

* :class:`EmbeddedGe2e` (``embedded``) — resemblyzer 0.1.4's GE2E d-vector (3-layer LSTM, 256-d,
  16 kHz), the only speaker model that ships inside a PyPI wheel.
* :class:`EcapaSpeechbrain` (``ecapa``) — a local SpeechBrain ECAPA-TDNN directory (e.g. a copy of
  spkrec-ecapa-voxceleb, 192-d).
* :class:`WavLmXvector` (``wavlm``) — a local Hugging Face ``WavLMForXVector`` directory (e.g. a copy
  of microsoft/wavlm-base-plus-sv, 512-d).

Every backend resamples to its model's own rate, returns unit-norm float32 vectors and never reaches
for the network. Absolute cosines depend on the model; compare SIM only between rows with the same
``speaker_model`` id.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from specbench.audio import resample
from specbench.config import SpeakerConfig
from specbench.errors import ConfigError, DependencyError, ModelError
from specbench.scoring._common import HF_WEIGHTS, force_offline, hf_dir_missing, one_line, require, torch_threads, version

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


# Measured on the 2-core box: one GE2E LSTM call took 0.3–7 s with 2 threads and 13–90 ms with 1
# (thread contention with other jobs), hence SpeakerConfig.threads defaults to 1.
_torch_threads = torch_threads


def _unit(emb: np.ndarray, model_id: str) -> np.ndarray:
    """``emb`` flattened and L2-normalised to float32; ModelError for a zero or non-finite vector."""
    e64 = np.asarray(emb, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(e64))
    if not np.isfinite(norm) or norm == 0.0:
        raise ModelError(f"speaker model {model_id} returned a degenerate embedding (norm {norm}); check its weights")
    return (e64 / norm).astype(np.float32)


def _clean(wav: np.ndarray, sr: int, target_sr: int, min_seconds: float) -> np.ndarray:
    """Mono float32 at ``target_sr``, NaN/inf zeroed first (they would smear across neighbours in the
    resampler), zero-padded at the end to ``min_seconds`` so the model's front end gets whole frames."""
    audio = resample(np.nan_to_num(np.asarray(wav, dtype=np.float32).reshape(-1), posinf=0.0, neginf=0.0), sr, target_sr)
    min_len = int(min_seconds * target_sr)
    return np.pad(audio, (0, min_len - audio.size)) if audio.size < min_len else audio


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

            with _torch_threads(self.cfg.threads):
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
        audio = _clean(wav, sr, GE2E_SR, MIN_SECONDS)
        min_len = int(MIN_SECONDS * GE2E_SR)
        with _torch_threads(self.cfg.threads):
            prepared = np.zeros(0, dtype=np.float32)
            if np.any(audio):
                with np.errstate(all="ignore"):
                    prepared = preprocess_wav(audio, source_sr=GE2E_SR)
            if prepared.size == 0 or not np.all(np.isfinite(prepared)):
                prepared = audio
            elif prepared.size < min_len:
                prepared = np.pad(prepared, (0, min_len - prepared.size))
            emb = encoder.embed_utterance(prepared.astype(np.float32, copy=False))
        return _unit(emb, self.id)


#: x-vector style models (ECAPA's attentive pooling, WavLM's TDNN) need about 15 frames of context;
#: WavLM's 20 ms frames make that 0.3 s plus its 25 ms receptive field, so clips are padded to 0.5 s.
XVECTOR_MIN_SECONDS = 0.5

#: Files the ECAPA backend checks before handing the directory to SpeechBrain.
REQUIRED_ECAPA_FILES = ("hyperparams.yaml", "embedding_model.ckpt")


class EcapaSpeechbrain:
    """SpeechBrain ECAPA-TDNN from a local directory (``scoring.speaker.model``).

    The directory is a SpeechBrain pretrained-model folder such as a copy of spkrec-ecapa-voxceleb:
    hyperparams.yaml (with ``compute_features``, ``mean_var_norm``, ``embedding_model`` and a
    ``pretrainer``) plus the checkpoints its pretrainer names (embedding_model.ckpt, and for the stock
    file also mean_var_norm_emb.ckpt, classifier.ckpt, label_encoder.txt). It is loaded with
    ``EncoderClassifier.from_hparams(source=DIR, savedir=DIR)``, the yaml's ``pretrained_path`` (a hub
    id in the stock file) overridden to DIR, network fetching disabled and no links written, so the hub
    is never contacted and the directory is never modified. ``embed`` returns the unit-norm
    ``encode_batch`` vector (no embedding mean/var normalisation, as SpeechBrain's own verification).
    """

    def __init__(self, cfg: SpeakerConfig) -> None:
        self.cfg = cfg
        if not cfg.model:
            raise ConfigError("scoring.speaker.model: backend ecapa needs the path of a local SpeechBrain ECAPA directory")
        path = Path(cfg.model).expanduser()
        missing = [f for f in REQUIRED_ECAPA_FILES if not (path / f).is_file()] if path.is_dir() else []
        if not path.is_dir() or missing:
            what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
            raise ModelError(
                f"speaker model directory {path} {what}: it must be a SpeechBrain ECAPA model folder with hyperparams.yaml, "
                "embedding_model.ckpt and the other files its pretrainer lists (e.g. a local copy of spkrec-ecapa-voxceleb)"
            )
        from specbench.device import resolve_device

        self._device = resolve_device(cfg.device)
        self._path = path.resolve()
        force_offline()
        require("speechbrain", "speechbrain", "speechbrain", "the ecapa speaker backend")
        self.id = f"speechbrain-ecapa:{self._path.name}@speechbrain-{version('speechbrain')}"
        self._model: Any = None
        self._sr = 16_000

    def _load(self) -> Any:
        if self._model is None:
            force_offline()
            from speechbrain.inference.classifiers import EncoderClassifier
            from speechbrain.utils.fetching import FetchConfig, LocalStrategy

            src = str(self._path)
            hparams = (self._path / "hyperparams.yaml").read_text(encoding="utf-8")
            # Overriding a key the yaml lacks is an error in HyperPyYAML, so only override when present.
            overrides = {"pretrained_path": src} if re.search(r"^pretrained_path\s*:", hparams, re.MULTILINE) else {}
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = EncoderClassifier.from_hparams(
                        source=src,
                        savedir=src,
                        overrides=overrides,
                        local_strategy=LocalStrategy.NO_LINK,  # never symlink/copy into the user's folder
                        fetch_config=FetchConfig(allow_network=False),
                        run_opts={"device": str(self._device)},
                    )
            except Exception as exc:  # SpeechBrain surfaces yaml, hub and torch errors of many types
                raise ModelError(f"cannot load the SpeechBrain ECAPA model in {src}: {one_line(exc)}") from None
            self._sr = int(getattr(getattr(model, "audio_normalizer", None), "sample_rate", 16_000))
            self._model = model
        return self._model

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Unit-norm ECAPA embedding of ``wav``, resampled to the model's rate (16 kHz for the stock
        model); NaN/inf are zeroed and clips shorter than :data:`XVECTOR_MIN_SECONDS` zero-padded."""
        import torch

        model = self._load()
        audio = _clean(wav, sr, self._sr, XVECTOR_MIN_SECONDS)
        with torch_threads(self.cfg.threads), torch.inference_mode():
            emb = model.encode_batch(torch.from_numpy(audio)[None].to(self._device), normalize=False)
        return _unit(emb.float().cpu().numpy(), self.id)


#: Files (alternatives grouped) a Hugging Face WavLMForXVector directory needs.
REQUIRED_WAVLM_FILES: list[tuple[str, ...]] = [("config.json",), HF_WEIGHTS, ("preprocessor_config.json",)]


class WavLmXvector:
    """Hugging Face ``WavLMForXVector`` from a local directory (``scoring.speaker.model``).

    The directory is what ``save_pretrained`` writes for the model and its feature extractor (a local
    copy of e.g. microsoft/wavlm-base-plus-sv): config.json, the weights and preprocessor_config.json.
    Both load with ``local_files_only=True`` under HF offline mode. ``embed`` runs the feature
    extractor (zero-mean/unit-variance when its config says so) at its ``sampling_rate`` and returns
    the unit-norm x-vector.
    """

    def __init__(self, cfg: SpeakerConfig) -> None:
        self.cfg = cfg
        if not cfg.model:
            raise ConfigError("scoring.speaker.model: backend wavlm needs the path of a local WavLMForXVector directory")
        path = Path(cfg.model).expanduser()
        missing = hf_dir_missing(path, REQUIRED_WAVLM_FILES) if path.is_dir() else []
        if not path.is_dir() or missing:
            what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
            raise ModelError(
                f"speaker model directory {path} {what}: it must hold a WavLMForXVector model and its feature extractor as "
                "save_pretrained writes them (config.json, model.safetensors, preprocessor_config.json), e.g. a local copy "
                "of microsoft/wavlm-base-plus-sv"
            )
        from specbench.device import resolve_device

        self._device = resolve_device(cfg.device)
        self._path = path.resolve()
        force_offline()
        require("transformers", "transformers", "hf", "the wavlm speaker backend")
        self.id = f"wavlm-xvector:{self._path.name}@transformers-{version('transformers')}"
        self._model: Any = None
        self._fe: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            force_offline()
            from transformers import AutoFeatureExtractor, WavLMForXVector

            try:
                fe = AutoFeatureExtractor.from_pretrained(str(self._path), local_files_only=True)
                model = WavLMForXVector.from_pretrained(str(self._path), local_files_only=True)
            except Exception as exc:  # corrupt or foreign files raise OSError, ValueError, SafetensorError, ...
                raise ModelError(f"cannot load the WavLM x-vector model in {self._path}: {one_line(exc)}") from None
            self._fe, self._model = fe, model.to(self._device).eval()
        return self._model, self._fe

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray:
        """Unit-norm x-vector of ``wav`` at the feature extractor's rate (16 kHz for the stock model);
        NaN/inf are zeroed and clips shorter than :data:`XVECTOR_MIN_SECONDS` zero-padded."""
        import torch

        model, fe = self._load()
        rate = int(fe.sampling_rate)
        audio = _clean(wav, sr, rate, XVECTOR_MIN_SECONDS)
        inputs = fe(audio, sampling_rate=rate, return_tensors="pt")
        with torch_threads(self.cfg.threads), torch.inference_mode():
            emb = model(**{k: v.to(self._device) for k, v in inputs.items()}).embeddings
        return _unit(emb.float().cpu().numpy(), self.id)
