"""Information geometry of RLHF: reverse- and forward-KL projections onto policy families
(lecture section 4, the closing "RKL projection of P* onto some class").

The lecture ends on two projections onto a class of policies ``Pi``:

    reverse (mode-seeking):   argmin_{pi in Pi} KL(P_pi || target)   -- what RLHF computes
    forward (mass-covering):  argmin_{pi in Pi} KL(target || P_pi)   -- what maximum
                                                                        likelihood computes

Soft RL *is* the reverse projection of ``P* ∝ P_ref exp(r / beta)``: for every policy,

    KL(P_pi || P*) = E_pi[log P_pi - log P_ref - r / beta + log Z] = (beta log Z - J(pi)) / beta,

with ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)``. ``beta log Z`` does not depend on ``pi``, so
inside *any* family the reverse projection of ``P*`` is the family's best policy for the RLHF
objective (lecture: "Max Ent / soft RL is an RKL projection"), while the forward projection
of a data distribution is maximum likelihood (lecture: "FKL = MLE").

The families live in :mod:`tinyrlhf.families` (``"full"``, ``"position"``, ``"unigram"``,
:class:`LogLinearFamily`). With several prompts, divergences are averaged over prompts drawn
uniformly (as in the policy gradient's ``d_0``). The forward projection onto the position and
unigram families has a closed form: the target's normalized expected token counts.

The reverse projection is not convex (a bimodal target has two local optima in the position
family). For the product families (position, unigram) a member is one row ``rho_h`` per
depth, and ``F(rho) = mean_p KL(P_rho || target_p)`` is stationary exactly when every row is
the softmax of its mean-field score (Bishop 2006, eq. 10.9)

    c_h(a) = (1/n_prompts) sum_{s at depth h} d_rho(s) Q_h(s, a),
    Q_h(s, a) = log target(a | s) + V_{h+1}(s o a),   V_h(s) = sum_a rho_h(a) Q_h(s, a),

(``V`` the expected remaining target log-likelihood; one backward and one forward pass). The
solver is coordinate ascent on the rows (position: each row's update is its exact minimizer,
so ``F`` never increases) or mirror-descent steps ``log rho <- (1 - eta) log rho + eta
log T(rho)`` with backtracking (unigram), from several random starts; a root-finder on the
fixed-point equation finishes slow cases. Each reported optimum carries its **certificate**

    residual = max_{h, a} |log rho_h(a) - log T(rho)_h(a)|,

the distance, in log space on the simplex, between the point and its own fixed-point map
``T``. Unlike the gradient in logit space, which vanishes like ``rho log rho`` on the plateaus
near the boundary of the simplex (a quasi-Newton method stalls there), the residual is large
at such a point: a token at probability 1e-27 whose fixed point says 0.0057 has residual 57.
For other families (:class:`LogLinearFamily`) the optimizer is BFGS with exact gradients
polished by Newton steps in the natural-gradient metric, and the certificate is the same
distance between ``pi`` and the image of a full natural-gradient step ``theta - M^+ g``
(for the position family written with one-hot features this image is ``T(rho)``). An optimum
is ``converged`` exactly when ``residual <= tolerance``; otherwise the projection warns
(:class:`ProjectionWarning`).

The reverse gradient is the policy gradient with reward 0, ``beta = 1`` and the target as
reference, ``dKL(pi || target) / dlogit(s, a) = -d_pi(s) pi(a|s) (Q(s, a) - V(s))``
(:func:`tinyrlhf.policy_gradient_grad`), and the forward one is
``d_target(s) (pi(a|s) - target(a|s))``; both are pulled back to ``theta`` through the
transpose of the family's linear map.

References: Minka (2005), "Divergence measures and message passing" (mode-seeking vs
inclusive KL); Bishop (2006), "Pattern Recognition and Machine Learning", section 10.1
(mean-field fixed point, coordinate ascent); Korbak, Perez & Buckley (2022), "RL with KL
penalties is better viewed as Bayesian inference"; Ziebart (2010), ch. 6; Amari (1998),
"Natural gradient works efficiently in learning"; Beck & Teboulle (2003), "Mirror descent
and nonlinear projected subgradient methods for convex optimization".
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar, root
from scipy.special import log_softmax, logsumexp

from .divergences import kl_divergence, total_variation
from .families import (
    FAMILIES,
    Family,
    FullFamily,
    LogLinearFamily,
    PositionFamily,
    ProductFamily,
    UnigramFamily,
)
from .families import _log_token_counts as _log_token_counts  # importable here before the split
from .families import _pin_last as _pin_last
from .policy import NORMALIZATION_ATOL, Policy
from .solvers import policy_gradient_grad
from .tree import TokenTree
from .validation import (
    check_leaf_array,
    check_positive_int,
    check_tolerance,
    check_tree,
    make_rng,
)

__all__ = [
    "DIVERGENCES",
    "FAMILIES",
    "Family",
    "FullFamily",
    "LocalOptimum",
    "LogLinearFamily",
    "PositionFamily",
    "ProductFamily",
    "Projection",
    "ProjectionWarning",
    "UnigramFamily",
    "family_divergence",
    "kl_landscape",
    "mean_field_scores",
    "project",
    "project_all",
    "projection_residual",
    "saddle_point",
]

DIVERGENCES = ("reverse", "forward")
#: Standard deviation of the random starting parameters of the numerical projections (logit
#: units: starts range from nearly uniform to nearly deterministic policies).
START_SCALE = 2.0
#: Default number of random starts of the numerical projections.
DEFAULT_STARTS = 8
#: Default certificate tolerance: the largest accepted ``max |log pi - log pi+|`` between a
#: reported optimum and its fixed-point (or natural-gradient) image. It bounds the relative
#: error of every probability of the optimum's rows by about this much; float64 rounding of
#: the scores (sums of log-probabilities of size ~10) is ~1e-14.
DEFAULT_TOLERANCE = 1e-9
#: Two optimizer end points whose leaf distributions are closer than this in total variation
#: are the same local optimum (certified end points agree to ~1e-9; distinct optima of the
#: examples are > 0.1 apart).
DISTINCT_OPTIMA_TV = 1e-4
#: Coordinate-ascent / mirror sweeps before the root-finder takes over a slow start (random
#: targets need 15-100 sweeps; slow linear convergence near a bifurcation needs more).
DESCENT_SWEEPS = 300
#: Most sweeps per start in all; a start that is not certified by then is reported with
#: ``converged=False`` and a warning.
MAX_SWEEPS = 3000
#: Options of the quasi-Newton stage of the generic (log-linear) projections
#: (``scipy.optimize.minimize(method="BFGS")``): stop when the gradient norm falls below
#: gtol. Dense BFGS suits the few parameters of these families; it also avoids L-BFGS-B's
#: compiled routine, which calls multithreaded BLAS and was ~15x slower on a loaded 2-core
#: machine for 6 parameters.
QUASI_NEWTON_OPTIONS = {"gtol": 1e-10, "maxiter": 2000}
#: Most Newton steps of the polish that follows BFGS (it needs a handful).
POLISH_STEPS = 50
#: Armijo sufficient-decrease constant of the polish's backtracking line search.
ARMIJO_C = 1e-4
#: Relative float64 resolution of F in the polish: changes of F below POLISH_TOL * (1 + |F|)
#: are rounding, so there a step is judged by the gradient instead.
POLISH_TOL = 1e-15
#: Smallest mirror step tried by the unigram solver's backtracking before it gives up.
SMALLEST_STEP = 1e-12


class ProjectionWarning(UserWarning):
    """A reverse projection could not certify an optimum (its residual exceeds the tolerance)."""


# ------------------------------------------------------------------------ argument checks
def _as_target(target: object, tree: TokenTree | None) -> Policy:
    """A Policy target, or leaf log-probs ``(n_leaves,)`` on ``tree`` made autoregressive."""
    if isinstance(target, Policy):
        if tree is not None and check_tree(tree) != target.tree:
            raise ValueError("tree does not match target.tree; omit tree= for a Policy target")
        return target
    if tree is None:
        raise ValueError(
            "target is not a Policy, so it must be leaf log-probabilities (n_leaves,) together "
            "with tree= (the TokenTree they live on)"
        )
    tree = check_tree(tree)
    log_p = check_leaf_array(tree, target, "target", allow_neg_inf=True)
    totals = logsumexp(log_p.reshape(tree.n_prompts, -1), axis=1)  # (P,)
    bad = ~(np.abs(totals) <= NORMALIZATION_ATOL)
    if bad.any():
        p = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"target must hold log-probabilities that sum to 1 over each prompt's leaves; "
            f"prompt {p} sums to {np.exp(totals[p])!r} (subtract its logsumexp)"
        )
    return Policy.from_leaf_log_probs(tree, log_p)


def _check_arguments(
    target: object, family: object, divergence: object, tree: TokenTree | None
) -> tuple[Policy, Family, str]:
    """The checks every public projection function starts with (messages name the argument)."""
    return _as_target(target, tree), _as_family(family), _check_divergence(divergence)


def _as_family(family: object) -> Family:
    if isinstance(family, Family):
        return family
    if isinstance(family, str) and family in FAMILIES:
        return FAMILIES[family]
    raise ValueError(
        f"family must be one of {tuple(FAMILIES)} or a tinyrlhf.projections.Family instance "
        f"(e.g. LogLinearFamily(features)), got {family!r}"
    )


def _check_divergence(divergence: object) -> str:
    if divergence not in DIVERGENCES:
        raise ValueError(
            "divergence must be 'reverse' (KL(pi || target), mode-seeking: what RLHF computes) "
            f"or 'forward' (KL(target || pi), mass-covering: maximum likelihood), got {divergence!r}"
        )
    return str(divergence)


def _check_support(target: Policy, family: Family) -> None:
    """A reverse projection needs a target that gives every generation positive probability:
    members of a parametric family do, so KL(pi || target) would be +inf for all of them."""
    leaf = target.leaf_log_probs()
    if np.isneginf(leaf).any():
        index = int(np.flatnonzero(np.isneginf(leaf))[0])
        raise ValueError(
            f"the reverse projection onto the {family.name!r} family needs a target with full "
            f"support: its members give every generation positive probability, so "
            f"KL(pi || target) = +inf when the target gives leaf {index} "
            f"{target.tree.leaf_text(index)} probability 0. Use divergence='forward' or "
            "family='full'."
        )


def _check_theta(family: Family, tree: TokenTree, theta: object) -> np.ndarray:
    n = family.n_parameters(tree)
    array = np.asarray(theta, dtype=np.float64)
    if array.shape[-1:] != (n,):
        raise ValueError(
            f"theta must have last dimension {n} = the {family.name!r} family's number of "
            f"parameters on this tree, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("theta must be finite")
    return array


# --------------------------------------------------------------------- value and gradient
def _value_and_gradient(
    target: Policy,
    family: Family,
    divergence: str,
    theta: np.ndarray,
    *,
    need_gradient: bool = True,
) -> tuple[float, np.ndarray | None]:
    """Mean over prompts of the divergence at ``theta``, and its gradient over ``theta``."""
    tree = target.tree
    pi = family.policy(tree, theta)
    if divergence == "reverse":
        value = float(kl_divergence(pi, target).mean())
        if not need_gradient:
            return value, None
        # KL(pi || target) = -J(pi) for reward 0, beta = 1 and reference = target
        grad_logits = policy_gradient_grad(pi, target, np.zeros(tree.n_leaves), 1.0)
        return value, -family.logits_adjoint(tree, grad_logits)
    value = float(kl_divergence(target, pi).mean())
    if not need_gradient:
        return value, None
    # d/dlogit(s, a) of (1/P) sum_s d_target(s) sum_b target(b|s) (-log pi(b|s))
    #   = (1/P) d_target(s) (pi(a|s) - target(a|s))
    occupancy = _occupancy(target)
    grad_logits = [
        occupancy[h][:, None] * (np.exp(pi.log_probs[h]) - np.exp(target.log_probs[h]))
        for h in range(tree.horizon)
    ]
    return value, family.logits_adjoint(tree, grad_logits)


def _value_with_gradient(
    target: Policy, family: Family, divergence: str, theta: np.ndarray
) -> tuple[float, np.ndarray]:
    """:func:`_value_and_gradient` with the gradient (never None then)."""
    value, gradient = _value_and_gradient(target, family, divergence, theta)
    assert gradient is not None
    return value, gradient


def _occupancy(policy: Policy) -> list[np.ndarray]:
    """``d_h(s) / P`` for ``h = 0..H-1`` from one forward pass, ``(level_size(h),)`` each."""
    log_d = policy.log_occupancies()[:-1]
    return [np.exp(level) / policy.tree.n_prompts for level in log_d]


def _curvature(
    family: Family, tree: TokenTree, pi: Policy, occupancy: list[np.ndarray]
) -> np.ndarray:
    """``M = sum_h sum_s occupancy_h(s) J_s^T (diag pi_s - pi_s pi_s^T) J_s``, ``(n, n)``.

    ``J_s`` maps ``theta`` to the logits of state ``s``. With the policy's own occupancy
    ``d_pi / P`` this is the Fisher information of ``P_theta`` (the metric of the natural
    gradient); with the target's it is the exact Hessian of the forward KL. Built one column
    at a time from the family's linear map and its transpose.
    """
    probs = [np.exp(table) for table in pi.log_probs]
    columns = []
    for direction in np.eye(family.n_parameters(tree)):
        logits = family.logits(tree, direction)  # J_s e_j per level: (level_size(h), A)
        columns.append(
            family.logits_adjoint(
                tree,
                [
                    weight[:, None] * p * (u - (p * u).sum(axis=1, keepdims=True))
                    for weight, p, u in zip(occupancy, probs, logits, strict=True)
                ],
            )
        )
    return np.array(columns).T


def _newton_direction(
    target: Policy, family: Family, divergence: str, theta: np.ndarray, gradient: np.ndarray
) -> np.ndarray:
    """``M^+ g``: the natural-gradient (reverse) or Newton (forward) direction at ``theta``."""
    tree = target.tree
    pi = family.policy(tree, theta)
    curvature = _curvature(family, tree, pi, _occupancy(pi if divergence == "reverse" else target))
    return np.linalg.lstsq(curvature, gradient, rcond=None)[0]


def _polish(
    target: Policy, family: Family, divergence: str, theta: np.ndarray, tol: float
) -> tuple[np.ndarray, float]:
    """Newton steps ``theta -= t M^+ grad`` with backtracking from a BFGS end point.

    For the reverse KL ``M`` is the Fisher information (natural-gradient steps, Amari 1998),
    for the forward KL the exact Hessian. Near the boundary of the simplex the plain gradient
    of the reverse KL vanishes like ``pi log pi`` (softmax saturation), so BFGS can stop on
    such a plateau far from the optimum; the metric divides that factor out. A step is
    accepted on Armijo decrease of ``F`` or, once decreases of ``F`` are below float64
    resolution, on a smaller gradient. Stops when the certificate (:func:`_newton_residual`,
    the log-space size of the full step) is at most ``tol``, or when no step helps.

    Returns:
        The polished ``theta`` and its certificate.
    """
    tree = target.tree
    value, gradient = _value_with_gradient(target, family, divergence, theta)
    for _ in range(POLISH_STEPS):
        direction = _newton_direction(target, family, divergence, theta, gradient)
        residual = _log_change(family.policy(tree, theta), family.policy(tree, theta - direction))
        decrement = float(gradient @ direction)  # predicted decrease, >= 0
        if residual <= tol or not decrement > 0.0:
            return theta, residual
        resolution = POLISH_TOL * (1.0 + abs(value))
        step = 1.0
        while step > np.finfo(np.float64).eps:
            trial = theta - step * direction
            trial_value, trial_gradient = _value_with_gradient(target, family, divergence, trial)
            if trial_value <= value - ARMIJO_C * step * decrement or (
                trial_value <= value + resolution
                and np.linalg.norm(trial_gradient) < np.linalg.norm(gradient)
            ):
                break
            step *= 0.5
        else:  # no step improves F or the gradient at float64 precision
            return theta, residual
        theta, value, gradient = trial, trial_value, trial_gradient
    return theta, _newton_residual(target, family, divergence, theta)


def _log_change(pi: Policy, image: Policy) -> float:
    """``max_{h, s, a} |log pi(a|s) - log image(a|s)|`` (0 where both are -inf)."""
    largest = 0.0
    for table, other in zip(pi.log_probs, image.log_probs, strict=True):
        both = np.isneginf(table) & np.isneginf(other)
        gap = np.where(both, 0.0, np.abs(table - other))
        largest = max(largest, float(gap.max(initial=0.0)))
    return largest


def _newton_residual(target: Policy, family: Family, divergence: str, theta: np.ndarray) -> float:
    """Certificate of a generic family: the log-space distance between ``pi_theta`` and the
    image of one full Newton step, ``pi_{theta - M^+ g}`` (natural gradient for the reverse
    KL, where ``M`` is the Fisher metric: the Fisher projection of the simplex gradient onto
    the family's tangent space). Zero exactly at a stationary point; O(1) on a plateau where
    the logit-space gradient is tiny but the metric-scaled step is not."""
    tree = target.tree
    _, gradient = _value_with_gradient(target, family, divergence, theta)
    direction = _newton_direction(target, family, divergence, theta, gradient)
    return _log_change(family.policy(tree, theta), family.policy(tree, theta - direction))


# ------------------------------------------------------------ mean field (product families)
def mean_field_scores(target: Policy, log_rows: np.ndarray) -> tuple[np.ndarray, float]:
    """The mean-field scores of a product policy and its reverse divergence.

        Q_h(s, a) = log target(a | s) + V_{h+1}(s o a),   V_H = 0,
        V_h(s)    = sum_a rho_h(a) Q_h(s, a),
        c_h(a)    = (1/n_prompts) sum_{s at depth h} d_rho(s) Q_h(s, a)
                  = (1/n_prompts) sum_p E_rho[log target_p(xi) | a_h = a] + const_h,
        F(rho)    = sum_h sum_a rho_h(a) log rho_h(a) - (1/n_prompts) sum_p V_0(p)
                  = mean_p KL(P_rho || target_p).

    One backward pass for ``Q, V`` and one forward pass for ``d_rho`` (``d_0 = 1``,
    ``d_{h+1}(s o a) = d_h(s) rho_h(a)``).

    Args:
        target: a Policy with full support (every ``log target(a | s)`` finite).
        log_rows: ``(H, A)`` ``log rho_h(a)``, each row normalized.

    Returns:
        ``(scores (H, A), F)``.
    """
    q_tables, value = _backward_pass(target, log_rows)
    scores, _ = _forward_pass(target.tree, q_tables, log_rows)
    entropy_term = float(np.sum(np.exp(log_rows) * log_rows))
    return scores, entropy_term - float(value.mean())


def _backward_pass(target: Policy, log_rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """``Q_h`` for every depth, ``(level_size(h), A)`` each, and ``V_0``, ``(P,)``:
    ``Q_h(s, a) = log target(a | s) + V_{h+1}(s o a)``, ``V_h(s) = sum_a rho_h(a) Q_h(s, a)``."""
    tree = target.tree
    rows = np.exp(log_rows)  # (H, A)
    q_tables: list[np.ndarray] = [np.empty(0)] * tree.horizon
    value = np.zeros(tree.n_leaves)  # V_H: (n_leaves,)
    for h in range(tree.horizon - 1, -1, -1):
        # V_{h+1}: (level_size(h + 1),) -> (level_size(h), A)
        q_tables[h] = target.log_probs[h] + value.reshape(-1, tree.n_tokens)
        value = q_tables[h] @ rows[h]  # V_h: (level_size(h),)
    return q_tables, value


def _forward_pass(
    tree: TokenTree, q_tables: list[np.ndarray], log_rows: np.ndarray, *, update: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The scores ``c_h = (1/P) sum_s d_rho(s) Q_h(s, .)``, ``(H, A)``, depth by depth
    (``d_0 = 1``, ``d_{h+1}(s o a) = d_h(s) rho_h(a)``). With ``update``, each row is replaced
    by ``softmax(c_h)`` before the next depth's occupancy is formed (one coordinate-ascent
    sweep). Returns the scores and the (updated) log rows."""
    log_rows = log_rows.copy()
    scores = np.empty_like(log_rows)
    reach = np.ones(tree.n_prompts)  # d_0: (P,)
    for h in range(tree.horizon):
        scores[h] = reach @ q_tables[h] / tree.n_prompts
        if update:
            log_rows[h] = log_softmax(scores[h])
        reach = np.outer(reach, np.exp(log_rows[h])).reshape(-1)  # d_{h+1}: (level_size(h+1),)
    return scores, log_rows


def _coordinate_sweep(target: Policy, log_rows: np.ndarray) -> np.ndarray:
    """One sweep of coordinate ascent (CAVI) over the depths of a position-family member.

    For ``h = 0..H-1`` in turn, ``rho_h <- softmax(c_h)`` with ``c_h`` computed from the rows
    already updated above ``h`` (``d_rho``) and the old rows below it (``Q_h``): each update
    is the exact minimizer of ``F`` over ``rho_h`` (``F`` is ``KL(rho_h || softmax c_h)`` plus
    terms free of ``rho_h``), so ``F`` never increases (Bishop 2006, section 10.1.1).
    """
    q_tables, _ = _backward_pass(target, log_rows)
    return _forward_pass(target.tree, q_tables, log_rows, update=True)[1]


@dataclass(frozen=True)
class _MeanFieldState:
    """A product-family member during the reverse projection, with its certificate."""

    log_rows: np.ndarray  # (H, A)
    value: float  # F(rho)
    image: np.ndarray  # T(rho): (H, A)
    residual: float  # max |log rho - log T(rho)|


def _mean_field_state(
    target: Policy, family: ProductFamily, log_rows: np.ndarray
) -> _MeanFieldState:
    """The point ``log_rows``, ``F`` there, its image ``T(rho)`` and its certificate."""
    scores, value = mean_field_scores(target, log_rows)
    image = family.mean_field_map(scores)
    residual = float(np.abs(log_rows - image).max(initial=0.0))
    return _MeanFieldState(log_rows, value, image, residual)


def _mirror_step(target: Policy, family: ProductFamily, state: _MeanFieldState) -> _MeanFieldState:
    """``log rho <- log_softmax((1 - eta) log rho + eta log T(rho))``, ``eta = 1, 1/2, ...``:
    an entropic mirror-descent (natural-gradient) step of size ``eta``, accepted when ``F``
    does not increase, or (once decreases fall below float64 resolution) when the residual
    shrinks."""
    resolution = 4 * np.finfo(np.float64).eps * (1.0 + abs(state.value))
    eta = 1.0
    while eta >= SMALLEST_STEP:
        trial = _mean_field_state(
            target,
            family,
            log_softmax((1 - eta) * state.log_rows + eta * state.image, axis=1),
        )
        if trial.value < state.value or (
            trial.value <= state.value + resolution and trial.residual < state.residual
        ):
            return trial
        eta /= 2
    return state


def _root_polish(target: Policy, family: ProductFamily, state: _MeanFieldState) -> _MeanFieldState:
    """Solve the fixed-point equation ``theta = theta(T(rho_theta))`` by Powell's hybrid
    method (``scipy.optimize.root``) from a descent end point: superlinear where coordinate
    ascent converges linearly and slowly (near a bifurcation). Kept only if it lowers the
    residual without raising ``F`` beyond float64 resolution."""
    tree = target.tree

    def fixed_point_gap(theta: np.ndarray) -> np.ndarray:
        log_rows = family.log_rows(tree, theta)
        return family.theta_of(_mean_field_state(target, family, log_rows).image) - theta

    found = root(fixed_point_gap, family.theta_of(state.log_rows), method="hybr")
    if not np.isfinite(found.x).all():
        return state
    trial = _mean_field_state(target, family, family.log_rows(tree, found.x))
    resolution = 4 * np.finfo(np.float64).eps * (1.0 + abs(state.value))
    if trial.residual < state.residual and trial.value <= state.value + resolution:
        return trial
    return state


def _mean_field_solve(
    target: Policy, family: ProductFamily, log_rows: np.ndarray, tol: float
) -> _MeanFieldState:
    """Descend from ``log_rows`` until the fixed-point residual is at most ``tol``."""
    state = _mean_field_state(target, family, log_rows)
    for sweep in range(MAX_SWEEPS):
        if state.residual <= tol:
            break
        if sweep == DESCENT_SWEEPS:
            state = _root_polish(target, family, state)
            continue
        if family.blockwise:
            state = _mean_field_state(target, family, _coordinate_sweep(target, state.log_rows))
        else:
            state = _mirror_step(target, family, state)
    return state


def _check_member(
    target: object, family: object, divergence: object, theta: object, tree: TokenTree | None
) -> tuple[Policy, Family, str, np.ndarray]:
    """The arguments of a question about one member ``theta`` of ``family``, checked."""
    target, family, divergence = _check_arguments(target, family, divergence, tree)
    theta = _check_theta(family, target.tree, theta)
    if theta.ndim != 1:
        raise ValueError(f"theta must be one parameter vector, got shape {theta.shape}")
    if divergence == "reverse":
        _check_support(target, family)
    return target, family, divergence, theta


def projection_residual(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    theta: np.ndarray,
    *,
    tree: TokenTree | None = None,
) -> float:
    """The certificate of a projection at ``theta``: how far the member is from stationary.

    Product families, reverse KL: ``max_{h, a} |log rho_h(a) - log T(rho)_h(a)|`` with ``T`` the
    mean-field map (:func:`mean_field_scores`, :meth:`ProductFamily.mean_field_map`). Other
    cases: ``max_{h, s, a} |log pi(a|s) - log pi+(a|s)|`` with ``pi+`` the member after one
    full Newton step ``theta - M^+ g`` (``M`` the Fisher metric for the reverse KL, the
    Hessian for the forward KL). Zero exactly at a stationary point; unlike ``|g|`` it stays
    large on the plateaus near the boundary of the simplex.

    Args:
        target, family, divergence, tree: as in :func:`family_divergence`.
        theta: ``(n_parameters,)`` the member's parameters.

    Returns:
        The residual, a float >= 0.
    """
    target, family, divergence, theta = _check_member(target, family, divergence, theta, tree)
    return _residual(target, family, divergence, theta)


def _residual(target: Policy, family: Family, divergence: str, theta: np.ndarray) -> float:
    if theta.size == 0:  # a single member
        return 0.0
    if divergence == "reverse" and isinstance(family, ProductFamily):
        return _mean_field_state(target, family, family.log_rows(target.tree, theta)).residual
    return _newton_residual(target, family, divergence, theta)


def family_divergence(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    theta: np.ndarray,
    *,
    tree: TokenTree | None = None,
) -> tuple[float, np.ndarray]:
    """The divergence between ``target`` and the family member ``theta``, and its gradient.

        reverse:  F(theta) = mean_p KL(P_theta || target),
        forward:  F(theta) = mean_p KL(target || P_theta)

    (module docstring for the gradients).

    Args:
        target: a Policy, or leaf log-probs ``(n_leaves,)`` with ``tree=``.
        family: a family name (``"full"``, ``"position"``, ``"unigram"``) or a Family.
        divergence: ``"reverse"`` or ``"forward"``.
        theta: ``(n_parameters,)`` the family's parameters.
        tree: the tree of an array target.

    Returns:
        ``(F(theta), dF/dtheta)``: a float (``+inf`` where the divergence is infinite) and an
        ``(n_parameters,)`` array.
    """
    target, family, divergence, theta = _check_member(target, family, divergence, theta, tree)
    value, gradient = _value_with_gradient(target, family, divergence, theta)
    return value, gradient


def kl_landscape(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    thetas: np.ndarray,
    *,
    tree: TokenTree | None = None,
) -> np.ndarray:
    """The divergence over a grid of parameters: ``F(theta)`` for every ``theta`` in ``thetas``.

    Args:
        target, family, divergence, tree: as in :func:`family_divergence`.
        thetas: ``(..., n_parameters)`` parameter vectors (e.g. a meshgrid stacked on the
            last axis).

    Returns:
        ``thetas.shape[:-1]`` array of mean-over-prompts divergences (``+inf`` allowed).
    """
    target, family, divergence = _check_arguments(target, family, divergence, tree)
    thetas = _check_theta(family, target.tree, thetas)
    flat = thetas.reshape(-1, thetas.shape[-1])  # (n_points, n_parameters)
    values = np.array(
        [
            _value_and_gradient(target, family, divergence, theta, need_gradient=False)[0]
            for theta in flat
        ]
    )
    return values.reshape(thetas.shape[:-1])


def saddle_point(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    theta_a: np.ndarray,
    theta_b: np.ndarray,
    *,
    tree: TokenTree | None = None,
) -> np.ndarray:
    """The saddle between two local optima: a zero of ``dF/dtheta`` near the pass between them.

    Starts at the highest point of ``F`` on the segment from ``theta_a`` to ``theta_b``
    (``scipy.optimize.minimize_scalar``), which lies on the ridge separating the two basins,
    and solves ``dF/dtheta = 0`` from there by Powell's hybrid method
    (``scipy.optimize.root``) on the exact gradient. Minimization would slide into one of
    the optima; root-finding converges to the nearby critical point, the saddle.

    Args:
        target, family, divergence, tree: as in :func:`family_divergence`.
        theta_a, theta_b: ``(n_parameters,)`` two local optima (e.g. the ``parameters`` of
            two entries of ``project_all(...).optima``).

    Returns:
        ``(n_parameters,)`` with ``dF/dtheta`` zero to solver precision.

    Raises:
        RuntimeError: the root-finder did not converge.
    """
    target, family, divergence = _check_arguments(target, family, divergence, tree)
    theta_a = _check_theta(family, target.tree, theta_a)
    theta_b = _check_theta(family, target.tree, theta_b)
    if divergence == "reverse":
        _check_support(target, family)

    def value_on_segment(t: float) -> float:
        theta = theta_a + t * (theta_b - theta_a)
        return -_value_and_gradient(target, family, divergence, theta, need_gradient=False)[0]

    highest = minimize_scalar(value_on_segment, bounds=(0.0, 1.0), method="bounded")
    found = root(
        lambda theta: _value_and_gradient(target, family, divergence, theta)[1],
        theta_a + highest.x * (theta_b - theta_a),
        method="hybr",
    )
    if not found.success:
        raise RuntimeError(f"no saddle found between theta_a and theta_b: {found.message}")
    return found.x


# ------------------------------------------------------------------------------ projections
@dataclass(frozen=True, eq=False)
class LocalOptimum:
    """One local minimum of a projection's divergence over the family.

    Attributes:
        policy: the family member.
        kl: ``(n_prompts,)`` the divergence at it, per prompt.
        parameters: ``(n_parameters,)`` its ``theta`` (None for a closed-form projection).
        n_starts: how many optimizer starts ended here.
        residual: its certificate (:func:`projection_residual`): the log-space distance
            ``max |log pi - log pi+|`` between the member and its fixed-point map (product
            families, reverse KL) or the image of one full Newton / natural-gradient step
            (other families); 0.0 for a closed form.
        tolerance: the bound ``residual`` is compared with.
        converged: ``residual <= tolerance``; a point with ``converged=False`` is not
            certified as an optimum (the projection warned).
    """

    policy: Policy
    kl: np.ndarray
    parameters: np.ndarray | None
    n_starts: int
    residual: float
    tolerance: float

    @property
    def converged(self) -> bool:
        return bool(self.residual <= self.tolerance)


@dataclass(frozen=True, eq=False)
class Projection:
    """The result of :func:`project_all`.

    Attributes:
        policy: the best member of the family (the projection).
        kl: ``(n_prompts,)`` the divergence at ``policy``.
        optima: every distinct local optimum found, best (lowest mean divergence) first.
        family: the family's name.
        divergence: ``"reverse"`` or ``"forward"``.
        target: the target as a Policy.

    ``residual``, ``tolerance`` and ``converged`` are those of the best optimum
    (:class:`LocalOptimum`); ``all_converged`` says whether every optimum is certified.
    """

    policy: Policy
    kl: np.ndarray
    optima: tuple[LocalOptimum, ...]
    family: str
    divergence: str
    target: Policy

    @property
    def residual(self) -> float:
        return self.optima[0].residual

    @property
    def tolerance(self) -> float:
        return self.optima[0].tolerance

    @property
    def converged(self) -> bool:
        return self.optima[0].converged

    @property
    def all_converged(self) -> bool:
        return all(optimum.converged for optimum in self.optima)

    def __repr__(self) -> str:
        values = ", ".join(f"{float(optimum.kl.mean()):.6g}" for optimum in self.optima)
        return (
            f"Projection(family={self.family!r}, divergence={self.divergence!r}, "
            f"mean KL of the optima: [{values}], converged={self.all_converged})"
        )


def _divergence_of(target: Policy, pi: Policy, divergence: str) -> np.ndarray:
    return kl_divergence(pi, target) if divergence == "reverse" else kl_divergence(target, pi)


def _solve_from(
    target: Policy, family: Family, divergence: str, start: np.ndarray, tol: float
) -> tuple[np.ndarray, float]:
    """One start of a numerical projection: its end point ``theta`` and certificate."""
    if divergence == "reverse" and isinstance(family, ProductFamily):
        state = _mean_field_solve(target, family, family.log_rows(target.tree, start), tol)
        return family.theta_of(state.log_rows), state.residual
    result = minimize(
        lambda theta: _value_and_gradient(target, family, divergence, theta),
        start,
        jac=True,
        method="BFGS",
        options=QUASI_NEWTON_OPTIONS,
    )
    return _polish(target, family, divergence, result.x, tol)


def project_all(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    *,
    tree: TokenTree | None = None,
    seed: int | np.random.Generator | None = 0,
    n_starts: int = DEFAULT_STARTS,
    tol: float = DEFAULT_TOLERANCE,
) -> Projection:
    """Project ``target`` onto ``family`` and report every local optimum found, certified.

    Same arguments as :func:`project`, plus ``n_starts`` (random starts of the numerical
    projections, drawn as ``START_SCALE * N(0, 1)`` per parameter from ``seed``).
    Closed-form projections (``"full"``; ``"forward"`` onto ``"position"``/``"unigram"``)
    have exactly one optimum (residual 0).

    Every optimum carries ``residual``, ``tolerance`` and ``converged``
    (:class:`LocalOptimum`). End points that do not meet ``tol`` are still listed, with
    ``converged=False``, and a :class:`ProjectionWarning` is issued.

    Returns:
        A :class:`Projection`.

    Warns:
        ProjectionWarning: some end point is not certified (residual > ``tol``).
    """
    result = _project(target, family, divergence, tree, seed, n_starts, tol)
    uncertified = [optimum for optimum in result.optima if not optimum.converged]
    if uncertified:
        warnings.warn(
            f"{len(uncertified)} of the {len(result.optima)} end points of the {divergence} "
            f"projection onto the {result.family!r} family are not certified optima: residual "
            f"{max(optimum.residual for optimum in uncertified):.3g} > tolerance "
            f"{result.tolerance:.3g} (reported with converged=False; raise tol or add starts)",
            ProjectionWarning,
            stacklevel=2,
        )
    return result


def _project(
    target: object,
    family: object,
    divergence: object,
    tree: TokenTree | None,
    seed: int | np.random.Generator | None,
    n_starts: int,
    tol: float,
) -> Projection:
    """:func:`project_all` without its warning."""
    target, family, divergence = _check_arguments(target, family, divergence, tree)
    n_starts = check_positive_int(n_starts, "n_starts")
    tol = check_tolerance(tol)
    rng = make_rng(seed)
    closed = family.closed_form(target, divergence)
    if closed is not None:
        optimum = LocalOptimum(
            closed, _divergence_of(target, closed, divergence), None, 1, 0.0, tol
        )
        return Projection(closed, optimum.kl, (optimum,), family.name, divergence, target)
    if divergence == "reverse":
        _check_support(target, family)
    tree = target.tree
    n_parameters = family.n_parameters(tree)
    if n_parameters == 0:  # a single member (one token): nothing to optimize
        ends = [(np.zeros(0), 0.0)]
    else:
        ends = [
            _solve_from(
                target, family, divergence, START_SCALE * rng.standard_normal(n_parameters), tol
            )
            for _ in range(n_starts)
        ]
    candidates = []
    for theta, residual in ends:
        pi = family.policy(tree, theta)
        candidates.append((pi, _divergence_of(target, pi, divergence), theta, residual))
    candidates.sort(key=lambda candidate: float(candidate[1].mean()))
    optima: list[LocalOptimum] = []
    for pi, kl, theta, residual in candidates:
        for k, optimum in enumerate(optima):
            if total_variation(pi, optimum.policy).max() < DISTINCT_OPTIMA_TV:
                # the same optimum: keep the better-certified representative
                keep: tuple[Policy, np.ndarray, np.ndarray | None, float]
                if residual < optimum.residual:
                    keep = (pi, kl, theta, residual)
                else:
                    keep = (optimum.policy, optimum.kl, optimum.parameters, optimum.residual)
                policy, divergence_value, parameters, kept_residual = keep
                optima[k] = LocalOptimum(
                    policy, divergence_value, parameters, optimum.n_starts + 1, kept_residual, tol
                )
                break
        else:
            optima.append(LocalOptimum(pi, kl, theta, 1, residual, tol))
    best = optima[0]
    return Projection(best.policy, best.kl, tuple(optima), family.name, divergence, target)


def project(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    *,
    tree: TokenTree | None = None,
    seed: int | np.random.Generator | None = 0,
    tol: float = DEFAULT_TOLERANCE,
) -> Policy:
    r"""The member of ``family`` closest to ``target`` in KL divergence.

        reverse:  argmin_{pi in family} mean_p KL(P_pi || target)   (mode-seeking; RLHF)
        forward:  argmin_{pi in family} mean_p KL(target || P_pi)   (mass-covering; MLE)

    .. math::

        & \text{reverse:}\quad \operatorname*{arg\,min}_{\pi \in \mathcal{F}}\,
        \operatorname{mean}_p \mathrm{KL}(P_\pi \,\|\, P_{\mathrm{target}}),

        & \text{forward:}\quad \operatorname*{arg\,min}_{\pi \in \mathcal{F}}\,
        \operatorname{mean}_p \mathrm{KL}(P_{\mathrm{target}} \,\|\, P_\pi).

    Soft RL is the reverse projection of ``P* ∝ P_ref exp(r / beta)``: since
    ``KL(P_pi || P*) = (beta log Z - J(pi)) / beta``, the reverse projection of ``P*`` onto a
    family is the family's best policy for ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)``.

    The ``"full"`` family returns the target itself. The forward projection onto
    ``"position"`` and ``"unigram"`` is in closed form: the target's expected token counts
    per depth (resp. over all depths), weighted by its state occupancies. The reverse
    projection is non-convex; it is solved from several random starts derived from ``seed``
    (mean-field coordinate ascent for the product families, BFGS and natural-gradient Newton
    steps otherwise; module docstring), every end point is certified by its fixed-point
    residual, and the best is returned (:func:`project_all` returns every distinct local
    optimum with its certificate).

    Args:
        target: a Policy, or leaf log-probabilities ``(n_leaves,)`` (summing to 1 over each
            prompt's leaves; ``-inf`` allowed) together with ``tree=``.
        family: ``"full"``, ``"position"``, ``"unigram"``, or a :class:`Family` instance.
        divergence: ``"reverse"`` (KL(pi || target)) or ``"forward"`` (KL(target || pi)).
        tree: the TokenTree of an array target.
        seed: int, Generator or None: the random starts of a numerical projection; default
            0 (see :func:`~tinyrlhf.validation.make_rng`).
        tol: certificate tolerance (:data:`DEFAULT_TOLERANCE`): the largest accepted
            residual ``max |log pi - log pi+|`` of the returned member.

    Returns:
        The projection, a :class:`Policy` on the target's tree.

    Raises:
        ValueError: unknown family or divergence (the valid ones are listed), an array
            target without ``tree`` or with a length other than ``tree.n_leaves``, leaf
            log-probabilities that do not normalize, a reverse projection onto a
            parametric family of a target that gives some generation probability 0, or a
            ``tol`` that is not finite and > 0.
        TypeError: ``tree`` is not a TokenTree.

    Warns:
        ProjectionWarning: the returned member is not certified (residual > ``tol``).
    """
    result = _project(target, family, divergence, tree, seed, DEFAULT_STARTS, tol)
    if not result.converged:
        warnings.warn(
            f"the {divergence} projection onto the {result.family!r} family returned a member "
            f"that is not a certified optimum: residual {result.residual:.3g} > tolerance "
            f"{tol:.3g}",
            ProjectionWarning,
            stacklevel=2,
        )
    return result.policy
