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

Generation and scoring call per-item functions (:meth:`ItemGenerator.generate_item`,
:meth:`ItemScorer.score_chunk`) that write nothing; the step's loop writes what they return. With
``--shards N`` the same functions run on N Ray workers (:mod:`specbench.bench.shards`) and this process
stays the only writer, so the files, the resume rules and the rows themselves are the same.
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
from specbench.codec import codec_from_config
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
    fp["model"] = {k: v for k, v in fp["model"].items() if k != "compile"}  # compiled == eager tokens (tests/test_compile.py)
    # decoding only: the tokens do not depend on it; check_same_synthesis guards the audio by the codec's own id
    fp["codec"] = {k: v for k, v in fp["codec"].items() if k != "synthesis_kernel"}
    return fp


def current_fingerprint(old: dict[str, Any]) -> dict[str, Any]:
    """A stored fingerprint read through TODAY's schema: sections gain the fields added since (with their
    defaults), so a run folder made before a schema addition still resumes under the same recipe."""
    from pydantic import ValidationError

    from specbench.config import CodecConfig, CorpusConfig, ModelRef, SamplingConfig

    out = dict(old)
    for key, model in (("corpus", CorpusConfig), ("codec", CodecConfig), ("model", ModelRef), ("sampling", SamplingConfig)):
        if isinstance(old.get(key), dict):
            try:
                out[key] = model.model_validate(old[key]).model_dump(mode="json")
            except ValidationError:
                continue
    if isinstance(out.get("corpus"), dict):
        out["corpus"] = {k: v for k, v in out["corpus"].items() if k != "limit"}
    if isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items() if k != "compile"}
    if isinstance(out.get("codec"), dict):
        out["codec"] = {k: v for k, v in out["codec"].items() if k != "synthesis_kernel"}
    return out


def prepare_run_dir(cfg: RunConfig, out: Path) -> None:
    """Create the run folder, or check that an existing one was made by a compatible config."""
    out.mkdir(parents=True, exist_ok=True)
    run_json = out / "run.json"
    fp = fingerprint(cfg)
    if run_json.is_file():
        old = current_fingerprint(json.loads(run_json.read_text())["fingerprint"])
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


# how kmeans-mel audio was decoded before the synthesis was recorded (no smoothing, 48 Griffin-Lim iterations)
LEGACY_KMEANS_SYNTHESIS = "smooth[1]+griffin-lim48"


def check_same_synthesis(out: Path, env: dict[str, Any]) -> None:
    """Refuse to add rows to a run folder whose earlier audio another codec synthesis decoded (the tokens
    would match, the audio, and so every quality column, would not): a one-line RunStateError."""
    first = out / "env.json"
    if not ((out / "records.jsonl").is_file() and first.is_file()):
        return
    try:
        models = json.loads(first.read_text()).get("models") or {}
    except (OSError, ValueError):
        return  # an unreadable env.json is reported by the report step; it holds no synthesis to compare
    old = models.get("codec_synthesis")
    if old is None and str(models.get("codec", "")).startswith("kmeans-mel"):
        old = LEGACY_KMEANS_SYNTHESIS
    new = (env.get("models") or {}).get("codec_synthesis")
    if old != new:
        raise RunStateError(
            f"{out} holds audio the codec decoded as {old}, this session would decode as {new}: choose another "
            f"output_dir (e.g. --set output_dir={out}-2) or set codec.synthesis_kernel to the folder's"
        )


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
    codec = codec_from_config(cfg.codec, device=str(device))
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
        "codec_synthesis": getattr(m.codec, "synthesis_id", None),
    }


