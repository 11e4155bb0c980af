"""The generation loop (baseline) and the shared logit transform."""

from __future__ import annotations

import torch

from specbench.decoding.generate import generate, teacher_forced_tokens
from specbench.decoding.sampling import Sampling, next_token, warp
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.targets.builtin import as_target, context_from_ids


def _model() -> CodecLM:
    torch.manual_seed(0)
    return CodecLM(ModelConfig(speech_vocab=40, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=256)).eval()


def _run(model: CodecLM, s: Sampling, seed: int, max_tokens: int = 25):
    text = torch.arange(2, 12)
    prompt = torch.arange(0, 8) % 40
    return generate(as_target(model), context_from_ids(text, prompt), s, max_tokens, torch.Generator().manual_seed(seed))


def test_greedy_is_deterministic_and_matches_manual_argmax() -> None:
    model = _model()
    a, sa = _run(model, Sampling(), seed=0)
    b, _ = _run(model, Sampling(), seed=123)  # greedy ignores the random stream
    assert torch.equal(a, b)
    # manual greedy decoding with full-sequence passes gives the same tokens
    text, speech = torch.arange(2, 12), torch.arange(0, 8) % 40
    out = []
    with torch.no_grad():
        for _ in range(a.numel()):
            ids, pos = model.embed_sequence(text, torch.cat([speech, torch.tensor(out, dtype=torch.long)]))
            logits, _ = model.forward_train(ids[None], pos[None])
            out.append(int(logits[0, -1].argmax()))
    assert out == a.tolist()
    assert sa.tokens == a.numel() and sa.rounds == sa.tokens and sa.mean_accepted_len == 1.0


def test_sampling_reproducible_under_seed_and_varies_across_seeds() -> None:
    model = _model()
    s = Sampling(temperature=1.0, top_k=20)
    a, _ = _run(model, s, seed=7)
    b, _ = _run(model, s, seed=7)
    c, _ = _run(model, s, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_max_tokens_and_stats_counters() -> None:
    model = _model()
    tokens, st = _run(model, Sampling(temperature=1.0), seed=1, max_tokens=5)
    assert tokens.numel() <= 5
    assert st.tokens == tokens.numel()
    # one target call after each emitted token, except after the last one when the cap stopped us
    assert st.target_calls == st.tokens - (0 if st.hit_eos else 1)
    assert st.lm_seconds >= st.prefill_seconds > 0
    assert st.draft_accept_rate is None


def test_eos_stops_generation() -> None:
    model = _model()
    with torch.no_grad():
        model.head.bias.zero_()
        model.head.bias[model.cfg.eos] = 100.0  # EOS always wins
    tokens, st = _run(model, Sampling(), seed=0)
    assert tokens.numel() == 0 and st.hit_eos and st.target_calls == 0


def test_warp_greedy_is_one_hot_and_filters() -> None:
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    assert warp(logits, Sampling()).tolist() == [0.0, 1.0, 0.0, 0.0]
    p = warp(logits, Sampling(temperature=1.0, top_k=2))
    assert p[0] == 0 and p[3] == 0 and abs(float(p.sum()) - 1) < 1e-6
    # top_p: the smallest set whose mass reaches top_p is kept (the top token always stays)
    p = warp(torch.tensor([5.0, 0.0, 0.0, 0.0]), Sampling(temperature=1.0, top_p=0.5))
    assert p.tolist() == [1.0, 0.0, 0.0, 0.0]
    full = torch.softmax(logits, -1)
    torch.testing.assert_close(warp(logits, Sampling(temperature=1.0)), full)


def test_next_token_sampling_matches_distribution() -> None:
    """Empirical frequencies of next_token follow warp(logits) (fixed seed, loose tolerance)."""
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    s = Sampling(temperature=1.0)
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.bincount(torch.tensor([next_token(logits, s, g) for _ in range(n)]), minlength=4).float() / n
    torch.testing.assert_close(counts, warp(logits, s), atol=0.015, rtol=0)


def test_teacher_forced_along_own_greedy_output_reproduces_it() -> None:
    """Fed its own greedy output as the "true" history, the teacher-forced argmax is that output."""
    model = _model()
    out, _ = _run(model, Sampling(), seed=0, max_tokens=40)
    prompt = torch.arange(0, 8) % 40
    tf = teacher_forced_tokens(as_target(model), context_from_ids(torch.arange(2, 12), prompt), out)
    assert tf.tolist() == out.tolist()
    # along a different history the per-step argmax changes somewhere (the history is really used)
    other = (out + 1) % model.cfg.speech_vocab
    assert teacher_forced_tokens(as_target(model), context_from_ids(torch.arange(2, 12), prompt), other).tolist() != out.tolist()


def test_teacher_forced_never_emits_eos_and_keeps_the_length() -> None:
    model = _model()
    with torch.no_grad():
        model.head.bias[model.cfg.eos] = 1e4  # EOS would win every argmax
    codes = torch.arange(0, 30) % model.cfg.speech_vocab
    tf = teacher_forced_tokens(as_target(model), context_from_ids(torch.arange(2, 12), torch.arange(0, 8) % 40), codes)
    assert tf.shape == codes.shape
    assert int(tf.max()) < model.cfg.speech_vocab
