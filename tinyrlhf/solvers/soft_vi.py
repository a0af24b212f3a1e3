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

Each level is one call of :func:`tinyrlhf.kernels.log_normalize_level` (the backup and the
normalized row in one pass, in cache-sized blocks); ``V_h / beta`` is computed in the output
``values[h]`` and scaled by ``beta`` in place once the level above has read it, so nothing of
leaf size is allocated besides the outputs.
"""

from __future__ import annotations

import time

import numpy as np

from ..kernels import LevelWorkspace, log_normalize_level
from ..memory import FLOAT_BYTES, check_memory
from ..policy import Policy
from ..tree import TokenTree
from ..validation import check_beta, check_leaf_array
from .solution import Solution


def estimate_bytes(tree: TokenTree) -> int:
    """Bytes :func:`soft_value_iteration` allocates on ``tree``: the values ``V_0..V_H``
    (``n_states``; each level holds ``V_h / beta`` until the level above has read it), the
    policy (``n_states - n_prompts``) and the kernel's scratch."""
    horizon = tree.horizon
    floats = 2 * tree.n_states - tree.n_prompts
    return FLOAT_BYTES * floats + LevelWorkspace.estimate_bytes(
        tree.n_tokens, tree.level_size(horizon - 1)
    )


def soft_value_iteration(
    ref: Policy, reward: np.ndarray, beta: float, *, memory_limit: int | None = None
) -> Solution:
    """Solve the KL-regularized problem by soft value iteration.

    Args:
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards on complete generations.
        beta: KL coefficient, finite and > 0.
        memory_limit: optional budget in bytes (default: ``TINYRLHF_MEMORY_LIMIT`` or half
            the available memory, see :mod:`tinyrlhf.memory`).

    Returns:
        A :class:`Solution` with ``policy`` (``pi*``), ``values`` (``V_0..V_H``),
        ``log_partition`` (``V_0 / beta``) and ``lagrange_multiplier`` (``beta (1 - log Z)``).

    Raises:
        TypeError: ``ref`` is not a Policy.
        ValueError: bad ``reward`` or ``beta``, or the solve would not fit in the memory
            budget (checked before anything is allocated).
    """
    start = time.perf_counter()
    if not isinstance(ref, Policy):
        raise TypeError(f"ref must be a tinyrlhf.Policy, got {type(ref).__name__}")
    tree = ref.tree
    reward = check_leaf_array(tree, reward, "reward")
    beta = check_beta(beta)
    check_memory(
        estimate_bytes(tree), f"soft value iteration on {tree.n_states:,} states", memory_limit
    )
    horizon, n_tokens = tree.horizon, tree.n_tokens
    level_sizes = [tree.level_size(h) for h in range(horizon + 1)]

    values: list[np.ndarray] = [np.empty(0)] * (horizon + 1)
    log_pi: list[np.ndarray] = [np.empty(0)] * horizon
    values[horizon] = reward.copy()
    workspace = LevelWorkspace(n_tokens, level_sizes[horizon - 1])
    children, divisor = reward, beta  # level H enters as r / beta
    for h in range(horizon - 1, -1, -1):
        # values[h] holds V_h / beta until level h - 1 has read it, then V_h
        values[h] = np.empty(level_sizes[h])
        log_pi[h] = np.empty((level_sizes[h], n_tokens))
        # V_h(s)/beta = log sum_a pi_ref(a|s) exp(V_{h+1}(s o a)/beta), and
        # log pi*(a|s) = log pi_ref(a|s) + V_{h+1}(s o a)/beta - V_h(s)/beta
        log_normalize_level(
            children,
            values[h],
            log_pi[h],
            log_prior=ref.log_probs[h],
            divisor=divisor,
            workspace=workspace,
        )
        if h + 1 < horizon:
            values[h + 1] *= beta  # V_{h+1} = beta * (V_{h+1} / beta), read for the last time
        children, divisor = values[h], None
    log_z = values[0].copy()  # V_0 / beta = log Z(s_0) : (n_prompts,)
    values[0] *= beta
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
