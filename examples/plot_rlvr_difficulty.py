"""
Difficulty bias of GRPO, Dr. GRPO and RLOO
==========================================

One prompt per success probability p with a 0/1 reward; each estimator's exact expected
update on a prompt is a multiple of ∇P(r = 1), and that multiple is plotted against p. GRPO
divides by the group's reward standard deviation, which up-weights too-easy and too-hard
prompts (towards 1/√(p(1 − p)) for large groups), and a group with identical rewards gives 0;
RLOO's leave-one-out baseline is unbiased, scale 1 (Liu et al., 2025).
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import plots

success = np.linspace(0.01, 0.99, 25)
# one token per prompt: 'right' (reward 1) with probability p, else 'wrong'
tree = tr.TokenTree(("right", "wrong"), 1, tuple(f"p{k}" for k in range(success.size)))
policy = tr.Policy(tree, [np.log(np.stack([success, 1 - success], axis=1))])
reward = np.tile([1.0, 0.0], success.size)
scales = {}
for estimator in ("grpo", "dr_grpo", "rloo"):
    for group_size in (4, 16):
        update = tr.expected_update(policy, reward, estimator=estimator, group_size=group_size)
        scales[f"{estimator}, G = {group_size}"] = update.prompt_scale
fig = plots.plot_difficulty_bias(
    success,
    scales,
    reference={"1/√(p(1−p)): std normalization as G → ∞": 1 / np.sqrt(success * (1 - success))},
)
