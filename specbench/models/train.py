"""Training a codec LM on a manifest: teacher-forced next-token cross-entropy on the speech tokens.

Each example is ``[phonemes][SEP][prompt][target][EOS]`` where the prompt is a crop of up to
``prompt_frames`` tokens of ANOTHER utterance of the same speaker (random each epoch) and the loss
covers only the target tokens and EOS, as in zero-shot VALL-E-style TTS. Batches are bucketed by length
under a token budget. AdamW, linear warm-up, cosine decay to ``min_lr_ratio``, gradient clipping,
bf16 autocast when asked. ``out_dir/last.pt`` is written atomically every ``save_every`` steps and
``--resume`` continues from it; ``out_dir/model.pt`` is the exported model at the end.

Duration-aligned models (``alignment: durations``; models/codec_lm.py) read phone tokens instead of
phoneme characters, are conditioned on the synthesiser's own durations (teacher forcing) and add the
duration predictor's cross-entropy to the loss.
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from specbench.codec import codec_from_config
from specbench.config import TrainTargetConfig
from specbench.data.manifest import load_manifest
from specbench.data.tokens import tokenize_manifest
from specbench.device import release_host_memory, resolve_device, set_threads
from specbench.errors import DataError, ModelError, RunStateError
from specbench.jsonl import append_jsonl
from specbench.models.checkpoint import load_checkpoint, save_atomic
from specbench.models.codec_lm import CodecLM, ModelConfig, count_parameters, no_conditions, sequence_conditions
from specbench.models.lm_io import KIND, export_model, model_payload
from specbench.text import durations_from_starts, encode_phonemes, encode_phones

IGNORE = -100
TRIM_EVERY = 50  # steps between malloc_trim calls on CPU (see device.release_host_memory)


@dataclass
class Example:
    """One training utterance: text ids, speech tokens, speaker."""

    utt_id: str
    text: np.ndarray
    codes: np.ndarray
    speaker: str
    durations: np.ndarray | None = None  # frames per phone (aligned models; sums to len(codes))


def phone_vocabulary(manifest_path: str) -> list[str]:
    """Sorted phone tokens of a manifest's alignments (the text vocabulary of an aligned model)."""
    manifest = load_manifest(manifest_path)
    missing = [u.utt_id for u in manifest.utterances if not u.phones]
    if missing:
        raise DataError(
            f"{manifest_path}: {len(missing)} utterances (e.g. {missing[0]}) have no phone alignment: rebuild the corpus with "
            "`specbench prepare synthetic` or train with `alignment: none`"
        )
    return sorted({p for u in manifest.utterances for p in (u.phones or "").split()})


def load_examples(manifest_path: str, codec: Any, cfg: ModelConfig) -> list[Example]:
    """Tokenised utterances that fit the model's length limits (aligned models: with durations in frames)."""
    manifest = load_manifest(manifest_path)
    codes = tokenize_manifest(manifest, codec)
    out = []
    for u in manifest.utterances:
        c = codes[u.utt_id].astype(np.int64)
        durations = None
        if cfg.aligned:
            if not u.phones or u.phone_starts is None:
                raise DataError(f"{manifest_path}: utterance {u.utt_id} has no phone alignment: rebuild the corpus with `specbench prepare synthetic`")
            text = np.array(encode_phones(u.phones, cfg.phones), dtype=np.int64)
            durations = durations_from_starts(u.phone_starts, len(c), cfg.frame_rate)
        else:
            text = np.array(encode_phonemes(u.phonemes), dtype=np.int64)
        if 0 < len(text) < cfg.max_text_len and 0 < len(c) and len(c) + 1 < cfg.max_speech_len // 2:
            out.append(Example(u.utt_id, text, c, u.speaker, durations))
    if not out:
        raise DataError(f"no usable utterances in {manifest_path} (empty text or audio, or too long for the model)")
    return out


