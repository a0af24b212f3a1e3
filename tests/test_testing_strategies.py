"""The public hypothesis strategies added for students (``tinyrlhf.testing``): they draw what
they promise, and the properties they are meant for hold on what they draw."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import testing as trt


@given(trt.policy_pairs(allow_zeros=False), st.data())
def test_policy_pairs_share_a_tree_and_the_optimum_beats_the_other(pair, data):
    tree, pi, other = pair
    assert pi.tree == other.tree == tree
    assert np.all(tr.kl_divergence(pi, other) >= -1e-12)  # Gibbs' inequality
    np.testing.assert_allclose(tr.kl_divergence(pi, pi), 0.0, atol=1e-12)
    # J(other) = beta log Z - beta KL(other || pi*) with pi the reference: never above beta log Z
    reward = data.draw(trt.rewards(tree, max_magnitude=10.0))
    beta = data.draw(trt.betas())
    star = tr.closed_form(pi, reward, beta)
    j_other = tr.objective(other, pi, reward, beta)
    identity = beta * star.log_partition - beta * tr.kl_divergence(other, star.policy)
    scale = 1.0 + float(np.max(np.abs(beta * star.log_partition)))
    np.testing.assert_allclose(j_other, identity, rtol=1e-9, atol=1e-9 * scale)
    assert np.all(j_other <= star.objective() + 1e-9 * scale)


@given(trt.policy_pairs())
def test_policy_pairs_with_zeros_keep_kl_nonnegative_or_infinite(pair):
    _, pi, other = pair
    kl = tr.kl_divergence(pi, other)
    assert not np.isnan(kl).any() and np.all(kl >= -1e-12)


@given(trt.preference_datasets(max_pairs=40))
def test_preference_datasets_compare_completions_of_one_prompt(dataset):
    tree, reward, prefs = dataset
    assert reward.shape == (tree.n_leaves,) and np.isfinite(reward).all()
    n = len(prefs.prompt)
    assert 1 <= n <= 40
    assert tree.leaves_per_prompt >= 2
    leaf_prompt = tree.leaf_prompts()
    assert np.array_equal(leaf_prompt[prefs.chosen], prefs.prompt)
    assert np.array_equal(leaf_prompt[prefs.rejected], prefs.prompt)
    fit = tr.fit_bradley_terry(tree, prefs)  # the default ridge keeps the fit finite
    assert np.isfinite(fit.reward).all()


@given(trt.best_of_n_inputs(max_n=12, max_levels=3))
def test_best_of_n_inputs_have_ties_and_a_valid_n(inputs):
    ref, score, n = inputs
    assert score.shape == (ref.tree.n_leaves,)
    assert np.array_equal(score, np.round(score)) and score.min() >= 0 and score.max() <= 2
    if ref.tree.n_leaves > 3:  # pigeonhole: more leaves than levels means a tie
        assert len(np.unique(score)) < ref.tree.n_leaves
    assert 1 <= n <= 12
    if hasattr(tr, "best_of_n"):  # the KL bound of best-of-n (Beirami et al., 2024)
        result = tr.best_of_n(ref, score, n)
        assert np.all(np.asarray(result.kl) <= np.log(n) - (n - 1) / n + 1e-9)
