"""Each plotting function draws a small case with the Agg backend and returns a figure with the
expected axes (no image comparisons); bad input is refused."""

import matplotlib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import tinyrlhf as tr
from tinyrlhf import plots
from tinyrlhf.examples import bimodal_problem, demo_problem

matplotlib.use("Agg")


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
