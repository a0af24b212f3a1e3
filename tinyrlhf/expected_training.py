"""Mean-field training with group-relative estimators: where the dynamics end (beyond the
lecture; section 4's policy gradient, run as RL with verifiable rewards).

Sampled training follows ``theta <- theta + lr g_hat`` with a noisy ``g_hat``; its mean-field
limit (infinitely many groups per step) replaces ``g_hat`` by its exact expectation from
:func:`tinyrlhf.group_relative.expected_update`, which leaves only the estimator's bias. The
limits can then be compared with the KL-regularized optimum ``pi*`` of
:func:`tinyrlhf.closed_form`:

- RLOO (unbiased) with ``k1`` in the reward follows ``grad (E_pi[r] - beta KL(pi || pi_ref))``
  exactly, so its stationary point is ``pi*``.
- Any estimator with leaf weight ``w_pi`` and an exact KL gradient is stationary, over the
  full tabular softmax class, exactly where ``w_pi(y) - beta log(pi/pi_ref)(y)`` is constant on
  each prompt's support: ``pi = closed_form(ref, w_pi, beta)``, a fixed point. For 0/1 rewards
  without ``eos``, ``w_pi = a + b_pi r`` so GRPO's limit is ``pi*`` at the *effective*
  coefficient ``beta / b_pi`` (Vojnovic & Yun 2025, arXiv 2502.18548, derive the same
  reweighting for GRPO's stationary policy).

Entropy (Cui et al. 2025, arXiv 2505.22617, eq. 4 and Lemma 1): for a softmax state with
logits changed by ``Delta theta(s, .)``,

    Ent(pi_new(. | s)) - Ent(pi(. | s))
        = -Cov_{a ~ pi(.|s)}(log pi(a|s), Delta theta(s, a)) + O(|Delta theta|^2),

which :func:`entropy_change` evaluates next to the exact change.
"""

from __future__ import annotations

import numbers
import time
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.special import log_softmax

from .divergences import entropy, expected_reward, kl_divergence
from .gradients import sequence_score_gradient, update_residual
from .group_relative import (
    check_estimator,
    check_kl_options,
    completion_lengths,
    leaf_weights,
)
from .kl_terms import KLTerm, kl_penalty_coefficients, kl_penalty_gradient
from .policy import Policy
from .solvers import Solution
from .tree import TokenTree
from .validation import (
    check_leaf_array,
    check_nonnegative,
    check_policy,
    check_positive_int,
    check_tolerance,
)

UPDATES = ("gradient", "natural")
#: Default stopping tolerance on the KKT residual of the expected update (update_residual).
DEFAULT_TOL = 1e-8


class ExpectedTrainingWarning(UserWarning):
    """``train_expected`` stopped without certifying a stationary point."""


@dataclass(frozen=True, eq=False)
class ExpectedTrainingSolution(Solution):
    """The :class:`tinyrlhf.Solution` of :func:`train_expected`, with one more attribute.

    Attributes:
        leaf_weights: ``(n_leaves,)`` ``w(y)`` of the expected update at ``policy``:
            ``E[g_hat] = sum_y pi(y) w(y) grad log pi(y)`` for the reward part
            (as :attr:`tinyrlhf.group_relative.ExpectedUpdate.leaf_weights`).
    """

    leaf_weights: np.ndarray | None = None


# ------------------------------------------------------------------------------ entropy
def depth_entropy(policy: Policy) -> np.ndarray:
    """Per-depth entropy ``E_{s ~ d_h}[Ent(pi(.|s))]``, ``(n_prompts, H)``; rows sum to the
    sequence entropy :func:`tinyrlhf.entropy` (chain rule)."""
    policy = check_policy(policy)
    tree = policy.tree
    log_reach = policy.log_occupancies()
    out = np.empty((tree.n_prompts, tree.horizon))
    for h, table in enumerate(policy.log_probs):
        plogp = np.zeros_like(table)
        np.multiply(np.exp(table), table, out=plogp, where=table > -np.inf)  # 0 log 0 = 0
        weighted = -np.exp(log_reach[h]) * plogp.sum(axis=1)  # (level_size(h),)
        out[:, h] = weighted.reshape(tree.n_prompts, -1).sum(axis=1)
    return out


