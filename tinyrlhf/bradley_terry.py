"""The Bradley-Terry reward estimate: maximum likelihood = forward-KL projection (lecture section 3).

The lecture fits the reward by projecting the preference distribution of the true reward
``r+`` onto the Bradley-Terry family in forward KL, which is maximum likelihood:

    r_hat_BT = argmin_r KL(P_{r+} || P_r) = argmin_r E_D[-log sigma(r(s_H^+) - r(s_H^-))].

On a weighted dataset of pairs ``k = (c_k, r_k, w_k)`` (chosen leaf, rejected leaf, weight)
with margins ``Delta_k = r(c_k) - r(r_k)`` this module minimizes the convex function

    L(r) = sum_k w_k l(Delta_k) + (l2 / 2) ||r||^2,        l(x) = -log sigma(x) = softplus(-x),

    grad L   = sum_k w_k l'(Delta_k) (e_{c_k} - e_{r_k}) + l2 r,
    hess L   = sum_k w_k l''(Delta_k) (e_{c_k} - e_{r_k})(e_{c_k} - e_{r_k})^T + l2 I,

with ``l'(x) = -sigma(-x)`` and ``l''(x) = sigma(x) sigma(-x)``: a graph Laplacian of the
comparison graph with edge weights ``w l''(Delta)``, plus ``l2 I``.

**One Newton for every pairwise loss.** :func:`minimize_pairwise` minimizes this function
for any convex loss ``l`` of the margin given with ``l'`` and ``l''`` (a
:class:`PairwiseLoss`, as choix shares one optimizer across its models):
:func:`fit_bradley_terry` passes :data:`BRADLEY_TERRY`, and direct preference optimization
(:mod:`tinyrlhf.dpo`) passes the IPO loss, or fits Bradley-Terry itself (DPO *is*
Bradley-Terry on the implicit reward ``beta log(pi / pi_ref)``). The Newton step solves the
Laplacian system by Jacobi-preconditioned conjugate gradients with sparse products (no
dense BLAS call, so the fit does not depend on OpenBLAS threading), followed by Armijo
backtracking.

**Certificate.** The fit reports the per-leaf stationarity residual

    residual = max_i |grad_i L| / (s * W_i + l2),    W_i = sum of the weights of leaf i's pairs,

with ``s = sup |l'|`` (1 for Bradley-Terry): the fraction of leaf ``i``'s pull that is left
unbalanced, scale-free, so that a leaf whose pairs all weigh 1e-30 (a completion the
sampling policy almost never draws) is held to the same relative standard as the others.
``converged`` is ``residual <= tol``. A test on ``max |grad L|`` would pass at once on such a
leaf whatever its reward; one on the Newton step alone passes when the leaf's curvature
``w l''`` underflows (its step is then its tiny gradient). After the residual is met the
iteration continues while full Newton steps keep shrinking, to ``max |step| <= tol``.

Identifiability. ``L`` only sees differences of rewards that are compared, so with
``l2 = 0`` adding a constant to every reward of one connected component of the comparison
graph changes nothing; the fit reports the representative with zero mean on every
component, and 0 on leaves that were never compared. (With ``l2 > 0`` the optimum has these
properties by itself: summing the stationarity condition over a component gives
``l2 * sum_component r = 0``.) The unregularized maximum exists, and is then unique up to
these constants, iff the directed "win graph" of every component is strongly connected:
however a component is split in two groups, each group beats the other at least once
(Zermelo 1929, Ford 1957, Hunter 2004). Otherwise the likelihood keeps increasing as the
rewards of a group that never loses go to ``+inf``, and an ``l2 > 0`` is needed.

References:
    E. Zermelo, "Die Berechnung der Turnier-Ergebnisse als ein Maximumproblem der
    Wahrscheinlichkeitsrechnung", Math. Z. 29 (1929).
    L. R. Ford Jr., "Solution of a ranking problem from binary comparisons", Amer. Math.
    Monthly 64 (1957).
    D. R. Hunter, "MM algorithms for generalized Bradley-Terry models", Ann. Statist. 32
    (2004).
    S. C. Eisenstat and H. F. Walker, "Choosing the forcing terms in an inexact Newton
    method", SIAM J. Sci. Comput. 17 (1996).
    J. Nocedal and S. J. Wright, "Numerical Optimization", 2nd ed. (2006), ch. 3 and 7.
    L. Maystre, choix (github.com/lucasmaystre/choix): ``opt_pairwise`` minimizes the same
    function with ``alpha = l2 / 2``; ``benchmarks/bradley_terry.py`` compares the two.
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sparse
from scipy.sparse.csgraph import connected_components
from scipy.special import expit, log_expit

from .preferences import Preferences, preference_probability
from .tree import TokenTree
from .validation import check_leaf_array, check_positive_int, check_tree, read_only

#: Default ridge coefficient: the MAP estimate under a standard-normal prior
#: ``r ~ N(0, I / l2)`` on each reward (the penalty is ``(l2 / 2) ||r||^2``). Bradley-Terry
#: rewards are in logits, where a gap of 3 already means a 95% preference, so a prior
#: standard deviation of 1 is of the order of the rewards it regularizes; it keeps the fit
#: finite when the MLE does not exist (sampled data often has a leaf compared once, and
#: won) and shrinks rarely compared leaves toward their component's mean instead of to
#: +-inf, which RLHF would exploit. Each comparison adds curvature ``sigma' <= 1/4`` per
#: leaf, so the prior stops mattering after a few dozen comparisons of a leaf. On the demo
#: pipeline (``tinyrlhf pipeline``) it gave the smallest regret at every dataset size among
#: ``l2`` in {1e-3, 1e-2, 1e-1, 1}. ``l2 = 0`` is the exact MLE, when it exists.
DEFAULT_L2 = 1.0
#: Default tolerance of the per-leaf stationarity residual (module docstring): converged when
#: every leaf's gradient is at most ``1e-8`` of its pairs' total weight. The iteration then
#: goes on while full Newton steps keep shrinking, down to ``max |step| <= tol`` logits (the
#: error after such a step is of order ``tol**2``), but never below rounding: groups of
#: leaves joined only by pairs ``Delta`` logits apart are determined to about
#: ``eps * e^|Delta|`` (``1e-8`` at ``|Delta| = 18``).
DEFAULT_TOL = 1e-8
#: Armijo sufficient-decrease constant of the backtracking line search.
ARMIJO = 1e-4
#: Relative change of ``L`` below which it is rounding noise (64 float64 ulps); the line
#: search then accepts a step that reduces the residual instead (the objective cannot see
#: leaves whose pairs weigh less than ``1e-14`` of the total; their residual can).
ROUNDING = 64 * np.finfo(np.float64).eps
#: The line search gives up below this step length (no representable progress).
MIN_STEP = 2.0**-40
#: Cap on conjugate-gradient iterations per Newton step (CG ends in ``m`` steps in exact
#: arithmetic; on random comparison graphs it needs a few dozen).
CG_MAX_ITER = 1000
#: Tightest relative accuracy asked of a CG solve (the forcing term's floor).
CG_MIN_FORCING = 1e-12


@dataclass(frozen=True)
class PairwiseLoss:
    """A convex loss ``l(x)`` of the margin ``x = r(c) - r(r)`` with its derivatives.

    Attributes:
        name: a label.
        value: ``l(x)``, elementwise.
        slope: ``l'(x)``.
        curvature: ``l''(x) >= 0``.
        slope_scale: ``s`` in the residual ``max_i |grad_i| / (s W_i + l2)``: the typical
            size of ``|l'|`` (``sup |l'|`` for bounded slopes).
    """

    name: str
    value: Callable[[np.ndarray], np.ndarray]
    slope: Callable[[np.ndarray], np.ndarray]
    curvature: Callable[[np.ndarray], np.ndarray]
    slope_scale: float


def _bt_slope(margin: np.ndarray) -> np.ndarray:
    # l'(Delta) = -sigma(-Delta) = -P(rejected beats chosen)
    return -preference_probability(-margin, 0.0)


def _bt_curvature(margin: np.ndarray) -> np.ndarray:
    # l''(Delta) = sigma(Delta) sigma(-Delta)
    return expit(margin) * expit(-margin)


#: The Bradley-Terry loss ``l(x) = -log sigma(x)`` (``softplus(-x)``, exact for every x).
BRADLEY_TERRY = PairwiseLoss(
    "bradley_terry", lambda x: -log_expit(x), _bt_slope, _bt_curvature, 1.0
)


@dataclass(frozen=True, eq=False)
class PairwiseFit:
    """The result of :func:`minimize_pairwise`.

    Attributes:
        reward: ``(n_leaves,)`` the minimizer ``r``; zero mean on every connected component
            of the comparison graph, 0 on leaves never compared.
        residual: ``max_i |grad_i L| / (s W_i + l2)`` over compared leaves (module
            docstring): the per-leaf stationarity residual.
        tolerance: the ``tol`` it is compared with.
        converged: ``residual <= tolerance``.
        n_iter: Newton steps taken.
        newton_step: ``max |d|`` of the last Newton step ``d = -H^-1 grad L`` computed.
        grad_norm: ``max |grad L|`` at ``reward``.
    """

    reward: np.ndarray
    residual: float
    tolerance: float
    converged: bool
    n_iter: int
    newton_step: float
    grad_norm: float


@dataclass(frozen=True, eq=False)
class BradleyTerryFit:
    """The result of :func:`fit_bradley_terry`.

    Attributes:
        reward: ``(n_leaves,)`` ``r_hat``; zero mean on every connected component of the
            comparison graph, 0 on leaves never compared.
        nll: ``sum_k w_k softplus(-(r_hat(c_k) - r_hat(r_k)))`` at the fit (no penalty).
        objective: ``nll + (l2 / 2) ||r_hat||^2``, the minimized value.
        l2: the ridge coefficient used.
        residual: the per-leaf stationarity residual ``max_i |grad_i L| / (W_i + l2)``,
            ``W_i`` the total weight of leaf ``i``'s pairs (module docstring): the largest
            fraction of a leaf's pull left unbalanced at the fit.
        tolerance: the ``tol`` the residual is compared with.
        converged: ``residual <= tolerance``.
        n_iter: Newton steps taken.
        grad_norm: ``max |grad L|`` at the fit.
        newton_step: ``max |d|`` of the last Newton step ``d = -H^-1 grad L``: the predicted
            distance of the previous iterate to the optimum.
        component: ``(n_leaves,)`` int64 label ``0..n_components-1`` of each leaf's
            connected component of the comparison graph; ``-1`` for leaves never compared.
        n_components: number of connected components among compared leaves.
        never_compared: sorted leaf indices that appear in no pair of positive weight
            (pairs of a leaf with itself do not count).
        mle_exists: whether the unregularized maximum exists (every component's win graph
            is strongly connected).
        n_pairs: number of pairs in the data (including zero-weight and tied ones).
        wall_time: seconds.
    """

    reward: np.ndarray
    nll: float
    objective: float
    l2: float
    residual: float
    tolerance: float
    converged: bool
    n_iter: int
    grad_norm: float
    newton_step: float
    component: np.ndarray
    n_components: int
    never_compared: np.ndarray
    mle_exists: bool
    n_pairs: int
    wall_time: float

    @property
    def components(self) -> tuple[np.ndarray, ...]:
        """The leaf indices of each connected component, ``n_components`` sorted arrays."""
        if self.n_components == 0:
            return ()
        order = np.argsort(self.component, kind="stable")  # leaves grouped by label
        sizes = np.bincount(self.component[self.component >= 0], minlength=self.n_components)
        start = self.never_compared.size  # label -1 sorts first
        return tuple(np.split(order[start:], np.cumsum(sizes)[:-1]))

    def __repr__(self) -> str:
        return (
            f"BradleyTerryFit(n_pairs={self.n_pairs}, l2={self.l2:g}, nll={self.nll:.10g}, "
            f"converged={self.converged}, residual={self.residual:.2e}, n_iter={self.n_iter}, "
            f"components={self.n_components}, never_compared={self.never_compared.size}, "
            f"mle_exists={self.mle_exists})"
        )


# --------------------------------------------------------------------------- the function
def bradley_terry_nll(
    tree: TokenTree, prefs: Preferences, reward: np.ndarray, *, l2: float = 0.0
) -> float:
    """``L(r) = sum_k w_k softplus(-(r(c_k) - r(r_k))) + (l2 / 2) ||r||^2``.

    Args:
        tree: the token tree.
        prefs: the comparisons (checked against ``tree``).
        reward: ``(n_leaves,)`` finite rewards ``r``.
        l2: ridge coefficient ``>= 0`` (0: the plain negative log-likelihood).

    Returns:
        The value, a float ``>= 0``.
    """
    chosen, rejected, weight = _pairs(tree, prefs)
    reward = check_leaf_array(tree, reward, "reward")
    return _objective(
        BRADLEY_TERRY, reward[chosen] - reward[rejected], weight, reward, _check_l2(l2)
    )


def bradley_terry_gradient(
    tree: TokenTree, prefs: Preferences, reward: np.ndarray, *, l2: float = 0.0
) -> np.ndarray:
    """``grad L(r) = -sum_k w_k sigma(-Delta_k) (e_{c_k} - e_{r_k}) + l2 r``, ``(n_leaves,)``."""
    chosen, rejected, weight = _pairs(tree, prefs)
    reward = check_leaf_array(tree, reward, "reward")
    return _gradient(BRADLEY_TERRY, chosen, rejected, weight, reward, _check_l2(l2))


def bradley_terry_hessian(
    tree: TokenTree, prefs: Preferences, reward: np.ndarray, *, l2: float = 0.0
) -> sparse.csr_array:
    """``hess L(r)``: the comparison graph's Laplacian weighted by ``w sigma'(Delta)``, plus ``l2 I``.

    Returns:
        A ``(n_leaves, n_leaves)`` symmetric positive semi-definite ``scipy.sparse.csr_array``.
    """
    chosen, rejected, weight = _pairs(tree, prefs)
    reward = check_leaf_array(tree, reward, "reward")
    l2 = _check_l2(l2)
    curvature = weight * _bt_curvature(reward[chosen] - reward[rejected])  # w sigma'(Delta), (n,)
    n = tree.n_leaves
    off_diagonal = sparse.coo_array((-curvature, (chosen, rejected)), shape=(n, n))
    degree = np.bincount(chosen, curvature, minlength=n) + np.bincount(
        rejected, curvature, minlength=n
    )
    # L = D - A - A^T; a pair of a leaf with itself adds s to D and -2s to A + A^T: net 0
    hessian = off_diagonal + off_diagonal.T + sparse.diags_array(degree + l2)
    return sparse.csr_array(hessian)


class PreferenceOptimizationWarning(UserWarning):
    """A preference fit (:func:`fit_bradley_terry`, :func:`tinyrlhf.fit_policy_to_preferences`)
    stopped with ``residual > tolerance``: its answer is not certified."""


# -------------------------------------------------------------------------------- the fit
def fit_bradley_terry(
    tree: TokenTree,
    prefs: Preferences,
    *,
    l2: float = DEFAULT_L2,
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
) -> BradleyTerryFit:
    r"""Fit ``r_hat = argmin_r sum_k w_k softplus(-(r(c_k) - r(r_k))) + (l2 / 2) ||r||^2``.

    :func:`minimize_pairwise` with the loss :data:`BRADLEY_TERRY`: Newton's method with
    Jacobi-preconditioned conjugate gradients and Armijo backtracking, certified by the
    per-leaf stationarity residual (module docstring, which also gives the function, its
    derivatives and the identifiability conventions of the result).

    .. math::

        \hat r = \operatorname*{arg\,min}_r \sum_k w_k \log\big(1 + e^{-(r(c_k) - r(r_k))}\big)
        + \frac{\ell_2}{2} \|r\|^2.

    Args:
        tree: the token tree.
        prefs: the comparisons (checked against ``tree``).
        l2: ridge coefficient ``>= 0`` (default :data:`DEFAULT_L2`: a standard-normal prior
            on each reward). ``l2 = 0`` computes the maximum-likelihood estimate
            and requires it to exist.
        tol: tolerance of the residual (see :data:`DEFAULT_TOL`), in (0, 1).
        max_iter: the largest number of Newton steps.

    Returns:
        :class:`BradleyTerryFit`; ``.reward`` is ``(n_leaves,)``.

    Raises:
        TypeError: bad argument types.
        ValueError: bad arguments; or ``l2 = 0`` while the maximum-likelihood estimate does
            not exist (the message names the group of leaves that never loses).

    Warns:
        PreferenceOptimizationWarning: the fit stopped with ``residual > tol``
            (``converged`` is False).
    """
    start = time.perf_counter()
    chosen, rejected, weight = _pairs(tree, prefs)
    l2 = _check_l2(l2)
    tol = _check_tol(tol)
    max_iter = check_positive_int(max_iter, "max_iter")
    graph = _comparison_graph(tree.n_leaves, chosen, rejected, weight)
    if l2 == 0 and not graph.mle_exists:
        raise ValueError(_no_mle_message(tree, graph))
    fit = minimize_pairwise(
        tree.n_leaves, chosen, rejected, weight, BRADLEY_TERRY, l2=l2, tol=tol, max_iter=max_iter
    )
    if not fit.converged:
        warnings.warn(
            f"fit_bradley_terry stopped after {fit.n_iter} Newton step(s) with residual "
            f"{fit.residual:.3g} > tol = {tol:g}: the fit is not certified; raise max_iter "
            "(or l2, if the comparison graph is nearly disconnected)",
            PreferenceOptimizationWarning,
            stacklevel=2,
        )
    margin = fit.reward[chosen] - fit.reward[rejected]
    return BradleyTerryFit(
        reward=fit.reward,
        nll=_objective(BRADLEY_TERRY, margin, weight, fit.reward, 0.0),
        objective=_objective(BRADLEY_TERRY, margin, weight, fit.reward, l2),
        l2=l2,
        residual=fit.residual,
        tolerance=tol,
        converged=fit.converged,
        n_iter=fit.n_iter,
        grad_norm=fit.grad_norm,
        newton_step=fit.newton_step,
        component=read_only(graph.component),
        n_components=graph.n_components,
        never_compared=read_only(np.flatnonzero(graph.component < 0)),
        mle_exists=graph.mle_exists,
        n_pairs=len(prefs),
        wall_time=time.perf_counter() - start,
    )


# -------------------------------------------------------------------- the shared Newton
def minimize_pairwise(
    n_leaves: int,
    chosen: np.ndarray,
    rejected: np.ndarray,
    weight: np.ndarray,
    loss: PairwiseLoss,
    *,
    l2: float,
    tol: float = DEFAULT_TOL,
    max_iter: int = 100,
) -> PairwiseFit:
    """Minimize ``L(r) = sum_k w_k l(r(c_k) - r(r_k)) + (l2 / 2) ||r||^2`` by Newton's method.

    The solver shared by :func:`fit_bradley_terry` and :mod:`tinyrlhf.dpo` (module
    docstring). Ties (``c = r``) and zero weights carry no information and are dropped;
    repeats of an ordered pair are merged by adding their weights (``L`` depends on the data
    only through them). The minimizer must exist (``l2 > 0``, or ``l`` bounded below with a
    minimizer on every component: callers check).

    Args:
        n_leaves: number of leaves; indices are in ``0..n_leaves-1``.
        chosen, rejected: ``(n,)`` int leaf indices of each pair.
        weight: ``(n,)`` weights ``>= 0``.
        loss: the loss ``l`` with ``l'`` and ``l''``.
        l2: ridge coefficient ``>= 0``.
        tol: tolerance of the residual, in (0, 1).
        max_iter: the largest number of Newton steps.

    Returns:
        :class:`PairwiseFit`; ``.reward`` is ``(n_leaves,)``, read-only.
    """
    informative = (weight > 0) & (chosen != rejected)
    compared = np.unique(np.concatenate([chosen[informative], rejected[informative]]))
    m = compared.size
    compact = np.full(n_leaves, -1, dtype=np.int64)
    compact[compared] = np.arange(m)
    keys, pair_of = np.unique(
        compact[chosen[informative]] * m + compact[rejected[informative]], return_inverse=True
    )
    merged_weight = np.bincount(pair_of, weight[informative], minlength=keys.size)
    problem = _Problem(keys // m, keys % m, merged_weight, m, loss, l2)
    fit = _newton(problem, tol, max_iter)
    reward = np.zeros(n_leaves)
    reward[compared] = fit.reward
    return PairwiseFit(
        reward=read_only(reward),
        residual=fit.residual,
        tolerance=tol,
        converged=fit.converged,
        n_iter=fit.n_iter,
        newton_step=fit.newton_step,
        grad_norm=fit.grad_norm,
    )


class _Problem:
    """``L`` on the ``m`` compared leaves (compact indices, no ties, distinct pairs, ``w > 0``).

    Holds the comparison graph's components, the residual's denominators ``s W_i + l2`` and
    the sparsity pattern of the Hessian, laid out once in CSR order: one off-diagonal entry
    per distinct edge ``{u, v}`` and its transpose, plus the diagonal.
    """

    def __init__(
        self,
        chosen: np.ndarray,
        rejected: np.ndarray,
        weight: np.ndarray,
        m: int,
        loss: PairwiseLoss,
        l2: float,
    ) -> None:
        self.chosen, self.rejected, self.weight, self.m = chosen, rejected, weight, m
        self.loss, self.l2 = loss, l2
        graph = sparse.csr_array((np.ones(chosen.size), (chosen, rejected)), shape=(m, m))
        self.n_components, self.component = connected_components(graph, directed=False)
        self.size = np.bincount(self.component, minlength=self.n_components)
        pair_weight = np.bincount(chosen, weight, minlength=m) + np.bincount(
            rejected, weight, minlength=m
        )  # W_i: (m,)
        self.scale = loss.slope_scale * pair_weight + l2  # residual denominators: (m,)
        low, high = np.minimum(chosen, rejected), np.maximum(chosen, rejected)
        edges, self.edge_of_pair = np.unique(low * m + high, return_inverse=True)  # (E,), (n,)
        self.edge_u, self.edge_v = edges // m, edges % m
        rows = np.concatenate([self.edge_u, self.edge_v, np.arange(m)])  # (2E + m,)
        cols = np.concatenate([self.edge_v, self.edge_u, np.arange(m)])
        self.csr_order = np.lexsort((cols, rows))
        self.indices = cols[self.csr_order]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))])

    def margin(self, reward: np.ndarray) -> np.ndarray:  # Delta_k = r(c_k) - r(r_k): (n,)
        return reward[self.chosen] - reward[self.rejected]

    def objective(self, reward: np.ndarray, margin: np.ndarray) -> float:
        return _objective(self.loss, margin, self.weight, reward, self.l2)

    def gradient(self, reward: np.ndarray, margin: np.ndarray) -> np.ndarray:
        pull = self.weight * self.loss.slope(margin)  # w_k l'(Delta_k): (n,)
        return (
            np.bincount(self.chosen, pull, minlength=self.m)
            - np.bincount(self.rejected, pull, minlength=self.m)
            + self.l2 * reward
        )

    def residual(self, gradient: np.ndarray) -> float:  # max_i |grad_i| / (s W_i + l2)
        return float(np.max(np.abs(gradient) / self.scale))

    def hessian(self, margin: np.ndarray) -> tuple[sparse.csr_array, np.ndarray]:
        """The Laplacian with edge weights ``w l''(Delta)``, plus ``l2 I``, and its diagonal."""
        curvature = self.weight * self.loss.curvature(margin)  # (n,)
        edge_weight = np.bincount(self.edge_of_pair, curvature, minlength=self.edge_u.size)
        diagonal = (
            np.bincount(self.edge_u, edge_weight, minlength=self.m)
            + np.bincount(self.edge_v, edge_weight, minlength=self.m)
            + self.l2
        )
        data = np.concatenate([-edge_weight, -edge_weight, diagonal])[self.csr_order]
        matrix = sparse.csr_array((data, self.indices, self.indptr), shape=(self.m, self.m))
        return matrix, diagonal

    def center(self, values: np.ndarray) -> np.ndarray:
        """Subtract each component's mean (a constant per component changes no margin)."""
        means = np.bincount(self.component, values, minlength=self.n_components) / self.size
        return values - means[self.component]

    def consistent(self, gradient: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
        """Remove the rounding of ``sum_C grad`` (0 in exact arithmetic on every component C
        for a centered ``r``), in proportion to each leaf's curvature ``diagonal``: the
        Newton system is then consistent, and a leaf whose gradient is 1e-26 keeps it
        (subtracting the plain mean, rounding of order 1e-18, would swamp it)."""
        total = np.bincount(self.component, gradient, minlength=self.n_components)
        mass = np.bincount(self.component, diagonal, minlength=self.n_components)
        share = np.divide(total, mass, out=np.zeros_like(total), where=mass > 0)
        return gradient - diagonal * share[self.component]


@dataclass(frozen=True)
class _NewtonResult:
    reward: np.ndarray
    residual: float
    converged: bool
    n_iter: int
    newton_step: float
    grad_norm: float


def _newton(problem: _Problem, tol: float, max_iter: int) -> _NewtonResult:
    """Damped Newton on :class:`_Problem`, in the subspace of rewards with zero mean on every
    component (it holds the optimum for every ``l2 >= 0``: module docstring).

    Stops when the residual is ``<= tol`` after a full Newton step of at most ``tol``, or when
    no step decreases ``L`` (or, once ``L`` is flat to rounding, the residual), or after
    ``max_iter`` steps.
    """
    reward = np.zeros(problem.m)
    margin = problem.margin(reward)
    value = problem.objective(reward, margin)
    gradient = problem.gradient(reward, margin)
    residual = first_residual = problem.residual(gradient) if problem.m else 0.0
    n_iter, step_norm = 0, 0.0
    while n_iter < max_iter and residual > 0:
        forcing = min(0.5, max(np.sqrt(residual / first_residual), CG_MIN_FORCING))
        step = _newton_direction(problem, margin, gradient, forcing)
        step_norm = float(np.max(np.abs(step)))
        # <grad, d> < 0 in exact arithmetic; near the optimum its computed value is rounding
        # (a leaf's gradient of 1e-26 is lost in the sum): Armijo then asks for no increase
        slope = min(_dot(gradient, step), 0.0)
        accepted = _line_search(problem, reward, value, residual, step, slope)
        if accepted is None:
            break
        reward, margin, value, gradient, length = accepted
        residual = problem.residual(gradient)
        n_iter += 1
        if residual <= tol and step_norm <= tol and length == 1.0:
            break
    return _NewtonResult(
        reward=problem.center(reward) if problem.l2 == 0 else reward,
        residual=residual,
        converged=residual <= tol,
        n_iter=n_iter,
        newton_step=step_norm,
        grad_norm=float(np.max(np.abs(gradient), initial=0.0)),
    )


def _newton_direction(
    problem: _Problem, margin: np.ndarray, gradient: np.ndarray, forcing: float
) -> np.ndarray:
    """The Newton step ``d = -H^-1 grad L``, centered on every component.

    ``H`` is singular along the constant of each component when ``l2 = 0`` (and nearly so for
    a small ``l2``); the right-hand side is made consistent (:meth:`_Problem.consistent`),
    Jacobi-preconditioned CG from 0 stays in the range, and the step is centered.
    """
    matrix, diagonal = problem.hessian(margin)
    # Jacobi preconditioner D^-1; a zero diagonal needs every l'' of a leaf to underflow,
    # and then the identity stands in for it.
    inverse_diagonal = np.divide(1.0, diagonal, out=np.ones(problem.m), where=diagonal > 0)
    rhs = -problem.consistent(gradient, diagonal)
    return problem.center(_pcg(matrix, rhs, inverse_diagonal, forcing))


def _pcg(
    matrix: sparse.csr_array, rhs: np.ndarray, inverse_diagonal: np.ndarray, forcing: float
) -> np.ndarray:
    """Jacobi-preconditioned conjugate gradients for ``matrix x = rhs`` from ``x = 0``.

    Stops when the preconditioned residual ``D^-1 (rhs - matrix x)`` is at most ``forcing``
    times its initial value in the max norm: ``(D^-1 r)_i`` is leaf ``i``'s own error scale
    (its residual over its curvature), so a leaf with 1e-30 of the weight is solved as
    accurately as the others (a test on ``||r||_2`` would ignore it). Products are sparse and
    inner products are ``np.sum`` of elementwise products (pairwise summation; no BLAS).
    """
    solution = np.zeros_like(rhs)
    residual = rhs.copy()
    preconditioned = inverse_diagonal * residual
    target = forcing * float(np.max(np.abs(preconditioned)))
    direction = preconditioned.copy()
    rho = _dot(residual, preconditioned)
    for _ in range(min(2 * rhs.size + 10, CG_MAX_ITER)):
        if float(np.max(np.abs(preconditioned))) <= target:
            break
        product = matrix @ direction
        curvature = _dot(direction, product)
        if not curvature > 0:
            break
        length = rho / curvature
        solution += length * direction
        residual -= length * product
        preconditioned = inverse_diagonal * residual
        rho_next = _dot(residual, preconditioned)
        direction = preconditioned + (rho_next / rho) * direction
        rho = rho_next
    return solution


def _line_search(
    problem: _Problem,
    reward: np.ndarray,
    value: float,
    residual: float,
    step: np.ndarray,
    slope: float,
) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float] | None:
    """Backtracking from the full step: Armijo ``L(r + t d) <= L(r) + c t <grad, d>``, or, when
    ``L`` is unchanged to rounding, a smaller residual. None if no step length passes."""
    length = 1.0
    while length >= MIN_STEP:
        trial = reward + length * step
        if problem.l2 > 0:
            trial = problem.center(trial)  # the optimum has zero mean per component
        trial_margin = problem.margin(trial)
        trial_value = problem.objective(trial, trial_margin)
        if trial_value <= value + ARMIJO * length * slope:
            return trial, trial_margin, trial_value, problem.gradient(trial, trial_margin), length
        if trial_value <= value + ROUNDING * abs(value):
            trial_gradient = problem.gradient(trial, trial_margin)
            if problem.residual(trial_gradient) < residual:
                return trial, trial_margin, trial_value, trial_gradient, length
        length /= 2
    return None


