"""EnCodec 24 kHz (``encodec`` PyPI package) as a :class:`~specbench.codec.base.SpeechCodec`.

Only the FIRST residual codebook is exposed: it is the single token stream that VALL-E's
autoregressive stage models (75 tokens/s, 1024 ids), so speculative decoding sees one stream exactly
as with the built-in codec. The remaining codebooks (VALL-E's non-autoregressive stage) are out of
scope, which makes :meth:`EncodecCodec.decode` a coarse reconstruction (roughly EnCodec at 0.75 kbps).

Weights come from a LOCAL file only: the original ``encodec_24khz-d7cc33bc.th`` checkpoint or any
plain state dict of ``EncodecModel.encodec_model_24khz(pretrained=False)``. Nothing is downloaded.
Note that ``import encodec`` imports torchaudio at module level, so torchaudio must import too.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specbench.codec.base import mono_at
from specbench.device import resolve_device
from specbench.errors import ConfigError, DependencyError, ModelError

KIND = "encodec"
CHECKPOINT_NAME = "encodec_24khz-d7cc33bc.th"
_WHERE = (
    f"point codec.path at a LOCAL copy of the EnCodec 24 kHz checkpoint {CHECKPOINT_NAME} "
    "(or a state dict of EncodecModel.encodec_model_24khz(pretrained=False)); nothing is downloaded"
)


def _import_encodec() -> Any:
    """The ``encodec.EncodecModel`` class, or a DependencyError that says how to install it."""
    try:
        from encodec import EncodecModel
    except Exception as exc:  # ImportError, or OSError from a torchaudio build that cannot load
        msg = " ".join(str(exc).split())
        raise DependencyError(
            f"cannot import the 'encodec' package ({type(exc).__name__}: {msg}): "
            "install it with `pip install encodec` (it also needs an importable torchaudio matching your torch)"
        ) from None
    return EncodecModel


def _file_sha1(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-1 hex digest of a file, read in chunks (the real checkpoint is ~90 MB)."""
    h = hashlib.sha1()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """An exception message squeezed onto one short line (torch's key-mismatch errors span many)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _load_error(exc: BaseException) -> str:
    """The useful part of a ``torch.load`` failure on one line.

    With ``weights_only=True`` torch wraps the real cause (e.g. "Unsupported operand 52" for random
    bytes, "Unsupported global ..." for a pickled module) in several lines of generic advice.
    """
    text = " ".join(str(exc).split())
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use| Check the documentation|$)", text)
    if found and found.group(1).strip():
        text = found.group(1).strip()
    return f"{type(exc).__name__}: {_one_line(Exception(text), 160)}" if text else type(exc).__name__


class EncodecCodec:
    """EnCodec 24 kHz, first codebook only: ``encode`` → ``LongTensor[T]`` at 75 Hz, ids in ``[0, 1024)``."""

    def __init__(self, model: Any, *, weights_sha1: str, bandwidth: float, device: torch.device) -> None:
        """Wrap an already loaded ``encodec.EncodecModel``; use :meth:`load` to build one from a file."""
        self.model = model
        self.device = device
        self.bandwidth = float(bandwidth)
        self.sample_rate: int = int(model.sample_rate)
        # The model's own frame_rate is ceil(sr / hop); keep the exact ratio (24000 / 320 = 75.0).
        self.frame_rate: float = float(model.sample_rate) / float(np.prod(model.encoder.ratios))
        self.hop_length: int = int(np.prod(model.encoder.ratios))
        self.vocab_size: int = int(model.quantizer.vq.layers[0]._codebook.codebook_size)
        # The bandwidth does not change the first codebook (RVQ stage 1 is the same at every
        # bandwidth) but is part of the id so configs that differ are never silently mixed.
        self.id: str = f"{KIND}-24khz-{weights_sha1[:10]}-bw{self.bandwidth:g}"

    def token_vectors(self) -> torch.Tensor:
        """``[vocab_size, 128]``: the first RVQ codebook's vectors (what each token adds to the latent)."""
        return self.model.quantizer.vq.layers[0]._codebook.embed.detach().float().cpu()

    @classmethod
    def load(cls, path: Path, bandwidth: float = 1.5, device: str = "cpu") -> EncodecCodec:
        """Build the 24 kHz model from the LOCAL weights file ``path``.

        ``path`` holds a plain state dict (the original ``encodec_24khz-d7cc33bc.th`` is one).
        Raises ModelError when the file is missing, unreadable or does not fit the architecture,
        ConfigError when ``bandwidth`` is not one of the model's target bandwidths or the device is
        unusable, DependencyError when ``encodec`` cannot be imported. Never downloads anything.
        """
        p = Path(path).expanduser()
        if not p.is_file():
            raise ModelError(f"EnCodec weights not found: {p}: {_WHERE}")
        EncodecModel = _import_encodec()
        with warnings.catch_warnings():
            # encodec uses the deprecated torch.nn.utils.weight_norm; the warning is not actionable here.
            warnings.filterwarnings("ignore", message=r".*weight_norm.*", category=FutureWarning)
            model = EncodecModel.encodec_model_24khz(pretrained=False)
        if float(bandwidth) not in [float(b) for b in model.target_bandwidths]:
            allowed = ", ".join(f"{float(b):g}" for b in model.target_bandwidths)
            raise ConfigError(f"EnCodec 24 kHz has no bandwidth {bandwidth:g} kbps: set codec.bandwidth to one of {allowed}")
        try:
            # weights_only: a checkpoint is data, never code to execute.
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ModelError(f"cannot read {p} as a plain state dict ({_load_error(exc)}): {_WHERE}") from None
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelError(f"{p} is a {type(state).__name__}, not a state dict of tensors: {_WHERE}")
        try:
            model.load_state_dict(state, strict=True)
        except Exception as exc:  # missing/unexpected keys or shape mismatch (RuntimeError)
            raise ModelError(f"{p} does not fit EnCodec 24 kHz ({_one_line(exc)}): {_WHERE}") from None
        model.set_target_bandwidth(bandwidth)
        # One call must handle any length and yield scale-free tokens: without segmenting, encode()
        # returns exactly one frame, and without normalisation no per-segment scale is needed to decode
        # (the tokens could not carry it). The 24 kHz model already uses these values; enforce them.
        model.segment = None
        model.normalize = False
        dev = resolve_device(device)
        model.to(dev).eval()
        return cls(model, weights_sha1=_file_sha1(p), bandwidth=bandwidth, device=dev)

    def encode(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        """Mono waveform at ``sr`` → first-codebook ``LongTensor[T]`` on CPU, ``T = ceil(samples_24k / 320)``.

        The input is resampled to 24 kHz first. Empty input gives an empty tensor. Deterministic.
        """
        x = mono_at(wav, sr, self.sample_rate, "EnCodec")
        if x.size == 0:
            return torch.zeros(0, dtype=torch.long)
        with torch.inference_mode():
            frames = self.model.encode(torch.from_numpy(x).to(self.device).view(1, 1, -1))
            codes = frames[0][0]  # [B=1, K, T]; a single frame since segment is None
            return codes[0, 0].to("cpu", torch.long).clone()

    def decode(self, tokens: torch.Tensor) -> tuple[np.ndarray, int]:
        """First-codebook tokens ``[T]`` → ``(float32 waveform of T * 320 samples, 24000)``.

        Decodes with n_q = 1 (codes of shape ``[1, 1, T]``), which EnCodec supports: a coarse
        reconstruction, since the finer codebooks (VALL-E's NAR stage) are not predicted here.
        Raises ModelError for ids outside ``[0, vocab_size)``.
        """
        tokens = torch.as_tensor(tokens, dtype=torch.long).cpu().reshape(-1)
        if tokens.numel() == 0:
            return np.zeros(0, dtype=np.float32), self.sample_rate
        if int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0:
            raise ModelError(f"token ids must lie in [0, {self.vocab_size}) for codec {self.id}")
        with torch.inference_mode():
            codes = tokens.to(self.device).view(1, 1, -1)
            out = self.model.decode([(codes, None)])  # [1, 1, T * hop]
        wav = out[0, 0].float().cpu().numpy().astype(np.float32, copy=False)
        return wav, self.sample_rate
