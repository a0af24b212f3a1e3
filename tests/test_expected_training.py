"""Exact mean-field training: limits against the closed form, the fixed-point equation of
biased estimators, the clipped surrogate against finite differences, reference resets, the
entropy-change formula, certificates and bad input."""

import warnings

import numpy as np
import pytest
from scipy.special import log_softmax

import tinyrlhf as tr
from tinyrlhf.expected_training import (
    ExpectedTrainingWarning,
    _clipped_gradient,
    conditional_advantages,
    depth_entropy,
    entropy_change,
    length_problem,
    verifiable_problem,
)
from tinyrlhf.gradients import sequence_score_gradient
from tinyrlhf.group_relative import leaf_weights

K1_REWARD = {"kl_estimator": "k1", "kl_placement": "reward", "kl_level": "sequence"}


def test_rloo_with_k1_in_the_reward_converges_to_pi_star():
    tree, ref, reward = verifiable_problem()
    beta = 0.1
    star = tr.closed_form(ref, reward, beta)
    # natural update with lr = 1/beta is soft policy iteration: exact after H + 1 steps
    natural = tr.train_expected(
        ref,
        reward,
        estimator="rloo",
        group_size=4,
        beta=beta,
        lr=1 / beta,
        steps=50,
        update="natural",
        tol=1e-10,
        **K1_REWARD,
    )
    assert natural.converged and natural.residual <= 1e-10
    assert natural.steps_taken <= tree.horizon + 1
    np.testing.assert_allclose(
        natural.policy.leaf_log_probs(), star.policy.leaf_log_probs(), atol=1e-9
    )
    # plain gradient ascent on a smaller tree reaches it too (to its tolerance)
    small_tree = tr.TokenTree(["a", "b"], 2, prompts=["x", "y"])
    small_ref = tr.Policy.random(small_tree, seed=3)
    small_reward = (small_tree.leaf_token_indices().sum(axis=1) == 1).astype(float)
    gradient = tr.train_expected(
        small_ref,
        small_reward,
        estimator="rloo",
        group_size=2,
        beta=0.5,
        lr=16.0,
        steps=5000,
        tol=1e-10,
        **K1_REWARD,
    )
    assert gradient.converged
    np.testing.assert_allclose(
        gradient.policy.leaf_probs(),
        tr.closed_form(small_ref, small_reward, 0.5).policy.leaf_probs(),
        atol=1e-8,
    )


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "dapo"])
def test_biased_estimators_stop_at_the_closed_form_of_their_own_weights(estimator):
    # stationary over the full softmax class iff w_pi - beta log(pi/pi_ref) is constant per
    # prompt: pi = closed_form(ref, w_pi, beta). It is not pi* for the reward itself.
    tree, ref, reward = verifiable_problem()
    beta = 0.1
    run = tr.train_expected(
        ref,
        reward,
        estimator=estimator,
        group_size=8,
        beta=beta,
        lr=1.0,
        steps=2000,
        update="natural",
        tol=1e-10,
        **K1_REWARD,
    )
    assert run.converged
    weights = run.leaf_weights
    fixed_point = tr.closed_form(ref, weights, beta).policy
    assert tr.total_variation(run.policy, fixed_point).max() < 1e-8
    star = tr.closed_form(ref, reward, beta).policy
    assert tr.total_variation(run.policy, star).max() > 1e-3


def test_grpo_on_binary_rewards_is_pi_star_at_an_effective_beta():
    # one prompt, 0/1 reward, no eos: w = a + b r, so the fixed point is pi*_{beta / b}
    tree = tr.TokenTree(["a", "b", "c"], 3)
    ref = tr.Policy.random(tree, seed=2)
    reward = tree.leaf_values(lambda prompt, tokens: float("ab" in "".join(tokens)))
    beta = 0.05
    run = tr.train_expected(
        ref,
        reward,
        estimator="grpo",
        group_size=6,
        beta=beta,
        lr=1.0,
        steps=3000,
        update="natural",
        tol=1e-11,
        **K1_REWARD,
    )
    assert run.converged
    update = tr.expected_update(run.policy, reward, estimator="grpo", group_size=6)
    slope = float(update.prompt_scale[0])
    effective = tr.closed_form(ref, reward, beta / slope).policy
    assert tr.total_variation(run.policy, effective)[0] < 1e-8


