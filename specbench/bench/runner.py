"""``specbench run``: GENERATE → SCORE → REPORT over a recipe, resumable and never destructive.

Run folder (``output_dir``):
- ``config.yaml`` the validated recipe; ``run.json`` the fingerprint of what generation depends on
  (a rerun with a different corpus/codec/model/sampling/seed into the same folder is refused);
- ``env.json`` the environment of the first generation session (later sessions add ``env-N.json``);
- ``records.jsonl`` one generation row per (decoder, utterance, repeat), appended + fsynced as each
  finishes, so Ctrl-C loses nothing finished and a rerun skips done rows;
- ``scores.jsonl`` one row per (record, scorer) — rescoring with another ASR adds rows, never edits;
- ``audio/<decoder>/<utt>.r<repeat>.wav`` with its token ids beside it (``.tokens.npy``, also for the
  codec-decoded reference rows ``codec_resynth`` and ``teacher_forced``), and ``audio/prompts/<utt>.wav``
  (the prompt as the model heard it);
- ``summary.csv`` / ``summary.md`` written by the report step.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from specbench.assets import same_file
from specbench.audio import crop_seconds, read_audio, write_audio
from specbench.bench.env import capture_env
from specbench.codec import load_codec
from specbench.codec.base import SpeechCodec
from specbench.config import DecoderConfig, RunConfig
from specbench.data.manifest import Manifest, Utterance, load_manifest
from specbench.decoding.decoders import DecoderResources, build_proposer, build_tree_rule, check_heads_depth
from specbench.decoding.generate import generate, teacher_forced_tokens
from specbench.decoding.sampling import Sampling
from specbench.device import resolve_device, set_threads
from specbench.errors import ConfigError, DataError, ModelError, RunStateError
from specbench.jsonl import append_jsonl, read_jsonl, write_text_atomic
from specbench.targets import Context, TargetModel, load_draft, load_target
from specbench.text import encode_phonemes, phonemize_one

REFERENCE_DECODERS = ("ground_truth", "codec_resynth")
TEACHER_FORCED = "teacher_forced"  # reference row of scoring.teacher_forced (see reference_decoders)
FINGERPRINT_KEYS = ("seed", "corpus", "codec", "model", "sampling")
Log = Callable[[str], None]


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())


def record_key(decoder: str, utt_id: str, repeat: int) -> str:
    """Identity of a generation row."""
    return f"{decoder}|{utt_id}|{repeat}"


def item_seed(base: int, utt_id: str, repeat: int) -> int:
    """Per-(utterance, repeat) seed shared by all decoders (common random numbers for fair comparison)."""
    return (base * 1_000_003 + zlib.crc32(f"{utt_id}|{repeat}".encode())) % (2**31 - 1)


def select_items(utts: list[Utterance], limit: int | None) -> list[Utterance]:
    """Utterances with a prompt, interleaved round-robin over speakers, first ``limit`` of them."""
    by_spk: dict[str, list[Utterance]] = {}
    for u in utts:
        if u.prompt_audio:
            by_spk.setdefault(u.speaker, []).append(u)
    if not by_spk:
        raise DataError("no utterance in the manifest has a speaker prompt: rebuild it with `specbench prepare`")
    out: list[Utterance] = []
    queues = [by_spk[s] for s in sorted(by_spk)]
    i = 0
    while any(i < len(q) for q in queues):
        out.extend(q[i] for q in queues if i < len(q))
        i += 1
    return out[:limit] if limit else out


def resolve_manifest(cfg: RunConfig, out: Path, log: Log) -> Manifest:
    """Load the recipe's manifest, building it first when the corpus folder has none yet."""
    c = cfg.corpus
    if c.kind == "manifest":
        return load_manifest(c.manifest or "")
    if c.kind == "synthetic":
        path = Path(c.root) / f"{c.subset}.jsonl"
        if not path.is_file():
            from specbench.data.synthetic import prepare_synthetic

            if c.subset not in ("train", "dev", "test"):
                raise ConfigError(f"corpus.subset '{c.subset}' is not a split of the synthetic corpus: use train, dev or test")
            log(f"building the built-in '{c.subset}' split in {c.root} (espeak-ng, offline) ...")
            prepare_synthetic(c.root, splits=(c.subset,))
        return load_manifest(path)
    from specbench.data.libritts import build_manifest, resolve_subset_dir

    subset_dir = resolve_subset_dir(c.root, c.subset)
    path = subset_dir.parent / f"{c.subset}.jsonl"
    if path.is_file():
        return load_manifest(path)
    target = out / f"manifest-{c.subset}.jsonl"
    if target.is_file():
        return load_manifest(target)
    log(f"building a manifest for {subset_dir} ...")
    return build_manifest(c.root, c.subset, target)


