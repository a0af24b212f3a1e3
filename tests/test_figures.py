"""The figure command: the whole set on a small configuration, deterministic, from Python and
from the command line; an output directory that cannot be written is refused; what the
figures show agrees with their legends and captions."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle

from tinyrlhf import figures
from tinyrlhf.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, which follows the 8-byte signature."""
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_make_figures_writes_the_set_deterministically(tmp_path, capsys):
    paths = figures.make_figures(tmp_path / "python", small=True)
    assert [path.name for path in paths] == [name for name, _ in figures.FIGURES]
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        width, height = png_size(data)
        assert width >= 700 and height >= 500  # readable at DPI 150
    # the command line writes byte-identical files (fixed seeds, no date/version metadata)
    assert main(["figures", "--out", str(tmp_path / "cli"), "--small"]) == 0
    assert f"wrote {len(paths)} figure(s)" in capsys.readouterr().out
    for path in paths:
        assert (tmp_path / "cli" / path.name).read_bytes() == path.read_bytes(), path.name


def test_unwritable_output_directory_is_refused(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match="cannot be created"):
        figures.make_figures(blocker / "figures", small=True)
    with pytest.raises(ValueError, match="cannot be created"):
        figures.make_figures(blocker, small=True)
    assert main(["figures", "--out", str(blocker / "figures"), "--small"]) == 2
    assert "cannot be created" in capsys.readouterr().err
    with pytest.raises(TypeError, match="out_dir must be a path"):
        figures.make_figures(3)


def test_token_tree_legend_matches_what_is_drawn():
    # The legend's line is the edges' colour, and its square markers are the colours of the
    # numbers on the edges (issue 10: the legend showed coloured lines over grey edges).
    fig = figures.figure_token_tree(figures.SMALL)
    ax = fig.axes[0]
    edge_colours = {
        tuple(np.round(colour[:3], 6))
        for collection in ax.collections
        if isinstance(collection, LineCollection)
        for colour in collection.get_colors()
    }
    text_colours = {tuple(np.round(to_rgba(text.get_color())[:3], 6)) for text in ax.texts}
    handles = ax.get_legend().legend_handles
    lines = [handle for handle in handles if handle.get_linestyle() not in ("None", "none")]
    markers = [handle for handle in handles if handle.get_linestyle() in ("None", "none")]
    assert len(lines) == 1 and len(markers) == 2
    assert edge_colours == {tuple(np.round(to_rgba(lines[0].get_color())[:3], 6))}
    for handle in markers:
        assert tuple(np.round(to_rgba(handle.get_color())[:3], 6)) in text_colours


def test_preference_game_legend_covers_no_bar():
    fig = figures.figure_preference_game(figures.SMALL)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    (bars_ax,) = [ax for ax in fig.axes if ax.get_title() == "the solutions"]
    bars = [patch for patch in bars_ax.patches if isinstance(patch, Rectangle)]
    heights = [bar.get_height() for bar in bars]
    assert max(heights) > 0.99  # some solution is deterministic: bars reach 1 ...
    assert bars_ax.get_ylim()[1] > 1.0  # ... and are not clipped there
    renderer = canvas.get_renderer()
    legend_box = bars_ax.get_legend().get_window_extent(renderer)
    for bar in bars:
        if bar.get_height() > 0:
            assert not legend_box.overlaps(bar.get_window_extent(renderer))


def test_overoptimization_figure_shows_over_optimization():
    # The caption's claim, checked on the data of the committed (full) figure: for several
    # dataset sizes the true reward rises, peaks at an interior beta and then falls by a
    # visible amount (> 5% of the oracle's gain), while the proxy gain keeps rising as beta
    # falls (a theorem: dE*[r_hat]/dbeta = -Var*(r_hat)/beta^2 <= 0).
    curve = figures.overoptimization_data(figures.FULL)
    order = np.argsort(-curve.beta)  # decreasing beta = increasing KL
    oracle_gain = curve.oracle_true_reward[:, 0].max() - curve.reference_reward[0]
    over_optimizing = 0
    for i in range(curve.n_pairs.size):
        true_reward = curve.true_reward[i, order, 0]
        proxy = curve.proxy_gain[i, order, 0]
        assert np.all(np.diff(proxy) >= -1e-12 * (1 + np.abs(proxy).max()))
        peak = int(np.argmax(true_reward))
        if 0 < peak < true_reward.size - 1:
            over_optimizing += true_reward[peak] - true_reward[-1] > 0.05 * oracle_gain
    assert over_optimizing >= 2
    # the oracle (r_hat = r) never over-optimizes: its true reward rises with its KL
    oracle = curve.oracle_true_reward[order, 0]
    assert np.all(np.diff(oracle) >= -1e-12 * (1 + np.abs(oracle).max()))
