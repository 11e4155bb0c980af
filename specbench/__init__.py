"""specbench: speculative decoding for codec-language-model TTS, benchmarked on equal terms."""

__version__ = "0.1.0"
