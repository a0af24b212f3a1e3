"""The end-to-end pipeline r -> preferences -> r_hat -> pi_hat*, and `tinyrlhf pipeline`."""

import re

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf.cli import main
from tinyrlhf.examples import demo_problem


@pytest.fixture(scope="module")
def result_and_problem():
    tree, ref, reward = demo_problem(horizon=3)
    result = tr.preference_pipeline(ref, reward, 0.5, [2000, 50, 400], seed=1)
    return result, (tree, ref, reward)


def test_rows_shapes_and_population_limit(result_and_problem):
    result, (tree, ref, reward) = result_and_problem
    np.testing.assert_array_equal(result.sizes, [50, 400, 2000, np.inf])  # sorted, + population
    assert result.kl.shape == result.regret.shape == (4, tree.n_prompts)
    assert len(result.rewards) == 4 and result.rewards[0].shape == (tree.n_leaves,)
    assert result.converged.all()
    # infinite data: the MLE is the true reward up to a constant per prompt, so pi_hat* = pi*
    assert result.reward_rmse[-1] < 1e-8 and result.mle_exists[-1]
    np.testing.assert_allclose(result.kl[-1], 0.0, atol=1e-12)
    np.testing.assert_allclose(
        result.expected_reward[-1], result.optimal_expected_reward, atol=1e-9
    )
    # the reported E_pi*[r] and E_pi_ref[r] are the library's
    true = tr.closed_form(ref, reward, 0.5)
    np.testing.assert_allclose(result.optimal_expected_reward, true.expected_reward(), rtol=1e-12)
    np.testing.assert_allclose(result.reference_expected_reward, tr.expected_reward(ref, reward))


def test_regret_is_beta_times_kl(result_and_problem):
    # J_r(pi) = beta log Z_r - beta KL(pi || pi*) for every pi, so the objective the learned
    # policy loses is J_r(pi*) - J_r(pi_hat*) = beta KL(pi_hat* || pi*) >= 0.
    # The pipeline computes it from the KL (non-negative terms); check it against the
    # objective difference computed independently, and that it is never negative.
    result, (tree, ref, reward) = result_and_problem
    true_objective = tr.objective(
        tr.closed_form(ref, reward, result.beta).policy, ref, reward, result.beta
    )
    for k, fitted in enumerate(result.rewards):
        learned = tr.closed_form(ref, fitted, result.beta).policy
        direct = true_objective - tr.objective(learned, ref, reward, result.beta)
        np.testing.assert_allclose(result.regret[k], direct, rtol=1e-8, atol=1e-12)
    assert np.all(result.regret >= 0) and np.all(result.kl >= 0)


def test_rows_match_a_direct_computation(result_and_problem):
    # The second row redone by hand: the first 400 pairs of the same sample, fitted and solved.
    result, (tree, ref, reward) = result_and_problem
    prefs = tr.sample_preferences(tree, reward, 2000, policy=ref, seed=np.random.default_rng(1))
    fit = tr.fit_bradley_terry(tree, prefs[:400])
    np.testing.assert_allclose(result.rewards[1], fit.reward, rtol=1e-12, atol=1e-12)
    learned = tr.closed_form(ref, fit.reward, 0.5)
    true = tr.closed_form(ref, reward, 0.5)
    np.testing.assert_allclose(
        result.kl[1], tr.kl_divergence(learned.policy, true.policy), rtol=1e-12
    )
    assert result.n_never_compared[1] == fit.never_compared.size


def test_more_data_helps_on_average():
    # Not a theorem for one sample, but with nested datasets from 30 to 30000 pairs on the
    # demo problem the RMS reward error must fall by far more than sampling noise.
    tree, ref, reward = demo_problem(horizon=2)
    result = tr.preference_pipeline(ref, reward, 1.0, [30, 30_000], seed=2, population=False)
    assert result.sizes.tolist() == [30.0, 30_000.0]
    assert result.reward_rmse[1] < 0.5 * result.reward_rmse[0]
    assert result.kl[1].mean() < result.kl[0].mean()


