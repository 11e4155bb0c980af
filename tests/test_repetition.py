"""Repetition-aware sampling (RAS, methods.md §7): the p' formula, exactness of every lossless decoder
with RAS on, bit-identity with RAS off, greedy RAS, and config errors. Statistical, fixed seeds."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.stats import chisquare
from test_cli import fails
from test_compile import PROMPT, TEXT, _models
from test_compile import _heads as _heads_for

from specbench.config import load_recipe
from specbench.decoding import generate as generate_module
from specbench.decoding.acceptance import exact, greedy
from specbench.decoding.generate import generate
from specbench.decoding.proposers import DraftChainProposer, HeadsProposer
from specbench.decoding.sampling import Repetition, Sampling, next_token, repetition_mask, tree_histories, warp
from specbench.decoding.tree import chain_shape, dense_shape, load_tree
from specbench.decoding.tree_rules import greedy_tree, recursive_rejection, sample_tau
from specbench.models.heads import DraftHeads, HeadsConfig
from specbench.targets.base import Context
from specbench.targets.builtin import as_target, context_from_ids


# ---- (1) the p' formula against the two-stage draw ------------------------------------------------
def _two_stage(logits: torch.Tensor, s: Sampling, over: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """VALL-E 2's procedure literally: x ~ warped p; if x is over, redraw from softmax(logits)."""
    x = torch.multinomial(warp(logits, Sampling(s.temperature, s.top_k, s.top_p)), n, replacement=True, generator=gen)
    redraw = torch.multinomial(torch.softmax(logits, -1), n, replacement=True, generator=gen)
    return torch.where(over[x], redraw, x)


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.7, top_k=4), dict(temperature=1.3, top_p=0.8)])
def test_effective_distribution_matches_the_two_stage_draw(settings: dict) -> None:
    v, n = 7, 60000
    gen = torch.Generator().manual_seed(0)
    s = Sampling(**settings, repetition=Repetition(4, 0.5))
    for trial in range(3):
        logits = 1.5 * torch.randn(v, generator=gen)
        over = torch.zeros(v, dtype=torch.bool)
        over[torch.randperm(v, generator=gen)[: trial + 1]] = True
        over[logits.argmax()] = True  # the likely token is the repeated one (what RAS is for)
        p = warp(logits, s, over)
        assert torch.isclose(p.sum(), torch.tensor(1.0))
        counts = torch.bincount(_two_stage(logits, s, over, n, gen), minlength=v).double()
        keep = p > 0
        assert counts[~keep].sum() == 0
        expected = p.double()[keep] * n
        assert chisquare(counts[keep].numpy(), (expected * counts[keep].sum() / expected.sum()).numpy()).pvalue > 1e-3
        # and the closed form p'(x) = w(x)·1[x ∉ O] + w(O)·f(x)
        w, f = warp(logits, Sampling(s.temperature, s.top_k, s.top_p)), torch.softmax(logits, -1)
        torch.testing.assert_close(p, torch.where(over, 0.0, w) + w[over].sum() * f)


def test_greedy_ras_takes_the_best_token_not_over() -> None:
    logits = torch.tensor([[0.1, 3.0, 2.0, 1.0], [0.1, 3.0, 2.0, 1.0], [5.0, 1.0, 0.0, 0.0]])
    over = torch.tensor([[False, True, False, False], [False, True, True, False], [False, True, False, False]])
    s = Sampling(repetition=Repetition(2, 1.0))
    p = warp(logits, s, over)
    assert p.argmax(-1).tolist() == [2, 3, 0] and torch.equal(p.max(-1).values, torch.ones(3))  # one-hot
    assert warp(logits[:1], s, torch.ones(1, 4, dtype=torch.bool)).argmax().item() == 1  # all over: plain argmax


def test_rows_without_repeats_are_unchanged_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 9, generator=gen)
    for s in (Sampling(temperature=0.9, top_k=5), Sampling()):
        over = torch.zeros(5, 9, dtype=torch.bool)
        over[2, 3] = True
        got, plain = warp(logits, s, over), warp(logits, s)
        assert torch.equal(got[[0, 1, 3, 4]], plain[[0, 1, 3, 4]]) and torch.equal(warp(logits, s, None), plain)


