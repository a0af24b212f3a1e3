"""The documentation site: its generated sources, its build, and a real browser looking at it.

Two groups of tests:

- always (no extra needed): the exercises of every lesson are found and every hand-written
  solution belongs to one; every figure of ``tinyrlhf figures`` has a gallery script.
- ``docs``-marked (need the ``docs`` extra, skipped without it): the site builds with
  ``-W`` (zero warnings), every public name, lesson, solutions page and figure has its page,
  and headless Chromium renders the landing page, an API page with an equation (MathJax's
  ``mjx-container`` elements in the DOM after its JavaScript ran, offline) and a gallery page
  with its picture. Screenshots go to ``$TINYRLHF_DOCS_SCREENSHOTS`` or a temporary folder
  (printed).

``.ci/run`` builds the site once with ``tinyrlhf docs --out DIR`` and sets
``TINYRLHF_DOCS_BUILD=DIR`` so these tests open that build instead of building again; without
the variable the tests build into a temporary folder themselves.
"""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import tinyrlhf
from tinyrlhf import figures
from tinyrlhf.docsite import sphinx_command

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))
from _generate import exercises, written_solutions  # noqa: E402

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))
DOCS_EXTRA = ("sphinx", "myst_nb", "sphinx_gallery", "furo", "sphinx-mathjax-offline")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Virtual milliseconds Chromium gives a page's scripts (MathJax) before it dumps or shoots.
VIRTUAL_TIME_BUDGET_MS = 20_000