# ---------------------------------------------------------------------------- helpers
def _dot(first: np.ndarray, second: np.ndarray) -> float:
    # pairwise summation of the products; np.dot would call a (possibly threaded) BLAS ddot
    return float(np.sum(first * second))


def _pairs(tree: TokenTree, prefs: Preferences) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tree = check_tree(tree)
    if not isinstance(prefs, Preferences):
        raise TypeError(f"prefs must be a tinyrlhf.Preferences, got {type(prefs).__name__}")
    prefs.check(tree)
    return prefs.chosen, prefs.rejected, prefs.weight


def _check_l2(l2: object) -> float:
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real):
        raise TypeError(f"l2 must be a real number >= 0, got {l2!r}")
    value = float(l2)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"l2 must be finite and >= 0 (the ridge coefficient), got {l2!r}")
    return value


def _check_tol(tol: object) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < float(tol) < 1:
        raise ValueError(f"tol must be a real number in (0, 1), got {tol!r}")
    return float(tol)


def _objective(
    loss: PairwiseLoss, margin: np.ndarray, weight: np.ndarray, reward: np.ndarray, l2: float
) -> float:
    # sum_k w_k l(Delta_k) + (l2 / 2) ||r||^2
    return float(np.sum(weight * loss.value(margin)) + 0.5 * l2 * np.sum(reward * reward))


