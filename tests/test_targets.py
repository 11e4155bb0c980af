"""The TargetModel contract on every backend (builtin, hf-causal Llama and Qwen2), family templates,
and the peer cross-check: greedy baseline and greedy SD equal transformers' generate() and assisted
generation token for token. All models are tiny and random (built offline in the test)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from specbench.decoding.acceptance import greedy
from specbench.decoding.generate import generate
from specbench.decoding.groups import build_groups, groups_from_model, model_table
from specbench.decoding.proposers import DraftChainProposer
from specbench.decoding.sampling import Sampling
from specbench.decoding.tree import chain_shape, dense_shape
from specbench.errors import ConfigError, ModelError
from specbench.models.codec_lm import CodecLM, ModelConfig
from specbench.targets import Context
from specbench.targets.builtin import as_target, context_from_ids
from specbench.targets.families import load_family
from specbench.targets.hf_causal import HFCausalTarget, load_hf_causal
from specbench.targets.tiny import write_tiny_lm

# a user-described family (YAML) over a small codec, so the protocol tests stay fast
MINI_FAMILY = """
name: mini
codec: kmeans-mel
speech_vocab: 32
speech_token: "<|s_{}|>"
end_of_speech: "<|SPEECH_GENERATION_END|>"
chat: true
user: "Say:<|TEXT_UNDERSTANDING_START|>{prompt_text} {text}<|TEXT_UNDERSTANDING_END|>"
assistant: "<|SPEECH_GENERATION_START|>{prompt_speech}"
"""
CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def mini_family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("family") / "mini.yaml"
    path.write_text(MINI_FAMILY)
    return path


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory, mini_family: Path) -> dict[str, Path]:
    """Tiny random models: mini family in Llama and Qwen2 (target + a 1-layer draft), llasa, orpheus."""
    root = tmp_path_factory.mktemp("hf")
    fam = str(mini_family)
    out = {
        "llama": write_tiny_lm(fam, root / "llama", arch="llama", layers=3, seed=0),
        "llama-draft": write_tiny_lm(fam, root / "llama-draft", arch="llama", layers=1, seed=1),
        "qwen2": write_tiny_lm(fam, root / "qwen2", arch="qwen2", layers=3, seed=2),
        "qwen2-draft": write_tiny_lm(fam, root / "qwen2-draft", arch="qwen2", layers=1, seed=3),
        "llasa": write_tiny_lm("llasa", root / "llasa", layers=2, hidden=32),
        "orpheus": write_tiny_lm("orpheus", root / "orpheus", layers=2, hidden=32),
    }
    return out


def _hf(hf_dirs: dict[str, Path], mini_family: Path, name: str, decode_path: str = "eager") -> HFCausalTarget:
    fam = name if name in ("llasa", "orpheus") else str(mini_family)
    return load_hf_causal(str(hf_dirs[name]), fam, CPU, decode_path=decode_path)


def _builtin():
    torch.manual_seed(0)
    return as_target(CodecLM(ModelConfig(speech_vocab=32, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=512)).eval())


def _builtin_aligned():
    """A random duration-aligned built-in model (phone tokens; frames conditioned on predicted durations)."""
    phones = ["h", "@", "l", "'oU", "D", "'E", "r", "w", "'3:", "d", "_:", "_"]
    torch.manual_seed(0)
    shape = dict(speech_vocab=32, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_text_len=64, max_speech_len=512)
    cfg = ModelConfig(**shape, phones=phones, text_vocab=2 + len(phones))
    return as_target(CodecLM(cfg).eval())


CTX = Context(
    text="hello there world",
    phonemes="h@loU DeR",
    prompt_tokens=torch.arange(12) % 32,
    prompt_text="the prompt says this",
    phones="h @ l 'oU D 'E r w '3: l d _: _",
)


@pytest.fixture(params=["builtin", "aligned", "llama", "qwen2", "llama-static", "qwen2-static"])
def target(request, hf_dirs, mini_family):
    """Every backend; ``-static``: the hf-causal static decode path (StaticCache, buckets), run eagerly."""
    if request.param == "builtin":
        return _builtin()
    if request.param == "aligned":
        return _builtin_aligned()
    name, _, path = request.param.partition("-")
    return _hf(hf_dirs, mini_family, name, decode_path=path or "eager")


# ---- family templates ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llasa", "orpheus"])
def test_family_layout_round_trip(hf_dirs, mini_family, family: str) -> None:
    t = _hf(hf_dirs, mini_family, family)
    fam = load_family(family)
    assert t.speech_vocab == fam.speech_vocab
    prompt = (torch.arange(7 * 3) * 97) % fam.speech_vocab
    ctx = Context(text="hello world", phonemes="", prompt_tokens=prompt, prompt_text="a prompt transcript")
    ids = t.context_ids(ctx).tolist()
    speech = t.model_ids(prompt).tolist()
    start = next(i for i in range(len(ids)) if ids[i : i + len(speech)] == speech)  # prompt codes inserted as ids, in order
    decoded = t.tokenizer.decode(ids)
    assert "a prompt transcript" in decoded and "hello world" in decoded
    assert decoded.index("a prompt transcript") < decoded.index("hello world")
    # speech space <-> vocabulary: code i is the template's token string, EOS is end_of_speech
    assert t.tokenizer.convert_ids_to_tokens(int(t.model_ids(torch.tensor([5]))[0])) == fam.token_string(5)
    assert t.tokenizer.convert_ids_to_tokens(int(t.out_ids[-1])) == fam.end_of_speech
    if family == "llasa":  # generation continues right after the prompt's codes
        assert start + len(speech) == len(ids)
        assert decoded.count("<|SPEECH_GENERATION_START|>") == 1
    else:  # orpheus: a finished prompt exchange, then a new turn opened up to start-of-speech
        assert t.tokenizer.convert_ids_to_tokens(ids[-1]) == "<custom_token_1>"
        assert t.tokenizer.convert_ids_to_tokens(ids[start + len(speech)]) == "<custom_token_2>"
        with pytest.raises(ModelError, match="whole frames of 7"):
            t.context_ids(Context(text="x", phonemes="", prompt_tokens=prompt[:5], prompt_text="y"))
    with pytest.raises(ConfigError, match="transcript"):
        t.context_ids(Context(text="x", phonemes="", prompt_tokens=prompt, prompt_text=None))


def test_family_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MINI_FAMILY.replace("{prompt_speech}", ""))
    with pytest.raises(ConfigError, match="bad.yaml.*prompt_speech"):
        load_family(str(bad))
    with pytest.raises(ConfigError, match="unknown model family 'nope'.*llasa"):
        load_family("nope")


def test_missing_model_directory_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=f"{tmp_path / 'none'} not found.*never downloads"):
        load_hf_causal(str(tmp_path / "none"), "llasa", CPU)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no weights"):
        load_hf_causal(str(tmp_path / "empty"), "llasa", CPU)


# ---- the protocol on every backend ----------------------------------------------------------------
@torch.inference_mode()
def test_crop_equals_full_forward(target) -> None:
    """After a rejected chain is cropped away, appending another chain gives the full forward's logits."""
    _, _, cache = target.prefill(CTX, capacity=16)
    base = cache.length
    target.step(torch.tensor([3, 4, 5, 6]), cache)
    cache.crop(base + 1)  # keep the first token only
    logits, _ = target.step(torch.tensor([7, 8]), cache)
    full, _ = target.score(CTX, torch.tensor([3, 7, 8]))
    assert torch.allclose(logits, full[2:4], atol=1e-4)  # row j of score() follows codes[j-1]


