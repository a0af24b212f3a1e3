"""Policy gradient for KL-regularized RL on the token tree (lecture section 4, "solve using
e.g. PPO").

The policy is a softmax over logits ``theta[h][i, a]``; tokens the reference never picks keep
logit ``-inf`` (the seed: "never pick a token ref. policy wouldn't"), so the KL stays finite.
The objective is the mean over prompts of

    J(pi) = E_pi[r] - beta KL(pi || pi_ref) = E_{xi ~ pi}[C(xi)],
    C(xi) = r(xi) - beta log(P_pi(xi) / P_ref(xi)),

and its exact gradient over the logits is the score-function expectation (the policy-gradient
theorem; the ``-beta grad log P_pi`` term has zero mean)

    dJ/dtheta(s, a) = E_pi[C(xi) grad log P_pi(xi)] = d_pi(s) pi(a|s) (Q(s, a) - V(s)),
    V_H = r,  Q(s, a) = V_{h+1}(s o a) - beta log(pi(a|s) / pi_ref(a|s)),  V_h = sum_a pi Q,

computed by :func:`tinyrlhf.gradients.sequence_score_gradient` (one forward pass for
``P_pi``, one backward pass of subtree sums). One small step function per method:

- ``"exact"``: gradient ascent on the exact gradient with a backtracking (Armijo) line
  search; the trial step doubles after each accepted step (the objective is exact, so the
  line search is legitimate).
- ``"natural"``: the natural gradient of tabular softmax under the occupancy-weighted Fisher
  metric is ``theta += lr (Q - V)`` (Kakade 2001; Agarwal et al. 2021, JMLR, Lemma 15).
  With ``lr = 1/beta`` (the default) the update is
  ``pi_new(a|s) ∝ pi_ref(a|s) exp(V_{h+1}^pi(s o a) / beta)``, soft policy iteration
  (Cen et al. 2022, Oper. Res., eq. 16 with eta = 1/tau): level ``H-1`` is exact after one
  iteration because ``V_H = r``, level ``h`` after ``H - h`` iterations, so the policy is
  optimal after at most ``H`` iterations. With ``0 < lr < 1/beta`` it converges linearly at
  rate ``1 - lr beta``.
- ``"reinforce"``: the score-function estimate from ``batch_size`` generations drawn by
  :meth:`Policy.sample`, sequence-level return ``G = C(xi)`` with the leave-one-out mean of
  the same prompt's returns as baseline (RLOO; Kool et al. 2019), plain SGD.
- ``"ppo"``: PPO-clip (Schulman et al. 2017, eq. 7) on a batch drawn from the current
  policy: ``epochs`` full-batch ascent steps on
  ``mean_i sum_h min(rho A_i, clip(rho, 1 - clip, 1 + clip) A_i)``,
  ``rho = pi_theta(a_h|s_h) / pi_old(a_h|s_h)``, with the KL penalty inside the return as in
  Ziegler et al. (2019) and the sequence-level RLOO advantage ``A_i = G_i - baseline_i``.

A sampled generation is a leaf index; its path is recovered from it: the state at level
``h`` is ``leaf // A**(H-h)``, and the (state, token) pair it takes there has flat index
``leaf // A**(H-h-1)`` into the ``(level_size(h), A)`` table.

Certificate. Every method, sampled ones included, is judged exactly at every step by its
distance to the optimum, which the closed form gives. By the reverse-KL identity (lecture
section 5)

    J(pi*) - J(pi) = beta KL(P_pi || P*),   J(pi*) = beta log Z(s_0),

and the gap is computed as ``beta`` times a sum of terms that are each ``>= 0``,
``P_pi (d - 1) + P*`` with ``d = log P_pi - log P*``, so it cannot come out negative and,
being quadratic in ``d`` near the optimum, float rounding of ``d`` barely moves it. By
Pinsker's inequality ``TV(P_pi, P*) <= sqrt(KL(P_pi || P*) / 2)``, so

    residual = max over prompts of sqrt(KL(P_pi || P*) / 2)

is a certified bound on the total variation between the returned policy's generations and
the optimum's (the ``max TV`` column of :func:`tinyrlhf.check_agreement`); it is
dimensionless, so ``tol`` needs no reward scale: ``converged`` is ``residual <= tol``, and
the objective gap itself is ``info["objective_gap"]``. Unlike the gradient norm, this
certificate cannot be fooled by a plateau: at ``beta = 1e-6`` the softmax saturates and the
gradient vanishes far from the optimum while the KL stays large. The gradient norm is
reported too (``history["grad_norm"]``, ``info["gradient_norm"]``). The sampled methods
update from sampled generations only; the exact certificate is the simulator's privilege,
used to judge them and to stop them once they are within ``tol``. A run that ends above
the tolerance warns (:class:`PolicyGradientWarning`); one whose objective falls far below its
start, or whose logits stop being finite, stops and warns (:class:`DivergenceWarning`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from ..gradients import sequence_score_gradient
from ..kernels import log_softmax_rows, row_logsumexp
from ..policy import Policy
from ..tree import TokenTree
from ..validation import (
    check_policy,
    check_positive_int,
    check_problem,
    check_same_tree,
    check_support,
    check_tolerance,
    make_rng,
)
from .closed_form import optimal_leaf_log_probs
from .solution import Solution

METHODS = ("natural", "exact", "reinforce", "ppo")
#: Default ``tol`` per method, a bound on the total variation from the optimum (module
#: docstring). Natural reaches float precision in at most H iterations; exact gradient ascent
#: is slow at rarely visited states; the sampled methods stop within a few percent, about
#: where the noise of a 256-generation batch leaves them.
DEFAULT_TOL = {"natural": 1e-10, "exact": 1e-4, "reinforce": 0.05, "ppo": 0.05}
#: Default step budgets scale with the tree: ``STEP_WORK // n_states`` steps (a step costs a
#: few passes over the states, a few tenths of a microsecond per state), between ``MIN_STEPS`` and
#: ``MAX_STEPS[method]``; the caps keep the default ``tinyrlhf demo`` (242 states, where a step
#: costs 0.6-1.6 ms of Python overhead) under a second of solving.
STEP_WORK = 20_000_000
MIN_STEPS = 50
MAX_STEPS = {"exact": 400, "reinforce": 600, "ppo": 300}
#: Natural gradient: ``H`` iterations reach the optimum at ``lr = 1/beta``; the extra budget
#: covers smaller steps (rate ``1 - lr beta``).
NATURAL_EXTRA_STEPS = 100
#: Sampled methods' default step ``min(SAMPLED_REWARD_STEP / (max r - min r), 1 / beta)``:
#: the reward term's update is then dimensionless in the reward's units, and the KL term,
#: whose curvature grows like beta, never gets a step above ``1/beta`` (measured on the demo
#: tree and random problems for beta from 1e-2 to 1e2 times the reward scale: no divergence,
#: 87-100% of the available improvement in 300 steps where beta is not tiny).
SAMPLED_REWARD_STEP = 4.0
#: The natural gradient stops, once certified, when no logit would move by more than this.
NATURAL_REST = 1e-9
#: A run has diverged when its objective falls below its start by more than the room to the
#: optimum plus this fraction of ``1 + max |r|`` (float rounding of the objective).
DIVERGENCE_SLACK = 1e-9
#: Smallest normal float64: a smaller ``P_pi(xi)`` has lost significant digits (or is 0).
TINY = np.finfo(np.float64).tiny
#: Armijo sufficient-increase constant of the exact method's backtracking line search.
ARMIJO_C = 1e-4
#: The line search gives up below this trial step (no ascent left at float64 precision).
MIN_STEP = 1e-12


class PolicyGradientWarning(UserWarning):
    """``policy_gradient`` stopped without certifying its answer (``converged=False``)."""


class DivergenceWarning(PolicyGradientWarning):
    """A policy-gradient run diverged: its objective fell far below its starting value, or
    its logits stopped being finite. Lower ``lr``."""


@dataclass(frozen=True)
class _Problem:
    """The fixed data of one solve."""

    tree: TokenTree
    ref: Policy
    reward: np.ndarray  # (n_leaves,)
    beta: float
    forbidden: list[np.ndarray]  # tokens pi_ref never picks, (level_size(h), A) bool per level
    log_p_ref: np.ndarray  # log P_ref(xi), (n_leaves,)
    log_p_star: np.ndarray  # log P*(xi) renormalized per prompt, (n_prompts, leaves_per_prompt)
    p_star: np.ndarray  # P*(xi) renormalized per prompt, (n_prompts, leaves_per_prompt)
    star_mass_error: np.ndarray  # |sum P* - 1| before renormalizing, (n_prompts,)
    optimum: np.ndarray  # J(pi*) = beta log Z per prompt, (n_prompts,)
    scale: float  # 1 + max |r|
    tolerance: float  # bound on the certificate (a total variation)


@dataclass(frozen=True)
class _Iterate:
    """A softmax policy evaluated exactly; ``kl``, ``kl_to_optimum`` and ``gradient`` are
    filled by :func:`_certify` (the line search skips them for rejected trials)."""

    theta: list[np.ndarray]  # logits (normalized: log pi), -inf where pi never picks
    policy: Policy
    log_p: np.ndarray  # log P_pi(xi), (n_leaves,)
    p: np.ndarray  # P_pi(xi), (n_leaves,)
    log_ratio: np.ndarray  # log(P_pi / P_ref), 0 where P_pi = 0, (n_leaves,)
    coefficient: np.ndarray  # C(xi) = r - beta log(P_pi / P_ref), 0 where P_pi = 0
    objective: np.ndarray  # J per prompt, (n_prompts,)
    mean_objective: float  # J averaged over prompts (what the methods ascend)
    kl: np.ndarray | None = None  # KL(pi || pi_ref) per prompt
    kl_to_optimum: np.ndarray | None = None  # KL(P_pi || P*) per prompt
    mass_error: np.ndarray | None = None  # (|sum P_pi - 1| + |sum P* - 1|) / 2 per prompt
    gradient: list[np.ndarray] | None = None  # dJ/dtheta per level

    @property
    def residual(self) -> float:
        """The certificate: ``max_p sqrt(KL(P_pi || P*) / 2) + mass error`` >= max TV.

        Pinsker's inequality between the two leaf distributions renormalized, plus half of
        each one's distance from total mass 1 (the total variation to its own
        renormalization), so rounding in either normalization cannot fake a certificate."""
        assert self.mass_error is not None
        return float(np.max(np.sqrt(0.5 * self.certified.kl_to_optimum) + self.mass_error))

    @property
    def certified(self) -> _Certificate:
        """``kl``, ``kl_to_optimum`` and ``gradient``, set by :func:`_certify` (only
        certified iterates are asked for them)."""
        assert self.kl is not None and self.kl_to_optimum is not None
        assert self.gradient is not None
        return _Certificate(self.kl, self.kl_to_optimum, self.gradient)


class _Certificate(NamedTuple):
    """The exact quantities :func:`_certify` adds to an :class:`_Iterate`."""

    kl: np.ndarray  # KL(pi || pi_ref) per prompt
    kl_to_optimum: np.ndarray  # KL(P_pi || P*) per prompt
    gradient: list[np.ndarray]  # dJ/dtheta per level


@dataclass(frozen=True)
class _Settings:
    """Per-run options of the sampled methods."""

    rng: np.random.Generator
    batch_size: int
    epochs: int
    clip: float


class _NonFiniteLogits(ArithmeticError):
    """An update produced a NaN or infinite logit on a token the reference allows."""


def _per_prompt(tree: TokenTree, leaf_values: np.ndarray) -> np.ndarray:
    """Sum over each prompt's leaves: ``(n_leaves,)`` -> ``(n_prompts,)``."""
    return leaf_values.reshape(tree.n_prompts, -1).sum(axis=1)


