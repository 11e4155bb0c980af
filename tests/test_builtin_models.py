"""The shipped model and draft: greedy speculative decoding is token-for-token the greedy baseline."""

from __future__ import annotations

import subprocess

import pytest
import torch

from specbench.assets import resolve_path
from specbench.audio import read_audio
from specbench.codec import load_codec
from specbench.decoding.acceptance import exact, greedy
from specbench.decoding.generate import generate
from specbench.decoding.proposers import DraftChainProposer
from specbench.decoding.sampling import Sampling
from specbench.models.lm_io import load_lm
from specbench.targets import Context
from specbench.targets.builtin import as_target
from specbench.text import phonemize_one

#: the shipped (codec, target, draft) sets: 50 Hz and 25 Hz with their SSD drafts, and the 25 Hz target with its
#: independently trained draft (which follows the target's durations)
SHIPPED = [
    ("builtin:kmeans-mel-1024", "builtin:target-small", "builtin:draft-ssd"),
    ("builtin:kmeans-mel-25hz-4096", "builtin:target-small-25hz", "builtin:draft-ssd-25hz"),
    ("builtin:kmeans-mel-25hz-4096", "builtin:target-small-25hz", "builtin:draft-scratch-25hz"),
]
#: each set's VADUSA heads and its calibrated budget-32 tree
SHIPPED_HEADS = {
    "builtin:target-small": ("builtin:heads-small", "builtin:vadusa-32"),
    "builtin:target-small-25hz": ("builtin:heads-small-25hz", "builtin:vadusa-25hz-32"),
}


@pytest.fixture(scope="module", params=SHIPPED, ids=["50hz", "25hz", "25hz-scratch-draft"])
def setup(request, tmp_path_factory):
    codec_spec, target_spec, draft_spec = request.param
    if not all(resolve_path(s).is_file() for s in request.param):
        pytest.skip("shipped model files absent (make assets builds them)")
    codec = load_codec("kmeans-mel", codec_spec)
    target, tck = load_lm(target_spec)
    draft, dck = load_lm(draft_spec)
    assert tck["codec_id"] == dck["codec_id"] == codec.id  # the three files belong together
    wav_path = tmp_path_factory.mktemp("prompt") / "p.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "150", "-p", "65", "-w", str(wav_path), "A large size in stockings is hard to sell."], check=True)
    wav, sr = read_audio(wav_path, target_sr=16000)
    prompt = codec.encode(wav[: 3 * sr], sr)
    # a Context from text: the (aligned) shipped model takes espeak-ng's phone tokens of the text
    sentences = ("The birch canoe slid on the smooth planks.", "Rice is often served in round bowls.")
    texts = [Context(text=t, phonemes=phonemize_one(t), prompt_tokens=prompt) for t in sentences]
    return target, draft, prompt, texts, codec.frame_rate, target_spec, codec.id


def test_greedy_speculative_matches_greedy_baseline_on_shipped_model(setup) -> None:
    target, draft, prompt, texts, frame_rate, _, _ = setup
    for text in texts:
        base, bst = generate(as_target(target), text, Sampling(), 400, torch.Generator())
        assert bst.hit_eos and base.numel() > frame_rate  # a real utterance (> 1 s), not an empty or runaway one
        for rule, gamma in ((exact, 3), (greedy, 5)):
            toks, st = generate(as_target(target), text, Sampling(), 400, torch.Generator(), DraftChainProposer(as_target(draft), gamma), rule)
            assert toks.tolist() == base.tolist(), f"{rule.__name__} gamma={gamma} diverged"
            assert st.mean_accepted_len > 1.2 and st.target_calls < bst.target_calls


def test_shipped_heads_tree_greedy_matches_greedy_baseline(setup) -> None:
    """The set's heads belong to its target and codec, and greedy tree verification is the greedy baseline."""
    from specbench.decoding.proposers import HeadsProposer
    from specbench.decoding.tree import load_tree
    from specbench.decoding.tree_rules import greedy_tree
    from specbench.models.heads import load_heads

    target, _, _, texts, _, target_spec, codec_id = setup
    heads_spec, tree_spec = SHIPPED_HEADS[target_spec]
    if not resolve_path(heads_spec).is_file():
        pytest.skip(f"{heads_spec} absent (make assets builds it)")
    heads, hck = load_heads(heads_spec)
    assert hck["codec_id"] == codec_id and resolve_path(hck["target"]) == resolve_path(target_spec)
    t = as_target(target)
    for text in texts:
        base, bst = generate(t, text, Sampling(), 400, torch.Generator())
        toks, st = generate(t, text, Sampling(), 400, torch.Generator(), HeadsProposer(heads, t, load_tree(tree_spec)), greedy_tree)
        assert toks.tolist() == base.tolist()
        assert st.mean_accepted_len > 1.2 and st.target_calls < bst.target_calls


def test_sampled_sd_rule_sees_teacher_forced_distributions(setup) -> None:
    """Sampled exact SD on the shipped pair: every p row the rule gets is the target's teacher-forced
    distribution for that prefix and every q row the draft's (so the rule's tested output law holds for the
    whole decode: the position-dependent frame conditioning, cache crops and pending tokens are right)."""
    from specbench.decoding.acceptance import Verdict
    from specbench.decoding.sampling import warp

    target, draft, _, texts, _, _, _ = setup
    t, dr = as_target(target), as_target(draft)
    s = Sampling(temperature=0.7, top_k=20)
    seen: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def recording_exact(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, g: torch.Generator) -> Verdict:
        v = exact(p, q, drafts, g)
        seen.append((p.clone(), q.clone(), v.accepted))
        return v

    ctx = texts[0]
    toks, st = generate(t, ctx, s, 400, torch.Generator().manual_seed(0), DraftChainProposer(dr, 3), recording_exact)
    assert st.hit_eos and len(seen) > 5 and st.accepted > 0
    _, _, cache = t.prefill(ctx)  # the draft drafts under the context the target hands it (its durations)
    P, Q = warp(t.score(ctx, toks)[0], s), warp(dr.score(t.draft_context(ctx, cache), toks)[0], s)
    n, rows = 1, 0  # round 1's root is the prefill's token (position 0); its row 0 predicts position 1
    for p, q, accepted in seen:
        for i in range(accepted + 1):  # rows up to the first rejection lie on the emitted sequence
            if n + i < toks.numel():
                assert torch.allclose(p[i], P[n + i], atol=1e-4), f"p row {i} of the round at position {n}"
                rows += 1
            if i < accepted and n + i < toks.numel():
                assert torch.allclose(q[i], Q[n + i], atol=1e-4), f"q row {i} of the round at position {n}"
        n += accepted + 1
    assert rows >= toks.numel() // 2
