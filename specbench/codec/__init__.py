"""Speech codecs behind one contract (:class:`~specbench.codec.base.SpeechCodec`).

Kinds: ``kmeans-mel`` (built-in), ``encodec`` (VALL-E style, first codebook), and the codecs of the
Hugging Face TTS families: ``xcodec2`` (Llasa), ``snac`` (Orpheus), ``dac`` (OuteTTS 1.0). Every kind
loads LOCAL files only; :mod:`specbench.codec.tiny` writes tiny random ones in the real layouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from specbench.assets import resolve_path
from specbench.codec.base import SpeechCodec

if TYPE_CHECKING:
    from specbench.config import CodecConfig

CODEC_KINDS = ("kmeans-mel", "encodec", "xcodec2", "snac", "dac")


def load_codec(
    kind: str,
    path: str,
    *,
    bandwidth: float = 1.5,
    semantic_path: str | None = None,
    n_codebooks: int | None = None,
    synthesis_kernel: tuple[float, ...] | None = None,
    device: str = "cpu",
) -> SpeechCodec:
    """Build the codec named by ``kind`` from a LOCAL file or directory (``builtin:NAME`` for shipped ones).

    ``bandwidth`` is for ``encodec``, ``semantic_path`` (the local facebook/w2v-bert-2.0 folder; default:
    a ``w2v-bert-2.0`` folder inside or next to ``path``) for ``xcodec2``, ``n_codebooks`` (default: all of
    the model's) for ``dac``, ``synthesis_kernel`` (default: the codec's own) for ``kmeans-mel``; the other
    kinds ignore them. See :class:`specbench.config.CodecConfig`.
    """
    if kind == "kmeans-mel":
        from specbench.codec.kmeans_mel import DEFAULT_KERNEL, KMeansMelCodec

        return KMeansMelCodec.load(resolve_path(path), tuple(synthesis_kernel) if synthesis_kernel is not None else DEFAULT_KERNEL)
    if kind == "encodec":
        from specbench.codec.encodec_codec import EncodecCodec

        return EncodecCodec.load(resolve_path(path), bandwidth=bandwidth, device=device)
    if kind == "xcodec2":
        from specbench.codec.xcodec2_codec import XCodec2Codec

        return XCodec2Codec.load(resolve_path(path), semantic_path=semantic_path, device=device)
    if kind == "snac":
        from specbench.codec.snac_codec import SnacCodec

        return SnacCodec.load(resolve_path(path), device=device)
    if kind == "dac":
        from specbench.codec.dac_codec import DacCodec

        return DacCodec.load(resolve_path(path), n_codebooks=n_codebooks, device=device)
    from specbench.errors import ConfigError

    raise ConfigError(f"unknown codec kind '{kind}': choose one of {', '.join(CODEC_KINDS)}")


def codec_from_config(cfg: CodecConfig, device: str = "cpu") -> SpeechCodec:
    """:func:`load_codec` with every option of a recipe's ``codec:`` section."""
    return load_codec(
        cfg.kind,
        cfg.path,
        bandwidth=cfg.bandwidth,
        semantic_path=cfg.semantic_path,
        n_codebooks=cfg.n_codebooks,
        synthesis_kernel=tuple(cfg.synthesis_kernel) if cfg.synthesis_kernel is not None else None,
        device=device,
    )
