"""Re-executing the classroom notebooks in place (the authors' tool behind
``tinyrlhf notebooks --execute``).

The lessons in ``notebooks/`` walk the lecture "An Introduction to RL from Human Feedback"
section by section and are stored *with* their outputs, so that they render on a code host.
After a change to the package an author re-executes them here, from a fresh ``python3``
kernel each, and commits the result; the test suite executes them the same way, so a change
that breaks a lesson fails CI, and compares the fresh outputs with the stored ones
(:func:`notebook_differences`), so a change that alters what a lesson shows fails CI until
the notebooks are re-executed with ``tinyrlhf notebooks --execute``.

nbclient, nbformat and ipykernel come with the test extra (``pip install -e ".[test]"``) and
are imported only when a notebook is executed, so the package itself does not need them.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The kernel the notebooks are written for (``metadata.kernelspec.name``).
KERNEL_NAME = "python3"
#: Default limit, in seconds, on the execution of one cell.
DEFAULT_TIMEOUT = 600
#: Where ``tinyrlhf notebooks`` looks for notebooks, relative to the working directory.
DEFAULT_DIRECTORY = "notebooks"

#: The command that refreshes the stored outputs (named in every staleness report).
REFRESH_COMMAND = "tinyrlhf notebooks --execute"
#: Two printed numbers agree when within this relative tolerance (six significant digits)...
NUMBER_RTOL = 1e-6
#: ...or this absolute one: residuals and differences of exact quantities at rounding level
#: (1e-16 against 2e-16) are noise of the floating-point summation order, not content.
NUMBER_ATOL = 1e-9

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
        pair: tuple[Any, Any] = (prediction, answer)  # numbers or arrays (checked above)
        try:
            right = np.shape(pair[0]) == np.shape(pair[1]) and bool(
                np.allclose(pair[0], pair[1], rtol=rtol, atol=atol)
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


_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
#: A duration: a number and a unit of time (``0.12 s``, ``35ms``, ``4 µs``).
_DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\s?(?:s|ms|us|µs|ns|sec)\b")
#: A column of durations in a table: a header cell such as ``time [s]`` or ``fit [ms]``.
_TIME_COLUMN = re.compile(r"\S+ \[(?:s|ms|us|µs|ns)\]")
_PADDED_TIME = re.compile(r" +<time>")
_SPACES = re.compile(r" +")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def normalize_text(text: str) -> str:
    """Output text with its volatile parts replaced, for comparing two executions.

    Replaced: memory addresses (``0x7f3a...`` -> ``0x?``), durations (a number followed by
    ``s``, ``ms``, ``us``, ``µs``, ``ns``, ``sec`` -> ``<time>``), and the numbers of a table
    column headed ``<name> [s]`` / ``[ms]`` (the rows below the header up to a blank line,
    where a number overlaps the header cell's span -> ``<time>``). Trailing spaces and a
    trailing newline are dropped. Everything else is kept: numbers are compared separately
    (:func:`texts_agree`).
    """
    lines = _ADDRESS.sub("0x?", text).rstrip("\n").split("\n")
    spans: list[tuple[int, int]] = []
    for k, line in enumerate(lines):
        if not line.strip():
            spans = []
        elif _TIME_COLUMN.search(line):
            spans = [match.span() for match in _TIME_COLUMN.finditer(line)]
        elif spans:
            lines[k] = _mask_columns(line, spans)
    lines = [_DURATION.sub("<time>", line) for line in lines]
    # a masked number's width varies, so does the padding of a right-aligned column
    return "\n".join(_PADDED_TIME.sub(" <time>", line).rstrip() for line in lines)


def _mask_columns(line: str, spans: list[tuple[int, int]]) -> str:
    """``line`` with every number that overlaps one of the character ``spans`` masked."""

    def mask(number: re.Match) -> str:
        overlaps = any(number.start() < end and number.end() > start for start, end in spans)
        return "<time>" if overlaps else number.group(0)

    return _NUMBER.sub(mask, line)


def texts_agree(stored: str, fresh: str) -> bool:
    """Two normalized texts are equal up to printed numbers that agree numerically.

    The texts are split into numbers and the text between them; the text must be identical
    up to the length of runs of spaces (the padding of aligned columns follows the width of
    the numbers), so ``nan`` against ``—`` or a changed word differs; each pair of numbers must
    satisfy ``|a - b| <= max(NUMBER_RTOL * max(|a|, |b|), NUMBER_ATOL)``.
    """
    if stored == fresh:
        return True
    stored_words, fresh_words = (
        [_SPACES.sub(" ", word) for word in _NUMBER.split(text)] for text in (stored, fresh)
    )
    if stored_words != fresh_words:
        return False
    return all(
        math.isclose(float(a), float(b), rel_tol=NUMBER_RTOL, abs_tol=NUMBER_ATOL)
        for a, b in zip(_NUMBER.findall(stored), _NUMBER.findall(fresh), strict=True)
    )


def _cell_outputs(cell: dict) -> list[tuple[str, str]]:
    """A code cell's outputs as ``(kind, normalized text)`` in order.

    Consecutive stream outputs of one name are joined (the kernel may flush a print in
    several chunks); a rich output contributes its ``text/plain``, ``text/markdown`` and
    ``text/html`` and the *number* of its images (PNG/JPEG/SVG bytes depend on the
    matplotlib, FreeType and font versions, not on the lesson: a figure's content is
    tested in ``tests/test_plots.py`` and ``tests/test_figures.py``); an error its name and
    message (the traceback holds file paths).
    """
    outputs: list[tuple[str, str]] = []
    for output in cell.get("outputs", []):
        kind = output.get("output_type")
        if kind == "stream":
            name = f"stream:{output.get('name')}"
            text = output.get("text", "")
            text = text if isinstance(text, str) else "".join(text)
            if outputs and outputs[-1][0] == name:
                outputs[-1] = (name, outputs[-1][1] + text)
            else:
                outputs.append((name, text))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data", {})
            for mime in ("text/plain", "text/markdown", "text/html"):
                if mime in data:
                    value = data[mime]
                    outputs.append((mime, value if isinstance(value, str) else "".join(value)))
            images = sum(mime.startswith("image/") for mime in data)
            if images:
                outputs.append(("images", str(images)))
        elif kind == "error":
            outputs.append(("error", f"{output.get('ename')}: {output.get('evalue')}"))
    return [(kind, normalize_text(text)) for kind, text in outputs]


def notebook_differences(stored: dict, fresh: dict) -> list[str]:
    """Where a freshly executed notebook's outputs differ from the stored ones.

    Compares the code cells one by one (same sources: the fresh notebook is an execution of
    the stored one) with :func:`_cell_outputs` and :func:`texts_agree`, ignoring execution
    counts, metadata, memory addresses, timings and image bytes.

    Args:
        stored: the notebook as stored (a dict or ``nbformat.NotebookNode``).
        fresh: the same notebook after a fresh execution.

    Returns:
        One line per differing cell, naming the cell, its first source line and the first
        differing output line (stored, then fresh); empty when the outputs are current.
    """
    stored_cells = [cell for cell in stored["cells"] if cell.get("cell_type") == "code"]
    fresh_cells = [cell for cell in fresh["cells"] if cell.get("cell_type") == "code"]
    if len(stored_cells) != len(fresh_cells):
        return [f"{len(stored_cells)} stored code cells but {len(fresh_cells)} executed ones"]
    differences = []
    for number, (old, new) in enumerate(zip(stored_cells, fresh_cells, strict=True), start=1):
        source = old.get("source", "")
        source = source if isinstance(source, str) else "".join(source)
        title = f"code cell {number} ({source.strip().splitlines()[0][:50] if source.strip() else 'empty'!r})"
        old_outputs, new_outputs = _cell_outputs(old), _cell_outputs(new)
        if [kind for kind, _ in old_outputs] != [kind for kind, _ in new_outputs]:
            differences.append(
                f"{title}: stored outputs {[kind for kind, _ in old_outputs]}, "
                f"fresh {[kind for kind, _ in new_outputs]}"
            )
            continue
        for (kind, old_text), (_, new_text) in zip(old_outputs, new_outputs, strict=True):
            if texts_agree(old_text, new_text):
                continue
            old_lines, new_lines = old_text.split("\n"), new_text.split("\n")
            line = next(
                (
                    k
                    for k, pair in enumerate(zip(old_lines, new_lines, strict=False))
                    if not texts_agree(*pair)
                ),
                min(len(old_lines), len(new_lines)),
            )
            shown = [
                lines[line] if line < len(lines) else "<end>" for lines in (old_lines, new_lines)
            ]
            differences.append(
                f"{title}, {kind} line {line + 1}: stored {shown[0]!r}, fresh {shown[1]!r}"
            )
            break
    return differences


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
