"""The package's naming conventions, checked over every public callable (README, "Conventions").

- One seed rule: every public function or method that draws random numbers takes
  ``seed: int | numpy.random.Generator | None = 0`` (:func:`tinyrlhf.validation.make_rng`):
  the default gives the same draws on every call, a Generator continues one stream, None
  takes fresh entropy.
- ``beta`` (the KL coefficient) comes right after ``(ref, reward)``, or after
  ``(policy, ref, reward)``, and is never keyword-only there.
"""

import dataclasses
import importlib
import inspect
import pkgutil

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf import examples
from tinyrlhf.expected_training import verifiable_problem
from tinyrlhf.gradient_variance import reinforce_gradient_estimates
from tinyrlhf.validation import make_rng

#: The converter of the rule itself: its ``seed`` is the value to convert, not a default.
NOT_A_DRAWER = {"tinyrlhf.validation.make_rng"}
#: Callables known to draw random numbers: the walk must find each of them (so that a walk
#: that silently finds nothing fails).
KNOWN_DRAWERS = {
    "tinyrlhf.policy.Policy.random",
    "tinyrlhf.policy.Policy.sample",
    "tinyrlhf.preferences.sample_preferences",
    "tinyrlhf.overoptimization.overoptimization_curve",
    "tinyrlhf.pipeline.preference_pipeline",
    "tinyrlhf.solvers.policy_gradient.policy_gradient",
    "tinyrlhf.projections.project",
    "tinyrlhf.projections.project_all",
    "tinyrlhf.gradient_variance.reinforce_gradient_estimates",
    "tinyrlhf.examples.demo_problem",
    "tinyrlhf.expected_training.verifiable_problem",
}


def public_callables():
    """``{qualified name: signature}`` of every public function, class and method (class-,
    static- and instance methods, ``__init__``) defined in a module of the package, and the
    names of the generated ``__init__`` of its dataclasses (their fields, not an API)."""
    found, dataclass_inits = {}, set()
    for info in pkgutil.walk_packages(tr.__path__, "tinyrlhf."):
        if info.name.rsplit(".", 1)[-1].startswith("_"):  # __main__ runs the CLI
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not getattr(obj, "__module__", "").startswith("tinyrlhf"):
                continue
            members = [(name, obj)]
            if dataclasses.is_dataclass(obj):
                dataclass_inits.add(f"{obj.__module__}.{name}.__init__")
            if inspect.isclass(obj):
                members = [
                    (f"{name}.{attr}", getattr(obj, attr))
                    for attr, raw in vars(obj).items()
                    if (not attr.startswith("_") or attr == "__init__")
                    and isinstance(raw, (classmethod, staticmethod)) | inspect.isfunction(raw)
                ]
            for qualname, member in members:
                if not callable(member):
                    continue
                try:
                    signature = inspect.signature(member)
                except (TypeError, ValueError):  # builtins without a signature
                    continue
                found.setdefault(f"{obj.__module__}.{qualname}", signature)
    return found, dataclass_inits


CALLABLES, DATACLASS_INITS = public_callables()


# --------------------------------------------------------------------------------- seed
def test_the_walk_sees_the_package():
    assert len(CALLABLES) > 100
    assert KNOWN_DRAWERS <= set(CALLABLES)


def test_every_seed_defaults_to_zero_and_takes_a_generator():
    seeded = {
        name: signature.parameters["seed"]
        for name, signature in CALLABLES.items()
        if "seed" in signature.parameters and name not in NOT_A_DRAWER
    }
    assert set(seeded) == KNOWN_DRAWERS  # a new drawer is added here, and follows the rule
    for name, parameter in seeded.items():
        assert parameter.default == 0 and type(parameter.default) is int, name
        # the annotation (a string under `from __future__ import annotations`)
        kinds = {part.strip() for part in str(parameter.annotation).split("|")}
        assert kinds == {"int", "np.random.Generator", "None"}, (name, parameter.annotation)


def demo():
    tree = tr.TokenTree(["a", "b", "c"], 2, prompts=("x", "y"))
    return tree, tr.Policy.random(tree, seed=1), examples.demo_reward(tree)


