"""The gallery's image scraper: the figures of an example, drawn without pyplot.

:mod:`tinyrlhf.plots` returns ``matplotlib.figure.Figure`` objects that pyplot does not know
about, so sphinx-gallery's matplotlib scraper would not see them. This scraper saves every
``Figure`` that an example's code block bound to a name (in the order the names were bound),
once, and hands the files to sphinx-gallery. Referenced from ``conf.py`` by name so that the
Sphinx configuration stays picklable.
"""

from __future__ import annotations

from matplotlib.figure import Figure
from sphinx_gallery.scrapers import figure_rst

#: Resolution of gallery images (the thumbnails are made from them).
DPI = 100
#: ids of the figures already saved, per example file.
_SAVED: dict[str, set[int]] = {}


def figure_scraper(block, block_vars, gallery_conf) -> str:
    """Save the new ``Figure`` objects of the example's namespace; return their reST."""
    saved = _SAVED.setdefault(str(block_vars["src_file"]), set())
    paths = []
    for value in list(block_vars["example_globals"].values()):
        if isinstance(value, Figure) and id(value) not in saved:
            saved.add(id(value))
            path = next(block_vars["image_path_iterator"])
            value.savefig(path, dpi=DPI, metadata={"Software": None})
            paths.append(path)
    return figure_rst(paths, gallery_conf["src_dir"])
