"""check_agreement: the report compares solutions and its assertion can fail."""

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf.examples import DEMO_BETA, demo_problem


def test_agreeing_solutions_pass_and_print_a_table():
    tree, ref, reward = demo_problem()
    report = tr.check_agreement(
        tr.closed_form(ref, reward, DEMO_BETA),
        tr.soft_value_iteration(ref, reward, DEMO_BETA),
        tr.policy_gradient(ref, reward, DEMO_BETA, method="natural"),
    )
    report.assert_close()
    text = str(report)
    assert "closed_form" in text and "soft_value_iteration" in text and "max TV" in text
    assert report.max_tv < 1e-12 and report.max_abs_log_pi < 1e-9


def test_disagreement_is_reported_and_asserted():
    tree, ref, reward = demo_problem()
    optimum = tr.closed_form(ref, reward, DEMO_BETA)
    with pytest.warns(tr.PolicyGradientWarning, match="not certified"):  # 3 steps: far off
        rough = tr.policy_gradient(ref, reward, DEMO_BETA, method="exact", steps=3)
    report = tr.check_agreement(optimum, rough)
    row = report.rows[1]
    # The gap is J(pi*) - J(pi) = beta KL(pi || pi*) (the RKL identity), measured independently.
    expected_gap = DEMO_BETA * tr.kl_divergence(rough.policy, optimum.policy)
    np.testing.assert_allclose(row.objective_gap, expected_gap.max(), rtol=1e-8)
    np.testing.assert_allclose(
        row.max_tv, tr.total_variation(rough.policy, optimum.policy).max(), rtol=1e-12
    )
    with pytest.raises(AssertionError, match="solutions disagree"):
        report.assert_close()


def test_bad_arguments():
    tree, ref, reward = demo_problem()
    solution = tr.closed_form(ref, reward, DEMO_BETA)
    with pytest.raises(ValueError, match="at least two"):
        tr.check_agreement(solution)
    with pytest.raises(TypeError, match=r"solutions\[1\]"):
        tr.check_agreement(solution, solution.policy)
    with pytest.raises(ValueError, match="beta"):
        tr.check_agreement(solution, tr.closed_form(ref, reward, 2 * DEMO_BETA))
    with pytest.raises(ValueError, match="different reward"):
        tr.check_agreement(solution, tr.closed_form(ref, reward + 1, DEMO_BETA))
