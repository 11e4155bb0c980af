"""Recipe and training-config validation: every problem is a one-line ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from specbench.config import (
    MODEL_PRESETS,
    RunConfig,
    TrainTargetConfig,
    apply_overrides,
    load_config,
    load_recipe,
    parse_value,
    read_yaml,
)
from specbench.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


def minimal(**extra: Any) -> dict[str, Any]:
    return {"name": "t", **extra}


def write(tmp_path: Path, data: Any, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return p


def config_error(fn: Any, *args: Any, **kwargs: Any) -> str:
    """Call ``fn`` expecting a ConfigError; return its (checked one-line) message."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
    return msg


# ---- the shipped recipe --------------------------------------------------------------------------
def test_quickstart_recipe_validates() -> None:
    cfg = load_recipe(QUICKSTART)
    assert isinstance(cfg, RunConfig)
    assert cfg.name == "quickstart"
    assert cfg.sampling.temperature == 0.0
    assert [d.name for d in cfg.decoders] == ["baseline"]
    assert cfg.corpus.kind == "synthetic" and cfg.corpus.limit == 40
    assert cfg.resolved_output_dir() == Path("runs/quickstart")


def test_quickstart_with_overrides() -> None:
    cfg = load_recipe(QUICKSTART, ["sampling.temperature=0.8", "corpus.limit=4", "output_dir=/tmp/x"])
    assert cfg.sampling.temperature == 0.8 and cfg.corpus.limit == 4
    assert cfg.resolved_output_dir() == Path("/tmp/x")


def test_output_dir_defaults_to_runs_name(tmp_path: Path) -> None:
    assert load_recipe(write(tmp_path, minimal())).resolved_output_dir() == Path("runs/t")


# ---- unknown keys --------------------------------------------------------------------------------
def test_unknown_top_level_key_named(tmp_path: Path) -> None:
    msg = config_error(load_recipe, write(tmp_path, minimal(decodrs=[])))
    assert "decodrs" in msg and "unknown key" in msg


def test_nested_typo_named(tmp_path: Path) -> None:
    msg = config_error(load_recipe, write(tmp_path, minimal(sampling={"temprature": 0.5})))
    assert "sampling.temprature" in msg


def test_typo_inside_list_item_named(tmp_path: Path) -> None:
    msg = config_error(load_recipe, write(tmp_path, minimal(decoders=[{"name": "a", "methd": "baseline"}])))
    assert "decoders.0.methd" in msg


def test_typo_via_override_named() -> None:
    msg = config_error(load_recipe, QUICKSTART, ["scoring.asr.bakend=embedded"])
    assert "scoring.asr.bakend" in msg


