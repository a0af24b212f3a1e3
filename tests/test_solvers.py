"""Two solvers of max_pi E_pi[r] - beta KL(pi || pi_ref): closed form and soft value
iteration; their agreement, and cases derived by hand (policy gradient:
tests/test_policy_gradient.py)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import expit, logsumexp

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.examples import demo_problem


@given(trt.problems())
def test_closed_form_equals_soft_value_iteration(problem):
    tree, ref, reward, beta = problem
    closed = tr.closed_form(ref, reward, beta)
    soft = tr.soft_value_iteration(ref, reward, beta)
    np.testing.assert_allclose(closed.log_partition, soft.log_partition, rtol=1e-10, atol=1e-10)
    tr.check_agreement(closed, soft).assert_close(
        log_pi_atol=1e-8, tv_atol=1e-10, objective_atol=1e-8 * (1 + np.abs(reward).max())
    )
    # the two leaf distributions P* agree (-inf exactly where P_ref is 0), and both equal the
    # leaf-level closed form log P_ref + r/beta - logsumexp(...) (one scipy logsumexp)
    log_p_star, log_z = tr.optimal_leaf_log_probs(ref, reward, beta)
    for leaf_log_probs in (closed.leaf_log_probs, soft.policy.leaf_log_probs()):
        np.testing.assert_array_equal(np.isneginf(leaf_log_probs), np.isneginf(log_p_star))
        reached = np.isfinite(log_p_star)
        np.testing.assert_allclose(leaf_log_probs[reached], log_p_star[reached], atol=1e-9)
    np.testing.assert_allclose(closed.log_partition, log_z, rtol=1e-12, atol=1e-12)
    # V_0 = beta log Z and lambda* = beta (1 - log Z)
    np.testing.assert_allclose(soft.values[0], beta * closed.log_partition, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        closed.lagrange_multiplier, beta * (1 - closed.log_partition), rtol=1e-12
    )
    for policy in (closed.policy, soft.policy):  # every row, reached or not, is normalized
        for table in policy.log_probs:
            assert not np.isnan(table).any()
            np.testing.assert_allclose(logsumexp(table, axis=1), 0.0, atol=1e-10)


@given(trt.problems())
def test_optimum_value_is_beta_log_z_and_beats_perturbations(problem):
    tree, ref, reward, beta = problem
    solution = tr.closed_form(ref, reward, beta)
    best = tr.objective(solution.policy, ref, reward, beta)
    scale = 1 + np.abs(reward).max()
    np.testing.assert_allclose(best, beta * solution.log_partition, rtol=1e-9, atol=1e-9 * scale)
    rng = np.random.default_rng(0)
    for _ in range(3):
        logits = [
            table + rng.normal(scale=0.5, size=table.shape) for table in solution.policy.log_probs
        ]
        perturbed = tr.Policy.from_logits(tree, logits)
        assert np.all(tr.objective(perturbed, ref, reward, beta) <= best + 1e-9 * scale)


@given(st.data())
def test_reverse_kl_identity(data):
    # KL(pi || P*) = (beta log Z - J(pi)) / beta for every pi: soft RL is an RKL projection.
    tree, ref, reward, beta = data.draw(trt.problems(max_magnitude=5.0, allow_zeros=False))
    policy = data.draw(trt.policies(tree, allow_zeros=False))
    solution = tr.closed_form(ref, reward, beta)
    lhs = tr.kl_divergence(policy, solution.policy)
    rhs = (beta * solution.log_partition - tr.objective(policy, ref, reward, beta)) / beta
    np.testing.assert_allclose(lhs, rhs, rtol=1e-8, atol=1e-8 * (1 + np.abs(rhs).max()))


def test_hand_derived_one_step():
    # H = 1, tokens {a, b}, uniform reference, r(a) = 0, r(b) = c. Then
    # Z = (1 + e^{c/beta}) / 2 and pi*(b) = e^{c/beta} / (1 + e^{c/beta}) = sigmoid(c/beta).
    tree = tr.TokenTree(["a", "b"], 1)
    c, beta = 1.3, 0.4
    solution = tr.closed_form(tr.Policy.uniform(tree), np.array([0.0, c]), beta)
    np.testing.assert_allclose(
        solution.log_partition, [np.log((1 + np.exp(c / beta)) / 2)], rtol=1e-14
    )
    np.testing.assert_allclose(solution.policy.probs[0][0, 1], expit(c / beta), rtol=1e-14)
    np.testing.assert_allclose(
        solution.lagrange_multiplier, beta * (1 - np.log((1 + np.exp(c / beta)) / 2)), rtol=1e-14
    )


def test_hand_derived_additive_reward_factorizes():
    # H = 2, uniform reference, r = c1 [a_1 = b] + c2 [a_2 = b]. P* ∝ e^{r/beta} factorizes
    # over positions, so pi*(b | s) = sigmoid(c1/beta) at depth 0 and sigmoid(c2/beta) at
    # every depth-1 state; Z = prod_k (1 + e^{c_k/beta}) / 2; KL = sum_k (log 2 - H(sigmoid)).
    tree = tr.TokenTree(["a", "b"], 2, prompts=["x", "y"])
    c1, c2, beta = 0.8, -2.0, 0.5
    reward = tree.leaf_values(
        lambda prompt, tokens: c1 * (tokens[0] == "b") + c2 * (tokens[1] == "b")
    )
    for solution in (
        tr.closed_form(tr.Policy.uniform(tree), reward, beta),
        tr.soft_value_iteration(tr.Policy.uniform(tree), reward, beta),
    ):
        probs = solution.policy.probs
        np.testing.assert_allclose(probs[0][:, 1], expit(c1 / beta), rtol=1e-13)
        np.testing.assert_allclose(probs[1][:, 1], expit(c2 / beta), rtol=1e-13)
        log_z = np.log((1 + np.exp(c1 / beta)) / 2) + np.log((1 + np.exp(c2 / beta)) / 2)
        np.testing.assert_allclose(solution.log_partition, [log_z, log_z], rtol=1e-13)

        def binary_entropy(p):
            return -(p * np.log(p) + (1 - p) * np.log(1 - p))

        kl = 2 * np.log(2) - binary_entropy(expit(c1 / beta)) - binary_entropy(expit(c2 / beta))
        np.testing.assert_allclose(solution.kl(), [kl, kl], rtol=1e-12)


def test_hand_derived_last_token_reward_leaves_first_level_alone():
    # r depends only on the last token and every depth-1 row of pi_ref is the same q, so
    # V_1(s) = beta log sum_a q(a) e^{r(a)/beta} is the same at every depth-1 state and hence
    # pi*(. | s_0) ∝ pi_ref(. | s_0) e^{V_1/beta} = pi_ref(. | s_0), whatever pi_ref(. | s_0) is.
    tree = tr.TokenTree(["a", "b"], 2)
    q = np.log([0.2, 0.8])
    ref = tr.Policy(tree, [np.log([[0.9, 0.1]]), np.tile(q, (2, 1))])
    c, beta = 2.0, 0.7
    reward = tree.leaf_values(lambda prompt, tokens: c * (tokens[-1] == "b"))
    reward_row = np.array([0.0, c])
    solution = tr.soft_value_iteration(ref, reward, beta)
    np.testing.assert_allclose(solution.policy.log_probs[0], ref.log_probs[0], atol=1e-14)
    # V_1(s) = beta log sum_a pi_ref(a|s) e^{r(a)/beta}, row by row
    expected_v1 = beta * logsumexp(ref.log_probs[1] + reward_row / beta, axis=1)
    np.testing.assert_allclose(solution.values[1], expected_v1, rtol=1e-13)


def test_large_beta_recovers_reference_and_small_beta_concentrates():
    tree, ref, reward = demo_problem()
    # beta -> inf: KL(pi* || pi_ref) = Var_ref(r) / (2 beta^2) + O(beta^-3) -> 0.
    far = tr.closed_form(ref, reward, 1e6)
    assert np.all(tr.total_variation(far.policy, ref) < 1e-5)
    # beta -> 0: P*(argmax) >= 1 - N e^{-gap/beta} where gap = r_max - r_second.
    rng = np.random.default_rng(0)
    reward = rng.standard_normal(tree.n_leaves)
    per_prompt = np.sort(reward.reshape(tree.n_prompts, -1), axis=1)
    gap = (per_prompt[:, -1] - per_prompt[:, -2]).min()
    beta = gap / 50
    near = tr.closed_form(ref, reward, beta)
    leaf_probs = near.policy.leaf_probs().reshape(tree.n_prompts, -1)
    argmax = reward.reshape(tree.n_prompts, -1).argmax(axis=1)
    # The reference's own odds multiply the bound: P*(best) >= 1 - sum_xi (P_ref(xi)/P_ref(best)) e^{-gap/beta}
    ref_leaf = ref.leaf_probs().reshape(tree.n_prompts, -1)
    bound = 1 - (ref_leaf.sum(axis=1) / ref_leaf[np.arange(tree.n_prompts), argmax]) * np.exp(
        -gap / beta
    )
    assert np.all(leaf_probs[np.arange(tree.n_prompts), argmax] >= bound)


def test_unreached_states_take_the_reference_rows_and_change_no_leaf():
    # The reference never says "b" first, so P* puts no mass below "b": the closed form takes
    # pi_ref's row there (its documented rule), soft value iteration its own backup. By hand:
    # soft VI's row below "b" is pi_ref e^{r} normalized, (0.6 e^2, 0.4 e^3) / (0.6 e^2 + 0.4 e^3).
    tree = tr.TokenTree(["a", "b"], 2)
    ref = tr.Policy(tree, [np.array([[0.0, -np.inf]]), np.log([[0.3, 0.7], [0.6, 0.4]])])
    reward = np.array([0.0, 1.0, 2.0, 3.0])
    closed = tr.closed_form(ref, reward, 1.0)
    soft = tr.soft_value_iteration(ref, reward, 1.0)
    np.testing.assert_array_equal(closed.policy.log_probs[1][1], ref.log_probs[1][1])
    weights = np.array([0.6 * np.exp(2.0), 0.4 * np.exp(3.0)])
    np.testing.assert_allclose(
        soft.policy.log_probs[1][1], np.log(weights / weights.sum()), atol=1e-14
    )
    # reached states and every leaf probability agree; nothing is NaN
    for h, rows in ((0, [0]), (1, [0])):
        np.testing.assert_allclose(
            closed.policy.log_probs[h][rows], soft.policy.log_probs[h][rows], atol=1e-14
        )
    np.testing.assert_allclose(closed.policy.leaf_probs(), soft.policy.leaf_probs(), atol=1e-15)
    assert np.isneginf(closed.policy.log_probs[0][0, 1])
    assert not any(np.isnan(table).any() for table in closed.policy.log_probs)


def test_solver_bad_arguments():
    # (policy_gradient's own checks are in tests/test_policy_gradient.py)
    tree, ref, reward = demo_problem()
    with pytest.raises(ValueError, match="beta"):
        tr.closed_form(ref, reward, 0.0)
    with pytest.raises(ValueError, match="reward"):
        tr.soft_value_iteration(ref, reward[:-1], 1.0)
    with pytest.raises(TypeError, match="ref"):
        tr.closed_form(reward, reward, 1.0)


def test_solvers_survive_extreme_rewards():
    # Rewards of magnitude 1e4 at beta = 1e-2 give exponents of 1e6: logsumexp keeps it finite.
    tree, ref, _ = demo_problem()
    reward = 1e4 * np.random.default_rng(0).standard_normal(tree.n_leaves)
    closed = tr.closed_form(ref, reward, 1e-2)
    soft = tr.soft_value_iteration(ref, reward, 1e-2)
    assert np.all(np.isfinite(closed.log_partition))
    # log Z ≈ max (r/beta + log P_ref) up to log(#leaves): check against the leaf definition
    log_weight = (ref.leaf_log_probs() + reward / 1e-2).reshape(tree.n_prompts, -1)
    np.testing.assert_allclose(closed.log_partition, logsumexp(log_weight, axis=1), rtol=1e-12)
    np.testing.assert_allclose(soft.log_partition, closed.log_partition, rtol=1e-12)


@pytest.mark.parametrize("solver", [tr.closed_form, tr.soft_value_iteration])
def test_huge_reward_over_beta_still_gives_a_valid_policy(solver):
    # r/beta = 1e12 on all three leaves (ulp 1.2e-4 there): the optimum is the uniform
    # reference itself (equal rewards), and the returned tables must pass Policy's own check
    # (rows normalize to float64 rounding: formed from the shifted entries).
    ref = tr.Policy.uniform(tr.TokenTree(["a", "b", "c"], 1))
    solution = solver(ref, [1e6] * 3, 1e-6)
    tr.Policy(ref.tree, solution.policy.log_probs)  # Policy() accepts it
    np.testing.assert_allclose(solution.policy.probs[0], 1 / 3, rtol=1e-12)
    np.testing.assert_allclose(solution.log_partition, 1e12, rtol=1e-15)


@pytest.mark.parametrize("solver", [tr.closed_form, tr.soft_value_iteration])
def test_beta_too_small_for_the_reward_is_refused_up_front(solver):
    # max|r| / beta = 1 / 5e-324 overflows float64: refused naming beta, never a NaN policy;
    # with a zero reward the same beta is a fine (if extreme) problem: the optimum is pi_ref
    ref = tr.Policy.uniform(tr.TokenTree(["a", "b"], 2))
    with pytest.raises(ValueError, match=r"beta=5e-324 is too small for this reward"):
        solver(ref, np.ones(4), 5e-324)
    solution = solver(ref, np.zeros(4), 5e-324)
    np.testing.assert_allclose(solution.policy.leaf_probs(), 0.25, rtol=1e-15)


@given(data=st.data())
def test_optimal_leaf_log_probs_ignore_rewards_of_leaves_the_reference_never_produces(data):
    """P* ∝ P_ref e^{r/beta} does not depend on r where P_ref = 0, also in floating point: a
    huge reward on such a leaf must not become the shift that every reachable weight carries
    (the audit's case lost 1e-11 of total variation that way, under a 1e-12 certificate)."""
    n_tokens = data.draw(st.integers(2, 3))
    tree = tr.TokenTree(list("abc"[:n_tokens]), data.draw(st.integers(1, 3)))
    tables = [np.array(table) for table in data.draw(trt.policies(tree)).log_probs]
    # the reference never picks token 0 after the first state of the last level: its leaf
    # has P_ref = 0 whatever the other tables hold (the rest of the row is renormalized)
    row = tables[-1][0]
    row[0] = -np.inf
    if np.all(row == -np.inf):
        row[1] = 0.0
    row -= np.logaddexp.reduce(row)
    ref = tr.Policy(tree, tables)
    reward = data.draw(trt.rewards(tree))
    beta = data.draw(trt.betas())
    unreachable = ref.leaf_log_probs() == -np.inf
    reachable_max = np.where(unreachable, -np.inf, reward).max()
    lifted = np.where(unreachable, reachable_max + 1e6 * beta, reward)  # r/beta 1e6 above
    log_p, log_z = tr.optimal_leaf_log_probs(ref, reward, beta)
    lifted_log_p, lifted_log_z = tr.optimal_leaf_log_probs(ref, lifted, beta)
    np.testing.assert_array_equal(lifted_log_p, log_p)
    np.testing.assert_array_equal(lifted_log_z, log_z)
