"""Exact KL divergences, entropies and the KL-regularized objective (lecture section 4).

For two policies on the same tree, the KL divergence between their distributions over
complete generations of one prompt ``s_0`` is

    KL(P_p || P_q) = sum_xi P_p(xi) [log P_p(xi) - log P_q(xi)]                  (leaf sum)
                   = sum_{h=0}^{H-1} E_{s ~ d_h^p} [ KL(p(. | s) || q(. | s)) ]    (chain rule)

where ``d_h^p`` is the probability under ``p`` of reaching level-``h`` state ``s``. The chain
rule needs one pass down the levels and no leaf-size temporaries beyond the last level; the
leaf sum is the definition, kept for tests. ``+inf`` when ``p`` puts mass where ``q`` has
none, never NaN. The RLHF objective is

    J(pi) = E_{xi ~ pi}[r(xi)] - beta * KL(pi || pi_ref).

All functions return one value per prompt, shape ``(n_prompts,)``.
"""

from __future__ import annotations

import numpy as np

from .policy import Policy
from .validation import check_beta, check_leaf_array


def _check_pair(p: object, q: object, names: tuple[str, str] = ("p", "q")) -> None:
    for policy, name in zip((p, q), names, strict=True):
        if not isinstance(policy, Policy):
            raise TypeError(f"{name} must be a tinyrlhf.Policy, got {type(policy).__name__}")
    if p.tree != q.tree:  # type: ignore[attr-defined]
        raise ValueError(f"{names[0]} and {names[1]} must be policies on the same TokenTree")


def _kl_terms(log_p: np.ndarray, log_q: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Finite part of sum p (log p - log q) along ``axis``, and where it is +inf.

    Terms with p = 0 (log p = -inf) are 0 by convention (0 log 0 = 0); a term with p > 0 and
    q = 0 makes the sum +inf. Computing the two apart avoids ``0 * inf`` when p underflows.
    """
    on_support = log_p > -np.inf
    off_q = np.isneginf(log_q)
    finite = on_support & ~off_q
    log_ratio = np.zeros_like(log_p)
    np.subtract(log_p, log_q, out=log_ratio, where=finite)
    return (np.exp(log_p) * log_ratio).sum(axis=axis), (on_support & off_q).any(axis=axis)


def kl_divergence(p: Policy, q: Policy, *, method: str = "chain") -> np.ndarray:
    """Exact ``KL(P_p || P_q)`` over complete generations, per prompt.

    Args:
        p, q: policies on the same tree.
        method: ``"chain"`` (sum over levels of expected per-state KL, the default) or
            ``"leaves"`` (the definition, a sum over leaves).

    Returns:
        ``(n_prompts,)`` float64, ``>= 0``; ``+inf`` where ``p`` reaches a generation that
        ``q`` never produces.
    """
    _check_pair(p, q)
    tree = p.tree
    if method == "leaves":
        finite, infinite = _kl_terms(
            p.leaf_log_probs().reshape(tree.n_prompts, -1),
            q.leaf_log_probs().reshape(tree.n_prompts, -1),
            axis=1,
        )
        return np.where(infinite, np.inf, finite)
    if method != "chain":
        raise ValueError(f"method must be 'chain' or 'leaves', got {method!r}")
    total = np.zeros(tree.n_prompts)
    log_reach = np.zeros(tree.n_prompts)  # log d_0 = 0 on every prompt
    for h in range(tree.horizon):
        row_kl, row_infinite = _kl_terms(p.log_probs[h], q.log_probs[h], axis=1)
        # E_{s ~ d_h}[KL(p(.|s) || q(.|s))], per prompt: (level_size(h),) -> (P, A**h)
        total += (np.exp(log_reach) * row_kl).reshape(tree.n_prompts, -1).sum(axis=1)
        reached_infinite = (row_infinite & (log_reach > -np.inf)).reshape(tree.n_prompts, -1)
        total[reached_infinite.any(axis=1)] = np.inf
        log_reach = (log_reach[:, None] + p.log_probs[h]).reshape(-1)  # level h+1
    return total


def expected_reward(policy: Policy, reward: np.ndarray) -> np.ndarray:
    """``E_{xi ~ pi}[r(xi)]`` per prompt, ``(n_prompts,)``.

    Args:
        policy: a Policy.
        reward: ``(n_leaves,)`` finite rewards in canonical leaf order.
    """
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a tinyrlhf.Policy, got {type(policy).__name__}")
    reward = check_leaf_array(policy.tree, reward, "reward")
    weighted = policy.leaf_probs() * reward  # (n_leaves,)
    return weighted.reshape(policy.tree.n_prompts, -1).sum(axis=1)


def entropy(policy: Policy) -> np.ndarray:
    """Sequence-level entropy ``H(P_pi) = -sum_xi P(xi) log P(xi)`` per prompt (chain rule)."""
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a tinyrlhf.Policy, got {type(policy).__name__}")
    tree = policy.tree
    total = np.zeros(tree.n_prompts)
    log_reach = np.zeros(tree.n_prompts)
    for h in range(tree.horizon):
        table = policy.log_probs[h]
        plogp = np.zeros_like(table)
        np.multiply(np.exp(table), table, out=plogp, where=table > -np.inf)  # 0 log 0 = 0
        total -= (np.exp(log_reach) * plogp.sum(axis=1)).reshape(tree.n_prompts, -1).sum(axis=1)
        log_reach = (log_reach[:, None] + table).reshape(-1)
    return total


def objective(policy: Policy, ref: Policy, reward: np.ndarray, beta: float) -> np.ndarray:
    """The KL-regularized RLHF objective per prompt.

        J(pi) = E_{xi ~ pi}[r(xi)] - beta * KL(pi || pi_ref)

    Args:
        policy: the policy ``pi``.
        ref: the reference policy ``pi_ref`` (same tree).
        reward: ``(n_leaves,)`` finite rewards.
        beta: KL coefficient, finite and > 0.

    Returns:
        ``(n_prompts,)``; ``-inf`` where ``pi`` leaves the support of ``pi_ref``.
    """
    _check_pair(policy, ref, ("policy", "ref"))
    beta = check_beta(beta)
    kl = kl_divergence(policy, ref)
    return np.where(np.isinf(kl), -np.inf, expected_reward(policy, reward) - beta * kl)


def total_variation(p: Policy, q: Policy) -> np.ndarray:
    """``TV(P_p, P_q) = 1/2 sum_xi |P_p(xi) - P_q(xi)|`` per prompt, in [0, 1]."""
    _check_pair(p, q)
    gap = np.abs(p.leaf_probs() - q.leaf_probs())
    return 0.5 * gap.reshape(p.tree.n_prompts, -1).sum(axis=1)
