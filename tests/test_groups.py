"""PCG groups and the group acceptance rule (methods.md §4, §6): exact structure checks and
statistical checks with fixed seeds.

The label guarantee is tested through the rule's ``labels`` output, which reports the label k (or k')
the rule actually used for each emitted token: that label, not the token, is what PCG makes exact.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from typer.testing import CliRunner

from specbench.decoding.acceptance import _group_residual, exact, group_rule, make_group
from specbench.decoding.groups import Groups, build_groups, groups_from_model, model_table
from specbench.decoding.tree import Proposal, dense_shape
from specbench.decoding.tree_rules import group_tree, group_tree_verdict, recursive_rejection
from specbench.errors import ConfigError, ModelError
from specbench.targets.builtin import as_target

V = 10
N = 6000


def _table(seed: int, v: int = V, d: int = 3) -> torch.Tensor:
    """A small random table; d = 3 makes groups large and overlapping at moderate θ."""
    return torch.randn(v, d, generator=torch.Generator().manual_seed(seed))


def _dists(seed: int, rows: int, v: int = V, scale: float = 1.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(rows, v, generator=g) * scale, -1)


def _dense_reference(emb: torch.Tensor, theta: float, special: list[int], weighting: str) -> torch.Tensor:
    """W[k, t] straight from the definition, with a dense V×V cosine matrix."""
    en = F.normalize(emb.float(), dim=1)
    cos = en @ en.T
    member = cos > theta
    member[special, :] = False
    member[:, special] = False
    member.fill_diagonal_(True)
    cos.fill_diagonal_(1.0)
    raw = member.float() if weighting == "uniform" else member.float() * cos
    return raw / raw.sum(0, keepdim=True)


def _chi2_pvalue(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=probs.numel()).double()
    expected = probs.double() / probs.double().sum() * samples.numel()
    keep = expected > 1e-12
    assert counts[~keep].sum() == 0, "an outcome of zero probability occurred"
    expected = expected[keep] * counts[keep].sum() / expected[keep].sum()
    return float(chisquare(counts[keep].numpy(), expected.numpy()).pvalue)


# ---- (a) construction ---------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["uniform", "cosine"])
@pytest.mark.parametrize("theta", [-0.3, 0.0, 0.4, 0.8, 1.0])
def test_sparse_build_equals_dense_reference(theta: float, weighting: str) -> None:
    if weighting == "cosine" and theta < 0:
        with pytest.raises(ConfigError):
            build_groups(_table(0, 40), theta, weighting=weighting)
        return
    emb = _table(0, 40)
    emb[7] = 0.0  # a zero row: cosine 0 with everything, must not produce NaNs
    special = [3, 39]
    ref = _dense_reference(emb, theta, special, weighting)
    for chunk, screen in [(None, "float32"), (3, "float32"), (5, "bfloat16"), (64, "bfloat16")]:
        g = build_groups(emb, theta, special=special, weighting=weighting, chunk=chunk, screen=screen)
        w = g.to_dense()
        assert torch.equal(w > 0, ref > 0), f"membership differs (chunk={chunk}, screen={screen})"
        assert torch.allclose(w, ref, atol=1e-6)
        assert torch.allclose(w.sum(0), torch.ones(40), atol=1e-6)  # columns of W sum to 1
        for k in range(40):
            m = g.members(k)
            assert torch.equal(m, ref[k].nonzero()[:, 0]) and bool((m.diff() > 0).all())
            labels, lw = g.labels_of(k)
            assert torch.equal(labels, ref[:, k].nonzero()[:, 0])
            assert torch.allclose(lw, ref[labels, k])
        for s in special:
            assert g.members(s).tolist() == [s] and g.labels_of(s)[0].tolist() == [s]
        p = _dists(1, 2, 40)
        assert torch.allclose(g.coarse(p), p @ ref.T, atol=1e-6)
        assert abs(g.mass(p[0], 5) - float(ref[5] @ p[0])) < 1e-6


def test_theta_at_least_one_gives_singletons() -> None:
    g = build_groups(_table(2, 30), 1.0)
    assert g.nnz == 30 and g.sizes().tolist() == [1] * 30 and torch.equal(g.to_dense(), torch.eye(30))


# ---- (b) singleton groups are the token rule ----------------------------------------------------
@pytest.mark.parametrize("gamma", [1, 3, 5])
def test_singleton_groups_equal_exact_token_for_token(gamma: int) -> None:
    groups = build_groups(_table(3), 1.0)
    rule = make_group(groups, residual="exact")
    gen = torch.Generator().manual_seed(gamma)
    for s in range(150):
        p = _dists(10_000 + s, gamma + 1, scale=3.0)
        q = _dists(20_000 + s, gamma, scale=3.0)
        if s % 3 == 0:  # truncated supports (top-k style zeros) exercise the ratio guards
            p = p * (torch.rand(p.shape, generator=gen) > 0.4)
            p[:, 0] += 1e-3
            p = p / p.sum(-1, keepdim=True)
        if s % 10 == 1:  # greedy: one-hot p and q
            p = torch.eye(V)[p.argmax(-1)]
            q = torch.eye(V)[q.argmax(-1)]
        drafts = torch.multinomial(q, 1, generator=gen)[:, 0]
        want = exact(p, q, drafts, torch.Generator().manual_seed(s))
        got = rule(p, q, drafts, torch.Generator().manual_seed(s))
        assert got == want, f"case {s}: {got} != {want}"


# ---- (c) + (d) label process is P_c; acceptance rate is α_c --------------------------------------
@pytest.mark.parametrize(("theta", "weighting", "residual"), [(0.3, "uniform", "thinning"), (0.5, "cosine", "exact")])
def test_emitted_label_follows_coarse_target(theta: float, weighting: str, residual: str) -> None:
    groups = build_groups(_table(4), theta, special=[V - 1], weighting=weighting)
    assert groups.stats()["mean_size"] > 1.5  # real groups, not the singleton case
    p, q = _dists(5, 2), _dists(6, 1)
    pc, qc = groups.coarse(p[0]), groups.coarse(q[0])
    gen = torch.Generator().manual_seed(7)
    first = torch.empty(N, dtype=torch.long)
    accepted = 0
    for i in range(N):
        labels: list[int] = []
        v = group_rule(p, q, torch.multinomial(q[0], 1, generator=gen), gen, groups, residual=residual, labels=labels)
        accepted += v.accepted
        first[i] = labels[0]
    assert bool((first >= 0).all())
    assert _chi2_pvalue(first, pc) > 1e-3
    assert _chi2_pvalue(first, qc) < 1e-6  # power: the draft's label law is rejected
    alpha_c = float(torch.minimum(pc, qc).sum())
    assert abs(accepted / N - alpha_c) < 4 * (alpha_c * (1 - alpha_c) / N) ** 0.5 + 1e-3


def _sampled_tree(q_rows: torch.Tensor, gen: torch.Generator) -> Proposal:
    """dense_shape(3, 2): 3 root children ~ q_rows[0], 2 grandchildren each ~ q_rows[1] (i.i.d. siblings)."""
    shape = dense_shape(3, 2)
    tokens = torch.zeros(len(shape.nodes), dtype=torch.long)
    q = torch.zeros(len(shape.nodes), q_rows.shape[-1])
    for i in range(1, len(shape.nodes)):
        q[i] = q_rows[shape.depth[i] - 1]
        tokens[i] = torch.multinomial(q[i], 1, generator=gen)[0]
    return Proposal(shape, tokens, q, sampled=True)


def test_group_tree_with_singletons_is_recursive_rejection_token_for_token() -> None:
    """Heads tree × group at θ ≥ 1 is the lossless sampled-tree rule, verdict for verdict."""
    rule = group_tree(build_groups(_table(3), 1.0))
    gen = torch.Generator().manual_seed(0)
    for s in range(150):
        p = _dists(30_000 + s, len(dense_shape(3, 2).nodes), scale=3.0)
        q_rows = _dists(40_000 + s, 2, scale=3.0)
        if s % 3 == 0:  # truncated supports exercise the ratio and residual guards
            p = p * (torch.rand(p.shape, generator=gen) > 0.4)
            p[:, 0] += 1e-3
            p = p / p.sum(-1, keepdim=True)
        if s % 10 == 1:  # greedy: one-hot p and q
            p, q_rows = torch.eye(V)[p.argmax(-1)], torch.eye(V)[q_rows.argmax(-1)]
        prop = _sampled_tree(q_rows, gen)
        want = recursive_rejection(p, prop, torch.Generator().manual_seed(s))
        got = rule(p, prop, torch.Generator().manual_seed(s))
        assert got == want, f"case {s}: {got} != {want}"


def test_group_tree_emitted_label_follows_coarse_target() -> None:
    """Sampled tree × group: the label behind the first emitted token ~ P_c = W p0, whichever of
    the three sibling drafts (or the residual) produced it; the draft's Q_c is rejected (power)."""
    groups = build_groups(_table(4), 0.3, special=[V - 1])
    assert groups.stats()["mean_size"] > 1.5
    p, q_rows = _dists(5, len(dense_shape(3, 2).nodes)), _dists(6, 2)
    pc, qc = groups.coarse(p[0]), groups.coarse(q_rows[0])
    gen = torch.Generator().manual_seed(8)
    first = torch.empty(N, dtype=torch.long)
    for i in range(N):
        labels: list[int] = []
        vd = group_tree_verdict(p, _sampled_tree(q_rows, gen), gen, groups, labels)
        assert len(labels) == len(vd.path) + 1
        first[i] = labels[0]
    assert _chi2_pvalue(first, pc) > 1e-3
    assert _chi2_pvalue(first, qc) < 1e-6


