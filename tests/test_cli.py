"""The command line: `tinyrlhf demo` and `python -m tinyrlhf`."""

import re
import subprocess
import sys

import numpy as np

import tinyrlhf as tr
from tinyrlhf.cli import main
from tinyrlhf.examples import demo_problem


def test_demo_prints_agreeing_solutions(capsys):
    assert main(["demo", "--horizon", "3", "--beta", "0.5"]) == 0
    out = capsys.readouterr().out
    for method in (
        "closed_form",
        "soft_value_iteration",
        "policy_gradient[natural]",
        "policy_gradient[exact]",
    ):
        assert method in out
    # The printed log Z is the one the library computes for the same problem.
    tree, ref, reward = demo_problem(horizon=3)
    log_z = tr.closed_form(ref, reward, 0.5).log_partition
    printed = re.search(r"log Z\(s0\)\s+=\s+\[([^\]]+)\]", out).group(1).split()
    np.testing.assert_allclose([float(x) for x in printed], log_z, atol=1e-6)


def test_demo_reports_bad_input_cleanly(capsys):
    assert main(["demo", "--beta", "-1"]) == 2
    assert "beta" in capsys.readouterr().err
    assert main(["demo", "--tokens", "a,a"]) == 2
    assert "distinct" in capsys.readouterr().err


def test_python_dash_m_runs_the_same_cli():
    result = subprocess.run(
        [sys.executable, "-m", "tinyrlhf", "demo", "--horizon", "2", "--prompts", "p"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "agreement with the closed form" in result.stdout