def decode_one(m: Models, d: DecoderConfig, ctx: Context, sampling: Sampling, max_tokens: int, seed: int, profile: bool = False):
    """Run decoder ``d`` on one utterance with a fresh generator seeded by ``seed`` (``profile``: see generate)."""
    gen = torch.Generator(device=m.device).manual_seed(seed)
    if d.method == "baseline":  # with a draft: that draft model alone, in the target's place
        return generate(m.drafts[d.draft] if d.draft else m.target, ctx, sampling, max_tokens, gen, profile=profile)
    proposer = build_proposer(d, m.resources)
    return generate(m.target, ctx, sampling, max_tokens, gen, proposer, build_tree_rule(d, m.resources), profile=profile)


class PromptCache:
    """Prompt audio (cropped as the model hears it) and its tokens, per utterance.

    With a folder ``out`` each prompt clip is written to ``out/audio/prompts/<utt>.wav`` when first
    encoded. With ``out=None`` (the runner's workers, which never write) a newly encoded clip waits in
    :meth:`take_clip` until the item that needed it hands it to the writer.
    """

    def __init__(self, manifest: Manifest, codec: SpeechCodec, seconds: float, out: Path | None) -> None:
        self.manifest, self.codec, self.seconds, self.out = manifest, codec, seconds, out
        self._tokens: dict[str, torch.Tensor] = {}
        self._clips: dict[str, tuple[np.ndarray, int]] = {}
        self._texts = {u.utt_id: u.text for u in manifest.utterances}

    @staticmethod
    def relative_path(utt: Utterance) -> Path:
        """Where the prompt clip lives inside a run folder."""
        return Path("audio") / "prompts" / f"{utt.utt_id}.wav"

    def path(self, utt: Utterance) -> Path:
        return (self.out or Path(".")) / self.relative_path(utt)

    def tokens(self, utt: Utterance) -> torch.Tensor:
        if utt.utt_id not in self._tokens:
            wav, sr = read_audio(utt.prompt_path(self.manifest.root))
            wav = crop_seconds(wav, sr, self.seconds)
            if self.out is None:
                self._clips[utt.utt_id] = (wav, sr)
            elif not self.path(utt).is_file():
                write_audio(self.path(utt), wav, sr)
            self._tokens[utt.utt_id] = self.codec.encode(wav, sr)
        return self._tokens[utt.utt_id]

    def take_clip(self, utt: Utterance) -> tuple[np.ndarray, int] | None:
        """The prompt clip encoded since it was last taken (once per process and utterance), else None."""
        return self._clips.pop(utt.utt_id, None)

    def transcript(self, utt: Utterance) -> str | None:
        """What the prompt says: ``extra.prompt_text``, else the text of ``prompt_utt_id`` in the manifest."""
        return utt.extra.get("prompt_text") or self._texts.get(utt.prompt_utt_id or "")

    def context(self, utt: Utterance) -> Context:
        """The utterance's :class:`~specbench.targets.Context` (text, phonemes, prompt transcript and tokens)."""
        return Context(
            text=utt.text,
            phonemes=phonemes_of(utt),
            prompt_tokens=self.tokens(utt),
            prompt_text=self.transcript(utt),
            phones=utt.phones,
            phone_starts=utt.phone_starts,
        )


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


@dataclass
class GenJob:
    """One generation row to make: ``decoder`` (a decoder name, or a reference row's name) × utterance × repeat."""

    decoder: str
    utt: Utterance
    repeat: int
    reference: bool = False

    @property
    def key(self) -> str:
        return record_key(self.decoder, self.utt.utt_id, self.repeat)

    def __str__(self) -> str:
        return f"decoder {self.decoder}, utt_id {self.utt.utt_id}, repeat {self.repeat}"


@dataclass
class ItemResult:
    """What generating one row produced, for the writer (:func:`write_item`); nothing of it is on disk yet.

    ``audio``: the clip for ``row["audio"]`` (None for ``ground_truth``, which points at the corpus file);
    ``tokens``: its int32 token ids (written beside it); ``prompt``: the prompt clip as the model heard it,
    sent by the first item of its utterance in each process (the writer writes it once).
    """

    row: dict[str, Any]
    audio: tuple[np.ndarray, int] | None = None
    tokens: np.ndarray | None = None
    prompt: tuple[np.ndarray, int] | None = None


