"""RLHF under one fitted reward against the game-theoretic solutions: Borda against Condorcet.

Beyond the lecture, an experiment beside :mod:`~tinyrlhf.pipeline` and
:mod:`~tinyrlhf.overoptimization`. The preferences are a mixture of Bradley-Terry populations
(:func:`~tinyrlhf.preference_matrix`), which need not be explained by any one reward. RLHF
fits one anyway and solves the KL-regularized problem; the game-theoretic alternatives play
the preference game itself (:mod:`~tinyrlhf.nash`):

1. the mixture labels the whole population of comparisons, pairs drawn from ``policy``
   (:func:`~tinyrlhf.preferences.population_preferences`, each population's pairs weighted
   by its share): the limit of infinite data;
2. ``r_hat`` is the Bradley-Terry fit to them (:func:`~tinyrlhf.fit_bradley_terry`), and RLHF
   solves ``max_pi E_pi[r_hat] - beta KL(pi || pi_ref)`` by the closed form
   (:func:`~tinyrlhf.closed_form`);
3. per prompt, on the completions ``pi_ref`` produces, the minimax winner
   (:func:`~tinyrlhf.minimax_winner`) and the regularized Nash equilibrium with
   ``mu = P_ref`` and ``tau = beta`` (:func:`~tinyrlhf.regularized_nash`);
4. head-to-head win rates ``pi^T M pi'`` between them, ``M`` the mixture's preference matrix.

With uniform pairs the fit's score equations match each completion's average win rate (its
Borda score), so RLHF follows Borda where the minimax winner follows Condorcet (Swamy et al.
2024, "A minimaximalist approach to reinforcement learning from human feedback"; Munos et al.
2023, "Nash learning from human feedback").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from .bradley_terry import fit_bradley_terry
from .deprecation import renamed_keywords
from .nash import minimax_winner, preference_matrix, regularized_nash
from .policy import Policy
from .preferences import Preferences, population_preferences
from .solvers import Solution, closed_form
from .validation import check_beta, check_policy


@dataclass(frozen=True, eq=False)
class RlhfVersusMinimax:
    """RLHF under one fitted Bradley-Terry reward against the game-theoretic solutions.

    Leaf distributions are ``(n_leaves,)`` arrays (each prompt's block sums to 1); win rates
    are per prompt, ``(n_prompts,)``.

    Attributes:
        preference: ``(n_prompts, A**H, A**H)`` the mixture's ``P(y > y')``.
        fitted_reward: ``(n_leaves,)`` the Bradley-Terry reward ``r_hat`` fitted to the
            mixture's population of comparisons.
        rlhf: :func:`~tinyrlhf.closed_form` under ``r_hat`` with KL coefficient ``beta``.
        minimax: leaf distribution of the minimax winner (over the leaves ``pi_ref``
            produces).
        minimax_policy: the autoregressive policy generating ``minimax``.
        nash: leaf distribution of the regularized Nash equilibrium with ``mu = P_ref`` and
            ``tau = beta`` (the KL-regularized counterpart of ``rlhf``).
        nash_policy: the autoregressive policy generating ``nash``.
        minimax_beats_rlhf: ``P(y ~ minimax > y' ~ rlhf)``, ``>= 1/2``.
        nash_beats_rlhf: ``P(y ~ nash > y' ~ rlhf)``.
        rlhf_worst_case: ``min_{y'} P(y ~ rlhf > y')``: how badly the worst completion
            beats the RLHF policy (the minimax winner's is 1/2, the best possible).
    """

    preference: np.ndarray
    fitted_reward: np.ndarray
    rlhf: Solution
    minimax: np.ndarray
    minimax_policy: Policy
    nash: np.ndarray
    nash_policy: Policy
    minimax_beats_rlhf: np.ndarray
    nash_beats_rlhf: np.ndarray
    rlhf_worst_case: np.ndarray


@renamed_keywords(pair_policy="policy")
def rlhf_versus_minimax(
    ref: Policy,
    rewards,
    weights,
    beta: float,
    *,
    l2: float = 0.0,
    policy: Policy | None = None,
) -> RlhfVersusMinimax:
    """Where RLHF under one Bradley-Terry reward disagrees with the minimax winner.

    The preferences are a mixture of Bradley-Terry populations (:func:`~tinyrlhf.preference_matrix`).
    RLHF fits one reward to them — the Bradley-Terry fit (:func:`~tinyrlhf.fit_bradley_terry`)
    to the whole population of comparisons, pairs drawn from ``policy`` (uniform by
    default) and labelled by the mixture (the limit of infinite data) — and solves
    ``max_pi E_pi[r_hat] - beta KL(pi || pi_ref)`` (:func:`~tinyrlhf.closed_form`). With
    uniform pairs the fit's score equations match each completion's average win rate (its
    Borda score), so RLHF follows Borda where the minimax winner follows Condorcet: when a
    completion beats every other one head to head, the minimax winner is that completion,
    while RLHF may prefer one that wins more on average and loses to it.

    Args:
        ref: the reference policy ``pi_ref``; the games are played over the leaves it
            produces (``P_ref > 0``), which is all an RLHF policy can reach.
        rewards: ``(K, n_leaves)`` rewards of the populations.
        weights: ``(K,)`` their shares (``>= 0``, sum 1).
        beta: the KL coefficient of RLHF and the ``tau`` of the regularized game.
        l2: ridge coefficient of the Bradley-Terry fit (0: maximum likelihood).
        policy: the policy that draws the compared pairs (uniform if None), as in
            :func:`~tinyrlhf.preferences.population_preferences`. ``pair_policy=`` is its
            deprecated old name.

    Returns:
        :class:`RlhfVersusMinimax`.

    Raises:
        TypeError, ValueError: bad arguments (see the functions used).
    """
    ref = check_policy(ref, "ref")
    tree = ref.tree
    beta = check_beta(beta)
    preference = preference_matrix(tree, rewards, weights)  # (n_prompts, A**H, A**H)
    rows = np.asarray(rewards, dtype=np.float64).reshape(-1, tree.n_leaves)
    shares = np.asarray(weights, dtype=np.float64).reshape(-1)
    # The mixture's population of comparisons: population k contributes its pairs with
    # weights scaled by w_k, so pair (i, j) carries
    # Pr_policy(pair {i, j}) sum_k w_k sigma(r_k(i) - r_k(j)).
    parts = [population_preferences(tree, row, policy=policy) for row in rows]
    prefs = Preferences(
        np.concatenate([part.prompt for part in parts]),
        np.concatenate([part.chosen for part in parts]),
        np.concatenate([part.rejected for part in parts]),
        np.concatenate([share * part.weight for share, part in zip(shares, parts, strict=True)]),
    )
    fitted_reward = np.array(fit_bradley_terry(tree, prefs, l2=l2).reward)
    rlhf = closed_form(ref, fitted_reward, beta)

    per_prompt = tree.leaves_per_prompt
    log_ref = ref.leaf_log_probs().reshape(tree.n_prompts, per_prompt)
    rlhf_probs = rlhf.policy.leaf_probs().reshape(tree.n_prompts, per_prompt)
    minimax = np.zeros((tree.n_prompts, per_prompt))
    nash = np.zeros((tree.n_prompts, per_prompt))
    for p in range(tree.n_prompts):  # one linear program / game per prompt
        support = log_ref[p] > -np.inf
        game = preference[p][np.ix_(support, support)]
        minimax[p, support] = minimax_winner(game)
        mu = np.exp(log_ref[p, support])
        nash[p, support] = regularized_nash(game, mu / mu.sum(), beta).pi
    beats = np.einsum("pi,pij,pj->p", minimax, preference, rlhf_probs)
    nash_beats = np.einsum("pi,pij,pj->p", nash, preference, rlhf_probs)
    # min over completions y' of P(rlhf > y') = min_j (pi_rlhf^T M)_j, over the support
    against = np.einsum("pi,pij->pj", rlhf_probs, preference)
    worst = np.where(log_ref > -np.inf, against, np.inf).min(axis=1)
    return RlhfVersusMinimax(
        preference=preference,
        fitted_reward=fitted_reward,
        rlhf=rlhf,
        minimax=minimax.reshape(-1),
        minimax_policy=_leaf_distribution_policy(tree, minimax.reshape(-1)),
        nash=nash.reshape(-1),
        nash_policy=_leaf_distribution_policy(tree, nash.reshape(-1)),
        minimax_beats_rlhf=beats,
        nash_beats_rlhf=nash_beats,
        rlhf_worst_case=worst,
    )


# ------------------------------------------------------------------------------- helpers
def _leaf_distribution_policy(tree, leaf_probs: np.ndarray) -> Policy:
    """The autoregressive policy of a leaf distribution (subtree sums).

    The solvers' leaf distributions are normalized only to their own tolerance, so each
    prompt's log-probabilities are renormalized (one logsumexp) before
    ``Policy.from_leaf_log_probs``'s strict check.
    """
    with np.errstate(divide="ignore"):  # log 0 = -inf: a leaf the distribution never plays
        log_p = np.log(leaf_probs).reshape(tree.n_prompts, -1)  # (n_prompts, A**H)
    log_p = log_p - logsumexp(log_p, axis=1, keepdims=True)
    return Policy.from_leaf_log_probs(tree, log_p.reshape(-1))
