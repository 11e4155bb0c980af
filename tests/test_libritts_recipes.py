"""The LibriTTS GPU recipes on CPU: recipes/libritts_*.yaml, configs/train/libritts-*.yaml and `make libritts`.

The chain is the one the Makefile prints (`make -n libritts`): prepare → concatenate the train manifests →
train target → train drafts → train heads (frozen, joint) → calibrate-tree → run. Its specbench commands
run in-process through Typer's CliRunner with tiny-size ``--set`` overrides appended (preset tiny, 2 steps,
2 utterances, a few tokens, no scoring), its other lines (``cat``) in a shell. Inputs: a tiny
LibriTTS-layout tree and a random-init EnCodec 24 kHz checkpoint, as in test_libritts / test_codec_encodec.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from specbench.cli import app
from specbench.config import TrainDraftConfig, TrainHeadsConfig, TrainTargetConfig, load_config, load_recipe

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted(REPO.glob("recipes/libritts_*.yaml"))
CONFIG_KINDS = {
    "libritts-target-base": TrainTargetConfig,
    "libritts-draft-ssd": TrainDraftConfig,
    "libritts-draft-scratch": TrainDraftConfig,
    "libritts-heads": TrainHeadsConfig,
    "libritts-heads-joint": TrainHeadsConfig,
}
RUNNER = CliRunner()
SR = 24000
# subset -> {speaker: chapter}; 3 utterances per speaker (train-clean-100 and -360 have disjoint speakers)
TREE = {
    "train-clean-100": {"19": "198", "26": "495"},
    "train-clean-360": {"14": "208"},
    "dev-clean": {"84": "121123"},
    "test-clean": {"61": "70968", "121": "121726"},
}
PHONEMES = ("D@ k'at s'at", "@ kw'Ik br'aUn f'0ks", "h@l'oU D'e@ fr'End")

# tiny sizes appended after the Makefile's own --set flags (later overrides win)
TRAIN_TINY = ["preset=tiny", "model={}", "steps=2", "batch_tokens=3000", "warmup_steps=1", "eval_every=2", "save_every=2", "precision=fp32", "prompt_frames=30"]
DRAFT_SSD_TINY = ["layers=[0,1]"]  # the base recipe picks 4 of 12 layers; tiny has 2
CALIBRATE_TINY = ["corpus.limit=2", "sampling.max_tokens=6"]
RUN_TINY = ["corpus.limit=2", "sampling.max_tokens=6", "warmup=0", "scoring.enabled=false"]


def make_libritts(root: Path) -> Path:
    """``root/<subset>/<spk>/<chapter>/<utt>.{wav,normalized.txt,phonemes.txt}``: short noisy chirps."""
    rng = np.random.default_rng(0)
    for subset, speakers in TREE.items():
        for spk, chapter in speakers.items():
            folder = root / subset / spk / chapter
            folder.mkdir(parents=True)
            for idx, ph in enumerate(PHONEMES, 1):
                stem = folder / f"{spk}_{chapter}_{idx:06d}_000000"
                t = np.arange(int(SR * (0.5 + 0.2 * idx))) / SR
                wav = 0.3 * np.sin(2 * np.pi * (150 + 40 * idx) * t * (1 + t)) + 0.05 * rng.standard_normal(t.size)
                sf.write(f"{stem}.wav", wav.astype(np.float32), SR, subtype="PCM_16")
                Path(f"{stem}.normalized.txt").write_text(f"Sentence {idx} of speaker {spk}.\n", encoding="utf-8")
                Path(f"{stem}.phonemes.txt").write_text(ph + "\n", encoding="utf-8")
    return root


def make_encodec_checkpoint(path: Path) -> Path:
    """State dict of a seeded random EnCodec 24 kHz whose first codebook holds encoder outputs.

    ``pretrained=False`` leaves the codebooks at zero (EnCodec fills them by k-means on the first batch),
    so every frame would be id 0; fill the first codebook from encoded random audio instead.
    """
    from encodec import EncodecModel

    torch.manual_seed(0)
    with warnings.catch_warnings():  # encodec uses the deprecated torch.nn.utils.weight_norm
        warnings.simplefilter("ignore", FutureWarning)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, 48000, generator=gen) * torch.linspace(0.01, 1.0, 48000)
    with torch.no_grad():
        frames = model.encoder(x)[0].T
        book = model.quantizer.vq.layers[0]._codebook
        pick = torch.randint(0, frames.shape[0], (book.codebook_size,), generator=gen)
        book.embed.copy_(frames[pick] + 1e-3 * torch.randn(book.embed.shape, generator=gen))
        book.embed_avg.copy_(book.embed)
        book.inited.fill_(1.0)
    torch.save(model.state_dict(), path)
    return path


def make(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``make -n -f REPO/Makefile ARGS`` in ``cwd`` (dry run: prints the commands it would run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "LIBRITTS", "ENCODEC", "DEVICE", "LIMIT")}
    return subprocess.run(
        ["make", "-n", "--no-print-directory", "-f", str(REPO / "Makefile"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make not installed")


# ---- the files as shipped -------------------------------------------------------------------------
def test_files_exist() -> None:
    assert {p.stem for p in RECIPES} == {"libritts_calibrate", "libritts_test", "libritts_joint"}
    assert {p.stem for p in REPO.glob("configs/train/libritts-*.yaml")} == set(CONFIG_KINDS)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_validates(recipe: Path) -> None:
    cfg = load_recipe(recipe)
    assert cfg.codec.kind == "encodec" and cfg.corpus.kind == "manifest"
    assert cfg.corpus.manifest == ("data/libritts/dev-clean.jsonl" if recipe.stem == "libritts_calibrate" else "data/libritts/test-clean.jsonl")


def test_recipes_use_the_trained_models() -> None:
    """Every checkpoint a recipe names is one a training config writes; codec settings all agree."""
    cfgs = {name: load_config(kind, REPO / "configs/train" / f"{name}.yaml") for name, kind in CONFIG_KINDS.items()}
    target = f"{cfgs['libritts-target-base'].out_dir}/model.pt"
    joint_target = f"{cfgs['libritts-heads-joint'].out_dir}/target.pt"
    drafts = {f"{cfgs[n].out_dir}/model.pt" for n in ("libritts-draft-ssd", "libritts-draft-scratch")}
    heads_of = {f"{cfgs['libritts-heads'].out_dir}/heads.pt": target, f"{cfgs['libritts-heads-joint'].out_dir}/heads.pt": joint_target}
    for name, c in cfgs.items():
        assert c.out_dir.startswith("runs/libritts/") and c.codec.kind == "encodec" and c.codec.bandwidth == 6.0, name
        assert (c.train_manifest, c.dev_manifest) == ("data/libritts/train.jsonl", "data/libritts/dev-clean.jsonl"), name
        if name != "libritts-target-base":
            assert c.target == target, name
    assert cfgs["libritts-target-base"].preset == "base"
    assert cfgs["libritts-draft-ssd"].init == "target-layers" and cfgs["libritts-draft-scratch"].init == "scratch"
    assert (cfgs["libritts-heads"].mode, cfgs["libritts-heads-joint"].mode) == ("frozen", "joint")
    used = set()
    for recipe in RECIPES:
        cfg = load_recipe(recipe)
        assert cfg.codec.bandwidth == 6.0 and cfg.model.checkpoint in (target, joint_target), recipe.stem
        for d in cfg.decoders:
            if d.draft:
                assert d.draft in drafts and cfg.model.checkpoint == target, (recipe.stem, d.name)
                used.add(d.draft)
            if d.heads:
                assert heads_of.get(d.heads) == cfg.model.checkpoint, (recipe.stem, d.name)  # heads belong to the run's target
                used.add(d.heads)
            if d.tree:
                assert d.tree.startswith("runs/libritts/trees/vadusa-"), (recipe.stem, d.name)
    assert used == drafts | set(heads_of)
    presets = {d.preset for r in RECIPES for d in load_recipe(r).decoders}
    assert {"baseline", "sd", "ssd", "vadusa", "pcg"} <= presets


@needs_make
def test_make_refuses_missing_paths(tmp_path: Path) -> None:
    """Unset or missing LIBRITTS / ENCODEC: one line, before anything runs."""
    (tmp_path / "LibriTTS").mkdir()
    (tmp_path / "enc.th").write_bytes(b"")
    cases = [
        (["libritts", "LIBRITTS=", "ENCODEC=enc.th"], "LIBRITTS is not set"),
        (["libritts", "LIBRITTS=nope", "ENCODEC=enc.th"], "LIBRITTS=nope is not a folder"),
        (["libritts", "LIBRITTS=LibriTTS", "ENCODEC="], "ENCODEC is not set"),
        (["libritts-run", "ENCODEC=nope.th"], "EnCodec weights not found: ENCODEC=nope.th"),
        (["libritts-run", "ENCODEC=enc.th"], "LIBRITTS is not set"),  # the manifests do not exist yet
    ]
    for args, message in cases:
        res = make(tmp_path, *args)
        assert res.returncode != 0 and not res.stdout.strip(), args
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (args, res.stderr)
    assert make(tmp_path, "libritts-data", "LIBRITTS=LibriTTS", "ENCODEC=").returncode == 0  # manifests need no codec


# ---- the whole chain, tiny, on CPU ----------------------------------------------------------------
def run_line(line: str, cwd: Path) -> str:
    """Run one command printed by `make -n`: specbench in-process (tiny overrides added), else a shell."""
    argv = shlex.split(line)
    if not argv[0].endswith("/specbench"):
        subprocess.run(line, shell=True, cwd=cwd, check=True, timeout=60)
        return argv[0]
    args = argv[1:]
    extra: list[str] = []
    if args[0] == "train":
        extra = TRAIN_TINY + (DRAFT_SSD_TINY if "libritts-draft-ssd" in line else [])
    elif args[0] == "calibrate-tree":
        extra = CALIBRATE_TINY
    elif args[0] == "run":
        extra = RUN_TINY
    res = RUNNER.invoke(app, args + [x for item in extra for x in ("--set", item)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, f"{line}\n{res.output}\n{res.exception!r}"
    return " ".join(args[:2])


@needs_make
def test_chain_on_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("encodec")
    for folder in ("configs", "recipes"):
        (tmp_path / folder).symlink_to(REPO / folder)
    corpus = make_libritts(tmp_path / "corpora" / "LibriTTS")
    ckpt = make_encodec_checkpoint(tmp_path / "encodec_24khz-d7cc33bc.th")
    args = ("libritts", f"LIBRITTS={corpus}", f"ENCODEC={ckpt}", "DEVICE=cpu")
    plan = make(tmp_path, *args)
    assert plan.returncode == 0, plan.stderr
    lines = [ln for ln in plan.stdout.splitlines() if ln.strip()]
    monkeypatch.chdir(tmp_path)
    steps = [run_line(ln, tmp_path) for ln in lines]
    assert steps == [
        *["prepare libritts"] * 2,
        "cat",
        *["prepare libritts"] * 2,
        "train target",
        *["train draft"] * 2,
        *["train heads"] * 2,
        *["calibrate-tree recipes/libritts_calibrate.yaml"] * 2,
        *["run recipes/libritts_test.yaml", "run recipes/libritts_joint.yaml"],
    ]

    data = tmp_path / "data" / "libritts"
    train = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    assert len(train) == 9 and {u["split"] for u in train} == {"train-clean-100", "train-clean-360"}
    assert list(data.glob("train.encodec-24khz-*-bw6.npz"))  # the tokens, cached beside the manifest
    runs = tmp_path / "runs" / "libritts"
    for out in ("target-base/model.pt", "draft-ssd/model.pt", "draft-scratch/model.pt", "heads/heads.pt", "heads-joint/heads.pt", "heads-joint/target.pt"):
        assert (runs / out).is_file(), out
    for name in ("vadusa", "vadusa-joint"):
        assert all((runs / "trees" / f"{name}-{b}.json").is_file() for b in (16, 32, 64))
    for recipe, out in (("libritts_test", "test-clean"), ("libritts_joint", "test-clean-joint")):
        want = {d.name for d in load_recipe(REPO / "recipes" / f"{recipe}.yaml").decoders} | {"ground_truth", "codec_resynth"}
        rows = [json.loads(x) for x in (runs / out / "records.jsonl").read_text().splitlines()]
        assert {r["decoder"] for r in rows} == want, recipe
        assert len(rows) == 2 * len(want) and {r["codec_id"] for r in rows} == {rows[0]["codec_id"]}
        assert rows[0]["codec_id"].startswith("encodec-24khz-") and (runs / out / "summary.md").is_file()

    # a second `make libritts` skips every finished step; only the (resumable) runs are invoked again
    again = make(tmp_path, *args)
    assert again.returncode == 0, again.stderr
    assert [ln.split()[1:3] for ln in again.stdout.splitlines() if ln.strip()] == [
        ["run", "recipes/libritts_test.yaml"],
        ["run", "recipes/libritts_joint.yaml"],
    ]
    # an interrupted training resumes from its last.pt
    (runs / "heads" / "heads.pt").unlink()
    resumed = make(tmp_path, "libritts-train", f"ENCODEC={ckpt}", "DEVICE=cpu")
    line = resumed.stdout.strip()
    assert "\n" not in line and line.split()[1:3] == ["train", "heads"] and line.split()[-1] == "--resume"
    run_line(line, tmp_path)
    assert (runs / "heads" / "heads.pt").is_file()
