"""The built-in log-mel k-means codec: fitting, encode/decode contract, files, the shipped codebook."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from specbench.codec import load_codec
from specbench.codec.base import SpeechCodec
from specbench.codec.kmeans_mel import KMeansMelCodec
from specbench.errors import ModelError

SR = 16000
K = 16


def _synthetic(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """Sum of a few sines with changing pitch plus noise, so log-mel frames actually vary."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wav = np.zeros_like(t)
    for _ in range(3):
        f0, depth, amp = rng.uniform(120, 900), rng.uniform(0, 200), rng.uniform(0.05, 0.2)
        wav += amp * np.sin(2 * np.pi * (f0 * t + depth * t * t))
    wav *= 0.5 + 0.5 * np.sin(2 * np.pi * 1.5 * t) ** 2  # slow amplitude envelope
    wav += 0.02 * rng.standard_normal(t.size)
    return wav.astype(np.float32)


@pytest.fixture(scope="module")
def corpus() -> list[np.ndarray]:
    return [_synthetic(1.5, seed) for seed in range(3)]


@pytest.fixture(scope="module")
def codec(corpus: list[np.ndarray]) -> KMeansMelCodec:
    return KMeansMelCodec.fit(corpus, SR, k=K, iters=8, seed=0)


def test_fit_is_deterministic(corpus: list[np.ndarray], codec: KMeansMelCodec) -> None:
    again = KMeansMelCodec.fit(corpus, SR, k=K, iters=8, seed=0)
    assert torch.equal(again.centroids, codec.centroids)
    assert again.id == codec.id
    other = KMeansMelCodec.fit(corpus, SR, k=K, iters=8, seed=1)
    assert not torch.equal(other.centroids, codec.centroids)


def test_attributes(codec: KMeansMelCodec) -> None:
    assert isinstance(codec, SpeechCodec)
    assert codec.vocab_size == K and codec.sample_rate == SR and codec.frame_rate == 50.0
    assert codec.centroids.shape == (K, 80)
    assert codec.id.startswith(f"kmeans-mel-{K}-")


def test_fit_needs_enough_frames() -> None:
    with pytest.raises(ModelError, match="at least 64 frames"):
        KMeansMelCodec.fit([_synthetic(0.2, 0)], SR, k=64, iters=2)


@pytest.mark.parametrize("n", [1, 100, 512, 513, 16000, 16000 + 321])
def test_encode_shape(codec: KMeansMelCodec, n: int) -> None:
    wav = _synthetic(2.0, 7)[:n]
    tokens = codec.encode(wav, SR)
    assert tokens.dtype == torch.long and tokens.dim() == 1
    assert tokens.shape[0] == 1 + n // 320  # 50 tokens per second at 16 kHz
    assert 0 <= int(tokens.min()) and int(tokens.max()) < K


def test_encode_deterministic_and_varied(codec: KMeansMelCodec) -> None:
    wav = _synthetic(1.0, 9)
    tokens = codec.encode(wav, SR)
    assert torch.equal(tokens, codec.encode(wav, SR))
    assert tokens.unique().numel() > 1


def test_encode_resamples(codec: KMeansMelCodec) -> None:
    wav24 = _synthetic(1.0, 11, sr=24000)
    assert codec.encode(wav24, 24000).shape[0] == 51


def test_decode_length_dtype(codec: KMeansMelCodec) -> None:
    tokens = codec.encode(_synthetic(1.0, 3), SR)
    wav, sr = codec.decode(tokens)
    assert sr == SR and wav.dtype == np.float32 and wav.ndim == 1
    assert wav.shape[0] == (tokens.shape[0] - 1) * 320
    assert np.isfinite(wav).all() and np.abs(wav).max() <= 0.99 + 1e-6
    again, _ = codec.decode(tokens)
    assert np.array_equal(wav, again)  # seeded Griffin-Lim phase


