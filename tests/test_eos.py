"""End-of-sequence trees: after `eos` only `eos` follows, in every policy, and every solver,
KL and sampler works unchanged (issue 7, section 5)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import testing as trt


def eos_tree():
    return tr.TokenTree(["a", "b", "$"], 3, prompts=["x", "y"], eos="$")


def test_forced_rows_and_valid_leaves_by_hand():
    tree = eos_tree()
    # Level 1: states "a", "b", "$" per prompt; only "$" has ended.
    np.testing.assert_array_equal(tree.ended_states(1), [False, False, True] * 2)
    # Valid leaves of one prompt: no eos among the first two tokens (2*2 choices, then any of
    # 3 last tokens: 12), or the first eos at position 2 ("a$$", "b$$": 2), or at once
    # ("$$$": 1): 12 + 2 + 1 = 15.
    assert tree.valid_leaves().reshape(2, -1).sum(axis=1).tolist() == [15, 15]
    for policy in (tr.Policy.uniform(tree), tr.Policy.random(tree, seed=0, zero_fraction=0.3)):
        leaf_probs = policy.leaf_probs()
        assert np.all(leaf_probs[~tree.valid_leaves()] == 0)
        np.testing.assert_allclose(leaf_probs.reshape(2, -1).sum(axis=1), 1.0, rtol=1e-14)
    # Uniform: "$$$" has probability 1/3 (eos first, then forced), "a$$" 1/9, "ab$" 1/27.
    uniform = tr.Policy.uniform(tree).leaf_probs()
    np.testing.assert_allclose(uniform[tree.leaf_index("x", ["$"])], 1 / 3, rtol=1e-14)
    np.testing.assert_allclose(uniform[tree.leaf_index("x", ["a", "$"])], 1 / 9, rtol=1e-14)
    np.testing.assert_allclose(uniform[tree.leaf_index("y", ["a", "b", "$"])], 1 / 27, rtol=1e-14)


def test_text_round_trip_and_length_rewards():
    tree = eos_tree()
    index = tree.leaf_index("x", ("b", "$"))
    assert tree.leaves()[index] == ("x", ("b", "$", "$"))
    assert tree.leaf_text(index) == ("x", "b$")
    assert tree.leaf_index("x", tree.parse("b$")) == index
    lengths = tree.leaf_values(lambda prompt, tokens: len(tokens))  # completion length <= H
    assert lengths[index] == 1 and lengths[tree.leaf_index("x", ["$"])] == 0
    assert lengths.max() == 3


def test_policies_must_respect_forced_rows():
    tree = eos_tree()
    tables = [table.copy() for table in tr.Policy.uniform(tree).log_probs]
    tables[1][2] = np.log(1 / 3)  # state "$" of prompt x is no longer forced
    with pytest.raises(ValueError, match="follows the end token"):
        tr.Policy(tree, tables)
    # from_logits forces such rows whatever the logits say
    forced = tr.Policy.from_logits(tree, tables)
    np.testing.assert_array_equal(forced.log_probs[1][2], [-np.inf, -np.inf, 0.0])
    with pytest.raises(ValueError, match="eos token"):
        tr.TokenTree(["a", "b"], 2, eos="$")


@given(trt.problems(with_eos=True))
def test_solvers_agree_on_eos_trees(problem):
    tree, ref, reward, beta = problem
    closed = tr.closed_form(ref, reward, beta)
    soft = tr.soft_value_iteration(ref, reward, beta)
    natural = tr.policy_gradient(ref, reward, beta, method="natural")
    scale = 1 + np.abs(reward).max()
    tr.check_agreement(closed, soft, natural).assert_close(
        log_pi_atol=1e-7, tv_atol=1e-9, objective_atol=1e-8 * scale
    )
    for h in range(1, tree.horizon):  # optimal policies keep the forced rows
        ended = tree.ended_states(h)
        np.testing.assert_array_equal(closed.policy.probs[h][ended, tree.eos_index], 1.0)
    np.testing.assert_allclose(
        tr.objective(closed.policy, ref, reward, beta),
        beta * closed.log_partition,
        rtol=1e-9,
        atol=1e-9 * scale,
    )


@given(st.data())
def test_kl_on_eos_trees_forced_rows_cost_nothing(data):
    tree = data.draw(trt.trees(with_eos=True))
    p = data.draw(trt.policies(tree))
    q = data.draw(trt.policies(tree))
    chain = tr.kl_divergence(p, q)
    leaves = tr.kl_divergence(p, q, method="leaves")
    finite = np.isfinite(chain)
    np.testing.assert_array_equal(finite, np.isfinite(leaves))
    np.testing.assert_allclose(chain[finite], leaves[finite], rtol=1e-9, atol=1e-11)


def test_sampling_never_produces_invalid_leaves():
    tree = eos_tree()
    leaves = tr.Policy.random(tree, seed=1).sample(20_000, seed=2)
    assert tree.valid_leaves()[leaves].all()
