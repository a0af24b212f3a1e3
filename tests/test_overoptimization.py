"""Over-optimization curves with an exact policy step (issue 7, section 4)."""

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf import examples
from tinyrlhf.overoptimization import overoptimization_curve

BETAS = np.logspace(-2, 1, 9)


def demo():
    tree, ref, reward = examples.demo_problem(horizon=3)
    return tree, ref, reward


def test_curve_is_the_closed_form_under_the_nested_fits():
    # Recompute every point independently: the first n pairs of one sample (same seed), the
    # Bradley-Terry fit, the closed form, and the exact expectations.
    tree, ref, reward = demo()
    sizes = [30, 300]
    curve = overoptimization_curve(tree, reward, sizes, BETAS, seed=7, ref=ref)
    prefs = tr.sample_preferences(tree, reward, sizes[-1], policy=ref, seed=7)
    for i, n in enumerate(sizes):
        r_hat = tr.fit_bradley_terry(tree, prefs[:n]).reward
        np.testing.assert_allclose(curve.fitted_reward[i], r_hat, rtol=0, atol=0)
        for j, beta in enumerate(BETAS):
            policy = tr.closed_form(ref, r_hat, beta).policy
            np.testing.assert_allclose(
                curve.true_reward[i, j], tr.expected_reward(policy, reward), rtol=1e-14
            )
            np.testing.assert_allclose(curve.kl[i, j], tr.kl_divergence(policy, ref), rtol=1e-14)
    assert curve.true_reward.shape == (2, BETAS.size, tree.n_prompts)


def test_no_point_beats_the_oracle_lagrangian():
    # For any policy and any beta': E[r] - beta' KL <= beta' log Z(beta') (the closed form is
    # the optimum of the regularized objective), so every (KL, true reward) of the curves lies
    # below the oracle frontier.
    tree, ref, reward = demo()
    curve = overoptimization_curve(tree, reward, [20, 100, 1000], BETAS, seed=1, ref=ref)
    for beta in np.logspace(-2, 2, 25):
        bound = beta * tr.closed_form(ref, reward, beta).log_partition  # (n_prompts,)
        assert np.all(curve.true_reward - beta * curve.kl <= bound + 1e-12)
    # the oracle points are the frontier itself: equality at their own beta
    for j, beta in enumerate(BETAS):
        value = curve.oracle_true_reward[j] - beta * curve.oracle_kl[j]
        np.testing.assert_allclose(
            value, beta * tr.closed_form(ref, reward, beta).log_partition, rtol=1e-12
        )


def test_monotone_in_beta_and_limits():
    # d E_{P*}[r_hat] / d beta = -Var_{P*}(r_hat) / beta^2 <= 0 and KL decreases with beta,
    # so the proxy gain and the KL fall as beta grows (betas are increasing); as beta -> inf
    # the optimum is the reference: KL -> 0, gain -> 0, true reward -> E_ref[r].
    tree, ref, reward = demo()
    betas = np.r_[BETAS, 1e7]
    curve = overoptimization_curve(tree, reward, [50, 500], betas, seed=2, ref=ref)
    assert np.all(np.diff(curve.proxy_gain, axis=1) <= 1e-12)
    assert np.all(np.diff(curve.kl, axis=1) <= 1e-12)
    assert np.all(curve.proxy_gain >= -1e-12)
    np.testing.assert_allclose(curve.kl[:, -1], 0.0, atol=1e-12)
    np.testing.assert_allclose(
        curve.true_reward[:, -1], np.broadcast_to(curve.reference_reward, (2, 2)), atol=1e-6
    )


def test_more_data_approaches_the_oracle():
    # The fit is consistent: with 2e5 pairs on 27 completions per prompt the true reward of
    # the RLHF optimum is close to the oracle's at every beta, far closer than with 30.
    tree, ref, reward = demo()
    curve = overoptimization_curve(tree, reward, [30, 200_000], BETAS, seed=3, ref=ref, l2=1e-6)
    gap = np.abs(curve.true_reward - curve.oracle_true_reward[None]).max(axis=(1, 2))
    assert gap[1] < 0.1 and gap[1] < gap[0] / 10


