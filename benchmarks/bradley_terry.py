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

Run ``python benchmarks/bradley_terry.py`` (about a minute, choix dominates).
"""

from __future__ import annotations

import time

import choix
import numpy as np

import tinyrlhf as tr

#: Largest accepted ``max |r_tinyrlhf - r_choix|``.
AGREEMENT_ATOL = 1e-6
#: Tolerance passed to ``choix.opt_pairwise``.
CHOIX_TOL = 1e-8


def run_benchmark(
    n_leaves: int = 4096, n_comparisons: int = 100_000, seed: int = 0, *, l2: float = 1e-2
) -> dict:
    """Time both fits on the same random data and compare their optima.

    Args:
        n_leaves: number of items (leaves of a one-token tree with ``n_leaves`` tokens).
        n_comparisons: number of sampled comparisons.
        seed: seeds the true reward and the comparisons.
        l2: ridge coefficient (choix gets ``alpha = l2 / 2``).

    Returns:
        A dict with the sizes, ``l2``, ``tinyrlhf_seconds`` (best of three runs),
        ``choix_seconds`` (one run), ``speedup`` (their ratio), ``max_abs_difference`` of
        the two reward vectors, ``agree`` (difference <= 1e-6), the largest entry of the exact
        gradient at each answer (``tinyrlhf_grad_norm``, ``choix_grad_norm``), and the fit's
        ``n_iter``, ``converged`` and ``mle_exists``.
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

    data = list(zip(prefs.chosen.tolist(), prefs.rejected.tolist(), strict=True))
    start = time.perf_counter()
    # choix's default tol (Newton-CG's xtol = 1e-5, an average over all items) stops about
    # 1e-3 away from the optimum here; 1e-8 reaches it.
    reference = choix.opt_pairwise(n_leaves, data, alpha=l2 / 2, tol=CHOIX_TOL)
    choix_seconds = time.perf_counter() - start

    difference = float(np.abs(fit.reward - reference).max())
    # the arbiter: the exact gradient of the common objective at each answer
    gradients = [
        float(np.abs(tr.bradley_terry_gradient(tree, prefs, answer, l2=l2)).max())
        for answer in (fit.reward, reference)
    ]
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
    }


def main() -> None:
    result = run_benchmark()
    print(
        f"Bradley-Terry fit, {result['n_leaves']} leaves, {result['n_comparisons']:,} "
        f"comparisons, l2 = {result['l2']:g} (choix alpha = l2/2)"
    )
    print(
        f"  tinyrlhf.fit_bradley_terry  {result['tinyrlhf_seconds']:8.3f} s  "
        f"({result['n_iter']} Newton steps, converged={result['converged']})"
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
