"""SNAC 24 kHz (``snac`` PyPI package; the codec of Orpheus) as a :class:`~specbench.codec.base.SpeechCodec`.

SNAC quantises audio at three temporal resolutions (vq_strides 4, 2, 1: level 0 at 24000 / 2048 ≈
11.7 frames/s, level 1 twice and level 2 four times as often), each with its own codebook of ``K``
(4096) codes. Orpheus writes one coarse frame ``i`` as 7 tokens, in this order::

    l0[i], l1[2i], l2[4i], l2[4i+1], l1[2i+1], l2[4i+2], l2[4i+3]

and gives position ``j`` (0..6) of a frame its own block of ids: flat id = code + j * K. So the ONE flat
stream this codec exposes has ``vocab_size = 7 * K`` (28,672 for the real model) and
``frame_rate = 7 * 24000 / 2048 ≈ 82.03`` tokens/s; :func:`flatten_codes` / :func:`unflatten_tokens`
are that mapping. ``encode`` returns whole frames (a length that is a multiple of 7: SNAC pads the
input to a multiple of 2048 samples). ``decode`` drops a trailing partial frame, and a token that lies
in another position's block (a model can emit one) is read modulo ``K``, i.e. as the code it would be
in its own block, rather than rejected.

SNAC's decoder adds noise (its ``NoiseBlock``, as in training); ``decode`` draws it from a fixed seed
(without touching the global RNG), so the same tokens always give the same waveform.

Weights come from a LOCAL directory only, in the Hub layout of ``hubertsiuzdak/snac_24khz``:
``config.json`` (SNAC's constructor arguments) and ``pytorch_model.bin`` (its state dict). The model is
built with ``SNAC(**config)`` and ``load_state_dict`` (never ``SNAC.from_pretrained``, which would use
the Hub for a path that is not a directory).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specbench.codec._files import check_keys, file_sha1, one_line, read_json, read_state_dict
from specbench.codec.base import mono_at
from specbench.device import resolve_device
from specbench.errors import DependencyError, ModelError

KIND = "snac"
FRAME = 7  # tokens per coarse frame in Orpheus' layout
STRIDES = [4, 2, 1]  # the three levels that layout needs
FILES = ("config.json", "pytorch_model.bin")
DECODE_SEED = 0
_WHERE = "point codec.path at a LOCAL copy of hubertsiuzdak/snac_24khz (a directory with config.json + pytorch_model.bin); nothing is downloaded"


def flatten_codes(codes: Sequence[torch.Tensor], codebook_size: int) -> torch.Tensor:
    """SNAC codes ``[F], [2F], [4F]`` (levels 0..2, 1-D) → Orpheus' flat stream ``LongTensor[7F]`` (module docstring)."""
    if len(codes) != 3:
        raise ValueError(f"SNAC's 7-token frames need 3 levels of codes, got {len(codes)}")
    l0, l1, l2 = (torch.as_tensor(c, dtype=torch.long).reshape(-1) for c in codes)
    f = l0.numel()
    if l1.numel() != 2 * f or l2.numel() != 4 * f:
        raise ValueError(f"SNAC levels must hold F, 2F and 4F codes, got {l0.numel()}, {l1.numel()}, {l2.numel()}")
    l1, l2 = l1.view(f, 2), l2.view(f, 4)
    frames = torch.stack([l0, l1[:, 0], l2[:, 0], l2[:, 1], l1[:, 1], l2[:, 2], l2[:, 3]], dim=1)
    return (frames + torch.arange(FRAME) * codebook_size).reshape(-1)


def unflatten_tokens(tokens: torch.Tensor, codebook_size: int) -> list[torch.Tensor]:
    """The inverse of :func:`flatten_codes`: flat ids → ``[F], [2F], [4F]`` codes.

    A trailing partial frame (fewer than 7 tokens) is dropped; every id is read modulo ``codebook_size``,
    so a token from another position's block maps to the code it would be in its own.
    """
    t = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
    f = t.numel() // FRAME
    frames = t[: f * FRAME].view(f, FRAME) % codebook_size
    l0 = frames[:, 0]
    l1 = torch.stack([frames[:, 1], frames[:, 4]], dim=1).reshape(-1)
    l2 = torch.stack([frames[:, 2], frames[:, 3], frames[:, 5], frames[:, 6]], dim=1).reshape(-1)
    return [l0.clone(), l1, l2]


def _import_snac() -> Any:
    """The ``snac.SNAC`` class, or a DependencyError that says how to install it."""
    try:
        with warnings.catch_warnings():  # snac's Snake activation uses torch.jit.script, deprecated in torch 2.14
            warnings.simplefilter("ignore", FutureWarning)
            from snac import SNAC
    except Exception as exc:
        raise DependencyError(
            f"cannot import the 'snac' package ({type(exc).__name__}: {one_line(exc, 160)}): install it with `pip install -e '.[snac]'`"
        ) from None
    return SNAC


