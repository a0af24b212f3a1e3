"""Exact statistics of the k1/k2/k3 KL estimators (issue 7, section 3)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.kl_estimators import (
    ESTIMATORS,
    kl_estimator_gradient,
    kl_estimator_moments,
    kl_estimator_report,
    kl_gradient,
)

VARIANTS = [(estimator, per_token) for per_token in (False, True) for estimator in ESTIMATORS]


def brute_force_values(policy, ref, estimator, per_token):
    """Per-leaf estimator values and leaf probabilities by explicit loops over leaves/tokens."""
    tree = policy.tree
    tokens = tree.leaf_token_indices()
    probs, values = [], []
    for leaf in range(tree.n_leaves):
        state = leaf // tree.leaves_per_prompt
        log_p, log_q, total = 0.0, 0.0, 0.0
        for h in range(tree.horizon):
            a = tokens[leaf, h]
            lp, lq = policy.log_probs[h][state, a], ref.log_probs[h][state, a]
            log_p, log_q = log_p + lp, log_q + lq
            if per_token and lp > -np.inf:
                total += one_value(lq - lp, estimator)
            state = state * tree.n_tokens + a
        probs.append(np.exp(log_p))
        if log_p == -np.inf:  # never sampled: no value
            values.append(0.0)
        else:
            values.append(total if per_token else one_value(log_q - log_p, estimator))
    return np.array(probs), np.array(values)


def one_value(log_rho, estimator):
    if log_rho == -np.inf:
        return np.inf
    if estimator == "k1":
        return -log_rho
    if estimator == "k2":
        return 0.5 * log_rho**2
    return (np.exp(log_rho) - 1.0) - log_rho


def brute_force_moments(policy, ref, estimator, per_token):
    probs, values = brute_force_values(policy, ref, estimator, per_token)
    n_prompts = policy.tree.n_prompts
    means, variances = [], []
    for p, v in zip(probs.reshape(n_prompts, -1), values.reshape(n_prompts, -1), strict=True):
        reached = p > 0
        if np.isinf(v[reached]).any():
            means.append(np.inf)
            variances.append(np.inf)
            continue
        mean = float(np.sum(p[reached] * v[reached]))
        means.append(mean)
        variances.append(float(np.sum(p[reached] * (v[reached] - mean) ** 2)))
    return np.array(means), np.array(variances)


def test_two_token_case_by_hand():
    # H = 1, tokens {a, b}: pi = (p, 1-p), pi_ref = (q, 1-q). By hand:
    # E[k1] = KL = p log(p/q) + (1-p) log((1-p)/(1-q)); k1 takes two values x_a, x_b, so
    # Var[k1] = p (1-p) (x_a - x_b)^2; E[k3] = (q + 1 - q) - 1 + KL = KL;
    # E[k2] = (p log(p/q)^2 + (1-p) log((1-p)/(1-q))^2) / 2.
    tree = tr.TokenTree(["a", "b"], 1)
    p, q = 0.8, 0.3
    policy = tr.Policy(tree, [np.log([[p, 1 - p]])])
    ref = tr.Policy(tree, [np.log([[q, 1 - q]])])
    x_a, x_b = np.log(p / q), np.log((1 - p) / (1 - q))
    kl = p * x_a + (1 - p) * x_b
    mean, variance = kl_estimator_moments(policy, ref, "k1")
    np.testing.assert_allclose(mean, [kl], rtol=1e-14)
    np.testing.assert_allclose(variance, [p * (1 - p) * (x_a - x_b) ** 2], rtol=1e-13)
    np.testing.assert_allclose(kl_estimator_moments(policy, ref, "k3")[0], [kl], rtol=1e-13)
    np.testing.assert_allclose(
        kl_estimator_moments(policy, ref, "k2")[0],
        [(p * x_a**2 + (1 - p) * x_b**2) / 2],
        rtol=1e-14,
    )
    # With H = 1 the per-token estimators are the sequence-level ones.
    for estimator in ESTIMATORS:
        np.testing.assert_allclose(
            kl_estimator_moments(policy, ref, estimator, per_token=True),
            kl_estimator_moments(policy, ref, estimator),
            rtol=1e-14,
        )


@settings(max_examples=30)
@given(st.data(), st.sampled_from(VARIANTS), st.booleans())
def test_moments_match_enumeration(data, variant, with_eos):
    estimator, per_token = variant
    tree = data.draw(trt.trees(max_leaves=128, with_eos=with_eos))
    policy = data.draw(trt.policies(tree))
    ref = data.draw(trt.policies(tree))
    mean, variance = kl_estimator_moments(policy, ref, estimator, per_token=per_token)
    expected_mean, expected_variance = brute_force_moments(policy, ref, estimator, per_token)
    np.testing.assert_array_equal(np.isinf(mean), np.isinf(expected_mean))
    finite = np.isfinite(expected_mean)
    scale = 1.0 + float(np.abs(expected_mean[finite]).max(initial=0.0))
    np.testing.assert_allclose(mean[finite], expected_mean[finite], rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(
        variance[finite],
        expected_variance[finite],
        rtol=1e-8,
        atol=1e-9 * (1.0 + float(expected_variance[finite].max(initial=0.0))),
    )
    assert np.all(variance >= 0)


@settings(max_examples=30)
@given(st.data())
def test_unbiased_estimators_when_pi_covers_ref(data):
    # E[k1] = KL always; E[k3] = KL + (E[rho] - 1) = KL when pi > 0 wherever pi_ref > 0;
    # the per-token k3 likewise (E[rho_h | s_h] = 1). k2 is biased but, by Jensen,
    # E[(log rho)^2] / 2 >= (E[log rho])^2 / 2 = KL^2 / 2.
    tree = data.draw(trt.trees(max_leaves=128))
    policy = data.draw(trt.policies(tree, allow_zeros=False))
    ref = data.draw(trt.policies(tree))
    kl = tr.kl_divergence(policy, ref)
    if np.isinf(kl).any():
        return
    for estimator in ("k1", "k3"):
        for per_token in (False, True):
            mean, _ = kl_estimator_moments(policy, ref, estimator, per_token=per_token)
            np.testing.assert_allclose(mean, kl, rtol=1e-9, atol=1e-9)
    mean_k2, _ = kl_estimator_moments(policy, ref, "k2")
    assert np.all(mean_k2 >= 0.5 * kl**2 * (1 - 1e-12))


def test_k3_mean_is_biased_when_pi_misses_part_of_ref():
    # pi = (1, 0), pi_ref = (1/2, 1/2), H = 1: rho = 1/2 on the only sample, so
    # k3 = -1/2 + log 2 while KL = log 2: E[k3] = KL + (E[rho] - 1) = KL - 1/2, variance 0.
    tree = tr.TokenTree(["a", "b"], 1)
    policy = tr.Policy(tree, [np.array([[0.0, -np.inf]])])
    ref = tr.Policy.uniform(tree)
    mean, variance = kl_estimator_moments(policy, ref, "k3")
    np.testing.assert_allclose(mean, [np.log(2) - 0.5], rtol=1e-14)
    np.testing.assert_allclose(variance, [0.0], atol=1e-16)


def test_infinite_when_pi_leaves_the_support_of_ref():
    tree = tr.TokenTree(["a", "b"], 2, prompts=["x", "y"])
    ref_tables = [np.zeros((2, 2)), np.zeros((4, 2))]
    ref_tables[1][0] = [0.0, -np.inf]  # pi_ref never says "ab" after prompt x
    ref = tr.Policy.from_logits(tree, ref_tables)
    policy = tr.Policy.uniform(tree)
    for estimator, per_token in VARIANTS:
        mean, variance = kl_estimator_moments(policy, ref, estimator, per_token=per_token)
        assert mean[0] == np.inf and variance[0] == np.inf
        assert np.isfinite(mean[1]) and np.isfinite(variance[1])
    with pytest.raises(ValueError, match="never produces"):
        kl_estimator_gradient(policy, ref, "k3")


# --------------------------------------------------------------------------- gradients
def frozen_loss(theta, policy, ref, estimator, per_token):
    """E_{xi ~ pi}[k(xi; theta')] with the sampling distribution pi frozen (brute force)."""
    moved = tr.Policy.from_logits(policy.tree, theta)
    probs, _ = brute_force_values(policy, ref, estimator, per_token)
    _, values = brute_force_values(moved, ref, estimator, per_token)
    reached = probs > 0
    return float(np.sum(probs[reached] * values[reached])) / policy.tree.n_prompts


def assert_logit_gradient(loss, gradient, policy):
    """``gradient(policy)`` (per-level tables) is the gradient of ``loss(theta)`` (per-level
    logits) at ``theta = log pi``, every coordinate (tinyrlhf.testing.assert_gradient)."""
    tree = policy.tree
    trt.assert_gradient(
        lambda vector: loss(trt.unflatten_tables(tree, vector)),
        lambda vector: trt.flatten_tables(
            gradient(tr.Policy.from_logits(tree, trt.unflatten_tables(tree, vector)))
        ),
        trt.flatten_tables(policy.log_probs),
        atol=1e-6,
    )


@pytest.mark.parametrize(("estimator", "per_token"), VARIANTS)
@pytest.mark.parametrize("zeros", [0.0, 0.3])
def test_estimator_gradients_match_finite_differences(estimator, per_token, zeros):
    rng = np.random.default_rng(7)
    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=rng)
    policy = tr.Policy.random(tree, seed=rng, temperature=0.7, zero_fraction=zeros)
    assert_logit_gradient(
        lambda theta: frozen_loss(theta, policy, ref, estimator, per_token),
        lambda moved: kl_estimator_gradient(moved, ref, estimator, per_token=per_token),
        policy,
    )


@settings(max_examples=25)
@given(st.data())
def test_true_kl_gradient_agrees_with_policy_gradient_and_identities(data):
    # Two independent routes to grad KL(pi || pi_ref): the backward Q/V pass of
    # policy_gradient_grad (kl_gradient: J = -KL with r = 0, beta = 1) and the forward
    # subtree sums of the expected gradient of sequence-level k2 (the score-function
    # identity); finite differences check both elsewhere.
    tree = data.draw(trt.trees(max_leaves=128, with_eos=data.draw(st.booleans())))
    ref = data.draw(trt.policies(tree, allow_zeros=False))
    policy = data.draw(trt.policies(tree))
    gradient = kl_gradient(policy, ref)
    other = kl_estimator_gradient(policy, ref, "k2")
    for g, o in zip(gradient, other, strict=True):
        np.testing.assert_allclose(g, o, atol=1e-10)
    # k1 gives no gradient: E[grad log pi] = 0, sequence or per token.
    for per_token in (False, True):
        for table in kl_estimator_gradient(policy, ref, "k1", per_token=per_token):
            assert not table.any()


def test_k2_and_k3_gradients_are_reverse_and_forward_kl_gradients():
    # Sequence k2: grad KL(pi || pi_ref); sequence k3: grad KL(pi_ref || pi), checked against
    # finite differences of the exact divergences (tinyrlhf.kl_divergence).
    rng = np.random.default_rng(3)
    tree = tr.TokenTree(["a", "b"], 3, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=rng)
    policy = tr.Policy.random(tree, seed=rng)

    def reverse(t):
        return float(tr.kl_divergence(tr.Policy.from_logits(tree, t), ref).mean())

    def forward(t):
        return float(tr.kl_divergence(ref, tr.Policy.from_logits(tree, t)).mean())

    assert_logit_gradient(reverse, lambda moved: kl_estimator_gradient(moved, ref, "k2"), policy)
    assert_logit_gradient(forward, lambda moved: kl_estimator_gradient(moved, ref, "k3"), policy)


def test_per_token_k3_gradient_is_frozen_occupancy_forward_kl():
    # sum_s d_pi(s) KL(pi_ref(.|s) || pi_theta(.|s)) with d_pi frozen at theta: its gradient
    # is the per-token k3 gradient (module docstring). Checked by finite differences.
    rng = np.random.default_rng(5)
    tree = tr.TokenTree(["a", "b", "c"], 2)
    ref = tr.Policy.random(tree, seed=rng)
    policy = tr.Policy.random(tree, seed=rng)
    occupancy = [policy.state_probs(h) for h in range(tree.horizon)]

    def frozen_forward(t):
        moved = tr.Policy.from_logits(tree, t)
        total = 0.0
        for h in range(tree.horizon):
            q = np.exp(ref.log_probs[h])
            total += float(occupancy[h] @ (q * (ref.log_probs[h] - moved.log_probs[h])).sum(1))
        return total

    # the gradient is taken at theta (occupancy frozen there), so compare at policy itself
    exact = trt.flatten_tables(kl_estimator_gradient(policy, ref, "k3", per_token=True))
    trt.assert_gradient(
        lambda vector: frozen_forward(trt.unflatten_tables(tree, vector)),
        lambda vector: exact,
        trt.flatten_tables(policy.log_probs),
        atol=1e-6,
    )


def test_report_rows():
    rng = np.random.default_rng(11)
    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=rng)
    policy = tr.Policy.random(tree, seed=rng)
    report = kl_estimator_report(policy, ref)
    assert len(report.rows) == 6
    kl = float(tr.kl_divergence(policy, ref).mean())
    assert report.row("k2").gradient_error < 1e-10  # unbiased gradient
    assert report.row("k1").gradient_error == 1.0  # zero gradient: error = |grad KL|
    assert report.row("k3").gradient_error > 1e-3  # the forward KL's gradient
    for estimator in ("k1", "k3"):
        for per_token in (False, True):
            assert abs(report.row(estimator, per_token).bias) < 1e-12 * (1 + kl)
    text = str(report)
    assert "k3 per token" in text and "bias" in text
    with pytest.raises(ValueError, match="k1"):
        report.row("k4")