@dataclass
class GenPlan:
    """The missing rows of a run folder: decoder jobs first (repeat × utterance × decoder), then reference rows."""

    manifest: Manifest
    items: list[Utterance]
    jobs: list[GenJob]

    @property
    def warmup_utt(self) -> Utterance | None:
        """The utterance warm-up runs use: the first missing decoder row's (none when only references are missing)."""
        return next((j.utt for j in self.jobs if not j.reference), None)


def plan_generation(cfg: RunConfig, out: Path, log: Log = print) -> GenPlan:
    """Prepare (or check) the run folder and list the rows ``records.jsonl`` does not hold yet."""
    prepare_run_dir(cfg, out)
    manifest = resolve_manifest(cfg, out, log)
    items = select_items(manifest.utterances, cfg.corpus.limit)
    done = {record_key(r["decoder"], r["utt_id"], r["repeat"]) for r in load_records(out)}
    jobs = [GenJob(d.name, u, rep) for rep in range(cfg.repeats) for u in items for d in cfg.decoders]
    jobs += [GenJob(name, u, 0, reference=True) for u in items for name in reference_decoders(cfg)]
    return GenPlan(manifest, items, [j for j in jobs if j.key not in done])


def audio_relative_path(decoder: str, utt_id: str, repeat: int) -> Path:
    """Where a row's clip lives inside a run folder (its ``.tokens.npy`` beside it)."""
    return Path("audio") / decoder / f"{utt_id}.r{repeat}.wav"


class ItemGenerator:
    """The models of one process — the run's own, or one shard's — turning a :class:`GenJob` into an :class:`ItemResult`.

    Loads codec, target, drafts and heads once. Writes nothing: the driver writes what it returns
    (:func:`write_item`). A row depends only on (config, job): its generator is seeded by
    :func:`item_seed`, so rows do not depend on which process made them or in which order.
    """

    def __init__(self, cfg: RunConfig, manifest: Manifest, shards: int = 1) -> None:
        self.cfg, self.root = cfg, manifest.root
        self.m = load_models(cfg)
        self.prompts = PromptCache(manifest, self.m.codec, cfg.corpus.prompt_seconds, None)
        self.sampling = Sampling.from_config(cfg.sampling)
        self.decoders = {d.name: d for d in cfg.decoders}
        m = self.m
        self.common = {"codec_id": m.codec.id, "model": m.target.id, "device": str(m.device), "sampling": cfg.sampling.model_dump(), "shards": shards}

    def environment(self) -> dict[str, Any]:
        """``env.json`` of this process (device, versions, the loaded models)."""
        return capture_env(self.m.device, self.cfg.seed, describe_models(self.m))

    def warm_up(self, utt: Utterance | None) -> None:
        """``cfg.warmup`` discarded runs of every decoder on ``utt`` (allocator, caches, lazy init)."""
        if utt is None or not self.cfg.warmup:
            return
        first = self.prompts.context(utt)
        budget = min(50, token_budget(self.cfg, 10, self.m.codec.frame_rate))
        for d in self.cfg.decoders:
            for _ in range(self.cfg.warmup):
                decode_one(self.m, d, first, self.sampling, budget, 0)

    def generate_item(self, job: GenJob) -> ItemResult:
        """Generate (or, for a reference row, encode/decode) one row; pure apart from the models' caches."""
        res = self._reference(job) if job.reference else self._decoder_row(job)
        res.prompt = self.prompts.take_clip(job.utt)  # taken only once the item succeeded
        return res

    def _decoder_row(self, job: GenJob) -> ItemResult:
        cfg, m, u, d, rep = self.cfg, self.m, job.utt, self.decoders[job.decoder], job.repeat
        seed = item_seed(cfg.seed, u.utt_id, rep)
        tokens, stats = decode_one(m, d, self.prompts.context(u), self.sampling, token_budget(cfg, text_length(u), m.codec.frame_rate), seed)
        t0 = time.perf_counter()
        wav, sr = m.codec.decode(tokens)
        decode_seconds = time.perf_counter() - t0
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
            "audio": str(audio_relative_path(d.name, u.utt_id, rep)),
            "prompt_audio": str(PromptCache.relative_path(u)),
            "ref_audio": str(u.audio_path(self.root)),
            **self.common,
        }
        return ItemResult(row, (wav, sr), tokens.numpy().astype(np.int32))  # tokens: for stress tests and re-decoding

    def _reference(self, job: GenJob) -> ItemResult:
        m, u, name = self.m, job.utt, job.decoder
        self.prompts.tokens(u)  # the prompt clip goes to the writer too (SIM needs it)
        ref_path = u.audio_path(self.root)
        clip = codes = None
        if name == "ground_truth":
            audio_rel, seconds = str(ref_path.resolve()), float(u.duration)
        else:
            wav, sr = read_audio(ref_path)
            codes = m.codec.encode(wav, sr)
            if name == TEACHER_FORCED:
                codes = teacher_forced_tokens(m.target, self.prompts.context(u), codes)
            clip = m.codec.decode(codes)
            audio_rel, seconds = str(audio_relative_path(name, u.utt_id, 0)), len(clip[0]) / clip[1]
        row = {
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
            "prompt_audio": str(PromptCache.relative_path(u)),
            "ref_audio": str(ref_path),
            **self.common,
        }
        return ItemResult(row, clip, codes.numpy().astype(np.int32) if codes is not None else None)


