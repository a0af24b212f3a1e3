"""Each plotting function draws a small case with the Agg backend and returns a figure with the
expected axes (no image comparisons); bad input is refused."""

import re

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

import tinyrlhf as tr
from tinyrlhf import plots
from tinyrlhf.examples import bimodal_problem, demo_problem

matplotlib.use("Agg")


def legend_entries(ax):
    """Legend text -> the handle drawn beside it."""
    legend = ax.get_legend()
    texts = [text.get_text() for text in legend.get_texts()]
    return dict(zip(texts, legend.legend_handles, strict=True))


@pytest.fixture
def problem():
    return demo_problem(tokens=("a", "b"), horizon=2, prompts=("x", "y"))


def test_token_tree_draws_one_axis_with_every_edge_label(problem):
    tree, ref, reward = problem
    pi_star = tr.closed_form(ref, reward, 0.5).policy
    fig = plots.plot_token_tree(
        tree, {"π_ref": ref, "π*": pi_star}, prompt="y", leaf_values={"r": reward}
    )
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 1
    texts = [text.get_text() for text in fig.axes[0].texts]
    # 2 + 4 edges, each with a token label and one probability per policy
    assert sum(text in tree.tokens for text in texts) == 6
    assert f"{np.exp(pi_star.log_probs[0][1, 0]):.2f}" in texts  # prompt y, first token
    fig.canvas.draw()  # renders with Agg


def test_leaf_distributions_and_landscape():
    tree, log_target = bimodal_problem()
    target = tr.project(log_target, "full", "forward", tree=tree)
    policies = {
        "target": target,
        "reverse": tr.project(target, "position", "reverse"),
        "forward": tr.project(target, "position", "forward"),
    }
    fig = plots.plot_leaf_distributions(tree, policies)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].patches) == 3 * tree.n_leaves  # one bar per policy and leaf
    grid = np.linspace(-2, 2, 9)
    values = np.add.outer(grid, grid) ** 2
    fig = plots.plot_kl_landscape(grid, grid, values, points={"optimum": np.zeros(2)})
    assert len(fig.axes) == 2  # the contour plot and its colourbar
    fig.canvas.draw()
    with pytest.raises(ValueError, match="values must have shape"):
        plots.plot_kl_landscape(grid, grid[:3], values)


def test_sweep_plots(problem):
    tree, ref, reward = problem
    path = tr.beta_path(ref, reward, np.logspace(-1, 1, 5))
    fig = plots.plot_beta_path(path, prompt=1)
    assert len(fig.axes) == 3
    frontier = tr.reward_kl_frontier(ref, reward, np.logspace(-1, 1, 5))
    fig = plots.plot_frontier(
        frontier, points={"closed form": (0.1, 0.5)}, background=(np.ones(3), np.zeros(3))
    )
    assert len(fig.axes) == 1
    fig.canvas.draw()
    with pytest.raises(TypeError, match="path must be a BetaPath"):
        plots.plot_beta_path(frontier)


def test_convergence_and_reward_fit_plots():
    gaps = {"exact": np.array([1.0, 0.1, 0.0]), "natural": np.array([1.0, 1e-20])}
    fig = plots.plot_convergence(gaps, floor=1e-16)
    assert len(fig.axes) == 1
    assert len(fig.axes[0].lines) == 3  # two methods and the floor
    fig.canvas.draw()
    rng = np.random.default_rng(0)
    truth = rng.standard_normal(8)
    fits = {"small": truth + rng.standard_normal(8), "large": truth}
    fig = plots.plot_reward_fit(truth, fits)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="must have shape"):
        plots.plot_reward_fit(truth, {"bad": truth[:3]})


def test_drawing_into_given_axes():
    fig = Figure()
    ax = fig.subplots()
    gaps = {"exact": np.array([1.0, 0.5])}
    assert plots.plot_convergence(gaps, ax=ax) is fig
    with pytest.raises(TypeError, match="ax must be a matplotlib Axes"):
        plots.plot_convergence(gaps, ax="left")
    with pytest.raises(ValueError, match="axes must be a sequence of 3"):
        tree = tr.TokenTree(["a"], 1)
        path = tr.beta_path(tr.Policy.uniform(tree), np.zeros(1), [1.0])
        plots.plot_beta_path(path, axes=[ax])