def test_coarse_acceptance_dominates_token_acceptance() -> None:
    """α_c = 1 − TV(P_c, Q_c) ≥ α = 1 − TV(p, q): W is a Markov kernel (data processing)."""
    for s in range(60):
        groups = build_groups(_table(100 + s, d=4), [-0.2, 0.2, 0.5, 0.9][s % 4], weighting=["uniform", "cosine"][s % 2 if s % 4 else 0])
        p, q = _dists(200 + s, 1)[0], _dists(300 + s, 1)[0]
        alpha = float(torch.minimum(p, q).sum())
        alpha_c = float(torch.minimum(groups.coarse(p), groups.coarse(q)).sum())
        assert alpha_c >= alpha - 1e-6


# ---- (e) thinning and exact residuals draw the same law -----------------------------------------
def test_thinning_and_exact_residual_match_the_analytic_residual() -> None:
    groups = build_groups(_table(8), 0.4, weighting="uniform")
    p, q = _dists(9, 1)[0], _dists(10, 1)[0]
    pc, qc = groups.coarse(p), groups.coarse(q)
    r = (pc - qc).clamp(min=0)
    r = r / r.sum()
    w = groups.to_dense()
    # t' ~ Σ_k r(k) · p(t') w_{k,t'} / P_c(k)
    token_law = (r / pc.clamp(min=1e-30)) @ (w * p[None, :])
    assert abs(float(token_law.sum()) - 1) < 1e-5
    for mode, tries in [("thinning", 64), ("thinning", 1), ("exact", 0)]:
        gen = torch.Generator().manual_seed(11)
        draws = [_group_residual(p, q, groups, gen, mode, tries) for _ in range(4000)]
        tokens = torch.tensor([t for t, _ in draws])
        labels = torch.tensor([k for _, k in draws])
        assert _chi2_pvalue(labels, r) > 1e-3, mode
        assert _chi2_pvalue(tokens, token_law) > 1e-3, mode
        for t, k in draws[:200]:  # every correction lies in the group whose label was drawn
            assert t in groups.members(k).tolist()


