"""Preference data: validation, Bradley-Terry sampling, the population of pairs, TRL JSONL."""

import json
import os
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

import tinyrlhf as tr
from tinyrlhf import testing as trt

#: A |z| above this in any cell of a sampling test fails it. With a fixed seed the test is
#: deterministic; for a fresh seed a false alarm in one cell has probability about 6e-7
#: (two-sided normal tail at 5 sigma), so well below 1e-4 for every test below.
Z_MAX = 5.0


def small_tree(prompts=("x", "y")):
    return tr.TokenTree(["a", "b"], horizon=2, prompts=prompts)


# ---------------------------------------------------------------------------- validation
def test_preferences_defaults_and_read_only_arrays():
    tree = small_tree()
    prefs = tr.Preferences([0, 1], [0, 7], [3, 4], tree=tree)
    assert len(prefs) == 2
    np.testing.assert_array_equal(prefs.weight, [1.0, 1.0])
    assert prefs.total_weight == 2.0
    assert prefs.chosen.dtype == np.int64 and prefs.weight.dtype == np.float64
    with pytest.raises(ValueError):
        prefs.chosen[0] = 1
    assert "n=2" in repr(prefs)
    empty = tr.Preferences([], [], [], tree=tree)
    assert len(empty) == 0 and empty.total_weight == 0.0
    subset = prefs[1:]
    assert len(subset) == 1 and subset.chosen[0] == 7
    assert prefs[-1].chosen[0] == 7 and prefs[0].chosen[0] == 0


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        (([0, 0], [0], [1]), ValueError, "same length"),
        (([0], [0.0], [1]), TypeError, "integer"),
        (([0], [True], [1]), TypeError, "integer"),
        (([0], [[0]], [[1]]), ValueError, "1-D"),
        (([0], [-1], [1]), ValueError, "negative"),
        (([0], [0], [1], [np.nan]), ValueError, "finite"),
        (([0], [0], [1], [-1.0]), ValueError, "finite and >= 0"),
        (([0], [0], [1], [1.0, 2.0]), ValueError, "shape"),
        (([0], [0], [1], ["heavy"]), TypeError, "weight"),
    ],
)
def test_preferences_rejects_bad_arrays(arguments, error, match):
    with pytest.raises(error, match=match):
        tr.Preferences(*arguments)


def test_preferences_checked_against_the_tree():
    tree = small_tree()  # 4 leaves per prompt: prompt x owns 0..3, y owns 4..7
    with pytest.raises(ValueError, match="out of range"):
        tr.Preferences([0], [8], [1], tree=tree)
    with pytest.raises(ValueError, match="prompt"):
        tr.Preferences([2], [0], [1], tree=tree)
    with pytest.raises(ValueError, match="rejected leaf 5 is a generation of prompt 'y'"):
        tr.Preferences([0], [1], [5], tree=tree)
    with pytest.raises(ValueError, match="chosen leaf 1 is a generation of prompt 'x'"):
        tr.Preferences([1], [1], [5]).check(tree)
    with pytest.raises(TypeError, match="TokenTree"):
        tr.Preferences([0], [0], [1]).check("tree")


# ------------------------------------------------------------------------------ sampling
def test_sampled_win_rates_match_bradley_terry():
    # For every unordered pair {i, j} the fraction of its m comparisons that i wins is
    # Binomial(m, sigma(r_i - r_j)) / m: its z-score must stay below Z_MAX.
    rng = np.random.default_rng(0)
    tree = tr.TokenTree(["a", "b"], horizon=2)  # 4 leaves, 6 pairs
    reward = rng.normal(scale=1.5, size=tree.n_leaves)
    prefs = tr.sample_preferences(tree, reward, 400_000, seed=rng)
    wins = np.zeros((4, 4))
    np.add.at(wins, (prefs.chosen, prefs.rejected), 1.0)
    for i in range(4):
        for j in range(i + 1, 4):
            m = wins[i, j] + wins[j, i]
            p = expit(reward[i] - reward[j])
            z = (wins[i, j] - m * p) / np.sqrt(m * p * (1 - p))
            assert abs(z) < Z_MAX, (i, j, z)


