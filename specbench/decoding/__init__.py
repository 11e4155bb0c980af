"""Decoding: the shared logit transform, the one generation loop and its statistics."""
