"""
Length bias of GRPO's per-sequence average
==========================================

On a tree with an end token $ (reward 1 iff the completion contains "ab", uniform π_ref),
the weight w(y) each estimator's expected update gives a correct and an incorrect completion
of each length, and the expected length :math:`E|y|` under exact training (natural updates,
G = 8). GRPO's per-sequence average :math:`1/|y|` rewards short correct completions most and
penalizes long incorrect ones least; DAPO's token average over the whole group weakens the
bias, and Dr. GRPO and RLOO weigh every length alike (Dr. GRPO's normalized weights are
RLOO's, hidden under them).
"""

import warnings

import numpy as np

import tinyrlhf as tr
from tinyrlhf import plots
from tinyrlhf.expected_training import length_problem

tree, ref, reward = length_problem()
lengths = np.arange(1, tree.horizon + 1)
valid = tree.valid_leaves()
weights, mean_lengths = {}, {}
for estimator in ("grpo", "dapo", "dr_grpo", "rloo"):
    update = tr.expected_update(ref, reward, estimator=estimator, group_size=8)
    w = update.leaf_weights / np.abs(update.leaf_weights).max()  # (n_leaves,)
    rows = []
    for value in (1.0, 0.0):  # correct, incorrect: mean weight per length (NaN if none)
        masks = [valid & (reward == value) & (update.lengths == n) for n in lengths]
        rows.append(np.array([w[mask].mean() if mask.any() else np.nan for mask in masks]))
    weights[estimator] = (rows[0], rows[1])
    with warnings.catch_warnings():  # the first 30 steps only: they stop short of tol
        warnings.simplefilter("ignore", tr.ExpectedTrainingWarning)
        run = tr.train_expected(
            ref, reward, estimator=estimator, group_size=8, lr=1.0, steps=30, update="natural"
        )
    mean_lengths[estimator] = run.history["mean_length"]
fig = plots.plot_length_bias(lengths, weights, mean_lengths)