def _pair_z_scores(prefs, probabilities, n):
    """z-scores of the (chosen, rejected) counts against Binomial(n, probabilities[i, j])
    in every cell of positive probability, and the counts in impossible cells."""
    size = probabilities.shape[0]
    counts = np.zeros((size, size))
    np.add.at(counts, (prefs.chosen, prefs.rejected), 1.0)
    expected = n * probabilities
    cell = expected > 0
    z = (counts[cell] - expected[cell]) / np.sqrt(expected[cell] * (1 - probabilities[cell]))
    return z, counts[~cell]


def _population_matrix(population, n_leaves):
    matrix = np.zeros((n_leaves, n_leaves))
    matrix[population.chosen, population.rejected] = population.weight
    return matrix


def test_independent_pairs_match_the_population_weights():
    # distinct=False keeps the old law: two independent draws. population_preferences gives
    # the probability of each (prompt, chosen, rejected) for one sampled pair; the sampled
    # counts are Binomial(n, w): z-test every cell, and ties (chosen == rejected) happen with
    # probability 1 - sum w.
    rng = np.random.default_rng(1)
    tree = tr.TokenTree(["a", "b", "c"], horizon=1, prompts=["x", "y"])
    policy = tr.Policy.random(tree, seed=2, zero_fraction=0.3)
    reward = rng.normal(size=tree.n_leaves)
    n = 300_000
    prefs = tr.sample_preferences(tree, reward, n, policy=policy, seed=rng, distinct=False)
    population = tr.population_preferences(tree, reward, policy=policy)
    probabilities = _population_matrix(population, tree.n_leaves)
    ties = int(np.sum(prefs.chosen == prefs.rejected))
    off_diagonal = prefs[prefs.chosen != prefs.rejected]
    z, impossible = _pair_z_scores(off_diagonal, probabilities, n)
    assert np.abs(z).max() < Z_MAX
    assert np.all(impossible == 0)  # impossible pairs never appear
    tie_probability = 1 - population.total_weight
    z_ties = (ties - n * tie_probability) / np.sqrt(n * tie_probability * (1 - tie_probability))
    assert abs(z_ties) < Z_MAX
    # chosen and rejected lie under the pair's prompt; zero-probability leaves never appear
    prefs.check(tree)
    assert np.all(policy.leaf_probs()[np.concatenate([prefs.chosen, prefs.rejected])] > 0)


def _policy_with_zeros(tree):
    """A policy on a one-level tree with probability-0 leaves and a peaked prompt."""
    assert tree.horizon == 1
    probs = np.array([[0.5, 0.0, 0.3, 0.2, 0.0], [0.0, 0.9, 0.0, 0.0, 0.1]])[: tree.n_prompts]
    with np.errstate(divide="ignore"):
        return tr.Policy(tree, [np.log(probs)])


def test_distinct_pairs_follow_the_conditional_law():
    # Default distinct=True: a pair is two independent draws conditioned on differing, so
    # P(chosen i, rejected j) = w(i, j) / (1 - sum_k P(k | s_0)^2) with w the population
    # weight (derived in sample_preferences' docstring). z-test every cell; ties never occur.
    rng = np.random.default_rng(11)
    tree = tr.TokenTree(list("abcde"), horizon=1, prompts=["x", "y"])
    policy = _policy_with_zeros(tree)
    reward = rng.normal(size=tree.n_leaves)
    n = 300_000
    prefs = tr.sample_preferences(tree, reward, n, policy=policy, seed=rng)
    assert np.all(prefs.chosen != prefs.rejected)
    population = tr.population_preferences(tree, reward, policy=policy)
    leaf_probs = policy.leaf_probs().reshape(tree.n_prompts, -1)  # (P, L)
    no_tie = 1.0 - (leaf_probs**2).sum(axis=1)  # (P,) 1 - sum_k P(k | s_0)^2
    probabilities = _population_matrix(population, tree.n_leaves)
    probabilities /= np.repeat(no_tie, tree.leaves_per_prompt)[:, None]  # row i's prompt
    np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-12)
    z, impossible = _pair_z_scores(prefs, probabilities, n)
    assert np.abs(z).max() < Z_MAX
    assert np.all(impossible == 0)
    # independent draws would tie with probability .5^2+.3^2+.2^2 (prompt x), .9^2+.1^2 (y)
    np.testing.assert_allclose(1.0 - no_tie, [0.38, 0.82], rtol=1e-12)


