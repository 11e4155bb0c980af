"""Backend ``builtin``: specbench's own :class:`~specbench.models.codec_lm.CodecLM` behind the
:class:`~specbench.targets.base.TargetModel` contract.

The built-in model reads espeak-ng phonemes (``Context.phonemes``), ignores the prompt transcript, and
its output head already covers speech space (codec tokens + EOS), so the adapter is a thin veneer: it
converts node depths into the model's speech positions and keeps the model's preallocated cache.

``path`` picks the decode path: ``eager`` (the model's own forward and growing cache), ``static``
(specbench/models/static_lm.py: static KV cache, bucketed new-token counts, masked attention over
doubling windows of the cache, run eagerly) or ``compiled`` (the static path through torch.compile; ``model.compile: true``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from specbench.codec.base import SpeechCodec
from specbench.errors import ModelError
from specbench.models.codec_lm import CodecLM, KVCache, count_parameters, given_durations, sequence_conditions
from specbench.models.static_lm import StaticDecoder, StaticKVCache
from specbench.targets.base import Context
from specbench.text import durations_from_starts, encode_phonemes, encode_phones, phones_of_text


def phoneme_ids(ctx: Context) -> torch.Tensor:
    """The built-in (plain) model's text input: phoneme ids of ``ctx.phonemes``."""
    return torch.tensor(encode_phonemes(ctx.phonemes), dtype=torch.long)


def text_ids(model: CodecLM, ctx: Context) -> torch.Tensor:
    """The model's text input: phone ids for an aligned model (from ``ctx.phones``, else espeak-ng on
    ``ctx.text``), phoneme-character ids otherwise."""
    if not model.cfg.aligned:
        return phoneme_ids(ctx)
    return torch.tensor(encode_phones(ctx.phones or phones_of_text(ctx.text), model.cfg.phones), dtype=torch.long)


