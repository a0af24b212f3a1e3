"""Single-sample KL estimators, exactly: their means, variances and loss gradients.

Beyond the lecture (section 4 uses the exact ``KL(pi || pi_ref)``). Trainers never see the
exact KL; they estimate it from one sampled generation ``xi ~ pi`` with the ratio
``rho = pi_ref(xi) / pi(xi)`` (Schulman 2020, "Approximating KL divergence"):

    k1 = -log rho                  unbiased,                      can be negative
    k2 = (log rho)^2 / 2           biased (second-order accurate), >= 0
    k3 = (rho - 1) - log rho       unbiased (E_pi[rho] = 1),       >= 0

Common trainers apply them per token and sum over the generation, with
``rho_h = pi_ref(a_h | s_h) / pi(a_h | s_h)`` (e.g. GRPO, Shao et al. 2024, eq. 4, which
averages the per-token ``k3``): ``sum_h k(rho_h)``. For ``k1`` this is the same number
(``log rho = sum_h log rho_h``); for ``k3`` it is a different, still unbiased estimator
(``E[rho_h - 1 | s_h] = 0``); for ``k2`` a different, biased one. Here every mean and
variance is computed exactly by enumerating the leaves of the tree.

**As a loss.** When an estimate is *minimized* by automatic differentiation, the sample
``xi`` is drawn from ``pi_theta`` but not differentiated through, so the expected gradient
is the pathwise one, ``E_{xi ~ pi}[grad_theta k(xi; theta)]``. With ``log pi`` differentiated
and ``E_pi[grad log pi] = 0``:

- ``k1``: ``E[grad log pi(xi)] = 0`` — no gradient at all (sequence or per token);
- ``k2``: ``E[log(pi/pi_ref)(xi) grad log pi(xi)] = grad KL(pi || pi_ref)`` — the score-
  function form of the true gradient: unbiased;
- ``k3``: ``E[(1 - rho) grad log pi] = -sum_xi pi_ref(xi) grad log pi(xi)
  = grad KL(pi_ref || pi)`` — the gradient of the *forward* KL: biased;
- per-token ``k2``: ``sum_s d_pi(s) grad KL(pi(.|s) || pi_ref(.|s))`` with the occupancy
  ``d_pi`` held fixed — it drops the effect of a token on the KL of later tokens;
- per-token ``k3``: ``sum_s d_pi(s) grad KL(pi_ref(.|s) || pi(.|s))`` with ``d_pi`` fixed.

For softmax logits ``theta(s, a)`` (as in :mod:`tinyrlhf.solvers.policy_gradient`),
``grad_{theta(s, .)} log pi(a | s) = onehot(a) - pi(. | s)``, so a sequence-level
coefficient ``C(xi)`` gives the exact expected gradient

    E_pi[C(xi) sum_h grad log pi(a_h | s_h)](s, a) = M(s o a) - pi(a | s) M(s),
    M(node) = sum_{xi below node} P_pi(xi) C(xi)                    (subtree sums)

and a per-token coefficient ``c(s, a)`` gives ``d_pi(s) pi(a|s) (c(s, a) - sum_b pi(b|s)
c(s, b))``. All gradients are of the mean over prompts (prompts uniform, the convention of
:func:`tinyrlhf.policy_gradient_grad`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .divergences import kl_divergence
from .gradients import sequence_score_gradient, token_score_gradient
from .policy import Policy
from .solvers import policy_gradient_grad

#: The estimator names accepted by :func:`kl_estimator_moments` and
#: :func:`kl_estimator_gradient`.
ESTIMATORS = ("k1", "k2", "k3")


def kl_estimator_moments(
    policy: Policy, ref: Policy, estimator: str, *, per_token: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of a single-sample KL estimator, per prompt.

        mean = sum_xi P_pi(xi) k(xi),   variance = sum_xi P_pi(xi) (k(xi) - mean)^2

    with ``k`` one of ``k1 = -log rho``, ``k2 = (log rho)^2 / 2``,
    ``k3 = (rho - 1) - log rho``, ``rho = pi_ref(xi) / pi(xi)`` (``per_token=False``), or
    its per-token sum ``sum_h k(rho_h)``, ``rho_h = pi_ref(a_h|s_h) / pi(a_h|s_h)``
    (``per_token=True``). Compare the mean with :func:`tinyrlhf.kl_divergence` for the bias.

    Args:
        policy: the sampling policy ``pi``.
        ref: the reference ``pi_ref`` (same tree).
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
        per_token: sum the per-token estimator over the generation.

    Returns:
        ``(mean, variance)``, each ``(n_prompts,)``; both ``+inf`` on prompts where ``pi``
        reaches a generation (or token) that ``pi_ref`` never produces. A ``k3`` value whose
        ratio exceeds the float64 range counts as ``+inf`` in the variance.

    Raises:
        TypeError: ``policy`` or ``ref`` is not a Policy.
        ValueError: an unknown estimator, or policies on different trees.
    """
    _check_inputs(policy, ref, estimator, per_token)
    tree = policy.tree
    log_p = policy.leaf_log_probs().reshape(tree.n_prompts, -1)  # (P, A**H)
    log_ref = ref.leaf_log_probs().reshape(tree.n_prompts, -1)
    reached = log_p > -np.inf
    # pi reaches a generation pi_ref never produces: rho = 0 there, every k is +inf
    infinite = (reached & (log_ref == -np.inf)).any(axis=1)  # (P,)
    values = _leaf_values(policy, ref, estimator, per_token).reshape(tree.n_prompts, -1)
    usable = reached & np.isfinite(values)
    overflowed = (reached & ~np.isfinite(values)).any(axis=1) & ~infinite
    weight = np.exp(log_p)  # P_pi(xi), 0 on unreached leaves
    finite_values = np.where(usable, values, 0.0)
    if estimator == "k3":
        # E[k3] = E[sum (rho - 1)] + E[k1], with the rho part summed as probabilities so that
        # a huge rho on an unlikely generation cannot overflow the mean.
        log_rho = np.zeros_like(log_p)  # log(pi_ref / pi) on leaves both reach
        np.subtract(log_ref, log_p, out=log_rho, where=reached & ~infinite[:, None])
        mean = _ratio_excess(policy, ref, per_token) - (weight * log_rho).sum(axis=1)
    else:
        mean = (weight * finite_values).sum(axis=1)
    deviation = np.where(usable, finite_values - mean[:, None], 0.0)
    # P (k - mean)^2 = exp(log P + 2 log|k - mean|): no 0 * inf where P underflows and the
    # square overflows; a variance beyond float64 is +inf, its float value
    with np.errstate(divide="ignore", over="ignore"):
        variance = np.exp(log_p + 2.0 * np.log(np.abs(deviation))).sum(axis=1)
    mean = np.where(infinite, np.inf, mean)
    variance = np.where(infinite | overflowed, np.inf, variance)
    return mean, variance


