"""The KL penalty as trainers write it: estimator x placement x level (beyond the lecture).

Lecture section 4 penalizes the exact ``KL(pi || pi_ref)``. Trainers replace it by a
per-sample estimate ``k`` computed from the sampled generation ``xi ~ pi`` and the ratio of
log-probabilities (Schulman 2020, "Approximating KL divergence"), written here as functions
of ``x = log pi`` and ``y = log pi_ref``:

    k1(x, y) = x - y                       dk1/dx = 1
    k2(x, y) = (x - y)^2 / 2               dk2/dx = x - y
    k3(x, y) = e^{y - x} - 1 - (y - x)     dk3/dx = 1 - e^{y - x}

and choose two more things, the vocabulary of this package:

- ``level``: ``"sequence"`` applies ``k`` once to the generation's log-probabilities
  ``(log P_pi(xi), log P_ref(xi))``; ``"token"`` applies it to every token
  ``(log pi(a_h | s_h), log pi_ref(a_h | s_h))`` and sums over ``h``.
- ``placement``: ``"reward"`` subtracts ``beta k`` from the reward as a detached number (as
  PPO-style RLHF does), so its expected gradient is the score-function term
  ``E_pi[K(xi) grad log P_pi(xi)]`` with ``K`` the (summed) estimate; ``"loss"`` adds
  ``beta k`` to the loss and differentiates it through ``log pi`` with the sample held fixed
  (as GRPO does), so its expected gradient is the pathwise term
  ``E_pi[sum dk/dx (x_t) grad x_t]`` over the differentiated log-probabilities ``x_t`` (one per
  sequence, or one per token).

Both are assembled by :mod:`tinyrlhf.gradients` (sequence and token score gradients), so for
every combination :func:`kl_penalty_gradient` is exact. A token-level estimate in the reward
is summed into one sequence coefficient: crediting each token with only the estimates after
it (reward-to-go) has the same expectation, because ``E[grad log pi(a_h|s_h) | s_h] = 0``
removes the earlier terms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .gradients import sequence_score_gradient, token_score_gradient
from .policy import Policy
from .validation import check_policy, check_same_tree, check_support

#: Named estimators, placements and levels (one vocabulary across the package).
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_PLACEMENTS = ("reward", "loss")
KL_LEVELS = ("sequence", "token")
#: Step of the five-point central difference that differentiates a callable estimator in
#: ``x = log pi`` (truncation error ~ step^4 f^(5) / 30, about 1e-12 for smooth estimators).
CALLABLE_DERIVATIVE_STEP = 1e-3

Estimator = str | Callable[[np.ndarray, np.ndarray], np.ndarray]


def _k1(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return x - y


def _k2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 0.5 * (x - y) ** 2


def _k3(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.expm1(y - x) - (y - x)


_VALUES = {"k1": _k1, "k2": _k2, "k3": _k3}
_DERIVATIVES = {
    "k1": lambda x, y: np.ones_like(x),
    "k2": lambda x, y: x - y,
    "k3": lambda x, y: -np.expm1(y - x),
}


@dataclass(frozen=True)
class KLTerm:
    """One way of putting a KL estimate into training: ``estimator x placement x level``.

    Attributes:
        estimator: ``"k1" | "k2" | "k3"`` or a callable ``f(log_pi, log_pi_ref)`` applied
            elementwise, as a trainer applies it.
        placement: ``"reward"`` (detached) or ``"loss"`` (differentiated).
        level: ``"sequence"`` or ``"token"``.
    """

    estimator: Estimator
    placement: str
    level: str

    @property
    def name(self) -> str:
        """E.g. ``"k3/loss/token"`` (``"custom"`` for a callable estimator)."""
        estimator = self.estimator if isinstance(self.estimator, str) else "custom"
        return f"{estimator}/{self.placement}/{self.level}"

    def value(self, log_pi: np.ndarray, log_pi_ref: np.ndarray) -> np.ndarray:
        """``k(log_pi, log_pi_ref)`` elementwise (finite arguments)."""
        if isinstance(self.estimator, str):
            return _VALUES[self.estimator](log_pi, log_pi_ref)
        return _call(self.estimator, log_pi, log_pi_ref)

    def derivative(self, log_pi: np.ndarray, log_pi_ref: np.ndarray) -> np.ndarray:
        """``dk/d(log_pi)`` elementwise: exact for the named estimators, a five-point central
        difference (step :data:`CALLABLE_DERIVATIVE_STEP`) for a callable."""
        if isinstance(self.estimator, str):
            return _DERIVATIVES[self.estimator](log_pi, log_pi_ref)
        step = CALLABLE_DERIVATIVE_STEP
        f = self.estimator
        return (
            -_call(f, log_pi + 2 * step, log_pi_ref)
            + 8 * _call(f, log_pi + step, log_pi_ref)
            - 8 * _call(f, log_pi - step, log_pi_ref)
            + _call(f, log_pi - 2 * step, log_pi_ref)
        ) / (12 * step)


def kl_term(estimator: object, placement: object = "loss", level: object = "token") -> KLTerm:
    """Validate the three names and return a :class:`KLTerm`.

    Raises:
        ValueError: an unknown estimator, placement or level (the message lists the choices).
        TypeError: an estimator that is neither a name nor a callable.
    """
    if isinstance(estimator, str):
        if estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"estimator must be one of {KL_ESTIMATORS} or a callable "
                f"f(log_pi, log_pi_ref), got {estimator!r}"
            )
    elif not callable(estimator):
        raise TypeError(
            f"estimator must be one of {KL_ESTIMATORS} or a callable f(log_pi, log_pi_ref), "
            f"got {type(estimator).__name__}"
        )
    if placement not in KL_PLACEMENTS:
        raise ValueError(f"placement must be one of {KL_PLACEMENTS}, got {placement!r}")
    if level not in KL_LEVELS:
        raise ValueError(f"level must be one of {KL_LEVELS}, got {level!r}")
    return KLTerm(estimator, str(placement), str(level))


def kl_penalty_values(policy: Policy, ref: Policy, term: KLTerm) -> np.ndarray:
    """The per-sample estimate ``K(xi)`` a trainer computes for each generation, ``(n_leaves,)``.

    ``K(xi) = k(log P_pi(xi), log P_ref(xi))`` at sequence level and
    ``K(xi) = sum_h k(log pi(a_h|s_h), log pi_ref(a_h|s_h))`` at token level. Leaves the
    policy never produces get NaN (never sampled: callers weight by ``P_pi``).

    Raises:
        ValueError: the policy produces a generation the reference never produces (every
            estimator is infinite there).
    """
    _check_support(policy, ref)
    tree = policy.tree
    log_p = policy.leaf_log_probs()
    reached = log_p > -np.inf
    values = np.full(tree.n_leaves, np.nan)
    if term.level == "sequence":
        log_ref = ref.leaf_log_probs()
        values[reached] = term.value(log_p[reached], log_ref[reached])
        return values
    total = np.zeros(tree.level_size(0))  # sum of per-token estimates down to level h
    for h in range(tree.horizon):
        log_pi, log_ref = policy.log_probs[h], ref.log_probs[h]
        picked = log_pi > -np.inf
        k = np.zeros_like(log_pi)  # (level_size(h), A); 0 where pi never picks the token
        k[picked] = term.value(log_pi[picked], log_ref[picked])
        total = (total[:, None] + k).reshape(-1)  # (level_size(h + 1),)
    values[reached] = total[reached]
    return values


def kl_penalty_gradient(policy: Policy, ref: Policy, term: KLTerm) -> list[np.ndarray]:
    """Exact expected gradient of the penalty term w.r.t. the softmax logits, at ``pi``.

    The update a trainer applies is ``E[grad reward term] - beta * this``. With the formulas
    of the module docstring:

    - ``placement="reward"``: ``E_pi[K(xi) grad log P_pi(xi)]`` (sequence score gradient);
    - ``placement="loss"``, sequence: ``E_pi[k'(log P_pi, log P_ref)(xi) grad log P_pi(xi)]``;
    - ``placement="loss"``, token: ``E_pi[sum_h k'(log pi, log pi_ref)(s_h, a_h)
      grad log pi(a_h | s_h)]`` (token score gradient; the occupancy is held fixed).

    Args:
        policy: the sampling policy ``pi_theta``, logits ``theta = log pi``.
        ref: ``pi_ref`` on the same tree; ``pi`` must not produce what it never produces.
        term: a :class:`KLTerm` (from :func:`kl_term`).

    Returns:
        ``H`` arrays ``(level_size(h), A)``, gradients of the mean over prompts.
    """
    leaf, token = kl_penalty_coefficients(policy, ref, term)
    if leaf is not None:
        return sequence_score_gradient(policy, leaf)
    assert token is not None  # exactly one of the two is given
    return token_score_gradient(policy, token)


def _check_support(policy: Policy, ref: Policy) -> None:
    check_policy(policy, "policy")
    check_policy(ref, "ref")
    check_same_tree(policy, ref, ("policy", "ref"))
    check_support(policy, ref, "every KL estimate is infinite there")


def _call(f: Callable, log_pi: np.ndarray, log_pi_ref: np.ndarray) -> np.ndarray:
    """Apply a user estimator and check its output (shape, finiteness)."""
    out = np.asarray(f(log_pi, log_pi_ref), dtype=np.float64)
    if out.shape != np.shape(log_pi):
        raise ValueError(
            f"estimator returned shape {out.shape} for inputs of shape {np.shape(log_pi)}; "
            "it must be elementwise f(log_pi, log_pi_ref)"
        )
    if not np.isfinite(out).all():
        raise ValueError("estimator returned NaN or infinite values on finite log-probabilities")
    return out


def kl_penalty_coefficients(
    policy: Policy, ref: Policy, term: KLTerm
) -> tuple[np.ndarray | None, list[np.ndarray] | None]:
    """The coefficients behind :func:`kl_penalty_gradient`: ``(leaf, token)``, one of them None.

    ``kl_penalty_gradient = sequence_score_gradient(policy, leaf)`` when ``leaf`` is given
    (placement ``"reward"``: ``K(xi)``; placement ``"loss"``, sequence level:
    ``k'(log P_pi, log P_ref)(xi)``), else ``token_score_gradient(policy, token)`` with
    ``token[h][s, a] = k'(log pi, log pi_ref)(s, a)``. Entries ``pi`` never reaches are 0. For
    callers that precondition the gradient state by state (natural-gradient updates).
    """
    if term.placement == "reward":
        values = kl_penalty_values(policy, ref, term)
        return np.where(np.isnan(values), 0.0, values), None
    _check_support(policy, ref)
    if term.level == "sequence":
        log_p, log_ref = policy.leaf_log_probs(), ref.leaf_log_probs()
        reached = log_p > -np.inf
        slope = np.zeros_like(log_p)
        slope[reached] = term.derivative(log_p[reached], log_ref[reached])
        return slope, None
    slopes = []
    for log_pi, log_ref in zip(policy.log_probs, ref.log_probs, strict=True):
        picked = log_pi > -np.inf
        slope = np.zeros_like(log_pi)
        slope[picked] = term.derivative(log_pi[picked], log_ref[picked])
        slopes.append(slope)
    return None, slopes