def _evaluate(problem: _Problem, theta: list[np.ndarray]) -> _Iterate:
    """The softmax policy of ``theta`` and its exact objective ``J = E_pi[C]``.

    ``theta``'s arrays (fresh ones, the caller's to give) are normalized in place to
    ``log pi``, logits of the same softmax policy, which the iterate keeps as its ``theta``.
    """
    for logits, forbidden in zip(theta, problem.forbidden, strict=True):
        if not (np.isfinite(logits) | forbidden).all():
            raise _NonFiniteLogits
        # log pi(a|s) = theta(s, a) - log sum_b exp theta(s, b): (level_size(h), A)
        log_softmax_rows(logits, out=logits)
    policy = Policy.trusted(problem.tree, theta)
    return _measure(problem, policy, policy.leaf_log_probs())


def _measure(problem: _Problem, policy: Policy, log_p: np.ndarray) -> _Iterate:
    """The iterate of ``policy`` (logits ``log pi``), whose leaf log-probabilities are ``log_p``."""
    p = np.exp(log_p)
    log_ratio, coefficient = _sequence_coefficient(
        log_p, problem.log_p_ref, problem.reward, problem.beta
    )
    objective = _per_prompt(problem.tree, p * coefficient)  # J = E_pi[C] per prompt
    mean = float(objective.mean())
    return _Iterate(policy.log_probs, policy, log_p, p, log_ratio, coefficient, objective, mean)


