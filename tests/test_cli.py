"""The command line: `tinyrlhf demo` and `python -m tinyrlhf`, its errors, progress and exits."""

import io
import os
import re
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf import cli
from tinyrlhf.cli import main
from tinyrlhf.examples import demo_problem


def _table_rows(out):
    """``{method: objective}`` from the printed agreement table."""
    rows = re.findall(
        r"^(closed_form|soft_value_iteration|policy_gradient\[\w+\])\s+(\S+)", out, re.M
    )
    return {method: float(value) for method, value in rows}


def test_demo_prints_agreeing_solutions(capsys):
    assert main(["demo", "--horizon", "3", "--beta", "0.5"]) == 0
    out = capsys.readouterr().out
    for method in cli.DEMO_METHODS[:4]:
        assert method.replace("soft_vi", "soft_value_iteration") in out
    # The printed log Z is the one the library computes for the same problem.
    tree, ref, reward = demo_problem(horizon=3)
    log_z = tr.closed_form(ref, reward, 0.5).log_partition
    printed = re.search(r"log Z\(s0\)\s+=\s+\[([^\]]+)\]", out).group(1).split()
    np.testing.assert_allclose([float(x) for x in printed], log_z, atol=1e-6)
    # every method's objective in the table is at most the optimum beta log Z (mean)
    optimum = 0.5 * log_z.mean()
    rows = _table_rows(out)
    assert len(rows) == 6 and all(value <= optimum + 1e-9 for value in rows.values())


def test_demo_at_large_beta_prints_nothing_absurd(capsys):
    # issue 10: at beta = 100 PPO and REINFORCE printed -294 and -519 (optimum 0.327)
    assert main(["demo", "--beta", "100"]) == 0
    out = capsys.readouterr().out
    tree, ref, reward = demo_problem()
    start = tr.objective(ref, ref, reward, 100.0).mean()
    optimum = tr.closed_form(ref, reward, 100.0).objective().mean()
    rows = _table_rows(out)
    assert len(rows) == 6
    for method, value in rows.items():
        assert start - 1e-9 <= value <= optimum + 1e-9, method  # printed to 10 decimals
    assert "diverged" not in out


def test_methods_flag_selects_and_orders_the_solvers(capsys):
    assert main(["demo", "--methods", "natural,closed_form", "--horizon", "2"]) == 0
    out = capsys.readouterr().out
    assert out.index("[closed_form]") < out.index("[policy_gradient[natural]]")  # cheap first
    assert "soft_value_iteration" not in out and "[policy_gradient[exact]]" not in out
    assert main(["demo", "--methods", "closed_form"]) == 0  # one method: no table
    assert "agreement" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "flag", "not_in"),
    [
        (["--seed", "-1"], "--seed", None),
        (["--beta", "1e-320"], "--beta", "lr"),
        (["--beta", "-1"], "--beta", None),
        (["--beta", "nan"], "--beta", None),
        (["--horizon", "0"], "--horizon", None),
        (["--horizon", "two"], "--horizon", None),
        (["--methods", "adam"], "--methods", None),
    ],
)
def test_argument_errors_name_the_flag_before_any_output(capsys, argv, flag, not_in):
    assert main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # the header never appears
    assert flag in captured.err and "Traceback" not in captured.err
    if not_in is not None:
        assert not_in not in captured.err


def test_problem_errors_come_before_the_header(capsys):
    assert main(["demo", "--tokens", "a,a"]) == 2
    captured = capsys.readouterr()
    assert "distinct" in captured.err and captured.out == ""


def test_one_token_alphabet_warns(capsys):
    # `--tokens 2` means the alphabet ['2'], not two tokens
    assert main(["demo", "--tokens", "2", "--methods", "closed_form,natural"]) == 0
    captured = capsys.readouterr()
    assert "one-token alphabet" in captured.err and "['2']" in captured.err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"tinyrlhf {tr.__version__}"


def test_solvers_print_as_each_finishes(monkeypatch):
    # each solver's block is flushed before the next solver starts
    flushed = []

    class RecordingStdout(io.StringIO):
        def flush(self):
            flushed.append(self.getvalue())

    seen_when_starting = {}
    solve = cli._solve

    def spy(method, *args):
        seen_when_starting[method] = flushed[-1] if flushed else ""
        return solve(method, *args)

    monkeypatch.setattr(sys, "stdout", RecordingStdout())
    monkeypatch.setattr(cli, "_solve", spy)
    assert main(["demo", "--methods", "closed_form,soft_vi,natural", "--horizon", "2"]) == 0
    assert "tinyrlhf demo" in seen_when_starting["closed_form"]
    assert "[closed_form]" in seen_when_starting["soft_vi"]
    assert "[soft_value_iteration]" in seen_when_starting["natural"]


