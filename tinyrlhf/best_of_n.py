"""Best-of-n sampling, exactly, and its comparison with RLHF at equal KL (beyond the lecture).

Best-of-n draws ``n`` completions of a prompt from ``pi_ref`` and keeps the one of highest
``score`` (the true reward, a fitted ``r_hat``, a 0/1 verifier, a length, ...). On a tree
its output distribution is a finite sum over each prompt's leaves.

**The distribution** (ties broken uniformly among the tied draws). Let ``q = P_ref`` on one
prompt's leaves, ``c`` the *tie class* of ``y`` (the leaves with score ``s(y)``), ``q(c)`` its
mass, ``F(t) = q(s <= t)`` the CDF of the score and ``F(t^-) = q(s < t)``. The best score of
``n`` i.i.d. draws is ``<= t`` iff all ``n`` are, so it equals ``s(y)`` with probability
``F(s(y))^n - F(s(y)^-)^n``. Given that, the draws in class ``c`` are i.i.d. from ``q``
restricted to ``c``, and a uniformly chosen one of them is distributed as ``q(y) / q(c)``
(exchangeability), so

    P_BoN(y) = q(y) / q(c) * [F(s(y))^n - F(s(y)^-)^n].                              (1)

Picking the *first drawn* of the tied draws gives the same law (``ties="uniform"``).
``ties="first"`` instead breaks ties by leaf order (the lowest canonical leaf index wins, as a
deterministic ``sort`` would): the order ``(score, -index)`` has no ties, and (1) holds with
singleton classes. Leaves ``q`` never produces are never drawn and keep probability 0.

**Numerics.** ``n`` may be large (``10**6``): with ``x = q(c) / F(s)``,

    log[F^n - F_-^n] = n log F + log(-expm1(n log1p(-x))),

with ``log F = log1p(-q(s > t))`` from the upper tail where ``F >= 1/2`` (no cancellation
near 1) and a log-space cumulative sum elsewhere.

**Derived quantities** (per prompt; ``w_c`` the bracket of (1)):

- ``KL(P_BoN || P_ref) = sum_c w_c log(w_c / q(c))`` (the ratio is constant on a class).
  Beirami et al. (2024, arXiv 2401.01879) show ``KL <= log n - (n - 1)/n``, with equality in
  the continuous limit (the formula widely quoted as exact): for a continuous score
  ``w = n F^{n-1} dF`` and ``KL = int_0^1 n u^{n-1} log(n u^{n-1}) du = log n - (n-1)/n``.
- the win rate against one reference draw, ties counting 1/2:
  ``sum_c w_c [F(s_c^-) + q(c)/2]``; ``n/(n+1)`` in the continuous limit
  (``int_0^1 u d(u^n)``: the best of ``n + 1`` i.i.d. draws is each one with probability
  ``1/(n + 1)``).
- the expected score ``sum_c w_c s_c``.

References: Beirami et al. (2024), "Theoretical guarantees on the best-of-n alignment
policy"; Gao, Schulman & Hilton (2023), "Scaling laws for reward model overoptimization"
(best-of-n against RL at equal KL); Sessa et al. (2024, BOND, arXiv 2407.14622).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

from .divergences import expected_reward
from .policy import Policy
from .validation import check_leaf_array, check_policy, check_positive_int

#: Tie rules of :func:`best_of_n`.
TIE_RULES = ("uniform", "first")
#: Bracket of ``log beta`` searched by :func:`rlhf_at_kl` (beta from 1e-12 to 1e12: beyond
#: these the closed form's KL is within float64 rounding of its limits).
LOG_BETA_BRACKET = (np.log(1e-12), np.log(1e12))


@dataclass(frozen=True, eq=False)
class BestOfN:
    """The exact best-of-n distribution of one ``(ref, score, n)``.

    Attributes:
        policy: ``P_BoN`` as an autoregressive :class:`Policy` (subtree sums of (1); states
            ``P_BoN`` never reaches keep the reference's rows).
        leaf_log_probs: ``(n_leaves,)`` ``log P_BoN(xi | s_0)``; ``-inf`` where 0.
        n: the number of draws.
        ties: the tie rule (``"uniform"`` or ``"first"``).
        kl: ``(n_prompts,)`` exact ``KL(P_BoN || P_ref)``.
        kl_bound: ``log n - (n - 1)/n`` (Beirami et al. 2024), a float.
        win_rate: ``(n_prompts,)`` ``P(s(y_BoN) > s(y')) + P(=)/2`` with ``y' ~ P_ref``.
        expected_score: ``(n_prompts,)`` ``E_BoN[score]``.
        score: ``(n_leaves,)`` the score that selected.
    """

    policy: Policy
    leaf_log_probs: np.ndarray
    n: int
    ties: str
    kl: np.ndarray
    kl_bound: float
    win_rate: np.ndarray
    expected_score: np.ndarray
    score: np.ndarray


def kl_bound(n: int) -> float:
    """``log n - (n - 1)/n``: the upper bound on ``KL(P_BoN || P_ref)`` (Beirami et al. 2024)."""
    n = check_positive_int(n, "n")
    return float(np.log(n) - 1.0 + 1.0 / n)


def best_of_n(ref: Policy, score: np.ndarray, n: int, *, ties: str = "uniform") -> BestOfN:
    r"""The exact distribution of best-of-n sampling from ``ref`` under ``score``, equation (1).

    ``P_BoN(y) = q(y)/q(c) [F(s(y))^n - F(s(y)^-)^n]`` per prompt (module docstring).

    .. math::

        P_{\mathrm{BoN}}(y) = \frac{q(y)}{q(c)} \Big[F\big(s(y)\big)^n - F\big(s(y)^-\big)^n\Big].

    Args:
        ref: the sampling policy ``pi_ref``.
        score: ``(n_leaves,)`` finite scores of the complete generations (reward, fitted
            reward, verifier, length ...); higher is better.
        n: number of draws, an integer ``>= 1`` (``n = 1`` gives ``P_ref`` back).
        ties: ``"uniform"`` (a uniformly chosen one of the tied best draws; the same law as
            the first drawn) or ``"first"`` (the lowest leaf index among them).

    Returns:
        A :class:`BestOfN`.

    Raises:
        TypeError: ``ref`` not a Policy, ``n`` not an integer.
        ValueError: ``score`` of the wrong length or not finite, ``n < 1``, unknown ``ties``.
    """
    ref = check_policy(ref, "ref")
    tree = ref.tree
    score = check_leaf_array(tree, score, "score")
    n = check_positive_int(n, "n")
    if ties not in TIE_RULES:
        raise ValueError(f"ties must be one of {TIE_RULES}, got {ties!r}")
    log_q_all = ref.leaf_log_probs().reshape(tree.n_prompts, -1)  # (P, A**H)
    scores = score.reshape(tree.n_prompts, -1)
    log_bon = np.full_like(log_q_all, -np.inf)
    kl = np.empty(tree.n_prompts)
    win_rate = np.empty(tree.n_prompts)
    mean_score = np.empty(tree.n_prompts)
    for p in range(tree.n_prompts):
        support = np.flatnonzero(log_q_all[p] > -np.inf)
        log_q, s = log_q_all[p, support], scores[p, support]
        if ties == "uniform":
            values, cls = np.unique(s, return_inverse=True)  # classes by increasing score
        else:  # every leaf its own class, ordered by (score, -index): lower index wins ties
            order = np.lexsort((-support, s))
            cls = np.empty(support.size, dtype=np.int64)
            cls[order] = np.arange(support.size)
            values = s[order]
        log_w, log_qc = _class_weights(log_q, cls, values.size, n)
        w = np.exp(log_w)  # (n_classes,) P(best draw in class c)
        log_bon[p, support] = log_q - log_qc[cls] + log_w[cls]
        kl[p] = float(np.sum(w * (log_w - log_qc)))
        mean_score[p] = float(np.sum(w * values))
        # win rate by score classes (ties count 1/2 whatever rule picked among tied draws)
        _, score_cls = np.unique(s, return_inverse=True)
        q_score = np.bincount(score_cls, weights=np.exp(log_q))  # q(s = t) per score value t
        bon_score = np.bincount(score_cls, weights=np.exp(log_bon[p, support]))
        below = np.concatenate([[0.0], np.cumsum(q_score)[:-1]])  # q(s < t)
        win_rate[p] = float(np.sum(bon_score * (below + 0.5 * q_score)))
    # (1) sums to one exactly; rounding (~1e-15 relative) is removed per prompt
    log_bon -= logsumexp(log_bon, axis=1, keepdims=True)
    leaf_log_probs = log_bon.reshape(-1)
    return BestOfN(
        policy=Policy.from_leaf_log_probs(tree, leaf_log_probs, fallback=ref),
        leaf_log_probs=leaf_log_probs,
        n=n,
        ties=ties,
        kl=np.maximum(kl, 0.0),
        kl_bound=kl_bound(n),
        win_rate=win_rate,
        expected_score=mean_score,
        score=score,
    )


def _class_weights(
    log_q: np.ndarray, cls: np.ndarray, n_classes: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``log w_c = log[F_c^n - F_{c-1}^n]`` and ``log q(c)``, classes by increasing score.

    Args:
        log_q: ``(m,)`` finite ``log q`` of the leaves in the support.
        cls: ``(m,)`` class index of each leaf (0 = lowest score).
        n_classes: number of classes.
        n: number of draws.
    """
    # log q(c) = logsumexp over the class, exactly in log space: per-class max, then sum
    class_max = np.full(n_classes, -np.inf)
    np.maximum.at(class_max, cls, log_q)
    scaled = np.bincount(cls, weights=np.exp(log_q - class_max[cls]), minlength=n_classes)
    log_qc = class_max + np.log(scaled)  # (n_classes,)
    # log F_c: a log-space cumulative sum from below; log1p(-tail above c) where F_c >= 1/2
    log_f_below = np.logaddexp.accumulate(log_qc)
    q_c = np.exp(log_qc)
    tail_above = np.concatenate([np.cumsum(q_c[::-1])[::-1][1:], [0.0]])  # q(s > s_c)
    upper = log_f_below >= np.log(0.5)  # there tail_above <= 1/2: log1p is accurate and finite
    log_f = log_f_below.copy()
    log_f[upper] = np.log1p(-tail_above[upper])
    # x = q(c)/F_c; the bracket is F_c^n (1 - (1 - x)^n) = F_c^n (-expm1(n log1p(-x)))
    log_x = np.minimum(log_qc - log_f, 0.0)
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf for the lowest class (F_{-1} = 0)
        exponent = n * np.log1p(-np.exp(log_x))  # n log(F_{c-1}/F_c), <= 0
        log_gap = np.where(
            exponent < 0,
            np.log(-np.expm1(exponent)),
            np.log(n) + log_x,  # x underflowed: 1 - (1 - x)^n = n x to float precision
        )
    return n * log_f + log_gap, log_qc


@dataclass(frozen=True, eq=False)
class RLHFAtKL:
    """The KL-regularized optimum whose KL matches a target, per prompt.

    Attributes:
        beta: ``(n_prompts,)`` the ``beta`` with ``KL(pi*_beta || pi_ref) = kl`` (``inf`` for
            target 0; ``0`` when the target is at least the largest KL on the frontier,
            ``-log P_ref(argmax r)``, where the frontier is flat at ``max r``, or beyond the KL
            of ``beta = 1e-12``, where it is flat to float precision: rewards within an ulp of
            the maximum, which are not exact ties, still share the mass there).
        kl: ``(n_prompts,)`` the KL reached.
        expected_reward: ``(n_prompts,)`` ``E_{pi*_beta}[r]``: the reward-KL frontier there.
        residual: ``max |KL reached - target|`` over prompts below the flat part.
    """

    beta: np.ndarray
    kl: np.ndarray
    expected_reward: np.ndarray
    residual: float


def rlhf_at_kl(ref: Policy, reward: np.ndarray, kl: np.ndarray) -> RLHFAtKL:
    """The point of the reward-KL frontier at a given KL, per prompt (by root finding on beta).

    ``KL(pi*_beta || pi_ref)`` of the closed form ``P* ∝ P_ref exp(r / beta)`` decreases
    strictly in ``beta`` (its derivative is ``-Var_{P*}(r)/beta**3``) from
    ``-log P_ref(argmax r)`` at ``beta -> 0`` to 0, so the ``beta`` of a target KL is one 1-D
    root (Brent's method on ``log beta``, to float precision).

    Args:
        ref: the reference policy.
        reward: ``(n_leaves,)`` the reward the RLHF policy maximizes.
        kl: ``(n_prompts,)`` (or a scalar for all prompts) target KLs ``>= 0``.

    Returns:
        An :class:`RLHFAtKL`.
    """
    ref = check_policy(ref, "ref")
    tree = ref.tree
    reward = check_leaf_array(tree, reward, "reward")
    target = np.broadcast_to(np.asarray(kl, dtype=np.float64), (tree.n_prompts,)).copy()
    if not (np.isfinite(target).all() and (target >= 0).all()):
        raise ValueError(f"kl must be finite and >= 0 per prompt, got {kl!r}")
    log_q = ref.leaf_log_probs().reshape(tree.n_prompts, -1)
    rewards = reward.reshape(tree.n_prompts, -1)
    beta = np.empty(tree.n_prompts)
    reached = np.empty(tree.n_prompts)
    value = np.empty(tree.n_prompts)
    residual = 0.0
    for p in range(tree.n_prompts):
        support = log_q[p] > -np.inf
        lq, r = log_q[p, support], rewards[p, support]
        best = r == r.max()
        kl_max = float(-logsumexp(lq[best]))  # KL of P_ref restricted to argmax r
        if target[p] == 0.0 or kl_max == 0.0:
            beta[p], reached[p], value[p] = np.inf, 0.0, float(np.exp(lq) @ r)
            continue
        if target[p] >= kl_max:
            beta[p], reached[p], value[p] = 0.0, kl_max, float(r.max())
            continue

        def gap(log_beta: float, lq=lq, r=r, goal=target[p]) -> float:
            return _closed_form_kl(lq, r, np.exp(log_beta))[0] - goal

        low, high = LOG_BETA_BRACKET
        if gap(high) > 0:  # target below float resolution of the KL near beta = inf
            log_beta = high
        elif gap(low) < 0:  # beyond the KL of beta = 1e-12: the flat end, to float precision
            beta[p], reached[p], value[p] = 0.0, kl_max, float(r.max())
            continue
        else:
            log_beta = brentq(gap, low, high, xtol=1e-14, rtol=1e-14, maxiter=500)
        beta[p] = np.exp(log_beta)
        reached[p], value[p] = _closed_form_kl(lq, r, beta[p])
        residual = max(residual, abs(reached[p] - target[p]))
    return RLHFAtKL(beta=beta, kl=reached, expected_reward=value, residual=residual)


def _closed_form_kl(log_q: np.ndarray, r: np.ndarray, beta: float) -> tuple[float, float]:
    """``(KL(P* || q), E_{P*}[r])`` of ``P* ∝ q exp(r / beta)`` on one prompt's support."""
    log_weight = log_q + (r - r.max()) / beta  # shifted: no cancellation at tiny beta
    log_p = log_weight - logsumexp(log_weight)
    p = np.exp(log_p)
    return float(max(np.sum(p * (log_p - log_q)), 0.0)), float(p @ r)


@dataclass(frozen=True, eq=False)
class BestOfNCurve:
    """Best-of-n over ``n`` beside RLHF at equal KL (arrays ``(n_ns, n_prompts)`` but ``n``
    and ``kl_bound``).

    Attributes:
        n: ``(n_ns,)`` the numbers of draws.
        kl: ``KL(P_BoN || P_ref)``.
        kl_bound: ``(n_ns,)`` ``log n - (n - 1)/n``.
        win_rate: against one reference draw under ``score`` (ties 1/2).
        expected_score: ``E_BoN[score]`` (the signal best-of-n selects by).
        expected_reward: ``E_BoN[reward]`` (the reward it is judged by; = score by default).
        rlhf_beta: ``beta`` of ``argmax E_pi[score] - beta KL`` whose KL equals best-of-n's.
        rlhf_expected_score: that policy's ``E[score]`` (the frontier of ``score``).
        rlhf_expected_reward: that policy's ``E[reward]``.
    """

    n: np.ndarray
    kl: np.ndarray
    kl_bound: np.ndarray
    win_rate: np.ndarray
    expected_score: np.ndarray
    expected_reward: np.ndarray
    rlhf_beta: np.ndarray
    rlhf_expected_score: np.ndarray
    rlhf_expected_reward: np.ndarray


def best_of_n_curve(
    ref: Policy,
    score: np.ndarray,
    ns: Sequence[int],
    *,
    reward: np.ndarray | None = None,
    ties: str = "uniform",
) -> BestOfNCurve:
    """Best-of-n for each ``n`` in ``ns`` and the RLHF optimum under ``score`` at the same KL.

    Both policies select by ``score`` (e.g. a fitted ``r_hat``) and are judged by ``reward``
    (e.g. the true ``r``; default ``score``). With ``reward = score`` the RLHF column is the
    reward-KL frontier, which no policy exceeds: ``E_BoN[r] <= rlhf_expected_score``.

    Args:
        ref: the reference policy.
        score: ``(n_leaves,)`` the selection signal.
        ns: increasing integers ``>= 1``.
        reward: ``(n_leaves,)`` the evaluation reward (default: ``score``).
        ties: as in :func:`best_of_n`.

    Returns:
        A :class:`BestOfNCurve`.
    """
    ref = check_policy(ref, "ref")
    score = check_leaf_array(ref.tree, score, "score")
    reward = score if reward is None else check_leaf_array(ref.tree, reward, "reward")
    try:
        values = [check_positive_int(value, "ns") for value in ns]
    except TypeError as error:
        if "ns must be" in str(error):
            raise
        raise TypeError(f"ns must be a sequence of integers >= 1, got {ns!r}") from None
    if not values:
        raise ValueError("ns must hold at least one n")
    rows: dict[str, list] = {key: [] for key in BestOfNCurve.__dataclass_fields__}
    for n in values:
        result = best_of_n(ref, score, n, ties=ties)
        matched = rlhf_at_kl(ref, score, result.kl)
        rlhf = np.exp(_frontier_leaf_log_probs(ref, score, matched.beta))
        rlhf_reward = (rlhf * reward).reshape(ref.tree.n_prompts, -1).sum(axis=1)
        rows["n"].append(n)
        rows["kl"].append(result.kl)
        rows["kl_bound"].append(result.kl_bound)
        rows["win_rate"].append(result.win_rate)
        rows["expected_score"].append(result.expected_score)
        rows["expected_reward"].append(expected_reward(result.policy, reward))
        rows["rlhf_beta"].append(matched.beta)
        rows["rlhf_expected_score"].append(matched.expected_reward)
        rows["rlhf_expected_reward"].append(rlhf_reward)
    return BestOfNCurve(**{key: np.array(value) for key, value in rows.items()})


def _frontier_leaf_log_probs(ref: Policy, reward: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``log P*_beta`` per prompt with its own ``beta`` (``inf``: ``P_ref``; ``0``: ``P_ref``
    restricted to the best generations), ``(n_leaves,)``."""
    tree = ref.tree
    log_q = ref.leaf_log_probs().reshape(tree.n_prompts, -1)
    rewards = reward.reshape(tree.n_prompts, -1)
    out = np.empty_like(log_q)
    for p in range(tree.n_prompts):
        if np.isinf(beta[p]):
            out[p] = log_q[p]
        elif beta[p] == 0.0:
            reachable = np.where(log_q[p] > -np.inf, rewards[p], -np.inf)
            top = np.where(reachable == reachable.max(), log_q[p], -np.inf)
            out[p] = top - logsumexp(top)
        else:
            log_weight = log_q[p] + (rewards[p] - rewards[p].max()) / beta[p]
            out[p] = log_weight - logsumexp(log_weight)
    return out.reshape(-1)