def write_item(out: Path, res: ItemResult) -> None:
    """The driver's write of one generated row: prompt clip (once), clip and tokens, then the fsynced row.

    The row is appended last, so a row in ``records.jsonl`` always has its files; a crash before that
    leaves at most orphan files that the rerun overwrites.
    """
    if res.prompt is not None:
        prompt = out / res.row["prompt_audio"]
        if not prompt.is_file():
            write_audio(prompt, *res.prompt)
    if res.audio is not None:
        audio = out / res.row["audio"]
        write_audio(audio, *res.audio)
        if res.tokens is not None:
            np.save(audio.with_suffix(".tokens.npy"), res.tokens)
    append_jsonl(out / "records.jsonl", res.row)


def _env_of(pool: Any, envs: list[dict[str, Any]]) -> dict[str, Any]:
    """``env.json`` of a session: the first worker's environment, the shard count and (sharded) every worker."""
    env = {**envs[0], "shards": pool.shards}
    workers = pool.workers()
    if workers:
        env["workers"] = [{**w, "device": e["device"], "device_name": e["device_name"]} for w, e in zip(workers, envs, strict=True)]
    return env


def _worker_run_config(cfg: RunConfig, gpu: bool) -> RunConfig:
    """The config a generation shard uses: its device as Ray shows it, and one torch thread on CPU unless ``threads`` is set."""
    from specbench.bench.shards import worker_device

    return cfg.model_copy(update={"device": worker_device(cfg.device, gpu), "threads": cfg.threads if gpu else (cfg.threads or 1)})


