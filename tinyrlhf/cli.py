"""The ``tinyrlhf`` command line (also ``python -m tinyrlhf``).

Subcommands:
    demo      solve a small RLHF problem three ways and show that the solutions agree
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import examples
from .agreement import check_agreement
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyrlhf",
        description="Exact RLHF on a token tree: preferences, KL-regularized RL, information geometry.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="solve a small problem three ways and check agreement")
    _add_problem_arguments(demo)
    demo.set_defaults(handler=run_demo)
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
