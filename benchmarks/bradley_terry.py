"""Benchmark: ``tinyrlhf.fit_bradley_terry`` against ``choix.opt_pairwise`` (lecture section 3).

Both minimize the same penalized Bradley-Terry negative log-likelihood,

    sum_k softplus(-(r(c_k) - r(r_k))) + (l2 / 2) ||r||^2   (choix: alpha ||r||^2, alpha = l2 / 2),

on ``n_comparisons`` pairs of ``n_leaves`` items drawn uniformly and labelled by
Bradley-Terry under a standard-normal true reward. tinyrlhf uses Newton steps with the sparse
weighted-Laplacian Hessian solved by Jacobi-preconditioned conjugate gradients; choix uses
``scipy.optimize.minimize(method="Newton-CG")`` with a dense Hessian assembled in Python.
The default ``l2 = 1e-2`` (a prior standard deviation of 10 logits) is close to the plain
MLE, which does not exist on such data (with seed 0 one item wins all its 46 comparisons
and another loses all of its), yet both solvers reach its optimum; the results must agree
to 1e-6, and the largest entry of the exact gradient of the common objective is reported
at both answers. At choix's own default ``alpha = 1e-6`` (``l2 = 2e-6``) they do not
agree to 1e-6: the unbeaten item's reward runs to about 14.6, where the curvature is about
3e-5, and choix stops 2.3e-5 away from the optimum with a gradient of 3.5e-9 whether its
``tol`` is 1e-8 or 1e-12 (measured), as if its line search could no longer resolve the
decrease of an objective of about 5e4; tinyrlhf accepts such steps when they shrink the
gradient and stops with a gradient of 1e-14.

The same data also times direct preference optimization
(``tinyrlhf.fit_policy_to_preferences(loss="dpo")`` on the one-token tree with a uniform
reference), which is the Bradley-Terry fit plus the closed form: at the same ``l2`` and at
its default ``l2 = 0`` (where, on this data, the MLE does not exist and DPO returns the
boundary limit, fitting Bradley-Terry inside the strong components of the win graph). The
bar: DPO costs at most twice the Bradley-Terry fit. Run it once with
``OPENBLAS_NUM_THREADS=1`` and once without to see that the fit does not depend on BLAS
threading (it makes no BLAS call: sparse products, ``np.bincount`` and ``np.sum``).

Run ``python benchmarks/bradley_terry.py`` (about a minute, choix dominates);
``python benchmarks/bradley_terry.py --no-choix`` skips choix.
"""

from __future__ import annotations

import sys
import time
import warnings

import choix
import numpy as np

import tinyrlhf as tr

#: Largest accepted ``max |r_tinyrlhf - r_choix|``.
AGREEMENT_ATOL = 1e-6
#: Tolerance passed to ``choix.opt_pairwise``.
CHOIX_TOL = 1e-8