def test_distinct_pair_map_is_the_exact_conditional_law():
    # A deterministic check of the inverse-CDF map itself: feed the midpoints of an M x M
    # grid of (u_1, u_2). The first draw puts M q(i) +- 1 grid rows on each i (an interval
    # of length q(i) holds that many midpoints) and, within each, M P(j | i) +- 1 columns on
    # each j, so every joint frequency is within 2/M + 1/M^2 of the exact law
    # P(i) P(j) / (1 - sum_k P(k)^2), i != j. Rows: zeros, a peaked row (P = 1 - 1e-15, where
    # 1 - P(i) by subtraction would lose every digit), and a uniform row.
    from tinyrlhf.preferences import distinct_pair_offsets

    probs = np.array(
        [
            [0.5, 0.0, 0.3, 0.2, 0.0],
            [1.0 - 1e-15, 1e-15, 0.0, 0.0, 0.0],
            [0.2, 0.2, 0.2, 0.2, 0.2],
        ]
    )
    m = 1000
    grid = (np.arange(m) + 0.5) / m
    u_first, u_second = (u.ravel() for u in np.meshgrid(grid, grid, indexing="ij"))
    for row, p in enumerate(probs):
        first, second, admits_pair = distinct_pair_offsets(
            probs, np.full(m * m, row), u_first, u_second
        )
        assert admits_pair.all()
        frequency = np.zeros((5, 5))
        np.add.at(frequency, (first, second), 1.0 / (m * m))
        exact = np.outer(p, p)
        np.fill_diagonal(exact, 0.0)
        exact /= exact.sum()
        np.testing.assert_allclose(frequency, exact, rtol=0, atol=2 / m + 1 / m**2)
        assert np.all(frequency[exact == 0] == 0)  # never a tie, never a zero-probability leaf
    # the peaked row: 1 - P(0) = 1e-15 exactly as summed, so each order has probability 1/2
    first, second, _ = distinct_pair_offsets(probs, np.ones(2, dtype=int), [0.5, 1.0], [1.0, 1.0])
    np.testing.assert_array_equal(first, [0, 1])
    np.testing.assert_array_equal(second, [1, 0])


@given(st.data())
@settings(max_examples=30)
def test_distinct_pairs_are_distinct_and_possible(data):
    tree = data.draw(trt.trees(max_leaves=64, with_eos=data.draw(st.booleans())))
    policy = data.draw(trt.policies(tree))
    reward = data.draw(trt.rewards(tree, max_magnitude=50.0))
    seed = data.draw(trt.seeds)
    support = policy.leaf_probs().reshape(tree.n_prompts, -1) > 0  # (P, L)
    pairable = np.flatnonzero(support.sum(axis=1) >= 2)
    if pairable.size < tree.n_prompts:
        with pytest.raises(ValueError, match="distinct=False"):
            tr.sample_preferences(tree, reward, 50, policy=policy, seed=seed)
    if pairable.size == 0:
        return
    prompts = np.resize(pairable, 200)
    prefs = tr.sample_preferences(tree, reward, 200, policy=policy, seed=seed, prompt=prompts)
    prefs.check(tree)
    assert np.all(prefs.chosen != prefs.rejected)
    assert np.all(support.ravel()[prefs.chosen] & support.ravel()[prefs.rejected])


