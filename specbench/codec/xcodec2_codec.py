"""XCodec2 (``xcodec2`` PyPI package 0.1.5; the codec of Llasa) as a :class:`~specbench.codec.base.SpeechCodec`.

16 kHz audio, one FSQ codebook of 4^8 = 65,536 ids, 50 tokens/s (hop 320). The token stream is the
package's own ``XCodec2Model.encode_code`` / ``decode_code``, so ids are exactly the ones Llasa was
trained on. That includes its padding: ``encode`` pads ``n`` samples with ``320 - n % 320`` zeros (a
whole extra hop when ``n`` is a multiple of 320), so ``T = n // 320 + 1`` tokens for ``n > 0``.

Everything comes from LOCAL files; nothing is downloaded. ``codec.path`` is a local copy of the
``HKUSTAudio/xcodec2`` snapshot: ``config.json`` and ``model.safetensors`` (or ``pytorch_model.bin``).
Its checkpoint already holds the weights of the semantic encoder (facebook/w2v-bert-2.0, keys
``semantic_model.*``), but ``XCodec2Model.__init__`` fetches that model's config and feature extractor
from the Hub, so this backend builds the model itself with the package's own modules and takes them from
a local ``facebook/w2v-bert-2.0`` directory instead: ``codec.semantic_path``, or by default a folder
named ``w2v-bert-2.0`` inside ``codec.path`` or next to it. That folder needs ``config.json`` and
``preprocessor_config.json``; its ``model.safetensors`` is read only when the codec checkpoint lacks the
``semantic_model.*`` weights. Only the first 16 of w2v-bert's layers are built: XCodec2 reads
``hidden_states[16]``, which does not depend on the later layers (so their weights are skipped).

The architecture is read from ``config.json``: ``semantic_hidden_size``, ``codec_encoder_hidden_size``
and ``codec_decoder_hidden_size`` (1024 each in the real snapshot) plus four keys the real file does not
have, because ``XCodec2Model`` hard-codes them: ``codec_encoder_ngf`` (48), ``codec_decoder_depth`` (12),
``codec_decoder_heads`` (16) and ``codec_decoder_pos_meb_dim`` (64). Their defaults are the package's
values; specbench's tiny random test codecs (:mod:`specbench.codec.tiny`) set smaller ones.

Installation: the package pins torch==2.5.0, so it is installed with ``pip install --no-deps`` (``make
setup`` does); of torchtune it uses only ``torchtune.modules.RotaryPositionalEmbeddings``, a plain torch
module, which is loaded here from the installed torchtune without running ``torchtune/__init__.py``
(that one imports datasets, pyarrow and torchao). See the ``xcodec2`` extra in pyproject.toml.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from specbench.codec._files import check_keys, combined_sha1, file_sha1, one_line, read_json, read_state_dict
from specbench.codec.base import mono_at
from specbench.device import resolve_device
from specbench.errors import DependencyError, ModelError

KIND = "xcodec2"
SAMPLE_RATE = 16000
HOP = 320
SEMANTIC_DIR = "w2v-bert-2.0"  # default folder name of the local facebook/w2v-bert-2.0 copy
SEMANTIC_LAYER = 16  # XCodec2Model uses hidden_states[16] of w2v-bert-2.0
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SEMANTIC_FILES = ("config.json", "preprocessor_config.json")
_INSTALL = "install it with `pip install --no-deps xcodec2==0.1.5 torchtune==0.6.1` and `pip install -e '.[xcodec2]'` (make setup does both)"
_WHERE = "point codec.path at a LOCAL copy of the HKUSTAudio/xcodec2 snapshot (config.json + model.safetensors); nothing is downloaded"
_SEMANTIC_WHERE = (
    f"set codec.semantic_path to a LOCAL copy of facebook/w2v-bert-2.0 ({' + '.join(SEMANTIC_FILES)}), "
    f"or put it in a folder named {SEMANTIC_DIR} inside or next to codec.path; nothing is downloaded"
)


@dataclass(frozen=True)
class XCodec2Arch:
    """The sizes that decide XCodec2's module shapes (defaults: the real model's; see the module docstring)."""

    semantic_hidden_size: int = 1024
    codec_encoder_hidden_size: int = 1024
    codec_decoder_hidden_size: int = 1024
    codec_encoder_ngf: int = 48
    codec_decoder_depth: int = 12
    codec_decoder_heads: int = 16
    codec_decoder_pos_meb_dim: int = 64

    @classmethod
    def from_config(cls, cfg: dict[str, Any], path: Path) -> XCodec2Arch:
        """Read the sizes from a snapshot's ``config.json`` (``path`` is named in errors)."""
        if cfg.get("use_vocos", True) is not True:
            raise ModelError(f"{path} has use_vocos: {cfg.get('use_vocos')!r}; the xcodec2 package only builds the Vocos decoder: {_WHERE}")
        values = {}
        for name, default in vars(cls()).items():
            v = cfg.get(name, default)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ModelError(f"{path}: {name} must be a positive integer, got {v!r}: {_WHERE}")
            values[name] = v
        arch = cls(**values)
        if arch.codec_decoder_hidden_size % arch.codec_decoder_heads:
            raise ModelError(
                f"{path}: codec_decoder_hidden_size {arch.codec_decoder_hidden_size} is not a multiple of codec_decoder_heads {arch.codec_decoder_heads}"
            )
        return arch

    def config_json(self) -> dict[str, Any]:
        """The ``config.json`` content of a snapshot with these sizes (the real file's keys plus the extra four)."""
        return {"architectures": ["XCodec2Model"], "model_type": "xcodec2", "use_vocos": True, **vars(self)}