@torch.inference_mode()
def test_keep_tree_path_equals_full_forward(target) -> None:
    """Verify a dense tree, keep one root-to-leaf path, continue: equals the full forward along that path."""
    shape = dense_shape(2, 3)
    n = shape.size + 1
    tokens = (torch.arange(n) * 5 + 1) % target.speech_vocab
    _, _, cache = target.prefill(CTX, capacity=2 * n)
    base = cache.length
    tree_logits, _ = target.step(tokens, cache, depths=shape.position_offsets(), tree_mask=shape.mask())
    leaf = max(range(n), key=lambda i: (shape.depth[i], i))
    path = shape.ancestors(leaf)[1:]  # node indices from depth 1 to the leaf
    cache.keep(list(range(base + 1)) + [base + i for i in path])
    nxt, _ = target.step(torch.tensor([9]), cache)
    history = torch.cat([tokens[[0] + path], torch.tensor([9])])
    full, _ = target.score(CTX, history)
    # every tree node's logits equal the full forward along its own path, and so does the next token's
    assert torch.allclose(tree_logits[[0] + path], full[1 : len(path) + 2], atol=1e-4)
    assert torch.allclose(nxt[0], full[len(path) + 2], atol=1e-4)


@torch.inference_mode()
def test_tree_verify_equals_chain_verify_on_a_chain(target) -> None:
    shape = chain_shape(4)
    tokens = torch.tensor([2, 9, 4, 4, 1])
    _, _, a = target.prefill(CTX, capacity=8)
    _, _, b = target.prefill(CTX, capacity=8)
    la, ha = target.step(tokens, a)
    lb, hb = target.step(tokens, b, depths=shape.position_offsets(), tree_mask=shape.mask())
    assert torch.allclose(la, lb, atol=1e-5) and torch.allclose(ha, hb, atol=1e-5)
    assert la.shape == (5, target.speech_vocab + 1) and ha.shape == (5, target.hidden_size)


