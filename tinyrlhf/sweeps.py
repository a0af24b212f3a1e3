"""The optimum of KL-regularized RL as a function of beta, and the reward-KL frontier
(lecture section 4: the closed form ``P* = P_ref exp(r / beta) / Z``, ``lambda* = beta(1 - log Z)``).

For every ``beta > 0`` the closed form gives the optimum exactly, so its path over several
decades of ``beta`` is exact too (:func:`beta_path`): ``E_{pi*}[r]``, ``KL(pi* || pi_ref)``,
the entropy ``Ent(P*)``, ``log Z`` and ``lambda*``. These obey the exponential-family identities

    beta log Z = J(pi*) = E_{pi*}[r] - beta KL(pi* || pi_ref)         (value of the optimum)
    d(beta log Z)/d beta = -KL(pi* || pi_ref)                          (envelope theorem)
    d log Z / d beta = -E_{pi*}[r] / beta**2
    d E_{pi*}[r] / d beta = -Var_{P*}(r) / beta**2                     (exponential family)
    d KL(pi* || pi_ref) / d beta = -Var_{P*}(r) / beta**3

(``log Z`` is the cumulant generating function of ``r`` under ``P_ref`` at ``t = 1 / beta``:
``d log Z / dt = E_{P*}[r]``, ``d E_{P*}[r] / dt = Var_{P*}(r)``, and ``KL = t E_{P*}[r] -
log Z``; then ``dt / d beta = -1 / beta**2``). :class:`BetaPath` carries these derivatives
exactly, from the variance of the reward under ``P*`` (no finite differences, which rounding
swamps where ``P*`` is nearly deterministic).

The reward-KL frontier ``max { E_pi[r] : KL(pi || pi_ref) <= epsilon }`` is traced by the same
optima: by Lagrangian duality the maximizer for budget ``epsilon`` is ``pi*_beta`` with
``KL(pi*_beta || pi_ref) = epsilon``, and the frontier's slope there is
``dE/dKL = beta`` (:func:`reward_kl_frontier`). It runs from ``(0, E_{pi_ref}[r])``
(``beta -> inf``) to ``(-log P_ref(argmax r), max r)`` (``beta -> 0``: ``P*`` becomes the
reference restricted to the best generations it can produce). No policy lies above it.

With several prompts everything is per prompt, shape ``(n_betas, n_prompts)``; one shared
``beta`` also traces the frontier of the prompt-averaged reward against the prompt-averaged
KL (the Lagrangian separates over prompts).

Reference: Gao, Schulman & Hilton (2023), "Scaling laws for reward model overoptimization"
(reward against KL distance as the axis of RLHF).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from .divergences import entropy, expected_reward, kl_divergence
from .policy import Policy
from .solvers import closed_form
from .validation import check_leaf_array

#: Default betas: 61 values over four decades, 1e-2 .. 1e2.
DEFAULT_BETAS = np.logspace(-2.0, 2.0, 61)


@dataclass(frozen=True, eq=False)
class BetaPath:
    """The optimum ``pi*_beta`` along a sweep of ``beta`` (all arrays ``(n_betas, n_prompts)``
    except ``beta``).

    Attributes:
        beta: ``(n_betas,)`` the KL coefficients, as given.
        expected_reward: ``E_{pi*}[r]``.
        kl: ``KL(pi* || pi_ref)``.
        entropy: ``Ent(P*) = -sum_xi P*(xi) log P*(xi)``.
        log_partition: ``log Z = log sum_xi P_ref(xi) exp(r(xi) / beta)``.
        lagrange_multiplier: ``lambda* = beta (1 - log Z)``.
        objective: ``J(pi*) = E_{pi*}[r] - beta KL(pi* || pi_ref) = beta log Z``.
        reward_variance: ``Var_{P*}(r) = E_{P*}[(r - E_{P*}[r])**2]`` (a sum of non-negative
            terms, so never negative).

    The exact beta-derivatives (module docstring) are properties: ``d_log_partition``,
    ``d_expected_reward``, ``d_kl`` and ``d_objective``.
    """

    beta: np.ndarray
    expected_reward: np.ndarray
    kl: np.ndarray
    entropy: np.ndarray
    log_partition: np.ndarray
    lagrange_multiplier: np.ndarray
    objective: np.ndarray
    reward_variance: np.ndarray

    @property
    def d_log_partition(self) -> np.ndarray:
        """``d log Z / d beta = -E_{pi*}[r] / beta**2``, ``(n_betas, n_prompts)``."""
        return -self.expected_reward / self.beta[:, None] ** 2

    @property
    def d_expected_reward(self) -> np.ndarray:
        """``d E_{pi*}[r] / d beta = -Var_{P*}(r) / beta**2``, ``(n_betas, n_prompts)``."""
        return -self.reward_variance / self.beta[:, None] ** 2

    @property
    def d_kl(self) -> np.ndarray:
        """``d KL(pi* || pi_ref) / d beta = -Var_{P*}(r) / beta**3``, ``(n_betas, n_prompts)``:
        with :attr:`d_expected_reward`, the frontier's slope ``dE/dKL = beta``."""
        return -self.reward_variance / self.beta[:, None] ** 3

    @property
    def d_objective(self) -> np.ndarray:
        """``d J(pi*) / d beta = d (beta log Z) / d beta = -KL(pi* || pi_ref)`` (envelope
        theorem), ``(n_betas, n_prompts)``."""
        return -self.kl


