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
    check_prediction,
    execute_notebook,
    find_notebooks,
    summarize_notebook,
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
    "09_classroom_sliders.ipynb",
)
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: Stored notebooks stay small enough to render quickly on a code host.
MAX_NOTEBOOK_BYTES = 1_000_000


def test_every_lesson_is_there():
    assert [path.name for path in NOTEBOOKS] == list(LESSONS)


@pytest.mark.notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_executes_from_a_fresh_kernel(path):
    executed = execute_notebook(path, write=False, timeout=300)
    outputs = [output for cell in executed.cells for output in cell.get("outputs", [])]
    assert not [output for output in outputs if output.output_type == "error"]
    assert any("image/png" in output.get("data", {}) for output in outputs), "no figure"


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