@dataclass
class TrainSequence:
    """One training sequence: embedding ids, position ids, labels (IGNORE outside the target) and, for
    aligned models, the frame conditioning ``cond [L, 5]``, the phones, their durations and the prompt."""

    ids: np.ndarray
    pos: np.ndarray
    labels: np.ndarray
    cond: np.ndarray | None = None
    phones: np.ndarray | None = None
    durations: np.ndarray | None = None
    prompt: np.ndarray | None = None


def build_sequence(ex: Example, prompt: np.ndarray, cfg: ModelConfig) -> TrainSequence:
    """The training sequence of one example; labels are IGNORE outside the target."""
    lt, p, t = len(ex.text), len(prompt), len(ex.codes)
    ids = np.concatenate([ex.text, [cfg.sep_id], prompt + cfg.speech_offset, ex.codes + cfg.speech_offset])
    pos = np.concatenate([np.arange(lt + 1), cfg.max_text_len + np.arange(p + t)])
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    start = lt + p  # the last prompt token (or SEP) predicts the first target token
    labels[start : start + t] = ex.codes
    labels[start + t] = cfg.eos
    if not cfg.aligned:
        return TrainSequence(ids, pos, labels)
    assert ex.durations is not None
    cond = sequence_conditions(len(ids), start, t, torch.from_numpy(ex.text), torch.from_numpy(ex.durations), cfg).numpy()
    dur = np.minimum(ex.durations, cfg.max_phone_frames - 1)
    return TrainSequence(ids, pos, labels, cond, ex.text, dur, prompt)


def pick_prompt(ex: Example, by_speaker: dict[str, list[Example]], frames: int, rng: random.Random, random_crop: bool) -> np.ndarray:
    """A crop of another utterance of the same speaker (empty when the speaker has only one)."""
    others = [o for o in by_speaker[ex.speaker] if o.utt_id != ex.utt_id]
    if not others:
        return np.zeros(0, dtype=np.int64)
    src = rng.choice(others).codes
    if len(src) <= frames:
        return src
    start = rng.randrange(len(src) - frames + 1) if random_crop else 0
    return src[start : start + frames]


@dataclass
class Batch:
    """Right-padded sequences (padding is never attended by real tokens: causal mask). Aligned models
    also get ``cond`` and the duration predictor's inputs: ``phones``/``durations`` ``[B, N]`` (durations
    IGNORE at padding) and ``prompt [B, P]`` with padding masks ``phone_pad``/``prompt_pad``."""

    ids: torch.Tensor
    pos: torch.Tensor
    labels: torch.Tensor
    cond: torch.Tensor | None = None
    phones: torch.Tensor | None = None
    phone_pad: torch.Tensor | None = None
    durations: torch.Tensor | None = None
    prompt: torch.Tensor | None = None
    prompt_pad: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        """The same batch on ``device``."""
        return Batch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()})