class BuiltinTarget:
    """A loaded ``codec-lm`` checkpoint as a TargetModel (``model`` is the CodecLM, ``checkpoint`` its payload)."""

    backend = "builtin"

    def __init__(self, model: CodecLM, spec: str, checkpoint: dict[str, Any] | None = None, path: str = "eager") -> None:
        if path not in ("eager", "static", "compiled"):
            raise ValueError(f"decode path must be eager, static or compiled, not {path!r}")
        self.model = model
        self.path = path
        self.compile = path == "compiled"
        self.static = StaticDecoder(model, compile=self.compile) if path != "eager" else None
        self.spec = str(spec)
        self.checkpoint = checkpoint or {}
        self.id = self.spec
        self.speech_vocab = model.cfg.speech_vocab
        self.hidden_size = model.cfg.d_model
        self._device = model.head.weight.device

    @property
    def eos(self) -> int:
        return self.model.cfg.eos

    @property
    def device(self) -> torch.device:
        return self._device

    def prefill(self, ctx: Context, capacity: int = 0) -> tuple[torch.Tensor, torch.Tensor, KVCache | StaticKVCache]:
        """``[phonemes][SEP][prompt tokens]`` into a fresh cache preallocated for ``capacity`` more tokens."""
        text, prompt = text_ids(self.model, ctx).to(self._device), ctx.prompt_tokens.to(self._device)
        cap = text.numel() + 1 + prompt.numel() + capacity
        dur = ctx.durations if self.model.cfg.aligned else None  # a plain model has no alignment to follow
        if self.static is not None:
            return self.static.prefill(text, prompt, capacity=cap, durations=dur)
        return self.model.prefill(text, prompt, capacity=cap, durations=dur)

    def draft_context(self, ctx: Context, cache: KVCache | StaticKVCache) -> Context:
        """``ctx`` with this aligned model's durations (from its prefill into ``cache``), else ``ctx``."""
        if cache.alignment is None:
            return ctx
        return replace(ctx, durations=tuple(int(d) for d in cache.alignment.durations.tolist()))

    def step(
        self, tokens: torch.Tensor, cache: KVCache | StaticKVCache, *, depths: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Speech position of node i = cached speech tokens + depth[i] (consecutive without ``depths``)."""
        positions = None if depths is None else cache.speech_len + depths
        if self.static is not None:
            assert isinstance(cache, StaticKVCache), "a static decode path needs the cache of its own prefill"
            return self.static.step(tokens, cache, positions=positions, tree_mask=tree_mask)
        assert isinstance(cache, KVCache)
        return self.model(tokens, cache, positions=positions, tree_mask=tree_mask)

    @property
    def compile_seconds(self) -> float:
        """Wall seconds spent in calls that built a new compiled graph (0 on the eager paths' first calls too)."""
        return self.static.compile_seconds if self.static is not None and self.compile else 0.0

    def score(self, ctx: Context, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over ``[text][SEP][prompt][codes]``; rows from the last prompt slot on.

        An aligned model is conditioned on the reference alignment (``ctx.phone_starts``) when the
        context has one, else on ``ctx.durations`` when given (as in ``prefill``), else on its own
        predicted durations.
        """
        text = text_ids(self.model, ctx).to(self._device)
        prompt = ctx.prompt_tokens.to(self._device)
        ids, pos = self.model.embed_sequence(text, torch.cat([prompt, codes.to(self._device)]))
        start = text.numel() + prompt.numel()  # the last prompt token (or SEP) predicts codes[0]
        cond = None
        cfg = self.model.cfg
        if cfg.aligned:
            if ctx.phone_starts is not None and len(ctx.phone_starts) == text.numel():
                dur = torch.from_numpy(durations_from_starts(ctx.phone_starts, codes.numel(), cfg.frame_rate)).to(self._device)
            elif ctx.durations is not None:
                dur = given_durations(ctx.durations, text)
            else:
                dur = self.model.predict_durations(text, prompt)
            cond = sequence_conditions(ids.numel(), start, codes.numel(), text, dur, cfg)[None]
        logits, hidden = self.model.forward_train(ids[None], pos[None], cond)
        return logits[0, start:], hidden[0, start:]

    def speech_embeddings(self) -> torch.Tensor:
        cfg = self.model.cfg
        return self.model.tok_emb.weight[cfg.speech_offset : cfg.speech_offset + cfg.speech_vocab + 1]

    def output_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.head.weight, self.model.head.bias

    def check_codec(self, codec: SpeechCodec) -> None:
        ck = self.checkpoint
        if ck.get("codec_id") and ck["codec_id"] != codec.id:
            raise ModelError(
                f"model {self.spec} was trained on codec {ck['codec_id']} but the recipe loads {codec.id}: "
                "point codec.path at the codec the model was trained with"
            )
        if self.speech_vocab != codec.vocab_size:
            raise ModelError(f"model {self.spec} has vocabulary {self.speech_vocab} but codec {codec.id} has {codec.vocab_size}: use matching files")

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "checkpoint": self.spec,
            "parameters": count_parameters(self.model),
            "dtype": str(self.model.head.weight.dtype),
            "decode_path": self.path,
        }


def load_builtin(spec: str, device: torch.device | str = "cpu", compile: bool = False) -> BuiltinTarget:
    """A ``codec-lm`` checkpoint (``builtin:NAME`` or a path) as a TargetModel (``compile``: the
    compiled static-shape decode path)."""
    from specbench.models.lm_io import load_lm

    model, ckpt = load_lm(spec, device)
    return BuiltinTarget(model, spec, ckpt, path="compiled" if compile else "eager")


def as_target(model: CodecLM | BuiltinTarget, spec: str = "in-memory", path: str = "eager") -> BuiltinTarget:
    """A bare CodecLM (tests, training scripts) as a TargetModel; a TargetModel is returned unchanged."""
    return model if isinstance(model, BuiltinTarget) else BuiltinTarget(model, spec, path=path)


def context_from_ids(text_ids: torch.Tensor, prompt: torch.Tensor) -> Context:
    """A Context whose phonemes encode to ``text_ids`` (phoneme ids, as the built-in model reads them)."""
    from specbench.text import decode_phonemes

    phon = decode_phonemes([int(i) for i in text_ids])  # plain (phoneme-character) models only
    return Context(text=phon, phonemes=phon, prompt_tokens=prompt)
