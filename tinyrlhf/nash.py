"""Intransitive preferences: the minimax winner and the regularized Nash equilibrium.

Beyond the lecture. Section 3 of the lecture models preferences by one Bradley-Terry reward,
``P(y > y') = sigma(r(y) - r(y'))``, which is transitive. A *mixture* of populations, each
Bradley-Terry with its own reward ``r_k`` and share ``w_k``,

    P(y > y') = sum_k w_k sigma(r_k(y) - r_k(y')),

need not be: three equal populations ranking ``a > b > c``, ``b > c > a`` and ``c > a > b``
prefer ``a`` to ``b``, ``b`` to ``c`` and ``c`` to ``a`` with probability 2/3 each (a Condorcet
cycle), so no reward explains ``P``. Preferences then define a symmetric two-player zero-sum
game: a policy ``pi`` playing against ``pi'`` wins with probability ``pi^T P pi'``, and with
``B = P - 1/2`` (antisymmetric, ``B_yy = 0``: a completion ties with itself) the payoff is
``pi^T B pi'``, whose value is 0.

- The *minimax* (von Neumann) winner ``argmax_pi min_{y'} sum_y pi(y) P(y > y')`` is the game's
  maximin mixed strategy: it wins against every policy with probability at least 1/2
  (Kreweras 1965; Fishburn 1984; Dudik et al. 2015, "Contextual dueling bandits"). It is
  the target of self-play preference optimization (SPO: Swamy et al. 2024, "A minimaximalist
  approach to reinforcement learning from human feedback") and is found here by a linear
  program (:func:`scipy.optimize.linprog`).
- The KL-regularized game of Nash learning from human feedback (Munos et al. 2023, "Nash
  learning from human feedback", eq. 4),

      max_pi min_pi'  pi^T P pi' - tau KL(pi || mu) + tau KL(pi' || mu),

  is strongly concave-convex, so it has a unique Nash equilibrium; by symmetry it is
  ``(pi*, pi*)`` with ``pi*`` the best response to itself,

      pi*(y) = mu(y) exp((B pi*)(y) / tau) / sum_y' mu(y') exp((B pi*)(y') / tau).

**Certificate.** Let ``T(pi) ∝ mu exp(B pi / tau)`` be the best response to ``pi``. The
exploitability

    g(pi) = max_sigma [sigma^T B pi - tau KL(sigma || mu)] + tau KL(pi || mu)
          = tau KL(pi || T(pi))

(the second line by the Gibbs variational principle: ``sigma^T B pi - tau KL(sigma || mu)
= tau log Z - tau KL(sigma || T(pi))``, and ``pi^T B pi = 0``) is >= 0, is 0 exactly at
``pi*`` (``pi*`` is its own best response), and is ``tau``-strongly convex in the l1 norm
(``tau KL(. || mu)`` is, by Pinsker's inequality; the log-sum-exp of an affine map is
convex). Hence, with ``pi*`` its minimizer over the simplex, and ``KL <= chi^2``,

    (tau / 2) ||pi - pi*||_1^2  <=  g(pi)  =  tau KL(pi || T(pi))  <=  tau chi^2(pi || T(pi)),

    ||pi - pi*||_1  <=  sqrt(2 chi^2(pi || T(pi))),   chi^2(p || q) = sum (p - q)^2 / q.

The right side is computed from the residual ``pi - T(pi)`` without cancellation, so it
certifies ``pi`` to near machine precision; :func:`regularized_nash` stops when it is below
``tol``.

**Iteration.** :func:`regularized_nash` runs the predictive-update (extragradient) method PU
of Cen, Wei & Chi (2021, "Fast policy extragradient methods for competitive games with
entropy regularization", NeurIPS, Algorithm 1) on the symmetric game, started at
``pi_0 = mu``; both players' iterates coincide by symmetry, so one suffices:

    pibar_{t+1}  ∝ pi_t^{1 - eta tau} mu^{eta tau} exp(eta B pi_t)
    pi_{t+1}     ∝ pi_t^{1 - eta tau} mu^{eta tau} exp(eta B pibar_{t+1})

Writing ``-tau KL(pi || mu) = tau Ent(pi) + tau pi . log mu`` turns the game into the
entropy-regularized matrix game of Cen et al. with payoff
``A = B + tau (log mu 1^T - 1 log mu^T)`` on the support of ``mu``, for which the update above
is exactly theirs; their Theorem 1 gives linear convergence
``KL(pi* || pi_t) <= (1 - eta tau)^t KL(pi* || pi_0)`` for ``0 < eta <= 1 / (tau + max|A|)``,
and we take ``eta = 1 / (tau + max|A|)``. The stopping rule is the certificate above, so the
returned tolerance does not depend on the cited constant. Every :data:`NEWTON_EVERY`
iterations a Newton step on the fixed-point equation ``log pi = log_softmax(log mu + B pi /
tau)`` is tried and kept only if it lowers the certified bound: the guarantee stays PU's, and
the local rate becomes quadratic (PU alone needs ``~ 1 / (eta tau)`` iterations per digit,
slow for small ``tau``). (The plain mirror-descent
iteration of Nash-MD, Munos et al. 2023 Theorem 1, reaches only an ``O(eta / tau)``
neighbourhood at a constant step, hence the extragradient.)

The experiment that sets RLHF under one fitted reward against these solutions,
:func:`~tinyrlhf.rlhf_versus_minimax`, lives in :mod:`tinyrlhf.minimax_comparison` (still
importable from here).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog
from scipy.special import kl_div, logsumexp

from .memory import FLOAT_BYTES, check_memory
from .preferences import preference_probability
from .validation import check_beta, check_leaf_array, check_positive_int, check_tree

#: Largest |P + P^T - 1| accepted off the diagonal of a preference matrix (rounding of the
#: matrix's entries, far below any real inconsistency).
PREFERENCE_ATOL = 1e-9
#: Largest |sum(mu) - 1| accepted for a reference distribution mu.
DISTRIBUTION_ATOL = 1e-9
#: Default tolerance of :func:`regularized_nash`: the certified bound on ||pi - pi*||_1.
NASH_TOL = 1e-10
#: Every this many PU iterations :func:`regularized_nash` tries Newton steps on the fixed point.
NEWTON_EVERY = 10
#: Step lengths tried along a Newton direction, longest first.
NEWTON_STEP_LENGTHS = (1.0, 0.5, 0.25, 0.125, 0.0625)
#: Largest support of mu on which Newton steps are tried (each solves a dense m x m system).
NEWTON_MAX_SIZE = 2048
#: log chi^2 above which the certified l1 bound is reported as +inf (exp would overflow).
_LOG_CHI2_MAX = 700.0
#: Default cap on the iterations of :func:`regularized_nash`.
NASH_MAX_ITER = 100_000


class NashConvergenceWarning(UserWarning):
    """:func:`regularized_nash` stopped at ``max_iter`` before its tolerance was met."""


@dataclass(frozen=True, eq=False)
class RegularizedNash:
    """The Nash equilibrium ``(pi*, pi*)`` of the KL(. || mu)-regularized preference game.

    Attributes:
        pi: ``(n,)`` the equilibrium strategy ``pi*`` (0 outside the support of ``mu``).
        exploitability: ``g(pi) = tau KL(pi || T(pi)) >= 0`` at the returned strategy
            (module docstring).
        residual: the certificate: ``sqrt(2 chi^2(pi || T(pi)))``, a certified upper bound on
            the l1 distance ``||pi - pi*||_1`` to the equilibrium (module docstring), computed
            from the fixed-point residual ``pi - T(pi)``.
        tolerance: the ``tol`` it is compared with.
        iterations: PU iterations run.
        newton_steps: accepted Newton steps (module docstring).
        converged: ``residual <= tolerance``.
        tau: the regularization strength.
    """

    pi: np.ndarray
    exploitability: float
    residual: float
    tolerance: float
    iterations: int
    newton_steps: int
    converged: bool
    tau: float


def preference_matrix(tree, rewards, weights) -> np.ndarray:
    """Preference probabilities of a mixture of Bradley-Terry populations, per prompt.

        P_p(y > y') = sum_k w_k sigma(r_k(y) - r_k(y'))      (y, y' completions of prompt p)

    Args:
        tree: the :class:`~tinyrlhf.TokenTree`.
        rewards: ``(K, n_leaves)`` finite rewards, one row per population (a single
            ``(n_leaves,)`` reward is one population).
        weights: ``(K,)`` population shares, ``>= 0``, summing to 1.

    Returns:
        ``(n_prompts, A**H, A**H)`` float64: ``P[p, i, j]`` is the probability that the
        ``i``-th completion of prompt ``p`` (canonical order inside the prompt, leaf index
        ``p * A**H + i``) is preferred to the ``j``-th. Entries in [0, 1],
        ``P + P^T = 1``, diagonal 1/2. Intransitive in general.

    Raises:
        TypeError, ValueError: malformed ``tree``, ``rewards`` or ``weights``.
    """
    tree = check_tree(tree)
    rewards_array = np.asarray(rewards, dtype=np.float64) if _is_numeric(rewards) else None
    if rewards_array is None:
        raise TypeError(
            f"rewards must be a (K, {tree.n_leaves}) array of real numbers, one row per "
            f"population, got {type(rewards).__name__}"
        )
    if rewards_array.ndim == 1:
        rewards_array = rewards_array[None, :]
    if rewards_array.ndim != 2:
        raise ValueError(
            f"rewards must have shape (K, {tree.n_leaves}) = (populations, n_leaves), got "
            f"{rewards_array.shape}"
        )
    rows = [check_leaf_array(tree, row, f"rewards[{k}]") for k, row in enumerate(rewards_array)]
    weights = _check_distribution(weights, len(rows), "weights")
    per_prompt = tree.leaves_per_prompt
    check_memory(
        3 * tree.n_prompts * per_prompt**2 * FLOAT_BYTES,
        f"a preference matrix over {per_prompt:,} completions per prompt",
    )
    matrix = np.zeros((tree.n_prompts, per_prompt, per_prompt))
    for weight, reward in zip(weights, rows, strict=True):
        r = reward.reshape(tree.n_prompts, per_prompt)  # (P, A**H)
        # sigma(r_k(y) - r_k(y')) for every pair of completions of a prompt: (P, A**H, A**H)
        matrix += weight * preference_probability(r[:, :, None], r[:, None, :])
    diagonal = np.arange(per_prompt)
    matrix[:, diagonal, diagonal] = 0.5  # a completion ties with itself (sum w_k / 2, exactly)
    return matrix


def minimax_winner(P) -> np.ndarray:
    """The minimax (von Neumann) winner of a preference matrix, by linear programming.

        pi_MW = argmax_{pi in simplex} min_{y'} sum_y pi(y) P(y > y')

    The game is symmetric, so the optimal value is 1/2: ``pi_MW`` is preferred to every
    completion, hence to every policy, with probability at least 1/2. The program solved is
    ``max v  s.t.  B^T pi >= v 1, 1^T pi = 1, pi >= 0`` with ``B = P - 1/2`` (HiGHS). The
    winner is unique for generic ``P``; when it is not, a vertex of the optimal set is
    returned.

    Args:
        P: ``(n, n)`` preference matrix, ``P[i, j] = P(i > j)``: entries in [0, 1] and
            ``P + P^T = 1`` off the diagonal (the diagonal is not used: ``P(y > y) = 1/2``).

    Returns:
        ``(n,)`` float64, a probability distribution over the ``n`` completions.

    Raises:
        TypeError, ValueError: ``P`` is not a valid preference matrix.
        RuntimeError: the LP solver failed (it cannot for a valid ``P``: the program is
            feasible and bounded).
    """
    advantage = _check_preference_matrix(P)  # B = P - 1/2, (n, n)
    n = advantage.shape[0]
    # variables (pi_1..pi_n, v); minimize -v
    cost = np.zeros(n + 1)
    cost[-1] = -1.0
    # v - sum_y pi(y) B(y, y') <= 0 for every column y': (n, n + 1)
    upper = np.hstack([-advantage.T, np.ones((n, 1))])
    equality = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    bounds = [(0.0, None)] * n + [(None, None)]
    result = linprog(
        cost,
        A_ub=upper,
        b_ub=np.zeros(n),
        A_eq=equality,
        b_eq=np.ones(1),
        bounds=bounds,
        method="highs",
    )
    if result.status != 0:  # pragma: no cover - a valid P always gives a solvable LP
        raise RuntimeError(f"the minimax-winner LP failed: {result.message}")
    # HiGHS meets the bounds up to its feasibility tolerance (1e-7); project back onto the
    # simplex so that the result is an exact distribution.
    pi = np.maximum(result.x[:n], 0.0)
    return pi / pi.sum()


def exploitability(P, mu, tau, pi) -> float:
    """``g(pi) = tau KL(pi || T(pi))``, ``T(pi) ∝ mu exp(B pi / tau)`` the best response.

    How much a best-responding opponent gains in the KL(. || mu)-regularized game against
    ``pi``: ``>= 0``, 0 exactly at the regularized Nash equilibrium ``pi*``, and
    ``||pi - pi*||_1 <= sqrt(2 g(pi) / tau)`` (module docstring).

    Args:
        P: ``(n, n)`` preference matrix (see :func:`minimax_winner`).
        mu: ``(n,)`` reference distribution.
        tau: regularization strength, > 0.
        pi: ``(n,)`` a distribution (``+inf`` is returned if it leaves the support of ``mu``).

    Returns:
        A float, ``>= 0`` up to rounding (about ``1e-16 tau``).
    """
    advantage = _check_preference_matrix(P)
    n = advantage.shape[0]
    mu = _check_distribution(mu, n, "mu")
    tau = check_beta(tau, "tau")
    pi = _check_distribution(pi, n, "pi")
    return _certificate(advantage, _log(mu), tau, pi)[0]


def regularized_nash(
    P, mu, tau, *, tol: float = NASH_TOL, max_iter: int = NASH_MAX_ITER
) -> RegularizedNash:
    """The Nash equilibrium of the KL(. || mu)-regularized preference game (Nash-MD's target).

        pi* = argmax_pi min_pi'  pi^T P pi' - tau KL(pi || mu) + tau KL(pi' || mu)
        <=>  pi*(y) ∝ mu(y) exp((B pi*)(y) / tau),   B = P - 1/2

    found by the extragradient iteration PU (module docstring), which converges linearly;
    it stops once the certified bound ``sqrt(2 chi^2(pi || T(pi)))`` on ``||pi - pi*||_1``
    is ``<= tol``. As ``tau -> 0`` the equilibrium tends to a minimax winner
    (:func:`minimax_winner`), as ``tau -> inf`` to ``mu``.

    Args:
        P: ``(n, n)`` preference matrix (entries in [0, 1], ``P + P^T = 1`` off the diagonal).
        mu: ``(n,)`` reference distribution (``>= 0``, sums to 1; zeros stay zeros).
        tau: regularization strength, finite and > 0.
        tol: the certified l1 distance to ``pi*`` to reach, > 0.
        max_iter: iteration cap; if it is reached first, a :class:`NashConvergenceWarning`
            is issued and the last iterate returned with ``converged=False``.

    Returns:
        A :class:`RegularizedNash` with ``pi`` ``(n,)``, ``exploitability``, ``residual``
        (the certified bound on ``||pi - pi*||_1``), ``tolerance``, ``iterations`` and
        ``converged`` (``residual <= tolerance``).

    Raises:
        TypeError, ValueError: invalid ``P``, ``mu`` not a distribution, ``tau <= 0``,
            ``tol <= 0``.
    """
    advantage = _check_preference_matrix(P)  # B: (n, n)
    n = advantage.shape[0]
    mu = _check_distribution(mu, n, "mu")
    tau = check_beta(tau, "tau")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol > 0:
        raise ValueError(f"tol must be a positive real number, got {tol!r}")
    max_iter = check_positive_int(max_iter, "max_iter", minimum=0)
    game = _RegularizedGame.build(advantage, mu, tau)
    log_pi = game.log_mu.copy()
    pi = mu.copy()
    gap, bound = game.certificate(pi)
    iterations = 0
    newton_steps = 0
    use_newton = int(game.support.sum()) <= NEWTON_MAX_SIZE
    while bound > tol and iterations < max_iter:
        log_pi_bar = game.step(log_pi, pi)  # pibar_{t+1}
        log_pi = game.step(log_pi, np.exp(log_pi_bar))  # pi_{t+1}
        pi = np.exp(log_pi)
        gap, bound = game.certificate(pi)
        iterations += 1
        # Safeguarded Newton acceleration: accepted only while it lowers the certified bound,
        # so PU's convergence guarantee is kept and the local rate becomes quadratic.
        while use_newton and bound > tol and iterations % NEWTON_EVERY == 0:
            trial = game.newton_trial(log_pi, bound)
            if trial is None:
                break
            log_pi, gap, bound = trial
            pi = np.exp(log_pi)
            newton_steps += 1
    converged = bool(bound <= tol)
    if not converged:
        warnings.warn(
            f"regularized_nash stopped after max_iter={max_iter} iterations with a certified "
            f"l1 distance {bound:.3g} > tol={tol:g} to the equilibrium; raise max_iter",
            NashConvergenceWarning,
            stacklevel=2,
        )
    return RegularizedNash(
        pi=pi,
        exploitability=gap,
        residual=bound,
        tolerance=float(tol),
        iterations=iterations,
        newton_steps=newton_steps,
        converged=converged,
        tau=tau,
    )


@dataclass(frozen=True, eq=False)
class _RegularizedGame:
    """The regularized game of :func:`regularized_nash` and the pieces of its PU step."""

    advantage: np.ndarray  # B = P - 1/2: (n, n)
    log_mu: np.ndarray  # (n,), -inf off the support
    support: np.ndarray  # (n,) bool
    tau: float
    eta: float  # step size 1 / (tau + |A|)
    anchor: np.ndarray  # (n,) eta tau log mu, 0 off the support
    keep: float  # 1 - eta tau, in (0, 1)

    @classmethod
    def build(cls, advantage: np.ndarray, mu: np.ndarray, tau: float) -> _RegularizedGame:
        """The game with advantage ``B``, reference ``mu`` and strength ``tau``."""
        log_mu = _log(mu)  # (n,), -inf off the support
        support = log_mu > -np.inf
        # Cen et al.'s payoff A = B + tau (log mu 1^T - 1 log mu^T) on the support;
        # eta = 1/(tau+|A|)
        payoff = advantage[np.ix_(support, support)] + tau * (
            log_mu[support][:, None] - log_mu[support][None, :]
        )
        eta = 1.0 / (tau + float(np.abs(payoff).max()))
        anchor = eta * tau * np.where(support, log_mu, 0.0)  # eta tau log mu, 0 off the support
        return cls(advantage, log_mu, support, tau, eta, anchor, 1.0 - eta * tau)

    def step(self, log_pi: np.ndarray, opponent: np.ndarray) -> np.ndarray:
        """``log pi_t^{1 - eta tau} mu^{eta tau} exp(eta B opponent)``, normalized; -inf
        stays -inf."""
        logits = np.where(
            self.support,
            self.keep * log_pi + self.anchor + self.eta * (self.advantage @ opponent),
            -np.inf,
        )
        return logits - logsumexp(logits)

    def certificate(self, pi: np.ndarray) -> tuple[float, float]:
        """``(exploitability, certified l1 bound)`` at ``pi`` (:func:`_certificate`)."""
        return _certificate(self.advantage, self.log_mu, self.tau, pi)

    def newton_trial(
        self, log_pi: np.ndarray, bound: float
    ) -> tuple[np.ndarray, float, float] | None:
        """A damped Newton step from ``log_pi``: ``(log_pi, gap, bound)`` at the first length
        of :data:`NEWTON_STEP_LENGTHS` that lowers the certified ``bound``, else None."""
        support = self.support
        sub_advantage = self.advantage[np.ix_(support, support)]  # B on the support: (m, m)
        direction = _newton_direction(
            sub_advantage, self.log_mu[support], self.tau, log_pi[support]
        )
        for length in NEWTON_STEP_LENGTHS:  # damped: first length that lowers the bound
            trial = np.full(log_pi.shape[0], -np.inf)
            trial[support] = log_pi[support] + length * direction
            trial[support] -= logsumexp(trial[support])
            trial_gap, trial_bound = self.certificate(np.exp(trial))
            if trial_bound < bound:
                return trial, trial_gap, trial_bound
        return None


# ------------------------------------------------------------------------------- helpers
def _certificate(
    advantage: np.ndarray, log_mu: np.ndarray, tau: float, pi: np.ndarray
) -> tuple[float, float]:
    """``(g(pi), sqrt(2 chi^2(pi || T(pi))))``: the exploitability ``tau KL(pi || T(pi))`` and
    the certified bound on ``||pi - pi*||_1`` (module docstring); ``(inf, inf)`` off the
    support of ``mu``."""
    support = log_mu > -np.inf
    if (pi[~support] > 0).any():
        return float("inf"), float("inf")
    # log T(pi) = log mu + B pi / tau - logsumexp(...), on the support
    logits = log_mu[support] + (advantage @ pi)[support] / tau
    log_best = logits - logsumexp(logits)
    best = np.exp(log_best)
    on = pi[support]
    # KL as a sum of kl_div = p log(p/q) - p + q (equal, as both sum to 1): each term is >= 0
    # up to rounding, so g is >= 0 up to ~1e-16 tau
    gap = tau * float(kl_div(on, best).sum())
    # chi^2 = sum (pi - T)^2 / T in log space: T may be far below 1e-308 while pi - T is not
    residual = np.abs(on - best)
    nonzero = residual > 0
    if not nonzero.any():
        return gap, 0.0
    log_chi2 = float(logsumexp(2.0 * np.log(residual[nonzero]) - log_best[nonzero]))
    bound = float("inf") if log_chi2 > _LOG_CHI2_MAX else float(np.sqrt(2.0 * np.exp(log_chi2)))
    return gap, bound


def _newton_direction(
    advantage: np.ndarray, log_mu: np.ndarray, tau: float, log_pi: np.ndarray
) -> np.ndarray:
    """The Newton direction for ``F(x) = x - log_softmax(log mu + B e^x / tau)`` at ``log pi``.

    ``F(log pi*) = 0`` is the equilibrium condition (on the support of ``mu``). With
    ``T = softmax(log mu + B pi / tau)`` the Jacobian is ``I - (I - 1 T^T) B diag(pi) / tau``.
    Returns zeros if the system is singular or the direction not finite.
    """
    m = log_pi.size
    pi = np.exp(log_pi)
    logits = log_mu + advantage @ pi / tau
    log_best = logits - logsumexp(logits)  # log T
    residual = log_pi - log_best  # F(x): (m,)
    scaled = advantage * pi[None, :] / tau  # B diag(pi) / tau: (m, m)
    jacobian = np.eye(m) - scaled + np.outer(np.ones(m), np.exp(log_best) @ scaled)
    try:
        direction = np.linalg.solve(jacobian, -residual)
    except np.linalg.LinAlgError:
        return np.zeros(m)
    return direction if np.isfinite(direction).all() else np.zeros(m)


def _log(distribution: np.ndarray) -> np.ndarray:
    """``log`` of a distribution with ``log 0 = -inf`` and no divide-by-zero warning."""
    out = np.full(distribution.shape, -np.inf)
    np.log(distribution, out=out, where=distribution > 0)
    return out


def _is_numeric(values: object) -> bool:
    try:
        np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return True


def _check_preference_matrix(P: object, name: str = "P") -> np.ndarray:
    """Validate a preference matrix; return ``B = P - 1/2`` with a zero diagonal, ``(n, n)``."""
    if not _is_numeric(P):
        raise TypeError(f"{name} must be a square array of probabilities, got {type(P).__name__}")
    matrix = np.asarray(P, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty square (n, n) matrix with {name}[i, j] = P(i > j), "
            f"got shape {matrix.shape}"
        )
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name} contains NaN or infinite entries")
    if (matrix < 0).any() or (matrix > 1).any():
        raise ValueError(
            f"{name} must hold probabilities in [0, 1]; found {matrix.min()!r}..{matrix.max()!r}"
        )
    off_diagonal = ~np.eye(matrix.shape[0], dtype=bool)
    defect = np.abs(matrix + matrix.T - 1.0)[off_diagonal]
    if defect.size and defect.max() > PREFERENCE_ATOL:
        raise ValueError(
            f"{name} must satisfy {name}[i, j] + {name}[j, i] = 1 off the diagonal (exactly one "
            f"of two completions is preferred); the largest violation is {defect.max():.3g}"
        )
    advantage = matrix - 0.5
    np.fill_diagonal(advantage, 0.0)
    return advantage


def _check_distribution(values: object, n: int, name: str) -> np.ndarray:
    """A probability vector of length ``n``: finite, ``>= 0``, summing to 1."""
    if not _is_numeric(values):
        raise TypeError(
            f"{name} must be an array of {n} probabilities, got {type(values).__name__}"
        )
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {array.shape}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"{name} must be a distribution: finite entries >= 0, got {array!r}")
    total = float(array.sum())
    if abs(total - 1.0) > DISTRIBUTION_ATOL:
        raise ValueError(f"{name} must be a distribution summing to 1, but it sums to {total!r}")
    return array


# ----------------------------------------------------------------------------- moved names
#: Names that moved to :mod:`tinyrlhf.minimax_comparison` (the experiment that compares RLHF
#: with the solutions above) and stay importable from here, as the same objects.
_MOVED_TO_MINIMAX_COMPARISON = ("RlhfVersusMinimax", "rlhf_versus_minimax")


def __getattr__(name: str) -> object:
    """``tinyrlhf.nash.rlhf_versus_minimax`` and ``.RlhfVersusMinimax``, imported on first use
    (the experiment module imports this one, so an import at the top would be circular)."""
    if name in _MOVED_TO_MINIMAX_COMPARISON:
        from . import minimax_comparison

        return getattr(minimax_comparison, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
