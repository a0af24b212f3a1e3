"""Benchmarks of tinyrlhf's exact solvers against the unavoidable work (lecture section 4).

Run ``python benchmarks/run.py`` (a few minutes; writes ``benchmarks/results.md`` and
``benchmarks/scaling.png``) or ``python benchmarks/run.py --quick`` (smaller sizes, well
under a minute of CPU time, prints only unless ``--output``/``--figure`` are given). ``tinyrlhf
bench [--quick]`` runs this script.

Every figure is a ratio of two times measured in the same process, interleaved round by
round and taking each one's best round, so that machine speed and background load cancel
as far as they can. The *floor* is the work no exact method can avoid: one
``scipy.special.logsumexp`` over every leaf's log-weight ``log P_ref(xi) + r(xi)/beta`` per
prompt (the partition function ``log Z``), given those log-weights. Peak memory is measured
with ``tracemalloc`` (numpy reports its allocations to it) in separate, untimed runs, and set
against the size of the output policy (``A * sum_{h<H} level_size(h)`` float64).

Rows:
1. soft value iteration and the closed form against the floor, A = 2 at H = 16..24 and
   A = 4 at H = 8, 12 (and the straightforward scipy-per-level soft VI, for comparison);
2. soft VI against a textbook dict-and-recursion soft VI (``benchmarks/textbook.py``);
3. one exact policy-gradient evaluation (``policy_gradient_grad``: the objective's
   sequence coefficient and the gradient, the work of one step) and one end-to-end
   ``policy_gradient(method="exact", steps=1)`` (setup with the closed form for the
   certificate, line search, and the exact objective, KL and certificate recorded in the
   history) against one soft VI pass;
4. natural-gradient iterations until the objective is within 1e-10 of the closed form's;
5. the Bradley-Terry fit against ``choix.opt_pairwise`` (``benchmarks/bradley_terry.py``);
6. time against the number of leaves on log-log axes with the fitted slope;
7. the level kernels of :mod:`tinyrlhf.kernels` against the straightforward versions
   (``scipy.special.logsumexp(axis=1)``, a ``np.logaddexp`` chain), in both buffer layouts,
   with and without blocking: the measurements behind the kernels' choices;
8. the remaining bars of issue 11: ``Policy`` validation against one soft-VI pass, soft VI
   in in-place ``np.exp`` passes over the leaves, the certified reverse projection onto the
   position family at 2^12 leaves, and DPO against the Bradley-Terry fit.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import scipy
from scipy.special import logsumexp

import tinyrlhf as tr
from tinyrlhf import kernels
from tinyrlhf.cli import FlagError, check_output_file, image_suffixes
from tinyrlhf.memory import FLOAT_BYTES, format_bytes

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))  # the baselines next to this file, also under runpy

import textbook  # noqa: E402

#: KL coefficient of every benchmark problem (any beta > 0 costs the same).
BETA = 0.5
#: Objective gap that counts as converged for the natural gradient.
NATURAL_TOLERANCE = 1e-10

FULL = {
    "floor_sizes": [(2, 16), (2, 20), (2, 22), (2, 24), (4, 8), (4, 12)],
    "plain_sizes": [(2, 16), (2, 20), (2, 24), (4, 12)],
    "textbook_horizons": [12, 14, 16],
    "gradient_sizes": [(2, 20), (4, 10)],
    "natural_sizes": [(2, 12), (4, 6), (3, 8)],
    "scaling_horizons": list(range(10, 25)),
    "bradley_terry": {},  # the benchmark's defaults: 4096 leaves, 100,000 comparisons
    "kernel_elements": 1 << 24,
    "kernel_tokens": [2, 3, 4, 8, 16, 64],
    "bars_size": (2, 24),
    "repeats": 7,
}
QUICK = {
    "floor_sizes": [(2, 16), (2, 20), (4, 8)],
    "plain_sizes": [(2, 16)],
    "textbook_horizons": [12, 14],
    "gradient_sizes": [(2, 16), (4, 8)],
    "natural_sizes": [(2, 10), (4, 5)],
    "scaling_horizons": list(range(10, 21)),
    "bradley_terry": {"n_leaves": 512, "n_comparisons": 10_000},
    "kernel_elements": 1 << 20,
    "kernel_tokens": [2, 4, 16],
    "bars_size": (2, 18),
    "repeats": 3,
}


# ------------------------------------------------------------------------------ measuring
def interleaved_best_times(functions: dict[str, Callable[[], object]], repeats: int) -> dict:
    """Best wall time of each function over ``repeats`` rounds, one call of each per round."""
    best = dict.fromkeys(functions, np.inf)
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def peak_memory(function: Callable[[], object]) -> int:
    """Peak bytes allocated during ``function()`` above what was live before (tracemalloc)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        function()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def problem(n_tokens: int, horizon: int, seed: int = 0):
    """A random reference policy and standard-normal rewards on one prompt's tree."""
    tree = tr.TokenTree([chr(ord("a") + a) for a in range(n_tokens)], horizon)
    ref = tr.Policy.random(tree, seed=seed)
    reward = np.random.default_rng(seed + 1).standard_normal(tree.n_leaves)
    return tree, ref, reward


