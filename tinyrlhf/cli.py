"""The ``tinyrlhf`` command line (also ``python -m tinyrlhf``).

Subcommands:
    demo      solve a small RLHF problem several ways and show that the solutions agree
    notebooks list the classroom notebooks; --execute re-runs them in place (authors)
    figures   regenerate the figure set (PNGs) in --out (default figures/)
    pipeline  true reward -> preferences -> Bradley-Terry fit -> RLHF policy, vs dataset size
    bon       best-of-n against RLHF at equal KL, and where each KL penalty trains to
    bench     time the exact solvers against the unavoidable work (runs benchmarks/run.py)
    docs      build the documentation site into --out (needs the docs extra)

Every argument is checked before anything is printed (checks that need several flags, such
as ``--beta`` against the reward or the tree against the memory budget, run in each
subcommand's ``prepare`` step); an argument error is reported as argparse reports one, the
usage and then one line naming the flag (exit status 2); Ctrl-C stops with one line (exit status 130), and a closed pipe
(``tinyrlhf demo | head -1``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import numpy as np

from . import __version__, examples
from .agreement import check_agreement
from .docsite import add_command as add_docs_command
from .solvers import (
    DivergenceWarning,
    PolicyGradientWarning,
    Solution,
    closed_form,
    policy_gradient,
    soft_value_iteration,
)
from .validation import MAX_REWARD_OVER_BETA, check_problem

#: Demo solvers in the order they run (cheap ones first), by their ``--methods`` names.
DEMO_METHODS = ("closed_form", "soft_vi", "natural", "exact", "reinforce", "ppo")
#: The labels the demo prints (``Solution.method``), also accepted by ``--methods``.
METHOD_LABELS = {
    "closed_form": "closed_form",
    "soft_vi": "soft_value_iteration",
    **{name: f"policy_gradient[{name}]" for name in ("natural", "exact", "reinforce", "ppo")},
}
#: ``--methods`` spellings: the canonical names and the printed labels.
METHOD_ALIASES = {
    **{name: name for name in DEMO_METHODS},
    **{label: name for name, label in METHOD_LABELS.items()},
}
#: Largest ``--n`` (best-of-n draws): the exact formulas take n as a 64-bit integer.
MAX_DRAWS = 10**18
#: Seconds a solver may run before a progress line appears on stderr.
PROGRESS_AFTER = 1.0
#: Exit status after Ctrl-C (128 + SIGINT, the shell's convention).
EXIT_INTERRUPTED = 130
#: Exit status when stdout is closed early (128 + SIGPIPE, as if killed by the signal).
EXIT_BROKEN_PIPE = 141


# ------------------------------------------------------------------------ argument types
def _split_words(text: str) -> list[str]:
    """``"a,b,c"`` or ``"a b c"`` -> ``["a", "b", "c"]``."""
    return [word for word in text.replace(",", " ").split() if word]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse names the flag on error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _number(text: str) -> float:
    """``float(text)``, or the argparse error that names the flag."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def _positive_float(text: str) -> float:
    """An argparse type: a finite, positive, normal float (``1/x`` and ``r/x`` stay finite)."""
    value = _number(text)
    tiny = np.finfo(np.float64).tiny  # smallest normal float64, about 2.2e-308
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {text}")
    if value < tiny:
        raise argparse.ArgumentTypeError(
            f"must be at least {tiny:.3g} (a normal float64; 1/beta overflows below), got {text}"
        )
    return value


def _methods(text: str) -> list[str]:
    """An argparse type: comma-separated demo methods (or ``all``), run in cheap-first order.

    Each method may be given by its name (``soft_vi``) or by the label the demo prints
    (``soft_value_iteration``, ``policy_gradient[natural]``).
    """
    words = _split_words(text)
    if words == ["all"]:
        return list(DEMO_METHODS)
    unknown = [word for word in words if word not in METHOD_ALIASES]
    if unknown or not words:
        raise argparse.ArgumentTypeError(
            f"unknown method(s) {unknown or text!r}; choose from {','.join(DEMO_METHODS)} or all"
        )
    chosen = {METHOD_ALIASES[word] for word in words}
    return [method for method in DEMO_METHODS if method in chosen]


