"""Direct preference optimization, exactly: the DPO, IPO and hinge optima over all policies.

Beyond the lecture (sections 3-4 fit a reward, then solve the KL-regularized problem). Direct
preference optimization skips the reward: it fits the policy to the comparisons
``(s_0, y_c, y_r)`` through the log-ratio

    m(y_c, y_r) = log [pi(y_c) pi_ref(y_r) / (pi(y_r) pi_ref(y_c))],

minimizing the weighted sum over pairs of

    DPO    -log sigma(beta m)                     (Rafailov et al. 2023, eq. 7)
    IPO    (m - 1 / (2 beta))^2                   (Azar et al. 2023, "A general theoretical
                                                   paradigm ...", eq. 17; beta plays tau)
    hinge  max(0, 1 - beta m)                     (SLiC-HF: Zhao et al. 2023, eq. 2).

**The full policy class.** Any distribution over each prompt's completions that ``pi_ref``
can produce: ``log pi(y) = log pi_ref(y) + u(y) - log sum_y' pi_ref(y') e^{u(y')}`` with leaf
logits ``u`` (``-inf`` where ``pi_ref(y) = 0``). The normalizer cancels in ``m``, so
``m = u(y_c) - u(y_r)``: every loss is a convex function of differences of ``u``, and the
optimum's policy is ``pi ∝ pi_ref e^u``, i.e. :func:`~tinyrlhf.closed_form` under the
*implicit reward* ``r = beta u`` (whose subtree sums give the autoregressive policy). The
penalty ``l2 > 0`` adds ``(l2 / 2) ||beta u||^2 = (l2 / 2) ||r||^2``, a ridge on ``r``. In
``r`` the three losses are ``l(Delta)`` of the margin ``Delta = r(y_c) - r(y_r)``:
``-log sigma(Delta)``, ``(Delta - 1/2)^2 / beta^2`` and ``max(0, 1 - Delta)``.

**DPO = Bradley-Terry + RLHF, in code.** In ``r`` the DPO objective *is* the Bradley-Terry
objective ``sum_k w_k softplus(-Delta_k) + (l2 / 2) ||r||^2``, so :func:`fit_policy_to_preferences`
computes ``r_hat = fit_bradley_terry(prefs, l2)`` and returns ``closed_form(pi_ref, r_hat,
beta)``, i.e. ``pi_DPO ∝ pi_ref exp(r_hat / beta)``: DPO computes the RLHF optimum under the
fitted reward. In particular, for the population of comparisons of a Bradley-Terry reward
``r`` over all pairs (:func:`~tinyrlhf.population_preferences`) the fit is ``r`` up to a
constant per prompt, and ``pi_DPO`` is the closed form ``pi_ref exp(r / beta) / Z``. IPO runs
the same Newton solver (:func:`~tinyrlhf.bradley_terry.minimize_pairwise`) with its own loss.

**Identifiability.** The losses see only differences ``u(y_c) - u(y_r)``, so ``u`` is
determined up to a constant on each connected component of the comparison graph, and not
at all on completions never compared. Unlike the reward, the *policy* depends on these
constants when a prompt has several components. The returned optimum is the one that
gradient methods started at ``pi_ref`` (``u = 0``) converge to: ``u`` has zero mean on each
component and is 0 on never-compared completions (the convention of
:func:`~tinyrlhf.fit_bradley_terry`; with ``l2 > 0`` it is the unique optimum).

**The boundary.** If, in some component, a group of completions never beats another group
it is compared with (the directed "win graph" is not strongly connected; Ford 1957), DPO's
loss (``l2 = 0``) keeps decreasing as the losers' ``u`` goes to ``-inf``: the infimum is not
attained (the failure that motivated IPO, Azar et al. 2023, section 4.2). Its value is the
sum over the strongly connected components ``S`` of the win graph of the Bradley-Terry
optimum of the pairs inside ``S`` (each such fit exists: ``S`` is strongly connected), and
every pair between two components, won by the same side every time, contributes its
infimum 0 as the margin goes to ``+inf``. Every minimizing sequence therefore drives the
*dominated* completions (those in a component that loses to another component) to
probability 0, whatever ``beta``, and :func:`fit_policy_to_preferences` returns exactly that
limit: ``u = -inf`` (probability 0) on dominated completions, and on the others the
Bradley-Terry fit of the pairs inside their component (zero mean per component). It warns
(:class:`BoundaryOptimumWarning`) and reports ``boundary = True`` and
``dominated_leaves`` (:class:`PreferenceSolution`); ``converged`` certifies the within-component fits. IPO's
squared loss and the hinge have finite optima.

**Solvers and certificates** (``Solution.residual`` against ``Solution.tolerance``;
``converged`` is ``residual <= tolerance``, and otherwise a
:class:`PreferenceOptimizationWarning` is issued):

- DPO and IPO: Newton's method (:func:`~tinyrlhf.bradley_terry.minimize_pairwise`); the
  residual is the per-leaf stationarity residual ``max_i |dLoss/dr_i| / (s W_i + l2)``
  (``W_i`` the weight of leaf ``i``'s pairs, ``s = 1`` for DPO, ``1 / beta^2`` for IPO), the
  same in ``u`` (both sides scale by ``beta``).
- hinge, ``l2 = 0``: a linear program (HiGHS). The residual is the larger of the relative
  duality gap ``(Loss - 1^T alpha) / max(1, Loss)`` (``Loss`` the primal value) and the dual
  infeasibility ``max |D^T alpha| / max(1, max w)`` at HiGHS's multipliers ``alpha``.
- hinge, ``l2 > 0``: a convex quadratic program, solved exactly by a finite active-set
  method on its box-constrained dual ``min_{0 <= alpha <= w} ||D^T alpha||^2 / (2 l2) -
  1^T alpha``, ``r = D^T alpha / l2`` (``D`` the pairs-by-leaves difference matrix;
  Nocedal & Wright 2006, Algorithm 16.3, with zero-curvature directions followed to a
  bound since the dual is only semidefinite). The residual is the relative duality gap
  ``(Loss(r) - (1^T alpha - ||D^T alpha||^2 / (2 l2))) / max(1, |Loss(r)|) >= 0``, an upper bound
  on the relative suboptimality of ``r``.

References:
    R. Rafailov et al., "Direct preference optimization", NeurIPS 2023.
    M. G. Azar et al., "A general theoretical paradigm to understand learning from human
    preferences", 2023.
    Y. Zhao et al., "SLiC-HF: sequence likelihood calibration with human feedback", 2023.
    L. R. Ford Jr., "Solution of a ranking problem from binary comparisons", Amer. Math.
    Monthly 64 (1957).
    J. Nocedal and S. J. Wright, "Numerical Optimization", 2nd ed. (2006), ch. 16.
"""