def policy_bytes(tree: tr.TokenTree) -> int:
    """Bytes of one policy's tables: ``A * sum_{h<H} level_size(h)`` float64."""
    return FLOAT_BYTES * tree.n_tokens * sum(tree.level_size(h) for h in range(tree.horizon))


def floor_function(ref: tr.Policy, reward: np.ndarray) -> tuple[Callable[[], object], np.ndarray]:
    """The floor as a function of precomputed leaf log-weights ``log P_ref + r/beta``."""
    log_weight = (ref.leaf_log_probs() + reward / BETA).reshape(ref.tree.n_prompts, -1)
    return (lambda: logsumexp(log_weight, axis=1)), log_weight


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 100 else f"{value:,.0f}x"


# ------------------------------------------------------------------------------- sections
def floor_section(config: dict) -> tuple[str, list[dict]]:
    """Soft VI and closed form against the floor (and the scipy-per-level soft VI)."""
    rows, records = [], []
    for n_tokens, horizon in config["floor_sizes"]:
        tree, ref, reward = problem(n_tokens, horizon)
        floor, log_weight = floor_function(ref, reward)
        functions = {
            "floor": floor,
            "soft": partial(tr.soft_value_iteration, ref, reward, BETA),
            "closed": partial(tr.closed_form, ref, reward, BETA),
        }
        with_plain = (n_tokens, horizon) in config["plain_sizes"]
        if with_plain:
            functions["plain"] = partial(textbook.plain_soft_value_iteration, ref, reward, BETA)
        times = interleaved_best_times(functions, config["repeats"])
        # the three answers agree: log Z from the floor, soft VI and the closed form
        log_z = floor()
        soft = tr.soft_value_iteration(ref, reward, BETA)
        closed = tr.closed_form(ref, reward, BETA)
        gap = max(
            float(np.abs(soft.log_partition - log_z).max()),
            float(np.abs(closed.log_partition - log_z).max()),
        )
        del soft, closed
        output = policy_bytes(tree)
        peaks = {
            "floor": peak_memory(floor),
            "soft": peak_memory(functions["soft"]),
            "closed": peak_memory(functions["closed"]),
        }
        del log_weight
        record = {
            "n_tokens": n_tokens,
            "horizon": horizon,
            "leaves": tree.n_leaves,
            "floor_seconds": times["floor"],
            "soft_ratio": times["soft"] / times["floor"],
            "closed_ratio": times["closed"] / times["floor"],
            "plain_ratio": times["plain"] / times["floor"] if with_plain else None,
            "log_z_gap": gap,
            "policy_bytes": output,
            **{f"{name}_peak": peak for name, peak in peaks.items()},
        }
        records.append(record)
        rows.append(
            [
                n_tokens,
                horizon,
                f"{tree.n_leaves:,}",
                f"{times['floor']:.3f}",
                ratio(record["soft_ratio"]),
                ratio(record["closed_ratio"]),
                ratio(record["plain_ratio"]) if with_plain else "-",
                format_bytes(output),
                f"{peaks['soft'] / output:.2f}",
                f"{peaks['closed'] / output:.2f}",
                f"{peaks['floor'] / output:.2f}",
                f"{gap:.0e}",
            ]
        )
        print(f"  floor: A = {n_tokens}, H = {horizon} done", flush=True)
    header = [
        "A",
        "H",
        "leaves",
        "floor [s]",
        "soft VI / floor",
        "closed form / floor",
        "scipy-per-level soft VI / floor",
        "policy size",
        "soft VI peak / policy",
        "closed form peak / policy",
        "floor peak / policy",
        "max abs diff in log Z",
    ]
    return markdown_table(header, rows), records


