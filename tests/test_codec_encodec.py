"""EncodecCodec on a random-weight EnCodec 24 kHz saved to a local file (nothing is downloaded)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("encodec")

from specbench.audio import resample  # noqa: E402
from specbench.codec import load_codec  # noqa: E402
from specbench.codec.base import SpeechCodec  # noqa: E402
from specbench.errors import ConfigError, DependencyError, ModelError  # noqa: E402


def _test_audio(sr: int, seconds: float = 1.0) -> np.ndarray:
    """A chirp plus a little noise: varied enough to give more than one token."""
    t = np.arange(int(sr * seconds)) / sr
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.3 * np.sin(2 * np.pi * 220 * t * (1 + t)) + 0.05 * noise).astype(np.float32)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """State dict of a seeded random EnCodec 24 kHz with a usable first codebook.

    With ``pretrained=False`` the codebooks are all zeros (EnCodec initialises them by k-means on the
    first training batch), so every frame would map to id 0. Mimic that init: fill the first codebook
    with encoder outputs of random audio plus a little noise.
    """
    from encodec import EncodecModel

    torch.manual_seed(0)
    with warnings.catch_warnings():  # encodec uses the deprecated torch.nn.utils.weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 48000, generator=gen) * torch.linspace(0.01, 1.0, 48000)
    with torch.no_grad():
        frames = model.encoder(x)[0].T  # [150, 128]
        book = model.quantizer.vq.layers[0]._codebook
        pick = torch.randint(0, frames.shape[0], (book.codebook_size,), generator=gen)
        book.embed.copy_(frames[pick] + 1e-3 * torch.randn(book.embed.shape, generator=gen))
        book.embed_avg.copy_(book.embed)
        book.inited.fill_(1.0)
    path = tmp_path_factory.mktemp("encodec") / "encodec_24khz-d7cc33bc.th"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def codec(weights: Path):
    return load_codec("encodec", str(weights), bandwidth=1.5)


def test_attributes(codec) -> None:
    assert isinstance(codec, SpeechCodec)
    assert codec.sample_rate == 24000
    assert codec.frame_rate == 75.0
    assert codec.vocab_size == 1024
    assert codec.id.startswith("encodec-24khz-") and codec.id.endswith("-bw1.5")


def test_encode_shape_range_and_determinism(codec) -> None:
    wav = _test_audio(24000)
    tokens = codec.encode(wav, 24000)
    assert tokens.dtype == torch.long and tokens.dim() == 1
    assert tokens.shape[0] == 75  # 75 tokens per second at 24 kHz
    assert 0 <= int(tokens.min()) and int(tokens.max()) < codec.vocab_size
    assert tokens.unique().numel() > 1
    assert torch.equal(tokens, codec.encode(wav, 24000))


def test_encode_any_length(codec) -> None:
    for n in (0, 1, 321, 24000 + 7):
        tokens = codec.encode(_test_audio(24000, 2.0)[:n], 24000)
        assert tokens.shape == (-(-n // 320),)


def test_decode_length_dtype(codec) -> None:
    tokens = codec.encode(_test_audio(24000), 24000)
    wav, sr = codec.decode(tokens)
    assert sr == 24000
    assert wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == tokens.shape[0] * 320
    assert np.isfinite(wav).all()
    empty, _ = codec.decode(torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)


def test_decode_rejects_out_of_range(codec) -> None:
    with pytest.raises(ModelError, match="1024"):
        codec.decode(torch.tensor([0, 1024]))
    with pytest.raises(ModelError):
        codec.decode(torch.tensor([-1, 3]))


def test_resamples_16k_input(codec) -> None:
    wav16 = _test_audio(16000)
    tokens = codec.encode(wav16, 16000)
    assert tokens.shape[0] == 75
    assert torch.equal(tokens, codec.encode(resample(wav16, 16000, 24000), 24000))


def test_bandwidth_changes_id_not_first_codebook(weights: Path, codec) -> None:
    other = load_codec("encodec", str(weights), bandwidth=6.0)
    assert other.id != codec.id and other.id.endswith("-bw6")
    wav = _test_audio(24000, 0.5)
    assert torch.equal(other.encode(wav, 24000), codec.encode(wav, 24000))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "encodec_24khz-d7cc33bc.th"
    with pytest.raises(ModelError) as err:
        load_codec("encodec", str(path))
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "encodec_24khz-d7cc33bc.th" in msg and "downloaded" in msg


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.th"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(ModelError) as err:
        load_codec("encodec", str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [
        {"encoder.bogus.weight": torch.zeros(3)},  # keys do not match the architecture
        [torch.zeros(3)],  # not a dict at all
        {"kind": "kmeans-mel"},  # a dict, but not of tensors
    ],
)
def test_wrong_content(tmp_path: Path, content: object) -> None:
    path = tmp_path / "wrong.th"
    torch.save(content, path)
    with pytest.raises(ModelError) as err:
        load_codec("encodec", str(path))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_shape_mismatch(tmp_path: Path, weights: Path) -> None:
    state = torch.load(weights, map_location="cpu", weights_only=True)
    key = next(k for k, v in state.items() if v.dim() > 1)
    state[key] = torch.zeros(2, 2)
    path = tmp_path / "mismatch.th"
    torch.save(state, path)
    with pytest.raises(ModelError) as err:
        load_codec("encodec", str(path))
    assert "\n" not in str(err.value)


def test_bad_bandwidth(weights: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_codec("encodec", str(weights), bandwidth=2.0)
    msg = str(err.value)
    assert "\n" not in msg and "1.5, 3, 6, 12, 24" in msg


def test_missing_package(weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "encodec", None)  # makes `import encodec` raise ImportError
    with pytest.raises(DependencyError, match="pip install encodec"):
        load_codec("encodec", str(weights))


def test_token_vectors_are_the_first_codebook(codec) -> None:
    """One 128-d vector per first-codebook token (used by history_noise to find near tokens)."""
    vec = codec.token_vectors()
    assert vec.shape == (codec.vocab_size, 128) and vec.dtype == torch.float32
    assert torch.isfinite(vec).all()
