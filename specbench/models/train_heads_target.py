"""Draft heads for a FROZEN target of any backend (``train heads`` with ``target_model:``), e.g. an
hf-causal Llasa: the loss and per-head bookkeeping are those of :mod:`specbench.models.train_heads`.

Data: every utterance of ``train_manifest`` is tokenised once by the recipe's codec (cached next to the
manifest); its prompt is the first ``prompt_frames`` tokens (whole codec frames) of another utterance
of the same speaker, with that utterance's text as the prompt transcript, so the context is laid out
exactly as at inference. For an utterance with codes ``x_1..x_T`` the target's teacher-forced pass
gives hidden states ``H_0..H_T`` (``H_j`` predicts ``x_{j+1}``, ``x_{T+1}`` = EOS); with
``labels = [x_1..x_T, EOS]`` head ``k`` at ``H_j`` learns ``labels[j+1+k]`` (conditioned on
``labels[j+k]`` when autoregressive). One optimizer step takes utterances up to ``batch_tokens``.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from specbench.config import TrainHeadsConfig
from specbench.data.manifest import load_manifest
from specbench.data.tokens import tokenize_manifest
from specbench.errors import ConfigError, DataError, ModelError
from specbench.jsonl import append_jsonl
from specbench.models.checkpoint import load_checkpoint, save_atomic
from specbench.models.heads import KIND, DraftHeads, heads_payload, save_heads
from specbench.models.train import lr_at, start_training
from specbench.models.train_heads import _accuracy_line, heads_on_batch, per_head_ce, weighted
from specbench.targets import Context, TargetModel, load_target

Item = tuple[Context, torch.Tensor]  # (context, codes)


def manifest_items(path: str, codec: Any, prompt_frames: int, frame: int, seed: int) -> list[Item]:
    """(context, codes) per utterance of a manifest: prompt = another same-speaker utterance's first tokens
    (none when the speaker has one utterance)."""
    manifest = load_manifest(path)
    codes = tokenize_manifest(manifest, codec)
    by_spk: dict[str, list[Any]] = defaultdict(list)
    for u in manifest.utterances:
        by_spk[u.speaker].append(u)
    rng = random.Random(seed)
    n = max(frame, prompt_frames - prompt_frames % frame)
    items: list[Item] = []
    for u in manifest.utterances:
        others = [o for o in by_spk[u.speaker] if o.utt_id != u.utt_id]
        c = torch.from_numpy(codes[u.utt_id].astype("int64"))
        if c.numel() < 2:
            continue
        if not others:  # a speaker with one utterance: no prompt (as the built-in trainer does)
            items.append((Context(text=u.text, phonemes=u.phonemes, prompt_tokens=torch.zeros(0, dtype=torch.long), prompt_text=""), c))
            continue
        p = rng.choice(others)
        prompt = torch.from_numpy(codes[p.utt_id][:n].astype("int64"))
        prompt = prompt[: prompt.numel() - prompt.numel() % frame]
        items.append((Context(text=u.text, phonemes=u.phonemes, prompt_tokens=prompt, prompt_text=p.text), c))
    if not items:
        raise DataError(f"no usable utterances in {path} (empty audio?): check the manifest")
    return items


def item_loss(target: TargetModel, heads: DraftHeads, emb: torch.Tensor | None, ctx: Context, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Head logits and targets of one utterance: ``([K, T+1, V+1], [K, T+1])`` from a no-grad target pass."""
    with torch.no_grad():
        _, hidden = target.score(ctx, codes)
    dtype = next(heads.parameters()).dtype
    labels = torch.cat([codes.to(hidden.device), torch.tensor([target.eos], device=hidden.device)])[None]
    table = emb if emb is not None else torch.zeros(1, heads.cfg.d_model, device=hidden.device, dtype=dtype)
    return heads_on_batch(heads, hidden.to(dtype)[None], labels, table, 0)


@torch.no_grad()
def evaluate(target: TargetModel, heads: DraftHeads, emb: torch.Tensor | None, items: list[Item], tc: TrainHeadsConfig) -> dict[str, Any]:
    """Dev heads loss and per-head top-1 / top-k accuracy (as :func:`specbench.models.train_heads.evaluate_heads`)."""
    heads.eval()
    k_heads, top_k = heads.cfg.n_heads, min(tc.top_k_eval, heads.cfg.vocab)
    ce_sum = torch.zeros(k_heads, dtype=torch.float64)
    hit1 = torch.zeros(k_heads, dtype=torch.long)
    hitk = torch.zeros(k_heads, dtype=torch.long)
    count = torch.zeros(k_heads, dtype=torch.long)
    for ctx, codes in items:
        hl, tgt = item_loss(target, heads, emb, ctx, codes)
        ce, n = per_head_ce(hl, tgt)
        ce_sum += (ce * n).double().cpu()
        count += n.cpu()
        valid = tgt != -100
        top = hl.float().topk(top_k, dim=-1).indices
        hit1 += ((top[..., 0] == tgt) & valid).sum(dim=1).cpu()
        hitk += ((top == tgt.unsqueeze(-1)).any(dim=-1) & valid).sum(dim=1).cpu()
    heads.train()
    mean_ce = (ce_sum / count.clamp(min=1)).float()
    acc = [
        {"head": k, "top1": round(int(hit1[k]) / max(1, int(count[k])), 4), f"top{top_k}": round(int(hitk[k]) / max(1, int(count[k])), 4), "n": int(count[k])}
        for k in range(k_heads)
    ]
    return {"dev_heads_loss": round(float(weighted(mean_ce, tc.decay)), 4), "accuracy": acc}