def _pad(rows: list[np.ndarray], value: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, n, ...]`` right-padded with ``value`` and the ``[B, n]`` padding mask (True = padding)."""
    n = max([len(r) for r in rows] + [1])
    shape = (len(rows), n) + tuple(rows[0].shape[1:])
    out = torch.full(shape, value, dtype=torch.long)
    pad = torch.ones(len(rows), n, dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.int64))
        pad[i, : len(r)] = False
    return out, pad


def collate(seqs: list[TrainSequence], cfg: ModelConfig | None = None) -> Batch:
    """Pad a list of sequences into one :class:`Batch` (``cfg`` is needed for aligned sequences)."""
    ids, _ = _pad([s.ids for s in seqs], 0)
    pos, _ = _pad([s.pos for s in seqs], 0)
    lab, _ = _pad([s.labels for s in seqs], IGNORE)
    if seqs[0].cond is None:
        return Batch(ids, pos, lab)
    assert cfg is not None, "aligned sequences need the model config to pad their conditioning"
    cond = no_conditions(1, cfg)[0].expand(ids.shape[0], ids.shape[1], 5).clone()
    for i, s in enumerate(seqs):
        cond[i, : len(s.cond)] = torch.from_numpy(s.cond)
    phones, phone_pad = _pad([s.phones for s in seqs], 0)
    durations, _ = _pad([s.durations for s in seqs], IGNORE)
    prompt, prompt_pad = _pad([s.prompt for s in seqs], 0)
    return Batch(ids, pos, lab, cond, phones, phone_pad, durations, prompt, prompt_pad)


def batches(examples: list[Example], cfg: ModelConfig, batch_tokens: int, prompt_frames: int, seed: int) -> Iterator[Batch]:
    """Endless length-bucketed batches; each epoch reshuffles buckets and redraws prompts."""
    by_spk: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_spk[ex.speaker].append(ex)
    rng = random.Random(seed)
    while True:
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].codes) + len(examples[i].text) + rng.random() * 8)
        groups: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            longest = len(examples[i].codes) + len(examples[i].text) + prompt_frames + 2
            if cur and (len(cur) + 1) * longest > batch_tokens:
                groups.append(cur)
                cur = []
            cur.append(i)
        if cur:
            groups.append(cur)
        rng.shuffle(groups)
        for g in groups:
            yield collate([build_sequence(examples[i], pick_prompt(examples[i], by_spk, prompt_frames, rng, True), cfg) for i in g], cfg)


@torch.no_grad()
def mix_own_samples(model: CodecLM, batch: Batch, rate: float, precision: str, device: torch.device, gen: torch.Generator) -> torch.Tensor:
    """Two-pass scheduled sampling: ``ids`` with some target-history tokens replaced by the model's own samples.

    Pass 1 runs the batch teacher-forced without gradients and draws ``x̂_i ~ p(· | true prefix)`` (T = 1,
    EOS excluded) at every labelled position ``i``. The input token at ``i + 1`` (the true ``x_i`` that the
    next step conditions on) is replaced by ``x̂_i`` with probability ``rate``, independently per position;
    the labels stay the true tokens. Training on these inputs exposes the model to histories that contain
    its own mistakes, which teacher forcing never shows it (exposure bias). The prompt and text are never
    touched. ``gen`` is a generator on ``device``. Returns a new ``ids`` tensor on CPU.
    """
    ids, labels = batch.ids, batch.labels
    logits = train_logits(model, batch, precision, device)
    cfg = model.cfg
    probs = torch.softmax(logits[..., : cfg.speech_vocab].float(), -1)
    b, n, v = probs.shape
    # drawn on the model's device (``gen`` lives there); only the [B, n] results come back
    drawn = torch.multinomial(probs.reshape(b * n, v), 1, generator=gen).reshape(b, n).cpu()
    keep = (torch.rand(b, n, generator=gen, device=probs.device) < rate).cpu()
    rows, cols = history_slots(labels, cfg, keep)
    out = ids.clone()
    out[rows, cols + 1] = drawn[rows, cols] + cfg.speech_offset
    return out


def history_slots(labels: torch.Tensor, cfg: ModelConfig, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, cols)`` of the labelled positions whose NEXT input is a target-history token, where ``keep``.

    Position ``i`` predicts ``ids[i + 1]``; only speech labels (not EOS, not IGNORE) have a next input,
    so the text, SEP, prompt and padding are never selected.
    """
    src = (labels >= 0) & (labels < cfg.speech_vocab) & keep
    src[:, -1] = False
    return src.nonzero(as_tuple=True)


def token_neighbours(vectors: torch.Tensor, k: int) -> torch.Tensor:
    """``[V, k]``: for each token, the ``k`` OTHER tokens whose vectors are nearest (Euclidean), nearest first."""
    v = vectors.float()
    if not 1 <= k < v.shape[0]:
        raise ModelError(f"history_noise_neighbours must lie in [1, {v.shape[0] - 1}] for a {v.shape[0]}-token codec, got {k}")
    d = torch.cdist(v, v)
    d.fill_diagonal_(float("inf"))
    return d.topk(k, largest=False).indices


