"""tinyrlhf: exact RLHF on a token tree.

Implements the lecture "An Introduction to RL from Human Feedback" (G. Swamy): language as a
tree-structured MDP, learning rewards from preferences, KL-regularized RL solved by the KKT
closed form, soft value iteration and policy gradient, and the information geometry of
reverse- and forward-KL projections. ``import tinyrlhf as tr``.
"""

from .agreement import AgreementReport, check_agreement
from .divergences import entropy, expected_reward, kl_divergence, objective, total_variation
from .policy import Policy
from .solvers import (
    Solution,
    closed_form,
    optimal_leaf_log_probs,
    policy_gradient,
    policy_gradient_grad,
    soft_value_iteration,
)
from .tree import TokenTree

__version__ = "0.1.0"

__all__ = [
    "AgreementReport",
    "Policy",
    "Solution",
    "TokenTree",
    "__version__",
    "check_agreement",
    "closed_form",
    "entropy",
    "expected_reward",
    "kl_divergence",
    "objective",
    "optimal_leaf_log_probs",
    "policy_gradient",
    "policy_gradient_grad",
    "soft_value_iteration",
    "total_variation",
]
