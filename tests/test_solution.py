"""The typed fields of every solver's result hold what its ``info`` dict says under the old
keys (``info`` is kept for display and old code), and the fields mean what they document."""

import warnings

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf.dpo import INFO_KEYS
from tinyrlhf.examples import demo_problem
from tinyrlhf.expected_training import verifiable_problem

#: Typed field of :class:`tinyrlhf.Solution` (or a subclass) -> its ``info`` key, for the
#: producers that are not direct preference optimization (that one has ``dpo.INFO_KEYS``).
SHARED_KEYS = {
    "steps_taken": "steps_taken",
    "stop_reason": "stop",
    "gradient_norm": "gradient_norm",
    "objective_gap": "objective_gap",
    "leaf_log_probs": "leaf_log_probs",
    "leaf_weights": "leaf_weights",
}


def assert_fields_match_info(solution, keys):
    """Every typed field whose ``info`` twin exists is that value; returns how many matched
    (so a caller can insist that the comparison happened)."""
    matched = 0
    for name, key in keys.items():
        if key not in solution.info:
            continue
        typed, old = getattr(solution, name), solution.info[key]
        if isinstance(old, np.ndarray):
            assert isinstance(typed, np.ndarray), name
            np.testing.assert_array_equal(typed, old)
        else:
            assert typed == old, (name, typed, old)
        matched += 1
    return matched


@pytest.mark.parametrize("method", ["natural", "exact", "reinforce", "ppo"])
def test_policy_gradient_fields_equal_info(method):
    _, ref, reward = demo_problem(horizon=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tr.PolicyGradientWarning)  # few steps: uncertified
        solution = tr.policy_gradient(ref, reward, 0.7, method=method, steps=5, seed=0)
    assert assert_fields_match_info(solution, SHARED_KEYS) == 4
    # independent checks: one history entry per step plus the start; the stop reason agrees
    # with the certificate; the gap is beta KL(P_pi || P*) >= 0 from the closed form
    assert solution.steps_taken == solution.history["objective"].size - 1
    assert (solution.stop_reason == "certified") == solution.converged
    star = tr.closed_form(ref, reward, 0.7).policy
    np.testing.assert_allclose(
        solution.objective_gap, 0.7 * tr.kl_divergence(solution.policy, star), atol=1e-12
    )


def test_train_expected_fields_equal_info():
    tree, ref, reward = verifiable_problem(horizon=2)
    run = tr.train_expected(
        ref, reward, estimator="rloo", group_size=4, lr=1.0, steps=300, update="natural", tol=1e-6
    )
    assert assert_fields_match_info(run, SHARED_KEYS) == 2  # steps_taken, leaf_weights
    assert run.steps_taken == run.history["residual"].size - 1
    assert run.stop_reason == "certified" and run.converged
    update = tr.expected_update(run.policy, reward, estimator="rloo", group_size=4)
    np.testing.assert_allclose(run.leaf_weights, update.leaf_weights, rtol=1e-12, atol=1e-15)
    with pytest.warns(tr.ExpectedTrainingWarning):
        short = tr.train_expected(ref, reward, estimator="rloo", group_size=4, lr=1.0, steps=1)
    assert short.stop_reason == "step budget" and short.steps_taken == 1


@pytest.mark.parametrize("loss", ["dpo", "ipo", "hinge"])
def test_preference_fit_fields_equal_info(loss):
    tree, ref, reward = demo_problem(horizon=2)
    prefs = tr.sample_preferences(tree, reward, 200, policy=ref, seed=1)
    solution = tr.fit_policy_to_preferences(ref, prefs, loss=loss, beta=0.5, l2=0.1)
    assert isinstance(solution, tr.PreferenceSolution)
    assert assert_fields_match_info(solution, INFO_KEYS) == len(INFO_KEYS)
    # the policy is the closed form under the implicit reward (module docstring)
    star = tr.closed_form(ref, solution.implicit_reward, 0.5)
    np.testing.assert_allclose(solution.leaf_log_probs, star.policy.leaf_log_probs(), atol=1e-10)
    np.testing.assert_allclose(
        solution.leaf_log_probs, solution.policy.leaf_log_probs(), atol=1e-12
    )


def test_kl_penalty_numerical_steps_are_typed():
    _, ref, reward = demo_problem(horizon=2, prompts=("x",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tr.KLPenaltyWarning)
        numerical = tr.kl_penalty_fixed_point(
            ref, reward, 1.0, estimator="k2", placement="reward", level="token"
        )
        closed = tr.kl_penalty_fixed_point(ref, reward, 1.0, estimator="k1", placement="reward")
    assert numerical.how == "numerical"
    assert numerical.steps_taken == numerical.info["steps"] >= 0
    assert closed.how == "closed form" and closed.steps_taken is None and not closed.info
