"""The codecs of the Hugging Face TTS families (xcodec2, snac, dac) on tiny random weights written in the
real on-disk layouts by specbench.codec.tiny, loaded through load_codec (offline, CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from specbench.audio import resample
from specbench.codec import codec_from_config, load_codec
from specbench.codec.base import SpeechCodec
from specbench.codec.dac_codec import flatten_codes as dac_flatten
from specbench.codec.dac_codec import unflatten_tokens as dac_unflatten
from specbench.codec.snac_codec import flatten_codes as snac_flatten
from specbench.codec.snac_codec import unflatten_tokens as snac_unflatten
from specbench.config import CodecConfig
from specbench.errors import ConfigError, DependencyError, ModelError

# kind -> (sample rate, flat tokens per second, vocabulary, tokens per frame) of the real models
EXPECTED = {
    "xcodec2": (16000, 50.0, 65536, 1),
    "snac": (24000, 7 * 24000 / 2048, 7 * 4096, 7),
    "dac": (24000, 2 * 24000 / 320, 2 * 1024, 2),
}
INPUT_SR = 22050  # differs from every codec's own rate, so encode must resample


def _require(kind: str) -> None:
    """Skip unless the codec's package imports (the pure-function and missing-path tests need none)."""
    try:
        if kind == "xcodec2":
            from specbench.codec.xcodec2_codec import import_xcodec2

            import_xcodec2()
        elif kind == "snac":
            from specbench.codec.snac_codec import _import_snac

            _import_snac()
        else:
            from specbench.codec.dac_codec import _import_dac

            _import_dac()
    except DependencyError as exc:
        pytest.skip(str(exc))


