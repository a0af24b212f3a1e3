"""
Best-of-n and RLHF under a fitted reward
========================================

Both select by a Bradley–Terry fit r̂ from sampled preference pairs, and the true reward r
judges them: best-of-n over n = 1 … 64 (solid) and the KL-regularized optimum under r̂ at the
same KL (dashed), against the frontier under r itself. The true reward peaks and falls as the
KL grows — over-optimization from the reward model's error alone, with exact policies.
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, _ = examples.demo_problem(prompts=("x",))
r_true = np.random.default_rng(1).normal(size=tree.n_leaves)  # a reward hard to learn
ns = 2 ** np.arange(0, 7)
prefs = tr.sample_preferences(tree, r_true, 1000, policy=ref, seed=0)
curves = {}
for size in (100, 1000):
    r_hat = tr.fit_bradley_terry(tree, prefs[:size]).reward
    curve = tr.best_of_n_curve(ref, r_hat, ns, reward=r_true)
    curves[f"best-of-n under r̂ ({size:,} pairs)"] = (curve.kl[:, 0], curve.expected_reward[:, 0])
    curves[f"RLHF under r̂ ({size:,} pairs), same KL"] = (
        curve.kl[:, 0],
        curve.rlhf_expected_reward[:, 0],
    )
frontier = tr.reward_kl_frontier(ref, r_true, np.logspace(-2.5, 2.0, 30))
fig = plots.plot_best_of_n_proxy(
    curves,
    (frontier.kl[:, 0], frontier.expected_reward[:, 0]),
    reference_reward=float(tr.expected_reward(ref, r_true)[0]),
)
