"""A speculative decoder through the whole runner: records, summary columns, greedy equivalence."""

from __future__ import annotations

import json

import yaml
from conftest import tiny_recipe
from typer.testing import CliRunner

from specbench.cli import app


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