def train_heads_on_target(tc: TrainHeadsConfig, *, resume: bool = False, log: Any = print) -> Path:
    """Train (or resume) heads on the frozen ``tc.target_model``; returns ``out_dir/heads.pt``."""
    if tc.target_model is None:
        raise ConfigError("train_heads_on_target needs target_model")
    if tc.mode != "frozen":
        raise ConfigError("mode: joint fine-tunes a specbench target; heads on a target_model train with mode: frozen")
    out = Path(tc.out_dir)
    last, device, codec = start_training(tc, out, resume)
    target = load_target(tc.target_model, device)
    target.check_codec(codec)
    frame = getattr(getattr(target, "family", None), "frame", 1)
    train = manifest_items(tc.train_manifest, codec, tc.prompt_frames, frame, tc.seed)
    dev = manifest_items(tc.dev_manifest, codec, tc.prompt_frames, frame, tc.seed + 1) if tc.dev_manifest else []
    heads = DraftHeads.from_target(target, tc.n_heads, tc.head_layers, tc.autoregressive)
    emb = target.speech_embeddings().detach().float() if tc.autoregressive else None
    params = [p for p in heads.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=(0.9, 0.98), weight_decay=tc.weight_decay)
    step, elapsed, history = 0, 0.0, []
    if resume:
        state = load_checkpoint(last, KIND)
        if state.get("config") != heads.cfg.to_dict() or state.get("target") != target.id:
            raise ModelError(f"{last} was trained with other heads settings or another target; resume with the same config or a new out_dir")
        heads.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state.get("elapsed", 0.0), state.get("history", [])
    out.mkdir(parents=True, exist_ok=True)
    log(
        f"heads {tc.n_heads}x{tc.head_layers} on {target.id} (frozen) | {sum(p.numel() for p in params) / 1e6:.2f}M params | {len(train)} train utts | {device}"
    )

    def meta() -> dict[str, Any]:
        acc = next((r["accuracy"] for r in reversed(history) if "accuracy" in r), [])
        return {"role": "heads", "mode": "frozen", "base_target": target.id, "train": tc.model_dump(mode="json"), "history": history, "accuracy": acc}

    def record(row: dict[str, Any], console: Any) -> None:
        history.append(row)
        append_jsonl(out / "history.jsonl", row)
        console.print({k: v for k, v in row.items() if k != "accuracy"})
        if row.get("accuracy"):
            console.print(f"dev accuracy top1/top{tc.top_k_eval}: {_accuracy_line(row['accuracy'])}")

    rng = random.Random(tc.seed + step)
    heads.train()
    t0 = time.perf_counter()
    columns = [TextColumn("[bold]heads"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns) as progress:
        if step == 0 and dev:
            record({"step": 0, **evaluate(target, heads, emb, dev, tc)}, progress.console)
        task = progress.add_task("heads", total=tc.steps, completed=step, info="")
        while step < tc.steps:
            for g in opt.param_groups:
                g["lr"] = lr_at(step, tc)
            opt.zero_grad(set_to_none=True)
            batch, tokens = [], 0
            while not batch or tokens < tc.batch_tokens:
                ctx, codes = rng.choice(train)
                batch.append((ctx, codes))
                tokens += codes.numel()
                if len(batch) >= len(train):
                    break
            loss_sum = 0.0
            for ctx, codes in batch:
                hl, tgt = item_loss(target, heads, emb, ctx, codes)
                ce, _ = per_head_ce(hl, tgt)
                loss = weighted(ce, tc.decay) / len(batch)
                loss.backward()
                loss_sum += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            step += 1
            info = f"heads {loss_sum:.3f} lr {lr_at(step - 1, tc):.2e}"
            progress.update(task, completed=step, info=info)
            if step % tc.eval_every == 0 or step == tc.steps:
                row: dict[str, Any] = {"step": step, "train_heads_loss": round(loss_sum, 4), "minutes": round((elapsed + time.perf_counter() - t0) / 60, 2)}
                if dev:
                    row.update(evaluate(target, heads, emb, dev, tc))
                record(row, progress.console)
            if step % tc.save_every == 0 or step == tc.steps:
                elapsed, t0 = elapsed + time.perf_counter() - t0, time.perf_counter()
                payload = heads_payload(heads, target.id, codec.id, meta())
                payload.update({"optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "history": history})
                save_atomic(payload, last)
    final = {**meta(), "steps": step, "train_minutes": round(elapsed / 60, 1)}
    save_heads(heads, out / "heads.pt", target.id, codec.id, final)
    log(f"exported {out / 'heads.pt'} after {step} steps, {elapsed / 60:.1f} min")
    return out / "heads.pt"
