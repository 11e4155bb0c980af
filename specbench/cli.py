"""The ``specbench`` command line (Typer). Thin wrappers: every command calls one library function.

User-fixable problems (:class:`~specbench.errors.SpecbenchError`) print one line and exit 2;
Ctrl-C exits 130 after saying that finished rows are kept and a rerun resumes.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from specbench import __version__
from specbench.errors import SpecbenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Speculative decoding for codec-LM TTS: run, score and compare decoders.")
prepare_app = typer.Typer(no_args_is_help=True, help="Build corpus manifests (local LibriTTS, or the built-in synthetic corpus).")
train_app = typer.Typer(no_args_is_help=True, help="Fit the codec or train models.")
app.add_typer(prepare_app, name="prepare")
app.add_typer(train_app, name="train")
err_console = Console(stderr=True)
console = Console()
F = TypeVar("F", bound=Callable[..., Any])

SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a config key: a.b=value (repeatable).")]
ShardsOpt = Annotated[
    int,
    typer.Option(
        "--shards",
        min=1,
        help="Split the missing rows over N Ray workers (one GPU each when the device is CUDA, else one CPU); "
        "this process still writes every file. 1 = in this process, no Ray. Needs `pip install -e '.[ray]'`.",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="Join this running Ray cluster ('auto' or HOST:PORT) instead of starting one inside this process."),
]


def friendly(fn: F) -> F:
    """Turn SpecbenchError into a one-line message + exit 2, and Ctrl-C into exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecbenchError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: finished rows are saved; rerun the same command to resume", highlight=False)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        console.print(f"specbench {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False) -> None:
    """specbench: benchmark speculative decoders for codec-language-model TTS."""


def _recipe_or_run(target: Path, overrides: list[str] | None):
    from specbench.bench.runner import load_run_config
    from specbench.config import load_recipe

    if target.is_dir():
        return load_run_config(target, overrides)
    return load_recipe(target, overrides)


@app.command()
@friendly
def run(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see recipes/).")],
    set_: SetOpt = None,
    shards: ShardsOpt = 1,
    ray_address: RayAddressOpt = None,
) -> None:
    """Generate, score and report a recipe (resumable: a rerun skips finished rows)."""
    from specbench.bench.runner import run as run_recipe
    from specbench.config import load_recipe

    cfg = load_recipe(recipe, set_)
    run_recipe(cfg, log=console.print, shards=shards, ray_address=ray_address)


@app.command()
@friendly
def generate(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML.")],
    set_: SetOpt = None,
    shards: ShardsOpt = 1,
    ray_address: RayAddressOpt = None,
) -> None:
    """Only the generation step: tokens, stats, audio → records.jsonl."""
    from specbench.bench.runner import run as run_recipe
    from specbench.config import load_recipe

    run_recipe(load_recipe(recipe, set_), steps=("generate",), log=console.print, shards=shards, ray_address=ray_address)


@app.command()
@friendly
def score(
    target: Annotated[Path, typer.Argument(help="Recipe YAML or a run folder.")],
    set_: SetOpt = None,
    shards: ShardsOpt = 1,
    ray_address: RayAddressOpt = None,
) -> None:
    """Only the scoring step (WER, CER, SIM); rescoring with another scorer adds rows, never replaces."""
    from specbench.bench.runner import run as run_recipe

    run_recipe(_recipe_or_run(target, set_), steps=("score",), log=console.print, shards=shards, ray_address=ray_address)


@app.command()
@friendly
def report(
    targets: Annotated[list[Path], typer.Argument(help="Run folder(s) (or recipe YAML). Several: one combined table with a run column.")],
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the table to this .md (with a .csv and plots/ beside it).")] = None,
) -> None:
    """Only the report step: summary.csv, summary.md, plots/*.png and the table (several runs: one table)."""
    from specbench.bench.report import report_runs

    cfgs = [_recipe_or_run(t, set_) for t in targets]
    report_runs([(cfg.resolved_output_dir(), cfg) for cfg in cfgs], out, log=console.print)


