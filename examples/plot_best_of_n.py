"""
Best-of-n, exactly, against the reward–KL frontier
==================================================

Best-of-n draws n generations from π_ref and keeps the one with the highest reward; its
distribution is exact in closed form (no sampling). It lies just below the frontier of the
KL-regularized optimum π*_β, and its KL(P_BoN ‖ P_ref) stays below the popular
log n − (n − 1)/n, which is tight only while n is small against the number of distinct
outcomes (Beirami et al., 2024): a 0/1 verifier saturates at −log P_ref(pass).
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(prompts=("x",))
ns = 2 ** np.arange(0, 9)
curve = tr.best_of_n_curve(ref, reward, ns)
frontier = tr.reward_kl_frontier(ref, reward, np.logspace(-2.5, 2.0, 30))
verifier = (reward == reward.max()).astype(float)  # passes iff the reward is the best
verifier_kl = np.array([tr.best_of_n(ref, verifier, int(n)).kl[0] for n in ns])
fig = plots.plot_best_of_n(
    ns,
    curve.kl[:, 0],
    curve.expected_reward[:, 0],
    (frontier.kl[:, 0], frontier.expected_reward[:, 0]),
    kl_bound=curve.kl_bound,
    extra_kl={"0/1 verifier (ties)": verifier_kl},
)