# ------------------------------------------------------------------ no extra needed
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.name)
def test_every_exercise_is_found_with_its_answer_call(path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    found = exercises(notebook)
    checks = [
        cell
        for cell in notebook["cells"]
        if cell["cell_type"] == "code" and "check_prediction(" in "".join(cell["source"])
    ]
    assert len(found) == len(checks) >= 1
    assert [exercise.number for exercise in found] == list(range(1, len(found) + 1))
    for exercise, cell in zip(found, checks, strict=True):
        assert exercise.answer_call and exercise.answer_call in "".join(cell["source"])
        assert exercise.question and not re.match(r"\d+\.\s", exercise.question)


def test_hand_written_solutions_match_their_lessons():
    files = sorted((DOCS / "solutions").glob("[0-9]*.md"))
    assert files, "no hand-written solutions"
    stems = {path.stem for path in NOTEBOOKS}
    for path in files:
        assert path.stem in stems, f"{path.name} has no notebook"
        notebook = json.loads((ROOT / "notebooks" / f"{path.stem}.ipynb").read_text("utf-8"))
        numbers = [exercise.number for exercise in exercises(notebook)]
        written = written_solutions(path)
        assert sorted(written) == numbers, path.name
        assert all(text.strip() for text in written.values())


def test_every_figure_has_a_gallery_script():
    scripts = {path.stem for path in EXAMPLES}
    for name, _ in figures.FIGURES:
        assert f"plot_{Path(name).stem}" in scripts, f"examples/plot_{Path(name).stem}.py"
    for path in EXAMPLES:  # sphinx-gallery needs a title: a line underlined with "="
        lines = path.read_text(encoding="utf-8").split('"""', 2)[1].strip().splitlines()
        assert len(lines) >= 2 and set(lines[1]) == {"="} and len(lines[1]) >= len(lines[0])


def test_the_build_command_fails_on_warnings():
    command = sphinx_command("out")
    assert command[:3] == [sys.executable, "-m", "sphinx"]
    assert "-W" in command and "--keep-going" in command
    assert command[-2:] == [str(DOCS), "out"]


# ------------------------------------------------------------------ the built site
def _require_docs_extra() -> None:
    missing = [name for name in DOCS_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(
            f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'"
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The built site: ``$TINYRLHF_DOCS_BUILD`` if set, else a fresh build (about 2 min)."""
    _require_docs_extra()
    given = os.environ.get("TINYRLHF_DOCS_BUILD")
    if given:
        out = Path(given)
        assert (out / "index.html").is_file(), f"TINYRLHF_DOCS_BUILD={given} holds no site"
        return out
    out = tmp_path_factory.mktemp("docs") / "html"
    result = subprocess.run(sphinx_command(out), capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "build succeeded" in result.stdout
    return out


@pytest.mark.docs
def test_every_public_name_has_a_page(site):
    missing = [
        name
        for name in tinyrlhf.__all__
        if name != "__version__"  # the API index states the version
        and not (site / "api" / "generated" / f"tinyrlhf.{name}.html").is_file()
    ]
    assert not missing
    index = (site / "api" / "index.html").read_text(encoding="utf-8")
    for name in tinyrlhf.__all__:
        if name != "__version__":
            assert f"tinyrlhf.{name}.html" in index


@pytest.mark.docs
def test_every_lesson_solution_and_figure_has_a_page(site):
    for path in NOTEBOOKS:
        page = site / "lessons" / f"{path.stem}.html"
        assert page.is_file(), page
        html = page.read_text(encoding="utf-8")
        assert "data:image/png" in html or "<img" in html  # stored figures are shown
        solutions = (site / "lessons" / "solutions" / f"{path.stem}.html").read_text("utf-8")
        n_exercises = len(exercises(json.loads(path.read_text(encoding="utf-8"))))
        assert solutions.count('<details class="solution">') == n_exercises
        assert "<details open" not in solutions  # folded by default
    for path in EXAMPLES:
        page = site / "auto_examples" / f"{path.stem}.html"
        html = page.read_text(encoding="utf-8")
        images = re.findall(r'<img[^>]+src="([^"]+\.png)"', html)
        assert images, f"{page.name} shows no picture"
        assert all((page.parent / src).is_file() for src in images)
        assert f"{path.stem}.py" in html and f"{path.stem}.ipynb" in html  # downloads


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium browser: install Debian's package with apt-get install chromium")


def _run_chromium(url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                _chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
                *args,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    given = os.environ.get("TINYRLHF_DOCS_SCREENSHOTS")
    folder = Path(given) if given else tmp_path_factory.mktemp("docs_screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots of the docs site: {folder}")
    return folder


def _look(site: Path, page: str, screenshots: Path) -> tuple[str, np.ndarray]:
    """The DOM after the page's scripts ran, and a screenshot as an (h, w, 3) array."""
    from matplotlib.image import imread

    url = (site / page).as_uri()
    dom = _run_chromium(url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = screenshots / (page.replace("/", "__").replace(".html", ".png"))
    taken = _run_chromium(url, f"--screenshot={shot}", "--window-size=1280,1600")
    assert taken.returncode == 0 and shot.is_file(), taken.stderr[-2000:]
    return dom.stdout, imread(shot)[..., :3]


def _coloured_fraction(pixels: np.ndarray) -> float:
    """Fraction of strongly coloured pixels (max - min channel > 0.3): plots, not text."""
    return float(((pixels.max(axis=-1) - pixels.min(axis=-1)) > 0.3).mean())


@pytest.mark.docs
def test_browser_renders_the_landing_page(site, screenshots):
    dom, pixels = _look(site, "index.html", screenshots)
    assert "Exact RLHF on a token tree" in dom
    assert "The lecture map" in dom
    assert dom.count("<mjx-container") >= 2  # MathJax ran, offline, on the equations
    assert "<merror" not in dom  # no TeX error
    assert pixels.std() > 0.05  # a page, not a blank screen


@pytest.mark.docs
def test_browser_renders_math_on_an_api_page(site, screenshots):
    dom, pixels = _look(site, "api/classroom.html", screenshots)
    assert "beta_slider" in dom
    assert dom.count("<mjx-container") >= 3
    assert 'display="true"' in dom  # the displayed equation of beta_slider
    assert "<merror" not in dom
    assert pixels.std() > 0.05


@pytest.mark.docs
def test_browser_renders_a_gallery_page_with_its_picture(site, screenshots):
    dom, pixels = _look(site, "auto_examples/plot_token_tree.html", screenshots)
    assert "sphx-glr-single-img" in dom
    assert "closed_form" in dom
    # the picture's coloured edge labels and legend show in the screenshot
    assert _coloured_fraction(pixels) > 1e-3


def test_docs_command_names_the_missing_extra(tmp_path, capsys, monkeypatch):
    from tinyrlhf import docsite
    from tinyrlhf.cli import main

    monkeypatch.setattr(docsite.importlib.util, "find_spec", lambda name: None)
    assert main(["docs", "--out", str(tmp_path / "html")]) == 2
    assert "pip install -e '.[docs]'" in capsys.readouterr().err
    assert not (tmp_path / "html").exists()


@pytest.mark.parametrize("name", ["afile", "afile/html"])
def test_docs_out_that_is_a_file_is_refused_before_sphinx(tmp_path, capsys, monkeypatch, name):
    # `touch afile; tinyrlhf docs --out afile` printed Sphinx's "Application error!"
    from tinyrlhf import docsite
    from tinyrlhf.cli import main

    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(docsite, "REQUIRED", ())  # as if the docs extra were installed

    def never(*args, **kwargs):
        raise AssertionError("Sphinx must not start with an unusable --out")

    monkeypatch.setattr(docsite.subprocess, "run", never)
    assert main(["docs", "--out", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("tinyrlhf docs: error: argument --out: "), last


def test_every_missing_extra_skip_says_how_to_install_it():
    # a skip for a missing extra tells a new user the command, as _require_docs_extra does
    reasons = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for line in path.read_text(encoding="utf-8").splitlines():
            extra = re.search(r"the (\w+) extra is not installed", line)
            if extra:
                reasons.append(path.name)
                assert f"pip install -e '.[{extra.group(1)}]'" in line, f"{path.name}: {line}"
    assert {"test_docs.py", "test_widgets.py"} <= set(reasons)  # the ones this test is for
