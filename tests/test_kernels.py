"""The fast row kernel equals the straightforward scipy expressions it replaces
(``scipy.special.logsumexp(x, axis=1)`` and ``x - logsumexp``), and the solvers built on it
equal the plain level-by-level recursions."""

from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import tinyrlhf as tr
from tinyrlhf import kernels
from tinyrlhf import testing as trt

RTOL = 1e-12


@st.composite
def level_arrays(draw, max_rows=60, max_tokens=20):
    """``(n, A)`` arrays: normals times a scale from 1e-3 to 1e100, some ``-inf`` entries,
    some all ``-inf`` rows; and kernel settings: a block size (tiny ones exercise the block
    boundaries) and the layout (token-major up to TOKEN_MAJOR_MAX_TOKENS, with the
    one-exp-per-row form at A = 2, or row-major for every A)."""
    n_rows = draw(st.integers(1, max_rows))
    n_tokens = draw(st.integers(1, max_tokens))
    rng = np.random.default_rng(draw(trt.seeds))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e6, 1e100]))
    x = scale * rng.standard_normal((n_rows, n_tokens)) + draw(st.sampled_from([0.0, -1e5]))
    x[rng.random(x.shape) < draw(st.sampled_from([0.0, 0.3, 0.8]))] = -np.inf
    x[rng.random(n_rows) < draw(st.sampled_from([0.0, 0.2]))] = -np.inf
    size = draw(st.sampled_from([1, 2, 7, 64, kernels.BLOCK_ELEMENTS]))
    # the largest token-major A: the default, or 0 (row-major for every A, also A = 2)
    largest = draw(st.sampled_from([kernels.TOKEN_MAJOR_MAX_TOKENS, 0]))
    return x, (size, largest)


@contextmanager
def block_elements(settings):
    """Run the kernel with blocks of ``size`` elements and token-major up to ``largest``
    tokens (module constants, restored after)."""
    saved = (kernels.BLOCK_ELEMENTS, kernels.TOKEN_MAJOR_MAX_TOKENS)
    kernels.BLOCK_ELEMENTS, kernels.TOKEN_MAJOR_MAX_TOKENS = settings
    try:
        yield
    finally:
        kernels.BLOCK_ELEMENTS, kernels.TOKEN_MAJOR_MAX_TOKENS = saved


def straightforward_log_softmax(x):
    """``logsumexp`` per row and ``x - logsumexp``, all ``-inf`` rows left all ``-inf``."""
    log_sum = logsumexp(x, axis=1)
    dead = np.isneginf(log_sum)
    table = x - np.where(dead, 0.0, log_sum)[:, None]
    return log_sum, table


def tolerance(x):
    """Absolute tolerance 1e-12 relative to the largest finite magnitude: ``x - log_sum`` of
    entries near 1e100 carries the rounding of numbers of that size."""
    finite = x[np.isfinite(x)]
    return RTOL * (1.0 + (np.abs(finite).max() if finite.size else 0.0))


@given(level_arrays())
def test_row_logsumexp_equals_scipy(case):
    x, settings = case
    with block_elements(settings):
        result = kernels.row_logsumexp(x)
    np.testing.assert_allclose(result, logsumexp(x, axis=1), rtol=RTOL, atol=tolerance(x))