def test_repetition_mask_counts_the_window_and_threshold() -> None:
    s = Sampling(repetition=Repetition(10, 0.3))
    assert s.repetition.threshold == 3  # 10 × 0.3 = 3.0000000000000004 in floats: still 3
    assert Repetition(10, 0.1).threshold == 1 and Repetition(3, 0.01).threshold == 1 and Repetition(4, 1.0).threshold == 4
    hist = [5] * 3 + [1, 2, 2, 2, 7, 1, 1, 0, 2, 3]  # last 10: 1 2 2 2 7 1 1 0 2 3 → 1 ×3, 2 ×4
    m = repetition_mask([hist, hist[:3], []], s, 8)
    assert m is not None and m[0].nonzero()[:, 0].tolist() == [1, 2] and m[1].nonzero()[:, 0].tolist() == [5] and not m[2].any()
    assert repetition_mask([hist[-4:]], s, 8) is None  # nothing over anywhere: the "no change" fast path
    assert repetition_mask([hist], Sampling(), 8) is None  # RAS off
    for bad in ((0, 0.1), (-1, 0.5), (4, 0.0), (4, 1.5)):
        with pytest.raises(ValueError):
            Repetition(*bad)


def test_tree_histories_follow_each_nodes_path() -> None:
    shape = dense_shape(2, 2)  # root; 1, 2; 3, 4 under 1; 5, 6 under 2
    tokens = [9, 1, 2, 3, 4, 5, 6]
    h = tree_histories([7, 8, 9], tokens, shape.parents, Sampling(temperature=1.0, repetition=Repetition(3, 0.5)))
    assert h == [[7, 8, 9], [8, 9, 1], [8, 9, 2], [9, 1, 3], [9, 1, 4], [9, 2, 5], [9, 2, 6]]


# ---- (2) exactness: speculative with RAS == baseline with RAS, in distribution ---------------------
V = 3  # speech tokens; EOS = 3 is never emitted
EOS_LOGIT = -1e4


class _Cache:
    def __init__(self) -> None:
        self.tokens: list[int] = []

    @property
    def length(self) -> int:
        return len(self.tokens)

    def crop(self, n: int) -> None:
        del self.tokens[n:]

    def keep(self, indices: list[int]) -> None:
        self.tokens = [self.tokens[i] for i in indices]


