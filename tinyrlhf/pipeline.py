"""The RLHF pipeline end to end: preferences -> reward model -> KL-regularized policy (sections 3-4).

The lecture's two acts, chained on a tree where everything is exact:

1. a true reward ``r`` labels pairs of distinct completions drawn from the reference policy by
   Bradley-Terry (:func:`~tinyrlhf.preferences.sample_preferences`);
2. ``r_hat`` is fitted to them by maximum likelihood, the forward-KL projection
   (:func:`~tinyrlhf.bradley_terry.fit_bradley_terry`);
3. the KL-regularized problem ``max_pi E_pi[r_hat] - beta KL(pi || pi_ref)`` is solved by the
   closed form ``P_hat* ∝ P_ref exp(r_hat / beta)`` (:func:`~tinyrlhf.solvers.closed_form`);
4. ``pi_hat*`` is compared with ``pi*``, the solution under the true ``r``.

The comparison uses an identity of the closed form: for every policy ``pi``,
``J_r(pi) = beta log Z_r - beta KL(pi || pi*)``, so the true objective that the learned
policy gives up is exactly ``J_r(pi*) - J_r(pi_hat*) = beta KL(pi_hat* || pi*)``.
Rewards are compared on the leaves ``pi_ref`` can produce, after removing each prompt's
mean (the policy ignores a per-prompt constant). The dataset sizes are nested prefixes of one sample, so rows differ only by the
data added; an optional last row fits the population (every pair with its exact
probability, :func:`~tinyrlhf.preferences.population_preferences`, ``l2 = 0``), the limit of
infinite data, which recovers ``r`` and hence ``pi*``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .bradley_terry import DEFAULT_L2, fit_bradley_terry
from .deprecation import renamed_keywords
from .divergences import expected_reward, kl_divergence
from .policy import Policy
from .preferences import (
    Preferences,
    check_pair_count,
    population_preferences,
    sample_preferences,
)
from .solvers import Solution, closed_form
from .tree import TokenTree
from .validation import check_policy, check_positive_int, check_problem, check_same_tree, make_rng

#: Largest number of ordered pairs ``n_prompts * (A**H)**2`` for which the population row is
#: included by default (about 200 MB of temporaries at this size).
POPULATION_MAX_PAIRS = 4_000_000


@dataclass(frozen=True, eq=False)
class PipelineResult:
    """Measurements of :func:`preference_pipeline`, one row per dataset size.

    Attributes:
        sizes: ``(k,)`` float64 numbers of sampled pairs; ``inf`` marks the population row.
        beta: the KL coefficient.
        l2: the ridge coefficient of the sampled fits (the population row uses 0).
        reward_rmse: ``(k,)`` root mean square of ``r_hat - r`` over the leaves ``pi_ref``
            can produce (the only ones the RLHF policy sees), after removing from both their
            mean over those leaves of each prompt.
        kl: ``(k, n_prompts)`` ``KL(pi_hat* || pi*)``.
        regret: ``(k, n_prompts)`` ``J_r(pi*) - J_r(pi_hat*)`` under the true reward
            (``= beta * kl``).
        expected_reward: ``(k, n_prompts)`` ``E_{pi_hat*}[r]``, the true reward the learned
            policy achieves.
        optimal_expected_reward: ``(n_prompts,)`` ``E_{pi*}[r]``.
        reference_expected_reward: ``(n_prompts,)`` ``E_{pi_ref}[r]``.
        n_components: ``(k,)`` connected components of the comparison graph.
        n_never_compared: ``(k,)`` leaves in no comparison (their ``r_hat`` is 0).
        mle_exists: ``(k,)`` whether the unregularized MLE exists.
        converged: ``(k,)`` whether the Newton fit met its gradient test.
        fit_time: ``(k,)`` seconds per Bradley-Terry fit.
        rewards: the ``k`` fitted rewards ``r_hat``, ``(n_leaves,)`` each.
    """

    sizes: np.ndarray
    beta: float
    l2: float
    reward_rmse: np.ndarray
    kl: np.ndarray
    regret: np.ndarray
    expected_reward: np.ndarray
    optimal_expected_reward: np.ndarray
    reference_expected_reward: np.ndarray
    n_components: np.ndarray
    n_never_compared: np.ndarray
    mle_exists: np.ndarray
    converged: np.ndarray
    fit_time: np.ndarray
    rewards: tuple[np.ndarray, ...]

    def __str__(self) -> str:
        return format_pipeline(self)


@renamed_keywords(sampling_policy="policy")
def preference_pipeline(
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    sizes: Sequence[int],
    *,
    l2: float = DEFAULT_L2,
    policy: Policy | None = None,
    population: bool | None = None,
    seed: int | np.random.Generator | None = 0,
    distinct: bool = True,
) -> PipelineResult:
    """Run true reward -> preferences -> Bradley-Terry -> closed-form RLHF for several sizes.

    Args:
        ref: the reference policy ``pi_ref`` (the SFT model); its tree is the problem's.
        reward: ``(n_leaves,)`` the true reward ``r``.
        beta: KL coefficient > 0.
        sizes: dataset sizes (numbers of pairs), each ``>= 1``; fitted on nested prefixes
            of one sample of ``max(sizes)`` pairs, in increasing order. The largest is
            checked against the memory budget before anything is computed.
        l2: ridge coefficient of the sampled fits (see
            :data:`~tinyrlhf.bradley_terry.DEFAULT_L2`).
        policy: the policy that draws the compared completions (``ref`` if None: pairs
            come from the model being fine-tuned), as in
            :func:`~tinyrlhf.preferences.sample_preferences`: pairs of distinct
            completions. ``sampling_policy=`` is its deprecated old name.
        population: add the population row (``l2 = 0``). None: only when the
            ``n_prompts * (A**H)**2`` ordered pairs are at most :data:`POPULATION_MAX_PAIRS`.
        seed: int, Generator or None; default 0, so that a table is reproducible (see
            :func:`~tinyrlhf.validation.make_rng`).
        distinct: pairs of distinct completions (default) or independent draws that may
            compare a completion with itself (see
            :func:`~tinyrlhf.preferences.sample_preferences`); the population row has no
            ties either way.

    Returns:
        :class:`PipelineResult`; ``print`` it for a table.

    Raises:
        TypeError/ValueError: bad arguments; ``ValueError`` when ``max(sizes)`` pairs do
            not fit in memory (the message gives the size).
    """
    ref, reward, beta = check_problem(ref, reward, beta)
    tree = ref.tree
    sizes = _check_sizes(sizes)
    if policy is not None:
        check_same_tree(ref, check_policy(policy, "policy"), ("ref", "policy"))
    rng = make_rng(seed)
    sampler = ref if policy is None else policy
    if population is None:
        population = tree.n_prompts * tree.leaves_per_prompt**2 <= POPULATION_MAX_PAIRS

    true = closed_form(ref, reward, beta)
    prefs = sample_preferences(
        tree, reward, sizes[-1], policy=sampler, seed=rng, distinct=distinct
    )
    datasets = [(float(size), prefs[:size], l2) for size in sizes]
    if population:
        datasets.append((np.inf, population_preferences(tree, reward, policy=sampler), 0.0))
    rows: dict[str, list] = {key: [] for key in _ROW_KEYS}
    support = ref.leaf_log_probs() > -np.inf  # the leaves pi_ref (hence pi*) can produce
    centered_true = _center_per_prompt(reward, tree, support)
    for _, data, fit_l2 in datasets:
        row = _fit_row(ref, reward, beta, true, data, fit_l2, support, centered_true)
        for key in _ROW_KEYS:
            rows[key].append(row[key])
    return PipelineResult(
        sizes=np.array([size for size, _, _ in datasets]),
        beta=beta,
        l2=float(l2),
        reward_rmse=np.array(rows["reward_rmse"]),
        kl=np.array(rows["kl"]),
        regret=np.array(rows["regret"]),
        expected_reward=np.array(rows["expected_reward"]),
        optimal_expected_reward=expected_reward(true.policy, reward),
        reference_expected_reward=expected_reward(ref, reward),
        n_components=np.array(rows["n_components"]),
        n_never_compared=np.array(rows["n_never_compared"]),
        mle_exists=np.array(rows["mle_exists"]),
        converged=np.array(rows["converged"]),
        fit_time=np.array(rows["fit_time"]),
        rewards=tuple(rows["rewards"]),
    )


def _check_sizes(sizes: object) -> list[int]:
    """The dataset sizes, sorted; the largest checked against the memory budget."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) == 0:
        raise TypeError(f"sizes must be a non-empty sequence of integers, got {sizes!r}")
    checked = sorted(check_positive_int(size, "sizes[i]") for size in sizes)
    check_pair_count(checked[-1], "max(sizes)")
    return checked


