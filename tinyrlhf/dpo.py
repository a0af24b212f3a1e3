"""Direct preference optimization, exactly: the DPO, IPO and hinge optima over all policies.

Beyond the lecture (sections 3-4 fit a reward, then solve the KL-regularized problem). Direct
preference optimization skips the reward: it fits the policy to the comparisons
``(s_0, y_c, y_r)`` through the log-ratio

    h(y_c, y_r) = log [pi(y_c) pi_ref(y_r) / (pi(y_r) pi_ref(y_c))],

minimizing the weighted sum over pairs of

    DPO    -log sigma(beta h)                     (Rafailov et al. 2023, eq. 7)
    IPO    (h - 1 / (2 beta))^2                   (Azar et al. 2023, "A general theoretical
                                                   paradigm ...", eq. 17; beta plays tau)
    hinge  max(0, 1 - beta h)                     (SLiC-HF: Zhao et al. 2023, eq. 2).

**The full policy class.** Any distribution over each prompt's completions that ``pi_ref``
can produce: ``log pi(y) = log pi_ref(y) + u(y) - log sum_y' pi_ref(y') e^{u(y')}`` with leaf
logits ``u`` (``-inf`` where ``pi_ref(y) = 0``). The normalizer cancels in ``h``, so
``h = u(y_c) - u(y_r)``: every loss is a convex function of differences of ``u``, and the
optimum's policy is ``pi ∝ pi_ref e^u``, i.e. :func:`~tinyrlhf.closed_form` under the
*implicit reward* ``beta u`` (whose subtree sums give the autoregressive policy). The penalty
``l2 > 0`` adds ``(l2 / 2) ||beta u||^2``, a ridge on the implicit reward.

**DPO = Bradley-Terry + RLHF.** With ``r = beta u`` the DPO objective is exactly the
Bradley-Terry objective ``sum_k w_k softplus(-(r(y_c) - r(y_r))) + (l2 / 2) ||r||^2`` of
:func:`~tinyrlhf.fit_bradley_terry`, so ``pi_DPO = closed_form(pi_ref, r_hat_BT, beta)``:
DPO computes the RLHF optimum under the fitted reward. In particular, for the population of
comparisons of a Bradley-Terry reward ``r`` over all pairs (weights ``q(y, y')
sigma(r(y) - r(y'))``, :func:`~tinyrlhf.population_preferences`), the loss of a pair
``{y, y'}`` is the cross-entropy between Bernoulli(``sigma(r(y) - r(y'))``) and
Bernoulli(``sigma(beta (u(y) - u(y')))``), minimized exactly when
``beta (u(y) - u(y')) = r(y) - r(y')``; all pairs being compared, ``beta u = r + const`` and

    pi_DPO ∝ pi_ref exp(r / beta) = the closed form (the seed's KKT solution).

**Identifiability.** The losses see only differences ``u(y_c) - u(y_r)``, so ``u`` is
determined up to a constant on each connected component of the comparison graph, and not
at all on completions never compared. Unlike the reward, the *policy* depends on these
constants when a prompt has several components. The returned optimum is the one that
gradient methods started at ``pi_ref`` (``u = 0``) converge to: ``u`` has zero mean on each
component and is 0 on never-compared completions (the convention of
:func:`~tinyrlhf.fit_bradley_terry`; with ``l2 > 0`` it is the unique optimum).

**The boundary.** If, in some component, a group of completions never beats another group
it is compared with (the directed "win graph" is not strongly connected; Ford 1957), DPO's
loss keeps decreasing as the losers' ``u`` goes to ``-inf``: the infimum is not attained and
DPO drives their probability to 0 whatever ``beta`` — the failure that motivated IPO
(Azar et al. 2023, section 4.2). IPO's squared loss and the hinge have finite optima. Then
(``loss="dpo"``, ``l2 = 0``) :func:`fit_policy_to_preferences` warns
(:class:`BoundaryOptimumWarning`), reports ``converged=False`` and the dominated
completions in ``info``, and returns the last iterate.

Solvers: DPO and IPO by Newton's method (``scipy.optimize.minimize``, ``trust-ncg``, exact
gradient and Hessian-vector products; IPO is quadratic, one step); the hinge with
``l2 = 0`` as a linear program (HiGHS), with ``l2 > 0`` through its box-constrained dual
``max_{0 <= alpha <= w} sum alpha - ||D^T alpha||^2 / (2 l2)``, ``u = D^T alpha / (l2 beta)``
(L-BFGS-B), ``D`` the pairs-by-leaves difference matrix, polished by solving the KKT
conditions of the active sets it reveals; converged means a duality gap below ``tol``.
"""

