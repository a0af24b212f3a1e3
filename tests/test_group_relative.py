"""Exact expected updates of group-relative estimators: against brute-force enumeration of
every ordered group, against Monte Carlo over sampled groups, and the identities of the
module docstring (RLOO unbiased, Dr. GRPO = scaled RLOO, GRPO = DAPO without eos)."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import group_relative
from tinyrlhf.gradients import sequence_score_gradient
from tinyrlhf.group_relative import ESTIMATORS, completion_lengths, expected_update
from tinyrlhf.kl_terms import kl_penalty_gradient, kl_term
from tinyrlhf.testing import policies, problems, trees

#: Monte Carlo agreement: |exact - estimate| <= MC_SIGMAS * standard error, per coordinate.
MC_SIGMAS = 5.0


def flat(gradient):
    return np.concatenate([table.ravel() for table in gradient])


def score_matrix(policy):
    """grad_theta log P(y) of every leaf as a row, built path by path (independent of
    tinyrlhf.gradients): at each visited state, onehot(a) - pi(.|s). (n_leaves, dim)."""
    tree = policy.tree
    n_tokens = tree.n_tokens
    probs = policy.probs
    offsets = np.cumsum([0] + [table.size for table in probs])
    rows = np.zeros((tree.n_leaves, offsets[-1]))
    tokens = tree.leaf_token_indices()
    prompts = tree.leaf_prompts()
    for leaf in range(tree.n_leaves):
        state = prompts[leaf]
        for h in range(tree.horizon):
            a = tokens[leaf, h]
            start = offsets[h] + state * n_tokens
            rows[leaf, start : start + n_tokens] -= probs[h][state]
            rows[leaf, start + a] += 1.0
            state = state * n_tokens + a
    return rows / tree.n_prompts  # gradients are of the mean over prompts


def group_coefficients(estimator, r, lengths, group_size, eps, horizon):
    """c_i of one group as a trainer computes it (TRL / the papers' formulas), (..., G)."""
    mean = r.mean(axis=-1, keepdims=True)
    if estimator == "reinforce":
        return r / group_size
    if estimator == "rloo":
        others = (r.sum(axis=-1, keepdims=True) - r) / (group_size - 1)
        return (r - others) / group_size
    if estimator == "dr_grpo":
        return (r - mean) / (group_size * horizon)
    std = r.std(axis=-1, ddof=1, keepdims=True)
    identical = np.all(r == r[..., :1], axis=-1, keepdims=True)
    advantage = np.where(identical, 0.0, (r - mean) / (std + eps))
    if estimator == "grpo":
        return advantage / (group_size * lengths)
    return advantage / lengths.sum(axis=-1, keepdims=True)  # dapo


def brute_force(policy, reward, estimator, group_size, eps):
    """sum over all ordered G-tuples of one prompt of prod_j pi(y_j) * g_hat(tuple)."""
    tree = policy.tree
    scores = score_matrix(policy)
    prob = policy.leaf_probs()
    lengths = completion_lengths(tree).astype(float)
    total = np.zeros(scores.shape[1])
    n = tree.leaves_per_prompt
    for p in range(tree.n_prompts):
        leaves = np.arange(p * n, (p + 1) * n)
        for group in itertools.product(leaves, repeat=group_size):
            group = np.array(group)
            weight = np.prod(prob[group])
            if weight == 0:
                continue
            c = group_coefficients(
                estimator, reward[group], lengths[group], group_size, eps, tree.horizon
            )
            total += weight * (c @ scores[group])
    return total


def _tiny(eos, seed=1, zero_fraction=0.0):
    tokens = ["a", "b", "$"] if eos else ["a", "b"]
    tree = tr.TokenTree(tokens, 2, prompts=["x", "y"], eos="$" if eos else None)
    policy = tr.Policy.random(tree, seed=seed, zero_fraction=zero_fraction)
    # dyadic rewards with ties (0, 0.5, 1): group means and identical groups are exact
    reward = np.random.default_rng(seed).integers(0, 3, tree.n_leaves) * 0.5
    return tree, policy, reward


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("eos", [False, True])
def test_exact_against_every_ordered_group(estimator, eos):
    for group_size in (2, 3):
        for zero_fraction in (0.0, 0.3):
            _, policy, reward = _tiny(eos, seed=group_size, zero_fraction=zero_fraction)
            update = expected_update(
                policy, reward, estimator=estimator, group_size=group_size, eps=0.1
            )
            expected = brute_force(policy, reward, estimator, group_size, 0.1)
            np.testing.assert_allclose(flat(update.gradient), expected, rtol=0, atol=1e-12)


def test_reinforce_with_one_member_is_the_score_function():
    _, policy, reward = _tiny(False)
    update = expected_update(policy, reward, estimator="reinforce", group_size=1)
    np.testing.assert_allclose(
        flat(update.gradient), brute_force(policy, reward, "reinforce", 1, 0.0), atol=1e-14
    )


@pytest.mark.parametrize("zero_fraction", [0.0, 0.4])
def test_residual_is_the_kkt_gap_and_bounds_the_norm(zero_fraction):
    tree, policy, reward = _tiny(False, seed=3, zero_fraction=zero_fraction)
    update = expected_update(policy, reward, estimator="rloo", group_size=3)
    # RLOO is unbiased, E[g_hat] = grad E[r], so the per-token advantage is Q(s, a) - V(s)
    # with Q the mean reward of the leaves below s o a (a block of A**(H-h-1) consecutive
    # leaves in canonical order), computed here from the leaf probabilities alone; the KKT
    # (Frank-Wolfe) gap is sum_s d(s) max_{a: pi(a|s) > 0} (Q(s, a) - V(s)) / n_prompts
    probs, weighted = policy.leaf_probs(), policy.leaf_probs() * reward
    horizon, width = tree.horizon, tree.n_tokens
    gap = 0.0
    for h in range(horizon):
        block = width ** (horizon - h - 1)
        mass = probs.reshape(-1, block).sum(axis=1).reshape(-1, width)  # P(s o a)
        total = weighted.reshape(-1, block).sum(axis=1).reshape(-1, width)  # sum P r below
        pi = np.exp(policy.log_probs[h])
        reach = policy.state_probs(h)
        for i in np.flatnonzero(reach > 0):
            picked = pi[i] > 0
            q = total[i, picked] / mass[i, picked]
            v = pi[i, picked] @ q
            gap += reach[i] * np.max(q - v) / tree.n_prompts
    np.testing.assert_allclose(update.residual, gap, rtol=1e-12, atol=1e-15)
    norm = np.sqrt(sum(np.sum(g**2) for g in update.gradient))
    assert update.gradient_norm == pytest.approx(norm, rel=1e-12)
    assert update.gradient_norm <= 2 * update.residual + 1e-15  # update_residual's bound


@settings(max_examples=40)
@given(problems(max_magnitude=100.0), st.integers(2, 9))
def test_rloo_is_unbiased(problem, group_size):
    _, policy, reward, beta = problem
    update = expected_update(policy, reward, estimator="rloo", group_size=group_size)
    # grad E_pi[r] two ways: the score function, and policy_gradient_grad at pi_ref = pi
    # (the KL(pi || pi) term has zero gradient at its minimum)
    truth = flat(sequence_score_gradient(policy, reward))
    scale = 1.0 + np.abs(reward).max()
    np.testing.assert_allclose(flat(update.gradient), truth, rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(
        flat(update.gradient),
        flat(tr.policy_gradient_grad(policy, policy, reward, beta)),
        rtol=0,
        atol=1e-10 * scale,
    )
    if np.linalg.norm(truth) > 1e-9 * scale:
        # cosine and norm ratio against the update's own true gradient, within what the
        # difference of the two vectors allows (found by the dev profile, seed 202: a peaked
        # policy with a tiny gradient norm, where rounding of 1e-16 is 4e-9 of the norm):
        # |ratio - 1| <= ||g_hat - g|| / ||g|| and 1 - cos <= 2 (||g_hat - g|| / ||g||)^2
        estimate, exact = flat(update.gradient), flat(update.true_gradient)
        relative = np.linalg.norm(estimate - exact) / np.linalg.norm(exact)
        assert relative < 1e-6  # they are the same vector up to rounding
        assert abs(update.norm_ratio - 1.0) <= relative + 1e-15
        assert 1.0 - update.cosine <= 2.0 * relative**2 + 1e-15


@settings(max_examples=40)
@given(problems(max_magnitude=100.0, with_eos=True), st.integers(2, 9))
def test_dr_grpo_is_rloo_scaled(problem, group_size):
    tree, policy, reward, _ = problem
    rloo = expected_update(policy, reward, estimator="rloo", group_size=group_size)
    dr = expected_update(policy, reward, estimator="dr_grpo", group_size=group_size)
    # r_i - mean_j r_j = (G - 1)/G (r_i - mean_{j != i} r_j), and the token sum over G H
    factor = (group_size - 1) / (group_size * tree.horizon)
    np.testing.assert_allclose(dr.leaf_weights, factor * rloo.leaf_weights, rtol=1e-14, atol=0)


@settings(max_examples=30)
@given(st.data())
def test_grpo_and_dapo_agree_without_eos(data):
    # every |y| = H: A_i / (G H) both ways
    tree = data.draw(trees(max_leaves=128))
    policy = data.draw(policies(tree))
    reward = np.round(
        np.random.default_rng(data.draw(st.integers(0, 99))).normal(size=tree.n_leaves)
    )
    group_size = data.draw(st.integers(2, 6))
    grpo = expected_update(policy, reward, estimator="grpo", group_size=group_size)
    dapo = expected_update(policy, reward, estimator="dapo", group_size=group_size)
    np.testing.assert_allclose(dapo.leaf_weights, grpo.leaf_weights, rtol=1e-12, atol=1e-15)


def test_grpo_with_two_members_by_hand():
    # G = 2, 0/1 reward, success probability p: a mixed group has mean 1/2 and Bessel std
    # sqrt(1/2), so A = +-(1/2)/(sqrt(1/2) + eps); it is mixed with probability 1 - p (own 1)
    # or p (own 0); identical groups give 0. Divided by |y| = H.
    tree = tr.TokenTree(["a", "b"], 3)
    policy = tr.Policy.random(tree, seed=3)
    reward = (tree.leaf_token_indices()[:, 0] == 0).astype(float)  # first token is 'a'
    p = float(tr.expected_reward(policy, reward)[0])
    for eps in (0.0, 0.05):  # eps = 0: identical groups still give 0, not 0/0
        update = expected_update(policy, reward, estimator="grpo", group_size=2, eps=eps)
        advantage = 0.5 / (np.sqrt(0.5) + eps)
        expected = np.where(reward == 1, (1 - p) * advantage, -p * advantage) / tree.horizon
        np.testing.assert_allclose(update.leaf_weights, expected, rtol=1e-14)


def test_identical_groups_contribute_nothing():
    tree, policy, _ = _tiny(True)
    constant = np.full(tree.n_leaves, 0.3)  # 0.3 is not dyadic: means round, still exact 0
    for estimator in ("rloo", "dr_grpo", "grpo", "dapo"):
        update = expected_update(policy, constant, estimator=estimator, group_size=5)
        assert np.all(update.leaf_weights == 0.0), estimator
        assert all(np.all(table == 0.0) for table in update.gradient)


def test_binary_reward_update_is_a_per_prompt_rescaling():
    # two reward values: w = a + b r, so g_p = b_p grad E[r | p] (cosine 1 per prompt)
    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=("x", "y", "z"))
    policy = tr.Policy.random(tree, seed=0)
    reward = (tree.leaf_token_indices()[:, 1] == tree.leaf_prompts()).astype(float)
    for estimator in ("grpo", "dapo", "dr_grpo", "rloo"):
        update = expected_update(policy, reward, estimator=estimator, group_size=6)
        np.testing.assert_allclose(update.prompt_cosine, 1.0, atol=1e-12)
        w = update.leaf_weights.reshape(tree.n_prompts, -1)
        r = reward.reshape(tree.n_prompts, -1)
        slope = np.array([w[p][r[p] == 1][0] - w[p][r[p] == 0][0] for p in range(3)])
        np.testing.assert_allclose(update.prompt_scale, slope, rtol=1e-10)
    rloo = expected_update(policy, reward, estimator="rloo", group_size=6)
    np.testing.assert_allclose(rloo.prompt_scale, 1.0, rtol=1e-12)


def test_grpo_weight_times_length_depends_on_the_reward_only():
    tree, policy, reward = _tiny(True, seed=4)
    update = expected_update(policy, reward, estimator="grpo", group_size=4)
    scaled = update.leaf_weights * update.lengths
    for p in range(tree.n_prompts):
        rows = slice(p * tree.leaves_per_prompt, (p + 1) * tree.leaves_per_prompt)
        for value in np.unique(reward[rows]):
            same = scaled[rows][reward[rows] == value]
            np.testing.assert_allclose(same, same[0], rtol=1e-13)
    # |y| counts the eos token: "$" alone has length 1, "a$" length 2, "ab" length H = 2
    assert update.lengths[tree.leaf_index("x", ("$",))] == 1
    assert update.lengths[tree.leaf_index("x", ("a", "$"))] == 2
    assert update.lengths[tree.leaf_index("x", ("a", "b"))] == 2


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_every_estimator_against_monte_carlo(estimator):
    rng = np.random.default_rng(11)
    tree = tr.TokenTree(["a", "b", "$"], 3, prompts=["x", "y"], eos="$")
    policy = tr.Policy.random(tree, seed=rng)
    reward = rng.integers(0, 3, tree.n_leaves).astype(float)
    group_size, n_groups, eps = 4, 40_000, 1e-4
    scores = score_matrix(policy)
    lengths = completion_lengths(tree).astype(float)
    means, variances = [], []
    for p in range(tree.n_prompts):
        groups = policy.sample(n_groups * group_size, seed=rng, prompt=p).reshape(n_groups, -1)
        c = group_coefficients(
            estimator, reward[groups], lengths[groups], group_size, eps, tree.horizon
        )  # (n_groups, G)
        estimates = np.einsum("ng,ngd->nd", c, scores[groups])  # one g_hat per group
        means.append(estimates.mean(axis=0))
        variances.append(estimates.var(axis=0, ddof=1) / n_groups)
    estimate = np.sum(means, axis=0)
    standard_error = np.sqrt(np.sum(variances, axis=0))
    exact = flat(
        expected_update(policy, reward, estimator=estimator, group_size=group_size).gradient
    )
    assert np.all(np.abs(exact - estimate) <= MC_SIGMAS * standard_error + 1e-12)
    assert standard_error.max() > 0  # the check above has teeth


def test_kl_term_inside_the_update():
    tree, ref, reward = _tiny(False, seed=5)
    policy = tr.Policy.random(tree, seed=6)
    beta = 0.3
    for estimator, placement, level in [("k3", "loss", "token"), ("k2", "loss", "sequence")]:
        update = expected_update(
            policy,
            reward,
            estimator="grpo",
            group_size=3,
            beta=beta,
            ref=ref,
            kl_estimator=estimator,
            kl_placement=placement,
            kl_level=level,
        )
        penalty = kl_penalty_gradient(policy, ref, kl_term(estimator, placement, level))
        np.testing.assert_allclose(
            flat(update.gradient), flat(update.reward_gradient) - beta * flat(penalty), atol=1e-15
        )
    # RLOO with k1 in the reward is the exact gradient of E[r] - beta KL(pi || pi_ref)
    update = expected_update(
        policy,
        reward,
        estimator="rloo",
        group_size=3,
        beta=beta,
        ref=ref,
        kl_estimator="k1",
        kl_placement="reward",
        kl_level="sequence",
    )
    np.testing.assert_allclose(
        flat(update.gradient), flat(tr.policy_gradient_grad(policy, ref, reward, beta)), atol=1e-13
    )
    assert update.cosine == pytest.approx(1.0, abs=1e-12)


def test_length_weight_is_the_mean_weight_per_length():
    tree, policy, reward = _tiny(True, seed=7)
    update = expected_update(policy, reward, estimator="dapo", group_size=3)
    prob = policy.leaf_probs()
    for p in range(tree.n_prompts):
        for length in range(1, tree.horizon + 1):
            mask = (tree.leaf_prompts() == p) & (update.lengths == length) & (prob > 0)
            expected = np.sum(prob[mask] * update.leaf_weights[mask]) / np.sum(prob[mask])
            assert update.length_weight[p, length - 1] == pytest.approx(expected, rel=1e-12)


def test_bad_input_names_the_argument():
    tree, policy, reward = _tiny(False)
    with pytest.raises(ValueError, match="estimator"):
        expected_update(policy, reward, estimator="ppo", group_size=4)
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        expected_update(policy, reward, estimator="grpo", group_size=1)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        expected_update(policy, reward, estimator="reinforce", group_size=0)
    with pytest.raises(TypeError, match="group_size"):
        expected_update(policy, reward, estimator="rloo", group_size=2.5)
    with pytest.raises(ValueError, match="eps"):
        expected_update(policy, reward, estimator="grpo", group_size=4, eps=-1e-4)
    bad = reward.copy()
    bad[0] = np.inf
    with pytest.raises(ValueError, match="reward"):
        expected_update(policy, bad, estimator="grpo", group_size=4)
    with pytest.raises(ValueError, match="kl_estimator"):
        expected_update(policy, reward, estimator="grpo", group_size=4, beta=0.1)
    with pytest.raises(ValueError, match="ref"):
        expected_update(
            policy, reward, estimator="grpo", group_size=4, beta=0.1, kl_estimator="k3"
        )
    with pytest.raises(ValueError, match="kl_placement"):
        expected_update(
            policy,
            reward,
            estimator="grpo",
            group_size=4,
            beta=0.1,
            ref=policy,
            kl_estimator="k3",
            kl_placement="everywhere",
        )


def test_too_many_compositions_are_refused_with_the_count():
    tree = tr.TokenTree(["a", "b", "c"], 4)
    policy = tr.Policy.random(tree, seed=0)
    reward = np.arange(tree.n_leaves, dtype=float)  # 81 distinct values
    # compositions of G - 1 = 15 members over 81 types: C(95, 80)
    count = group_relative.composition_count(15, 81)
    assert count > group_relative.MAX_COMPOSITIONS
    with pytest.raises(ValueError, match=f"{count:,} type compositions.*group_size=16"):
        expected_update(policy, reward, estimator="grpo", group_size=16)
    # the linear estimators need no enumeration
    expected_update(policy, reward, estimator="rloo", group_size=16)
