"""Sphinx configuration of the tinyrlhf site (build: ``tinyrlhf docs`` or
``sphinx-build -W --keep-going -b html docs docs/_build/html``).

Generated at build time (git-ignored, never edited by hand):
  api/index.rst        one autosummary entry per name in ``tinyrlhf.__all__``
  api/generated/       one page per public name (autosummary)
  lessons/*.ipynb      copies of ``notebooks/*.ipynb``, rendered from their stored outputs
  lessons/solutions/   one solutions page per lesson (``docs/_solutions.py``)
  auto_examples/       the gallery, built by running ``examples/plot_*.py`` (sphinx-gallery)

Math is rendered by a MathJax 3 that ships in the ``sphinx-mathjax-offline`` wheel (Apache-2.0):
its files are copied into ``_static/mathjax`` so the site needs no network.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from sphinx.util import logging

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))
sys.path.insert(0, str(ROOT))

from _generate import write_api_index, write_lessons  # noqa: E402

import tinyrlhf  # noqa: E402

project = "tinyrlhf"
author = "the tinyrlhf authors"
copyright = "the tinyrlhf authors, MIT license"
release = tinyrlhf.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = [
    "_build",
    "**.ipynb_checkpoints",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
    "solutions",  # hand-written solution texts, read by _generate.py
]
templates_path = ["_templates"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# ---------------------------------------------------------------------- generated sources
write_api_index(DOCS, tinyrlhf.__all__)
write_lessons(DOCS, ROOT / "notebooks")

# --------------------------------------------------------------------------- API reference
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, not as duplicate attribute entries
napoleon_preprocess_types = False
add_module_names = False

# ------------------------------------------------------------------------ lessons (myst-nb)
nb_execution_mode = "off"  # the test suite executes the notebooks; the site shows their outputs
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3
# a stored slider shows as its text form: the site loads no widget JavaScript (no network)
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None)]

# --------------------------------------------------------------------- math without network
_mathjax = importlib.util.find_spec("sphinx-mathjax-offline")
if _mathjax is None or _mathjax.origin is None:
    raise RuntimeError(
        "the docs need the offline MathJax: pip install -e '.[docs]' (sphinx-mathjax-offline)"
    )
mathjax_path = "mathjax/tex-chtml.js"
html_static_path = ["_static", str(Path(_mathjax.origin).parent / "static")]

# ------------------------------------------------------------------- gallery (sphinx-gallery)
sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "image_scrapers": ("_gallery.figure_scraper", "matplotlib"),
    "reset_modules": ("matplotlib",),
    "write_computation_times": False,
    "show_memory": False,
    "plot_gallery": "True",
    "min_reported_time": 1e9,
    "capture_repr": (),  # print() output only, not the repr of a last expression
}

# ----------------------------------------------------------------------------------- HTML
html_theme = "furo"
html_title = f"tinyrlhf {release}"
html_css_files = ["tinyrlhf.css"]
html_show_sourcelink = False
html_last_updated_fmt = None


# ------------------------------------------------------------- every public name documented
def _require_docstring(app, what, name, obj, options, lines) -> None:
    """Warn (an error under -W) when a name of ``tinyrlhf.__all__`` has no docstring."""
    if name in _PUBLIC and not any(line.strip() for line in lines):
        _logger.warning("public name %s has no docstring", name, type="tinyrlhf")


_PUBLIC = {f"tinyrlhf.{name}" for name in tinyrlhf.__all__}
_logger = logging.getLogger("tinyrlhf.docs")


def setup(app) -> None:
    app.connect("autodoc-process-docstring", _require_docstring)
