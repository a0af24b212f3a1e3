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

A family is a set of softmax policies whose logits are a linear function of parameters
``theta`` (one small :class:`Family` subclass each):

- ``"full"``: one free logit per (state, token); both projections return the target itself.
- ``"position"``: ``pi(a | s)`` depends only on the depth ``h`` of ``s`` (shared by prompts).
- ``"unigram"``: one token distribution for every state.
- :class:`LogLinearFamily`: ``logit(s, a) = phi(s, a) . theta`` for given features.

With several prompts, divergences are averaged over prompts drawn uniformly (as in the policy
gradient's ``d_0``). The forward projection onto the position and unigram families has a
closed form: the normalized expected token counts of the target (per depth, or overall),
weighted by the target's state occupancies ``d_h^target(s)``. The reverse projection is not
convex (a bimodal target has two local optima in the position family); it is minimized over
``theta`` with exact gradients from several random starts -- quasi-Newton BFGS
(``scipy.optimize.minimize``), then Newton steps in the natural-gradient metric to polish --
and every distinct local optimum found is reported (:func:`project_all`). The reverse gradient
is the policy gradient with reward 0, ``beta = 1`` and the target as reference,

    dKL(pi || target) / dlogit(s, a) = -d_pi(s) pi(a|s) (Q(s, a) - V(s)),

(:func:`tinyrlhf.policy_gradient_grad`), and the forward one is
``d_target(s) (pi(a|s) - target(a|s))``; both are pulled back to ``theta`` through the
transpose of the family's linear map.

References: Minka (2005), "Divergence measures and message passing" (mode-seeking vs
inclusive KL); Korbak, Perez & Buckley (2022), "RL with KL penalties is better viewed as
Bayesian inference"; Ziebart (2010), ch. 6; Amari (1998), "Natural gradient works efficiently
in learning" (the metric of the polish).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy.optimize import minimize, minimize_scalar, root
from scipy.special import log_softmax, logsumexp

from .divergences import kl_divergence, total_variation
from .policy import NORMALIZATION_ATOL, Policy
from .solvers import policy_gradient_grad
from .tree import TokenTree
from .validation import check_leaf_array, check_positive_int, check_tree, make_rng

DIVERGENCES = ("reverse", "forward")
#: Standard deviation of the random starting parameters of the numerical projections (logit
#: units: starts range from nearly uniform to nearly deterministic policies).
START_SCALE = 2.0
#: Default number of random starts of the numerical projections.
DEFAULT_STARTS = 8
#: Two optimizer end points whose leaf distributions are closer than this in total variation
#: are the same local optimum (polished end points agree to ~1e-10; distinct
#: optima of the examples are > 0.1 apart).
DISTINCT_OPTIMA_TV = 1e-4
#: Options of the quasi-Newton stage (``scipy.optimize.minimize(method="BFGS")``): stop when
#: the gradient norm falls below gtol. Dense BFGS suits the few parameters of these families;
#: it also avoids L-BFGS-B's compiled routine, which calls multithreaded BLAS and was ~15x
#: slower on a loaded 2-core machine for 6 parameters.
QUASI_NEWTON_OPTIONS = {"gtol": 1e-10, "maxiter": 2000}
#: Most Newton steps of the polish that follows BFGS (it needs a handful).
POLISH_STEPS = 50
#: Armijo sufficient-decrease constant of the polish's backtracking line search.
ARMIJO_C = 1e-4
#: The polish stops when the Newton decrement g^T M^+ g (the predicted decrease) falls
#: below this, relative to 1 + |F|: float64 cannot resolve smaller decreases of F.
POLISH_TOL = 1e-15


# --------------------------------------------------------------------------------- families
class Family:
    """A family of softmax policies with logits linear in parameters ``theta``.

    A subclass sets ``name`` and implements :meth:`n_parameters`, :meth:`logits` (the linear
    map ``theta -> logits``) and :meth:`logits_adjoint` (its transpose, which pulls a
    gradient over logits back to ``theta``). It may override :meth:`closed_form` when a
    projection has one; otherwise the projection is computed numerically.
    """

    name: ClassVar[str] = "family"

    def n_parameters(self, tree: TokenTree) -> int:
        """Length of ``theta`` on ``tree``."""
        raise NotImplementedError

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        """``theta (n_parameters,) -> logits``, one ``(level_size(h), A)`` array per level."""
        raise NotImplementedError

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        """Transpose of :meth:`logits`: ``dF/dtheta`` from ``dF/dlogits``, ``(n_parameters,)``."""
        raise NotImplementedError

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        """The projection of ``target`` in closed form, or None (then it is numerical)."""
        return None

    def policy(self, tree: TokenTree, theta: np.ndarray) -> Policy:
        """The family member with parameters ``theta``: ``pi(. | s) = softmax(logits(s))``."""
        return Policy._trusted(
            tree, [log_softmax(table, axis=1) for table in self.logits(tree, theta)]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _pin_last(rows: np.ndarray) -> np.ndarray:
    """Append the pinned logit 0 of the last token: ``(..., A - 1) -> (..., A)``."""
    return np.concatenate([rows, np.zeros((*rows.shape[:-1], 1))], axis=-1)


class FullFamily(Family):
    """Every autoregressive policy: ``theta`` holds ``logit(s, a) - logit(s, last token)`` for
    every non-leaf state. Both projections return the target itself (KL = 0)."""

    name = "full"

    def n_parameters(self, tree: TokenTree) -> int:
        return sum(tree.level_size(h) for h in range(tree.horizon)) * (tree.n_tokens - 1)

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        sizes = [tree.level_size(h) * (tree.n_tokens - 1) for h in range(tree.horizon)]
        pieces = np.split(theta, np.cumsum(sizes)[:-1])
        # each piece: (level_size(h) * (A-1),) -> (level_size(h), A-1) -> (level_size(h), A)
        return [
            _pin_last(piece.reshape(tree.level_size(h), tree.n_tokens - 1))
            for h, piece in enumerate(pieces)
        ]

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([grad[:, :-1].reshape(-1) for grad in grad_logits])

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        return target


class PositionFamily(Family):
    """``pi(a | s) = softmax(theta_h)(a)`` for every state ``s`` at depth ``h``, every prompt:
    ``theta`` is ``(H, A - 1)`` flattened, the last token's logit pinned to 0.

    Forward closed form: ``pi_h(a) = (1/P) sum_{s at depth h} d_target(s) target(a | s)``,
    the target's expected count of token ``a`` at depth ``h``.
    """

    name = "position"

    def n_parameters(self, tree: TokenTree) -> int:
        return tree.horizon * (tree.n_tokens - 1)

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        rows = _pin_last(theta.reshape(tree.horizon, tree.n_tokens - 1))  # (H, A)
        return [
            np.broadcast_to(rows[h], (tree.level_size(h), tree.n_tokens))
            for h in range(tree.horizon)
        ]

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        # d/dtheta_h(a) = sum over the states of depth h of dF/dlogit(s, a), a < A - 1
        return np.stack([grad.sum(axis=0)[:-1] for grad in grad_logits]).reshape(-1)

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        if divergence != "forward":
            return None
        tree = target.tree
        rows = np.stack([_log_token_counts(target, h) for h in range(tree.horizon)])  # (H, A)
        rows = rows - logsumexp(rows, axis=1, keepdims=True)
        return Policy._trusted(
            tree,
            [
                np.broadcast_to(rows[h], (tree.level_size(h), tree.n_tokens))
                for h in range(tree.horizon)
            ],
        )


class UnigramFamily(Family):
    """``pi(a | s) = softmax(theta)(a)`` for every state: ``theta`` is ``(A - 1,)``.

    Forward closed form: ``pi(a) = (1/(P H)) sum_h sum_{s at depth h} d_target(s)
    target(a | s)``, the target's expected count of token ``a`` over all positions.
    """

    name = "unigram"

    def n_parameters(self, tree: TokenTree) -> int:
        return tree.n_tokens - 1

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        row = _pin_last(theta)  # (A,)
        return [
            np.broadcast_to(row, (tree.level_size(h), tree.n_tokens)) for h in range(tree.horizon)
        ]

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        return sum(grad.sum(axis=0) for grad in grad_logits)[:-1]

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        if divergence != "forward":
            return None
        tree = target.tree
        per_depth = np.stack([_log_token_counts(target, h) for h in range(tree.horizon)])
        row = logsumexp(per_depth, axis=0)  # log sum_h count_h(a): (A,)
        row = row - logsumexp(row)
        return Policy._trusted(
            tree,
            [
                np.broadcast_to(row, (tree.level_size(h), tree.n_tokens))
                for h in range(tree.horizon)
            ],
        )


class LogLinearFamily(Family):
    """``logit(s, a) = phi(s, a) . theta`` for fixed features ``phi``.

    Args:
        features: one array per level ``h = 0..H-1`` of shape ``(level_size(h), A, K)``.

    No closed form: both projections are numerical (the forward one is convex in ``theta``).
    Position and unigram are the special cases of one-hot features of ``(h, a)`` and ``a``.
    """

    name = "log-linear"

    def __init__(self, features: Sequence[np.ndarray]) -> None:
        arrays = [np.asarray(table, dtype=np.float64) for table in features]
        if not arrays or any(table.ndim != 3 for table in arrays):
            raise ValueError(
                "features must be a list of (level_size(h), A, K) arrays, one per level"
            )
        if len({table.shape[2] for table in arrays}) != 1:
            raise ValueError("features must have the same number K of features on every level")
        if not all(np.isfinite(table).all() for table in arrays):
            raise ValueError("features must be finite")
        self.features = arrays

    def _check(self, tree: TokenTree) -> None:
        shapes = [(tree.level_size(h), tree.n_tokens) for h in range(tree.horizon)]
        if [table.shape[:2] for table in self.features] != shapes:
            raise ValueError(
                f"features must have shapes (level_size(h), A, K) = {shapes} x K for this tree"
            )

    def n_parameters(self, tree: TokenTree) -> int:
        self._check(tree)
        return self.features[0].shape[2]

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        return [table @ theta for table in self.features]  # (level_size(h), A)

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        return sum(
            np.einsum("iak,ia->k", table, grad)
            for table, grad in zip(self.features, grad_logits, strict=True)
        )

    def __repr__(self) -> str:
        return f"LogLinearFamily(K={self.features[0].shape[2]})"


#: The families known by name.
FAMILIES: dict[str, Family] = {
    family.name: family for family in (FullFamily(), PositionFamily(), UnigramFamily())
}


def _log_token_counts(target: Policy, h: int) -> np.ndarray:
    """``log (1/P) sum_{s at depth h} d_target(s) target(a | s)``, ``(A,)``."""
    # log d_h(s) + log target(a|s): (level_size(h), A)
    log_joint = target.state_log_probs(h)[:, None] + target.log_probs[h]
    return logsumexp(log_joint, axis=0) - np.log(target.tree.n_prompts)


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
    return leaf_policy(tree, log_p)


def leaf_policy(tree: TokenTree, leaf_log_probs: np.ndarray) -> Policy:
    """The autoregressive policy generating a leaf distribution (subtree sums in log space).

    Kept for the projections' own use; see :meth:`tinyrlhf.Policy.from_leaf_log_probs`
    (unreached states take the uniform policy's rows, forced after an ``eos`` token).

    Args:
        tree: the token tree.
        leaf_log_probs: ``(n_leaves,)`` log-probabilities, summing to 1 per prompt.
    """
    return Policy.from_leaf_log_probs(tree, leaf_log_probs)


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
    grad_logits = [
        (target.state_probs(h) / tree.n_prompts)[:, None]
        * (np.exp(pi.log_probs[h]) - np.exp(target.log_probs[h]))
        for h in range(tree.horizon)
    ]
    return value, family.logits_adjoint(tree, grad_logits)


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


def _polish(
    target: Policy, family: Family, divergence: str, theta: np.ndarray
) -> tuple[np.ndarray, bool]:
    """Newton steps ``theta -= t M^+ grad`` with backtracking from a BFGS end point.

    For the reverse KL ``M`` is the Fisher information (natural-gradient steps, Amari 1998),
    for the forward KL the exact Hessian. Near the boundary of the simplex the plain gradient
    of the reverse KL vanishes like ``pi log pi`` (softmax saturation), so BFGS can stop on
    such a plateau far from the optimum; the metric divides that factor out. A step is
    accepted on Armijo decrease of ``F`` or, once decreases of ``F`` are below float64
    resolution, on a smaller gradient. Returns the polished ``theta`` and whether the
    Newton decrement ``g^T M^+ g`` fell below :data:`POLISH_TOL` ``* (1 + |F|)``.
    """
    tree = target.tree
    value, gradient = _value_and_gradient(target, family, divergence, theta)
    for _ in range(POLISH_STEPS):
        pi = family.policy(tree, theta)
        source = pi if divergence == "reverse" else target
        occupancy = [source.state_probs(h) / tree.n_prompts for h in range(tree.horizon)]
        curvature = _curvature(family, tree, pi, occupancy)
        direction = np.linalg.lstsq(curvature, gradient, rcond=None)[0]
        decrement = float(gradient @ direction)  # predicted decrease, >= 0
        if not decrement > 0.0:
            break
        resolution = np.finfo(np.float64).eps * (1.0 + abs(value))
        step = 1.0
        while step > np.finfo(np.float64).eps:
            trial = theta - step * direction
            trial_value, trial_gradient = _value_and_gradient(target, family, divergence, trial)
            if trial_value <= value - ARMIJO_C * step * decrement or (
                trial_value <= value + resolution
                and np.linalg.norm(trial_gradient) < np.linalg.norm(gradient)
            ):
                break
            step *= 0.5
        else:  # no step improves F or the gradient at float64 precision
            break
        theta, value, gradient = trial, trial_value, trial_gradient
    return theta, bool(decrement <= POLISH_TOL * (1.0 + abs(value)))


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
    target, family, divergence = _check_arguments(target, family, divergence, tree)
    theta = _check_theta(family, target.tree, theta)
    if theta.ndim != 1:
        raise ValueError(f"theta must be one parameter vector, got shape {theta.shape}")
    if divergence == "reverse":
        _check_support(target, family)
    value, gradient = _value_and_gradient(target, family, divergence, theta)
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
        converged: whether the polish's Newton decrement fell below :data:`POLISH_TOL`
            (closed form: True).
    """

    policy: Policy
    kl: np.ndarray
    parameters: np.ndarray | None
    n_starts: int
    converged: bool


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
    """

    policy: Policy
    kl: np.ndarray
    optima: tuple[LocalOptimum, ...]
    family: str
    divergence: str
    target: Policy

    def __repr__(self) -> str:
        values = ", ".join(f"{float(optimum.kl.mean()):.6g}" for optimum in self.optima)
        return (
            f"Projection(family={self.family!r}, divergence={self.divergence!r}, "
            f"mean KL of the optima: [{values}])"
        )


def _divergence_of(target: Policy, pi: Policy, divergence: str) -> np.ndarray:
    return kl_divergence(pi, target) if divergence == "reverse" else kl_divergence(target, pi)


def project_all(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    *,
    tree: TokenTree | None = None,
    seed: int | np.random.Generator | None = 0,
    n_starts: int = DEFAULT_STARTS,
) -> Projection:
    """Project ``target`` onto ``family`` and report every local optimum found.

    Same arguments as :func:`project`, plus ``n_starts`` (random starts of the numerical
    projections, drawn as ``START_SCALE * N(0, 1)`` per parameter from ``seed``).
    Closed-form projections (``"full"``; ``"forward"`` onto ``"position"``/``"unigram"``)
    have exactly one optimum.

    Returns:
        A :class:`Projection`.
    """
    target, family, divergence = _check_arguments(target, family, divergence, tree)
    n_starts = check_positive_int(n_starts, "n_starts")
    rng = make_rng(seed)
    closed = family.closed_form(target, divergence)
    if closed is not None:
        optimum = LocalOptimum(closed, _divergence_of(target, closed, divergence), None, 1, True)
        return Projection(closed, optimum.kl, (optimum,), family.name, divergence, target)
    if divergence == "reverse":
        _check_support(target, family)
    tree = target.tree
    n_parameters = family.n_parameters(tree)
    if n_parameters == 0:  # a single member (one token): nothing to optimize
        starts = [(np.zeros(0), True)]
    else:
        starts = []
        for _ in range(n_starts):
            result = minimize(
                lambda theta: _value_and_gradient(target, family, divergence, theta),
                START_SCALE * rng.standard_normal(n_parameters),
                jac=True,
                method="BFGS",
                options=QUASI_NEWTON_OPTIONS,
            )
            starts.append(_polish(target, family, divergence, result.x))
    candidates = []
    for theta, converged in starts:
        pi = family.policy(tree, theta)
        candidates.append((pi, _divergence_of(target, pi, divergence), theta, converged))
    candidates.sort(key=lambda candidate: float(candidate[1].mean()))
    optima: list[LocalOptimum] = []
    for pi, kl, theta, converged in candidates:
        for k, optimum in enumerate(optima):
            if total_variation(pi, optimum.policy).max() < DISTINCT_OPTIMA_TV:
                optima[k] = LocalOptimum(
                    optimum.policy,
                    optimum.kl,
                    optimum.parameters,
                    optimum.n_starts + 1,
                    optimum.converged or converged,
                )
                break
        else:
            optima.append(LocalOptimum(pi, kl, theta, 1, converged))
    best = optima[0]
    return Projection(best.policy, best.kl, tuple(optima), family.name, divergence, target)


def project(
    target: Policy | np.ndarray,
    family: str | Family,
    divergence: str,
    *,
    tree: TokenTree | None = None,
    seed: int | np.random.Generator | None = 0,
) -> Policy:
    """The member of ``family`` closest to ``target`` in KL divergence.

        reverse:  argmin_{pi in family} mean_p KL(P_pi || target)   (mode-seeking; RLHF)
        forward:  argmin_{pi in family} mean_p KL(target || P_pi)   (mass-covering; MLE)

    Soft RL is the reverse projection of ``P* ∝ P_ref exp(r / beta)``: since
    ``KL(P_pi || P*) = (beta log Z - J(pi)) / beta``, the reverse projection of ``P*`` onto a
    family is the family's best policy for ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)``.

    The ``"full"`` family returns the target itself. The forward projection onto
    ``"position"`` and ``"unigram"`` is in closed form: the target's expected token counts
    per depth (resp. over all depths), weighted by its state occupancies. The reverse
    projection is non-convex; it runs BFGS with exact gradients from several random starts
    derived from ``seed``, polishes each end point by Newton steps in the natural-gradient
    metric, and returns the best (:func:`project_all` returns every distinct local optimum).

    Args:
        target: a Policy, or leaf log-probabilities ``(n_leaves,)`` (summing to 1 over each
            prompt's leaves; ``-inf`` allowed) together with ``tree=``.
        family: ``"full"``, ``"position"``, ``"unigram"``, or a :class:`Family` instance.
        divergence: ``"reverse"`` (KL(pi || target)) or ``"forward"`` (KL(target || pi)).
        tree: the TokenTree of an array target.
        seed: int, Generator or None: the random starts of a numerical projection.

    Returns:
        The projection, a :class:`Policy` on the target's tree.

    Raises:
        ValueError: unknown family or divergence (the valid ones are listed), an array
            target without ``tree`` or with a length other than ``tree.n_leaves``, leaf
            log-probabilities that do not normalize, or a reverse projection onto a
            parametric family of a target that gives some generation probability 0.
        TypeError: ``tree`` is not a TokenTree.
    """
    return project_all(target, family, divergence, tree=tree, seed=seed).policy