@app.command()
@friendly
def bench(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML; its first decoder is the baseline.")],
    set_: SetOpt = None,
    out: Annotated[Path | None, typer.Option(help="Also write the tables as Markdown here.")] = None,
) -> None:
    """Time the recipe's decoders in one process (profiled forwards, loop overhead, verify cost); no scoring."""
    from specbench.bench.speed import run_bench
    from specbench.config import load_recipe

    run_bench(load_recipe(recipe, set_), out, console)


@app.command("calibrate-tree")
@friendly
def calibrate_tree_cmd(
    recipe: Annotated[Path, typer.Argument(help="Recipe giving corpus (use a held-out split, e.g. dev), codec, model and sampling.")],
    heads: Annotated[str, typer.Option(help="Heads checkpoint (from `specbench train heads`).")],
    budget: Annotated[list[int], typer.Option(help="Node budget (repeatable): one tree file per budget.")],
    rule: Annotated[str, typer.Option(help="greedy | tolerance | typical | exact")] = "tolerance",
    tau: Annotated[int, typer.Option(min=1, help="τ of the tolerance rule.")] = 3,
    tolerance: Annotated[str, typer.Option(help="sample | top (tolerance variant).")] = "sample",
    max_rank: Annotated[int, typer.Option(min=1, help="Candidates per head considered.")] = 8,
    out_dir: Annotated[Path, typer.Option(help="Where the tree files go.")] = Path("runs/trees"),
    name: Annotated[str, typer.Option(help="File name prefix: <name>-<budget>.json.")] = "vadusa",
    set_: SetOpt = None,
) -> None:
    """Measure each head's per-rank acceptance and grow sparse trees by expected accepted length."""
    from specbench.bench.calibrate_tree import calibrate_tree
    from specbench.config import load_recipe

    if tolerance not in ("sample", "top"):
        from specbench.errors import ConfigError

        raise ConfigError(f"--tolerance must be sample or top, not '{tolerance}'")
    calibrate_tree(
        load_recipe(recipe, set_),
        heads,
        rule=rule,
        tau=tau,
        tolerance=tolerance,
        budgets=budget,
        max_rank=max_rank,
        out_dir=out_dir,
        name=name,
        console=console,
    )


@app.command("stress-groups")
@friendly
def stress_groups_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (its decoder rows are perturbed).")],
    theta: Annotated[float, typer.Option(help="Group threshold θ (cosine).")] = 0.45,
    fraction: Annotated[float, typer.Option(min=0.0, max=1.0, help="Probability of swapping a token that has group mates.")] = 1.0,
    source: Annotated[str, typer.Option(help="input | output embedding table.")] = "input",
    decoder: Annotated[str, typer.Option(help="Which decoder's outputs to perturb.")] = "baseline",
    seed: Annotated[int, typer.Option(help="Seed of the swaps.")] = 0,
) -> None:
    """PCG stress test: swap tokens within their similarity groups, re-decode, report ΔWER and ΔSIM."""
    from rich.table import Table

    from specbench.bench.stress import stress_groups
    from specbench.errors import ConfigError

    if source not in ("input", "output"):
        raise ConfigError(f"--source must be input or output, not '{source}'")
    df = stress_groups(run_dir, theta=theta, source=source, fraction=fraction, decoder=decoder, seed=seed, console=console)
    table = Table(title=f"group stress test: {run_dir}")
    cols = ("theta", "fraction", "n", "swapped_share", "mean_group_size", "wer_orig", "wer_swapped", "delta_wer", "sim_orig", "sim_swapped", "delta_sim")
    for col in cols:
        table.add_column(col, justify="right")
    row = df.iloc[0]
    table.add_row(*(f"{row[c]:.4g}" if isinstance(row[c], float) else str(row[c]) for c in cols))
    console.print(table)


