"""A static-shape decode path for ``hf-causal`` targets (``model.compile: true``).

The same design as the built-in model's (:mod:`specbench.models.static_lm`), on transformers' own
``StaticCache`` (one preallocated key/value buffer per layer, written in place at the layer's
``cumulative_length``, a tensor, so a new length is no new graph):

- :class:`HFStaticCache` keeps the :class:`~specbench.targets.base.TargetCache` contract: ``length`` is
  tracked here and written into every layer's ``cumulative_length`` before a forward; ``crop`` only moves
  it (slots past it are masked, then overwritten); ``keep`` gathers a tree path's slots to the front with
  ``index_copy_``. The capacity is rounded up to a multiple of
  :data:`~specbench.models.static_lm.CAPACITY_STEP` plus room for the largest bucket, so utterances share
  a few cache shapes.
- New tokens are padded to a bucket of :data:`~specbench.models.static_lm.BUCKETS` (1, 2, 4, ...):
  padded rows carry speech code 0 at the last real position, write to the slots after the real ones and
  see only themselves and the cache; their outputs are dropped.
- Attention reads only a window of the first ``W`` slots (:func:`~specbench.models.static_lm.attention_window`:
  doubling from 256, at most the capacity): every layer of the cache is a :class:`StaticLayer` whose
  ``update`` returns ``keys[:, :, :W]`` (``W`` a Python int attribute, so dynamo builds one graph per
  window). The 4-D additive mask ``[1, 1, B, W]`` (slots ``< length`` visible, the new block through the
  causal or tree mask, nothing else) is built outside the graph, so its shape, not its values, picks the
  graph.
- :class:`HFStaticDecoder` runs the prefill eagerly into a fresh static cache and every step through one
  function of ``(ids, positions, mask, cache)``, compiled by
  :func:`~specbench.models.static_lm.compile_fn` (inductor on CPU, CUDA graphs on CUDA) when ``compile``.
  A new cache object of a seen shape reuses the graph (measured: no recompilation across utterances).
"""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from specbench.errors import ModelError
from specbench.models.static_lm import BUCKETS, StaticGraphs, attention_window, bucket, move_slots, pad_tree_mask, round_capacity


@functools.cache
def _windowed_layer_class() -> type:
    """transformers' ``StaticLayer`` whose ``update`` returns the first ``window`` slots (all when None)."""
    from transformers.cache_utils import StaticLayer

    class WindowedStaticLayer(StaticLayer):
        window: int | None = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            w = self.window
            return (keys, values) if w is None else (keys[:, :, :w], values[:, :, :w])

    return WindowedStaticLayer


def windowed_static_cache(config: Any, capacity: int) -> Any:
    """A transformers ``StaticCache`` of ``capacity`` slots whose layers attend over a settable window
    (:func:`set_window`). Sliding-window layers have no place in it: a one-line error says so."""
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    cache = StaticCache(config=config, max_cache_len=capacity)
    cls = _windowed_layer_class()
    for layer in cache.layers:
        if type(layer) is not StaticLayer:
            raise ModelError(f"the static decode path supports full-attention layers only, this model has {type(layer).__name__}: set model.compile: false")
        layer.__class__ = cls  # the same object and buffers, a subclass that adds only the window
    return cache


def set_window(cache: Any, window: int | None) -> None:
    """Attend over the first ``window`` slots of every layer of a :func:`windowed_static_cache`."""
    for layer in cache.layers:
        layer.window = window


class HFStaticCache:
    """A transformers ``StaticCache`` behind the crop/keep contract; ``capacity`` slots per layer."""

    def __init__(self, cache: Any, capacity: int) -> None:
        self.cache = cache
        self.capacity = capacity
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    def _layers(self) -> list[Any]:
        return [layer for layer in self.cache.layers if getattr(layer, "is_initialized", False)]

    def sync(self) -> None:
        """Write ``length`` into every layer's ``cumulative_length`` (where the next forward writes)."""
        for layer in self._layers():
            layer.cumulative_length.fill_(self._length)

    def set_length(self, n: int) -> None:
        self._length = n

    def crop(self, n: int) -> None:
        """Keep the first ``n`` slots (n ≤ length); later slots are masked and will be overwritten."""
        if not 0 <= n <= self._length:
            raise ValueError(f"cannot crop a cache of length {self._length} to {n}")
        self._length = n

    def keep(self, indices: list[int]) -> None:
        """Keep exactly the slots ``indices`` (ascending), moved to slots ``0..len-1``; slots already in
        place are not copied."""
        layers = self._layers()
        self._length = move_slots([t for layer in layers for t in (layer.keys, layer.values)], indices)


