"""The memory guard: one check at tree construction refuses, in O(1) and before anything is
allocated, a tree whose BYTES_PER_STATE bytes per state would not fit; the budget comes from
TINYRLHF_MEMORY_LIMIT or the available memory; and no exact computation on an accepted tree
uses more than the guard reserved."""

import math
import tracemalloc

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf import memory

#: Python objects a call allocates besides its arrays (Solution, Policy, lists, masks).
OBJECT_OVERHEAD = 64 * 1024


def peak_bytes(fn, *args, **kwargs):
    """Peak traced allocation of ``fn(*args, **kwargs)`` above what was live before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn(*args, **kwargs)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def small_problem(n_tokens=2, horizon=10, zero_fraction=0.0):
    tree = tr.TokenTree([chr(97 + a) for a in range(n_tokens)], horizon, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=0, zero_fraction=zero_fraction)
    reward = np.random.default_rng(1).standard_normal(tree.n_leaves)
    return tree, ref, reward


def test_a_16_to_the_12_tree_is_refused_before_allocating():
    # 16**12 leaves: (16**13 - 1) / 15 = 300,239,975,158,033 states of 128 bytes
    # = 38,430,716,820,228,224 bytes = 34.13 PiB.
    tokens = [f"t{k}" for k in range(16)]
    tracemalloc.start()
    try:
        with pytest.raises(
            ValueError,
            match=r"needs about 34\.13 PiB \(38,430,716,820,228,224 bytes\), more than the memory budget",
        ) as error:
            tr.TokenTree(tokens, 12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "TINYRLHF_MEMORY_LIMIT" in str(error.value)
    assert peak < 1024**2  # nothing of that size was touched: the refusal comes first


def test_environment_variable_sets_the_budget(monkeypatch):
    # 2 * (2**11 - 1) = 4,094 states of BYTES_PER_STATE = 128 bytes = 524,032 bytes > 16 KiB
    monkeypatch.setenv(memory.ENV_VAR, "16K")
    assert memory.memory_budget() == 16 * 1024
    with pytest.raises(ValueError, match=r"TINYRLHF_MEMORY_LIMIT=16K") as error:
        tr.TokenTree(["a", "b"], 10, prompts=["x", "y"])
    assert "524,032 bytes" in str(error.value)
    monkeypatch.setenv(memory.ENV_VAR, "524032")  # exactly enough
    tr.TokenTree(["a", "b"], 10, prompts=["x", "y"])
    monkeypatch.setenv(memory.ENV_VAR, "lots")
    with pytest.raises(ValueError, match="not a size"):
        memory.memory_budget()
    monkeypatch.setenv(memory.ENV_VAR, "0")
    with pytest.raises(ValueError, match="not a positive size"):
        memory.memory_budget()
    monkeypatch.setenv(memory.ENV_VAR, "9" * 400)  # a float overflow before; now a message
    with pytest.raises(ValueError, match=r"TINYRLHF_MEMORY_LIMIT=9{20}\.\.\. \(400 char.*2\^63"):
        tr.TokenTree(["a", "b"], 30)


def test_explicit_limit_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "1T")
    memory.check_memory(10, "ten bytes", limit=10)
    with pytest.raises(ValueError, match=r"ten bytes needs about 10 B .*memory_limit argument"):
        memory.check_memory(10, "ten bytes", limit=9)
    for bad in (0, -5, True, "2G", float("inf"), float("nan"), 2**64):
        with pytest.raises(ValueError, match="positive number of bytes"):
            memory.memory_budget(bad)


@pytest.mark.parametrize("horizon", [100, 700, 1000, 10_000, 100_000])
def test_any_size_is_refused_at_once_with_a_readable_size(horizon):
    # the size in the message, derived from the exact count with Python integers:
    # n_states = (3^(H+1) - 1) / 2, bytes = 128 n_states, PiB = 2^50 bytes
    n_states = (3 ** (horizon + 1) - 1) // 2
    exponent = math.floor(math.log10(n_states * memory.BYTES_PER_STATE) - 50 * math.log10(2))
    with pytest.raises(ValueError) as error:
        tr.TokenTree(["a", "b", "c"], horizon)
    message = str(error.value)
    assert f"3^{horizon} leaves" in message
    assert f"needs about 10^{exponent} PiB" in message
    assert len(message) < 600  # no giant integers printed


def test_format_bytes_and_count_in_logarithms():
    # 2^60 bytes = 1024 PiB: from there on the size is given as a power of ten of PiB
    assert memory.format_bytes(2**60 - 2**40) == "1024.00 PiB"
    assert memory.format_bytes(2**60) == "about 10^3 PiB"
    assert memory.format_bytes(3**700) == f"about 10^{math.floor(700 * math.log10(3) - 15.05)} PiB"
    assert memory.format_count(123_456) == "123,456"
    assert memory.format_count(10**400) == "about 10^400"


def test_sample_counts_are_checked_before_allocating():
    ref = tr.Policy.uniform(tr.TokenTree(["a", "b"], 3))
    with pytest.raises(ValueError, match=r"drawing 1,000,000,000,000 generations needs about"):
        ref.sample(10**12, seed=0)


@pytest.mark.parametrize(("n_tokens", "horizon"), [(2, 12), (3, 8), (16, 3)])
def test_the_tree_guard_covers_every_exact_computation(n_tokens, horizon):
    # BYTES_PER_STATE is sized for the largest per-state use: each entry point's peak
    # (tracemalloc, numpy's allocations included) stays below what the guard reserved.
    tree, ref, reward = small_problem(n_tokens, horizon)
    policy = tr.Policy.random(tree, seed=2)
    reserved = tree.n_states * memory.BYTES_PER_STATE
    calls = {
        "soft_value_iteration": lambda: tr.soft_value_iteration(ref, reward, 0.5),
        "closed_form": lambda: tr.closed_form(ref, reward, 0.5),
        "Policy": lambda: tr.Policy(tree, ref.log_probs),
        "Policy.random": lambda: tr.Policy.random(tree, seed=0),
        "kl_divergence": lambda: tr.kl_divergence(policy, ref),
        "entropy": lambda: tr.entropy(policy),
        "kl_estimator_moments": lambda: tr.kl_estimator_moments(policy, ref, "k3"),
        "kl_estimator_report": lambda: tr.kl_estimator_report(policy, ref),
        "policy_gradient_grad": lambda: tr.policy_gradient_grad(policy, ref, reward, 0.5),
    }
    for name, call in calls.items():
        peak = peak_bytes(call)
        assert peak <= reserved + OBJECT_OVERHEAD, (name, peak, reserved)


def test_parse_and_format_bytes():
    # binary prefixes: 2G = 2 * 1024**3, 512MB = 512 * 1024**2, 1.5K = 1536
    assert memory.parse_bytes("2G") == 2 * 1024**3
    assert memory.parse_bytes(" 512MB ") == 512 * 1024**2
    assert memory.parse_bytes("1.5k") == 1536
    assert memory.parse_bytes("123") == 123
    assert memory.format_bytes(1536) == "1.50 KiB"
    assert memory.format_bytes(100) == "100 B"


def test_cgroup_limit_lowers_the_available_memory(monkeypatch, tmp_path):
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    limit.write_text("1000000\n")
    usage.write_text("400000\n")
    monkeypatch.setattr(memory, "_CGROUP_FILES", ((str(limit), str(usage)),))
    assert memory._cgroup_available() == 600000
    assert memory.available_memory() <= 600000
    limit.write_text("max\n")  # cgroup v2 without a limit
    assert memory._cgroup_available() is None
    monkeypatch.setattr(memory, "_CGROUP_FILES", ((str(tmp_path / "missing"), str(usage)),))
    assert memory._cgroup_available() is None
    assert memory.available_memory() > 0
