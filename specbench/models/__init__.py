"""Codec language models (target and draft), checkpoints and training."""
