"""Decoder-only transformer codec LM (VALL-E style) with a preallocated, croppable KV cache.

Sequence layout: ``[text tokens][SEP][prompt speech tokens][generated speech tokens][EOS]``. One
embedding table holds text ids ``[0, text_vocab)``, SEP, the ``speech_vocab`` codec tokens and EOS; the
output head predicts only speech tokens and EOS, so "speech space" ids are ``[0, speech_vocab]`` with
``speech_vocab`` = EOS. Positions are learned and absolute: text tokens (and SEP) count from 0 in one
range, speech tokens from 0 (the first prompt token) in another, so a tree decoder can give any node
an explicit speech position (prefix length + depth).

**Aligned models** (``phones`` non-empty; issue 16): the text is a sequence of espeak-ng phone tokens
(``phones`` is their vocabulary) and every phone has a duration in frames. A duration predictor
(a small bidirectional encoder over the phones plus a speaker vector pooled from the prompt) predicts
them; teacher-forced durations are used in training. The durations fix, for every target frame ``t``,
its phone ``a(t)``; the slot that predicts frame ``t`` gets an additive conditioning vector
``E_cur[a] + E_prev[a-1] + E_next[a+1] + E_in[t - start(a)] + E_left[end(a) - t]`` (frames past the
last phone get ``E_cur[END]``, which the model learns to answer with EOS). A frame therefore cannot skip
or stick on a phone and the length is fixed by the durations, while the speech stream itself stays
plain codec tokens: the conditioning is a function of the speech position only, so chains and trees
are verified exactly as for any model (a tree node at depth d gets the vector of its own position).

Inference is batch 1 (the speculative-decoding setting). ``prefill`` runs text+prompt once;
``forward(tokens, cache, positions=, tree_mask=)`` appends ``n`` tokens, attending to the cache and,
within the new block, causally or through ``tree_mask`` (``tree_mask[i, j]`` = node i may see node j).
The forward is kept lean because it is the hot path of every decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from specbench.text import TEXT_VOCAB_SIZE


@dataclass
class ModelConfig:
    """Architecture of a codec LM. Stored in every checkpoint; presets live in specbench.config."""

    speech_vocab: int = 1024
    text_vocab: int = TEXT_VOCAB_SIZE
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_ff: int = 1024
    max_text_len: int = 512
    max_speech_len: int = 3072
    dropout: float = 0.0
    # aligned models only (see the module docstring): the phone vocabulary (text id = 2 + index),
    # the number of duration classes (0 .. max_phone_frames - 1 frames) and the predictor's depth
    phones: list[str] = field(default_factory=list)
    max_phone_frames: int = 64
    duration_layers: int = 2
    frame_rate: float = 50.0  # codec frames per second (durations are counted in frames)

    @property
    def aligned(self) -> bool:
        """True for a duration-aligned model (phone tokens + durations), False for the plain layout."""
        return bool(self.phones)

    @property
    def end_phone(self) -> int:
        """Conditioning id of "past the last phone" (= the SEP id; phone ids are ``[0, text_vocab)``)."""
        return self.text_vocab

    @property
    def no_phone(self) -> int:
        """Conditioning id of "no conditioning" (text, SEP and prompt slots): a zero embedding."""
        return self.text_vocab + 1

    @property
    def no_frames(self) -> int:
        """Frame-count conditioning id of "no conditioning": a zero embedding."""
        return self.max_phone_frames

    @property
    def sep_id(self) -> int:
        return self.text_vocab

    @property
    def speech_offset(self) -> int:
        return self.text_vocab + 1

    @property
    def eos(self) -> int:
        """EOS in speech space (the last output class)."""
        return self.speech_vocab

    @property
    def n_embeddings(self) -> int:
        return self.text_vocab + 1 + self.speech_vocab + 1

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Preallocated keys/values for batch 1: ``k, v: [layers, heads, capacity, head_dim]``.

    ``length`` slots are valid. ``offset`` = number of non-speech slots (text + SEP), so the speech
    position of slot ``s`` is ``s - offset``. ``crop(n)`` drops everything after slot ``n``;
    ``keep(indices)`` compacts the listed slots to the front (the commit of a tree path).
    """

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        self.k = torch.zeros(n_layers, n_heads, capacity, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.length = 0
        self.offset = 0
        self.alignment: Alignment | None = None

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    @property
    def speech_len(self) -> int:
        """Speech tokens (prompt + generated) in the cache."""
        return self.length - self.offset

    def reserve(self, n: int) -> None:
        """Grow the buffers (doubling) so ``n`` more slots fit."""
        need = self.length + n
        if need <= self.capacity:
            return
        new_cap = max(need, 2 * self.capacity)
        for name in ("k", "v"):
            old = getattr(self, name)
            buf = old.new_zeros(old.shape[0], old.shape[1], new_cap, old.shape[3])
            buf[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, buf)

    def crop(self, n: int) -> None:
        """Keep the first ``n`` slots (n ≤ length)."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {n}")
        self.length = n

    def keep(self, indices: torch.Tensor | list[int]) -> None:
        """Keep exactly the slots ``indices`` (ascending), moved to slots ``0..len-1``.

        Slots already in place (``indices[i] == i``) are not copied, so committing a tree path
        ``[0..L-1] + path`` copies only the path.
        """
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.k.device)
        n = int(idx.numel())
        in_place = idx == torch.arange(n, device=idx.device)
        first = n if bool(in_place.all()) else int((~in_place).nonzero()[0])
        if first < n:
            src = idx[first:]
            self.k[:, :, first:n] = self.k[:, :, src]
            self.v[:, :, first:n] = self.v[:, :, src]
        self.length = n

    def clone(self) -> KVCache:
        """A deep copy (tests compare caches)."""
        c = KVCache.__new__(KVCache)
        c.k, c.v, c.length, c.offset = self.k.clone(), self.v.clone(), self.length, self.offset
        c.alignment = self.alignment
        return c


class Alignment:
    """The frame conditioning of one aligned utterance: ``table[t]`` is added to the slot that predicts
    frame ``t`` (``t = speech position - prompt_len + 1``); rows past the last frame repeat the END row."""

    def __init__(self, table: torch.Tensor, prompt_len: int, durations: torch.Tensor) -> None:
        self.table = table
        self.prompt_len = prompt_len
        self.durations = durations  # frames per phone the table was built from

    @property
    def frames(self) -> int:
        """Frames the durations add up to (the length the model is told to speak)."""
        return self.table.shape[0] - 1

    def at(self, speech_positions: torch.Tensor) -> torch.Tensor:
        """Conditioning vectors ``[n, d]`` for the slots at ``speech_positions``."""
        t = (speech_positions - (self.prompt_len - 1)).clamp(0, self.frames)
        return self.table[t]


def given_durations(durations: Sequence[int], phone_ids: torch.Tensor) -> torch.Tensor:
    """``durations`` (frames per phone, e.g. a target's handed to its draft) as a long tensor on the phones'
    device; ValueError unless there is one count >= 0 per phone and they add up to at least one frame."""
    dur = torch.as_tensor(durations, dtype=torch.long, device=phone_ids.device)
    n = phone_ids.numel()
    if dur.numel() != n or int(dur.sum()) < 1 or bool((dur < 0).any()):
        raise ValueError(f"durations for {n} phones must be {n} frame counts >= 0 adding up to >= 1, got {dur.tolist()}")
    return dur


def frame_conditions(phone_ids: torch.Tensor, durations: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """``[T + 1, 5]`` conditioning ids of frames ``0..T-1`` and the END row ``T``.

    Columns: current phone, previous phone, next phone (``cfg.end_phone`` outside the utterance),
    frames since the phone started, frames left in it (both clamped to ``max_phone_frames - 1``).
    ``T = durations.sum()``; zero-length phones own no frame but are still neighbours.
    """
    dev = phone_ids.device
    n = phone_ids.numel()
    end = torch.tensor([cfg.end_phone], device=dev)
    padded = torch.cat([end, phone_ids, end])
    idx = torch.repeat_interleave(torch.arange(n, device=dev), durations)
    starts = torch.cumsum(durations, 0) - durations
    t = torch.arange(idx.numel(), device=dev)
    top = cfg.max_phone_frames - 1
    since = (t - starts[idx]).clamp(max=top)
    left = (starts[idx] + durations[idx] - 1 - t).clamp(max=top)
    rows = torch.stack([phone_ids[idx], padded[idx], padded[idx + 2], since, left], 1)
    last = phone_ids[-1] if n else end[0]
    end_row = torch.stack([end[0], last, end[0], torch.tensor(0, device=dev), torch.tensor(0, device=dev)])
    return torch.cat([rows, end_row[None]], 0)


def sequence_conditions(n_slots: int, start: int, n_codes: int, phone_ids: torch.Tensor, durations: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """``[n_slots, 5]`` conditioning ids of a teacher-forced ``[text][SEP][prompt][codes]`` sequence.

    Slot ``start + t`` predicts frame ``t`` (``t = 0..n_codes``, the last one EOS) and gets row ``t`` of
    :func:`frame_conditions` (frames past the durations' end get the END row, as at inference); every
    other slot gets :func:`no_conditions`.
    """
    rows = frame_conditions(phone_ids, durations, cfg)
    t = torch.arange(n_codes + 1, device=rows.device).clamp(max=rows.shape[0] - 1)
    cond = no_conditions(n_slots, cfg).to(rows.device)
    cond[start : start + n_codes + 1] = rows[t]
    return cond


def no_conditions(n: int, cfg: ModelConfig) -> torch.Tensor:
    """``[n, 5]`` conditioning ids that add nothing (text, SEP and prompt slots)."""
    row = torch.tensor([cfg.no_phone, cfg.no_phone, cfg.no_phone, cfg.no_frames, cfg.no_frames])
    return row.expand(n, 5).clone()


class DurationPredictor(nn.Module):
    """Frames per phone from the phones and the speaker: ``softmax(W · Enc(E[phone] + pos + s))``.

    ``Enc`` is a small bidirectional pre-LN transformer encoder over the phone sequence; ``s`` is a
    linear map of the mean embedding of the prompt's codec tokens (speaking rate differs by voice).
    Trained with cross-entropy on the synthesiser's durations; inference takes the rounded mean.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.n_heads, cfg.d_ff // 2, dropout=0.1, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.duration_layers, enable_nested_tensor=False)
        self.speaker = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.max_phone_frames)

    def forward(self, phone_emb: torch.Tensor, pad: torch.Tensor, prompt_mean: torch.Tensor) -> torch.Tensor:
        """``phone_emb [B, N, d]`` (token + position), ``pad [B, N]`` True at padding, ``prompt_mean [B, d]``
        → logits ``[B, N, max_phone_frames]``."""
        h = phone_emb + self.speaker(prompt_mean)[:, None]
        h = self.encoder(h, src_key_padding_mask=pad)
        return self.out(self.ln(h))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [B, n, d]``. Without cache: causal self-attention over ``x`` (training).

        With cache (B = 1): the new keys/values go to slots ``[cache.length, cache.length + n)`` and the
        queries attend to all slots up to there, restricted by ``mask`` (``[n, length + n]``, True =
        visible) when given.
        """
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        drop = self.dropout if self.training else 0.0
        if cache is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        else:
            start = cache.length
            cache.k[layer, :, start : start + n] = k[0]
            cache.v[layer, :, start : start + n] = v[0]
            keys = cache.k[layer, :, : start + n].unsqueeze(0)
            vals = cache.v[layer, :, : start + n].unsqueeze(0)
            a = F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(b, n, d)), drop, self.training)
        return x + F.dropout(self.fc2(F.gelu(self.fc1(self.ln2(x)))), drop, self.training)


class CodecLM(nn.Module):
    """The target (and draft) language model. See the module docstring for layout and contracts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.n_embeddings, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_text_len + cfg.max_speech_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.speech_vocab + 1)
        if cfg.aligned:
            n_ph = cfg.text_vocab + 2  # phones, END, NONE (zero)
            self.cond_phone = nn.ModuleList(nn.Embedding(n_ph, cfg.d_model, padding_idx=cfg.no_phone) for _ in range(3))
            self.cond_frames = nn.ModuleList(nn.Embedding(cfg.max_phone_frames + 1, cfg.d_model, padding_idx=cfg.no_frames) for _ in range(2))
            self.duration = DurationPredictor(cfg)
        self.apply(self._init)
        for blk in self.blocks:  # GPT-2 style scaled init of residual projections
            nn.init.normal_(blk.proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))
            nn.init.normal_(blk.fc2.weight, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()

    # ---- training -------------------------------------------------------------------------------
    def forward_train(self, ids: torch.Tensor, pos: torch.Tensor, cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-sequence causal pass. ``ids``/``pos``: ``[B, L]`` embedding ids and position-table ids;
        ``cond`` (aligned models): ``[B, L, 5]`` frame-conditioning ids (:func:`frame_conditions`).

        Returns ``(logits [B, L, speech_vocab+1], hidden [B, L, d])``.
        """
        h = self.tok_emb(ids) + self.pos_emb(pos)
        if self.cfg.aligned:
            if cond is None:
                raise ValueError("an aligned model needs frame conditions (durations) for every sequence")
            h = h + self.condition(cond)
        h = F.dropout(h, self.cfg.dropout, self.training)
        for blk in self.blocks:
            h = blk(h)
        h = self.ln_f(h)
        return self.head(h), h

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Sum of the five conditioning embeddings of ``cond [..., 5]`` → ``[..., d]``."""
        out = self.cond_phone[0](cond[..., 0]) + self.cond_phone[1](cond[..., 1]) + self.cond_phone[2](cond[..., 2])
        return out + self.cond_frames[0](cond[..., 3]) + self.cond_frames[1](cond[..., 4])

    def duration_logits(self, phone_ids: torch.Tensor, pad: torch.Tensor, prompt_ids: torch.Tensor, prompt_pad: torch.Tensor) -> torch.Tensor:
        """Duration logits ``[B, N, max_phone_frames]``: phone ids ``[B, N]`` (``pad`` True at padding) and
        prompt codec tokens ``[B, P]`` in speech space (``prompt_pad`` True at padding)."""
        n = phone_ids.shape[1]
        emb = self.tok_emb(phone_ids) + self.pos_emb(torch.arange(n, device=phone_ids.device))[None]
        pe = self.tok_emb(prompt_ids + self.cfg.speech_offset) * (~prompt_pad)[..., None]
        mean = pe.sum(1) / (~prompt_pad).sum(1, keepdim=True).clamp(min=1)
        return self.duration(emb, pad, mean)

    def predict_durations(self, phone_ids: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Frames per phone (the rounded mean of the duration predictor's distribution) for one utterance;
        at least one frame in all."""
        dev = phone_ids.device
        no_pad = torch.zeros(1, phone_ids.numel(), dtype=torch.bool, device=dev)
        logits = self.duration_logits(phone_ids[None], no_pad, prompt[None], torch.zeros(1, prompt.numel(), dtype=torch.bool, device=dev))
        # the rounded mean, not the argmax: duration distributions are skewed (long tails for pauses and
        # stressed vowels), and the mode under-estimates every such phone, so whole utterances came out short
        probs = torch.softmax(logits[0].float(), -1)
        dur = (probs @ torch.arange(probs.shape[-1], device=dev, dtype=probs.dtype)).round().long()
        if int(dur.sum()) == 0 and dur.numel():
            dur[0] = 1
        return dur

    def alignment(self, phone_ids: torch.Tensor, prompt: torch.Tensor, durations: Sequence[int] | None = None) -> Alignment:
        """The frame conditioning of one utterance, from ``durations`` (frames per phone) when given, else
        from its predicted durations."""
        dur = self.predict_durations(phone_ids, prompt) if durations is None else given_durations(durations, phone_ids)
        return Alignment(self.condition(frame_conditions(phone_ids, dur, self.cfg)), prompt.numel(), dur)

    # ---- inference ------------------------------------------------------------------------------
    def text_positions(self, n: int, device: torch.device) -> torch.Tensor:
        """Position-table ids of ``n`` text tokens (text range starts at 0)."""
        return torch.arange(n, device=device)

    def speech_position_ids(self, speech_pos: torch.Tensor) -> torch.Tensor:
        """Position-table ids of speech positions (speech range starts at ``max_text_len``)."""
        return speech_pos + self.cfg.max_text_len

    def embed_sequence(self, text_ids: torch.Tensor, speech: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[text][SEP][speech]`` as (embedding ids, position-table ids), 1-D."""
        cfg = self.cfg
        dev = text_ids.device
        sep = torch.tensor([cfg.sep_id], device=dev)
        ids = torch.cat([text_ids, sep, speech + cfg.speech_offset])
        lt = text_ids.numel() + 1
        pos = torch.cat([self.text_positions(lt, dev), self.speech_position_ids(torch.arange(speech.numel(), device=dev))])
        return ids, pos

    def new_cache(self, capacity: int) -> KVCache:
        """An empty cache on the model's device and dtype."""
        p = self.head.weight
        return KVCache(self.cfg.n_layers, self.cfg.n_heads, self.cfg.d_model // self.cfg.n_heads, capacity, p.device, p.dtype)

    def prefill(
        self, text_ids: torch.Tensor, prompt: torch.Tensor, capacity: int = 0, durations: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, KVCache]:
        """Run ``[text][SEP][prompt]`` into a fresh cache.

        Returns ``(logits of the last position [speech_vocab+1], its hidden state [d], cache)``.
        ``capacity`` pre-sizes the cache for the tokens to come (it grows if needed). Aligned models
        predict the durations here (or take ``durations``) and keep the alignment on the cache.
        """
        if text_ids.numel() + 1 > self.cfg.max_text_len:
            raise ValueError(f"text of {text_ids.numel()} tokens exceeds max_text_len={self.cfg.max_text_len}")
        ids, pos = self.embed_sequence(text_ids, prompt)
        cache = self.new_cache(max(capacity, ids.numel() + 1))
        h = self.tok_emb(ids) + self.pos_emb(pos)
        if self.cfg.aligned:
            cache.alignment = self.alignment(text_ids, prompt, durations)
            h = torch.cat([h[:-1], h[-1:] + cache.alignment.table[:1]])  # the last slot predicts frame 0
        h = h.unsqueeze(0)
        for i, blk in enumerate(self.blocks):
            h = blk(h, cache, i, _causal_mask(0, ids.numel(), h.device))
        cache.length = ids.numel()
        cache.offset = text_ids.numel() + 1
        h = self.ln_f(h[0, -1])
        return self.head(h), h, cache

    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        *,
        positions: torch.Tensor | None = None,
        tree_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``tokens`` (speech space, ``[n]``) to ``cache``; return ``(logits [n, V], hidden [n, d])``.

        ``positions`` are speech positions (default: consecutive after the cache); ``tree_mask`` is an
        ``[n, n]`` bool visibility matrix among the new tokens (default: causal). The cache length grows
        by ``n``; crop or keep afterwards to roll back.
        """
        n = tokens.numel()
        cache.reserve(n)
        if positions is None:
            positions = torch.arange(cache.speech_len, cache.speech_len + n, device=tokens.device)
        h = self.tok_emb(tokens + self.cfg.speech_offset) + self.pos_emb(self.speech_position_ids(positions))
        if cache.alignment is not None:
            h = h + cache.alignment.at(positions)
        h = h.unsqueeze(0)
        mask = None
        if n > 1 or tree_mask is not None:
            mask = _causal_mask(cache.length, n, h.device) if tree_mask is None else _tree_mask(cache.length, tree_mask)
        for i, blk in enumerate(self.blocks):
            h = blk(h, cache, i, mask)
        cache.length += n
        h = self.ln_f(h[0])
        return self.head(h), h


def _causal_mask(prefix: int, n: int, device: torch.device) -> torch.Tensor:
    """``[n, prefix + n]`` bool: every new token sees the prefix and the new tokens up to itself."""
    return torch.ones(n, prefix + n, dtype=torch.bool, device=device).tril(diagonal=prefix)


def _tree_mask(prefix: int, tree_mask: torch.Tensor) -> torch.Tensor:
    """``[n, prefix + n]`` bool from an ``[n, n]`` tree visibility matrix (prefix always visible)."""
    n = tree_mask.shape[0]
    full = torch.ones(n, prefix + n, dtype=torch.bool, device=tree_mask.device)
    full[:, prefix:] = tree_mask
    return full


def count_parameters(model: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in model.parameters())