from __future__ import annotations

import numbers
import time
import warnings

import numpy as np
import scipy.sparse as sparse
from scipy.optimize import linprog, minimize
from scipy.sparse.csgraph import connected_components
from scipy.sparse.linalg import LinearOperator, minres
from scipy.special import expit, log_expit

from .policy import Policy
from .preferences import Preferences
from .solvers import Solution, closed_form
from .validation import check_beta, check_positive_int, make_rng

#: The loss names accepted by :func:`fit_policy_to_preferences`.
LOSSES = ("dpo", "ipo", "hinge")
#: Default cap on Newton (DPO, IPO) or L-BFGS-B (hinge dual) iterations.
DEFAULT_STEPS = 500
#: Largest number of full Newton steps that finish the trust-region solve (DPO, IPO).
POLISH_STEPS = 8
#: DPO/IPO converged: the last full Newton step changed no ``u`` (log-ratio) by more than this,
#: or every leaf's gradient is below ``tol`` times the total weight of its pairs.
NEWTON_STEP_TOL = 1e-9
#: Leaves whose pairs weigh less than this fraction of the heaviest leaf's pairs are left out of
#: the convergence tests: float64 rounding of the summed objective (relative 1e-16) leaves
#: their log-ratio undetermined by about 1e-16 / RESOLVABLE_WEIGHT, whatever the solver does
#: (population data from a peaked reference gives pair weights down to 1e-40).
RESOLVABLE_WEIGHT = 1e-12
#: Relative rise of the objective attributed to rounding when accepting a Newton step.
VALUE_ROUNDING = 1e-13
#: Bands ``|margin - 1| <= band`` tried, in order, to guess the pairs at the hinge's kink when
#: polishing the dual solution (``l2 > 0``; see ``_kkt_polish``).
ACTIVE_SET_BANDS = (1e-6, 1e-4, 1e-8, 1e-3)
#: Default tolerance: DPO/IPO have converged when every leaf's ``|dL/du|`` is below ``tol *
#: (total weight of the leaf's pairs) * (the loss's slope scale)`` or the last Newton step is
#: below :data:`NEWTON_STEP_TOL`; the hinge dual's relative duality gap must be below it.
DEFAULT_TOL = 1e-10


class BoundaryOptimumWarning(UserWarning):
    """The DPO loss has no minimizer: some completions are driven to probability 0."""