@dataclass(frozen=True)
class EntropyChange:
    """Per-state entropy change of ``theta -> theta + lr * direction``.

    Attributes:
        exact: ``H`` arrays ``(level_size(h),)``: ``Ent(pi_new(.|s)) - Ent(pi(.|s))``.
        covariance: ``H`` arrays: ``-lr Cov_{a ~ pi(.|s)}(log pi(a|s), direction(s, a))``.
    """

    exact: list[np.ndarray]
    covariance: list[np.ndarray]

    def max_error(self) -> float:
        """``max_s |exact - covariance|`` over all states."""
        return max(
            float(np.abs(e - c).max()) for e, c in zip(self.exact, self.covariance, strict=True)
        )


def _row_entropy(log_pi: np.ndarray) -> np.ndarray:
    plogp = np.zeros_like(log_pi)
    np.multiply(np.exp(log_pi), log_pi, out=plogp, where=log_pi > -np.inf)
    return -plogp.sum(axis=1)


def entropy_change(policy: Policy, direction: list[np.ndarray], lr: float) -> EntropyChange:
    """Exact per-state entropy change of a logit step, and Cui et al.'s covariance formula.

        exact(s)      = Ent(softmax(theta(s) + lr direction(s))) - Ent(pi(.|s))
        covariance(s) = -lr Cov_{a ~ pi(.|s)}(log pi(a|s), direction(s, a))

    They agree to first order in ``lr`` (module docstring).

    Args:
        policy: ``pi`` with logits ``theta = log pi``.
        direction: ``H`` arrays ``(level_size(h), A)`` (e.g. an expected update); entries at
            tokens ``pi`` never picks are ignored.
        lr: the step size (finite).
    """
    policy = check_policy(policy)
    lr = float(lr)
    if not np.isfinite(lr):
        raise ValueError(f"lr must be finite, got {lr!r}")
    exact, covariance = [], []
    for log_pi, step in zip(policy.log_probs, direction, strict=True):
        picked = log_pi > -np.inf
        step = np.where(picked, step, 0.0)  # (level_size(h), A)
        new_log_pi = log_softmax(np.where(picked, log_pi + lr * step, -np.inf), axis=1)
        exact.append(_row_entropy(new_log_pi) - _row_entropy(log_pi))
        pi = np.exp(log_pi)
        safe_log = np.where(picked, log_pi, 0.0)
        mean_log = (pi * safe_log).sum(axis=1)
        mean_step = (pi * step).sum(axis=1)
        cov = (pi * safe_log * step).sum(axis=1) - mean_log * mean_step
        covariance.append(-lr * cov)
    return EntropyChange(exact, covariance)


# --------------------------------------------------------------------- natural direction
def conditional_advantages(policy: Policy, leaf_coefficients: np.ndarray) -> list[np.ndarray]:
    """``A_C(s, a) = E[C | s o a] - E[C | s]`` per level, by one backward pass.

    ``E_H = C``, ``E_h(s) = sum_a pi(a|s) E_{h+1}(s o a)``; ``sequence_score_gradient(pi, C)``
    is ``d(s) pi(a|s) A_C(s, a) / n_prompts``, so ``A_C`` is its natural-gradient (Fisher
    preconditioned) form without dividing by possibly underflowing occupancies. Zero at
    tokens ``pi`` never picks; non-finite ``C`` (unreachable leaves) is read as 0.
    """
    tree = policy.tree
    conditional = np.where(np.isfinite(leaf_coefficients), leaf_coefficients, 0.0)
    advantages: list[np.ndarray] = [np.empty(0)] * tree.horizon
    for h in range(tree.horizon - 1, -1, -1):
        log_pi = policy.log_probs[h]
        picked = log_pi > -np.inf
        children = conditional.reshape(-1, tree.n_tokens)  # E[C | s o a]: (level_size(h), A)
        children = np.where(picked, children, 0.0)
        conditional = (np.exp(log_pi) * children).sum(axis=1)  # E[C | s]
        advantages[h] = np.where(picked, children - conditional[:, None], 0.0)
    return advantages