def test_table_and_bad_arguments(result_and_problem):
    result, (tree, ref, reward) = result_and_problem
    text = str(result)
    assert "population" in text and "KL(pi_hat*||pi*)" in text and "2,000" in text
    assert text == tr.format_pipeline(result)
    with pytest.raises(TypeError, match="sizes"):
        tr.preference_pipeline(ref, reward, 0.5, 100)
    with pytest.raises(ValueError, match="sizes"):
        tr.preference_pipeline(ref, reward, 0.5, [0, 10])
    with pytest.raises(ValueError, match="beta"):
        tr.preference_pipeline(ref, reward, -1.0, [10])
    with pytest.raises(TypeError, match="ref"):
        tr.preference_pipeline("ref", reward, 0.5, [10])


def test_sizes_are_checked_up_front():
    # 99,999,999,999 pairs is about 12 TiB of arrays: refused at once, naming the size, not a
    # bare MemoryError after the exact solves (`tinyrlhf pipeline --sizes 99999999999`).
    tree, ref, reward = demo_problem(horizon=2)
    with pytest.raises(ValueError, match=r"max\(sizes\) = 99,999,999,999 preference pairs"):
        tr.preference_pipeline(ref, reward, 0.5, [100, 99_999_999_999])
    assert main(["pipeline", "--sizes", "99999999999"]) == 2


def test_pair_policy_is_called_policy():
    # `policy=` draws the compared pairs (as in sample_preferences); `sampling_policy=` is the
    # deprecated old name with the same meaning.
    tree, ref, reward = demo_problem(horizon=2)
    other = tr.Policy.uniform(tree)
    new = tr.preference_pipeline(ref, reward, 0.5, [300], policy=other, seed=3, population=False)
    with pytest.warns(DeprecationWarning, match="sampling_policy= is deprecated; use policy="):
        old = tr.preference_pipeline(
            ref, reward, 0.5, [300], sampling_policy=other, seed=3, population=False
        )
    np.testing.assert_array_equal(old.rewards[0], new.rewards[0])
    prefs = tr.sample_preferences(tree, reward, 300, policy=other, seed=np.random.default_rng(3))
    fit = tr.fit_bradley_terry(tree, prefs)
    np.testing.assert_allclose(new.rewards[0], fit.reward, rtol=1e-12, atol=1e-12)
    # distinct=False: the independent pairs of sample_preferences(distinct=False)
    ties = tr.preference_pipeline(
        ref, reward, 0.5, [300], seed=3, population=False, distinct=False
    )
    prefs = tr.sample_preferences(tree, reward, 300, policy=ref, seed=3, distinct=False)
    np.testing.assert_allclose(
        ties.rewards[0], tr.fit_bradley_terry(tree, prefs).reward, rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="same TokenTree"):
        tr.preference_pipeline(
            ref, reward, 0.5, [10], policy=tr.Policy.uniform(tr.TokenTree(["a"], 1))
        )
    with pytest.raises(TypeError, match="policy must be"):
        tr.preference_pipeline(ref, reward, 0.5, [10], policy="ref")


def test_cli_pipeline(capsys):
    assert main(["pipeline", "--horizon", "3", "--sizes", "100,1000", "--beta", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "population" in out and "E_pi*[r]" in out
    # the printed E_pi*[r] is the library's, for the same problem
    tree, ref, reward = demo_problem(horizon=3)
    printed = float(re.search(r"E_pi\*\[r\] = ([-0-9.]+)", out).group(1))
    expected = tr.closed_form(ref, reward, 0.5).expected_reward().mean()
    np.testing.assert_allclose(printed, expected, atol=1e-6)
    assert main(["pipeline", "--sizes", "10,lots"]) == 2
    assert "--sizes" in capsys.readouterr().err
    assert main(["pipeline", "--sizes", "0"]) == 2
    assert "sizes" in capsys.readouterr().err