def preference_loss(
    ref: Policy,
    prefs: Preferences,
    leaf_logits: np.ndarray,
    *,
    loss: str = "dpo",
    beta: float,
    l2: float = 0.0,
) -> tuple[float, np.ndarray]:
    """The preference loss of the policy ``pi ∝ pi_ref e^u`` and its gradient in ``u``.

        L(u) = sum_k w_k l(h_k) + (l2 / 2) ||beta u||^2,   h_k = u(c_k) - u(r_k),
        dL/du = sum_k w_k l'(h_k) (e_{c_k} - e_{r_k}) + l2 beta^2 u,

    with ``l(h) = softplus(-beta h)`` (DPO), ``(h - 1/(2 beta))^2`` (IPO), or
    ``max(0, 1 - beta h)`` (hinge; its gradient is the subgradient with ``l'(1/beta) = 0``).

    Args:
        ref: the reference policy ``pi_ref``.
        prefs: the comparisons (each pair's leaves must have ``pi_ref > 0``).
        leaf_logits: ``(n_leaves,)`` finite ``u = log pi - log pi_ref`` (up to a constant
            per prompt); entries where ``pi_ref = 0`` are ignored.
        loss: ``"dpo"``, ``"ipo"`` or ``"hinge"``.
        beta: > 0.
        l2: ridge coefficient ``>= 0``.

    Returns:
        ``(value, gradient)``; ``gradient`` is ``(n_leaves,)``, 0 where ``pi_ref = 0``.
    """
    _check_ref(ref)
    chosen, rejected, weight = _check_prefs(ref, prefs)
    loss = _check_loss(loss)
    beta = check_beta(beta)
    l2 = _check_l2(l2)
    u = np.asarray(leaf_logits, dtype=np.float64)
    if u.shape != (ref.tree.n_leaves,):
        raise ValueError(
            f"leaf_logits must have shape ({ref.tree.n_leaves},) = (n_leaves,), got {u.shape}"
        )
    on_support = ref.leaf_log_probs() > -np.inf
    if not np.isfinite(u[on_support]).all():
        raise ValueError("leaf_logits must be finite where ref produces the leaf")
    u = np.where(on_support, u, 0.0)
    margin = u[chosen] - u[rejected]
    values, slopes = _loss_terms(loss, margin, beta)
    value = float(weight @ values) + 0.5 * l2 * beta**2 * float(u @ u)
    pull = weight * slopes  # w_k l'(h_k)
    gradient = (
        np.bincount(chosen, pull, minlength=u.size)
        - np.bincount(rejected, pull, minlength=u.size)
        + l2 * beta**2 * u
    )
    return value, np.where(on_support, gradient, 0.0)