from __future__ import annotations

import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sparse
from scipy.optimize import linprog
from scipy.special import expit, log_expit, logsumexp

from .bradley_terry import (
    BRADLEY_TERRY,
    PairwiseLoss,
    PreferenceOptimizationWarning,
    _comparison_graph,
    fit_bradley_terry,
    minimize_pairwise,
)
from .policy import Policy
from .preferences import Preferences
from .solvers import Solution, closed_form
from .validation import check_beta, check_positive_int

#: The loss names accepted by :func:`fit_policy_to_preferences`.
LOSSES = ("dpo", "ipo", "hinge")
#: Default cap on Newton steps (DPO, IPO) or active-set iterations (hinge, ``l2 > 0``).
DEFAULT_STEPS = 500
#: Default tolerance of ``Solution.residual`` (module docstring: the per-leaf stationarity
#: residual for DPO/IPO, the relative duality gap or KKT residual for the hinge).
DEFAULT_TOL = 1e-8
#: Eigenvalues of the free block of the hinge dual's Hessian below this fraction of the
#: largest count as zero (the dual is semidefinite: rank ``<= m - 1`` for ``k`` pairs).
NULL_EIGENVALUE = 1e-10
#: Sweeps of dual coordinate descent that warm-start the hinge's active-set method.
WARM_START_SWEEPS = 100
#: A warm-start dual variable within this fraction of its box ``[0, w]`` starts on the bound.
BOUND_SNAP = 1e-9
#: Hinge dual optimality: a bound's multiplier (``margin - 1``, in logits of the implicit
#: reward) must have the right sign up to this.
MULTIPLIER_TOL = 1e-10


class BoundaryOptimumWarning(UserWarning):
    """The DPO loss has no minimizer: some completions are driven to probability 0."""