@prepare_app.command("libritts")
@friendly
def prepare_libritts(
    root: Annotated[Path, typer.Option(help="Local LibriTTS (or LibriTTS-R) folder holding the subset folder.")],
    subset: Annotated[str, typer.Option(help="Subset folder name, e.g. test-clean.")] = "test-clean",
    out: Annotated[Path | None, typer.Option(help="Manifest path (default ROOT/SUBSET.jsonl).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the choice of speaker prompts.")] = 0,
) -> None:
    """Build a JSONL manifest from a local LibriTTS tree (nothing is downloaded)."""
    from specbench.data.libritts import build_manifest

    m = build_manifest(root, subset, out, seed=seed)
    console.print(f"{len(m)} utterances, {len(m.speakers())} speakers → {m.path}")


@prepare_app.command("synthetic")
@friendly
def prepare_synthetic_cmd(
    out: Annotated[Path, typer.Option(help="Output folder (LibriTTS layout).")] = Path("data/synthetic"),
    splits: Annotated[str, typer.Option(help="Comma-separated splits: train,dev,test.")] = "train,dev,test",
    n_train: Annotated[int, typer.Option(help="Training sentences.")] = 9500,
    seed: Annotated[int, typer.Option(help="Seed for sentence split and speaker assignment.")] = 0,
    workers: Annotated[int, typer.Option(help="Parallel espeak-ng processes.")] = 2,
) -> None:
    """Synthesise the built-in multi-speaker corpus with espeak-ng (offline, deterministic, resumable)."""
    from specbench.data.synthetic import prepare_synthetic

    chosen = tuple(s.strip() for s in splits.split(",") if s.strip())
    manifests = prepare_synthetic(out, splits=chosen, n_train=n_train, seed=seed, workers=workers)
    for name, m in manifests.items():
        hours = sum(u.duration for u in m.utterances) / 3600
        console.print(f"{name}: {len(m)} utterances, {len(m.speakers())} speakers, {hours:.2f} h → {m.path}")


@train_app.command("codec")
@friendly
def train_codec(
    config: Annotated[Path | None, typer.Option(help="YAML config (see configs/train/).")] = None,
    set_: SetOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing codec file.")] = False,
) -> None:
    """Fit the built-in log-mel k-means codec (deterministic under its seed)."""
    from specbench.codec.fit import fit_codec
    from specbench.config import TrainCodecConfig, load_config

    cfg = load_config(TrainCodecConfig, config, set_)
    codec, seconds = fit_codec(cfg, overwrite=overwrite)
    console.print(f"codec {codec.id} fitted in {seconds:.1f} s → {cfg.out}")


@train_app.command("target")
@friendly
def train_target_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML config (see configs/train/).")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT_DIR/last.pt.")] = False,
) -> None:
    """Train the target codec LM on a manifest (progress bar, periodic checkpoints, --resume)."""
    from specbench.config import TrainTargetConfig, load_config
    from specbench.models.train import train_target

    cfg = load_config(TrainTargetConfig, config, set_)
    train_target(cfg, resume=resume, log=console.print)


@train_app.command("draft")
@friendly
def train_draft_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML config (see configs/train/draft-*.yaml).")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT_DIR/last.pt.")] = False,
) -> None:
    """Train a draft model: SSD-style from the target's layers (default) or a small one from scratch."""
    from specbench.config import TrainDraftConfig, load_config
    from specbench.models.train import train_lm

    cfg = load_config(TrainDraftConfig, config, set_)
    train_lm(cfg, resume=resume, log=console.print)


@train_app.command("heads")
@friendly
def train_heads_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML config (see configs/train/heads*.yaml).")] = None,
    set_: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT_DIR/last.pt.")] = False,
) -> None:
    """Train Medusa-style draft heads (VADUSA) on a target: frozen backbone (default) or joint fine-tuning."""
    from specbench.config import TrainHeadsConfig, load_config

    cfg = load_config(TrainHeadsConfig, config, set_)
    if cfg.target_model is not None:  # any backend (e.g. hf-causal), frozen
        from specbench.models.train_heads_target import train_heads_on_target

        train_heads_on_target(cfg, resume=resume, log=console.print)
        return
    from specbench.models.train_heads import train_heads

    train_heads(cfg, resume=resume, log=console.print)


