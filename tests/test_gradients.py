"""The two tree primitives and the tabular softmax-gradient helpers."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf import kl_terms
from tinyrlhf import testing as trt
from tinyrlhf.gradients import (
    gradient_norm,
    sequence_score_gradient,
    token_score_gradient,
    update_residual,
)


def _problem(seed):
    rng = np.random.default_rng(seed)
    tree = tr.TokenTree(list("abc"), 3, prompts=("x", "y"))
    pi = tr.Policy.random(tree, seed=rng, zero_fraction=0.2)
    return tree, pi, rng


def test_log_occupancies_are_the_forward_pass():
    tree, pi, _ = _problem(0)
    occupancies = pi.log_occupancies()
    assert len(occupancies) == tree.horizon + 1
    for h, log_reach in enumerate(occupancies):
        # d_h by brute force: the product of the conditionals along each state's path
        expected = np.zeros(tree.level_size(h))
        for i in range(tree.level_size(h)):
            path, state = [], i
            for level in range(h, 0, -1):
                path.append((level - 1, state // tree.n_tokens, state % tree.n_tokens))
                state //= tree.n_tokens
            expected[i] = sum(pi.log_probs[lv][s, a] for lv, s, a in path)
        np.testing.assert_allclose(log_reach, expected, atol=1e-13)
        # probabilities of one level sum to 1 per prompt
        np.testing.assert_allclose(np.exp(log_reach).reshape(tree.n_prompts, -1).sum(1), 1.0)


def test_subtree_sums_match_direct_sums():
    tree, _, rng = _problem(1)
    x = rng.normal(size=tree.n_leaves)
    sums = tree.subtree_sums(x)
    logs = tree.subtree_logsumexps(np.log(np.abs(x)))
    for h in range(tree.horizon + 1):
        # a level-h state covers A**(H-h) consecutive leaves
        block = x.reshape(tree.level_size(h), -1)
        np.testing.assert_allclose(sums[h], block.sum(axis=1), atol=1e-13)
        np.testing.assert_allclose(
            logs[h], np.log(np.abs(block).sum(axis=1)), rtol=1e-13, atol=1e-13
        )


@pytest.mark.parametrize("n_tokens", [1, 2, 3, 7, 8, 9])
def test_subtree_sums_have_the_bits_of_numpys_row_sums(n_tokens):
    # each level is the level below summed over the A children, bit for bit as numpy's
    # .sum(axis=1) (the fast column-by-column path for A < 8 must not change any result)
    tree = tr.TokenTree([f"t{a}" for a in range(n_tokens)], 3, prompts=("x", "y"))
    rng = np.random.default_rng(n_tokens)
    x = rng.normal(size=tree.n_leaves) * 10.0 ** rng.uniform(-8, 8, size=tree.n_leaves)
    x[: n_tokens**2] = -0.0  # whole subtrees of negative zeros: numpy's sum gives +0.0
    sums = tree.subtree_sums(x)
    for h in range(tree.horizon):
        expected = sums[h + 1].reshape(tree.level_size(h), n_tokens).sum(axis=1)
        # the bits, so that -0.0 and +0.0 differ
        np.testing.assert_array_equal(sums[h].view(np.int64), expected.view(np.int64))


def test_subtree_logsumexps_of_impossible_leaves_is_minus_inf():
    tree = tr.TokenTree(list("ab"), 2)
    logs = tree.subtree_logsumexps(np.array([-np.inf, -np.inf, 0.0, -np.inf]))
    np.testing.assert_array_equal(logs[1], [-np.inf, 0.0])
    assert logs[0][0] == 0.0


def test_sequence_score_gradient_is_the_gradient_of_the_expectation():
    # grad_theta sum_xi P_theta(xi) C(xi) with C held fixed, by finite differences of the
    # softmax parametrization (all logits of all levels as one vector)
    tree, _, rng = _problem(2)
    pi = tr.Policy.random(tree, seed=rng)
    coefficients = rng.normal(size=tree.n_leaves)

    def expectation(theta):
        policy = tr.Policy.from_logits(tree, trt.unflatten_tables(tree, theta))
        return float((policy.leaf_probs() * coefficients).sum() / tree.n_prompts)

    def gradient(theta):
        policy = tr.Policy.from_logits(tree, trt.unflatten_tables(tree, theta))
        return trt.flatten_tables(sequence_score_gradient(policy, coefficients))

    trt.assert_gradient(expectation, gradient, trt.flatten_tables(pi.log_probs), atol=2e-6)


@settings(max_examples=40)
@given(trt.trees(max_tokens=3, max_horizon=4, max_prompts=2), st.data())
def test_precomputed_leaf_probs_give_the_plain_gradient(tree, data):
    # sequence_score_gradient(pi, C, leaf_probs=P_pi) against the plain call and against the
    # definition M(s o a) - pi(a|s) M(s), M by direct block sums over each state's leaves;
    # policies with zeros (-inf log-probs), and C = inf / NaN on the leaves pi never reaches
    pi = data.draw(trt.policies(tree, allow_zeros=True))
    rng = np.random.default_rng(data.draw(trt.seeds))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 1e5]))
    coefficients = scale * rng.standard_normal(tree.n_leaves)
    log_p = pi.leaf_log_probs()
    coefficients[log_p == -np.inf] = rng.choice([np.inf, -np.inf, np.nan])
    plain = sequence_score_gradient(pi, coefficients)
    given_probs = sequence_score_gradient(pi, coefficients, leaf_probs=np.exp(log_p))
    weighted = np.where(log_p > -np.inf, np.exp(log_p) * np.nan_to_num(coefficients), 0.0)
    tolerance = 1e-14 * (1 + np.abs(weighted).sum())
    for h, (a, b) in enumerate(zip(plain, given_probs, strict=True)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-15 * (1 + np.abs(a).max()))
        children = weighted.reshape(tree.level_size(h + 1), -1).sum(axis=1)  # M(s o a)
        parents = weighted.reshape(tree.level_size(h), -1).sum(axis=1)  # M(s)
        expected = children.reshape(-1, tree.n_tokens) - pi.probs[h] * parents[:, None]
        np.testing.assert_allclose(a, expected / tree.n_prompts, rtol=0, atol=tolerance)
        assert np.all(np.isfinite(a))


def test_token_score_gradient_is_the_gradient_at_frozen_occupancy():
    # grad_theta sum_s d(s) sum_a pi_theta(a|s) c(s, a) with d and c held fixed: the token
    # form's definition, checked coordinate by coordinate
    tree, _, rng = _problem(3)
    pi = tr.Policy.random(tree, seed=rng, zero_fraction=0.3)
    coefficients = [rng.normal(size=table.shape) for table in pi.log_probs]
    occupancy = [np.exp(log_reach) for log_reach in pi.log_occupancies()]

    def expectation(theta):
        moved = tr.Policy.from_logits(tree, trt.unflatten_tables(tree, theta))
        total = sum(
            float(occupancy[h] @ (np.exp(moved.log_probs[h]) * coefficients[h]).sum(axis=1))
            for h in range(tree.horizon)
        )
        return total / tree.n_prompts

    def gradient(theta):
        moved = tr.Policy.from_logits(tree, trt.unflatten_tables(tree, theta))
        return trt.flatten_tables(token_score_gradient(moved, coefficients))

    trt.assert_gradient(expectation, gradient, trt.flatten_tables(pi.log_probs), atol=2e-6)


def test_both_forms_give_the_exact_policy_gradient():
    tree, pi, rng = _problem(3)
    ref = tr.Policy.random(tree, seed=rng)
    reward, beta = rng.normal(size=tree.n_leaves), 0.7
    exact = tr.policy_gradient_grad(pi, ref, reward, beta)
    # sequence form: C = r - beta log(P_pi / P_ref)
    leaf_coefficient = reward - beta * (pi.leaf_log_probs() - ref.leaf_log_probs())
    by_sequence = sequence_score_gradient(pi, leaf_coefficient)
    # token form: c = Q_pi(s, a) = V_{h+1}(s o a) - beta log(pi/pi_ref)(a|s), V by recursion
    value, q_tables = reward, [None] * tree.horizon
    for h in range(tree.horizon - 1, -1, -1):
        picked = pi.log_probs[h] > -np.inf
        log_ratio = np.where(picked, pi.log_probs[h] - ref.log_probs[h], 0.0)
        q_tables[h] = value.reshape(-1, tree.n_tokens) - beta * log_ratio
        value = (np.exp(pi.log_probs[h]) * np.where(picked, q_tables[h], 0.0)).sum(axis=1)
    by_token = token_score_gradient(pi, q_tables)
    for a, b, c in zip(exact, by_sequence, by_token, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-14)
        np.testing.assert_allclose(c, a, atol=1e-14)
    assert gradient_norm(exact) > 0


def test_assert_gradient_accepts_the_gradient_and_refuses_others():
    # f(x) = sum_i exp(x_i) on the finite coordinates, grad = exp(x), 0 at a -inf logit
    x0 = np.array([0.3, -1.2, -np.inf, 2.0])

    def f(x):
        return float(np.exp(x).sum())

    trt.assert_gradient(f, np.exp, x0)
    with pytest.raises(AssertionError):
        trt.assert_gradient(f, lambda x: 1.001 * np.exp(x), x0)  # 0.1% off
    with pytest.raises(AssertionError):  # nonzero where the coordinate cannot move
        trt.assert_gradient(f, lambda x: np.where(np.isfinite(x), np.exp(x), 1.0), x0)
    tree = tr.TokenTree(list("ab"), 2)
    tables = [np.arange(2.0 * tree.level_size(h)).reshape(-1, 2) for h in range(2)]
    for table, back in zip(
        tables, trt.unflatten_tables(tree, trt.flatten_tables(tables)), strict=True
    ):
        np.testing.assert_array_equal(table, back)


def test_kl_terms_agree_with_the_known_gradients():
    # the module docstring of kl_estimators derives: k1 in the reward (sequence) and k2 in the
    # loss (sequence) are grad KL(pi||ref); k3 in the loss (sequence) is grad KL(ref||pi);
    # k1 in the loss has zero expected gradient
    from tinyrlhf.kl_terms import kl_penalty_gradient, kl_term

    tree, pi, rng = _problem(4)
    ref = tr.Policy.random(tree, seed=rng)
    reverse = tr.kl_gradient(pi, ref)
    for estimator, placement in (("k1", "reward"), ("k2", "loss")):
        got = kl_penalty_gradient(pi, ref, kl_term(estimator, placement, "sequence"))
        for a, b in zip(got, reverse, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-14)
    zero = kl_penalty_gradient(pi, ref, kl_term("k1", "loss", "token"))
    assert max(np.abs(table).max() for table in zero) < 1e-15
    for level in ("sequence", "token"):
        for estimator in ("k2", "k3"):
            named = kl_penalty_gradient(pi, ref, kl_term(estimator, "loss", level))
            old = tr.kl_estimator_gradient(pi, ref, estimator, per_token=level == "token")
            for a, b in zip(named, old, strict=True):
                np.testing.assert_allclose(a, b, atol=1e-14)


def test_a_callable_estimator_matches_its_named_twin():
    from tinyrlhf.kl_terms import kl_penalty_gradient, kl_penalty_values, kl_term

    tree, pi, rng = _problem(5)
    ref = tr.Policy.random(tree, seed=rng)

    def k3(log_pi, log_ref):
        return np.exp(log_ref - log_pi) - 1 - (log_ref - log_pi)

    for placement in ("reward", "loss"):
        for level in ("sequence", "token"):
            mine = kl_term(k3, placement, level)
            named = kl_term("k3", placement, level)
            values = kl_penalty_values(pi, ref, mine)
            reached = np.isfinite(values)
            np.testing.assert_allclose(
                values[reached], kl_penalty_values(pi, ref, named)[reached], rtol=1e-12
            )
            for a, b in zip(
                kl_penalty_gradient(pi, ref, mine),
                kl_penalty_gradient(pi, ref, named),
                strict=True,
            ):
                np.testing.assert_allclose(a, b, atol=1e-9)


def test_kl_term_names_are_checked():
    import pytest

    from tinyrlhf.kl_terms import kl_term

    with pytest.raises(ValueError, match="estimator"):
        kl_term("k4")
    with pytest.raises(ValueError, match="placement"):
        kl_term("k1", "advantage")
    with pytest.raises(ValueError, match="level"):
        kl_term("k1", "loss", "batch")
    with pytest.raises(TypeError, match="estimator"):
        kl_term(3)


@pytest.mark.parametrize("peaked", [False, True])
def test_update_residual_is_the_frank_wolfe_gap(peaked):
    # J(pi) = sum_xi P(xi) C(xi) / n_prompts is linear in each pi(.|s) with the others fixed, so
    # the Frank-Wolfe gap of grad J is sum_s max_a [J(pi with pi(.|s) = onehot(a)) - J(pi)]:
    # computed here by evaluating J on the modified policies (no gradients involved)
    tree, _, rng = _problem(2)
    logits = [
        rng.normal(size=t.shape) * (20.0 if peaked else 1.0)
        for t in tr.Policy.random(tree, seed=rng).log_probs
    ]
    pi = tr.Policy.from_logits(tree, logits)
    coefficients = rng.normal(size=tree.n_leaves)

    def value(policy):
        return float((policy.leaf_probs() * coefficients).sum() / tree.n_prompts)

    gap = 0.0
    for h, table in enumerate(pi.log_probs):
        for s in range(table.shape[0]):
            best = 0.0
            for a in range(table.shape[1]):
                tables = [t.copy() for t in pi.log_probs]
                tables[h][s] = np.where(np.arange(table.shape[1]) == a, 0.0, -np.inf)
                best = max(best, value(tr.Policy.from_logits(tree, tables)) - value(pi))
            gap += best
    gradient = sequence_score_gradient(pi, coefficients)
    residual = update_residual(pi, gradient)
    np.testing.assert_allclose(residual, gap, rtol=1e-9, atol=1e-14)
    assert gradient_norm(gradient) <= 2 * residual + 1e-15


def test_support_refusal_names_the_level_for_every_kl_entry_point():
    """A policy that picks a token the reference never picks has infinite KL: the exact policy
    gradient and every KL estimator term refuse it, naming the first level where it happens."""
    tree = tr.TokenTree(["a", "b"], horizon=2)
    half = np.log(0.5)
    ref_tables = [np.full((1, 2), half), np.array([[half, half], [0.0, -np.inf]])]
    ref = tr.Policy(tree, ref_tables)
    policy = tr.Policy.uniform(tree)  # picks "b" after "b", which ref never does (level 1)
    reward = np.arange(tree.n_leaves, dtype=float)
    with pytest.raises(ValueError, match="level 1 that ref never picks: KL"):
        tr.policy_gradient_grad(policy, ref, reward, 0.5)
    term = kl_terms.kl_term("k3", "loss", "token")
    for function in (kl_terms.kl_penalty_values, kl_terms.kl_penalty_gradient):
        with pytest.raises(ValueError, match="level 1 that ref never picks: every KL estimate"):
            function(policy, ref, term)
    # the same policy is accepted once its zeros include the reference's
    tr.policy_gradient_grad(ref, ref, reward, 0.5)
    kl_terms.kl_penalty_gradient(ref, ref, term)