def fingerprint(cfg: RunConfig) -> dict[str, Any]:
    """The parts of the config that generated rows depend on (corpus.limit may change freely)."""
    dump = cfg.model_dump(mode="json")
    fp = {k: dump[k] for k in FINGERPRINT_KEYS}
    fp["corpus"] = {k: v for k, v in fp["corpus"].items() if k != "limit"}
    return fp


def prepare_run_dir(cfg: RunConfig, out: Path) -> None:
    """Create the run folder, or check that an existing one was made by a compatible config."""
    out.mkdir(parents=True, exist_ok=True)
    run_json = out / "run.json"
    fp = fingerprint(cfg)
    if run_json.is_file():
        old = json.loads(run_json.read_text())["fingerprint"]
        changed = [f"{k}" for k in FINGERPRINT_KEYS if old.get(k) != fp.get(k)]
        if changed and (out / "records.jsonl").is_file():
            raise RunStateError(
                f"{out} holds results made with a different {', '.join(changed)}: choose another output_dir "
                f"(e.g. --set output_dir={out}-2) so finished results are not mixed or lost"
            )
    write_text_atomic(
        run_json, json.dumps({"fingerprint": fp, "fingerprint_sha1": hashlib.sha1(json.dumps(fp, sort_keys=True).encode()).hexdigest()}, indent=2)
    )
    write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def write_env(out: Path, env: dict[str, Any]) -> None:
    """``env.json`` for the first session, ``env-N.json`` for later ones (never overwritten)."""
    path = out / "env.json"
    n = 1
    while path.exists():
        n += 1
        path = out / f"env-{n}.json"
    write_text_atomic(path, json.dumps(env, indent=2))


def load_records(out: Path) -> list[dict[str, Any]]:
    """All generation rows of a run folder (empty list when none yet)."""
    path = out / "records.jsonl"
    return list(read_jsonl(path)) if path.is_file() else []


@dataclass
class Models:
    """What generation needs, loaded once (drafts by spec)."""

    codec: SpeechCodec
    target: TargetModel
    device: torch.device
    resources: DecoderResources

    @property
    def drafts(self) -> dict[str, TargetModel]:
        return self.resources.drafts


def load_heads_for(spec: str, target: TargetModel, codec: SpeechCodec, device: torch.device) -> Any:
    """Draft heads checkpoint ``spec``, refused unless trained on ``target`` (and its codec)."""
    from specbench.models.heads import check_compatible, load_heads

    heads, hck = load_heads(spec, device)
    if hck.get("codec_id") and hck["codec_id"] != codec.id:
        raise ModelError(f"heads {spec} were trained on codec {hck['codec_id']} but the recipe loads {codec.id}: use heads trained with this codec")
    if hck.get("target") and not same_file(hck["target"], target.id):
        raise ModelError(
            f"heads {spec} were trained on target {hck['target']} but the recipe's model is {target.id}: "
            "set the model to that target (joint training writes its own target.pt) or train heads for this one"
        )
    check_compatible(heads, target, f"heads {spec}")
    return heads


