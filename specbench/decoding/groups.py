"""Acoustic Similarity Groups for PCG (Principled Coarse-Graining), methods.md §4.

A group per output token k of a vocabulary of size V (speech tokens + EOS)::

    G_k = {t : cos(E_k, E_t) > θ} ∪ {k}      (special tokens: G_k = {k}, and never a member elsewhere)
    S(t) = {k : t ∈ G_k}                        (the labels whose group contains t)
    w_{k,t} = 1 / |S(t)|                        ("uniform", the overlap-aware split)
           or cos(E_k, E_t) / Σ_{k' ∈ S(t)} cos(E_k', E_t)   ("cosine")

Every column of W = [w_{k,t}] sums to 1, so for a token distribution p the coarse distribution
P_c = W p, P_c(k) = Σ_{t ∈ G_k} w_{k,t} p(t), is a distribution over the V group labels. Sampling
t ~ p and then k ~ w_{·,t} draws k ~ P_c; given k, t ∝ p(t) w_{k,t} on G_k. The acceptance rule that
uses these groups is :func:`specbench.decoding.acceptance.group_rule`.

W is stored sparse twice: CSR by group (``indptr``/``indices``/``weights``: the members of G_k and
w_{k,·}, gathered to compute P_c(k) for one label) and CSR by token (``t_indptr``/``t_indices``/
``t_weights``: S(t) and w_{·,t}, used to sample a label for a token). No V×V matrix is ever formed:
:func:`build_groups` scores a block of rows against all rows at a time.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from specbench.decoding.sampling import sample
from specbench.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from specbench.targets.base import TargetModel

KIND = "groups"
FORMAT_VERSION = 1
SOURCES = ("input", "output", "random")
WEIGHTINGS = ("uniform", "cosine")
SCREENS = ("auto", "float32", "bfloat16")
# |cos_bf16 - cos| for unit rows: ≤ 2^-7 from rounding both inputs (Σ|a_i b_i| ≤ 1) + 2^-8 from the
# bf16 output; screening at θ - 2^-5 therefore never misses a pair that the fp32 re-score keeps.
BF16_MARGIN = 2.0**-5
TILE = 64  # columns per tile of the sparse hit search (a row block's tile maxima are scanned first)
BLOCK_ELEMENTS = 2**24  # default similarity block: chunk × V ≤ 16 M scores (64 MB in fp32)
_TENSORS = ("indptr", "indices", "weights", "t_indptr", "t_indices", "t_weights")


@dataclass(eq=False)  # tensor fields: identity comparison, not element-wise
class Groups:
    """Sparse Acoustic Similarity Groups over an output vocabulary of size ``V``.

    ``indptr [V+1]`` (int64), ``indices [nnz]`` (int32, ascending within a group), ``weights [nnz]``
    (float32): members t of G_k and w_{k,t} are ``indices/weights[indptr[k]:indptr[k+1]]``.
    ``t_indptr``/``t_indices``/``t_weights``: the same matrix by token, i.e. S(t) and w_{k,t}.
    ``special`` tokens have singleton groups. ``source`` says which table the groups came from.
    """

    indptr: torch.Tensor
    indices: torch.Tensor
    weights: torch.Tensor
    t_indptr: torch.Tensor
    t_indices: torch.Tensor
    t_weights: torch.Tensor
    theta: float
    source: str = "input"
    weighting: str = "uniform"
    special: list[int] = field(default_factory=list)
    build_seconds: float = 0.0
    _rows: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)
    _copies: dict[torch.device, Groups] = field(default_factory=dict, init=False, repr=False, compare=False)

    # ---- shape ---------------------------------------------------------------------------------
    @property
    def vocab(self) -> int:
        """V, the number of tokens (= the number of group labels)."""
        return self.indptr.numel() - 1

    @property
    def nnz(self) -> int:
        """Σ_k |G_k| = number of stored (k, t) memberships."""
        return self.indices.numel()

    @property
    def device(self) -> torch.device:
        return self.indptr.device

    def sizes(self) -> torch.Tensor:
        """|G_k| for every label ``[V]`` (int64)."""
        return self.indptr.diff()

    def to(self, device: torch.device | str) -> Groups:
        """A copy on ``device`` (``self`` when already there). The rule needs the groups on p's device."""
        device = torch.device(device)
        if self.indptr.device == device:
            return self
        moved: dict[str, torch.Tensor] = {}
        done: dict[int, torch.Tensor] = {}  # keep shared index arrays shared on the new device
        for name in _TENSORS:
            t = getattr(self, name)
            if id(t) not in done:
                done[id(t)] = t.to(device)
            moved[name] = done[id(t)]
        return Groups(**moved, theta=self.theta, source=self.source, weighting=self.weighting, special=list(self.special), build_seconds=self.build_seconds)

    def on(self, device: torch.device) -> Groups:
        """:meth:`to` ``device``, moved once and then reused (the rules call it every round)."""
        if self.indptr.device == device:
            return self
        if device not in self._copies:
            self._copies[device] = self.to(device)
        return self._copies[device]

    # ---- lookups -------------------------------------------------------------------------------
    def members(self, k: int) -> torch.Tensor:
        """The tokens of G_k, ascending (int64)."""
        a, b = int(self.indptr[k]), int(self.indptr[k + 1])
        return self.indices[a:b].long()

    def member_weights(self, k: int) -> torch.Tensor:
        """w_{k,t} for t in :meth:`members` (k), same order."""
        a, b = int(self.indptr[k]), int(self.indptr[k + 1])
        return self.weights[a:b]

    def labels_of(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """S(t) (int64, ascending) and the weights w_{k,t} for k in S(t) (they sum to 1)."""
        a, b = int(self.t_indptr[t]), int(self.t_indptr[t + 1])
        return self.t_indices[a:b].long(), self.t_weights[a:b]

    # ---- coarse-graining -----------------------------------------------------------------------
    def mass_tensor(self, dist: torch.Tensor, k: int) -> torch.Tensor:
        """P_c(k) = Σ_{t ∈ G_k} w_{k,t} dist(t) as a 0-dim tensor of ``dist``'s dtype (gathers G_k only).

        Kept as a tensor so the group rule's ratio is computed in exactly the arithmetic of the token
        rule: for a singleton group (w = 1) this is bit-identical to ``dist[k]``.
        """
        a, b = int(self.indptr[k]), int(self.indptr[k + 1])
        return (dist[self.indices[a:b]] * self.weights[a:b].to(dist.dtype)).sum()

    def mass(self, dist: torch.Tensor, k: int) -> float:
        """P_c(k) = Σ_{t ∈ G_k} w_{k,t} dist(t) (gathers only the members of G_k)."""
        return float(self.mass_tensor(dist, k))

    def _entry_rows(self) -> torch.Tensor:
        """The group label of every stored entry (cached; derived from ``indptr``, so never saved)."""
        if self._rows is None or self._rows.device != self.device:
            self._rows = torch.repeat_interleave(torch.arange(self.vocab, device=self.device), self.sizes())
        return self._rows

    def coarse(self, dist: torch.Tensor) -> torch.Tensor:
        """W·dist for every label: ``[..., V]`` → ``[..., V]`` in O(nnz) (sparse scatter-add, no dense W)."""
        contrib = dist[..., self.indices] * self.weights.to(dist.dtype)
        return torch.zeros_like(dist).index_add_(-1, self._entry_rows(), contrib)

    def to_dense(self) -> torch.Tensor:
        """W as a dense ``[V, V]`` float32 matrix, W[k, t] = w_{k,t}. Tests and small vocabularies only."""
        dense = torch.zeros(self.vocab, self.vocab, dtype=torch.float32, device=self.device)
        dense[self._entry_rows(), self.indices.long()] = self.weights.float()
        return dense

    # ---- sampling helpers used by the group rule ------------------------------------------------
    def sample_label(self, t: int, generator: torch.Generator) -> int:
        """k ~ w_{·,t}. No random draw when t belongs to one group only (|S(t)| = 1)."""
        a, b = int(self.t_indptr[t]), int(self.t_indptr[t + 1])
        if b - a == 1:
            return int(self.t_indices[a])
        return int(self.t_indices[a + int(sample(self.t_weights[a:b], generator))])

    def sample_member(self, dist: torch.Tensor, k: int, generator: torch.Generator) -> int:
        """t ~ dist restricted to G_k and weighted by w_{k,t} (∝ dist(t) w_{k,t}); no draw for |G_k| = 1.

        When ``dist`` has no mass on G_k (never the case for a k drawn from a coarse residual of
        ``dist``) this falls back to t ~ dist rather than failing.
        """
        a, b = int(self.indptr[k]), int(self.indptr[k + 1])
        if b - a == 1:
            return int(self.indices[a])
        members = self.indices[a:b]
        w = dist[members] * self.weights[a:b].to(dist.dtype)
        if not float(w.sum()) > 0.0:
            return int(sample(dist, generator))
        return int(members[int(sample(w, generator))])

    # ---- reporting and files -------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Bytes held by the stored tensors (both CSR views; a storage shared by both counts once)."""
        seen: dict[int, int] = {}
        for name in _TENSORS:
            t = getattr(self, name)
            seen[t.untyped_storage().data_ptr()] = max(seen.get(t.untyped_storage().data_ptr(), 0), t.numel() * t.element_size())
        return sum(seen.values())

    def stats(self) -> dict[str, Any]:
        """Group sizes (mean/median/max), coverage, nnz, memory and build time.

        ``coverage`` = fraction of the non-special tokens whose own group G_k has more than one member.
        """
        sizes = self.sizes().cpu()
        speech = torch.ones(self.vocab, dtype=torch.bool)
        if self.special:
            speech[torch.tensor(self.special, dtype=torch.long)] = False
        n_speech = int(speech.sum())
        return {
            "vocab": self.vocab,
            "theta": self.theta,
            "source": self.source,
            "weighting": self.weighting,
            "mean_size": float(sizes.double().mean()) if self.vocab else 0.0,
            "median_size": float(sizes.double().median()) if self.vocab else 0.0,
            "max_size": int(sizes.max()) if self.vocab else 0,
            "coverage": float((sizes[speech] > 1).double().sum() / n_speech) if n_speech else 0.0,
            "nnz": self.nnz,
            "memory_bytes": self.memory_bytes(),
            "build_seconds": self.build_seconds,
        }

    def save(self, path: str | Path) -> None:
        """Write a ``kind: "groups"`` file atomically (temp file + rename)."""
        from specbench.models.checkpoint import save_atomic

        payload: dict[str, Any] = {name: getattr(self, name).cpu() for name in _TENSORS}
        payload.update(
            kind=KIND,
            version=FORMAT_VERSION,
            theta=self.theta,
            source=self.source,
            weighting=self.weighting,
            special=list(self.special),
            build_seconds=self.build_seconds,
        )
        save_atomic(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> Groups:
        """Read a file written by :meth:`save`; ModelError (one line, with the fix) otherwise."""
        from specbench.models.checkpoint import read_torch_file

        p = Path(path)
        fix = "build one with `specbench build-groups --out PATH`"
        if not p.is_file():
            raise ModelError(f"groups file not found: {p} (fix the path, or {fix})")
        try:
            obj = read_torch_file(p)
        except Exception as exc:
            raise ModelError(f"cannot read groups file {p}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__} ({fix})") from None
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if kind != KIND:
            raise ModelError(f"{p} is a '{kind or type(obj).__name__}' file, expected a '{KIND}' file: {fix}")
        try:
            groups = cls(
                **{name: obj[name] for name in _TENSORS},
                theta=float(obj["theta"]),
                source=str(obj["source"]),
                weighting=str(obj["weighting"]),
                special=[int(s) for s in obj["special"]],
                build_seconds=float(obj.get("build_seconds", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"groups file {p} is incomplete (missing {exc}): rebuild it with `specbench build-groups --out PATH`") from None
        v = groups.vocab
        if groups.t_indptr.numel() != v + 1 or int(groups.indptr[-1]) != groups.nnz or groups.t_indices.numel() != groups.nnz:
            raise ModelError(f"groups file {p} is corrupt (inconsistent sparse arrays): rebuild it with `specbench build-groups --out PATH`")
        return groups


# ---- construction -------------------------------------------------------------------------------
def _screen_dtype(screen: str, device: torch.device) -> torch.dtype:
    """bf16 screening only where bf16 matmuls are fast (GPU, or a CPU with AMX / AVX512-BF16)."""
    if screen == "float32":
        return torch.float32
    if screen == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16
    try:
        fast = bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    except AttributeError:  # private probes; absent in some torch builds → the always-correct default
        fast = False
    return torch.bfloat16 if fast else torch.float32


def _rowdot(emb: torch.Tensor, inv_norm: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """cos(E_r, E_c) in fp32 for paired index lists, from the raw rows and 1/‖E‖ (no normalised copy
    of the table), in batches so the gathered rows stay ≤ ~16 MB."""
    step = max(1, (1 << 22) // max(1, emb.shape[1]))
    out = []
    for i in range(0, rows.numel(), step):
        r, c = rows[i : i + step], cols[i : i + step]
        out.append((emb[r].float() * emb[c].float()).sum(-1) * inv_norm[r] * inv_norm[c])
    return torch.cat(out) if out else inv_norm.new_zeros(0)


def _upper_pairs(emb: torch.Tensor, theta: float, special: torch.Tensor, chunk: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs r < c of non-special rows with cos(E_r, E_c) > θ, and their cosines (fp32).

    Similarity is symmetric, so each row block [s, e) is scored only against columns ≥ s (half the
    work). Hits are found tile-wise: the max of each TILE-column tile is computed first and only tiles
    whose max clears the threshold are compared element-wise, which keeps the scan cheap when, as for
    a useful θ, a row has few neighbours. Memory: the unit-normalised table once, in the screen dtype
    (padded to whole tiles), plus one ``chunk × V`` block of scores.
    """
    v, d = emb.shape
    device = emb.device
    vp = math.ceil(v / TILE) * TILE
    # 1/max(‖E_t‖, ε) as in F.normalize: zero rows stay zero, i.e. cos 0 with everything
    inv_norm = torch.cat([emb[i : i + chunk].float().norm(dim=1) for i in range(0, v, chunk)]).clamp(min=1e-12).reciprocal()
    padded = torch.zeros(vp, d, dtype=dtype, device=device)
    for i in range(0, v, chunk):  # normalise block-wise: no full fp32 copy besides (for fp32) the operand itself
        padded[i : min(v, i + chunk)] = (emb[i : i + chunk].float() * inv_norm[i : i + chunk, None]).to(dtype)
    screened = padded[:v]
    cut = theta - BF16_MARGIN if dtype != torch.float32 else theta
    rows_out: list[torch.Tensor] = []
    cols_out: list[torch.Tensor] = []
    cos_out: list[torch.Tensor] = []
    for s in range(0, v, chunk):
        e = min(v, s + chunk)
        n = e - s
        c0 = (s // TILE) * TILE  # tile-aligned first column; columns < s are masked below
        sim = screened[s:e] @ padded[c0:].T  # [n, vp - c0]
        sim[:, v - c0 :] = float("-inf")  # padding columns
        row_ids = torch.arange(s, e, device=device)
        lower = torch.arange(c0, e, device=device)[None, :] <= row_ids[:, None]  # c ≤ r: mirrored / diagonal
        sim[:, : e - c0].masked_fill_(lower, float("-inf"))
        if special.numel():
            sim[:, special[special >= c0] - c0] = float("-inf")
            sim[special[(special >= s) & (special < e)] - s] = float("-inf")
        # row maxima first: at a high θ most rows of a block have no neighbour at all
        live = (sim.amax(-1) > cut).nonzero()[:, 0]
        if live.numel() == 0:
            continue
        if live.numel() < n:
            sim = sim[live]
        tiles = sim.view(live.numel(), -1, TILE)
        hit_r, hit_t = (tiles.amax(-1) > cut).nonzero(as_tuple=True)
        block = tiles[hit_r, hit_t]  # [m, TILE]
        pair, off = (block > cut).nonzero(as_tuple=True)
        rows = live[hit_r[pair]] + s
        cols = c0 + hit_t[pair] * TILE + off
        if dtype == torch.float32:
            cos = block[pair, off]
        else:  # re-score the screened candidates exactly, then apply the real threshold
            cos = _rowdot(emb, inv_norm, rows, cols)
            keep = cos > theta
            rows, cols, cos = rows[keep], cols[keep], cos[keep]
        rows_out.append(rows)
        cols_out.append(cols)
        cos_out.append(cos.float())
    if not rows_out:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, torch.zeros(0, device=device)
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(cos_out)


def _csr(major: torch.Tensor, minor: torch.Tensor, values: torch.Tensor, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indptr, indices, values) of the V×V matrix with entries (major, minor), minor ascending."""
    order = torch.argsort(major * v + minor)
    indptr = torch.zeros(v + 1, dtype=torch.long, device=major.device)
    indptr[1:] = torch.bincount(major, minlength=v).cumsum(0)
    return indptr, minor[order].to(torch.int32), values[order]


def build_groups(
    emb: torch.Tensor,
    theta: float,
    special: list[int] | tuple[int, ...] = (),
    weighting: Literal["uniform", "cosine"] = "uniform",
    chunk: int | None = None,
    source: str = "input",
    screen: Literal["auto", "float32", "bfloat16"] = "auto",
) -> Groups:
    """Acoustic Similarity Groups of the rows of ``emb [V, d]``.

    G_k = {t : cos(E_k, E_t) > θ} ∪ {k} for non-special k; special tokens get {k} and join no other
    group. Weights: w_{k,t} = 1/|S(t)| (``uniform``) or cos(E_k, E_t)/Σ_{k'∈S(t)} cos(E_k', E_t)
    (``cosine``, needs θ ≥ 0 so that every weight is positive); columns of W sum to 1.

    ``chunk`` rows are scored against all rows at a time (default: chunk × V ≈ 16 M scores), so
    memory stays O(chunk·V + nnz) — a 65,536 × 1024 table never materialises a V×V matrix.
    ``screen``: dtype of the block matmul. ``bfloat16`` (the ``auto`` choice on hardware with fast bf16)
    screens at θ − 2^-5 and re-scores the candidates in fp32, so the groups are the fp32 groups.
    """
    if not math.isfinite(theta):
        raise ConfigError(f"theta must be a finite number, got {theta}")
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"unknown weighting '{weighting}': use one of {', '.join(WEIGHTINGS)}")
    if weighting == "cosine" and theta < 0:
        raise ConfigError(f"cosine weighting needs theta >= 0 (weights ∝ cos must be positive), got theta={theta}: raise theta or use --weighting uniform")
    if source not in SOURCES:
        raise ConfigError(f"unknown group source '{source}': use one of {', '.join(SOURCES)}")
    if screen not in SCREENS:
        raise ConfigError(f"unknown screen '{screen}': use one of {', '.join(SCREENS)}")
    if emb.dim() != 2 or emb.shape[0] == 0:
        raise ConfigError(f"the embedding table must be a non-empty [V, d] matrix, got shape {tuple(emb.shape)}")
    started = time.perf_counter()
    v = emb.shape[0]
    special_list = sorted({int(s) for s in special})
    if any(not 0 <= s < v for s in special_list):
        raise ConfigError(f"special token ids {special_list} must lie in [0, {v})")
    if chunk is None:
        chunk = max(1, min(v, BLOCK_ELEMENTS // v))
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    device = emb.device
    with torch.no_grad():
        special_t = torch.tensor(special_list, dtype=torch.long, device=device)
        r, c, cos = _upper_pairs(emb.detach(), theta, special_t, chunk, _screen_dtype(screen, device))
        diag = torch.arange(v, device=device)
        # symmetric pattern: each pair is a member both ways; the diagonal (k ∈ G_k) has cos = 1
        rows = torch.cat([r, c, diag])
        cols = torch.cat([c, r, diag])
        cosv = torch.cat([cos, cos, torch.ones(v, device=device)])
        if weighting == "uniform":
            n_labels = torch.bincount(cols, minlength=v).float()  # |S(t)|
            w = 1.0 / n_labels[cols]
        else:
            col_sum = torch.zeros(v, device=device).index_add_(0, cols, cosv)  # Σ_{k∈S(t)} cos(E_k, E_t)
            w = cosv / col_sum[cols]
        indptr, indices, weights = _csr(rows, cols, w, v)
        t_indptr, t_indices, t_weights = _csr(cols, rows, w, v)
        # the membership pattern is symmetric (S(t) = G_t as sets), so the by-token index arrays equal
        # the by-group ones: share them and store only the second weight array (12 instead of 16 B/nnz)
        if torch.equal(t_indptr, indptr) and torch.equal(t_indices, indices):
            t_indptr, t_indices = indptr, indices
    return Groups(
        indptr=indptr.cpu(),
        indices=indices.cpu(),
        weights=weights.float().cpu(),
        t_indptr=t_indptr.cpu(),
        t_indices=t_indices.cpu(),
        t_weights=t_weights.float().cpu(),
        theta=float(theta),
        source=source,
        weighting=weighting,
        special=special_list,
        build_seconds=time.perf_counter() - started,
    )


def model_table(model: TargetModel, source: Literal["input", "output"] = "input") -> torch.Tensor:
    """The ``[speech_vocab + 1, d]`` table whose row t describes output token t (speech tokens, EOS).

    ``input``: the target's input-embedding rows of the speech tokens (``speech_embeddings()``);
    ``output``: the rows of its LM head restricted to speech space (one per output class). Any target
    backend works (65,536-row tables of an HF model included); rows are read in fp32.
    """
    if source == "input":
        return model.speech_embeddings().detach().float()
    if source == "output":
        return model.output_head()[0].detach().float()
    raise ConfigError(f"unknown group source '{source}': use input or output")


def groups_from_model(
    model: TargetModel,
    theta: float,
    source: Literal["input", "output"] = "input",
    weighting: Literal["uniform", "cosine"] = "uniform",
    chunk: int | None = None,
) -> Groups:
    """Groups over a codec LM's output space (speech tokens 0..speech_vocab-1 and EOS, which is special)."""
    return build_groups(model_table(model, source), theta, special=[model.eos], weighting=weighting, chunk=chunk, source=source)