def fit_policy_to_preferences(
    ref: Policy,
    prefs: Preferences,
    *,
    loss: str = "dpo",
    beta: float,
    l2: float = 0.0,
    steps: int | None = None,
    seed: int | np.random.Generator | None = 0,
    tol: float = DEFAULT_TOL,
) -> Solution:
    """Minimize the DPO, IPO or hinge loss exactly over the full policy class.

        u* = argmin_u sum_k w_k l(u(c_k) - u(r_k)) + (l2 / 2) ||beta u||^2,
        pi*  ∝ pi_ref e^{u*}  (per prompt)

    (module docstring: the losses, why DPO's optimum is the closed form under the fitted
    Bradley-Terry reward, the convention for unidentified constants, the boundary case).

    Args:
        ref: the reference policy ``pi_ref``.
        prefs: the comparisons; a pair of weight ``w`` counts ``w`` times; pairs of a leaf
            with itself carry no information. Leaves of pairs with ``w > 0`` must have
            ``pi_ref > 0`` (else ``h`` is undefined).
        loss: ``"dpo"``, ``"ipo"`` or ``"hinge"``.
        beta: finite and > 0 (IPO's ``tau``).
        l2: ridge coefficient on the implicit reward ``beta u``, ``>= 0``.
        steps: iteration cap of the Newton (DPO, IPO) or L-BFGS-B (hinge dual) solver
            (default :data:`DEFAULT_STEPS`); the hinge LP (``l2 = 0``) is solved exactly.
        seed: accepted for a uniform signature with the sampled solvers; the solvers here are
            deterministic, so it does not change the result.
        tol: tolerance of the solvers (see :data:`DEFAULT_TOL`), in (0, 1).

    Returns:
        A :class:`~tinyrlhf.Solution` with ``policy`` (``pi*``), ``method``
        (``"fit_policy_to_preferences[<loss>]"``), ``reward=None``, ``converged`` and
        ``info``: ``"implicit_reward"`` ``beta u*`` ``(n_leaves,)`` (0 where ``pi_ref = 0``),
        ``"leaf_log_probs"``, ``"loss"`` (weighted mean of the per-pair loss),
        ``"objective"`` (the minimized sum plus penalty), ``"grad_norm"`` (``max |dL/du|``;
        None for the non-smooth hinge),
        ``"boundary"``, ``"dominated_leaves"`` (leaves DPO drives to probability 0),
        ``"never_compared"``, ``"n_iter"``, ``"solver"``.

    Warns:
        BoundaryOptimumWarning: ``loss="dpo"``, ``l2 = 0`` and the infimum is not attained.

    Raises:
        TypeError, ValueError: bad arguments (an unknown loss lists the valid ones).
    """
    start = time.perf_counter()
    _check_ref(ref)
    tree = ref.tree
    chosen, rejected, weight = _check_prefs(ref, prefs)
    loss = _check_loss(loss)
    beta = check_beta(beta)
    l2 = _check_l2(l2)
    steps = DEFAULT_STEPS if steps is None else check_positive_int(steps, "steps")
    make_rng(seed)  # validated only: the exact solvers are deterministic
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < 1:
        raise ValueError(f"tol must be a real number in (0, 1), got {tol!r}")

    informative = (weight > 0) & (chosen != rejected)
    graph = _WinGraph(tree.n_leaves, chosen[informative], rejected[informative])
    compact = np.full(tree.n_leaves, -1, dtype=np.int64)
    compact[graph.compared] = np.arange(graph.compared.size)
    pair_chosen = compact[chosen[informative]]  # (k,) indices into the compared leaves
    pair_rejected = compact[rejected[informative]]
    pair_weight = weight[informative]
    component = graph.component[graph.compared]
    boundary = loss == "dpo" and l2 == 0 and graph.dominated.size > 0

    if graph.compared.size == 0:
        u_compared, converged, n_iter, solver = np.zeros(0), True, 0, "none"
    elif loss == "hinge":
        u_compared, converged, n_iter, solver = _solve_hinge(
            pair_chosen, pair_rejected, pair_weight, graph.compared.size, beta, l2, steps, tol
        )
    else:
        # At the boundary there is no minimizer: run all the steps (the last iterate then
        # shows how far DPO pushes the dominated leaves) instead of stopping on a gradient
        # that vanishes only because sigma(-beta h) underflows.
        u_compared, converged, n_iter, solver = _solve_smooth(
            loss,
            pair_chosen,
            pair_rejected,
            pair_weight,
            component,
            beta,
            l2,
            steps,
            0.0 if boundary else tol,
        )
    if l2 == 0 and u_compared.size:
        # the losses are invariant to a constant per component: take the zero-mean representative
        sizes = np.bincount(component, minlength=graph.n_components)
        means = np.bincount(component, u_compared, minlength=graph.n_components) / sizes
        u_compared = u_compared - means[component]
    u = np.zeros(tree.n_leaves)
    u[graph.compared] = u_compared
    on_support = ref.leaf_log_probs() > -np.inf
    u = np.where(on_support, u, 0.0)
    implicit_reward = beta * u
    objective, gradient = preference_loss(ref, prefs, u, loss=loss, beta=beta, l2=l2)
    total_weight = float(weight.sum())
    margin = u[chosen] - u[rejected]
    mean_loss = (
        float(weight @ _loss_terms(loss, margin, beta)[0]) / total_weight if total_weight else 0.0
    )
    if boundary:
        converged = False
        shown = ", ".join(
            "{} ({!r}, {!r})".format(leaf, *tree.leaf_text(int(leaf)))
            for leaf in graph.dominated[:3]
        )
        more = f" and {graph.dominated.size - 3} more" if graph.dominated.size > 3 else ""
        warnings.warn(
            "the DPO loss has no minimizer: leaves "
            f"[{shown}{more}] lose to a group of leaves they never beat, so DPO drives their "
            "probability to 0 whatever beta; returning the last iterate (converged=False). "
            "Use loss='ipo' or 'hinge', or l2 > 0, for a finite optimum.",
            BoundaryOptimumWarning,
            stacklevel=2,
        )
    solution = closed_form(ref, implicit_reward, beta)  # pi ∝ pi_ref e^{u}
    return Solution(
        policy=solution.policy,
        method=f"fit_policy_to_preferences[{loss}]",
        reference=ref,
        reward=None,
        beta=beta,
        converged=bool(converged),
        wall_time=time.perf_counter() - start,
        info={
            "implicit_reward": implicit_reward,
            "leaf_log_probs": solution.info["leaf_log_probs"],
            "loss": mean_loss,
            "objective": objective,
            "grad_norm": None if loss == "hinge" else float(np.abs(gradient).max(initial=0.0)),
            "boundary": boundary,
            "dominated_leaves": graph.dominated
            if loss == "dpo" and l2 == 0
            else np.zeros(0, np.int64),
            "never_compared": np.flatnonzero(on_support & (graph.component < 0)),
            "n_iter": n_iter,
            "solver": solver,
        },
    )


