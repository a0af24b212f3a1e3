"""The classroom notebooks: stored with their outputs, executed from a fresh kernel, linked
from the README; and the ``tinyrlhf notebooks`` authors' command."""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from tinyrlhf.cli import main
from tinyrlhf.notebooks import (
    REFRESH_COMMAND,
    check_prediction,
    execute_notebook,
    find_notebooks,
    normalize_text,
    notebook_differences,
    summarize_notebook,
    texts_agree,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
LESSONS = (
    "01_language_as_an_mdp.ipynb",
    "02_kl_regularized_rl.ipynb",
    "03_policy_gradient.ipynb",
    "04_learning_from_preferences.ipynb",
    "05_rkl_vs_fkl.ipynb",
    "06_beyond_rlhf.ipynb",
    "07_best_of_n_and_kl_penalty.ipynb",
    "08_rl_with_verifiable_rewards.ipynb",
    "09_classroom_sliders.ipynb",
)
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Stored notebooks stay small enough to render quickly on a code host.
MAX_NOTEBOOK_BYTES = 1_000_000


def test_every_lesson_is_there():
    assert [path.name for path in NOTEBOOKS] == list(LESSONS)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_executes_from_a_fresh_kernel_and_matches_its_stored_outputs(path):
    # One execution serves both checks: the lesson runs, and what it shows now is what the
    # stored notebook shows (up to timings, addresses, rounding-level numbers and image
    # bytes, see tinyrlhf.notebooks.notebook_differences). A stale notebook fails here.
    stored = nbformat.read(path, as_version=4)
    executed = execute_notebook(path, write=False, timeout=300)
    outputs = [output for cell in executed.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure"
    differences = notebook_differences(stored, executed)
    assert not differences, (
        f"{path.name}: the stored outputs are stale; refresh them with `{REFRESH_COMMAND}` "
        "(from the repository root) and commit the notebooks:\n" + "\n".join(differences)
    )


def _executed_notebook(*cells):
    """A notebook of code cells given as (source, outputs) pairs."""
    notebook = new_notebook()
    notebook.cells = [new_code_cell(source, outputs=outputs) for source, outputs in cells]
    return notebook


def _stream(text, name="stdout"):
    return nbformat.v4.new_output("stream", name=name, text=text)


def _display(text, png=False):
    data = {"text/plain": text}
    if png:
        data["image/png"] = "iVBORw0KGgo="
    return nbformat.v4.new_output("display_data", data=data)


def test_staleness_check_ignores_volatile_text():
    table = (
        "method        objective  time [s]\n"
        "closed_form   0.6739045    0.000267\n"
        "soft_vi       0.6739045     0.00139\n"
    )
    fresh_table = table.replace("0.000267", "0.0123").replace(" 0.00139", "0.000913")
    stored = _executed_notebook(
        ("print(x)", [_stream("took 0.31 s (12 ms per step)\n"), _stream("at 0x7f3a9c\n")]),
        ("print(table)", [_stream(table)]),
        ("plot()", [_display("<Figure size 640x480 with 1 Axes>", png=True)]),
        ("print(residual)", [_stream("residual 1.11e-16, loss 1192.300734\n")]),
    )
    fresh = _executed_notebook(
        ("print(x)", [_stream("took 2.5 s (800 ms per step)\nat 0x55d0e1\n")]),  # one chunk
        ("print(table)", [_stream(fresh_table)]),
        ("plot()", [_display("<Figure size 640x480 with 1 Axes>", png=True)]),
        ("print(residual)", [_stream("residual 2.22e-16, loss 1192.3007340001\n")]),
    )
    fresh.cells[0].execution_count = 7  # execution counts are not content
    assert notebook_differences(stored, fresh) == []
    assert normalize_text(table).splitlines()[2] == "soft_vi       0.6739045 <time>"


@pytest.mark.parametrize(
    ("stored_output", "fresh_output", "expected"),
    [
        # notebook 6's staleness: a table cell that now prints a dash instead of nan
        (
            _stream("k3   nan   0.97\n"),
            _stream("k3   —   0.97\n"),
            "stream:stdout line 1: stored 'k3   nan   0.97', fresh 'k3   —   0.97'",
        ),
        (
            _stream("J = 0.354\n"),
            _stream("J = 0.355\n"),
            "stream:stdout line 1: stored 'J = 0.354', fresh 'J = 0.355'",
        ),
        (
            _stream("'abc' preferred to 'abc'\n"),
            _stream("'abc' preferred to 'cab'\n"),
            "fresh \"'abc' preferred to 'cab'\"",
        ),
        (
            _stream("a\n"),
            _stream("a\n", name="stderr"),
            ": stored outputs ['stream:stdout'], fresh ['stream:stderr']",
        ),
        (
            _display("<Figure>", png=True),
            _display("<Figure>"),
            ": stored outputs ['text/plain', 'images'], fresh ['text/plain']",
        ),
        (
            _stream("line 1\n"),
            _stream("line 1\nline 2\n"),
            "stream:stdout line 2: stored '<end>', fresh 'line 2'",
        ),
    ],
)
def test_staleness_check_reports_changed_content(stored_output, fresh_output, expected):
    stored = _executed_notebook(("x = 1", []), ("show()", [stored_output]))
    fresh = _executed_notebook(("x = 1", []), ("show()", [fresh_output]))
    differences = notebook_differences(stored, fresh)
    assert len(differences) == 1
    assert differences[0].startswith("code cell 2 ('show()')")
    assert differences[0].endswith(expected)


def test_numbers_agree_to_six_digits_or_at_rounding_level():
    # the tolerances of texts_agree: relative 1e-6, absolute 1e-9
    assert texts_agree("x = 1.0000001", "x = 1.0000002")
    assert not texts_agree("x = 1.00001", "x = 1.00002")
    assert texts_agree("gap 3e-17", "gap -4.4e-17")
    assert not texts_agree("gap 3e-7", "gap 4e-7")
    assert not texts_agree("1 2", "1 2 3")
    assert not texts_agree("nan", "0.0")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_stored_notebook_carries_its_outputs(path):
    summary = summarize_notebook(path)
    assert summary.fully_executed, f"{path.name}: run `tinyrlhf notebooks --execute`"
    assert summary.figures >= 1
    assert summary.size_bytes < MAX_NOTEBOOK_BYTES
    notebook = json.loads(path.read_text(encoding="utf-8"))
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"
    cells = notebook["cells"]
    # prose first, and exercises at the end that use the checker
    assert cells[0]["cell_type"] == "markdown"
    markdown = "".join(
        "".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"
    )
    assert "## Exercises" in markdown
    exercise_checks = sum(
        "check_prediction(" in "".join(cell["source"])
        for cell in cells
        if cell["cell_type"] == "code"
    )
    assert 2 <= exercise_checks <= 3


def test_readme_links_every_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "## Notebooks" in readme
    section = readme.split("## Notebooks", 1)[1].split("\n## ", 1)[0]
    linked = re.findall(r"\]\((notebooks/[^)]+\.ipynb)\)", section)
    assert sorted(linked) == [f"notebooks/{name}" for name in LESSONS]


def test_check_prediction_hides_the_answer_until_asked(capsys):
    assert check_prediction(None, 42) is None
    assert "42" not in capsys.readouterr().out
    assert check_prediction(41.0, 42, rtol=0.05) is True
    assert "42" in capsys.readouterr().out
    assert check_prediction(30, 42) is False
    assert check_prediction("smaller", "smaller") is True
    assert check_prediction(True, False) is False
    assert check_prediction([1.0, 2.0], (1.0, 2.0)) is True
    assert check_prediction([1.0], [1.0, 1.0]) is False  # shapes must match, no broadcasting


def _write_notebook(path, source):
    notebook = new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    notebook.cells = [new_markdown_cell("# a test"), new_code_cell(source)]
    nbformat.write(notebook, path)


@pytest.mark.notebooks
def test_cli_executes_notebooks_in_place(tmp_path, capsys):
    path = tmp_path / "tiny.ipynb"
    _write_notebook(path, "print(6 * 7)")
    assert summarize_notebook(path).executed_cells == 0
    assert main(["notebooks", "--execute", "--dir", str(tmp_path), "--timeout", "60"]) == 0
    assert "executed 1 notebook" in capsys.readouterr().out
    summary = summarize_notebook(path)
    assert summary.fully_executed
    assert "42" in path.read_text(encoding="utf-8")
    assert main(["notebooks", "--dir", str(tmp_path)]) == 0  # the listing
    assert "tiny.ipynb" in capsys.readouterr().out


@pytest.mark.notebooks
def test_cli_reports_a_failing_cell_and_keeps_the_notebook(tmp_path, capsys):
    path = tmp_path / "broken.ipynb"
    _write_notebook(path, "1 / 0")
    before = path.read_text(encoding="utf-8")
    assert main(["notebooks", "--execute", str(path)]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().err
    assert path.read_text(encoding="utf-8") == before


def test_cli_refuses_bad_arguments(tmp_path, capsys):
    assert main(["notebooks", "--dir", str(tmp_path)]) == 2
    assert "no .ipynb notebooks" in capsys.readouterr().err
    assert main(["notebooks", "--dir", str(tmp_path / "missing")]) == 2
    assert "--dir" in capsys.readouterr().err
    assert main(["notebooks", str(tmp_path / "nope.txt")]) == 2
    assert "not an existing .ipynb" in capsys.readouterr().err
    _write_notebook(tmp_path / "ok.ipynb", "pass")
    assert main(["notebooks", "--execute", "--timeout", "0", "--dir", str(tmp_path)]) == 2
    assert "timeout" in capsys.readouterr().err
    assert find_notebooks([], tmp_path) == [tmp_path / "ok.ipynb"]
    with pytest.raises(ValueError, match="timeout"):
        execute_notebook(tmp_path / "ok.ipynb", timeout=-1)
