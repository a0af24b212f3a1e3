"""
KL estimators k1, k2, k3, exactly
=================================

Single-sample estimators of KL(π‖π_ref) from a generation ξ ~ π, with ρ = π_ref(ξ)/π(ξ):
k1 = −log ρ, k2 = (log ρ)²/2, k3 = ρ − 1 − log ρ. Their bias, spread and the error of their
gradient when minimized as a loss, computed by enumeration on the optima π*_β.
"""

import numpy as np

import tinyrlhf as tr
from tinyrlhf import examples, plots

tree, ref, reward = examples.demo_problem(prompts=("x",))
names = ["k1", "k2", "k3", "k1 per token", "k2 per token", "k3 per token"]
kl, means, stds, errors = (
    [],
    {n: [] for n in names},
    {n: [] for n in names},
    {n: [] for n in names},
)
for beta in np.logspace(1.5, -1.0, 12):
    report = tr.kl_estimator_report(tr.closed_form(ref, reward, float(beta)).policy, ref)
    kl.append(report.rows[0].kl)
    for row in report.rows:
        means[row.name].append(row.mean)
        stds[row.name].append(row.std)
        errors[row.name].append(row.gradient_error)
fig = plots.plot_kl_estimators(np.array(kl), means, stds, errors)
