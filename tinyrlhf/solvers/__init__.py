"""Three solvers of ``max_pi E_pi[r] - beta KL(pi || pi_ref)`` (lecture section 4)."""

from .closed_form import closed_form, optimal_leaf_log_probs
from .policy_gradient import (
    DivergenceWarning,
    PolicyGradientWarning,
    policy_gradient,
    policy_gradient_grad,
)
from .soft_vi import soft_value_iteration
from .solution import Solution

__all__ = [
    "DivergenceWarning",
    "PolicyGradientWarning",
    "Solution",
    "closed_form",
    "optimal_leaf_log_probs",
    "policy_gradient",
    "policy_gradient_grad",
    "soft_value_iteration",
]