def _torchtune_rope() -> type:
    """``torchtune.modules.RotaryPositionalEmbeddings``, the one piece of torchtune that xcodec2 uses.

    An already imported torchtune is used as is; otherwise the module file is loaded from the installed
    torchtune by path, without executing ``torchtune/__init__.py`` (which needs datasets and torchao).
    """
    loaded = sys.modules.get("torchtune.modules")
    if loaded is not None and hasattr(loaded, "RotaryPositionalEmbeddings"):
        return loaded.RotaryPositionalEmbeddings
    spec = importlib.util.find_spec("torchtune")
    if spec is None or not spec.submodule_search_locations:
        raise DependencyError(f"xcodec2 needs torchtune's RotaryPositionalEmbeddings but torchtune is not installed: {_INSTALL}")
    file = Path(next(iter(spec.submodule_search_locations))) / "modules" / "position_embeddings.py"
    mod_spec = importlib.util.spec_from_file_location("specbench.codec._torchtune_position_embeddings", file)
    if mod_spec is None or mod_spec.loader is None or not file.is_file():
        raise DependencyError(f"torchtune is installed but has no {file}: {_INSTALL}")
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module.RotaryPositionalEmbeddings


@contextlib.contextmanager
def _torchtune_modules(rope: type) -> Iterator[None]:
    """While importing xcodec2, let ``from torchtune.modules import RotaryPositionalEmbeddings`` find ``rope``.

    Placeholder ``torchtune`` / ``torchtune.modules`` entries live in ``sys.modules`` only inside this
    block (xcodec2's modules keep the class they imported), so a later real ``import torchtune`` is unaffected.
    """
    if "torchtune.modules" in sys.modules:
        yield
        return
    names = ("torchtune", "torchtune.modules")
    saved = {n: sys.modules.get(n) for n in names}
    package = types.ModuleType("torchtune")
    package.__path__ = []  # a package with no submodules of its own
    modules = types.ModuleType("torchtune.modules")
    modules.RotaryPositionalEmbeddings = rope  # type: ignore[attr-defined]
    package.modules = modules  # type: ignore[attr-defined]
    sys.modules.update({"torchtune": package, "torchtune.modules": modules})
    try:
        yield
    finally:
        for n, mod in saved.items():
            if mod is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = mod