@app.command("build-groups")
@friendly
def build_groups_cmd(
    model: Annotated[
        str, typer.Option(help="Codec-LM checkpoint whose table defines the groups (builtin:NAME or a path); with --family a local HF model directory.")
    ] = "builtin:target-small-25hz",
    family: Annotated[
        str | None, typer.Option(help="Family template (llasa, orpheus, a YAML file): --model is then a Hugging Face model directory (backend hf-causal).")
    ] = None,
    theta: Annotated[float, typer.Option(help="Cosine threshold θ: G_k = {t : cos(E_k, E_t) > θ} ∪ {k}; θ ≥ 1 gives singletons.")] = 0.45,
    source: Annotated[str, typer.Option(help="Table: input (token embeddings of the output tokens) or output (head rows).")] = "input",
    weighting: Annotated[str, typer.Option(help="Split of a token shared by groups: uniform (1/|S(t)|) or cosine.")] = "uniform",
    out: Annotated[Path | None, typer.Option(help="Save the groups here (a 'groups' file).")] = None,
    random_vocab: Annotated[int | None, typer.Option(help="Build on a random N×D table instead of a model (scale measurement).")] = None,
    dim: Annotated[int | None, typer.Option(help="D of the random table (with --random-vocab; default 1024).")] = None,
    chunk: Annotated[int | None, typer.Option(help="Rows scored per block (default: a block of ~16 M scores).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random table.")] = 0,
) -> None:
    """Build PCG Acoustic Similarity Groups from a model's embedding table and print their statistics."""
    import resource

    import torch
    from rich.table import Table

    from specbench.decoding.groups import build_groups, model_table
    from specbench.errors import ConfigError

    if source not in ("input", "output"):
        raise ConfigError(f"unknown --source '{source}': use input or output")
    if random_vocab is None and dim is not None:
        raise ConfigError("--dim only applies with --random-vocab N: add --random-vocab or drop --dim")
    if random_vocab is not None:
        d = 1024 if dim is None else dim
        if random_vocab < 1 or d < 1:
            raise ConfigError(f"--random-vocab and --dim must be >= 1, got {random_vocab} and {d}")
        table, special, what, src = torch.randn(random_vocab, d, generator=torch.Generator().manual_seed(seed)), [], f"random {random_vocab}×{d}", "random"
    else:
        from specbench.config import ModelRef
        from specbench.targets import load_target

        ref = ModelRef(backend="hf-causal", path=model, family=family) if family else ModelRef(checkpoint=model)
        lm = load_target(ref, "cpu")
        table, special, what, src = model_table(lm, source), [lm.eos], f"{lm.id} ({source} table)", source  # type: ignore[arg-type]
    # ru_maxrss is a high-water mark (KiB on Linux): its growth across the build is the build's peak
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    groups = build_groups(table, theta, special=special, weighting=weighting, chunk=chunk, source=src)  # type: ignore[arg-type]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    st = groups.stats()
    grid = Table(show_header=True, header_style="bold", title=f"groups of {what}, θ={theta:g}, {weighting}")
    grid.add_column("stat")
    grid.add_column("value", justify="right")
    rows = [
        ("vocabulary", f"{st['vocab']}"),
        ("mean group size", f"{st['mean_size']:.3f}"),
        ("median group size", f"{st['median_size']:g}"),
        ("max group size", f"{st['max_size']}"),
        ("coverage (|G_k| > 1)", f"{100 * st['coverage']:.1f}%"),
        ("nnz", f"{st['nnz']}"),
        ("stored MB", f"{st['memory_bytes'] / 2**20:.2f}"),
        ("build seconds", f"{st['build_seconds']:.2f}"),
        ("peak RSS increase MB", f"{max(0, rss_after - rss_before) / 1024:.1f}"),
        ("peak RSS MB", f"{rss_after / 1024:.1f}"),
    ]
    for name, value in rows:
        grid.add_row(name, value)
    console.print(grid)
    if out is not None:
        groups.save(out)
        console.print(f"groups → {out}")