def test_speech_space_tables(target) -> None:
    emb = target.speech_embeddings()
    w, _ = target.output_head()
    assert emb.shape == (target.speech_vocab + 1, target.hidden_size) == w.shape
    assert target.eos == target.speech_vocab


def test_groups_from_embedding_rows(target) -> None:
    g = groups_from_model(target, 0.1)
    ref = build_groups(model_table(target, "input"), 0.1, special=[target.eos])
    assert g.stats()["vocab"] == target.speech_vocab + 1
    assert torch.allclose(g.to_dense(), ref.to_dense())
    assert g.to_dense()[target.eos].nonzero().flatten().tolist() == [target.eos]  # EOS is its own group


# ---- peer cross-check with transformers -----------------------------------------------------------
def _hf_generate(t: HFCausalTarget, ctx: Context, n: int, assistant=None) -> list[int]:
    """transformers' greedy generate() (optionally assisted), written independently of reference_generate:
    non-speech ids suppressed through transformers' own suppress_tokens, mapped back to speech space."""
    ids = t.context_ids(ctx)[None]
    allowed = set(t.out_ids.tolist())
    suppress = [i for i in range(t.model.config.vocab_size) if i not in allowed]
    kw = {}
    if assistant is not None:
        assistant.generation_config.num_assistant_tokens = 3
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        kw["assistant_model"] = assistant
    out = t.model.generate(ids, max_new_tokens=n, do_sample=False, suppress_tokens=suppress, eos_token_id=t.eos_id, pad_token_id=t.eos_id, **kw)
    inverse = {v: i for i, v in enumerate(t.out_ids.tolist())}
    return [inverse[int(x)] for x in out[0, ids.shape[1] :] if int(x) != t.eos_id]


