"""From a validated :class:`~specbench.config.DecoderConfig` to (proposer, rule): the one factory.

Loaded resources (draft models, heads, tree shapes, similarity groups) come from a
:class:`DecoderResources` built once per run, so a sweep over γ/β/τ/θ reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from specbench.config import DecoderConfig
from specbench.decoding.acceptance import build_rule
from specbench.decoding.proposers import DraftChainProposer, HeadsProposer, Proposer
from specbench.decoding.tree import TreeShape, chain_shape, load_tree
from specbench.decoding.tree_rules import TreeRule, as_tree_rule, greedy_tree, group_tree, recursive_rejection, sample_tau, top_tau, typical
from specbench.errors import ConfigError, ModelError
from specbench.targets.base import TargetModel


@dataclass
class DecoderResources:
    """Everything decoders of one run share: target, drafts by spec, heads by spec, groups by key."""

    target: TargetModel
    drafts: dict[str, TargetModel] = field(default_factory=dict)
    heads: dict[str, Any] = field(default_factory=dict)
    groups: dict[tuple, Any] = field(default_factory=dict)
    trees: dict[str, TreeShape] = field(default_factory=dict)

    def tree(self, spec: str) -> TreeShape:
        if spec not in self.trees:
            self.trees[spec] = load_tree(spec)
        return self.trees[spec]

    def group_table(self, d: DecoderConfig) -> Any:
        """Similarity groups of the target for ``d``'s θ / source / weighting (built once, cached)."""
        from specbench.decoding.groups import groups_from_model

        key = (d.theta, d.group_source, d.group_weighting)
        if key not in self.groups:
            self.groups[key] = groups_from_model(self.target, d.theta, source=d.group_source, weighting=d.group_weighting)
        return self.groups[key]

    def group_stats(self, d: DecoderConfig) -> dict[str, float]:
        """``group_*`` record columns of a group-rule decoder (sizes, coverage, memory, build time); ``{}`` otherwise."""
        if d.rule != "group":
            return {}
        st = self.group_table(d).stats()
        return {
            "group_mean_size": st["mean_size"],
            "group_median_size": st["median_size"],
            "group_max_size": float(st["max_size"]),
            "group_coverage": st["coverage"],
            "group_memory_kb": st["memory_bytes"] / 1024,
            "group_build_s": st["build_seconds"],
        }


def build_proposer(d: DecoderConfig, res: DecoderResources) -> Proposer:
    """The proposer of decoder ``d`` (fresh per utterance: proposers carry per-utterance state)."""
    if d.proposer == "draft-chain":
        return DraftChainProposer(res.drafts[d.draft or ""], d.gamma, d.draft_alignment)
    heads = res.heads[d.heads or ""]
    shape = chain_shape(d.gamma) if d.proposer == "heads-chain" else res.tree(d.tree or "")
    try:
        return HeadsProposer(heads, res.target, shape, d.candidates)
    except ValueError as exc:
        raise ConfigError(f"decoder '{d.name}': {exc}") from None


def build_tree_rule(d: DecoderConfig, res: DecoderResources) -> TreeRule:
    """The acceptance rule of decoder ``d``, as a tree rule (chain rules adapted).

    ``exact`` is lossless in all three cases: the q-ratio rule for sampled chains, recursive rejection
    for sampled trees, sample-and-match (sample-τ, τ = 1) for deterministic (top-k) candidates.
    """
    rule = d.rule or ""
    if rule == "greedy":
        return greedy_tree
    if rule == "exact" and not d.sampled:
        return sample_tau(1)
    if rule == "exact" and d.proposer == "heads-tree":
        return recursive_rejection
    if rule == "tolerance":
        return sample_tau(d.tau) if d.tolerance == "sample" else top_tau(d.tau)
    if rule == "typical":
        return typical(d.typical_eps, d.typical_delta)
    if rule == "group" and d.proposer == "heads-tree":
        return group_tree(res.group_table(d))
    if rule == "group":
        from specbench.decoding.acceptance import make_group

        return as_tree_rule(make_group(res.group_table(d), residual=d.group_residual))
    return as_tree_rule(build_rule(rule, d.beta))


def check_heads_depth(d: DecoderConfig, res: DecoderResources) -> None:
    """A heads proposer cannot draft deeper than the checkpoint has heads."""
    if not d.heads:
        return
    n = res.heads[d.heads].cfg.n_heads
    depth = d.gamma if d.proposer == "heads-chain" else res.tree(d.tree or "").max_depth
    if depth > n:
        raise ModelError(f"decoder '{d.name}' drafts {depth} deep but {d.heads} has {n} heads: lower gamma / use a shallower tree")