def _sequence_coefficient(
    log_p: np.ndarray, log_p_ref: np.ndarray, reward: np.ndarray, beta: float
) -> tuple[np.ndarray, np.ndarray]:
    """``log(P_pi / P_ref)`` and ``C = r - beta log(P_pi / P_ref)``, both 0 where ``P_pi = 0``.

    ``P_pi`` must vanish wherever ``P_ref`` does (``log_p`` is ``-inf`` there too). Shapes
    ``(n_leaves,)``.
    """
    with np.errstate(invalid="ignore"):  # -inf - (-inf) off both supports, zeroed below
        log_ratio = log_p - log_p_ref
    coefficient = log_ratio * -beta
    coefficient += reward  # C = r - beta log(P_pi / P_ref)
    if log_p.min() == -np.inf:  # leaves pi never reaches (one min when there are none)
        unreached = log_p == -np.inf
        log_ratio[unreached] = 0.0
        coefficient[unreached] = 0.0
    return log_ratio, coefficient


def _kl_to_optimum(problem: _Problem, it: _Iterate) -> np.ndarray:
    """``KL(P_pi || P*) = (J(pi*) - J(pi)) / beta`` per prompt, from terms that are each ``>= 0``.

    Both distributions renormalized per prompt (their sums differ from 1 by rounding;
    :func:`_mass_error` adds the difference). Per leaf, with ``u = log P* - log P_pi``, the
    term ``P_pi (e^u - 1 - u) = P_pi (d - 1) + P*`` (``d = -u``; the added ``P* - P_pi`` sum
    to 0) is computed as ``P_pi (expm1(u) - u)``: no cancellation near the optimum, and no
    overflow, as a normal ``P_pi >= TINY`` bounds ``u <= -log TINY < 709``. Where ``P_pi`` is
    subnormal it is ``P* - P_pi (1 + u)`` (``P*`` itself, not rebuilt from a ``P_pi`` with
    few significant digits), and ``P*`` where ``P_pi = 0``.
    """
    shape = problem.p_star.shape  # (n_prompts, leaves_per_prompt)
    p = it.p.reshape(shape)
    mass = p.sum(axis=1, keepdims=True)  # (n_prompts, 1)
    # inf and NaN only where P_pi < TINY, where the terms are replaced below
    with np.errstate(over="ignore", invalid="ignore"):
        minus_d = problem.log_p_star - it.log_p.reshape(shape)  # u; +inf or NaN if P_pi = 0
        minus_d += np.log(mass)
        terms = np.expm1(minus_d)
        terms -= minus_d
        terms *= p
        terms /= mass  # P_pi (expm1(u) - u), P_pi renormalized
    if p.min() < TINY:
        tiny = np.flatnonzero(p < TINY)  # (n_tiny,) flat leaf indices
        p_tiny = p.reshape(-1)[tiny] / mass[tiny // shape[1], 0]
        star = problem.p_star.reshape(-1)[tiny]
        with np.errstate(invalid="ignore"):  # 0 * inf where P_pi = 0, not selected
            subnormal = star - p_tiny * (1.0 + minus_d.reshape(-1)[tiny])
        terms.reshape(-1)[tiny] = np.where(p_tiny > 0.0, subnormal, star)
    return terms.sum(axis=1)


def _mass_error(problem: _Problem, it: _Iterate) -> np.ndarray:
    """``(|sum P_pi - 1| + |sum P* - 1|) / 2`` per prompt: the total variation between each
    computed leaf distribution and its renormalization (float rounding at huge ``r/beta``)."""
    return 0.5 * (np.abs(_per_prompt(problem.tree, it.p) - 1.0) + problem.star_mass_error)


def _certify(problem: _Problem, it: _Iterate) -> _Iterate:
    """Add the KL to the reference, the KL to the optimum (the certificate) and the gradient."""
    return replace(
        it,
        kl=_per_prompt(problem.tree, it.p * it.log_ratio),
        kl_to_optimum=_kl_to_optimum(problem, it),
        mass_error=_mass_error(problem, it),
        gradient=sequence_score_gradient(it.policy, it.coefficient, leaf_probs=it.p),
    )


def _soft_advantages(problem: _Problem, policy: Policy) -> list[np.ndarray]:
    """``Q(s, a) - V(s)`` per level (0 on tokens ``pi`` never picks), one backward pass.

    ``V_H = r``; ``Q(s, a) = V_{h+1}(s o a) - beta log(pi(a|s) / pi_ref(a|s))``;
    ``V_h(s) = sum_a pi(a|s) Q(s, a)``.
    """
    n_tokens = problem.tree.n_tokens
    value = problem.reward  # V_H = r
    advantages: list[np.ndarray] = [np.empty(0)] * problem.tree.horizon
    for h in range(problem.tree.horizon - 1, -1, -1):
        log_pi = policy.log_probs[h]
        with np.errstate(invalid="ignore"):  # -inf - (-inf) off both supports, zeroed below
            q = log_pi - problem.ref.log_probs[h]  # log(pi / pi_ref): (level_size(h), A)
        q *= -problem.beta
        q += value.reshape(-1, n_tokens)  # Q = V_{h+1}(s o a) - beta log(pi / pi_ref)
        unpicked = log_pi == -np.inf if log_pi.min() == -np.inf else None
        if unpicked is not None:  # tokens pi never picks (a subset of pi_ref's)
            q[unpicked] = 0.0
        value = np.einsum("ij,ij->i", np.exp(log_pi), q)  # V_h(s) = sum_a pi Q: (level_size(h),)
        q -= value[:, None]
        if unpicked is not None:
            q[unpicked] = 0.0
        advantages[h] = q
    return advantages


def _norm(gradient: list[np.ndarray]) -> float:
    """Euclidean norm of a per-level gradient, all levels as one vector.

    Elementwise squares and sums rather than ``np.vdot``: a BLAS dot product may start
    threads, and on a busy 2-core machine that made one norm at 2^17 entries cost 90 ms
    (about 4 soft-VI passes) instead of 0.2 ms.
    """
    return float(np.sqrt(sum(float(np.square(table).sum()) for table in gradient)))


def _step_logits(
    theta: list[np.ndarray], direction: list[np.ndarray], size: float
) -> list[np.ndarray]:
    """``theta + size * direction`` level by level (``-inf`` logits stay ``-inf``), new arrays."""
    return [t + size * g for t, g in zip(theta, direction, strict=True)]


# ------------------------------------------------------------------------ one step per method
StepResult = tuple[_Iterate | None, float]


def _natural_step(problem: _Problem, it: _Iterate, lr: float, _: _Settings) -> StepResult:
    """``theta += lr (Q - V)``: the natural gradient (soft policy iteration at ``1/beta``).

    Returns ``(None, lr)`` once the certificate holds and the update is at rest (no logit
    would move by more than :data:`NATURAL_REST`): the method is exact state by state, also
    at states the policy rarely visits, which weigh little in the certificate.
    """
    advantages = _soft_advantages(problem, it.policy)
    largest = max(float(np.abs(table).max()) for table in advantages)
    if it.residual <= problem.tolerance and lr * largest <= NATURAL_REST:
        return None, lr
    return _evaluate(problem, _step_logits(it.theta, advantages, lr)), lr


def _exact_step(problem: _Problem, it: _Iterate, trial: float, _: _Settings) -> StepResult:
    """Backtracking (Armijo) line search along the exact gradient, from step ``trial``.

    Accepts the first ``t = trial / 2^k`` with ``J(theta + t g) >= J(theta) + c t |g|^2``;
    returns ``(None, t)`` when ``t`` falls below :data:`MIN_STEP` or ``g = 0`` (stalled).
    """
    gradient = it.certified.gradient
    squared_norm = _norm(gradient) ** 2
    while squared_norm > 0 and trial >= MIN_STEP:
        candidate = _evaluate(problem, _step_logits(it.theta, gradient, trial))
        if candidate.mean_objective >= it.mean_objective + ARMIJO_C * trial * squared_norm:
            return candidate, trial
        trial *= 0.5
    return None, trial


def _sampled_score_gradient(
    tree: TokenTree, log_pi: list[np.ndarray], leaves: np.ndarray, coefficient: np.ndarray
) -> list[np.ndarray]:
    """``sum_i coefficient[h, i] grad_theta log pi(a_hi | s_hi)`` per level.

    ``grad_theta(s, .) log pi(a|s) = onehot(a) - pi(.|s)`` (softmax). ``leaves``: ``(n,)``
    sampled leaf indices; ``coefficient``: ``(H, n)``.
    """
    gradient = []
    for h, table in enumerate(log_pi):
        below = tree.n_tokens ** (tree.horizon - h - 1)
        edge = leaves // below  # (state, token) at level h, flat index into table: (n,)
        state = edge // tree.n_tokens  # = leaf // A**(H-h)
        on_edge = np.bincount(edge, weights=coefficient[h], minlength=table.size)
        at_state = np.bincount(state, weights=coefficient[h], minlength=table.shape[0])
        gradient.append(on_edge.reshape(table.shape) - np.exp(table) * at_state[:, None])
    return gradient


def _rloo_advantages(problem: _Problem, it: _Iterate, leaves: np.ndarray) -> np.ndarray:
    """``G_i - mean of the other returns of the same prompt`` (0 baseline if alone), ``(n,)``.

    ``G_i = C(xi_i) = r - beta log(P_pi / P_ref)`` at the sampled leaf: the KL-penalized return.
    """
    tree = problem.tree
    returns = it.coefficient[leaves]
    prompt = leaves // tree.leaves_per_prompt
    total = np.bincount(prompt, weights=returns, minlength=tree.n_prompts)
    count = np.bincount(prompt, minlength=tree.n_prompts).astype(np.float64)
    others = count[prompt] - 1.0
    baseline = np.zeros_like(returns)
    np.divide(total[prompt] - returns, others, out=baseline, where=others > 0)
    return returns - baseline


def _reinforce_step(problem: _Problem, it: _Iterate, lr: float, run: _Settings) -> StepResult:
    """One SGD step on the RLOO score-function estimate from a fresh batch."""
    leaves = it.policy.sample(run.batch_size, seed=run.rng)
    advantages = _rloo_advantages(problem, it, leaves) / run.batch_size
    coefficient = np.broadcast_to(advantages, (problem.tree.horizon, run.batch_size))
    gradient = _sampled_score_gradient(problem.tree, it.policy.log_probs, leaves, coefficient)
    return _evaluate(problem, _step_logits(it.theta, gradient, lr)), lr


def _edge_log_probs(tree: TokenTree, log_pi: list[np.ndarray], leaves: np.ndarray) -> np.ndarray:
    """``log pi(a_h | s_h)`` along each sampled path, ``(H, n)``."""
    return np.stack(
        [
            table.reshape(-1)[leaves // tree.n_tokens ** (tree.horizon - h - 1)]
            for h, table in enumerate(log_pi)
        ]
    )


def _ppo_step(problem: _Problem, it: _Iterate, lr: float, run: _Settings) -> StepResult:
    """``epochs`` ascent steps on the clipped surrogate of one batch from the current policy."""
    tree = problem.tree
    leaves = it.policy.sample(run.batch_size, seed=run.rng)
    advantages = _rloo_advantages(problem, it, leaves)  # (n,)
    log_old = _edge_log_probs(tree, it.policy.log_probs, leaves)  # (H, n)
    theta, log_pi = it.theta, it.policy.log_probs
    for _ in range(run.epochs):
        ratio = np.exp(_edge_log_probs(tree, log_pi, leaves) - log_old)  # (H, n)
        # d/dtheta min(rho A, clip(rho) A) = rho A grad log pi, unless the clip is active
        clipped = ((advantages > 0) & (ratio > 1 + run.clip)) | (
            (advantages < 0) & (ratio < 1 - run.clip)
        )
        coefficient = np.where(clipped, 0.0, ratio * advantages / run.batch_size)
        gradient = _sampled_score_gradient(tree, log_pi, leaves, coefficient)
        theta = _step_logits(theta, gradient, lr)
        log_pi = [t - row_logsumexp(t)[:, None] for t in theta]
    return _evaluate(problem, theta), lr


STEPS: dict[str, Callable[[_Problem, _Iterate, float, _Settings], StepResult]] = {
    "natural": _natural_step,
    "exact": _exact_step,
    "reinforce": _reinforce_step,
    "ppo": _ppo_step,
}
#: Factor on the accepted step size for the next step (the line search may grow it).
STEP_GROWTH = {"natural": 1.0, "exact": 2.0, "reinforce": 1.0, "ppo": 1.0}


# --------------------------------------------------------------------------- public functions
def policy_gradient_grad(
    policy: Policy, ref: Policy, reward: np.ndarray, beta: float
) -> list[np.ndarray]:
    r"""Exact ``dJ/dtheta`` at ``policy`` for softmax logits ``theta = log pi``.

    ``J`` is the mean over prompts of ``E_pi[r] - beta KL(pi || pi_ref)``; the gradient is
    ``E_pi[C(xi) grad log P_pi(xi)]`` with ``C = r - beta log(P_pi / P_ref)``
    ``= d_pi(s) pi(a|s) (Q(s,a) - V(s))`` (module docstring), by
    :func:`tinyrlhf.gradients.sequence_score_gradient`.

    .. math::

        \frac{\partial J}{\partial \theta(s, a)}
        &= \mathbb{E}_{\xi \sim \pi}\big[C(\xi)\, \nabla \log P_\pi(\xi)\big]
        = d_\pi(s)\, \pi(a \mid s)\, \big(Q(s, a) - V(s)\big),

        C(\xi) &= r(\xi) - \beta \log \frac{P_\pi(\xi)}{P_{\mathrm{ref}}(\xi)}.

    Returns:
        One ``(level_size(h), A)`` array per level, zero on tokens ``pi`` never picks (a
        logit of ``-inf`` has no gradient).

    Raises:
        TypeError: ``policy`` or ``ref`` is not a Policy.
        ValueError: policies on different trees, bad ``reward`` or ``beta``, or ``policy``
            picks a token that ``ref`` never picks (the KL is infinite).
    """
    policy = check_policy(policy, "policy")
    ref, reward, beta = check_problem(ref, reward, beta)
    check_same_tree(policy, ref, ("policy", "ref"))
    check_support(policy, ref, "KL(pi || pi_ref) is infinite there")
    log_p = policy.leaf_log_probs()
    _, coefficient = _sequence_coefficient(log_p, ref.leaf_log_probs(), reward, beta)
    return sequence_score_gradient(policy, coefficient, leaf_probs=np.exp(log_p))


def default_steps(method: str, tree: TokenTree) -> int:
    """The step budget ``policy_gradient`` uses when ``steps`` is not given.

    Natural: ``H + NATURAL_EXTRA_STEPS``; the others ``STEP_WORK // n_states`` clipped to
    ``[MIN_STEPS, MAX_STEPS[method]]`` (a step costs a few passes over the tree's states).
    """
    if method == "natural":
        return tree.horizon + NATURAL_EXTRA_STEPS
    return int(np.clip(STEP_WORK // tree.n_states, MIN_STEPS, MAX_STEPS[method]))


def default_lr(method: str, reward: np.ndarray, beta: float) -> float:
    """The step size ``policy_gradient`` uses when ``lr`` is not given.

    Natural ``1/beta`` (soft policy iteration); exact ``1`` (the line search's first trial);
    reinforce and ppo ``min(SAMPLED_REWARD_STEP / (max r - min r), 1/beta)``.
    """
    if method == "natural":
        return 1.0 / beta
    if method == "exact":
        return 1.0
    spread = float(np.ptp(reward))
    return 1.0 / beta if spread == 0 else min(SAMPLED_REWARD_STEP / spread, 1.0 / beta)


def _setup(ref: Policy, reward: np.ndarray, beta: float, tol: float) -> _Problem:
    """Check the problem and solve it in closed form for the certificate."""
    ref, reward, beta = check_problem(ref, reward, beta)
    scale = 1.0 + float(np.abs(reward).max())
    if not np.isfinite(1.0 / beta) or not np.isfinite(scale / beta):
        raise ValueError(
            f"beta={beta!r} is too small for rewards up to {scale - 1:.3g}: r/beta overflows "
            "float64; use a larger beta (or rescale the reward)"
        )
    log_p_star, log_z = optimal_leaf_log_probs(ref, reward, beta)
    log_p_star = log_p_star.reshape(ref.tree.n_prompts, -1)  # (n_prompts, leaves_per_prompt)
    p_star = np.exp(log_p_star)
    mass_star = p_star.sum(axis=1, keepdims=True)  # 1 up to rounding: (n_prompts, 1)
    return _Problem(
        tree=ref.tree,
        ref=ref,
        reward=reward,
        beta=beta,
        forbidden=[table == -np.inf for table in ref.log_probs],
        log_p_ref=ref.leaf_log_probs(),
        log_p_star=log_p_star - np.log(mass_star),
        p_star=p_star / mass_star,
        star_mass_error=np.abs(mass_star[:, 0] - 1.0),
        optimum=beta * log_z,
        scale=scale,
        tolerance=tol,
    )


def _start(problem: _Problem, init: Policy | None) -> tuple[_Problem, _Iterate]:
    """The certified first iterate: ``init``'s, or ``pi_ref`` itself when ``init`` is None.

    ``theta = log pi_ref`` is ``pi_ref``'s own softmax: no row kernel and no forward pass, as
    ``log P_ref`` is known (``log(P_pi / P_ref) = 0`` and ``C = r`` on the reached leaves). A token
    ``init`` never picks keeps logit ``-inf`` (no gradient moves it): the problem returned
    counts it among the forbidden ones, so only a logit that overflows stops the run.
    """
    if init is not None:
        theta = _initial_logits(problem, init)
        problem = replace(problem, forbidden=[t == -np.inf for t in theta])
        return problem, _certify(problem, _evaluate(problem, theta))
    return problem, _certify(problem, _measure(problem, problem.ref, problem.log_p_ref))


def _initial_logits(problem: _Problem, init: Policy) -> list[np.ndarray]:
    """``log pi_init`` on the tokens ``pi_ref`` picks, ``-inf`` elsewhere.

    A row of ``init`` with no mass on ``pi_ref``'s tokens can only sit at a state ``init``
    never reaches (else the KL is infinite, refused); ``pi_ref``'s row stands in there,
    which changes no generation's probability.
    """
    init = check_policy(init, "init")
    check_same_tree(init, problem.ref, ("init", "ref"))
    log_p = init.leaf_log_probs()
    if np.any((log_p > -np.inf) & (problem.log_p_ref == -np.inf)):
        raise ValueError("init puts probability on generations ref never produces")
    theta = []
    for table, ref_table, forbidden in zip(
        init.log_probs, problem.ref.log_probs, problem.forbidden, strict=True
    ):
        logits = np.where(forbidden, -np.inf, table)
        empty = np.isneginf(logits).all(axis=1)
        logits[empty] = ref_table[empty]
        theta.append(logits)
    return theta


def _check_options(
    method: object, batch_size: object, epochs: object, clip: object
) -> tuple[int, int, float]:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    batch_size = check_positive_int(batch_size, "batch_size", 2)
    epochs = check_positive_int(epochs, "epochs")
    if isinstance(clip, bool) or not isinstance(clip, (int, float, np.floating)):
        raise TypeError(f"clip must be a number in (0, 1), got {clip!r}")
    if not 0 < clip < 1:
        raise ValueError(f"clip must be in (0, 1), got {clip!r}")
    return batch_size, epochs, float(clip)


def _check_lr(lr: object, default: float) -> float:
    if lr is None:
        return default
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.integer, np.floating)):
        raise TypeError(f"lr must be a positive number, got {lr!r}")
    if not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be finite and > 0, got {lr!r}")
    return float(lr)


def _record(
    history: dict[str, list[float]], problem: _Problem, it: _Iterate, step_size: float
) -> None:
    history["objective"].append(it.mean_objective)
    certified = it.certified
    history["kl"].append(float(certified.kl.mean()))
    history["grad_norm"].append(_norm(certified.gradient))
    history["objective_gap"].append(problem.beta * float(np.max(certified.kl_to_optimum)))
    history["tv_bound"].append(it.residual)
    history["step_size"].append(step_size)


def _diverged(problem: _Problem, start: _Iterate, it: _Iterate) -> bool:
    """The objective fell below its start by more than the whole available improvement
    ``J(pi*) - J(start)`` (plus :data:`DIVERGENCE_SLACK` of the reward scale, for rounding):
    no ascent method should ever get there."""
    room = max(float(problem.optimum.mean()) - start.mean_objective, 0.0)
    slack = DIVERGENCE_SLACK * problem.scale
    return it.mean_objective < start.mean_objective - room - slack


def _iterate(
    problem: _Problem, method: str, it: _Iterate, steps: int, lr: float, run: _Settings
) -> tuple[_Iterate, dict[str, list[float]], str]:
    """Run ``steps`` steps of ``method`` or until the certificate holds; returns the last
    iterate, the history and why it stopped."""
    history: dict[str, list[float]] = {
        key: []
        for key in ("objective", "kl", "grad_norm", "objective_gap", "tv_bound", "step_size")
    }
    _record(history, problem, it, 0.0)
    start, step_size = it, lr
    for _ in range(steps):
        if it.residual <= problem.tolerance and method != "natural":
            return it, history, "certified"
        try:
            candidate, used = STEPS[method](problem, it, step_size, run)
        except _NonFiniteLogits:
            return it, history, "non-finite logits"
        if candidate is None:  # natural at rest (certified) or the line search stalled
            certified = it.residual <= problem.tolerance
            return it, history, "certified" if certified else "line search stalled"
        it = _certify(problem, candidate)
        _record(history, problem, it, used)
        if _diverged(problem, start, it):
            return it, history, "objective fell"
        step_size = used * STEP_GROWTH[method]
    reason = "certified" if it.residual <= problem.tolerance else "step budget"
    return it, history, reason


def _warn_if_uncertified(
    method: str, it: _Iterate, problem: _Problem, stop: str, lr: float
) -> None:
    steps = f"policy_gradient[{method}]"
    if stop in ("non-finite logits", "objective fell"):
        warnings.warn(
            f"{steps} diverged ({stop}): objective {it.mean_objective:.6g} against "
            f"the optimum {float(problem.optimum.mean()):.6g}; lower lr (it was {lr:.3g})",
            DivergenceWarning,
            stacklevel=3,
        )
    elif it.residual > problem.tolerance:
        warnings.warn(
            f"{steps} stopped ({stop}) with a total-variation bound {it.residual:.3g} above "
            f"tol={problem.tolerance:.3g} (objective gap "
            f"{problem.beta * float(np.max(it.certified.kl_to_optimum)):.3g}): not certified optimal; "
            "raise steps or tol" + ("" if method == "natural" else ", or use method='natural'"),
            PolicyGradientWarning,
            stacklevel=3,
        )


def policy_gradient(
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    *,
    method: str = "natural",
    steps: int | None = None,
    lr: float | None = None,
    seed: int | np.random.Generator | None = 0,
    batch_size: int = 256,
    epochs: int = 4,
    clip: float = 0.2,
    tol: float | None = None,
    init: Policy | None = None,
) -> Solution:
    r"""Maximize ``E_pi[r] - beta KL(pi || pi_ref)`` over softmax policies by policy gradient.

    .. math::

        & \max_\pi\; J(\pi) = \mathbb{E}_{\xi \sim \pi}[r(\xi)]
        - \beta\, \mathrm{KL}(P_\pi \,\|\, P_{\mathrm{ref}}),

        & \text{certificate:}\quad \max_{s_0} \sqrt{\mathrm{KL}(P_\pi \,\|\, P^*) / 2}
        \ \ge\ \mathrm{TV}(P_\pi, P^*).

    Args:
        ref: reference policy ``pi_ref`` (also the starting point unless ``init`` is given).
        reward: ``(n_leaves,)`` finite rewards.
        beta: KL coefficient, finite and > 0.
        method: ``"natural"`` | ``"exact"`` | ``"reinforce"`` | ``"ppo"`` (module docstring).
        steps: most iterations (default :func:`default_steps`, which scales with the tree);
            every method stops earlier once its certificate holds.
        lr: step size (default :func:`default_lr`: natural ``1/beta``, exact ``1`` as the
            line search's first trial, sampled
            ``min(SAMPLED_REWARD_STEP / (max r - min r), 1/beta)``).
        seed: for the sampled methods: int, Generator or None; default 0 (see
            :func:`~tinyrlhf.validation.make_rng`).
        batch_size: generations per step (reinforce, ppo), >= 2.
        epochs: surrogate ascent steps per batch (ppo).
        clip: PPO's clipping radius epsilon in (0, 1).
        tol: tolerance, finite and > 0, on the certificate: the run stops (certified) once
            ``sqrt(KL(P_pi || P*) / 2)``, a bound on the total variation from the optimum, is
            at most ``tol`` for every prompt (default :data:`DEFAULT_TOL` of the method).
        init: starting policy (default ``ref``); must not put mass where ``ref`` has none.

    Returns:
        A :class:`Solution` with ``policy``; ``residual``, the certificate: the largest
        ``sqrt(KL(P_pi || P*) / 2)`` over prompts, exact for every method and a bound on the
        total variation from the optimum (``KL(P_pi || P*) = (J(pi*) - J(pi)) / beta``);
        ``tolerance`` (``tol``) and ``converged`` (``residual <= tolerance``); ``history``
        (exact ``objective``, ``kl``, ``grad_norm``, ``objective_gap`` (largest over
        prompts), ``tv_bound`` (the certificate) and ``step_size`` per step; entry 0 is the
        starting policy); ``info`` with ``steps_taken``, ``lr``, ``gradient_norm`` (of the
        returned policy), ``objective_gap`` (``J(pi*) - J(pi)`` per prompt) and ``stop``
        (``"certified"``, ``"step budget"``, ``"line search stalled"``,
        ``"objective fell"`` or ``"non-finite logits"``).

    Warns:
        PolicyGradientWarning: the run ended with ``residual > tol``.
        DivergenceWarning: the objective fell below its start by more than
            ``J(pi*) - J(start)``, or a logit stopped being finite (the last finite iterate is
            returned).

    Raises:
        TypeError, ValueError: a bad argument (the message names it).
    """
    start_time = time.perf_counter()
    batch_size, epochs, clip = _check_options(method, batch_size, epochs, clip)
    tol = DEFAULT_TOL[method] if tol is None else check_tolerance(tol)
    problem = _setup(ref, reward, beta, tol)
    lr = _check_lr(lr, default_lr(method, problem.reward, problem.beta))
    if steps is None:
        steps = default_steps(method, problem.tree)
    steps = check_positive_int(steps, "steps", 0)
    run = _Settings(make_rng(seed), batch_size, epochs, clip)
    problem, first = _start(problem, init)
    it, history, stop = _iterate(problem, method, first, steps, lr, run)
    _warn_if_uncertified(method, it, problem, stop, lr)
    steps_taken = len(history["objective"]) - 1
    gradient_norm = _norm(it.certified.gradient)
    objective_gap = problem.beta * it.certified.kl_to_optimum
    return Solution(
        policy=it.policy,
        method=f"policy_gradient[{method}]",
        reference=problem.ref,
        reward=problem.reward,
        beta=problem.beta,
        history={key: np.asarray(values) for key, values in history.items()},
        converged=it.residual <= problem.tolerance,
        residual=it.residual,
        tolerance=problem.tolerance,
        wall_time=time.perf_counter() - start_time,
        steps_taken=steps_taken,
        stop_reason=stop,
        gradient_norm=gradient_norm,
        objective_gap=objective_gap,
        info={  # the typed fields' values under their old keys (display, old code)
            "steps_taken": steps_taken,
            "lr": lr,
            "gradient_norm": gradient_norm,
            "objective_gap": objective_gap,
            "stop": stop,
        },
    )