def test_token_tree_refuses_trees_too_large_to_read():
    tree = tr.TokenTree(["a", "b", "c"], 4)
    with pytest.raises(ValueError, match="at most 32 leaves"):
        plots.plot_token_tree(tree, {"uniform": tr.Policy.uniform(tree)})


def test_kl_estimator_curves_that_coincide_stay_visible():
    # k1 and k3 are unbiased: their mean curves coincide with each other and with the true
    # KL (issue 10: two legend entries were hidden under others). Every estimator's curve
    # carries its own marker, and curves with equal data put their markers at different
    # places along the line (markevery offsets), so each legend entry shows on the plot.
    kl = np.linspace(0.0, 2.0, 40)
    names = ["k1", "k2", "k3", "k1 per token", "k2 per token", "k3 per token"]
    means = {name: kl if name.startswith(("k1", "k3")) else kl + kl**2 / 2 for name in names}
    stds = {name: np.sqrt(kl) for name in names}  # all equal
    errors = {name: np.zeros_like(kl) for name in names}  # all equal
    fig = plots.plot_kl_estimators(kl, means, stds, errors)
    for ax in fig.axes:
        lines = [line for line in ax.get_lines() if line.get_label() in names]
        assert len(lines) == len(names)
        styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
        assert len(styles) == len(names)  # one legend entry, one look
        for i, first in enumerate(lines):
            assert first.get_marker() not in ("None", "none", "", None)
            for second in lines[i + 1 :]:
                if np.allclose(first.get_ydata(), second.get_ydata()):
                    assert first.get_markevery() != second.get_markevery()
        legend_labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert set(names) <= set(legend_labels)
    FigureCanvasAgg(fig).draw()


def test_token_tree_legend_writes_the_action_apart_from_the_token_names(problem):
    # The legend's "pi(x | s)" must not use a token name of the tree for the action x: on a
    # tree with a token "a", "π_ref(a | s)" reads as the probability of token a only.
    tree, ref, reward = problem
    assert "a" in tree.tokens  # the clash this test guards against is possible here
    pi_star = tr.closed_form(ref, reward, 0.5).policy
    fig = plots.plot_token_tree(tree, {"π_ref": ref, "π*": pi_star})
    texts = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    actions = [re.search(r"\(([^|()]*)\|\s*s\)", text) for text in texts]
    assert all(action is not None for action in actions), texts  # each entry names pi(. | s)
    for action in actions:
        assert action.group(1).strip() not in tree.tokens, texts


def test_kl_penalty_legend_swatches_look_like_the_bars():
    # The "hatched" entry was a blank swatch (a Line2D of colour "none"): it must carry the
    # bars' hatch drawn in a visible edge colour, and the other swatches the bars' colours.
    names = ["k1/reward", "k2/loss", "k3/loss"]
    optimizes = ["reverse KL", "nothing", "reverse KL"]
    stationary = [True, False, True]
    fig = plots.plot_kl_penalty(
        names, optimizes, np.array([0.0, 0.5, 0.2]), np.array([0.0, 1.0, 0.1]), stationary
    )
    for ax in fig.axes:
        bars = [patch for patch in ax.patches if isinstance(patch, Rectangle)]
        assert [bool(bar.get_hatch()) for bar in bars] == [not s for s in stationary]
    entries = legend_entries(fig.axes[1])
    hatched = entries["hatched: no interior fixed point"]
    assert isinstance(hatched, Patch)
    assert hatched.get_hatch() == bars[1].get_hatch()
    assert hatched.get_edgecolor()[3] > 0  # the hatch is drawn in the edge colour
    assert not np.allclose(hatched.get_edgecolor(), hatched.get_facecolor())
    for k, kind in enumerate(optimizes):
        assert np.allclose(entries[kind].get_facecolor(), bars[k].get_facecolor())
    FigureCanvasAgg(fig).draw()