def load_models(cfg: RunConfig) -> Models:
    """Codec + target model (+ drafts, heads); refuses a model trained on another codec."""
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    codec = load_codec(cfg.codec.kind, cfg.codec.path, bandwidth=cfg.codec.bandwidth, device=str(device))
    target = load_target(cfg.model, device)
    target.check_codec(codec)
    res = DecoderResources(target)
    for d in cfg.decoders:
        if d.draft and d.draft not in res.drafts:
            draft = load_draft(d.draft, target, cfg.model, device)
            draft.check_codec(codec)
            res.drafts[d.draft] = draft
        if d.heads and d.heads not in res.heads:
            res.heads[d.heads] = load_heads_for(d.heads, target, codec, device)
        if d.method == "speculative":
            check_heads_depth(d, res)
            build_tree_rule(d, res)  # fail before generating anything (e.g. groups of an impossible θ)
    return Models(codec, target, device, res)


def describe_models(m: Models) -> dict[str, Any]:
    """Provenance of the loaded models: target and drafts (``describe()``), codec id, heads specs."""
    return {
        "target": {"id": m.target.id, **m.target.describe()},
        "drafts": {spec: {"id": d.id, **d.describe()} for spec, d in m.resources.drafts.items()},
        "heads": sorted(m.resources.heads),
        "codec": m.codec.id,
    }


def decode_one(m: Models, d: DecoderConfig, ctx: Context, sampling: Sampling, max_tokens: int, seed: int, profile: bool = False):
    """Run decoder ``d`` on one utterance with a fresh generator seeded by ``seed`` (``profile``: see generate)."""
    gen = torch.Generator(device=m.device).manual_seed(seed)
    if d.method == "baseline":
        return generate(m.target, ctx, sampling, max_tokens, gen, profile=profile)
    proposer = build_proposer(d, m.resources)
    return generate(m.target, ctx, sampling, max_tokens, gen, proposer, build_tree_rule(d, m.resources), profile=profile)


class PromptCache:
    """Prompt audio (cropped as the model hears it) and its tokens, per utterance."""

    def __init__(self, manifest: Manifest, codec: SpeechCodec, seconds: float, out: Path) -> None:
        self.manifest, self.codec, self.seconds, self.out = manifest, codec, seconds, out
        self._tokens: dict[str, torch.Tensor] = {}
        self._texts = {u.utt_id: u.text for u in manifest.utterances}

    def path(self, utt: Utterance) -> Path:
        return self.out / "audio" / "prompts" / f"{utt.utt_id}.wav"

    def tokens(self, utt: Utterance) -> torch.Tensor:
        if utt.utt_id not in self._tokens:
            wav, sr = read_audio(utt.prompt_path(self.manifest.root))
            wav = crop_seconds(wav, sr, self.seconds)
            if not self.path(utt).is_file():
                write_audio(self.path(utt), wav, sr)
            self._tokens[utt.utt_id] = self.codec.encode(wav, sr)
        return self._tokens[utt.utt_id]

    def transcript(self, utt: Utterance) -> str | None:
        """What the prompt says: ``extra.prompt_text``, else the text of ``prompt_utt_id`` in the manifest."""
        return utt.extra.get("prompt_text") or self._texts.get(utt.prompt_utt_id or "")

    def context(self, utt: Utterance) -> Context:
        """The utterance's :class:`~specbench.targets.Context` (text, phonemes, prompt transcript and tokens)."""
        return Context(text=utt.text, phonemes=phonemes_of(utt), prompt_tokens=self.tokens(utt), prompt_text=self.transcript(utt))


def phonemes_of(utt: Utterance) -> str:
    """The utterance's espeak-ng phonemes (computed when the manifest has none)."""
    return utt.phonemes or phonemize_one(utt.text)


def text_length(utt: Utterance) -> int:
    """Length of the text in phoneme units, the model-independent measure token budgets scale with."""
    return len(encode_phonemes(phonemes_of(utt)))


BUDGET_FRAME_RATE = 50.0  # max_tokens_per_text_token is stated for a 50 tokens/s codec