def _natural_direction(
    policy: Policy,
    weights: np.ndarray,
    ref: Policy,
    term: KLTerm | None,
    beta: float,
) -> list[np.ndarray]:
    """``A_w - beta A_KL``: the update's per-state advantages (module docstring of train)."""
    direction = conditional_advantages(policy, weights)
    if term is None or beta == 0:
        return direction
    leaf, token = kl_penalty_coefficients(policy, ref, term)
    if leaf is not None:
        penalty = conditional_advantages(policy, leaf)
    else:
        penalty = []
        for log_pi, c in zip(policy.log_probs, token, strict=True):  # type: ignore[arg-type]
            picked = log_pi > -np.inf
            baseline = (np.exp(log_pi) * c).sum(axis=1, keepdims=True)
            penalty.append(np.where(picked, c - baseline, 0.0))
    return [d - beta * k for d, k in zip(direction, penalty, strict=True)]


# ------------------------------------------------------------------------------ clipping
def _clipped_gradient(
    theta: list[np.ndarray],
    old: Policy,
    positive_sums: list[np.ndarray],
    negative_sums: list[np.ndarray],
    clip: tuple[float, float] | None,
) -> list[np.ndarray]:
    """Exact gradient of the clipped surrogate at ``pi_theta`` with groups from ``pi_old``.

    ``k(s, a) = rho(s, a) (M+(s o a) 1[rho <= 1 + eps_high] + M-(s o a) 1[rho >= 1 - eps_low])``
    with ``rho = pi_theta / pi_old`` and ``M+-`` the subtree sums of ``P_old w+-``; the gradient
    is ``(k(s, b) - pi_theta(b|s) sum_a k(s, a)) / n_prompts``.
    """
    tree = old.tree
    gradient = []
    for h, logits in enumerate(theta):
        log_pi = log_softmax(logits, axis=1)
        log_old = old.log_probs[h]
        picked = log_old > -np.inf
        ratio = np.exp(np.where(picked, log_pi - np.where(picked, log_old, 0.0), 0.0))
        plus = positive_sums[h + 1].reshape(-1, tree.n_tokens)  # M+(s o a)
        minus = negative_sums[h + 1].reshape(-1, tree.n_tokens)
        if clip is not None:
            eps_low, eps_high = clip
            plus = np.where(ratio <= 1.0 + eps_high, plus, 0.0)
            minus = np.where(ratio >= 1.0 - eps_low, minus, 0.0)
        k = np.where(picked, ratio * (plus + minus), 0.0)  # (level_size(h), A)
        gradient.append((k - np.exp(log_pi) * k.sum(axis=1, keepdims=True)) / tree.n_prompts)
    return gradient


# ------------------------------------------------------------------------------ training
def _check_clip(clip: object) -> tuple[float, float] | None:
    if clip is None:
        return None
    if isinstance(clip, (numbers.Real,)) and not isinstance(clip, bool):
        clip = (clip, clip)
    try:
        eps_low, eps_high = (float(value) for value in clip)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise TypeError(
            f"clip must be None, a number or a pair (eps_low, eps_high), got {clip!r}"
        ) from None
    if not (0 < eps_low < 1) or not (np.isfinite(eps_high) and eps_high > 0):
        raise ValueError(
            f"clip = (eps_low, eps_high) needs 0 < eps_low < 1 and eps_high > 0, got {clip!r}"
        )
    return eps_low, eps_high


def _is_binary(reward: np.ndarray) -> bool:
    return bool(np.all((reward == 0.0) | (reward == 1.0)))