_DECODE_HASH = """
import hashlib, sys
import numpy as np
import torch
from specbench.codec.kmeans_mel import KMeansMelCodec
codec = KMeansMelCodec.load(sys.argv[1])
wav, _ = codec.decode(torch.from_numpy(np.load(sys.argv[2])))
print(hashlib.sha1(wav.tobytes()).hexdigest())
"""


def test_decode_is_bit_identical(codec: KMeansMelCodec, tmp_path: Path) -> None:
    """The same tokens give the same samples: twice in a row, from a freshly loaded codec, whatever the
    global RNG and thread count, and in a process whose MKL and torch kernels take other CPU code paths."""
    import hashlib
    import os
    import subprocess
    import sys

    tokens = codec.encode(_synthetic(1.0, 5), SR)
    wav, _ = codec.decode(tokens)
    torch.manual_seed(1234)  # decoding must not read the global RNG
    threads = torch.get_num_threads()
    torch.set_num_threads(2 if threads == 1 else 1)
    try:
        again, _ = codec.decode(tokens.clone())
    finally:
        torch.set_num_threads(threads)
    codec.save(tmp_path / "codec.pt")
    fresh, _ = KMeansMelCodec.load(tmp_path / "codec.pt").decode(tokens)
    assert wav.dtype == np.float32 and np.array_equal(wav, again) and np.array_equal(wav, fresh)
    # MKL_CBWR=COMPATIBLE (MKL's SSE2 code path) and ATEN_CPU_CAPABILITY=default (torch's unvectorised
    # kernels) stand in for another CPU; both changed waveforms before synthesis avoided BLAS and complex ops
    np.save(tmp_path / "tokens.npy", tokens.numpy())
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}
    out = subprocess.run(
        [sys.executable, "-c", _DECODE_HASH, str(tmp_path / "codec.pt"), str(tmp_path / "tokens.npy")], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == hashlib.sha1(wav.tobytes()).hexdigest()


def test_mel_pinv_is_the_pseudo_inverse() -> None:
    import librosa

    from specbench.codec.kmeans_mel import mel_pinv

    fb = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=80, fmax=8000.0)
    ours = mel_pinv(fb)
    assert ours.dtype == torch.float32 and ours.shape == (513, 80)
    exact = np.linalg.pinv(fb.astype(np.float64))
    assert np.abs(ours.numpy() - exact).max() < 1e-5 * np.abs(exact).max()  # float32 rounding of the exact inverse
    with pytest.raises(ModelError, match="rank-deficient"):
        mel_pinv(np.vstack([fb, np.zeros((1, fb.shape[1]), dtype=fb.dtype)]))


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_decode_very_short(codec: KMeansMelCodec, n: int) -> None:
    """A generation that stops after a token or two must still decode (regression test)."""
    wav, sr = codec.decode(torch.arange(n) % K)
    assert sr == SR and wav.dtype == np.float32 and wav.shape == (max(n - 1, 0) * 320,)


def test_encode_empty(codec: KMeansMelCodec) -> None:
    assert codec.encode(np.zeros(0, dtype=np.float32), SR).shape == (0,)


def test_decode_rejects_out_of_range(codec: KMeansMelCodec) -> None:
    with pytest.raises(ModelError, match=rf"\[0, {K}\)"):
        codec.decode(torch.tensor([0, K]))
    with pytest.raises(ModelError):
        codec.decode(torch.tensor([-1, 0]))


def test_save_load_roundtrip(codec: KMeansMelCodec, tmp_path: Path) -> None:
    path = tmp_path / "codec.pt"
    codec.save(path)
    loaded = load_codec("kmeans-mel", str(path))
    assert loaded.id == codec.id
    assert torch.equal(loaded.centroids, codec.centroids)
    wav = _synthetic(0.5, 5)
    assert torch.equal(loaded.encode(wav, SR), codec.encode(wav, SR))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        KMeansMelCodec.load(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"kind": "codec-lm", "state_dict": {}}, other)
    with pytest.raises(ModelError, match="'codec-lm' file") as err:
        KMeansMelCodec.load(other)
    assert "\n" not in str(err.value)
    plain = tmp_path / "plain.pt"
    torch.save([1, 2, 3], plain)
    with pytest.raises(ModelError, match="'list' file"):
        KMeansMelCodec.load(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(1024))
    with pytest.raises(ModelError, match="cannot read"):
        KMeansMelCodec.load(garbage)