def test_bad_input():
    tree = tr.TokenTree(["a", "b"], 2)
    policy = tr.Policy.uniform(tree)
    with pytest.raises(ValueError, match=r"\('k1', 'k2', 'k3'\)"):
        kl_estimator_moments(policy, policy, "k4")
    with pytest.raises(ValueError, match="one of"):
        kl_estimator_gradient(policy, policy, "kl")
    with pytest.raises(TypeError, match="policy must be"):
        kl_estimator_moments(np.zeros(4), policy, "k1")
    with pytest.raises(TypeError, match="per_token"):
        kl_estimator_moments(policy, policy, "k1", per_token="yes")
    other = tr.Policy.uniform(tr.TokenTree(["a", "b"], 3))
    with pytest.raises(ValueError, match="same TokenTree"):
        kl_estimator_moments(policy, other, "k1")


def test_kl_estimator_figure():
    from tinyrlhf import figures

    fig = figures.figure_kl_estimators(figures.SMALL)
    assert len(fig.axes) == 3
    assert len(fig.axes[0].lines) == 7  # the true KL and six estimators


@pytest.mark.parametrize("gap", [30.0, 300.0, 700.0, 800.0])
def test_extreme_ratios_raise_no_warning_and_stay_unbiased(gap):
    # pi picks "a" and pi_ref "b" with log-odds `gap` on every row, so rho spans e^{+-3 gap}:
    # squares of k3 overflow where P_pi underflows (0 * inf before). filterwarnings=error
    # turns any overflow/invalid RuntimeWarning into a failure. k1 and k3 are unbiased:
    # their means equal the exact KL (about 3 gap by the chain rule).
    tree = tr.TokenTree(["a", "b"], 3)
    rows = [np.tile([0.0, -gap], (tree.level_size(h), 1)) for h in range(tree.horizon)]
    policy = tr.Policy.from_logits(tree, rows)
    ref = tr.Policy.from_logits(tree, [row[:, ::-1] for row in rows])
    kl = tr.kl_divergence(policy, ref)
    np.testing.assert_allclose(kl, 3 * gap, rtol=1e-12)
    for per_token in (False, True):
        for estimator in tr.kl_estimators.ESTIMATORS:
            mean, variance = tr.kl_estimator_moments(policy, ref, estimator, per_token=per_token)
            assert not np.isnan(mean).any() and np.all(variance >= 0)
            if estimator != "k2":
                np.testing.assert_allclose(mean, kl, rtol=1e-12)
            gradient = tr.kl_estimators.kl_estimator_gradient(
                policy, ref, estimator, per_token=per_token
            )
            assert all(np.isfinite(table).all() for table in gradient)
    tr.kl_estimator_report(policy, ref)
