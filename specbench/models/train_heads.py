"""Training Medusa-style draft heads (VADUSA, methods.md §3) on a target codec LM.

Data, prompts, batching, schedule, precision and checkpointing are those of :mod:`specbench.models.train`.
With ``labels[i]`` the token the target predicts at position ``i`` (``x_{i+1}``; IGNORE outside the
target span), head ``k`` (0-based) at position ``i`` is trained to predict ``labels[i+1+k]`` and, when
autoregressive, is conditioned on the target's embedding of ``labels[i+k]`` (for k = 0 that is the
token the target itself predicts there, i.e. the root at inference). Positions where ``labels[i]``,
``labels[i+k]`` or ``labels[i+1+k]`` is IGNORE are skipped, so every head sees the same utterances and
EOS is a legitimate target (and conditioning token) like any speech token.

    L_heads = Σ_k λ^k · CE_k,  CE_k = mean over valid positions of -log softmax(head_k(h_i))[labels[i+1+k]]

``mode: frozen``: the target runs in eval mode under ``no_grad`` once per batch and only the heads learn.
``mode: joint``: ``L = L_LM + heads_weight · L_heads`` updates the target too (its learning rate is
``backbone_lr``, following the same warm-up/cosine shape); the fine-tuned target is exported as
``out_dir/target.pt`` and the heads record that they belong to it.

Outputs in ``out_dir``: ``last.pt`` (atomic, with optimizer state, for ``--resume``), ``history.jsonl``
(one row per evaluation: losses and per-head top-1/top-k dev accuracy; row ``step 0`` is the untrained
heads, i.e. the target's own t+1 distribution used as a guess for t+2+k), ``heads.pt`` (fp16) and in
joint mode ``target.pt``.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from specbench.config import TrainHeadsConfig
from specbench.device import release_host_memory
from specbench.errors import ModelError
from specbench.jsonl import append_jsonl
from specbench.models.checkpoint import load_checkpoint, save_atomic
from specbench.models.codec_lm import CodecLM, count_parameters
from specbench.models.heads import KIND, DraftHeads, heads_payload, save_heads
from specbench.models.lm_io import export_model, load_lm
from specbench.models.train import IGNORE, TRIM_EVERY, Example, batches, build_sequence, collate, load_examples, lr_at, pick_prompt, start_training
from specbench.targets.builtin import BuiltinTarget


def shift_labels(labels: torch.Tensor, s: int) -> torch.Tensor:
    """``out[:, i] = labels[:, i + s]`` (IGNORE past the end): ``[B, L]`` → ``[B, L]``."""
    if s == 0:
        return labels
    out = torch.full_like(labels, IGNORE)
    if s < labels.shape[1]:
        out[:, : labels.shape[1] - s] = labels[:, s:]
    return out


def head_targets(labels: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head targets and conditioning tokens, both ``[K, B, L]`` (speech space).

    ``targets[k, b, i] = labels[b, i+1+k]`` and ``prev[k, b, i] = labels[b, i+k]`` where position i and
    both of those are labelled; elsewhere ``targets`` is IGNORE and ``prev`` is 0 (a valid row, unused).
    """
    here = labels != IGNORE
    targets, prev = [], []
    for k in range(n_heads):
        p, t = shift_labels(labels, k), shift_labels(labels, k + 1)
        ok = here & (p != IGNORE) & (t != IGNORE)
        targets.append(torch.where(ok, t, IGNORE))
        prev.append(torch.where(ok, p, 0))
    return torch.stack(targets), torch.stack(prev)