def kernel_section(config: dict) -> tuple[str, list[dict]]:
    """One backward level (row log-sum-exp and normalized rows) of ``(n, A)`` arrays, by each
    candidate kernel, against the floor over the same number of elements."""
    n_elements = config["kernel_elements"]
    values = np.random.default_rng(0).standard_normal(n_elements)
    floor = partial(logsumexp, values.reshape(1, -1), axis=1)
    rows, records = [], []
    for n_tokens in config["kernel_tokens"]:
        n_rows = n_elements // n_tokens
        x = values[: n_rows * n_tokens].reshape(n_rows, n_tokens)
        log_sum, table = np.empty(n_rows), np.empty((n_rows, n_tokens))

        def scipy_level(x=x, table=table):
            np.subtract(x, logsumexp(x, axis=1)[:, None], out=table)

        def logaddexp_level(x=x, log_sum=log_sum, table=table):
            np.logaddexp(x[:, 0], x[:, 1], out=log_sum)
            for a in range(2, x.shape[1]):
                np.logaddexp(log_sum, x[:, a], out=log_sum)
            np.subtract(x, log_sum[:, None], out=table)

        def kernel_level(settings, x=x, table=table):
            # the kernel with its module constants set to one layout / block size
            saved = (kernels.TOKEN_MAJOR_MAX_TOKENS, kernels.BLOCK_ELEMENTS)
            kernels.TOKEN_MAJOR_MAX_TOKENS, kernels.BLOCK_ELEMENTS = settings
            try:
                kernels.log_softmax_rows(x, out=table)
            finally:
                kernels.TOKEN_MAJOR_MAX_TOKENS, kernels.BLOCK_ELEMENTS = saved

        layouts = {  # (largest token-major A, block elements)
            "row-major": (0, kernels.BLOCK_ELEMENTS),
            "token-major": (n_tokens, kernels.BLOCK_ELEMENTS),
            "token-major, unblocked": (n_tokens, n_elements),
        }
        candidates = {"floor": floor, "scipy": scipy_level, "logaddexp": logaddexp_level}
        candidates |= {name: partial(kernel_level, ws) for name, ws in layouts.items()}
        times = interleaved_best_times(candidates, config["repeats"])
        chosen = "token-major" if n_tokens <= kernels.TOKEN_MAJOR_MAX_TOKENS else "row-major"
        record = {"n_tokens": n_tokens, "chosen": chosen}
        record |= {name: times[name] / times["floor"] for name in candidates if name != "floor"}
        records.append(record)
        rows.append(
            [n_tokens] + [ratio(record[name]) for name in candidates if name != "floor"] + [chosen]
        )
        del layouts, candidates
        print(f"  kernels: A = {n_tokens} done", flush=True)
    header = [
        "A",
        "scipy logsumexp(axis=1)",
        "np.logaddexp chain",
        "row-major blocks",
        "token-major blocks",
        "token-major, one block",
        "used",
    ]
    return markdown_table(header, rows), records


