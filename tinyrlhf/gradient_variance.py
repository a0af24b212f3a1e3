"""The exact variance of the sampled (REINFORCE) policy gradient (lecture section 4, "Solve
using, e.g., PPO").

Policy-gradient methods never see the exact gradient of ``J(pi) = E_pi[r] - beta KL(pi ||
pi_ref)``; they estimate it from ``n`` sampled generations of each prompt. With the
KL-penalized return and the score of a whole generation,

    G(xi) = r(xi) - beta log(P_pi(xi) / P_ref(xi)),
    s(xi) = grad_theta log P_pi(xi) = sum_h (onehot(a_h) - pi(. | s_h)) at the logits of s_h,

the score-function estimators (Williams 1992) of ``g = grad J = E[G s]`` are

    none:   g_n = 1/n sum_i G_i s_i
    value:  g_n = 1/n sum_i (G_i - V(s_0)) s_i          (oracle baseline V(s_0) = E_pi[G])
    rloo:   g_n = 1/n sum_i (G_i - mean_{j != i} G_j) s_i   (leave-one-out; Kool et al. 2019)

all unbiased (``E[s] = 0``; ``E[G s] = g`` because ``E[grad log P] = 0`` absorbs the
derivative of ``G`` itself). The first two average ``n`` i.i.d. terms, so their total
variance ``E||g_n - g||^2`` is ``(E[c^2 ||s||^2] - ||g||^2) / n`` with ``c = G`` or
``c = G - V``. The leave-one-out estimator is a U-statistic with the symmetric kernel
``k(x, y) = (G_x - G_y)(s_x - s_y) / 2`` (``E[k] = g``), so by Hoeffding (1948)

    Var(g_n) = 2 / (n (n - 1)) * (2 (n - 2) zeta_1 + zeta_2),
    zeta_1 = E||E[k | x] - g||^2 = (E[(G - V)^2 ||s||^2] - ||g||^2) / 4,
    zeta_2 = E||k - g||^2 = E[(G_x - G_y)^2 ||s_x - s_y||^2] / 4 - ||g||^2,

which tends to the oracle-baseline variance as ``n`` grows and equals ``zeta_2`` at
``n = 2``. Every expectation is a finite sum over the leaves of one prompt, written with the
Gram matrix of the scores, ``K[x, y] = s_x . s_y``, built one level at a time:

    K[x, y] = sum_h 1[s_h(x) = s_h(y)] (1[a_h(x) = a_h(y)] - pi(a_h(x)) - pi(a_h(y))
                                        + sum_b pi(b | s_h)^2).

With several prompts ``J`` is the mean over prompts (as in :func:`policy_gradient_grad`)
and ``n`` generations are drawn from *each* prompt, so
``Var = sum_p Var_p / n_prompts**2``. At the optimum ``pi*`` the return is the constant
``beta log Z(s_0)``, so with either baseline the variance is exactly zero there.

References: R. J. Williams (1992), "Simple statistical gradient-following algorithms";
E. Greensmith, P. Bartlett, J. Baxter (2004), "Variance reduction techniques for gradient
estimates in reinforcement learning"; W. Kool, H. van Hoof, M. Welling (2019), "Buy 4
REINFORCE samples, get a baseline for free!"; W. Hoeffding (1948), "A class of statistics
with asymptotically normal distribution".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .divergences import kl_divergence
from .gradients import sequence_score_gradient
from .memory import FLOAT_BYTES, check_memory
from .policy import Policy
from .validation import (
    check_policy,
    check_positive_int,
    check_problem,
    check_same_tree,
    make_rng,
)

BASELINES = ("none", "value", "rloo")


@dataclass(frozen=True, eq=False)
class GradientVariance:
    """Exact noise of the sampled policy gradient at one policy, for several batch sizes.

    Attributes:
        baseline: ``"none"``, ``"value"`` or ``"rloo"``.
        batch_sizes: ``(n_sizes,)`` generations per prompt ``n``.
        variance: ``(n_sizes,)`` total variance ``E||g_n - g||^2`` (trace of the covariance).
        gradient: ``(n_parameters,)`` the exact ``g = grad J``, levels concatenated, each
            ``(level_size(h), A)`` table flattened row by row.
    """

    baseline: str
    batch_sizes: np.ndarray
    variance: np.ndarray
    gradient: np.ndarray

    @property
    def gradient_norm_squared(self) -> float:
        """``||g||^2``, the signal the estimator has to find."""
        return float(self.gradient @ self.gradient)

    @property
    def signal_to_noise(self) -> np.ndarray:
        """``||g||^2 / E||g_n - g||^2`` per batch size (``inf`` where the variance is 0)."""
        with np.errstate(divide="ignore"):
            return np.where(self.variance > 0, self.gradient_norm_squared / self.variance, np.inf)


def _check_problem(
    policy: object, ref: object, reward: object, beta: object, baseline: object
) -> tuple[np.ndarray, float]:
    ref, reward, beta = check_problem(ref, reward, beta)
    policy = check_policy(policy)
    check_same_tree(policy, ref, ("policy", "ref"))
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    if np.isinf(kl_divergence(policy, ref)).any():
        raise ValueError(
            "policy puts probability on generations ref never produces, so the return "
            "G = r - beta log(P_pi / P_ref) is infinite there; restrict policy to ref's support"
        )
    return reward, beta


def _returns(policy: Policy, ref: Policy, reward: np.ndarray, beta: float) -> np.ndarray:
    """``G(xi) = r - beta (log P_pi - log P_ref)`` on every leaf, 0 where ``P_pi(xi) = 0``."""
    log_p = policy.leaf_log_probs()
    reached = log_p > -np.inf
    log_ratio = np.zeros_like(log_p)
    np.subtract(log_p, ref.leaf_log_probs(), out=log_ratio, where=reached)
    return np.where(reached, reward - beta * log_ratio, 0.0)


def _score_gram(policy: Policy) -> np.ndarray:
    """``K[p, x, y] = s_x . s_y`` for the leaves ``x, y`` of each prompt, ``(P, L, L)``."""
    tree = policy.tree
    n_tokens, horizon, per_prompt = tree.n_tokens, tree.horizon, tree.leaves_per_prompt
    # the Gram matrices and up to four (P, L, L) temporaries (here and in the variance)
    check_memory(
        tree.n_prompts * per_prompt**2 * FLOAT_BYTES * 5,
        f"the score Gram matrices ({tree.n_prompts} x {per_prompt} x {per_prompt})",
    )
    leaf = np.arange(tree.n_leaves, dtype=np.int64).reshape(tree.n_prompts, per_prompt)
    gram = np.zeros((tree.n_prompts, per_prompt, per_prompt))
    for h in range(horizon):
        pi = np.exp(policy.log_probs[h])  # (level_size(h), A)
        state = leaf // n_tokens ** (horizon - h)  # s_h of each leaf: (P, L)
        token = (leaf // n_tokens ** (horizon - h - 1)) % n_tokens  # a_h: (P, L)
        pi_taken = pi[state, token]  # pi(a_h | s_h): (P, L)
        squared = (pi * pi).sum(axis=1)[state]  # sum_b pi(b | s_h)^2: (P, L)
        same_state = state[:, :, None] == state[:, None, :]  # (P, L, L)
        same_token = token[:, :, None] == token[:, None, :]
        # (onehot(a) - pi) . (onehot(a') - pi), counted where both paths share s_h
        inner = same_token - pi_taken[:, :, None] - pi_taken[:, None, :] + squared[:, :, None]
        gram += np.where(same_state, inner, 0.0)
    return gram


def _variance_per_prompt(
    probs: np.ndarray, returns: np.ndarray, gram: np.ndarray, baseline: str, n: np.ndarray
) -> np.ndarray:
    """Total variance of each prompt's estimator for each batch size ``n``: ``(P, n_sizes)``.

    ``probs``, ``returns``: ``(P, L)``; ``gram``: ``(P, L, L)``; ``n``: ``(n_sizes,)``.
    """
    value = (probs * returns).sum(axis=1, keepdims=True)  # V(s_0) = E[G]: (P, 1)
    centred = returns - value  # c = G - V: (P, L)
    # ||g_p||^2 = E[c s] . E[c s] (= E[G s] . E[G s] since E[s] = 0); centring first keeps
    # the sum free of cancellation where G is nearly constant (near the optimum)
    weighted = probs * centred  # (P, L)
    signal = np.einsum("px,pxy,py->p", weighted, gram, weighted)  # (P,)
    diagonal = np.diagonal(gram, axis1=1, axis2=2)  # ||s_x||^2: (P, L)
    if baseline == "none":
        single = (probs * returns**2 * diagonal).sum(axis=1) - signal  # (P,)
        return single[:, None] / n[None, :]
    oracle = (probs * centred**2 * diagonal).sum(axis=1) - signal  # Var((G - V) s): (P,)
    if baseline == "value":
        return oracle[:, None] / n[None, :]
    zeta_1 = oracle / 4.0
    variance_of_g = (probs * centred**2).sum(axis=1, keepdims=True)  # Var G: (P, 1)
    # E[(G_x - G_y)^2 (K_xx + K_yy)] = 2 sum_x P_x K_xx ((G_x - V)^2 + Var G)
    diagonal_part = 2.0 * (probs * diagonal * (centred**2 + variance_of_g)).sum(axis=1)
    gap_squared = (returns[:, :, None] - returns[:, None, :]) ** 2  # (G_x - G_y)^2: (P, L, L)
    cross_part = np.einsum("px,pxy,py->p", probs, gap_squared * gram, probs)  # E[(.)^2 K_xy]
    zeta_2 = (diagonal_part - 2.0 * cross_part) / 4.0 - signal  # (P,)
    n = n[None, :]
    return 2.0 / (n * (n - 1.0)) * (2.0 * (n - 2.0) * zeta_1[:, None] + zeta_2[:, None])


def _check_batch_sizes(batch_sizes: object, minimum: int) -> np.ndarray:
    array = np.atleast_1d(np.asarray(batch_sizes))
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"batch_sizes must be a non-empty 1-D array of integers, got {batch_sizes!r}"
        )
    if (array < minimum).any():
        raise ValueError(
            f"batch_sizes must be >= {minimum} (the leave-one-out baseline needs two "
            f"generations per prompt), got {array.min()}"
            if minimum == 2
            else f"batch_sizes must be >= 1, got {array.min()}"
        )
    return array.astype(np.int64)


def reinforce_gradient_variance(
    policy: Policy,
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    batch_sizes: np.ndarray | int,
    *,
    baseline: str = "rloo",
) -> GradientVariance:
    """Exact total variance ``E||g_n - g||^2`` of the REINFORCE gradient at ``policy``.

    ``g_n`` is the score-function estimate of ``grad J`` from ``n`` generations per prompt
    (module docstring), ``J`` the mean over prompts of ``E_pi[r] - beta KL(pi || pi_ref)``,
    the gradient taken over softmax logits as in :func:`tinyrlhf.policy_gradient_grad` (``g``
    itself is computed here by subtree sums of ``P G``, which also holds where ``policy``
    forbids tokens that ``ref`` allows).

    Args:
        policy: where the gradient is estimated (must stay in ``ref``'s support).
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards.
        beta: KL coefficient, finite and > 0.
        batch_sizes: ``(n_sizes,)`` integers ``n >= 1`` (``>= 2`` for ``"rloo"``).
        baseline: ``"none"``, ``"value"`` (oracle ``V(s_0)``) or ``"rloo"`` (leave-one-out,
            as :func:`tinyrlhf.policy_gradient` with ``method="reinforce"`` uses).

    Returns:
        A :class:`GradientVariance` with ``variance`` ``(n_sizes,)`` and the exact gradient.

    Raises:
        TypeError: non-Policy arguments, non-integer batch sizes.
        ValueError: bad reward or beta, an unknown baseline, batch sizes too small, or a
            policy outside ``ref``'s support.
    """
    reward, beta = _check_problem(policy, ref, reward, beta, baseline)
    sizes = _check_batch_sizes(batch_sizes, 2 if baseline == "rloo" else 1)
    tree = policy.tree
    probs = policy.leaf_probs().reshape(tree.n_prompts, -1)  # (P, L)
    returns = _returns(policy, ref, reward, beta).reshape(tree.n_prompts, -1)
    gram = _score_gram(policy)
    n = sizes.astype(np.float64)
    # J is the mean over prompts and each prompt draws its own n generations:
    # Var(1/P sum_p g_p) = sum_p Var(g_p) / P^2
    variance = _variance_per_prompt(probs, returns, gram, baseline, n).sum(axis=0)
    variance = variance / tree.n_prompts**2
    # g = E[(G - V) s] (= E[G s]); centring keeps g exact where G is nearly constant
    centred = returns - (probs * returns).sum(axis=1, keepdims=True)
    levels = sequence_score_gradient(policy, centred.reshape(-1))  # E[(G - V) s], per level
    gradient = np.concatenate([table.ravel() for table in levels])
    return GradientVariance(
        baseline=baseline, batch_sizes=sizes, variance=variance, gradient=gradient
    )


def reinforce_gradient_estimates(
    policy: Policy,
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    batch_size: int,
    n_batches: int,
    *,
    baseline: str = "rloo",
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    """Sampled REINFORCE gradients, one per batch of ``batch_size`` generations per prompt.

    The Monte Carlo counterpart of :func:`reinforce_gradient_variance`: the rows have mean
    ``g`` and total variance ``GradientVariance.variance`` (same layout as
    ``GradientVariance.gradient``).

    Args:
        policy, ref, reward, beta, baseline: as in :func:`reinforce_gradient_variance`.
        batch_size: generations per prompt in each batch, ``>= 1`` (``>= 2`` for ``"rloo"``).
        n_batches: independent batches, ``>= 1``.
        seed: int, Generator or None; default 0 (see :func:`~tinyrlhf.validation.make_rng`).

    Returns:
        ``(n_batches, n_parameters)`` gradient estimates.
    """
    reward, beta = _check_problem(policy, ref, reward, beta, baseline)
    batch_size = check_positive_int(batch_size, "batch_size", 2 if baseline == "rloo" else 1)
    n_batches = check_positive_int(n_batches, "n_batches")
    rng = make_rng(seed)
    tree = policy.tree
    n_tokens, n_prompts = tree.n_tokens, tree.n_prompts
    n_parameters = sum(tree.level_size(h) * n_tokens for h in range(tree.horizon))
    check_memory(n_batches * n_parameters * FLOAT_BYTES, "the gradient estimates")
    # every batch draws batch_size generations of every prompt: (n_batches, P, n)
    prompt = np.broadcast_to(
        np.arange(n_prompts)[None, :, None], (n_batches, n_prompts, batch_size)
    )
    leaf = policy.sample(prompt.size, seed=rng, prompt=prompt.reshape(-1)).reshape(prompt.shape)
    returns = _returns(policy, ref, reward, beta)[leaf]  # G_i: (n_batches, P, n)
    if baseline == "none":
        coefficient = returns
    elif baseline == "value":
        value = (
            (policy.leaf_probs() * _returns(policy, ref, reward, beta))
            .reshape(n_prompts, -1)
            .sum(axis=1)
        )  # V(s_0) = E[G]: (P,)
        coefficient = returns - value[None, :, None]
    else:
        others = (returns.sum(axis=2, keepdims=True) - returns) / (batch_size - 1)
        coefficient = returns - others
    # g_n = 1/P sum_p 1/n sum_i c_i s_i, with s_i = sum_h (onehot(a_h) - pi(.|s_h))
    coefficient = (coefficient / (n_prompts * batch_size)).reshape(n_batches, -1)  # (B, P*n)
    leaf = np.reshape(leaf, (n_batches, -1))
    batch = np.broadcast_to(np.arange(n_batches)[:, None], leaf.shape)
    estimates = np.zeros((n_batches, n_parameters))
    offset = 0
    for h in range(tree.horizon):
        state = leaf // n_tokens ** (tree.horizon - h)  # s_h: (B, P*n)
        token = (leaf // n_tokens ** (tree.horizon - h - 1)) % n_tokens
        np.add.at(estimates, (batch, offset + state * n_tokens + token), coefficient)
        pi = np.exp(policy.log_probs[h][state])  # (B, P*n, A)
        columns = offset + state[:, :, None] * n_tokens + np.arange(n_tokens)  # (B, P*n, A)
        np.add.at(estimates, (batch[:, :, None], columns), -coefficient[:, :, None] * pi)
        offset += tree.level_size(h) * n_tokens
    return estimates
