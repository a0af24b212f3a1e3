"""The ``tinyrlhf`` command line (also ``python -m tinyrlhf``).

Subcommands:
    demo      solve a small RLHF problem three ways and show that the solutions agree
    notebooks list the classroom notebooks; --execute re-runs them in place (authors)
    figures   regenerate the figure set (PNGs) in --out (default figures/)
    pipeline  true reward -> preferences -> Bradley-Terry fit -> RLHF policy, vs dataset size
    bon       best-of-n against RLHF at equal KL, and where each KL penalty trains to
    bench     time the exact solvers against the unavoidable work (runs benchmarks/run.py)
    docs      build the documentation site into --out (needs the docs extra)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import examples
from .agreement import check_agreement
from .docsite import add_command as add_docs_command
from .solvers import closed_form, policy_gradient, soft_value_iteration


def _split_words(text: str) -> list[str]:
    """``"a,b,c"`` or ``"a b c"`` -> ``["a", "b", "c"]``."""
    return [word for word in text.replace(",", " ").split() if word]


def _add_problem_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokens",
        default=",".join(examples.DEMO_TOKENS),
        help="token alphabet, comma- or space-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--horizon",
        type=int,
        default=examples.DEMO_HORIZON,
        help="maximum generation length H (default: %(default)s)",
    )
    parser.add_argument(
        "--prompts",
        default=",".join(examples.DEMO_PROMPTS),
        help="prompts, comma- or space-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--beta",
        type=float,
        default=examples.DEMO_BETA,
        help="KL coefficient beta > 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random reference policy (default: %(default)s)",
    )


def run_demo(args: argparse.Namespace) -> int:
    """Solve the demo problem by closed form, soft VI and policy gradient; print the report."""
    np.set_printoptions(precision=6, suppress=True)
    tree, ref, reward = examples.demo_problem(
        _split_words(args.tokens), args.horizon, _split_words(args.prompts), seed=args.seed
    )
    print(f"tinyrlhf demo: max_pi E_pi[r] - beta KL(pi || pi_ref), beta = {args.beta:g}")
    print(
        f"tree: tokens {list(tree.tokens)}, horizon H = {tree.horizon}, prompts {list(tree.prompts)}"
    )
    print(
        f"      {tree.leaves_per_prompt:,} complete generations per prompt "
        f"(|A|^H = {tree.n_tokens}^{tree.horizon}), {tree.n_states:,} states in all"
    )
    print(
        f"reference policy: random (seed {args.seed}); reward: demo_reward (on-topic, no repeats)"
    )
    print()
    start = time.perf_counter()
    solutions = [
        closed_form(ref, reward, args.beta),
        soft_value_iteration(ref, reward, args.beta),
        policy_gradient(ref, reward, args.beta, method="natural"),
        policy_gradient(ref, reward, args.beta, method="exact"),
        policy_gradient(ref, reward, args.beta, method="reinforce", seed=args.seed),
        policy_gradient(ref, reward, args.beta, method="ppo", seed=args.seed),
    ]
    for solution in solutions:
        print(f"[{solution.method}]  ({solution.wall_time * 1e3:.1f} ms)")
        if solution.log_partition is not None:
            print(f"  log Z(s0)         = {solution.log_partition}")
            print(f"  lambda* = b(1-logZ) = {solution.lagrange_multiplier}")
        if solution.history is not None:
            print(
                f"  steps             = {solution.info['steps_taken']}, converged = {solution.converged}"
            )
        print(f"  objective J(pi)   = {solution.objective()}")
        print(f"  KL(pi || pi_ref)  = {solution.kl()}")
        print(f"  E_pi[r]           = {solution.expected_reward()}")
    report = check_agreement(*solutions)
    print()
    print("agreement with the closed form (REINFORCE and PPO learn from sampled generations,")
    print("so they come close but not to float precision):")
    print(report)
    print()
    print(
        f"V_0 = beta log Z: max |V_0 - beta log Z| = "
        f"{np.max(np.abs(solutions[1].values[0] - args.beta * solutions[0].log_partition)):.2e}"
    )
    print(
        "note: plain (exact) gradient ascent is slow at deep, rarely visited states because the\n"
        "      gradient carries the occupancy d_pi(s); the natural gradient divides it out and,\n"
        "      with step 1/beta, is soft policy iteration: exact after at most H iterations."
    )
    print(f"total wall time {time.perf_counter() - start:.2f} s")
    return 0


def run_notebooks(args: argparse.Namespace) -> int:
    """List the classroom notebooks, or re-execute them in place with ``--execute``."""
    from . import notebooks

    paths = notebooks.find_notebooks(args.paths, args.dir)
    if not args.execute:
        print(f"{'notebook':<40} {'cells run':>10} {'figures':>8} {'errors':>7} {'size':>9}")
        for path in paths:
            summary = notebooks.summarize_notebook(path)
            print(
                f"{path.name:<40} {summary.executed_cells:>4}/{summary.code_cells:<5} "
                f"{summary.figures:>8} {summary.errors:>7} {summary.size_bytes / 1024:>7.0f}kB"
            )
        print("re-execute them in place with: tinyrlhf notebooks --execute")
        return 0
    if not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    total = 0.0
    for path in paths:
        print(f"executing {path} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            notebooks.execute_notebook(path, timeout=args.timeout)
        except ImportError as error:
            print()
            print(f"tinyrlhf notebooks: error: {error}", file=sys.stderr)
            return 2
        except Exception as error:  # a failing cell: report it, keep the stored notebook
            print("FAILED")
            print(f"tinyrlhf notebooks: {path} failed (not written):\n{error}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{seconds:.1f} s")
    print(f"executed {len(paths)} notebook(s) in {total:.1f} s; outputs stored in place")
    return 0


def run_figures(args: argparse.Namespace) -> int:
    """Regenerate the figure set (PNGs) in ``--out``."""
    from .figures import make_figures

    start = time.perf_counter()
    paths = make_figures(args.out, small=args.small)
    if getattr(args, "animations", False):  # GIFs of tinyrlhf.animations
        from .animations import make_animations

        paths += make_animations(args.out, small=args.small)
    for path in paths:
        print(path)
    print(f"wrote {len(paths)} figure(s) to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


def run_pipeline(args: argparse.Namespace) -> int:
    """Learn the demo reward from sampled preferences and compare the RLHF policies."""
    from .bradley_terry import DEFAULT_L2
    from .pipeline import preference_pipeline

    try:
        sizes = [int(word) for word in _split_words(args.sizes)]
    except ValueError:
        raise ValueError(
            f"--sizes must be positive integers like 100,1000; got {args.sizes!r}"
        ) from None
    l2 = DEFAULT_L2 if args.l2 is None else args.l2
    tree, ref, reward = examples.demo_problem(
        _split_words(args.tokens), args.horizon, _split_words(args.prompts), seed=args.seed
    )
    print(
        "tinyrlhf pipeline: r -> sampled preferences (Bradley-Terry) -> r_hat (penalized MLE, "
        f"l2 = {l2:g})\n"
        "                   -> pi_hat* = argmax_pi E_pi[r_hat] - beta KL(pi || pi_ref) "
        f"(closed form), beta = {args.beta:g}"
    )
    print(
        f"tree: tokens {list(tree.tokens)}, horizon H = {tree.horizon}, prompts "
        f"{list(tree.prompts)}: {tree.n_leaves:,} leaves\n"
        f"pi_ref: random (seed {args.seed}); r: demo_reward; pairs: two samples of pi_ref per "
        "prompt, nested datasets"
    )
    print()
    start = time.perf_counter()
    result = preference_pipeline(ref, reward, args.beta, sizes, l2=l2, seed=args.seed)
    print(result)
    if not np.isinf(result.sizes[-1]):
        print("(no population row: the tree has too many pairs of leaves)")
    print(f"total wall time {time.perf_counter() - start:.2f} s")
    return 0


def run_bon(args: argparse.Namespace) -> int:
    """Best-of-n vs RLHF at equal KL on the demo problem, then the KL-penalty report."""
    from .best_of_n import best_of_n_curve
    from .kl_penalty import kl_penalty_report

    try:
        ns = [int(word) for word in _split_words(args.n)]
    except ValueError:
        raise ValueError(f"--n must be positive integers like 1,4,16; got {args.n!r}") from None
    tree, ref, reward = examples.demo_problem(
        _split_words(args.tokens), args.horizon, _split_words(args.prompts), seed=args.seed
    )
    start = time.perf_counter()
    curve = best_of_n_curve(ref, reward, ns)
    print("best-of-n from pi_ref under r (exact, ties uniform) vs the RLHF optimum at equal KL")
    print(f"tree: {tree.n_leaves:,} leaves; means over prompts {list(tree.prompts)}")
    header = (
        f"{'n':>8} {'KL(BoN‖ref)':>12} {'log n-(n-1)/n':>14} {'win rate':>9} "
        f"{'E_BoN[r]':>9} {'E_RLHF[r]':>10} {'β(RLHF)':>9}"
    )
    print(header)
    print("-" * len(header))
    for k, n in enumerate(curve.n):
        print(
            f"{n:>8} {curve.kl[k].mean():>12.6f} {curve.kl_bound[k]:>14.6f} "
            f"{curve.win_rate[k].mean():>9.4f} {curve.expected_reward[k].mean():>9.4f} "
            f"{curve.rlhf_expected_score[k].mean():>10.4f} {np.median(curve.rlhf_beta[k]):>9.3g}"
        )
    print()
    print(f"where training with each KL penalty converges (beta = {args.beta:g}):")
    print(kl_penalty_report(ref, reward, args.beta))
    print(f"total wall time {time.perf_counter() - start:.2f} s")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/run.py`` of the source checkout in a fresh interpreter.

    The benchmark lives beside the package, not in it: it carries baselines that are not
    library code (a textbook dict-and-recursion soft VI, the choix comparison, which needs
    the test extra), so this command finds the script next to the package (an editable
    install or a checkout) instead of shipping it. A fresh process also keeps the
    peak-memory measurements free of this process's allocations.
    """
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    if not script.is_file():
        raise ValueError(
            f"the benchmark suite ships with the source checkout and {script} is missing; "
            "clone the repository, pip install -e '.[test]' and run tinyrlhf bench there"
        )
    command = [sys.executable, str(script)]
    if args.quick:
        command.append("--quick")
    if args.output is not None:
        command += ["--output", args.output]
    if args.figure is not None:
        command += ["--figure", args.figure]
    return subprocess.run(command, check=False).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyrlhf",
        description="Exact RLHF on a token tree: preferences, KL-regularized RL, information geometry.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="solve a small problem three ways and check agreement")
    _add_problem_arguments(demo)
    demo.set_defaults(handler=run_demo)
    notebooks = commands.add_parser(
        "notebooks", help="list the classroom notebooks; --execute re-runs them in place"
    )
    notebooks.add_argument(
        "paths", nargs="*", help="notebook files (default: every .ipynb in --dir)"
    )
    notebooks.add_argument(
        "--dir", default="notebooks", help="notebook folder (default: %(default)s)"
    )
    notebooks.add_argument(
        "--execute",
        action="store_true",
        help="re-execute from a fresh kernel and store the outputs in place "
        '(needs the test extra: pip install -e ".[test]")',
    )
    notebooks.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per cell (default: %(default)s)"
    )
    notebooks.set_defaults(handler=run_notebooks)
    figures = commands.add_parser("figures", help="regenerate the figure set as PNGs")
    figures.add_argument("--out", default="figures", help="output folder (default: %(default)s)")
    figures.add_argument(
        "--small", action="store_true", help="a quick, coarse version (for tests)"
    )
    figures.add_argument("--animations", action="store_true", help="also write the GIFs")
    figures.set_defaults(handler=run_figures)
    pipeline = commands.add_parser(
        "pipeline", help="learn a reward from preferences and compare the RLHF policies"
    )
    _add_problem_arguments(pipeline)
    pipeline.add_argument(
        "--sizes",
        default="100,1000,10000,100000",
        help="numbers of sampled pairs, comma-separated (default: %(default)s)",
    )
    pipeline.add_argument(
        "--l2", type=float, default=None, help="ridge coefficient of the fit (default: 1)"
    )
    pipeline.set_defaults(handler=run_pipeline)
    bon = commands.add_parser(
        "bon", help="best-of-n vs RLHF at equal KL; the fixed point of each KL penalty"
    )
    _add_problem_arguments(bon)
    bon.add_argument(
        "--n", default="1,2,4,16,64,256,1024", help="numbers of draws (default: %(default)s)"
    )
    bon.set_defaults(handler=run_bon)
    bench = commands.add_parser(
        "bench", help="time the exact solvers against the unavoidable work (benchmarks/)"
    )
    bench.add_argument(
        "--quick", action="store_true", help="smaller sizes, well under a minute, print only"
    )
    bench.add_argument(
        "--output", default=None, help="results file (default: benchmarks/results.md, full run)"
    )
    bench.add_argument(
        "--figure",
        default=None,
        help="scaling plot (default: benchmarks/scaling.png, full run)",
    )
    bench.set_defaults(handler=run_bench)
    add_docs_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError) as error:
        print(f"tinyrlhf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