def test_natural_and_gradient_updates_share_the_fixed_point():
    tree = tr.TokenTree(["a", "b"], 2)
    ref = tr.Policy.random(tree, seed=5)
    reward = np.array([1.0, 0.0, 0.0, 1.0])
    kwargs = dict(estimator="grpo", group_size=4, beta=0.3, tol=1e-10, **K1_REWARD)
    natural = tr.train_expected(ref, reward, lr=1.0, steps=3000, update="natural", **kwargs)
    gradient = tr.train_expected(ref, reward, lr=8.0, steps=20000, **kwargs)
    assert natural.converged and gradient.converged
    np.testing.assert_allclose(
        natural.policy.leaf_probs(), gradient.policy.leaf_probs(), atol=1e-7
    )


def test_natural_direction_is_the_gradient_over_occupancy():
    tree, policy, reward = verifiable_problem(horizon=3)
    weights, _ = leaf_weights(policy, reward, "grpo", 5, 1e-4)
    advantages = conditional_advantages(policy, weights)
    gradient = sequence_score_gradient(policy, weights)
    for h, (adv, grad) in enumerate(zip(advantages, gradient, strict=True)):
        occupancy = np.exp(policy.log_occupancies()[h])[:, None] * policy.probs[h]
        np.testing.assert_allclose(grad, occupancy * adv / tree.n_prompts, atol=1e-15)


def test_clipped_surrogate_gradient_matches_finite_differences():
    tree = tr.TokenTree(["a", "b", "$"], 2, prompts=["x", "y"], eos="$")
    old = tr.Policy.random(tree, seed=0)
    reward = np.random.default_rng(0).integers(0, 3, tree.n_leaves) * 0.5
    positive, _ = leaf_weights(old, reward, "grpo", 3, 1e-4, "positive")
    negative, _ = leaf_weights(old, reward, "grpo", 3, 1e-4, "negative")
    total, _ = leaf_weights(old, reward, "grpo", 3, 1e-4)
    np.testing.assert_allclose(positive + negative, total, atol=1e-15)
    prob = old.leaf_probs()
    rng = np.random.default_rng(1)
    theta = [
        np.where(np.isfinite(t), t + 0.3 * rng.standard_normal(t.shape), -np.inf)
        for t in old.log_probs
    ]
    clip = (0.2, 0.28)
    tokens, prompts = tree.leaf_token_indices(), tree.leaf_prompts()

    def surrogate(logits):
        """L(theta) by enumeration of the leaves (module docstring of train_expected)."""
        log_pi = [log_softmax(t, axis=1) for t in logits]
        value = 0.0
        for leaf in np.flatnonzero(prob > 0):
            state = prompts[leaf]
            for h in range(tree.horizon):
                a = tokens[leaf, h]
                rho = np.exp(log_pi[h][state, a] - old.log_probs[h][state, a])
                clipped = np.clip(rho, 1 - clip[0], 1 + clip[1])
                value += prob[leaf] * (
                    positive[leaf] * min(rho, clipped) + negative[leaf] * max(rho, clipped)
                )
                state = state * tree.n_tokens + a
        return value / tree.n_prompts

    exact = _clipped_gradient(
        theta, old, tree.subtree_sums(prob * positive), tree.subtree_sums(prob * negative), clip
    )
    step = 1e-6
    for h, logits in enumerate(theta):
        for index in zip(*np.nonzero(np.isfinite(logits)), strict=True):
            up = [t.copy() for t in theta]
            down = [t.copy() for t in theta]
            up[h][index] += step
            down[h][index] -= step
            numeric = (surrogate(up) - surrogate(down)) / (2 * step)
            assert exact[h][index] == pytest.approx(numeric, abs=1e-8)
    # the clip is active somewhere (the check above covers clipped terms)
    ratios = np.concatenate(
        [
            np.exp(log_softmax(t, axis=1)[np.isfinite(o)] - o[np.isfinite(o)])
            for t, o in zip(theta, old.log_probs, strict=True)
        ]
    )
    assert np.any((ratios > 1 + clip[1]) | (ratios < 1 - clip[0]))