def _gradient(
    loss: PairwiseLoss,
    chosen: np.ndarray,
    rejected: np.ndarray,
    weight: np.ndarray,
    reward: np.ndarray,
    l2: float,
) -> np.ndarray:
    m = reward.shape[0]
    pull = weight * loss.slope(reward[chosen] - reward[rejected])  # w l'(Delta), (n,)
    return (
        np.bincount(chosen, pull, minlength=m)
        - np.bincount(rejected, pull, minlength=m)
        + l2 * reward
    )


@dataclass(frozen=True)
class _Graph:
    winner: np.ndarray  # (n_informative,) arcs winner -> loser of the win graph
    loser: np.ndarray
    compared: np.ndarray  # sorted indices of compared leaves
    component: np.ndarray  # (n_leaves,) label, -1 if never compared
    n_components: int
    strong: np.ndarray  # (n_leaves,) strongly connected component of the win graph
    mle_exists: bool
    dominated: np.ndarray  # sorted leaves whose strong component loses to another one


def _comparison_graph(
    n_leaves: int, chosen: np.ndarray, rejected: np.ndarray, weight: np.ndarray
) -> _Graph:
    """Components of the comparison graph and strong components of the win graph.

    The win graph has an arc ``c -> r`` ("c beats r") for every pair of positive weight.
    """
    informative = (weight > 0) & (chosen != rejected)
    winner, loser = chosen[informative], rejected[informative]
    wins = sparse.csr_array((np.ones(winner.size), (winner, loser)), shape=(n_leaves, n_leaves))
    _, weak = connected_components(wins, directed=True, connection="weak")
    _, strong = connected_components(wins, directed=True, connection="strong")
    compared_mask = np.zeros(n_leaves, dtype=bool)
    compared_mask[winner] = True
    compared_mask[loser] = True
    compared = np.flatnonzero(compared_mask)
    labels, inverse = np.unique(weak[compared], return_inverse=True)
    component = np.full(n_leaves, -1, dtype=np.int64)
    component[compared] = inverse
    # Strong components refine weak ones; equal counts <=> each weak one is strongly connected.
    mle_exists = np.unique(strong[compared]).size == labels.size
    # a strong component with an arc into it from another one loses to a group it never beats
    cross = strong[winner] != strong[loser]
    dominated = compared[np.isin(strong[compared], strong[loser[cross]])]
    return _Graph(
        winner, loser, compared, component, int(labels.size), strong, bool(mle_exists), dominated
    )


