"""Match-based acceptance rules for candidate trees (a chain is a one-path tree): pure functions.

Contract: ``rule(p, proposal, generator) -> TreeVerdict``. ``p`` ``[n+1, V]`` holds the target
distribution AFTER each node (row 0: after the root), after the shared logit transform; the
proposal's node i > 0 carries token ``c_i`` under parent ``π(i)``. Each rule decides per node whether
``c_i`` is acceptable given ``p[π(i)]``; a node counts only if every ancestor does too. The longest
accepted root-to-node path wins (ties: highest Σ log p of its tokens) and ONE token is emitted from
``p`` at the path's last node, by the rule's fallback. No model inside.

Why match-based: tree candidates are usually the heads' top-k (deterministic), so the q-ratio rules
would not be lossless (methods.md §3); ``exact`` for such trees is sample-and-match (= sample-τ with
τ = 1). Trees whose children are SAMPLED from the heads use :func:`recursive_rejection` (and PCG's
:func:`group_tree`, the same walk over group labels) instead.
Chain rules that do need sampled candidates (exact q-ratio, beta, group) are adapted with
:func:`chain_rule_on_tree`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from specbench.decoding.acceptance import RESIDUAL_EPS, ChainRule
from specbench.decoding.sampling import sample
from specbench.decoding.tree import Proposal

if TYPE_CHECKING:
    from specbench.decoding.groups import Groups

TYPICAL_EPS = 0.09
TYPICAL_DELTA = 0.3


@dataclass(frozen=True)
class TreeVerdict:
    """Accepted node indices (root excluded, root-to-leaf order), then the emitted ``token``."""

    path: list[int]
    token: int


TreeRule = Callable[[torch.Tensor, Proposal, torch.Generator], TreeVerdict]


def tree_rule(fn: TreeRule) -> TreeRule:
    """Mark ``fn`` as a tree rule (so :func:`as_tree_rule` passes it through)."""
    fn.is_tree_rule = True  # type: ignore[attr-defined]
    return fn


def best_path(accepted: list[bool], proposal: Proposal, p: torch.Tensor) -> list[int]:
    """Longest path of accepted nodes from the root (ties: highest Σ log p(c_i | parent)).

    ``accepted[i]`` is the node-local decision; node i is reachable iff it and all its ancestors are.
    """
    shape = proposal.shape
    parents, depth = shape.parents, shape.depth
    n = len(parents)
    if n == 1:
        return []
    logp = torch.log(p[parents[1:], proposal.tokens[1:]].clamp(min=1e-30)).tolist()
    reach = [True] + [False] * (n - 1)
    score = [0.0] * n
    best, best_key = 0, (0, 0.0)
    for i in range(1, n):  # parents precede children
        if accepted[i] and reach[parents[i]]:
            reach[i] = True
            score[i] = score[parents[i]] + logp[i - 1]
            key = (depth[i], score[i])
            if key > best_key:
                best, best_key = i, key
    return shape.ancestors(best)[1:]


def _emit_sample(p_row: torch.Tensor, generator: torch.Generator) -> int:
    return int(torch.multinomial(p_row, 1, generator=generator)[0])


@tree_rule
def greedy_tree(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
    """Accept c iff c = argmax p[parent]; emit argmax p at the last accepted node. Lossless for greedy."""
    top = p.argmax(-1)
    parents = proposal.shape.parents
    acc = [False] + (proposal.tokens[1:] == top[parents[1:]]).tolist()
    path = best_path(acc, proposal, p)
    last = path[-1] if path else 0
    return TreeVerdict(path, int(top[last]))


def sample_tau(tau: int) -> TreeRule:
    """Tolerance sample-τ: draw s_1..s_τ ~ p[parent] (with replacement); accept c iff c ∈ {s_j}.

    The emitted token is s_1 at the last accepted node (a fresh target sample). With τ = 1 at most one
    child per node matches, the walk is unique and the output is exactly target-distributed
    (sample-and-match: the lossless ``exact`` rule for deterministic candidates).
    """
    if tau < 1:
        raise ValueError("tau must be >= 1")

    def rule(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
        samples = torch.multinomial(p, tau, replacement=True, generator=generator)  # [n+1, τ]
        parents = proposal.shape.parents
        hit = (samples[parents[1:]] == proposal.tokens[1:, None]).any(-1)
        path = best_path([False] + hit.tolist(), proposal, p)
        last = path[-1] if path else 0
        return TreeVerdict(path, int(samples[last, 0]))

    rule.__name__ = f"sample_tau_{tau}"
    return tree_rule(rule)


def top_tau(tau: int) -> TreeRule:
    """Tolerance top-τ: accept c iff c is among the τ most probable tokens of p[parent] and p(c) > 0;
    on failure (or at a leaf) emit a sample of p at the last accepted node. Under greedy (one-hot p)
    this is exactly greedy for every τ."""
    if tau < 1:
        raise ValueError("tau must be >= 1")

    def rule(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
        parents = proposal.shape.parents
        k = min(tau, p.shape[-1])
        top = torch.topk(p, k, dim=-1).indices[parents[1:]]  # [n, τ]
        cand = proposal.tokens[1:]
        pc = p[parents[1:], cand]
        hit = (top == cand[:, None]).any(-1) & (pc > 0)
        path = best_path([False] + hit.tolist(), proposal, p)
        last = path[-1] if path else 0
        return TreeVerdict(path, _emit_sample(p[last], generator))

    rule.__name__ = f"top_tau_{tau}"
    return tree_rule(rule)


def typical(eps: float = TYPICAL_EPS, delta: float = TYPICAL_DELTA) -> TreeRule:
    """Medusa typical acceptance: accept c iff p(c) > min(ε, δ·exp(−H(p[parent]))), H in nats;
    emit a sample of p at the last accepted node. Under greedy (H = 0, p ∈ {0, 1}) it is greedy."""

    def rule(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
        parents = proposal.shape.parents
        ent = -(p * torch.log(p.clamp(min=1e-30))).sum(-1)  # [n+1]
        thresh = torch.minimum(torch.full_like(ent, eps), delta * torch.exp(-ent))
        pc = p[parents[1:], proposal.tokens[1:]]
        hit = pc > thresh[parents[1:]]
        path = best_path([False] + hit.tolist(), proposal, p)
        last = path[-1] if path else 0
        return TreeVerdict(path, _emit_sample(p[last], generator))

    rule.__name__ = f"typical_{eps:g}_{delta:g}"
    return tree_rule(rule)


def _multi_draft_walk(
    p: torch.Tensor,
    proposal: Proposal,
    generator: torch.Generator,
    coarse: Callable[[torch.Tensor], torch.Tensor],
    label: Callable[[int], int],
    emit: Callable[[torch.Tensor, torch.Tensor], tuple[int, int]],
    labels: list[int] | None = None,
) -> TreeVerdict:
    """Recursive rejection over the children of each node, in a label space (tokens, or PCG groups).

    ``coarse`` maps a token distribution to the label distribution, ``label`` draws a candidate
    token's label, ``emit(p_node, r)`` draws the emitted (token, label) once every child failed (r: the
    running label residual). Children are visited in node order; u ~ U[0, 1) is drawn per visited
    child. ``labels``, when given, receives the label behind each emitted token in order.
    """
    if not proposal.sampled or proposal.q is None:
        raise ValueError("recursive rejection needs a sampled proposal (children drawn from the q they carry)")
    children, tokens, q = proposal.shape.children, proposal.tokens.tolist(), proposal.q
    node, path = 0, []
    while True:
        r = coarse(p[node])
        nxt = None
        for c in children[node]:
            k = label(tokens[c])
            qc = coarse(q[c])
            qk = float(qc[k])
            u = float(torch.rand((), generator=generator, device=p.device))
            # the label of a drawn candidate has q-mass > 0; a dead draft passes only if r(k) > 0
            ratio = float(r[k]) / qk if qk > 0.0 else float(float(r[k]) > 0.0)
            if u < min(1.0, ratio):
                nxt = c
                if labels is not None:
                    labels.append(k)
                break
            residual = (r - qc).clamp(min=0.0)
            mass = float(residual.sum())
            if mass > RESIDUAL_EPS:  # else r == qc up to rounding: keep r
                r = residual / mass
        if nxt is None:
            token, k = emit(p[node], r)
            if labels is not None:
                labels.append(k)
            return TreeVerdict(path, token)
        path.append(nxt)
        node = nxt


@tree_rule
def recursive_rejection(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
    """Lossless verification of a SAMPLED tree (multi-draft speculative sampling, SpecInfer).

    Precondition: the children of every node were drawn i.i.d. (with replacement) from one draft
    distribution ``q`` given that node (``proposal.q`` of each child). Walk from the root with
    r = p[node]; for each child c in order draw u ~ U[0, 1): accept c iff u < min(1, r(c)/q(c)), then
    descend into c; else r ← norm(max(0, r − q)) and try the next sibling. When every child is
    rejected (or the node is a leaf) emit y ~ r. Each sibling is one speculative-sampling step whose
    target is the previous step's residual, so the token leaving a node is distributed exactly as
    p[node] and the whole output as the target's (Miao et al. 2023, SpecInfer). A one-path tree is the
    chain ``exact`` rule.
    """

    def emit(_p: torch.Tensor, r: torch.Tensor) -> tuple[int, int]:
        y = _emit_sample(r, generator)
        return y, y

    return _multi_draft_walk(p, proposal, generator, lambda d: d, lambda t: t, emit)


def group_tree_verdict(p: torch.Tensor, proposal: Proposal, generator: torch.Generator, groups: Groups, labels: list[int] | None = None) -> TreeVerdict:
    """PCG on a SAMPLED tree: :func:`recursive_rejection` over group labels (methods.md §4).

    Each candidate t gets a label k ~ w_{·,t}; siblings' labels are i.i.d. from Q_c = W q. With
    R = P_c = W p[node], child j is accepted iff u < min(1, R(k_j)/Q_c(k_j)), else R ← norm(max(0,
    R − Q_c)); when all children fail, k' ~ R and t' ∝ p(t') w_{k',t'} on G_{k'}. The label behind
    every emitted token is distributed exactly as P_c (the chain group rule's guarantee, now with
    several drafts per position); accepted tokens keep their draft identity within the group. With
    singleton groups (θ ≥ 1) it consumes the generator like :func:`recursive_rejection` and returns the
    same verdicts. The residual is the exact dense one (a running residual has no thinning sampler).
    ``labels`` as in :func:`specbench.decoding.acceptance.group_rule`; ``groups`` on p's device.
    """

    def emit(p_node: torch.Tensor, r: torch.Tensor) -> tuple[int, int]:
        k = int(sample(r, generator))
        return groups.sample_member(p_node, k, generator), k

    return _multi_draft_walk(p, proposal, generator, groups.coarse, lambda t: groups.sample_label(t, generator), emit, labels)


def group_tree(groups: Groups) -> TreeRule:
    """:func:`group_tree_verdict` over fixed ``groups`` as a tree rule (groups moved to p's device once)."""

    def rule(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
        return group_tree_verdict(p, proposal, generator, groups.on(p.device))

    rule.__name__ = f"group_tree_{groups.theta:g}"
    return tree_rule(rule)


def as_tree_rule(rule: TreeRule | ChainRule) -> TreeRule:
    """Tree rules pass through; chain rules are adapted with :func:`chain_rule_on_tree`."""
    return rule if getattr(rule, "is_tree_rule", False) else chain_rule_on_tree(rule)  # type: ignore[arg-type,return-value]


def chain_rule_on_tree(rule: ChainRule) -> TreeRule:
    """A chain rule (``exact`` q-ratio, ``beta``, ``group``, chain ``greedy``) on a one-path proposal."""

    def adapted(p: torch.Tensor, proposal: Proposal, generator: torch.Generator) -> TreeVerdict:
        if not proposal.shape.is_chain:
            raise ValueError(f"{getattr(rule, '__name__', 'rule')} verifies chains only; this proposal is a tree")
        q = proposal.q[1:] if proposal.q is not None else torch.empty(0)
        v = rule(p, q, proposal.tokens[1:], generator)
        return TreeVerdict(list(range(1, v.accepted + 1)), v.token)

    adapted.__name__ = getattr(rule, "__name__", "chain_rule")
    return tree_rule(adapted)


def expected_acceptance(rule: str, p: torch.Tensor, cand: torch.Tensor, tau: int = 1, mode: str = "sample") -> torch.Tensor:
    """P(candidate ``cand[i]`` is accepted under ``p[i]``) for calibration (no sampling noise).

    greedy: 1[c = argmax p]; tolerance sample-τ: 1 − (1 − p(c))^τ; tolerance top-τ:
    1[c ∈ top-τ(p), p(c) > 0]; typical: 1[p(c) > min(ε, δ e^{−H})]; exact (sample-and-match): p(c).
    """
    pc = p.gather(-1, cand[..., None])[..., 0]
    if rule == "greedy":
        return (p.argmax(-1) == cand).float()
    if rule == "tolerance" and mode == "sample":
        return 1.0 - (1.0 - pc).clamp(min=0.0) ** tau
    if rule == "tolerance":
        top = torch.topk(p, min(tau, p.shape[-1]), dim=-1).indices
        return ((top == cand[..., None]).any(-1) & (pc > 0)).float()
    if rule == "typical":
        ent = -(p * torch.log(p.clamp(min=1e-30))).sum(-1)
        return (pc > torch.clamp(TYPICAL_DELTA * torch.exp(-ent), max=TYPICAL_EPS)).float()
    if rule == "exact":
        return pc
    raise ValueError(f"no expected acceptance for rule '{rule}'")
