"""Do independent solvers of the KL-regularized problem agree? (lecture section 4)

The closed form, soft value iteration and policy gradient compute the same optimum by
different routes, so comparing them checks all three. The report compares every solution
with the first one on

- ``max |Δ log pi|``: the largest difference of ``log pi(a|s)`` over states the reference
  reaches (both ``-inf`` counts as equal, one ``-inf`` as ``inf``);
- ``max TV``: the largest total variation between the leaf distributions, over prompts;
- the objective gap ``J(pi_k) - J(pi_0)`` (largest magnitude over prompts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .divergences import objective, total_variation
from .policy import Policy
from .solvers.solution import Solution


@dataclass(frozen=True)
class AgreementRow:
    """One solution compared with the first."""

    method: str
    objective: float  # mean over prompts of J(pi)
    objective_gap: float  # max over prompts of |J(pi) - J(pi_first)|
    max_abs_log_pi: float
    max_tv: float
    wall_time: float | None


@dataclass(frozen=True)
class AgreementReport:
    """The table made by :func:`check_agreement`; ``print`` it or call :meth:`assert_close`."""

    rows: tuple[AgreementRow, ...]

    def __str__(self) -> str:
        header = f"{'method':<28} {'objective':>16} {'|ΔJ|':>10} {'max|Δlog π|':>12} {'max TV':>10} {'time [s]':>9}"
        lines = [header, "-" * len(header)]
        for row in self.rows:
            time_text = "" if row.wall_time is None else f"{row.wall_time:.3g}"
            lines.append(
                f"{row.method:<28} {row.objective:>16.10f} {row.objective_gap:>10.2e} "
                f"{row.max_abs_log_pi:>12.2e} {row.max_tv:>10.2e} {time_text:>9}"
            )
        return "\n".join(lines)

    @property
    def max_abs_log_pi(self) -> float:
        return max(row.max_abs_log_pi for row in self.rows)

    @property
    def max_tv(self) -> float:
        return max(row.max_tv for row in self.rows)

    @property
    def max_objective_gap(self) -> float:
        return max(row.objective_gap for row in self.rows)

    def assert_close(
        self, log_pi_atol: float = 1e-8, tv_atol: float = 1e-10, objective_atol: float = 1e-9
    ) -> None:
        """Raise ``AssertionError`` (with the table) if any difference exceeds its tolerance."""
        failures = []
        if not self.max_abs_log_pi <= log_pi_atol:
            failures.append(f"max|Δlog π| = {self.max_abs_log_pi:.3e} > {log_pi_atol:g}")
        if not self.max_tv <= tv_atol:
            failures.append(f"max TV = {self.max_tv:.3e} > {tv_atol:g}")
        if not self.max_objective_gap <= objective_atol:
            failures.append(f"max |ΔJ| = {self.max_objective_gap:.3e} > {objective_atol:g}")
        if failures:
            raise AssertionError("solutions disagree: " + "; ".join(failures) + "\n" + str(self))


def max_abs_log_pi_difference(p: Policy, q: Policy, ref: Policy) -> float:
    """``max |log p(a|s) - log q(a|s)|`` over the states ``ref`` reaches with positive probability."""
    if p.tree != q.tree or p.tree != ref.tree:
        raise ValueError("p, q and ref must be policies on the same TokenTree")
    worst = 0.0
    for h, log_reach in enumerate(ref.log_occupancies()[:-1]):
        rows = log_reach > -np.inf  # states ref reaches: (level_size(h),)
        left, right = p.log_probs[h][rows], q.log_probs[h][rows]
        both_zero = np.isneginf(left) & np.isneginf(right)
        gap = np.zeros_like(left)
        np.subtract(left, right, out=gap, where=~both_zero)
        if gap.size:
            worst = max(worst, float(np.abs(gap).max()))
    return worst


def check_agreement(*solutions: Solution) -> AgreementReport:
    """Compare solutions of the same problem (same reference, reward and beta) with the first.

    Args:
        *solutions: two or more :class:`Solution` objects; the first is the yardstick.

    Returns:
        An :class:`AgreementReport`: ``print(report)`` shows the table,
        ``report.assert_close()`` asserts agreement.

    Raises:
        TypeError: an argument is not a Solution.
        ValueError: fewer than two solutions, or they solve different problems.
    """
    if len(solutions) < 2:
        raise ValueError(f"check_agreement needs at least two solutions, got {len(solutions)}")
    for k, solution in enumerate(solutions):
        if not isinstance(solution, Solution):
            raise TypeError(
                f"solutions[{k}] must be a tinyrlhf.Solution, got {type(solution).__name__}"
            )
    first = solutions[0]
    if first.reward is None:
        raise ValueError("the first solution must carry the reward it optimized")
    for k, solution in enumerate(solutions[1:], start=1):
        if solution.policy.tree != first.policy.tree:
            raise ValueError(f"solutions[{k}] lives on a different tree than solutions[0]")
        if solution.beta != first.beta:
            raise ValueError(
                f"solutions[{k}] has beta={solution.beta}, solutions[0] beta={first.beta}"
            )
        if solution.reward is not None and not np.array_equal(solution.reward, first.reward):
            raise ValueError(f"solutions[{k}] optimized a different reward than solutions[0]")
    ref, reward, beta = first.reference, first.reward, first.beta
    base_objective = objective(first.policy, ref, reward, beta)
    rows = []
    for solution in solutions:
        value = objective(solution.policy, ref, reward, beta)
        rows.append(
            AgreementRow(
                method=solution.method,
                objective=float(value.mean()),
                # equal objectives (also both -inf) differ by 0, not NaN
                objective_gap=float(
                    np.max(np.where(value == base_objective, 0.0, np.abs(value - base_objective)))
                ),
                max_abs_log_pi=max_abs_log_pi_difference(solution.policy, first.policy, ref),
                max_tv=float(total_variation(solution.policy, first.policy).max()),
                wall_time=solution.wall_time,
            )
        )
    return AgreementReport(tuple(rows))