def kl_estimator_gradient(
    policy: Policy, ref: Policy, estimator: str, *, per_token: bool = False
) -> list[np.ndarray]:
    """Exact expected gradient of a KL estimator used as a loss, w.r.t. softmax logits.

        E_{xi ~ pi_theta}[ grad_theta' k(xi; theta') ] at theta' = theta

    (the sample is not differentiated through, as in autodiff trainers). Closed forms in the
    module docstring: ``k1`` gives 0, sequence ``k2`` gives ``grad KL(pi || pi_ref)``
    (:func:`kl_gradient`), sequence ``k3`` gives ``grad KL(pi_ref || pi)``; the per-token
    ``k2``/``k3`` give the per-state reverse/forward KL gradients at a frozen occupancy.

    Args:
        policy: ``pi_theta`` with logits ``theta = log pi``.
        ref: ``pi_ref`` (same tree); ``pi`` must not reach generations ``pi_ref`` never
            produces.
        estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
        per_token: the per-token-summed estimator.

    Returns:
        One ``(level_size(h), A)`` array per level ``h = 0..H-1``: the gradient of the mean
        over prompts; 0 on tokens ``pi`` never picks.

    Raises:
        ValueError: an unknown estimator, or ``KL(pi || pi_ref) = inf`` (the estimator and
            its gradient are undefined).
    """
    _check_inputs(policy, ref, estimator, per_token)
    if np.isinf(kl_divergence(policy, ref)).any():
        raise ValueError(
            "policy reaches generations that ref never produces (KL(policy || ref) = inf); "
            "the estimators and their gradients are undefined there"
        )
    if estimator == "k1":
        # E_pi[grad log pi(xi)] = sum_xi grad P_pi(xi) = grad 1 = 0, sequence or per token
        return [np.zeros_like(table) for table in policy.log_probs]
    if estimator == "k2":  # C = log(P/P_ref) per sequence, c = log(pi/pi_ref) per token
        if per_token:
            return token_score_gradient(policy, _log_ratios(policy.log_probs, ref.log_probs))
        log_ratio = _log_ratios([policy.leaf_log_probs()], [ref.leaf_log_probs()])[0]
        return sequence_score_gradient(policy, log_ratio)
    return _k3_gradient(policy, ref, per_token)