@functools.cache
def import_xcodec2() -> types.SimpleNamespace:
    """The xcodec2 classes this backend needs, or a DependencyError that says how to install them."""
    rope = _torchtune_rope()
    try:
        from transformers import AutoFeatureExtractor, PreTrainedModel, Wav2Vec2BertConfig, Wav2Vec2BertModel

        with _torchtune_modules(rope):
            from xcodec2.configuration_bigcodec import BigCodecConfig
            from xcodec2.modeling_xcodec2 import XCodec2Model
            from xcodec2.vq.codec_decoder_vocos import CodecDecoderVocos
            from xcodec2.vq.codec_encoder import CodecEncoder_Transformer
            from xcodec2.vq.module import SemanticEncoder
    except Exception as exc:  # ImportError, or an OSError from a torchaudio build that cannot load
        raise DependencyError(f"cannot import the 'xcodec2' package ({type(exc).__name__}: {one_line(exc, 160)}): {_INSTALL}") from None

    class LocalXCodec2Model(XCodec2Model):
        """``XCodec2Model`` built from local parts: the same submodules and ``encode_code`` / ``decode_code``,
        but the semantic model and feature extractor are passed in instead of fetched from the Hub."""

        def __init__(self, config: Any, arch: XCodec2Arch, semantic_model: torch.nn.Module, feature_extractor: Any) -> None:
            PreTrainedModel.__init__(self, config)  # skips XCodec2Model.__init__, which downloads
            s, e, d = arch.semantic_hidden_size, arch.codec_encoder_hidden_size, arch.codec_decoder_hidden_size
            self.semantic_model = semantic_model.eval()
            self.SemanticEncoder_module = SemanticEncoder(s, s, s)
            self.CodecEnc = CodecEncoder_Transformer(ngf=arch.codec_encoder_ngf, hidden_dim=e)
            self.generator = CodecDecoderVocos(
                hidden_dim=d, depth=arch.codec_decoder_depth, heads=arch.codec_decoder_heads, pos_meb_dim=arch.codec_decoder_pos_meb_dim, vq_dim=s + e
            )
            self.fc_prior = torch.nn.Linear(s + e, s + e)
            self.fc_post_a = torch.nn.Linear(s + e, d)
            self.feature_extractor = feature_extractor

    return types.SimpleNamespace(
        AutoFeatureExtractor=AutoFeatureExtractor,
        BigCodecConfig=BigCodecConfig,
        LocalXCodec2Model=LocalXCodec2Model,
        Wav2Vec2BertConfig=Wav2Vec2BertConfig,
        Wav2Vec2BertModel=Wav2Vec2BertModel,
    )


def build_model(ns: types.SimpleNamespace, arch: XCodec2Arch, semantic_config: Any, feature_extractor: Any) -> torch.nn.Module:
    """A randomly initialised XCodec2 of ``arch`` whose semantic encoder has ``semantic_config``'s shape,
    cut to the 16 layers XCodec2 reads (the loader then fills in the weights; the tiny writer saves them)."""
    cfg = copy.deepcopy(semantic_config)
    cfg.num_hidden_layers = SEMANTIC_LAYER
    cfg.output_hidden_states = True  # encode_code reads hidden_states[16]
    semantic = ns.Wav2Vec2BertModel(cfg)
    config = ns.BigCodecConfig(
        semantic_hidden_size=arch.semantic_hidden_size,
        codec_encoder_hidden_size=arch.codec_encoder_hidden_size,
        codec_decoder_hidden_size=arch.codec_decoder_hidden_size,
        use_vocos=True,
    )
    return ns.LocalXCodec2Model(config, arch, semantic, feature_extractor)


_LATER_LAYER = re.compile(r"^(?:semantic_model\.)?encoder\.layers\.(\d+)\.")


