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

#: the shipped (codec, target, SSD draft) sets: 50 Hz and 25 Hz
SHIPPED = [
    ("builtin:kmeans-mel-1024", "builtin:target-small", "builtin:draft-ssd"),
    ("builtin:kmeans-mel-25hz-4096", "builtin:target-small-25hz", "builtin:draft-ssd-25hz"),
]


@pytest.fixture(scope="module", params=SHIPPED, ids=["50hz", "25hz"])
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
    return target, draft, prompt, texts, codec.frame_rate


def test_greedy_speculative_matches_greedy_baseline_on_shipped_model(setup) -> None:
    target, draft, prompt, texts, frame_rate = setup
    for text in texts:
        base, bst = generate(as_target(target), text, Sampling(), 400, torch.Generator())
        assert bst.hit_eos and base.numel() > frame_rate  # a real utterance (> 1 s), not an empty or runaway one
        for rule, gamma in ((exact, 3), (greedy, 5)):
            toks, st = generate(as_target(target), text, Sampling(), 400, torch.Generator(), DraftChainProposer(as_target(draft), gamma), rule)
            assert toks.tolist() == base.tolist(), f"{rule.__name__} gamma={gamma} diverged"
            assert st.mean_accepted_len > 1.2 and st.target_calls < bst.target_calls
