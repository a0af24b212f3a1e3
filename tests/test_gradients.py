"""The two tree primitives and the tabular softmax-gradient helpers."""

import numpy as np
from scipy.optimize import approx_fprime
from scipy.special import log_softmax

import tinyrlhf as tr
from tinyrlhf.gradients import gradient_norm, sequence_score_gradient, token_score_gradient


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
    shapes = [table.shape for table in pi.log_probs]
    theta0 = np.concatenate([table.ravel() for table in pi.log_probs])

    def expectation(theta):
        tables, start = [], 0
        for shape in shapes:
            size = shape[0] * shape[1]
            tables.append(log_softmax(theta[start : start + size].reshape(shape), axis=1))
            start += size
        policy = tr.Policy(tree, tables)
        return float((policy.leaf_probs() * coefficients).sum() / tree.n_prompts)

    numeric = approx_fprime(theta0, expectation, 1e-7)
    exact = np.concatenate([g.ravel() for g in sequence_score_gradient(pi, coefficients)])
    np.testing.assert_allclose(exact, numeric, atol=2e-6)


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
