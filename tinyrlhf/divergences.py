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
from .validation import check_beta, check_leaf_array, check_policy, check_same_tree

#: Below this ``|log p - log q|`` the KL terms use their Taylor series (see ``_kl_terms``).
SERIES_BELOW = 1e-3


def _kl_terms(log_p: np.ndarray, log_q: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Finite part of ``sum p (log p - log q)`` along ``axis`` from terms >= 0, and where it
    is ``+inf``.

    Each term is the Bregman form ``p log(p/q) - p + q = q phi(d) >= 0`` with
    ``d = log p - log q`` and ``phi(d) = d e^d - e^d + 1`` (the sum is the KL because ``p``
    and ``q`` both sum to 1 along ``axis``), so the sum is non-negative in floating point
    too. It is evaluated as ``p (d - 1) + q`` (no overflow, and at ``|d| >=`` :data:`SERIES_BELOW`
    the result ``q phi(d) >= 5e-7 q`` is far above the rounding), and by the series
    ``q d^2 (1/2 + d/3 + d^2/8 + d^3/30 + d^4/144)`` near ``d = 0``, where the two parts
    cancel (the next term is below ``1e-17`` relative). ``p = 0`` gives the term ``q``;
    ``p > 0 = q`` makes the sum ``+inf`` (flagged apart, so no ``0 * inf`` arises).
    """
    on_support = log_p > -np.inf
    infinite = (on_support & np.isneginf(log_q)).any(axis=axis)
    both = on_support & (log_q > -np.inf)
    d = np.zeros_like(log_p)  # log p - log q where both are positive
    np.subtract(log_p, log_q, out=d, where=both)
    p, q = np.exp(log_p), np.exp(log_q)  # 0 where the log is -inf
    small = np.abs(d) < SERIES_BELOW
    x = np.where(small, d, 0.0)  # the series only where it is used (no overflow elsewhere)
    series = q * x * x * (0.5 + x * (1 / 3 + x * (1 / 8 + x * (1 / 30 + x / 144))))
    terms = np.where(small, series, p * (d - 1.0) + q)
    # p = 0: the term is q; p > 0 = q: +inf, reported by `infinite`
    terms = np.where(both, terms, np.where(on_support, 0.0, q))
    return terms.sum(axis=axis), np.asarray(infinite)


def kl_divergence(p: Policy, q: Policy, *, method: str = "chain") -> np.ndarray:
    r"""Exact ``KL(P_p || P_q)`` over complete generations, per prompt.

    Both methods sum terms that are non-negative (see ``_kl_terms``), so the result is
    ``>= 0`` in floating point too, with no clipping.

    .. math::

        \mathrm{KL}(P_p \,\|\, P_q) &= \sum_\xi P_p(\xi) \log \frac{P_p(\xi)}{P_q(\xi)}

        &= \sum_{h=0}^{H-1} \mathbb{E}_{s \sim d^p_h}
        \Big[\sum_a p(a \mid s) \log \frac{p(a \mid s)}{q(a \mid s)}\Big].

    Args:
        p, q: policies on the same tree.
        method: ``"chain"`` (sum over levels of expected per-state KL, the default) or
            ``"leaves"`` (the definition, a sum over leaves).

    Returns:
        ``(n_prompts,)`` float64, ``>= 0``; ``+inf`` where ``p`` reaches a generation that
        ``q`` never produces.
    """
    p, q = check_policy(p, "p"), check_policy(q, "q")
    check_same_tree(p, q, ("p", "q"))
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
    for h, log_reach in enumerate(p.log_occupancies()[:-1]):
        row_kl, row_infinite = _kl_terms(p.log_probs[h], q.log_probs[h], axis=1)
        # E_{s ~ d_h}[KL(p(.|s) || q(.|s))], per prompt: (level_size(h),) -> (P, A**h)
        total += (np.exp(log_reach) * row_kl).reshape(tree.n_prompts, -1).sum(axis=1)
        reached_infinite = (row_infinite & (log_reach > -np.inf)).reshape(tree.n_prompts, -1)
        total[reached_infinite.any(axis=1)] = np.inf
    return total


def expected_reward(policy: Policy, reward: np.ndarray) -> np.ndarray:
    """``E_{xi ~ pi}[r(xi)]`` per prompt, ``(n_prompts,)``.

    Args:
        policy: a Policy.
        reward: ``(n_leaves,)`` finite rewards in canonical leaf order.
    """
    policy = check_policy(policy)
    reward = check_leaf_array(policy.tree, reward, "reward")
    weighted = policy.leaf_probs() * reward  # (n_leaves,)
    return weighted.reshape(policy.tree.n_prompts, -1).sum(axis=1)


def entropy(policy: Policy) -> np.ndarray:
    r"""Sequence-level entropy ``Ent(P_pi) = -sum_xi P(xi) log P(xi)`` per prompt (chain rule).

    ``Ent(P_pi) = sum_h E_{s ~ d_h}[-sum_a pi(a|s) log pi(a|s)]``, from terms ``-p log p >= 0``: a
    log-probability is ``<= 0``, and one that a normalized row rounds to ``+1e-16`` is
    taken as its true value bound, 0 (so the entropy cannot come out negative).

    .. math::

        \mathrm{Ent}(P_\pi) &= -\sum_\xi P_\pi(\xi) \log P_\pi(\xi)

        &= \sum_{h=0}^{H-1} \mathbb{E}_{s \sim d_h}
        \Big[-\sum_a \pi(a \mid s) \log \pi(a \mid s)\Big].
    """
    policy = check_policy(policy)
    tree = policy.tree
    total = np.zeros(tree.n_prompts)
    for log_reach, table in zip(policy.log_occupancies(), policy.log_probs, strict=False):
        plogp = np.zeros_like(table)  # -p log p >= 0, 0 log 0 = 0
        np.multiply(np.exp(table), -np.minimum(table, 0.0), out=plogp, where=table > -np.inf)
        total += (np.exp(log_reach) * plogp.sum(axis=1)).reshape(tree.n_prompts, -1).sum(axis=1)
    return total


def objective(policy: Policy, ref: Policy, reward: np.ndarray, beta: float) -> np.ndarray:
    r"""The KL-regularized RLHF objective per prompt.

        J(pi) = E_{xi ~ pi}[r(xi)] - beta * KL(pi || pi_ref)

    .. math::

        J(\pi) = \mathbb{E}_{\xi \sim \pi}[r(\xi)]
        - \beta\, \mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}}).

    Args:
        policy: the policy ``pi``.
        ref: the reference policy ``pi_ref`` (same tree).
        reward: ``(n_leaves,)`` finite rewards.
        beta: KL coefficient, finite and > 0.

    Returns:
        ``(n_prompts,)``; ``-inf`` where ``pi`` leaves the support of ``pi_ref``.
    """
    policy, ref = check_policy(policy), check_policy(ref, "ref")
    check_same_tree(policy, ref, ("policy", "ref"))
    beta = check_beta(beta)
    kl = kl_divergence(policy, ref)
    return np.where(np.isinf(kl), -np.inf, expected_reward(policy, reward) - beta * kl)


def total_variation(p: Policy, q: Policy) -> np.ndarray:
    """``TV(P_p, P_q) = 1/2 sum_xi |P_p(xi) - P_q(xi)|`` per prompt, in [0, 1]."""
    p, q = check_policy(p, "p"), check_policy(q, "q")
    check_same_tree(p, q, ("p", "q"))
    gap = np.abs(p.leaf_probs() - q.leaf_probs())
    return 0.5 * gap.reshape(p.tree.n_prompts, -1).sum(axis=1)