def token_budget(cfg: RunConfig, n_text: int, frame_rate: float = BUDGET_FRAME_RATE) -> int:
    """``min(max_tokens, ceil(max_tokens_per_text_token × n_text × frame_rate / 50))``: stops a model that never ends.

    ``n_text`` is the text length in phoneme units (:func:`text_length`); the ratio is per phoneme at 50
    tokens/s, so a codec writing 82 tokens/s (Orpheus' flat SNAC stream) gets a proportionally larger budget.
    """
    s = cfg.sampling
    if s.max_tokens_per_text_token is None:
        return s.max_tokens
    return max(1, min(s.max_tokens, math.ceil(s.max_tokens_per_text_token * n_text * frame_rate / BUDGET_FRAME_RATE)))


def generate_step(cfg: RunConfig, out: Path, log: Log = print) -> int:
    """Generate every missing (decoder, utterance, repeat) row; returns the number of new rows."""
    prepare_run_dir(cfg, out)
    manifest = resolve_manifest(cfg, out, log)
    items = select_items(manifest.utterances, cfg.corpus.limit)
    done = {record_key(r["decoder"], r["utt_id"], r["repeat"]) for r in load_records(out)}
    jobs = [(rep, u, d) for rep in range(cfg.repeats) for u in items for d in cfg.decoders if record_key(d.name, u.utt_id, rep) not in done]
    refs = [(u, name) for u in items for name in reference_decoders(cfg) if record_key(name, u.utt_id, 0) not in done]
    if not jobs and not refs:
        log(f"generation: all {len(items) * len(cfg.decoders) * cfg.repeats} rows already in {out / 'records.jsonl'}")
        return 0
    m = load_models(cfg)
    write_env(out, capture_env(m.device, cfg.seed, describe_models(m)))
    prompts = PromptCache(manifest, m.codec, cfg.corpus.prompt_seconds, out)
    sampling = Sampling(cfg.sampling.temperature, cfg.sampling.top_k, cfg.sampling.top_p)
    common = {"codec_id": m.codec.id, "model": m.target.id, "device": str(m.device), "sampling": cfg.sampling.model_dump()}
    rate = m.codec.frame_rate

    if jobs and cfg.warmup:
        first = prompts.context(jobs[0][1])
        for d in cfg.decoders:  # warm-up runs (allocator, caches, lazy init) are discarded
            for _ in range(cfg.warmup):
                decode_one(m, d, first, sampling, min(50, token_budget(cfg, 10, rate)), 0)

    new = 0
    with _progress() as progress:
        task = progress.add_task("generating", total=len(jobs) + len(refs))
        for rep, u, d in jobs:
            progress.update(task, description=f"{d.name} {u.utt_id}")
            seed = item_seed(cfg.seed, u.utt_id, rep)
            tokens, stats = decode_one(m, d, prompts.context(u), sampling, token_budget(cfg, text_length(u), rate), seed)
            t0 = time.perf_counter()
            wav, sr = m.codec.decode(tokens)
            decode_seconds = time.perf_counter() - t0
            audio = out / "audio" / d.name / f"{u.utt_id}.r{rep}.wav"
            write_audio(audio, wav, sr)
            np.save(audio.with_suffix(".tokens.npy"), tokens.numpy().astype(np.int32))  # for stress tests and re-decoding
            audio_seconds = len(wav) / sr
            row = {
                "decoder": d.name,
                "method": d.method,
                **d.params(),
                "draft": d.draft,
                "heads": d.heads,
                "kind": "decoder",
                "utt_id": u.utt_id,
                "speaker": u.speaker,
                "repeat": rep,
                "seed": seed,
                "text": u.text,
                **stats.to_row(),
                **m.resources.group_stats(d),
                "audio_seconds": audio_seconds,
                "decode_seconds": decode_seconds,
                "e2e_seconds": stats.lm_seconds + decode_seconds,
                "lm_rtf": stats.lm_seconds / audio_seconds if audio_seconds else None,
                "e2e_rtf": (stats.lm_seconds + decode_seconds) / audio_seconds if audio_seconds else None,
                "audio": str(audio.relative_to(out)),
                "prompt_audio": str(prompts.path(u).relative_to(out)),
                "ref_audio": str(u.audio_path(manifest.root)),
                **common,
            }
            append_jsonl(out / "records.jsonl", row)
            new += 1
            progress.advance(task)
        for u, name in refs:
            progress.update(task, description=f"{name} {u.utt_id}")
            prompts.tokens(u)  # makes sure the prompt file exists for SIM
            ref_path = u.audio_path(manifest.root)
            if name == "ground_truth":
                audio_rel, seconds = str(ref_path.resolve()), float(u.duration)
            else:
                wav, sr = read_audio(ref_path)
                codes = m.codec.encode(wav, sr)
                if name == TEACHER_FORCED:
                    codes = teacher_forced_tokens(m.target, prompts.context(u), codes)
                rt, rsr = m.codec.decode(codes)
                audio = out / "audio" / name / f"{u.utt_id}.r0.wav"
                write_audio(audio, rt, rsr)
                np.save(audio.with_suffix(".tokens.npy"), codes.numpy().astype(np.int32))  # as for decoders
                audio_rel, seconds = str(audio.relative_to(out)), len(rt) / rsr
            append_jsonl(
                out / "records.jsonl",
                {
                    "decoder": name,
                    "method": name,
                    "kind": "reference",
                    "utt_id": u.utt_id,
                    "speaker": u.speaker,
                    "repeat": 0,
                    "seed": None,
                    "text": u.text,
                    "audio_seconds": seconds,
                    "audio": audio_rel,
                    "prompt_audio": str(prompts.path(u).relative_to(out)),
                    "ref_audio": str(ref_path),
                    **common,
                },
            )
            new += 1
            progress.advance(task)
    log(f"generation: {new} new rows in {out / 'records.jsonl'}")
    return new


