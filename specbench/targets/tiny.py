"""Tiny random-weight models in a family's real layout, for smoke tests and CI without downloads.

``make_tiny_model(family, out)`` writes, under ``out``:

- ``target/``: a 2-layer Llama (or Qwen2) causal LM, saved with ``save_pretrained``, with a tokenizer
  built offline (byte-level BPE on a few sentences + the family's special tokens + its whole
  speech-token block, in the real order, so the template finds every id where it expects it);
- ``draft/``: a 1-layer model of the same family and tokenizer (another seed);
- ``codec``: random codec weights of the family's codec in its real on-disk layout
  (:func:`specbench.codec.tiny.write_tiny_codec`);
- ``heads.pt``: UNTRAINED draft heads for the target (copies of its speech-space LM head);
- ``tiny.json``: what was written (family, architecture, seed, codec path).

Quality numbers of such models are meaningless; every code path (template, cache, verification,
heads, groups, codec) is real. ``tiny:<family>[/target|draft|codec|heads]`` in a recipe names these
files under ``$SPECBENCH_TINY_DIR`` (default ``data/tiny``) and builds them on first use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from specbench.errors import ConfigError
from specbench.targets.families import load_family

TINY_PREFIX = "tiny:"
TINY_PARTS = ("target", "draft", "codec", "heads")
ARCHS = ("llama", "qwen2")
_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A small model that writes speech one token at a time.",
    "Speculative decoding drafts several tokens and verifies them at once.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "Numbers like 1, 2, 3 and 2026 appear in text too!",
]
# Llama-3 style chat layout (header tokens, content trimmed, end-of-turn token after each message)
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
_CHAT_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def tiny_root() -> Path:
    """Where ``tiny:`` specs live: ``$SPECBENCH_TINY_DIR`` or ``data/tiny`` (relative to the working directory)."""
    return Path(os.environ.get("SPECBENCH_TINY_DIR", "data/tiny"))


def _build_tokenizer(family: Any) -> Any:
    """A byte-level BPE tokenizer with the family's special tokens and speech block (in id order)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [family.layout or "", family.user or "", family.assistant or "", family.end_of_speech]
    named = []
    for t in texts:
        for m in re.findall(r"<\|[^<>|]+\|>|<[a-z_]+_\d+>", t):
            if m not in named and m not in _CHAT_TOKENS:
                named.append(m)
    # tokens numbered like the speech block (Orpheus' <custom_token_N>): the ones below the block come first, in order
    prefix = family.speech_token.split("{}")[0]
    numbered = [family.speech_token.replace("{}", str(i)) for i in range(family.speech_token_offset)]
    specials = _CHAT_TOKENS + [t for t in named if not t.startswith(prefix)] + numbered
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=specials, show_progress=False)
    tok.train_from_iterator(_SENTENCES * 4, trainer)
    tok.add_special_tokens([family.token_string(i) for i in range(family.speech_vocab)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>", pad_token="<|eot_id|>")
    if family.chat:
        fast.chat_template = LLAMA3_CHAT_TEMPLATE
    return fast


def _build_model(arch: str, vocab: int, layers: int, hidden: int, seed: int, tokenizer: Any, shape: dict[str, int] | None = None) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = shape or {}
    common = dict(
        vocab_size=max(vocab, shape.get("vocab_size", 0)),  # a larger table than the tokenizer mimics a real vocabulary's cost
        hidden_size=hidden,
        intermediate_size=shape.get("intermediate_size", 2 * hidden),
        num_hidden_layers=layers,
        num_attention_heads=shape.get("heads", 4),
        num_key_value_heads=shape.get("kv_heads", 2),
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**common))
    return Qwen2ForCausalLM(Qwen2Config(**common))


def write_tiny_lm(
    family: str,
    out: str | Path,
    *,
    arch: str = "llama",
    layers: int = 2,
    hidden: int = 64,
    seed: int = 0,
    tokenizer: Any = None,
    shape: dict[str, int] | None = None,
) -> Path:
    """One random causal-LM directory (config, safetensors weights, tokenizer) for ``family``.

    ``shape`` may set ``heads``, ``kv_heads``, ``intermediate_size`` and ``vocab_size`` (e.g. Llama-3.2-1B's
    32/8/8192/193,800 for timing a real-sized model); defaults give a tiny model.
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown --arch '{arch}': choose {' or '.join(ARCHS)}")
    tok = tokenizer if tokenizer is not None else _build_tokenizer(load_family(family))
    model = _build_model(arch, len(tok), layers, hidden, seed, tok, shape)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return Path(out)


def make_tiny_model(
    family: str,
    out: str | Path,
    *,
    arch: str = "llama",
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    shape: dict[str, int] | None = None,
    overwrite: bool = False,
) -> dict[str, str]:
    """Write a tiny random model directory set for ``family`` under ``out`` (see the module docstring).

    Built in a temporary sibling folder and renamed into place, so a crash never leaves half a model.
    Returns the ``tiny.json`` content: paths of target, draft, codec and heads.
    """
    from specbench.codec import load_codec
    from specbench.models.heads import DraftHeads, save_heads

    if arch not in ARCHS:
        raise ConfigError(f"unknown --arch '{arch}': choose {' or '.join(ARCHS)}")
    if layers < 2:
        raise ConfigError("--layers must be >= 2 (the draft is a 1-layer model and layers:1 a layer subset)")
    fam = load_family(family)
    out = Path(out)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists: pass --overwrite to replace it, or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        # the built-in codec ships with specbench: a family over it (a user YAML) needs no random codec
        codec_path: str | Path = "builtin:kmeans-mel-1024"
        if fam.codec != "kmeans-mel":
            from specbench.codec.tiny import write_tiny_codec

            codec_path = write_tiny_codec(fam.codec, tmp / "codec", seed=seed)
        codec = load_codec(fam.codec, str(codec_path))
        if codec.vocab_size != fam.speech_vocab:
            raise ConfigError(f"the tiny {fam.codec} codec has {codec.vocab_size} tokens but family {fam.name} expects {fam.speech_vocab}")
        tok = _build_tokenizer(fam)
        for name, n_layers, s in (("target", layers, seed), ("draft", 1, seed + 1)):
            write_tiny_lm(family, tmp / name, arch=arch, layers=n_layers, hidden=hidden, seed=s, tokenizer=tok, shape=shape)
        from specbench.targets.hf_causal import load_hf_causal

        target = load_hf_causal(str(tmp / "target"), family, torch.device("cpu"))
        heads = DraftHeads.from_target(target, n_heads=4)
        final_target_id = target.id.replace(tmp.name, out.name)  # the id names the folder it will live in
        save_heads(heads, tmp / "heads.pt", final_target_id, codec.id, {"role": "heads", "untrained": True, "note": "LM-head copies (make-tiny-model)"})
        rel_codec = codec_path if isinstance(codec_path, str) else Path(codec_path).relative_to(tmp)
        info = {
            "family": fam.name,
            "arch": arch,
            "seed": seed,
            "layers": layers,
            "hidden": hidden,
            "target": "target",
            "draft": "draft",
            "codec": str(rel_codec),
            "heads": "heads.pt",
        }
        (tmp / "tiny.json").write_text(json.dumps(info, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def resolve_tiny(spec: str | Path) -> Path:
    """``tiny:<family>[/<part>]`` → the path of that part under :func:`tiny_root` (built on first use);
    any other spec is returned as a path."""
    s = str(spec)
    if not s.startswith(TINY_PREFIX):
        return Path(s).expanduser()
    family, _, part = s[len(TINY_PREFIX) :].partition("/")
    part = part or "target"
    if part not in TINY_PARTS:
        raise ConfigError(f"'{s}': the part after the family must be one of {', '.join(TINY_PARTS)}")
    root = tiny_root() / family
    if not (root / "tiny.json").is_file():
        print(f"building the tiny random {family} model in {root} (offline, a few seconds) ...", file=sys.stderr)
        make_tiny_model(family, root, overwrite=root.exists())
    info = json.loads((root / "tiny.json").read_text())
    return Path(info[part]) if str(info[part]).startswith("builtin:") else root / info[part]
