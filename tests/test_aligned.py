"""Duration-aligned built-in models (issue 16): espeak-ng's phone timing, durations in frames, the frame
conditioning, and that inference (prefill/step, static path, drafts) matches the teacher-forced pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from specbench.data.espeak_lib import attach_stress, espeak_library
from specbench.decoding.acceptance import greedy
from specbench.decoding.generate import generate
from specbench.decoding.proposers import DraftChainProposer
from specbench.decoding.sampling import Sampling
from specbench.models.codec_lm import CodecLM, ModelConfig, frame_conditions, no_conditions
from specbench.models.train import build_layer_draft
from specbench.targets import Context
from specbench.targets.builtin import BuiltinTarget, as_target
from specbench.text import durations_from_starts, encode_phones

PHONES = ["h", "@", "l", "'oU", "w", "'3:", "d", "_:", "_"]


def _model(n_layers: int = 2, seed: int = 0) -> CodecLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        speech_vocab=24, d_model=32, n_layers=n_layers, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=512, phones=PHONES, text_vocab=2 + len(PHONES)
    )
    model = CodecLM(cfg).eval()
    with torch.no_grad():
        model.head.bias[cfg.eos] = -1e4  # long generations
        model.duration.out.bias.copy_(torch.arange(cfg.max_phone_frames).float() == 3)  # ~3 frames per phone
    return model


CTX = Context(text="hello world", phonemes="", prompt_tokens=torch.arange(10) % 24, phones="h @ l 'oU w '3: l d _: _")


def test_durations_from_starts_sum_and_rounding() -> None:
    d = durations_from_starts([0.013, 0.074, 0.138, 0.225, 0.5], 30, 50.0)
    # boundaries round(t * 50) = 1, 4, 7, 11, 25 -> the first phone owns the leading silence
    assert d.tolist() == [4, 3, 4, 14, 5] and d.sum() == 30
    # starts past the audio end and out of order still give non-negative frames that add up
    d = durations_from_starts([0.0, 0.3, 0.2, 9.0], 20, 50.0)
    assert (d >= 0).all() and d.sum() == 20 and d.tolist() == [15, 0, 5, 0]


def test_attach_stress_matches_x_string() -> None:
    assert attach_stress(["h", "@", "l", "oU", "w", "3:", "l", "d", "_:", "_"], "h@l'oU w'3:ld") == ["h", "@", "l", "'oU", "w", "'3:", "l", "d", "_:", "_"]
    assert attach_stress(["a", "b"], ",a b") == [",a", "b"]
    # a disagreement leaves the rest unstressed instead of guessing
    assert attach_stress(["h", "X", "oU"], "h'oU") == ["h", "X", "oU"]


def test_espeak_library_reports_phone_timing() -> None:
    spoken = espeak_library().speak("Hello world, it is a nice day.", "en-us+m7", rate=140, pitch=50)
    assert spoken.sample_rate == 22050 and spoken.wav.dtype == np.float32 and spoken.wav.size > 22050
    assert spoken.phones[:4] == ["h", "@", "l", "'oU"] and spoken.phones[-1] == "_"
    assert all(b >= a for a, b in zip(spoken.starts, spoken.starts[1:], strict=False))
    assert 0 < spoken.starts[-1] <= spoken.wav.size / spoken.sample_rate + 1e-6
    # a slower voice setting stretches the same phones
    slow = espeak_library().speak("Hello world, it is a nice day.", "en-us+m7", rate=100, pitch=50)
    assert slow.phones == spoken.phones and slow.starts[-1] > spoken.starts[-1] * 1.2


_SPEAK_HASH = """
import ctypes, hashlib, sys
from specbench.data.espeak_lib import espeak_library
libc = ctypes.CDLL(None)
for _ in range(int(sys.argv[1])):
    libc.rand()  # whatever the process drew from libc's rand() before