def _semantic_part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The semantic-encoder tensors of ``state`` (keys under ``prefix``), renamed to ``semantic_model.*``,
    without the layers from the 17th on (XCodec2 never uses their output)."""
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        name = k[len(prefix) :]
        m = _LATER_LAYER.match(name)
        if m and int(m.group(1)) >= SEMANTIC_LAYER:
            continue
        out[f"semantic_model.{name}"] = v
    return out


def find_semantic_dir(path: Path, semantic_path: str | Path | None) -> Path:
    """The local w2v-bert-2.0 folder: ``semantic_path``, else ``<path>/w2v-bert-2.0``, else ``<path>/../w2v-bert-2.0``."""
    if semantic_path is not None:
        candidates = [Path(semantic_path).expanduser()]
    else:
        candidates = [path / SEMANTIC_DIR, path.parent / SEMANTIC_DIR]
    for c in candidates:
        if c.is_dir():
            for name in SEMANTIC_FILES:
                if not (c / name).is_file():
                    raise ModelError(f"w2v-bert-2.0 file not found: {c / name}: {_SEMANTIC_WHERE}")
            return c
    looked = " or ".join(str(c) for c in candidates)
    raise ModelError(f"w2v-bert-2.0 directory not found: {looked}: {_SEMANTIC_WHERE}")


class XCodec2Codec:
    """XCodec2 16 kHz: ``encode`` → ``LongTensor[T]`` at 50 Hz, ids in ``[0, 65536)``; see the module docstring."""

    def __init__(self, model: Any, *, name: str, weights_sha1: str, device: torch.device) -> None:
        """Wrap a loaded ``LocalXCodec2Model``; use :meth:`load` to build one from local files."""
        self.model = model
        self.device = device
        self.sample_rate: int = SAMPLE_RATE
        self.hop_length: int = HOP
        self.frame_rate: float = SAMPLE_RATE / HOP
        self.vocab_size: int = int(model.generator.quantizer.codebook_size)
        self.id: str = f"{KIND}:{name}:{weights_sha1[:10]}"

    @classmethod
    def load(cls, path: str | Path, *, semantic_path: str | Path | None = None, device: str = "cpu") -> XCodec2Codec:
        """Build XCodec2 from the LOCAL snapshot directory ``path`` (see the module docstring for its files).

        Raises ModelError when a file is missing, unreadable or does not fit the architecture,
        DependencyError when xcodec2 (or torchtune) cannot be imported, ConfigError for an unusable
        device. Never downloads anything.
        """
        p = Path(path).expanduser()
        if p.is_file():
            raise ModelError(f"{p} is a file: codec.path must be the XCodec2 snapshot DIRECTORY (config.json + model.safetensors): {_WHERE}")
        if not p.is_dir():
            raise ModelError(f"XCodec2 snapshot not found: {p}: {_WHERE}")
        if not (p / "config.json").is_file():
            raise ModelError(f"XCodec2 file not found: {p / 'config.json'}: {_WHERE}")
        weights = next((p / n for n in WEIGHT_FILES if (p / n).is_file()), None)
        if weights is None:
            raise ModelError(f"XCodec2 weights not found: {p / WEIGHT_FILES[0]} (or {WEIGHT_FILES[1]}): {_WHERE}")
        semantic_dir = find_semantic_dir(p, semantic_path)
        arch = XCodec2Arch.from_config(read_json(p / "config.json", _WHERE), p / "config.json")
        ns = import_xcodec2()
        try:
            sem_cfg = ns.Wav2Vec2BertConfig.from_pretrained(str(semantic_dir), local_files_only=True)
            extractor = ns.AutoFeatureExtractor.from_pretrained(str(semantic_dir), local_files_only=True)
        except Exception as exc:
            raise ModelError(f"cannot read the w2v-bert-2.0 config in {semantic_dir} ({type(exc).__name__}: {one_line(exc, 160)}): {_SEMANTIC_WHERE}") from None
        if sem_cfg.hidden_size != arch.semantic_hidden_size:
            raise ModelError(
                f"{semantic_dir} has hidden_size {sem_cfg.hidden_size} but {p / 'config.json'} expects semantic_hidden_size "
                f"{arch.semantic_hidden_size}: use the w2v-bert-2.0 copy this XCodec2 was trained with"
            )
        if sem_cfg.num_hidden_layers < SEMANTIC_LAYER:
            raise ModelError(
                f"{semantic_dir} has {sem_cfg.num_hidden_layers} layers; XCodec2 reads the output of layer {SEMANTIC_LAYER}: use facebook/w2v-bert-2.0"
            )
        if int(getattr(extractor, "sampling_rate", SAMPLE_RATE)) != SAMPLE_RATE:
            raise ModelError(f"{semantic_dir / 'preprocessor_config.json'} is for {extractor.sampling_rate} Hz, not {SAMPLE_RATE}: use facebook/w2v-bert-2.0's")

        state = read_state_dict(weights, _WHERE)
        codec_part = {k: v for k, v in state.items() if not k.startswith("semantic_model.")}
        semantic_part = _semantic_part(state, "semantic_model.")
        digests = [file_sha1(weights)]
        if not semantic_part:  # a checkpoint without the semantic encoder: take it from the w2v-bert-2.0 folder
            sem_weights = next((semantic_dir / n for n in WEIGHT_FILES if (semantic_dir / n).is_file()), None)
            if sem_weights is None:
                raise ModelError(
                    f"{weights} has no semantic_model.* weights and {semantic_dir / WEIGHT_FILES[0]} does not exist: "
                    "copy facebook/w2v-bert-2.0's model.safetensors there (or use the full HKUSTAudio/xcodec2 checkpoint)"
                )
            semantic_part = _semantic_part(read_state_dict(sem_weights, _SEMANTIC_WHERE), "")
            digests.append(file_sha1(sem_weights))
        del state

        model = build_model(ns, arch, sem_cfg, extractor)
        wanted = check_keys(model, {**codec_part, **semantic_part}, weights, "XCodec2 with this config.json and w2v-bert-2.0", _WHERE)
        model.load_state_dict(wanted, strict=False)  # check_keys proved every parameter is there
        dev = resolve_device(device)
        model.to(dev).eval()
        return cls(model, name=p.name, weights_sha1=combined_sha1(*digests), device=dev)

    def token_vectors(self) -> torch.Tensor:
        """``[65536, 8]``: the FSQ code of each id (its 8 quantised levels), so neighbours differ in one level."""
        return self.model.generator.quantizer.layers[0].implicit_codebook.detach().float().cpu()

    def encode(self, wav: np.ndarray, sr: int) -> torch.Tensor:
        """Mono waveform at ``sr`` → ``LongTensor[n // 320 + 1]`` on CPU (``n`` samples at 16 kHz; see the module docstring).

        The input is resampled to 16 kHz first. Empty input gives an empty tensor. Deterministic.
        """
        x = mono_at(wav, sr, self.sample_rate, "XCodec2")
        if x.size == 0:
            return torch.zeros(0, dtype=torch.long)
        with torch.inference_mode():
            codes = self.model.encode_code(torch.from_numpy(np.ascontiguousarray(x)).view(1, -1), sample_rate=self.sample_rate)  # [1, 1, T]
        return codes[0, 0].to("cpu", torch.long).clone()

    def decode(self, tokens: torch.Tensor) -> tuple[np.ndarray, int]:
        """Tokens ``[T]`` → ``(float32 waveform of T * 320 samples, 16000)``. ModelError for ids outside ``[0, vocab_size)``."""
        tokens = torch.as_tensor(tokens, dtype=torch.long).cpu().reshape(-1)
        if tokens.numel() == 0:
            return np.zeros(0, dtype=np.float32), self.sample_rate
        if int(tokens.max()) >= self.vocab_size or int(tokens.min()) < 0:
            raise ModelError(f"token ids must lie in [0, {self.vocab_size}) for codec {self.id}")
        with torch.inference_mode():
            out = self.model.decode_code(tokens.to(self.device).view(1, 1, -1))  # [1, 1, T * 320]
        return out.reshape(-1).float().cpu().numpy().astype(np.float32, copy=False), self.sample_rate
