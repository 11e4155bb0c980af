"""Shared fixtures: a tiny corpus, codec and model built once per session (CPU, ~30 s)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synthetic corpus (24 train / 4 dev / 8 test utts), a K=32 codec and a 2-layer model (3 steps)."""
    from specbench.codec.fit import fit_codec
    from specbench.config import TrainCodecConfig, TrainTargetConfig
    from specbench.data.synthetic import prepare_synthetic
    from specbench.models.train import train_target

    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus"
    prepare_synthetic(corpus, n_train=24, n_dev=4, n_test_per_speaker=2, workers=1)
    codec_path = root / "codec.pt"
    # 50 tokens/s (the schema's default is the shipped 25 Hz codec): the tiny fixtures keep their frame counts
    fit_codec(TrainCodecConfig(manifest=str(corpus / "train.jsonl"), out=str(codec_path), codebook_size=32, frames_per_token=1, max_utterances=24, iters=5))
    tc = TrainTargetConfig(
        preset="tiny",
        train_manifest=str(corpus / "train.jsonl"),
        dev_manifest=str(corpus / "dev.jsonl"),
        codec={"kind": "kmeans-mel", "path": str(codec_path)},
        out_dir=str(root / "train"),
        steps=3,
        batch_tokens=3000,
        warmup_steps=1,
        eval_every=3,
        save_every=3,
        precision="fp32",
        device="cpu",
    )
    model_path = train_target(tc, log=lambda *_: None)
    return {"root": root, "corpus": corpus, "codec": codec_path, "model": model_path, "train_config": tc}


def tiny_recipe(assets: dict[str, Any], out: Path, **overrides: Any) -> dict[str, Any]:
    """A recipe mapping over the tiny assets (2 test utterances, short generations, scoring on)."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "device": "cpu",
        "output_dir": str(out),
        "warmup": 0,
        "corpus": {"kind": "synthetic", "root": str(assets["corpus"]), "subset": "test", "limit": 2},
        "codec": {"kind": "kmeans-mel", "path": str(assets["codec"])},
        "model": {"checkpoint": str(assets["model"])},
        "sampling": {"temperature": 0.0, "max_tokens": 30},
        "decoders": [{"name": "baseline", "method": "baseline"}],
    }
    recipe.update(overrides)
    return recipe