def _no_mle_message(tree: TokenTree, graph: _Graph) -> str:
    """Explain why the MLE does not exist: name a group that never loses (or never wins)."""
    compared = graph.compared
    weak = graph.component[compared]
    strong = graph.strong[compared]
    # weak components that hold more than one strong component of the win graph
    pairs = np.unique(np.stack([weak, strong]), axis=1)  # (2, distinct (weak, strong))
    split = int(np.flatnonzero(np.bincount(pairs[0], minlength=graph.n_components) > 1)[0])
    members = compared[weak == split]
    groups, size = np.unique(graph.strong[members], return_counts=True)  # its strong parts
    # Arcs between different groups of the component: winner group -> loser group. The
    # condensation is acyclic, so some group never loses ("source") and some never wins.
    cross = graph.strong[graph.winner] != graph.strong[graph.loser]
    loses = np.isin(groups, graph.strong[graph.loser[cross]])
    wins = np.isin(groups, graph.strong[graph.winner[cross]])
    # report the smallest group that never loses or never wins
    candidates = np.flatnonzero(~loses | ~wins)
    best = candidates[np.argmin(size[candidates])]
    group = members[graph.strong[members] == groups[best]]
    if not loses[best]:
        behaviour, direction = "never loses to", "+inf"
    else:
        behaviour, direction = "never beats", "-inf"
    shown = ", ".join(
        "leaf {} ({!r}, {!r})".format(leaf, *tree.leaf_text(int(leaf))) for leaf in group[:3]
    )
    more = f" and {group.size - 3} more" if group.size > 3 else ""
    return (
        "the maximum-likelihood reward does not exist, so l2=0 cannot be used: the win graph "
        "of every connected component of the comparison graph must be strongly connected "
        "(Ford 1957; Hunter 2004), but in a component of "
        f"{members.size} compared leaves the group of {group.size} leaf(s) [{shown}{more}] "
        f"{behaviour} the other {members.size - group.size}, so the likelihood keeps "
        f"increasing as their rewards go to {direction}. Pass l2 > 0 (the default is "
        f"l2={DEFAULT_L2:g}) for a regularized fit, or collect comparisons that this group "
        f"{'loses' if direction == '+inf' else 'wins'}."
    )
