"""Soft value iteration backwards over the token tree (lecture section 4).

The KL-regularized problem ``max_pi E_pi[r] - beta KL(pi || pi_ref)`` on a deterministic tree
is solved by a backward pass of soft Bellman backups (Ziebart 2010, ch. 6; Haarnoja et al.
2017, eq. 2-3; the log-space recursion as in imitation's ``mce_irl``):

    V_H(s_H) = r(s_H)
    V_h(s)   = beta * log sum_a pi_ref(a | s) * exp(V_{h+1}(s o a) / beta)
    pi*(a | s) = pi_ref(a | s) * exp((V_{h+1}(s o a) - V_h(s)) / beta)

and ``V_0(s_0) = beta log Z(s_0)``, the same partition function as the closed form. In log
space each level is one row-wise log-softmax of ``x(s, a) = log pi_ref(a|s) +
V_{h+1}(s o a) / beta``: its row log-sum-exp is ``V_h(s) / beta`` and its normalized rows
are ``log pi*(a|s)`` (:func:`tinyrlhf.kernels.log_softmax_rows`). ``V_h`` is finite at every
state (the reference reaches or not), so ``pi*`` is defined everywhere.
"""

from __future__ import annotations

import time

import numpy as np

from ..kernels import log_softmax_rows
from ..policy import Policy
from ..validation import check_problem, frozen_copy, read_only
from .solution import Solution


def soft_value_iteration(ref: Policy, reward: np.ndarray, beta: float) -> Solution:
    r"""Solve the KL-regularized problem by soft value iteration.

    .. math::

        V_H(s_H) &= r(s_H), \qquad V_0(s_0) = \beta \log Z(s_0),

        V_h(s) &= \beta \log \sum_a \pi_{\mathrm{ref}}(a \mid s)\, e^{V_{h+1}(s \circ a)/\beta},

        \pi^*(a \mid s) &= \pi_{\mathrm{ref}}(a \mid s)\, e^{(V_{h+1}(s \circ a) - V_h(s))/\beta}.

    Args:
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards on complete generations.
        beta: KL coefficient, finite and > 0 (with ``max |r| / beta`` finite in float64).

    Returns:
        A :class:`Solution` with ``policy`` (``pi*``), ``values`` (``V_0..V_H``),
        ``log_partition`` (``V_0 / beta``) and ``lagrange_multiplier`` (``beta (1 - log Z)``).

    Raises:
        TypeError: ``ref`` is not a Policy, or ``reward``/``beta`` are not real.
        ValueError: bad ``reward`` or ``beta`` (see :func:`tinyrlhf.validation.check_problem`).
    """
    start = time.perf_counter()
    ref, reward, beta = check_problem(ref, reward, beta)
    tree = ref.tree
    values = [np.empty(0)] * tree.horizon + [frozen_copy(reward)]  # V_H = r
    log_pi = [np.empty(0)] * tree.horizon
    scaled_value = reward / beta  # V_{h+1} / beta, from V_H / beta = r / beta : (n_leaves,)
    for h in range(tree.horizon - 1, -1, -1):
        # x(s, a) = log pi_ref(a|s) + V_{h+1}(s o a) / beta : (level_size(h), A)
        x = np.add(ref.log_probs[h], scaled_value.reshape(-1, tree.n_tokens))
        # V_h(s) / beta = log sum_a pi_ref(a|s) e^{V_{h+1}(s o a)/beta};  log pi* = x - V_h / beta
        scaled_value, log_pi[h] = log_softmax_rows(x, out=x)
        values[h] = read_only(beta * scaled_value)
    log_z = scaled_value  # V_0 / beta = log Z(s_0) : (n_prompts,)
    return Solution(
        policy=Policy.trusted(tree, log_pi),
        method="soft_value_iteration",
        reference=ref,
        reward=values[tree.horizon],
        beta=beta,
        log_partition=log_z,
        lagrange_multiplier=beta * (1.0 - log_z),
        values=values,
        wall_time=time.perf_counter() - start,
    )