def test_distinct_pairs_on_the_demo_tree_and_degenerate_prompts():
    # The demo tree: about 8% of independent pairs compare a completion with itself (the
    # notebook showed "'abc' preferred to 'abc'"); the default never does.
    from tinyrlhf.examples import demo_problem

    tree, ref, reward = demo_problem(horizon=3)
    tie_mass = (ref.leaf_probs() ** 2).sum() / tree.n_prompts  # P(y_1 = y_2)
    assert 0.05 < tie_mass < 0.12
    prefs = tr.sample_preferences(tree, reward, 5000, policy=ref, seed=0)
    assert not np.any(prefs.chosen == prefs.rejected)
    # the uniform policy (no eos) takes a closed-form path: uniform over ordered distinct pairs
    uniform = tr.sample_preferences(tree, reward, 1000, seed=1)
    assert not np.any(uniform.chosen == uniform.rejected)
    # a prompt with a single possible completion admits no distinct pair
    one_token = tr.TokenTree(["a"], horizon=2, prompts=["x"])
    with pytest.raises(ValueError, match=r"only one completion of prompt 'x'.*distinct=False"):
        tr.sample_preferences(one_token, np.zeros(1), 3, seed=0)
    assert len(tr.sample_preferences(one_token, np.zeros(1), 0, seed=0)) == 0
    tied = tr.sample_preferences(one_token, np.zeros(1), 3, seed=0, distinct=False)
    np.testing.assert_array_equal(tied.chosen, tied.rejected)
    five = tr.TokenTree(list("abcde"), horizon=1, prompts=["x", "y", "z"])
    probs = np.array([[0.5, 0.0, 0.3, 0.2, 0.0], [0, 0, 1.0, 0, 0], [0.0, 0.9, 0.0, 0.0, 0.1]])
    with np.errstate(divide="ignore"):
        lonely = tr.Policy(five, [np.log(probs)])
    with pytest.raises(ValueError, match="prompt 'y'"):  # uniform prompts may draw y
        tr.sample_preferences(five, np.zeros(15), 10, policy=lonely, seed=0)
    with pytest.raises(ValueError, match="prompt 'y'"):
        tr.sample_preferences(five, np.zeros(15), 2, policy=lonely, seed=0, prompt=[0, 1])
    fine = tr.sample_preferences(
        five, np.zeros(15), 100, policy=lonely, seed=0, prompt=[0, 2] * 50
    )
    assert np.all(fine.chosen != fine.rejected)
    with pytest.raises(TypeError, match="distinct"):
        tr.sample_preferences(five, np.zeros(15), 1, seed=0, distinct="yes")


def test_sample_sizes_are_checked_before_allocating():
    tree = small_tree()
    for n in (10**12, 10**400):
        with pytest.raises(ValueError, match=r"n = .* preference pairs") as error:
            tr.sample_preferences(tree, np.zeros(8), n, seed=0)
        assert "MemoryError" not in str(error.value)
    with pytest.raises(ValueError, match="1,000,000,000,000 preference pairs"):
        tr.sample_preferences(tree, np.zeros(8), 10**12, seed=0)


@given(st.data())
@settings(max_examples=20)
def test_population_weights_are_a_distribution(data):
    # sum over all ordered pairs (ties included) of P(y1, y2) is 1: the pair weights plus the
    # tie mass sum_p (1/P) sum_i P(i | p)^2 equal 1.
    tree = data.draw(trt.trees(max_leaves=64))
    policy = data.draw(trt.policies(tree))
    reward = data.draw(trt.rewards(tree, max_magnitude=50.0))
    population = tr.population_preferences(tree, reward, policy=policy)
    tie_mass = (policy.leaf_probs() ** 2).sum() / tree.n_prompts
    np.testing.assert_allclose(population.total_weight + tie_mass, 1.0, rtol=1e-12)
    population.check(tree)
    assert np.all(population.chosen != population.rejected)


def test_sampling_with_extreme_rewards_and_given_prompts():
    # Gaps of at least 1e4 logits: the better leaf always wins (sigma(-1e4) = e^-1e4 is 0
    # in float64), and nothing overflows (filterwarnings = error would catch it).
    tree = small_tree()
    reward = np.array([0.0, 1e4, -1e4, 2e4, 0.0, 1e4, -1e4, 2e4])
    prefs = tr.sample_preferences(tree, reward, 5000, seed=3, prompt="y")
    assert np.all(prefs.prompt == 1)
    distinct = prefs.chosen != prefs.rejected
    assert np.all(reward[prefs.chosen][distinct] > reward[prefs.rejected][distinct])
    chosen_prompts = np.array([0, 1, 1, 0])
    prefs = tr.sample_preferences(tree, reward, 4, seed=3, prompt=chosen_prompts)
    np.testing.assert_array_equal(prefs.prompt, chosen_prompts)
    assert len(tr.sample_preferences(tree, reward, 0, seed=3)) == 0