# ---- bad values ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "key"),
    [
        (minimal(sampling={"temperature": -0.1}), "sampling.temperature"),
        (minimal(sampling={"top_p": 0}), "sampling.top_p"),
        (minimal(sampling={"top_p": 1.5}), "sampling.top_p"),
        (minimal(sampling={"max_tokens": 0}), "sampling.max_tokens"),
        (minimal(device="gpu"), "device"),
        (minimal(decoders=[]), "decoders"),
        (minimal(decoders=[{"name": "a"}, {"name": "b"}, {"name": "a"}]), "decoders"),
        (minimal(decoders=[{"name": "a", "method": "medusa-nonexistent"}]), "decoders.0.method"),
        (minimal(decoders=[{"name": "has space"}]), "decoders.0.name"),
        (minimal(corpus={"kind": "manifest"}), "corpus"),
        (minimal(corpus={"kind": "librispeech"}), "corpus.kind"),
        (minimal(corpus={"limit": 0}), "corpus.limit"),
        (minimal(repeats=0), "repeats"),
        (minimal(scoring={"normalizer": "nope"}), "scoring.normalizer"),
        (minimal(seed="abc"), "seed"),
        ({"seed": 1}, "name"),
    ],
    ids=[
        "neg-temperature",
        "top_p-0",
        "top_p-1.5",
        "max_tokens-0",
        "device-gpu",
        "empty-decoders",
        "dup-decoders",
        "unknown-method",
        "bad-decoder-name",
        "manifest-without-path",
        "bad-corpus-kind",
        "limit-0",
        "repeats-0",
        "bad-normalizer",
        "seed-str",
        "missing-name",
    ],
)
def test_bad_values(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    msg = config_error(load_recipe, write(tmp_path, data))
    assert key in msg
    assert str(tmp_path / "r.yaml") in msg  # the source file is named


def test_duplicate_decoder_names_listed(tmp_path: Path) -> None:
    msg = config_error(load_recipe, write(tmp_path, minimal(decoders=[{"name": "x"}, {"name": "x"}])))
    assert "unique" in msg and "x" in msg


def test_manifest_kind_needs_manifest(tmp_path: Path) -> None:
    msg = config_error(load_recipe, write(tmp_path, minimal(corpus={"kind": "manifest"})))
    assert "corpus.manifest" in msg
    cfg = load_recipe(write(tmp_path, minimal(corpus={"kind": "manifest", "manifest": "m.jsonl"})))
    assert cfg.corpus.manifest == "m.jsonl"


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_good_devices(tmp_path: Path, device: str) -> None:
    assert load_recipe(write(tmp_path, minimal(device=device))).device == device


def test_many_problems_counted_on_one_line(tmp_path: Path) -> None:
    msg = config_error(load_recipe, write(tmp_path, minimal(device="gpu", repeats=0, sampling={"top_p": 0})))
    assert "more problems" in msg


# ---- files and YAML ------------------------------------------------------------------------------
def test_missing_recipe_file(tmp_path: Path) -> None:
    msg = config_error(load_recipe, tmp_path / "nope.yaml")
    assert "not found" in msg and "nope.yaml" in msg


def test_invalid_yaml_has_line_info(tmp_path: Path) -> None:
    p = write(tmp_path, "name: t\nsampling: {temperature: 0.5\ndecoders: [a\n")
    msg = config_error(load_recipe, p)
    assert "not valid YAML" in msg and "line" in msg and str(p) in msg


def test_yaml_with_control_character_has_line_info(tmp_path: Path) -> None:
    p = tmp_path / "ctrl.yaml"
    p.write_text("name: t\nseed: 1\ncomment: a\x07b\n", encoding="utf-8")
    msg = config_error(load_recipe, p)
    assert "not valid YAML" in msg and "line 3" in msg


def test_binary_recipe_file(tmp_path: Path) -> None:
    p = tmp_path / "audio.yaml"
    p.write_bytes(b"RIFF\xff\xfe\x00\x81garbage\x00\x00")
    msg = config_error(load_recipe, p)
    assert str(p) in msg and "UTF-8" in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"], ids=["list", "str", "int"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    msg = config_error(load_recipe, write(tmp_path, text))
    assert "mapping" in msg


def test_empty_file_is_empty_mapping(tmp_path: Path) -> None:
    assert read_yaml(write(tmp_path, "")) == {}
    msg = config_error(load_recipe, write(tmp_path, ""))  # but a recipe needs a name
    assert "name" in msg


# ---- --set overrides -----------------------------------------------------------------------------
def test_override_nested_and_creates_missing_parents() -> None:
    data: dict[str, Any] = {"sampling": {"temperature": 0.0}}
    apply_overrides(data, ["sampling.temperature=0.5", "scoring.asr.backend=faster-whisper"])
    assert data == {"sampling": {"temperature": 0.5}, "scoring": {"asr": {"backend": "faster-whisper"}}}


def test_override_list_index() -> None:
    data: dict[str, Any] = {"decoders": [{"name": "a"}, {"name": "b"}]}
    apply_overrides(data, ["decoders.0.name=x", "decoders.1.method=baseline"])
    assert data["decoders"] == [{"name": "x"}, {"name": "b", "method": "baseline"}]
    apply_overrides(data, ["decoders.1={name: y}"])
    assert data["decoders"][1] == {"name": "y"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("-2", -2),
        ("0.7", 0.7),
        ("1.0e-3", 1e-3),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[1, 2]", [1, 2]),
        ("{a: 1}", {"a": 1}),
        ("hello", "hello"),
        ("'3'", "3"),
        ("a=b", "a=b"),
        ("[unclosed", "[unclosed"),
    ],
)
def test_override_values_are_yaml_typed(text: str, value: Any) -> None:
    assert parse_value(text) == value
    data: dict[str, Any] = {}
    apply_overrides(data, [f"x.y={text}"])
    assert data == {"x": {"y": value}}
    assert type(data["x"]["y"]) is type(value)


def test_override_exponent_without_dot_still_validates_as_float() -> None:
    # YAML 1.1 reads "1e-3" as a string; float fields still accept it after validation
    assert load_recipe(QUICKSTART, ["sampling.temperature=1e-3"]).sampling.temperature == pytest.approx(1e-3)
    assert load_config(TrainTargetConfig, None, ["lr=3e-4"]).lr == pytest.approx(3e-4)


def test_override_value_may_contain_equals() -> None:
    assert apply_overrides({}, ["output_dir=runs/a=b"]) == {"output_dir": "runs/a=b"}


def test_overrides_then_validated(tmp_path: Path) -> None:
    # an index into a list the file does not have is still caught, on one line
    assert "decoders" in config_error(load_recipe, write(tmp_path, minimal(), "bare.yaml"), ["decoders.0.name=x"])
    p = write(tmp_path, minimal(decoders=[{"name": "baseline"}]))
    cfg = load_recipe(p, ["seed=7", "sampling.top_k=20", "decoders.0.name=base2", "scoring.enabled=false"])
    assert cfg.seed == 7 and cfg.sampling.top_k == 20 and cfg.decoders[0].name == "base2" and not cfg.scoring.enabled
    assert "sampling.temperature" in config_error(load_recipe, p, ["sampling.temperature=-1"])
    assert "seed" in config_error(load_recipe, p, ["seed=[1, 2]"])


