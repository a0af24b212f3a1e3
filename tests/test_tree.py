"""TokenTree: canonical indexing, enumeration, text, and bad input."""

import numpy as np
import pytest
from hypothesis import given

import tinyrlhf as tr
from tinyrlhf import testing as trt


def test_sizes_and_canonical_index_by_hand():
    # Two tokens, H = 2, two prompts: level h has 2 * 2**h states; index of (p, a1, a2)
    # is p*4 + a1*2 + a2 (first token most significant), so ("y", "b", "a") -> 4 + 2 = 6.
    tree = tr.TokenTree(["a", "b"], 2, prompts=["x", "y"])
    assert [tree.level_size(h) for h in range(3)] == [2, 4, 8]
    assert tree.n_leaves == 8 and tree.n_states == 14 and tree.leaves_per_prompt == 4
    assert tree.leaf_index("y", ("b", "a")) == 6
    assert tree.state_index("x", ("b",)) == (1, 1)
    assert tree.leaves()[6] == ("y", ("b", "a"))
    assert tree.separator == ""


@given(trt.trees())
def test_leaves_enumerate_in_canonical_order(tree):
    leaves = tree.leaves()
    assert len(leaves) == tree.n_leaves == tree.n_prompts * tree.n_tokens**tree.horizon
    assert len(set(leaves)) == tree.n_leaves
    for index in {0, tree.n_leaves // 2, tree.n_leaves - 1}:
        prompt, tokens = leaves[index]
        assert tree.leaf_index(prompt, tokens) == index
        assert tree.leaf_text(index) == (prompt, tree.text(tokens))
        assert tree.parse(tree.text(tokens)) == tokens
    # Children of state i are i*A + a: the parent of every leaf is leaf // A.
    token_rows = tree.leaf_token_indices()
    np.testing.assert_array_equal(token_rows[:, -1], np.arange(tree.n_leaves) % tree.n_tokens)
    np.testing.assert_array_equal(
        tree.leaf_prompts(), np.arange(tree.n_leaves) // tree.leaves_per_prompt
    )


def test_leaf_values_calls_fn_on_every_leaf():
    tree = tr.TokenTree(["a", "bb"], 2, prompts=["x", "y"])
    values = tree.leaf_values(lambda prompt, tokens: len(prompt + tree.text(tokens)))
    # separator is " " for multi-character tokens: "x" + "a a" -> 4 characters, etc.
    assert tree.separator == " "
    assert values[tree.leaf_index("x", ("a", "a"))] == 4
    assert values[tree.leaf_index("y", ("bb", "bb"))] == 6


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tokens": ["a", "a"], "horizon": 2}, ValueError, "distinct"),
        ({"tokens": ["a", ""], "horizon": 2}, ValueError, "non-empty"),
        ({"tokens": [], "horizon": 2}, ValueError, "at least one token"),
        ({"tokens": "ab", "horizon": 2}, TypeError, "sequence of strings"),
        ({"tokens": ["a", 1], "horizon": 2}, TypeError, "strings"),
        ({"tokens": ["a", "b"], "horizon": 0}, ValueError, "horizon"),
        ({"tokens": ["a", "b"], "horizon": 2.0}, TypeError, "horizon"),
        ({"tokens": ["a", "b"], "horizon": 2, "prompts": ["x", "x"]}, ValueError, "distinct"),
        ({"tokens": ["a", "b"], "horizon": 2, "prompts": []}, ValueError, "prompt"),
        ({"tokens": ["ab", "c"], "horizon": 2, "separator": ""}, ValueError, "ambiguous"),
        ({"tokens": ["a b", "c"], "horizon": 2}, ValueError, "separator"),
    ],
)
def test_bad_trees_are_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        tr.TokenTree(**kwargs)


def test_huge_tree_refused_before_allocating():
    tokens = [f"t{k}" for k in range(16)]
    with pytest.raises(ValueError, match=r"needs about .* memory budget"):
        tr.TokenTree(tokens, 12)


def test_bad_lookups():
    tree = tr.TokenTree(["a", "b"], 2)
    with pytest.raises(ValueError, match="unknown prompt"):
        tree.leaf_index("nope", ("a", "b"))
    with pytest.raises(ValueError, match="unknown token"):
        tree.leaf_index("", ("a", "z"))
    with pytest.raises(ValueError, match="exactly 2 tokens"):
        tree.leaf_index("", ("a",))
    with pytest.raises(ValueError, match="not made of the tokens"):
        tree.parse("abz")
    with pytest.raises(ValueError, match="not finite"):
        tree.leaf_values(lambda prompt, tokens: float("nan"))
    with pytest.raises(ValueError, match="level h"):
        tree.level_size(3)


@pytest.mark.parametrize(("n_tokens", "horizon", "n_prompts"), [(1, 5, 3), (2, 7, 1), (5, 3, 2)])
def test_n_states_closed_form_is_the_sum_of_level_sizes(n_tokens, horizon, n_prompts):
    # n_prompts (A^{H+1} - 1) / (A - 1) (n_prompts (H + 1) for A = 1) = sum_h n_prompts A^h
    tree = tr.TokenTree(
        [f"t{a}" for a in range(n_tokens)], horizon, prompts=[f"p{p}" for p in range(n_prompts)]
    )
    assert tree.n_states == sum(tree.level_size(h) for h in range(horizon + 1))
