"""Sources of the site generated from the package and the notebooks at build time.

Called from ``conf.py`` before Sphinx reads anything. Every file is rewritten only when its
content changes, so an incremental build stays incremental. Nothing here is committed:
``docs/.gitignore`` lists the outputs.

- ``api/index.rst``: one autosummary entry per name of ``tinyrlhf.__all__``, so a new public
  name gets its page with no edit to the docs.
- ``lessons/NN_name.ipynb``: copies of ``notebooks/*.ipynb`` (myst-nb renders their stored
  outputs; nothing is executed) and ``lessons/index.md``, their table of contents.
- ``lessons/solutions/NN_name.md``: the exercises of each lesson with their solutions folded
  away (an HTML ``<details>`` block). The notebook supplies each exercise's question and the
  one-line call that computes its answer; ``docs/solutions/NN_name.md`` (optional, one
  ``## Exercise N`` section per exercise) supplies the worked reasoning.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

#: How a hand-written solution file separates its exercises.
EXERCISE_HEADING = re.compile(r"^## Exercise (\d+)\s*$", re.MULTILINE)
#: The first line of a numbered exercise in a notebook's markdown.
NUMBERED_ITEM = re.compile(r"^(\d+)\.\s+", re.MULTILINE)


def write_if_changed(path: Path, text: str | bytes) -> None:
    """Write ``text`` to ``path`` unless it already holds exactly that (keeps mtimes)."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_api_index(docs: Path, names: Sequence[str]) -> None:
    """``api/index.rst``: the autosummary of every public name (sorted as in ``__all__``)."""
    entries = "\n".join(f"   {name}" for name in names if name != "__version__")
    text = f"""API reference
=============

Everything below is exported by ``import tinyrlhf as tr`` (the names of ``tinyrlhf.__all__``;
the package version is ``tr.__version__``). Each page is generated from the docstring: the
equation, the shapes of the arrays, the errors raised. Modules that are not re-exported have
their own pages: :doc:`testing`, :doc:`plots`, :doc:`examples`, :doc:`classroom`.

.. currentmodule:: tinyrlhf

.. autosummary::
   :toctree: generated
   :nosignatures:

{entries}

.. toctree::
   :hidden:

   testing
   plots
   examples
   classroom
"""
    write_if_changed(docs / "api" / "index.rst", text)


@dataclass(frozen=True)
class Exercise:
    """One exercise of a lesson: its question (markdown) and the call that answers it."""

    number: int
    question: str
    answer_call: str


def _markdown(cell: dict) -> str:
    source = cell["source"]
    return "".join(source) if isinstance(source, list) else source


def exercises(notebook: dict) -> list[Exercise]:
    """The exercises after a notebook's ``## Exercises`` heading, in order.

    Each is the markdown since the previous exercise (from its numbered item on) and the
    second argument of the ``check_prediction(...)`` call in the code cell that follows it.
    """
    found: list[Exercise] = []
    started = False
    pending: list[str] = []
    for cell in notebook["cells"]:
        text = _markdown(cell)
        if cell["cell_type"] == "markdown":
            if not started and "## Exercises" in text:
                started = True
                text = text.split("## Exercises", 1)[1]
            if started:
                pending.append(text)
            continue
        if not started or "check_prediction(" not in text:
            continue
        question = "\n\n".join(pending)
        item = NUMBERED_ITEM.search(question)
        number = int(item.group(1)) if item else len(found) + 1
        if item:
            body = question[item.end() :]
            first, _, rest = body.partition("\n")
            question = first + ("\n" + textwrap.dedent(rest) if rest else "")
        found.append(Exercise(number, question.strip(), _answer_call(text)))
        pending = []
    return found


def _answer_call(code: str) -> str:
    """The source of the answer argument of ``check_prediction(prediction, answer, ...)``."""
    for node in ast.walk(ast.parse(code)):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", getattr(node.func, "attr", None)) == "check_prediction"
            and len(node.args) >= 2
        ):
            return ast.get_source_segment(code, node.args[1]) or ""
    raise ValueError(f"no check_prediction(prediction, answer) call in {code!r}")


