"""Where training with a KL penalty ends up: the fixed point of each estimator x placement x level.

Beyond the lecture (section 4 penalizes the exact ``KL(pi || pi_ref)``). Trainers use a
per-sample estimate instead (:mod:`tinyrlhf.kl_terms`: ``k1``, ``k2``, ``k3``; in the reward or
in the loss; per sequence or per token), and the expected update is

    U(theta) = E_pi[r grad log P_pi] - beta * G(theta),                                  (U)

with ``G`` the exact expected gradient of the penalty term
(:func:`tinyrlhf.kl_terms.kl_penalty_gradient`). Training converges to a zero of ``U``; this
module finds it, says whether it lies in the interior, and names the objective it is
stationary for.

**Sequence level.** Write ``q = P_ref``, ``u = log(P/q)`` per leaf. Both placements give a
sequence coefficient: ``U = E_pi[C grad log P]`` with ``C = r - beta phi``, ``phi = k`` (reward,
the detached value multiplies the score) or ``phi = dk/dx`` (loss, the pathwise derivative in
``x = log P``). For a full-support softmax policy ``U = 0`` iff ``C`` is constant on each
prompt's support (``M(s o a) - pi(a|s) M(s) = 0`` at every state makes every subtree's
``P``-average of ``C`` equal), i.e. ``phi(xi) = (r(xi) - c)/beta``. If
``d/dP(xi) D(P) = phi(xi) + const`` for a functional ``D``, then ``U`` is the gradient of
``E_pi[r] - beta D`` (chain rule through ``P``), and

- ``k1`` reward: ``phi = u``: ``D = KL(pi || pi_ref)`` (**reverse KL**); ``P ∝ q e^{r/beta}``.
- ``k2`` loss: ``phi = u``: the same (**reverse KL**), closed form ``pi*``.
- ``k3`` loss: ``phi = 1 - q/P``: ``D = KL(pi_ref || pi)`` (**forward KL**); stationary iff
  ``r + beta q/P = lambda``, i.e. ``P = beta q / (lambda - r)`` with ``lambda > max r`` fixed by
  ``sum_xi beta q / (lambda - r) = 1`` (decreasing in ``lambda`` from ``inf`` to at most 1 at
  ``lambda = max r + beta``: one 1-D root, solved for ``log(lambda - max r)``, which can lie far
  below the float spacing of ``max r`` when the best generation is rare).
- ``k1`` loss: ``phi = 1``: ``G = E[grad log P] = 0``, **nothing in expectation**: the update
  is ``grad E[r]``, with no interior stationary point unless ``r`` is constant on a prompt.
- ``k2`` reward: ``phi = u^2/2``: ``D = E_pi[u^2/2] - KL(pi || pi_ref)`` (solve
  ``g + g' = u^2/2`` for ``D = E_P[g(u)]``: ``g = u^2/2 - u + 1``), whose ``f(t) = t g(log t)``
  has ``f'' = log t / t < 0`` below ``t = 1``: **not a divergence of pi**. Generations ``pi``
  makes rarer get a penalty that grows as they shrink, so training from ``pi_ref`` pushes
  them to probability 0.
- ``k3`` reward: ``phi = e^{-u} - 1 + u``: ``D = KL(pi || pi_ref) - KL(pi_ref || pi)``
  (``g = u e^{-u} + u - 2``), sign-indefinite: **not a divergence of pi**; the push on a rare
  generation's logit tends to ``-beta q``, a constant, so its log-probability falls without
  bound.

A callable ``f`` is classified the same way: ``phi`` is matched on a grid against ``u``
(reverse KL; ``-u`` **sign-flipped**: the KL is rewarded), ``-e^{-u}`` (forward KL),
``e^{u}`` (``χ²``: ``d/dP (1/2) sum (P - q)^2 / q = P/q - 1``, e.g. ``k3`` with the ratio
inverted, in the loss) and constants (nothing in expectation).

**Token level.** ``k1`` summed over tokens is the sequence ``k1``, so ``k1`` reward is again
``pi*`` and ``k1`` loss again nothing. In the loss, the per-token derivative multiplies each
token's own score with the occupancy held fixed, so state ``s`` receives
``d(s) grad_{theta_s} D_s(pi(.|s))``: a *partial* gradient. ``k2``: ``D_s =
KL(pi(.|s) || pi_ref(.|s))``; ``k3``: ``D_s = KL(pi_ref(.|s) || pi(.|s))``. With
``Q(s, a) = E_pi[r | s, a]`` (no KL in it), ``U = 0`` iff every state solves its own problem
``max E_pi[r | s] - beta D_s`` given the policy below it, solved exactly by backward
induction: ``pi(a|s) ∝ pi_ref e^{Q/beta}`` (``k2``) or ``pi(a|s) = beta pi_ref / (lambda_s - Q)``
(``k3``). No objective of ``pi`` has these partial gradients (the effect of ``pi(.|s)`` on the
later states' penalties is dropped): **not a divergence of pi**. ``k2``/``k3`` in the reward at
token level credit the summed estimate to the whole sequence while dropping its own
dependence on ``pi``; they too are stationary for no objective and are solved numerically.

**Numerical fixed points** (no closed form): the expected update (U) is integrated from
``pi_ref`` (where training starts) with occupancy-normalized steps
``theta_s += lr U_s / d(s)`` (natural-gradient-like; at sequence level the same flow in leaf
logits), then polished by Powell's hybrid method (``scipy.optimize.root``) on the free
logits. The certificate ``residual`` is ``||U||`` (Euclidean, all levels, gradient of the mean
over prompts) at the answer, ``converged`` iff ``residual <= tolerance``. ``||U||`` weights
each generation by its probability and vanishes near the simplex boundary, so for ``k3`` in
the loss (closed form and backward induction) the residual is the larger of ``||U||`` and the
scale-free stationarity residual :func:`forward_kl_stationarity` (spread of
``r + beta q/P``, or ``Q + beta pi_ref/pi`` per state, relative to ``1 + |lambda|``). Every
result with ``converged=False`` warns (:class:`KLPenaltyWarning`), on every route. If some generation's
probability falls :data:`COLLAPSE_LOG_RATIO` nats below the reference's on the way, training
is heading to the boundary: the result says ``stationary=False`` with the reason.

References: Schulman (2020), "Approximating KL divergence"; Tang & Munos (2025), "On a few
pitfalls in KL divergence gradient estimation for RL"; Shao et al. (2024, GRPO).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import root
from scipy.special import log_softmax, logsumexp

from .divergences import kl_divergence, total_variation
from .gradients import gradient_norm, sequence_score_gradient
from .kl_terms import KL_ESTIMATORS, KL_LEVELS, KL_PLACEMENTS, KLTerm, kl_penalty_gradient, kl_term
from .policy import Policy
from .solvers import closed_form
from .solvers.solution import Solution
from .tree import TokenTree
from .validation import check_positive_int, check_problem, check_tolerance

#: A generation whose log-probability falls this many nats below the reference's while
#: training is taken as collapsing to probability 0 (``e^-30 ~ 1e-13``: far below any
#: stationary point's ratio on these problems, far above float underflow).
COLLAPSE_LOG_RATIO = 30.0
#: Default tolerance on ``||U||`` at the answer (closed forms reach ~1e-15).
DEFAULT_TOLERANCE = 1e-9
#: Points ``(x, y)`` on which a callable's coefficient is matched (log-probabilities).
_GRID = np.array(np.meshgrid(np.linspace(-4.0, -0.05, 9), np.linspace(-4.0, -0.05, 9))).reshape(
    2, -1
)


class KLPenaltyWarning(UserWarning):
    """The fixed point was not certified (``converged=False``), on any route."""


@dataclass(frozen=True, eq=False)
class KLPenaltySolution(Solution):
    """A :class:`Solution` for a KL penalty as trainers write it.

    Besides those of :class:`Solution`, it has these attributes.

    Attributes:
        term: the :class:`~tinyrlhf.kl_terms.KLTerm`.
        optimizes: ``"reverse KL"``, ``"forward KL"``, ``"χ²"``, ``"nothing in expectation"``,
            ``"sign-flipped"`` or ``"not a divergence of π"``.
        stationary_for: the objective whose stationary point (or, token level, the per-state
            problems whose simultaneous solution) ``policy`` is.
        stationary: True when ``policy`` is an interior zero of the expected update (U).
            False when none is reached: then ``policy`` is *not* a fixed point but where
            training heads (the ``beta -> 0`` optimum for "nothing in expectation", the last
            iterate before the collapse otherwise), and ``reason`` says why.
        reason: why ``stationary`` is False ("" otherwise).
        how: ``"closed form"``, ``"backward induction"`` or ``"numerical"``.
    """

    term: KLTerm | None = None
    optimizes: str = ""
    stationary_for: str = ""
    stationary: bool = True
    reason: str = ""
    how: str = ""


def penalized_update(
    policy: Policy, ref: Policy, reward: np.ndarray, beta: float, term: KLTerm
) -> list[np.ndarray]:
    """The exact expected update (U) ``E_pi[r grad log P] - beta G`` w.r.t. the softmax logits.

    Returns:
        ``H`` arrays ``(level_size(h), A)`` (gradient of the mean over prompts).
    """
    reward_part = sequence_score_gradient(policy, reward)
    penalty = kl_penalty_gradient(policy, ref, term)
    return [gain - beta * cost for gain, cost in zip(reward_part, penalty, strict=True)]


def classify(term: KLTerm) -> tuple[str, str]:
    """``(optimizes, stationary_for)`` of a term: the divergence and the objective (module
    docstring), from the shape of its sequence coefficient (:func:`coefficient_shape`)."""
    shape, _ = coefficient_shape(term)
    if shape == "constant":
        return "nothing in expectation", "E[r] (the penalty's expected gradient is 0)"
    if term.level == "token":
        if term.placement == "reward" and shape == "u":  # summed per-token k1 = sequence k1
            return "reverse KL", "E[r] − β KL(π‖π_ref)"
        if term.placement == "reward" and shape == "-u":
            return "sign-flipped", "E[r] + β KL(π‖π_ref)"
        if term.placement == "loss" and shape == "u":
            return (
                "not a divergence of π",
                "per state s: E_π[r|s] − β KL(π(·|s)‖π_ref(·|s)), occupancy held fixed",
            )
        if term.placement == "loss" and shape == "-exp(-u)":
            return (
                "not a divergence of π",
                "per state s: E_π[r|s] − β KL(π_ref(·|s)‖π(·|s)), occupancy held fixed",
            )
        return "not a divergence of π", "none (partial gradients of per-token estimates)"
    if term.estimator == "k2" and term.placement == "reward":
        return "not a divergence of π", "E[r] − β (E_π[k2] − KL(π‖π_ref))"
    if term.estimator == "k3" and term.placement == "reward":
        return "not a divergence of π", "E[r] − β (KL(π‖π_ref) − KL(π_ref‖π))"
    return {
        "u": ("reverse KL", "E[r] − β KL(π‖π_ref)"),
        "-u": ("sign-flipped", "E[r] + β KL(π‖π_ref)"),
        "-exp(-u)": ("forward KL", "E[r] − β KL(π_ref‖π)"),
        "exp(u)": ("χ²", "E[r] − (β/2) χ²(π‖π_ref)"),
    }.get(shape, ("not a divergence of π", "none recognized"))


#: Named estimators' sequence coefficients ``phi`` (value in the reward, derivative in the
#: loss) as ``(shape, slope a)`` of ``phi = a g(u) + c`` (module docstring).
_NAMED_SHAPES = {
    ("k1", "reward"): ("u", 1.0),
    ("k1", "loss"): ("constant", 0.0),
    ("k2", "reward"): ("other", 0.0),
    ("k2", "loss"): ("u", 1.0),
    ("k3", "reward"): ("other", 0.0),
    ("k3", "loss"): ("-exp(-u)", 1.0),
}


def coefficient_shape(term: KLTerm) -> tuple[str, float]:
    """The shape of ``phi`` (``k`` in the reward, ``dk/dx`` in the loss) as a function of
    ``x = log pi``, ``y = log pi_ref``: ``"u"`` (``x - y``), ``"-u"``, ``"-exp(-u)"``,
    ``"exp(u)"``, ``"constant"`` or ``"other"``, with the slope ``a > 0`` of
    ``phi = a g + c``. A callable is matched by least squares on a grid of
    log-probabilities in ``[-4, -0.05]^2`` (a match must be exact to 1e-6 relative)."""
    if isinstance(term.estimator, str):
        return _NAMED_SHAPES[(term.estimator, term.placement)]
    x, y = _GRID
    phi = term.value(x, y) if term.placement == "reward" else term.derivative(x, y)
    scale = max(1.0, float(np.abs(phi).max()))
    if np.ptp(phi) <= 1e-9 * scale:
        return "constant", 0.0
    u = x - y
    for name, basis in (("u", u), ("-u", -u), ("-exp(-u)", -np.exp(-u)), ("exp(u)", np.exp(u))):
        design = np.stack([basis, np.ones_like(basis)], axis=1)
        coefficients = np.linalg.lstsq(design, phi, rcond=None)[0]  # (slope, offset)
        if coefficients[0] > 0 and np.abs(design @ coefficients - phi).max() <= 1e-6 * scale:
            return name, float(coefficients[0])
    return "other", 0.0


def kl_penalty_fixed_point(
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    *,
    estimator: str | Callable[[np.ndarray, np.ndarray], np.ndarray],
    placement: str,
    level: str = "sequence",
    tol: float = DEFAULT_TOLERANCE,
    max_steps: int = 3000,
) -> KLPenaltySolution:
    r"""The policy where training with this KL penalty converges: the zero of (U).

    Closed forms (module docstring): ``k1`` reward (both levels) and ``k2`` loss sequence:
    ``pi* ∝ pi_ref e^{r/beta}`` (:func:`~tinyrlhf.closed_form`); ``k3`` loss sequence:
    ``P = beta q/(lambda - r)``. Backward induction: ``k2``/``k3`` loss token. No interior
    zero: ``k1`` loss (``policy`` is then the ``beta -> 0`` optimum, ``P_ref`` restricted to
    the best generations, where ascent on ``E[r]`` heads). Numerical (integration from
    ``pi_ref`` and Powell's hybrid method): ``k2``/``k3`` reward and callables.

    .. math::

        & U(\theta) = \mathbb{E}_\pi\big[r\, \nabla \log P_\pi\big] - \beta\, G(\theta) = 0,

        & P^* \propto P_{\mathrm{ref}}\, e^{r/\beta}
        \quad (\texttt{k1} \text{ reward}, \texttt{k2} \text{ loss, sequence}),

        & P = \frac{\beta\, P_{\mathrm{ref}}}{\lambda - r}
        \quad (\texttt{k3} \text{ loss, sequence}).

    Args:
        ref: ``pi_ref`` (also where training starts).
        reward: ``(n_leaves,)`` finite rewards.
        beta: KL coefficient ``> 0``.
        estimator: ``"k1" | "k2" | "k3"`` or a callable ``f(log_pi, log_pi_ref)`` applied
            elementwise as a trainer applies it.
        placement: ``"reward"`` (detached) or ``"loss"`` (differentiated).
        level: ``"sequence"`` or ``"token"``.
        tol: tolerance on the certificate ``residual`` (``||U||`` at the answer; for ``k3``
            in the loss the larger of ``||U||`` and :func:`forward_kl_stationarity`).
        max_steps: integration steps of the numerical route.

    Returns:
        A :class:`KLPenaltySolution` (``residual``, ``tolerance`` and ``converged`` on every
        route, ``converged`` iff ``residual <= tolerance``; ``stationary`` and ``reason`` when
        no interior fixed point is reached, and then ``residual = inf``).

    Raises:
        ValueError, TypeError: bad ``ref``, ``reward``, ``beta``, unknown names, a callable
            returning the wrong shape or NaN.

    Warns:
        KLPenaltyWarning: whenever ``converged`` is False (any route: an uncertified
            numerical point, no interior fixed point, a closed form that fails its check).
    """
    start = time.perf_counter()
    ref, reward, beta = check_problem(ref, reward, beta)
    term = kl_term(estimator, placement, level)
    tol = check_tolerance(tol)
    max_steps = check_positive_int(max_steps, "max_steps")
    route = _fixed_point_route(ref, reward, beta, term, tol, max_steps)
    # no interior fixed point: ||U|| vanishes at the boundary the flow runs to, so it
    # certifies nothing there and the residual is inf (converged iff residual <= tol)
    residual = (
        _fixed_point_residual(route, ref, reward, beta, term) if route.stationary else np.inf
    )
    converged = bool(residual <= tol)
    stationary, reason = route.stationary, route.reason
    if route.how == "numerical" and stationary and not converged:
        stationary = False
        reason = reason or f"the polished point has ||U|| = {residual:.2e} > tol = {tol:g}"
    if not converged:
        warnings.warn(
            f"{term.name}: no certified fixed point: {reason or f'||U|| = {residual:.2e} > {tol:g}'}",
            KLPenaltyWarning,
            stacklevel=2,
        )
    optimizes, stationary_for = classify(term)
    return KLPenaltySolution(
        policy=route.policy,
        method=f"kl_penalty[{term.name}]",
        reference=ref,
        reward=reward,
        beta=beta,
        converged=converged,
        residual=residual,
        tolerance=tol,
        wall_time=time.perf_counter() - start,
        steps_taken=route.info.get("steps"),
        info=route.info,
        term=term,
        optimizes=optimizes,
        stationary_for=stationary_for,
        stationary=stationary,
        reason=reason,
        how=route.how,
    )


@dataclass(frozen=True)
class _Route:
    """A candidate fixed point and how it was found (before its certificate is checked)."""

    policy: Policy
    how: str  # "closed form", "backward induction" or "numerical"
    stationary: bool = True  # False: no interior zero of (U) was reached
    reason: str = ""  # why stationary is False
    info: dict = field(default_factory=dict)  # the numerical route's {"steps": ...}


def _fixed_point_route(
    ref: Policy, reward: np.ndarray, beta: float, term: KLTerm, tol: float, max_steps: int
) -> _Route:
    """The zero of (U) by the route the term's coefficient shape allows (module docstring):
    closed forms, backward induction at token level, else the numerical flow and polish."""
    shape, slope = coefficient_shape(term)
    summed = term.level == "sequence" or term.placement == "reward"
    if shape == "u" and summed:  # reverse KL with coefficient slope * beta
        return _Route(closed_form(ref, reward, beta * slope).policy, "closed form")
    if shape == "constant":
        if _constant_on_support(ref, reward):
            return _Route(_best_generations(ref, reward), "closed form")
        reason = (
            "the penalty's expected gradient is 0, so the update is grad E[r]: no interior "
            "fixed point; training heads to P_ref restricted to the best generations"
        )
        return _Route(_best_generations(ref, reward), "closed form", False, reason)
    if shape == "-exp(-u)" and term.level == "sequence":  # forward KL
        return _Route(_forward_kl_sequence(ref, reward, beta * slope), "closed form")
    if shape in ("u", "-exp(-u)") and term.level == "token" and term.placement == "loss":
        policy = _per_state(ref, reward, beta * slope, reverse=shape == "u")
        return _Route(policy, "backward induction")
    policy, stationary, reason, info = _numerical(ref, reward, beta, term, tol, max_steps)
    return _Route(policy, "numerical", stationary, reason, info)


def _fixed_point_residual(
    route: _Route, ref: Policy, reward: np.ndarray, beta: float, term: KLTerm
) -> float:
    """The certificate: ``||U||`` at the route's policy; for ``k3`` in the loss solved in
    closed form or by backward induction, the larger of it and the scale-free
    :func:`forward_kl_stationarity`; ``inf`` when not finite."""
    with np.errstate(over="ignore", invalid="ignore"):  # a collapsing iterate may overflow
        residual = gradient_norm(penalized_update(route.policy, ref, reward, beta, term))
    shape, slope = coefficient_shape(term)
    if shape == "-exp(-u)" and route.how != "numerical":  # k3 loss: the scale-free condition
        stationarity = _forward_kl_residual(
            route.policy, ref, reward, beta * slope, token=term.level == "token"
        )
        residual = max(residual, stationarity)
    return residual if np.isfinite(residual) else float("inf")


def _best_generations(ref: Policy, reward: np.ndarray) -> Policy:
    """``P_ref`` restricted to each prompt's best generations (the ``beta -> 0`` optimum)."""
    tree = ref.tree
    log_q = ref.leaf_log_probs().reshape(tree.n_prompts, -1)
    reachable = np.where(log_q > -np.inf, reward.reshape(tree.n_prompts, -1), -np.inf)
    top = np.where(reachable == reachable.max(axis=1, keepdims=True), log_q, -np.inf)
    top -= logsumexp(top, axis=1, keepdims=True)
    return Policy.from_leaf_log_probs(tree, top.reshape(-1), fallback=ref)


def _constant_on_support(ref: Policy, reward: np.ndarray) -> bool:
    tree = ref.tree
    log_q = ref.leaf_log_probs().reshape(tree.n_prompts, -1)
    rewards = reward.reshape(tree.n_prompts, -1)
    return all(np.ptp(rewards[p, log_q[p] > -np.inf]) == 0 for p in range(tree.n_prompts))


def _forward_kl_rows(log_q: np.ndarray, values: np.ndarray, beta: float) -> np.ndarray:
    """Rows of ``P = beta q / (lambda - v)`` with ``sum P = 1``, ``lambda > max v`` (log P).

    Parametrized by ``t = lambda - max v > 0`` and ``gap = max v - v >= 0`` (exact in float),
    ``P = beta q / (t + gap)``, so ``lambda`` is never formed: when the best value's ``q`` is
    tiny, ``t ~ beta q(best)`` lies far below the float spacing of ``max v``. The root of

        g(s) = log sum_v beta q / (e^s + gap)                           (decreasing in s)

    is bracketed by ``s_low = log(beta q_top)`` (``q_top``: the mass of the best values, where
    ``g >= 0``) and ``s_high = log beta`` (``t + gap >= beta``, so ``g <= log sum q = 0``) and
    found by bisection in ``s = log t``, all in log space (``log(e^s + gap)`` by
    ``logaddexp``), until the bracket stops shrinking (at most 2000 halvings).

    Args:
        log_q: ``(m, K)`` log-probabilities, rows normalized, ``-inf`` allowed.
        values: ``(m, K)`` finite values (read where ``q > 0``).
        beta: ``> 0``.
    """
    support = log_q > -np.inf
    top = np.where(support, values, -np.inf).max(axis=1, keepdims=True)  # (m, 1)
    gap = np.where(support, top - values, 0.0)  # max v - v >= 0, exactly 0 at the best
    with np.errstate(divide="ignore"):
        log_gap = np.log(gap)  # -inf at the best values
    log_weight = np.where(support, np.log(beta) + log_q, -np.inf)  # log(beta q)
    best = support & (gap == 0.0)
    low = logsumexp(np.where(best, log_weight, -np.inf), axis=1, keepdims=True)  # g(low) >= 0
    high = np.full_like(low, np.log(beta))  # g(high) <= 0

    def g(s: np.ndarray) -> np.ndarray:
        return logsumexp(log_weight - np.logaddexp(s, log_gap), axis=1, keepdims=True)

    for _ in range(2000):
        middle = 0.5 * (low + high)
        if np.all((middle == low) | (middle == high)):
            break
        above = g(middle) > 0.0  # sum P > 1: t too small
        low, high = np.where(above, middle, low), np.where(above, high, middle)
    log_t = 0.5 * (low + high)
    log_p = np.where(support, log_weight - np.logaddexp(log_t, log_gap), -np.inf)
    return log_p - logsumexp(log_p, axis=1, keepdims=True)  # remove the bisection's rounding


def forward_kl_stationarity(
    log_pi: np.ndarray, log_q: np.ndarray, values: np.ndarray, beta: float
) -> np.ndarray:
    """Scale-free residual of the ``k3``-in-the-loss stationarity condition, per row.

    The condition is ``v + beta q/P = lambda`` (constant) on the support of ``q`` with
    ``sum P = 1``. ``||U||`` weights each generation by ``P`` and vanishes at the simplex
    boundary, so a collapsed ``P`` can pass it; this residual does not:

        res = ptp_{q > 0}(v + beta q/P) / (1 + |lambda|) + |sum P - 1|,

    with ``lambda = max_{q > 0}(v + beta q/P)`` and ``beta q/P = exp(log beta + log q - log P)``
    (``inf`` where ``P = 0 < q``, and where ``P > 0 = q``).

    Args:
        log_pi: ``(m, K)`` log P per row.
        log_q: ``(m, K)`` log q per row.
        values: ``(m, K)`` finite values (rewards, or ``Q`` at token level).
        beta: ``> 0``.

    Returns:
        ``(m,)`` residuals ``>= 0`` (``inf`` when the support is wrong).
    """
    support = log_q > -np.inf
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.exp(np.log(beta) + log_q - log_pi)  # beta q / P
        multiplier = np.where(support, values + ratio, np.nan)
        largest = np.nanmax(multiplier, axis=1)
        spread = largest - np.nanmin(multiplier, axis=1)
        res = spread / (1.0 + np.abs(largest)) + np.abs(np.exp(logsumexp(log_pi, axis=1)) - 1.0)
    leaked = np.any(~support & (log_pi > -np.inf), axis=1)  # mass where q = 0
    return np.where(np.isfinite(res) & ~leaked, res, np.inf)


def _forward_kl_residual(
    policy: Policy, ref: Policy, reward: np.ndarray, beta: float, *, token: bool
) -> float:
    """Max over prompts (sequence) or states (token: ``v = Q`` under ``policy``) of
    :func:`forward_kl_stationarity`."""
    tree = ref.tree
    if not token:
        shape = (tree.n_prompts, -1)
        return float(
            forward_kl_stationarity(
                policy.leaf_log_probs().reshape(shape),
                ref.leaf_log_probs().reshape(shape),
                reward.reshape(shape),
                beta,
            ).max()
        )
    worst, value = 0.0, reward
    for h in range(tree.horizon - 1, -1, -1):
        q_table = value.reshape(-1, tree.n_tokens)
        log_pi = policy.log_probs[h]
        worst = max(
            worst, float(forward_kl_stationarity(log_pi, ref.log_probs[h], q_table, beta).max())
        )
        value = np.sum(np.exp(log_pi) * np.where(log_pi > -np.inf, q_table, 0.0), axis=1)
    return worst


def _forward_kl_sequence(ref: Policy, reward: np.ndarray, beta: float) -> Policy:
    tree = ref.tree
    log_p = _forward_kl_rows(
        ref.leaf_log_probs().reshape(tree.n_prompts, -1), reward.reshape(tree.n_prompts, -1), beta
    )
    return Policy.from_leaf_log_probs(tree, log_p.reshape(-1), fallback=ref)


def _per_state(ref: Policy, reward: np.ndarray, beta: float, *, reverse: bool) -> Policy:
    """Backward induction: ``Q_{H-1} = r``; each state solves ``max E[Q] - beta D_s``;
    ``V(s) = sum_a pi(a|s) Q(s, a)`` is the next level's ``Q`` (no KL in it)."""
    tree = ref.tree
    value = reward  # E_pi[r | state], level H: (n_leaves,)
    log_pi: list[np.ndarray] = [np.empty(0)] * tree.horizon
    for h in range(tree.horizon - 1, -1, -1):
        q_table = value.reshape(-1, tree.n_tokens)  # Q(s, a): (level_size(h), A)
        log_ref = ref.log_probs[h]
        if reverse:  # k2: pi ∝ pi_ref exp(Q / beta)
            log_pi[h] = log_softmax(log_ref + q_table / beta, axis=1)
        else:  # k3: pi = beta pi_ref / (lambda_s - Q)
            log_pi[h] = _forward_kl_rows(log_ref, q_table, beta)
        value = np.sum(np.exp(log_pi[h]) * np.where(log_pi[h] > -np.inf, q_table, 0.0), axis=1)
    return Policy._trusted(tree, log_pi)


#: The flow is handed to the polishing root finder only once its step is this small (so the
#: polish starts in the basin of the attractor the flow approaches, not near a saddle).
SETTLED = 1e-5


def _collapse_reason(worst: float, steps: int) -> str:
    return (
        f"training from π_ref drives some generations to probability 0 (log P/P_ref = "
        f"{worst:.1f} after {steps} steps): no interior fixed point is reached (for k2/k3 in the "
        "reward a completion's penalty grows as it becomes rarer)"
    )


def _numerical(
    ref: Policy, reward: np.ndarray, beta: float, term: KLTerm, tol: float, max_steps: int
) -> tuple[Policy, bool, str, dict]:
    """Integrate (U) from ``pi_ref``, then polish with Powell's hybrid method."""
    if term.level == "sequence":
        return _numerical_leaves(ref, reward, beta, term, max_steps)
    free = [table > -np.inf for table in ref.log_probs]  # logits training can move
    problem = _FlowProblem(ref, reward, beta, term, free)
    policy, theta, steps, stop = _integrate_flow(problem, max_steps)
    if stop is not None:
        return stop
    return _polish(problem, policy, theta), True, "", {"steps": steps}


@dataclass(frozen=True)
class _FlowProblem:
    """The problem :func:`_numerical` integrates, with the logits training can move."""

    ref: Policy
    reward: np.ndarray
    beta: float
    term: KLTerm
    free: list[np.ndarray]  # per level, (level_size(h), A) bool: logits training can move

    def update(self, policy: Policy) -> list[np.ndarray]:
        """The expected update (U) at ``policy`` (:func:`penalized_update`)."""
        return penalized_update(policy, self.ref, self.reward, self.beta, self.term)

    def scaled_update(self, policy: Policy) -> list[np.ndarray]:
        """(U) divided by the state occupancy ``d_pi(s) / n_prompts``, 0 on fixed logits."""
        update = self.update(policy)
        reach = policy.log_occupancies()
        n_prompts = self.ref.tree.n_prompts
        return [
            np.where(mask, g * n_prompts / np.exp(reach[h])[:, None], 0.0)
            for h, (g, mask) in enumerate(zip(update, self.free, strict=True))
        ]


def _integrate_flow(
    problem: _FlowProblem, max_steps: int
) -> tuple[Policy, list[np.ndarray], int, tuple[Policy, bool, str, dict] | None]:
    """Euler steps of (U) from ``pi_ref`` until the scaled update settles.

    Returns ``(policy, theta, steps, stop)``: ``stop`` is :func:`_numerical`'s result when the
    flow collapsed or did not settle in ``max_steps`` steps, None when it settled after
    ``steps`` Euler steps (the sequence-level flow counts the same way).
    """
    ref = problem.ref
    tree = ref.tree
    theta = [
        np.where(mask, table, -np.inf)
        for mask, table in zip(problem.free, ref.log_probs, strict=True)
    ]
    log_q = ref.leaf_log_probs()
    on_support = log_q > -np.inf
    step = 0.5 / max(1.0, problem.beta)  # a stable step for the reward scale ~1 of these problems
    policy = ref
    for k in range(max_steps):
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                direction = problem.scaled_update(policy)
            except ValueError:  # the estimator overflowed on a collapsing generation
                direction = None
        collapsed = policy.leaf_log_probs()[on_support] - log_q[on_support]
        if (
            direction is None
            or collapsed.min() < -COLLAPSE_LOG_RATIO
            or not all(np.isfinite(d).all() for d in direction)
        ):
            reason = _collapse_reason(float(collapsed.min()), k)
            return policy, theta, k, (policy, False, reason, {"steps": k})
        size = float(np.sqrt(sum(float(np.vdot(d, d)) for d in direction)))
        if size < SETTLED:  # settled after k steps
            return policy, theta, k, None
        theta = [t + step * d for t, d in zip(theta, direction, strict=True)]
        policy = Policy.from_logits(tree, theta)
    reason = f"the flow did not settle in {max_steps} steps"
    return policy, theta, max_steps, (policy, True, reason, {"steps": max_steps})


def _unpack_logits(
    tree: TokenTree, theta: list[np.ndarray], pinned: list[np.ndarray], vector: np.ndarray
) -> Policy:
    """The policy with logits ``theta``, the ``pinned`` ones replaced by ``vector``."""
    tables, offset = [], 0
    for t, m in zip(theta, pinned, strict=True):
        table = t.copy()
        count = int(m.sum())
        table[m] = vector[offset : offset + count]
        tables.append(table)
        offset += count
    return Policy.from_logits(tree, tables)


def _polish(problem: _FlowProblem, policy: Policy, theta: list[np.ndarray]) -> Policy:
    """Solve ``scaled_update = 0`` with Powell's hybrid method from ``theta`` (on the free
    logits, the last free one of each row fixed); keep the root only if its update is no
    larger than ``policy``'s."""
    tree = policy.tree
    pinned = []
    for mask in problem.free:
        keep = mask.copy()
        last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
        keep[np.arange(mask.shape[0]), last] = False
        pinned.append(keep)
    start = np.concatenate([t[m] for t, m in zip(theta, pinned, strict=True)])

    def equations(vector: np.ndarray) -> np.ndarray:
        direction = problem.scaled_update(_unpack_logits(tree, theta, pinned, vector))
        return np.concatenate([d[m] for d, m in zip(direction, pinned, strict=True)])

    if start.size:
        with np.errstate(over="ignore", invalid="ignore"):
            solution = root(equations, start, method="hybr", options={"xtol": 1e-14})
        if np.isfinite(solution.x).all():
            candidate = _unpack_logits(tree, theta, pinned, solution.x)
            if gradient_norm(problem.update(candidate)) <= gradient_norm(problem.update(policy)):
                policy = candidate
    return policy


def _numerical_leaves(
    ref: Policy, reward: np.ndarray, beta: float, term: KLTerm, max_steps: int
) -> tuple[Policy, bool, str, dict]:
    """Sequence level: the same flow on leaf logits ``z = log P`` per prompt,
    ``z += step (C - E_P[C])``, ``C = r - beta phi(z, log q)`` (the natural-gradient flow of the
    full class: its zeros are those of (U)), then Powell's hybrid method on ``C - E_P[C]``."""
    tree = ref.tree
    log_q = ref.leaf_log_probs().reshape(tree.n_prompts, -1)
    rewards = reward.reshape(tree.n_prompts, -1)
    support = log_q > -np.inf
    phi = term.value if term.placement == "reward" else term.derivative
    step = 0.5 / max(1.0, beta)

    def centered(z: np.ndarray) -> np.ndarray:
        """``C - E_P[C]`` on the support, 0 off it; z: (P, A**H) normalized log P."""
        coefficient = np.zeros_like(z)
        coefficient[support] = rewards[support] - beta * phi(z[support], log_q[support])
        p = np.exp(z)
        mean = np.sum(np.where(support, p * coefficient, 0.0), axis=1, keepdims=True)
        return np.where(support, coefficient - mean, 0.0)

    z = log_q.copy()
    for k in range(max_steps):
        worst = float((z[support] - log_q[support]).min())  # masked first: -inf - -inf off it
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                direction = centered(z)
            except ValueError:  # the estimator overflowed on a collapsing generation
                direction = None
        if direction is None or worst < -COLLAPSE_LOG_RATIO or not np.isfinite(direction).all():
            policy = Policy.from_leaf_log_probs(tree, z.reshape(-1), fallback=ref)
            return policy, False, _collapse_reason(worst, k), {"steps": k}
        if np.sqrt(np.sum(np.exp(z) * direction**2)) < SETTLED:
            break
        z = z + step * direction
        z -= logsumexp(z, axis=1, keepdims=True)
    else:
        policy = Policy.from_leaf_log_probs(tree, z.reshape(-1), fallback=ref)
        return policy, True, f"the flow did not settle in {max_steps} steps", {"steps": max_steps}
    # polish: the free leaf logits (the first supported leaf of each prompt pinned)
    pinned = support.copy()
    pinned[np.arange(tree.n_prompts), np.argmax(support, axis=1)] = False

    def normalized(vector: np.ndarray) -> np.ndarray:
        full = z.copy()
        full[pinned] = vector
        return full - logsumexp(full, axis=1, keepdims=True)

    solution = root(lambda v: centered(normalized(v))[pinned], z[pinned], method="hybr")
    if np.isfinite(solution.x).all():
        candidate = normalized(solution.x)
        if np.abs(centered(candidate)).max() <= np.abs(centered(z)).max():
            z = candidate
    return Policy.from_leaf_log_probs(tree, z.reshape(-1), fallback=ref), True, "", {"steps": k}


@dataclass(frozen=True)
class KLPenaltyRow:
    """One estimator x placement x level against ``pi*``."""

    name: str
    optimizes: str
    how: str
    stationary: bool
    tv: float  # max over prompts of TV(P_fixed, P*)
    kl: float  # max over prompts of KL(P_fixed || P*)
    objective_lost: float  # mean over prompts of J(pi*) - J(pi_fixed), J = E[r] - beta KL
    residual: float


@dataclass(frozen=True)
class KLPenaltyReport:
    """The table made by :func:`kl_penalty_report`; ``print`` it."""

    beta: float
    rows: tuple[KLPenaltyRow, ...]

    def row(self, name: str) -> KLPenaltyRow:
        """The row named ``"k3/loss/token"`` etc."""
        for entry in self.rows:
            if entry.name == name:
                return entry
        raise ValueError(f"no row named {name!r}; rows: {[entry.name for entry in self.rows]}")

    def __str__(self) -> str:
        header = (
            f"{'estimator/placement/level':<26} {'optimizes':<25} {'how':<18} "
            f"{'TV(π,π*)':>9} {'KL(π‖π*)':>9} {'J lost':>9} {'‖U‖':>8}"
        )
        lines = [header, "-" * len(header)]
        for row in self.rows:
            mark = "" if row.stationary else " †"
            lines.append(
                f"{row.name:<26} {row.optimizes + mark:<25} {row.how:<18} {row.tv:>9.2e} "
                f"{row.kl:>9.2e} {row.objective_lost:>9.2e} "
                + (f"{row.residual:>8.1e}" if row.stationary else f"{'—':>8}")
            )
        if not all(row.stationary for row in self.rows):
            lines.append("† no interior fixed point: the row describes where training heads")
        return "\n".join(lines)


def kl_penalty_report(ref: Policy, reward: np.ndarray, beta: float) -> KLPenaltyReport:
    """Every named estimator x placement x level: what it optimizes, how far its fixed point
    is from ``pi*`` (total variation, ``KL(P || P*)``, max over prompts) and the true objective
    ``J = E[r] - beta KL(pi || pi_ref)`` it loses (mean over prompts).

    Rows without an interior fixed point (``stationary=False``) report the policy training
    heads to; their ``KLPenaltyWarning`` is not re-raised (the table marks them).
    """
    ref, reward, beta = check_problem(ref, reward, beta)
    star = closed_form(ref, reward, beta).policy
    rows = []
    for estimator in KL_ESTIMATORS:
        for placement in KL_PLACEMENTS:
            for level in KL_LEVELS:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", KLPenaltyWarning)
                    fixed = kl_penalty_fixed_point(
                        ref, reward, beta, estimator=estimator, placement=placement, level=level
                    )
                # kl_penalty_fixed_point always sets both
                assert fixed.term is not None and fixed.residual is not None
                rows.append(
                    KLPenaltyRow(
                        name=fixed.term.name,
                        optimizes=fixed.optimizes,
                        how=fixed.how,
                        stationary=fixed.stationary,
                        tv=float(total_variation(fixed.policy, star).max()),
                        kl=float(kl_divergence(fixed.policy, star).max()),
                        # J(pi*) - J(pi) = beta KL(pi || pi*) (section 5), from terms >= 0
                        objective_lost=float(beta * np.mean(kl_divergence(fixed.policy, star))),
                        residual=float(fixed.residual),
                    )
                )
    return KLPenaltyReport(beta=beta, rows=tuple(rows))