class HFStaticDecoder(StaticGraphs):
    """The static decode path of one Hugging Face decoder (``backbone``: the model's ``get_decoder()``).

    ``cache_kw`` is the name the backbone takes its cache under (``cache`` or ``past_key_values``),
    ``pad_id`` the model id padded rows carry, ``dtype`` the mask's dtype (the model's); graph ledger,
    ``compile_seconds`` and ``min_capacity`` as :class:`~specbench.models.static_lm.StaticGraphs`.
    """

    def __init__(self, backbone: Any, config: Any, cache_kw: str, pad_id: int, dtype: torch.dtype, device: torch.device, compile: bool = False) -> None:
        self.backbone = backbone
        self.config = config
        self.cache_kw = cache_kw
        self.pad_id = pad_id
        self.dtype = dtype
        windowed_static_cache(config, round_capacity(1))  # refuse unsupported layer types at load time (no buffers yet)
        super().__init__(self._forward, device, compile)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
        out = self.backbone(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True, **{self.cache_kw: cache})
        return out.last_hidden_state[0]

    def new_cache(self, capacity: int) -> HFStaticCache:
        """A cache of ``capacity`` slots (at least ``min_capacity``), rounded up to a multiple of
        :data:`~specbench.models.static_lm.CAPACITY_STEP` so that utterances share a few shapes."""
        cap = round_capacity(max(capacity, self.min_capacity))
        return HFStaticCache(windowed_static_cache(self.config, cap), cap)

    def prefill(self, ids: torch.Tensor, capacity: int = 0) -> tuple[torch.Tensor, HFStaticCache]:
        """``ids [L]`` through the backbone (eager, transformers' causal mask) into a static cache with
        room for ``capacity`` more tokens; returns (hidden state of the last prompt token, cache)."""
        cache = self.new_cache(ids.numel() + capacity + 1 + BUCKETS[-1])  # + the largest bucket's padding
        set_window(cache.cache, None)  # the prefill's causal mask spans the capacity
        out = self.backbone(input_ids=ids[None], use_cache=True, **{self.cache_kw: cache.cache})
        cache.set_length(ids.numel())
        return out.last_hidden_state[0, -1], cache

    def _mask(self, start: int, window: int, new_mask: torch.Tensor) -> torch.Tensor:
        """``[1, 1, B, window]`` additive: slots < ``start`` visible, slots ``start + j`` through ``new_mask``."""
        b = new_mask.shape[0]
        visible = torch.zeros(b, window, dtype=torch.bool, device=self.device)
        visible[:, :start] = True
        visible[:, start : start + b] = new_mask
        return torch.zeros(1, 1, b, window, dtype=self.dtype, device=self.device).masked_fill(~visible, torch.finfo(self.dtype).min)

    def _new_mask(self, b: int, tree_mask: torch.Tensor | None) -> torch.Tensor:
        """Visibility among the ``b`` padded new tokens: causal, or ``tree_mask`` padded (padded rows see
        only themselves; under the causal mask they come last, so no real row sees them)."""
        if tree_mask is None:
            return self._causal_mask(b)
        return pad_tree_mask(tree_mask.to(self.device), b)

    def step(self, ids: torch.Tensor, positions: torch.Tensor, cache: HFStaticCache, tree_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Model ids ``[n]`` at absolute ``positions [n]`` appended to ``cache`` (causal, or ``tree_mask``
        among them); returns their hidden states ``[n, d]``."""
        n = ids.numel()
        b = bucket(n)
        start = cache.length
        if start + b > cache.capacity:
            raise ValueError(f"a static cache of {cache.capacity} slots cannot take {b} more after {start}: prefill with a larger capacity")
        if n != b:
            ids = torch.cat([ids, ids.new_full((b - n,), self.pad_id)])
            positions = torch.cat([positions, positions[-1:].expand(b - n)])
        window = attention_window(start + b, cache.capacity)
        mask = self._mask(start, window, self._new_mask(b, tree_mask))
        set_window(cache.cache, window)
        cache.sync()
        hidden = self._run((b, cache.capacity, window), ids[None], positions[None], mask, cache.cache)
        cache.set_length(start + n)
        return hidden[:n]

    def warm_up(self, capacity: int, sizes: tuple[int, ...] = BUCKETS) -> float:
        """Build the graphs of ``sizes`` for a cache of ``capacity`` slots (at least ``min_capacity``,
        rounded as every cache is), every attention window of it, ahead of timing; returns seconds."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            room = max(0, capacity - 2 - BUCKETS[-1])  # a one-token prefill asking for `capacity` slots in all
            _, cache = self.prefill(torch.full((1,), self.pad_id, dtype=torch.long, device=self.device), room)
            for b in sizes:
                for start in self.warm_up_starts(cache.capacity, b):
                    cache.set_length(start)
                    pos = torch.arange(start, start + b, device=self.device)
                    self.step(torch.full((b,), self.pad_id, dtype=torch.long, device=self.device), pos, cache)
        return time.perf_counter() - t0