def flat(policy):
    """All of a policy's log-probabilities in one array."""
    return np.concatenate([table.ravel() for table in policy.log_probs])


def default_draws():
    """Representative draws with the default seed (each call starts again from seed 0)."""
    tree, ref, reward = demo()
    policy = tr.Policy.random(tree)
    prefs = tr.sample_preferences(tree, reward, 40)
    with pytest.warns(tr.PolicyGradientWarning):  # 3 sampled steps: not certified, says so
        sampled = tr.policy_gradient(ref, reward, 1.0, method="reinforce", steps=3, batch_size=8)
    return {
        "Policy.random": flat(policy),
        "Policy.sample": policy.sample(200),
        "sample_preferences": np.stack([prefs.prompt, prefs.chosen, prefs.rejected]),
        "policy_gradient": sampled.policy.leaf_log_probs(),
        "reinforce_gradient_estimates": reinforce_gradient_estimates(ref, ref, reward, 1.0, 4, 3),
        "demo_problem": examples.demo_problem(horizon=2)[1].leaf_log_probs(),
        "verifiable_problem": verifiable_problem(horizon=2)[1].leaf_log_probs(),
    }


def test_two_calls_with_the_default_seed_agree_and_equal_seed_zero():
    first, second = default_draws(), default_draws()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    tree, _, reward = demo()
    np.testing.assert_array_equal(first["Policy.random"], flat(tr.Policy.random(tree, 0)))
    policy = tr.Policy.random(tree)
    np.testing.assert_array_equal(first["Policy.sample"], policy.sample(200, 0))  # positional
    prefs = tr.sample_preferences(tree, reward, 40, seed=0)
    np.testing.assert_array_equal(first["sample_preferences"][1], prefs.chosen)
    # an int seed is np.random.default_rng(seed): the same draws as that Generator
    np.testing.assert_array_equal(policy.sample(200, np.random.default_rng(0)), policy.sample(200))


def test_a_generator_continues_one_stream():
    # Two consecutive calls on one Generator draw different samples; the pair is reproduced
    # by a fresh Generator with the same seed. The uniform policy on 9 completions per
    # prompt and 2 prompts: two independent 500-draw samples coincide with probability
    # sum_x P(x)^2 = (1/18)^500, so "different" cannot fail by chance.
    tree = tr.TokenTree(["a", "b", "c"], 2, prompts=("x", "y"))
    policy = tr.Policy.uniform(tree)
    rng = np.random.default_rng(11)
    first, second = policy.sample(500, rng), policy.sample(500, rng)
    assert not np.array_equal(first, second)
    again = np.random.default_rng(11)
    np.testing.assert_array_equal(policy.sample(500, again), first)
    np.testing.assert_array_equal(policy.sample(500, again), second)


def test_none_takes_fresh_entropy():
    # Probabilities that two calls with seed=None agree (each call seeds from 128 bits of OS
    # entropy; equal seeds have probability 2^-128, and otherwise):
    # - Policy.sample: 1000 draws of the uniform policy over 18 leaves: (1/18)^1000;
    # - Policy.random: 24 standard-normal logits, continuous: probability 0;
    # - sample_preferences: 1000 pairs of distinct completions under the uniform policy; a
    #   pair (prompt, chosen, rejected) has probability at most (1/2)(1/36) (prompt, then
    #   one of the C(9, 2) = 36 unordered pairs of a prompt), so (1/72)^1000 at most.
    tree, _, reward = demo()
    policy = tr.Policy.uniform(tree)
    assert not np.array_equal(policy.sample(1000, None), policy.sample(1000, seed=None))
    first, second = tr.Policy.random(tree, None), tr.Policy.random(tree, seed=None)
    assert not np.array_equal(first.log_probs[0], second.log_probs[0])
    one = tr.sample_preferences(tree, reward, 1000, seed=None)
    two = tr.sample_preferences(tree, reward, 1000, seed=None)
    assert not np.array_equal(
        np.stack([one.prompt, one.chosen, one.rejected]),
        np.stack([two.prompt, two.chosen, two.rejected]),
    )


