"""Medusa-style draft heads (VADUSA): initialisation, label shifting, checkpoints, training, CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from specbench.config import TrainHeadsConfig
from specbench.errors import ConfigError, ModelError, RunStateError
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.models.heads import DraftHeads, check_compatible, load_heads, save_heads
from specbench.models.train import IGNORE
from specbench.targets.builtin import as_target

QUIET = {"log": lambda *_: None}


def _target() -> CodecLM:
    torch.manual_seed(0)
    return CodecLM(ModelConfig(speech_vocab=16, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_text_len=32, max_speech_len=64))


def _heads_config(assets: dict[str, Any], out: Path, **kw: Any) -> TrainHeadsConfig:
    base = assets["train_config"].model_dump()
    base.update({"target": str(assets["model"]), "out_dir": str(out), "warmup_steps": 2, "lr": 3e-3, "batch_tokens": 1500})
    base.update(kw)
    return TrainHeadsConfig(**base)


# ---- module ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("autoregressive", [False, True])
def test_heads_start_equal_to_the_target_head(autoregressive: bool) -> None:
    target = _target()
    heads = DraftHeads.from_target(as_target(target), n_heads=3, n_layers=2, autoregressive=autoregressive)
    assert heads.cfg.vocab == 17 and heads.cfg.d_model == 32
    h = torch.randn(5, 32)
    emb = target.tok_emb.weight[target.cfg.speech_offset + torch.tensor([0, 3, 7, 16, 2])]  # 16 = EOS row
    prev = emb if autoregressive else None
    for k in range(3):
        out = heads.head_logits(h, k, prev)
        assert out.shape == (5, 17)
        torch.testing.assert_close(out, target.head(h), rtol=0, atol=0)
    full = heads(h.view(1, 5, 32), [emb.view(1, 5, 32)] * 3 if autoregressive else None)
    assert full.shape == (3, 1, 5, 17)
    torch.testing.assert_close(full, target.head(h).expand(3, 5, 17).view(3, 1, 5, 17))
    with pytest.raises(ValueError, match="prev_emb"):
        heads.head_logits(h, 0, None if autoregressive else emb)
    with pytest.raises(IndexError, match="0..2"):
        heads.head_logits(h, 3, prev)


def test_autoregressive_heads_use_the_previous_token_once_trained() -> None:
    target = _target()
    heads = DraftHeads.from_target(as_target(target), n_heads=2, autoregressive=True)
    torch.nn.init.normal_(heads.heads[1].prev.weight)
    h = torch.randn(1, 32).expand(2, 32)
    emb = target.tok_emb.weight[target.cfg.speech_offset + torch.tensor([1, 2])]
    out = heads.head_logits(h, 1, emb)
    assert not torch.allclose(out[0], out[1])  # same state, different previous token
    torch.testing.assert_close(heads.head_logits(h, 0, emb), target.head(h))  # head 0's A is still zero


def test_head_targets_shift_labels_per_head() -> None:
    from specbench.models.train_heads import head_targets

    i = IGNORE
    labels = torch.tensor([[i, 5, 6, 7, 16, i], [i, i, 1, 2, i, i]])  # 16 = EOS
    tgt, prev = head_targets(labels, 3)
    assert tgt[0].tolist() == [[i, 6, 7, 16, i, i], [i, i, 2, i, i, i]]
    assert prev[0][0, 1:4].tolist() == [5, 6, 7] and prev[0][1, 2] == 1
    assert tgt[1].tolist() == [[i, 7, 16, i, i, i], [i, i, i, i, i, i]]
    assert prev[1][0, 1:3].tolist() == [6, 7]
    assert tgt[2].tolist()[0] == [i, 16, i, i, i, i] and prev[2][0, 1] == 7


def test_save_load_round_trip_and_wrong_kinds(tmp_path: Path) -> None:
    from specbench.models.lm_io import export_model

    target = _target()
    heads = DraftHeads.from_target(as_target(target), n_heads=2, n_layers=1, autoregressive=True)
    torch.nn.init.normal_(heads.heads[0].blocks[0].weight, std=0.1)
    save_heads(heads, tmp_path / "h.pt", "some/target.pt", "codec-x", {"accuracy": [{"head": 0, "top1": 0.5}]})
    loaded, payload = load_heads(tmp_path / "h.pt")
    assert payload["kind"] == "heads" and payload["target"] == "some/target.pt" and payload["codec_id"] == "codec-x"
    assert payload["config"] == heads.cfg.to_dict() and payload["meta"]["accuracy"][0]["top1"] == 0.5
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values())  # fp16 on disk ...
    assert not loaded.training and loaded.heads[0].proj.weight.dtype == torch.float32  # ... fp32 in memory
    h, e = torch.randn(4, 32), torch.randn(4, 32)
    torch.testing.assert_close(loaded.head_logits(h, 0, e), heads.head_logits(h, 0, e), rtol=2e-3, atol=2e-3)
    check_compatible(loaded, as_target(target))
    with pytest.raises(ModelError, match="do not fit"):
        check_compatible(loaded, as_target(CodecLM(ModelConfig(speech_vocab=8, d_model=32, n_layers=1, n_heads=2, d_ff=64))))

    export_model(target, tmp_path / "lm.pt", "codec-x", {})
    with pytest.raises(ModelError, match="'codec-lm' file, expected a checkpoint of kind 'heads'") as err:
        load_heads(tmp_path / "lm.pt")
    assert "\n" not in str(err.value) and "specbench train heads" in str(err.value)
    bad = torch.load(tmp_path / "h.pt", weights_only=False)
    bad["config"]["n_layers"] = 3
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="does not match the DraftHeads architecture") as err:
        load_heads(tmp_path / "bad.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(ModelError, match="not found"):
        load_heads(tmp_path / "missing.pt")


def test_heads_config_validation() -> None:
    from specbench.config import validate

    with pytest.raises(ConfigError, match="n_heads"):
        validate(TrainHeadsConfig, {"n_heads": 17}, "x")
    with pytest.raises(ConfigError, match="mode"):
        validate(TrainHeadsConfig, {"mode": "thawed"}, "x")
    cfg = TrainHeadsConfig()
    assert (cfg.n_heads, cfg.decay, cfg.mode, cfg.steps, cfg.warmup_steps, cfg.top_k_eval) == (4, 0.8, "frozen", 600, 50, 5)


# ---- training (tiny assets) ---------------------------------------------------------------------------
def _fixed_batch_loss(heads: DraftHeads, target: CodecLM, assets: dict[str, Any]) -> float:
    """Heads loss (λ = 0.8) on the first 8 training utterances without prompts."""
    import numpy as np

    from specbench.codec import load_codec
    from specbench.models.train import build_sequence, collate, load_examples
    from specbench.models.train_heads import heads_on_batch, per_head_ce, weighted

    codec = load_codec("kmeans-mel", str(assets["codec"]))
    exs = load_examples(str(assets["corpus"] / "train.jsonl"), codec, target.cfg)[:8]
    batch = collate([build_sequence(ex, np.zeros(0, dtype=np.int64), target.cfg) for ex in exs], target.cfg)
    with torch.no_grad():
        _, hidden = target.forward_train(batch.ids, batch.pos, batch.cond)
        ce, _ = per_head_ce(*heads_on_batch(heads, hidden, batch.labels, target.tok_emb.weight, target.cfg.speech_offset))
    return float(weighted(ce, 0.8))


def test_frozen_training_lowers_the_heads_loss_and_keeps_the_backbone(tiny_assets, tmp_path, monkeypatch) -> None:
    import specbench.models.train_heads as th
    from specbench.jsonl import read_jsonl
    from specbench.models.lm_io import load_lm

    loaded: list[CodecLM] = []

    def spy(spec: Any, device: Any = "cpu") -> Any:
        model, obj = load_lm(spec, device)
        loaded.append(model)
        return model, obj

    monkeypatch.setattr(th, "load_lm", spy)
    out = tmp_path / "frozen"
    tc = _heads_config(tiny_assets, out, n_heads=3, steps=20, eval_every=10, save_every=10)
    path = th.train_heads(tc, **QUIET)
    assert path == out / "heads.pt" and not (out / "target.pt").exists()

    original, _ = load_lm(tiny_assets["model"])
    for (name, a), b in zip(loaded[0].state_dict().items(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"frozen backbone parameter {name} changed"

    heads, payload = load_heads(path)
    assert payload["target"] == str(tiny_assets["model"]) and payload["meta"]["mode"] == "frozen"
    acc = payload["meta"]["accuracy"]
    assert [a["head"] for a in acc] == [0, 1, 2] and all(0 <= a["top1"] <= a["top5"] <= 1 and a["n"] > 0 for a in acc)
    rows = list(read_jsonl(out / "history.jsonl"))
    assert [r["step"] for r in rows] == [0, 10, 20] and rows[-1]["accuracy"] == acc
    init = DraftHeads.from_target(as_target(original), n_heads=3)
    assert _fixed_batch_loss(heads, original, tiny_assets) < _fixed_batch_loss(init, original, tiny_assets) - 0.05

    # a second start refuses to overwrite; --resume continues from last.pt
    with pytest.raises(RunStateError, match="--resume"):
        th.train_heads(tc, **QUIET)
    th.train_heads(tc.model_copy(update={"steps": 24}), resume=True, **QUIET)
    rows = list(read_jsonl(out / "history.jsonl"))
    assert [r["step"] for r in rows] == [0, 10, 20, 24]
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 24
    with pytest.raises(ModelError, match="other heads settings"):
        th.train_heads(tc.model_copy(update={"steps": 30, "n_heads": 2}), resume=True, **QUIET)


def test_joint_training_updates_and_exports_the_backbone(tiny_assets, tmp_path) -> None:
    from specbench.models.lm_io import load_lm
    from specbench.models.train_heads import train_heads

    out = tmp_path / "joint"
    kw = {"mode": "joint", "n_heads": 2, "head_layers": 2, "autoregressive": True, "precision": "bf16", "eval_every": 4, "save_every": 4}
    train_heads(_heads_config(tiny_assets, out, steps=4, **kw), **QUIET)
    path = train_heads(_heads_config(tiny_assets, out, steps=5, **kw), resume=True, **QUIET)  # backbone state resumes too
    heads, payload = load_heads(path)
    assert payload["target"] == str(out / "target.pt") and payload["meta"]["base_target"] == str(tiny_assets["model"])
    assert heads.cfg.autoregressive and heads.cfg.n_layers == 2 and len(payload["meta"]["accuracy"]) == 2
    assert "dev_lm_loss" in payload["meta"]["history"][-1] and payload["meta"]["steps"] == 5
    tuned, obj = load_lm(payload["target"])
    original, _ = load_lm(tiny_assets["model"])
    assert obj["meta"]["init"] == "joint-heads"
    assert not torch.allclose(tuned.blocks[0].fc1.weight, original.blocks[0].fc1.weight)
    check_compatible(heads, as_target(tuned))
    assert heads.heads[1].prev.weight.abs().sum() > 0  # the autoregressive conditioning was trained


def test_cli_train_heads(tiny_assets, tmp_path) -> None:
    from specbench.cli import app

    cfg = _heads_config(tiny_assets, tmp_path / "cli", steps=2, eval_every=2, save_every=2, precision="bf16").model_dump()
    (tmp_path / "heads.yaml").write_text(yaml.safe_dump(cfg))
    runner = CliRunner()
    result = runner.invoke(app, ["train", "heads", "--config", str(tmp_path / "heads.yaml"), "--set", "n_heads=2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    _, payload = load_heads(tmp_path / "cli" / "heads.pt")
    assert payload["config"]["n_heads"] == 2 and "dev accuracy" in result.stdout

    bad = runner.invoke(app, ["train", "heads", "--config", str(tmp_path / "heads.yaml"), "--set", "headz=3"])
    assert bad.exit_code == 2
    err = bad.stderr.strip()
    assert err.startswith("error:") and "headz" in err and len(err.splitlines()) == 1
    again = runner.invoke(app, ["train", "heads", "--config", str(tmp_path / "heads.yaml")])
    assert again.exit_code == 2 and "--resume" in again.stderr