def generate_step(cfg: RunConfig, out: Path, log: Log = print, shards: int = 1, ray_address: str | None = None) -> int:
    """Generate every missing (decoder, utterance, repeat) row (and reference row); returns the number of new rows.

    ``shards > 1`` (or a ``ray_address``) spreads the rows over Ray workers (:mod:`specbench.bench.shards`);
    the rows, the files and the resume rules are the same, and this process still writes everything.
    """
    from specbench.bench.shards import open_pool, raise_failures, wants_gpu

    plan = plan_generation(cfg, out, log)
    if not plan.jobs:
        log(f"generation: all {len(plan.items) * len(cfg.decoders) * cfg.repeats} rows already in {out / 'records.jsonl'}")
        return 0
    new = 0
    with open_pool(
        ItemGenerator,
        (cfg, plan.manifest, shards),
        shards,
        ray_address,
        gpu=lambda res: wants_gpu(cfg.device, res),
        worker_args=lambda gpu: (_worker_run_config(cfg, gpu), plan.manifest, shards),
        threads=lambda gpu: cfg.threads if gpu else (cfg.threads or 1),
        what="generation",
    ) as pool:
        env = _env_of(pool, pool.call_all("environment"))
        check_same_synthesis(out, env)
        write_env(out, env)
        if pool.workers():
            log(f"generation: {len(plan.jobs)} missing rows on {pool.shards} shards (Ray workers)")
        pool.call_all("warm_up", plan.warmup_utt)
        with _progress() as progress:
            task = progress.add_task("generating", total=len(plan.jobs))
            local = not pool.workers()  # one process: show the row being made; sharded: the row just written
            for job, res in pool.imap(
                "generate_item",
                plan.jobs,
                on_start=(lambda j: progress.update(task, description=f"{j.decoder} {j.utt.utt_id}")) if local else None,
                report=lambda line: progress.console.print(line, markup=False, highlight=False, soft_wrap=True),
            ):
                write_item(out, res)
                new += 1
                progress.update(task, advance=1, **({} if local else {"description": f"{job.decoder} {job.utt.utt_id}"}))
        failures, unstarted = pool.failures, pool.unstarted
    log(f"generation: {new} new rows in {out / 'records.jsonl'}")
    raise_failures("generation", failures, unstarted, new)
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


class ItemScorer:
    """ASR + speaker model of one process — the run's own, or one shard's — scoring chunks of records.

    Builds the backends once (their weights load on first use). Writes nothing: it gets the audio as
    arrays and returns score rows for the driver to append. :meth:`set_prompts` gives it every prompt's
    embedding (SIM, and SIM-other against the OTHER speakers' prompts) before the first chunk.
    """

    def __init__(self, cfg: RunConfig) -> None:
        from specbench.scoring import build_asr, build_speaker

        self.cfg = cfg
        self.asr, self.spk = build_asr(cfg.scoring.asr), build_speaker(cfg.scoring.speaker)
        self.ids = scorer_ids(cfg)
        self.scorer = "|".join(self.ids.values())
        self.prompt_emb: dict[str, np.ndarray] = {}
        self.prompt_spk: dict[str, str] = {}

    def scorer_ids(self) -> dict[str, str]:
        return self.ids

    def embed_prompts(self, clips: list[tuple[np.ndarray, int]]) -> list[np.ndarray]:
        """Speaker embeddings of prompt clips."""
        return [self.spk.embed(wav, sr) for wav, sr in clips]

    def set_prompts(self, emb: dict[str, np.ndarray], spk: dict[str, str]) -> None:
        """Every prompt's embedding and speaker, by the records' ``prompt_audio``."""
        self.prompt_emb, self.prompt_spk = emb, spk

    def score_chunk(self, part: list[dict[str, Any]], clips: list[tuple[np.ndarray, int] | None]) -> list[dict[str, Any]]:
        """Score rows of ``part`` (clips in the same order; None = an empty clip): one ASR call per chunk."""
        hyps = iter(_transcribe_chunk(self.asr, [c for c in clips if c is not None]))
        rows = []
        for r, clip in zip(part, clips, strict=True):
            wav, sr = clip if clip is not None else (None, 0)
            hyp = next(hyps) if clip is not None else ""
            rows.append(_score_row(r, wav, sr, hyp, self.cfg, self.ids, self.scorer, self.spk, self.prompt_emb, self.prompt_spk))
        return rows