# ---- (f) stats, files, model tables -------------------------------------------------------------
def test_stats_save_load_and_errors(tmp_path: Path) -> None:
    g = build_groups(_table(12, 50), 0.5, special=[49], weighting="cosine")
    st = g.stats()
    sizes = g.sizes().float()
    assert st["vocab"] == 50 and st["nnz"] == g.nnz == int(sizes.sum())
    assert st["mean_size"] == pytest.approx(float(sizes.mean())) and 1 <= st["median_size"] <= st["max_size"] == int(sizes.max())
    assert st["coverage"] == pytest.approx(float((sizes[:49] > 1).float().mean()))
    assert g.t_indices is g.indices  # symmetric pattern: the by-token index arrays are shared
    assert st["memory_bytes"] == 8 * 51 + 4 * g.nnz + 2 * 4 * g.nnz and st["build_seconds"] > 0
    path = tmp_path / "sub" / "g.pt"
    g.save(path)
    h = Groups.load(path)
    assert torch.equal(h.to_dense(), g.to_dense()) and h.stats() == st and h.special == [49]
    assert h.t_indices.untyped_storage().data_ptr() == h.indices.untyped_storage().data_ptr()  # sharing survives a round trip
    torch.save({"kind": "codec-lm"}, tmp_path / "model.pt")
    with pytest.raises(ModelError, match="'codec-lm' file, expected a 'groups' file"):
        Groups.load(tmp_path / "model.pt")
    with pytest.raises(ModelError, match="not found"):
        Groups.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="cannot read"):
        Groups.load(tmp_path / "junk.pt")
    with pytest.raises(ValueError):
        make_group(g, residual="nope")
    assert make_group(g, residual="exact").__name__ == "group_0.5_exact"