def test_reference_generate_is_transformers_generate(hf_dirs, mini_family) -> None:
    t = _hf(hf_dirs, mini_family, "llama")
    draft = _hf(hf_dirs, mini_family, "llama-draft")
    ours, _ = generate(t, CTX, Sampling(), 30, torch.Generator())
    assert t.reference_generate(CTX, 30, Sampling()).tolist() == _hf_generate(t, CTX, 30) == ours.tolist()
    assert t.reference_generate(CTX, 30, Sampling(), assistant=draft).tolist() == ours.tolist()
    sampled = t.reference_generate(CTX, 30, Sampling(temperature=1.0, top_k=5), seed=3)
    assert sampled.numel() <= 30 and all(0 <= x < t.speech_vocab for x in sampled.tolist())


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_baseline_and_sd_equal_transformers(hf_dirs, mini_family, arch: str) -> None:
    t = _hf(hf_dirs, mini_family, arch)
    draft = _hf(hf_dirs, mini_family, f"{arch}-draft")
    n = 48
    ours, st = generate(t, CTX, Sampling(), n, torch.Generator())
    assert ours.tolist() == _hf_generate(t, CTX, n)
    sd, sst = generate(t, CTX, Sampling(), n, torch.Generator(), DraftChainProposer(draft, 3), greedy)
    assert sd.tolist() == ours.tolist() == _hf_generate(t, CTX, n, assistant=draft.model)
    assert sst.target_calls < st.target_calls + 1
    # a layer-subset draft shares the target's weights and is accepted more often than a random one
    sub = t.layer_subset("layers:1")
    assert sub.model.get_decoder().layers[0] is t.model.get_decoder().layers[0]
    ls, lst = generate(t, CTX, Sampling(), n, torch.Generator(), DraftChainProposer(sub, 3), greedy)
    assert ls.tolist() == ours.tolist()
    assert len(t.model.get_decoder().layers) == 3  # the target itself is untouched


def test_layer_subset_spec_errors(hf_dirs, mini_family) -> None:
    t = _hf(hf_dirs, mini_family, "llama")
    for spec in ("layers:0", "layers:3", "layers:x"):
        with pytest.raises(ConfigError, match="layers"):
            t.layer_subset(spec)


def test_builtin_context_from_ids_round_trip() -> None:
    ctx = context_from_ids(torch.arange(2, 12), torch.arange(4))
    t = _builtin()
    logits, hidden, cache = t.prefill(ctx)
    assert cache.length == 10 + 1 + 4 and logits.shape == (33,)


# ---- the hf-causal static decode path (model.compile) ---------------------------------------------
def test_hf_static_path_gives_the_eager_tokens(hf_dirs, mini_family) -> None:
    """Greedy baseline, SD with a layer-subset draft and a heads tree decode the same tokens, with the same
    number of target calls, on the eager and the static path (padding, crop and keep never leak)."""
    from specbench.decoding.proposers import HeadsProposer
    from specbench.decoding.tree_rules import greedy_tree
    from specbench.models.heads import DraftHeads

    out = {}
    for path in ("eager", "static"):
        t = _hf(hf_dirs, mini_family, "llama", decode_path=path)
        torch.manual_seed(5)
        heads = DraftHeads.from_target(t, n_heads=3, n_layers=1).eval()
        with torch.no_grad():
            for p in heads.parameters():
                p.add_(0.3 * torch.randn_like(p))
        runs = {
            "baseline": generate(t, CTX, Sampling(), 60, torch.Generator()),
            "sd": generate(t, CTX, Sampling(), 60, torch.Generator(), DraftChainProposer(t.layer_subset("layers:1"), 3), greedy),
            "tree": generate(t, CTX, Sampling(), 60, torch.Generator(), HeadsProposer(heads, t, dense_shape(2, 3)), greedy_tree),
        }
        out[path] = {k: (toks.tolist(), st.target_calls) for k, (toks, st) in runs.items()}
        assert t.describe()["decode_path"] == path
    assert out["eager"] == out["static"]
    assert out["static"]["sd"][0] == out["static"]["baseline"][0] and out["static"]["sd"][1] < out["static"]["baseline"][1]