class SnacCodec:
    """SNAC in Orpheus' 7-tokens-per-frame layout: ``encode`` → ``LongTensor[7F]``, ids in ``[0, 7K)``."""

    def __init__(self, model: Any, *, name: str, weights_sha1: str, device: torch.device) -> None:
        """Wrap a loaded ``snac.SNAC``; use :meth:`load` to build one from a local directory."""
        self.model = model
        self.device = device
        self.codebook_size: int = int(model.codebook_size)
        self.sample_rate: int = int(model.sampling_rate)
        self.samples_per_frame: int = int(model.hop_length) * STRIDES[0]  # one coarse frame (2048 at 24 kHz)
        self.frame_rate: float = FRAME * self.sample_rate / self.samples_per_frame
        self.vocab_size: int = FRAME * self.codebook_size
        self.id: str = f"{KIND}:{name}:{weights_sha1[:10]}"

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> SnacCodec:
        """Build SNAC from the LOCAL directory ``path`` (``config.json`` + ``pytorch_model.bin``).

        Raises ModelError when a file is missing, unreadable or does not fit, or when the model does not
        have the 3 levels (strides 4, 2, 1) of Orpheus' layout; DependencyError when ``snac`` cannot be
        imported; ConfigError for an unusable device. Never downloads anything.
        """
        p = Path(path).expanduser()
        if p.is_file():
            raise ModelError(f"{p} is a file: codec.path must be the SNAC DIRECTORY (config.json + pytorch_model.bin): {_WHERE}")
        if not p.is_dir():
            raise ModelError(f"SNAC directory not found: {p}: {_WHERE}")
        for name in FILES:
            if not (p / name).is_file():
                raise ModelError(f"SNAC file not found: {p / name}: {_WHERE}")
        config = read_json(p / "config.json", _WHERE)
        if list(config.get("vq_strides", [8, 4, 2, 1])) != STRIDES:
            raise ModelError(
                f"{p / 'config.json'} has vq_strides {config.get('vq_strides')}; Orpheus' 7-token frames need 3 levels with strides {STRIDES} "
                "(the 24 kHz SNAC): use hubertsiuzdak/snac_24khz"
            )
        SNAC = _import_snac()
        try:
            model = SNAC(**config)
        except Exception as exc:  # unknown keys (TypeError) or inconsistent sizes
            raise ModelError(f"{p / 'config.json'} is not a SNAC config ({type(exc).__name__}: {one_line(exc, 160)}): {_WHERE}") from None
        weights = p / "pytorch_model.bin"
        state = check_keys(model, read_state_dict(weights, _WHERE), weights, "SNAC with this config.json", _WHERE)
        model.load_state_dict(state, strict=False)  # check_keys proved every parameter is there
        dev = resolve_device(device)
        model.to(dev).eval()
        return cls(model, name=p.name, weights_sha1=file_sha1(weights), device=dev)

    def encode(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        """Mono waveform at ``sr`` → ``LongTensor[7F]`` on CPU, ``F = ceil(samples_24k / 2048)`` frames.

        The input is resampled to the model's rate first. Empty input gives an empty tensor. Deterministic.
        """
        x = mono_at(wav, sr, self.sample_rate, "SNAC")
        if x.size == 0:
            return torch.zeros(0, dtype=torch.long)
        with torch.inference_mode():
            codes = self.model.encode(torch.from_numpy(np.ascontiguousarray(x)).to(self.device).view(1, 1, -1))  # 3 x [1, L_i]
        return flatten_codes([c[0].cpu() for c in codes], self.codebook_size)

    def decode(self, tokens: torch.Tensor) -> tuple[np.ndarray, int]:
        """Flat tokens ``[7F (+ r)]`` → ``(float32 waveform of F * 2048 samples, 24000)``.

        A trailing partial frame is dropped and ids are read modulo ``K`` (module docstring); ModelError
        for ids outside ``[0, vocab_size)``. The decoder's noise comes from a fixed seed: deterministic.
        """
        tokens = torch.as_tensor(tokens, dtype=torch.long).cpu().reshape(-1)
        if tokens.numel() and (int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0):
            raise ModelError(f"token ids must lie in [0, {self.vocab_size}) for codec {self.id}")
        codes = unflatten_tokens(tokens, self.codebook_size)
        if codes[0].numel() == 0:
            return np.zeros(0, dtype=np.float32), self.sample_rate
        # fork_rng saves and restores the CPU generator and, on CUDA, the one of the model's device
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.random.default_generator.manual_seed(DECODE_SEED)
            if self.device.type == "cuda":
                with torch.cuda.device(self.device):
                    torch.cuda.manual_seed(DECODE_SEED)
            out = self.model.decode([c.to(self.device).view(1, -1) for c in codes])  # [1, 1, F * 2048]
        return out.reshape(-1).float().cpu().numpy().astype(np.float32, copy=False), self.sample_rate
