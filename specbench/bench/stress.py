"""PCG's stress test: how much do WER and SIM move when tokens are swapped within their groups?

For every generated utterance of one decoder in a finished run, each token whose Acoustic Similarity
Group has other members is replaced, with probability ``fraction``, by a uniformly chosen OTHER member
of its group G_t; both token streams are decoded with the run's codec and scored with the run's ASR and
speaker model. If groups hold acoustically interchangeable tokens, ΔWER and ΔSIM stay near 0 (the PCG
paper: 91.4 % of tokens swapped, WER +0.007, SIM −0.027).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import Progress

from specbench.audio import read_audio, write_audio
from specbench.bench.runner import load_records, load_run_config, resolve_audio
from specbench.codec import codec_from_config
from specbench.decoding.groups import Groups, groups_from_model
from specbench.errors import RunStateError
from specbench.targets import load_target


def swap_within_groups(tokens: np.ndarray, groups: Groups, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Each token t with |G_t| > 1 is replaced w.p. ``fraction`` by a uniform member of G_t \\ {t}.

    Returns the new tokens and how many were swapped.
    """
    out = tokens.copy()
    swapped = 0
    for i, t in enumerate(tokens.tolist()):
        members = groups.members(int(t)).tolist()
        others = [m for m in members if m != t]
        if others and rng.random() < fraction:
            out[i] = others[int(rng.integers(len(others)))]
            swapped += 1
    return out, swapped


def stress_groups(
    run_dir: Path,
    *,
    theta: float = 0.45,
    source: str = "input",
    weighting: str = "uniform",
    fraction: float = 1.0,
    decoder: str = "baseline",
    seed: int = 0,
    console: Console | None = None,
) -> pd.DataFrame:
    """Swap tokens of ``decoder``'s outputs in ``run_dir`` within groups; return a one-row summary.

    Writes ``run_dir/stress/theta<θ>-f<fraction>/*.wav`` and ``summary.csv`` there.
    """
    from specbench.scoring import build_asr, build_speaker
    from specbench.scoring.speaker import cosine
    from specbench.scoring.wer import utterance_wer

    console = console or Console()
    cfg = load_run_config(run_dir)
    rows = [r for r in load_records(run_dir) if r.get("kind") == "decoder" and r["decoder"] == decoder]
    if not rows:
        raise RunStateError(f"no '{decoder}' rows in {run_dir}: run the recipe first or pass --decoder NAME")
    missing = [r["audio"] for r in rows if not (run_dir / r["audio"].replace(".wav", ".tokens.npy")).is_file()]
    if missing:
        raise RunStateError(f"{len(missing)} rows of {run_dir} have no saved tokens (e.g. {missing[0]}): regenerate them with this version")
    target = load_target(cfg.model, "cpu")
    groups = groups_from_model(target, theta, source=source, weighting=weighting)
    codec = codec_from_config(cfg.codec)
    asr, spk = build_asr(cfg.scoring.asr), build_speaker(cfg.scoring.speaker)
    out = run_dir / "stress" / f"theta{theta:g}-f{fraction:g}"
    rng = np.random.default_rng(seed)
    per: list[dict[str, Any]] = []
    total = swapped_total = 0
    with Progress(transient=True) as progress:
        task = progress.add_task("stress test", total=len(rows))
        for r in rows:
            tokens = np.load(run_dir / r["audio"].replace(".wav", ".tokens.npy"))
            new, swapped = swap_within_groups(tokens, groups, fraction, rng)
            total += len(tokens)
            swapped_total += swapped
            wav_new, sr = codec.decode(torch.from_numpy(new.astype(np.int64)))
            path = out / f"{r['utt_id']}.r{r['repeat']}.wav"
            write_audio(path, wav_new, sr)
            prompt, psr = read_audio(resolve_audio(run_dir, r["prompt_audio"]))
            prompt_emb = spk.embed(prompt, psr)
            wav_orig, osr = read_audio(resolve_audio(run_dir, r["audio"]))
            res = {}
            for tag, (w, s) in {"orig": (wav_orig, osr), "swapped": (wav_new, sr)}.items():
                hyp = asr.transcribe([w], s)[0]
                res[f"wer_{tag}"] = utterance_wer(r["text"], hyp, cfg.scoring.normalizer)["wer"]
                res[f"sim_{tag}"] = cosine(spk.embed(w, s), prompt_emb)
            per.append({"utt_id": r["utt_id"], "tokens": len(tokens), "swapped": swapped, **res})
            progress.advance(task)
    df = pd.DataFrame(per)
    df.to_csv(out / "per_utterance.csv", index=False)
    stats = groups.stats()
    summary = pd.DataFrame(
        [
            {
                "decoder": decoder,
                "theta": theta,
                "source": source,
                "fraction": fraction,
                "n": len(df),
                "swapped_share": swapped_total / max(1, total),
                "mean_group_size": stats["mean_size"],
                "wer_orig": df["wer_orig"].mean(),
                "wer_swapped": df["wer_swapped"].mean(),
                "delta_wer": df["wer_swapped"].mean() - df["wer_orig"].mean(),
                "sim_orig": df["sim_orig"].mean(),
                "sim_swapped": df["sim_swapped"].mean(),
                "delta_sim": df["sim_swapped"].mean() - df["sim_orig"].mean(),
                "asr_model": asr.id,
                "speaker_model": spk.id,
            }
        ]
    )
    summary.to_csv(out / "summary.csv", index=False)
    return summary
