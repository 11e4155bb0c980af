"""DAC (``descript-audio-codec``, ``import dac``; OuteTTS 1.0 uses a 24 kHz DAC with 2 codebooks) as a
:class:`~specbench.codec.base.SpeechCodec`.

DAC is a residual VQ: each frame (``hop = prod(encoder_rates)`` samples, 320 at 24 kHz → 75 frames/s)
gets one code from each of ``n`` codebooks of ``K`` codes (the first ``n`` of the model's, ``n`` =
``codec.n_codebooks``, default all). The ONE flat stream this codec exposes interleaves them frame by
frame with one id block per codebook::

    c0[t], c1[t] + K, ..., c_{n-1}[t] + (n-1)K,  then frame t+1

so ``vocab_size = n * K`` and ``frame_rate = n * sample_rate / hop`` tokens/s (150 for OuteTTS' 24 kHz
model with 2 codebooks); :func:`flatten_codes` / :func:`unflatten_tokens` are that mapping. ``decode``
drops a trailing partial frame, and reads a token that lies in another codebook's block modulo ``K``
(as the code it would be in its own block) rather than rejecting it.

Weights come from a LOCAL ``.pth`` file only, in the format ``dac.DAC.save`` writes and ``dac.DAC.load``
reads (the state dict plus ``metadata.kwargs``, the constructor arguments), e.g. OuteTTS 1.0's
``weights_24khz_1.5kbps_v1.0.pth`` (ibm-research/DAC.speech.v1.0) or Descript's ``weights_24khz_8kbps_0.0.4.pth``.
It is loaded with ``DAC.load(path, strict=True)``, which reads it with ``torch.load``'s default
``weights_only=True``; nothing is downloaded.

Installation: descript-audio-codec needs descript-audiotools, whose declared pins (protobuf<3.20) would
downgrade other packages, so ``make setup`` installs both with ``--no-deps``; the ``dac`` extra in
pyproject.toml lists what ``import dac`` really needs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specbench.codec._files import file_sha1, load_error, one_line
from specbench.codec.base import mono_at
from specbench.device import resolve_device
from specbench.errors import ConfigError, DependencyError, ModelError

KIND = "dac"
_WHERE = (
    "point codec.path at a LOCAL DAC weights file written by dac.DAC.save (e.g. weights_24khz_1.5kbps_v1.0.pth "
    "of ibm-research/DAC.speech.v1.0 for OuteTTS 1.0); nothing is downloaded"
)


def flatten_codes(codes: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """DAC codes ``[n, T]`` → the flat stream ``LongTensor[T * n]``: frame by frame, codebook ``i`` offset by ``i * K``."""
    c = torch.as_tensor(codes, dtype=torch.long)
    if c.dim() != 2:
        raise ValueError(f"DAC codes must be [n_codebooks, T], got shape {tuple(c.shape)}")
    offsets = torch.arange(c.shape[0]).view(-1, 1) * codebook_size
    return (c + offsets).T.reshape(-1)


def unflatten_tokens(tokens: torch.Tensor, n_codebooks: int, codebook_size: int) -> torch.Tensor:
    """The inverse of :func:`flatten_codes`: flat ids → codes ``[n, T]``.

    A trailing partial frame (fewer than ``n`` tokens) is dropped; every id is read modulo ``codebook_size``,
    so a token from another codebook's block maps to the code it would be in its own.
    """
    t = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    frames = t.numel() // n_codebooks
    return (t[: frames * n_codebooks].view(frames, n_codebooks) % codebook_size).T.contiguous()


def _import_dac() -> Any:
    """The ``dac.DAC`` class, or a DependencyError that says how to install it."""
    try:
        with warnings.catch_warnings():  # audiotools / dac import-time deprecation noise
            warnings.simplefilter("ignore")
            from dac import DAC
    except Exception as exc:  # ImportError, or an OSError from a torchaudio build that cannot load
        raise DependencyError(
            f"cannot import the 'dac' package ({type(exc).__name__}: {one_line(exc, 160)}): install it with "
            "`pip install --no-deps descript-audio-codec==1.0.0 descript-audiotools==0.7.2` and `pip install -e '.[dac]'` (make setup does both)"
        ) from None
    return DAC


class DacCodec:
    """DAC, first ``n`` codebooks interleaved: ``encode`` → ``LongTensor[T * n]``, ids in ``[0, n * K)``."""

    def __init__(self, model: Any, *, n_codebooks: int, name: str, weights_sha1: str, device: torch.device) -> None:
        """Wrap a loaded ``dac.DAC``; use :meth:`load` to build one from a local file."""
        self.model = model
        self.device = device
        self.n_codebooks = int(n_codebooks)
        self.codebook_size: int = int(model.codebook_size)
        self.sample_rate: int = int(model.sample_rate)
        self.hop_length: int = int(model.hop_length)
        self.frame_rate: float = self.n_codebooks * self.sample_rate / self.hop_length
        self.vocab_size: int = self.n_codebooks * self.codebook_size
        self.id: str = f"{KIND}:{name}:{weights_sha1[:10]}:n{self.n_codebooks}"

    @classmethod
    def load(cls, path: str | Path, *, n_codebooks: int | None = None, device: str = "cpu") -> DacCodec:
        """Build DAC from the LOCAL weights file ``path``; use its first ``n_codebooks`` codebooks (default: all).

        Raises ModelError when the file is missing, unreadable or does not fit DAC, ConfigError when
        ``n_codebooks`` exceeds the model's or the device is unusable, DependencyError when ``dac``
        cannot be imported. Never downloads anything.
        """
        p = Path(path).expanduser()
        if p.is_dir():
            raise ModelError(f"{p} is a directory: codec.path must be the DAC weights FILE (.pth): {_WHERE}")
        if not p.is_file():
            raise ModelError(f"DAC weights not found: {p}: {_WHERE}")
        DAC = _import_dac()
        try:
            with warnings.catch_warnings():  # weight_norm deprecation and torch.package chatter
                warnings.simplefilter("ignore")
                model = DAC.load(str(p), strict=True)
        except Exception as exc:
            raise ModelError(f"cannot load {p} as DAC weights ({load_error(exc)}): {_WHERE}") from None
        total = int(model.n_codebooks)
        n = total if n_codebooks is None else int(n_codebooks)
        if not 1 <= n <= total:
            raise ConfigError(f"codec.n_codebooks is {n_codebooks} but {p.name} has {total} codebooks: set it to 1..{total} (or leave it unset for all)")
        dev = resolve_device(device)
        model.to(dev).eval()
        return cls(model, n_codebooks=n, name=p.stem, weights_sha1=file_sha1(p), device=dev)

    def encode(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        """Mono waveform at ``sr`` → ``LongTensor[T * n]`` on CPU, ``T = ceil(samples / hop)`` frames.

        The input is resampled to the model's rate and right-padded to whole frames (``DAC.preprocess``).
        Empty input gives an empty tensor. Deterministic.
        """
        x = mono_at(wav, sr, self.sample_rate, "DAC")
        if x.size == 0:
            return torch.zeros(0, dtype=torch.long)
        with torch.inference_mode():
            audio = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).view(1, 1, -1)
            _, codes, *_ = self.model.encode(self.model.preprocess(audio, self.sample_rate), n_quantizers=self.n_codebooks)  # [1, n, T]
        return flatten_codes(codes[0, : self.n_codebooks].cpu(), self.codebook_size)

    def decode(self, tokens: torch.Tensor) -> tuple[np.ndarray, int]:
        """Flat tokens ``[T * n (+ r)]`` → ``(float32 waveform of about T * hop samples, sample_rate)``
        (DAC's decoder convolutions trim a few samples: 47,992 for 150 frames of the tiny 24 kHz model).

        A trailing partial frame is dropped and ids are read modulo ``K`` (module docstring); ModelError
        for ids outside ``[0, vocab_size)``.
        """
        tokens = torch.as_tensor(tokens, dtype=torch.long).cpu().reshape(-1)
        if tokens.numel() and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            raise ModelError(f"token ids must lie in [0, {self.vocab_size}) for codec {self.id}")
        codes = unflatten_tokens(tokens, self.n_codebooks, self.codebook_size)
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32), self.sample_rate
        with torch.inference_mode():
            z, *_ = self.model.quantizer.from_codes(codes.to(self.device).unsqueeze(0))
            out = self.model.decode(z)  # [1, 1, ~T * hop]
        return out.reshape(-1).float().cpu().numpy().astype(np.float32, copy=False), self.sample_rate
