r"""Exact expected score-function gradients for tabular softmax policies (lecture section 4).

A policy with softmax logits ``theta(s, .)`` per state has
``grad_{theta(s, .)} log pi(a | s) = onehot(a) - pi(. | s)``. Two expectations cover every
gradient in the package (policy gradient, KL estimators as losses, group-relative
estimators):

- a **sequence coefficient** ``C(xi)`` multiplying the whole generation's score,

      E_{xi ~ pi}[C(xi) grad log P_pi(xi)](s, a) = M(s o a) - pi(a | s) M(s),
      M(node) = sum_{xi below node} P_pi(xi) C(xi)         (TokenTree.subtree_sums)

  (the sum over the tokens of ``xi`` collapses onto the one path through ``s``);
- a **token coefficient** ``c(s, a)`` multiplying each token's own score,

      E[sum_h c(s_h, a_h) grad log pi(a_h | s_h)](s, a)
          = d_pi(s) pi(a | s) (c(s, a) - sum_b pi(b | s) c(s, b))   (Policy.log_occupancies)

The exact policy gradient of ``J = E[r] - beta KL`` is the sequence form with
``C = r - beta log(P_pi / P_ref)`` and the token form with ``c = Q_pi`` (Sutton et al. 2000,
the policy-gradient theorem; Williams 1992 for the score function). Both are gradients of the
mean over prompts (prompts uniform). Tokens the policy never picks get 0 (a ``-inf`` logit has
no gradient), and coefficients there do not enter: a leaf with ``P_pi = 0`` weighs 0 whatever
its coefficient (``0 * inf`` cannot reach the result).

.. math::

    \mathbb{E}_{\xi \sim \pi}\big[C(\xi)\, \nabla_\theta \log P_\pi(\xi)\big](s, a)
    &= M(s \circ a) - \pi(a \mid s)\, M(s),

    M(\nu) &= \sum_{\xi \text{ below } \nu} P_\pi(\xi)\, C(\xi),

    \mathbb{E}\Big[\sum_h c(s_h, a_h)\, \nabla_\theta \log \pi(a_h \mid s_h)\Big](s, a) &

    &= d_\pi(s)\, \pi(a \mid s) \Big(c(s, a) - \sum_b \pi(b \mid s)\, c(s, b)\Big).
"""

from __future__ import annotations

import numpy as np

from .policy import Policy


def sequence_score_gradient(
    policy: Policy, leaf_coefficients: np.ndarray, *, leaf_probs: np.ndarray | None = None
) -> list[np.ndarray]:
    r"""``E_{xi ~ pi}[C(xi) grad_theta log P_pi(xi)]`` per level, mean over prompts.

    .. math::

        g_h(s, a) &= \frac{M(s \circ a) - \pi(a \mid s)\, M(s)}{n_{\mathrm{prompts}}},

        M(\nu) &= \sum_{\xi \text{ below } \nu} P_\pi(\xi)\, C(\xi).

    Args:
        policy: ``pi_theta`` with softmax logits ``theta``.
        leaf_coefficients: ``(n_leaves,)`` ``C(xi)``; only leaves with ``P_pi(xi) > 0`` are
            read (any value, even ``inf`` or NaN, elsewhere).
        leaf_probs: ``(n_leaves,)`` ``P_pi(xi)`` when the caller has it already (it must equal
            ``policy.leaf_probs()``, e.g. ``np.exp`` of ``policy.leaf_log_probs()``): saves the
            forward pass and the ``exp`` over the leaves. Not checked.

    Returns:
        ``H`` arrays ``(level_size(h), A)``: ``(M(s o a) - pi(a|s) M(s)) / n_prompts``.
    """
    tree = policy.tree
    p = policy.leaf_probs() if leaf_probs is None else leaf_probs
    with np.errstate(invalid="ignore"):  # 0 * inf off the support, zeroed just below
        weighted = np.multiply(p, leaf_coefficients)  # P(xi) C(xi)
    if p.min() == 0.0:  # leaves pi never reaches (or whose P underflows): weight 0
        weighted[p == 0.0] = 0.0
    sums = tree.subtree_sums(weighted)  # M_0..M_H
    gradient = []
    for h, log_pi in enumerate(policy.log_probs):
        children = sums[h + 1].reshape(-1, tree.n_tokens)  # M(s o a): (level_size(h), A)
        level = np.exp(log_pi)  # pi(a|s), then M(s o a) - pi(a|s) M(s), in place
        level *= sums[h][:, None]
        np.subtract(children, level, out=level)
        if tree.n_prompts > 1:  # mean over prompts
            level /= tree.n_prompts
        gradient.append(level)
    return gradient


