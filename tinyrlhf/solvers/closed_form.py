"""The KKT closed form of KL-regularized RL (lecture section 4).

The seed derives, for trajectory distributions ``P`` over complete generations of one prompt,

    max_P sum_xi P(xi) [r(xi) - beta log P(xi) + beta log P_ref(xi)]  s.t.  sum_xi P(xi) = 1

with Lagrangian ``L(P, lambda)``; stationarity gives
``log P*(xi) = log P_ref(xi) + r(xi)/beta + lambda/beta - 1``, and normalisation gives

    Z(s_0)   = sum_xi P_ref(xi | s_0) exp(r(xi) / beta)            (partition function)
    P*(xi)   = P_ref(xi | s_0) exp(r(xi) / beta) / Z(s_0)
    lambda*  = beta (1 - log Z(s_0))

(the seed's case is beta = 1). The autoregressive policy that generates ``P*`` is found by
summing ``P*`` over subtrees, one backward ``logsumexp`` pass:

    M_H = log P*,   M_h(s) = log sum_a exp M_{h+1}(s o a),   log pi*(a|s) = M_{h+1}(s o a) - M_h(s)

``M_h(s)`` is the log-probability under ``P*`` of passing through ``s``. At states the
reference never reaches (``M_h(s) = -inf``) this ratio is undefined; there the policy is
taken from soft value iteration, which is defined everywhere and agrees on reachable states.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.special import logsumexp

from ..policy import Policy
from ..validation import check_beta, check_leaf_array
from .soft_vi import soft_value_iteration
from .solution import Solution


def optimal_leaf_log_probs(
    ref: Policy, reward: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """``log P*(xi | s_0)`` on every leaf and ``log Z(s_0)`` per prompt.

    ``log P* = log P_ref + r / beta - log Z``, ``log Z = logsumexp(log P_ref + r / beta)`` over
    each prompt's leaves.

    Returns:
        ``(log_p_star, log_z)`` of shapes ``(n_leaves,)`` and ``(n_prompts,)``.
    """
    if not isinstance(ref, Policy):
        raise TypeError(f"ref must be a tinyrlhf.Policy, got {type(ref).__name__}")
    tree = ref.tree
    reward = check_leaf_array(tree, reward, "reward")
    beta = check_beta(beta)
    # log P_ref(xi) + r(xi)/beta, one row per prompt: (n_prompts, A**H)
    log_weight = (ref.leaf_log_probs() + reward / beta).reshape(tree.n_prompts, -1)
    log_z = logsumexp(log_weight, axis=1)  # (n_prompts,)
    return (log_weight - log_z[:, None]).reshape(-1), log_z


def closed_form(ref: Policy, reward: np.ndarray, beta: float) -> Solution:
    """Solve the KL-regularized problem by the KKT closed form ``P* ∝ P_ref exp(r / beta)``.

    Args:
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards on complete generations.
        beta: KL coefficient, finite and > 0.

    Returns:
        A :class:`Solution` with ``policy`` (``pi*`` from subtree sums of ``P*``),
        ``log_partition`` (``log Z``, ``(n_prompts,)``), ``lagrange_multiplier``
        (``beta (1 - log Z)``), and ``info["leaf_log_probs"]`` (``log P*``, ``(n_leaves,)``).
    """
    start = time.perf_counter()
    log_p_star, log_z = optimal_leaf_log_probs(ref, reward, beta)
    tree = ref.tree
    beta = float(beta)
    log_pi: list[np.ndarray] = [np.empty(0)] * tree.horizon
    unreached: list[np.ndarray] = [np.empty(0)] * tree.horizon
    log_mass = log_p_star  # M_H
    for h in range(tree.horizon - 1, -1, -1):
        children = log_mass.reshape(-1, tree.n_tokens)  # M_{h+1}: (level_size(h), A)
        log_mass = logsumexp(children, axis=1)  # M_h: (level_size(h),)
        unreached[h] = np.isneginf(log_mass)
        table = np.zeros_like(children)
        # log pi*(a|s) = M_{h+1}(s o a) - M_h(s), on states P* reaches
        np.subtract(children, log_mass[:, None], out=table, where=~unreached[h][:, None])
        log_pi[h] = table
    if any(mask.any() for mask in unreached):
        fallback = soft_value_iteration(ref, reward, beta).policy
        for h in range(tree.horizon):
            log_pi[h][unreached[h]] = fallback.log_probs[h][unreached[h]]
    return Solution(
        policy=Policy._trusted(tree, log_pi),
        method="closed_form",
        reference=ref,
        reward=np.asarray(reward, dtype=np.float64),
        beta=beta,
        log_partition=log_z,
        lagrange_multiplier=beta * (1.0 - log_z),
        wall_time=time.perf_counter() - start,
        info={"leaf_log_probs": log_p_star},
    )
