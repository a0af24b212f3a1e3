"""
The token tree: π_ref and π* on every edge
==========================================

One prompt, tokens ``a`` and ``b``, horizon 3: eight complete generations. Each edge carries
the reference policy π_ref(a|s) and the KL-regularized optimum
π*(a|s), whose leaf distribution is P* ∝ P_ref·exp(r/β) (the lecture's closed form).
"""

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(tokens=("a", "b"), horizon=3, prompts=("x",))
beta = 0.7
star = tr.closed_form(ref, reward, beta)
print("log Z =", star.log_partition, " KL(π*‖π_ref) =", star.kl())

fig = plots.plot_token_tree(
    tree,
    {"π_ref": ref, "π*": star.policy},
    leaf_values={"r": reward, "P_ref": ref.leaf_probs(), "P*": star.policy.leaf_probs()},
)
fig.axes[0].set_title(f"π_ref and π* ∝ π_ref·exp(r/β) on each edge (β = {beta:g})")