def token_score_gradient(policy: Policy, token_coefficients: list[np.ndarray]) -> list[np.ndarray]:
    r"""``E[sum_h c(s_h, a_h) grad_theta log pi(a_h | s_h)]`` per level, mean over prompts.

    .. math::

        g_h(s, a) = \frac{d_\pi(s)\, \pi(a \mid s)}{n_{\mathrm{prompts}}}
        \Big(c(s, a) - \sum_b \pi(b \mid s)\, c(s, b)\Big).

    Args:
        policy: ``pi_theta`` with softmax logits ``theta``.
        token_coefficients: ``H`` arrays ``(level_size(h), A)`` of ``c(s, a)``; entries at
            tokens the policy never picks are not read.

    Returns:
        ``H`` arrays ``(level_size(h), A)``:
        ``d_pi(s) pi(a|s) (c(s, a) - sum_b pi(b|s) c(s, b)) / n_prompts``.
    """
    tree = policy.tree
    log_reach = policy.log_occupancies()
    gradient = []
    for h, log_pi in enumerate(policy.log_probs):
        picked = log_pi > -np.inf
        c = np.where(picked, token_coefficients[h], 0.0)  # (level_size(h), A)
        pi = np.exp(log_pi)
        baseline = (pi * c).sum(axis=1, keepdims=True)  # sum_b pi(b|s) c(s, b)
        weight = np.exp(log_reach[h])[:, None] * pi  # d(s) pi(a|s)
        gradient.append(np.where(picked, weight * (c - baseline), 0.0) / tree.n_prompts)
    return gradient


def gradient_norm(gradient: list[np.ndarray]) -> float:
    """Euclidean norm of a per-level gradient (all levels as one vector)."""
    return float(np.sqrt(sum(float(np.vdot(table, table)) for table in gradient)))


def update_residual(policy: Policy, gradient: list[np.ndarray]) -> float:
    """Stationarity (KKT) residual of ascent along ``gradient`` on the product of simplices.

    A logit update has the form ``g(s, a) = d(s) pi(a|s) A(s, a) / n_prompts`` with the
    per-token advantage ``A(s, a) = c(s, a) - sum_b pi(b|s) c(s, b)`` (module docstring), i.e.
    it is the logit image of the field ``d(s) c(s, a) / n_prompts`` on ``pi(.|s)``. Ascent on
    ``pi(.|s)`` in its simplex is stationary (KKT) iff every token ``pi`` can pick has
    ``A(s, a) <= 0`` wherever ``d(s) > 0``: then ``pi(.|s)`` puts mass only on the best tokens
    (``A = 0``), and the others may keep a tiny ``pi`` with ``A < 0``. The residual is the
    Frank-Wolfe gap of the field,

        res = max_{pi'} <field, pi' - pi> = sum_s (d(s) / n_prompts) max_{a: pi(a|s) > 0} A(s, a)
            = sum_s max_{a: pi(a|s) > 0} g(s, a) / pi(a|s)      (>= 0: the pi-mean of A is 0)

    (for ``g = grad J`` the first-order optimality gap of ``J``, Frank & Wolfe 1956). Unlike
    ``||g||`` it is not weighted by ``pi(a|s)``: a reached token with a tiny probability and a
    positive advantage (a plateau) keeps it large, while a tiny ``pi`` with a negative
    advantage (a boundary optimum) adds nothing. It bounds the norm: ``sum_a pi |A| <=
    2 max_a A`` per state, so ``||g|| <= ||g||_1 <= 2 res``. Tokens whose ``pi`` underflows to
    0 (or is ``-inf``) are not read.

    Args:
        policy: the softmax policy ``pi`` the update was evaluated at.
        gradient: ``H`` arrays ``(level_size(h), A)``: the update w.r.t. the logits (rows sum
            to 0), e.g. from :func:`sequence_score_gradient`.

    Returns:
        The residual ``>= 0`` (NaN when ``gradient`` is not finite).
    """
    total = 0.0
    for log_pi, g in zip(policy.log_probs, gradient, strict=True):
        pi = np.exp(log_pi)
        picked = pi > 0
        advantage = np.divide(g, pi, out=np.full(g.shape, -np.inf), where=picked)  # d A / n
        advantage[~picked & ~np.isfinite(g)] = np.nan  # a non-finite update stays visible
        total += float(np.maximum(advantage.max(axis=1), 0.0).sum())
    return total
