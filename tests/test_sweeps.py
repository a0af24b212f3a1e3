"""The beta path of the optimum and the reward-KL frontier: exponential-family identities,
limits derived by hand, duality (no policy above the frontier), and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.sweeps import DEFAULT_BETAS


def leaf_star(ref, reward, beta):
    """P*(xi) and log P_ref(xi) per prompt, (P, A**H) each."""
    tree = ref.tree
    log_p_star, _ = tr.optimal_leaf_log_probs(ref, reward, beta)
    return (
        np.exp(log_p_star).reshape(tree.n_prompts, -1),
        ref.leaf_log_probs().reshape(tree.n_prompts, -1),
    )


@given(trt.problems(max_magnitude=5.0))
def test_beta_path_matches_the_closed_form_and_its_identities(problem):
    tree, ref, reward, beta = problem
    betas = np.array([beta / 3, beta, 3 * beta])
    path = tr.beta_path(ref, reward, betas)
    assert path.kl.shape == (3, tree.n_prompts)
    np.testing.assert_array_equal(path.beta, betas)
    scale = 1 + np.abs(reward).max()
    for k, b in enumerate(betas):
        solution = tr.closed_form(ref, reward, b)
        np.testing.assert_allclose(path.log_partition[k], solution.log_partition, rtol=1e-14)
        np.testing.assert_allclose(
            path.lagrange_multiplier[k], b * (1 - solution.log_partition), rtol=1e-12, atol=1e-12
        )
        # J(pi*) = E*[r] - beta KL = beta log Z
        np.testing.assert_allclose(
            path.expected_reward[k] - b * path.kl[k],
            path.objective[k],
            rtol=1e-9,
            atol=1e-9 * scale,
        )
        # H(P*) = -E*[log P*] with log P* = log P_ref + r/beta - log Z, from the leaves
        p_star, log_p_ref = leaf_star(ref, reward, b)
        cross = -np.sum(p_star * np.where(p_star > 0, log_p_ref, 0.0), axis=1)  # 0 log 0 = 0
        mean_reward = np.sum(p_star * reward.reshape(tree.n_prompts, -1), axis=1)
        np.testing.assert_allclose(
            path.entropy[k],
            cross - mean_reward / b + solution.log_partition,
            rtol=1e-8,
            atol=1e-8 * (1 + np.abs(solution.log_partition).max() + scale / b),
        )


#: Rounding bound used below for a quantity q of the path computed from leaf sums: relative
#: error ~ (number of terms + depth) * eps; 1e3 * eps * (its magnitude scale) covers the
#: trees drawn here (<= 512 leaves).
ROUNDING = 1e3 * np.finfo(np.float64).eps


def central_difference(fn, t, third_derivative_bound, rounding):
    """fn'(t) by a central difference with the step chosen from the curvature, and a bound on
    its error. Error = truncation + rounding <= M3 d^2 / 6 + rounding / d (Taylor), minimized
    at d = (3 rounding / M3)^(1/3); returns (estimate, bound)."""
    step = (3 * rounding / third_derivative_bound) ** (1 / 3) if third_derivative_bound else 1e-3
    step = min(step, t / 2)  # stay in t > 0
    estimate = (fn(t + step) - fn(t - step)) / (2 * step)
    return estimate, third_derivative_bound * step**2 / 6 + rounding / step


@settings(max_examples=20)
@given(trt.problems(max_magnitude=3.0, allow_zeros=False))
def test_beta_derivatives_match_the_exponential_family(problem):
    # Derived by hand with t = 1/beta: log Z(t) = log E_ref[e^{t r}] is the cumulant
    # generating function of r under P_ref, so d log Z/dt = E*[r], d E*[r]/dt = Var*(r),
    # and KL = t E*[r] - log Z gives dKL/dt = t Var*(r); with dt/dbeta = -1/beta^2:
    #   d log Z/d beta = -E*[r]/beta^2,  d E*[r]/d beta = -Var*(r)/beta^2,
    #   d KL/d beta = -Var*(r)/beta^3,   d(beta log Z)/d beta = log Z - E*[r]/beta = -KL.
    tree, ref, reward, beta = problem
    beta = float(np.clip(beta, 0.1, 10.0))
    path = tr.beta_path(ref, reward, np.array([beta]))
    # 1. the variance, enumerated over the leaves of P* (an independent route)
    p_star, _ = leaf_star(ref, reward, beta)
    r = reward.reshape(tree.n_prompts, -1)
    mean = np.sum(p_star * r, axis=1, keepdims=True)
    variance = np.sum(p_star * (r - mean) ** 2, axis=1)
    floor = 1e-25 * (1 + np.abs(reward).max()) ** 2  # (eps |r|)^2: rounding of r - E*[r]
    np.testing.assert_allclose(path.reward_variance[0], variance, rtol=1e-9, atol=floor)
    np.testing.assert_allclose(
        path.d_expected_reward[0], -variance / beta**2, rtol=1e-9, atol=floor / beta**2
    )
    np.testing.assert_allclose(path.d_kl[0], -variance / beta**3, rtol=1e-9, atol=floor / beta**3)
    # 2. envelope theorem: log Z + beta d log Z/d beta (closed form) = -KL (divergences)
    magnitude = 1 + np.abs(path.log_partition[0]) + np.abs(path.expected_reward[0]) / beta
    np.testing.assert_allclose(
        path.log_partition[0] + beta * path.d_log_partition[0],
        path.d_objective[0],
        rtol=0,
        atol=ROUNDING * magnitude.max(),
    )
    # 3. the exact derivatives against central differences in t = 1/beta, each with its step
    # chosen from a bound on the third derivative: |kappa_n| <= R^n for a reward of range R
    # (|r - E r| <= R), so the third t-derivative of log Z is kappa_3 (|.| <= R^3), that of
    # E*[r] is kappa_4 (<= R^4), and that of KL is 2 kappa_3 + t kappa_4 (<= 2 R^3 + t R^4),
    # at every t.
    spread = np.ptp(r, axis=1)  # R per prompt
    t = 1 / beta

    def at(t_value):
        return tr.beta_path(ref, reward, np.array([1 / t_value]))

    checks = (
        ("log_partition", spread**3, -(beta**2) * path.d_log_partition[0]),
        ("expected_reward", spread**4, -(beta**2) * path.d_expected_reward[0]),
        ("kl", 2 * spread**3 + (t + 1) * spread**4, -(beta**2) * path.d_kl[0]),
    )
    for name, third, exact in checks:
        for p in range(tree.n_prompts):
            size = 1 + np.abs(path.log_partition[0, p]) + t * np.abs(r[p]).max()
            estimate, bound = central_difference(
                lambda t_value, name=name, p=p: getattr(at(t_value), name)[0, p],
                t,
                third[p],
                ROUNDING * size,
            )
            assert abs(estimate - exact[p]) <= bound, (name, p, estimate, exact[p], bound)


def test_frontier_end_points_derived_by_hand():
    # H = 1, pi_ref = (0.5, 0.3, 0.2), r = (1, 2, 2): the best generations are b and c, so
    # at beta -> 0 P* = pi_ref restricted to {b, c}, KL = -log(0.3 + 0.2) = log 2, E[r] = 2;
    # at beta -> inf, KL = 0 and E[r] = 0.5 + 0.6 + 0.4 = 1.5.
    tree = tr.TokenTree(["a", "b", "c"], 1)
    ref = tr.Policy(tree, [np.log([[0.5, 0.3, 0.2]])])
    reward = np.array([1.0, 2.0, 2.0])
    frontier = tr.reward_kl_frontier(ref, reward, np.logspace(-2, 2, 21))
    assert frontier.beta[0] == np.inf and frontier.beta[-1] == 0.0
    np.testing.assert_allclose(frontier.kl[0], [0.0])
    np.testing.assert_allclose(frontier.expected_reward[0], [1.5], rtol=1e-15)
    np.testing.assert_allclose(frontier.kl[-1], [np.log(2.0)], rtol=1e-15)
    np.testing.assert_allclose(frontier.expected_reward[-1], [2.0], rtol=1e-15)
    # beta = 1e-2: P*(a) = 0.5 e^{-100} / (0.5 e^{-100} + 0.5), negligible: the path has
    # reached the end point to ~e^{-100}
    np.testing.assert_allclose(frontier.kl[-2], frontier.kl[-1], rtol=1e-12)
    # sorted by KL with rewards increasing along it (up to rounding of O(1) values)
    assert np.all(np.diff(frontier.kl[:, 0]) >= -1e-13)
    assert np.all(np.diff(frontier.expected_reward[:, 0]) >= -1e-13)


@given(st.data())
def test_no_policy_lies_above_the_frontier(data):
    # Duality: for every pi and every beta, E_pi[r] - beta KL(pi || pi_ref) <= beta log Z(beta),
    # i.e. E_pi[r] <= min_beta beta (log Z + KL(pi || pi_ref)).
    tree, ref, reward, _ = data.draw(trt.problems(max_magnitude=5.0))
    policy = data.draw(trt.policies(tree))
    kl = tr.kl_divergence(policy, ref)
    path = tr.beta_path(ref, reward, np.logspace(-2, 2, 9))
    mean_reward = tr.expected_reward(policy, reward)
    finite = np.isfinite(kl)
    bound = np.min(path.beta[:, None] * (path.log_partition + kl[None, :]), axis=0)
    scale = 1 + np.abs(reward).max()
    assert np.all(mean_reward[finite] <= bound[finite] + 1e-9 * scale)


@given(trt.problems(max_magnitude=5.0))
def test_frontier_is_increasing_and_concave(problem):
    tree, ref, reward, _ = problem
    frontier = tr.reward_kl_frontier(ref, reward, np.logspace(-1, 1, 15))
    scale = 1 + np.abs(reward).max()
    for p in range(tree.n_prompts):
        kl, value = frontier.kl[:, p], frontier.expected_reward[:, p]
        assert np.all(np.diff(kl) >= -1e-10)
        assert np.all(np.diff(value) >= -1e-10 * scale)
        # concavity: slopes between consecutive points with distinct KL do not increase
        distinct = np.flatnonzero(np.diff(kl) > 1e-6)
        slopes = np.diff(value)[distinct] / np.diff(kl)[distinct]
        assert np.all(np.diff(slopes) <= 1e-4 * (1 + np.abs(slopes[:-1])))


def test_default_betas_span_four_decades_and_bad_input_is_refused():
    tree = tr.TokenTree(["a", "b"], 2)
    ref, reward = tr.Policy.uniform(tree), np.zeros(4)
    path = tr.beta_path(ref, reward)
    assert path.kl.shape == (DEFAULT_BETAS.size, 1)
    assert DEFAULT_BETAS[0] == pytest.approx(1e-2) and DEFAULT_BETAS[-1] == pytest.approx(1e2)
    np.testing.assert_allclose(path.kl, 0.0, atol=1e-15)  # r = 0: pi* = pi_ref
    with pytest.raises(ValueError, match="betas must be finite and > 0"):
        tr.beta_path(ref, reward, [1.0, -1.0])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        tr.beta_path(ref, reward, [])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        tr.beta_path(ref, reward, np.ones((2, 2)))
    with pytest.raises(TypeError, match=r"ref must be a tinyrlhf\.Policy"):
        tr.reward_kl_frontier(reward, reward)
    with pytest.raises(ValueError, match=r"reward must have shape \(4,\)"):
        tr.beta_path(ref, np.zeros(3))
