"""Exact KL, entropy and the RLHF objective."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.examples import demo_problem


@given(st.data())
def test_chain_rule_equals_leaf_sum(data):
    tree = data.draw(trt.trees())
    p = data.draw(trt.policies(tree))
    q = data.draw(trt.policies(tree))
    chain = tr.kl_divergence(p, q)
    leaves = tr.kl_divergence(p, q, method="leaves")
    assert chain.shape == (tree.n_prompts,)
    assert not np.isnan(chain).any() and not np.isnan(leaves).any()
    np.testing.assert_array_equal(np.isinf(chain), np.isinf(leaves))
    finite = np.isfinite(chain)
    np.testing.assert_allclose(chain[finite], leaves[finite], rtol=1e-9, atol=1e-11)
    assert np.all(chain >= 0) and np.all(leaves >= 0)  # sums of terms >= 0: no rounding below 0


@given(st.data())
def test_exact_quantities_never_come_out_negative(data):
    # q differs from p by logits of order 1e-9 .. 1e-15, where a plain sum of p log(p/q)
    # rounds to about +-1e-17: KL, entropy and TV must still be >= 0 (terms >= 0 by
    # construction, no clipping), and KL(p || p) exactly 0.
    tree = data.draw(trt.trees())
    rng = np.random.default_rng(data.draw(trt.seeds))
    logits = [
        rng.standard_normal((tree.level_size(h), tree.n_tokens)) for h in range(tree.horizon)
    ]
    scale = data.draw(st.sampled_from([1e-9, 1e-12, 1e-15]))
    p = tr.Policy.from_logits(tree, logits)
    q = tr.Policy.from_logits(tree, [x + scale * rng.standard_normal(x.shape) for x in logits])
    for kl in (tr.kl_divergence(p, q), tr.kl_divergence(p, q, method="leaves")):
        assert np.all(kl >= 0)
        assert np.all(kl <= 10 * tree.horizon * scale**2 + 1e-30)  # second order in the gap
    assert np.all(tr.kl_divergence(p, p) == 0) and np.all(tr.entropy(p) >= 0)
    assert np.all(tr.total_variation(p, q) >= 0)


@given(st.data())
def test_kl_to_itself_is_zero_and_entropy_matches_leaves(data):
    tree = data.draw(trt.trees())
    p = data.draw(trt.policies(tree))
    np.testing.assert_allclose(tr.kl_divergence(p, p), 0.0, atol=1e-12)
    leaf_log_probs = p.leaf_log_probs().reshape(tree.n_prompts, -1)
    plogp = np.where(
        np.isneginf(leaf_log_probs),
        0.0,
        np.exp(leaf_log_probs) * np.nan_to_num(leaf_log_probs, neginf=0.0),
    )
    np.testing.assert_allclose(tr.entropy(p), -plogp.sum(axis=1), rtol=1e-9, atol=1e-12)
    # KL to the uniform policy = H log A - entropy (derived from the definitions).
    uniform = tr.Policy.uniform(tree)
    np.testing.assert_allclose(
        tr.kl_divergence(p, uniform),
        tree.horizon * np.log(tree.n_tokens) - tr.entropy(p),
        rtol=1e-9,
        atol=1e-10,
    )


def test_kl_by_hand_and_infinite_off_support():
    # One level, two tokens: KL([0.5, 0.5] || [0.25, 0.75]) = 0.5 log 2 + 0.5 log(2/3).
    tree = tr.TokenTree(["a", "b"], 1)
    p = tr.Policy(tree, [np.log([[0.5, 0.5]])])
    q = tr.Policy(tree, [np.log([[0.25, 0.75]])])
    np.testing.assert_allclose(
        tr.kl_divergence(p, q), [0.5 * np.log(2) + 0.5 * np.log(2 / 3)], rtol=1e-14
    )
    only_a = tr.Policy(tree, [np.array([[0.0, -np.inf]])])
    assert tr.kl_divergence(p, only_a)[0] == np.inf
    np.testing.assert_allclose(tr.kl_divergence(only_a, p), [np.log(2)], rtol=1e-14)
    assert tr.objective(p, only_a, np.zeros(2), 1.0)[0] == -np.inf


def test_unreached_states_do_not_count():
    # p never says "b" first, so the row of state "b" (where p and q disagree totally) is
    # unreached and contributes nothing; the first level gives KL([1,0] || [.5,.5]) = log 2.
    tree = tr.TokenTree(["a", "b"], 2)
    p = tr.Policy(tree, [np.array([[0.0, -np.inf]]), np.log([[0.5, 0.5], [1.0, 1e-300]])])
    q = tr.Policy(
        tree, [np.log([[0.5, 0.5]]), np.array([[np.log(0.5), np.log(0.5)], [-np.inf, 0.0]])]
    )
    np.testing.assert_allclose(tr.kl_divergence(p, q), [np.log(2)], rtol=1e-14)


def test_objective_is_reward_minus_beta_kl():
    tree, ref, reward = demo_problem()
    policy = tr.Policy.random(tree, seed=5)
    beta = 0.3
    expected = (policy.leaf_probs() * reward).reshape(2, -1).sum(axis=1) - beta * tr.kl_divergence(
        policy, ref, method="leaves"
    )
    np.testing.assert_allclose(tr.objective(policy, ref, reward, beta), expected, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.0, -1.0, np.inf, np.nan])
def test_objective_rejects_bad_beta(beta):
    tree = tr.TokenTree(["a", "b"], 1)
    policy = tr.Policy.uniform(tree)
    with pytest.raises(ValueError, match="beta"):
        tr.objective(policy, policy, np.zeros(2), beta)


def test_objective_rejects_bad_reward():
    tree = tr.TokenTree(["a", "b"], 1)
    policy = tr.Policy.uniform(tree)
    with pytest.raises(ValueError, match=r"reward must have shape \(2,\)"):
        tr.objective(policy, policy, np.zeros(3), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        tr.objective(policy, policy, np.array([0.0, np.nan]), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        tr.objective(policy, policy, np.array([0.0, np.inf]), 1.0)
    other = tr.Policy.uniform(tr.TokenTree(["a", "b"], 2))
    with pytest.raises(ValueError, match="same TokenTree"):
        tr.kl_divergence(policy, other)


def test_kl_of_far_apart_policies_is_finite_without_overflow_warnings():
    # log-probabilities of -1e100 (finite, probability 0 in float64): the Taylor-series
    # branch must not be evaluated where it is not used (d^6 would overflow). By hand,
    # KL = sum p log(p/q) = 1 * (0 - (-1e100)) + 0 = 1e100.
    tree = tr.TokenTree(["a", "b"], 1)
    far = np.array([[0.0, -1e100]])
    p = tr.Policy.from_logits(tree, [far])
    q = tr.Policy.from_logits(tree, [far[:, ::-1].copy()])
    np.testing.assert_allclose(tr.kl_divergence(p, q), 1e100, rtol=1e-12)
    np.testing.assert_allclose(tr.kl_divergence(p, q, method="leaves"), 1e100, rtol=1e-12)