def _tiny_lm():
    from specbench.models.codec_lm import CodecLM, ModelConfig

    torch.manual_seed(0)
    return CodecLM(ModelConfig(speech_vocab=24, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_text_len=8, max_speech_len=8))


def test_groups_from_model_tables() -> None:
    lm = _tiny_lm()
    cfg = lm.cfg
    inp = model_table(as_target(lm), "input")
    assert torch.equal(inp[5], lm.tok_emb.weight[cfg.speech_offset + 5]) and torch.equal(inp[-1], lm.tok_emb.weight[-1])
    assert torch.equal(model_table(as_target(lm), "output"), lm.head.weight)
    for source in ("input", "output"):
        g = groups_from_model(as_target(lm), 0.1, source=source)
        assert g.vocab == cfg.speech_vocab + 1 and g.source == source
        assert g.members(cfg.eos).tolist() == [cfg.eos] and g.labels_of(cfg.eos)[0].tolist() == [cfg.eos]
        assert torch.allclose(g.to_dense(), _dense_reference(model_table(as_target(lm), source), 0.1, [cfg.eos], "uniform"), atol=1e-6)


# ---- (g) scale: no dense V×V --------------------------------------------------------------------
def test_large_vocab_builds_blockwise() -> None:
    """65,536 × 64: a dense score matrix would be 16 GB; the blocked build holds chunk × V scores."""
    emb = torch.randn(65_536, 64, generator=torch.Generator().manual_seed(0))
    g = build_groups(emb, 0.9, special=[65_535], source="random")
    assert g.nnz == 65_536 and int(g.sizes().max()) == 1 and g.stats()["coverage"] == 0.0


# ---- CLI ----------------------------------------------------------------------------------------
def test_cli_build_groups(tmp_path: Path) -> None:
    from specbench.cli import app
    from specbench.models.lm_io import export_model

    runner = CliRunner()
    env = {"COLUMNS": "200"}
    res = runner.invoke(app, ["build-groups", "--random-vocab", "300", "--dim", "8", "--theta", "0.5", "--out", str(tmp_path / "r.pt")], env=env)
    assert res.exit_code == 0, res.output
    assert "coverage" in res.output and "stored MB" in res.output and "peak RSS" in res.output
    assert Groups.load(tmp_path / "r.pt").source == "random"

    export_model(_tiny_lm(), tmp_path / "lm.pt", codec_id="test", meta={}, half=False)
    out = tmp_path / "m.pt"
    res = runner.invoke(
        app, ["build-groups", "--model", str(tmp_path / "lm.pt"), "--theta", "0.2", "--source", "output", "--weighting", "cosine", "--out", str(out)], env=env
    )
    assert res.exit_code == 0, res.output
    g = Groups.load(out)
    assert (g.vocab, g.source, g.weighting, g.theta) == (25, "output", "cosine", 0.2)

    for bad, needle in [
        (["--model", str(tmp_path / "nope.pt")], "not found"),
        (["--random-vocab", "10", "--source", "middle"], "--source"),
        (["--dim", "4"], "--random-vocab"),
        (["--random-vocab", "10", "--weighting", "cosine", "--theta", "-1"], "theta >= 0"),
    ]:
        res = runner.invoke(app, ["build-groups", *bad], env=env)
        assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
