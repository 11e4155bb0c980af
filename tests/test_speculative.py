"""The speculative loop with a draft-model chain: greedy equivalence, rollback, statistics."""

from __future__ import annotations

import torch

from specbench.decoding.acceptance import exact, greedy, make_beta
from specbench.decoding.generate import generate
from specbench.decoding.proposers import DraftChainProposer
from specbench.decoding.sampling import Sampling
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.targets.builtin import as_target, context_from_ids

CFG = dict(speech_vocab=24, d_model=32, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=512)


def _models() -> tuple[CodecLM, CodecLM]:
    torch.manual_seed(0)
    target = CodecLM(ModelConfig(n_layers=2, **CFG)).eval()
    with torch.no_grad():
        target.head.bias[target.cfg.eos] = -1e4  # never stop early: long sequences exercise rollback
    torch.manual_seed(1)
    draft = CodecLM(ModelConfig(n_layers=1, **CFG)).eval()
    with torch.no_grad():  # a draft that partly agrees with the target: share the embeddings and head
        draft.tok_emb.weight.copy_(target.tok_emb.weight)
        draft.pos_emb.weight.copy_(target.pos_emb.weight)
        draft.head.load_state_dict(target.head.state_dict())
        draft.ln_f.load_state_dict(target.ln_f.state_dict())
    return target, draft


TEXT = torch.arange(2, 14)
PROMPT = torch.arange(0, 10) % 24


def test_greedy_speculative_equals_greedy_baseline() -> None:
    target, draft = _models()
    base, bs = generate(as_target(target), context_from_ids(TEXT, PROMPT), Sampling(), 120, torch.Generator().manual_seed(0))
    for rule in (greedy, exact):
        for gamma in (1, 3, 5):
            toks, st = generate(
                as_target(target),
                context_from_ids(TEXT, PROMPT),
                Sampling(),
                120,
                torch.Generator().manual_seed(0),
                DraftChainProposer(as_target(draft), gamma),
                rule,
            )
            assert toks.tolist() == base.tolist(), (rule.__name__, gamma)
            assert st.tokens == bs.tokens
            assert st.target_calls < bs.target_calls or st.accepted == 0
            assert st.proposed == gamma * st.target_calls
            assert sum(1 for _ in range(st.rounds)) and abs(st.mean_accepted_len - st.tokens / st.rounds) < 1e-12


def test_self_draft_accepts_everything_greedy() -> None:
    """Target as its own draft: every draft is accepted, γ+1 tokens per verify round."""
    target, _ = _models()
    toks, st = generate(as_target(target), context_from_ids(TEXT, PROMPT), Sampling(), 61, torch.Generator(), DraftChainProposer(as_target(target), 4), greedy)
    base, _ = generate(as_target(target), context_from_ids(TEXT, PROMPT), Sampling(), 61, torch.Generator())
    assert toks.tolist() == base.tolist()
    assert st.accepted == st.proposed
    assert st.accept_at_pos == [st.target_calls] * 4
    assert st.target_calls == 12  # 1 token from prefill, then 12 rounds of 5 = 61 tokens


def test_sampled_self_draft_exact_accepts_all() -> None:
    """p == q makes every ratio 1: all drafts accepted under the exact rule with sampling."""
    target, _ = _models()
    _, st = generate(
        as_target(target),
        context_from_ids(TEXT, PROMPT),
        Sampling(temperature=1.0),
        40,
        torch.Generator().manual_seed(3),
        DraftChainProposer(as_target(target), 3),
        exact,
    )
    assert st.accepted == st.proposed > 0


def test_beta_one_reproduces_the_draft_model() -> None:
    """β = 1 accepts all drafts, so greedy output = the draft model's own greedy decoding."""
    target, draft = _models()
    toks, st = generate(
        as_target(target), context_from_ids(TEXT, PROMPT), Sampling(), 40, torch.Generator(), DraftChainProposer(as_target(draft), 3), make_beta(1.0)
    )
    assert st.accepted == st.proposed
    # after the target's first token, the next three are the draft's own greedy continuation
    with torch.no_grad():
        _, _, cache = draft.prefill(TEXT, PROMPT)
        cont, last = [], int(toks[0])
        for _ in range(3):
            logits, _ = draft(torch.tensor([last]), cache)
            last = int(logits[-1].argmax())
            cont.append(last)
    assert toks[1:4].tolist() == cont


def test_sampled_speculative_is_reproducible() -> None:
    target, draft = _models()
    s = Sampling(temperature=1.0, top_k=10)
    a, _ = generate(as_target(target), context_from_ids(TEXT, PROMPT), s, 50, torch.Generator().manual_seed(9), DraftChainProposer(as_target(draft), 3), exact)
    b, _ = generate(as_target(target), context_from_ids(TEXT, PROMPT), s, 50, torch.Generator().manual_seed(9), DraftChainProposer(as_target(draft), 3), exact)
    assert a.tolist() == b.tolist()


def test_draft_cache_after_rollback_equals_rerun_of_accepted_prefix() -> None:
    """After many accept/reject rounds, the draft's cache equals a fresh run over the emitted tokens."""
    target, draft = _models()
    proposer = DraftChainProposer(as_target(draft), 4)
    toks, st = generate(as_target(target), context_from_ids(TEXT, PROMPT), Sampling(temperature=1.0), 45, torch.Generator().manual_seed(2), proposer, exact)
    assert 0 < st.accepted < st.proposed  # both branches of the rollback ran
    consumed = toks.numel() - len(proposer.pending)
    # the emitted token that ended the round (or the cap) may be beyond the last pending one
    consumed = min(consumed, proposer.cache.speech_len - PROMPT.numel())
    with torch.no_grad():
        _, _, ref = draft.prefill(TEXT, PROMPT)
        draft(toks[:consumed], ref)
    n = ref.length
    assert proposer.cache.length >= n
    torch.testing.assert_close(proposer.cache.k[:, :, :n], ref.k[:, :, :n], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(proposer.cache.v[:, :, :n], ref.v[:, :, :n], rtol=1e-4, atol=1e-5)
