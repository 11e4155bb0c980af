"""A static-shape decode path for :class:`~specbench.models.codec_lm.CodecLM` (``model.compile``).

Every decode forward has the same tensor shapes for a given number of new tokens, so that a compiled
graph (``torch.compile``: inductor on CPU, ``mode="reduce-overhead"``, i.e. CUDA graphs, on CUDA) is
reused across rounds and utterances:

- :class:`StaticKVCache`: one preallocated ``[1, heads, capacity, head_dim]`` key and value buffer per
  layer. The capacity is rounded up to a multiple of :data:`CAPACITY_STEP` (few distinct shapes across
  utterances); new keys/values are written with ``index_copy_`` at slot tensors, never through
  Python-int slices, and ``crop``/``keep`` keep the :class:`~specbench.targets.base.TargetCache` contract
  (crop only moves ``length``: slots past it are masked, then overwritten).
- The number of new tokens ``n`` is padded to a bucket of :data:`BUCKETS` (1, 2, 4, ... 128); padded rows
  carry token 0 at a valid position, write to slots after the real ones (masked for every real row) and
  see only themselves; their outputs are dropped. Real rows' logits do not depend on the padding.
- Attention runs over a window of the first ``W`` slots, ``W`` the smallest :data:`WINDOW_MIN` · 2^k
  that holds the valid length plus the new block (at most the capacity; :func:`attention_window`), with a
  boolean mask built inside the graph from the valid length (a 0-d tensor input, so a new length inside
  the same window is no new graph) and the ``[B, B]`` visibility among the new tokens (causal or the tree
  mask, padded). A full-capacity window would make every step read every key and value slot of the
  cache, as many bytes as the weights on the shipped model, and a tree's B queries score them all; the
  doubling windows bound the waste to 2× the live length at a few graphs per bucket.

:func:`static_forward` is a pure function of tensors; :class:`StaticDecoder` compiles it (or not) and
runs the prefill eagerly into the static cache. With ``compile=False`` the same static path runs eagerly,
which the tests use to check it against the dynamic path cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from specbench.models.codec_lm import Alignment, CodecLM

BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
CAPACITY_STEP = 256
WINDOW_MIN = 256


def bucket(n: int, buckets: tuple[int, ...] = BUCKETS) -> int:
    """The smallest bucket ``>= n`` (past the largest: the next multiple of it)."""
    for b in buckets:
        if n <= b:
            return b
    top = buckets[-1]
    return -(-n // top) * top


def round_capacity(n: int) -> int:
    """Capacity rounded up to a multiple of :data:`CAPACITY_STEP`."""
    return max(CAPACITY_STEP, -(-n // CAPACITY_STEP) * CAPACITY_STEP)


def attention_window(need: int, capacity: int) -> int:
    """Key/value slots a static forward attends over when ``need`` slots are live after it: the smallest
    ``WINDOW_MIN · 2^k >= need``, capped at ``capacity`` (one compiled graph per distinct window)."""
    if need > capacity:
        raise ValueError(f"{need} live slots do not fit a static cache of {capacity}")
    w = WINDOW_MIN
    while w < need:
        w *= 2
    return min(w, capacity)


def windows(capacity: int) -> list[int]:
    """Every window :func:`attention_window` can pick for a cache of ``capacity`` slots, ascending."""
    out, w = [], WINDOW_MIN
    while w < capacity:
        out.append(w)
        w *= 2
    return [*out, capacity]


def move_slots(buffers: list[torch.Tensor], indices: torch.Tensor | list[int]) -> int:
    """Gather the slots ``indices`` (ascending) of every ``[1, heads, capacity, head_dim]`` buffer into
    slots ``0..len-1``, in place (``index_copy_``: the buffers keep their addresses, as compiled graphs
    and CUDA graphs need); slots already in place are not copied. Returns ``len(indices)``."""
    idx = [int(i) for i in indices]
    n = len(idx)
    first = next((j for j, s in enumerate(idx) if s != j), n)
    if first < n and buffers:
        dev = buffers[0].device
        src = torch.tensor(idx[first:], dtype=torch.long, device=dev)
        dst = torch.arange(first, n, device=dev)
        for t in buffers:
            t.index_copy_(2, dst, t.index_select(2, src))
    return n


def pad_tree_mask(tree_mask: torch.Tensor, b: int) -> torch.Tensor:
    """``tree_mask [n, n]`` (bool visibility among new tokens) padded to ``[b, b]``: padded rows see only
    themselves, so they never feed a real row and always have a key to attend to."""
    n = tree_mask.shape[0]
    full = torch.eye(b, dtype=torch.bool, device=tree_mask.device)
    full[:n, :n] = tree_mask
    return full


class StaticKVCache:
    """Per-layer static buffers ``k[i], v[i]: [1, heads, capacity, head_dim]``; ``length`` valid slots,
    ``offset`` non-speech slots (text + SEP), as :class:`~specbench.models.codec_lm.KVCache`."""

    def __init__(self, n_layers: int, n_heads: int, head_dim: int, capacity: int, device: torch.device, dtype: torch.dtype) -> None:
        cap = round_capacity(capacity)
        self.k = [torch.zeros(1, n_heads, cap, head_dim, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.length = 0
        self.offset = 0
        self.alignment: Alignment | None = None

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @property
    def speech_len(self) -> int:
        return self.length - self.offset

    def reserve(self, n: int) -> None:
        """Grow (to the next rounded capacity, at least doubling) so ``n`` more slots fit; a new
        capacity is a new graph shape, so callers size the cache up front (prefill's ``capacity``)."""
        need = self.length + n
        if need <= self.capacity:
            return
        cap = round_capacity(max(need, 2 * self.capacity))
        for bufs in (self.k, self.v):
            for i, old in enumerate(bufs):
                new = old.new_zeros(old.shape[0], old.shape[1], cap, old.shape[3])
                new[:, :, : self.length] = old[:, :, : self.length]
                bufs[i] = new

    def crop(self, n: int) -> None:
        """Keep the first ``n`` slots (n ≤ length); later slots are masked and will be overwritten."""
        if not 0 <= n <= self.length:
            raise ValueError(f"cannot crop a cache of length {self.length} to {n}")
        self.length = n

    def keep(self, indices: torch.Tensor | list[int]) -> None:
        """Keep exactly the slots ``indices`` (ascending), moved to slots ``0..len-1``; slots already in
        place are not copied."""
        self.length = move_slots([*self.k, *self.v], indices)

    def clone(self) -> StaticKVCache:
        c = StaticKVCache.__new__(StaticKVCache)
        c.k, c.v = [t.clone() for t in self.k], [t.clone() for t in self.v]
        c.length, c.offset, c.alignment = self.length, self.offset, self.alignment
        return c


def static_forward(
    model: CodecLM,
    tokens: torch.Tensor,
    pos_ids: torch.Tensor,
    slots: torch.Tensor,
    length: torch.Tensor,
    new_mask: torch.Tensor,
    ks: list[torch.Tensor],
    vs: list[torch.Tensor],
    extra: torch.Tensor,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One static-shape forward of ``B`` (padded) new tokens.

    ``tokens, pos_ids, slots: [B]`` (speech ids, position-table ids, cache slots ``length + 0..B-1``),
    ``length``: 0-d valid cache length before the new tokens, ``new_mask: [B, B]`` bool visibility among
    the new tokens, ``extra [B, d]``: added to the input embeddings (an aligned model's frame
    conditioning; zeros otherwise), ``window``: attend over slots ``0..window-1`` (a Python int: one graph
    per window; ``length + B <= window``). Writes keys/values into ``ks``/``vs`` at ``slots``; returns
    ``(logits [B, V+1], hidden [B, d])``.
    """
    cfg = model.cfg
    b = tokens.shape[0]
    n_heads, head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
    # padded rows may sit past the table's end near max_speech_len: clamp (real rows never exceed it)
    pos_ids = pos_ids.clamp(max=model.pos_emb.num_embeddings - 1)
    h = (model.tok_emb(tokens + cfg.speech_offset) + model.pos_emb(pos_ids) + extra).unsqueeze(0)
    col = torch.arange(window, device=tokens.device)
    rel = col - length
    in_block = (rel >= 0) & (rel < b)
    mask = (col < length)[None, :] | (in_block[None, :] & new_mask[:, rel.clamp(0, b - 1)])
    mask = mask[None, None]
    for i, blk in enumerate(model.blocks):
        q, k, v = blk.qkv(blk.ln1(h)).view(1, b, 3, n_heads, head_dim).permute(2, 0, 3, 1, 4)
        ks[i].index_copy_(2, slots, k)
        vs[i].index_copy_(2, slots, v)
        a = F.scaled_dot_product_attention(q, ks[i][:, :, :window], vs[i][:, :, :window], attn_mask=mask)
        h = h + blk.proj(a.transpose(1, 2).reshape(1, b, cfg.d_model))
        h = h + blk.fc2(F.gelu(blk.fc1(blk.ln2(h))))
    h = model.ln_f(h[0])
    return model.head(h), h


def compile_fn(fn, device: torch.device):  # noqa: ANN001, ANN201 - a torch.compile wrapper
    """``torch.compile`` with static shapes: inductor on CPU, CUDA graphs (reduce-overhead) on CUDA."""
    import torch._dynamo

    # one graph per (bucket, capacity, window): allow more than dynamo's default of 8 per function
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 512)
    mode = "reduce-overhead" if device.type == "cuda" else None
    return torch.compile(fn, dynamic=False, mode=mode)


class StaticGraphs:
    """What both static decode paths (built-in and hf-causal) share: the step function, compiled or not;
    the ledger of graph keys ``(bucket, capacity, window)`` already run, with ``compile_seconds`` = wall
    time of the first call of each key (the call that builds its graph when compiled; targets report it
    only then); cached causal masks; ``min_capacity``, a floor for every cache (the bench sets it so all
    utterances share one capacity, hence the graphs ``warm_up`` builds at :meth:`warm_up_starts`)."""

    def __init__(self, fn, device: torch.device, compile: bool) -> None:  # noqa: ANN001 - the step function
        self.device = device
        self.compile = compile
        self._fn = compile_fn(fn, device) if compile else fn
        self._seen: set[tuple[int, int, int]] = set()
        self._causal: dict[int, torch.Tensor] = {}
        self.compile_seconds = 0.0
        self.min_capacity = 0

    def _run(self, key: tuple[int, int, int], *args):  # noqa: ANN002, ANN202 - the step function's own
        """``self._fn(*args)``, timed into ``compile_seconds`` when ``key`` (bucket, capacity, window) is new."""
        if key in self._seen:
            return self._fn(*args)
        t0 = time.perf_counter()
        out = self._fn(*args)
        self._seen.add(key)
        self.compile_seconds += time.perf_counter() - t0
        return out

    def _causal_mask(self, b: int) -> torch.Tensor:
        t = self._causal.get(b)
        if t is None:
            t = self._causal[b] = torch.ones(b, b, dtype=torch.bool, device=self.device).tril()
        return t

    @staticmethod
    def warm_up_starts(capacity: int, b: int) -> list[int]:
        """Cache lengths at which a ``b``-token step runs in each attention window of ``capacity`` slots
        (the new block ends at the window's last slot)."""
        return [max(1, w - b) for w in windows(capacity)]


class StaticDecoder(StaticGraphs):
    """The static decode path of one CodecLM: eager prefill into a :class:`StaticKVCache`, then every
    step through :func:`static_forward` (compiled when ``compile``)."""

    def __init__(self, model: CodecLM, compile: bool = False) -> None:
        self.model = model
        p = model.head.weight
        self.dtype = p.dtype
        super().__init__(self._forward, p.device, compile)
        self._ar: dict[int, torch.Tensor] = {}
        self._zeros: dict[int, torch.Tensor] = {}
        self._tree: dict[int, tuple[torch.Tensor, int, torch.Tensor]] = {}

    def _forward(self, tokens, pos_ids, slots, length, new_mask, ks, vs, extra, window):  # noqa: ANN001, ANN202
        return static_forward(self.model, tokens, pos_ids, slots, length, new_mask, ks, vs, extra, window)

    def new_cache(self, capacity: int) -> StaticKVCache:
        cfg = self.model.cfg
        return StaticKVCache(cfg.n_layers, cfg.n_heads, cfg.d_model // cfg.n_heads, capacity, self.device, self.dtype)

    def prefill(
        self, text_ids: torch.Tensor, prompt: torch.Tensor, capacity: int = 0, durations: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, StaticKVCache]:
        """The model's own (eager) prefill, its keys/values copied into a static cache of ``capacity``
        slots plus room for the largest bucket's padding."""
        logits, hidden, kv = self.model.prefill(text_ids, prompt, capacity=0, durations=durations)
        cache = self.new_cache(max(max(capacity, kv.length + 1) + BUCKETS[-1], self.min_capacity))
        n = kv.length
        for i in range(len(cache.k)):
            cache.k[i][0, :, :n] = kv.k[i, :, :n]
            cache.v[i][0, :, :n] = kv.v[i, :, :n]
        cache.length, cache.offset, cache.alignment = n, kv.offset, kv.alignment
        return logits, hidden, cache

    def _arange(self, b: int) -> torch.Tensor:
        t = self._ar.get(b)
        if t is None:
            t = self._ar[b] = torch.arange(b, device=self.device)
        return t

    def _tree_mask(self, tree_mask: torch.Tensor, b: int) -> torch.Tensor:
        """``tree_mask [n, n]`` padded to ``[b, b]`` (padded rows see only themselves), cached per mask."""
        hit = self._tree.get(id(tree_mask))
        if hit is not None and hit[0] is tree_mask and hit[1] == b:
            return hit[2]
        full = pad_tree_mask(tree_mask.to(self.device), b)
        if len(self._tree) > 16:
            self._tree.clear()
        self._tree[id(tree_mask)] = (tree_mask, b, full)  # the reference keeps id() unique
        return full

    def step(
        self, tokens: torch.Tensor, cache: StaticKVCache, positions: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``tokens [n]`` (speech positions ``positions`` or consecutive; ``tree_mask`` or causal)."""
        n = tokens.numel()
        b = bucket(n)
        cache.reserve(b)
        ar = self._arange(b)
        start = cache.length
        if positions is None:
            pos = ar + cache.speech_len
        elif n == b:
            pos = positions
        else:
            pos = torch.cat([positions, positions[-1:].expand(b - n)])
        toks = tokens if n == b else torch.cat([tokens, tokens.new_zeros(b - n)])
        mask = self._causal_mask(b) if tree_mask is None else self._tree_mask(tree_mask, b)
        slots = ar + start
        length = torch.tensor(start, device=self.device)
        window = attention_window(start + b, cache.capacity)
        if cache.alignment is not None:
            extra = cache.alignment.at(pos)
        else:
            extra = self._zeros.get(b)
            if extra is None:
                extra = self._zeros[b] = torch.zeros(b, self.model.cfg.d_model, device=self.device, dtype=self.dtype)
        args = (toks, self.model.speech_position_ids(pos), slots, length, mask, cache.k, cache.v, extra, window)
        logits, hidden = self._run((b, cache.capacity, window), *args)
        cache.length = start + n
        if n != b:
            logits, hidden = logits[:n], hidden[:n]
        return logits, hidden

    def warm_up(self, capacity: int, sizes: tuple[int, ...] = BUCKETS) -> float:
        """Build the graphs of ``sizes`` for a cache of ``capacity`` slots (at least ``min_capacity``,
        rounded as every cache is), every attention window of it, ahead of timing; returns seconds."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            # the capacity every prefill gets under this floor (a request <= it rounds to the same size)
            cache = self.new_cache(max(capacity, self.min_capacity))
            cache.offset = 1
            for b in sizes:
                for start in self.warm_up_starts(cache.capacity, b):
                    cache.length = start
                    self.step(torch.zeros(b, dtype=torch.long, device=self.device), cache)
        return time.perf_counter() - t0
