"""The target-model contract: what the generation loop, proposers, heads, tree calibration and group
building need from a codec LM, whatever its implementation (specbench's own ``CodecLM`` or a Hugging
Face causal LM over codec tokens).

Speech space. Every method here speaks in *speech space*: ids ``0..speech_vocab-1`` are the codec's
tokens and ``speech_vocab`` is end-of-speech (``eos``). A backend maps them to its own vocabulary
(text ids, offsets, special tokens) and back; logits it returns cover exactly these ``speech_vocab + 1``
classes, so acceptance rules, groups and heads never see the model's full vocabulary.

Positions. ``step(tokens, cache, depths=..., tree_mask=...)`` appends ``n`` tokens after the cache.
Without ``depths`` they sit at consecutive positions (a chain); with ``depths`` token ``i`` sits at
``depth[i]`` positions after the last cached token + 1 (node depth in a candidate tree, root = 0) and sees
the cache plus the new tokens ``j`` with ``tree_mask[i, j]``. The backend owns its position scheme.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

if TYPE_CHECKING:
    from specbench.codec.base import SpeechCodec


@dataclass(frozen=True)
class Context:
    """What one utterance is conditioned on: the text to speak and the speaker prompt.

    ``phonemes`` (espeak-ng) feed phoneme-input models such as the built-in target; ``text`` and the
    prompt's transcript ``prompt_text`` feed text-input models (zero-shot cloning templates put the
    transcript before the text); ``prompt_tokens`` are the prompt audio's codec tokens (speech space).
    ``phones`` (space-separated espeak-ng phone tokens) feed duration-aligned models, which compute them
    from ``text`` when absent; ``phone_starts`` (seconds, the reference audio's alignment) are used only
    by teacher-forced scoring of the reference tokens. ``durations`` (frames per phone) make an aligned
    model speak to that alignment instead of predicting its own: how a draft follows its target's
    (:meth:`TargetModel.draft_context`).
    """

    text: str
    phonemes: str
    prompt_tokens: torch.Tensor
    prompt_text: str | None = None
    phones: str | None = None
    phone_starts: list[float] | None = None
    durations: tuple[int, ...] | None = None


@runtime_checkable
class TargetCache(Protocol):
    """A batch-1 KV cache: ``length`` valid slots; rolled back by ``crop`` or compacted by ``keep``."""

    @property
    def length(self) -> int: ...

    def crop(self, n: int) -> None:
        """Keep the first ``n`` slots (``0 <= n <= length``)."""

    def keep(self, indices: list[int]) -> None:
        """Keep exactly the slots ``indices`` (ascending), moved to the front (commit a tree path)."""


@runtime_checkable
class TargetModel(Protocol):
    """A codec LM the loop can decode with (target or draft). See the module docstring for the spaces."""

    id: str
    speech_vocab: int
    hidden_size: int

    @property
    def eos(self) -> int:
        """End-of-speech in speech space (= ``speech_vocab``)."""

    @property
    def device(self) -> torch.device: ...

    def prefill(self, ctx: Context, capacity: int = 0) -> tuple[torch.Tensor, torch.Tensor, TargetCache]:
        """Run the context once: ``(logits [V+1] of the last position, its hidden state [d], cache)``.

        ``capacity`` is a hint: how many slots the cache will need AFTER the context (tokens to come).
        """

    def draft_context(self, ctx: Context, cache: TargetCache) -> Context:
        """The context a draft model proposing for this target is given after the target's ``prefill``:
        ``ctx`` plus what the target fixed there that the draft's tokens must fit (an aligned model: its
        predicted durations, so draft frame t is conditioned on the same phone as target frame t)."""

    def step(
        self, tokens: torch.Tensor, cache: TargetCache, *, depths: torch.Tensor | None = None, tree_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append speech tokens ``[n]``: ``(logits [n, V+1], hidden [n, d])``; ``cache.length`` grows by ``n``."""

    def score(self, ctx: Context, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One full forward over the context followed by ``codes [T]`` (teacher forcing, no cache).

        Returns ``(logits [T+1, V+1], hidden [T+1, d])``: row ``j`` predicts ``codes[j]`` (row ``T``
        predicts what follows the last code, EOS for a finished utterance).
        """

    def speech_embeddings(self) -> torch.Tensor:
        """Input-embedding rows ``[V+1, d]`` of the speech tokens and EOS (autoregressive heads, groups)."""

    def output_head(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head restricted to speech space: ``(weight [V+1, d], bias [V+1] or None)``."""

    def check_codec(self, codec: SpeechCodec) -> None:
        """ModelError unless ``codec`` produces the tokens this model was trained on."""

    def describe(self) -> dict[str, object]:
        """Provenance for records and env.json (backend, path, family, dtype, parameter count)."""