# ---------------------------------------------------------------------------- solvers
def _loss_terms(loss: str, margin: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair loss ``l(h)`` and slope ``l'(h)`` at the margins ``h``."""
    if loss == "dpo":
        # -log sigma(beta h), slope -beta sigma(-beta h)
        return -log_expit(beta * margin), -beta * expit(-beta * margin)
    if loss == "ipo":
        target = 1.0 / (2.0 * beta)
        return (margin - target) ** 2, 2.0 * (margin - target)
    active = 1.0 - beta * margin > 0  # hinge: max(0, 1 - beta h), slope -beta where active
    return np.where(active, 1.0 - beta * margin, 0.0), np.where(active, -beta, 0.0)


def _solve_smooth(
    loss: str,
    chosen: np.ndarray,
    rejected: np.ndarray,
    weight: np.ndarray,
    component: np.ndarray,
    beta: float,
    l2: float,
    steps: int,
    tol: float,
) -> tuple[np.ndarray, bool, int, str]:
    """Newton (trust-region CG) on ``sum w l(u_c - u_r) + (l2/2) beta^2 ||u||^2``.

    ``component``: ``(m,)`` connected-component label of each compared leaf. With ``l2 = 0``
    the objective is flat along a constant per component (the Hessian's null space); the
    iterates and Newton steps are projected onto the zero-mean subspace, where it is
    strictly convex when the minimizer exists.
    """
    m = component.size
    ridge = l2 * beta**2
    sizes = np.bincount(component)

    def center(values: np.ndarray) -> np.ndarray:  # remove the null space (l2 = 0)
        if l2 > 0:
            return values
        return values - (np.bincount(component, values, minlength=sizes.size) / sizes)[component]

    degree = np.bincount(chosen, weight, minlength=m) + np.bincount(rejected, weight, minlength=m)
    slope_scale = beta if loss == "dpo" else 1.0 / beta  # |l'| at the start, up to a factor
    # each leaf's gradient is measured against the weight of its own pairs: a rare leaf's
    # gradient is small because its pairs are light, not because it is optimal
    scale = degree * slope_scale + ridge  # (m,)
    resolvable = degree >= RESOLVABLE_WEIGHT * degree.max()  # (m,), see RESOLVABLE_WEIGHT

    def scaled_gradient(gradient: np.ndarray) -> float:
        return float(np.abs(gradient / scale)[resolvable].max())

    def differences(u: np.ndarray) -> np.ndarray:  # D u: (k,)
        return u[chosen] - u[rejected]

    def transpose(y: np.ndarray) -> np.ndarray:  # D^T y: (m,)
        return np.bincount(chosen, y, minlength=m) - np.bincount(rejected, y, minlength=m)

    def value_and_gradient(u: np.ndarray) -> tuple[float, np.ndarray]:
        values, slopes = _loss_terms(loss, differences(u), beta)
        value = float(weight @ values) + 0.5 * ridge * float(u @ u)
        return value, transpose(weight * slopes) + ridge * u

    def curvature(u: np.ndarray) -> np.ndarray:  # w l''(h): (k,)
        if loss == "dpo":  # l'' = beta^2 sigma(beta h) sigma(-beta h)
            margin = beta * differences(u)
            return weight * beta**2 * expit(margin) * expit(-margin)
        return weight * 2.0  # IPO: l'' = 2

    def hessian_product(u: np.ndarray, vector: np.ndarray) -> np.ndarray:
        # D^T diag(w l''(h)) D v + ridge v
        return transpose(curvature(u) * differences(vector)) + ridge * vector

    result = minimize(
        value_and_gradient,
        np.zeros(m),
        jac=True,
        hessp=hessian_product,
        method="trust-ncg",
        options={"gtol": tol * float(scale[resolvable].min()), "maxiter": steps},
    )
    # The trust region's ratio test is decided by rounding near the optimum, where it may stop
    # early: finish with full Newton steps (MINRES solves the singular but consistent system
    # when l2 = 0), kept unless they raise the objective beyond rounding; converged when a
    # step moves no log-probability by more than NEWTON_STEP_TOL (an error of the order of
    # its square remains). A gradient test alone would not do: a leaf that almost never wins
    # has tiny curvature, so a tiny gradient still allows a large error in its log-ratio.
    u = center(result.x)
    value, gradient = value_and_gradient(u)
    converged = False
    # The Newton system is solved on the resolvable leaves only (the others keep their value:
    # their curvature is below rounding, and the preconditioner would turn gradient noise
    # into arbitrarily large steps there).
    n_resolvable = int(resolvable.sum())

    def embed(v_resolvable: np.ndarray) -> np.ndarray:  # (n_resolvable,) -> (m,), zeros elsewhere
        full = np.zeros(m)
        full[resolvable] = v_resolvable
        return full

    # MINRES on an ill-conditioned system may make a step worse than the one before: keep the
    # iterate with the smallest scaled gradient seen.
    best_u, best_gradient = u, scaled_gradient(gradient)
    for _ in range(POLISH_STEPS):
        hessian = LinearOperator(
            (n_resolvable, n_resolvable),
            matvec=lambda v, u=u: hessian_product(u, embed(v))[resolvable],
        )
        # Jacobi preconditioner: leaves whose pairs are light (rare completions) have tiny
        # Hessian rows; scaling by the diagonal makes their directions visible to MINRES.
        weights = curvature(u)
        diagonal = np.bincount(chosen, weights, minlength=m)
        diagonal += np.bincount(rejected, weights, minlength=m) + ridge
        inverse = np.divide(1.0, diagonal, out=np.ones(m), where=diagonal > 0)[resolvable]
        preconditioner = LinearOperator(
            (n_resolvable, n_resolvable), matvec=lambda v, inverse=inverse: inverse * v
        )
        step = center(
            embed(minres(hessian, -gradient[resolvable], rtol=1e-14, M=preconditioner)[0])
        )
        trial = u + step
        trial_value, trial_gradient = value_and_gradient(trial)
        if trial_value > value + VALUE_ROUNDING * (1.0 + abs(value)):
            break  # not a descent step beyond rounding: keep the current point
        u, value, gradient = trial, trial_value, trial_gradient
        if float(np.abs(step)[resolvable].max()) <= NEWTON_STEP_TOL:
            converged = True
            best_u = u
            break
        if scaled_gradient(gradient) < best_gradient:
            best_u, best_gradient = u, scaled_gradient(gradient)
    converged = converged or best_gradient <= tol
    return best_u, converged, int(result.nit), "trust-ncg + newton"


def _solve_hinge(
    chosen: np.ndarray,
    rejected: np.ndarray,
    weight: np.ndarray,
    m: int,
    beta: float,
    l2: float,
    steps: int,
    tol: float,
) -> tuple[np.ndarray, bool, int, str]:
    """The hinge optimum: an LP (``l2 = 0``) or the box-constrained dual QP (``l2 > 0``)."""
    k = chosen.size
    rows = np.arange(k)
    # D: (k, m) sparse, row k = e_{c_k} - e_{r_k}
    difference = sparse.csr_array(
        (
            np.concatenate([np.ones(k), -np.ones(k)]),
            (np.concatenate([rows, rows]), np.concatenate([chosen, rejected])),
        ),
        shape=(k, m),
    )
    if l2 == 0:
        # min sum w xi  s.t.  xi_k >= 1 - beta (D u)_k, xi >= 0, u free; variables (u, xi)
        cost = np.concatenate([np.zeros(m), weight])
        upper = sparse.hstack([-beta * difference, -sparse.eye_array(k)], format="csr")
        result = linprog(
            cost,
            A_ub=upper,
            b_ub=-np.ones(k),
            bounds=[(None, None)] * m + [(0.0, None)] * k,
            method="highs",
        )
        if result.status != 0:  # pragma: no cover - the LP is feasible and bounded below by 0
            raise RuntimeError(f"the hinge LP failed: {result.message}")
        return result.x[:m], True, int(result.nit), "linprog"

    # dual: min_alpha ||D^T alpha||^2 / (2 l2) - sum alpha, 0 <= alpha <= w
    def dual(alpha: np.ndarray) -> tuple[float, np.ndarray]:
        pushed = difference.T @ alpha  # D^T alpha: (m,)
        return (
            float(pushed @ pushed) / (2 * l2) - float(alpha.sum()),
            difference @ pushed / l2 - 1.0,
        )

    def primal_of(alpha: np.ndarray) -> tuple[np.ndarray, float, float]:
        """``u = D^T alpha / (l2 beta)``, the primal value at ``u`` and the duality gap."""
        u = difference.T @ alpha / (l2 * beta)
        margin = beta * (difference @ u)
        primal = float(weight @ np.maximum(0.0, 1.0 - margin)) + 0.5 * l2 * beta**2 * float(u @ u)
        return u, primal, primal + dual(alpha)[0]  # gap = primal(u) - dual(alpha) >= 0

    result = minimize(
        dual,
        np.zeros(k),
        jac=True,
        method="L-BFGS-B",
        bounds=list(zip(np.zeros(k), weight, strict=True)),
        options={"maxiter": steps, "ftol": 0.0, "gtol": tol * beta, "maxcor": 30},
    )
    alpha = np.clip(result.x, 0.0, weight)
    u, primal, gap = primal_of(alpha)
    # Polish: guess from the approximate margins which pairs are active (margin < 1, alpha = w),
    # at the kink (margin = 1) or inactive (alpha = 0), solve the KKT conditions of that
    # guess exactly, and keep the result only if the duality gap falls.
    for band in ACTIVE_SET_BANDS:
        if gap <= tol * max(1.0, primal):
            break
        trial = _kkt_polish(difference, weight, beta * (difference @ u), beta, l2, band)
        trial_u, trial_primal, trial_gap = primal_of(trial)
        if trial_gap < gap:
            alpha, u, primal, gap = trial, trial_u, trial_primal, trial_gap
    return u, gap <= tol * max(1.0, primal), int(result.nit), "l-bfgs-b (dual) + kkt"


def _kkt_polish(
    difference: sparse.csr_array,
    weight: np.ndarray,
    margin: np.ndarray,
    beta: float,
    l2: float,
    band: float,
) -> np.ndarray:
    """Dual variables solving the hinge's KKT conditions for the active sets seen in ``margin``.

    With ``A = {margin < 1 - band}`` (``alpha = w``), ``Z = {|margin - 1| <= band}`` and the
    rest inactive (``alpha = 0``), the optimum is ``u = u_A + D_Z^+ (1/beta - D_Z u_A)``,
    ``u_A = D_A^T w_A / (l2 beta)`` (the closest point to ``u_A`` with margin exactly 1 on
    ``Z``), and ``alpha_Z`` in ``[0, w_Z]`` must satisfy ``D_Z^T alpha_Z = l2 beta (u - u_A)``:
    found by a linear program minimizing the l1 residual (HiGHS).
    """
    active = margin < 1.0 - band
    kink = np.abs(margin - 1.0) <= band
    alpha = np.where(active, weight, 0.0)
    if not kink.any():
        return alpha
    base = difference.T @ alpha / (l2 * beta)  # u_A: (m,)
    rows = difference[np.flatnonzero(kink)]  # D_Z: (z, m)
    correction = np.linalg.lstsq(rows.toarray(), 1.0 / beta - rows @ base, rcond=None)[0]
    target = l2 * beta * correction  # D_Z^T alpha_Z must equal this: (m,)
    z, m = rows.shape
    # min sum s  s.t.  -s <= D_Z^T alpha_Z - target <= s,  0 <= alpha_Z <= w_Z,  s >= 0
    transpose = rows.T.tocsr()
    identity = sparse.eye_array(m, format="csr")
    result = linprog(
        np.concatenate([np.zeros(z), np.ones(m)]),
        A_ub=sparse.vstack(
            [sparse.hstack([transpose, -identity]), sparse.hstack([-transpose, -identity])],
            format="csr",
        ),
        b_ub=np.concatenate([target, -target]),
        bounds=[(0.0, float(w)) for w in weight[kink]] + [(0.0, None)] * m,
        method="highs",
    )
    if result.status != 0:  # pragma: no cover - always feasible (alpha_Z = 0, s = |target|)
        return alpha
    alpha[kink] = np.clip(result.x[:z], 0.0, weight[kink])
    return alpha


# ---------------------------------------------------------------------------- helpers
class _WinGraph:
    """Components of the comparison graph and the leaves DPO drives to probability 0."""

    def __init__(self, n_leaves: int, winner: np.ndarray, loser: np.ndarray) -> None:
        wins = sparse.csr_array(
            (np.ones(winner.size), (winner, loser)), shape=(n_leaves, n_leaves)
        )
        _, weak = connected_components(wins, directed=True, connection="weak")
        _, strong = connected_components(wins, directed=True, connection="strong")
        compared_mask = np.zeros(n_leaves, dtype=bool)
        compared_mask[winner] = True
        compared_mask[loser] = True
        self.compared = np.flatnonzero(compared_mask)
        labels, inverse = np.unique(weak[self.compared], return_inverse=True)
        self.n_components = int(labels.size)
        self.component = np.full(n_leaves, -1, dtype=np.int64)  # (n_leaves,), -1: never compared
        self.component[self.compared] = inverse
        # A strong component with an arc into it from another strong component loses to a
        # group it never beats: DPO sends the log-ratio between the two groups to infinity.
        cross = strong[winner] != strong[loser]
        beaten = np.unique(strong[loser[cross]])
        self.dominated = self.compared[np.isin(strong[self.compared], beaten)]


def _check_ref(ref: object) -> None:
    if not isinstance(ref, Policy):
        raise TypeError(f"ref must be a tinyrlhf.Policy, got {type(ref).__name__}")


def _check_prefs(ref: Policy, prefs: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(prefs, Preferences):
        raise TypeError(f"prefs must be a tinyrlhf.Preferences, got {type(prefs).__name__}")
    prefs.check(ref.tree)
    log_ref = ref.leaf_log_probs()
    used = prefs.weight > 0
    for field in ("chosen", "rejected"):
        leaves = getattr(prefs, field)
        bad = np.flatnonzero(used & np.isneginf(log_ref[leaves]))
        if bad.size:
            k = int(bad[0])
            raise ValueError(
                f"prefs pair {k}: its {field} leaf {int(leaves[k])} "
                f"{ref.tree.leaf_text(int(leaves[k]))!r} has probability 0 under ref, so the "
                "log-ratio h is undefined; drop such pairs (or give them weight 0)"
            )
    return prefs.chosen, prefs.rejected, prefs.weight


def _check_loss(loss: object) -> str:
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    return str(loss)


def _check_l2(l2: object) -> float:
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real):
        raise TypeError(f"l2 must be a real number >= 0, got {l2!r}")
    value = float(l2)
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"l2 must be finite and >= 0 (a ridge on the implicit reward), got {l2!r}"
        )
    return value
