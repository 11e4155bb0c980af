"""Tiny RANDOM-weight codecs of the Hugging Face TTS families, in the real on-disk layout.

``write_tiny_codec(kind, out)`` writes codec weights that the SAME loader reads as a user's local copy of
the real model (so tests and smoke runs exercise the real loading code), but with small hidden sizes, so
that encoding or decoding 2 s of audio takes well under a second on one CPU core. The token interface is
the real one: vocabulary sizes (XCodec2 65,536; SNAC 7 x 4096; DAC 2 x 1024), sample rates and frame rates
match the real models. The audio they produce is noise-like: only the plumbing is real.

What is written under ``out`` (the returned path is what goes in ``codec.path``):

- ``xcodec2``: ``xcodec2-tiny/`` (``config.json`` + ``model.safetensors``, as HKUSTAudio/xcodec2, with
  the semantic encoder's weights inside) and, next to it, ``w2v-bert-2.0/`` (``config.json``,
  ``preprocessor_config.json``, ``model.safetensors``, as facebook/w2v-bert-2.0: a 16-layer
  Wav2Vec2-BERT of width 16) → returns ``out/xcodec2-tiny``;
- ``snac``: ``snac_24khz-tiny/`` (``config.json`` + ``pytorch_model.bin``, as hubertsiuzdak/snac_24khz)
  → returns that directory;
- ``dac``: ``dac_24khz-tiny.pth`` (``dac.DAC.save`` format, 24 kHz, hop 320, 2 codebooks, as OuteTTS 1.0's)
  → returns that file.

Weights are a deterministic function of ``seed``; the global torch RNG is left as it was.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from specbench.errors import ConfigError

TINY_KINDS = ("xcodec2", "snac", "dac")

# small sizes that keep the real interface (rates, hops, codebooks)
SNAC_TINY = {
    "sampling_rate": 24000,
    "encoder_dim": 4,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 32,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}
DAC_TINY = {
    "encoder_dim": 4,
    "encoder_rates": [2, 4, 5, 8],
    "decoder_dim": 32,
    "decoder_rates": [8, 5, 4, 2],
    "n_codebooks": 2,
    "codebook_size": 1024,
    "codebook_dim": 8,
    "sample_rate": 24000,
}
W2V_BERT_TINY = {
    "hidden_size": 16,
    "num_hidden_layers": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_depthwise_kernel_size": 3,
}
XCODEC2_TINY = {
    "semantic_hidden_size": 16,
    "codec_encoder_hidden_size": 16,
    "codec_decoder_hidden_size": 32,
    "codec_encoder_ngf": 4,
    "codec_decoder_depth": 1,
    "codec_decoder_heads": 2,
    "codec_decoder_pos_meb_dim": 16,
}
# A random FSQ projection maps nearly every frame to the middle levels (one or two ids); scaling it up
# spreads random codecs over many ids, as a trained one is.
XCODEC2_FSQ_GAIN = 10.0


def write_tiny_codec(kind: str, out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``kind`` codec under ``out`` (created if needed) and return its ``codec.path``.

    See the module docstring for the files. Existing files of the same names are overwritten. Raises
    ConfigError for an unknown ``kind`` and DependencyError when the codec's package is not installed.
    """
    if kind not in TINY_KINDS:
        raise ConfigError(f"no tiny codec of kind '{kind}': choose one of {', '.join(TINY_KINDS)}")
    root = Path(out).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with warnings.catch_warnings():  # weight_norm deprecations inside the codec packages
            warnings.simplefilter("ignore")
            if kind == "xcodec2":
                return _write_xcodec2(root)
            if kind == "snac":
                return _write_snac(root)
            return _write_dac(root)


def _write_snac(root: Path) -> Path:
    from specbench.codec.snac_codec import _import_snac

    model = _import_snac()(**SNAC_TINY)
    d = root / "snac_24khz-tiny"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(SNAC_TINY, indent=2))
    torch.save(model.state_dict(), d / "pytorch_model.bin")
    return d


def _write_dac(root: Path) -> Path:
    from specbench.codec.dac_codec import _import_dac

    model = _import_dac()(**DAC_TINY)
    path = root / "dac_24khz-tiny.pth"
    model.save(str(path), package=False)  # state dict + metadata.kwargs, the format of the released weights
    return path


def _write_xcodec2(root: Path) -> Path:
    from safetensors.torch import save_file

    from specbench.codec.xcodec2_codec import SEMANTIC_DIR, XCodec2Arch, build_model, import_xcodec2

    ns = import_xcodec2()
    from transformers import SeamlessM4TFeatureExtractor

    sem_dir = root / SEMANTIC_DIR
    sem_dir.mkdir(exist_ok=True)
    semantic = ns.Wav2Vec2BertModel(ns.Wav2Vec2BertConfig(**W2V_BERT_TINY))
    semantic.config.save_pretrained(str(sem_dir))  # config.json
    save_file(_tensors(semantic), str(sem_dir / "model.safetensors"), metadata={"format": "pt"})
    extractor = SeamlessM4TFeatureExtractor()  # w2v-bert-2.0's: 80 mel bins, stride 2, 16 kHz
    extractor.save_pretrained(str(sem_dir))  # preprocessor_config.json

    arch = XCodec2Arch(**XCODEC2_TINY)
    model = build_model(ns, arch, semantic.config, extractor)
    model.semantic_model.load_state_dict(semantic.state_dict())
    with torch.no_grad():
        model.generator.quantizer.project_in.weight.mul_(XCODEC2_FSQ_GAIN)
    d = root / "xcodec2-tiny"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(arch.config_json(), indent=2))
    save_file(_tensors(model), str(d / "model.safetensors"), metadata={"format": "pt"})
    return d


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict as safetensors wants it (contiguous tensors that share no memory)."""
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
