"""RLHF under one fitted reward against the minimax winner and the regularized Nash equilibrium
(the experiment of :mod:`tinyrlhf.minimax_comparison`; the game solvers are tested in
``test_nash.py``)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import minimax_comparison, nash
from tinyrlhf import testing as trt
from tinyrlhf.minimax_comparison import rlhf_versus_minimax


def test_old_homes_are_the_same_objects():
    # the experiment moved out of nash.py; every old import path gives the same objects
    from tinyrlhf.nash import RlhfVersusMinimax
    from tinyrlhf.nash import rlhf_versus_minimax as from_nash

    assert from_nash is tr.rlhf_versus_minimax is minimax_comparison.rlhf_versus_minimax
    assert nash.rlhf_versus_minimax is rlhf_versus_minimax
    assert RlhfVersusMinimax is tr.RlhfVersusMinimax is minimax_comparison.RlhfVersusMinimax
    assert nash.RlhfVersusMinimax is tr.RlhfVersusMinimax
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        nash.not_a_name


# ------------------------------------------------------------------ RLHF vs minimax
def test_rlhf_follows_borda_minimax_follows_condorcet():
    # 60% rank a > b > c, 40% rank b > c > a, with large margins: P(a > b) = P(a > c) = 0.6,
    # P(b > c) = 1. a is the Condorcet winner, so the minimax winner is a. A BT fit on
    # uniform pairs matches average win rates (Borda): a 1.2/2, b 1.4/2, c 0.4/2, so r_hat
    # ranks b first and RLHF at small beta plays b, which a beats with probability 0.6.
    tree = tr.TokenTree(["a", "b", "c"], 1)
    s = 40.0
    rewards = s * np.array([[2.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    result = rlhf_versus_minimax(tr.Policy.uniform(tree), rewards, [0.6, 0.4], 0.01)
    assert np.argmax(result.fitted_reward) == 1
    np.testing.assert_allclose(result.minimax, [1.0, 0.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(result.rlhf.policy.leaf_probs(), [0.0, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(result.minimax_beats_rlhf, [0.6], atol=1e-8)
    np.testing.assert_allclose(result.rlhf_worst_case, [0.4], atol=1e-8)
    np.testing.assert_allclose(result.minimax_policy.leaf_probs(), result.minimax, atol=1e-15)
    np.testing.assert_allclose(result.nash_policy.leaf_probs(), result.nash, atol=1e-15)


@settings(max_examples=15)
@given(st.data())
def test_minimax_winner_never_loses_to_rlhf(data):
    tree = data.draw(trt.trees(max_leaves=27, with_eos=data.draw(st.booleans())))
    ref = data.draw(trt.policies(tree))
    rng = np.random.default_rng(data.draw(trt.seeds))
    rewards = 4.0 * rng.standard_normal((3, tree.n_leaves))
    result = rlhf_versus_minimax(ref, rewards, rng.dirichlet(np.ones(3)), 0.5, l2=1e-3)
    assert np.all(result.minimax_beats_rlhf >= 0.5 - 1e-8)
    # the games are played on the leaves pi_ref produces
    assert np.all(result.minimax[ref.leaf_probs() == 0] == 0)
    assert np.all(result.nash[ref.leaf_probs() == 0] == 0)
    np.testing.assert_allclose(result.minimax_policy.leaf_probs(), result.minimax, atol=1e-12)


def test_pair_policy_is_called_policy():
    # `policy=` draws the compared pairs (as in population_preferences); `pair_policy=` is the
    # deprecated old name with the same meaning.
    tree = tr.TokenTree(["a", "b", "c"], 2, prompts=("x", "y"))
    ref = tr.Policy.random(tree, seed=1)
    other = tr.Policy.random(tree, seed=2)
    rng = np.random.default_rng(3)
    rewards, weights = 3.0 * rng.standard_normal((2, tree.n_leaves)), [0.3, 0.7]
    new = rlhf_versus_minimax(ref, rewards, weights, 0.5, policy=other)
    with pytest.warns(DeprecationWarning, match="pair_policy= is deprecated; use policy="):
        old = rlhf_versus_minimax(ref, rewards, weights, 0.5, pair_policy=other)
    np.testing.assert_array_equal(old.fitted_reward, new.fitted_reward)
    np.testing.assert_array_equal(old.minimax, new.minimax)
    # the pairs really come from `policy`: the fit of the mixture's population under `other`
    parts = [tr.population_preferences(tree, row, policy=other) for row in rewards]
    prefs = tr.Preferences(
        np.concatenate([part.prompt for part in parts]),
        np.concatenate([part.chosen for part in parts]),
        np.concatenate([part.rejected for part in parts]),
        np.concatenate([w * part.weight for w, part in zip(weights, parts, strict=True)]),
    )
    fit = tr.fit_bradley_terry(tree, prefs, l2=0.0)  # rlhf_versus_minimax's default l2
    np.testing.assert_allclose(new.fitted_reward, fit.reward, rtol=1e-10, atol=1e-10)
    with pytest.raises(TypeError, match="pass only policy="):  # both names: refused
        rlhf_versus_minimax(ref, rewards, weights, 0.5, policy=other, pair_policy=other)


def test_one_population_is_recovered_whatever_draws_the_pairs():
    # K = 1: the population likelihood is maximized by the true reward up to a constant per
    # prompt (population_preferences' docstring), whichever full-support policy draws the
    # pairs, so r_hat - r is constant on each prompt's block.
    tree = tr.TokenTree(["a", "b"], 2, prompts=("x", "y"))
    reward = np.random.default_rng(5).standard_normal(tree.n_leaves)
    for policy in (None, tr.Policy.random(tree, seed=6)):
        result = rlhf_versus_minimax(tr.Policy.uniform(tree), reward, [1.0], 1.0, policy=policy)
        gap = (result.fitted_reward - reward).reshape(tree.n_prompts, -1)
        np.testing.assert_allclose(gap - gap.mean(axis=1, keepdims=True), 0.0, atol=1e-8)


def test_preference_game_figure():
    from tinyrlhf import figures, plots

    fig = figures.figure_preference_game(figures.SMALL)
    assert len(fig.axes) == 4  # matrix (+ colorbar), solutions, win rates
    with pytest.raises(ValueError, match="one label per completion"):
        plots.plot_preference_game(np.full((2, 2), 0.5), ["a"], {})