def _log_ratios(log_p: list[np.ndarray], log_ref: list[np.ndarray]) -> list[np.ndarray]:
    """``log(p / p_ref)`` where ``p > 0`` (0 elsewhere, where the gradients never read it)."""
    ratios = []
    for numerator, denominator in zip(log_p, log_ref, strict=True):
        ratio = np.zeros_like(numerator)
        np.subtract(numerator, denominator, out=ratio, where=numerator > -np.inf)
        ratios.append(ratio)
    return ratios


def _k3_gradient(policy: Policy, ref: Policy, per_token: bool) -> list[np.ndarray]:
    """``k3``'s expected gradient from the weights ``w = p - p_ref`` (where ``p > 0``).

    The score-gradient helpers of :mod:`tinyrlhf.gradients` take a coefficient ``C`` and
    form ``p C``; for ``k3``, ``p C = p (1 - p_ref/p)`` must not be formed as a product: where
    ``p`` underflows while ``p_ref`` does not, it is ``0 * inf``. So the weights enter the two
    forms directly: ``W(s o a) - pi(a|s) W(s)`` with ``W`` the subtree sums of ``w``
    (sequence), and ``d(s) [w(s, a) - pi(a|s) sum_b w(s, b)]`` (per token).
    """
    tree = policy.tree
    if per_token:
        gradient = []
        for log_reach, log_pi, log_ref in zip(
            policy.log_occupancies(), policy.log_probs, ref.log_probs, strict=False
        ):
            pi = np.exp(log_pi)
            weighted = np.where(log_pi > -np.inf, pi - np.exp(log_ref), 0.0)  # (n, A)
            baseline = pi * weighted.sum(axis=1, keepdims=True)
            gradient.append(np.exp(log_reach)[:, None] * (weighted - baseline) / tree.n_prompts)
        return gradient
    log_p = policy.leaf_log_probs()
    sums = tree.subtree_sums(
        np.where(log_p > -np.inf, np.exp(log_p) - np.exp(ref.leaf_log_probs()), 0.0)
    )
    return [
        (sums[h + 1].reshape(-1, tree.n_tokens) - np.exp(log_pi) * sums[h][:, None])
        / tree.n_prompts
        for h, log_pi in enumerate(policy.log_probs)
    ]


