"""Group-relative policy gradients exactly: REINFORCE, RLOO, Dr. GRPO, GRPO and DAPO (beyond
the lecture; section 4's policy gradient as RL with verifiable rewards runs it).

A trainer draws a *group* of ``G`` completions ``y_1..y_G`` i.i.d. from ``pi(. | p)`` for a
prompt ``p``, scores them, and ascends

    g_hat = sum_i c_i grad_theta log pi(y_i),       c_i = c(y_i; y_{-i}),

where the coefficient of completion ``i`` depends on the other members only through their
``(reward, length)`` *types*. Because the members are exchangeable and independent,

    E[g_hat] = sum_y pi(y) w(y) grad log pi(y),     w(y) = G * E_{y_2..y_G ~ pi}[c(y; y_2..y_G)],

one sequence score gradient (:func:`tinyrlhf.gradients.sequence_score_gradient`) with the
*effective leaf weight* ``w``. With ``r_bar = E_pi[r]`` of the prompt, ``m = mean_j r_j`` and
``s = std_j r_j`` (Bessel-corrected, ``ddof = 1``, as TRL and the DeepSeekMath reference
compute it) over the whole group, ``|y|`` the completion's length in tokens and ``H`` the
horizon:

- ``"reinforce"``: ``c_i = r_i / G`` (sequence sum) so ``w(y) = r(y)``.
- ``"rloo"`` (Kool et al. 2019; Ahmadian et al. 2024): ``c_i = (r_i - mean_{j != i} r_j) / G``;
  the others are independent of ``y_i`` with mean ``r_bar``, so ``w(y) = r(y) - r_bar`` and,
  since ``E_pi[grad log pi] = 0``, ``E[g_hat] = grad E_pi[r]`` exactly (unbiased).
- ``"dr_grpo"`` (Liu et al. 2025, arXiv 2503.20783): ``c_i = (r_i - m) / (G H)``, the token sum
  over the constant ``G H``. From ``r_i - m = (G - 1)/G (r_i - mean_{j != i} r_j)``,
  ``w(y) = (G - 1)/(G H) (r(y) - r_bar)``: RLOO's weights times ``(G - 1)/(G H)``.
- ``"grpo"`` (Shao et al. 2024, DeepSeekMath eq. 3): ``A_i = (r_i - m)/(s + eps)``, each
  sequence's token terms averaged over its ``|y_i|`` tokens, then over the group:
  ``c_i = A_i / (G |y_i|)``, so ``w(y) = E[A(r(y); R_2..R_G)] / |y|`` (the other members enter
  through their rewards only). A group with identical rewards contributes ``A = 0``.
- ``"dapo"`` (Yu et al. 2025, arXiv 2503.14476, token-level loss): the same ``A_i``, token terms
  averaged over all ``sum_j |y_j|`` tokens of the group: ``c_i = A_i / (|y_i| + sum_{j != i}
  |y_j|)``, so ``w(y) = G E[A(r(y); R) / (|y| + L)]`` with ``L`` the others' total length.

The expectation over the other ``G - 1`` members is exact: with ``K`` types of probabilities
``q_k`` (the policy's mass on the completions of each type), the others' types form a
*composition* ``n_1 + ... + n_K = G - 1`` with multinomial probability
``(G-1)! prod_k q_k^{n_k} / n_k!``; the ``C(G + K - 2, K - 1)`` compositions are enumerated,
refusing beyond :data:`MAX_COMPOSITIONS` (sampling silently is not an option). ``"reinforce"``,
``"rloo"`` and ``"dr_grpo"`` are linear in the rewards and need no enumeration (the clipped
update of :mod:`tinyrlhf.expected_training` enumerates them too, for the signs).

**Lengths.** On a tree without ``eos`` every completion has ``|y| = H``. On an ``eos`` tree,
``|y|`` counts the tokens up to *and including* the first ``eos`` (``H`` when there is none):
TRL's completion mask keeps the ``eos`` token, whose log-probability is trained; the padding
after it is forced (zero gradient) and not counted.

**KL terms** (the vocabulary of :mod:`tinyrlhf.kl_terms`): ``beta`` times the exact expected
gradient of the penalty ``estimator x placement x level`` summed over the sequence is
subtracted, outside the group-relative advantage. GRPO's loss averages its per-token KL over
``|y|`` like the advantage term, so on trees without ``eos`` its coefficient ``beta_GRPO``
is ``H * beta`` here. (A trainer that folds a sequence penalty into the reward *before* group
normalization computes something else for ``grpo``/``dapo``; for ``reinforce``/``rloo`` the two
agree because their baselines have zero mean.)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
from scipy.special import gammaln

from .gradients import gradient_norm, sequence_score_gradient, update_residual
from .kl_terms import KLTerm, kl_penalty_gradient, kl_term
from .policy import Policy
from .solvers import policy_gradient_grad
from .tree import TokenTree
from .validation import (
    check_leaf_array,
    check_nonnegative,
    check_policy,
    check_positive_int,
    check_same_tree,
)

#: The group-relative estimators (module docstring).
ESTIMATORS = ("reinforce", "rloo", "dr_grpo", "grpo", "dapo")
#: Estimators whose leaf weight needs the enumeration of the other members' types.
NONLINEAR_ESTIMATORS = ("grpo", "dapo")
#: Largest number of type compositions enumerated per prompt (memory ~ 60 bytes each).
MAX_COMPOSITIONS = 1_000_000
#: Own-type columns evaluated at once against all compositions (bounds temporaries).
_CHUNK_ELEMENTS = 1_000_000


def completion_lengths(tree: TokenTree) -> np.ndarray:
    """``|y|`` of every leaf, ``(n_leaves,)`` int64: ``H`` without ``eos``; on an ``eos`` tree
    the position of the first ``eos`` counted inclusively (``H`` if there is none)."""
    if tree.eos is None:
        return np.full(tree.n_leaves, tree.horizon, dtype=np.int64)
    is_eos = tree.leaf_token_indices() == tree.eos_index  # (n_leaves, H)
    first = np.argmax(is_eos, axis=1)  # index of the first eos (0 when there is none)
    return np.where(is_eos.any(axis=1), first + 1, tree.horizon).astype(np.int64)


@dataclass(frozen=True)
class _Compositions:
    """Summaries of every composition of the other ``G - 1`` members over ``K`` types."""

    prob: np.ndarray  # multinomial probability, (n_comp,)
    reward_sum: np.ndarray  # sum of the others' (centred) rewards, (n_comp,)
    square_sum: np.ndarray  # sum of their squares, (n_comp,)
    length_sum: np.ndarray  # sum of their lengths, (n_comp,)
    reward_min: np.ndarray  # smallest reward present (+inf if none), (n_comp,)
    reward_max: np.ndarray  # largest reward present (-inf if none), (n_comp,)


def composition_count(n_others: int, n_types: int) -> int:
    """``C(n + K - 1, K - 1)``: compositions of ``n`` members over ``K`` types."""
    return math.comb(n_others + n_types - 1, n_types - 1) if n_types > 0 else int(n_others == 0)


def _enumerate(
    rewards: np.ndarray, lengths: np.ndarray, log_q: np.ndarray, n_others: int
) -> _Compositions:
    """All compositions ``n_1 + ... + n_K = n_others`` with their multinomial probabilities.

    Built type by type without storing the counts: after type ``k`` the states are the
    partial compositions ``(n_1..n_k)`` with ``sum <= n_others`` (at most the final count).
    """
    used = np.zeros(1, dtype=np.int64)
    log_prob = np.array([gammaln(n_others + 1.0)])  # log (G-1)!
    reward_sum, square_sum, length_sum = np.zeros(1), np.zeros(1), np.zeros(1)
    reward_min, reward_max = np.array([np.inf]), np.array([-np.inf])
    n_types = rewards.size
    for k in range(n_types):
        if k == n_types - 1:  # the last type takes the remainder
            parent = np.arange(used.size)
            count = n_others - used
        else:
            choices = n_others - used + 1  # n_k in 0..n_others - used
            parent = np.repeat(np.arange(used.size), choices)
            start = np.repeat(np.cumsum(choices) - choices, choices)
            count = np.arange(parent.size) - start
        present = count > 0
        used = used[parent] + count
        log_prob = log_prob[parent] + count * log_q[k] - gammaln(count + 1.0)
        reward_sum = reward_sum[parent] + count * rewards[k]
        square_sum = square_sum[parent] + count * rewards[k] ** 2
        length_sum = length_sum[parent] + count * lengths[k]
        reward_min = np.where(
            present, np.minimum(reward_min[parent], rewards[k]), reward_min[parent]
        )
        reward_max = np.where(
            present, np.maximum(reward_max[parent], rewards[k]), reward_max[parent]
        )
    return _Compositions(
        np.exp(log_prob), reward_sum, square_sum, length_sum, reward_min, reward_max
    )


def _member_coefficient(
    estimator: str,
    own_reward: np.ndarray,
    own_length: np.ndarray,
    comps: _Compositions,
    group_size: int,
    eps: float,
    horizon: int,
) -> np.ndarray:
    """``G c(y; others)`` for own types (columns) and compositions (rows), ``(n_comp, n_own)``.

    Rewards are centred per prompt by the caller (every estimator except ``reinforce`` is
    shift invariant; ``reinforce`` is handled in closed form).
    """
    n_others = group_size - 1
    x = own_reward[None, :]  # (1, n_own)
    total = comps.reward_sum[:, None] + x  # (n_comp, n_own): sum_j r_j
    mean = total / group_size
    if estimator == "rloo":
        return x - comps.reward_sum[:, None] / n_others
    if estimator == "dr_grpo":
        return (x - mean) / horizon
    # sum_j (r_j - m)^2 = sum_j r_j^2 - (sum_j r_j)^2 / G; rounding can leave it a hair below 0
    # on groups that are not identical only by an ulp, hence the floor at 0.
    squares = np.maximum(comps.square_sum[:, None] + x**2 - total**2 / group_size, 0.0)
    std = np.sqrt(squares / (group_size - 1))  # Bessel-corrected (ddof = 1)
    identical = (comps.reward_min[:, None] == x) & (comps.reward_max[:, None] == x)
    if n_others == 0:
        identical = np.ones_like(identical)
    advantage = np.zeros(np.broadcast_shapes(identical.shape, std.shape))
    # identical groups: A = 0 (not 0/0 when eps = 0); otherwise std > 0
    np.divide(x - mean, std + eps, out=advantage, where=~identical)
    if estimator == "grpo":
        return advantage / own_length[None, :]
    # dapo: G A_i / (|y_i| + sum_{j != i} |y_j|)
    return group_size * advantage / (own_length[None, :] + comps.length_sum[:, None])


def expected_coefficients(
    estimator: str,
    rewards: np.ndarray,
    lengths: np.ndarray,
    prob: np.ndarray,
    group_size: int,
    eps: float,
    horizon: int,
    part: str = "all",
) -> tuple[np.ndarray, int]:
    """``w(y) = G E_others[c(y; others)]`` (or of its positive/negative part) for one prompt.

    Args:
        estimator: one of :data:`ESTIMATORS`.
        rewards, lengths, prob: ``(n,)`` the prompt's leaf rewards, lengths ``|y|`` and
            probabilities ``pi(y)``.
        group_size: ``G``.
        eps: GRPO's ``eps`` (added to the standard deviation).
        horizon: ``H`` (Dr. GRPO's constant normalizer).
        part: ``"all"``, ``"positive"`` (``G E[max(c, 0)]``) or ``"negative"``
            (``G E[min(c, 0)]``).

    Returns:
        ``(w, n_compositions)``: ``(n,)`` weights and the number of compositions enumerated
        (0 when a closed form was used).

    Raises:
        ValueError: more than :data:`MAX_COMPOSITIONS` compositions.
    """
    if estimator == "reinforce" or group_size == 1:
        base = rewards if estimator == "reinforce" else np.zeros_like(rewards)
        return _part(base, part), 0
    if part == "all" and estimator in ("rloo", "dr_grpo"):
        # r - r_bar, centred first so that a constant reward gives exactly 0
        centred = rewards - rewards[np.argmax(prob)]
        r_bar = float((prob * centred).sum())  # no BLAS: see _dot
        factor = 1.0 if estimator == "rloo" else (group_size - 1) / (group_size * horizon)
        return factor * (centred - r_bar), 0
    by_length = estimator == "dapo"
    # own types: distinct rewards (and lengths, for dapo) of all the prompt's leaves
    own_reward, inverse = np.unique(rewards, return_inverse=True)
    inverse = inverse.reshape(-1)
    own_length = np.ones_like(own_reward)  # grpo: w = E[A] / |y|, divided per leaf below
    if by_length:
        key = inverse * (horizon + 1) + lengths  # (reward index, length) as one integer
        keys, inverse = np.unique(key, return_inverse=True)
        inverse = inverse.reshape(-1)
        own_reward = own_reward[keys // (horizon + 1)]
        own_length = (keys % (horizon + 1)).astype(np.float64)
    mass = np.bincount(inverse, weights=prob, minlength=own_reward.size)
    present = mass > 0  # the other members' types: those pi reaches
    # every estimator enumerated here is shift invariant: centre the rewards for accuracy
    own_reward = own_reward - float(np.median(own_reward[present]))
    type_rewards, type_lengths = own_reward[present], own_length[present]
    count = composition_count(group_size - 1, type_rewards.size)
    if count > MAX_COMPOSITIONS:
        raise ValueError(
            f"the exact expectation over the other group members needs {count:,} type "
            f"compositions (group_size={group_size}, {type_rewards.size} distinct "
            f"{'(reward, length)' if by_length else 'reward'} types on one prompt), more than "
            f"MAX_COMPOSITIONS = {MAX_COMPOSITIONS:,}; use a smaller group_size or a reward "
            "with fewer distinct values (e.g. 0/1 or rounded)"
        )
    comps = _enumerate(type_rewards, type_lengths, np.log(mass[present]), group_size - 1)
    expected = np.empty(own_reward.size)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, comps.prob.size))
    for start in range(0, own_reward.size, chunk):
        columns = slice(start, start + chunk)
        coefficient = _member_coefficient(
            estimator,
            own_reward[columns],
            own_length[columns],
            comps,
            group_size,
            eps,
            horizon,
        )  # (n_comp, chunk)
        expected[columns] = (comps.prob[:, None] * _part(coefficient, part)).sum(axis=0)
    weights = expected[inverse]
    if estimator == "grpo":
        weights = weights / lengths
    return weights, count


def _part(values: np.ndarray, part: str) -> np.ndarray:
    if part == "positive":
        return np.maximum(values, 0.0)
    if part == "negative":
        return np.minimum(values, 0.0)
    return values


def check_estimator(estimator: object, group_size: object) -> tuple[str, int]:
    """The estimator name and ``G`` (``>= 2``, ``>= 1`` for ``"reinforce"``)."""
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    minimum = 1 if estimator == "reinforce" else 2
    if isinstance(group_size, (numbers.Integral, np.integer)) and not isinstance(group_size, bool):
        if int(group_size) < minimum:
            why = "" if minimum == 1 else " (a group-relative baseline needs another member)"
            raise ValueError(
                f"group_size must be >= {minimum} for estimator {estimator!r}{why}, "
                f"got {group_size}"
            )
    return estimator, check_positive_int(group_size, "group_size", minimum)


def check_kl_options(
    beta: object, kl_estimator: object, kl_placement: object, kl_level: object
) -> tuple[float, KLTerm | None]:
    """``beta >= 0`` and the KL term (None when there is none).

    Raises:
        ValueError: ``beta > 0`` without a ``kl_estimator`` (the penalty would be ignored), or
            an unknown placement/level/estimator.
    """
    beta = check_nonnegative(beta, "beta")
    if kl_estimator is None:
        if beta > 0:
            raise ValueError(
                f"beta={beta!r} > 0 but kl_estimator=None: pass kl_estimator='k1' | 'k2' | 'k3' "
                "(with kl_placement and kl_level) for a KL term, or beta=0 for none"
            )
        return beta, None
    try:
        term = kl_term(kl_estimator, kl_placement, kl_level)
    except ValueError as error:
        raise ValueError(f"kl_estimator/kl_placement/kl_level: {error}") from None
    return beta, term


@dataclass(frozen=True, eq=False)
class ExpectedUpdate:
    """The exact expected update ``E[g_hat]`` of a group-relative estimator at ``pi``.

    Attributes:
        estimator, group_size, eps, beta: the inputs.
        kl_term: the :class:`tinyrlhf.kl_terms.KLTerm` inside the update, or None.
        leaf_weights: ``(n_leaves,)`` ``w(y)`` with ``E[g_hat] = sum_y pi(y) w(y) grad log pi(y)``
            for the reward part (module docstring); defined on every leaf, read where
            ``pi(y) > 0``.
        gradient: ``H`` arrays ``(level_size(h), A)``: ``E[g_hat]`` w.r.t. the softmax logits,
            mean over prompts, KL term included.
        reward_gradient: the reward part alone (``sequence_score_gradient(pi, w)``).
        true_gradient: ``grad_theta`` of the mean over prompts of ``E_pi[r]`` (minus
            ``beta KL(pi || pi_ref)`` when a KL term is present).
        cosine: cosine between ``gradient`` and ``true_gradient`` (NaN if either is 0).
        norm_ratio: ``||gradient|| / ||true_gradient||`` (NaN if the latter is 0).
        prompt_scale: ``(n_prompts,)`` ``<g_p, t_p> / ||t_p||^2`` per prompt for the reward
            part ``g_p`` against ``t_p = grad E_pi[r | p]`` (the difficulty bias: for 0/1
            rewards without ``eos``, ``g_p = prompt_scale_p t_p`` exactly); NaN where
            ``t_p = 0``.
        prompt_cosine: ``(n_prompts,)`` cosine of ``g_p`` and ``t_p``.
        lengths: ``(n_leaves,)`` ``|y|`` (:func:`completion_lengths`).
        length_weight: ``(n_prompts, H)`` the ``pi``-weighted mean of ``w`` over completions
            of length ``1..H`` (column ``l - 1``); NaN where ``pi`` gives that length no mass.
        compositions: the most type compositions enumerated for one prompt (0: closed form).
        residual: the stationarity (KKT, Frank-Wolfe) residual of ascent along ``gradient``
            at ``pi`` (:func:`tinyrlhf.gradients.update_residual`):
            ``sum_s (d(s)/n_prompts) max_{a: pi(a|s) > 0} A(s, a) >= 0``, 0 exactly at a
            stationary point of the update. The same quantity that
            :func:`tinyrlhf.train_expected` stops on, so its ``residual`` equals this one at
            the returned policy.

    ``gradient_norm`` (a property) is ``||E[g_hat]||``, which the residual bounds
    (``||E[g_hat]|| <= 2 residual``); unlike the residual it also vanishes near the simplex
    boundary without stationarity, so it is reported under its own name, not as the
    certificate.
    """

    estimator: str
    group_size: int
    eps: float
    beta: float
    kl_term: KLTerm | None
    leaf_weights: np.ndarray
    gradient: list[np.ndarray]
    reward_gradient: list[np.ndarray]
    true_gradient: list[np.ndarray]
    cosine: float
    norm_ratio: float
    prompt_scale: np.ndarray
    prompt_cosine: np.ndarray
    lengths: np.ndarray
    length_weight: np.ndarray
    compositions: int
    residual: float

    @property
    def gradient_norm(self) -> float:
        """``||E[g_hat]||``, the Euclidean norm of the expected update (all levels)."""
        return gradient_norm(self.gradient)


def leaf_weights(
    policy: Policy,
    reward: np.ndarray,
    estimator: str,
    group_size: int,
    eps: float,
    part: str = "all",
) -> tuple[np.ndarray, int]:
    """``w(y)`` on every leaf, prompt by prompt (inputs already validated)."""
    tree = policy.tree
    lengths = completion_lengths(tree)
    prob = policy.leaf_probs().reshape(tree.n_prompts, -1)
    rewards = reward.reshape(tree.n_prompts, -1)
    length_rows = lengths.reshape(tree.n_prompts, -1)
    weights = np.empty((tree.n_prompts, tree.leaves_per_prompt))
    most = 0
    for p in range(tree.n_prompts):
        weights[p], count = expected_coefficients(
            estimator,
            rewards[p],
            length_rows[p],
            prob[p],
            group_size,
            eps,
            tree.horizon,
            part,
        )
        most = max(most, count)
    return weights.reshape(-1), most


def _per_prompt(gradient: list[np.ndarray], n_prompts: int) -> np.ndarray:
    """All levels of a gradient as one row per prompt, ``(n_prompts, dim)``."""
    return np.concatenate([table.reshape(n_prompts, -1) for table in gradient], axis=1)


def _dot(first: np.ndarray, second: np.ndarray) -> float:
    """``<first, second>`` by an elementwise product and a sum: a multithreaded BLAS ``dot``
    slows down by orders of magnitude on a machine whose cores are busy (measured)."""
    return float((first * second).sum())


def _cosine(first: np.ndarray, second: np.ndarray) -> float:
    norms = float(np.sqrt(_dot(first, first) * _dot(second, second)))
    return _dot(first, second) / norms if norms > 0 else float("nan")


def expected_update(
    policy: Policy,
    reward: np.ndarray,
    beta: float = 0.0,
    *,
    estimator: str,
    group_size: int,
    eps: float = 1e-4,
    ref: Policy | None = None,
    kl_estimator: object = None,
    kl_placement: str = "loss",
    kl_level: str = "token",
) -> ExpectedUpdate:
    r"""The exact expected update of a group-relative policy-gradient estimator.

        E[g_hat] = sum_y pi(y) w(y) grad_theta log pi(y)  -  beta E[grad KL term],

    .. math::

        \mathbb{E}[\hat g] = \sum_y \pi(y)\, w(y)\, \nabla_\theta \log \pi(y)
        - \beta\, \mathbb{E}[\nabla \text{KL term}],

    with ``w`` derived per estimator in the module docstring, the expectation over the
    ``G - 1`` other group members taken exactly by type compositions, and the KL term from
    :func:`tinyrlhf.kl_terms.kl_penalty_gradient`. Mean over prompts (prompts uniform), as
    :func:`tinyrlhf.objective` and :func:`tinyrlhf.policy_gradient_grad`.

    Args:
        policy: ``pi_theta`` (softmax logits ``theta``), the sampling policy.
        reward: ``(n_leaves,)`` finite rewards.
        beta: ``>= 0`` KL coefficient (needs ``kl_estimator`` when ``> 0``); positional or
            keyword (README "Conventions").
        estimator: ``"reinforce" | "rloo" | "dr_grpo" | "grpo" | "dapo"``.
        group_size: ``G >= 2`` (``>= 1`` for ``"reinforce"``).
        eps: ``>= 0`` added to the group's standard deviation (grpo, dapo).
        ref: ``pi_ref`` (needed when ``beta > 0``).
        kl_estimator: ``None`` (no KL term) or ``"k1" | "k2" | "k3"`` or a callable.
        kl_placement: ``"loss" | "reward"``.
        kl_level: ``"token" | "sequence"``.

    Returns:
        An :class:`ExpectedUpdate`.

    Raises:
        ValueError: unknown estimator, ``group_size`` too small, ``eps < 0``, non-finite
            rewards, ``beta > 0`` without ``kl_estimator`` or ``ref``, or more than
            :data:`MAX_COMPOSITIONS` type compositions.
    """
    policy = check_policy(policy, "policy")
    tree = policy.tree
    reward = check_leaf_array(tree, reward, "reward")
    estimator, group_size = check_estimator(estimator, group_size)
    eps = check_nonnegative(eps, "eps")
    beta, term = check_kl_options(beta, kl_estimator, kl_placement, kl_level)
    kl_ref = _kl_reference(policy, ref, term is not None and beta > 0)
    weights, compositions = leaf_weights(policy, reward, estimator, group_size, eps)
    reward_gradient = sequence_score_gradient(policy, weights)
    gradient, true_gradient, reward_only = _kl_gradients(
        policy, kl_ref, term, reward, beta, reward_gradient
    )
    prompt_scale, prompt_cosine = _prompt_alignment(reward_gradient, reward_only, tree.n_prompts)
    cosine, norm_ratio = _alignment(gradient, true_gradient)
    lengths = completion_lengths(tree)
    return ExpectedUpdate(
        estimator=estimator,
        group_size=group_size,
        eps=eps,
        beta=beta,
        kl_term=term,
        leaf_weights=weights,
        gradient=gradient,
        reward_gradient=reward_gradient,
        true_gradient=true_gradient,
        cosine=cosine,
        norm_ratio=norm_ratio,
        prompt_scale=prompt_scale,
        prompt_cosine=prompt_cosine,
        lengths=lengths,
        length_weight=_length_weight(policy, weights, lengths),
        compositions=compositions,
        residual=update_residual(policy, gradient),
    )


def _kl_reference(policy: Policy, ref: Policy | None, use_kl: bool) -> Policy | None:
    """``ref`` checked against ``policy`` when the update has a KL term, else None."""
    if not use_kl:
        return None
    if ref is None:
        raise ValueError("ref (pi_ref) is needed for a KL term with beta > 0; pass ref=")
    check_policy(ref, "ref")
    check_same_tree(policy, ref, ("policy", "ref"))
    return ref


def _kl_gradients(
    policy: Policy,
    kl_ref: Policy | None,
    term: KLTerm | None,
    reward: np.ndarray,
    beta: float,
    reward_gradient: list[np.ndarray],
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``(E[g_hat], true gradient, grad E[r])`` from the reward part ``reward_gradient``:
    the KL term's gradient (``beta``, ``term``, against ``kl_ref``) is subtracted when
    ``kl_ref`` is given, and the true gradient is then that of ``E[r] - beta KL``."""
    if kl_ref is None or term is None:
        true_gradient = sequence_score_gradient(policy, reward)
        return reward_gradient, true_gradient, true_gradient
    kl_grad = kl_penalty_gradient(policy, kl_ref, term)
    gradient = [g - beta * k for g, k in zip(reward_gradient, kl_grad, strict=True)]
    true_gradient = policy_gradient_grad(policy, kl_ref, reward, beta)
    return gradient, true_gradient, sequence_score_gradient(policy, reward)


def _prompt_alignment(
    reward_gradient: list[np.ndarray], reward_only: list[np.ndarray], n_prompts: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt, ``(scale, cosine)`` of the reward part against ``grad E[r]``, ``(P,)``
    each (NaN where a gradient vanishes)."""
    g_rows = _per_prompt(reward_gradient, n_prompts)  # (P, dim)
    t_rows = _per_prompt(reward_only, n_prompts)
    t_norms = (t_rows * t_rows).sum(axis=1)  # (P,)
    dots = (g_rows * t_rows).sum(axis=1)
    g_norms = (g_rows * g_rows).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        prompt_scale = np.where(t_norms > 0, dots / t_norms, np.nan)
        both = np.sqrt(t_norms * g_norms)
        prompt_cosine = np.where(both > 0, dots / both, np.nan)
    return prompt_scale, prompt_cosine


def _alignment(gradient: list[np.ndarray], true_gradient: list[np.ndarray]) -> tuple[float, float]:
    """``(cosine, norm ratio)`` of the expected update against the true gradient (the ratio
    is NaN when the true gradient vanishes)."""
    flat_g, flat_t = (
        np.concatenate([g.ravel() for g in gradient]),
        np.concatenate([t.ravel() for t in true_gradient]),
    )
    true_norm = float(np.sqrt(_dot(flat_t, flat_t)))
    norm_ratio = (
        float(np.sqrt(_dot(flat_g, flat_g)) / true_norm) if true_norm > 0 else float("nan")
    )
    return _cosine(flat_g, flat_t), norm_ratio


def _length_weight(policy: Policy, weights: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``E[w(y) | prompt, |y|]``, ``(P, H)`` (NaN for lengths of probability 0)."""
    tree = policy.tree
    prob = policy.leaf_probs()
    prompts = tree.leaf_prompts()
    slot = prompts * tree.horizon + (lengths - 1)  # (prompt, length) bin of each leaf
    size = tree.n_prompts * tree.horizon
    mass = np.bincount(slot, weights=prob, minlength=size)
    weighted = np.bincount(slot, weights=prob * weights, minlength=size)
    with np.errstate(divide="ignore", invalid="ignore"):
        length_weight = np.where(mass > 0, weighted / mass, np.nan)
    return length_weight.reshape(tree.n_prompts, tree.horizon)
