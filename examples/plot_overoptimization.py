"""
Reward over-optimization without optimizer noise
================================================

RLHF solved exactly (closed form) under Bradley–Terry rewards fitted from n sampled pairs,
one point per β: the proxy reward keeps rising while the true reward peaks and falls as
√KL grows — the reward model's error alone causes it (Gao et al., 2023).
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(prompts=("x",))
curve = tr.overoptimization_curve(
    tree, reward, [100, 1000], np.logspace(-2.0, 1.5, 15), seed=0, ref=ref
)
fig = plots.plot_overoptimization(
    curve.kl[:, :, 0],
    curve.true_reward[:, :, 0],
    [f"{n:,} pairs" for n in curve.n_pairs],
    proxy_gain=curve.proxy_gain[:, :, 0],
    oracle=(curve.oracle_kl[:, 0], curve.oracle_true_reward[:, 0]),
    reference_reward=float(curve.reference_reward[0]),
)