@dataclass(frozen=True)
class _TrainingSetup:
    """The checked arguments of :func:`train_expected`, read by its step functions."""

    ref: Policy
    reward: np.ndarray
    estimator: str
    group_size: int
    eps: float
    beta: float
    term: KLTerm | None
    lr: float
    steps: int
    update: str
    tol: float
    reset_every: int | None
    epochs: int
    clip: tuple[float, float] | None

    @property
    def use_kl(self) -> bool:
        """Whether the update carries the KL term (a term and ``beta > 0``)."""
        return self.term is not None and self.beta > 0


def _check_training(
    ref: Policy,
    reward: np.ndarray,
    estimator: str,
    group_size: int,
    eps: float,
    beta: float,
    kl_estimator: object,
    kl_placement: str,
    kl_level: str,
    lr: float,
    steps: int,
    update: str,
    tol: float,
    reset_every: int | None,
    epochs: int,
    clip: float | tuple[float, float] | None,
) -> _TrainingSetup:
    """Validate :func:`train_expected`'s arguments (messages name the argument)."""
    ref = check_policy(ref, "ref")
    reward = check_leaf_array(ref.tree, reward, "reward")
    estimator, group_size = check_estimator(estimator, group_size)
    eps = check_nonnegative(eps, "eps")
    beta, term = check_kl_options(beta, kl_estimator, kl_placement, kl_level)
    lr = check_nonnegative(lr, "lr", allow_zero=False)
    steps = check_positive_int(steps, "steps", minimum=0)
    if update not in UPDATES:
        raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
    tol = check_tolerance(tol)
    if reset_every is not None:
        reset_every = check_positive_int(reset_every, "reset_every")
    epochs = check_positive_int(epochs, "epochs")
    checked_clip = _check_clip(clip)
    if update == "natural" and (epochs > 1 or checked_clip is not None):
        raise ValueError(
            "epochs > 1 and clip apply to update='gradient' only (the clipped surrogate is "
            "ascended by plain gradient steps); use update='gradient'"
        )
    return _TrainingSetup(
        ref=ref,
        reward=reward,
        estimator=estimator,
        group_size=group_size,
        eps=eps,
        beta=beta,
        term=term,
        lr=lr,
        steps=steps,
        update=update,
        tol=tol,
        reset_every=reset_every,
        epochs=epochs,
        clip=checked_clip,
    )


def _minus_kl(
    setup: _TrainingSetup, gradient: list[np.ndarray], current: Policy, kl_ref: Policy
) -> list[np.ndarray]:
    """``gradient - beta grad KL(current || kl_ref)`` when the update carries a KL term."""
    if setup.term is None or not setup.beta > 0:
        return gradient
    kl_grad = kl_penalty_gradient(current, kl_ref, setup.term)
    return [g - setup.beta * k for g, k in zip(gradient, kl_grad, strict=True)]