def reference_decoders(cfg: RunConfig) -> tuple[str, ...]:
    """Reference rows a run adds: the ceilings (``scoring.reference``) and ``teacher_forced`` when asked."""
    names = REFERENCE_DECODERS if cfg.scoring.reference else ()
    return names + ((TEACHER_FORCED,) if cfg.scoring.teacher_forced else ())


def resolve_audio(out: Path, path: str) -> Path:
    """Record audio paths are relative to the run folder unless absolute."""
    p = Path(path)
    return p if p.is_absolute() else out / p


def scorer_ids(cfg: RunConfig) -> dict[str, str]:
    """ASR, speaker-model and normaliser ids of a scoring config (no model is loaded)."""
    from specbench.scoring import build_asr, build_speaker
    from specbench.scoring.normalize import NORMALIZER_IDS

    return {
        "asr_model": build_asr(cfg.scoring.asr).id,
        "speaker_model": build_speaker(cfg.scoring.speaker).id,
        "normalizer": NORMALIZER_IDS[cfg.scoring.normalizer],
    }


def score_step(cfg: RunConfig, out: Path, log: Log = print) -> int:
    """Add WER/CER/SIM rows for every record not yet scored by this scorer; returns rows added."""
    from specbench.scoring import build_asr, build_speaker

    if not cfg.scoring.enabled:
        log("scoring disabled (scoring.enabled: false)")
        return 0
    records = load_records(out)
    if not records:
        raise RunStateError(f"no generated rows in {out}: run `specbench generate` (or `specbench run`) first")
    asr, spk = build_asr(cfg.scoring.asr), build_speaker(cfg.scoring.speaker)
    ids = scorer_ids(cfg)
    scorer = "|".join(ids.values())
    score_path = out / "scores.jsonl"
    done = {(r["key"], r["scorer"]) for r in read_jsonl(score_path)} if score_path.is_file() else set()
    todo = [r for r in records if (record_key(r["decoder"], r["utt_id"], r["repeat"]), scorer) not in done]
    if not todo:
        log(f"scoring: all {len(records)} rows already scored by {scorer}")
        return 0
    # one embedding per distinct prompt; SIM-other compares against prompts of the OTHER speakers
    prompt_emb: dict[str, np.ndarray] = {}
    prompt_spk: dict[str, str] = {}
    for r in records:
        if r["prompt_audio"] not in prompt_emb:
            wav, sr = read_audio(resolve_audio(out, r["prompt_audio"]))
            prompt_emb[r["prompt_audio"]] = spk.embed(wav, sr)
            prompt_spk[r["prompt_audio"]] = r["speaker"]
    added = 0
    # clips go to the ASR in chunks of batch_size (the transformers backend batches them; the others
    # take batch_size 1); rows are still appended one by one, so an interruption loses at most a chunk
    chunk = max(1, cfg.scoring.asr.batch_size)
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            progress.update(task, description=f"scoring {part[0]['decoder']} {part[0]['utt_id']}")
            # a decoder that emitted no token (EOS first) wrote an empty clip: nothing to transcribe or embed
            audio = [read_audio(resolve_audio(out, r["audio"])) if r.get("audio_seconds") != 0 else None for r in part]
            hyps = iter(_transcribe_chunk(asr, [a for a in audio if a is not None]))
            for r, clip in zip(part, audio, strict=True):
                wav, sr = clip if clip is not None else (None, 0)
                _score_row(r, wav, sr, next(hyps) if clip is not None else "", cfg, ids, scorer, spk, prompt_emb, prompt_spk, score_path)
                added += 1
                progress.advance(task)
    log(f"scoring: {added} new rows in {score_path}")
    return added