def test_sampling_is_reproducible_and_validates():
    tree = small_tree()
    reward = np.arange(8.0)
    first = tr.sample_preferences(tree, reward, 100, seed=7)
    second = tr.sample_preferences(tree, reward, 100, seed=7)
    np.testing.assert_array_equal(first.chosen, second.chosen)
    with pytest.raises(ValueError, match="shape"):
        tr.sample_preferences(tree, reward[:3], 10, seed=0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        tr.sample_preferences(tree, reward, -1, seed=0)
    with pytest.raises(TypeError, match="policy"):
        tr.sample_preferences(tree, reward, 10, seed=0, policy="uniform")
    other = tr.Policy.uniform(tr.TokenTree(["a", "b"], horizon=2))
    with pytest.raises(ValueError, match="same TokenTree"):
        tr.sample_preferences(tree, reward, 10, seed=0, policy=other)
    with pytest.raises(ValueError, match="prompt"):
        tr.sample_preferences(tree, reward, 3, seed=0, prompt=np.array([0, 5, 1]))
    with pytest.raises(TypeError, match="seed must be an int"):
        tr.sample_preferences(tree, reward, 10, seed=0.5)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        tr.sample_preferences(tree, reward, 10, seed=-1)


# ---------------------------------------------------------------------------------- JSONL
def test_jsonl_round_trip_with_and_without_weights(tmp_path):
    tree = tr.TokenTree(["the", "cat", "sat"], horizon=2, prompts=["Say:", "Écris « ça »"])
    reward = np.random.default_rng(4).normal(size=tree.n_leaves)
    prefs = tr.sample_preferences(tree, reward, 50, seed=5)
    path = tmp_path / "prefs.jsonl"
    prefs.to_jsonl(path, tree)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 50
    first = json.loads(lines[0])
    assert set(first) == {"prompt", "chosen", "rejected"}  # TRL's columns, no weight
    p, text = tree.leaf_text(int(prefs.chosen[0]))
    assert first["prompt"] == p and first["chosen"] == text and " " in text
    back = tr.Preferences.from_jsonl(path, tree)
    for field in ("prompt", "chosen", "rejected", "weight"):
        np.testing.assert_array_equal(getattr(back, field), getattr(prefs, field))

    population = tr.population_preferences(tree, reward)
    population.to_jsonl(path, tree)  # overwrites
    back = tr.Preferences.from_jsonl(path, tree)
    np.testing.assert_array_equal(back.chosen, population.chosen)
    np.testing.assert_array_equal(back.weight, population.weight)  # repr of floats is exact
    assert [name for name in os.listdir(tmp_path)] == ["prefs.jsonl"]  # no temporary left


def test_jsonl_reads_blank_lines_and_extra_keys(tmp_path):
    tree = small_tree()
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"prompt": "x", "chosen": "ab", "rejected": "ba", "score": 3}\n'
        "\n"
        '{"prompt": "y", "chosen": "bb", "rejected": "aa", "weight": 2.5}\n',
        encoding="utf-8",
    )
    prefs = tr.Preferences.from_jsonl(path, tree)
    np.testing.assert_array_equal(prefs.prompt, [0, 1])
    np.testing.assert_array_equal(prefs.chosen, [1, 7])  # x:ab = 0*4 + 0b01, y:bb = 4 + 3
    np.testing.assert_array_equal(prefs.rejected, [2, 4])
    np.testing.assert_array_equal(prefs.weight, [1.0, 2.5])


