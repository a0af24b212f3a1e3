"""The memory guard: sizes are estimated and refused before anything is allocated, the
budget comes from an argument, TINYRLHF_MEMORY_LIMIT or the available memory, and the
solvers' estimates match what they really allocate."""

import importlib
import tracemalloc

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf import memory

soft_vi = importlib.import_module("tinyrlhf.solvers.soft_vi")
closed_form_module = importlib.import_module("tinyrlhf.solvers.closed_form")

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
    # 16**12 leaves: one float64 per state is 16**12 * 16/15 * 8 bytes, about 2.2 PiB.
    tokens = [f"t{k}" for k in range(16)]
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"needs about 2\.\d\d PiB .* memory budget") as error:
            tr.TokenTree(tokens, 12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "TINYRLHF_MEMORY_LIMIT" in str(error.value)
    assert peak < 1024**2  # nothing of that size was touched: the refusal comes first


def test_environment_variable_sets_the_budget(monkeypatch):
    # 2 * (2**11 - 1) states of float64 = 32,752 bytes > 16 KiB
    monkeypatch.setenv(memory.ENV_VAR, "16K")
    assert memory.memory_budget() == 16 * 1024
    with pytest.raises(ValueError, match=r"TINYRLHF_MEMORY_LIMIT=16K"):
        tr.TokenTree(["a", "b"], 10, prompts=["x", "y"])
    monkeypatch.setenv(memory.ENV_VAR, "1G")
    tree, ref, reward = small_problem()
    # the solvers read the same budget: a budget below their estimate refuses them
    needed = soft_vi.estimate_bytes(tree)
    monkeypatch.setenv(memory.ENV_VAR, str(needed - 1))
    with pytest.raises(ValueError, match=f"{needed:,} bytes"):
        tr.soft_value_iteration(ref, reward, 1.0)
    monkeypatch.setenv(memory.ENV_VAR, str(closed_form_module.estimate_bytes(tree) - 1))
    with pytest.raises(ValueError, match="closed form"):
        tr.closed_form(ref, reward, 1.0)
    monkeypatch.setenv(memory.ENV_VAR, "lots")
    with pytest.raises(ValueError, match="not a size"):
        memory.memory_budget()
    monkeypatch.setenv(memory.ENV_VAR, "0")
    with pytest.raises(ValueError, match="not a positive size"):
        memory.memory_budget()


def test_explicit_limit_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv(memory.ENV_VAR, "1T")
    tree, ref, reward = small_problem()
    with pytest.raises(ValueError, match="memory_limit argument"):
        tr.soft_value_iteration(ref, reward, 1.0, memory_limit=1000)
    with pytest.raises(ValueError, match=r"budget of 1000 B \(1,000 bytes"):
        tr.closed_form(ref, reward, 1.0, memory_limit=1000)
    exact = soft_vi.estimate_bytes(tree)  # a budget of exactly the estimate is enough
    tr.soft_value_iteration(ref, reward, 1.0, memory_limit=exact)
    memory.check_memory(10, "ten bytes", limit=10)
    with pytest.raises(ValueError, match="ten bytes needs about 10 B"):
        memory.check_memory(10, "ten bytes", limit=9)
    for bad in (0, -5, True, "2G"):
        with pytest.raises(ValueError, match="positive number of bytes"):
            memory.memory_budget(bad)


def test_closed_form_counts_its_soft_value_iteration_fallback():
    # With forbidden tokens some states are unreached and the closed form also runs soft VI;
    # a budget that covers the closed form alone refuses the fallback, before allocating it.
    tree, ref, reward = small_problem(zero_fraction=0.3)
    alone = closed_form_module.estimate_bytes(tree)
    with pytest.raises(ValueError, match="never reaches"):
        tr.closed_form(ref, reward, 1.0, memory_limit=alone)
    both = alone + soft_vi.estimate_bytes(tree)
    solution = tr.closed_form(ref, reward, 1.0, memory_limit=both)
    assert not any(np.isnan(table).any() for table in solution.policy.log_probs)


@pytest.mark.parametrize(("n_tokens", "horizon"), [(2, 12), (3, 8), (16, 3)])
def test_estimates_match_the_allocations(n_tokens, horizon):
    # tracemalloc sees numpy's allocations: the estimate covers the peak up to a fixed
    # overhead of Python objects, and is not a loose bound either.
    tree, ref, reward = small_problem(n_tokens, horizon)
    for solver, estimate in (
        (tr.soft_value_iteration, soft_vi.estimate_bytes(tree)),
        (tr.closed_form, closed_form_module.estimate_bytes(tree)),
    ):
        peak = peak_bytes(solver, ref, reward, 0.5)
        assert peak <= estimate + OBJECT_OVERHEAD
        assert peak >= 0.75 * estimate


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
