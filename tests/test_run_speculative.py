"""A speculative decoder through the whole runner: records, summary columns, greedy equivalence."""

from __future__ import annotations

import json

import yaml
from conftest import tiny_recipe
from typer.testing import CliRunner

from specbench.cli import app
from specbench.targets.builtin import as_target


def test_speculative_decoders_in_a_run(tiny_assets, tmp_path) -> None:
    out = tmp_path / "run"
    model = str(tiny_assets["model"])
    recipe = tiny_recipe(
        tiny_assets,
        out,
        decoders=[
            {"name": "baseline"},
            {"name": "self", "preset": "sd", "draft": model, "gamma": 3},
            {"name": "ssd", "preset": "ssd", "draft": model, "sweep": {"gamma": [2]}},
        ],
        scoring={"enabled": False},
    )
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    by = {(r["decoder"], r["utt_id"]): r for r in rows if r["kind"] == "decoder"}
    names = {r["decoder"] for r in rows if r["kind"] == "decoder"}
    assert names == {"baseline", "self", "ssd_gamma2"}
    for (dec, utt), r in by.items():
        if dec == "self":  # the target drafting for itself under greedy: every draft accepted, same audio tokens
            assert r["accepted"] == r["proposed"] > 0
            assert r["tokens"] == by[("baseline", utt)]["tokens"]
            assert r["rule"] == "exact" and r["gamma"] == 3
    summary = (out / "summary.csv").read_text()
    assert "accept_at_pos" in summary and "ssd_gamma2" in summary