def test_one_epoch_with_clipping_is_the_plain_gradient_step():
    tree, ref, reward = verifiable_problem(horizon=3)
    kwargs = dict(estimator="grpo", group_size=4, lr=2.0, steps=5, tol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExpectedTrainingWarning)
        plain = tr.train_expected(ref, reward, **kwargs)
        clipped = tr.train_expected(ref, reward, clip=(0.2, 0.28), epochs=1, **kwargs)
        several = tr.train_expected(ref, reward, clip=(0.2, 0.28), epochs=4, **kwargs)
    np.testing.assert_allclose(
        clipped.history["expected_reward"], plain.history["expected_reward"], rtol=1e-13
    )
    # more epochs on one pi_old move further per step (and differ from the plain step)
    assert several.history["kl"][1] > plain.history["kl"][1]


def test_resetting_the_reference_every_step_removes_the_kl_term():
    # after a reset at pi the KL term's expected gradient vanishes (k1 in the reward: the log
    # ratio is 0; k3 in the loss: 1 - e^0 = 0), and pi_0 = pi_ref: the run is the beta = 0 run
    tree, ref, reward = verifiable_problem(horizon=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExpectedTrainingWarning)
        free = tr.train_expected(ref, reward, estimator="grpo", group_size=4, lr=1.0, steps=8)
        for kl in ("k1", "k3"):
            reset = tr.train_expected(
                ref,
                reward,
                estimator="grpo",
                group_size=4,
                lr=1.0,
                steps=8,
                beta=0.5,
                kl_estimator=kl,
                reset_every=1,
            )
            np.testing.assert_allclose(
                reset.history["expected_reward"], free.history["expected_reward"], rtol=1e-12
            )
        kept = tr.train_expected(
            ref,
            reward,
            estimator="grpo",
            group_size=4,
            lr=1.0,
            steps=8,
            beta=0.5,
            kl_estimator="k3",
        )
    assert kept.history["kl"][-1] < free.history["kl"][-1]


def test_entropy_change_agrees_with_the_covariance_formula_to_first_order():
    tree, ref, reward = verifiable_problem()
    policy = tr.Policy.random(tree, seed=4)
    update = tr.expected_update(policy, reward, estimator="grpo", group_size=8)
    errors = [entropy_change(policy, update.gradient, lr).max_error() for lr in (0.4, 0.2, 0.1)]
    # error O(lr^2): halving lr divides it by about 4
    assert 3.0 < errors[0] / errors[1] < 5.0
    assert 3.0 < errors[1] / errors[2] < 5.0
    change = entropy_change(policy, update.gradient, 0.1)
    assert max(float(np.abs(c).max()) for c in change.covariance) > 100 * errors[2]


def test_depth_entropy_sums_to_the_sequence_entropy():
    tree, ref, _ = length_problem()
    np.testing.assert_allclose(depth_entropy(ref).sum(axis=1), tr.entropy(ref), rtol=1e-13)


def test_entropy_collapses_without_kl_and_stops_at_a_floor_with_it():
    tree, ref, reward = verifiable_problem()
    free = tr.train_expected(
        ref,
        reward,
        estimator="grpo",
        group_size=8,
        lr=1.0,
        steps=2000,
        update="natural",
        tol=1e-9,
    )
    regularized = tr.train_expected(
        ref,
        reward,
        estimator="grpo",
        group_size=8,
        beta=0.1,
        lr=1.0,
        steps=2000,
        update="natural",
        tol=1e-9,
        **K1_REWARD,
    )
    assert free.converged and regularized.converged
    start = free.history["entropy"][0]
    assert free.history["entropy"][-1] < regularized.history["entropy"][-1] < start
    # without KL, every prompt is solved: the gradient vanishes once all mass is correct
    np.testing.assert_allclose(free.history["prompt_expected_reward"][-1], 1.0, atol=1e-7)


