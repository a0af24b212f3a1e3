"""
What β does: the optimum over four decades
===========================================

:func:`tinyrlhf.beta_path` solves the closed form for every β: E_π*[r], the objective, KL,
entropy, log Z and λ* = β(1 − log Z). Small β chases the reward, large β stays at π_ref.
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(prompts=("x",))
path = tr.beta_path(ref, reward, np.logspace(-2.0, 2.0, 25))
fig = plots.plot_beta_path(path)