def kl_gradient(policy: Policy, ref: Policy) -> list[np.ndarray]:
    """Exact gradient of the mean over prompts of ``KL(pi || pi_ref)`` w.r.t. softmax logits.

        grad KL = -grad J,   J = E_pi[0] - 1 * KL(pi || pi_ref)

    computed by :func:`tinyrlhf.policy_gradient_grad` with zero reward and ``beta = 1`` (its
    backward pass ``d_pi(s) pi(a|s) (Q(s, a) - V(s))``). By the score-function identity it
    equals the expected gradient of sequence-level ``k2`` (:func:`kl_estimator_gradient`,
    computed by forward subtree sums), which the tests check.

    Raises:
        TypeError: ``policy`` or ``ref`` is not a Policy.
        ValueError: ``policy`` picks a token that ``ref`` never picks.
    """
    _check_inputs(policy, ref, "k1", False)
    gradient = policy_gradient_grad(policy, ref, np.zeros(policy.tree.n_leaves), 1.0)
    return [-table for table in gradient]


@dataclass(frozen=True)
class KLEstimatorRow:
    """Statistics of one estimator (means over prompts of the per-prompt numbers)."""

    estimator: str
    per_token: bool
    kl: float  # the exact KL(pi || pi_ref)
    mean: float  # E[k]
    bias: float  # E[k] - KL
    std: float  # sqrt(Var[k])
    gradient_error: float  # ||E grad k - grad KL|| / ||grad KL||
    gradient_cosine: float  # cosine between E grad k and grad KL (nan if either is 0)

    @property
    def name(self) -> str:
        return f"{self.estimator}{' per token' if self.per_token else ''}"


@dataclass(frozen=True)
class KLEstimatorReport:
    """The six estimators side by side; ``print`` it for a table."""

    rows: tuple[KLEstimatorRow, ...]

    def __str__(self) -> str:
        header = (
            f"{'estimator':<14} {'KL':>10} {'E[k]':>10} {'bias':>10} {'std':>10} "
            f"{'|Δgrad|/|grad|':>15} {'cos':>7}"
        )
        lines = [header, "-" * len(header)]
        for row in self.rows:
            lines.append(
                f"{row.name:<14} {row.kl:>10.5f} {row.mean:>10.5f} {row.bias:>10.2e} "
                f"{row.std:>10.5f} {row.gradient_error:>15.3e} "
                + (
                    f"{row.gradient_cosine:>7.3f}"
                    if np.isfinite(row.gradient_cosine)
                    else f"{'—':>7}"
                )
            )
        return "\n".join(lines)

    def row(self, estimator: str, per_token: bool = False) -> KLEstimatorRow:
        """The row of ``estimator`` (``"k1"``, ``"k2"``, ``"k3"``)."""
        for row in self.rows:
            if row.estimator == estimator and row.per_token == per_token:
                return row
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def kl_estimator_report(policy: Policy, ref: Policy) -> KLEstimatorReport:
    """Bias, standard deviation and loss-gradient error of all six estimators.

    Per-prompt means, variances and KLs are averaged over prompts (``std`` is the square
    root of the averaged variance); the gradient error is ``||E grad k - grad KL|| /
    ||grad KL||`` over all logits (``nan`` when ``grad KL = 0``, i.e. ``pi = pi_ref``).

    Raises:
        ValueError: ``policy`` picks a token that ``ref`` never picks (see
            :func:`kl_gradient`).
    """
    kl = kl_divergence(policy, ref)
    true_gradient = _flatten(kl_gradient(policy, ref))
    true_norm = float(np.linalg.norm(true_gradient))
    rows = []
    for per_token in (False, True):
        for estimator in ESTIMATORS:
            mean, variance = kl_estimator_moments(policy, ref, estimator, per_token=per_token)
            gradient = _flatten(kl_estimator_gradient(policy, ref, estimator, per_token=per_token))
            norm = float(np.linalg.norm(gradient))
            if true_norm > 0:
                error = float(np.linalg.norm(gradient - true_gradient)) / true_norm
            else:
                error = float("nan")
            cosine = (
                float(gradient @ true_gradient) / (norm * true_norm)
                if norm > 0 and true_norm > 0
                else float("nan")
            )
            rows.append(
                KLEstimatorRow(
                    estimator=estimator,
                    per_token=per_token,
                    kl=float(kl.mean()),
                    mean=float(mean.mean()),
                    bias=float((mean - kl).mean()),
                    std=float(np.sqrt(variance.mean())),
                    gradient_error=error,
                    gradient_cosine=cosine,
                )
            )
    return KLEstimatorReport(tuple(rows))


