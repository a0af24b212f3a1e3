"""
Policy gradient converging to the closed form
=============================================

The gap J(π*) − J(π_t) per step: the natural gradient with step 1/β is soft policy iteration
and is exact after at most H steps; plain gradient ascent is slow at rarely visited states;
REINFORCE and PPO learn from sampled generations and stall at their noise floor.
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(prompts=("x",))
beta = 0.7
best = float(tr.closed_form(ref, reward, beta).objective()[0])
gaps = {}
for method, steps in (("exact", 300), ("natural", 8), ("reinforce", 200), ("ppo", 60)):
    history = tr.policy_gradient(ref, reward, beta, method=method, steps=steps, seed=0).history
    gaps[method] = best - history["objective"]
fig = plots.plot_convergence(gaps, floor=np.finfo(np.float64).eps * max(1.0, abs(best)))
