"""Intransitive preferences: minimax winner and regularized Nash equilibrium (issue 7, sec. 2)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import root
from scipy.special import log_softmax

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.nash import (
    NashConvergenceWarning,
    exploitability,
    minimax_winner,
    preference_matrix,
    regularized_nash,
)


def cyclic_matrix(x, y, z):
    """P for a > b (by x), b > c (by z), c > a (by y): B = P - 1/2 antisymmetric."""
    advantage = np.array([[0.0, x, -y], [-x, 0.0, z], [y, -z, 0.0]])
    return 0.5 + advantage


def random_preference_matrix(rng, n):
    upper = np.triu(rng.random((n, n)), 1)
    matrix = upper + np.tril(1.0 - upper.T, -1)
    np.fill_diagonal(matrix, 0.5)
    return matrix


# ------------------------------------------------------------------- preference matrix
def test_preference_matrix_by_hand():
    # One population with r = (0, log 3): P(second > first) = sigma(log 3) = 3/4.
    tree = tr.TokenTree(["a", "b"], 1)
    matrix = preference_matrix(tree, [[0.0, np.log(3.0)]], [1.0])
    np.testing.assert_allclose(matrix[0], [[0.5, 0.25], [0.75, 0.5]], rtol=1e-15)
    # Condorcet: three equal populations ranking a>b>c, b>c>a, c>a>b with margins s -> inf
    # give P(a > b) = P(b > c) = P(c > a) = 2/3 (up to sigma(-s) ~ e^-s).
    tree = tr.TokenTree(["a", "b", "c"], 1)
    s = 40.0
    rankings = s * np.array([[2, 1, 0], [0, 2, 1], [1, 0, 2]], dtype=float)
    matrix = preference_matrix(tree, rankings, np.full(3, 1 / 3))[0]
    np.testing.assert_allclose(matrix, cyclic_matrix(1 / 6, 1 / 6, 1 / 6), atol=1e-15)


@given(trt.trees(max_leaves=64), trt.seeds)
def test_preference_matrix_is_a_preference_matrix(tree, seed):
    rng = np.random.default_rng(seed)
    rewards = 3.0 * rng.standard_normal((3, tree.n_leaves))
    weights = rng.dirichlet(np.ones(3))
    matrix = preference_matrix(tree, rewards, weights)
    size = tree.leaves_per_prompt
    assert matrix.shape == (tree.n_prompts, size, size)
    assert np.all((matrix >= 0) & (matrix <= 1))
    np.testing.assert_allclose(matrix + matrix.transpose(0, 2, 1), 1.0, atol=1e-15)
    np.testing.assert_array_equal(np.diagonal(matrix, axis1=1, axis2=2), 0.5)
    # One population is transitive: P(i > j) > 1/2 exactly when r(i) > r(j).
    single = preference_matrix(tree, rewards[0], [1.0])
    r = rewards[0].reshape(tree.n_prompts, size)
    np.testing.assert_array_equal(single > 0.5, r[:, :, None] > r[:, None, :])


# ---------------------------------------------------------------------- minimax winner
def test_minimax_winner_of_a_cycle_by_hand():
    # For the cyclic B above, pi ∝ (z, y, x) makes B pi = 0 (check by hand: row a is
    # x*y - y*x = 0, etc.), so every completion ties with it: it is the minimax winner, unique
    # when x, y, z > 0.
    x, y, z = 0.1, 0.3, 0.2
    np.testing.assert_allclose(
        minimax_winner(cyclic_matrix(x, y, z)), np.array([z, y, x]) / (x + y + z), atol=1e-9
    )
    np.testing.assert_allclose(minimax_winner(cyclic_matrix(1, 1, 1) / 6 + 5 / 12), 1 / 3)


def test_condorcet_winner_is_the_minimax_winner():
    # a beats b and c (0.6 each), b beats c: pi = e_a has min_j P(a > j) = 1/2 (the tie with
    # itself), and any mass on b or c loses to a: the unique minimax winner.
    matrix = np.array([[0.5, 0.6, 0.6], [0.4, 0.5, 1.0], [0.4, 0.0, 0.5]])
    np.testing.assert_allclose(minimax_winner(matrix), [1.0, 0.0, 0.0], atol=1e-12)


@settings(max_examples=40)
@given(trt.seeds, st.integers(1, 12))
def test_minimax_winner_is_never_beaten(seed, n):
    matrix = random_preference_matrix(np.random.default_rng(seed), n)
    pi = minimax_winner(matrix)
    assert pi.shape == (n,) and np.all(pi >= 0)
    np.testing.assert_allclose(pi.sum(), 1.0, rtol=1e-14)
    # P(pi > y') >= 1/2 for every completion y' (the value of the symmetric game)
    assert (pi @ matrix).min() >= 0.5 - 1e-8


# ------------------------------------------------------------------- regularized Nash
def independent_nash(matrix, mu, tau):
    """Solve log pi = log_softmax(log mu + B pi / tau) by scipy's root finder (hybr)."""
    advantage = matrix - 0.5
    np.fill_diagonal(advantage, 0.0)
    log_mu = np.log(mu)

    def residual(log_pi):
        return log_pi - log_softmax(log_mu + advantage @ np.exp(log_pi) / tau)

    solution = root(residual, log_mu, method="hybr", tol=1e-14)
    # hybr may report "xtol too small" once at machine precision: check the residual instead
    assert np.abs(residual(solution.x)).max() < 1e-12
    return np.exp(solution.x)


