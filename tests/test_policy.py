"""Policy tables: validation, builders, leaf probabilities, occupancies and sampling."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import testing as trt


@given(st.data())
def test_leaf_log_probs_are_products_down_the_tree(data):
    tree = data.draw(trt.trees())
    policy = data.draw(trt.policies(tree))
    leaf_log_probs = policy.leaf_log_probs()
    # Brute force on a few leaves: sum_h log pi(a_h | s_h) with s_{h+1} = s_h * A + a_h.
    for leaf in {0, tree.n_leaves - 1, tree.n_leaves // 3}:
        state, total = leaf // tree.leaves_per_prompt, 0.0
        for h, a in enumerate(tree.leaf_token_indices()[leaf]):
            total += policy.log_probs[h][state, a]
            state = state * tree.n_tokens + a
        np.testing.assert_allclose(leaf_log_probs[leaf], total, rtol=1e-12, atol=1e-12)
    # Each level's occupancies, and the leaves, sum to one per prompt.
    for h in range(tree.horizon + 1):
        np.testing.assert_allclose(
            policy.state_probs(h).reshape(tree.n_prompts, -1).sum(axis=1), 1.0, rtol=1e-12
        )
    assert not np.isnan(leaf_log_probs).any()


def test_from_logits_normalizes_rows_and_keeps_minus_inf():
    tree = tr.TokenTree(["a", "b", "c"], 1)
    policy = tr.Policy.from_logits(tree, [np.array([[0.0, np.log(3.0), -np.inf]])])
    np.testing.assert_allclose(policy.probs[0], [[0.25, 0.75, 0.0]], rtol=1e-15)
    assert np.isneginf(policy.log_probs[0][0, 2])


def test_uniform_policy_leaf_probabilities():
    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=["x", "y"])
    np.testing.assert_allclose(tr.Policy.uniform(tree).leaf_probs(), 3.0**-3, rtol=1e-14)


def test_tables_are_read_only():
    tree = tr.TokenTree(["a", "b"], 2)
    policy = tr.Policy.uniform(tree)
    with pytest.raises(ValueError):
        policy.log_probs[0][0, 0] = 0.0


def test_sampling_matches_leaf_probabilities():
    # Chi-square-free check: with n = 200_000 draws each empirical frequency has standard
    # deviation sqrt(p(1-p)/n) <= 1.2e-3; 6 sigma bounds the test's false-failure rate.
    tree = tr.TokenTree(["a", "b", "c"], 2, prompts=["x", "y"])
    policy = tr.Policy.random(tree, seed=1, zero_fraction=0.3)
    n = 200_000
    leaves = policy.sample(n, seed=np.random.default_rng(2))
    freq = np.bincount(leaves, minlength=tree.n_leaves) / n
    expected = policy.leaf_probs() / tree.n_prompts  # prompts uniform
    sigma = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(freq - expected) <= 6 * sigma + 1e-12)
    assert np.all(freq[expected == 0] == 0)  # never a token the policy never picks
    only_y = policy.sample(1000, seed=3, prompt="y")
    assert np.all(tree.leaf_prompts()[only_y] == 1)


def test_sampling_is_reproducible():
    tree = tr.TokenTree(["a", "b"], 3)
    policy = tr.Policy.random(tree, seed=0)
    np.testing.assert_array_equal(policy.sample(50, seed=7), policy.sample(50, seed=7))


@pytest.mark.parametrize(
    ("tables", "match"),
    [
        ("not a list", "list of 2 arrays"),
        ([np.zeros((1, 2))], "one array per level"),
        ([np.log(np.full((1, 2), 0.5)), np.log(np.full((3, 2), 0.5))], r"shape \(2, 2\)"),
        ([np.log([[0.5, 0.6]]), np.log(np.full((2, 2), 0.5))], "does not normalize"),
        ([np.array([[np.nan, 0.0]]), np.log(np.full((2, 2), 0.5))], "NaN"),
        ([np.array([[np.inf, 0.0]]), np.log(np.full((2, 2), 0.5))], r"\+inf"),
        ([np.array([[-np.inf, -np.inf]]), np.log(np.full((2, 2), 0.5))], "all -inf"),
    ],
)
def test_bad_tables_are_refused(tables, match):
    tree = tr.TokenTree(["a", "b"], 2)
    with pytest.raises((ValueError, TypeError), match=match):
        tr.Policy(tree, tables)


def test_bad_builder_arguments():
    tree = tr.TokenTree(["a", "b"], 2)
    with pytest.raises(TypeError, match="TokenTree"):
        tr.Policy.uniform("tree")
    with pytest.raises(ValueError, match="temperature"):
        tr.Policy.random(tree, seed=0, temperature=0.0)
    with pytest.raises(TypeError, match="seed"):
        tr.Policy.random(tree, seed="zero")


@given(st.data())
def test_from_leaf_log_probs_inverts_leaf_log_probs(data):
    tree = data.draw(trt.trees(with_eos=data.draw(st.booleans())))
    policy = data.draw(trt.policies(tree))
    rebuilt = tr.Policy.from_leaf_log_probs(tree, policy.leaf_log_probs())
    np.testing.assert_allclose(rebuilt.leaf_probs(), policy.leaf_probs(), atol=1e-13)
    # Same conditionals wherever the policy reaches; rows it never reaches are uniform
    # (forced after eos), so Policy() accepts the result.
    tr.Policy(tree, rebuilt.log_probs)
    for h in range(tree.horizon):
        reached = policy.state_log_probs(h) > -np.inf
        left, right = rebuilt.log_probs[h][reached], policy.log_probs[h][reached]
        np.testing.assert_array_equal(np.isneginf(left), np.isneginf(right))
        finite = np.isfinite(right)
        np.testing.assert_allclose(left[finite], right[finite], atol=1e-10)


def test_from_leaf_log_probs_refuses_bad_distributions():
    tree = tr.TokenTree(["a", "$"], 2, eos="$")
    with pytest.raises(ValueError, match="sum to"):
        tr.Policy.from_leaf_log_probs(tree, np.log([0.5, 0.5, 0.5, 0.5]))
    # leaf "$a" (index 2) has a token after the end token: no policy produces it
    with pytest.raises(ValueError, match="after the end token"):
        tr.Policy.from_leaf_log_probs(tree, np.log([0.5, 0.25, 0.125, 0.125]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        tr.Policy.from_leaf_log_probs(tree, np.zeros(3))


def test_policy_does_not_keep_the_callers_arrays():
    # Policy(tree, tables) copies at the boundary: writing NaN into the caller's table
    # afterwards changes neither the policy nor what a solver computes from it.
    tree = tr.TokenTree(["a", "b", "c"], 2)
    tables = [np.log(np.full((tree.level_size(h), 3), 1 / 3)) for h in range(2)]
    policy = tr.Policy(tree, tables)
    reward = np.arange(tree.n_leaves, dtype=np.float64)
    before = tr.closed_form(policy, reward, 1.0)
    tables[0][0] = np.nan
    np.testing.assert_allclose(policy.probs[0], 1 / 3, rtol=1e-15)
    after = tr.closed_form(policy, reward, 1.0)
    np.testing.assert_array_equal(after.log_partition, before.log_partition)
    # the solution keeps its own read-only reward, not the caller's array
    reward[0] = 1e9
    assert after.reward[0] == 0.0 and not after.reward.flags.writeable


@pytest.mark.parametrize(
    "convert",
    [
        lambda t: t.tolist(),  # nested lists
        lambda t: np.asfortranarray(t),  # non-contiguous layouts
        lambda t: np.repeat(t, 2, axis=1)[:, ::2],  # a strided view
        lambda t: _read_only_copy(t),
    ],
)
def test_unusual_but_legal_tables_are_answered_as_float64(convert):
    tree = tr.TokenTree(["a", "b"], 2)
    reference = tr.Policy.random(tree, seed=3)
    policy = tr.Policy(tree, [convert(np.array(table)) for table in reference.log_probs])
    for mine, theirs in zip(policy.log_probs, reference.log_probs, strict=True):
        assert mine.dtype == np.float64
        np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize(
    "convert",
    [
        lambda r: r.tolist(),
        lambda r: r.astype(np.int64),
        lambda r: r.astype(np.float32),
        lambda r: np.repeat(r, 2)[::2],  # a strided view
        lambda r: _read_only_copy(r),
    ],
)
def test_unusual_but_legal_rewards_and_betas_are_answered_as_float64(convert):
    # integer-valued rewards (so int and float32 are exact): the solvers give the float64
    # answer bit for bit, for numpy-scalar betas too
    tree = tr.TokenTree(["a", "b"], 3)
    ref = tr.Policy.random(tree, seed=4)
    reward = np.arange(tree.n_leaves, dtype=np.float64) - 3.0
    for solver in (tr.closed_form, tr.soft_value_iteration):
        expected = solver(ref, reward, 0.5)
        for beta in (0.5, np.float32(0.5), np.float64(0.5)):
            got = solver(ref, convert(reward), beta)
            np.testing.assert_array_equal(got.log_partition, expected.log_partition)
            assert got.reward.dtype == np.float64


def _read_only_copy(table):
    copy = np.array(table)
    copy.flags.writeable = False
    return copy


def test_complex_tables_are_refused_by_name():
    tree = tr.TokenTree(["a", "b"], 1)
    with pytest.raises(TypeError, match=r"log_probs\[0\] must be real.*complex"):
        tr.Policy(tree, [np.log([[0.5, 0.5]]).astype(complex)])
    with pytest.raises(TypeError, match=r"logits\[0\] must be real"):
        tr.Policy.from_logits(tree, [np.array([[1 + 0j, 2 + 1j]])])
    with pytest.raises(TypeError, match="reward must be real"):
        tr.closed_form(tr.Policy.uniform(tree), np.array([1.0, 2.0 + 0j]), 1.0)


def test_validation_names_the_first_bad_row():
    tree = tr.TokenTree(["a", "b"], 2)
    good = [np.log(np.full((tree.level_size(h), 2), 0.5)) for h in range(2)]
    for value, match in (
        (np.nan, "contains NaN"),
        (np.inf, r"contains \+inf"),
        (0.1, "row 1 does not normalize"),
    ):
        tables = [np.array(table) for table in good]
        tables[1][1, 0] = value
        with pytest.raises(ValueError, match=match):
            tr.Policy(tree, tables)
    tables = [np.array(table) for table in good]
    tables[1][1] = -np.inf
    with pytest.raises(ValueError, match="row 1 is all -inf"):
        tr.Policy(tree, tables)


def test_sample_counts_are_checked_and_numpy_scalars_accepted():
    policy = tr.Policy.uniform(tr.TokenTree(["a", "b"], 2))
    assert policy.sample(np.int64(5), seed=np.int32(1)).shape == (5,)
    with pytest.raises(ValueError, match=r"drawing 1,000,000,000,000 generations"):
        policy.sample(10**12, seed=0)


def test_check_policy_on_names_the_argument_and_the_fix():
    # the shared check behind sample_preferences(policy=...), population_preferences and
    # fit_sft(prior=...): a Policy, on this tree
    from tinyrlhf.validation import check_policy_on

    tree = tr.TokenTree(["a", "b"], 2)
    other = tr.TokenTree(["a", "b"], 3)
    policy = tr.Policy.uniform(tree)
    assert check_policy_on(tree, policy, "prior") is policy
    with pytest.raises(TypeError, match="prior"):
        check_policy_on(tree, np.zeros(3), "prior")
    with pytest.raises(ValueError, match="prior must be a policy on the same TokenTree as tree"):
        check_policy_on(tree, tr.Policy.uniform(other), "prior")
    with pytest.raises(ValueError, match="policy must be a policy on the same TokenTree"):
        tr.sample_preferences(tree, np.zeros(tree.n_leaves), 3, policy=tr.Policy.uniform(other))
    with pytest.raises(ValueError, match="prior must be a policy on the same TokenTree"):
        tr.fit_sft(tree, [], smoothing=1.0, prior=tr.Policy.uniform(other))
