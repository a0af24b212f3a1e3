"""Soft value iteration backwards over the token tree (lecture section 4).

The KL-regularized problem ``max_pi E_pi[r] - beta KL(pi || pi_ref)`` on a deterministic tree
is solved by a backward pass of soft Bellman backups (Ziebart 2010, ch. 6; Haarnoja et al.
2017, eq. 2-3; the log-space recursion as in imitation's ``mce_irl``):

    V_H(s_H) = r(s_H)
    V_h(s)   = beta * log sum_a pi_ref(a | s) * exp(V_{h+1}(s o a) / beta)
    pi*(a | s) = pi_ref(a | s) * exp((V_{h+1}(s o a) - V_h(s)) / beta)

and ``V_0(s_0) = beta log Z(s_0)``, the same partition function as the closed form. The
recursion runs in units of ``V / beta`` so that every normaliser is one ``logsumexp``.
``V_h`` is finite at every state (the reference reaches or not), so ``pi*`` is defined
everywhere.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.special import logsumexp

from ..policy import Policy
from ..validation import check_beta, check_leaf_array
from .solution import Solution


def soft_value_iteration(ref: Policy, reward: np.ndarray, beta: float) -> Solution:
    """Solve the KL-regularized problem by soft value iteration.

    Args:
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards on complete generations.
        beta: KL coefficient, finite and > 0.

    Returns:
        A :class:`Solution` with ``policy`` (``pi*``), ``values`` (``V_0..V_H``),
        ``log_partition`` (``V_0 / beta``) and ``lagrange_multiplier`` (``beta (1 - log Z)``).
    """
    start = time.perf_counter()
    if not isinstance(ref, Policy):
        raise TypeError(f"ref must be a tinyrlhf.Policy, got {type(ref).__name__}")
    tree = ref.tree
    reward = check_leaf_array(tree, reward, "reward")
    beta = check_beta(beta)
    n_tokens = tree.n_tokens

    values: list[np.ndarray] = [np.empty(0)] * (tree.horizon + 1)
    log_pi: list[np.ndarray] = [np.empty(0)] * tree.horizon
    values[tree.horizon] = reward.copy()
    scaled_value = reward / beta  # V_{h+1} / beta, starting at level H
    for h in range(tree.horizon - 1, -1, -1):
        # log pi_ref(a|s) + V_{h+1}(s o a)/beta : (level_size(h), A)
        log_weight = ref.log_probs[h] + scaled_value.reshape(-1, n_tokens)
        scaled_value = logsumexp(log_weight, axis=1)  # V_h / beta : (level_size(h),)
        log_pi[h] = log_weight - scaled_value[:, None]  # log pi*(a|s)
        values[h] = beta * scaled_value
    log_z = scaled_value  # V_0 / beta = log Z(s_0) : (n_prompts,)
    return Solution(
        policy=Policy._trusted(tree, log_pi),
        method="soft_value_iteration",
        reference=ref,
        reward=reward,
        beta=beta,
        log_partition=log_z,
        lagrange_multiplier=beta * (1.0 - log_z),
        values=values,
        wall_time=time.perf_counter() - start,
    )
