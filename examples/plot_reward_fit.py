"""
Fitting a reward from preferences (Bradley–Terry)
=================================================

Pairs of completions are labelled by P(ξ⁺ ≻ ξ⁻) = σ(r(ξ⁺) − r(ξ⁻)); the reward model is the
maximum-likelihood fit. Rewards are identified only up to a constant per prompt, so the
truth is centred before comparing. More data, closer fit.
"""

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(prompts=("x",))
centred = reward - reward.mean()
fitted = {}
for n in (100, 1000, 10000):
    prefs = tr.sample_preferences(tree, reward, n, seed=0)
    fitted[f"{n:,} preference pairs"] = tr.fit_bradley_terry(tree, prefs).reward
fig = plots.plot_reward_fit(centred, fitted)