GOOD = '{"prompt": "x", "chosen": "ab", "rejected": "ba"}'


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ('{"prompt": "x", "chosen": "ab", "rejected": "ba"', "bad JSON"),
        ('["x", "ab", "ba"]', "JSON object"),
        ('{"prompt": "x", "chosen": "ab"}', "missing key 'rejected'"),
        ('{"prompt": "x", "chosen": ["ab"], "rejected": "ba"}', "'chosen' must be a string"),
        ('{"prompt": "z", "chosen": "ab", "rejected": "ba"}', "unknown prompt 'z'"),
        ('{"prompt": "x", "chosen": "ac", "rejected": "ba"}', "'chosen': not a path in the tree"),
        ('{"prompt": "x", "chosen": "ab", "rejected": "b"}', "1 tokens, but every completion"),
        ('{"prompt": "x", "chosen": "aba", "rejected": "ba"}', "3 tokens"),
        ('{"prompt": "x", "chosen": "", "rejected": "ba"}', "0 tokens"),
        ('{"prompt": "x", "chosen": "ab", "rejected": "ba", "weight": -1}', "'weight'"),
        ('{"prompt": "x", "chosen": "ab", "rejected": "ba", "weight": NaN}', "'weight'"),
        ('{"prompt": "x", "chosen": "ab", "rejected": "ba", "weight": "2"}', "'weight'"),
        ('{"prompt": "x", "chosen": "ab", "rejected": "ba", "weight": true}', "'weight'"),
    ],
)
def test_jsonl_errors_name_the_line_and_the_problem(tmp_path, bad_line, match):
    tree = small_tree()
    path = tmp_path / "bad.jsonl"
    path.write_text(f"{GOOD}\n\n{bad_line}\n{GOOD}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=match) as error:
        tr.Preferences.from_jsonl(path, tree)
    assert f"{path}:3:" in str(error.value)  # the blank line 2 still counts


def test_jsonl_write_is_atomic(tmp_path, monkeypatch):
    tree = small_tree()
    path = tmp_path / "prefs.jsonl"
    path.write_text("old contents\n", encoding="utf-8")
    # pairs that do not fit the tree: refused before anything is written
    with pytest.raises(ValueError, match="out of range"):
        tr.Preferences([0], [0], [9]).to_jsonl(path, tree)
    assert path.read_text(encoding="utf-8") == "old contents\n"

    # a failure at the final rename leaves the old file and no temporary behind
    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        tr.Preferences([0], [0], [1]).to_jsonl(path, tree)
    assert path.read_text(encoding="utf-8") == "old contents\n"
    assert os.listdir(tmp_path) == ["prefs.jsonl"]


def test_trees_with_an_end_token(tmp_path):
    # After eos only eos: a leaf such as "a <e> b" is no completion. Sampling (uniform
    # policy, forced rows) never produces one, texts stop at the first eos and read back,
    # and reading or checking such a completion fails.
    tree = tr.TokenTree(["a", "b", "<e>"], horizon=3, prompts=["x", "y"], eos="<e>")
    reward = tree.leaf_values(lambda prompt, tokens: tokens.count("a") - 0.3 * len(tokens))
    prefs = tr.sample_preferences(tree, reward, 3000, seed=0)
    valid = tree.valid_leaves()
    assert valid[prefs.chosen].all() and valid[prefs.rejected].all()
    population = tr.population_preferences(tree, reward)
    assert valid[population.chosen].all() and valid[population.rejected].all()
    path = tmp_path / "eos.jsonl"
    prefs.to_jsonl(path, tree)
    assert '"<e>"' in path.read_text(encoding="utf-8")  # a completion that ends at once
    back = tr.Preferences.from_jsonl(path, tree)
    np.testing.assert_array_equal(back.chosen, prefs.chosen)
    np.testing.assert_array_equal(back.rejected, prefs.rejected)
    path.write_text('{"prompt": "x", "chosen": "a <e> b", "rejected": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r":1: 'chosen': completion 'a <e> b' continues after"):
        tr.Preferences.from_jsonl(path, tree)
    path.write_text('{"prompt": "x", "chosen": "a <e>", "rejected": "a"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"'rejected': completion 'a' has 1 tokens.*or fewer"):
        tr.Preferences.from_jsonl(path, tree)
    _, invalid = tree.state_index("x", ["a", "<e>", "b"])  # level H, no padding
    with pytest.raises(ValueError, match="after the end token"):
        tr.Preferences([0], [invalid], [0], tree=tree)


# ------------------------------------------------------------------------------ indexing
def test_indexing_follows_python_sequence_rules():
    tree = small_tree()
    prefs = tr.Preferences([0, 0, 1, 1], [0, 1, 4, 5], [3, 2, 7, 6], tree=tree)
    as_list = list(zip(prefs.chosen.tolist(), prefs.rejected.tolist(), strict=True))
    for k in range(-4, 4):  # one pair, negative indexes from the end, as a list does
        assert (int(prefs[k].chosen[0]), int(prefs[k].rejected[0])) == as_list[k]
        assert len(prefs[np.int64(k)]) == 1
    for bad in (4, -5, 10**6, -(10**6), 10**30):
        with pytest.raises(IndexError, match="out of range for 4 preference pairs"):
            prefs[bad]
    for part in (slice(1, None), slice(None, None, -1), slice(10, 20), slice(-3, -1, 2)):
        expected = as_list[part]
        got = prefs[part]
        assert list(zip(got.chosen.tolist(), got.rejected.tolist(), strict=True)) == expected
    np.testing.assert_array_equal(prefs[[3, -4, 1]].chosen, [5, 0, 1])
    np.testing.assert_array_equal(prefs[prefs.prompt == 1].chosen, [4, 5])
    assert len(prefs[[]]) == 0
    with pytest.raises(IndexError):
        prefs[[0, 4]]
    with pytest.raises(IndexError):
        prefs[np.array([True, False])]  # a mask of the wrong length
    for bad in (1.0, "0", True, None, np.zeros((2, 2), dtype=int), [0.5]):
        with pytest.raises(TypeError, match="indexed by"):
            prefs[bad]
    empty = prefs[:0]
    with pytest.raises(IndexError, match="out of range for 0 preference pairs"):
        empty[0]


# ------------------------------------------------------------------- JSONL: hard cases
def test_jsonl_keeps_unicode_line_separators_inside_strings(tmp_path):
    # U+2028, U+2029 and U+0085 are line breaks for str.splitlines but ordinary characters
    # in JSON strings: a prompt holding them must round-trip, and the writer escapes them
    # so that any line-based reader keeps one record per line.
    prompts = ["a\u2028b", "c\u2029d", "e\u0085f"]
    tree = tr.TokenTree(["x", "y"], horizon=2, prompts=prompts)
    prefs = tr.sample_preferences(tree, np.arange(12.0), 30, seed=1)
    path = tmp_path / "breaks.jsonl"
    prefs.to_jsonl(path, tree)
    raw = path.read_bytes()
    assert raw.count(b"\n") == 30 and len(raw.decode("utf-8").splitlines()) == 30
    back = tr.Preferences.from_jsonl(path, tree)
    for field in ("prompt", "chosen", "rejected"):
        np.testing.assert_array_equal(getattr(back, field), getattr(prefs, field))
    # a file written by another tool with the raw characters reads as well
    path.write_text(
        "\n".join(
            json.dumps({"prompt": p, "chosen": "xy", "rejected": "yy"}, ensure_ascii=False)
            for p in prompts
        )
        + "\r\n",
        encoding="utf-8",
    )
    np.testing.assert_array_equal(tr.Preferences.from_jsonl(path, tree).prompt, [0, 1, 2])


@pytest.mark.parametrize(
    ("bad_bytes", "match"),
    [
        (b'{"prompt": "x", "chosen": "ab", "rejected": "\xff"}', "not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"prompt": "x", "chosen": "ab", "rejected": "ba", "weight": 1' + b"0" * 5000 + b"}",
         "unreadable JSON value"),
        (b'{"prompt": "x", "chosen": "ab", "rejected": "ba", "weight": 1' + b"0" * 400 + b"}",
         "'weight' must be finite and >= 0, got an integer of about 400 digits"),
        (b'{"prompt": "x", "chosen": "ab", "rejected": "ba", "weight": 1e400}', "finite"),
    ],
)  # fmt: skip
def test_jsonl_unreadable_values_name_the_file_and_line(tmp_path, bad_bytes, match):
    tree = small_tree()
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + bad_bytes + b"\n")
    with pytest.raises(ValueError, match=match) as error:
        tr.Preferences.from_jsonl(path, tree)
    assert f"{path}:2:" in str(error.value)


def test_jsonl_paths_must_be_file_names(tmp_path, capsys):
    # An int is a file descriptor to open(): from_jsonl(True, tree) used to read and close
    # stdout. Both directions refuse anything but str, bytes and os.PathLike.
    tree = small_tree()
    prefs = tr.Preferences([0], [0], [1])
    for bad in (True, 1, 0, 2.5, None, ["a.jsonl"]):
        with pytest.raises(TypeError, match="path must be a file name"):
            tr.Preferences.from_jsonl(bad, tree)
        with pytest.raises(TypeError, match="path must be a file name"):
            prefs.to_jsonl(bad, tree)
    print("stdout still open")
    assert capsys.readouterr().out == "stdout still open\n"
    path = tmp_path / "bytes.jsonl"
    prefs.to_jsonl(os.fsencode(path), tree)  # bytes names work like in open()
    assert len(tr.Preferences.from_jsonl(os.fsencode(path), tree)) == 1
    with pytest.raises(IsADirectoryError, match="is a directory"):
        prefs.to_jsonl(tmp_path, tree)
    with pytest.raises(FileNotFoundError, match=r"no directory .*missing.* create it first"):
        prefs.to_jsonl(tmp_path / "missing" / "prefs.jsonl", tree)


def test_jsonl_write_respects_modes_links_and_read_only_files(tmp_path):
    tree = small_tree()
    prefs = tr.Preferences([0], [0], [1])
    # a new file gets open()'s mode, 0o666 minus the umask (not mkstemp's 0o600)
    old_umask = os.umask(0o022)
    try:
        new = tmp_path / "new.jsonl"
        prefs.to_jsonl(new, tree)
        assert stat.S_IMODE(new.stat().st_mode) == 0o644
        os.umask(0o077)
        private = tmp_path / "private.jsonl"
        prefs.to_jsonl(private, tree)
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)
    # an existing file keeps its mode
    shared = tmp_path / "shared.jsonl"
    shared.write_text("old\n", encoding="utf-8")
    shared.chmod(0o664)
    prefs.to_jsonl(shared, tree)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664
    assert shared.read_text(encoding="utf-8").startswith('{"prompt"')
    # a symbolic link is written through: the target changes, the link stays a link
    target = tmp_path / "data" / "target.jsonl"
    target.parent.mkdir()
    target.write_text("old\n", encoding="utf-8")
    target.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    prefs.to_jsonl(link, tree)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert len(tr.Preferences.from_jsonl(target, tree)) == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(target.parent)) == ["target.jsonl"]  # no temporary left
    # a read-only file is refused and left alone (even for root, who could write it)
    locked = tmp_path / "locked.jsonl"
    locked.write_text("keep me\n", encoding="utf-8")
    locked.chmod(0o444)
    with pytest.raises(PermissionError, match="read-only"):
        prefs.to_jsonl(locked, tree)
    assert locked.read_text(encoding="utf-8") == "keep me\n"
    assert stat.S_IMODE(locked.stat().st_mode) == 0o444