def test_a_long_solver_shows_a_progress_line(monkeypatch, capsys):
    monkeypatch.setattr(cli, "PROGRESS_AFTER", 0.0)
    solve = cli._solve

    def slow(method, *args):
        # wait (at most 10 s) until the progress thread has written its line
        for _ in range(1000):
            if "running" in sys.stderr.getvalue():
                break
            threading.Event().wait(0.01)
        return solve(method, *args)

    monkeypatch.setattr(cli, "_solve", slow)
    assert main(["demo", "--methods", "closed_form", "--horizon", "2"]) == 0
    err = capsys.readouterr().err
    assert "running closed_form" in err


def test_huge_memory_limit_is_one_clear_line(monkeypatch, capsys):
    monkeypatch.setenv("TINYRLHF_MEMORY_LIMIT", "9" * 400)
    assert main(["demo", "--horizon", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "TINYRLHF_MEMORY_LIMIT" in lines[0] and len(lines[0]) < 300


def test_bench_checks_optional_dependencies_first(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_missing_benchmark_dependencies", lambda: ["choix"])

    def never(*args, **kwargs):
        raise AssertionError("the benchmark must not start without its dependencies")

    monkeypatch.setattr(subprocess, "run", never)
    assert main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "choix" in err and "pip install" in err


def _default_sigint():
    # a shell without job control starts background jobs with SIGINT ignored, and a child
    # inherits that: Python then installs no KeyboardInterrupt handler and Ctrl-C does
    # nothing. The demo's own handling is what is tested, so the child starts with the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _demo_process(*argv):
    return subprocess.Popen(
        [sys.executable, "-m", "tinyrlhf", "demo", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "0"},
        preexec_fn=_default_sigint,
    )


def test_broken_pipe_ends_quietly():
    # `tinyrlhf demo | head -1`: the reader goes away after one line
    with _demo_process("--methods", "closed_form,exact,reinforce") as process:
        first = process.stdout.readline()
        process.stdout.close()
        err = process.stderr.read()
        process.wait(timeout=120)
    assert first.startswith("tinyrlhf demo")
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert process.returncode in (0, cli.EXIT_BROKEN_PIPE)


def test_ctrl_c_exits_130_with_one_line():
    # a REINFORCE run that cannot certify (tol 1e-300) within a million steps runs for
    # minutes; SIGINT is sent once its progress line says it is still running, so the signal
    # lands inside a solver however fast the machine is
    argv = ("--methods", "reinforce", "--steps", "1000000", "--tol", "1e-300")
    with _demo_process(*argv) as process:
        try:
            assert process.stdout.readline().startswith("tinyrlhf demo")
            progress = process.stderr.readline()
            assert "(still running)" in progress, progress
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=120)
        finally:  # never leave a minutes-long run behind a failed assertion
            process.kill()
    assert process.returncode == cli.EXIT_INTERRUPTED
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()][-1].endswith("interrupted")


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "tinyrlhf", "demo", "--horizon", "2", "--prompts", "p"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "agreement with closed_form" in result.stdout


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["demo", "--beta", "1e-300"], "--beta"),  # valid float, too small for the reward
        (["demo", "--tokens", ""], "--tokens"),
        (["demo", "--prompts", ""], "--prompts"),
        (["demo", "--prompts", "p,p"], "--prompts"),
        (["demo", "--horizon", "60"], "--horizon"),  # 3^60 leaves: over any memory budget
        (["pipeline", "--sizes", "0"], "--sizes"),
        (["pipeline", "--sizes", ""], "--sizes"),
        (["pipeline", "--sizes", "10000000000000"], "--sizes"),  # memory budget of the pairs
        (["pipeline", "--l2", "-1"], "--l2"),
        (["pipeline", "--beta", "1e-300"], "--beta"),
        (["bon", "--n", "0"], "--n"),
        (["bon", "--n", ""], "--n"),
        (["bon", "--n", str(10**20)], "--n"),
        (["bon", "--horizon", "60"], "--horizon"),
        (["notebooks", "--dir", "no-such-folder"], "--dir"),
        (["notebooks", "--timeout", "0"], "--timeout"),
    ],
)
def test_every_argument_error_comes_before_output_and_names_the_flag(capsys, argv, flag):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"tinyrlhf {argv[0]}: error: argument {flag}: "), last
    # no Python-internal names or advice
    assert "Traceback" not in captured.err
    for internal in ("ns must", "sizes[i]", "('',)", "tokens must hold", "beta="):
        assert internal not in last