def _audio(sr: int, seconds: float = 1.5) -> np.ndarray:
    """A chirp plus a little noise: varied enough to give more than one token."""
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> codec.path of a tiny codec written once per module (built lazily, per kind)."""
    return {}


def _path(kind: str, written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from specbench.codec.tiny import write_tiny_codec

    _require(kind)
    if kind not in written:
        written[kind] = write_tiny_codec(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
    return written[kind]


@pytest.fixture(scope="module", params=list(EXPECTED))
def tiny(request: pytest.FixtureRequest, written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SpeechCodec]:
    kind = request.param
    return kind, load_codec(kind, str(_path(kind, written, tmp_path_factory)))


# ---- through load_codec --------------------------------------------------------------------------------
def test_attributes(tiny: tuple[str, SpeechCodec]) -> None:
    kind, codec = tiny
    sr, rate, vocab, _ = EXPECTED[kind]
    assert isinstance(codec, SpeechCodec)
    assert codec.sample_rate == sr and codec.frame_rate == pytest.approx(rate) and codec.vocab_size == vocab
    assert codec.id.startswith(f"{kind}:") and len(codec.id.split(":")[2]) == 10


def test_encode_resamples_shape_range_determinism(tiny: tuple[str, SpeechCodec]) -> None:
    kind, codec = tiny
    _, rate, vocab, frame = EXPECTED[kind]
    wav = _audio(INPUT_SR)
    tokens = codec.encode(wav, INPUT_SR)
    assert tokens.dtype == torch.long and tokens.dim() == 1
    seconds = wav.size / INPUT_SR
    assert abs(tokens.numel() - seconds * rate) <= 2 * frame  # padding to whole frames (xcodec2: + 1 token)
    assert tokens.numel() % frame == 0
    assert 0 <= int(tokens.min()) and int(tokens.max()) < vocab
    assert tokens.unique().numel() > 3
    assert torch.equal(tokens, codec.encode(wav, INPUT_SR))
    assert torch.equal(tokens, codec.encode(resample(wav, INPUT_SR, codec.sample_rate), codec.sample_rate))
    if frame > 1:  # every position of a frame stays in its own id block
        block = vocab // frame
        for j in range(frame):
            part = tokens[j::frame]
            assert int(part.min()) >= j * block and int(part.max()) < (j + 1) * block


def test_decode_length_dtype(tiny: tuple[str, SpeechCodec]) -> None:
    kind, codec = tiny
    tokens = codec.encode(_audio(INPUT_SR, 1.0), INPUT_SR)
    wav, sr = codec.decode(tokens)
    assert sr == codec.sample_rate
    assert wav.dtype == np.float32 and wav.ndim == 1 and np.isfinite(wav).all()
    expected = tokens.numel() / codec.frame_rate * sr
    assert abs(wav.size - expected) <= 0.01 * expected
    again, _ = codec.decode(tokens)
    assert np.array_equal(wav, again)  # SNAC's decoder noise comes from a fixed seed


def test_empty_and_partial_frames(tiny: tuple[str, SpeechCodec]) -> None:
    kind, codec = tiny
    frame = EXPECTED[kind][3]
    assert codec.encode(np.zeros(0, np.float32), INPUT_SR).shape == (0,)
    assert codec.decode(torch.zeros(0, dtype=torch.long))[0].shape == (0,)
    tokens = codec.encode(_audio(INPUT_SR, 0.5), INPUT_SR)
    if frame > 1:  # a trailing partial frame is dropped
        assert np.array_equal(codec.decode(tokens[: frame * 2 + 1])[0], codec.decode(tokens[: frame * 2])[0])


def test_decode_rejects_out_of_range(tiny: tuple[str, SpeechCodec]) -> None:
    _, codec = tiny
    with pytest.raises(ModelError, match=str(codec.vocab_size)):
        codec.decode(torch.tensor([0] * 6 + [codec.vocab_size]))
    with pytest.raises(ModelError):
        codec.decode(torch.tensor([-1] + [0] * 6))


def test_decode_leaves_global_rng_alone(tiny: tuple[str, SpeechCodec]) -> None:
    _, codec = tiny
    tokens = codec.encode(_audio(INPUT_SR, 0.5), INPUT_SR)
    state = torch.get_rng_state()
    codec.decode(tokens)
    assert torch.equal(state, torch.get_rng_state())


# ---- pure flatten / regroup functions ------------------------------------------------------------------
def test_snac_flatten_order_and_round_trip() -> None:
    k = 4096
    l0, l1, l2 = torch.tensor([1, 2]), torch.tensor([10, 11, 12, 13]), torch.tensor([20, 21, 22, 23, 24, 25, 26, 27])
    flat = snac_flatten([l0, l1, l2], k)
    frame0 = [1, 10 + k, 20 + 2 * k, 21 + 3 * k, 11 + 4 * k, 22 + 5 * k, 23 + 6 * k]
    assert flat[:7].tolist() == frame0 and flat.numel() == 14
    g = torch.Generator().manual_seed(0)
    codes = [torch.randint(0, k, (n,), generator=g) for n in (5, 10, 20)]
    back = snac_unflatten(snac_flatten(codes, k), k)
    assert all(torch.equal(a, b) for a, b in zip(codes, back, strict=True))
    partial = snac_unflatten(torch.cat([flat, flat[:3]]), k)  # a trailing partial frame is dropped
    assert [c.tolist() for c in partial] == [l0.tolist(), l1.tolist(), l2.tolist()]
    wrong = flat.clone()
    wrong[1] = 10  # position 1 holding an id of position 0's block: read modulo K
    assert snac_unflatten(wrong, k)[1][0] == 10
    with pytest.raises(ValueError):
        snac_flatten([l0, l1, l2[:-1]], k)


def test_dac_flatten_order_and_round_trip() -> None:
    k = 16
    codes = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])  # [n=3, T=3]
    flat = dac_flatten(codes, k)
    assert flat.tolist() == [1, 4 + k, 7 + 2 * k, 2, 5 + k, 8 + 2 * k, 3, 6 + k, 9 + 2 * k]
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, k, (2, 11), generator=g)
    assert torch.equal(dac_unflatten(dac_flatten(rand, k), 2, k), rand)
    assert torch.equal(dac_unflatten(torch.cat([flat, flat[:2]]), 3, k), codes)  # partial frame dropped
    assert dac_unflatten(torch.tensor([3 + 2 * k, 3]), 2, k).tolist() == [[3], [3]]  # wrong block: modulo K


# ---- missing or wrong files: one-line ModelError naming the path ----------------------------------------
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_missing_path(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope" / ("weights.pth" if kind == "dac" else "snapshot")
    with pytest.raises(ModelError) as err:
        load_codec(kind, str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "nothing is downloaded" in msg


def test_snac_missing_weights_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError) as err:
        load_codec("snac", str(tmp_path))
    assert "\n" not in str(err.value) and str(tmp_path / "pytorch_model.bin") in str(err.value)


def test_xcodec2_missing_files(tmp_path: Path) -> None:
    snap = tmp_path / "xcodec2"
    snap.mkdir()
    (snap / "config.json").write_text("{}")
    with pytest.raises(ModelError) as err:
        load_codec("xcodec2", str(snap))
    assert str(snap / "model.safetensors") in str(err.value)
    (snap / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError) as err:
        load_codec("xcodec2", str(snap))
    msg = str(err.value)
    assert "\n" not in msg and str(snap / "w2v-bert-2.0") in msg and "codec.semantic_path" in msg
    (tmp_path / "w2v-bert-2.0").mkdir()  # next to the snapshot, but incomplete
    (tmp_path / "w2v-bert-2.0" / "config.json").write_text("{}")
    with pytest.raises(ModelError) as err:
        load_codec("xcodec2", str(snap))
    assert str(tmp_path / "w2v-bert-2.0" / "preprocessor_config.json") in str(err.value)


def test_wrong_weights(tmp_path: Path, written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    snac_dir = tmp_path / "snac"
    shutil.copytree(_path("snac", written, tmp_path_factory), snac_dir)
    torch.save({"encoder.bogus.weight": torch.zeros(3)}, snac_dir / "pytorch_model.bin")
    with pytest.raises(ModelError) as err:
        load_codec("snac", str(snac_dir))
    assert "\n" not in str(err.value) and "missing" in str(err.value) and str(snac_dir / "pytorch_model.bin") in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(2048))
    _require("dac")
    with pytest.raises(ModelError) as err:
        load_codec("dac", str(garbage))
    assert "\n" not in str(err.value) and str(garbage) in str(err.value)


# ---- options ---------------------------------------------------------------------------------------------
def test_xcodec2_semantic_path_and_semantic_weights_from_dir(tmp_path: Path, written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    from safetensors.torch import load_file, save_file

    src = _path("xcodec2", written, tmp_path_factory)
    ref = load_codec("xcodec2", str(src))
    wav = _audio(16000, 0.5)
    snap, sem = tmp_path / "snap" / "xcodec2", tmp_path / "elsewhere" / "w2v"
    shutil.copytree(src, snap)
    shutil.copytree(src.parent / "w2v-bert-2.0", sem)
    with pytest.raises(ModelError):  # not found by the default rule any more
        load_codec("xcodec2", str(snap))
    moved = codec_from_config(CodecConfig(kind="xcodec2", path=str(snap), semantic_path=str(sem)))
    assert moved.id.split(":")[2] == ref.id.split(":")[2]
    assert torch.equal(moved.encode(wav, 16000), ref.encode(wav, 16000))
    # a checkpoint without the semantic encoder takes its weights from the w2v-bert-2.0 folder
    state = load_file(str(snap / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith("semantic_model.")}, str(snap / "model.safetensors"))
    split = load_codec("xcodec2", str(snap), semantic_path=str(sem))
    assert split.id != ref.id and torch.equal(split.encode(wav, 16000), ref.encode(wav, 16000))
    (sem / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="semantic_model"):
        load_codec("xcodec2", str(snap), semantic_path=str(sem))


def test_xcodec2_config_checked(tmp_path: Path, written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    src = _path("xcodec2", written, tmp_path_factory)
    snap = tmp_path / "xcodec2"
    shutil.copytree(src, snap)
    shutil.copytree(src.parent / "w2v-bert-2.0", tmp_path / "w2v-bert-2.0")
    cfg = json.loads((snap / "config.json").read_text())
    (snap / "config.json").write_text(json.dumps({**cfg, "codec_decoder_hidden_size": 64}))
    with pytest.raises(ModelError) as err:  # weights of another shape
        load_codec("xcodec2", str(snap))
    assert "\n" not in str(err.value) and "shape" in str(err.value)
    (snap / "config.json").write_text(json.dumps({**cfg, "semantic_hidden_size": 32}))
    with pytest.raises(ModelError, match="hidden_size"):
        load_codec("xcodec2", str(snap))


def test_dac_n_codebooks(written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    path = _path("dac", written, tmp_path_factory)
    both = load_codec("dac", str(path))
    one = codec_from_config(CodecConfig(kind="dac", path=str(path), n_codebooks=1))
    assert one.vocab_size == 1024 and one.frame_rate == 75.0 and one.id != both.id
    wav = _audio(24000, 0.5)
    assert torch.equal(one.encode(wav, 24000), both.encode(wav, 24000)[0::2])  # the first codebook's ids
    assert one.decode(one.encode(wav, 24000))[0].size == both.decode(both.encode(wav, 24000))[0].size
    with pytest.raises(ConfigError, match="1..2"):
        load_codec("dac", str(path), n_codebooks=3)


def test_codec_config_options() -> None:
    assert CodecConfig(kind="snac", path="x").n_codebooks is None
    with pytest.raises(ValidationError, match="semantic_path"):
        CodecConfig(kind="snac", path="x", semantic_path="w2v")
    with pytest.raises(ValidationError, match="n_codebooks"):
        CodecConfig(kind="xcodec2", path="x", n_codebooks=2)
    with pytest.raises(ConfigError, match="xcodec2, snac, dac"):
        load_codec("mimi", "x")


def test_w2v_bert_cut_at_layer_16_is_exact() -> None:
    """XCodec2 builds only 16 of w2v-bert-2.0's 24 layers: hidden_states[16] must not change."""
    from transformers import Wav2Vec2BertConfig, Wav2Vec2BertModel

    torch.manual_seed(0)
    cfg = Wav2Vec2BertConfig(hidden_size=16, num_hidden_layers=18, num_attention_heads=2, intermediate_size=32, conv_depthwise_kernel_size=3)
    full = Wav2Vec2BertModel(cfg).eval()
    cut = Wav2Vec2BertModel(Wav2Vec2BertConfig(**{**cfg.to_dict(), "num_hidden_layers": 16})).eval()
    cut.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith(("encoder.layers.16.", "encoder.layers.17."))})
    x = torch.randn(1, 30, cfg.feature_projection_input_dim)
    with torch.no_grad():
        a = full(x, output_hidden_states=True).hidden_states[16]
        b = cut(x, output_hidden_states=True).hidden_states[16]
    assert torch.allclose(a, b, atol=1e-6)


