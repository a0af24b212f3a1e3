"""The KKT closed form of KL-regularized RL (lecture section 4).

The seed derives, for trajectory distributions ``P`` over complete generations of one prompt,

    max_P sum_xi P(xi) [r(xi) - beta log P(xi) + beta log P_ref(xi)]  s.t.  sum_xi P(xi) = 1

with Lagrangian ``L(P, lambda)``; stationarity gives
``log P*(xi) = log P_ref(xi) + r(xi)/beta + lambda/beta - 1``, and normalisation gives

    Z(s_0)   = sum_xi P_ref(xi | s_0) exp(r(xi) / beta)            (partition function)
    log P*(xi) = log P_ref(xi | s_0) + r(xi) / beta - log Z(s_0)
    lambda*  = beta (1 - log Z(s_0))

(the seed's case is beta = 1). The autoregressive policy that generates ``P*`` is found by
summing ``P*`` over subtrees (:func:`tinyrlhf.policy.normalize_leaf_log_weights`), one
backward pass of log-sum-exps over the leaf weights ``W(xi) = log P_ref(xi | s_0) + r(xi)/beta``:

    U_H = W,   U_h(s) = log sum_a exp U_{h+1}(s o a),   log pi*(a|s) = U_{h+1}(s o a) - U_h(s)

and ``log Z(s_0) = U_0(s_0)``, the partition function's sum over leaves taken subtree by
subtree. This uses ``pi_ref`` only through the leaf probabilities ``P_ref(xi)`` (one forward
pass), so it is independent of soft value iteration's per-state backups.

**Unreached states.** Where ``P_ref`` puts no mass below a state ``s`` (``U_h(s) = -inf``),
``P*`` puts none either and ``pi*(.|s)`` is undefined: any row there generates the same
``P*``. The closed form takes ``pi_ref``'s row (which is forced to ``eos`` after an end token,
like every policy's). Soft value iteration defines ``pi*`` there by its own recursion, so the
two agree on every state the reference reaches and on every leaf probability, not on
unreached rows.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.special import logsumexp

from ..policy import Policy, normalize_leaf_log_weights
from ..validation import check_problem, frozen_copy, read_only
from .solution import Solution


def optimal_leaf_log_probs(
    ref: Policy, reward: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""``log P*(xi | s_0)`` on every leaf and ``log Z(s_0)`` per prompt.

    ``log P* = log P_ref + r / beta - log Z``, ``log Z = log sum_xi P_ref(xi) e^{r(xi)/beta}``
    over each prompt's leaves by one ``scipy.special.logsumexp`` (the leaf-level sum that
    :func:`closed_form` takes subtree by subtree):

    .. math::

        \log P^*(\xi \mid s_0) &= \log P_{\mathrm{ref}}(\xi \mid s_0) + \frac{r(\xi)}{\beta}
        - \log Z(s_0),

        \log Z(s_0) &= \log \sum_{\xi} P_{\mathrm{ref}}(\xi \mid s_0)\, e^{r(\xi)/\beta}.

    Returns:
        ``(log_p_star, log_z)`` of shapes ``(n_leaves,)`` and ``(n_prompts,)``.
    """
    ref, reward, beta = check_problem(ref, reward, beta)
    tree = ref.tree
    # log P_ref(xi) + (r(xi) - m)/beta with m = max r over the leaves P_ref reaches, one row
    # per prompt (n_prompts, A**H): the shift keeps the best reachable leaves' weights near 0,
    # so adding log P_ref and subtracting the log normalizer lose no digits when r/beta is
    # huge (log Z adds m/beta back); a larger reward on a leaf P_ref never produces must not
    # set m, or every reachable weight would be a huge negative number carrying log P_ref
    log_p_ref = ref.leaf_log_probs().reshape(tree.n_prompts, -1)
    rewards = reward.reshape(tree.n_prompts, -1)
    shift = np.where(log_p_ref > -np.inf, rewards, -np.inf).max(axis=1)  # m: (n_prompts,)
    log_weight = log_p_ref + (rewards - shift[:, None]) / beta
    log_z_shifted = logsumexp(log_weight, axis=1)  # (n_prompts,)
    log_p_star = (log_weight - log_z_shifted[:, None]).reshape(-1)
    return log_p_star, log_z_shifted + shift / beta


def closed_form(ref: Policy, reward: np.ndarray, beta: float) -> Solution:
    r"""Solve the KL-regularized problem by the KKT closed form ``P* ∝ P_ref exp(r / beta)``.

    .. math::

        P^*(\xi \mid s_0) = \frac{P_{\mathrm{ref}}(\xi \mid s_0)\, e^{r(\xi)/\beta}}{Z(s_0)},
        \qquad \lambda^* = \beta\,(1 - \log Z(s_0)),

    and the policy that generates it, from subtree log-sum-exps ``U_h`` of the leaf weights
    ``W = log P_ref + r / beta``:

    .. math::

        U_H &= W, \qquad U_h(s) = \log \sum_a e^{U_{h+1}(s \circ a)},

        \log \pi^*(a \mid s) &= U_{h+1}(s \circ a) - U_h(s), \qquad \log Z(s_0) = U_0(s_0).

    Args:
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards on complete generations.
        beta: KL coefficient, finite and > 0 (with ``max |r| / beta`` finite in float64).

    Returns:
        A :class:`Solution` with ``policy`` (``pi*`` from subtree sums of ``P*``; ``pi_ref``'s
        rows at states ``P_ref`` never reaches), ``log_partition`` (``log Z``,
        ``(n_prompts,)``), ``lagrange_multiplier`` (``beta (1 - log Z)``) and
        ``leaf_log_probs`` (``log P*``, ``(n_leaves,)``; also ``info["leaf_log_probs"]``).

    Raises:
        TypeError: ``ref`` is not a Policy, or ``reward``/``beta`` are not real.
        ValueError: bad ``reward`` or ``beta`` (see :func:`tinyrlhf.validation.check_problem`).
    """
    start = time.perf_counter()
    ref, reward, beta = check_problem(ref, reward, beta)
    tree = ref.tree
    # W(xi) = log P_ref(xi) + r(xi) / beta, the unnormalized log P*(xi) : (n_leaves,)
    log_p_star = ref.leaf_log_probs()
    log_p_star += reward / beta
    # subtree sums: log pi*(a|s) = U_{h+1}(s o a) - U_h(s), log Z = U_0; pi_ref where unreached
    policy, log_z = normalize_leaf_log_weights(tree, log_p_star, fallback=ref)
    # log P* = W - log Z(s_0), per prompt : (n_prompts, A**H)
    log_p_star.reshape(tree.n_prompts, -1)[...] -= log_z[:, None]
    return Solution(
        policy=policy,
        method="closed_form",
        reference=ref,
        reward=frozen_copy(reward),
        beta=beta,
        log_partition=log_z,
        lagrange_multiplier=beta * (1.0 - log_z),
        wall_time=time.perf_counter() - start,
        info={"leaf_log_probs": read_only(log_p_star)},
        leaf_log_probs=read_only(log_p_star),
    )