def corrupt_history(ids: torch.Tensor, labels: torch.Tensor, rate: float, neighbours: torch.Tensor, cfg: ModelConfig, gen: torch.Generator) -> torch.Tensor:
    """``ids`` with target-history inputs swapped for acoustically near tokens (history noise).

    Each input token ``x_i`` of the target segment (the true token the next step conditions on) is
    replaced, independently with probability ``rate``, by a uniform pick among ``neighbours[x_i]`` (its
    nearest codec tokens, :func:`token_neighbours`); labels, text, SEP and prompt are untouched. A greedy
    model mostly errs by choosing a near-identical centroid, and a model trained on clean histories only
    treats that as unseen context and drifts; with noisy histories it must lean on the text instead.
    ``gen`` is a CPU generator. Returns a new tensor.
    """
    keep = torch.rand(labels.shape, generator=gen) < rate
    rows, cols = history_slots(labels, cfg, keep)
    true = labels[rows, cols]
    pick = torch.randint(0, neighbours.shape[1], (true.numel(),), generator=gen)
    out = ids.clone()
    out[rows, cols + 1] = neighbours[true, pick] + cfg.speech_offset
    return out


def lr_at(step: int, tc: TrainTargetConfig) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``lr * min_lr_ratio``."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    frac = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def train_logits(model: CodecLM, batch: Batch, precision: str, device: torch.device) -> torch.Tensor:
    """Full-sequence logits ``[B, L, V]`` on ``device``, under bf16 autocast when ``precision`` is bf16."""
    cond = None if batch.cond is None else batch.cond.to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits, _ = model.forward_train(batch.ids.to(device), batch.pos.to(device), cond)
    return logits


def loss_fn(model: CodecLM, batch: Batch, precision: str, device: torch.device) -> torch.Tensor:
    """Mean cross-entropy over labelled positions."""
    logits = train_logits(model, batch, precision, device)
    return F.cross_entropy(logits.float().flatten(0, 1), batch.labels.to(device).flatten(), ignore_index=IGNORE)


def duration_loss(model: CodecLM, batch: Batch, precision: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy of the duration predictor over real phones, its exact-frame accuracy)."""
    b = batch.to(device)
    assert b.phones is not None and b.durations is not None and b.prompt is not None
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model.duration_logits(b.phones, b.phone_pad, b.prompt, b.prompt_pad)
    flat = logits.float().flatten(0, 1)
    target = b.durations.flatten()
    valid = target != IGNORE
    acc = (flat.argmax(-1) == target)[valid].float().mean()
    return F.cross_entropy(flat, target, ignore_index=IGNORE), acc


@torch.no_grad()
def evaluate(model: CodecLM, examples: list[Example], cfg: ModelConfig, tc: TrainTargetConfig, device: torch.device) -> dict[str, float]:
    """Token-weighted dev loss with fixed prompts (first ``prompt_frames`` of a seeded pick); aligned
    models also get the duration predictor's dev loss and exact-frame accuracy (phone-weighted)."""
    model.eval()
    by_spk: dict[str, list[Example]] = defaultdict(list)
    for ex in examples:
        by_spk[ex.speaker].append(ex)
    rng = random.Random(1234)
    seqs = [build_sequence(ex, pick_prompt(ex, by_spk, tc.prompt_frames, rng, False), cfg) for ex in examples]
    total, count, d_total, d_acc, d_count = 0.0, 0, 0.0, 0.0, 0
    for i in range(0, len(seqs), 16):
        batch = collate(seqs[i : i + 16], cfg)
        n = int((batch.labels != IGNORE).sum())
        total += float(loss_fn(model, batch, tc.precision, device)) * n
        count += n
        if cfg.aligned:
            assert batch.durations is not None
            m = int((batch.durations != IGNORE).sum())
            dl, da = duration_loss(model, batch, tc.precision, device)
            d_total, d_acc, d_count = d_total + float(dl) * m, d_acc + float(da) * m, d_count + m
    model.train()
    out = {"dev_loss": round(total / max(1, count), 4)}
    if cfg.aligned:
        out.update(dev_duration_loss=round(d_total / max(1, d_count), 4), dev_duration_acc=round(d_acc / max(1, d_count), 4))
    return out