def test_shipped_codec() -> None:
    codec = load_codec("kmeans-mel", "builtin:kmeans-mel-1024")
    assert codec.vocab_size == 1024 and codec.frame_rate == 50.0 and codec.sample_rate == SR
    tokens = codec.encode(_synthetic(0.5, 2), SR)
    assert tokens.shape == (26,) and int(tokens.max()) < 1024


def test_token_vectors_are_the_centroids(codec: KMeansMelCodec) -> None:
    """history_noise finds neighbours in this table: one 80-bin log-mel vector per token."""
    vec = codec.token_vectors()
    assert vec.shape == (codec.vocab_size, 80)
    assert torch.equal(vec, codec.centroids)


def test_smooth_frames_is_the_normalised_kernel() -> None:
    from specbench.codec.kmeans_mel import smooth_frames

    impulse = torch.zeros(7, 2)
    impulse[3] = 1.0
    out = smooth_frames(impulse, (1.0, 2.0, 1.0))
    assert torch.allclose(out[:, 0], torch.tensor([0, 0, 0.25, 0.5, 0.25, 0, 0])) and torch.equal(out[:, 0], out[:, 1])
    const = torch.full((5, 3), -2.5)
    assert torch.allclose(smooth_frames(const, (1.0, 4.0, 6.0, 4.0, 1.0)), const)  # edges repeat the end frames
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(smooth_frames(x, (3.0,)), x)
    edge = smooth_frames(x, (1.0, 2.0, 1.0))[0]
    assert torch.allclose(edge, 0.75 * x[0] + 0.25 * x[1])
    assert smooth_frames(x[:0], (1.0, 2.0, 1.0)).shape == (0, 4)


@pytest.mark.parametrize("kernel", [(1.0, 2.0), (1.0, -1.0, 1.0), (0.0, 0.0, 0.0)])
def test_smooth_frames_rejects_bad_kernels(kernel: tuple[float, ...]) -> None:
    from specbench.codec.kmeans_mel import smooth_frames

    with pytest.raises(ModelError, match="codec.synthesis_kernel") as err:
        smooth_frames(torch.zeros(4, 2), kernel)
    assert "\n" not in str(err.value)


def test_decode_smooths_centroids_before_griffin_lim(codec: KMeansMelCodec, tmp_path: Path) -> None:
    """Decoding = Griffin-Lim of the smoothed centroid sequence; the kernel changes audio, never tokens or the id."""
    from specbench.codec.kmeans_mel import smooth_frames

    codec.save(tmp_path / "codec.pt")
    plain = load_codec("kmeans-mel", str(tmp_path / "codec.pt"), synthesis_kernel=(1.0,))
    default = load_codec("kmeans-mel", str(tmp_path / "codec.pt"))
    assert default.synthesis_kernel == (1.0, 2.0, 1.0) and plain.id == default.id == codec.id
    assert plain.synthesis_id == "smooth[1]+griffin-lim48" and default.synthesis_id == "smooth[1-2-1]+griffin-lim48"
    tokens = codec.encode(_synthetic(1.0, 4), SR)
    assert len(set(tokens.tolist())) > 3
    wav_plain, _ = plain.decode(tokens)
    wav_default, _ = default.decode(tokens)
    assert not np.array_equal(wav_plain, wav_default)
    expected = codec.frontend.invert(smooth_frames(codec.centroids[tokens], (1.0, 2.0, 1.0))).numpy()
    expected = expected * min(1.0, 0.99 / float(np.abs(expected).max()))
    assert np.allclose(wav_default, expected, atol=1e-6)


