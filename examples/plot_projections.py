"""
Reverse vs forward KL projections of a bimodal target
=====================================================

The target puts 0.6 on ``aa`` and 0.38 on ``bb``. The *position* family (the next-token
distribution depends only on the depth) cannot represent it. The reverse projection
argmin KL(π‖P), what RLHF computes, commits to a mode (it has two local optima); the forward
projection argmin KL(P‖π), what maximum likelihood computes, covers both.
"""

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, log_target = examples.bimodal_problem()
reverse = tr.project_all(log_target, "position", "reverse", tree=tree, seed=0)
forward = tr.project_all(log_target, "position", "forward", tree=tree)

policies = {"target P": reverse.target}
for k, optimum in enumerate(reverse.optima):
    policies[f"reverse KL, optimum {k}: KL(π‖P) = {optimum.kl[0]:.3f}"] = optimum.policy
policies[f"forward KL: KL(P‖π) = {forward.kl[0]:.3f}"] = forward.policy
fig = plots.plot_leaf_distributions(tree, policies)
