"""The exact variance of the REINFORCE gradient, checked against every possible batch."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.examples import demo_problem
from tinyrlhf.gradient_variance import (
    BASELINES,
    reinforce_gradient_estimates,
    reinforce_gradient_variance,
)


def _dense_scores(policy):
    """``s(xi) = grad_theta log P(xi)`` for every leaf, ``(n_leaves, n_parameters)``, built
    leaf by leaf from the definition: on the logits of each state on the path,
    ``onehot(a_h) - pi(. | s_h)``."""
    tree = policy.tree
    offsets = np.cumsum([0] + [tree.level_size(h) * tree.n_tokens for h in range(tree.horizon)])
    scores = np.zeros((tree.n_leaves, offsets[-1]))
    for leaf, (prompt, tokens) in enumerate(tree.leaves()):
        for h in range(tree.horizon):
            _, state = tree.state_index(prompt, tokens[:h])
            block = slice(
                offsets[h] + state * tree.n_tokens, offsets[h] + (state + 1) * tree.n_tokens
            )
            scores[leaf, block] -= np.exp(policy.log_probs[h][state])
            scores[leaf, offsets[h] + state * tree.n_tokens + tree.token_index(tokens[h])] += 1.0
    return scores


def _enumerate_batches(policy, ref, reward, beta, n, baseline):
    """Mean and total variance of the estimator over *every* batch of ``n`` generations per
    prompt, weighted by its probability (the definition, no formula)."""
    tree = policy.tree
    probs = policy.leaf_probs()
    log_ratio = np.where(probs > 0, policy.leaf_log_probs() - ref.leaf_log_probs(), 0.0)
    returns = reward - beta * log_ratio
    scores = _dense_scores(policy)
    per_prompt = tree.leaves_per_prompt
    value = (probs * returns).reshape(tree.n_prompts, -1).sum(axis=1)
    prompt_batches = [
        list(itertools.product(range(p * per_prompt, (p + 1) * per_prompt), repeat=n))
        for p in range(tree.n_prompts)
    ]
    estimates, weights = [], []
    for joint in itertools.product(*prompt_batches):
        estimate = np.zeros(scores.shape[1])
        weight = 1.0
        for p, leaves in enumerate(joint):
            leaves = list(leaves)
            weight *= np.prod(probs[leaves])
            for i, leaf in enumerate(leaves):
                if baseline == "none":
                    coefficient = returns[leaf]
                elif baseline == "value":
                    coefficient = returns[leaf] - value[p]
                else:
                    others = [returns[other] for j, other in enumerate(leaves) if j != i]
                    coefficient = returns[leaf] - np.mean(others)
                estimate += coefficient * scores[leaf] / (n * tree.n_prompts)
        estimates.append(estimate)
        weights.append(weight)
    estimates, weights = np.array(estimates), np.array(weights)
    mean = weights @ estimates
    variance = weights @ ((estimates - mean) ** 2).sum(axis=1)
    return mean, variance


@pytest.mark.parametrize("baseline", BASELINES)
@pytest.mark.parametrize("n", [2, 3])
def test_variance_equals_enumeration_over_every_batch(baseline, n):
    tree = tr.TokenTree(["a", "b"], horizon=2, prompts=["x", "y"])  # 4 leaves per prompt
    ref = tr.Policy.random(tree, seed=1)
    # a policy with forbidden tokens (still inside ref's support, which is everything)
    policy = tr.Policy.random(tree, seed=2, temperature=0.7, zero_fraction=0.3)
    reward = np.random.default_rng(3).normal(size=tree.n_leaves)
    beta = 0.6
    mean, variance = _enumerate_batches(policy, ref, reward, beta, n, baseline)
    result = reinforce_gradient_variance(policy, ref, reward, beta, [n], baseline=baseline)
    # unbiased: the average over all batches is the exact gradient
    np.testing.assert_allclose(result.gradient, mean, atol=1e-12)
    np.testing.assert_allclose(result.variance, [variance], rtol=1e-10, atol=1e-14)


def test_gradient_equals_the_policy_gradient_theorem():
    # g = E[G s] by subtree sums against d_pi(s) pi(a|s) (Q(s,a) - V(s)) by backward values
    tree, ref, reward = demo_problem(horizon=3)
    policy = tr.Policy.random(tree, seed=11)
    result = reinforce_gradient_variance(policy, ref, reward, 0.4, [2])
    exact = np.concatenate([g.ravel() for g in tr.policy_gradient_grad(policy, ref, reward, 0.4)])
    np.testing.assert_allclose(result.gradient, exact, atol=1e-13)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_two_sample_variance_equals_enumeration_on_random_trees(data):
    # at most 9 leaves in all: enumerating every pair of every prompt stays under 256 batches
    tree = data.draw(trt.trees(max_tokens=3, max_horizon=3, max_prompts=2, max_leaves=9))
    ref = data.draw(trt.policies(tree, allow_zeros=False))
    policy = data.draw(trt.policies(tree))
    reward = data.draw(trt.rewards(tree, max_magnitude=10.0))
    beta = data.draw(trt.betas())
    baseline = data.draw(st.sampled_from(BASELINES))
    _, variance = _enumerate_batches(policy, ref, reward, beta, 2, baseline)
    result = reinforce_gradient_variance(policy, ref, reward, beta, [2], baseline=baseline)
    scale = max(1.0, float(np.max(np.abs(reward))), beta) ** 2
    np.testing.assert_allclose(result.variance, [variance], rtol=1e-8, atol=1e-10 * scale)


@pytest.mark.parametrize("baseline", BASELINES)
def test_sampled_estimates_match_the_exact_moments(baseline):
    tree = tr.TokenTree(["a", "b", "c"], horizon=2, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=4)
    policy = tr.Policy.random(tree, seed=5)
    reward = np.random.default_rng(6).normal(size=tree.n_leaves)
    beta, n, n_batches = 0.8, 4, 40_000
    exact = reinforce_gradient_variance(policy, ref, reward, beta, [n], baseline=baseline)
    estimates = reinforce_gradient_estimates(
        policy, ref, reward, beta, n, n_batches, baseline=baseline, seed=7
    )
    # each coordinate's sample mean is within 5 standard errors of the exact gradient
    standard_error = estimates.std(axis=0) / np.sqrt(n_batches)
    assert np.all(np.abs(estimates.mean(axis=0) - exact.gradient) <= 5 * standard_error + 1e-15)
    # the mean squared deviation estimates the total variance (a mean of 40k draws: within 5%)
    sampled = ((estimates - exact.gradient) ** 2).sum(axis=1).mean()
    np.testing.assert_allclose(sampled, exact.variance[0], rtol=0.05)


def test_no_noise_with_a_baseline_at_the_optimum():
    # At pi* the return G = r - beta log(P*/P_ref) = beta log Z is constant (closed form), so
    # G - V = 0 and every leave-one-out advantage is 0: both estimators are exactly 0 = grad J.
    # Without a baseline the estimate is (beta log Z) * mean score, variance
    # (beta log Z)^2 E||s||^2 / n.
    tree, ref, reward = demo_problem(horizon=3)
    beta = 0.7
    star = tr.closed_form(ref, reward, beta)
    sizes = np.array([2, 8, 64])
    for baseline in ("value", "rloo"):
        result = reinforce_gradient_variance(
            star.policy, ref, reward, beta, sizes, baseline=baseline
        )
        np.testing.assert_allclose(result.variance, 0.0, atol=1e-20)
        np.testing.assert_allclose(result.gradient, 0.0, atol=1e-12)
    none = reinforce_gradient_variance(star.policy, ref, reward, beta, sizes, baseline="none")
    scores = _dense_scores(star.policy)
    probs = star.policy.leaf_probs()
    value = np.repeat(beta * star.log_partition, tree.leaves_per_prompt)
    # sum over prompts / P^2 of E_p[V_p^2 ||s||^2] / n
    expected = (probs * value**2 * (scores**2).sum(axis=1)).sum() / tree.n_prompts**2 / sizes
    np.testing.assert_allclose(none.variance, expected, rtol=1e-10)


def test_rloo_approaches_the_oracle_baseline_for_large_batches():
    # Hoeffding: n Var(U_n) = 2/(n - 1) (2 (n - 2) zeta_1 + zeta_2) -> 4 zeta_1 = Var((G - V) s)
    tree, ref, reward = demo_problem(horizon=3)
    policy = tr.Policy.random(tree, seed=9)
    sizes = np.array([10**6])
    rloo = reinforce_gradient_variance(policy, ref, reward, 0.5, sizes, baseline="rloo")
    oracle = reinforce_gradient_variance(policy, ref, reward, 0.5, [1], baseline="value")
    np.testing.assert_allclose(sizes * rloo.variance, oracle.variance, rtol=1e-5)


@settings(max_examples=20, deadline=None)
@given(trt.problems(), st.sampled_from(["none", "value"]))
def test_iid_estimators_scale_as_one_over_n(problem, baseline):
    tree, ref, reward, beta = problem
    policy = tr.closed_form(ref, reward, 2.0 * beta).policy  # inside ref's support
    result = reinforce_gradient_variance(policy, ref, reward, beta, [1, 3, 10], baseline=baseline)
    np.testing.assert_allclose(
        result.variance * result.batch_sizes, result.variance[0], rtol=1e-12, atol=0
    )
    scale = (1.0 + np.max(np.abs(reward)) + beta) ** 2 * tree.horizon
    assert result.variance[0] >= -1e-9 * scale


def test_signal_to_noise_is_the_ratio():
    tree, ref, reward = demo_problem(horizon=2)
    result = reinforce_gradient_variance(ref, ref, reward, 0.5, [2, 4])
    np.testing.assert_allclose(
        result.signal_to_noise, (result.gradient @ result.gradient) / result.variance
    )


def test_bad_input_is_refused():
    tree, ref, reward = demo_problem(horizon=2)
    with pytest.raises(ValueError, match="baseline"):
        reinforce_gradient_variance(ref, ref, reward, 0.5, [2], baseline="mean")
    with pytest.raises(ValueError, match="batch_sizes"):
        reinforce_gradient_variance(ref, ref, reward, 0.5, [1], baseline="rloo")
    with pytest.raises(TypeError, match="batch_sizes"):
        reinforce_gradient_variance(ref, ref, reward, 0.5, [1.5])
    with pytest.raises(TypeError, match="policy"):
        reinforce_gradient_variance("pi", ref, reward, 0.5, [2])
    with pytest.raises(ValueError, match="beta"):
        reinforce_gradient_variance(ref, ref, reward, -1.0, [2])
    narrow = tr.Policy.random(tree, seed=0, zero_fraction=0.5)
    with pytest.raises(ValueError, match="support"):
        reinforce_gradient_variance(ref, narrow, reward, 0.5, [2])
    with pytest.raises(ValueError, match="batch_size"):
        reinforce_gradient_estimates(ref, ref, reward, 0.5, 1, 10, baseline="rloo")