@given(level_arrays(), st.booleans())
def test_log_softmax_rows_equals_straightforward(case, in_place):
    x, settings = case
    expected_sum, expected_table = straightforward_log_softmax(x)
    work = x.copy()
    with block_elements(settings):
        log_sum, table = kernels.log_softmax_rows(work, out=work if in_place else None)
    assert (table is work) == in_place
    if not in_place:
        np.testing.assert_array_equal(work, x)  # the input is not touched
    atol = tolerance(x)
    np.testing.assert_allclose(log_sum, expected_sum, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(table, expected_table, rtol=RTOL, atol=atol)
    # -inf exactly where the straightforward version has it, never NaN
    np.testing.assert_array_equal(np.isneginf(log_sum), np.isneginf(expected_sum))
    np.testing.assert_array_equal(np.isneginf(table), np.isneginf(expected_table))
    assert not np.isnan(table).any()


def test_log_softmax_rows_hand_cases():
    # [0, 0] -> log 2 (two equal weights); [-inf, 3] -> 3 with probabilities (0, 1);
    # [-inf, -inf] -> -inf, row left -inf; [1e308, 1e308] -> 1e308 + log 2 = 1e308 in floats
    x = np.array([[0.0, 0.0], [-np.inf, 3.0], [-np.inf, -np.inf], [1e308, 1e308]])
    log_sum, table = kernels.log_softmax_rows(x)
    np.testing.assert_allclose(log_sum[:2], [np.log(2.0), 3.0], rtol=1e-15)
    assert log_sum[2] == -np.inf and log_sum[3] == 1e308
    np.testing.assert_allclose(table[0], [-np.log(2.0)] * 2, rtol=1e-15)
    np.testing.assert_array_equal(table[1:3], [[-np.inf, 0.0], [-np.inf, -np.inf]])
    np.testing.assert_allclose(table[3], [-np.log(2.0)] * 2, rtol=1e-15)


def test_rows_of_huge_numbers_still_normalize():
    # three equal entries near 1e12 (ulp 1.2e-4): x - log_sum would be off by ~1e-4, the
    # shifted rows (x - max) - log 3 are exact, so the row is -log 3 to rounding
    x = np.full((1, 3), 1e12 - np.log(3.0))
    log_sum, table = kernels.log_softmax_rows(x)
    np.testing.assert_allclose(table, -np.log(3.0), rtol=1e-15)
    np.testing.assert_allclose(log_sum, 1e12, rtol=1e-15)


def test_kernel_refuses_what_is_not_a_table():
    with pytest.raises(ValueError, match="2-D"):
        kernels.row_logsumexp(np.zeros(3))


def plain_soft_value_iteration(ref, reward, beta):
    """V_h / beta = logsumexp(log pi_ref + V_{h+1} / beta) with scipy, level by level."""
    tree = ref.tree
    scaled_value, values, log_pi = reward / beta, [reward], []
    for h in range(tree.horizon - 1, -1, -1):
        log_weight = ref.log_probs[h] + scaled_value.reshape(-1, tree.n_tokens)
        scaled_value = logsumexp(log_weight, axis=1)
        log_pi.insert(0, log_weight - scaled_value[:, None])
        values.insert(0, beta * scaled_value)
    return values, log_pi


def plain_closed_form(ref, reward, beta):
    """log P* by the leaf definition, then scipy subtree sums; None on unreached rows."""
    tree = ref.tree
    log_weight = (ref.leaf_log_probs() + reward / beta).reshape(tree.n_prompts, -1)
    log_z = logsumexp(log_weight, axis=1)
    log_mass = (log_weight - log_z[:, None]).reshape(-1)
    log_p_star, log_pi = log_mass, []
    for _ in range(tree.horizon):
        children = log_mass.reshape(-1, tree.n_tokens)
        log_mass = logsumexp(children, axis=1)
        reached = log_mass > -np.inf
        table = np.full_like(children, np.nan)  # unreached rows: no closed-form answer
        table[reached] = children[reached] - log_mass[reached, None]
        log_pi.insert(0, table)
    return log_z, log_p_star, log_pi


#: Small problems, some on trees with an end-of-sequence token (forced rows, unreached states).
SOLVER_PROBLEMS = st.one_of(
    trt.problems(max_tokens=4, max_horizon=5), trt.problems(max_tokens=4, with_eos=True)
)


@settings(max_examples=40)
@given(SOLVER_PROBLEMS)
def test_soft_value_iteration_equals_plain_recursion(problem):
    tree, ref, reward, beta = problem
    solution = tr.soft_value_iteration(ref, reward, beta)
    values, log_pi = plain_soft_value_iteration(ref, reward, beta)
    scale = 1 + np.abs(reward).max() / beta  # magnitude of V / beta
    for fast, plain in zip(solution.values, values, strict=True):
        np.testing.assert_allclose(fast, plain, rtol=RTOL, atol=RTOL * beta * scale)
    for fast, plain in zip(solution.policy.log_probs, log_pi, strict=True):
        np.testing.assert_allclose(fast, plain, rtol=RTOL, atol=RTOL * scale)


@settings(max_examples=40)
@given(SOLVER_PROBLEMS)
def test_closed_form_equals_plain_leaf_normalization(problem):
    tree, ref, reward, beta = problem
    solution = tr.closed_form(ref, reward, beta)
    log_z, log_p_star, log_pi = plain_closed_form(ref, reward, beta)
    scale = 1 + np.abs(reward).max() / beta + np.abs(log_z).max()
    np.testing.assert_allclose(solution.log_partition, log_z, rtol=RTOL, atol=RTOL * scale)
    # the policy generates P*: its leaf log-probabilities are the normalized leaf weights
    np.testing.assert_allclose(
        solution.policy.leaf_log_probs(), log_p_star, rtol=RTOL, atol=RTOL * scale
    )
    for h, (fast, plain) in enumerate(zip(solution.policy.log_probs, log_pi, strict=True)):
        reached = ~np.isnan(plain)
        np.testing.assert_allclose(fast[reached], plain[reached], rtol=RTOL, atol=RTOL * scale)
        # unreached rows (no P* mass below) are pi_ref's: the closed form's documented rule
        np.testing.assert_array_equal(fast[~reached], ref.log_probs[h][~reached])
        assert not np.isnan(fast).any()