#: The per-dataset measurements of :func:`preference_pipeline`.
_ROW_KEYS = (
    "reward_rmse", "kl", "regret", "expected_reward", "n_components",
    "n_never_compared", "mle_exists", "converged", "fit_time", "rewards",
)  # fmt: skip


def _fit_row(
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    true: Solution,
    data: Preferences,
    fit_l2: float,
    support: np.ndarray,
    centered_true: np.ndarray,
) -> dict[str, object]:
    """Fit Bradley-Terry to ``data``, solve RLHF under the fit and measure it against the
    optimum ``true`` (one entry of each of :data:`_ROW_KEYS`)."""
    tree = ref.tree
    start = time.perf_counter()
    fit = fit_bradley_terry(tree, data, l2=fit_l2)
    fit_time = time.perf_counter() - start
    learned = closed_form(ref, fit.reward, beta)
    error = _center_per_prompt(fit.reward, tree, support) - centered_true
    kl_to_optimum = kl_divergence(learned.policy, true.policy)  # from terms >= 0
    return {
        "fit_time": fit_time,
        "reward_rmse": float(np.sqrt(np.mean(error[support] ** 2))),
        "kl": kl_to_optimum,
        # J_r(pi*) - J_r(pi_hat*) = beta KL(pi_hat* || pi*) (the soft-RL identity, section 5):
        # computed from the KL so that it cannot come out negative by cancellation
        "regret": beta * kl_to_optimum,
        "expected_reward": expected_reward(learned.policy, reward),
        "n_components": fit.n_components,
        "n_never_compared": fit.never_compared.size,
        "mle_exists": fit.mle_exists,
        "converged": fit.converged,
        "rewards": fit.reward,
    }


