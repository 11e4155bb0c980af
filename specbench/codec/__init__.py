"""Speech codecs behind one contract (:class:`~specbench.codec.base.SpeechCodec`)."""

from __future__ import annotations

from specbench.assets import resolve_path
from specbench.codec.base import SpeechCodec

CODEC_KINDS = ("kmeans-mel", "encodec")


def load_codec(kind: str, path: str, *, bandwidth: float = 1.5, device: str = "cpu") -> SpeechCodec:
    """Build the codec named by ``kind`` from a LOCAL file (``builtin:NAME`` for shipped ones)."""
    if kind == "kmeans-mel":
        from specbench.codec.kmeans_mel import KMeansMelCodec

        return KMeansMelCodec.load(resolve_path(path))
    if kind == "encodec":
        from specbench.codec.encodec_codec import EncodecCodec

        return EncodecCodec.load(resolve_path(path), bandwidth=bandwidth, device=device)
    from specbench.errors import ConfigError

    raise ConfigError(f"unknown codec kind '{kind}': choose one of {', '.join(CODEC_KINDS)}")
