"""The result type shared by every solver of the KL-regularized problem (lecture section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..divergences import expected_reward, kl_divergence, objective
from ..policy import Policy
from ..validation import frozen_copy


@dataclass(frozen=True, eq=False)
class Solution:
    """A policy that (approximately) solves ``max_pi E_pi[r] - beta KL(pi || pi_ref)``.

    Attributes:
        policy: the solver's policy.
        method: which solver made it (``"closed_form"``, ``"soft_value_iteration"``,
            ``"policy_gradient[natural]"``, ...).
        reference: ``pi_ref``.
        reward: ``(n_leaves,)`` the reward that was optimized (None when a solver did not
            use one, e.g. direct preference optimization).
        beta: the KL coefficient.
        log_partition: ``(n_prompts,)`` ``log Z(s_0)`` (closed form and soft VI).
        lagrange_multiplier: ``(n_prompts,)`` ``lambda* = beta (1 - log Z(s_0))``.
        values: soft values ``V_h``, a list of ``(level_size(h),)`` arrays for h = 0..H
            (soft VI only).
        history: per-step records (policy gradient): a dict of 1-D arrays ``"objective"``,
            ``"kl"``, ``"grad_norm"``, ``"step_size"`` (objective and KL averaged over
            prompts, the first entry is the initial policy).
        converged: True exactly when an iterative solver's certificate ``residual`` is at
            most ``tolerance`` (None for direct solvers).
        residual: the certificate of an iterative solver: the optimality residual it stops on
            (what it measures is stated in each solver's docstring; e.g. the norm of the exact
            gradient or of the expected update, a fixed-point residual, a duality gap). The
            same attribute name on every result type in the package. None for direct solvers.
        tolerance: the bound ``residual`` is compared with.
        wall_time: seconds the solver took.
        leaf_log_probs: ``(n_leaves,)`` ``log P(xi | s_0)`` of the policy when the solver
            formed it on the way (the closed form's ``log P*``, direct preference
            optimization's ``pi*``), else None.
        steps_taken: how many updates an iterative solver made before it stopped (policy
            gradient and :func:`~tinyrlhf.train_expected` steps, Newton or active-set
            iterations of :func:`~tinyrlhf.fit_policy_to_preferences`, integration steps of
            a numerical KL-penalty fixed point); 0 when the start was already certified;
            None for direct solvers.
        stop_reason: why an iterative solver stopped, when it says: ``"certified"``
            (``residual <= tolerance``), ``"step budget"``, ``"diverged"`` (a logit stopped
            being finite), or a solver's own reason (:func:`~tinyrlhf.policy_gradient`:
            ``"line search stalled"``, ``"objective fell"``, ``"non-finite logits"``); None
            otherwise.
        gradient_norm: Euclidean norm of the exact gradient of ``J`` w.r.t. the softmax
            logits at ``policy`` (all levels, mean over prompts), when the solver computed it
            (policy gradient), else None. Not a certificate: it vanishes near the simplex
            boundary without optimality.
        objective_gap: ``(n_prompts,)`` ``J(pi*) - J(pi) = beta KL(P_pi || P*) >= 0`` when the
            solver knows ``pi*`` (policy gradient), else None.
        info: anything else a solver reports, free-form, for display. Code reads the typed
            fields above: where a key of ``info`` has a typed twin (``steps_taken``, ``stop``,
            ``gradient_norm``, ``objective_gap``, ``leaf_log_probs``), both hold the same
            value; ``info`` keeps the keys for backward compatibility.

    ``reward`` is kept as a read-only array that owns its data (a caller's array is
    copied), so later changes to the caller's array cannot reach the solution.
    """

    policy: Policy
    method: str
    reference: Policy
    reward: np.ndarray | None
    beta: float
    log_partition: np.ndarray | None = None
    lagrange_multiplier: np.ndarray | None = None
    values: list[np.ndarray] | None = None
    history: dict[str, np.ndarray] | None = None
    converged: bool | None = None
    residual: float | None = None
    tolerance: float | None = None
    wall_time: float | None = None
    info: dict = field(default_factory=dict)
    leaf_log_probs: np.ndarray | None = None
    steps_taken: int | None = None
    stop_reason: str | None = None
    gradient_norm: float | None = None
    objective_gap: np.ndarray | None = None

    def __post_init__(self) -> None:
        reward = self.reward
        if reward is not None and not (
            isinstance(reward, np.ndarray)
            and reward.dtype == np.float64
            and reward.base is None
            and not reward.flags.writeable
        ):  # anything but an array the solver made and froze: copy it
            object.__setattr__(self, "reward", frozen_copy(reward))

    def objective(self, reward: np.ndarray | None = None) -> np.ndarray:
        """``J(pi) = E_pi[r] - beta KL(pi || pi_ref)`` per prompt (under ``reward`` if given)."""
        reward = self.reward if reward is None else reward
        if reward is None:
            raise ValueError("this solution has no reward; pass reward=")
        return objective(self.policy, self.reference, reward, self.beta)

    def kl(self) -> np.ndarray:
        """``KL(pi || pi_ref)`` per prompt."""
        return kl_divergence(self.policy, self.reference)

    def expected_reward(self, reward: np.ndarray | None = None) -> np.ndarray:
        """``E_pi[r]`` per prompt (under ``reward`` if given, e.g. the true reward)."""
        reward = self.reward if reward is None else reward
        if reward is None:
            raise ValueError("this solution has no reward; pass reward=")
        return expected_reward(self.policy, reward)

    def __repr__(self) -> str:
        parts = [f"method={self.method!r}", f"beta={self.beta:g}"]
        if self.log_partition is not None:
            parts.append(f"log_partition={np.array2string(self.log_partition, precision=6)}")
        if self.converged is not None:
            parts.append(f"converged={self.converged}")
        if self.residual is not None:
            parts.append(f"residual={self.residual:.3g}")
        if self.wall_time is not None:
            parts.append(f"wall_time={self.wall_time:.3g}s")
        return f"Solution({', '.join(parts)})"