def build_layer_draft(target: CodecLM, layers: list[int]) -> CodecLM:
    """A draft made of the target's blocks ``layers`` (in order) with its embeddings, final norm and head."""
    bad = [i for i in layers if not 0 <= i < target.cfg.n_layers]
    if bad:
        raise ModelError(f"draft layers {bad} do not exist in a {target.cfg.n_layers}-layer target: pick indices 0..{target.cfg.n_layers - 1}")
    cfg = ModelConfig(**{**target.cfg.to_dict(), "n_layers": len(layers)})
    draft = CodecLM(cfg)
    # everything but the blocks: embeddings, final norm, head and (aligned models) the frame
    # conditioning and duration predictor, so draft and target predict the same durations
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if not k.startswith("blocks.")}, strict=False)
    for j, i in enumerate(layers):
        draft.blocks[j].load_state_dict(target.blocks[i].state_dict())
    return draft


def transfer_speech_weights(src: CodecLM, dst: CodecLM) -> list[str]:
    """Copy into ``dst`` what does not depend on the text layout: the blocks, final norm, head, position
    table and the speech + EOS rows (and SEP) of the token table. Used to warm-start a model with another
    text front end (phoneme characters → aligned phone tokens) from one that already models the codec's
    speech; the text rows, the frame conditioning and the duration predictor start fresh. Returns the
    names of the copied parts."""
    if (src.cfg.d_model, src.cfg.n_layers, src.cfg.n_heads, src.cfg.d_ff, src.cfg.speech_vocab) != (
        dst.cfg.d_model,
        dst.cfg.n_layers,
        dst.cfg.n_heads,
        dst.cfg.d_ff,
        dst.cfg.speech_vocab,
    ):
        raise ModelError("init_checkpoint has another shape (width, depth, heads, FFN or codec vocabulary): train with a matching preset")
    copied = []
    with torch.no_grad():
        for name in ("blocks", "ln_f", "head", "pos_emb"):
            getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
            copied.append(name)
        n = src.cfg.speech_vocab + 1
        dst.tok_emb.weight[dst.cfg.speech_offset : dst.cfg.speech_offset + n] = src.tok_emb.weight[src.cfg.speech_offset : src.cfg.speech_offset + n]
        dst.tok_emb.weight[dst.cfg.sep_id] = src.tok_emb.weight[src.cfg.sep_id]
        copied.append("tok_emb[SEP, speech, EOS]")
    return copied


def set_trainable(model: CodecLM, parts: list[str]) -> int:
    """Freeze every parameter except the named parts; returns the number of trainable parameters."""
    prefixes = {"embeddings": ("tok_emb.", "pos_emb.", "cond_phone.", "cond_frames."), "ln_f": ("ln_f.",), "head": ("head.",)}
    allowed: list[str] = []
    for part in parts:
        if part == "all":
            allowed.append("")
        elif part.startswith("layers."):
            idx = int(part.split(".")[1])
            if idx >= len(model.blocks):
                raise ModelError(f"trainable part {part} does not exist in a {len(model.blocks)}-layer draft")
            allowed.append(f"blocks.{idx}.")
        else:
            allowed.extend(prefixes[part])
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad = any(name.startswith(a) for a in allowed)
        n += p.numel() if p.requires_grad else 0
    return n


def check_run_dir(out: Path, resume: bool) -> Path:
    """``out/last.pt``; refuses to overwrite a run without ``--resume`` and to resume a missing one."""
    last = out / "last.pt"
    if last.exists() and not resume:
        raise RunStateError(f"{out} already holds a training run: pass --resume to continue it or choose another out_dir")
    if resume and not last.exists():
        raise RunStateError(f"nothing to resume in {out}: run without --resume to start training")
    return last