def textbook_section(config: dict) -> tuple[str, list[dict]]:
    """Soft VI against the dict-and-recursion textbook version (A = 2)."""
    rows, records = [], []
    for horizon in config["textbook_horizons"]:
        tree, ref, reward = problem(2, horizon)
        pi_ref, leaf_reward = textbook.to_dicts(tree, ref, reward)
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * horizon + 100))
        run_textbook = partial(
            textbook.textbook_soft_value_iteration, pi_ref, leaf_reward, tree.prompts, BETA
        )
        run_soft = partial(tr.soft_value_iteration, ref, reward, BETA)

        times = interleaved_best_times(
            {"textbook": run_textbook, "soft": run_soft}, max(2, config["repeats"] // 2)
        )
        values, _ = run_textbook()
        soft = run_soft()
        gap = abs(values[tree.prompts[0] + textbook.PROMPT_MARK] - float(soft.values[0][0]))
        peaks = {"textbook": peak_memory(run_textbook), "soft": peak_memory(run_soft)}
        output = policy_bytes(tree)
        record = {
            "horizon": horizon,
            "leaves": tree.n_leaves,
            "textbook_seconds": times["textbook"],
            "soft_seconds": times["soft"],
            "speedup": times["textbook"] / times["soft"],
            "value_gap": gap,
            "textbook_peak": peaks["textbook"],
            "soft_peak": peaks["soft"],
            "policy_bytes": output,
        }
        records.append(record)
        rows.append(
            [
                2,
                horizon,
                f"{tree.n_leaves:,}",
                f"{times['textbook']:.3f}",
                f"{times['soft'] * 1e3:.2f}",
                ratio(record["speedup"]),
                f"{peaks['textbook'] / output:.1f}",
                f"{peaks['soft'] / output:.2f}",
                f"{gap:.0e}",
            ]
        )
        print(f"  textbook: H = {horizon} done", flush=True)
    header = [
        "A",
        "H",
        "leaves",
        "textbook [s]",
        "soft VI [ms]",
        "speedup",
        "textbook peak / policy",
        "soft VI peak / policy",
        "abs diff in V_0",
    ]
    return markdown_table(header, rows), records


def one_exact_step(ref: tr.Policy, reward: np.ndarray) -> tr.Solution:
    """``policy_gradient(method="exact", steps=1)``, which is not certified after one step
    (its warning is expected here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tr.PolicyGradientWarning)
        return tr.policy_gradient(ref, reward, BETA, method="exact", steps=1)


def gradient_section(config: dict) -> tuple[str, list[dict]]:
    """One exact policy-gradient evaluation, one end-to-end step, and the marginal cost of one
    more exact step, ``(T(steps=6) - T(steps=1)) / 5``, against soft VI (``tol=1e-300`` so the
    runs never stop early; divided by the steps actually taken)."""

    def exact_steps(ref: tr.Policy, reward: np.ndarray, steps: int) -> tr.Solution:
        with warnings.catch_warnings():  # not certified after a few steps: expected here
            warnings.simplefilter("ignore", tr.PolicyGradientWarning)
            return tr.policy_gradient(ref, reward, BETA, method="exact", steps=steps, tol=1e-300)

    rows, records = [], []
    for n_tokens, horizon in config["gradient_sizes"]:
        tree, ref, reward = problem(n_tokens, horizon)
        functions = {
            "soft": partial(tr.soft_value_iteration, ref, reward, BETA),
            "evaluate": partial(tr.policy_gradient_grad, ref, ref, reward, BETA),
            "step": partial(one_exact_step, ref, reward),
            "steps_1": partial(exact_steps, ref, reward, 1),
            "steps_6": partial(exact_steps, ref, reward, 6),
        }
        times = interleaved_best_times(functions, config["repeats"])
        peaks = {name: peak_memory(functions[name]) for name in ("soft", "evaluate", "step")}
        output = policy_bytes(tree)
        taken = functions["steps_6"]().steps_taken - functions["steps_1"]().steps_taken
        record = {
            "n_tokens": n_tokens,
            "horizon": horizon,
            "leaves": tree.n_leaves,
            "soft_seconds": times["soft"],
            "evaluate_ratio": times["evaluate"] / times["soft"],
            "step_ratio": times["step"] / times["soft"],
            "marginal_step_ratio": (times["steps_6"] - times["steps_1"])
            / max(taken, 1)
            / times["soft"],
            **{f"{name}_peak": peak for name, peak in peaks.items()},
            "policy_bytes": output,
        }
        records.append(record)
        rows.append(
            [
                n_tokens,
                horizon,
                f"{tree.n_leaves:,}",
                f"{times['soft'] * 1e3:.1f}",
                ratio(record["evaluate_ratio"]),
                ratio(record["step_ratio"]),
                ratio(record["marginal_step_ratio"]),
                f"{peaks['soft'] / output:.2f}",
                f"{peaks['evaluate'] / output:.2f}",
                f"{peaks['step'] / output:.2f}",
            ]
        )
        print(f"  gradient: A = {n_tokens}, H = {horizon} done", flush=True)
    header = [
        "A",
        "H",
        "leaves",
        "soft VI [ms]",
        "exact gradient evaluation / soft VI",
        "policy_gradient(exact, steps=1) / soft VI",
        "marginal exact step / soft VI",
        "soft VI peak / policy",
        "gradient evaluation peak / policy",
        "one step peak / policy",
    ]
    return markdown_table(header, rows), records


def natural_section(config: dict) -> tuple[str, list[dict]]:
    """Natural-gradient iterations until the objective is within 1e-10 of the closed form."""
    rows, records = [], []
    for n_tokens, horizon in config["natural_sizes"]:
        tree, ref, reward = problem(n_tokens, horizon)
        optimum = float(tr.closed_form(ref, reward, BETA).objective().mean())
        for lr_factor in (1.0, 0.5):
            steps = 4 * horizon + 60
            solution = tr.policy_gradient(
                ref, reward, BETA, method="natural", lr=lr_factor / BETA, steps=steps
            )
            gaps = np.abs(optimum - solution.history["objective"])
            reached = np.flatnonzero(gaps <= NATURAL_TOLERANCE)
            iterations = int(reached[0]) if reached.size else None
            per_step = solution.wall_time / max(solution.steps_taken, 1)
            records.append(
                {
                    "n_tokens": n_tokens,
                    "horizon": horizon,
                    "lr_beta": lr_factor,
                    "iterations": iterations,
                    "steps_run": solution.steps_taken,
                }
            )
            rows.append(
                [
                    n_tokens,
                    horizon,
                    f"{tree.n_leaves:,}",
                    f"{lr_factor:g} / beta",
                    iterations if iterations is not None else f"> {steps}",
                    f"{per_step * 1e3:.2f}",
                ]
            )
    header = ["A", "H", "leaves", "step size", "iterations to 1e-10", "ms per iteration"]
    return markdown_table(header, rows), records


def bradley_terry_section(config: dict) -> tuple[str, dict | None]:
    """``benchmarks/bradley_terry.py``'s fit against choix, and the fit's peak memory."""
    path = BENCHMARKS / "bradley_terry.py"
    if not path.exists():
        return "skipped: benchmarks/bradley_terry.py is not present.", None
    bradley_terry = importlib.import_module("bradley_terry")
    result = bradley_terry.run_benchmark(**config["bradley_terry"])
    # the fit's peak memory on the same data as run_benchmark (its recipe, seed 0)
    rng = np.random.default_rng(result["seed"])
    tree = tr.TokenTree([f"t{k}" for k in range(result["n_leaves"])], horizon=1)
    true_reward = rng.standard_normal(result["n_leaves"])
    prefs = tr.sample_preferences(tree, true_reward, result["n_comparisons"], seed=rng)
    result["tinyrlhf_peak"] = peak_memory(
        lambda: tr.fit_bradley_terry(tree, prefs, l2=result["l2"])
    )
    output = FLOAT_BYTES * result["n_leaves"]
    header = [
        "leaves",
        "comparisons",
        "tinyrlhf [s]",
        "choix [s]",
        "speedup",
        "max abs diff",
        "tinyrlhf peak / reward vector",
    ]
    row = [
        f"{result['n_leaves']:,}",
        f"{result['n_comparisons']:,}",
        f"{result['tinyrlhf_seconds']:.3f}",
        f"{result['choix_seconds']:.3f}",
        ratio(result["speedup"]),
        f"{result['max_abs_difference']:.0e}",
        f"{result['tinyrlhf_peak'] / output:.0f}",
    ]
    return markdown_table(header, [row]), result


def exp_pass(n: int) -> Callable[[], object]:
    """One ``np.exp`` over ``n`` float64 values in [-30, 0] into a preallocated buffer.

    Out of place so that every round sees the same values; it costs the same as in place
    (``np.exp`` is compute-bound here: 85.7 against 84.8 ms at 2^24 values, measured).
    """
    source = np.random.default_rng(0).uniform(-30.0, 0.0, n)
    buffer = np.empty(n)
    return partial(np.exp, source, out=buffer)


def bars_section(config: dict) -> tuple[str, dict]:
    """The speed bars of issue 11, each as a ratio measured in this process.

    - ``Policy(tree, tables)`` validation against one soft-VI pass (bar: <= 1);
    - soft VI against one in-place ``np.exp`` pass over the leaves (stretch: <= 12);
    - the reverse projection onto the position family at 2^12 leaves (bar: <= 2 s,
      certified);
    - DPO against the Bradley-Terry fit on the same data (bar: <= 2).
    """
    bradley_terry = importlib.import_module("bradley_terry")  # imports choix (main checks)

    n_tokens, horizon = config["bars_size"]
    tree, ref, reward = problem(n_tokens, horizon)
    tables = [np.array(table) for table in ref.log_probs]
    times = interleaved_best_times(
        {
            "soft": partial(tr.soft_value_iteration, ref, reward, BETA),
            "validate": partial(tr.Policy, tree, tables),
            "exp": exp_pass(tree.n_leaves),
        },
        config["repeats"],
    )
    del tables

    proj_tree = tr.TokenTree(["a", "b"], 12)
    target = tr.closed_form(
        tr.Policy.random(proj_tree, seed=0),
        np.random.default_rng(1).standard_normal(proj_tree.n_leaves),
        BETA,
    ).policy
    projection_seconds = []
    for _ in range(3):
        start = time.perf_counter()
        projection = tr.project_all(target, "position", "reverse")
        projection_seconds.append(time.perf_counter() - start)

    pairwise = bradley_terry.run_benchmark(**config["bradley_terry"], with_choix=False)
    record = {
        "leaves": tree.n_leaves,
        "validate_ratio": times["validate"] / times["soft"],
        "exp_passes": times["soft"] / times["exp"],
        "projection_seconds": min(projection_seconds),
        "projection_residual": projection.residual,
        "projection_converged": projection.all_converged,
        "dpo_ratio": pairwise["dpo_ratio"],
        "dpo_boundary_ratio": pairwise["dpo_boundary_ratio"],
    }
    size = f"A = {n_tokens}, H = {horizon} ({tree.n_leaves:,} leaves)"
    pairs = f"{pairwise['n_leaves']:,} leaves, {pairwise['n_comparisons']:,} comparisons"
    rows = [
        [
            "`Policy(tree, tables)` validation / one soft-VI pass",
            size,
            f"{record['validate_ratio']:.2f}",
            "<= 1",
        ],
        [
            "soft VI / one `np.exp` pass over the leaves",
            size,
            f"{record['exp_passes']:.1f}",
            "<= 12 (stretch)",
        ],
        [
            "reverse projection onto `position` (all starts), seconds",
            f"A = 2, H = 12; residual {projection.residual:.1e}, "
            f"all converged: {projection.all_converged}",
            f"{record['projection_seconds']:.2f}",
            "<= 2",
        ],
        [
            "DPO / Bradley-Terry fit, same `l2`",
            pairs,
            f"{pairwise['dpo_ratio']:.2f}",
            "<= 2",
        ],
        [
            "DPO at `l2 = 0` (boundary limit) / Bradley-Terry fit",
            pairs,
            f"{pairwise['dpo_boundary_ratio']:.2f}",
            "<= 2",
        ],
    ]
    print("  issue-11 bars done", flush=True)
    return markdown_table(["measure", "size", "value", "bar"], rows), record


def scaling_section(config: dict, figure: Path | None) -> tuple[str, dict]:
    """Time against the number of leaves (A = 2), with least-squares slopes in log-log."""
    leaves, times = [], {"floor": [], "soft VI": [], "closed form": []}
    for horizon in config["scaling_horizons"]:
        tree, ref, reward = problem(2, horizon)
        floor, _ = floor_function(ref, reward)
        best = interleaved_best_times(
            {
                "floor": floor,
                "soft VI": partial(tr.soft_value_iteration, ref, reward, BETA),
                "closed form": partial(tr.closed_form, ref, reward, BETA),
            },
            config["repeats"],
        )
        leaves.append(tree.n_leaves)
        for name in times:
            times[name].append(best[name])
    # slope over the upper half of the sizes, where fixed per-call costs no longer matter
    upper = slice(len(leaves) // 2, None)
    slopes = {
        name: float(np.polyfit(np.log(leaves[upper]), np.log(values[upper]), 1)[0])
        for name, values in times.items()
    }
    if figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for (name, values), marker in zip(times.items(), "os^", strict=True):
            ax.loglog(leaves, values, marker=marker, label=f"{name} (slope {slopes[name]:.2f})")
        ax.set_xlabel("number of leaves |A|^H (A = 2)")
        ax.set_ylabel("wall time [s] (best of rounds)")
        ax.set_title("Exact solves scale linearly in the leaves")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(figure, dpi=120)
        plt.close(fig)
    rows = [[name, f"{slope:.2f}"] for name, slope in slopes.items()]
    table = markdown_table(["method", "log-log slope (time vs leaves)"], rows)
    return table, {"leaves": leaves, "times": times, "slopes": slopes}


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}, {platform.system()}"
    )


# ----------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, print only: well under a minute of CPU time",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="Markdown results file (default: benchmarks/results.md, none with --quick)",
    )
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="scaling plot (default: benchmarks/scaling.png, none with --quick)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # the files are checked (and their folders created) before any benchmark runs
        if args.output is not None:
            check_output_file(args.output, "--output")
        if args.figure is not None:
            check_output_file(args.figure, "--figure", image_suffixes())
    except FlagError as error:
        parser.error(str(error))  # the usage, then the line naming the flag; exit 2
    if importlib.util.find_spec("choix") is None:  # needed by the Bradley-Terry section
        print(
            "benchmarks/run.py needs choix (the Bradley-Terry comparison): "
            "pip install -e '.[test]' (or pip install choix)",
            file=sys.stderr,
        )
        return 2
    config = QUICK if args.quick else FULL
    output = args.output or (None if args.quick else BENCHMARKS / "results.md")
    figure = args.figure or (None if args.quick else ROOT / "benchmarks" / "scaling.png")
    start = time.perf_counter()
    machine = machine_description()
    print(f"tinyrlhf benchmarks ({'quick' if args.quick else 'full'}) on {machine}", flush=True)
    sections = []
    floor_table, _ = floor_section(config)
    sections.append(("Soft value iteration and closed form against the floor", floor_table))
    kernel_table, _ = kernel_section(config)
    sections.append(
        (
            "Level kernels: one backward level against the floor over as many elements",
            kernel_table,
        )
    )
    textbook_table, _ = textbook_section(config)
    sections.append(("Against a textbook dict-and-recursion soft VI", textbook_table))
    gradient_table, _ = gradient_section(config)
    sections.append(("Exact policy gradient against soft VI", gradient_table))
    natural_table, _ = natural_section(config)
    sections.append(("Natural gradient: iterations to the closed-form objective", natural_table))
    print("  Bradley-Terry (choix takes a while) ...", flush=True)
    bradley_terry_table, _ = bradley_terry_section(config)
    sections.append(("Bradley-Terry fit against choix.opt_pairwise", bradley_terry_table))
    bars_table, _ = bars_section(config)
    sections.append(("Issue 11 bars: validation, exp passes, projection, DPO", bars_table))
    scaling_table, _ = scaling_section(config, figure)
    sections.append(("Scaling: time against the number of leaves", scaling_table))
    elapsed = time.perf_counter() - start
    text = [
        "# tinyrlhf benchmark results",
        "",
        f"Machine: {machine}. Mode: {'quick' if args.quick else 'full'}; "
        f"total benchmark time {elapsed:.0f} s. Generated by `python benchmarks/run.py`; "
        "every ratio is two times measured in the same process (best of interleaved rounds); "
        "the floor is `scipy.special.logsumexp` over the leaf log-weights "
        "`log P_ref + r/beta` (given those); peaks are `tracemalloc` peaks against the "
        "size of the output policy.",
    ]
    for title, table in sections:
        text += ["", f"## {title}", "", table]
    if figure is not None:
        text += [
            "",
            f"Figure: `{figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure}`.",
        ]
    text += [
        "",
        "Before/after numbers and one-off measurements that a re-run would erase: "
        "`benchmarks/history.md`.",
    ]
    report = "\n".join(text) + "\n"
    print()
    print(report)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(report, encoding="utf-8")
        print(f"wrote {output}")
    if figure is not None:
        print(f"wrote {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