def heads_on_batch(
    heads: DraftHeads, hidden: torch.Tensor, labels: torch.Tensor, emb_table: torch.Tensor, speech_offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run every head on the labelled positions of a batch → ``(logits [K, N, V], targets [K, N])``.

    ``hidden: [B, L, d]`` target states (post ``ln_f``), ``labels: [B, L]``, ``emb_table``: the target's
    ``tok_emb.weight``. Only positions with ``labels != IGNORE`` are evaluated (the rest can never be
    valid for any head), which keeps the ``K × N × V`` logits small.
    """
    sel = labels != IGNORE
    targets, prev = head_targets(labels, heads.cfg.n_heads)
    h = hidden[sel]
    prev_embs = None
    if heads.cfg.autoregressive:
        # detached: the table is the target's input embedding; the heads read it but must not reshape it
        table = emb_table.detach()
        prev_embs = [table[speech_offset + prev[k][sel]] for k in range(heads.cfg.n_heads)]
    return heads(h, prev_embs), targets[:, sel]


def per_head_ce(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean CE per head [K], valid count per head [K])``; a head with no valid position has CE 0."""
    k, n, v = logits.shape
    ce = F.cross_entropy(logits.float().reshape(k * n, v), targets.reshape(-1), ignore_index=IGNORE, reduction="none").view(k, n)
    count = (targets != IGNORE).sum(dim=1)
    return ce.sum(dim=1) / count.clamp(min=1), count


def weighted(ce: torch.Tensor, decay: float) -> torch.Tensor:
    """``Σ_k decay^k · ce[k]``: nearer heads matter more (their tokens are verified first)."""
    return (ce * decay ** torch.arange(len(ce), device=ce.device, dtype=ce.dtype)).sum()


@torch.no_grad()
def evaluate_heads(
    target: CodecLM, heads: DraftHeads, examples: list[Example], tc: TrainHeadsConfig, device: torch.device, lm_loss: bool = False
) -> dict[str, Any]:
    """Dev heads loss, per-head top-1 / top-``top_k_eval`` accuracy (and the LM loss if ``lm_loss``).

    Prompts are fixed (seeded pick, first ``prompt_frames`` tokens) so evaluations are comparable.
    Both modules are put in eval mode and restored afterwards.
    """
    was = target.training, heads.training
    target.eval()
    heads.eval()
    cfg = target.cfg
    by_spk: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_spk[ex.speaker].append(ex)
    rng = random.Random(1234)
    seqs = [build_sequence(ex, pick_prompt(ex, by_spk, tc.prompt_frames, rng, False), cfg) for ex in examples]
    n_heads, top_k = heads.cfg.n_heads, min(tc.top_k_eval, heads.cfg.vocab)
    ce_sum = torch.zeros(n_heads, dtype=torch.float64)
    hit1 = torch.zeros(n_heads, dtype=torch.long)
    hitk = torch.zeros(n_heads, dtype=torch.long)
    count = torch.zeros(n_heads, dtype=torch.long)
    lm_total, lm_count = 0.0, 0
    for i in range(0, len(seqs), 16):
        batch = collate(seqs[i : i + 16], cfg).to(device)
        lab = batch.labels
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
            logits, hidden = target.forward_train(batch.ids, batch.pos, batch.cond)
            hl, tgt = heads_on_batch(heads, hidden, lab, target.tok_emb.weight, cfg.speech_offset)
        ce, n = per_head_ce(hl, tgt)
        ce_sum += (ce * n).double().cpu()
        count += n.cpu()
        valid = tgt != IGNORE
        top = hl.float().topk(top_k, dim=-1).indices  # [K, N, top_k]
        hit1 += ((top[..., 0] == tgt) & valid).sum(dim=1).cpu()
        hitk += ((top == tgt.unsqueeze(-1)).any(dim=-1) & valid).sum(dim=1).cpu()
        if lm_loss:
            lm_total += float(F.cross_entropy(logits.float().flatten(0, 1), lab.flatten(), ignore_index=IGNORE, reduction="sum"))
            lm_count += int((lab != IGNORE).sum())
    target.train(was[0])
    heads.train(was[1])
    mean_ce = (ce_sum / count.clamp(min=1)).float()
    out: dict[str, Any] = {"dev_heads_loss": round(float(weighted(mean_ce, tc.decay)), 4)}
    if lm_loss:
        out["dev_lm_loss"] = round(lm_total / max(1, lm_count), 4)
    out["accuracy"] = [
        {"head": k, "top1": round(int(hit1[k]) / max(1, int(count[k])), 4), f"top{top_k}": round(int(hitk[k]) / max(1, int(count[k])), 4), "n": int(count[k])}
        for k in range(n_heads)
    ]
    return out


def _accuracy_line(acc: list[dict[str, Any]]) -> str:
    """``head0 0.412/0.701 | head1 ...`` (top-1 / top-k) for the log."""
    return " | ".join(f"head{a['head']} " + "/".join(f"{v:.3f}" for key, v in a.items() if key.startswith("top")) for a in acc)


def train_heads(tc: TrainHeadsConfig, *, resume: bool = False, log: Any = print) -> Path:
    """Train (or resume) draft heads as configured; returns ``out_dir/heads.pt``."""
    out = Path(tc.out_dir)
    last, device, codec = start_training(tc, out, resume)
    target, tck = load_lm(tc.target, device)
    if tck.get("codec_id") and tck["codec_id"] != codec.id:
        raise ModelError(f"target {tc.target} was trained on codec {tck['codec_id']}, not {codec.id}: set codec.path to that codec")
    cfg = target.cfg
    joint = tc.mode == "joint"
    heads = DraftHeads.from_target(BuiltinTarget(target, tc.target, tck), tc.n_heads, tc.head_layers, tc.autoregressive).to(device)
    if joint:
        target.train()
    else:
        # frozen: eval mode (no dropout) and no gradients, which also keeps it out of the optimizer
        target.eval().requires_grad_(False)
    # the heads belong to the backbone they were trained on: the original in frozen mode, the export in joint mode
    heads_target = str(out / "target.pt") if joint else tc.target
    train_ex = load_examples(tc.train_manifest, codec, cfg)
    dev_ex = load_examples(tc.dev_manifest, codec, cfg) if tc.dev_manifest else []

    def groups(module: torch.nn.Module) -> list[list[torch.nn.Parameter]]:
        """(decayed, not decayed) trainable parameters: matrices decay, biases/norms/embeddings do not."""
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        return [[p for n, p in params if p.dim() >= 2 and "emb" not in n], [p for n, p in params if not (p.dim() >= 2 and "emb" not in n)]]

    param_groups = [{"params": ps, "weight_decay": wd} for ps, wd in zip(groups(heads), (tc.weight_decay, 0.0), strict=True)]
    lr_scales = [1.0, 1.0]
    if joint:
        param_groups += [{"params": ps, "weight_decay": wd} for ps, wd in zip(groups(target), (tc.weight_decay, 0.0), strict=True)]
        lr_scales += [tc.backbone_lr / tc.lr] * 2  # same schedule shape, scaled to backbone_lr
    trainable = [p for g in param_groups for p in g["params"]]
    opt = torch.optim.AdamW(param_groups, lr=tc.lr, betas=(0.9, 0.98))
    step, elapsed, history = 0, 0.0, []
    if resume:
        state = load_checkpoint(last, KIND)
        if state.get("config") != heads.cfg.to_dict() or state.get("mode") != tc.mode or state.get("meta", {}).get("base_target") != tc.target:
            raise ModelError(f"{last} was trained with other heads settings, mode or target; resume with the same config or a new out_dir")
        heads.load_state_dict(state["state_dict"])
        if joint:
            target.load_state_dict(state["backbone"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state.get("elapsed", 0.0), state.get("history", [])
    out.mkdir(parents=True, exist_ok=True)
    n_train = sum(p.numel() for p in trainable)
    log(
        f"heads {tc.n_heads}x{tc.head_layers} layer(s){' autoregressive' if tc.autoregressive else ''} on {tc.target} ({tc.mode}) | "
        f"{count_parameters(heads) / 1e6:.2f}M head params, {n_train / 1e6:.2f}M trained | {len(train_ex)} train utts | device {device} | {tc.precision}"
    )

    def meta() -> dict[str, Any]:
        acc = next((r["accuracy"] for r in reversed(history) if "accuracy" in r), [])
        return {"role": "heads", "mode": tc.mode, "base_target": tc.target, "train": tc.model_dump(), "history": history, "accuracy": acc}

    def save() -> None:
        payload = heads_payload(heads, heads_target, codec.id, meta())
        payload.update({"optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "history": history, "mode": tc.mode})
        if joint:
            payload["backbone"] = {k: v.detach().cpu() for k, v in target.state_dict().items()}
        save_atomic(payload, last)

    def record(row: dict[str, Any], console: Any) -> None:
        history.append(row)
        append_jsonl(out / "history.jsonl", row)
        acc = row.get("accuracy")
        console.print({k: v for k, v in row.items() if k != "accuracy"})
        if acc:
            console.print(f"dev accuracy top1/top{tc.top_k_eval}: {_accuracy_line(acc)}")

    heads.train()
    data = batches(train_ex, cfg, tc.batch_tokens, tc.prompt_frames, tc.seed + step)
    columns = [TextColumn("[bold]heads"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    ema_h: float | None = None
    ema_lm: float | None = None
    tokens_seen, t0 = 0, time.perf_counter()
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": tc.precision == "bf16"}
    with Progress(*columns) as progress:
        if step == 0 and dev_ex:  # the untrained heads (= target's t+1 distribution) as the reference row
            record({"step": 0, **evaluate_heads(target, heads, dev_ex, tc, device, lm_loss=joint)}, progress.console)
        task = progress.add_task("heads", total=tc.steps, completed=step, info="")
        while step < tc.steps:
            batch = next(data).to(device)
            lab = batch.labels
            for g, scale in zip(opt.param_groups, lr_scales, strict=True):
                g["lr"] = lr_at(step, tc) * scale
            with torch.autocast(**autocast):
                if joint:
                    logits, hidden = target.forward_train(batch.ids, batch.pos, batch.cond)
                else:
                    with torch.no_grad():  # one backbone pass serves all K heads
                        _, hidden = target.forward_train(batch.ids, batch.pos, batch.cond)
                hl, tgt = heads_on_batch(heads, hidden, lab, target.tok_emb.weight, cfg.speech_offset)
            ce, _ = per_head_ce(hl, tgt)
            loss_h = weighted(ce, tc.decay)
            loss = loss_h
            if joint:
                loss_lm = F.cross_entropy(logits.float().flatten(0, 1), lab.flatten(), ignore_index=IGNORE)
                loss = loss_lm + tc.heads_weight * loss_h
                lv = float(loss_lm.detach())
                ema_lm = lv if ema_lm is None else 0.98 * ema_lm + 0.02 * lv
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, tc.grad_clip)
            opt.step()
            step += 1
            if device.type == "cpu" and step % TRIM_EVERY == 0:
                release_host_memory()
            tokens_seen += int((batch.ids != 0).sum())
            now = time.perf_counter()
            hv = float(loss_h.detach())
            ema_h = hv if ema_h is None else 0.98 * ema_h + 0.02 * hv
            rate = tokens_seen / max(1e-9, now - t0)
            info = f"heads {ema_h:.3f}" + (f" lm {ema_lm:.3f}" if ema_lm is not None else "") + f" lr {lr_at(step - 1, tc):.2e} {rate:,.0f} tok/s"
            progress.update(task, completed=step, info=info)
            if not progress.console.is_terminal and step % 50 == 0:  # logs to a file get a line, not a bar
                progress.console.print(f"step {step}/{tc.steps} {info}")
            if step % tc.eval_every == 0 or step == tc.steps:
                row: dict[str, Any] = {"step": step, "train_heads_loss": round(ema_h, 4)}
                if ema_lm is not None:
                    row["train_lm_loss"] = round(ema_lm, 4)
                row["minutes"] = round((elapsed + now - t0) / 60, 2)
                if dev_ex:
                    row.update(evaluate_heads(target, heads, dev_ex, tc, device, lm_loss=joint))
                record(row, progress.console)
            if step % tc.save_every == 0 or step == tc.steps:
                elapsed, t0, tokens_seen = elapsed + time.perf_counter() - t0, time.perf_counter(), 0
                save()
    final = meta()
    final.update({"steps": step, "train_minutes": round(elapsed / 60, 1)})
    if joint:
        target_meta = {"role": "target", "init": "joint-heads", "base": tc.target, "heads": str(out / "heads.pt"), "train": tc.model_dump()}
        export_model(target, out / "target.pt", codec.id, {**target_meta, "history": history, "steps": step})
    save_heads(heads, out / "heads.pt", heads_target, codec.id, final)
    acc = final["accuracy"]
    log(f"exported {out / 'heads.pt'} after {step} steps, {elapsed / 60:.1f} min")
    if joint:
        log(f"exported the fine-tuned target {out / 'target.pt'} (the heads belong to it)")
    if acc:
        log(f"dev accuracy top1/top{tc.top_k_eval}: {_accuracy_line(acc)}")
    return out / "heads.pt"
