"""Backend ``hf-causal``: any local Hugging Face ``AutoModelForCausalLM`` over codec tokens, described by
a family template (:mod:`specbench.targets.families`), behind the TargetModel contract.

Speech space ↔ model vocabulary: speech code ``i`` is token id ``speech_base + i`` (the template's
contiguous speech-token block) and EOS is the template's end-of-speech id; ``out_ids`` lists those
``V + 1`` ids in speech-space order. The LM head is evaluated on those rows only
(``logits = h · W[out_ids]ᵀ``), so the loop sees speech tokens + EOS whatever the full vocabulary
(a 193k-token Llasa vocabulary costs 65,537 rows per step, not 193k).

Caching and verification: a ``DynamicCache`` (transformers' own, the one its ``generate()`` uses)
wrapped to give ``crop(n)`` (keep the first n slots) and ``keep(indices)`` (gather slots, for a tree
path). Positions are absolute slot indices, so a chain verify passes ``position_ids = L..L+n-1`` and a
tree verify ``position_ids = L + depth`` with a 4-D additive attention mask ``[1, 1, n, L + n]``
(cache visible, new tokens through the tree mask) that transformers uses as given.

``decode_path``: ``eager`` (the above), ``static`` (transformers' ``StaticCache``, bucketed new-token
counts, attention over doubling windows of the cache: :mod:`specbench.targets.hf_static`, run eagerly) or ``compiled`` (the static
path through torch.compile; ``model.compile: true``). All three give the same tokens (tests).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from specbench.codec.base import SpeechCodec
from specbench.errors import ConfigError, DependencyError, ModelError
from specbench.targets.base import Context
from specbench.targets.families import FamilyTemplate, load_family
from specbench.targets.hf_static import HFStaticCache, HFStaticDecoder

SPEECH_MARKER = "\u0000specbench-prompt-speech\u0000"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


class HFCache:
    """A transformers ``DynamicCache`` with the crop/keep contract of :class:`~specbench.targets.base.TargetCache`."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache

    @property
    def length(self) -> int:
        return int(self.cache.get_seq_length())

    def _layers(self) -> list[Any]:
        return [layer for layer in self.cache.layers if getattr(layer, "is_initialized", True) and layer.keys is not None and layer.keys.numel()]

    def crop(self, n: int) -> None:
        """Keep the first ``n`` slots of every layer."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {n}")
        for layer in self._layers():
            layer.keys = layer.keys[..., :n, :]
            layer.values = layer.values[..., :n, :]

    def keep(self, indices: list[int]) -> None:
        """Keep exactly the slots ``indices`` (ascending) of every layer; slots already in place are not copied."""
        n = len(indices)
        first = next((i for i, j in enumerate(indices) if i != j), n)
        if first == n:
            self.crop(n)
            return
        idx = torch.as_tensor(indices[first:], dtype=torch.long, device=self._layers()[0].keys.device)
        for layer in self._layers():
            layer.keys = torch.cat([layer.keys[..., :first, :], layer.keys.index_select(-2, idx)], dim=-2)
            layer.values = torch.cat([layer.values[..., :first, :], layer.values.index_select(-2, idx)], dim=-2)


def _torch_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def check_model_dir(path: Path, what: str = "model") -> None:
    """ModelError naming the first thing a local HF model directory lacks (config, weights, tokenizer)."""
    hint = "give a local Hugging Face model directory (config.json, weights, tokenizer files); specbench never downloads"
    if not path.is_dir():
        raise ModelError(f"{what} directory {path} not found: {hint}")
    if not (path / "config.json").is_file():
        raise ModelError(f"{what} directory {path} has no config.json: {hint}")
    if not any(next(path.glob(pat), None) for pat in WEIGHT_PATTERNS):
        raise ModelError(f"{what} directory {path} has no weights (*.safetensors or pytorch_model*.bin): {hint}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise ModelError(f"{what} directory {path} has no tokenizer (tokenizer.json / tokenizer_config.json): {hint}")


def model_fingerprint(path: Path) -> str:
    """8 hex digits of sha1(config.json + names and sizes of the weight files): cheap, changes with the weights."""
    h = hashlib.sha1((path / "config.json").read_bytes())
    for pat in WEIGHT_PATTERNS:
        for f in sorted(path.glob(pat)):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:8]


class HFCausalTarget:
    """A Hugging Face causal LM + tokenizer + family template as a TargetModel (see the module docstring)."""

    backend = "hf-causal"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        family: FamilyTemplate,
        path: Path,
        *,
        id_: str | None = None,
        layers: int | None = None,
        decode_path: str = "eager",
    ) -> None:
        if decode_path not in ("eager", "static", "compiled"):
            raise ValueError(f"decode path must be eager, static or compiled, not {decode_path!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.family = family
        self.path = path
        self.layers = layers
        self.config = model.config
        if getattr(self.config, "final_logit_softcapping", None):
            raise ModelError(f"{path}: logit soft-capping is not supported by the hf-causal backend (its speech-space head is a plain projection)")
        self.backbone = model.get_decoder()
        # transformers renamed past_key_values to cache (5.2x); pass the cache under the name this version takes
        self._cache_kw = "cache" if "cache" in inspect.signature(self.backbone.forward).parameters else "past_key_values"
        self.speech_vocab = family.speech_vocab
        self.hidden_size = int(self.config.hidden_size)
        self.speech_base, eos_id = self._speech_ids()
        self.eos_id = eos_id
        dev = self.device
        self.out_ids = torch.cat([torch.arange(self.speech_base, self.speech_base + self.speech_vocab), torch.tensor([eos_id])]).to(dev)
        head = model.get_output_embeddings()
        # the head's speech-space rows, gathered once (the step then multiplies V+1 rows, not the vocabulary)
        self._head_w = head.weight.detach().index_select(0, self.out_ids)
        self._head_b = None if getattr(head, "bias", None) is None else head.bias.detach().index_select(0, self.out_ids)
        self._emb: torch.Tensor | None = None
        fp = model_fingerprint(path)
        self.id = id_ or f"hf-causal:{family.name}:{path.name}:{fp}"
        self.decode_path = decode_path
        self.static: HFStaticDecoder | None = None
        if decode_path != "eager":
            self.static = HFStaticDecoder(
                self.backbone, self.config, self._cache_kw, self.speech_base, self._head_w.dtype, dev, compile=decode_path == "compiled"
            )

    # ---- vocabulary ------------------------------------------------------------------------------
    def _speech_ids(self) -> tuple[int, int]:
        """(id of speech code 0, id of end-of-speech), checked: contiguous block, inside the embedding table."""
        tok, fam = self.tokenizer, self.family
        unk = tok.unk_token_id

        def tid(s: str) -> int:
            i = tok.convert_tokens_to_ids(s)
            if i is None or (unk is not None and i == unk and s != tok.unk_token):
                raise ModelError(f"the tokenizer of {self.path} has no token {s!r}: is this a {fam.name} model? (family template {fam.name})")
            return int(i)

        base = tid(fam.token_string(0))
        v = fam.speech_vocab
        for code in sorted({1, v // 2, v - 1}):
            if tid(fam.token_string(code)) != base + code:
                raise ModelError(
                    f"speech tokens of {self.path} are not contiguous ({fam.token_string(code)} is not id {base + code}): the hf-causal backend needs one block"
                )
        eos = tid(fam.end_of_speech)
        rows = self.model.get_input_embeddings().weight.shape[0]
        if base + v > rows or eos >= rows:
            raise ModelError(f"{self.path}: speech ids up to {base + v - 1} but the embedding table has {rows} rows")
        return base, eos

    def model_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Speech-space tokens → model token ids."""
        return self.out_ids[tokens]

    def context_ids(self, ctx: Context) -> torch.Tensor:
        """The family's prompt for ``ctx`` as model token ids ``[L]`` (speech tokens inserted as ids)."""
        fam = self.family
        if "{prompt_text}" in (fam.layout or (fam.user or "") + (fam.assistant or "")) and ctx.prompt_text is None and ctx.prompt_tokens.numel():
            raise ConfigError(
                f"family {fam.name} clones a voice from the prompt's transcript, but the prompt of this utterance has none: "
                "give manifest rows prompt_utt_id (an utterance of the same manifest) or extra.prompt_text"
            )
        if ctx.prompt_tokens.numel() % fam.frame:
            raise ModelError(
                f"family {fam.name} needs whole frames of {fam.frame} tokens but the prompt has {ctx.prompt_tokens.numel()}: encode it with the family's codec"
            )

        def fill(s: str) -> str:
            return s.replace("{prompt_text}", ctx.prompt_text or "").replace("{text}", ctx.text).replace("{prompt_speech}", SPEECH_MARKER)

        if fam.chat:
            chat = [{"role": "user", "content": fill(fam.user or "")}, {"role": "assistant", "content": fill(fam.assistant or "")}]
            rendered = self.tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
        else:
            rendered = fill(fam.layout or "")
        before, after = rendered.split(SPEECH_MARKER)
        enc = self.tokenizer
        ids = enc(before, add_special_tokens=False).input_ids + self.model_ids(ctx.prompt_tokens.to(self.device)).tolist()
        if after:
            ids += enc(after, add_special_tokens=False).input_ids
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    # ---- the TargetModel contract --------------------------------------------------------------
    @property
    def eos(self) -> int:
        return self.speech_vocab

    @property
    def device(self) -> torch.device:
        return self._head_device()

    def _head_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(h, self._head_w, self._head_b).float()

    def new_cache(self) -> HFCache:
        from transformers import DynamicCache

        return HFCache(DynamicCache(config=self.config))

    def draft_context(self, ctx: Context, cache: HFCache | HFStaticCache) -> Context:
        """``ctx``: a causal LM's prefill fixes nothing a draft must follow."""
        return ctx

    def prefill(self, ctx: Context, capacity: int = 0) -> tuple[torch.Tensor, torch.Tensor, HFCache | HFStaticCache]:
        """The family prompt through the model into a fresh cache: a DynamicCache (``capacity`` unused: it
        grows), or on the static paths a StaticCache with room for ``capacity`` more tokens."""
        ids = self.context_ids(ctx)
        if self.static is not None:
            h, static_cache = self.static.prefill(ids, capacity)
            return self._logits(h), h, static_cache
        cache = self.new_cache()
        out = self.backbone(input_ids=ids[None], use_cache=True, **{self._cache_kw: cache.cache})
        h = out.last_hidden_state[0, -1]
        return self._logits(h), h, cache

    def step(
        self, tokens: torch.Tensor, cache: HFCache | HFStaticCache, *, depths: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append speech tokens; chains use transformers' causal mask, trees a 4-D mask and depth positions."""
        n = tokens.numel()
        start = cache.length
        if self.static is not None:
            assert isinstance(cache, HFStaticCache), "a static decode path needs the cache of its own prefill"
            offsets = depths if depths is not None else torch.arange(n, device=tokens.device)
            h = self.static.step(self.model_ids(tokens), start + offsets, cache, tree_mask)
            return self._logits(h), h
        assert isinstance(cache, HFCache)
        ids = self.model_ids(tokens)[None]
        if tree_mask is None and depths is None:
            pos = torch.arange(start, start + n, device=ids.device)
            out = self.backbone(input_ids=ids, position_ids=pos[None], use_cache=True, **{self._cache_kw: cache.cache})
        else:
            depths = depths if depths is not None else torch.arange(n, device=ids.device)
            visible = torch.ones(n, start + n, dtype=torch.bool, device=ids.device)
            visible[:, start:] = tree_mask if tree_mask is not None else torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
            dtype = self._head_w.dtype
            mask = torch.zeros(1, 1, n, start + n, dtype=dtype, device=ids.device).masked_fill(~visible, torch.finfo(dtype).min)
            out = self.backbone(input_ids=ids, position_ids=(start + depths)[None], attention_mask=mask, use_cache=True, **{self._cache_kw: cache.cache})
        h = out.last_hidden_state[0]
        return self._logits(h), h

    @property
    def compile_seconds(self) -> float:
        """Wall seconds spent in calls that built a new compiled graph (0 on the eager and static paths)."""
        return self.static.compile_seconds if self.static is not None and self.static.compile else 0.0

    def score(self, ctx: Context, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced pass over prompt + codes; rows from the last prompt position on."""
        ids = self.context_ids(ctx)
        full = torch.cat([ids, self.model_ids(codes.to(self.device))])
        out = self.backbone(input_ids=full[None], use_cache=False)
        h = out.last_hidden_state[0, ids.numel() - 1 :]
        return self._logits(h), h

    def speech_embeddings(self) -> torch.Tensor:
        if self._emb is None:
            self._emb = self.model.get_input_embeddings().weight.detach().index_select(0, self.out_ids)
        return self._emb

    def output_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self._head_w, self._head_b

    def check_codec(self, codec: SpeechCodec) -> None:
        fam = self.family
        if not codec.id.startswith(fam.codec):  # codec ids start with their kind (kmeans-mel-1024-..., snac-...)
            raise ModelError(
                f"family {fam.name} is decoded by the {fam.codec} codec but the recipe loads {codec.id}: set codec.kind: {fam.codec} and codec.path"
            )
        if codec.vocab_size != self.speech_vocab:
            raise ModelError(
                f"{self.id} has {self.speech_vocab} speech tokens but codec {codec.id} has {codec.vocab_size}: use the codec weights the model was trained with"
            )

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "path": str(self.path),
            "family": self.family.name,
            "architecture": type(self.model).__name__,
            "layers": self.layers or int(self.config.num_hidden_layers),
            "dtype": str(self._head_w.dtype),
            "attention": getattr(self.config, "_attn_implementation", None),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "decode_path": self.decode_path,
        }

    # ---- the peer implementation ------------------------------------------------------------------
    def reference_generate(self, ctx: Context, max_new_tokens: int, sampling: Any, seed: int = 0, assistant: HFCausalTarget | None = None) -> torch.Tensor:
        """transformers' own ``generate()`` on the same prompt (the fair baseline and the cross-check).

        Logits are restricted to speech tokens + EOS (every other id gets -inf), exactly the space the
        loop decodes in, so greedy outputs must agree token for token; ``assistant`` runs transformers'
        assisted generation with that draft (3 tokens per round, constant schedule). Returns the speech
        tokens (speech space, EOS excluded, on CPU).
        """
        from transformers import LogitsProcessor, LogitsProcessorList

        allowed = torch.zeros(self.config.vocab_size, dtype=torch.bool, device=self.device)
        allowed[self.out_ids] = True

        class SpeechOnly(LogitsProcessor):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
                return scores.masked_fill(~allowed[: scores.shape[-1]], float("-inf"))

        ids = self.context_ids(ctx)[None]
        kw: dict[str, Any] = {"do_sample": not sampling.greedy}
        if not sampling.greedy:
            kw.update(temperature=sampling.temperature, top_k=sampling.top_k or None, top_p=sampling.top_p)
            torch.manual_seed(seed)
        if assistant is not None:
            assistant.model.generation_config.num_assistant_tokens = 3
            assistant.model.generation_config.num_assistant_tokens_schedule = "constant"
            kw["assistant_model"] = assistant.model
        out = self.model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            logits_processor=LogitsProcessorList([SpeechOnly()]),
            eos_token_id=self.eos_id,
            pad_token_id=self.eos_id,
            attention_mask=torch.ones_like(ids),
            **kw,
        )[0, ids.shape[1] :]
        inverse = torch.full((self.config.vocab_size,), -1, dtype=torch.long, device=out.device)
        inverse[self.out_ids] = torch.arange(self.speech_vocab + 1, device=out.device)
        speech = inverse[out]
        return speech[speech < self.speech_vocab].cpu()

    # ---- drafts ----------------------------------------------------------------------------------
    def layer_subset(self, spec: str) -> HFCausalTarget:
        """``layers:N``: a draft made of the first N decoder layers (plus embeddings, final norm and head),
        SHARING the target's weights (no copy; Llama/Qwen2-style models with ``model.layers``)."""
        try:
            n = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"draft '{spec}': write layers:N with N a number of layers") from None
        total = int(self.config.num_hidden_layers)
        if not 1 <= n < total:
            raise ConfigError(f"draft '{spec}': N must be between 1 and {total - 1} (the target has {total} layers)")
        base = self.backbone
        if not isinstance(getattr(base, "layers", None), nn.ModuleList):
            raise ModelError(
                f"{type(self.model).__name__} has no model.layers list: layer-subset drafts need a Llama/Qwen2-style model; give a draft model directory"
            )
        cfg = copy.deepcopy(self.config)
        cfg.num_hidden_layers = n
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:n]
        sub = copy.copy(base)
        sub._modules = dict(base._modules)
        sub.layers = nn.ModuleList(list(base.layers)[:n])
        sub.config = cfg
        model = copy.copy(self.model)
        model._modules = dict(self.model._modules)
        model.config = cfg
        model.set_decoder(sub) if hasattr(model, "set_decoder") else setattr(model, "model", sub)
        if model.get_decoder() is not sub:
            model._modules["model"] = sub
        return HFCausalTarget(model, self.tokenizer, self.family, self.path, id_=f"{self.id}:{spec}", layers=n, decode_path=self.decode_path)


def load_hf_causal(path: str, family: str, device: torch.device, *, dtype: str = "auto", attention: str = "sdpa", decode_path: str = "eager") -> HFCausalTarget:
    """Load a local HF causal-LM directory (``local_files_only``; ``tiny:<family>[/part]`` = the toolkit's
    tiny random model, built on first use) with its family template, in eval mode on ``device``
    (``decode_path``: eager, static or compiled, see the module docstring)."""
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise DependencyError("the hf-causal backend needs transformers: pip install 'specbench[hf]' (make setup installs it)") from None
    from specbench.targets.tiny import resolve_tiny

    fam = load_family(family)
    p = resolve_tiny(path)
    check_model_dir(p)
    torch_dtype = _torch_dtype(dtype, device)
    hf_logging.disable_progress_bar()  # one bar per weight file is noise next to the run's own progress
    try:
        tok = AutoTokenizer.from_pretrained(p, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(p, local_files_only=True, dtype=torch_dtype, attn_implementation=attention)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"could not load {p} as a causal LM: {str(exc).splitlines()[0]}") from None
    model.to(device).eval().requires_grad_(False)
    return HFCausalTarget(model, tok, fam, p, decode_path=decode_path)