def written_solutions(path: Path) -> dict[int, str]:
    """``{exercise number: markdown}`` from a hand-written solutions file (empty if none)."""
    if not path.is_file():
        return {}
    parts = EXERCISE_HEADING.split(path.read_text(encoding="utf-8"))
    return {
        int(number): body.strip() for number, body in zip(parts[1::2], parts[2::2], strict=True)
    }


def solutions_page(stem: str, title: str, found: list[Exercise], written: dict[int, str]) -> str:
    """The markdown of one lesson's solutions page."""
    lines = [
        f"# Solutions: {title}",
        "",
        f"The exercises of {{doc}}`../{stem}`. Make your prediction in the notebook first; "
        "each solution stays folded until you open it.",
        "",
    ]
    for exercise in found:
        reasoning = written.get(exercise.number, "")
        lines += [
            f"## Exercise {exercise.number}",
            "",
            exercise.question,
            "",
            '<details class="solution">',
            "<summary>Solution</summary>",
            "",
        ]
        if reasoning:
            lines += [reasoning, ""]
        lines += [
            "The notebook's checker computes the exact answer with",
            "",
            "```python",
            exercise.answer_call,
            "```",
            "",
            "</details>",
            "",
        ]
    return "\n".join(lines)


def lesson_title(notebook: dict, stem: str) -> str:
    """The notebook's first ``# `` heading (its page title)."""
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            for line in _markdown(cell).splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return stem


def write_lessons(docs: Path, notebook_dir: Path) -> None:
    """Copy the notebooks into ``lessons/`` and write their index and solutions pages."""
    lessons = docs / "lessons"
    stems = []
    rows = []
    for path in sorted(notebook_dir.glob("*.ipynb")):
        data = path.read_bytes()
        notebook = json.loads(data)
        stem = path.stem
        stems.append(stem)
        title = lesson_title(notebook, stem)
        write_if_changed(lessons / path.name, data)
        found = exercises(notebook)
        written = written_solutions(docs / "solutions" / f"{stem}.md")
        unknown = sorted(set(written) - {exercise.number for exercise in found})
        if unknown:
            raise ValueError(
                f"docs/solutions/{stem}.md has solutions for exercises {unknown}, which "
                f"{path.name} does not have"
            )
        solutions = ""
        if found:
            write_if_changed(
                lessons / "solutions" / f"{stem}.md", solutions_page(stem, title, found, written)
            )
            solutions = f"{{doc}}`solutions <solutions/{stem}>`"
        rows.append(f"| {{doc}}`{stem}` | {solutions} |")
    for stale in (lessons / "solutions").glob("*.md") if (lessons / "solutions").is_dir() else []:
        if stale.stem not in stems:
            stale.unlink()
    for stale in lessons.glob("*.ipynb"):
        if stale.stem not in stems:
            stale.unlink()
    toctree = "\n".join(stems)
    solution_toctree = "\n".join(
        f"solutions/{stem}" for stem in stems if (lessons / "solutions" / f"{stem}.md").is_file()
    )
    text = f"""# Lessons

The classroom notebooks of `notebooks/`, rendered from their stored outputs (the test suite
executes them from a fresh kernel; the site does not). Each takes 15–30 minutes, prose first
and code second, and ends with exercises: make a prediction, then run the one-line check.
The solutions are on a separate page per lesson, folded.

Run them yourself with `pip install -e ".[test]"` and `jupyter lab notebooks/` (or download
a notebook from its page).

| lesson | exercises |
|---|---|
{chr(10).join(rows)}

```{{toctree}}
:hidden:

{toctree}
```

```{{toctree}}
:hidden:
:caption: Solutions

{solution_toctree}
```
"""
    write_if_changed(lessons / "index.md", text)