def _reward_variance(policy: Policy, reward: np.ndarray) -> np.ndarray:
    """``Var_{P_pi}(r) = sum_xi P(xi) (r(xi) - E_pi[r])**2`` per prompt, ``(n_prompts,)``."""
    tree = policy.tree
    probs = policy.leaf_probs().reshape(tree.n_prompts, -1)  # (P, leaves per prompt)
    values = reward.reshape(tree.n_prompts, -1)
    mean = np.sum(probs * values, axis=1, keepdims=True)  # (P, 1)
    return np.sum(probs * (values - mean) ** 2, axis=1)


@dataclass(frozen=True, eq=False)
class RewardKLFrontier:
    """The reward-KL frontier, ordered by increasing KL (arrays ``(n_points, n_prompts)``
    except ``beta``).

    Attributes:
        beta: ``(n_points,)`` decreasing; the first entry is ``inf`` (the reference policy,
            KL 0) and the last ``0`` (the limit ``beta -> 0``).
        kl: ``KL(pi*_beta || pi_ref)``, from 0 to ``-log P_ref(argmax r)``.
        expected_reward: ``E_{pi*_beta}[r]``, from ``E_{pi_ref}[r]`` to ``max r``.
    """

    beta: np.ndarray
    kl: np.ndarray
    expected_reward: np.ndarray


def _check_betas(betas: object) -> np.ndarray:
    try:
        array = np.asarray(DEFAULT_BETAS if betas is None else betas, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a 1-D array of positive reals, got {betas!r}") from None
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {array.shape}")
    if not (np.isfinite(array).all() and (array > 0).all()):
        raise ValueError("betas must be finite and > 0 (KL coefficients)")
    return array


def beta_path(ref: Policy, reward: np.ndarray, betas: np.ndarray | None = None) -> BetaPath:
    """The exact optimum of ``max_pi E_pi[r] - beta KL(pi || pi_ref)`` for each ``beta``.

    Args:
        ref: the reference policy ``pi_ref``.
        reward: ``(n_leaves,)`` finite rewards.
        betas: ``(n_betas,)`` finite positive KL coefficients (default
            :data:`DEFAULT_BETAS`, 1e-2 .. 1e2).

    Returns:
        A :class:`BetaPath`; its arrays are ``(n_betas, n_prompts)``.

    Raises:
        TypeError: ``ref`` is not a Policy.
        ValueError: a reward of the wrong shape or not finite, or betas that are not
            finite and positive.
    """
    if not isinstance(ref, Policy):
        raise TypeError(f"ref must be a tinyrlhf.Policy, got {type(ref).__name__}")
    reward = check_leaf_array(ref.tree, reward, "reward")
    betas = _check_betas(betas)
    rows: dict[str, list[np.ndarray]] = {
        key: []
        for key in ("expected_reward", "kl", "entropy", "log_partition", "multiplier", "variance")
    }
    for beta in betas:  # one closed form per beta, each exact
        solution = closed_form(ref, reward, float(beta))
        # the closed form always sets both
        assert solution.log_partition is not None and solution.lagrange_multiplier is not None
        rows["expected_reward"].append(expected_reward(solution.policy, reward))
        rows["kl"].append(kl_divergence(solution.policy, ref))
        rows["entropy"].append(entropy(solution.policy))
        rows["log_partition"].append(solution.log_partition)
        rows["multiplier"].append(solution.lagrange_multiplier)
        rows["variance"].append(_reward_variance(solution.policy, reward))
    log_z = np.array(rows["log_partition"])  # (n_betas, n_prompts)
    return BetaPath(
        beta=betas,
        expected_reward=np.array(rows["expected_reward"]),
        kl=np.array(rows["kl"]),
        entropy=np.array(rows["entropy"]),
        log_partition=log_z,
        lagrange_multiplier=np.array(rows["multiplier"]),
        objective=betas[:, None] * log_z,  # J(pi*) = beta log Z
        reward_variance=np.array(rows["variance"]),
    )


def reward_kl_frontier(
    ref: Policy, reward: np.ndarray, betas: np.ndarray | None = None
) -> RewardKLFrontier:
    """The exact reward-KL frontier ``epsilon -> max { E_pi[r] : KL(pi || pi_ref) <= epsilon }``.

    Points are ``(KL(pi*_beta || pi_ref), E_{pi*_beta}[r])`` for each ``beta`` plus the two
    end points: ``(0, E_{pi_ref}[r])`` at ``beta = inf`` and, at ``beta = 0``,
    ``(-log P_ref(A), max_A r)`` with ``A`` the generations of highest reward among those
    ``P_ref`` produces.

    Args:
        ref, reward, betas: as in :func:`beta_path`.

    Returns:
        A :class:`RewardKLFrontier` sorted by increasing KL (decreasing beta).
    """
    path = beta_path(ref, reward, betas)
    tree = ref.tree
    reward = np.asarray(reward, dtype=np.float64)
    log_p_ref = ref.leaf_log_probs().reshape(tree.n_prompts, -1)  # (P, A**H)
    # the best generations P_ref can produce, per prompt (ties: exactly equal rewards)
    reachable_reward = np.where(log_p_ref > -np.inf, reward.reshape(tree.n_prompts, -1), -np.inf)
    best = reachable_reward.max(axis=1)  # (P,)
    is_best = reachable_reward == best[:, None]
    log_mass_of_best = logsumexp(np.where(is_best, log_p_ref, -np.inf), axis=1)  # log P_ref(A)
    order = np.argsort(-path.beta, kind="stable")  # decreasing beta = increasing KL
    return RewardKLFrontier(
        beta=np.concatenate([[np.inf], path.beta[order], [0.0]]),
        kl=np.vstack([np.zeros(tree.n_prompts), path.kl[order], -log_mass_of_best]),
        expected_reward=np.vstack(
            [expected_reward(ref, reward), path.expected_reward[order], best]
        ),
    )
