"""
Where a KL penalty trains to
============================

A KL penalty can use the estimator k1, k2 or k3, sit in the reward or in the loss, and be
summed per token or taken once per sequence. For each combination the fixed point of exact
training is solved and compared with π* of the KL-regularized objective: its total-variation
distance and the objective it loses. Only k1 in the reward and sequence-level k2 in the loss
optimize the intended objective; the others optimize a different divergence.
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem()
report = tr.kl_penalty_report(ref, reward, examples.DEMO_BETA)
fig = plots.plot_kl_penalty(
    [row.name for row in report.rows],
    [row.optimizes for row in report.rows],
    np.array([row.tv for row in report.rows]),
    np.array([row.objective_lost for row in report.rows]),
    [row.stationary for row in report.rows],
)
