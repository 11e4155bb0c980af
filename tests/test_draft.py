"""Draft construction for SSD (layer subset of the target), freezing, and draft training end to end."""

from __future__ import annotations

import pytest
import torch

from specbench.config import RunConfig, TrainDraftConfig
from specbench.errors import ConfigError, ModelError
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.models.train import build_layer_draft, set_trainable


def _target() -> CodecLM:
    torch.manual_seed(0)
    return CodecLM(ModelConfig(speech_vocab=16, d_model=32, n_layers=4, n_heads=2, d_ff=64, max_text_len=32, max_speech_len=64))


def test_layer_draft_copies_the_chosen_layers() -> None:
    target = _target()
    draft = build_layer_draft(target, [0, 3])
    assert draft.cfg.n_layers == 2
    for a, b in zip(draft.blocks[1].parameters(), target.blocks[3].parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(draft.head.weight, target.head.weight) and torch.equal(draft.tok_emb.weight, target.tok_emb.weight)
    with pytest.raises(ModelError, match="do not exist"):
        build_layer_draft(target, [0, 9])


def test_set_trainable_freezes_everything_else() -> None:
    draft = build_layer_draft(_target(), [0, 3])
    n = set_trainable(draft, ["layers.0", "head"])
    trained = {name for name, p in draft.named_parameters() if p.requires_grad}
    assert trained and all(t.startswith(("blocks.0.", "head.")) for t in trained)
    assert n == sum(p.numel() for p in draft.blocks[0].parameters()) + sum(p.numel() for p in draft.head.parameters())


def test_draft_config_validation() -> None:
    with pytest.raises(Exception, match="trainable"):
        TrainDraftConfig(trainable=["decoder"])


def test_sweep_expands_decoders_and_rejects_bad_grids() -> None:
    from specbench.config import validate

    cfg = RunConfig(name="x", decoders=[{"name": "b"}, {"name": "s", "preset": "ssd", "draft": "d", "sweep": {"gamma": [1, 2], "beta": [0.0, 0.4]}}])
    assert [d.name for d in cfg.decoders] == ["b", "s_gamma1_beta0", "s_gamma1_beta0.4", "s_gamma2_beta0", "s_gamma2_beta0.4"]
    assert cfg.decoders[2].gamma == 1 and cfg.decoders[2].beta == 0.4
    with pytest.raises(ConfigError, match="sweep"):
        validate(RunConfig, {"name": "x", "decoders": [{"name": "s", "sweep": {"gama": [1]}}]}, "r")
    with pytest.raises(ConfigError, match="draft"):
        validate(RunConfig, {"name": "x", "decoders": [{"name": "s", "preset": "ssd"}]}, "r")


def test_train_draft_from_target_layers_leaves_frozen_parts_unchanged(tiny_assets, tmp_path) -> None:
    from specbench.models.lm_io import load_lm
    from specbench.models.train import train_lm

    tc = tiny_assets["train_config"]
    cfg = TrainDraftConfig(
        **{**tc.model_dump(), "out_dir": str(tmp_path / "draft"), "steps": 2, "eval_every": 2, "save_every": 2},
        init="target-layers",
        target=str(tiny_assets["model"]),
        layers=[1],
        trainable=["head"],
    )
    path = train_lm(cfg, log=lambda *_: None)
    draft, obj = load_lm(path)
    target, _ = load_lm(tiny_assets["model"])
    assert obj["meta"]["role"] == "draft" and obj["meta"]["layers"] == [1]
    assert draft.cfg.n_layers == 1
    for a, b in zip(draft.blocks[0].parameters(), target.blocks[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # frozen (fp16 export rounding only)
    assert not torch.allclose(draft.head.weight, target.head.weight)  # trained
