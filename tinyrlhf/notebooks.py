"""Re-executing the classroom notebooks in place (the authors' tool behind
``tinyrlhf notebooks --execute``).

The lessons in ``notebooks/`` walk the lecture "An Introduction to RL from Human Feedback"
section by section and are stored *with* their outputs, so that they render on a code host.
After a change to the package an author re-executes them here, from a fresh ``python3``
kernel each, and commits the result; the test suite executes them the same way, so a change
that breaks a lesson fails CI.

nbclient, nbformat and ipykernel come with the test extra (``pip install -e ".[test]"``) and
are imported only when a notebook is executed, so the package itself does not need them.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: The kernel the notebooks are written for (``metadata.kernelspec.name``).
KERNEL_NAME = "python3"
#: Default limit, in seconds, on the execution of one cell.
DEFAULT_TIMEOUT = 600
#: Where ``tinyrlhf notebooks`` looks for notebooks, relative to the working directory.
DEFAULT_DIRECTORY = "notebooks"

_MISSING_EXTRA = (
    "executing notebooks needs nbclient, nbformat and ipykernel, which come with the test "
    'extra: pip install -e ".[test]"'
)


@dataclass(frozen=True)
class NotebookSummary:
    """What a notebook holds: code cells, how many have run, figures, errors, size on disk."""

    path: Path
    code_cells: int
    executed_cells: int
    figures: int
    errors: int
    size_bytes: int

    @property
    def fully_executed(self) -> bool:
        """Every code cell has an execution count and none shows an error."""
        return self.executed_cells == self.code_cells and self.errors == 0


def check_prediction(
    prediction: object, answer: object, *, rtol: float = 0.05, atol: float = 1e-9
) -> bool | None:
    """The exercises' checker: compare a student's prediction with the computed answer.

    Prints the verdict and, only once a prediction was made, the answer (so a stored
    notebook does not give it away).

    Args:
        prediction: the student's guess; ``None`` while they have not made one.
        answer: the value computed by the one-line call of the exercise. Numbers and arrays
            are compared with ``numpy.allclose(prediction, answer, rtol, atol)``, anything
            else (strings, booleans) by equality.
        rtol, atol: tolerances for numbers (a prediction is a back-of-the-envelope number).

    Returns:
        None before a prediction, else whether it was right.
    """
    if prediction is None:
        print("Write your prediction in `prediction = ...` above, then run this cell again.")
        return None
    numeric = all(
        isinstance(value, (int, float, complex, np.number, np.ndarray, list, tuple))
        and not isinstance(value, (bool, np.bool_))
        for value in (prediction, answer)
    )
    if numeric:
        try:
            right = np.shape(prediction) == np.shape(answer) and bool(
                np.allclose(prediction, answer, rtol=rtol, atol=atol)
            )
        except (TypeError, ValueError):
            right = False
    else:
        right = bool(prediction == answer)
    verdict = "Right" if right else "Not quite"
    print(f"{verdict}: the answer is {_show(answer)} (your prediction: {_show(prediction)})")
    return right


def _show(value: object) -> str:
    """A number or array as a student would write it (no ``np.float64(...)`` wrapper)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return np.array2string(value, precision=6)
    if isinstance(value, float):
        return f"{value:.6g}"
    return repr(value)


def _require_extra() -> tuple:
    """Import nbclient and nbformat (and check ipykernel), or explain how to install them."""
    try:
        import ipykernel  # noqa: F401  (the kernel nbclient starts)
        import nbclient
        import nbformat
    except ImportError as error:
        raise ImportError(f"{_MISSING_EXTRA} (missing: {error.name})") from error
    return nbclient, nbformat


def find_notebooks(
    paths: Sequence[str | os.PathLike] = (), directory: str | os.PathLike = DEFAULT_DIRECTORY
) -> list[Path]:
    """The notebooks to work on: ``paths`` if given, else every ``*.ipynb`` in ``directory``.

    Args:
        paths: notebook files; empty for all notebooks of ``directory``.
        directory: folder searched (not recursively) when ``paths`` is empty.

    Returns:
        The notebook paths, sorted by name when taken from ``directory``.

    Raises:
        ValueError: a path that is not an existing ``.ipynb`` file, a missing directory, or a
            directory without notebooks.
    """
    if paths:
        found = [Path(path) for path in paths]
        for path in found:
            if path.suffix != ".ipynb" or not path.is_file():
                raise ValueError(f"{str(path)!r} is not an existing .ipynb notebook file")
        return found
    folder = Path(directory)
    if not folder.is_dir():
        raise ValueError(
            f"no notebook directory {str(folder)!r}; run from the repository root or pass --dir"
        )
    found = sorted(folder.glob("*.ipynb"))
    if not found:
        raise ValueError(f"no .ipynb notebooks in {str(folder)!r}")
    return found


def summarize_notebook(path: str | os.PathLike) -> NotebookSummary:
    """Count a stored notebook's code cells, executed cells, PNG figures and error outputs.

    Reads the JSON directly (no extra needed).
    """
    path = Path(path)
    try:
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"{str(path)!r} is not a readable Jupyter notebook: {error}") from None
    code = [cell for cell in cells if cell.get("cell_type") == "code"]
    outputs = [output for cell in code for output in cell.get("outputs", [])]
    return NotebookSummary(
        path=path,
        code_cells=len(code),
        executed_cells=sum(cell.get("execution_count") is not None for cell in code),
        figures=sum("image/png" in output.get("data", {}) for output in outputs),
        errors=sum(output.get("output_type") == "error" for output in outputs),
        size_bytes=path.stat().st_size,
    )


def execute_notebook(
    path: str | os.PathLike,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    write: bool = True,
    kernel_name: str = KERNEL_NAME,
):
    """Run every cell of a notebook from a fresh kernel, in the notebook's own folder.

    Args:
        path: the ``.ipynb`` file.
        timeout: seconds allowed per cell (> 0).
        write: store the executed notebook (with its outputs) back at ``path``; on an error
            nothing is written.
        kernel_name: the Jupyter kernel to start.

    Returns:
        The executed ``nbformat.NotebookNode``.

    Raises:
        ImportError: the test extra is not installed (the message says how to install it).
        ValueError: ``timeout`` is not positive.
        nbclient.exceptions.CellExecutionError: a cell raised; the message holds the cell
            and its traceback.
    """
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    nbclient, nbformat = _require_extra()
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name=kernel_name,
        record_timing=False,  # no timestamps in the stored notebook: smaller diffs
        resources={"metadata": {"path": str(path.resolve().parent)}},
    )
    client.execute()
    if write:
        nbformat.write(notebook, path)
    return notebook


def execute_notebooks(
    paths: Sequence[str | os.PathLike],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    write: bool = True,
) -> list[tuple[Path, float]]:
    """Execute several notebooks one after the other; ``(path, seconds)`` for each.

    Stops at the first notebook that fails (see :func:`execute_notebook`).
    """
    timings = []
    for path in paths:
        start = time.perf_counter()
        execute_notebook(path, timeout=timeout, write=write)
        timings.append((Path(path), time.perf_counter() - start))
    return timings