def test_figures_out_that_is_a_file_is_refused_before_drawing(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["figures", "--out", str(blocker / "sub"), "--small"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "argument --out:" in captured.err


def test_printed_method_labels_are_accepted_as_aliases(capsys):
    argv = ["demo", "--horizon", "2", "--methods"]
    assert main([*argv, "soft_value_iteration,policy_gradient[natural]"]) == 0
    by_label = capsys.readouterr().out
    assert main([*argv, "soft_vi,natural"]) == 0
    by_name = capsys.readouterr().out
    headers = lambda text: re.findall(r"^\[(.+)\]  \(", text, re.M)  # noqa: E731
    assert (
        headers(by_label)
        == headers(by_name)
        == ["soft_value_iteration", "policy_gradient[natural]"]
    )
    assert _table_rows(by_label) == _table_rows(by_name)  # same solvers, same objectives
    assert "[soft_value_iteration]" in by_label and "[policy_gradient[natural]]" in by_label
    # help lists the canonical names
    parser = cli.build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    assert ",".join(cli.DEMO_METHODS) in " ".join(demo.format_help().split())


def test_agreement_heading_follows_what_ran(capsys):
    # exact solvers only: no sentence about sampled methods or tolerances
    assert main(["demo", "--methods", "closed_form,soft_vi", "--horizon", "2"]) == 0
    out = capsys.readouterr().out
    assert "REINFORCE" not in out and "tolerance" not in out and "float precision" in out
    # natural converges: it is named as within tolerance, nothing stopped short
    assert main(["demo", "--methods", "closed_form,natural", "--horizon", "2"]) == 0
    out = capsys.readouterr().out
    assert "policy_gradient[natural]: stopped within tolerance" in out
    assert "SHORT" not in out and "plain (exact) gradient ascent is slow" not in out


def test_unconverged_methods_are_named_and_the_slow_note_appears(capsys):
    # {a, b}^16: 65,536 leaves per prompt; plain gradient ascent stops on its step budget
    # (converged = False; its warning is printed as a note, not raised)
    argv = ["demo", "--tokens", "a,b", "--horizon", "16", "--methods", "closed_form,exact"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "converged = False" in out  # the premise of this test
    assert "policy_gradient[exact]: stopped SHORT of tolerance" in out
    assert "stopped within tolerance" not in out
    assert "plain (exact) gradient ascent is slow" in out


def test_large_beta_explains_zero_steps(capsys):
    # at beta = 100 pi_ref is already within REINFORCE's tolerance of the optimum
    assert main(["demo", "--beta", "100"]) == 0
    out = capsys.readouterr().out
    blocks = {
        m.group(1): m.group(2) for m in re.finditer(r"^\[(\S+)\].*\n((?:  .*\n)+)", out, re.M)
    }
    for method in ("policy_gradient[reinforce]", "policy_gradient[ppo]"):
        assert "steps             = 0, converged = True" in blocks[method]
        bound = re.search(
            r"already within tol of the optimum: TV bound (\S+) <= tol ([^,\s]+)", blocks[method]
        )
        assert float(bound.group(1)) <= float(bound.group(2))
    assert "already within tol" not in blocks["policy_gradient[natural]"]  # it took steps
    assert "plain (exact) gradient ascent is slow" not in out  # exact converged here
    assert "lambda*" in out and "beta (1 - log Z)" in out and "b(1-logZ)" not in out


# ----------------------------------------------------- arguments checked before any work
def _no_benchmark_run(monkeypatch):
    monkeypatch.setattr(cli, "_missing_benchmark_dependencies", lambda: [])

    def never(*args, **kwargs):
        raise AssertionError("the benchmark must not start when its files cannot be written")

    monkeypatch.setattr(subprocess, "run", never)


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ("--output", "file/results.md"),  # under an existing file: the folder cannot exist
        ("--output", "."),  # a folder, not a file
        ("--figure", "file/scaling.png"),
        ("--figure", "scaling.xyz"),  # not a format matplotlib writes
        ("--figure", "."),
    ],
)
def test_bench_output_files_are_checked_before_the_benchmark(
    tmp_path, capsys, monkeypatch, flag, name
):
    # `tinyrlhf bench --quick --output /proc/x/results.md` ran the whole benchmark first
    (tmp_path / "file").write_text("")
    _no_benchmark_run(monkeypatch)
    assert main(["bench", "--quick", flag, str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(f"tinyrlhf bench: error: argument {flag}: "), last


def test_bench_output_in_a_new_folder_is_accepted(tmp_path, monkeypatch):
    # the check creates the folder (as figures --out does) and lets the benchmark start
    _no_benchmark_run(monkeypatch)
    started = []

    def start(command, **kwargs):
        started.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", start)
    assert main(["bench", "--quick", "--output", str(tmp_path / "new" / "results.md")]) == 0
    assert (tmp_path / "new").is_dir() and started
    assert started[0][-2:] == ["--output", str(tmp_path / "new" / "results.md")]


def test_benchmark_script_checks_its_files_before_running(tmp_path):
    # `python benchmarks/run.py --output ...` directly: refused before the first section
    (tmp_path / "file").write_text("")
    results = str(tmp_path / "file" / "results.md")
    result = subprocess.run(
        [sys.executable, str(cli._benchmark_script()), "--quick", "--output", results],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr
    assert "error: argument --output: " in result.stderr.strip().splitlines()[-1]


def test_bench_help_states_no_drifting_time(capsys):
    # README carries the measured time; the help must not state another number of seconds
    assert main(["bench", "--help"]) == 0
    quick = " ".join(capsys.readouterr().out.split()).split("--quick", 2)[-1]
    assert "CPU time" in quick and re.search(r"\d+\s*s\b", quick) is None, quick


# ------------------------------------------------------------------- usage of each command
@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--frobnicate"],
        ["figures", "--bogus"],
        ["bench", "--quick", "--bogus"],
        ["docs", "--bogus"],
        ["notebooks", "--bogus"],
        ["pipeline", "--sizes", "10", "--bogus"],
    ],
)
def test_unknown_flag_shows_the_usage_of_its_subcommand(capsys, argv):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"usage: tinyrlhf {argv[0]} ")
    last = captured.err.strip().splitlines()[-1]
    assert last == f"tinyrlhf {argv[0]}: error: unrecognized arguments: {argv[-1]}"


def test_no_command_prints_help_and_the_commands_on_stderr(capsys):
    assert main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: tinyrlhf ")
    commands = ["demo", "notebooks", "figures", "pipeline", "bon", "bench", "docs"]
    for command in commands:
        assert re.search(rf"^    {command}\b", captured.err, re.M)  # the help lists each
    last = captured.err.strip().splitlines()[-1]
    assert last == f"tinyrlhf: error: choose a command: {', '.join(commands)}"


# ----------------------------------------------------------------- advice the CLI can follow
def test_uncertified_note_gives_flags_the_user_can_type(capsys):
    # one step of plain gradient ascent stops short; the note names flags, not keywords
    argv = ["demo", "--tokens", "a,b", "--horizon", "3", "--methods", "closed_form,exact"]
    assert main([*argv, "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "steps             = 1, converged = False" in out  # --steps reached the solver
    notes = [line for line in out.splitlines() if line.startswith("  note:")]
    assert len(notes) == 1 and "not certified optimal" in notes[0]
    assert notes[0].endswith("raise --steps or --tol, or use --methods natural")
    assert "method='natural'" not in out and "raise steps" not in out
    # following the advice: the natural gradient (or a looser --tol) certifies
    assert main(["demo", "--tokens", "a,b", "--horizon", "3", "--methods", "natural"]) == 0
    assert "converged = True" in capsys.readouterr().out
    assert main([*argv, "--steps", "1", "--tol", "0.9"]) == 0  # TV bounds are <= 1
    out = capsys.readouterr().out
    assert "converged = True" in out and "tol 0.9" in out and "note:" not in out


@pytest.mark.parametrize(
    ("argv", "flag"), [(["--steps", "-1"], "--steps"), (["--tol", "0"], "--tol")]
)
def test_steps_and_tol_flags_are_checked_first(capsys, argv, flag):
    assert main(["demo", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err.strip()
        .splitlines()[-1]
        .startswith(f"tinyrlhf demo: error: argument {flag}: ")
    )
