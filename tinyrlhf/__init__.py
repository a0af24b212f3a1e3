"""tinyrlhf: exact RLHF on a token tree.

Implements the lecture "An Introduction to RL from Human Feedback" (G. Swamy): language as a
tree-structured MDP, learning rewards from preferences, KL-regularized RL solved by the KKT
closed form, soft value iteration and policy gradient, and the information geometry of
reverse- and forward-KL projections. ``import tinyrlhf as tr``.
"""

from .agreement import AgreementReport, check_agreement
from .best_of_n import BestOfN, BestOfNCurve, RLHFAtKL, best_of_n, best_of_n_curve, rlhf_at_kl
from .bradley_terry import (
    BradleyTerryFit,
    bradley_terry_gradient,
    bradley_terry_hessian,
    bradley_terry_nll,
    fit_bradley_terry,
)
from .divergences import entropy, expected_reward, kl_divergence, objective, total_variation
from .dpo import (
    BoundaryOptimumWarning,
    PreferenceOptimizationWarning,
    PreferenceSolution,
    fit_policy_to_preferences,
    preference_loss,
)
from .expected_training import (
    EntropyChange,
    ExpectedTrainingSolution,
    ExpectedTrainingWarning,
    depth_entropy,
    entropy_change,
    train_expected,
)
from .gradient_variance import (
    GradientVariance,
    reinforce_gradient_estimates,
    reinforce_gradient_variance,
)
from .group_relative import ExpectedUpdate, expected_update
from .kl_estimators import (
    KLEstimatorReport,
    kl_estimator_gradient,
    kl_estimator_moments,
    kl_estimator_report,
    kl_gradient,
)
from .kl_penalty import (
    KLPenaltyReport,
    KLPenaltySolution,
    KLPenaltyWarning,
    kl_penalty_fixed_point,
    kl_penalty_report,
)
from .minimax_comparison import RlhfVersusMinimax, rlhf_versus_minimax
from .nash import (
    NashConvergenceWarning,
    RegularizedNash,
    exploitability,
    minimax_winner,
    preference_matrix,
    regularized_nash,
)
from .overoptimization import OveroptimizationCurve, overoptimization_curve
from .pipeline import PipelineResult, format_pipeline, preference_pipeline
from .policy import Policy
from .preferences import Preferences, population_preferences, sample_preferences
from .projections import Projection, project, project_all
from .sft import fit_sft
from .solvers import (
    DivergenceWarning,
    PolicyGradientWarning,
    Solution,
    closed_form,
    optimal_leaf_log_probs,
    policy_gradient,
    policy_gradient_grad,
    soft_value_iteration,
)
from .sweeps import BetaPath, RewardKLFrontier, beta_path, reward_kl_frontier
from .tree import TokenTree

__version__ = "0.1.0"

__all__ = [
    "AgreementReport",
    "BestOfN",
    "BestOfNCurve",
    "BetaPath",
    "BoundaryOptimumWarning",
    "BradleyTerryFit",
    "DivergenceWarning",
    "EntropyChange",
    "ExpectedTrainingSolution",
    "ExpectedTrainingWarning",
    "ExpectedUpdate",
    "GradientVariance",
    "KLEstimatorReport",
    "KLPenaltyReport",
    "KLPenaltySolution",
    "KLPenaltyWarning",
    "NashConvergenceWarning",
    "OveroptimizationCurve",
    "PipelineResult",
    "Policy",
    "PolicyGradientWarning",
    "PreferenceOptimizationWarning",
    "PreferenceSolution",
    "Preferences",
    "Projection",
    "RLHFAtKL",
    "RegularizedNash",
    "RewardKLFrontier",
    "RlhfVersusMinimax",
    "Solution",
    "TokenTree",
    "__version__",
    "best_of_n",
    "best_of_n_curve",
    "beta_path",
    "bradley_terry_gradient",
    "bradley_terry_hessian",
    "bradley_terry_nll",
    "check_agreement",
    "closed_form",
    "depth_entropy",
    "entropy",
    "entropy_change",
    "expected_reward",
    "expected_update",
    "exploitability",
    "fit_bradley_terry",
    "fit_policy_to_preferences",
    "fit_sft",
    "format_pipeline",
    "kl_divergence",
    "kl_estimator_gradient",
    "kl_estimator_moments",
    "kl_estimator_report",
    "kl_gradient",
    "kl_penalty_fixed_point",
    "kl_penalty_report",
    "minimax_winner",
    "objective",
    "optimal_leaf_log_probs",
    "overoptimization_curve",
    "policy_gradient",
    "policy_gradient_grad",
    "population_preferences",
    "preference_loss",
    "preference_matrix",
    "preference_pipeline",
    "project",
    "project_all",
    "regularized_nash",
    "reinforce_gradient_estimates",
    "reinforce_gradient_variance",
    "reward_kl_frontier",
    "rlhf_at_kl",
    "rlhf_versus_minimax",
    "sample_preferences",
    "soft_value_iteration",
    "total_variation",
    "train_expected",
]
