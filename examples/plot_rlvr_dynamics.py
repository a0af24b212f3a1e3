"""
Exact mean-field training: RLOO, GRPO, Dr. GRPO
===============================================

Training on the exact expected update (no sampling noise) on three prompts of different
difficulty with a 0/1 verifiable reward, k1 in the reward and β = 0.1, natural updates,
G = 8. RLOO's update is an unbiased policy gradient, so it converges to π* ∝ π_ref·exp(r/β)
(black: the success of π* per prompt, near 1); GRPO and Dr. GRPO reweight prompts and stop
at their own fixed points π ∝ π_ref·exp(w_π/β). Right: the norm of the update, the
certificate that each run reached its fixed point.
"""

import tinyrlhf as tr
from tinyrlhf import plots
from tinyrlhf.expected_training import verifiable_problem

tree, ref, reward = verifiable_problem()
beta, tol = 0.1, 1e-9
star = tr.closed_form(ref, reward, beta)
success, residuals = {}, {}
for estimator in ("rloo", "grpo", "dr_grpo"):
    run = tr.train_expected(
        ref,
        reward,
        estimator=estimator,
        group_size=8,
        beta=beta,
        kl_estimator="k1",
        kl_placement="reward",
        kl_level="sequence",
        lr=1.0,
        steps=200,  # each run meets tol within 175 steps (else it would warn)
        update="natural",
        tol=tol,
    )
    success[estimator] = run.history["prompt_expected_reward"]
    residuals[estimator] = run.history["residual"]
fig = plots.plot_training_dynamics(
    success, star.expected_reward(), tree.prompts, residuals, tolerance=tol
)