# ---- reports: compare runs, paper tables, CI reference (specbench/bench/{compare,paper_tables}.py) ----
@app.command()
@friendly
def compare(
    a: Annotated[Path, typer.Argument(metavar="A", help="Reference: a run folder or a summary CSV.")],
    b: Annotated[Path, typer.Argument(metavar="B", help="New run: a run folder or a summary CSV.")],
    accepted_len_tol: Annotated[float, typer.Option(min=0.0, help="Gate: relative drop of mean_accepted_len.")] = 0.02,
    target_calls_tol: Annotated[float, typer.Option(min=0.0, help="Gate: relative rise of target_calls.")] = 0.02,
    accept_rate_tol: Annotated[float, typer.Option(min=0.0, help="Gate: absolute drop of draft_accept_rate.")] = 0.02,
    wer_tol: Annotated[float, typer.Option(min=0.0, help="Gate: absolute rise of WER.")] = 0.05,
    strict_tokens: Annotated[bool, typer.Option(help="Also fail when token sequences differ from A's.")] = False,
    out: Annotated[Path | None, typer.Option(help="Write the delta table here (.csv or .md).")] = None,
) -> None:
    """Deltas per decoder between two runs; exit 1 on a regression of a hardware-independent metric.

    Gated: mean_accepted_len, target_calls, draft_accept_rate, WER, and the exactness of decoders that
    are lossless under greedy sampling (same tokens as the baseline). Timings are shown, never gated.
    """
    from specbench.bench.compare import Tolerances, print_comparison, write_comparison
    from specbench.bench.compare import compare as compare_runs

    tol = Tolerances(accepted_len_tol, target_calls_tol, accept_rate_tol, wer_tol, strict_tokens)
    result = compare_runs(a, b, tol)
    print_comparison(result, a, b)
    if out is not None:
        write_comparison(result, out, a, b)
        console.print(f"deltas → {out}")
    if not result.ok:
        raise typer.Exit(code=1)


@app.command("paper-table")
@friendly
def paper_table_cmd(
    method: Annotated[str, typer.Argument(help="ssd | vadusa | pcg: whose paper table to lay out.")],
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (e.g. of recipes/<method>_sweep.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Markdown file (default results/<method>.md); plots go to <its folder>/plots/.")] = None,
) -> None:
    """Write a run's results in the layout of the SSD / VADUSA / PCG paper table, with the paper's numbers."""
    from specbench.bench.paper_tables import LAYOUTS, paper_table
    from specbench.errors import ConfigError

    if method not in LAYOUTS:
        raise ConfigError(f"unknown paper table '{method}': use {', '.join(LAYOUTS)}")
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a specbench run folder (no config.yaml): pass a run's output_dir")
    path = paper_table(method, run_dir, out or Path("results") / f"{method}.md")
    console.print(f"paper table → {path}")


@app.command("export-reference")
@friendly
def export_reference_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder (e.g. of recipes/ci.yaml).")],
    out: Annotated[Path, typer.Option(help="Reference folder to (re)write.")] = Path("results/ci/reference"),
) -> None:
    """Freeze a run into an audio-free reference for `specbench compare` (summary, records, tokens)."""
    from specbench.bench.compare import export_reference

    written = export_reference(run_dir, out)
    console.print(f"reference: {len(written)} files → {out}")