def test_training_dynamics_draws_the_targets_on_top_and_names_them():
    # The black target lines (pi*) were thin, half transparent, under the curves and absent
    # from the legend: each prompt's target is now in the legend and drawn above the curves.
    steps = np.arange(30)[:, None]
    targets = np.array([0.99, 0.6])
    success = {
        "reaches": targets - 0.5 * np.exp(-steps / 3.0),  # (30, 2), converges to the targets
        "stops short": 0.8 * targets - 0.3 * np.exp(-steps / 3.0),
    }
    residuals = {label: np.exp(-np.arange(30.0)) for label in success}
    fig = plots.plot_training_dynamics(success, targets, ["easy", "hard"], residuals)
    reward_ax = fig.axes[0]
    lines = reward_ax.get_lines()
    curves = [line for line in lines if line.get_label().startswith(tuple(success))]
    assert len(curves) == 2 * 2
    entries = legend_entries(reward_ax)
    for target, prompt in zip(targets, ["easy", "hard"], strict=True):
        (line,) = [line for line in lines if line.get_label() == f"π*: {prompt}"]
        assert np.allclose(line.get_ydata(), target)
        assert line.get_zorder() > max(curve.get_zorder() for curve in curves)
        assert (line.get_alpha() or 1.0) >= 0.8 and line.get_linewidth() >= 1.5
        handle = entries[f"π*: {prompt}"]
        assert to_rgba(handle.get_color())[:3] == to_rgba("black")[:3]
        assert handle.get_linestyle() == line.get_linestyle()
    FigureCanvasAgg(fig).draw()


def test_best_of_n_curves_that_coincide_stay_visible():
    # A verifier's KL equals best-of-n's on the plateau (issue: the exact-KL curve was hidden
    # under the verifier's). For every two curves of the right panel that share a segment, the
    # one drawn on top must let the one below show: their styles differ, the upper line has
    # no markers or hollow ones, and if the upper line is solid the lower one has markers.
    n = 2.0 ** np.arange(8)
    kl = np.minimum(np.log(n) - (n - 1) / n, 1.0)  # follows the bound, then a plateau
    verifier = np.minimum(0.5 * kl, 1.0)
    verifier[4:] = kl[4:]  # coincides with kl on the plateau
    fig = plots.plot_best_of_n(
        n,
        kl,
        np.sqrt(kl),
        (np.linspace(0, 1, 5), np.linspace(0, 1, 5)),
        kl_bound=np.log(n) - (n - 1) / n,
        extra_kl={"verifier": verifier, "distinct": np.log(n) - (n - 1) / n},
    )
    right = fig.axes[1]
    lines = right.get_lines()
    legend_labels = {text.get_text() for text in right.get_legend().get_texts()}
    assert {line.get_label() for line in lines} <= legend_labels
    order = {id(line): (line.get_zorder(), k) for k, line in enumerate(lines)}
    coinciding = 0
    for i, first in enumerate(lines):
        for second in lines[i + 1 :]:
            shared = np.isclose(first.get_ydata(), second.get_ydata(), rtol=1e-3)
            if not np.any(shared[1:] & shared[:-1]):  # no segment in common
                continue
            coinciding += 1
            lower, upper = sorted((first, second), key=lambda line: order[id(line)])
            style = (upper.get_linestyle(), upper.get_marker())
            assert style != (lower.get_linestyle(), lower.get_marker())
            assert upper.get_marker() in ("None", "none", "", None) or (
                upper.get_markerfacecolor() == "none"
            ), (upper.get_label(), lower.get_label())
            if upper.get_linestyle() == "-":
                assert lower.get_marker() not in ("None", "none", "", None)
    # exact KL with the bound, with the distinct leaves and with the verifier; distinct leaves
    # with the bound: the overlaps of the real figure
    assert coinciding == 4
    FigureCanvasAgg(fig).draw()
