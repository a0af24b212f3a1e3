"""
The reward–KL frontier
======================

max E_π[r] subject to KL(π‖π_ref) ≤ ε is attained by π*_β, with slope β. The three solvers'
policies land on the frontier; perturbed reference policies lie below it.
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(prompts=("x",))
beta = 0.7
frontier = tr.reward_kl_frontier(ref, reward, np.logspace(-2.0, 2.0, 40))
points = {}
for label, solution in {
    "closed form": tr.closed_form(ref, reward, beta),
    "soft value iteration": tr.soft_value_iteration(ref, reward, beta),
    "policy gradient (natural)": tr.policy_gradient(ref, reward, beta, method="natural"),
}.items():
    points[f"{label}, β = {beta:g}"] = (
        float(solution.kl()[0]),
        float(solution.expected_reward()[0]),
    )

rng = np.random.default_rng(0)
others = [
    tr.Policy.from_logits(tree, [t + s * rng.standard_normal(t.shape) for t in ref.log_probs])
    for s in np.linspace(0.05, 1.5, 40)
]
background = (
    np.array([tr.kl_divergence(other, ref)[0] for other in others]),
    np.array([tr.expected_reward(other, reward)[0] for other in others]),
)
fig = plots.plot_frontier(frontier, points=points, background=background)