@dataclass(frozen=True, eq=False)
class PreferenceSolution(Solution):
    """The :class:`~tinyrlhf.Solution` of :func:`fit_policy_to_preferences`.

    Besides those of :class:`~tinyrlhf.Solution` (``leaf_log_probs`` is ``log pi*`` per
    leaf, ``steps_taken`` the Newton or active-set iterations), it has these attributes
    (``info`` holds the same values under the keys in parentheses).

    Attributes:
        implicit_reward: ``(n_leaves,)`` ``beta u*`` (``"implicit_reward"``): 0 where
            ``pi_ref = 0``, ``-inf`` on dominated leaves at the DPO boundary.
        boundary: DPO's infimum is not attained and ``policy`` is the limit
            (``"boundary"``; module docstring, "The boundary").
        dominated_leaves: int leaf indices that DPO (``l2 = 0``) drives to probability 0
            (``"dominated_leaves"``; empty for IPO, the hinge and ``l2 > 0``).
        never_compared: int indices of leaves ``pi_ref`` produces that no pair of weight
            ``> 0`` compares (``"never_compared"``; their ``u`` is 0).
        mean_loss: weighted mean of the per-pair loss at the answer (``"loss"``).
        penalized_loss: the minimized ``sum_k w_k l(m_k) + (l2 / 2) ||beta u||^2`` (at the
            boundary its infimum) (``"objective"``).
        loss_gradient_norm: ``max |dLoss/du|`` at the answer (``"grad_norm"``); None for the
            non-smooth hinge.
    """

    implicit_reward: np.ndarray | None = None
    boundary: bool = False
    dominated_leaves: np.ndarray | None = None
    never_compared: np.ndarray | None = None
    mean_loss: float | None = None
    penalized_loss: float | None = None
    loss_gradient_norm: float | None = None


#: The ``info`` key of each typed field of :class:`PreferenceSolution` (its name before the
#: field existed; ``info`` keeps them for display and old code).
INFO_KEYS = {
    "leaf_log_probs": "leaf_log_probs",
    "steps_taken": "n_iter",
    "implicit_reward": "implicit_reward",
    "boundary": "boundary",
    "dominated_leaves": "dominated_leaves",
    "never_compared": "never_compared",
    "mean_loss": "loss",
    "penalized_loss": "objective",
    "loss_gradient_norm": "grad_norm",
}


def _ipo_loss(beta: float) -> PairwiseLoss:
    """IPO in the implicit reward ``r = beta u``: ``l(Delta) = (Delta - 1/2)^2 / beta^2``."""
    scale = 1.0 / beta**2
    return PairwiseLoss(
        "ipo",
        lambda x: scale * (x - 0.5) ** 2,
        lambda x: 2.0 * scale * (x - 0.5),
        lambda x: np.full(np.shape(x), 2.0 * scale),
        scale,  # |l'(0)|
    )