# ------------------------------------------------------------------------------- helpers
def _check_inputs(policy: object, ref: object, estimator: object, per_token: object) -> None:
    for value, name in ((policy, "policy"), (ref, "ref")):
        if not isinstance(value, Policy):
            raise TypeError(f"{name} must be a tinyrlhf.Policy, got {type(value).__name__}")
    if policy.tree != ref.tree:  # type: ignore[attr-defined]
        raise ValueError("policy and ref must be policies on the same TokenTree")
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if not isinstance(per_token, (bool, np.bool_)):
        raise TypeError(f"per_token must be True or False, got {per_token!r}")


def _estimate(log_rho: np.ndarray, estimator: str) -> np.ndarray:
    """``k(log rho)`` elementwise; ``log rho = -inf`` (pi_ref = 0 < pi) gives ``+inf``."""
    if estimator == "k1":
        return -log_rho
    if estimator == "k2":
        return 0.5 * log_rho**2
    # k3 = (rho - 1) - log rho; a ratio beyond float64 (log rho > 709) is +inf, which
    # kl_estimator_moments reports as an infinite variance.
    with np.errstate(over="ignore"):
        return np.expm1(log_rho) - log_rho


def _ratio_excess(policy: Policy, ref: Policy, per_token: bool) -> np.ndarray:
    """``E_pi[rho - 1]`` (sequence) or ``E_pi[sum_h (rho_h - 1)]`` (per token), per prompt.

    ``E_pi[rho] = sum_{xi: pi(xi) > 0} pi_ref(xi)`` and ``E[rho_h | s_h] = sum_{a: pi(a|s) > 0}
    pi_ref(a|s)``: 0 when ``pi`` covers the support of ``pi_ref``, negative otherwise.
    """
    tree = policy.tree
    if not per_token:
        reached = policy.leaf_log_probs() > -np.inf
        covered = np.where(reached, np.exp(ref.leaf_log_probs()), 0.0)
        return covered.reshape(tree.n_prompts, -1).sum(axis=1) - 1.0
    total = np.zeros(tree.n_prompts)
    for h, log_reach in enumerate(policy.log_occupancies()[:-1]):  # log d_h(s)
        picked = policy.log_probs[h] > -np.inf
        covered = np.where(picked, np.exp(ref.log_probs[h]), 0.0).sum(axis=1)  # (level_size(h),)
        excess = np.exp(log_reach) * (covered - 1.0)  # d_pi(s) E[rho_h - 1 | s]
        total += excess.reshape(tree.n_prompts, -1).sum(axis=1)
    return total


def _leaf_values(policy: Policy, ref: Policy, estimator: str, per_token: bool) -> np.ndarray:
    """The estimator's value on every leaf ``(n_leaves,)`` (meaningful where ``pi`` reaches)."""
    if not per_token:
        log_p = policy.leaf_log_probs()
        log_ref = ref.leaf_log_probs()
        log_rho = np.zeros_like(log_p)  # 0 on leaves pi never reaches (masked by the caller)
        np.subtract(log_ref, log_p, out=log_rho, where=log_p > -np.inf)
        return _estimate(log_rho, estimator)
    tree = policy.tree
    total = np.zeros(tree.n_prompts)  # sum of per-token terms along the path, level 0
    for h in range(tree.horizon):
        log_pi, log_ref = policy.log_probs[h], ref.log_probs[h]
        log_rho = np.zeros_like(log_pi)  # (level_size(h), A); 0 on tokens pi never picks
        np.subtract(log_ref, log_pi, out=log_rho, where=log_pi > -np.inf)
        total = (total[:, None] + _estimate(log_rho, estimator)).reshape(-1)  # level h + 1
    return total


def _flatten(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([array.reshape(-1) for array in arrays])
