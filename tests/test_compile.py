"""The static-shape decode path (``model.compile``): static KV cache, bucketing, compiled forward.

The static path runs eagerly in most tests (cheap); one test compiles it on a tiny model and two buckets.
"""

from __future__ import annotations

import pytest
import torch

from specbench.config import ModelRef
from specbench.decoding.acceptance import exact, greedy, make_beta, make_group
from specbench.decoding.generate import generate
from specbench.decoding.groups import groups_from_model
from specbench.decoding.proposers import DraftChainProposer, HeadsProposer
from specbench.decoding.sampling import Sampling
from specbench.decoding.tree import TreeShape, chain_shape
from specbench.decoding.tree_rules import greedy_tree, sample_tau
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.models.heads import DraftHeads
from specbench.models.static_lm import BUCKETS, StaticDecoder, StaticKVCache, attention_window, bucket, round_capacity, windows
from specbench.targets.builtin import BuiltinTarget, as_target, context_from_ids

CFG = dict(speech_vocab=24, d_model=32, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=512)
TEXT = torch.arange(2, 14)
PROMPT = torch.arange(0, 10) % 24
TREE = TreeShape(((0,), (1,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1)), name="t7")


def _models() -> tuple[CodecLM, CodecLM]:
    torch.manual_seed(0)
    target = CodecLM(ModelConfig(n_layers=2, **CFG)).eval()
    with torch.no_grad():
        target.head.bias[target.cfg.eos] = -1e4  # long generations exercise many commits
    torch.manual_seed(1)
    draft = CodecLM(ModelConfig(n_layers=1, **CFG)).eval()
    with torch.no_grad():  # a draft that partly agrees with the target
        draft.tok_emb.weight.copy_(target.tok_emb.weight)
        draft.pos_emb.weight.copy_(target.pos_emb.weight)
        draft.head.load_state_dict(target.head.state_dict())
        draft.ln_f.load_state_dict(target.ln_f.state_dict())
    return target, draft


def _heads(target: CodecLM) -> DraftHeads:
    torch.manual_seed(5)
    heads = DraftHeads.from_target(as_target(target), n_heads=3, n_layers=1)
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return heads.eval()


def _ctx():
    return context_from_ids(TEXT, PROMPT)


def test_bucket_and_capacity_rounding() -> None:
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 17, 33, 65, 128)] == [1, 2, 4, 4, 8, 32, 64, 128, 128]
    assert bucket(129) == 256 and bucket(300) == 384
    assert round_capacity(1) == 256 and round_capacity(257) == 512


def test_attention_windows_double_and_stop_at_the_capacity() -> None:
    assert [attention_window(n, 768) for n in (1, 256, 257, 512, 513, 768)] == [256, 256, 512, 512, 768, 768]
    assert windows(768) == [256, 512, 768] and windows(256) == [256] and windows(1024) == [256, 512, 1024]
    with pytest.raises(ValueError, match="do not fit"):
        attention_window(769, 768)


def test_config_flag_and_bad_path() -> None:
    assert ModelRef().compile is False and ModelRef(compile=True).compile is True
    with pytest.raises(ValueError, match="decode path"):
        BuiltinTarget(_models()[0], "m", path="fast")


@torch.inference_mode()
def test_padding_never_changes_real_rows() -> None:
    """Every n through its bucket (chain and tree mask) gives the dynamic path's logits and hidden states."""
    target, _ = _models()
    eager, static = as_target(target), as_target(target, path="static")
    for n in (1, 2, 3, 5, 7, 8, 13):
        toks = torch.arange(n) % 24
        _, _, ce = eager.prefill(_ctx(), capacity=40)
        _, _, cs = static.prefill(_ctx(), capacity=40)
        assert isinstance(cs, StaticKVCache) and cs.capacity % 256 == 0
        le, he = eager.step(toks, ce)
        ls, hs = static.step(toks, cs)
        assert ls.shape == le.shape and torch.allclose(ls, le, atol=1e-5) and torch.allclose(hs, he, atol=1e-5), n
        assert cs.length == ce.length
    mask, depths = TREE.mask(), TREE.position_offsets()
    toks = torch.arange(TREE.size + 1) % 24
    _, _, ce = eager.prefill(_ctx(), capacity=40)
    _, _, cs = static.prefill(_ctx(), capacity=40)
    le, _ = eager.step(toks, ce, depths=depths, tree_mask=mask)
    ls, _ = static.step(toks, cs, depths=depths, tree_mask=mask)
    assert torch.allclose(ls, le, atol=1e-5)