def preference_loss(
    ref: Policy,
    prefs: Preferences,
    leaf_logits: np.ndarray,
    beta: float,
    *,
    loss: str = "dpo",
    l2: float = 0.0,
) -> tuple[float, np.ndarray]:
    """The preference loss of the policy ``pi ∝ pi_ref e^u`` and its gradient in ``u``.

        Loss(u) = sum_k w_k l(m_k) + (l2 / 2) ||beta u||^2,   m_k = u(c_k) - u(r_k),
        dLoss/du = sum_k w_k l'(m_k) (e_{c_k} - e_{r_k}) + l2 beta^2 u,

    with ``l(m) = softplus(-beta m)`` (DPO), ``(m - 1/(2 beta))^2`` (IPO), or
    ``max(0, 1 - beta m)`` (hinge; its gradient is the subgradient with ``l'(1/beta) = 0``).

    Args:
        ref: the reference policy ``pi_ref``.
        prefs: the comparisons (each pair's leaves must have ``pi_ref > 0``).
        leaf_logits: ``(n_leaves,)`` finite ``u = log pi - log pi_ref`` (up to a constant
            per prompt); entries where ``pi_ref = 0`` are ignored.
        beta: > 0 (positional or keyword, README "Conventions").
        loss: ``"dpo"``, ``"ipo"`` or ``"hinge"``.
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
    pull = weight * slopes  # w_k l'(m_k)
    gradient = (
        np.bincount(chosen, pull, minlength=u.size)
        - np.bincount(rejected, pull, minlength=u.size)
        + l2 * beta**2 * u
    )
    return value, np.where(on_support, gradient, 0.0)


def fit_policy_to_preferences(
    ref: Policy,
    prefs: Preferences,
    beta: float,
    *,
    loss: str = "dpo",
    l2: float = 0.0,
    steps: int | None = None,
    tol: float = DEFAULT_TOL,
) -> PreferenceSolution:
    r"""Minimize the DPO, IPO or hinge loss exactly over the full policy class.

        u* = argmin_u sum_k w_k l(u(c_k) - u(r_k)) + (l2 / 2) ||beta u||^2,
        pi*  ∝ pi_ref e^{u*} = closed_form(pi_ref, beta u*, beta)   (per prompt)

    .. math::

        & u^* = \operatorname*{arg\,min}_u \sum_k w_k\, \ell\big(u(c_k) - u(r_k)\big)
        + \frac{\ell_2}{2} \|\beta u\|^2,

        & \pi^* \propto \pi_{\mathrm{ref}}\, e^{u^*} \quad \text{(per prompt)}.

    (module docstring: the losses, DPO = Bradley-Terry + closed form, the convention for
    unidentified constants, the boundary case and each solver's certificate).

    Args:
        ref: the reference policy ``pi_ref``.
        prefs: the comparisons; a pair of weight ``w`` counts ``w`` times; pairs of a leaf
            with itself carry no information. Leaves of pairs with ``w > 0`` must have
            ``pi_ref > 0`` (else the log-ratio ``m`` is undefined).
        beta: finite and > 0 (IPO's ``tau``); positional or keyword (README "Conventions").
        loss: ``"dpo"``, ``"ipo"`` or ``"hinge"``.
        l2: ridge coefficient on the implicit reward ``beta u``, ``>= 0``.
        steps: cap on Newton steps (DPO, IPO) or active-set iterations (hinge with
            ``l2 > 0``; default :data:`DEFAULT_STEPS`); the hinge LP (``l2 = 0``) has none.
        tol: tolerance of ``residual`` (see :data:`DEFAULT_TOL`), in (0, 1).

    Returns:
        A :class:`PreferenceSolution` (a :class:`~tinyrlhf.Solution`) with ``policy``
        (``pi*``), ``method`` (``"fit_policy_to_preferences[<loss>]"``), ``reward=None``,
        ``residual`` (the solver's certificate, module docstring), ``tolerance``,
        ``converged``, ``steps_taken``, ``leaf_log_probs`` and the typed fields
        ``implicit_reward`` (``beta u*``, ``(n_leaves,)``; 0 where ``pi_ref = 0``, ``-inf``
        on dominated leaves at the DPO boundary), ``boundary``, ``dominated_leaves`` (leaves
        DPO drives to probability 0), ``never_compared``, ``mean_loss`` (weighted mean of the
        per-pair loss), ``penalized_loss`` (the minimized sum plus penalty; at the boundary
        its infimum) and ``loss_gradient_norm`` (``max |dLoss/du|``; None for the non-smooth
        hinge); ``info`` repeats them under their old keys (``"implicit_reward"``,
        ``"leaf_log_probs"``, ``"boundary"``, ``"dominated_leaves"``, ``"never_compared"``,
        ``"loss"``, ``"objective"``, ``"grad_norm"``, ``"n_iter"``) and adds ``"solver"``.

    Warns:
        BoundaryOptimumWarning: ``loss="dpo"``, ``l2 = 0`` and the infimum is not attained
            (the limit policy is returned).
        PreferenceOptimizationWarning: ``converged`` is False.

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
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < 1:
        raise ValueError(f"tol must be a real number in (0, 1), got {tol!r}")
    graph = _comparison_graph(tree.n_leaves, chosen, rejected, weight)
    boundary = loss == "dpo" and l2 == 0 and graph.dominated.size > 0
    dominated = graph.dominated if boundary else None  # leaves at probability 0 (the limit)
    if boundary:
        _warn_boundary(tree, graph.dominated)
    fit = _solve(tree, prefs, graph, boundary, loss, beta, l2, tol, steps)
    converged = bool(fit.residual <= tol)
    if not converged:
        _warn_unconverged(loss, fit, tol)
    on_support = ref.leaf_log_probs() > -np.inf
    reward = np.where(on_support, fit.reward, 0.0)  # the implicit reward r = beta u
    policy, leaf_log_probs = _policy(ref, reward, dominated, beta)
    # at the boundary the pairs between strong components are won at margin +inf: loss 0
    cross = graph.strong[chosen] != graph.strong[rejected] if boundary else None
    fields: dict[str, Any] = {  # PreferenceSolution's typed fields
        "leaf_log_probs": leaf_log_probs,
        "steps_taken": fit.n_iter,
        "implicit_reward": np.where(_mask(reward.size, dominated), -np.inf, reward),
        "boundary": boundary,
        "dominated_leaves": graph.dominated
        if loss == "dpo" and l2 == 0
        else np.zeros(0, np.int64),
        "never_compared": np.flatnonzero(on_support & (graph.component < 0)),
        **_summary(prefs, reward, cross, loss, beta, l2),
    }
    return PreferenceSolution(
        policy=policy,
        method=f"fit_policy_to_preferences[{loss}]",
        reference=ref,
        reward=None,
        beta=beta,
        converged=converged,
        residual=float(fit.residual),
        tolerance=float(tol),
        wall_time=time.perf_counter() - start,
        **fields,
        info={INFO_KEYS[name]: value for name, value in fields.items()} | {"solver": fit.solver},
    )


def _solve(tree, prefs, graph, boundary, loss, beta, l2, tol, steps) -> _Fit:
    """Dispatch to the solver of ``loss`` (module docstring, "Solvers and certificates")."""
    chosen, rejected, weight = prefs.chosen, prefs.rejected, prefs.weight
    if boundary:
        return _boundary_fit(graph, chosen, rejected, weight, tol, steps)
    if loss == "dpo":  # DPO is the Bradley-Terry fit of r = beta u (and its certificate)
        with warnings.catch_warnings():  # reported once, by fit_policy_to_preferences
            warnings.simplefilter("ignore", PreferenceOptimizationWarning)
            bt = fit_bradley_terry(tree, prefs, l2=l2, tol=tol, max_iter=steps)
        return _Fit(np.array(bt.reward), bt.residual, bt.n_iter, "fit_bradley_terry")
    if loss == "ipo":  # the same Newton with IPO's loss
        ipo = minimize_pairwise(
            tree.n_leaves,
            chosen,
            rejected,
            weight,
            _ipo_loss(beta),
            l2=l2,
            tol=tol,
            max_iter=steps,
        )
        return _Fit(np.array(ipo.reward), ipo.residual, ipo.n_iter, "newton (ipo)")
    return _solve_hinge(tree.n_leaves, chosen, rejected, weight, l2, steps)


@dataclass(frozen=True)
class _Fit:
    reward: np.ndarray  # (n_leaves,) the implicit reward r = beta u (finite)
    residual: float
    n_iter: int
    solver: str


def _mask(n: int, leaves: np.ndarray | None) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    if leaves is not None:
        mask[leaves] = True
    return mask


def _boundary_fit(graph, chosen, rejected, weight, tol, steps) -> _Fit:
    """Bradley-Terry on the pairs inside each strong component of the win graph (module
    docstring, "The boundary"): its value is DPO's infimum."""
    inside = graph.strong[chosen] == graph.strong[rejected]
    fit = minimize_pairwise(
        graph.component.size,
        chosen[inside],
        rejected[inside],
        weight[inside],
        BRADLEY_TERRY,
        l2=0.0,
        tol=tol,
        max_iter=steps,
    )
    return _Fit(np.array(fit.reward), fit.residual, fit.n_iter, "bradley-terry newton (limit)")


def _warn_unconverged(loss: str, fit: _Fit, tol: float) -> None:
    if fit.solver == "linprog":  # HiGHS stops at its own tolerances: steps has no effect
        accepted = 10.0 ** np.ceil(np.log10(fit.residual))  # the next power of ten up
        loosen = f"accept this residual with tol={accepted:.0e}, or " if accepted < 1 else ""
        advice = (
            "steps does not apply to the LP (l2 = 0), which HiGHS solves to its own "
            f"tolerances; {loosen}use l2 > 0 "
            "(e.g. l2=1e-3: the ridge hinge, a QP the active set solves exactly; a "
            "smaller l2 needs more steps)"
        )
    else:  # Newton (DPO, IPO, the boundary limit) or the active set (hinge, l2 > 0)
        advice = "raise steps"
    warnings.warn(
        f"fit_policy_to_preferences(loss={loss!r}) stopped with residual {fit.residual:.3g} "
        f"> tol={tol:g} after {fit.n_iter} iterations ({fit.solver}); the returned policy is "
        f"not certified optimal: {advice}",
        PreferenceOptimizationWarning,
        stacklevel=3,
    )


def _warn_boundary(tree, dominated: np.ndarray) -> None:
    shown = ", ".join(
        "{} ({!r}, {!r})".format(leaf, *tree.leaf_text(int(leaf))) for leaf in dominated[:3]
    )
    more = f" and {dominated.size - 3} more" if dominated.size > 3 else ""
    warnings.warn(
        f"the DPO loss has no minimizer: leaves [{shown}{more}] lose to a group of leaves "
        "they never beat, so every minimizing sequence drives their probability to 0 "
        "whatever beta; returning that limit (probability exactly 0, implicit reward -inf). "
        "Use loss='ipo' or 'hinge', or l2 > 0, for a finite optimum.",
        BoundaryOptimumWarning,
        stacklevel=3,
    )


def _policy(
    ref: Policy, reward: np.ndarray, dominated: np.ndarray | None, beta: float
) -> tuple[Policy, np.ndarray]:
    """``pi ∝ pi_ref e^{r / beta}`` (the closed form); with ``dominated`` leaves set to
    probability 0 (the boundary limit), whose rows the closed form under ``r`` fills where
    no leaf below is left."""
    solution = closed_form(ref, reward, beta)
    assert solution.leaf_log_probs is not None  # the closed form always sets it
    if dominated is None or dominated.size == 0:
        return solution.policy, solution.leaf_log_probs
    tree = ref.tree
    logits = np.where(_mask(reward.size, dominated), -np.inf, ref.leaf_log_probs() + reward / beta)
    per_prompt = logits.reshape(tree.n_prompts, -1)  # (P, A**H)
    leaf_log_probs = (per_prompt - logsumexp(per_prompt, axis=1, keepdims=True)).reshape(-1)
    policy = Policy.from_leaf_log_probs(tree, leaf_log_probs, fallback=solution.policy)
    return policy, leaf_log_probs


def _summary(
    prefs: Preferences,
    reward: np.ndarray,
    cross: np.ndarray | None,
    loss: str,
    beta: float,
    l2: float,
) -> dict:
    """``mean_loss`` (weighted mean per pair), ``penalized_loss`` and ``loss_gradient_norm``
    (in ``u``) at the answer; at the boundary the limit, where the ``cross`` pairs contribute
    0."""
    chosen, rejected, weight = prefs.chosen, prefs.rejected, prefs.weight
    u = reward / beta
    terms, slopes = _loss_terms(loss, u[chosen] - u[rejected], beta)
    if cross is not None:
        terms, slopes = np.where(cross, 0.0, terms), np.where(cross, 0.0, slopes)
    penalty = 0.5 * l2 * beta**2 * float(np.sum(u * u))
    pull = weight * slopes  # w_k l'(m_k)
    gradient = (
        np.bincount(chosen, pull, minlength=u.size)
        - np.bincount(rejected, pull, minlength=u.size)
        + l2 * beta**2 * u
    )
    total = float(np.sum(weight))
    return {
        "mean_loss": float(np.sum(weight * terms)) / total if total else 0.0,
        "penalized_loss": float(np.sum(weight * terms)) + penalty,
        "loss_gradient_norm": None
        if loss == "hinge"
        else float(np.max(np.abs(gradient), initial=0.0)),
    }


# ---------------------------------------------------------------------------- solvers
def _loss_terms(loss: str, margin: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair loss ``l(m)`` and slope ``l'(m)`` at the margins ``m`` (in ``u``)."""
    if loss == "dpo":
        # -log sigma(beta m), slope -beta sigma(-beta m)
        return -log_expit(beta * margin), -beta * expit(-beta * margin)
    if loss == "ipo":
        target = 1.0 / (2.0 * beta)
        return (margin - target) ** 2, 2.0 * (margin - target)
    active = 1.0 - beta * margin > 0  # hinge: max(0, 1 - beta m), slope -beta where active
    return np.where(active, 1.0 - beta * margin, 0.0), np.where(active, -beta, 0.0)


def _solve_hinge(
    n_leaves: int,
    chosen: np.ndarray,
    rejected: np.ndarray,
    weight: np.ndarray,
    l2: float,
    steps: int,
) -> _Fit:
    """The hinge optimum in the implicit reward: ``min_r sum_k w_k max(0, 1 - (D r)_k) +
    (l2 / 2) ||r||^2``, an LP (``l2 = 0``) or a QP (``l2 > 0``), with its certificate."""
    informative = (weight > 0) & (chosen != rejected)
    compared = np.unique(np.concatenate([chosen[informative], rejected[informative]]))
    m = compared.size
    reward = np.zeros(n_leaves)
    if m == 0:
        return _Fit(reward, 0.0, 0, "none")
    compact = np.full(n_leaves, -1, dtype=np.int64)
    compact[compared] = np.arange(m)
    # merge repeated ordered pairs: the loss depends on their total weight only
    keys, pair_of = np.unique(
        compact[chosen[informative]] * m + compact[rejected[informative]], return_inverse=True
    )
    merged = np.bincount(pair_of, weight[informative], minlength=keys.size)  # (k,)
    k = keys.size
    rows = np.arange(k)
    difference = sparse.csr_array(  # D: (k, m), row k = e_{c_k} - e_{r_k}
        (np.r_[np.ones(k), -np.ones(k)], (np.r_[rows, rows], np.r_[keys // m, keys % m])),
        shape=(k, m),
    )
    if l2 == 0:
        r_compared, residual, n_iter, solver = _hinge_lp(difference, merged)
    else:
        r_compared, residual, n_iter, solver = _hinge_qp(difference, merged, l2, steps)
    reward[compared] = r_compared
    return _Fit(reward, residual, n_iter, solver)


def _hinge_lp(
    difference: sparse.csr_array, weight: np.ndarray
) -> tuple[np.ndarray, float, int, str]:
    """``min sum w xi  s.t.  xi >= 1 - D r, xi >= 0`` by HiGHS; its dual is ``max 1^T alpha
    s.t. D^T alpha = 0, 0 <= alpha <= w`` (module docstring: the residual)."""
    k, m = difference.shape
    result = linprog(
        np.concatenate([np.zeros(m), weight]),
        A_ub=sparse.hstack([-difference, -sparse.eye_array(k)], format="csr"),
        b_ub=-np.ones(k),
        bounds=[(None, None)] * m + [(0.0, None)] * k,
        method="highs",
    )
    if result.status != 0:  # pragma: no cover - feasible, and bounded below by 0
        raise RuntimeError(f"the hinge LP failed: {result.message}")
    reward = result.x[:m]
    alpha = np.clip(-result.ineqlin.marginals, 0.0, weight)  # (k,) the dual multipliers
    primal = float(np.sum(weight * np.maximum(0.0, 1.0 - difference @ reward)))
    gap = abs(primal - float(np.sum(alpha))) / max(1.0, primal)
    infeasibility = float(np.max(np.abs(difference.T @ alpha))) / max(1.0, float(weight.max()))
    return reward, max(gap, infeasibility), int(result.nit), "linprog"


def _hinge_qp(
    difference: sparse.csr_array, weight: np.ndarray, l2: float, steps: int
) -> tuple[np.ndarray, float, int, str]:
    """The dual QP ``min_{0 <= alpha <= w} q(alpha) = ||D^T alpha||^2 / (2 l2) - 1^T alpha`` by
    a primal active-set method (Nocedal & Wright 2006, Algorithm 16.3).

    The working set holds variables at a bound. Each iteration minimizes ``q`` over the free
    variables (``grad q = D r - 1``, the margins minus 1, with ``r = D^T alpha / l2``): a
    Newton step on the free block ``Q_FF = D_F D_F^T / l2``, or, if the free gradient has a
    component in the null space of ``Q_FF`` (the dual is only semidefinite), a
    zero-curvature descent direction followed to the first bound. Steps are cut at the
    first bound they hit, which joins the working set; at a minimizer over the free
    variables the bound with the most negative multiplier leaves it, and when none is
    negative ``alpha`` is optimal. Every step lowers ``q`` or (degenerate) changes the
    working set, so the method ends after finitely many iterations, from any feasible
    start (each iteration costs one eigendecomposition of size ``min(f, m_F)``; with
    thousands of pairs and a small ``l2`` the default ``steps`` may run out, and the
    result then says so); it starts from a few sweeps of dual coordinate descent (:func:`_warm_start`),
    which guess most of the working set.
    """
    transpose = difference.T.tocsr()  # D^T: (m, k)
    alpha, state = _warm_start(difference, weight, l2)
    n_iter = 0
    at_minimum = False  # alpha minimizes q over the current free variables
    while n_iter < steps:
        n_iter += 1
        gradient = difference @ (transpose @ alpha) / l2 - 1.0  # (k,) margin - 1
        if not at_minimum:
            direction, unbounded = _free_direction(difference, l2, gradient, state == 0)
            if unbounded or np.max(np.abs(direction)) > 0:
                alpha, state, blocked = _ratio_test(alpha, state, direction, weight, unbounded)
                at_minimum = not (unbounded or blocked)
                continue
        # a minimizer on this face: release the bound whose multiplier is most wrong-signed
        wrong = np.where(state == -1, -gradient, np.where(state == 1, gradient, 0.0))
        worst = int(np.argmax(wrong))
        if wrong[worst] <= MULTIPLIER_TOL:
            break
        state[worst] = 0
        at_minimum = False
    reward = transpose @ alpha / l2  # (m,)
    penalty = 0.5 * l2 * float(np.sum(reward * reward))
    primal = float(np.sum(weight * np.maximum(0.0, 1.0 - difference @ reward))) + penalty
    dual = float(np.sum(alpha)) - penalty  # 1^T alpha - ||D^T alpha||^2 / (2 l2)
    return reward, max(primal - dual, 0.0) / max(1.0, abs(primal)), n_iter, "active set (dual QP)"


def _warm_start(
    difference: sparse.csr_array, weight: np.ndarray, l2: float
) -> tuple[np.ndarray, np.ndarray]:
    """A feasible start for the active-set method: :data:`WARM_START_SWEEPS` sweeps of exact
    coordinate descent on the dual (the dual coordinate descent of linear SVMs, Hsieh et al.
    2008: ``alpha_k <- clip(alpha_k - (margin_k - 1) l2 / 2, 0, w_k)``, ``Q_kk = 2 / l2``,
    keeping ``r = D^T alpha / l2`` up to date), then each variable within
    :data:`BOUND_SNAP` (relative) of a bound put on it."""
    coo = difference.tocoo()
    order = np.lexsort((-coo.data, coo.row))  # per row: the +1 (chosen) entry, then the -1
    chosen, rejected = coo.col[order][0::2].tolist(), coo.col[order][1::2].tolist()
    weights = weight.tolist()
    reward = [0.0] * difference.shape[1]
    alpha = [0.0] * weight.size
    for _ in range(WARM_START_SWEEPS):
        for pair, (c, r) in enumerate(zip(chosen, rejected, strict=True)):
            # minimize q over alpha_pair alone: grad = margin - 1, curvature 2 / l2
            new = min(
                max(alpha[pair] - (reward[c] - reward[r] - 1.0) * l2 / 2.0, 0.0), weights[pair]
            )
            change = (new - alpha[pair]) / l2
            alpha[pair] = new
            reward[c] += change
            reward[r] -= change
    values = np.array(alpha)
    state = np.zeros(weight.size, dtype=np.int8)  # -1: at 0, +1: at w, 0: free
    state[values <= BOUND_SNAP * weight] = -1
    state[values >= (1.0 - BOUND_SNAP) * weight] = 1
    return np.where(state == -1, 0.0, np.where(state == 1, weight, values)), state


def _free_direction(
    difference: sparse.csr_array, l2: float, gradient: np.ndarray, free: np.ndarray
) -> tuple[np.ndarray, bool]:
    """The step minimizing ``q`` over the free variables, or a zero-curvature descent
    direction (then ``unbounded`` is True).

    ``Q_FF = D_F D_F^T / l2`` with ``D_F`` ``(f, m_F)`` (the free pairs' rows on the leaves they
    touch): its range is spanned by the left singular vectors ``U`` of ``D_F``, found from
    the eigenvectors of the smaller of ``D_F D_F^T`` and ``D_F^T D_F``.
    """
    direction = np.zeros(gradient.size)
    if not free.any():
        return direction, False
    rows = difference[np.flatnonzero(free)]
    block = rows[:, np.unique(rows.indices)].toarray()  # D_F: (f, m_F)
    if block.shape[0] <= block.shape[1]:
        values, basis = np.linalg.eigh(block @ block.T)  # (f,), (f, f)
    else:
        values, right = np.linalg.eigh(block.T @ block)  # (m_F,), (m_F, m_F)
        basis = block @ right / np.sqrt(np.maximum(values, np.finfo(float).tiny))  # U
    keep = values > NULL_EIGENVALUE * max(float(values.max()), 1.0)
    basis, values = basis[:, keep], values[keep]  # range of Q_FF; eigenvalues s^2 = l2 lambda
    coefficients = basis.T @ gradient[free]
    null_part = gradient[free] - basis @ coefficients  # the gradient's part in null(Q_FF)
    if np.max(np.abs(null_part)) > MULTIPLIER_TOL:
        direction[free] = -null_part  # descent (slope -|null_part|^2) at zero curvature
        return direction, True
    direction[free] = -basis @ (coefficients * l2 / values)  # -Q_FF^+ g_F
    return direction, False


def _ratio_test(
    alpha: np.ndarray,
    state: np.ndarray,
    direction: np.ndarray,
    weight: np.ndarray,
    unbounded: bool,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Move along ``direction`` (full step unless ``unbounded``) until the first bound;
    ``(alpha, state, blocked)``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(
            direction < 0,
            alpha / -direction,
            np.where(direction > 0, (weight - alpha) / direction, np.inf),
        )
    room = np.where(state == 0, room, np.inf)
    blocking = int(np.argmin(room))
    length = float(room[blocking]) if unbounded else min(1.0, float(room[blocking]))
    alpha = np.clip(alpha + length * direction, 0.0, weight)
    state = state.copy()
    blocked = bool(room[blocking] <= length)
    if blocked:  # the blocking variable joins the working set, exactly at its bound
        upper = direction[blocking] > 0
        alpha[blocking] = weight[blocking] if upper else 0.0
        state[blocking] = 1 if upper else -1
    return alpha, state, blocked


# ---------------------------------------------------------------------------- helpers
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
