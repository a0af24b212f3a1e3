"""
The KL landscape over the position family
=========================================

On ``{a, b}²`` the position family has two parameters, the logits θ₀ and θ₁ of ``a``
against ``b`` at depths 0 and 1. Reverse KL(π_θ‖P) has two local minima and a saddle
between them; forward KL(P‖π_θ) is convex with one minimum between the modes.
"""

import numpy as np
from matplotlib.figure import Figure

import tinyrlhf as tr
from tinyrlhf import examples, plots
from tinyrlhf.projections import kl_landscape

tree, log_target = examples.bimodal_problem()
target = tr.project_all(log_target, "position", "reverse", tree=tree, seed=0).target
grid = np.linspace(-6.0, 6.0, 41)
thetas = np.stack(np.meshgrid(grid, grid), axis=-1)  # (41, 41, 2): (theta_0, theta_1)

fig = Figure(figsize=(11.0, 4.6), layout="constrained")
reverse_ax, forward_ax = fig.subplots(1, 2)
for ax, divergence in ((reverse_ax, "reverse"), (forward_ax, "forward")):
    plots.plot_kl_landscape(
        grid,
        grid,
        kl_landscape(target, "position", divergence, thetas),
        title=f"{divergence} KL",
        colorbar_label="KL [nats]",
        ax=ax,
    )