@torch.inference_mode()
def test_static_crop_and_keep_equal_a_full_forward() -> None:
    target, _ = _models()
    static = as_target(target, path="static")
    seq = torch.tensor([3, 7, 1, 9, 4, 11, 2])
    full_logits, _ = static.score(_ctx(), seq)
    # crop: feed 5, crop back to 2 more than the prompt, then feed the rest of seq
    _, _, cache = static.prefill(_ctx(), capacity=20)
    base = cache.length
    static.step(torch.tensor([3, 7, 20, 20, 20]), cache)
    cache.crop(base + 2)
    logits, _ = static.step(seq[2:], cache)
    assert torch.allclose(logits, full_logits[3:], atol=1e-4)
    # keep: a tree whose path (0,) (0,0) -> nodes 1, 3 carries seq[1], seq[2]
    _, _, cache = static.prefill(_ctx(), capacity=20)
    base = cache.length
    tree_tokens = torch.tensor([seq[0], seq[1], 20, seq[2], 20, 20, 20, 20])
    static.step(tree_tokens, cache, depths=TREE.position_offsets(), tree_mask=TREE.mask())
    cache.keep(list(range(base + 1)) + [base + 1, base + 3])
    assert cache.length == base + 3
    logits, _ = static.step(seq[3:], cache)
    assert torch.allclose(logits, full_logits[4:], atol=1e-4)
    # keep on a clone leaves the original alone
    c2 = cache.clone()
    c2.keep([0, 2])
    assert cache.length == base + 3 + seq[3:].numel() and c2.length == 2


def _decoders(target: CodecLM, draft: CodecLM, path: str):
    t, dr = as_target(target, path=path), as_target(draft, path=path)
    heads = _heads(target)
    groups = groups_from_model(t, 0.9)
    return t, {
        "baseline": (None, None),
        "chain-greedy": (DraftChainProposer(dr, 3), greedy),
        "chain-exact": (DraftChainProposer(dr, 4), exact),
        "chain-beta": (DraftChainProposer(dr, 3), make_beta(0.4)),
        "chain-group": (DraftChainProposer(dr, 3), make_group(groups)),
        "heads-tree": (HeadsProposer(heads, t, TREE), greedy_tree),
        "heads-tree-tau": (HeadsProposer(heads, t, TREE), sample_tau(3)),
        "heads-chain": (HeadsProposer(heads, t, chain_shape(3)), greedy_tree),
    }


def test_greedy_tokens_of_every_decoder_equal_on_the_static_path() -> None:
    target, draft = _models()
    te, eager = _decoders(target, draft, "eager")
    ts, static = _decoders(target, draft, "static")
    for name in eager:
        (pe, re), (ps, rs) = eager[name], static[name]
        a, sa = generate(te, _ctx(), Sampling(), 90, torch.Generator().manual_seed(0), pe, re)
        b, sb = generate(ts, _ctx(), Sampling(), 90, torch.Generator().manual_seed(0), ps, rs)
        assert a.tolist() == b.tolist(), name
        assert (sa.rounds, sa.accepted, sa.target_calls) == (sb.rounds, sb.accepted, sb.target_calls), name


def test_sampled_tokens_equal_on_the_static_path() -> None:
    """With sampling too (same generator), the paths agree: their probabilities match to float rounding."""
    target, draft = _models()
    s = Sampling(temperature=0.8, top_k=10)
    out = []
    for path in ("eager", "static"):
        t = as_target(target, path=path)
        toks, _ = generate(t, _ctx(), s, 60, torch.Generator().manual_seed(3), DraftChainProposer(as_target(draft, path=path), 3), exact)
        out.append(toks.tolist())
    assert out[0] == out[1]