@pytest.mark.parametrize(
    "override",
    [
        "sampling.temperature",
        "noequals",
        "=3",
        "...=3",
        "decoders.5.name=x",
        "decoders.-1.name=x",
        "decoders.first.name=x",
        "seed.x=1",
        "seed.x.y=1",
        "name.x=1",
    ],
)
def test_malformed_overrides(override: str) -> None:
    data = {"name": "t", "seed": 0, "decoders": [{"name": "a"}]}
    msg = config_error(apply_overrides, data, [override])
    assert override.split("=")[0] in msg or override in msg


def test_override_index_out_of_range_names_length() -> None:
    msg = config_error(apply_overrides, {"decoders": [{"name": "a"}]}, ["decoders.1.name=x"])
    assert "'1'" in msg and "list of 1" in msg


def test_malformed_override_via_load_recipe() -> None:
    msg = config_error(load_recipe, QUICKSTART, ["sampling.temperature"])
    assert "key.path=value" in msg


# ---- training configs ----------------------------------------------------------------------------
def test_train_target_rejects_unknown_model_keys() -> None:
    msg = config_error(load_config, TrainTargetConfig, None, ["model.d_modle=128"])
    assert "d_modle" in msg and "d_model" in msg  # names the typo and the allowed keys
    # fixed by the vocabularies of the codec and text front end: not user-settable
    assert "speech_vocab" in config_error(load_config, TrainTargetConfig, None, ["model.speech_vocab=8"])


def test_train_target_unknown_top_key_and_bad_values(tmp_path: Path) -> None:
    assert "stepz" in config_error(load_config, TrainTargetConfig, write(tmp_path, {"stepz": 3}))
    assert "preset" in config_error(load_config, TrainTargetConfig, None, ["preset=huge"])
    assert "precision" in config_error(load_config, TrainTargetConfig, None, ["precision=fp16"])
    assert "device" in config_error(load_config, TrainTargetConfig, None, ["device=tpu"])
    assert "lr" in config_error(load_config, TrainTargetConfig, None, ["lr=0"])


def test_lm_config_merges_preset_and_overrides() -> None:
    tc = load_config(TrainTargetConfig, None, ["preset=tiny", "model.n_layers=3", "model.dropout=0.1"])
    cfg = tc.lm_config(speech_vocab=32)
    assert cfg == {**MODEL_PRESETS["tiny"], "n_layers": 3, "dropout": 0.1, "speech_vocab": 32}
    assert cfg["d_model"] == MODEL_PRESETS["tiny"]["d_model"]
    assert TrainTargetConfig(preset="base").lm_config(1024) == {**MODEL_PRESETS["base"], "speech_vocab": 1024}
    # the merged mapping builds a real model config
    from specbench.models.codec_lm import ModelConfig

    mc = ModelConfig(**cfg)
    assert (mc.n_layers, mc.speech_vocab, mc.d_model) == (3, 32, 64)


def test_shipped_train_configs_validate() -> None:
    """configs/train/<job>-*.yaml validate against the schema of `specbench train <job>`."""
    import specbench.config as config_module

    schemas = {"codec": "TrainCodecConfig", "target": "TrainTargetConfig", "draft": "TrainDraftConfig", "heads": "TrainHeadsConfig"}
    configs = sorted((REPO / "configs" / "train").glob("*.yaml"))
    assert configs
    for p in configs:
        job = p.stem.removeprefix("libritts-").split("-")[0]  # libritts-<job>-*.yaml are GPU variants
        assert job in schemas, f"{p.name}: no schema known for a '{job}' training config"
        load_config(getattr(config_module, schemas[job]), p)


def test_draft_alone_and_draft_alignment_settings(tmp_path: Path) -> None:
    """A baseline may name a draft (it then runs alone); draft_alignment belongs to a draft chain only."""
    ok = load_recipe(
        write(
            tmp_path,
            minimal(decoders=[{"name": "a", "preset": "baseline", "draft": "d.pt"}, {"name": "s", "preset": "sd", "draft": "d.pt", "draft_alignment": "own"}]),
        )
    )
    alone, sd = ok.decoders
    assert alone.method == "baseline" and alone.draft == "d.pt" and alone.params()["draft_alignment"] is None
    assert sd.params()["draft_alignment"] == "own"
    msg = config_error(load_recipe, write(tmp_path, minimal(decoders=[{"name": "v", "preset": "vadusa", "heads": "h.pt", "draft_alignment": "own"}])))
    assert "draft_alignment applies to the draft-chain proposer" in msg
    msg = config_error(load_recipe, write(tmp_path, minimal(decoders=[{"name": "b", "preset": "baseline", "heads": "h.pt"}])))
    assert "a baseline takes no" in msg
    msg = config_error(load_recipe, write(tmp_path, minimal(decoders=[{"name": "s", "preset": "sd", "draft": "d.pt", "draft_alignment": "mine"}])))
    assert "draft_alignment" in msg
