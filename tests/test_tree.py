"""Tree decoding (VADUSA): buffers, tree attention, commit, tree rules' invariants, heads proposer."""

from __future__ import annotations

import random

import pytest
import torch
from scipy.stats import chisquare

from specbench.decoding.calibrate import grow_tree
from specbench.decoding.generate import generate
from specbench.decoding.proposers import HeadsProposer
from specbench.decoding.sampling import Sampling
from specbench.decoding.tree import Proposal, TreeShape, chain_shape, dense_shape, load_tree
from specbench.decoding.tree_rules import TreeVerdict, best_path, expected_acceptance, greedy_tree, recursive_rejection, sample_tau, top_tau, typical
from specbench.errors import ConfigError
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.models.heads import DraftHeads
from specbench.targets.builtin import as_target, context_from_ids

CFG = dict(speech_vocab=24, d_model=32, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=512)
TEXT = torch.arange(2, 14)
PROMPT = torch.arange(0, 10) % 24


def _target() -> CodecLM:
    torch.manual_seed(0)
    t = CodecLM(ModelConfig(n_layers=2, **CFG)).eval()
    with torch.no_grad():
        t.head.bias[t.cfg.eos] = -1e4  # long generations exercise many commits
    return t


def _heads(target: CodecLM, autoregressive: bool = False, noise: float = 0.3) -> DraftHeads:
    """Heads that partly agree with the target: the LM-head copy plus noise (so some nodes fail)."""
    torch.manual_seed(5)
    heads = DraftHeads.from_target(as_target(target), n_heads=3, n_layers=1, autoregressive=autoregressive)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(noise * torch.randn_like(p))
    return heads.eval()


def _random_shape(rng: random.Random, n: int, width: int = 3, depth: int = 4) -> TreeShape:
    paths: set[tuple[int, ...]] = set()
    while len(paths) < n:
        parent = rng.choice([()] + [p for p in paths if len(p) < depth])
        paths.add(parent + (rng.randrange(width),))
    return TreeShape(tuple(paths))


def test_mask_and_positions_follow_the_ancestor_relation() -> None:
    rng = random.Random(0)
    for _ in range(20):
        shape = _random_shape(rng, rng.randint(1, 25))
        m = shape.mask()
        nodes = shape.nodes
        for i, a in enumerate(nodes):
            assert shape.depth[i] == len(a) and shape.position_offsets()[i] == len(a)
            if i:
                assert nodes[shape.parents[i]] == a[:-1] and shape.parents[i] < i
            for j, b in enumerate(nodes):
                assert bool(m[i, j]) == (a[: len(b)] == b), (a, b)  # j visible iff b is a prefix of a


def test_shape_validation_and_loading() -> None:
    with pytest.raises(ConfigError, match="no parent"):
        TreeShape(((0, 1),))
    with pytest.raises(ConfigError, match="not found"):
        load_tree("builtin:no-such-tree")
    assert load_tree("dense-small").size == 14 and dense_shape(2, 3).max_depth == 3
    assert load_tree("chain-4").is_chain and chain_shape(4).size == 4