def test_make_rng_names_the_argument():
    rng = np.random.default_rng(0)
    assert make_rng(rng) is rng
    with pytest.raises(TypeError, match="seed must be an int"):
        make_rng(True)
    with pytest.raises(TypeError, match="seed must be an int"):
        make_rng(1.0)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        tr.Policy.random(tr.TokenTree(["a"], 1), seed=-3)


# --------------------------------------------------------------------------------- beta
#: What may come before ``beta``: the data that define the objective (policies, rewards,
#: preferences, the point it is evaluated at) and, in a plotting function, its axes.
DATA_NAMES = {
    "self",
    "ax",
    "policy",
    "ref",
    "reward",
    "rewards",
    "weights",
    "prefs",
    "leaf_logits",
    "log_pi",
    "log_q",
    "values",
}
#: The one exception, documented in README "Conventions": a per-method default names the
#: method first, as ``default_steps(method, tree)`` does (reordering would break callers).
BETA_EXCEPTIONS = {"tinyrlhf.solvers.policy_gradient.default_lr"}


def test_beta_follows_the_data_and_is_never_keyword_only():
    with_beta = {
        name: signature
        for name, signature in CALLABLES.items()
        if "beta" in signature.parameters and name not in DATACLASS_INITS | BETA_EXCEPTIONS
    }
    assert {
        "tinyrlhf.solvers.closed_form.closed_form",
        "tinyrlhf.dpo.fit_policy_to_preferences",
        "tinyrlhf.expected_training.train_expected",
    } <= set(with_beta)
    for name, signature in with_beta.items():
        parameters = list(signature.parameters)
        before = parameters[: parameters.index("beta")]
        assert signature.parameters["beta"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert set(before) <= DATA_NAMES, (name, before)
    # the solvers of the lecture: (ref, reward, beta) exactly
    for name in (
        "tinyrlhf.solvers.closed_form.closed_form",
        "tinyrlhf.solvers.soft_vi.soft_value_iteration",
        "tinyrlhf.solvers.policy_gradient.policy_gradient",
        "tinyrlhf.kl_penalty.kl_penalty_fixed_point",
        "tinyrlhf.expected_training.train_expected",
        "tinyrlhf.pipeline.preference_pipeline",
    ):
        assert list(CALLABLES[name].parameters)[:3] == ["ref", "reward", "beta"], name


def test_beta_made_positional_means_the_same_as_the_keyword():
    # fit_policy_to_preferences, preference_loss, train_expected, expected_update took beta
    # keyword-only; it is now also accepted by position, with the same meaning.
    tree, ref, reward = demo()
    prefs = tr.population_preferences(tree, reward, policy=ref)
    by_name = tr.fit_policy_to_preferences(ref, prefs, loss="ipo", beta=0.7)
    by_position = tr.fit_policy_to_preferences(ref, prefs, 0.7, loss="ipo")
    np.testing.assert_array_equal(
        by_name.policy.leaf_log_probs(), by_position.policy.leaf_log_probs()
    )
    logits = np.random.default_rng(2).standard_normal(tree.n_leaves)
    value, gradient = tr.preference_loss(ref, prefs, logits, 0.7)
    np.testing.assert_array_equal(gradient, tr.preference_loss(ref, prefs, logits, beta=0.7)[1])
    assert value == tr.preference_loss(ref, prefs, logits, beta=0.7)[0]
    options = dict(estimator="rloo", group_size=4, kl_estimator="k3", ref=ref)
    update = tr.expected_update(ref, reward, 0.3, **options)
    np.testing.assert_array_equal(
        np.concatenate([g.ravel() for g in update.gradient]),
        np.concatenate(
            [g.ravel() for g in tr.expected_update(ref, reward, beta=0.3, **options).gradient]
        ),
    )
    del options["ref"]
    with pytest.warns(tr.ExpectedTrainingWarning):  # 3 steps: not stationary, and says so
        trained = tr.train_expected(ref, reward, 0.3, lr=0.5, steps=3, **options)
    with pytest.warns(tr.ExpectedTrainingWarning):
        again = tr.train_expected(ref, reward, beta=0.3, lr=0.5, steps=3, **options)
    np.testing.assert_array_equal(flat(trained.policy), flat(again.policy))