def test_bad_input():
    tree, ref, reward = demo()
    with pytest.raises(ValueError, match="strictly increasing"):
        overoptimization_curve(tree, reward, [100, 50], BETAS, seed=0)
    with pytest.raises(ValueError, match="n_pairs must be >= 1"):
        overoptimization_curve(tree, reward, 0, BETAS, seed=0)
    with pytest.raises(TypeError, match="n_pairs"):
        overoptimization_curve(tree, reward, "many", BETAS, seed=0)
    with pytest.raises(ValueError, match="betas must be finite and > 0"):
        overoptimization_curve(tree, reward, 10, [0.1, -1.0], seed=0)
    with pytest.raises(ValueError, match="reward must have shape"):
        overoptimization_curve(tree, reward[:-1], 10, BETAS, seed=0)
    other = tr.Policy.uniform(tr.TokenTree(["a", "b"], 2))
    with pytest.raises(TypeError, match="ref must be"):
        overoptimization_curve(tree, reward, 10, BETAS, seed=0, ref=other)
    with pytest.raises(TypeError, match="seed"):
        overoptimization_curve(tree, reward, 10, BETAS, seed="zero")


def test_sizes_are_checked_before_sampling():
    tree, ref, reward = demo()
    with pytest.raises(ValueError, match=r"max\(n_pairs\) = 99,999,999,999 preference pairs"):
        overoptimization_curve(tree, reward, [10, 99_999_999_999], BETAS, seed=0, ref=ref)


def test_old_keyword_names_still_work():
    # DESIGN.md: the pair-drawing policy is `policy=` and the reward `reward`; the old names
    # r_true= and pair_policy= are deprecated aliases with the same meaning.
    tree, ref, reward = demo()
    other = tr.Policy.random(tree, seed=3)
    new = overoptimization_curve(tree, reward, [20, 50], BETAS, seed=4, ref=ref, policy=other)
    with pytest.warns(DeprecationWarning, match="pair_policy= is deprecated; use policy="):
        with pytest.warns(DeprecationWarning, match="r_true= is deprecated; use reward="):
            old = overoptimization_curve(
                tree, r_true=reward, n_pairs=[20, 50], betas=BETAS, seed=4, ref=ref,
                pair_policy=other,
            )  # fmt: skip
    np.testing.assert_array_equal(old.true_reward, new.true_reward)
    np.testing.assert_array_equal(old.fitted_reward, new.fitted_reward)
    # the pairs really come from `policy`: the same data as sampling it directly
    prefs = tr.sample_preferences(tree, reward, 50, policy=other, seed=4)
    fit = tr.fit_bradley_terry(tree, prefs)
    np.testing.assert_allclose(new.fitted_reward[1], fit.reward, rtol=1e-12, atol=1e-12)
    ties = overoptimization_curve(tree, reward, [50], BETAS, seed=4, ref=ref, distinct=False)
    prefs = tr.sample_preferences(tree, reward, 50, policy=ref, seed=4, distinct=False)
    np.testing.assert_allclose(
        ties.fitted_reward[0], tr.fit_bradley_terry(tree, prefs).reward, rtol=1e-12, atol=1e-12
    )
    with pytest.raises(TypeError, match="pass only policy="):  # both names: refused
        overoptimization_curve(tree, reward, 20, BETAS, seed=0, policy=other, pair_policy=other)
    with pytest.raises(TypeError, match="policy must be"):
        overoptimization_curve(tree, reward, 20, BETAS, seed=0, policy="ref")


def test_overoptimization_figure():
    from tinyrlhf import figures, plots

    fig = figures.figure_overoptimization(figures.SMALL)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="same"):
        plots.plot_overoptimization(np.zeros((2, 3)), np.zeros((2, 4)), ["a", "b"])
