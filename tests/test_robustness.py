"""What must keep holding (issue 10, section 7): no entry point mutates its inputs, and the
solvers give identical answers when called from several threads on shared objects."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

import tinyrlhf as tr
from tinyrlhf.examples import demo_problem

BETA = 0.7


def _calls(tree, ref, reward, prefs):
    """Entry points of every family, each returning arrays to compare."""
    return {
        "closed_form": lambda: tr.closed_form(ref, reward, BETA).policy.leaf_log_probs(),
        "soft_vi": lambda: tr.soft_value_iteration(ref, reward, BETA).values[0],
        "natural": lambda: tr.policy_gradient(ref, reward, BETA, method="natural").residual,
        "kl": lambda: tr.kl_divergence(tr.closed_form(ref, reward, BETA).policy, ref),
        "bradley_terry": lambda: tr.fit_bradley_terry(tree, prefs).reward,
        "best_of_n": lambda: tr.best_of_n(ref, reward, 4).leaf_log_probs,
        "expected_update": lambda: (
            tr.expected_update(ref, reward, estimator="grpo", group_size=3).leaf_weights
        ),
        "projection": lambda: tr.project(ref, "position", "forward").leaf_log_probs(),
    }


def test_no_entry_point_mutates_its_inputs():
    tree, ref, reward = demo_problem(horizon=3)
    prefs = tr.sample_preferences(tree, reward, 300, seed=0)
    reward_before = reward.copy()
    tables_before = [table.copy() for table in ref.log_probs]
    pairs_before = (prefs.chosen.copy(), prefs.rejected.copy(), prefs.weight.copy())
    for call in _calls(tree, ref, reward, prefs).values():
        call()
    np.testing.assert_array_equal(reward, reward_before)
    for table, before in zip(ref.log_probs, tables_before, strict=True):
        np.testing.assert_array_equal(table, before)
    for now, before in zip(
        (prefs.chosen, prefs.rejected, prefs.weight), pairs_before, strict=True
    ):
        np.testing.assert_array_equal(now, before)


def test_eight_threads_on_shared_objects_give_the_serial_answers():
    tree, ref, reward = demo_problem(horizon=3)
    prefs = tr.sample_preferences(tree, reward, 300, seed=0)
    calls = _calls(tree, ref, reward, prefs)
    serial = {name: np.asarray(call()) for name, call in calls.items()}
    jobs = [name for name in calls for _ in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda name: (name, np.asarray(calls[name]())), jobs))
    for name, value in results:
        np.testing.assert_array_equal(value, serial[name], err_msg=name)