def test_history_and_certificate():
    tree, ref, reward = verifiable_problem(horizon=3)
    run = tr.train_expected(
        ref,
        reward,
        estimator="dapo",
        group_size=4,
        beta=0.1,
        lr=1.0,
        steps=500,
        update="natural",
        **K1_REWARD,
    )
    history = run.history
    entries = run.steps_taken + 1
    assert history["residual"].shape == (entries,)
    assert history["depth_entropy"].shape == (entries, tree.horizon)
    assert history["prompt_expected_reward"].shape == (entries, tree.n_prompts)
    np.testing.assert_allclose(history["success"], history["expected_reward"])
    assert run.converged == (run.residual <= run.tolerance)
    assert run.residual == history["residual"][-1]
    # residual = Frank-Wolfe gap of the expected update (update_residual): sum over states of
    # max_a g(s, a)/pi(a|s); it bounds ||E[g_hat]|| <= 2 residual
    update = tr.expected_update(
        run.policy,
        reward,
        estimator="dapo",
        group_size=4,
        beta=0.1,
        ref=ref,
        **K1_REWARD,
    )
    gap = sum(
        np.max(g / np.exp(log_pi), axis=1).sum()
        for g, log_pi in zip(update.gradient, run.policy.log_probs, strict=True)
    )
    np.testing.assert_allclose(run.residual, gap, rtol=1e-12)
    # one vocabulary: expected_update's residual is the same KKT gap at the same policy
    np.testing.assert_allclose(update.residual, run.residual, rtol=1e-12)
    assert np.sqrt(sum(np.sum(g**2) for g in update.gradient)) <= 2 * run.residual
    assert history["kl"][0] == 0.0
    with pytest.warns(ExpectedTrainingWarning, match="not a certified stationary point"):
        short = tr.train_expected(ref, reward, estimator="grpo", group_size=4, lr=1.0, steps=1)
    assert short.converged is False
    zero = tr.train_expected(ref, reward, estimator="rloo", group_size=2, lr=1.0, steps=0, tol=1e3)
    assert zero.converged and zero.policy is ref


def test_divergence_is_reported_not_hidden():
    tree, ref, reward = verifiable_problem()
    with pytest.warns(ExpectedTrainingWarning, match="diverged"):
        run = tr.train_expected(
            ref,
            reward,
            estimator="rloo",
            group_size=8,
            beta=0.05,
            kl_estimator="k3",
            lr=20.0,
            steps=50,
            update="natural",
        )
    assert not run.converged
    assert np.isfinite(run.residual)


def test_bad_input_names_the_argument():
    tree, ref, reward = verifiable_problem(horizon=2)
    base = dict(estimator="grpo", group_size=4, lr=1.0, steps=3)
    cases = [
        (dict(lr=0.0), ValueError, "lr"),
        (dict(lr=float("nan")), ValueError, "lr"),
        (dict(steps=-1), ValueError, "steps"),
        (dict(steps=2.5), TypeError, "steps"),
        (dict(update="adam"), ValueError, "update"),
        (dict(tol=0.0), ValueError, "tol"),
        (dict(reset_every=0), ValueError, "reset_every"),
        (dict(epochs=0), ValueError, "epochs"),
        (dict(clip=(0.0, 0.2)), ValueError, "clip"),
        (dict(clip="wide"), TypeError, "clip"),
        (dict(update="natural", epochs=2), ValueError, "epochs"),
        (dict(beta=0.1), ValueError, "kl_estimator"),
        (dict(beta=-0.1, kl_estimator="k1"), ValueError, "beta"),
        (dict(estimator="ppo"), ValueError, "estimator"),
        (dict(group_size=1), ValueError, "group_size"),
        (dict(eps=-1.0), ValueError, "eps"),
    ]
    for override, error, name in cases:
        with pytest.raises(error, match=name):
            tr.train_expected(ref, reward, **{**base, **override})
    with pytest.raises(ValueError, match="reward"):
        tr.train_expected(ref, np.full(tree.n_leaves, np.nan), **base)


def test_a_plateau_is_not_certified():
    # pi_ref(b) = e^-40/(1 + e^-40) ~ 4e-18 at the root and only completions starting with "b"
    # succeed: ||E[g_hat]|| ~ 4e-18 (weighted by pi(b)) passed tol at step 0 with E[r] ~ 4e-18.
    # The KKT residual sees the root's advantage of "b": d(root) (E[r | b] - E[r]) = 1 - 4e-18
    # (the states below have constant rewards: advantage 0), so training must not certify
    tree = tr.TokenTree(["a", "b"], 2)
    ref = tr.Policy.from_logits(
        tree, [np.array([[0.0, -40.0]]), np.array([[0.0, -1.0], [0.0, -1.0]])]
    )
    reward = np.array([0.0, 0.0, 1.0, 1.0])
    with pytest.warns(ExpectedTrainingWarning, match="not a certified stationary point"):
        run = tr.train_expected(ref, reward, estimator="rloo", group_size=4, lr=1.0, steps=50)
    assert not run.converged
    q_b = np.exp(-40.0 - np.logaddexp(0.0, -40.0))
    np.testing.assert_allclose(run.history["residual"][0], 1.0 - q_b, rtol=1e-9)