def _worker_score_config(cfg: RunConfig, gpu: bool) -> RunConfig:
    """The config a scoring shard uses: ASR and speaker devices as Ray shows them (``cuda:N`` → ``cuda``)."""
    from specbench.bench.shards import worker_device

    sc = cfg.scoring
    scoring = sc.model_copy(
        update={
            "asr": sc.asr.model_copy(update={"device": worker_device(sc.asr.device, gpu)}),
            "speaker": sc.speaker.model_copy(update={"device": worker_device(sc.speaker.device, gpu)}),
        }
    )
    return cfg.model_copy(update={"scoring": scoring})


def _chunks(seq: list[Any], size: int) -> list[list[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


PROMPT_CHUNK = 8  # prompt clips per embedding item (sharded: the unit handed to a worker)


def _describe_part(part: list[dict[str, Any]]) -> str:
    r = part[0]
    more = f" (and {len(part) - 1} more rows of its ASR batch)" if len(part) > 1 else ""
    return f"decoder {r['decoder']}, utt_id {r['utt_id']}, repeat {r['repeat']}{more}"


def score_step(cfg: RunConfig, out: Path, log: Log = print, shards: int = 1, ray_address: str | None = None) -> int:
    """Add WER/CER/SIM rows for every record not yet scored by this scorer; returns rows added.

    ``shards > 1`` (or a ``ray_address``): the prompt embeddings and the ASR chunks are spread over Ray
    workers (an ASR + speaker model each); this process reads the clips, sends them, and appends the rows.
    """
    from specbench.bench.shards import open_pool, raise_failures, wants_gpu

    if not cfg.scoring.enabled:
        log("scoring disabled (scoring.enabled: false)")
        return 0
    records = load_records(out)
    if not records:
        raise RunStateError(f"no generated rows in {out}: run `specbench generate` (or `specbench run`) first")
    score_path = out / "scores.jsonl"
    sc = cfg.scoring
    with open_pool(
        ItemScorer,
        (cfg,),
        shards,
        ray_address,
        gpu=lambda res: wants_gpu(sc.asr.device, res) or wants_gpu(sc.speaker.device, res),
        worker_args=lambda gpu: (_worker_score_config(cfg, gpu),),
        threads=lambda gpu: None if gpu else 1,
        what="scoring",
    ) as pool:
        scorer = "|".join(pool.call_all("scorer_ids")[0].values())
        done = {(r["key"], r["scorer"]) for r in read_jsonl(score_path)} if score_path.is_file() else set()
        todo = [r for r in records if (record_key(r["decoder"], r["utt_id"], r["repeat"]), scorer) not in done]
        if not todo:
            log(f"scoring: all {len(records)} rows already scored by {scorer}")
            return 0
        # one embedding per distinct prompt; SIM-other compares against prompts of the OTHER speakers
        prompt_spk: dict[str, str] = {}
        for r in records:
            prompt_spk.setdefault(r["prompt_audio"], r["speaker"])
        prompt_emb: dict[str, np.ndarray] = {}
        added = 0
        if pool.workers():
            log(f"scoring: {len(todo)} rows (and {len(prompt_spk)} speaker prompts) on {pool.shards} shards (Ray workers)")
        with _progress() as progress:

            def report(line: str) -> None:
                progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

            task = progress.add_task("speaker prompts", total=len(prompt_spk))
            for paths, embs in pool.imap(
                "embed_prompts",
                _chunks(list(prompt_spk), PROMPT_CHUNK),
                args=lambda paths: ([read_audio(resolve_audio(out, p)) for p in paths],),
                describe=lambda paths: f"speaker prompt {paths[0]}" + (f" (and {len(paths) - 1} more)" if len(paths) > 1 else ""),
                report=report,
            ):
                prompt_emb.update(zip(paths, embs, strict=True))
                progress.advance(task, len(paths))
            prompt_emb = {p: prompt_emb[p] for p in prompt_spk if p in prompt_emb}  # record order: SIM-other sums in one order
            if len(prompt_emb) < len(prompt_spk):  # a worker failed on a prompt: no row can get its SIM-other
                failures, unstarted = pool.failures, pool.unstarted
            else:
                pool.call_all("set_prompts", prompt_emb, prompt_spk)
                # clips go to the ASR in chunks of batch_size (the transformers backend batches them; the others
                # take batch_size 1); rows are appended chunk by chunk, so an interruption loses at most a chunk.
                # The chunks are the same however many shards run, so batched transcripts do not depend on it.
                task = progress.add_task("scoring", total=len(todo))
                local = not pool.workers()  # one process: show the chunk being scored; sharded: the one just written

                def label(part: list[dict[str, Any]]) -> str:
                    return f"scoring {part[0]['decoder']} {part[0]['utt_id']}"

                for part, rows in pool.imap(
                    "score_chunk",
                    _chunks(todo, max(1, cfg.scoring.asr.batch_size)),
                    # a decoder that emitted no token (EOS first) wrote an empty clip: nothing to transcribe or embed
                    args=lambda part: (part, [read_audio(resolve_audio(out, r["audio"])) if r.get("audio_seconds") != 0 else None for r in part]),
                    describe=_describe_part,
                    on_start=(lambda part: progress.update(task, description=label(part))) if local else None,
                    report=report,
                ):
                    for row in rows:
                        append_jsonl(score_path, row)
                    added += len(rows)
                    progress.update(task, advance=len(part), **({} if local else {"description": label(part)}))
                failures, unstarted = pool.failures, pool.unstarted
    log(f"scoring: {added} new rows in {score_path}")
    raise_failures("scoring", failures, unstarted, added)
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
) -> dict[str, Any]:
    """Score one record (WER/CER from ``hyp``, the ASR loop flag, SIM and SIM-other): its ``scores.jsonl`` row."""
    from specbench.scoring.loops import LOOP_RULE, is_asr_loop
    from specbench.scoring.speaker import cosine
    from specbench.scoring.wer import utterance_wer

    w = utterance_wer(r["text"], hyp, cfg.scoring.normalizer)
    emb = spk.embed(wav, sr) if wav is not None else None  # an empty clip: WER 1 (all deletions), no SIM
    others = [cosine(emb, e) for p, e in prompt_emb.items() if prompt_spk[p] != r["speaker"]] if emb is not None else []
    return {
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
        "asr_loop": is_asr_loop(hyp),
        "loop_rule": LOOP_RULE,
        "sim": cosine(emb, prompt_emb[r["prompt_audio"]]) if emb is not None else None,
        "sim_other": float(np.mean(others)) if (others and cfg.scoring.cross_speaker) else None,
    }


def run(
    cfg: RunConfig,
    steps: tuple[str, ...] = ("generate", "score", "report"),
    log: Log = print,
    shards: int = 1,
    ray_address: str | None = None,
) -> Path:
    """Run the requested steps of a recipe; returns the run folder.

    ``shards``/``ray_address``: see :func:`generate_step`. Rows that failed on a worker do not stop the
    later steps (they score and report the finished rows); the WorkerError is raised at the end.
    """
    from specbench.bench.report import report_step
    from specbench.bench.shards import session
    from specbench.errors import WorkerError

    out = cfg.resolved_output_dir()
    failed: list[WorkerError] = []
    nothing = False
    with session(shards, ray_address):  # one Ray connection for all steps
        if "generate" in steps:
            try:
                generate_step(cfg, out, log, shards, ray_address)
            except WorkerError as exc:
                failed.append(exc)
        nothing = bool(failed) and not load_records(out)  # every generated row failed: nothing to score or report
        if "score" in steps and not nothing:
            try:
                score_step(cfg, out, log, shards, ray_address)
            except WorkerError as exc:
                failed.append(exc)
    if "report" in steps and not nothing:
        report_step(out, cfg, log)
    if failed:
        raise WorkerError(" | ".join(str(e) for e in failed))
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
