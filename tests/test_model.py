"""Codec LM: cached decoding equals full-sequence passes; crop/keep roll back exactly; checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specbench.errors import ModelError
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.models.lm_io import export_model, load_lm


def _model(seed: int = 0) -> CodecLM:
    torch.manual_seed(seed)
    return CodecLM(ModelConfig(speech_vocab=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=128)).eval()


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(2, 90, (7,), generator=g)
    prompt = torch.randint(0, 40, (5,), generator=g)
    cont = torch.randint(0, 40, (6,), generator=g)
    return text, prompt, cont


def _full_logits(model: CodecLM, text: torch.Tensor, speech: torch.Tensor) -> torch.Tensor:
    ids, pos = model.embed_sequence(text, speech)
    logits, _ = model.forward_train(ids[None], pos[None])
    return logits[0]


@torch.no_grad()
def test_cached_step_by_step_equals_full_pass() -> None:
    model = _model()
    text, prompt, cont = _inputs()
    full = _full_logits(model, text, torch.cat([prompt, cont]))
    last, _, cache = model.prefill(text, prompt)
    torch.testing.assert_close(last, full[text.numel() + prompt.numel()], rtol=1e-4, atol=1e-5)
    for i, tok in enumerate(cont):
        logits, _ = model(tok.view(1), cache)
        torch.testing.assert_close(logits[0], full[text.numel() + prompt.numel() + 1 + i], rtol=1e-4, atol=1e-5)
    assert cache.length == text.numel() + 1 + prompt.numel() + cont.numel()


@torch.no_grad()
def test_block_forward_equals_single_steps() -> None:
    """One forward over n new tokens (the verify step) gives the logits of n single steps."""
    model = _model()
    text, prompt, cont = _inputs()
    _, _, cache_a = model.prefill(text, prompt)
    block, _ = model(cont, cache_a)
    _, _, cache_b = model.prefill(text, prompt)
    singles = torch.stack([model(t.view(1), cache_b)[0][0] for t in cont])
    torch.testing.assert_close(block, singles, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_crop_rolls_back_to_rerun_prefix() -> None:
    model = _model()
    text, prompt, cont = _inputs()
    _, _, cache = model.prefill(text, prompt)
    model(cont, cache)
    keep = 2
    cache.crop(cache.length - cont.numel() + keep)
    _, _, ref = model.prefill(text, prompt)
    model(cont[:keep], ref)
    assert cache.length == ref.length
    n = ref.length
    torch.testing.assert_close(cache.k[:, :, :n], ref.k[:, :, :n])
    torch.testing.assert_close(cache.v[:, :, :n], ref.v[:, :, :n])
    nxt = torch.tensor([3])
    torch.testing.assert_close(model(nxt, cache)[0], model(nxt, ref)[0], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_tree_mask_and_keep_commit_a_path() -> None:
    """Two branches in one forward with a tree mask; keeping one branch equals running it alone."""
    model = _model()
    text, prompt, _ = _inputs()
    # nodes: 0=a, 1=b (child of a), 2=c (child of a); positions = depth after the prefix
    tokens = torch.tensor([5, 9, 11])
    mask = torch.tensor([[1, 0, 0], [1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    _, _, cache = model.prefill(text, prompt)
    base = cache.length
    pos = cache.speech_len + torch.tensor([0, 1, 1])
    tree_logits, _ = model(tokens, cache, positions=pos, tree_mask=mask)
    _, _, ref = model.prefill(text, prompt)
    chain_logits, _ = model(torch.tensor([5, 11]), ref)
    torch.testing.assert_close(tree_logits[[0, 2]], chain_logits, rtol=1e-4, atol=1e-5)
    cache.keep(torch.cat([torch.arange(base), torch.tensor([base, base + 2])]))
    assert cache.length == ref.length
    torch.testing.assert_close(cache.k[:, :, : ref.length], ref.k[:, :, : ref.length])
    torch.testing.assert_close(model(torch.tensor([7]), cache)[0], model(torch.tensor([7]), ref)[0], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_cache_grows_beyond_capacity() -> None:
    model = _model()
    text, prompt, cont = _inputs()
    _, _, cache = model.prefill(text, prompt, capacity=1)
    for tok in cont:
        model(tok.view(1), cache)
    assert cache.capacity >= cache.length == text.numel() + 1 + prompt.numel() + cont.numel()


def test_export_and_load_roundtrip(tmp_path) -> None:
    model = _model()
    path = tmp_path / "m.pt"
    export_model(model, path, codec_id="c", meta={"role": "target"}, half=False)
    loaded, obj = load_lm(path)
    assert obj["codec_id"] == "c"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_load_rejects_wrong_kind_and_missing(tmp_path) -> None:
    torch.save({"kind": "kmeans-mel", "centroids": torch.zeros(2, 2)}, tmp_path / "codec.pt")
    with pytest.raises(ModelError, match="kmeans-mel"):
        load_lm(tmp_path / "codec.pt")
    with pytest.raises(ModelError, match="not found"):
        load_lm(tmp_path / "nope.pt")


def test_shipped_codec_and_model_agree() -> None:
    """The shipped model was trained on the shipped codec (ids match)."""
    from specbench.assets import resolve_path
    from specbench.codec import load_codec

    if not resolve_path("builtin:target-small").is_file():
        pytest.skip("shipped model not built yet (make assets)")
    codec = load_codec("kmeans-mel", "builtin:kmeans-mel-1024")
    model, obj = load_lm("builtin:target-small")
    assert obj["codec_id"] == codec.id
    assert model.cfg.speech_vocab == codec.vocab_size


def test_release_host_memory_trims_the_glibc_heap() -> None:
    """Training calls it every few steps on CPU: on glibc Linux it must resolve malloc_trim and run."""
    import sys

    from specbench.device import _libc_malloc_trim, release_host_memory

    if sys.platform.startswith("linux"):
        assert _libc_malloc_trim() is not None
    chunks = [bytearray(64 * 1024) for _ in range(2000)]  # ~128 MB of small heap blocks, then freed
    del chunks
    release_host_memory()  # no return value; must not raise (a no-op where there is no glibc)


def _changes_in_target_history(changed: torch.Tensor, exs: list, prompt_len: int) -> tuple[int, int]:
    """Asserts nothing outside the target-history inputs changed; returns (changed, total) target slots."""
    hits = slots = 0
    for b, ex in enumerate(exs):
        start = len(ex.text) + 1 + prompt_len  # first target input slot
        allowed = torch.zeros(changed.shape[1], dtype=torch.bool)
        allowed[start : start + len(ex.codes)] = True
        assert not bool(changed[b][~allowed].any())  # text, SEP, prompt and padding untouched
        hits, slots = hits + int(changed[b][allowed].sum()), slots + int(allowed.sum())
    return hits, slots


def test_mix_own_samples_touches_only_the_target_history() -> None:
    """Scheduled sampling replaces inputs of the target segment only, with speech ids, at about ``rate``."""
    from specbench.models.train import Example, build_sequence, collate, mix_own_samples

    torch.manual_seed(0)
    cfg = ModelConfig(speech_vocab=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=256)
    model = CodecLM(cfg).eval()
    gen = np.random.default_rng(0)
    exs = [Example(f"u{i}", gen.integers(2, 20, 12), gen.integers(0, 40, 200 + 10 * i), "s") for i in range(3)]
    seqs = [build_sequence(ex, gen.integers(0, 40, 8), cfg) for ex in exs]
    batch = collate(seqs)
    ids, lab = batch.ids, batch.labels
    assert torch.equal(mix_own_samples(model, batch, 0.0, "fp32", torch.device("cpu"), torch.Generator().manual_seed(1)), ids)
    mixed = mix_own_samples(model, batch, 0.9, "fp32", torch.device("cpu"), torch.Generator().manual_seed(1))
    changed = mixed != ids
    hits, slots = _changes_in_target_history(changed, exs, prompt_len=8)
    # E[fraction] = rate x P(sample != true token) ~ 0.9 x (1 - 1/40) for a near-uniform untrained model
    assert abs(hits / slots - 0.9 * (1 - 1 / 40)) < 0.05
    new = mixed[changed]
    assert bool(((new >= cfg.speech_offset) & (new < cfg.speech_offset + cfg.speech_vocab)).all())
    assert torch.equal(lab, collate(seqs).labels)  # the labels stay the true tokens


def test_token_neighbours_are_the_nearest_other_tokens() -> None:
    from specbench.models.train import token_neighbours

    vec = torch.tensor([[0.0], [1.0], [3.0], [7.0], [8.0]])
    nb = token_neighbours(vec, 2)
    assert nb.tolist() == [[1, 2], [0, 2], [1, 0], [4, 2], [3, 2]]  # self excluded, nearest first
    with pytest.raises(ModelError, match="history_noise_neighbours must lie in"):
        token_neighbours(vec, 5)


def test_corrupt_history_swaps_target_history_for_neighbours() -> None:
    """History noise touches only target-history inputs, at about ``rate``, always with a listed neighbour."""
    from specbench.models.train import Example, build_sequence, collate, corrupt_history, token_neighbours

    cfg = ModelConfig(speech_vocab=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=256)
    rng = np.random.default_rng(0)
    exs = [Example(f"u{i}", rng.integers(2, 20, 12), rng.integers(0, 40, 200 + 10 * i), "s") for i in range(3)]
    seqs = [build_sequence(ex, rng.integers(0, 40, 8), cfg) for ex in exs]
    batch = collate(seqs)
    ids, lab = batch.ids, batch.labels
    nb = token_neighbours(torch.from_numpy(rng.normal(size=(40, 6))), 4)
    assert torch.equal(corrupt_history(ids, lab, 0.0, nb, cfg, torch.Generator().manual_seed(1)), ids)
    noisy = corrupt_history(ids, lab, 0.5, nb, cfg, torch.Generator().manual_seed(1))
    changed = noisy != ids
    hits, slots = _changes_in_target_history(changed, exs, prompt_len=8)
    for b, j in changed.nonzero().tolist():  # input j replaced the true token labels[j - 1]
        assert int(noisy[b, j]) - cfg.speech_offset in nb[int(lab[b, j - 1])].tolist()
    assert abs(hits / slots - 0.5) < 0.06  # 630 slots: sd 0.02
    assert torch.equal(lab, collate(seqs).labels)


def test_history_noise_and_scheduled_sampling_exclude_each_other() -> None:
    from pydantic import ValidationError

    from specbench.config import TrainTargetConfig

    with pytest.raises(ValidationError, match="set one of them to 0"):
        TrainTargetConfig(scheduled_sampling=0.2, history_noise=0.3)


def test_training_with_history_noise(tiny_assets, tmp_path) -> None:
    """A short run with history noise trains and records the setting in the checkpoint."""
    from specbench.models.lm_io import load_lm
    from specbench.models.train import train_target

    update = {"out_dir": str(tmp_path / "noise"), "steps": 2, "eval_every": 2, "save_every": 2}
    update |= {"history_noise": 0.5, "history_noise_neighbours": 4}
    tc = tiny_assets["train_config"].model_copy(update=update)
    path = train_target(tc, log=lambda *_: None)
    _, meta = load_lm(path)
    assert meta["meta"]["train"]["history_noise"] == 0.5
    assert meta["meta"]["history"][-1]["dev_loss"] > 0


def test_fine_tune_from_checkpoint_with_scheduled_sampling(tiny_assets, tmp_path) -> None:
    """init_checkpoint starts from given weights (same architecture), and scheduled sampling trains."""
    from specbench.models.lm_io import load_lm
    from specbench.models.train import train_target

    update = {"out_dir": str(tmp_path / "ft"), "steps": 2, "eval_every": 2, "save_every": 2, "preset": "small"}
    update |= {"init_checkpoint": str(tiny_assets["model"]), "scheduled_sampling": 0.3}
    tc = tiny_assets["train_config"].model_copy(update=update)
    path = train_target(tc, log=lambda *_: None)
    start, _ = load_lm(tiny_assets["model"])
    tuned, meta = load_lm(path)
    assert tuned.cfg == start.cfg  # the checkpoint's architecture, not the preset's
    assert meta["meta"]["init_checkpoint"] == str(tiny_assets["model"])
    assert not torch.equal(tuned.head.weight, start.head.weight)
    assert meta["meta"]["history"][-1]["dev_loss"] > 0


def test_draft_config_refuses_init_checkpoint() -> None:
    from pydantic import ValidationError

    from specbench.config import TrainDraftConfig

    with pytest.raises(ValidationError, match="init_checkpoint is for target training"):
        TrainDraftConfig(init_checkpoint="builtin:target-small")


def test_checkpoint_loader_refuses_non_archives_before_unpickling(tmp_path, monkeypatch) -> None:
    """Junk never reaches the unpickler (whose errors on random bytes are erratic), and a real file still loads."""
    import random

    from specbench.models import checkpoint

    good = tmp_path / "good.pt"
    checkpoint.save_atomic({"kind": "codec-lm"}, good)
    assert checkpoint.load_checkpoint(good, "codec-lm") == {"kind": "codec-lm"}
    junk = tmp_path / "junk.pt"
    junk.write_bytes(random.Random(1).randbytes(4096))

    def no_unpickling(*_a, **_k):
        raise AssertionError("torch.load reached on a non-archive")

    monkeypatch.setattr(checkpoint.torch, "load", no_unpickling)
    with pytest.raises(ModelError, match=r"cannot read checkpoint .*not a torch.save archive"):
        checkpoint.load_checkpoint(junk, "codec-lm")