def _names(kind: str, example: str) -> Callable[[str], list[str]]:
    """An argparse type: a non-empty list of distinct names, comma- or space-separated."""

    def parse(text: str) -> list[str]:
        words = _split_words(text)
        if not words:
            raise argparse.ArgumentTypeError(
                f"needs at least one {kind}, got {text!r}; e.g. {example}"
            )
        repeated = sorted({word for word in words if words.count(word) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(
                f"{kind}s must be distinct; {', '.join(map(repr, repeated))} appear(s) more "
                f"than once in {text!r}"
            )
        return words

    parse.__name__ = f"list of {kind}s"
    return parse


def _counts(example: str, maximum: int | None = None) -> Callable[[str], list[int]]:
    """An argparse type: a non-empty list of integers >= 1 (<= ``maximum``), comma-separated."""

    def parse(text: str) -> list[int]:
        words = _split_words(text)
        try:
            values = [int(word) for word in words]
        except ValueError:
            values = []
        bad = [value for value in values if value < 1 or (maximum and value > maximum)]
        if not values or bad:
            bound = f" up to {maximum:.0e}" if maximum else ""
            raise argparse.ArgumentTypeError(
                f"must be positive integers{bound}, comma-separated like {example}; got {text!r}"
            )
        return values

    parse.__name__ = "list of integers"
    return parse


def _nonnegative_float(text: str) -> float:
    """An argparse type: a finite float >= 0."""
    value = _number(text)
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be finite and >= 0, got {text}")
    return value


class FlagError(ValueError):
    """An argument found wrong after parsing (it needs the other flags); names its flag."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"argument {flag}: {message}")


def _add_problem_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tokens",
        type=_names("token", "--tokens a,b,c"),
        default=",".join(examples.DEMO_TOKENS),
        help="token alphabet, comma- or space-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--horizon",
        type=_int_at_least(1),
        default=examples.DEMO_HORIZON,
        help="maximum generation length H (default: %(default)s)",
    )
    parser.add_argument(
        "--prompts",
        type=_names("prompt", "--prompts p or --prompts 'x,y'"),
        default=",".join(examples.DEMO_PROMPTS),
        help="prompts, comma- or space-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--beta",
        type=_positive_float,
        default=examples.DEMO_BETA,
        help="KL coefficient beta > 0 (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=_int_at_least(0),
        default=0,
        help="seed of the random reference policy, >= 0 (default: %(default)s)",
    )


def _prepare_problem(args: argparse.Namespace) -> None:
    """Build the problem of the flags into ``args.problem``, checked before anything is printed.

    Raises:
        FlagError: the tree does not fit in memory (``--horizon``), or ``--beta`` is too small
            for the demo reward (``reward / beta`` overflows float64).
    """
    try:
        tree, ref, reward = examples.demo_problem(
            args.tokens, args.horizon, args.prompts, seed=args.seed
        )
    except (ValueError, MemoryError) as error:  # the memory budget of the tree
        raise FlagError("--horizon", str(error)) from None
    try:
        check_problem(ref, reward, args.beta)
    except ValueError:
        largest = float(np.abs(reward).max())
        raise FlagError(
            "--beta",
            f"{args.beta:g} is too small for the demo reward (max |reward| = {largest:.3g}): "
            f"reward / beta overflows float64; use --beta {largest / MAX_REWARD_OVER_BETA:.3g} "
            "or larger",
        ) from None
    if len(args.tokens) == 1:
        print(
            f"tinyrlhf {args.command}: warning: --tokens {','.join(args.tokens)!r} is a one-token "
            f"alphabet {args.tokens}: "
            "every generation is the same; give two or more tokens, e.g. --tokens a,b",
            file=sys.stderr,
        )
    args.problem = tree, ref, reward


# --------------------------------------------------------------------------------- demo
@contextmanager
def _progress(label: str) -> Iterator[None]:
    """Show ``label`` and the seconds elapsed on stderr while the block runs past
    :data:`PROGRESS_AFTER` seconds (a line redrawn in place on a terminal, one line
    otherwise); the line is cleared when the block ends."""
    done = threading.Event()
    tty = sys.stderr.isatty()
    shown: list[str] = []

    def report() -> None:
        start = time.perf_counter()
        if done.wait(PROGRESS_AFTER):
            return
        while True:
            text = f"  ... {label}: {time.perf_counter() - start:.0f} s"
            if tty:
                sys.stderr.write("\r" + text)
            elif not shown:
                sys.stderr.write(text + " (still running)\n")
            sys.stderr.flush()
            shown.append(text)
            if done.wait(1.0):
                return

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        if tty and shown:
            sys.stderr.write("\r" + " " * len(shown[-1]) + "\r")
            sys.stderr.flush()


def _solve(method: str, ref, reward: np.ndarray, args: argparse.Namespace):
    """Run one demo method; returns the solution and its warnings, as notes for the CLI."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if method == "closed_form":
            solution = closed_form(ref, reward, args.beta)
        elif method == "soft_vi":
            solution = soft_value_iteration(ref, reward, args.beta)
        else:
            solution = policy_gradient(
                ref,
                reward,
                args.beta,
                method=method,
                seed=args.seed,
                steps=args.steps,
                tol=args.tol,
            )
    return solution, [_cli_note(warning, method) for warning in caught]


def _cli_note(warning: warnings.WarningMessage, method: str) -> str:
    """A solver's warning with its advice in flags (``--steps``, not ``steps``).

    The library's advice names keyword arguments; the demo's reader has flags, so the
    advice after the verdict is replaced by what they can type.
    """
    text = str(warning.message)
    other = "" if method == "natural" else ", or use --methods natural"
    if issubclass(warning.category, DivergenceWarning):
        head, lower_lr, _ = text.partition("; lower lr")
        if lower_lr:  # the demo has no --lr: the natural gradient needs none
            return f"{head}; use --methods natural (no learning rate to tune)"
    elif issubclass(warning.category, PolicyGradientWarning):
        head, verdict, _ = text.partition("not certified optimal")
        if verdict:
            return f"{head}{verdict}; raise --steps or --tol{other}"
    return text


def _print_solution(solution: Solution, notes: list[str]) -> None:
    assert solution.wall_time is not None  # every solver times itself
    print(f"[{solution.method}]  ({solution.wall_time * 1e3:.1f} ms)")
    if solution.log_partition is not None:
        print(f"  log Z(s0)         = {solution.log_partition}")
        print(f"  lambda*           = {solution.lagrange_multiplier}  (beta (1 - log Z))")
    if solution.history is not None:
        print(
            f"  steps             = {solution.steps_taken}, converged = "
            f"{solution.converged} (TV bound {solution.residual:.2g}, tol {solution.tolerance:g})"
        )
    print(f"  objective J(pi)   = {solution.objective()}")
    print(f"  KL(pi || pi_ref)  = {solution.kl()}")
    print(f"  E_pi[r]           = {solution.expected_reward()}")
    if solution.history is not None and solution.steps_taken == 0 and solution.converged:
        print(
            "  the reference is already within tol of the optimum: "
            f"TV bound {solution.residual:.2g} <= tol {solution.tolerance:g}, so no step was taken"
        )
    for note in notes:
        print(f"  note: {note}")
    sys.stdout.flush()


def _print_demo_header(args: argparse.Namespace, tree) -> None:
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
    print(flush=True)


def _print_demo_summary(solutions: list[Solution], args: argparse.Namespace) -> None:
    if len(solutions) >= 2:
        print()
        print(_agreement_heading(solutions))
        print(check_agreement(*solutions))
    by_method = {solution.method: solution for solution in solutions}
    closed, soft = by_method.get("closed_form"), by_method.get("soft_value_iteration")
    if closed is not None and soft is not None:
        # both solvers always set these
        assert soft.values is not None and closed.log_partition is not None
        gap = np.max(np.abs(soft.values[0] - args.beta * closed.log_partition))
        print()
        print(f"V_0 = beta log Z: max |V_0 - beta log Z| = {gap:.2e}")
    exact = by_method.get("policy_gradient[exact]")
    if exact is not None and not exact.converged:
        print(
            "note: plain (exact) gradient ascent is slow at deep, rarely visited states because "
            "the\n      gradient carries the occupancy d_pi(s); the natural gradient divides it "
            "out and,\n      with step 1/beta, is soft policy iteration: exact after at most H "
            "iterations."
        )


def _agreement_heading(solutions: list[Solution]) -> str:
    """The sentence above the agreement table, true of the solvers that actually ran.

    Iterative solvers (those with a history) stop at their tolerance, not at float
    precision; the heading says so only when some ran, and names those that stopped short
    of their tolerance (``converged`` False).
    """
    iterative = [solution.method for solution in solutions if solution.history is not None]
    short = [
        solution.method
        for solution in solutions
        if solution.history is not None and not solution.converged
    ]
    converged = [method for method in iterative if method not in short]
    heading = f"agreement with {solutions[0].method}"
    lines = []
    if converged:
        lines.append(f"  {', '.join(converged)}: stopped within tolerance (TV bound <= tol),")
        lines.append("    so they agree to that tolerance, not necessarily to float precision")
    if short:
        lines.append(f"  {', '.join(short)}: stopped SHORT of tolerance (converged = False),")
        lines.append("    so differences there include the unfinished optimisation")
    if not lines:
        return heading + " (exact solvers: they agree to float precision):"
    return "\n".join([heading + ":", *lines])


def run_demo(args: argparse.Namespace) -> int:
    """Solve the demo problem by each of ``--methods``, printing each as it finishes."""
    np.set_printoptions(precision=6, suppress=True)
    tree, ref, reward = args.problem
    _print_demo_header(args, tree)
    start = time.perf_counter()
    solutions = []
    for method in args.methods:
        with _progress(f"running {method}"):
            solution, notes = _solve(method, ref, reward, args)
        _print_solution(solution, notes)
        solutions.append(solution)
    _print_demo_summary(solutions, args)
    print(f"total wall time {time.perf_counter() - start:.2f} s")
    return 0


# ------------------------------------------------------------------------- other commands
def run_notebooks(args: argparse.Namespace) -> int:
    """List the classroom notebooks, or re-execute them in place with ``--execute``."""
    from . import notebooks

    paths = args.notebook_paths
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
    total = 0.0
    for path in paths:
        print(f"executing {path} ...", end=" ", flush=True)
        start = time.perf_counter()
        try:
            notebooks.execute_notebook(path, timeout=args.timeout)
        except Exception as error:  # a failing cell: report it, keep the stored notebook
            print("FAILED")
            print(f"tinyrlhf notebooks: {path} failed (not written):\n{error}", file=sys.stderr)
            return 1
        seconds = time.perf_counter() - start
        total += seconds
        print(f"{seconds:.1f} s")
    print(f"executed {len(paths)} notebook(s) in {total:.1f} s; outputs stored in place")
    return 0


def _prepare_notebooks(args: argparse.Namespace) -> None:
    """Find the notebooks (and, for ``--execute``, the test extra) before anything is printed."""
    from . import notebooks

    try:
        args.notebook_paths = notebooks.find_notebooks(args.paths, args.dir)
    except ValueError as error:
        raise FlagError("paths" if args.paths else "--dir", str(error)) from None
    if args.execute:
        try:
            notebooks._require_extra()
        except ImportError as error:
            raise FlagError("--execute", str(error)) from None


def check_folder(path: str | os.PathLike, flag: str) -> Path:
    """Create (if missing) and check the output folder given by ``flag``.

    The check of :func:`tinyrlhf.figures.make_figures` (creatable, writable), reported
    against the flag; shared by ``figures --out``, ``docs --out`` and the benchmark's files.

    Raises:
        FlagError: ``path`` cannot be created (e.g. it is an existing file, or under one)
            or is not writable.
    """
    from .figures import _check_out_dir

    try:
        return _check_out_dir(path)
    except ValueError as error:
        raise FlagError(flag, str(error).replace("out_dir", "folder", 1)) from None


def check_output_file(
    path: str | os.PathLike, flag: str, suffixes: Sequence[str] | None = None
) -> Path:
    """Check, before any work, that a result can be written to the file ``path`` of ``flag``.

    Its folder is created and checked by :func:`check_folder`; ``path`` itself must not be a
    folder, must be writable if it exists, and (when ``suffixes`` is given, e.g. the image
    formats matplotlib writes) must end in one of ``suffixes``.

    Raises:
        FlagError: naming ``flag``, with what to do instead.
    """
    path = Path(path)
    if path.is_dir():
        raise FlagError(flag, f"{str(path)!r} is a folder; give a file name inside it")
    if suffixes is not None and path.suffix.lower().lstrip(".") not in suffixes:
        raise FlagError(
            flag,
            f"{str(path)!r} must end in a format matplotlib writes, e.g. .png "
            f"(one of {', '.join('.' + suffix for suffix in sorted(suffixes))})",
        )
    check_folder(path.parent, flag)
    if path.exists() and not os.access(path, os.W_OK):
        raise FlagError(flag, f"{str(path)!r} is not writable; choose another file")
    return path


def image_suffixes() -> list[str]:
    """The file extensions matplotlib can save a figure as (``png``, ``pdf``, ``svg``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return list(FigureCanvasBase.get_supported_filetypes())


def _prepare_figures(args: argparse.Namespace) -> None:
    """Create (and check) the output folder before anything is drawn."""
    check_folder(args.out, "--out")


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

    sizes = args.sizes
    l2 = DEFAULT_L2 if args.l2 is None else args.l2
    tree, ref, reward = args.problem
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


def _prepare_pipeline(args: argparse.Namespace) -> None:
    """The problem and the largest dataset, checked against the memory budget up front."""
    from .preferences import check_pair_count

    _prepare_problem(args)
    try:
        check_pair_count(max(args.sizes), "max(--sizes)")
    except ValueError as error:
        raise FlagError("--sizes", str(error)) from None


def run_bon(args: argparse.Namespace) -> int:
    """Best-of-n vs RLHF at equal KL on the demo problem, then the KL-penalty report."""
    from .best_of_n import best_of_n_curve
    from .kl_penalty import kl_penalty_report

    ns = args.n
    tree, ref, reward = args.problem
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


def _missing_benchmark_dependencies() -> list[str]:
    """Optional packages ``benchmarks/run.py`` imports (the test extra) that are missing."""
    return [name for name in ("choix",) if importlib.util.find_spec(name) is None]


def run_bench(args: argparse.Namespace) -> int:
    """Run ``benchmarks/run.py`` of the source checkout in a fresh interpreter.

    The benchmark lives beside the package, not in it: it carries baselines that are not
    library code (a textbook dict-and-recursion soft VI, the choix comparison, which needs
    the test extra), so this command finds the script next to the package (an editable
    install or a checkout) instead of shipping it. A fresh process also keeps the
    peak-memory measurements free of this process's allocations. Missing optional
    dependencies are reported before anything runs.
    """
    import subprocess

    command = [sys.executable, str(_benchmark_script())]
    if args.quick:
        command.append("--quick")
    if args.output is not None:
        command += ["--output", args.output]
    if args.figure is not None:
        command += ["--figure", args.figure]
    return subprocess.run(command, check=False).returncode


def _benchmark_script() -> Path:
    return Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def _prepare_bench(args: argparse.Namespace) -> None:
    """The benchmark script and its optional dependencies, checked before it starts."""
    script = _benchmark_script()
    if not script.is_file():
        raise ValueError(
            f"the benchmark suite ships with the source checkout and {script} is missing; "
            "clone the repository, pip install -e '.[test]' and run tinyrlhf bench there"
        )
    missing = _missing_benchmark_dependencies()
    if missing:
        raise ValueError(
            f"the benchmark needs {', '.join(missing)} (the Bradley-Terry comparison), which is "
            "not installed: pip install -e '.[test]' (or pip install choix)"
        )
    if args.output is not None:  # benchmarks/run.py checks again, for direct runs
        check_output_file(args.output, "--output")
    if args.figure is not None:
        check_output_file(args.figure, "--figure", image_suffixes())


# ------------------------------------------------------------------------------- parser
def _add_demo_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo", help="solve a small problem several ways and check that they agree"
    )
    _add_problem_arguments(demo)
    demo.add_argument(
        "--methods",
        type=_methods,
        default=list(DEMO_METHODS),
        help="comma-separated solvers, run cheap ones first: "
        f"{','.join(DEMO_METHODS)} (default: all)",
    )
    demo.add_argument(
        "--steps",
        type=_int_at_least(0),
        default=None,
        help="most iterations of the policy-gradient methods (default: each method's own, "
        "scaled with the tree)",
    )
    demo.add_argument(
        "--tol",
        type=_positive_float,
        default=None,
        help="tolerance on the policy-gradient methods' certified total-variation bound "
        "(default: each method's own)",
    )
    demo.set_defaults(handler=run_demo, prepare=_prepare_problem, subparser=demo)


def _add_notebooks_parser(commands: argparse._SubParsersAction) -> None:
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
        "--timeout",
        type=_positive_float,
        default=600.0,
        help="seconds per cell (default: %(default)s)",
    )
    notebooks.set_defaults(handler=run_notebooks, prepare=_prepare_notebooks, subparser=notebooks)


def _add_figures_parser(commands: argparse._SubParsersAction) -> None:
    figures = commands.add_parser("figures", help="regenerate the figure set as PNGs")
    figures.add_argument("--out", default="figures", help="output folder (default: %(default)s)")
    figures.add_argument(
        "--small", action="store_true", help="a quick, coarse version (for tests)"
    )
    figures.add_argument("--animations", action="store_true", help="also write the GIFs")
    figures.set_defaults(handler=run_figures, prepare=_prepare_figures, subparser=figures)


def _add_pipeline_parser(commands: argparse._SubParsersAction) -> None:
    pipeline = commands.add_parser(
        "pipeline", help="learn a reward from preferences and compare the RLHF policies"
    )
    _add_problem_arguments(pipeline)
    pipeline.add_argument(
        "--sizes",
        type=_counts("100,1000"),
        default="100,1000,10000,100000",
        help="numbers of sampled pairs, comma-separated (default: %(default)s)",
    )
    pipeline.add_argument(
        "--l2",
        type=_nonnegative_float,
        default=None,
        help="ridge coefficient of the fit, >= 0 (default: 1)",
    )
    pipeline.set_defaults(handler=run_pipeline, prepare=_prepare_pipeline, subparser=pipeline)


def _add_bon_parser(commands: argparse._SubParsersAction) -> None:
    bon = commands.add_parser(
        "bon", help="best-of-n vs RLHF at equal KL; the fixed point of each KL penalty"
    )
    _add_problem_arguments(bon)
    bon.add_argument(
        "--n",
        type=_counts("1,4,16", MAX_DRAWS),
        default="1,2,4,16,64,256,1024",
        help="numbers of draws, comma-separated (default: %(default)s)",
    )
    bon.set_defaults(handler=run_bon, prepare=_prepare_problem, subparser=bon)


def _add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench", help="time the exact solvers against the unavoidable work (benchmarks/)"
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, print only: well under a minute of CPU time (the full run takes "
        "minutes)",
    )
    bench.add_argument(
        "--output", default=None, help="results file (default: benchmarks/results.md, full run)"
    )
    bench.add_argument(
        "--figure",
        default=None,
        help="scaling plot (default: benchmarks/scaling.png, full run)",
    )
    bench.set_defaults(handler=run_bench, prepare=_prepare_bench, subparser=bench)


def build_parser() -> argparse.ArgumentParser:
    """The ``tinyrlhf`` argument parser: one subcommand per job (demo, notebooks, figures,
    pipeline, bon, bench, docs), each with its flags and its ``handler``."""
    parser = argparse.ArgumentParser(
        prog="tinyrlhf",
        description="Exact RLHF on a token tree: preferences, KL-regularized RL, information geometry.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_subcommand in (
        _add_demo_parser,
        _add_notebooks_parser,
        _add_figures_parser,
        _add_pipeline_parser,
        _add_bon_parser,
        _add_bench_parser,
        add_docs_command,
    ):
        add_subcommand(commands)
    return parser


def _check_environment() -> None:
    """Refuse an unusable ``TINYRLHF_MEMORY_LIMIT`` before any work (one line, not a traceback)."""
    from . import memory

    text = os.environ.get(memory.ENV_VAR)
    if not text:
        return
    shown = text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"
    try:
        memory.memory_budget()
    except OverflowError:
        raise ValueError(
            f"{memory.ENV_VAR}={shown} is too large to be a number of bytes; "
            f"unset it or use a size like {memory.ENV_VAR}=2G"
        ) from None


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the exit flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Report ``message`` as argparse reports a bad argument (usage, then one line); 2."""
    try:
        parser.error(message)
    except SystemExit as exit_request:
        return int(cast(int, exit_request.code))  # argparse exits with status 2
    return 2  # pragma: no cover  (argparse.error always exits)


def _no_command_error(parser: argparse.ArgumentParser, unknown: Sequence[str]) -> str:
    """The error line of a command line without a command: the stray arguments, or the
    commands to choose from."""
    if unknown:
        return f"unrecognized arguments: {' '.join(unknown)}"
    (commands,) = [
        action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
    ]
    return f"choose a command: {', '.join(commands.choices)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (argparse's own 0 or 2 included)."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as exit_request:  # --help, --version, or an argument error (printed)
        return int(exit_request.code or 0)
    if getattr(args, "handler", None) is None:  # no command: the help, then the error line
        parser.print_help(sys.stderr)
        print(f"\n{parser.prog}: error: {_no_command_error(parser, unknown)}", file=sys.stderr)
        return 2
    if unknown:  # reported with the usage of the subcommand they were given to
        return _usage_error(args.subparser, f"unrecognized arguments: {' '.join(unknown)}")
    try:
        _check_environment()
        if getattr(args, "prepare", None) is not None:
            args.prepare(args)  # every check that needs several flags: before any output
    except FlagError as error:
        return _usage_error(args.subparser, str(error))
    except (ValueError, TypeError, OverflowError, MemoryError) as error:
        print(f"tinyrlhf {args.command}: error: {error}", file=sys.stderr)
        return 2
    try:
        return int(args.handler(args) or 0)
    except (ValueError, TypeError, OverflowError, MemoryError) as error:
        print(f"tinyrlhf {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntinyrlhf {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