def _transcribe_chunk(asr: Any, audio: list[tuple[np.ndarray, int]]) -> list[str]:
    """One ``transcribe`` call per sample rate present in the chunk (a run's clips share one rate)."""
    hyps: list[str | None] = [None] * len(audio)
    for sr in dict.fromkeys(s for _, s in audio):
        idx = [i for i, (_, s) in enumerate(audio) if s == sr]
        for i, text in zip(idx, asr.transcribe([audio[i][0] for i in idx], sr), strict=True):
            hyps[i] = text
    return [h or "" for h in hyps]


def _score_row(
    r: dict[str, Any],
    wav: np.ndarray | None,
    sr: int,
    hyp: str,
    cfg: RunConfig,
    ids: dict[str, str],
    scorer: str,
    spk: Any,
    prompt_emb: dict[str, np.ndarray],
    prompt_spk: dict[str, str],
    score_path: Path,
) -> None:
    """Score one record (WER/CER from ``hyp``, SIM and SIM-other) and append its row to the journal."""
    from specbench.scoring.speaker import cosine
    from specbench.scoring.wer import utterance_wer

    w = utterance_wer(r["text"], hyp, cfg.scoring.normalizer)
    emb = spk.embed(wav, sr) if wav is not None else None  # an empty clip: WER 1 (all deletions), no SIM
    others = [cosine(emb, e) for p, e in prompt_emb.items() if prompt_spk[p] != r["speaker"]] if emb is not None else []
    row = {
        "key": record_key(r["decoder"], r["utt_id"], r["repeat"]),
        "scorer": scorer,
        **ids,
        "wer": w["wer"],
        "cer": w["cer"],
        "ref_words": w["ref_words"],
        "edits": w["edits"],
        "ref_chars": w["ref_chars"],
        "char_edits": w["char_edits"],
        "hyp": hyp,
        "sim": cosine(emb, prompt_emb[r["prompt_audio"]]) if emb is not None else None,
        "sim_other": float(np.mean(others)) if (others and cfg.scoring.cross_speaker) else None,
    }
    append_jsonl(score_path, row)


def run(cfg: RunConfig, steps: tuple[str, ...] = ("generate", "score", "report"), log: Log = print) -> Path:
    """Run the requested steps of a recipe; returns the run folder."""
    from specbench.bench.report import report_step

    out = cfg.resolved_output_dir()
    if "generate" in steps:
        generate_step(cfg, out, log)
    if "score" in steps:
        score_step(cfg, out, log)
    if "report" in steps:
        report_step(out, cfg, log)
    return out


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> RunConfig:
    """The config saved in a run folder (with optional overrides, e.g. another ASR for rescoring)."""
    from specbench.config import apply_overrides, validate

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RunStateError(f"{run_dir} is not a specbench run folder (no config.yaml): pass a run's output_dir")
    data = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    data["output_dir"] = str(run_dir)
    return validate(RunConfig, data, str(path))