def test_hf_static_path_across_attention_windows(hf_dirs, mini_family) -> None:
    """A decode long enough to leave the 256-slot attention window (the cache then attends over 512) gives
    the eager path's tokens, greedy chain and heads tree alike."""
    from specbench.decoding.proposers import HeadsProposer
    from specbench.decoding.tree_rules import greedy_tree
    from specbench.models.heads import DraftHeads

    out = {}
    for path in ("eager", "static"):
        t = _hf(hf_dirs, mini_family, "qwen2", decode_path=path)
        torch.manual_seed(5)
        heads = DraftHeads.from_target(t, n_heads=2, n_layers=1).eval()
        out[path] = [
            generate(t, CTX, Sampling(), 300, torch.Generator())[0].tolist(),
            generate(t, CTX, Sampling(), 300, torch.Generator(), HeadsProposer(heads, t, dense_shape(2, 2)), greedy_tree)[0].tolist(),
        ]
    assert len(out["eager"][0]) > 280 and out["eager"] == out["static"]
    assert {w for *_, w in t.static._seen} >= {256, 512}
    # under a capacity floor (the bench) a decode after warm_up builds no new graph
    t.static.min_capacity = 520
    t.static._seen.clear()
    t.static.warm_up(520, sizes=(1,))
    seen = set(t.static._seen)
    assert {cap for _, cap, _ in seen} == {768}
    assert [t.prefill(CTX, capacity=n)[2].capacity for n in (10, 200)] == [768, 768]
    generate(t, CTX, Sampling(), 200, torch.Generator())
    assert t.static._seen == seen
    with pytest.raises(ValueError, match="cannot take 2 more"):
        _, _, cache = t.prefill(CTX, capacity=4)
        cache.set_length(cache.capacity - 1)
        t.step(torch.tensor([1, 2]), cache)


def test_hf_static_path_refuses_sliding_window_layers() -> None:
    """A model with sliding-window attention layers cannot take the windowed static cache: a ModelError at
    load time names the fix (the CLI prints it as one line)."""
    from transformers import Qwen2Config

    from specbench.errors import ModelError
    from specbench.targets.hf_static import HFStaticDecoder

    kw = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, vocab_size=100)
    HFStaticDecoder(None, Qwen2Config(**kw), "past_key_values", 0, torch.float32, CPU)  # full attention: accepted
    sliding = Qwen2Config(**kw, use_sliding_window=True, sliding_window=16, max_window_layers=0)
    with pytest.raises(ModelError, match="model.compile: false"):
        HFStaticDecoder(None, sliding, "past_key_values", 0, torch.float32, CPU)


def test_hf_compiled_path_and_config(hf_dirs, mini_family) -> None:
    """model.compile: true loads the compiled static path for target and layer-subset draft; torch.compile
    (inductor) of buckets 1 and 4 decodes the eager path's tokens, and a new cache reuses the graphs."""
    from specbench.config import ModelRef
    from specbench.targets import load_draft, load_target

    ref = ModelRef(backend="hf-causal", path=str(hf_dirs["llama"]), family=str(mini_family), compile=True)
    comp = load_target(ref, CPU)
    assert isinstance(comp, HFCausalTarget) and comp.decode_path == "compiled"
    assert load_draft("layers:1", comp, ref, CPU).decode_path == "compiled"
    eager = _hf(hf_dirs, mini_family, "llama")
    a, _ = generate(eager, CTX, Sampling(), 16, torch.Generator())
    b, _ = generate(comp, CTX, Sampling(), 16, torch.Generator())
    assert a.tolist() == b.tolist() and comp.compile_seconds > 0
    with torch.inference_mode():
        _, _, ce = eager.prefill(CTX, capacity=8)
        _, _, cc = comp.prefill(CTX, capacity=8)
        le, _ = eager.step(torch.tensor([1, 2, 3]), ce)
        lc, _ = comp.step(torch.tensor([1, 2, 3]), cc)  # bucket 4
    assert torch.allclose(le, lc, atol=1e-4)
    seconds = comp.compile_seconds
    generate(comp, CTX, Sampling(), 8, torch.Generator())
    assert comp.compile_seconds == seconds  # same shapes: no new graph