def test_tree_mask_on_a_chain_equals_causal_forward() -> None:
    """A one-path tree run through the tree-mask code path gives the chain's logits."""
    target = _target()
    shape = chain_shape(4)
    toks = torch.tensor([3, 7, 1, 9, 4])
    with torch.no_grad():
        _, _, c1 = target.prefill(TEXT, PROMPT)
        _, _, c2 = target.prefill(TEXT, PROMPT)
        a, _ = target(toks, c1)
        b, _ = target(toks, c2, positions=c2.speech_len + shape.position_offsets(), tree_mask=shape.mask())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_tree_commit_equals_rerun_of_accepted_path() -> None:
    """Scoring a tree, then keeping root + one path, leaves the cache and logits of a plain run."""
    target = _target()
    shape = dense_shape(3, 3)
    rng = random.Random(1)
    for _ in range(5):
        tokens = torch.tensor([rng.randrange(24) for _ in shape.nodes])
        leaf = rng.randrange(1, len(shape.nodes))
        path = shape.ancestors(leaf)[1:]
        with torch.no_grad():
            _, _, cache = target.prefill(TEXT, PROMPT)
            base = cache.length
            logits, _ = target(tokens, cache, positions=cache.speech_len + shape.position_offsets(), tree_mask=shape.mask())
            cache.keep(list(range(base + 1)) + [base + i for i in path])
            _, _, ref = target.prefill(TEXT, PROMPT)
            ref_logits, _ = target(tokens[[0, *path]], ref)
        assert cache.length == ref.length
        torch.testing.assert_close(cache.k[:, :, : ref.length], ref.k[:, :, : ref.length], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(cache.v[:, :, : ref.length], ref.v[:, :, : ref.length], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(logits[[0, *path]], ref_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("autoregressive", [False, True])
@pytest.mark.parametrize("tree", ["dense-small", "chain-3"])
def test_greedy_tree_decoding_equals_greedy_baseline(autoregressive: bool, tree: str) -> None:
    target = _target()
    heads = _heads(target, autoregressive)
    base, _ = generate(as_target(target), context_from_ids(TEXT, PROMPT), Sampling(), 90, torch.Generator())
    prop = HeadsProposer(heads, as_target(target), load_tree(tree))
    toks, st = generate(as_target(target), context_from_ids(TEXT, PROMPT), Sampling(), 90, torch.Generator(), prop, greedy_tree)
    assert torch.equal(toks, base)
    assert st.target_calls < base.numel() - 1  # some drafts were accepted ...
    assert st.accepted < st.proposed  # ... and some rejected: both commit branches ran
    assert st.mean_accepted_len == toks.numel() / st.rounds


def test_heads_chain_equals_one_path_tree() -> None:
    """heads-chain (causal) and the same chain forced through the tree path emit the same tokens."""
    target = _target()
    heads = _heads(target)
    s = Sampling(temperature=1.0)
    a, sa = generate(
        as_target(target),
        context_from_ids(TEXT, PROMPT),
        s,
        60,
        torch.Generator().manual_seed(4),
        HeadsProposer(heads, as_target(target), chain_shape(3)),
        sample_tau(2),
    )
    prop = HeadsProposer(heads, as_target(target), chain_shape(3))
    prop.shape = chain_shape(3)
    prop.shape.__dict__["is_chain"] = False  # shadows the cached property: forces the tree-mask path
    b, sb = generate(as_target(target), context_from_ids(TEXT, PROMPT), s, 60, torch.Generator().manual_seed(4), prop, sample_tau(2))
    assert torch.equal(a, b) and sa.accepted == sb.accepted


def _fixed_proposal(shape: TreeShape, tokens: list[int]) -> Proposal:
    return Proposal(shape, torch.tensor(tokens), None, sampled=False)


def _random_p(n: int, v: int, gen: torch.Generator, sharp: float = 1.5) -> torch.Tensor:
    return torch.softmax(sharp * torch.randn(n, v, generator=gen), -1)


def test_sample_tau_1_is_target_distributed_over_two_steps() -> None:
    """Sample-and-match (exact for top-k trees): (first, second) emitted tokens ~ p0(t1)·p_{node(t1)}(t2)."""
    v = 6
    gen = torch.Generator().manual_seed(0)
    shape = TreeShape(((0,), (1,), (2,), (0, 0), (0, 1)))  # root children tokens 0,1,2; node 1 has children
    nodes = shape.nodes
    tokens = [9, 0, 1, 2, 3, 4]  # root, depth-1 tokens 0/1/2, depth-2 tokens 3/4 under token 0
    p = _random_p(len(nodes), v, gen)
    rule = sample_tau(1)
    counts = torch.zeros(v, v)
    trials = 30000
    prop = _fixed_proposal(shape, tokens)
    rg = torch.Generator().manual_seed(1)
    for _ in range(trials):
        verdict = rule(p, prop, rg)
        emitted = [tokens[i] for i in verdict.path] + [verdict.token]
        if len(emitted) < 2:
            continue  # first token was not a node: the round ends after one token (checked below)
        counts[emitted[0], emitted[1]] += 1
    # expected: for t1 in {0,1,2} (a node), t2 ~ p[node of t1]
    node_of = {0: 1, 1: 2, 2: 3}
    exp = torch.zeros(v, v)
    for t1, i in node_of.items():
        exp[t1] = p[0, t1] * p[i] * trials
    obs, ex = counts[:3].flatten(), exp[:3].flatten()
    keep = ex > 5
    assert chisquare(obs[keep], ex[keep] * obs[keep].sum() / ex[keep].sum()).pvalue > 1e-3


def test_sample_tau_first_token_marginal_and_tau_monotone() -> None:
    v = 8
    gen = torch.Generator().manual_seed(2)
    shape = dense_shape(3, 2)
    tokens = [0] + [1, 2, 3] + [1, 2, 3, 4, 5, 6, 7, 0, 1]
    p = _random_p(len(shape.nodes), v, gen)
    prop = _fixed_proposal(shape, tokens)
    rg = torch.Generator().manual_seed(3)
    first = torch.zeros(v)
    for _ in range(20000):
        vd = sample_tau(1)(p, prop, rg)
        first[tokens[vd.path[0]] if vd.path else vd.token] += 1
    assert chisquare(first, p[0] * first.sum()).pvalue > 1e-3
    mean_len = []
    for tau in (1, 2, 4):
        rg = torch.Generator().manual_seed(4)
        mean_len.append(sum(len(sample_tau(tau)(p, prop, rg).path) for _ in range(3000)) / 3000)
    assert mean_len[0] < mean_len[1] < mean_len[2]


def _sampled_tree_trials(rule, trials: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run ``rule`` on fresh sampled trees: 3 root children ~ q0, 2 children each ~ Q1[parent token].

    Returns the first emitted tokens' histogram, p0, and for rounds that accepted a depth-1 node the
    second emitted tokens' histogram with its expectation Σ P1[t1] (the target given that node).
    """
    v = 6
    gen = torch.Generator().manual_seed(seed)
    shape = dense_shape(3, 2)  # root → 3 children → 2 children each (sibling candidates are i.i.d.)
    depth1 = [i for i in range(1, len(shape.nodes)) if shape.depth[i] == 1]
    p0, q0 = _random_p(1, v, gen)[0], _random_p(1, v, gen)[0]
    big_p, big_q = _random_p(v, v, gen), _random_p(v, v, gen)  # rows: target / draft after token t
    first, second, expect2 = torch.zeros(v), torch.zeros(v), torch.zeros(v)
    d1 = torch.tensor(depth1)
    d2 = torch.tensor([i for i in range(1, len(shape.nodes)) if shape.depth[i] == 2])
    par2 = torch.tensor(shape.parents)[d2]
    for _ in range(trials):
        tokens = torch.zeros(len(shape.nodes), dtype=torch.long)
        q = torch.zeros(len(shape.nodes), v)
        tokens[d1] = torch.multinomial(q0, len(depth1), replacement=True, generator=gen)
        q[d1] = q0
        q[d2] = big_q[tokens[par2]]
        tokens[d2] = torch.multinomial(q[d2], 1, generator=gen)[:, 0]
        p = big_p[tokens]
        p[0] = p0
        vd = rule(p, Proposal(shape, tokens, q, sampled=True), gen)
        emitted = [int(tokens[i]) for i in vd.path] + [vd.token]
        first[emitted[0]] += 1
        if vd.path and vd.path[0] in depth1:
            second[emitted[1]] += 1
            expect2 += big_p[emitted[0]]
    return first, p0, second, expect2


def test_recursive_rejection_on_sampled_trees_is_target_distributed() -> None:
    """Exact verification of a SAMPLED tree: the first token ~ p0 whichever sibling (or residual)
    produced it, and after an accepted node the next token ~ p given that node."""
    first, p0, second, expect2 = _sampled_tree_trials(recursive_rejection, 12000, seed=11)
    assert chisquare(first, p0 * first.sum()).pvalue > 1e-3
    assert chisquare(second, expect2 * second.sum() / expect2.sum()).pvalue > 1e-3
    assert second.sum() > 3000  # the multi-sibling walk accepted often enough to test depth 2

    def no_residual_update(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
        """The classic bug: every sibling tested against p itself instead of the running residual."""
        kids = [i for i in range(1, len(proposal.shape.nodes)) if proposal.shape.parents[i] == 0]
        for c in kids:
            x = int(proposal.tokens[c])
            if float(torch.rand((), generator=generator)) < min(1.0, float(p[0, x] / proposal.q[c, x])):
                return TreeVerdict([c], 0)
        return TreeVerdict([], int(torch.multinomial(p[0], 1, generator=generator)[0]))

    bad, p0, _, _ = _sampled_tree_trials(no_residual_update, 12000, seed=11)
    assert chisquare(bad, p0 * bad.sum()).pvalue < 1e-6  # the test above has the power to see it


def test_recursive_rejection_needs_sampled_candidates() -> None:
    shape = dense_shape(2, 1)
    with pytest.raises(ValueError, match="sampled proposal"):
        recursive_rejection(torch.full((3, 4), 0.25), _fixed_proposal(shape, [0, 1, 2]), torch.Generator())


@pytest.mark.parametrize("autoregressive", [False, True])
def test_sampled_heads_tree_proposals_and_greedy_equivalence(autoregressive: bool) -> None:
    """Sampled heads trees: siblings share one q (given the parent) and carry tokens q gives mass to;
    under greedy sampling recursive rejection reproduces the greedy baseline."""
    target = _target()
    heads = _heads(target, autoregressive)
    shape = load_tree("dense-small")
    prop = HeadsProposer(heads, as_target(target), shape, candidates="sample")
    hidden = torch.randn(target.cfg.d_model)
    pr = prop.propose(3, hidden, Sampling(temperature=1.0), torch.Generator().manual_seed(0))
    assert pr.sampled and pr.q is not None
    for i in range(1, len(shape.nodes)):
        assert pr.q[i, pr.tokens[i]] > 0
        for j in range(i + 1, len(shape.nodes)):
            if shape.parents[i] == shape.parents[j]:
                torch.testing.assert_close(pr.q[i], pr.q[j])
    base, _ = generate(as_target(target), context_from_ids(TEXT, PROMPT), Sampling(), 90, torch.Generator())
    toks, st = generate(
        as_target(target),
        context_from_ids(TEXT, PROMPT),
        Sampling(),
        90,
        torch.Generator(),
        HeadsProposer(heads, as_target(target), shape, "sample"),
        recursive_rejection,
    )
    assert torch.equal(toks, base) and st.accepted > 0


def test_top_tau_1_and_typical_under_greedy_equal_greedy() -> None:
    gen = torch.Generator().manual_seed(5)
    rng = random.Random(5)
    for _ in range(200):
        shape = _random_shape(rng, rng.randint(1, 12), width=3, depth=3)
        logits = torch.randn(len(shape.nodes), 5, generator=gen)
        p = torch.nn.functional.one_hot(logits.argmax(-1), 5).float()  # what warp gives under greedy
        prop = _fixed_proposal(shape, [rng.randrange(5) for _ in shape.nodes])
        g = greedy_tree(p, prop, gen)
        assert top_tau(1)(p, prop, gen) == g
        assert typical()(p, prop, gen) == g
        assert sample_tau(3)(p, prop, gen) == g  # one-hot p: every sample is the argmax


def test_best_path_prefers_longest_then_most_probable() -> None:
    shape = TreeShape(((0,), (1,), (0, 0), (1, 0)))
    prop = _fixed_proposal(shape, [0, 1, 2, 3, 4])
    p = torch.full((5, 5), 0.2)
    p[0, 1], p[0, 2] = 0.1, 0.5  # node 2 (token 2) more probable than node 1 (token 1)
    assert best_path([False, True, True, True, True], prop, p) == [2, 4]  # both depth 2: higher Σ log p
    assert best_path([False, True, True, True, False], prop, p) == [1, 3]  # only the left branch is deep
    assert best_path([False, True, False, False, True], prop, p) == [1]  # node 4's parent failed


def test_expected_acceptance_and_tree_growth() -> None:
    p = torch.tensor([[0.6, 0.3, 0.1]])
    cand = torch.tensor([[1]])
    assert torch.allclose(expected_acceptance("tolerance", p[:, None], cand, tau=2), torch.tensor([[1 - 0.7**2]]))
    assert expected_acceptance("greedy", p[:, None], torch.tensor([[0]])).item() == 1.0
    assert expected_acceptance("exact", p[:, None], cand).item() == pytest.approx(0.3)
    acc = torch.tensor([[0.8, 0.1], [0.5, 0.4], [0.5, 0.2]])
    paths, expected = grow_tree(acc, 4)
    assert paths[:3] == [(0,), (0, 0), (0, 1)]  # 0.8 > 0.4 > 0.32 > 0.2 (=(0,0,0))
    assert paths[3] == (0, 0, 0)
    assert expected == pytest.approx(1 + 0.8 + 0.4 + 0.32 + 0.2)
    shape = TreeShape(tuple(paths))
    assert shape.size == 4