def test_vadusa_pcg_and_combinations_in_a_run(tiny_assets, tmp_path) -> None:
    """Heads tree × tolerance, heads chain (sampled) × beta, sampled heads tree × exact (recursive
    rejection) and × group, draft chain × group, draft chain × typical:
    all run end to end; greedy lossless controls reproduce the baseline tokens; calibrate-tree works."""
    import numpy as np
    import torch

    from specbench.models.heads import DraftHeads, save_heads
    from specbench.models.lm_io import load_lm

    model = str(tiny_assets["model"])
    target, ck = load_lm(model)
    torch.manual_seed(0)
    heads = DraftHeads.from_target(as_target(target), n_heads=3)
    heads_path = tmp_path / "heads.pt"
    save_heads(heads, heads_path, model, ck["codec_id"], {})
    out = tmp_path / "run"
    recipe = tiny_recipe(
        tiny_assets,
        out,
        decoders=[
            {"name": "baseline"},
            {"name": "tree_greedy", "method": "speculative", "proposer": "heads-tree", "rule": "greedy", "heads": str(heads_path), "tree": "dense-small"},
            {"name": "vadusa", "preset": "vadusa", "heads": str(heads_path), "tree": "dense-small", "tau": 2},
            {
                "name": "hchain",
                "method": "speculative",
                "proposer": "heads-chain",
                "candidates": "sample",
                "rule": "beta",
                "beta": 0.2,
                "heads": str(heads_path),
            },
            {
                "name": "tree_rrs",
                "method": "speculative",
                "proposer": "heads-tree",
                "candidates": "sample",
                "rule": "exact",
                "heads": str(heads_path),
                "tree": "dense-small",
            },
            {
                "name": "tree_group",
                "method": "speculative",
                "proposer": "heads-tree",
                "candidates": "sample",
                "rule": "group",
                "theta": 1.0,
                "heads": str(heads_path),
                "tree": "dense-small",
            },
            {"name": "pcg", "preset": "pcg", "draft": model, "sweep": {"theta": [0.3, 1.0]}},
            {"name": "typ", "method": "speculative", "proposer": "draft-chain", "rule": "typical", "draft": model},
        ],
        scoring={"enabled": False},
    )
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = CliRunner().invoke(app, ["run", str(path)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    by = {(r["decoder"], r["utt_id"]): r for r in rows if r["kind"] == "decoder"}
    assert {d for d, _ in by} == {"baseline", "tree_greedy", "vadusa", "hchain", "tree_rrs", "tree_group", "pcg_theta0.3", "pcg_theta1", "typ"}
    for (dec, utt), r in by.items():
        base = np.load(out / by[("baseline", utt)]["audio"].replace(".wav", ".tokens.npy"))
        mine = np.load(out / r["audio"].replace(".wav", ".tokens.npy"))
        if dec in ("tree_greedy", "tree_rrs", "tree_group", "pcg_theta1", "typ"):  # greedy sampling: all these are lossless
            assert np.array_equal(mine, base), dec
        if dec == "vadusa":
            assert r["rule"] == "tolerance-sample" and r["tau"] == 2 and r["tree"] == "dense-small" and r["gamma"] is None
        if dec.startswith("pcg") or dec == "tree_group":
            assert r["theta"] in (0.3, 1.0) and r["proposer"] == ("heads-tree" if dec == "tree_group" else "draft-chain")
            # the group statistics of the decoder's θ travel with every record (paper table columns)
            assert r["group_mean_size"] >= 1 and r["group_max_size"] >= r["group_median_size"] >= 1 and 0 <= r["group_coverage"] <= 1
            if r["theta"] == 1.0:
                assert r["group_mean_size"] == 1 and r["group_coverage"] == 0
        else:
            assert not any(k.startswith("group_") for k in r), dec
    summary = (out / "summary.csv").read_text()
    assert "theta" in summary and "tree" in summary and "group_mean_size" in summary
    # PCG stress test on the baseline outputs: swapped tokens are re-decoded and scored
    res = CliRunner().invoke(app, ["stress-groups", str(out), "--theta", "0.0", "--fraction", "1.0"])
    assert res.exit_code == 0, res.output
    import pandas as pd

    stress = pd.read_csv(out / "stress" / "theta0-f1" / "summary.csv").iloc[0]
    assert stress["n"] == 2 and 0 < stress["swapped_share"] <= 1 and -1 <= stress["delta_sim"] <= 1
    res = CliRunner().invoke(app, ["stress-groups", str(out), "--decoder", "nope"])
    assert res.exit_code == 2 and "no 'nope' rows" in res.output
    # calibrate-tree on the same recipe writes trees that a decoder can load
    res = CliRunner().invoke(
        app,
        ["calibrate-tree", str(path), "--heads", str(heads_path), "--budget", "3", "--budget", "5", "--out-dir", str(tmp_path / "trees"), "--rule", "greedy"],
    )
    assert res.exit_code == 0, res.output
    tree = json.loads((tmp_path / "trees" / "vadusa-5.json").read_text())
    assert len(tree["paths"]) == 5 and tree["expected_accepted_len"] >= 1 and len(tree["acc"]) == 3


def test_incompatible_proposer_rule_pairs_are_config_errors(tiny_assets, tmp_path) -> None:
    model = str(tiny_assets["model"])
    bad = [
        ({"name": "x", "method": "speculative", "proposer": "heads-tree", "rule": "beta", "heads": "h.pt", "tree": "dense-small"}, "sampled"),
        ({"name": "x", "method": "speculative", "proposer": "heads-tree", "rule": "group", "heads": "h.pt", "tree": "dense-small"}, "sampled"),
        ({"name": "x", "method": "speculative", "proposer": "heads-tree", "rule": "tolerance", "heads": "h.pt"}, "tree"),
        ({"name": "x", "method": "speculative", "proposer": "draft-chain", "rule": "exact", "draft": model, "candidates": "sample"}, "heads proposers"),
        (
            {"name": "x", "method": "speculative", "proposer": "heads-tree", "rule": "beta", "heads": "h.pt", "tree": "dense-small", "candidates": "sample"},
            "verifies chains only",
        ),
    ]
    for dec, msg in bad:
        path = tmp_path / "r.yaml"
        path.write_text(yaml.safe_dump(tiny_recipe(tiny_assets, tmp_path / "o", decoders=[{"name": "baseline"}, dec])))
        res = CliRunner().invoke(app, ["run", str(path)])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, res.output


def test_bench_reports_ratios_overhead_and_tree_verify_cost(tiny_assets, tmp_path) -> None:
    import torch

    from specbench.models.heads import DraftHeads, save_heads
    from specbench.models.lm_io import load_lm

    model = str(tiny_assets["model"])
    target, ck = load_lm(model)
    torch.manual_seed(0)
    heads_path = tmp_path / "heads.pt"
    save_heads(DraftHeads.from_target(as_target(target), n_heads=3), heads_path, model, ck["codec_id"], {})
    recipe = tiny_recipe(
        tiny_assets,
        tmp_path / "bench",
        decoders=[
            {"name": "baseline"},
            {"name": "sd", "preset": "sd", "draft": model},
            {"name": "vadusa", "preset": "vadusa", "heads": str(heads_path), "tree": "dense-small"},
        ],
        scoring={"enabled": False},
    )
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(recipe))
    md = tmp_path / "bench.md"
    res = CliRunner().invoke(app, ["bench", str(path), "--out", str(md)])
    assert res.exit_code == 0, res.output
    text = md.read_text()
    for needle in ("loop_overhead", "draft_cost_c", "vadusa", "tree dense-small", "cost_vs_1", "cache_slots"):
        assert needle in text, needle


def test_verify_cost_is_timed_after_the_history() -> None:
    """The verify forwards attend to the prompt plus ``history`` appended tokens, and leave them in place."""
    import torch

    from specbench.bench.speed import verify_cost
    from specbench.models.codec_lm import CodecLM, ModelConfig
    from specbench.targets.builtin import context_from_ids

    torch.manual_seed(0)
    cfg = ModelConfig(speech_vocab=24, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_text_len=32, max_speech_len=256)

    class M:  # the two fields verify_cost reads off the bench's models
        target = as_target(CodecLM(cfg).eval())
        device = torch.device("cpu")

    ctx = context_from_ids(torch.arange(2, 10), torch.arange(6))
    short, n0 = verify_cost(M, ctx, sizes=(1, 4), reps=2)
    long, n1 = verify_cost(M, ctx, sizes=(1, 4), reps=2, history=40)
    assert n0 == 8 + 1 + 6 and n1 == n0 + 40
    assert set(short) == set(long) == {"1", "4"} and long["4"][0] == 4 and long["4"][1] > 0


def test_draft_alone_row_runs_the_draft_in_the_targets_place(tiny_assets, tmp_path) -> None:
    """``method: baseline`` + ``draft`` = the draft model decoding alone: token for token what a run with that
    draft as the model gives (same per-utterance seeds, sampled), while the reference baseline stays the
    draft-less one even when the draft-alone row is listed first and the report records which draft ran."""
    import numpy as np
    import pandas as pd

    from specbench.config import TrainDraftConfig
    from specbench.models.train import train_lm

    tc = tiny_assets["train_config"]
    draft = train_lm(
        TrainDraftConfig(
            **{**tc.model_dump(), "out_dir": str(tmp_path / "draft"), "steps": 2, "eval_every": 2, "save_every": 2},
            init="target-layers",
            target=str(tiny_assets["model"]),
            layers=[1],
            trainable=["head"],
        ),
        log=lambda *_: None,
    )
    sampling = {"temperature": 0.8, "top_k": 8, "max_tokens": 30}
    runs = {
        "mixed": [{"name": "draft_alone", "method": "baseline", "draft": str(draft)}, {"name": "baseline"}],
        "as_model": [{"name": "baseline"}],
    }
    for name, decoders in runs.items():
        recipe = tiny_recipe(tiny_assets, tmp_path / name, decoders=decoders, sampling=sampling, scoring={"enabled": False})
        if name == "as_model":
            recipe["model"] = {"checkpoint": str(draft)}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
        res = CliRunner().invoke(app, ["run", str(tmp_path / f"{name}.yaml")])
        assert res.exit_code == 0, res.output
    mixed = tmp_path / "mixed" / "audio"
    utts = sorted(p.name for p in (mixed / "draft_alone").glob("*.tokens.npy"))
    assert len(utts) == 2
    differs = 0
    for u in utts:
        alone = np.load(mixed / "draft_alone" / u)
        np.testing.assert_array_equal(alone, np.load(tmp_path / "as_model" / "audio" / "baseline" / u))
        differs += not np.array_equal(alone, np.load(mixed / "baseline" / u))
    assert differs  # the target's own rows are not the draft's
    summary = pd.read_csv(tmp_path / "mixed" / "summary.csv").set_index("decoder")
    assert summary.loc["draft_alone", "draft"] == str(draft) and pd.isna(summary.loc["baseline", "draft"])
    assert summary.loc["baseline", "speedup"] == 1.0  # the reference row is the target's baseline