class _Markov:
    """A first-order Markov "codec LM" over 3 speech tokens: the logits after a node depend only on
    that node's token, so chains and trees are scored exactly; the hidden state is the token one-hot."""

    speech_vocab, hidden_size, id, compile = V, V + 1, "markov", False
    device = torch.device("cpu")

    def __init__(self, stay: float, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        probs = torch.rand(V + 1, V, generator=g) + 0.2
        probs[:V] += torch.eye(V) * stay * probs[:V].sum(-1, keepdim=True)  # sticky: repeats are likely
        self.table = torch.cat([torch.log(probs / probs.sum(-1, keepdim=True)), torch.full((V + 1, 1), EOS_LOGIT)], -1)

    @property
    def eos(self) -> int:
        return V

    def prefill(self, ctx: Context, capacity: int = 0) -> tuple[torch.Tensor, torch.Tensor, _Cache]:
        return self.table[V], torch.eye(V + 1)[V], _Cache()  # row V: the first token's distribution

    def draft_context(self, ctx: Context, cache: _Cache) -> Context:
        return ctx

    def step(self, tokens: torch.Tensor, cache: _Cache, *, depths=None, tree_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        cache.tokens.extend(tokens.tolist())
        return self.table[tokens], torch.eye(V + 1)[tokens]


def _heads() -> DraftHeads:
    torch.manual_seed(3)
    heads = DraftHeads(HeadsConfig(d_model=V + 1, vocab=V + 1, n_heads=2, n_layers=0))
    with torch.no_grad():
        for head in heads.heads:
            head.proj.weight.normal_(0, 1.5)
            head.proj.bias.zero_()
            head.proj.bias[V] = EOS_LOGIT
    return heads.eval()


T_TOKENS = 4  # sequences of 4 tokens over 3 symbols: an 81-cell joint histogram
RAS = Sampling(temperature=0.8, top_k=2, repetition=Repetition(4, 0.5))  # over: ≥ 2 of the last 4


def _exact_law(target: _Markov, s: Sampling) -> dict[tuple[int, ...], float]:
    """P(x_1..x_T) = Π_t p'(x_t | x_<t) of the RAS baseline, by enumeration."""
    law = {}
    for seq in itertools.product(range(V), repeat=T_TOKENS):
        prob = 1.0
        for t in range(T_TOKENS):
            row = target.table[seq[t - 1] if t else V]
            over = repetition_mask([list(seq[:t])], s, V + 1)
            prob *= float(warp(row, s, None if over is None else over[0])[seq[t]])
        law[seq] = prob
    return law


DECODERS = {
    "baseline": lambda t, d, h: (None, None),
    "draft-chain-exact": lambda t, d, h: (DraftChainProposer(d, 3), exact),
    "heads-tree-sampled-exact": lambda t, d, h: (HeadsProposer(h, t, dense_shape(2, 2), "sample"), recursive_rejection),
    "heads-chain-topk-exact": lambda t, d, h: (HeadsProposer(h, t, chain_shape(2), "topk"), sample_tau(1)),
}


def _histogram(decoder: str, n: int, seed: int) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    target, draft, heads = _Markov(stay=1.5, seed=0), _Markov(stay=0.5, seed=1), _heads()
    cells = list(itertools.product(range(V), repeat=T_TOKENS))
    index = {c: i for i, c in enumerate(cells)}
    counts = torch.zeros(len(cells))
    gen = torch.Generator().manual_seed(seed)
    ctx = Context("", "", torch.zeros(0, dtype=torch.long))
    for _ in range(n):
        proposer, rule = DECODERS[decoder](target, draft, heads)
        toks, _ = generate(target, ctx, RAS, T_TOKENS, gen, proposer, rule)
        counts[index[tuple(toks.tolist())]] += 1
    return counts, cells


def _pvalue(counts: torch.Tensor, cells: list[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> float:
    expected = torch.tensor([law[c] for c in cells], dtype=torch.float64) * counts.sum()
    keep = expected > 5
    obs, ex = counts.double()[keep], expected[keep]
    return float(chisquare(obs.numpy(), (ex * obs.sum() / ex.sum()).numpy()).pvalue)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_exact_decoders_with_ras_follow_the_ras_baseline(decoder: str) -> None:
    """The 4-token sequences of every lossless decoder with RAS on follow the RAS baseline's law p'
    (enumerated), which puts real mass on tokens outside top-k (RAS redraws) — so RAS is active."""
    law = _exact_law(_Markov(stay=1.5, seed=0), RAS)
    plain = _exact_law(_Markov(stay=1.5, seed=0), Sampling(RAS.temperature, RAS.top_k))
    assert 0.5 * sum(abs(law[c] - plain[c]) for c in law) > 0.2  # RAS changes the law a lot here
    counts, cells = _histogram(decoder, 3000, seed=7)
    assert _pvalue(counts, cells, law) > 1e-3


def test_the_exactness_check_sees_a_history_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Power: verifying every candidate against the COMMITTED history only (ignoring the candidates
    before it on its path) is detected by the check above."""
    real = tree_histories

    def committed_only(history, tokens, parents, s):
        return [real(history, tokens[:1], parents, s)[0]] * len(tokens)

    monkeypatch.setattr(generate_module, "tree_histories", committed_only)
    law = _exact_law(_Markov(stay=1.5, seed=0), RAS)
    counts, cells = _histogram("draft-chain-exact", 3000, seed=7)
    assert _pvalue(counts, cells, law) < 1e-6


# ---- greedy RAS on a real (tiny) model --------------------------------------------------------------
# greedy RAS on a real (tiny) model: tests/test_compile.py's target, partly-agreeing draft and heads
def test_greedy_ras_is_lossless_for_the_greedy_rules_and_never_emits_an_over_token() -> None:
    target, draft = _models()
    t, ctx = as_target(target), lambda: context_from_ids(TEXT, PROMPT)
    s = Sampling(repetition=Repetition(6, 0.3))  # over: ≥ ⌈1.8⌉ = 2 of the last 6
    base, _ = generate(t, ctx(), s, 80, torch.Generator())
    plain, _ = generate(t, ctx(), Sampling(), 80, torch.Generator())
    assert base.tolist() != plain.tolist()  # RAS changed greedy decoding of this model
    out = base.tolist()
    for i, tok in enumerate(out):  # no emitted token is over the threshold in its own history
        assert out[max(0, i - 6) : i].count(tok) < 2
    heads = _heads_for(target)
    runs = {
        "draft-chain greedy": (DraftChainProposer(as_target(draft), 3), greedy),
        "draft-chain exact": (DraftChainProposer(as_target(draft), 3), exact),
        "heads-tree greedy": (HeadsProposer(heads, t, load_tree("dense-small"), "topk"), greedy_tree),
        "heads-tree sampled exact": (HeadsProposer(heads, t, load_tree("dense-small"), "sample"), recursive_rejection),
    }
    for name, (proposer, rule) in runs.items():
        toks, st = generate(t, ctx(), s, 80, torch.Generator(), proposer, rule)
        assert toks.tolist() == out, name
        assert st.accepted > 0, name


def test_next_token_uses_the_history() -> None:
    logits = torch.tensor([0.0, 4.0, 1.0])
    s = Sampling(repetition=Repetition(2, 1.0))
    assert next_token(logits, s, torch.Generator(), [1]) == 1 and next_token(logits, s, torch.Generator(), [1, 1]) == 2


# ---- (3) RAS off: bit-identical to before RAS existed ------------------------------------------------
# Tokens recorded at commit 943eef4 (before RAS): 30 tokens, tiny models above, max_tokens 30.
GOLDEN = {
    "base_greedy": [0, 11, 9, 0, 20, 0, 20, 13, 14, 23, 6, 9, 10, 4, 5, 6, 14, 10, 14, 20, 21, 20, 13, 11, 5, 6, 14, 18, 6, 0],
    "base_sampled": [4, 18, 8, 0, 23, 6, 9, 14, 6, 5, 3, 7, 0, 7, 20, 11, 18, 9, 7, 10, 6, 19, 4, 4, 18, 9, 0, 23, 22, 7],
    "sd_sampled": [4, 18, 20, 13, 9, 14, 4, 4, 12, 21, 6, 21, 8, 21, 11, 13, 5, 3, 9, 9, 9, 19, 9, 14, 9, 16, 12, 9, 19, 4],
}


@pytest.mark.parametrize("repetition", [None, Repetition(64, 1.0)])
def test_ras_off_or_never_triggered_is_bit_identical_to_before(repetition: Repetition | None) -> None:
    """``repetition_window: 0`` (None) reproduces the pre-RAS tokens exactly; so does RAS whose threshold
    (64 repeats) 30 tokens cannot reach: rows without over tokens are untouched and no randomness is
    consumed by RAS."""
    target, draft = _models()
    t, ctx = as_target(target), lambda: context_from_ids(TEXT, PROMPT)
    s = Sampling(temperature=1.0, top_k=10, repetition=repetition)
    got = {
        "base_greedy": generate(t, ctx(), Sampling(repetition=repetition), 30, torch.Generator().manual_seed(0))[0].tolist(),
        "base_sampled": generate(t, ctx(), s, 30, torch.Generator().manual_seed(9))[0].tolist(),
        "sd_sampled": generate(t, ctx(), s, 30, torch.Generator().manual_seed(9), DraftChainProposer(as_target(draft), 3), exact)[0].tolist(),
    }
    assert got == GOLDEN


# ---- (4) config ---------------------------------------------------------------------------------------
def test_config_default_is_off_and_builds_the_transform() -> None:
    assert Sampling.from_config(load_recipe("recipes/quickstart.yaml").sampling) == Sampling()
    s = Sampling.from_config(load_recipe("recipes/quickstart.yaml", ["sampling.repetition_window=10", "sampling.temperature=0.8"]).sampling)
    assert s.repetition == Repetition(10, 0.1) and s.repetition.threshold == math.ceil(10 * 0.1)


@pytest.mark.parametrize(
    "override",
    ["sampling.repetition_ratio=0", "sampling.repetition_ratio=1.5", "sampling.repetition_ratio=-0.1", "sampling.repetition_window=-1"],
)
def test_bad_repetition_settings_are_one_line_errors(override: str) -> None:
    err = fails("run", "recipes/quickstart.yaml", "--set", override)
    assert override.split("=")[0] in err


def test_tree_calibration_judges_candidates_against_p_prime() -> None:
    """``head_acceptance`` with RAS: P_j is p' given the generated x_1..x_j (here greedy, so the
    generated tokens are exactly argmax P_j: the rank-0 candidate of a perfect depth-0 head)."""
    from specbench.decoding.calibrate import head_acceptance

    target, _ = _models()
    heads = _heads_for(target)
    ctx = [context_from_ids(TEXT, PROMPT)]
    s = Sampling(repetition=Repetition(6, 0.3))
    acc, n = head_acceptance(as_target(target), heads, ctx, s, "greedy", max_rank=4, max_tokens=60)
    plain, _ = head_acceptance(as_target(target), heads, ctx, Sampling(), "greedy", max_rank=4, max_tokens=60)
    assert n > 0 and acc.shape == (3, 4) and bool(((acc >= 0) & (acc <= 1)).all())
    assert not torch.equal(acc, plain)