def test_jsonl_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    # An exception in the middle of writing (here KeyboardInterrupt from fsync) removes the
    # temporary file; the existing file is unchanged.
    tree = small_tree()
    path = tmp_path / "prefs.jsonl"
    path.write_text("old contents\n", encoding="utf-8")

    def interrupted(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tr.Preferences([0], [0], [1]).to_jsonl(path, tree)
    assert path.read_text(encoding="utf-8") == "old contents\n"
    assert os.listdir(tmp_path) == ["prefs.jsonl"]


def test_jsonl_killed_write_leaves_the_old_file(tmp_path):
    # A process killed (SIGKILL: no cleanup at all) after writing the new text but before
    # the rename: the existing file is intact, only a hidden temporary is left.
    path = tmp_path / "prefs.jsonl"
    path.write_text("old contents\n", encoding="utf-8")
    script = (
        "import os, signal, numpy as np, tinyrlhf as tr\n"
        "os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
        "tree = tr.TokenTree(['a', 'b'], horizon=2, prompts=['x', 'y'])\n"
        f"tr.sample_preferences(tree, np.zeros(8), 10_000, seed=0).to_jsonl({str(path)!r}, tree)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], check=False)
    assert completed.returncode == -signal.SIGKILL
    assert path.read_text(encoding="utf-8") == "old contents\n"
    leftovers = [name for name in os.listdir(tmp_path) if name != "prefs.jsonl"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".prefs.jsonl.")


def test_jsonl_writes_to_a_pipe_or_dev_stdout_in_place(tmp_path):
    # A named pipe is no regular file: it is written directly, not replaced by a file.
    # /dev/stdout redirected to a file must not be replaced either (the shell's descriptor
    # would point to a deleted file): the same file (inode) receives the line.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    received = []
    reader = threading.Thread(target=lambda: received.append(pipe.read_text(encoding="utf-8")))
    reader.start()
    tree = small_tree()
    tr.Preferences([0], [0], [1]).to_jsonl(pipe, tree)
    reader.join(timeout=60)
    assert received == ['{"prompt": "x", "chosen": "aa", "rejected": "ab"}\n']
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    out = tmp_path / "out.txt"
    out.write_text("", encoding="utf-8")
    inode = out.stat().st_ino
    script = (
        "import tinyrlhf as tr\n"
        "tree = tr.TokenTree(['a', 'b'], horizon=2, prompts=['x', 'y'])\n"
        "tr.Preferences([0], [0], [1]).to_jsonl('/dev/stdout', tree)\n"
    )
    with open(out, "w", encoding="utf-8") as handle:
        subprocess.run([sys.executable, "-c", script], stdout=handle, check=True)
    assert out.stat().st_ino == inode
    assert out.read_text(encoding="utf-8") == received[0]
    assert sorted(os.listdir(tmp_path)) == ["out.txt", "pipe"]