def test_synthesis_kernel_config() -> None:
    from pydantic import ValidationError

    from specbench.codec import codec_from_config
    from specbench.config import CodecConfig

    assert codec_from_config(CodecConfig(synthesis_kernel=[1, 4, 1])).synthesis_kernel == (1.0, 4.0, 1.0)
    with pytest.raises(ValidationError, match="synthesis_kernel is for kind kmeans-mel"):
        CodecConfig(kind="encodec", path="x", synthesis_kernel=[1, 2, 1])
    with pytest.raises(ModelError, match="odd number"):
        codec_from_config(CodecConfig(synthesis_kernel=[1, 1]))


def test_stack_frames_round_trip() -> None:
    from specbench.codec.kmeans_mel import stack_frames, unstack_frames

    x = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)
    s = stack_frames(x, 2)
    assert s.shape == (3, 6)
    assert torch.equal(s[0], torch.cat([x[0], x[1]])) and torch.equal(s[2], torch.cat([x[4], x[4]]))  # last frame repeated
    assert torch.equal(unstack_frames(s, 2)[:5], x)
    assert torch.equal(stack_frames(x, 1), x) and stack_frames(x[:0], 2).shape[0] == 0


@pytest.fixture(scope="module")
def codec25(corpus: list[np.ndarray]) -> KMeansMelCodec:
    from specbench.codec.kmeans_mel import MelConfig

    return KMeansMelCodec.fit(corpus, SR, k=K, iters=8, seed=0, cfg=MelConfig(frames_per_token=2))


@pytest.mark.parametrize("n", [1, 320, 16000, 16000 + 321])
def test_stacked_codec_is_25_hz(codec25: KMeansMelCodec, n: int) -> None:
    """Two 20 ms frames per token: 25 tokens/s, ceil(frames / 2) tokens, 160-d centroids, 2 hops of audio per token."""
    assert codec25.frame_rate == 25.0 and codec25.centroids.shape == (K, 160)
    assert codec25.id.startswith(f"kmeans-mel-{K}x2-") and codec25.token_vectors().shape == (K, 160)
    tokens = codec25.encode(_synthetic(2.0, 7)[:n], SR)
    frames = 1 + n // 320
    assert tokens.shape[0] == (frames + 1) // 2
    wav, _ = codec25.decode(tokens)
    assert wav.shape[0] == (2 * tokens.shape[0] - 1) * 320


def test_stacked_codec_decodes_its_centroids_frame_by_frame(codec25: KMeansMelCodec, tmp_path: Path) -> None:
    """Decoding a stacked token = Griffin-Lim of its frames in order (smoothed at the 20 ms frame rate); the
    stack factor survives save/load, and a 50 Hz codec file (no stack field) still loads as 50 Hz."""
    from specbench.codec.kmeans_mel import smooth_frames

    codec25.save(tmp_path / "c25.pt")
    loaded = load_codec("kmeans-mel", str(tmp_path / "c25.pt"))
    assert loaded.id == codec25.id and loaded.frame_rate == 25.0
    tokens = codec25.encode(_synthetic(1.0, 4), SR)
    frames = codec25.centroids[tokens].reshape(-1, 80)
    expected = codec25.frontend.invert(smooth_frames(frames, (1.0, 2.0, 1.0))).numpy()
    expected = expected * min(1.0, 0.99 / float(np.abs(expected).max()))
    assert np.allclose(loaded.decode(tokens)[0], expected, atol=1e-6)
    assert load_codec("kmeans-mel", "builtin:kmeans-mel-1024").cfg.frames_per_token == 1


def test_shipped_25hz_codec() -> None:
    codec = load_codec("kmeans-mel", "builtin:kmeans-mel-25hz-4096")
    assert codec.vocab_size == 4096 and codec.frame_rate == 25.0 and codec.id.startswith("kmeans-mel-4096x2-")
    assert codec.encode(_synthetic(0.5, 2), SR).shape == (13,)