@torch.inference_mode()
def test_compiled_buckets_equal_eager() -> None:
    """torch.compile (inductor) of two buckets on a tiny model: the logits and a greedy decode match."""
    target, _ = _models()
    eager, comp = as_target(target), as_target(target, path="compiled")
    assert comp.compile
    for n in (1, 3):  # buckets 1 and 4
        toks = torch.arange(n) % 24
        _, _, ce = eager.prefill(_ctx(), capacity=30)
        _, _, cc = comp.prefill(_ctx(), capacity=30)
        for _ in range(2):
            le, _ = eager.step(toks, ce)
            lc, _ = comp.step(toks, cc)
            assert torch.allclose(lc, le, atol=1e-4), n
    assert comp.compile_seconds > 0
    a, _ = generate(eager, _ctx(), Sampling(), 12, torch.Generator().manual_seed(0))
    b, _ = generate(comp, _ctx(), Sampling(), 12, torch.Generator().manual_seed(0))
    assert a.tolist() == b.tolist()
    # the heads' compiled top-k (one function per heads x shape, shared across proposers) + a compiled tree verify
    from specbench.decoding.proposers import heads_compile_seconds

    heads = _heads(target)
    shape = chain_shape(3)  # 4 tokens per verify: the bucket compiled above
    a, _ = generate(eager, _ctx(), Sampling(), 30, torch.Generator().manual_seed(0), HeadsProposer(heads, eager, shape), greedy_tree)
    p1, p2 = HeadsProposer(heads, comp, shape), HeadsProposer(heads, comp, shape)
    assert p1.compiled and p1._topk_nodes is p2._topk_nodes
    b, _ = generate(comp, _ctx(), Sampling(), 30, torch.Generator().manual_seed(0), p1, greedy_tree)
    assert a.tolist() == b.tolist() and heads_compile_seconds() > 0


def test_static_decoder_warm_up_builds_every_bucket_and_window() -> None:
    target, _ = _models()
    dec = StaticDecoder(target, compile=False)
    dec.warm_up(100, sizes=BUCKETS[:3])
    assert dec._seen == {(b, 256, 256) for b in BUCKETS[:3]}
    dec = StaticDecoder(target, compile=False)
    dec.warm_up(700, sizes=(1, 4))
    assert dec._seen == {(b, 768, w) for b in (1, 4) for w in (256, 512, 768)}


def test_warm_up_under_a_capacity_floor_builds_the_graphs_decodes_use() -> None:
    """With ``min_capacity`` set (the bench), every prefill that fits gets the warm-up's capacity, so a decode
    after ``warm_up`` builds no new graph (a timed decode must not compile)."""
    target, _ = _models()
    t = as_target(target, path="static")
    t.static.min_capacity = 450  # rounds to 512 slots (a warm-up that added the padding room got 768)
    t.static.warm_up(450, sizes=(1,))
    seen = set(t.static._seen)
    for capacity in (10, 60, 150):
        _, _, cache = t.prefill(_ctx(), capacity=capacity)
        assert cache.capacity == 512
    generate(t, _ctx(), Sampling(), 150, torch.Generator().manual_seed(0))
    assert t.static._seen == seen


def test_decodes_across_attention_windows_equal_eager() -> None:
    """Decodes long enough to cross from the 256- into the 512-slot window give the eager path's tokens
    (chain and tree verifies whose new block straddles the boundary included)."""
    target, draft = _models()
    te, eager = _decoders(target, draft, "eager")
    ts, static = _decoders(target, draft, "static")
    for name in ("baseline", "chain-exact", "heads-tree"):
        (pe, re), (ps, rs) = eager[name], static[name]
        a, _ = generate(te, _ctx(), Sampling(), 450, torch.Generator().manual_seed(0), pe, re)
        b, _ = generate(ts, _ctx(), Sampling(), 450, torch.Generator().manual_seed(0), ps, rs)
        assert len(a) > 440 and a.tolist() == b.tolist(), name
    assert {w for _, _, w in ts.static._seen} == {256, 512}