def format_pipeline(result: PipelineResult) -> str:
    """The pipeline as a table; KL, regret and rewards are averaged over prompts."""
    header = (
        f"{'pairs':>10} {'components':>10} {'never cmp':>9} {'MLE':>5} "
        f"{'rms(r_hat - r)':>14} {'KL(pi_hat*||pi*)':>16} {'regret':>10} "
        f"{'E_pi_hat*[r]':>12} {'fit [ms]':>9}"
    )
    lines = [header, "-" * len(header)]
    for k, size in enumerate(result.sizes):
        label = "population" if np.isinf(size) else f"{int(size):,}"
        lines.append(
            f"{label:>10} {result.n_components[k]:>10d} {result.n_never_compared[k]:>9d} "
            f"{'yes' if result.mle_exists[k] else 'no':>5} {result.reward_rmse[k]:>14.3e} "
            f"{result.kl[k].mean():>16.3e} {result.regret[k].mean():>10.3e} "
            f"{result.expected_reward[k].mean():>12.6f} {1e3 * result.fit_time[k]:>9.1f}"
        )
    lines.append(
        f"E_pi*[r] = {result.optimal_expected_reward.mean():.6f} (optimal policy under the "
        f"true reward), E_pi_ref[r] = {result.reference_expected_reward.mean():.6f}"
    )
    lines.append(
        f"regret = J_r(pi*) - J_r(pi_hat*) = beta KL(pi_hat* || pi*), beta = {result.beta:g}; "
        "KL, regret and E are means over prompts"
    )
    return "\n".join(lines)


def _center_per_prompt(values: np.ndarray, tree: TokenTree, support: np.ndarray) -> np.ndarray:
    """``values`` minus, per prompt, their mean over the ``support`` leaves of that prompt."""
    prompt = tree.leaf_prompts()  # (n_leaves,)
    count = np.bincount(prompt, support.astype(np.float64), minlength=tree.n_prompts)
    total = np.bincount(prompt, np.where(support, values, 0.0), minlength=tree.n_prompts)
    return values - (total / count)[prompt]
