"""
Borda against Condorcet: RLHF vs the minimax winner
===================================================

Three completions; 60% of labellers rank a ≻ b ≻ c, 40% rank b ≻ c ≻ a. One Bradley–Terry
reward fitted to the pooled labels ranks b first (Borda); the minimax winner of the
preference game is a (Condorcet), which beats RLHF's b 60% of the time.
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import plots

tree = tr.TokenTree(["a", "b", "c"], 1)
ref = tr.Policy.uniform(tree)
rewards = 40.0 * np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0]])  # (populations, leaves)
weights = np.array([0.6, 0.4])
beta = 0.05
game = tr.rlhf_versus_minimax(ref, rewards, weights, beta)
fig = plots.plot_preference_game(
    game.preference[0],
    ["a", "b", "c"],
    {
        "π_ref": ref.leaf_probs(),
        f"RLHF under r̂_BT, β = {beta:g}": game.rlhf.policy.leaf_probs(),
        "minimax winner": game.minimax,
        f"regularized Nash, τ = {beta:g}": game.nash,
    },
)