@settings(max_examples=30)
@given(trt.seeds, st.integers(2, 10), st.floats(0.05, 20.0))
def test_regularized_nash_fixed_point_and_certificate(seed, n, tau):
    rng = np.random.default_rng(seed)
    matrix = random_preference_matrix(rng, n)
    mu = rng.dirichlet(np.ones(n))
    result = regularized_nash(matrix, mu, tau)
    # the certificate vocabulary: converged exactly when residual <= tolerance (= tol)
    assert result.converged and result.residual <= result.tolerance == 1e-10
    expected = independent_nash(matrix, mu, tau)
    assert np.abs(result.pi - expected).sum() <= 1e-10 + 1e-12
    # 0 <= g = tau KL(pi || T(pi)) <= tau chi^2 = tau residual^2 / 2 (up to rounding)
    assert -1e-14 * tau <= result.exploitability <= 0.5 * tau * result.residual**2 + 1e-14 * tau
    # The certificate (tau/2) ||pi - pi*||_1^2 <= g(pi) holds for arbitrary pi.
    other = rng.dirichlet(np.ones(n))
    gap = exploitability(matrix, mu, tau, other)
    assert 0.5 * tau * np.abs(other - result.pi).sum() ** 2 <= gap + 1e-10
    assert exploitability(matrix, mu, tau, result.pi) >= -1e-14 * tau


def test_regularized_nash_limits():
    # tau -> inf: pi* -> mu (pi* ∝ mu e^{B pi*/tau}, |B| <= 1/2). tau -> 0: the minimax
    # winner of the cycle, pi ∝ (z, y, x).
    x, y, z = 0.1, 0.3, 0.2
    matrix = cyclic_matrix(x, y, z)
    mu = np.array([0.7, 0.2, 0.1])
    np.testing.assert_allclose(regularized_nash(matrix, mu, 1e6).pi, mu, atol=1e-6)
    small = regularized_nash(matrix, mu, 1e-4)
    np.testing.assert_allclose(small.pi, np.array([z, y, x]) / (x + y + z), atol=5e-3)


def test_regularized_nash_keeps_zeros_of_mu():
    rng = np.random.default_rng(2)
    matrix = random_preference_matrix(rng, 5)
    mu = np.array([0.5, 0.0, 0.3, 0.2, 0.0])
    result = regularized_nash(matrix, mu, 0.3)
    assert result.pi[1] == 0 and result.pi[4] == 0
    keep = mu > 0
    np.testing.assert_allclose(
        result.pi[keep],
        independent_nash(matrix[np.ix_(keep, keep)], mu[keep], 0.3),
        atol=1e-6,
    )
    assert exploitability(matrix, mu, 0.3, np.full(5, 0.2)) == np.inf


def test_regularized_nash_reports_non_convergence():
    matrix = cyclic_matrix(0.2, 0.2, 0.2)
    mu = np.array([0.98, 0.01, 0.01])
    with pytest.warns(NashConvergenceWarning, match="max_iter"):
        result = regularized_nash(matrix, mu, 1e-2, max_iter=2)
    assert not result.converged and result.iterations == 2
    assert result.residual > result.tolerance == 1e-10
    assert issubclass(NashConvergenceWarning, UserWarning)
    # the reported bounds hold for the unconverged iterate too
    distance = np.abs(result.pi - regularized_nash(matrix, mu, 1e-2).pi).sum()
    assert distance <= result.residual
    assert 0.5 * 1e-2 * distance**2 <= result.exploitability


# --------------------------------------------------------------------------- bad input
def test_bad_input():
    good = cyclic_matrix(0.1, 0.1, 0.1)
    mu = np.full(3, 1 / 3)
    with pytest.raises(ValueError, match="square"):
        minimax_winner(np.full((2, 3), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        minimax_winner(np.array([[0.5, 1.5], [-0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"P\[i, j\] \+ P\[j, i\] = 1"):
        minimax_winner(np.array([[0.5, 0.7], [0.7, 0.5]]))
    with pytest.raises(TypeError, match="P must be"):
        minimax_winner("matrix")
    with pytest.raises(ValueError, match="mu must be a distribution summing to 1"):
        regularized_nash(good, np.array([0.5, 0.5, 0.5]), 1.0)
    with pytest.raises(ValueError, match="mu must be a distribution"):
        regularized_nash(good, np.array([1.5, -0.5, 0.0]), 1.0)
    with pytest.raises(ValueError, match=r"mu must have shape \(3,\)"):
        regularized_nash(good, np.array([0.5, 0.5]), 1.0)
    for tau in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="tau must be finite and > 0"):
            regularized_nash(good, mu, tau)
    with pytest.raises(ValueError, match="tol"):
        regularized_nash(good, mu, 1.0, tol=0.0)
    tree = tr.TokenTree(["a", "b"], 1)
    with pytest.raises(ValueError, match="weights must be a distribution"):
        preference_matrix(tree, [[0.0, 1.0]], [0.5])
    with pytest.raises(ValueError, match=r"rewards\[0\] must have shape"):
        preference_matrix(tree, [[0.0, 1.0, 2.0]], [1.0])