def run_benchmark(
    n_leaves: int = 4096,
    n_comparisons: int = 100_000,
    seed: int = 0,
    *,
    l2: float = 1e-2,
    with_choix: bool = True,
) -> dict:
    """Time both fits on the same random data and compare their optima.

    Args:
        n_leaves: number of items (leaves of a one-token tree with ``n_leaves`` tokens).
        n_comparisons: number of sampled comparisons.
        seed: seeds the true reward and the comparisons.
        l2: ridge coefficient (choix gets ``alpha = l2 / 2``).
        with_choix: run choix (slow); otherwise its entries are NaN.

    Returns:
        A dict with the sizes, ``l2``, ``tinyrlhf_seconds`` (best of three runs),
        ``choix_seconds`` (one run), ``speedup`` (their ratio), ``max_abs_difference`` of
        the two reward vectors, ``agree`` (difference <= 1e-6), the largest entry of the exact
        gradient at each answer (``tinyrlhf_grad_norm``, ``choix_grad_norm``), and the fit's
        ``n_iter``, ``converged`` and ``mle_exists``; ``dpo_seconds`` (DPO at the same
        ``l2``), ``dpo_boundary_seconds`` (DPO at ``l2 = 0``), each best of three, and
        their ratios to ``tinyrlhf_seconds``.
    """
    rng = np.random.default_rng(seed)
    tree = tr.TokenTree([f"t{k}" for k in range(n_leaves)], horizon=1)
    reward = rng.standard_normal(n_leaves)
    prefs = tr.sample_preferences(tree, reward, n_comparisons, seed=rng)

    timings = []
    for _ in range(3):
        start = time.perf_counter()
        fit = tr.fit_bradley_terry(tree, prefs, l2=l2)
        timings.append(time.perf_counter() - start)

    ref = tr.Policy.uniform(tree)
    dpo_timings = {0.0: [], l2: []}
    for _ in range(3):
        for dpo_l2 in dpo_timings:
            start = time.perf_counter()
            with warnings.catch_warnings():  # l2 = 0: the boundary warning on this data
                warnings.simplefilter("ignore", tr.BoundaryOptimumWarning)
                tr.fit_policy_to_preferences(ref, prefs, loss="dpo", beta=1.0, l2=dpo_l2)
            dpo_timings[dpo_l2].append(time.perf_counter() - start)

    if with_choix:
        data = list(zip(prefs.chosen.tolist(), prefs.rejected.tolist(), strict=True))
        start = time.perf_counter()
        # choix's default tol (Newton-CG's xtol = 1e-5, an average over all items) stops
        # about 1e-3 away from the optimum here; 1e-8 reaches it.
        reference = choix.opt_pairwise(n_leaves, data, alpha=l2 / 2, tol=CHOIX_TOL)
        choix_seconds = time.perf_counter() - start
    else:
        reference, choix_seconds = np.full(n_leaves, np.nan), np.nan

    difference = float(np.abs(fit.reward - reference).max())
    # the arbiter: the exact gradient of the common objective at each answer
    gradients = [
        float(np.abs(tr.bradley_terry_gradient(tree, prefs, answer, l2=l2)).max())
        if np.isfinite(answer).all()
        else float("nan")
        for answer in (fit.reward, reference)
    ]
    bt_seconds = min(timings)
    return {
        "n_leaves": n_leaves,
        "n_comparisons": n_comparisons,
        "seed": seed,
        "l2": l2,
        "tinyrlhf_seconds": min(timings),
        "choix_seconds": choix_seconds,
        "speedup": choix_seconds / min(timings),
        "max_abs_difference": difference,
        "agree": difference <= AGREEMENT_ATOL,
        "tinyrlhf_grad_norm": gradients[0],
        "choix_grad_norm": gradients[1],
        "n_iter": fit.n_iter,
        "converged": fit.converged,
        "mle_exists": fit.mle_exists,
        "residual": fit.residual,
        "dpo_seconds": min(dpo_timings[l2]),
        "dpo_boundary_seconds": min(dpo_timings[0.0]),
        "dpo_ratio": min(dpo_timings[l2]) / bt_seconds,
        "dpo_boundary_ratio": min(dpo_timings[0.0]) / bt_seconds,
    }


def main() -> None:
    result = run_benchmark(with_choix="--no-choix" not in sys.argv[1:])
    print(
        f"Bradley-Terry fit, {result['n_leaves']} leaves, {result['n_comparisons']:,} "
        f"comparisons, l2 = {result['l2']:g} (choix alpha = l2/2)"
    )
    print(
        f"  tinyrlhf.fit_bradley_terry  {result['tinyrlhf_seconds']:8.3f} s  "
        f"({result['n_iter']} Newton steps, converged={result['converged']}, "
        f"residual={result['residual']:.1e})"
    )
    print(
        f"  DPO, same l2                {result['dpo_seconds']:8.3f} s  "
        f"({result['dpo_ratio']:.2f} x the fit)"
    )
    print(
        f"  DPO, l2 = 0 (boundary)      {result['dpo_boundary_seconds']:8.3f} s  "
        f"({result['dpo_boundary_ratio']:.2f} x the fit)"
    )
    print(f"  choix.opt_pairwise          {result['choix_seconds']:8.3f} s")
    print(f"  speedup                     {result['speedup']:8.1f} x")
    print(
        f"  max |grad| at the answers   {result['tinyrlhf_grad_norm']:8.1e} (tinyrlhf), "
        f"{result['choix_grad_norm']:.1e} (choix)"
    )
    print(
        f"  max |r_tinyrlhf - r_choix|  {result['max_abs_difference']:8.1e}  "
        f"(agree to {AGREEMENT_ATOL:g}: {result['agree']})"
    )


if __name__ == "__main__":
    main()