def test_old_weight_norm_names_load(tmp_path: Path, written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Checkpoints saved with torch.nn.utils.weight_norm (weight_g / weight_v) load into the parametrized modules."""
    src = _path("snac", written, tmp_path_factory)
    ref = load_codec("snac", str(src))
    old = tmp_path / "snac"
    shutil.copytree(src, old)
    state = torch.load(old / "pytorch_model.bin", weights_only=True)
    names = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}
    renamed = {next((k.replace(a, b) for a, b in names.items() if k.endswith(a)), k): v for k, v in state.items()}
    assert sum(k.endswith(".weight_g") for k in renamed) > 10
    torch.save(renamed, old / "pytorch_model.bin")
    wav = _audio(24000, 0.5)
    assert torch.equal(load_codec("snac", str(old)).encode(wav, 24000), ref.encode(wav, 24000))


def test_xcodec2_uses_16_of_24_semantic_layers(tmp_path: Path, written: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    """Like the real snapshot: a 24-layer w2v-bert-2.0 config and its later layers' weights in the checkpoint."""
    from safetensors.torch import load_file, save_file

    src = _path("xcodec2", written, tmp_path_factory)
    snap, sem = tmp_path / "xcodec2", tmp_path / "w2v-bert-2.0"
    shutil.copytree(src, snap)
    shutil.copytree(src.parent / "w2v-bert-2.0", sem)
    cfg = json.loads((sem / "config.json").read_text())
    (sem / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 24}))
    state = load_file(str(snap / "model.safetensors"))
    later = {k.replace(".layers.15.", f".layers.{i}."): v.clone() for k, v in state.items() if ".encoder.layers.15." in k for i in range(16, 24)}
    save_file({**state, **later}, str(snap / "model.safetensors"))
    wav = _audio(16000, 0.5)
    assert torch.equal(load_codec("xcodec2", str(snap)).encode(wav, 16000), load_codec("xcodec2", str(src)).encode(wav, 16000))
