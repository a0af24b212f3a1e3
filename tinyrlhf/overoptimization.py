"""Reward over-optimization without sampling noise in the policy step.

Beyond the lecture (section 4 warns that the KL term keeps the policy from "exploiting" the
reward model). Gao, Schulman & Hilton (2023, "Scaling laws for reward model
overoptimization") plot the *true* ("gold") reward of RLHF policies against their KL to the
reference: as the KL budget grows, the true reward first rises, then falls, because the
policy climbs the errors of the learned ("proxy") reward; more preference data moves the
peak out. Their curves mix two noises: the reward model's and the RL optimizer's. Here the
second is removed: for each dataset size ``n``

1. sample ``n`` comparisons labelled by Bradley-Terry under the true reward ``r``
   (:func:`~tinyrlhf.sample_preferences`) and fit ``r_hat``
   (:func:`~tinyrlhf.fit_bradley_terry`);
2. for each ``beta``, solve ``max_pi E_pi[r_hat] - beta KL(pi || pi_ref)`` exactly
   (:func:`~tinyrlhf.closed_form`: ``P* ∝ P_ref exp(r_hat / beta)``);
3. record ``E_{pi*}[r]`` (true), ``E_{pi*}[r_hat] - E_{pi_ref}[r_hat]`` (proxy gain) and
   ``KL(pi* || pi_ref)``.

The datasets of different sizes are nested (the first ``n`` pairs of one sample), so the
curves differ only by the data added. The oracle curve (``n = inf``, ``r_hat = r``) is the
reward-KL frontier of :func:`~tinyrlhf.sweeps.beta_path`: no policy has more true reward at
its KL, so the gap to it is the price of the learned reward alone.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bradley_terry import DEFAULT_L2, fit_bradley_terry
from .deprecation import renamed_keywords
from .divergences import expected_reward, kl_divergence
from .policy import Policy
from .preferences import check_pair_count, sample_preferences
from .solvers import closed_form
from .sweeps import beta_path
from .tree import TokenTree
from .validation import check_leaf_array, check_positive_int, check_tree, make_rng


@dataclass(frozen=True, eq=False)
class OveroptimizationCurve:
    """True reward, proxy gain and KL of the RLHF optimum under fitted rewards.

    Arrays indexed ``[size, beta, prompt]`` are ``(n_sizes, n_betas, n_prompts)``; average
    over the last axis for one curve per dataset size.

    Attributes:
        n_pairs: ``(n_sizes,)`` dataset sizes, increasing.
        beta: ``(n_betas,)`` the KL coefficients, as given.
        true_reward: ``E_{pi*}[r]`` under the true reward.
        proxy_gain: ``E_{pi*}[r_hat] - E_{pi_ref}[r_hat]`` (the fitted reward is defined up
            to a constant, so only its gain is meaningful).
        kl: ``KL(pi* || pi_ref)``.
        fitted_reward: ``(n_sizes, n_leaves)`` the fits ``r_hat``.
        oracle_true_reward: ``(n_betas, n_prompts)`` ``E[r]`` of the optimum under ``r``.
        oracle_kl: ``(n_betas, n_prompts)`` its KL.
        reference_reward: ``(n_prompts,)`` ``E_{pi_ref}[r]`` (the curves' start, KL 0).
    """

    n_pairs: np.ndarray
    beta: np.ndarray
    true_reward: np.ndarray
    proxy_gain: np.ndarray
    kl: np.ndarray
    fitted_reward: np.ndarray
    oracle_true_reward: np.ndarray
    oracle_kl: np.ndarray
    reference_reward: np.ndarray


@renamed_keywords(r_true="reward", pair_policy="policy")
def overoptimization_curve(
    tree: TokenTree,
    reward: np.ndarray,
    n_pairs: int | Sequence[int],
    betas: np.ndarray | Sequence[float],
    *,
    seed: int | np.random.Generator | None = 0,
    ref: Policy | None = None,
    policy: Policy | None = None,
    l2: float = DEFAULT_L2,
    distinct: bool = True,
) -> OveroptimizationCurve:
    """Gao et al.'s over-optimization curves, exact in the policy step.

    Args:
        tree: the :class:`~tinyrlhf.TokenTree`.
        reward: ``(n_leaves,)`` the true reward ``r`` that labels the comparisons
            (``r_true=`` is its deprecated old name).
        n_pairs: a dataset size ``>= 1`` or a sequence of them (sorted increasingly; the
            datasets are nested prefixes of one sample of the largest size, checked
            against the memory budget first).
        betas: ``(n_betas,)`` finite KL coefficients ``> 0``.
        seed: int, Generator or None; default 0 (see
            :func:`~tinyrlhf.validation.make_rng`): draws the comparisons.
        ref: the reference policy ``pi_ref`` (uniform if None).
        policy: the policy that draws the compared completions (``ref`` if None, as when
            comparisons are collected from the SFT model); pairs of distinct completions,
            as in :func:`~tinyrlhf.preferences.sample_preferences`. ``pair_policy=`` is its
            deprecated old name.
        l2: ridge coefficient of the Bradley-Terry fit (default
            :data:`tinyrlhf.bradley_terry.DEFAULT_L2`; sampled data rarely has an
            unregularized maximum).
        distinct: pairs of distinct completions (default) or independent draws that may
            compare a completion with itself (see
            :func:`~tinyrlhf.preferences.sample_preferences`).

    Returns:
        An :class:`OveroptimizationCurve`.

    Raises:
        TypeError, ValueError: bad arguments, naming the argument.
    """
    tree = check_tree(tree)
    reward = check_leaf_array(tree, reward, "reward")
    sizes = _check_sizes(n_pairs)
    check_pair_count(int(sizes[-1]), "max(n_pairs)")
    betas = _check_betas(betas)
    rng = make_rng(seed)
    for candidate, name in ((ref, "ref"), (policy, "policy")):
        if candidate is not None and (not isinstance(candidate, Policy) or candidate.tree != tree):
            raise TypeError(f"{name} must be a tinyrlhf.Policy on tree (or None)")
    if ref is None:
        ref = Policy.uniform(tree)
    sampler = ref if policy is None else policy

    prefs = sample_preferences(
        tree, reward, int(sizes[-1]), policy=sampler, seed=rng, distinct=distinct
    )
    shape = (sizes.size, betas.size, tree.n_prompts)
    true_reward, proxy_gain, kl = np.empty(shape), np.empty(shape), np.empty(shape)
    fitted = np.empty((sizes.size, tree.n_leaves))
    for i, n in enumerate(sizes):  # nested datasets: the first n pairs
        r_hat = np.asarray(fit_bradley_terry(tree, prefs[: int(n)], l2=l2).reward)
        fitted[i] = r_hat
        baseline = expected_reward(ref, r_hat)  # E_{pi_ref}[r_hat]: (n_prompts,)
        for j, beta in enumerate(betas):  # the policy step, exact: P* ∝ P_ref exp(r_hat/beta)
            optimum = closed_form(ref, r_hat, float(beta)).policy
            true_reward[i, j] = expected_reward(optimum, reward)
            proxy_gain[i, j] = expected_reward(optimum, r_hat) - baseline
            kl[i, j] = kl_divergence(optimum, ref)
    oracle = beta_path(ref, reward, betas)
    return OveroptimizationCurve(
        n_pairs=sizes,
        beta=betas,
        true_reward=true_reward,
        proxy_gain=proxy_gain,
        kl=kl,
        fitted_reward=fitted,
        oracle_true_reward=oracle.expected_reward,
        oracle_kl=oracle.kl,
        reference_reward=expected_reward(ref, reward),
    )


def _check_sizes(n_pairs: object) -> np.ndarray:
    if isinstance(n_pairs, (numbers.Integral, np.integer)) and not isinstance(n_pairs, bool):
        values = [n_pairs]
    else:
        try:
            values = list(n_pairs)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(
                f"n_pairs must be an integer >= 1 or a sequence of them, got {n_pairs!r}"
            ) from None
    if not values:
        raise ValueError("n_pairs must hold at least one dataset size")
    sizes = np.array([check_positive_int(value, "n_pairs") for value in values], dtype=np.int64)
    if (np.diff(sizes) <= 0).any():
        raise ValueError(f"n_pairs must be strictly increasing, got {sizes.tolist()}")
    return sizes


def _check_betas(betas: object) -> np.ndarray:
    try:
        array = np.asarray(betas, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"betas must be a 1-D array of positive reals, got {betas!r}") from None
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {array.shape}")
    if not (np.isfinite(array).all() and (array > 0).all()):
        raise ValueError("betas must be finite and > 0 (KL coefficients)")
    return array