@app.command("make-tiny-model")
@friendly
def make_tiny_model_cmd(
    family: Annotated[str, typer.Option(help="Family template: llasa, orpheus or a family YAML.")] = "llasa",
    out: Annotated[Path, typer.Option(help="Folder to write (target/, draft/, codec, heads.pt, tiny.json).")] = Path("data/tiny/llasa"),
    arch: Annotated[str, typer.Option(help="Architecture of the random models: llama or qwen2.")] = "llama",
    layers: Annotated[int, typer.Option(help="Decoder layers of the target (the draft has 1).")] = 2,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 64,
    heads: Annotated[int, typer.Option(help="Attention heads.")] = 4,
    kv_heads: Annotated[int, typer.Option(help="Key/value heads (grouped-query attention).")] = 2,
    mlp: Annotated[int | None, typer.Option(help="MLP size (default 2 x hidden).")] = None,
    vocab_size: Annotated[int | None, typer.Option(help="Embedding rows (default: the tokenizer's; larger mimics a real vocabulary's cost).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Write a tiny RANDOM-weight HF model set in a family's real layout (smoke tests, no downloads).

    Larger shapes time real-sized models without their weights, e.g. Llama-3.2-1B (Llasa-1B):
    --layers 16 --hidden 2048 --heads 32 --kv-heads 8 --mlp 8192 --vocab-size 193800.
    """
    from specbench.targets.tiny import make_tiny_model

    shape = {"heads": heads, "kv_heads": kv_heads, **({"intermediate_size": mlp} if mlp else {}), **({"vocab_size": vocab_size} if vocab_size else {})}
    info = make_tiny_model(family, out, arch=arch, seed=seed, layers=layers, hidden=hidden, shape=shape, overwrite=overwrite)
    codec = info["codec"] if info["codec"].startswith("builtin:") else out / info["codec"]
    console.print(f"wrote {out}: target {out / info['target']}, draft {out / info['draft']}, codec {codec}, untrained heads {out / info['heads']}")
    console.print(f"use it with model: {{backend: hf-causal, path: {out / info['target']}, family: {family}}}")


@app.command("list")
@friendly
def list_cmd() -> None:
    """Show decoders, codecs, scorers, model presets, shipped assets and recipes."""
    from typing import get_args

    from rich.table import Table

    from specbench.assets import list_builtin
    from specbench.codec import CODEC_KINDS
    from specbench.config import MODEL_PRESETS, AsrConfig, DecoderConfig, ScoringConfig, SpeakerConfig

    def choices(model: Any, field: str) -> str:
        def flat(t: Any) -> list[str]:
            args = get_args(t)
            return [x for a in args for x in flat(a)] if args else ([t] if isinstance(t, str) else [])

        return ", ".join(flat(model.model_fields[field].annotation))

    table = Table(show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("available")
    from specbench.config import METHOD_PRESETS

    table.add_row("decoders (method)", choices(DecoderConfig, "method"))
    table.add_row(
        "decoder presets",
        ", ".join(f"{k} ({', '.join(f'{a}={b}' for a, b in v.items() if a != 'method') or 'autoregressive'})" for k, v in METHOD_PRESETS.items()),
    )
    table.add_row("proposers / rules", f"{choices(DecoderConfig, 'proposer')} / {choices(DecoderConfig, 'rule')}")
    from specbench.decoding.tree import BUILTIN_SHAPES, TREE_DIR

    shipped_trees = [f"builtin:{p.stem}" for p in sorted(TREE_DIR.glob("*.json"))] if TREE_DIR.is_dir() else []
    table.add_row("trees (heads-tree)", ", ".join([*BUILTIN_SHAPES, "chain-N", *shipped_trees]))
    table.add_row("codecs", ", ".join(CODEC_KINDS))
    from specbench.targets import BACKENDS
    from specbench.targets.families import load_family, shipped_families

    table.add_row("target backends", ", ".join(BACKENDS))
    table.add_row("model families (hf-causal)", "\n".join(f"{n} (codec {load_family(n).codec}; {load_family(n).licence})" for n in shipped_families()))
    table.add_row("ASR backends", choices(AsrConfig, "backend"))
    table.add_row("speaker backends", choices(SpeakerConfig, "backend"))
    table.add_row("normalizers", choices(ScoringConfig, "normalizer"))
    table.add_row("model presets", ", ".join(f"{k} (d{v['d_model']}/L{v['n_layers']})" for k, v in MODEL_PRESETS.items()))
    table.add_row("shipped assets", ", ".join(list_builtin()) or "(none)")
    recipes = sorted(str(p) for p in Path("recipes").glob("*.yaml")) if Path("recipes").is_dir() else []
    table.add_row("recipes (./recipes)", "\n".join(recipes) or "(none in this folder)")
    console.print(table)


def entrypoint() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(entrypoint())