s = espeak_library().speak("Rice is often served in round bowls.", "en-us+f2", rate=140, pitch=42)
print(hashlib.sha1(s.wav.tobytes()).hexdigest(), s.starts)
"""


def test_espeak_breath_noise_is_seeded_per_utterance() -> None:
    """Variant f2 breathes: noise from libc's rand(). Its audio must not depend on the process's rand state
    (it did: one held-out test speaker's 60 clips differed between two builds of the test split)."""
    import subprocess
    import sys

    out = {subprocess.run([sys.executable, "-c", _SPEAK_HASH, str(n)], capture_output=True, text=True, check=True).stdout for n in (0, 7)}
    assert len(out) == 1


def test_frame_conditions_rows() -> None:
    cfg = _model().cfg
    ids = torch.tensor(encode_phones("h @ l", PHONES))
    rows = frame_conditions(ids, torch.tensor([2, 0, 3]), cfg)
    end = cfg.end_phone
    h, a, el = ids.tolist()
    assert rows.tolist() == [
        [h, end, a, 0, 1],
        [h, end, a, 1, 0],
        [el, a, end, 0, 2],  # the zero-length phone owns no frame but is still el's neighbour
        [el, a, end, 1, 1],
        [el, a, end, 2, 0],
        [end, el, end, 0, 0],  # END row: past the last frame
    ]
    none = no_conditions(2, cfg)
    assert torch.equal(_model().condition(none), torch.zeros(2, cfg.d_model))  # padding rows add nothing


def test_unknown_phone_is_unk() -> None:
    assert encode_phones("h zz", PHONES) == [2, 1]


@torch.inference_mode()
def test_greedy_generation_follows_the_durations_and_static_path_equals_eager() -> None:
    model = _model()
    with torch.no_grad():  # a model that ends exactly where it is told to: EOS on the END row
        model.cond_phone[0].weight[model.cfg.end_phone] = 0
        model.head.bias[model.cfg.eos] = 0
    eager = as_target(model)
    static = BuiltinTarget(model, "t", path="static")
    a, _ = generate(eager, CTX, Sampling(temperature=0.0), 200, torch.Generator().manual_seed(0))
    b, _ = generate(static, CTX, Sampling(temperature=0.0), 200, torch.Generator().manual_seed(0))
    assert a.tolist() == b.tolist() and len(a) > 5


@torch.inference_mode()
def test_layer_draft_inherits_the_duration_predictor_and_sd_is_lossless() -> None:
    target = _model()
    draft = build_layer_draft(target, [0]).eval()
    text = torch.tensor(encode_phones(CTX.phones or "", PHONES))
    assert torch.equal(draft.predict_durations(text, CTX.prompt_tokens), target.predict_durations(text, CTX.prompt_tokens))
    t = as_target(target)
    base, _ = generate(t, CTX, Sampling(temperature=0.0), 60, torch.Generator().manual_seed(0))
    prop = DraftChainProposer(as_target(draft), gamma=3)
    sd, stats = generate(t, CTX, Sampling(temperature=0.0), 60, torch.Generator().manual_seed(0), proposer=prop, rule=greedy)
    assert sd.tolist() == base.tolist() and stats.mean_accepted_len > 1


@pytest.mark.parametrize("path", ["eager", "static"])
@torch.inference_mode()
def test_an_independent_draft_follows_the_targets_durations(path: str) -> None:
    """A draft with its own duration predictor proposes for the target's alignment (Context.durations from
    ``draft_context``), not its own guess: otherwise its frame t sits on another phone than the target's."""
    target, draft = _model(seed=0), _model(n_layers=1, seed=1)
    draft.duration.out.bias.copy_((torch.arange(draft.cfg.max_phone_frames) == 5).float())  # its own guess: ~5 frames
    text = torch.tensor(encode_phones(CTX.phones or "", PHONES))
    own, targets = draft.predict_durations(text, CTX.prompt_tokens), target.predict_durations(text, CTX.prompt_tokens)
    assert not torch.equal(own, targets)
    t = as_target(target)
    base, _ = generate(t, CTX, Sampling(temperature=0.0), 60, torch.Generator().manual_seed(0))
    prop = DraftChainProposer(BuiltinTarget(draft, "d", path=path), gamma=3)
    sd, _ = generate(t, CTX, Sampling(temperature=0.0), 60, torch.Generator().manual_seed(0), proposer=prop, rule=greedy)
    assert sd.tolist() == base.tolist()
    assert prop.cache.alignment is not None and torch.equal(prop.cache.alignment.durations, targets)
    # the ablation: the draft on its own guess (still lossless, it only proposes)
    ablation = DraftChainProposer(BuiltinTarget(draft, "d", path=path), gamma=3, alignment="own")
    sd_own, _ = generate(t, CTX, Sampling(temperature=0.0), 60, torch.Generator().manual_seed(0), proposer=ablation, rule=greedy)
    assert sd_own.tolist() == base.tolist()
    assert ablation.cache.alignment is not None and torch.equal(ablation.cache.alignment.durations, own)
    # decoding alone (no target), the draft keeps its own alignment
    _, _, alone = BuiltinTarget(draft, "d", path=path).prefill(CTX)
    assert torch.equal(alone.alignment.durations, own)
    with pytest.raises(ValueError, match="durations for"):
        draft.prefill(text, CTX.prompt_tokens, durations=targets[:-1])


def test_aligned_model_needs_conditions() -> None:
    model = _model()
    with pytest.raises(ValueError, match="frame conditions"):
        model.forward_train(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))


def test_synthesis_does_not_depend_on_what_was_spoken_before(tmp_path) -> None:
    """libespeak-ng keeps state between syntheses; each item is spoken from the same fresh state."""
    from specbench.data.synthetic import Item, _speaker, _write_item

    items = [
        Item(f"{spk.speaker_id}_test_{i:06d}_000000", spk, text)
        for i, (spk, text) in enumerate(
            [
                (_speaker("m5", 42), "The quick brown fox, having jumped, rested near the old lazy dog."),
                (_speaker("klatt", 58), "Another sentence entirely, with some words."),
                (_speaker("f2", 42), "A third one, to move the library's state along."),
            ]
        )
    ]
    for order, root in ((items, tmp_path / "a"), (items[::-1], tmp_path / "b")):
        for item in order:
            _write_item(root, item)
    for item in items:
        rel = f"{item.speaker.speaker_id}/test/{item.utt_id}"
        for ext in (".wav", ".align.json"):
            assert (tmp_path / "a" / (rel + ext)).read_bytes() == (tmp_path / "b" / (rel + ext)).read_bytes(), rel + ext
