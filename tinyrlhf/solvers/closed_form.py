"""The KKT closed form of KL-regularized RL (lecture section 4).

The seed derives, for trajectory distributions ``P`` over complete generations of one prompt,

    max_P sum_xi P(xi) [r(xi) - beta log P(xi) + beta log P_ref(xi)]  s.t.  sum_xi P(xi) = 1

with Lagrangian ``L(P, lambda)``; stationarity gives
``log P*(xi) = log P_ref(xi) + r(xi)/beta + lambda/beta - 1``, and normalisation gives

    Z(s_0)   = sum_xi P_ref(xi | s_0) exp(r(xi) / beta)            (partition function)
    P*(xi)   = P_ref(xi | s_0) exp(r(xi) / beta) / Z(s_0)
    lambda*  = beta (1 - log Z(s_0))

(the seed's case is beta = 1). The autoregressive policy that generates ``P*`` is found by
summing ``P*`` over subtrees, one backward pass of log-sum-exps over the leaf weights
``W(xi) = log P_ref(xi | s_0) + r(xi)/beta``:

    U_H = W,   U_h(s) = log sum_a exp U_{h+1}(s o a)  (= log sum of P_ref e^{r/beta} below s)
    log Z(s_0) = U_0(s_0),   M_h = U_h - log Z,   log pi*(a|s) = M_{h+1}(s o a) - M_h(s)

``M_h(s)`` is the log-probability under ``P*`` of passing through ``s``, and ``Z`` is the
partition function's sum over leaves taken subtree by subtree (the same sum, grouped; the
leaf-level ``logsumexp`` is :func:`optimal_leaf_log_probs`). The normalization cancels in the
policy, ``M_{h+1} - M_h = U_{h+1} - U_h``, so one pass gives ``Z`` and ``pi*``, and
``log P*(s o a) = M_{H-1}(s) + log pi*(a|s)`` on the leaves. This uses ``pi_ref`` only through the leaf probabilities
``P_ref(xi)`` (formed by a forward pass), so it is a computation independent of soft value
iteration's per-state backups. At states the reference never
reaches (``M_h(s) = -inf``) the ratio is undefined; there the policy is taken from soft
value iteration, which is defined everywhere and agrees on reachable states.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.special import logsumexp

from ..kernels import LevelWorkspace, extend_log_reach, log_normalize_level
from ..memory import FLOAT_BYTES, check_memory
from ..policy import Policy
from ..tree import TokenTree
from ..validation import check_beta, check_leaf_array
from .soft_vi import estimate_bytes as soft_vi_bytes
from .soft_vi import soft_value_iteration
from .solution import Solution


def estimate_bytes(tree: TokenTree) -> int:
    """Bytes :func:`closed_form` allocates on ``tree`` (without the soft value iteration
    fallback for unreached states): the policy (``n_states - n_prompts``, which also holds
    the forward pass), ``log P*`` on the leaves, the subtree sums of level ``H - 1`` and two
    buffers for the levels below, and the kernel's scratch. The leaf weights are formed block
    by block and never stored."""
    horizon = tree.horizon
    floats = (
        tree.n_states
        - tree.n_prompts
        + tree.n_leaves
        + tree.level_size(horizon - 1)
        + tree.level_size(max(horizon - 2, 0))
        + tree.level_size(max(horizon - 3, 0))
    )
    return FLOAT_BYTES * floats + LevelWorkspace.estimate_bytes(
        tree.n_tokens, tree.level_size(horizon - 1)
    )


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


def closed_form(
    ref: Policy, reward: np.ndarray, beta: float, *, memory_limit: int | None = None
) -> Solution:
    """Solve the KL-regularized problem by the KKT closed form ``P* ∝ P_ref exp(r / beta)``.

    Args:
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards on complete generations.
        beta: KL coefficient, finite and > 0.
        memory_limit: optional budget in bytes (default: ``TINYRLHF_MEMORY_LIMIT`` or half
            the available memory, see :mod:`tinyrlhf.memory`).

    Returns:
        A :class:`Solution` with ``policy`` (``pi*`` from subtree sums of ``P*``),
        ``log_partition`` (``log Z``, ``(n_prompts,)``), ``lagrange_multiplier``
        (``beta (1 - log Z)``), and ``info["leaf_log_probs"]`` (``log P*``, ``(n_leaves,)``,
        from the last level's ``P*`` mass and ``pi*``).

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
    what = f"the closed form on {tree.n_leaves:,} leaves"
    check_memory(estimate_bytes(tree), what, memory_limit)
    horizon, n_tokens = tree.horizon, tree.n_tokens

    log_pi: list[np.ndarray] = [np.empty(0)] * horizon
    unreached: dict[int, np.ndarray] = {}  # level -> states P* never passes through
    workspace = LevelWorkspace(n_tokens, tree.level_size(horizon - 1))
    # U_h of the levels below H - 1, for odd and even distances from the leaves: level h
    # reads level h + 1's buffer and writes the other one.
    buffers = (
        np.empty(tree.level_size(max(horizon - 3, 0))),
        np.empty(tree.level_size(max(horizon - 2, 0))),
    )

    def backup(h: int, children: np.ndarray, **level_inputs: object) -> np.ndarray:
        """U_h(s) = log sum_a exp U_{h+1}(s o a);  log pi*(a|s) = U_{h+1}(s o a) - U_h(s)."""
        if h == horizon - 1:  # U_{H-1}, kept for log P* at the end
            subtree_log_mass = np.empty(tree.level_size(h))
        else:  # U_h : (level_size(h),)
            subtree_log_mass = buffers[(horizon - 1 - h) % 2][: tree.level_size(h)]
        if log_pi[h].size == 0:  # the last level; the others hold log d_ref until now
            log_pi[h] = np.empty((tree.level_size(h), n_tokens))
        if log_normalize_level(
            children, subtree_log_mass, log_pi[h], workspace=workspace, **level_inputs
        ):
            unreached[h] = np.isneginf(subtree_log_mass)
        return subtree_log_mass

    # log d_ref(s), the reference's probability of reaching s, down to level H - 1:
    # log d_{h+1}(s o a) = log d_h(s) + log pi_ref(a|s). Level h + 1 has the shape of the
    # policy table log_pi[h], so it is computed there; the backward pass overwrites it after
    # its last use (no other level-size scratch).
    log_reach = np.zeros(tree.n_prompts)  # log d_0
    for h in range(horizon - 1):
        log_pi[h] = np.empty((tree.level_size(h), n_tokens))
        log_reach = extend_log_reach(log_reach, ref.log_probs[h], out=log_pi[h])
    # U_H = W(xi) = log P_ref(xi) + r(xi)/beta, the unnormalized log P* of every leaf, with
    # log P_ref(s o a) = log d_ref(s) + log pi_ref(a|s) at the states s of level H - 1; the
    # kernel forms W block by block while it sums the last level (W is never stored)
    last_log_mass = backup(
        horizon - 1,
        reward,
        log_prior=ref.log_probs[horizon - 1],
        row_offset=log_reach,
        divisor=beta,
    )
    log_mass = last_log_mass
    for h in range(horizon - 2, -1, -1):
        log_mass = backup(h, log_mass)
    log_z = log_mass.copy()  # U_0 = log Z(s_0) : (n_prompts,)
    if unreached:
        check_memory(
            estimate_bytes(tree) + soft_vi_bytes(tree),
            what + " with soft value iteration for the states the reference never reaches",
            memory_limit,
        )
        fallback = soft_value_iteration(ref, reward, beta, memory_limit=memory_limit).policy
        for h, mask in unreached.items():
            log_pi[h][mask] = fallback.log_probs[h][mask]
    # log P*(s o a) = M_{H-1}(s) + log pi*(a|s) on the leaves, M_{H-1} = U_{H-1} - log Z(s_0)
    last_log_mass.reshape(tree.n_prompts, -1)[...] -= log_z[:, None]  # (n_prompts, A**(H-1))
    log_p_star = extend_log_reach(last_log_mass, log_pi[horizon - 1])  # (n_leaves,)
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
