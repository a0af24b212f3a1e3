"""The fast level kernels equal the straightforward numpy/scipy expressions they replace:
``scipy.special.logsumexp(x, axis=1)``, ``x - logsumexp``, ``log_reach[:, None] + table``,
and the solvers built on them equal the plain level-by-level recursions."""

import numpy as np
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
    some all ``-inf`` rows; and a workspace with a block size (tiny ones exercise the block
    boundaries) and a layout (default, token-major or row-major, whatever A is)."""
    n_rows = draw(st.integers(1, max_rows))
    # both kernel layouts: token-major for A <= TOKEN_MAJOR_MAX_TOKENS, row-major above
    n_tokens = draw(st.integers(1, max_tokens))
    rng = np.random.default_rng(draw(trt.seeds))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e6, 1e100]))
    x = scale * rng.standard_normal((n_rows, n_tokens)) + draw(st.sampled_from([0.0, -1e5]))
    x[rng.random(x.shape) < draw(st.sampled_from([0.0, 0.3, 0.8]))] = -np.inf
    x[rng.random(n_rows) < draw(st.sampled_from([0.0, 0.2]))] = -np.inf
    workspace = kernels.LevelWorkspace(
        n_tokens,
        n_rows,
        block_elements=draw(st.sampled_from([1, 2, 7, 64, kernels.BLOCK_ELEMENTS])),
        token_major=draw(st.sampled_from([None, True, False])),
    )
    return x, workspace


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
    x, _ = case
    np.testing.assert_allclose(
        kernels.row_logsumexp(x), logsumexp(x, axis=1), rtol=RTOL, atol=tolerance(x)
    )


@given(level_arrays())
def test_log_normalize_level_equals_straightforward(case):
    x, workspace = case
    n_rows, n_tokens = x.shape
    log_sum = np.empty(n_rows)
    table = np.empty((n_rows, n_tokens))
    any_dead = kernels.log_normalize_level(x.reshape(-1), log_sum, table, workspace=workspace)
    expected_sum, expected_table = straightforward_log_softmax(x)
    atol = tolerance(x)
    np.testing.assert_allclose(log_sum, expected_sum, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(table, expected_table, rtol=RTOL, atol=atol)
    # -inf exactly where the straightforward version has it, never NaN
    np.testing.assert_array_equal(np.isneginf(log_sum), np.isneginf(expected_sum))
    np.testing.assert_array_equal(np.isneginf(table), np.isneginf(expected_table))
    assert not np.isnan(table).any()
    assert any_dead == bool(np.isneginf(expected_sum).any())


@given(level_arrays(max_tokens=12), st.data())
def test_log_normalize_level_with_prior_offset_and_divisor(case, data):
    # x = [row_offset + log_prior] + children / divisor: the closed form's and soft VI's
    # first backup.
    children, workspace = case
    n_rows, n_tokens = children.shape
    rng = np.random.default_rng(data.draw(trt.seeds))
    log_prior = np.log(rng.dirichlet(np.ones(n_tokens), size=n_rows))
    log_prior[rng.random(log_prior.shape) < 0.2] = -np.inf
    row_offset = 5 * rng.standard_normal(n_rows)
    row_offset[rng.random(n_rows) < 0.1] = -np.inf
    divisor = data.draw(trt.betas())
    log_sum, table = np.empty(n_rows), np.empty((n_rows, n_tokens))
    kernels.log_normalize_level(
        children.reshape(-1),
        log_sum,
        table,
        log_prior=log_prior,
        row_offset=row_offset,
        divisor=divisor,
        workspace=workspace,
    )
    x = (row_offset[:, None] + log_prior) + children / divisor
    expected_sum, expected_table = straightforward_log_softmax(x)
    atol = tolerance(x)
    np.testing.assert_allclose(log_sum, expected_sum, rtol=RTOL, atol=atol)
    np.testing.assert_allclose(table, expected_table, rtol=RTOL, atol=atol)
    assert not np.isnan(table).any()


def test_log_normalize_level_hand_cases():
    # [0, 0] -> log 2 (two equal weights); [-inf, 3] -> 3 with probabilities (0, 1);
    # [-inf, -inf] -> -inf, row left -inf; [1e308, 1e308] -> 1e308 + log 2 = 1e308 in floats
    x = np.array([[0.0, 0.0], [-np.inf, 3.0], [-np.inf, -np.inf], [1e308, 1e308]])
    log_sum, table = np.empty(4), np.empty((4, 2))
    assert kernels.log_normalize_level(x.reshape(-1), log_sum, table)
    np.testing.assert_allclose(log_sum[:2], [np.log(2.0), 3.0], rtol=1e-15)
    assert log_sum[2] == -np.inf and log_sum[3] == 1e308
    np.testing.assert_allclose(table[0], [-np.log(2.0)] * 2, rtol=1e-15)
    np.testing.assert_array_equal(table[1:3], [[-np.inf, 0.0], [-np.inf, -np.inf]])


@given(st.integers(1, 50), st.integers(1, 9), trt.seeds)
def test_extend_log_reach_equals_broadcast(n_rows, n_tokens, seed):
    # both layouts (strided columns for A <= 2, broadcast above) give the same bits
    rng = np.random.default_rng(seed)
    log_reach = rng.standard_normal(n_rows)
    log_reach[rng.random(n_rows) < 0.2] = -np.inf
    table = rng.standard_normal((n_rows, n_tokens))
    table[rng.random(table.shape) < 0.2] = -np.inf
    np.testing.assert_array_equal(
        kernels.extend_log_reach(log_reach, table), (log_reach[:, None] + table).reshape(-1)
    )


def test_extend_log_reach_across_blocks():
    # more rows than one block of the strided-column path (A <= FORWARD_COLUMNS_MAX_TOKENS)
    rng = np.random.default_rng(3)
    for n_tokens in range(1, kernels.FORWARD_COLUMNS_MAX_TOKENS + 1):
        n_rows = 2 * kernels.BLOCK_ELEMENTS // n_tokens + 7
        log_reach = rng.standard_normal(n_rows)
        table = np.log(rng.dirichlet(np.ones(n_tokens), size=n_rows))
        np.testing.assert_array_equal(
            kernels.extend_log_reach(log_reach, table), (log_reach[:, None] + table).reshape(-1)
        )


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
    for fast, plain in zip(solution.policy.log_probs, log_pi, strict=True):
        reached = ~np.isnan(plain)
        np.testing.assert_allclose(fast[reached], plain[reached], rtol=RTOL, atol=RTOL * scale)
        assert not np.isnan(fast).any()  # unreached rows come from soft value iteration