def _expected_gradient(
    setup: _TrainingSetup, current: Policy, kl_ref: Policy
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Leaf weights ``w_pi`` and the exact expected update ``E[g_hat]`` (KL term included)."""
    weights, _ = leaf_weights(current, setup.reward, setup.estimator, setup.group_size, setup.eps)
    gradient = sequence_score_gradient(current, weights)
    return weights, _minus_kl(setup, gradient, current, kl_ref)


def _clipped_step(
    setup: _TrainingSetup, theta: list[np.ndarray], old: Policy, kl_ref: Policy
) -> list[np.ndarray]:
    """``epochs`` ascent steps on the clipped surrogate around ``pi_old = old``."""
    tree = old.tree
    prob = old.leaf_probs()
    options = (setup.reward, setup.estimator, setup.group_size, setup.eps)
    positive, _ = leaf_weights(old, *options, "positive")
    negative, _ = leaf_weights(old, *options, "negative")
    positive_sums = tree.subtree_sums(prob * positive)  # M+ per level
    negative_sums = tree.subtree_sums(prob * negative)  # M- per level
    for _epoch in range(setup.epochs):
        surrogate = _clipped_gradient(theta, old, positive_sums, negative_sums, setup.clip)
        if setup.use_kl:
            if not all(np.all(t < np.inf) & ~np.any(np.isnan(t)) for t in theta):
                break  # diverged: the caller sees the non-finite logits
            now = Policy.from_logits(tree, theta)
            surrogate = _minus_kl(setup, surrogate, now, kl_ref)
        theta = [t + setup.lr * g for t, g in zip(theta, surrogate, strict=True)]
    return theta


@dataclass(frozen=True)
class _TrainingState:
    """Logits, policy, KL reference and the expected update at that policy."""

    theta: list[np.ndarray]
    policy: Policy
    kl_ref: Policy
    weights: np.ndarray
    gradient: list[np.ndarray]
    residual: float


def _update_logits(setup: _TrainingSetup, state: _TrainingState) -> list[np.ndarray]:
    """One update of the logits (see :func:`train_expected`); returns row-centred logits."""
    theta = state.theta
    if setup.update == "natural":
        direction = _natural_direction(
            state.policy, state.weights, state.kl_ref, setup.term, setup.beta
        )
        theta = [t + setup.lr * d for t, d in zip(theta, direction, strict=True)]
    elif setup.epochs == 1 and setup.clip is None:
        theta = [t + setup.lr * g for t, g in zip(theta, state.gradient, strict=True)]
    else:
        theta = _clipped_step(setup, theta, state.policy, state.kl_ref)
    # keep logits centred per row (softmax is shift invariant; avoids drift)
    return [t - np.max(t, axis=1, keepdims=True) for t in theta]


def _initial_state(setup: _TrainingSetup) -> _TrainingState:
    """``pi = pi_ref`` with its expected update."""
    ref = setup.ref
    weights, gradient = _expected_gradient(setup, ref, ref)
    theta = [np.array(table) for table in ref.log_probs]
    return _TrainingState(theta, ref, ref, weights, gradient, update_residual(ref, gradient))


def _next_state(
    setup: _TrainingSetup, state: _TrainingState, step: int, allowed: list[np.ndarray]
) -> _TrainingState | None:
    """The state after update ``step`` (0-based), or None if it diverged (a logit left or
    entered the support ``allowed``, or the next expected update is not finite)."""
    with np.errstate(over="ignore", invalid="ignore"):
        theta = _update_logits(setup, state)
    if not all(
        np.array_equal(np.isfinite(t), mask) for t, mask in zip(theta, allowed, strict=True)
    ):
        return None
    policy = Policy.from_logits(setup.ref.tree, theta)
    kl_ref = state.kl_ref
    if setup.reset_every is not None and (step + 1) % setup.reset_every == 0:
        kl_ref = policy
    with np.errstate(over="ignore", invalid="ignore"):
        weights, gradient = _expected_gradient(setup, policy, kl_ref)
    residual = update_residual(policy, gradient)
    if not np.isfinite(residual):
        return None
    return _TrainingState(theta, policy, kl_ref, weights, gradient, residual)


#: Keys of ``train_expected``'s history recorded at every entry.
_HISTORY_KEYS = (
    "expected_reward",
    "prompt_expected_reward",
    "kl",
    "entropy",
    "depth_entropy",
    "mean_length",
    "residual",
)


class _History:
    """The per-entry measurements of a :func:`train_expected` run."""

    def __init__(self, ref: Policy, reward: np.ndarray) -> None:
        self.ref = ref
        self.reward = reward
        self.lengths = completion_lengths(ref.tree).astype(np.float64)
        self.records: dict[str, list] = {key: [] for key in _HISTORY_KEYS}

    def record(self, current: Policy, residual: float) -> None:
        """Append the measurements of ``current``."""
        records = self.records
        per_prompt = expected_reward(current, self.reward)
        records["expected_reward"].append(float(per_prompt.mean()))
        records["prompt_expected_reward"].append(per_prompt)
        records["kl"].append(float(kl_divergence(current, self.ref).mean()))
        records["entropy"].append(float(entropy(current).mean()))
        records["depth_entropy"].append(depth_entropy(current).mean(axis=0))
        mean_length = (current.leaf_probs() @ self.lengths) / current.tree.n_prompts
        records["mean_length"].append(float(mean_length))
        records["residual"].append(residual)

    def arrays(self) -> dict[str, np.ndarray]:
        """The records as arrays over entries (plus ``"success"`` for 0/1 rewards)."""
        history = {key: np.asarray(values) for key, values in self.records.items()}
        if _is_binary(self.reward):
            history["success"] = history["expected_reward"].copy()
        return history


def _run_training(
    setup: _TrainingSetup, state: _TrainingState, history: _History
) -> tuple[_TrainingState, int, bool]:
    """Update until certified, diverged or out of steps: ``(state, steps_taken, diverged)``."""
    allowed = [np.isfinite(table) for table in setup.ref.log_probs]
    for step in range(setup.steps):
        if state.residual <= setup.tol:
            return state, step, False
        new_state = _next_state(setup, state, step, allowed)
        if new_state is None:
            return state, step, True
        state = new_state
        history.record(state.policy, state.residual)
    return state, setup.steps, False


def _warn_uncertified(
    setup: _TrainingSetup, residual: float, steps_taken: int, diverged: bool
) -> None:
    """Warn :class:`ExpectedTrainingWarning` unless ``residual <= tol`` (at the caller of
    :func:`train_expected`: ``stacklevel=3``)."""
    if diverged:
        warnings.warn(
            f"train_expected diverged at step {steps_taken + 1}: the update made a logit or "
            f"the next update non-finite (lr = {setup.lr:g} is too large for this problem); returning the last "
            "finite policy; lower lr",
            ExpectedTrainingWarning,
            stacklevel=3,
        )
    elif not residual <= setup.tol:
        warnings.warn(
            f"train_expected stopped after {steps_taken} step(s) with residual "
            f"(KKT gap of E[g_hat]) {residual:.3g} > tol = {setup.tol:.3g}: not a certified stationary "
            "point; raise steps or lr, or loosen tol",
            ExpectedTrainingWarning,
            stacklevel=3,
        )


def _training_solution(
    setup: _TrainingSetup,
    state: _TrainingState,
    history: _History,
    steps_taken: int,
    diverged: bool,
    start: float,
) -> ExpectedTrainingSolution:
    """The :class:`ExpectedTrainingSolution` of :func:`train_expected`."""
    arrays = history.arrays()
    if diverged:
        stop = "diverged"
    else:
        stop = "certified" if state.residual <= setup.tol else "step budget"
    return ExpectedTrainingSolution(
        policy=state.policy,
        method=f"train_expected[{setup.estimator}, G={setup.group_size}, {setup.update}]",
        reference=setup.ref,
        reward=setup.reward,
        beta=setup.beta,
        history=arrays,
        converged=state.residual <= setup.tol,
        residual=state.residual,
        tolerance=setup.tol,
        wall_time=time.perf_counter() - start,
        steps_taken=steps_taken,
        stop_reason=stop,
        leaf_weights=state.weights,
        info={  # steps_taken and leaf_weights are also typed fields
            "steps_taken": steps_taken,
            "lr": setup.lr,
            "kl_term": None if setup.term is None else setup.term.name,
            "leaf_weights": state.weights,
            "final_reference": state.kl_ref,
        },
    )


def train_expected(
    ref: Policy,
    reward: np.ndarray,
    beta: float = 0.0,
    *,
    estimator: str,
    group_size: int,
    kl_estimator: object = None,
    kl_placement: str = "loss",
    kl_level: str = "token",
    lr: float,
    steps: int,
    update: str = "gradient",
    eps: float = 1e-4,
    tol: float = DEFAULT_TOL,
    reset_every: int | None = None,
    epochs: int = 1,
    clip: float | tuple[float, float] | None = None,
) -> ExpectedTrainingSolution:
    r"""Exact mean-field training with a group-relative estimator, from ``pi_ref``.

    Each step computes the exact expected update ``g = E[g_hat]`` at the current ``pi``
    (:func:`tinyrlhf.expected_update`, KL term included) and moves the softmax logits:

    - ``update="gradient"``: ``theta <- theta + lr g``.
    - ``update="natural"``: ``theta(s, a) <- theta(s, a) + lr (A_w(s, a) - beta A_KL(s, a))``,
      i.e. per-state mirror ascent ``log pi(.|s) <- normalize(log pi(.|s) + lr A(s, .))``:
      the gradient divided by ``d_pi(s) pi(a|s) / n_prompts`` (Kakade's natural gradient of
      tabular softmax; Agarwal et al. 2021, Lemma 15), computed as conditional advantages of
      the leaf weights (:func:`conditional_advantages`) and of the KL coefficients. With
      RLOO, ``k1`` in the reward and ``lr = 1/beta`` this is soft policy iteration.
    - ``epochs > 1`` (gradient only): ``epochs`` ascent steps ``theta <- theta + lr grad L``
      on one ``pi_old`` (the policy at the start of the step), on the exact PPO-style clipped
      surrogate ``L(theta) = E_{groups ~ pi_old}[sum_i c_i sum_t min(rho_t, clip(rho_t,
      1 - eps_low, 1 + eps_high)) ]`` for ``c_i > 0`` (``max`` for ``c_i < 0``), with
      ``rho_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t)``; its gradient needs the expected positive
      and negative parts of ``c`` separately (enumerated by type compositions). The KL term is
      evaluated exactly at the current ``pi_theta`` in every epoch. The first epoch is the
      plain gradient step (``rho = 1``). ``clip=None``: the unclipped ratio surrogate.
    - ``reset_every=k``: after every ``k`` steps the reference of the KL term becomes the
      current policy (``history["kl"]`` stays measured against the original ``ref``).

    Stops at a certified stationary point: ``residual`` is the KKT (Frank-Wolfe) residual of
    the expected update ``g = E[g_hat]`` (KL term included) at the returned policy,
    :func:`tinyrlhf.gradients.update_residual`: ``sum_s (d(s)/n_prompts) max_a A(s, a)`` over
    the tokens ``pi`` can pick, with the per-token advantage ``A = g n_prompts / (d pi)``. It
    is not weighted by ``pi(a|s)``, so a plateau (a reached token with tiny ``pi`` and a
    positive advantage) is not certified, while tokens with tiny ``pi`` and negative advantage
    (a boundary optimum) do not block convergence; it bounds ``||g|| <= 2 residual``.
    ``converged`` iff ``residual <= tol``; otherwise warns :class:`ExpectedTrainingWarning`.

    .. math::

        & \text{gradient:}\quad \theta \leftarrow \theta + \eta\, \mathbb{E}[\hat g],

        & \text{natural:}\quad \log \pi(\cdot \mid s) \leftarrow \log \pi(\cdot \mid s)
        + \eta\, A(s, \cdot) - \log \sum_a \pi(a \mid s)\, e^{\eta A(s, a)},

        & \text{residual} = \sum_s \frac{d(s)}{n_{\mathrm{prompts}}}
        \max_{a:\, \pi(a \mid s) > 0} A(s, a) \ \ge\ \tfrac{1}{2} \|\mathbb{E}[\hat g]\|.

    Args:
        ref: ``pi_ref``, the starting policy (and the KL reference).
        reward: ``(n_leaves,)`` finite rewards.
        beta: ``>= 0`` the KL coefficient (default 0: no KL term); positional or keyword
            (README "Conventions").
        estimator, group_size, eps: as :func:`tinyrlhf.expected_update`.
        kl_estimator, kl_placement, kl_level: the KL term (``kl_estimator=None``: none).
        lr: step size, finite and > 0.
        steps: maximum number of updates, ``>= 0``.
        update: ``"gradient" | "natural"``.
        tol: tolerance on the residual (> 0).
        reset_every: None or an integer ``>= 1``.
        epochs: ascent steps per ``pi_old`` (``>= 1``).
        clip: None, ``eps`` or ``(eps_low, eps_high)`` with ``0 < eps_low < 1 < 1 + eps_high``.

    Returns:
        An :class:`ExpectedTrainingSolution` (a :class:`tinyrlhf.Solution`) with ``policy``,
        ``residual``, ``tolerance``, ``converged``, ``steps_taken`` (updates made),
        ``stop_reason`` (``"certified"``, ``"step budget"`` or ``"diverged"``),
        ``leaf_weights`` (``w(y)`` at ``policy``) and ``history`` (entry 0 is ``pi_ref``;
        arrays over entries):
        ``"expected_reward"`` (mean over prompts), ``"prompt_expected_reward"``
        ``(entries, n_prompts)``, ``"success"`` (0/1 rewards only: ``P(r = 1)``), ``"kl"``
        (``KL(pi || pi_ref)``, mean over prompts), ``"entropy"`` (sequence entropy, mean),
        ``"depth_entropy"`` ``(entries, H)`` (mean over prompts), ``"mean_length"``
        (``E|y|``), ``"residual"``.

    Raises:
        ValueError/TypeError: bad estimator, group size, eps, reward, beta/KL options, lr,
            steps, update, tol, reset_every, epochs or clip (messages name the argument).
    """
    start = time.perf_counter()
    setup = _check_training(
        ref,
        reward,
        estimator,
        group_size,
        eps,
        beta,
        kl_estimator,
        kl_placement,
        kl_level,
        lr,
        steps,
        update,
        tol,
        reset_every,
        epochs,
        clip,
    )
    history = _History(setup.ref, setup.reward)
    state = _initial_state(setup)
    history.record(state.policy, state.residual)
    state, steps_taken, diverged = _run_training(setup, state, history)
    _warn_uncertified(setup, state.residual, steps_taken, diverged)
    return _training_solution(setup, state, history, steps_taken, diverged, start)


# ------------------------------------------------------------------------ demo problems
#: Prompts of :func:`verifiable_problem` and the pattern each completion must contain.
VERIFIABLE_TASKS = (("easy", "a"), ("medium", "ab"), ("hard", "abc"))


def verifiable_problem(
    horizon: int = 4, seed: int | np.random.Generator | None = 0, temperature: float = 1.0
) -> tuple[TokenTree, Policy, np.ndarray]:
    """``(tree, pi_ref, reward)``: a 0/1 verifiable reward with prompts of three difficulties.

    Tokens ``a, b, c``; prompt ``easy`` is solved by any completion containing ``a``,
    ``medium`` by one containing ``ab``, ``hard`` by one containing ``abc``; ``pi_ref`` is
    :meth:`tinyrlhf.Policy.random` (``seed``, ``temperature``; ``seed``: int, Generator or
    None, default 0, see :func:`~tinyrlhf.validation.make_rng`).
    """
    tree = TokenTree(("a", "b", "c"), horizon, tuple(name for name, _ in VERIFIABLE_TASKS))
    patterns = dict(VERIFIABLE_TASKS)
    reward = tree.leaf_values(lambda prompt, tokens: float(patterns[prompt] in "".join(tokens)))
    return tree, Policy.random(tree, seed=seed, temperature=temperature), reward


def length_problem(horizon: int = 5) -> tuple[TokenTree, Policy, np.ndarray]:
    """``(tree, pi_ref, reward)`` on an ``eos`` tree: tokens ``a, b, $`` (``$`` ends), uniform
    ``pi_ref``, reward 1 iff the completion contains ``ab`` (so longer completions are right
    more often: a length-dependent 0/1 reward)."""
    tree = TokenTree(("a", "b", "$"), horizon, eos="$")
    reward = tree.leaf_values(lambda prompt, tokens: float("ab" in "".join(tokens)))
    return tree, Policy.uniform(tree), reward
