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

pytestmark = pytest.mark.skipif(
    not (resolve_path("builtin:target-small").is_file() and resolve_path("builtin:draft-ssd").is_file()),
    reason="shipped model files absent (make assets builds them)",
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    codec = load_codec("kmeans-mel", "builtin:kmeans-mel-1024")
    target, _ = load_lm("builtin:target-small")
    draft, _ = load_lm("builtin:draft-ssd")
    wav_path = tmp_path_factory.mktemp("prompt") / "p.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+f3", "-s", "150", "-p", "65", "-w", str(wav_path), "A large size in stockings is hard to sell."], check=True)
    wav, sr = read_audio(wav_path, target_sr=16000)
    prompt = codec.encode(wav[: 3 * sr], sr)
    # a Context from text: the (aligned) shipped model takes espeak-ng's phone tokens of the text
    sentences = ("The birch canoe slid on the smooth planks.", "Rice is often served in round bowls.")
    texts = [Context(text=t, phonemes=phonemize_one(t), prompt_tokens=prompt) for t in sentences]
    return target, draft, prompt, texts


def test_greedy_speculative_matches_greedy_baseline_on_shipped_model(setup) -> None:
    target, draft, prompt, texts = setup
    for text in texts:
        base, bst = generate(as_target(target), text, Sampling(), 400, torch.Generator())
        assert bst.hit_eos and base.numel() > 50  # a real utterance, not an empty or runaway one
        for rule, gamma in ((exact, 3), (greedy, 5)):
            toks, st = generate(as_target(target), text, Sampling(), 400, torch.Generator(), DraftChainProposer(as_target(draft), gamma), rule)
            assert toks.tolist() == base.tolist(), f"{rule.__name__} gamma={gamma} diverged"
            assert st.mean_accepted_len > 1.2 and st.target_calls < bst.target_calls
