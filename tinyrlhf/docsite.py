"""``tinyrlhf docs``: build the documentation site (the ``docs`` extra).

The site's sources live beside the package in the source checkout (``docs/``, the gallery
scripts in ``examples/``, the lessons in ``notebooks/``), so this command finds them next to
the package (an editable install or a checkout), like ``tinyrlhf bench``. It runs, in a fresh
interpreter,

    sphinx-build -W --keep-going -b html docs <out>

so that any warning (a broken reference, a public name without a page, a failing gallery
example) fails the build with exit status 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

#: The source checkout: the folder that holds ``tinyrlhf/`` and ``docs/``.
ROOT = Path(__file__).resolve().parent.parent
#: Where the site is written unless ``--out`` says otherwise.
DEFAULT_OUT = ROOT / "docs" / "_build" / "html"
#: What the docs extra installs (checked before Sphinx starts, for a clear message).
REQUIRED = ("sphinx", "myst_nb", "sphinx_gallery", "furo", "sphinx-mathjax-offline")


def sphinx_command(out: str | Path, source: str | Path = ROOT / "docs") -> list[str]:
    """The ``sphinx-build`` command line (as a list) that builds the site into ``out``."""
    return [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        str(source),
        str(out),
    ]


def check_sources() -> Path:
    """The site's source folder, once it and the ``docs`` extra are found.

    Raises:
        ValueError: the sources are not there (an installed wheel, not a checkout) or the
            ``docs`` extra is missing; the message says what to install.
    """
    source = ROOT / "docs"
    if not (source / "conf.py").is_file():
        raise ValueError(
            f"the site's sources ship with the source checkout and {source} is missing; clone "
            "the repository, pip install -e '.[docs]' and run tinyrlhf docs there"
        )
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"building the docs needs {', '.join(missing)}: pip install -e '.[docs]'")
    return source


def build_docs(out: str | Path = DEFAULT_OUT) -> int:
    """Build the HTML site into ``out``; fail on any warning.

    Args:
        out: the output folder (created by Sphinx).

    Returns:
        Sphinx's exit status: 0 for a clean build, 1 when any warning or error occurred.

    Raises:
        ValueError: the sources are not there (an installed wheel, not a checkout) or the
            ``docs`` extra is missing.
    """
    source = check_sources()
    start = time.perf_counter()
    status = subprocess.run(sphinx_command(out, source), check=False).returncode
    verdict = "built" if status == 0 else "FAILED (warnings are errors)"
    print(f"docs {verdict}: {out} in {time.perf_counter() - start:.0f} s")
    return status


def prepare(args: argparse.Namespace) -> None:
    """The sources, the extra, then ``--out`` (created, a writable folder), before Sphinx runs.

    Raises:
        ValueError: the sources or the extra are missing (nothing is created then).
        FlagError: ``--out`` is an existing file, or cannot be created or written.
    """
    from .cli import check_folder  # the check of figures --out (cli imports this module)

    check_sources()
    check_folder(args.out, "--out")


def run(args: argparse.Namespace) -> int:
    """The ``docs`` subcommand."""
    return build_docs(args.out)


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add the ``docs`` subcommand to the ``tinyrlhf`` command line."""
    parser = commands.add_parser(
        "docs", help="build the documentation site (needs the docs extra), warnings are errors"
    )
    parser.add_argument(
        "--out", default=str(DEFAULT_OUT), help="output folder (default: docs/_build/html)"
    )
    parser.set_defaults(handler=run, prepare=prepare, subparser=parser)