def start_training(tc: TrainTargetConfig, out: Path, resume: bool) -> tuple[Path, torch.device, Any]:
    """What every training job does first: the run-folder check (``out/last.pt``), threads, device,
    the seed and the codec. Returns ``(last.pt path, device, codec)``."""
    last = check_run_dir(out, resume)
    set_threads(tc.threads)
    device = resolve_device(tc.device)
    torch.manual_seed(tc.seed)
    codec = codec_from_config(tc.codec, device=str(device))
    return last, device, codec


def train_target(tc: TrainTargetConfig, *, resume: bool = False, log: Any = print) -> Path:
    """Train (or resume) a target codec LM as configured; returns the exported ``model.pt`` path."""
    return train_lm(tc, resume=resume, log=log)


def train_lm(tc: TrainTargetConfig, *, resume: bool = False, log: Any = print) -> Path:
    """Train a target (TrainTargetConfig) or a draft (TrainDraftConfig); returns ``out_dir/model.pt``."""
    from specbench.config import TrainDraftConfig
    from specbench.models.lm_io import load_lm

    out = Path(tc.out_dir)
    last, device, codec = start_training(tc, out, resume)
    neighbours = None  # history noise: checked before any model or data is loaded
    if tc.history_noise > 0:
        if not hasattr(codec, "token_vectors"):
            raise ModelError(f"history_noise needs a codec that exposes its token vectors; {codec.id} does not: set history_noise to 0")
        neighbours = token_neighbours(codec.token_vectors(), tc.history_noise_neighbours)
    role, init_meta = "target", {}
    if isinstance(tc, TrainDraftConfig):
        role = "draft"
        target, tck = load_lm(tc.target)
        if tck.get("codec_id") and tck["codec_id"] != codec.id:
            raise ModelError(f"target {tc.target} was trained on codec {tck['codec_id']}, not {codec.id}: set codec.path to that codec")
        if tc.init == "target-layers":
            model = build_layer_draft(target, tc.layers)
            init_meta = {"init": "target-layers", "target": tc.target, "layers": tc.layers, "trainable": tc.trainable}
        else:
            # a scratch draft reads the same text units as its target (phones and frame rate for aligned ones)
            same = ("max_text_len", "max_speech_len", "text_vocab", "phones", "frame_rate", "max_phone_frames")
            model = CodecLM(ModelConfig(**{**tc.lm_config(codec.vocab_size), **{k: getattr(target.cfg, k) for k in same}}))
            init_meta = {"init": "scratch", "preset": tc.preset}
        del target
        cfg = model.cfg
        n_train = set_trainable(model, tc.trainable if tc.init == "target-layers" else ["all"])
    else:
        init = None
        if tc.init_checkpoint:
            init, ick = load_lm(tc.init_checkpoint)
            if ick.get("codec_id") and ick["codec_id"] != codec.id:
                raise ModelError(f"init_checkpoint {tc.init_checkpoint} was trained on codec {ick['codec_id']}, not {codec.id}: set codec.path to that codec")
            init_meta = {"init_checkpoint": tc.init_checkpoint}
        if init is not None and (tc.alignment == "durations") == init.cfg.aligned:
            model = init  # plain fine-tuning: same layout, the architecture comes from the checkpoint
        else:
            cfg = ModelConfig(**(init.cfg.to_dict() if init is not None else tc.lm_config(codec.vocab_size)))
            cfg = ModelConfig(**{**cfg.to_dict(), "phones": [], "text_vocab": ModelConfig().text_vocab})
            if tc.alignment == "durations":
                phones = phone_vocabulary(tc.train_manifest)
                cfg = ModelConfig(**{**cfg.to_dict(), "phones": phones, "text_vocab": 2 + len(phones), "frame_rate": float(codec.frame_rate)})
            model = CodecLM(cfg)
            if init is not None:
                init_meta["transferred"] = transfer_speech_weights(init, model)
        del init
        model.train()
        cfg = model.cfg
        n_train = count_parameters(model)
    model = model.to(device)
    train_ex = load_examples(tc.train_manifest, codec, cfg)
    dev_ex = load_examples(tc.dev_manifest, codec, cfg) if tc.dev_manifest else []
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.dim() >= 2 and "emb" not in n]
    no_decay = [p for n, p in params if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.98))
    step, elapsed, history = 0, 0.0, []
    if resume:
        state = load_checkpoint(last, KIND)
        if state.get("config") != cfg.to_dict():
            raise ModelError(f"{last} was trained with another model config; resume with the same config or a new out_dir")
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        step, elapsed, history = state["step"], state.get("elapsed", 0.0), state.get("history", [])
    out.mkdir(parents=True, exist_ok=True)
    log(f"{role} {count_parameters(model) / 1e6:.2f}M params ({n_train / 1e6:.2f}M trained) | {len(train_ex)} train utts | device {device} | {tc.precision}")

    def save() -> None:
        payload = model_payload(model, codec.id, {"role": role, **init_meta, "train": tc.model_dump(), "history": history})
        payload.update({"optimizer": opt.state_dict(), "step": step, "elapsed": elapsed, "history": history})
        save_atomic(payload, last)

    model.train()
    # the duration predictor trains with the model unless it is frozen (an SSD draft inherits the target's)
    train_durations = cfg.aligned and any(p.requires_grad for p in model.duration.parameters())
    data = batches(train_ex, cfg, tc.batch_tokens, tc.prompt_frames, tc.seed + step)
    mix_gen = torch.Generator(device=device).manual_seed(tc.seed + 7919 + step)
    noise_gen = torch.Generator().manual_seed(tc.seed + 104729 + step)
    columns = [TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
    ema, tokens_seen, t0 = None, 0, time.perf_counter()
    with Progress(*columns) as progress:
        task = progress.add_task("train", total=tc.steps, completed=step, info="")
        while step < tc.steps:
            batch = next(data)
            if tc.scheduled_sampling > 0:
                batch.ids = mix_own_samples(model, batch, tc.scheduled_sampling, tc.precision, device, mix_gen)
            if neighbours is not None:
                batch.ids = corrupt_history(batch.ids, batch.labels, tc.history_noise, neighbours, cfg, noise_gen)
            for g in opt.param_groups:
                g["lr"] = lr_at(step, tc)
            loss = loss_fn(model, batch, tc.precision, device)
            if train_durations:
                dur_loss, _ = duration_loss(model, batch, tc.precision, device)
                loss = loss + dur_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], tc.grad_clip)
            opt.step()
            step += 1
            if device.type == "cpu" and step % TRIM_EVERY == 0:
                release_host_memory()
            tokens_seen += int((batch.ids != 0).sum())
            now = time.perf_counter()
            lv = float(loss.detach())
            ema = lv if ema is None else 0.98 * ema + 0.02 * lv
            rate = tokens_seen / max(1e-9, now - t0)
            info = f"loss {ema:.3f} lr {lr_at(step - 1, tc):.2e} {rate:,.0f} tok/s"
            progress.update(task, completed=step, info=info)
            if not progress.console.is_terminal and step % 50 == 0:  # logs to a file get a line, not a bar
                progress.console.print(f"step {step}/{tc.steps} {info}")
            if step % tc.eval_every == 0 or step == tc.steps:
                row: dict[str, Any] = {"step": step, "train_loss": round(ema, 4), "minutes": round((elapsed + now - t0) / 60, 2)}
                if dev_ex:
                    row.update(evaluate(model, dev_ex, cfg, tc, device))
                history.append(row)
                append_jsonl(out / "history.jsonl", row)
                progress.console.print(row)
            if step % tc.save_every == 0 or step == tc.steps:
                elapsed_now = elapsed + time.perf_counter() - t0
                elapsed, t0, tokens_seen = elapsed_now, time.perf_counter(), 0
                save()
    meta = {"role": role, **init_meta, "train": tc.model_dump(), "history": history, "steps": step, "train_minutes": round(elapsed / 60, 1)}
    export_model(model, out / "model.pt", codec.id, meta)
    log(f"exported {out / 'model.pt'} after {step} steps, {elapsed / 60:.1f} min")
    return out / "model.pt"
