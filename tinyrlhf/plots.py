"""Drawing the lecture's pictures with matplotlib (no computation beyond drawing).

Every function takes data (arrays, sweeps, or a tree and policies) and an optional ``ax`` (or
``axes`` for multi-panel pictures) to draw into, and returns the matplotlib ``Figure``. With no
``ax`` a new ``matplotlib.figure.Figure`` is made without pyplot (no global state; Jupyter
displays it). The numbers come from :mod:`tinyrlhf.projections`, :mod:`tinyrlhf.sweeps`, the
solvers and :mod:`tinyrlhf.figures`, which assembles the committed set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from .policy import Policy
from .sweeps import BetaPath, RewardKLFrontier
from .tree import TokenTree
from .validation import check_tree

#: Largest number of leaves per prompt that :func:`plot_token_tree` draws legibly.
MAX_TREE_LEAVES = 32
#: Markers cycled through for overlaid point sets (solvers often land on the same point, so
#: hollow markers of decreasing size keep all of them visible).
MARKERS = ("o", "s", "D", "^", "v", "P", "X")
#: Default ``(marker, colour)`` of the points marked on a landscape.
POINT_STYLES = (("o", "white"), ("X", "red"), ("*", "orange"), ("s", "cyan"), ("D", "magenta"))
#: Hatch of the :func:`plot_kl_penalty` bars whose combination has no interior fixed point.
UNSTATIONARY_HATCH = "//"


def _figure_of(ax: Axes) -> Figure:
    """The figure that holds ``ax``, typed as the ``Figure`` the ``plot_*`` functions return
    (matplotlib types ``Axes.figure`` as ``Figure | SubFigure``; a no-op at run time)."""
    return cast(Figure, ax.figure)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        if not isinstance(ax, Axes):
            raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
        return ax
    return Figure(figsize=figsize, layout="constrained").subplots()


def _panels(axes: Sequence[Axes] | None, n: int, figsize: tuple[float, float]) -> list[Axes]:
    if axes is None:
        return list(Figure(figsize=figsize, layout="constrained").subplots(1, n))
    axes = list(axes)
    if len(axes) != n or not all(isinstance(ax, Axes) for ax in axes):
        raise ValueError(f"axes must be a sequence of {n} matplotlib Axes")
    return axes


def _gridded(
    *axes: Axes, fontsize: float = 8, which: Literal["major", "minor", "both"] = "major"
) -> Figure:
    """A light grid and a legend on every panel; returns the figure that holds them."""
    for ax in axes:
        ax.grid(alpha=0.3, which=which)
        ax.legend(fontsize=fontsize)
    return _figure_of(axes[0])


def _check_prompt(tree: TokenTree, prompt: int | str) -> int:
    return tree.prompt_index(prompt)


# ------------------------------------------------------------------------------ the tree
def plot_token_tree(
    tree: TokenTree,
    policies: Mapping[str, Policy],
    *,
    prompt: int | str = 0,
    leaf_values: Mapping[str, np.ndarray] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """The token tree of one prompt, each edge labelled with ``pi(a | s)`` of every policy.

    Each edge carries every policy's ``pi(a | s)`` in that policy's colour; the edges are drawn
    in the last policy's colour, with widths following its ``pi(a | s)`` (the legend says so).
    Leaves show their completion and the given per-leaf values (e.g. the reward).

    Args:
        tree: the token tree (at most :data:`MAX_TREE_LEAVES` leaves per prompt).
        policies: label -> Policy on ``tree`` (e.g. ``{"π_ref": ref, "π*": pi_star}``).
        prompt: which prompt's tree to draw (index or string).
        leaf_values: label -> ``(n_leaves,)`` array printed under each leaf.
        ax: where to draw.

    Returns:
        The figure.
    """
    tree = check_tree(tree)
    p = _check_prompt(tree, prompt)
    _check_tree_policies(tree, policies)
    ax = _axes(ax, (max(7.0, 1.1 * tree.leaves_per_prompt + 2.0), 1.5 * tree.horizon + 2.0))
    colors = [f"C{k}" for k in range(len(policies))]
    for h in range(tree.horizon):
        rows = slice(p * tree.n_tokens**h, (p + 1) * tree.n_tokens**h)  # the prompt's level h
        log_probs = [pi.log_probs[h][rows] for pi in policies.values()]  # (A**h, A) each
        _draw_edges(ax, tree, h, log_probs[-1], colors[-1])
        _label_edges(ax, tree, h, log_probs, colors)
    _draw_nodes(ax, tree)
    _label_leaves(ax, tree, p, leaf_values or {})
    _fit_axes_to_tree(ax, tree, 1 + len(leaf_values or {}))
    _tree_legend(ax, list(policies), colors)
    return _figure_of(ax)


def _check_tree_policies(tree: TokenTree, policies: Mapping[str, Policy]) -> None:
    """A tree small enough to draw, and one or more policies on it."""
    if tree.leaves_per_prompt > MAX_TREE_LEAVES:
        raise ValueError(
            f"plot_token_tree draws at most {MAX_TREE_LEAVES} leaves per prompt legibly; this "
            f"tree has {tree.leaves_per_prompt}. Use a smaller tree."
        )
    if not policies or not all(
        isinstance(pi, Policy) and pi.tree == tree for pi in policies.values()
    ):
        raise ValueError("policies must map labels to one or more Policy objects on tree")


def _node_x(tree: TokenTree, h: int) -> np.ndarray:
    """``(A**h,)`` x of the level-h states of one prompt, in leaf units (centred over their
    ``A**(H - h)`` leaves)."""
    return (np.arange(tree.n_tokens**h) + 0.5) * tree.n_tokens ** (tree.horizon - h) - 0.5


def _edge_x(tree: TokenTree, h: int) -> tuple[np.ndarray, np.ndarray]:
    """``(A**(h+1),)`` x of the parent and of the child end of each level-h edge."""
    return np.repeat(_node_x(tree, h), tree.n_tokens), _node_x(tree, h + 1)


def _draw_edges(ax: Axes, tree: TokenTree, h: int, log_probs: np.ndarray, color: str) -> None:
    """The level-h edges, as wide as ``pi(a | s)`` of ``log_probs`` ``(A**h, A)``."""
    parent_x, child_x = _edge_x(tree, h)
    width = np.exp(log_probs).reshape(-1)  # (A**(h+1),)
    segments = np.stack(
        [
            np.stack([parent_x, np.full(child_x.size, -h)], axis=1),
            np.stack([child_x, np.full(child_x.size, -h - 1.0)], axis=1),
        ],
        axis=1,
    )  # (A**(h+1), 2 ends, 2 coordinates)
    ax.add_collection(
        LineCollection(
            cast("Sequence[np.ndarray]", segments),  # (A**(h+1), 2, 2): one row per segment
            linewidths=0.6 + 5.0 * width,
            colors=color,
            alpha=0.45,
            zorder=1,
        )
    )


def _label_edges(
    ax: Axes, tree: TokenTree, h: int, log_probs: Sequence[np.ndarray], colors: Sequence[str]
) -> None:
    """At 55% of the way down each level-h edge: its token, then each policy's ``pi(a|s)``."""
    parent_x, child_x = _edge_x(tree, h)
    label_x = 0.45 * parent_x + 0.55 * child_x
    label_y = -h - 0.55
    for child in range(child_x.size):
        ax.text(
            label_x[child],
            label_y + 0.12,
            tree.tokens[child % tree.n_tokens],
            ha="center",
            va="bottom",
            fontsize=10,
            fontweight="bold",
            zorder=3,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )
        for k, (policy_log_probs, color) in enumerate(zip(log_probs, colors, strict=True)):
            ax.text(
                label_x[child],
                label_y - 0.02 - 0.17 * k,
                f"{np.exp(policy_log_probs.reshape(-1)[child]):.2f}",
                ha="center",
                va="top",
                fontsize=8,
                color=color,
                zorder=3,
                bbox={"boxstyle": "square,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.8},
            )


def _draw_nodes(ax: Axes, tree: TokenTree) -> None:
    """A dot at every state, level by level."""
    for h in range(tree.horizon + 1):
        xs = _node_x(tree, h)
        ax.scatter(xs, np.full(xs.size, -h), s=30, color="0.2", zorder=2)


def _label_leaves(
    ax: Axes, tree: TokenTree, p: int, leaf_values: Mapping[str, np.ndarray]
) -> None:
    """Under each leaf its completion and values; above the root, the prompt."""
    horizon = tree.horizon
    leaves = range(p * tree.leaves_per_prompt, (p + 1) * tree.leaves_per_prompt)
    for offset, leaf in enumerate(leaves):
        lines = [tree.leaf_text(leaf)[1]]
        for label, values in leaf_values.items():
            lines.append(f"{label}={np.asarray(values)[leaf]:.2f}")
        ax.text(offset, -horizon - 0.15, "\n".join(lines), ha="center", va="top", fontsize=8)
    prompt_text = tree.prompts[p] or "(empty prompt)"
    ax.text(
        _node_x(tree, 0)[0], 0.15, f"prompt {prompt_text!r}", ha="center", va="bottom", fontsize=9
    )


def _fit_axes_to_tree(ax: Axes, tree: TokenTree, n_leaf_lines: int) -> None:
    """Limits around the tree and its ``n_leaf_lines`` lines of leaf text; one tick a depth."""
    horizon = tree.horizon
    ax.set_xlim(-0.7, tree.leaves_per_prompt - 0.3)
    ax.set_ylim(-horizon - 0.3 - 0.15 * n_leaf_lines, 0.4)
    ax.set_yticks(-np.arange(horizon + 1), [f"depth {h}" for h in range(horizon + 1)])
    ax.set_xticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)


def _tree_legend(ax: Axes, labels: Sequence[str], colors: Sequence[str]) -> None:
    """What each colour is: the numbers of each policy (square markers) and the edges, drawn
    in the last policy's colour with width following its pi(a|s). The legend writes the
    action as "token": a letter could be a token name on the tree."""
    ax.legend(
        handles=[
            *(Line2D([], [], ls="none", marker="s", ms=8, color=color) for color in colors),
            Line2D([], [], color=colors[-1], alpha=0.45, lw=4),
        ],
        labels=[
            *(f"numbers: {label}(token | s)" for label in labels),
            f"edges: width ∝ {labels[-1]}(token | s)",
        ],
        loc="upper right",
        fontsize=9,
    )


# ----------------------------------------------------------------------- distributions
def plot_leaf_distributions(
    tree: TokenTree,
    policies: Mapping[str, Policy],
    *,
    prompt: int | str = 0,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars of ``P(xi | s_0)`` over the leaves of one prompt, one group per leaf.

    Args:
        tree: the token tree.
        policies: label -> Policy on ``tree`` (e.g. target, reverse and forward projections).
        prompt: which prompt.
        ax: where to draw.
    """
    tree = check_tree(tree)
    p = _check_prompt(tree, prompt)
    ax = _axes(ax, (max(6.0, 0.5 * tree.leaves_per_prompt * len(policies) + 2.0), 4.0))
    leaves = np.arange(p * tree.leaves_per_prompt, (p + 1) * tree.leaves_per_prompt)
    width = 0.8 / len(policies)
    for k, (label, pi) in enumerate(policies.items()):
        probs = pi.leaf_probs()[leaves]
        ax.bar(
            np.arange(leaves.size) + (k - (len(policies) - 1) / 2) * width,
            probs,
            width=width,
            label=label,
            color=f"C{k}",
        )
    ax.set_xticks(np.arange(leaves.size), [repr(tree.leaf_text(int(leaf))[1]) for leaf in leaves])
    ax.set_xlabel("complete generation ξ")
    ax.set_ylabel("P(ξ | s₀)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=9)
    return _figure_of(ax)


# --------------------------------------------------------------------------- landscapes
def plot_kl_landscape(
    x: np.ndarray,
    y: np.ndarray,
    values: np.ndarray,
    *,
    points: Mapping[str, np.ndarray] | None = None,
    styles: Sequence[tuple[str, str]] | None = None,
    title: str = "",
    xlabel: str = "θ₀",
    ylabel: str = "θ₁",
    colorbar_label: str = "KL",
    ax: Axes | None = None,
) -> Figure:
    """Filled contours of a divergence over two parameters, with marked points.

    Args:
        x: ``(n_x,)`` and y: ``(n_y,)`` grid coordinates.
        values: ``(n_y, n_x)`` the divergence on the grid (``values[j, i]`` at ``x[i], y[j]``).
        points: label -> ``(n, 2)`` or ``(2,)`` parameter points (optima, saddles) to mark.
        styles: ``(marker, colour)`` per entry of ``points`` (default :data:`POINT_STYLES`).
        title, xlabel, ylabel, colorbar_label: text.
        ax: where to draw (a colorbar is added next to it).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(y), len(x)):
        raise ValueError(f"values must have shape (len(y), len(x)) = {(len(y), len(x))}")
    ax = _axes(ax, (5.5, 4.5))
    # contour levels at quantiles of the finite values: even use of the colour scale
    finite = values[np.isfinite(values)]
    levels = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, 25)))
    filled = ax.contourf(x, y, values, levels=levels, cmap="viridis")
    ax.contour(x, y, values, levels=levels[::2], colors="white", linewidths=0.4, alpha=0.6)
    ax.figure.colorbar(filled, ax=ax, label=colorbar_label, format="%.2f")
    styles = POINT_STYLES if styles is None else list(styles)
    for k, (label, where) in enumerate((points or {}).items()):
        where = np.atleast_2d(np.asarray(where, dtype=np.float64))
        marker, color = styles[k % len(styles)]
        ax.scatter(
            where[:, 0],
            where[:, 1],
            marker=marker,
            s=260 if marker == "*" else 110,
            facecolor=color,
            edgecolor="black",
            linewidth=1.0,
            label=label,
            zorder=3,
        )
    if points:
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_aspect("equal")
    return _figure_of(ax)


# -------------------------------------------------------------------------------- sweeps
def plot_beta_path(
    path: BetaPath, *, prompt: int = 0, axes: Sequence[Axes] | None = None
) -> Figure:
    """Three panels over ``beta`` (log scale): reward and value, KL and entropy, log Z and λ*.

    Args:
        path: from :func:`tinyrlhf.sweeps.beta_path`.
        prompt: which prompt's column to draw.
        axes: three Axes to draw into (default: a new 1x3 figure).
    """
    if not isinstance(path, BetaPath):
        raise TypeError(f"path must be a BetaPath, got {type(path).__name__}")
    reward_ax, kl_ax, log_z_ax = _panels(axes, 3, (13.0, 3.8))
    beta = path.beta
    reward_ax.plot(beta, path.expected_reward[:, prompt], label="E_π*[r]")
    reward_ax.plot(beta, path.objective[:, prompt], "--", label="J(π*) = β log Z")
    reward_ax.set_ylabel("reward units")
    reward_ax.set_title("reward and value of the optimum")
    kl_ax.plot(beta, path.kl[:, prompt], color="C2", label="KL(π* ‖ π_ref)")
    kl_ax.plot(beta, path.entropy[:, prompt], color="C3", label="entropy of P*")
    kl_ax.set_ylabel("nats")
    kl_ax.set_title("distance from the reference, entropy")
    log_z_ax.plot(beta, path.log_partition[:, prompt], color="C4", label="log Z")
    log_z_ax.plot(beta, path.lagrange_multiplier[:, prompt], color="C5", label="λ* = β(1 − log Z)")
    log_z_ax.set_yscale("asinh", linear_width=1.0)
    # ticks 0, +-1, +-10, ... inside the drawn range (asinh's default ticks crowd near 0)
    low, high = log_z_ax.get_ylim()
    candidates = np.concatenate([-(10.0 ** np.arange(6)), [0.0], 10.0 ** np.arange(6)])
    log_z_ax.set_yticks(candidates[(candidates >= low) & (candidates <= high)])
    log_z_ax.yaxis.set_major_formatter("{x:g}")
    log_z_ax.yaxis.set_minor_locator(NullLocator())
    log_z_ax.set_ylabel("value (asinh scale)")
    log_z_ax.set_title("partition function and multiplier")
    for ax in (reward_ax, kl_ax, log_z_ax):
        ax.set_xscale("log")
        ax.set_xlabel("β (KL coefficient)")
    return _gridded(reward_ax, kl_ax, log_z_ax)


def plot_frontier(
    frontier: RewardKLFrontier,
    *,
    prompt: int = 0,
    points: Mapping[str, tuple[float, float]] | None = None,
    background: tuple[np.ndarray, np.ndarray] | None = None,
    background_label: str = "other policies",
    ax: Axes | None = None,
) -> Figure:
    """The reward-KL frontier of one prompt, with policies placed by ``(KL, E[r])``.

    Args:
        frontier: from :func:`tinyrlhf.sweeps.reward_kl_frontier`.
        prompt: which prompt's column.
        points: label -> ``(KL(pi || pi_ref), E_pi[r])`` drawn as hollow markers of
            decreasing size (so coinciding points stay visible).
        background: ``(kl, reward)`` arrays of other policies, drawn as small grey dots.
        background_label: legend text of the background.
        ax: where to draw.
    """
    if not isinstance(frontier, RewardKLFrontier):
        raise TypeError(f"frontier must be a RewardKLFrontier, got {type(frontier).__name__}")
    ax = _axes(ax, (6.5, 4.5))
    if background is not None:
        ax.scatter(
            background[0], background[1], s=6, color="0.7", label=background_label, zorder=1
        )
    ax.plot(
        frontier.kl[:, prompt],
        frontier.expected_reward[:, prompt],
        color="black",
        lw=2,
        label="frontier: π*_β for β ∈ (0, ∞)",
        zorder=2,
    )
    for k, (label, (kl, reward)) in enumerate((points or {}).items()):
        ax.scatter(
            [kl],
            [reward],
            marker=MARKERS[k % len(MARKERS)],
            s=220 / (1 + 0.6 * k),
            facecolor="none",
            edgecolor=f"C{k}",
            linewidth=2,
            label=label,
            zorder=3,
        )
    ax.set_xlabel("KL(π ‖ π_ref)  [nats]")
    ax.set_ylabel("E_π[r]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _figure_of(ax)


def plot_convergence(
    gaps: Mapping[str, np.ndarray],
    *,
    floor: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Objective gap ``J(pi*) - J(pi_t)`` against step, log scale, one line per method.

    Args:
        gaps: label -> ``(n_steps + 1,)`` gaps (entry 0 is the starting policy).
        floor: gaps below this (the float64 resolution of ``J``) are drawn at it, with a
            dotted line marking it; None draws only positive gaps.
        ax: where to draw.
    """
    ax = _axes(ax, (7.5, 4.8))
    for k, (label, gap) in enumerate(gaps.items()):
        gap = np.asarray(gap, dtype=np.float64)
        shown = np.maximum(gap, floor) if floor is not None else np.where(gap > 0, gap, np.nan)
        ax.plot(np.arange(gap.size), shown, color=f"C{k}", label=label, lw=1.5)
    if floor is not None:
        ax.axhline(floor, color="0.4", ls=":", lw=1, label="float64 resolution of J")
    ax.set_yscale("log")
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("step (linear to 10, then log)")
    ax.set_ylabel("J(π*) − J(π_t)")
    return _gridded(ax, which="both")


def plot_reward_fit(
    true_reward: np.ndarray,
    fitted: Mapping[str, np.ndarray],
    *,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Fitted against true reward, one panel per fit, each with the identity line.

    Args:
        true_reward: ``(n_leaves,)`` the true reward (centred as the fits are).
        fitted: label -> ``(n_leaves,)`` fitted rewards (e.g. one per dataset size).
        axes: one Axes per fit (default: a new 1 x len(fitted) figure, shared axes).
    """
    true_reward = np.asarray(true_reward, dtype=np.float64)
    if not fitted:
        raise ValueError("fitted must hold at least one fitted reward")
    if axes is None:
        axes = Figure(figsize=(3.6 * len(fitted) + 0.6, 4.0), layout="constrained").subplots(
            1, len(fitted), sharex=True, sharey=True, squeeze=False
        )[0]
    panels = _panels(axes, len(fitted), (0.0, 0.0))
    arrays = {label: np.asarray(r_hat, dtype=np.float64) for label, r_hat in fitted.items()}
    for label, r_hat in arrays.items():
        if r_hat.shape != true_reward.shape:
            raise ValueError(f"fitted[{label!r}] must have shape {true_reward.shape}")
    low = min(true_reward.min(), *(r_hat.min() for r_hat in arrays.values()))
    high = max(true_reward.max(), *(r_hat.max() for r_hat in arrays.values()))
    for k, (ax, (label, r_hat)) in enumerate(zip(panels, arrays.items(), strict=True)):
        ax.plot([low, high], [low, high], color="black", lw=1, ls="--", label="r̂ = r")
        ax.scatter(true_reward, r_hat, s=16, alpha=0.6, color=f"C{k}", label="leaves")
        ax.set_title(label)
        ax.set_xlabel("true reward r (centred)")
        ax.grid(alpha=0.3)
    panels[0].set_ylabel("fitted reward r̂")
    panels[0].legend(fontsize=8, loc="upper left")
    return _figure_of(panels[0])


# ------------------------------------------------------------ beyond the lecture (issue 7)
def plot_preference_game(
    preference: np.ndarray,
    labels: Sequence[str],
    distributions: Mapping[str, np.ndarray],
    *,
    win_rates: tuple[np.ndarray, Mapping[str, np.ndarray]] | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """An (intransitive) preference game: ``P(y > y')``, solutions, and who beats RLHF.

    Args:
        preference: ``(n, n)`` with ``preference[i, j] = P(i > j)`` (from
            :func:`tinyrlhf.preference_matrix`, one prompt).
        labels: the ``n`` completions' names.
        distributions: label -> ``(n,)`` distributions over the completions (e.g. RLHF
            optimum, minimax winner, regularized Nash equilibrium).
        win_rates: optional ``(betas, label -> (n_betas,))``: win rates against the RLHF
            optimum over ``beta``, drawn in a third panel with the tie line 1/2, in the
            colours of the last ``len(curves)`` distributions (list those last, in order).
        axes: two (three with ``win_rates``) Axes to draw into.
    """
    preference = np.asarray(preference, dtype=np.float64)
    n = preference.shape[0]
    if preference.shape != (n, n) or len(labels) != n:
        raise ValueError("preference must be (n, n) with one label per completion")
    n_panels = 3 if win_rates is not None else 2
    panels = _panels(axes, n_panels, (4.6 * n_panels, 4.2))
    _draw_preference_matrix(panels[0], preference, labels)
    _draw_solution_bars(panels[1], distributions, labels)
    if win_rates is not None:
        betas, curves = win_rates
        _draw_win_rates(panels[2], betas, curves, first_color=len(distributions) - len(curves))
    return _figure_of(panels[0])


def _draw_preference_matrix(ax: Axes, preference: np.ndarray, labels: Sequence[str]) -> None:
    """The ``(n, n)`` matrix ``P(y > y')`` as a red-blue image, each cell printed."""
    n = preference.shape[0]
    image = ax.imshow(preference, cmap="RdBu_r", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            dark = abs(preference[i, j] - 0.5) > 0.3  # white text on the saturated cells
            ax.text(
                j,
                i,
                f"{preference[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if dark else "black",
            )
    ax.set_xticks(np.arange(n), labels)
    ax.set_yticks(np.arange(n), labels)
    ax.set_xlabel("y'")
    ax.set_ylabel("y")
    ax.set_title("P(y ≻ y')")
    ax.figure.colorbar(image, ax=ax, shrink=0.8)


def _draw_solution_bars(
    ax: Axes, distributions: Mapping[str, np.ndarray], labels: Sequence[str]
) -> None:
    """One group of bars per completion, one bar per solution's probability of it."""
    n = len(labels)
    width = 0.8 / max(len(distributions), 1)
    for k, (label, probs) in enumerate(distributions.items()):
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (n,):
            raise ValueError(f"distributions[{label!r}] must have shape ({n},)")
        offset = (k - (len(distributions) - 1) / 2) * width
        ax.bar(np.arange(n) + offset, probs, width=width, label=label, color=f"C{k}")
    ax.set_xticks(np.arange(n), labels)
    # probabilities reach 1: leave a band above them for the legend (one row of 8-point text
    # per distribution, about 0.1 of the unit height each), ticks stop at 1
    legend_band = 0.1 + 0.1 * len(distributions)
    ax.set_ylim(0, 1.0 + legend_band)
    ax.set_yticks(np.linspace(0.0, 1.0, 6))
    ax.axhline(1.0, color="0.6", lw=0.6, zorder=0)
    ax.set_ylabel("probability")
    ax.set_title("the solutions")
    ax.legend(fontsize=8, loc="upper right", borderaxespad=0.3)


def _draw_win_rates(
    ax: Axes, betas: np.ndarray, curves: Mapping[str, np.ndarray], first_color: int
) -> None:
    """Win rates against the RLHF optimum over beta, in colours ``C{first_color}`` on."""
    for k, (label, rate) in enumerate(curves.items()):
        ax.plot(betas, rate, color=f"C{first_color + k}", label=label)
    ax.axhline(0.5, color="0.4", ls=":", lw=1, label="tie")
    ax.set_xscale("log")
    ax.set_xlabel("β (KL coefficient of RLHF, τ of the Nash game)")
    ax.set_ylabel("P(· ≻ RLHF optimum)")
    ax.set_title("win rate against the RLHF optimum")
    _gridded(ax)


def plot_kl_estimators(
    kl: np.ndarray,
    means: Mapping[str, np.ndarray],
    stds: Mapping[str, np.ndarray],
    gradient_errors: Mapping[str, np.ndarray],
    *,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Bias, spread and loss-gradient error of KL estimators against the true KL.

    Args:
        kl: ``(n,)`` the exact ``KL(pi || pi_ref)`` of ``n`` policies (the x axis).
        means: label -> ``(n,)`` exact ``E[k]`` of each estimator.
        stds: label -> ``(n,)`` exact standard deviations.
        gradient_errors: label -> ``(n,)`` ``||E grad k - grad KL|| / ||grad KL||``.
        axes: three Axes to draw into.
    """
    kl = np.asarray(kl, dtype=np.float64)
    mean_ax, std_ax, grad_ax = _panels(axes, 3, (14.0, 4.2))
    mean_ax.plot(kl, kl, color="black", lw=1, ls="--", label="the true KL", zorder=3)
    # Unbiased estimators coincide with each other (and with the true KL): each curve gets
    # its own marker, markers staggered along the curve (markevery offsets) and widths decreasing
    # in drawing order, so that every legend entry stays visible where curves overlap.
    n_curves = len(means)
    spacing = 0.12  # between two markers of one curve: a fraction of the axes diagonal
    for k, label in enumerate(means):
        style: dict[str, Any] = {
            "color": f"C{k % 3}",
            "ls": "-" if k < 3 else "--",
            "lw": 1.0 + 1.5 * (n_curves - 1 - k) / max(n_curves - 1, 1),
            "marker": "osD^vP"[k % 6],
            "ms": 5,
            "mfc": "white" if k >= 3 else None,
            "markevery": (spacing * k / n_curves, spacing),
        }
        mean_ax.plot(kl, np.asarray(means[label]), label=label, **style)
        std_ax.plot(kl, np.asarray(stds[label]), label=label, **style)
        grad_ax.plot(kl, np.asarray(gradient_errors[label]), label=label, **style)
    mean_ax.set_title("mean E[k]: k1, k3 unbiased")
    mean_ax.set_ylabel("nats")
    std_ax.set_title("standard deviation of one sample")
    std_ax.set_ylabel("nats (log scale)")
    std_ax.set_yscale("log")
    grad_ax.set_title("as a loss: ‖E∇k − ∇KL‖ / ‖∇KL‖")
    grad_ax.set_ylabel("relative error of the expected gradient")
    for ax in (mean_ax, std_ax, grad_ax):
        ax.set_xlabel("KL(π ‖ π_ref)  [nats]")
    return _gridded(mean_ax, std_ax, grad_ax)


def plot_overoptimization(
    kl: np.ndarray,
    true_reward: np.ndarray,
    labels: Sequence[str],
    *,
    proxy_gain: np.ndarray | None = None,
    oracle: tuple[np.ndarray, np.ndarray] | None = None,
    reference_reward: float | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Over-optimization curves: true reward (and proxy gain) against ``sqrt(KL)``.

    As in Gao et al. (2023) the x axis is the distance ``d = sqrt(KL(pi || pi_ref))``.

    Args:
        kl: ``(n_curves, n_points)`` KL of the policies along each curve.
        true_reward: ``(n_curves, n_points)`` their true expected reward.
        labels: one label per curve (e.g. the dataset size).
        proxy_gain: ``(n_curves, n_points)`` the fitted reward's gain over the reference;
            drawn in a second panel next to the true gain (``true_reward -
            reference_reward``).
        oracle: ``(kl, reward)`` of the optimum under the true reward (the frontier).
        reference_reward: the reference policy's true reward (a horizontal line).
        axes: one Axes (two with ``proxy_gain``) to draw into.
    """
    kl = np.atleast_2d(np.asarray(kl, dtype=np.float64))
    true_reward = np.atleast_2d(np.asarray(true_reward, dtype=np.float64))
    if kl.shape != true_reward.shape or len(labels) != kl.shape[0]:
        raise ValueError("kl and true_reward must have the same (n_curves, n_points) shape")
    with_proxy = proxy_gain is not None
    panels = _panels(axes, 2 if with_proxy else 1, (12.0 if with_proxy else 6.5, 4.6))
    true_ax = panels[0]
    if oracle is not None:
        true_ax.plot(
            np.sqrt(oracle[0]), oracle[1], color="black", lw=2, label="oracle: RLHF under r"
        )
    for k, label in enumerate(labels):
        true_ax.plot(np.sqrt(kl[k]), true_reward[k], "o-", ms=3, color=f"C{k}", label=label)
    if reference_reward is not None:
        true_ax.axhline(reference_reward, color="0.4", ls=":", lw=1, label="π_ref")
    true_ax.set_ylabel("true reward E_π[r]")
    true_ax.set_title("true reward of the RLHF optimum under r̂")
    if with_proxy:
        proxy_ax = panels[1]
        proxy = np.atleast_2d(np.asarray(proxy_gain, dtype=np.float64))
        base = 0.0 if reference_reward is None else reference_reward
        for k, label in enumerate(labels):
            proxy_ax.plot(np.sqrt(kl[k]), proxy[k], color=f"C{k}", label=f"{label}: proxy r̂")
            proxy_ax.plot(np.sqrt(kl[k]), true_reward[k] - base, color=f"C{k}", ls="--")
        proxy_ax.plot([], [], color="0.3", ls="--", label="true r (dashed)")
        proxy_ax.set_ylabel("gain over π_ref")
        proxy_ax.set_title("what the optimizer sees (r̂) and what it gets (r)")
    for ax in panels:
        ax.set_xlabel("√KL(π ‖ π_ref)")
    return _gridded(*panels)


def plot_best_of_n(
    n: np.ndarray,
    kl: np.ndarray,
    reward: np.ndarray,
    frontier: tuple[np.ndarray, np.ndarray],
    *,
    kl_bound: np.ndarray | None = None,
    extra_kl: Mapping[str, np.ndarray] | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Best-of-n beside the reward-KL frontier, and its KL over ``n`` against the bound.

    Args:
        n: ``(n_ns,)`` numbers of draws.
        kl: ``(n_ns,)`` exact ``KL(P_BoN || P_ref)``.
        reward: ``(n_ns,)`` ``E_BoN[r]``.
        frontier: ``(kl, reward)`` of the KL-regularized optimum ``pi*_beta`` over beta.
        kl_bound: ``(n_ns,)`` ``log n - (n - 1)/n`` (right panel).
        extra_kl: label -> ``(n_ns,)`` more exact KL curves for the right panel (e.g. a
            verifier's, or many equiprobable leaves').
        axes: two Axes to draw into.
    """
    n = np.asarray(n, dtype=np.float64)
    kl, reward = np.asarray(kl, dtype=np.float64), np.asarray(reward, dtype=np.float64)
    if kl.shape != n.shape or reward.shape != n.shape:
        raise ValueError("n, kl and reward must have the same (n_ns,) shape")
    left, right = _panels(axes, 2, (12.0, 4.6))
    left.plot(frontier[0], frontier[1], color="black", lw=2, label="RLHF frontier π*_β")
    left.plot(kl, reward, "o-", color="C3", ms=4, label="best-of-n (exact)")
    for k in range(n.size):
        if n[k] in (1, 4, 16, 256):
            left.annotate(
                f"n={n[k]:g}",
                (kl[k], reward[k]),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
                color="C3",
            )
    left.set_xlabel("KL(π ‖ π_ref)  [nats]")
    left.set_ylabel("E_π[r]")
    left.set_title("reward against KL: best-of-n vs the KL-regularized optimum")
    # the curves coincide in places (a verifier's KL plateaus where best-of-n's does; many
    # distinct leaves follow the bound): each has its own line style and marker; the exact
    # KL is drawn on top with hollow circles, through which the filled markers below show,
    # and the dashed bound on top of all lets the curves under it show between its dashes
    right.semilogx(
        n,
        kl,
        "o-",
        color="C3",
        ms=7,
        mfc="none",
        mew=1.3,
        zorder=4,
        label="exact KL(best-of-n ‖ π_ref)",
    )
    extra_styles = (("s", "--"), ("^", "-."), ("v", ":"), ("D", (0, (5, 1, 1, 1))))
    for k, (label, values) in enumerate((extra_kl or {}).items()):
        marker, style = extra_styles[k % len(extra_styles)]
        right.semilogx(
            n, values, marker=marker, ls=style, ms=4, color=f"C{k}", zorder=3, label=label
        )
    if kl_bound is not None:
        right.semilogx(
            n, kl_bound, color="black", ls="--", lw=1.2, zorder=5, label="log n − (n−1)/n"
        )
    right.set_xlabel("n (draws)")
    right.set_ylabel("KL  [nats]")
    right.set_title("the 'exact' formula is an upper bound")
    return _gridded(left, right)


def plot_best_of_n_proxy(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    oracle: tuple[np.ndarray, np.ndarray],
    *,
    reference_reward: float | None = None,
    ax: Axes | None = None,
) -> Figure:
    """True reward against ``sqrt(KL)`` for policies that optimize a proxy ``r_hat``.

    Args:
        curves: label -> ``(kl, true_reward)`` arrays (e.g. best-of-n under ``r_hat`` over
            ``n``, RLHF under ``r_hat`` at the same KLs); labels containing "RLHF" are dashed.
        oracle: ``(kl, reward)`` of the optimum under the true reward (the frontier).
        reference_reward: ``E_{pi_ref}[r]`` (a horizontal line).
        ax: where to draw.
    """
    ax = _axes(ax, (7.5, 4.8))
    ax.plot(np.sqrt(oracle[0]), oracle[1], color="black", lw=2, label="oracle: RLHF under r")
    for k, (label, (kl, true_reward)) in enumerate(curves.items()):
        style = "--" if "RLHF" in label else "o-"
        color = f"C{k // 2}"
        ax.plot(np.sqrt(kl), true_reward, style, ms=3, color=color, label=label)
    if reference_reward is not None:
        ax.axhline(reference_reward, color="0.4", ls=":", lw=1, label="π_ref")
    ax.set_xlabel("√KL(π ‖ π_ref)")
    ax.set_ylabel("true reward E_π[r]")
    return _gridded(ax, fontsize=7)


def plot_kl_penalty(
    names: Sequence[str],
    optimizes: Sequence[str],
    tv: np.ndarray,
    objective_lost: np.ndarray,
    stationary: Sequence[bool],
    *,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Where each KL estimator x placement x level trains to: distance from ``pi*`` and the
    true objective lost, one bar per combination coloured by what it optimizes (hatched: no
    interior fixed point, the bar shows where training heads)."""
    tv, lost = np.asarray(tv, dtype=np.float64), np.asarray(objective_lost, dtype=np.float64)
    if not len(names) == len(optimizes) == tv.size == lost.size == len(stationary):
        raise ValueError("names, optimizes, tv, objective_lost and stationary must align")
    kinds = list(dict.fromkeys(optimizes))
    colours = {kind: f"C{k}" for k, kind in enumerate(kinds)}
    left, right = _panels(axes, 2, (12.0, 4.8))
    positions = np.arange(len(names))
    for ax, values, title in (
        (left, tv, "TV(fixed point, π*)"),
        (right, lost, "J(π*) − J(fixed point),  J = E[r] − β KL(π‖π_ref)"),
    ):
        for k in range(len(names)):
            ax.bar(
                positions[k],
                values[k],
                color=colours[optimizes[k]],
                hatch=None if stationary[k] else UNSTATIONARY_HATCH,
                edgecolor="0.2",
                linewidth=0.5,
            )
            if values[k] < 1e-9:  # nothing to draw: the fixed point is pi*
                ax.annotate(
                    "π*",
                    (positions[k], 0.0),
                    textcoords="offset points",
                    xytext=(0, 3),
                    ha="center",
                    fontsize=8,
                    color=colours[optimizes[k]],
                )
        ax.set_xticks(positions, names, rotation=60, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="y")
    # legend swatches drawn like the bars: filled by what they optimize, and one hatched
    handles = [
        Patch(facecolor=colours[kind], edgecolor="0.2", linewidth=0.5, label=kind)
        for kind in kinds
    ]
    handles.append(
        Patch(
            facecolor="white",
            edgecolor="0.2",
            linewidth=0.5,
            hatch=UNSTATIONARY_HATCH,
            label="hatched: no interior fixed point",
        )
    )
    right.legend(handles=handles, fontsize=8)
    return _figure_of(left)


# ------------------------------------------------------- RL with verifiable rewards
def plot_difficulty_bias(
    success: np.ndarray,
    scales: Mapping[str, np.ndarray],
    *,
    reference: Mapping[str, np.ndarray] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Per-prompt scale of an expected update against the prompt's success probability.

    Args:
        success: ``(n,)`` success probabilities ``P(r = 1)`` (x axis).
        scales: label -> ``(n,)`` ``prompt_scale`` of an estimator (the update of the prompt
            is this multiple of ``grad P(r = 1)``).
        reference: label -> ``(n,)`` curves drawn dashed in grey (e.g. a large-``G`` limit).
        ax: where to draw.
    """
    ax = _axes(ax, (7.5, 4.8))
    success = np.asarray(success, dtype=np.float64)
    for k, (label, scale) in enumerate(scales.items()):
        ax.plot(success, np.asarray(scale), color=f"C{k}", label=label, lw=1.6)
    for label, curve in (reference or {}).items():
        ax.plot(success, np.asarray(curve), color="0.4", ls="--", lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("success probability of the prompt under π")
    ax.set_ylabel("update / ∇P(success)  (log scale)")
    return _gridded(ax, which="both")


def plot_length_bias(
    lengths: np.ndarray,
    weights: Mapping[str, tuple[np.ndarray, np.ndarray]],
    mean_lengths: Mapping[str, np.ndarray],
    *,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Effective weight per completion length (correct / incorrect) and length over training.

    Args:
        lengths: ``(m,)`` completion lengths (x axis of the left panel).
        weights: label -> ``(correct, incorrect)``, each ``(m,)``: the weight ``w(y)`` of a
            correct and an incorrect completion of each length (NaN where none).
        mean_lengths: label -> ``(steps + 1,)`` expected length ``E|y|`` per training step.
        axes: two Axes.
    """
    weight_ax, length_ax = _panels(axes, 2, (13.0, 4.6))
    lengths = np.asarray(lengths)
    for k, (label, (correct, incorrect)) in enumerate(weights.items()):
        weight_ax.plot(lengths, np.asarray(correct), color=f"C{k}", marker="o", label=label)
        weight_ax.plot(lengths, np.asarray(incorrect), color=f"C{k}", marker="v", ls="--")
    weight_ax.axhline(0.0, color="black", lw=0.8)
    weight_ax.set_xticks(lengths)
    weight_ax.set_xlabel("completion length |y| (tokens, eos included)")
    weight_ax.set_ylabel("w(y) / max |w|  (o correct, v incorrect)")
    weight_ax.set_title("effective weight of one completion")
    for k, (label, history) in enumerate(mean_lengths.items()):
        length_ax.plot(np.arange(len(history)), np.asarray(history), color=f"C{k}", label=label)
    length_ax.set_xlabel("training step")
    length_ax.set_ylabel("E|y| under π_t")
    length_ax.set_title("expected completion length during training")
    return _gridded(weight_ax, length_ax)


def plot_training_dynamics(
    success: Mapping[str, np.ndarray],
    targets: np.ndarray,
    prompts: Sequence[str],
    residuals: Mapping[str, np.ndarray],
    *,
    tolerance: float | None = None,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Per-prompt expected reward over training against a target, and the residual.

    Args:
        success: label -> ``(steps + 1, n_prompts)`` expected reward per prompt.
        targets: ``(n_prompts,)`` the target's expected reward per prompt (black lines, in
            the legend as "π*: <prompt>").
        prompts: prompt names (one line style each).
        residuals: label -> ``(steps + 1,)`` certificate of the expected update
            (:func:`tinyrlhf.gradients.update_residual`, the KKT gap).
        tolerance: the stopping tolerance (a dotted line).
        axes: two Axes.
    """
    reward_ax, residual_ax = _panels(axes, 2, (13.0, 4.8))
    styles = ("-", "--", "-.", ":")
    for k, (label, history) in enumerate(success.items()):
        history = np.asarray(history)
        for p, name in enumerate(prompts):
            reward_ax.plot(
                np.arange(history.shape[0]),
                history[:, p],
                color=f"C{k}",
                ls=styles[p % len(styles)],
                label=f"{label}: {name}",
            )
    # the targets in black, one line style per prompt like the curves, drawn on top of them
    # (a run that reaches its target disappears under it) and named in the legend
    for p, (target, name) in enumerate(zip(np.asarray(targets), prompts, strict=True)):
        reward_ax.axhline(
            target,
            color="black",
            lw=1.6,
            ls=styles[p % len(styles)],
            alpha=0.85,
            zorder=4,
            label=f"π*: {name}",
        )
    reward_ax.set_xscale("symlog", linthresh=10)
    reward_ax.set_xlim(left=0)
    reward_ax.set_xlabel("step (linear to 10, then log)")
    reward_ax.set_ylabel("P(success | prompt)  (black: π*)")
    for k, (label, residual) in enumerate(residuals.items()):
        residual_ax.plot(
            np.arange(len(residual)), np.asarray(residual), color=f"C{k}", label=label
        )
    if tolerance is not None:
        residual_ax.axhline(tolerance, color="0.4", ls=":", label="tolerance")
    residual_ax.set_yscale("log")
    residual_ax.set_xlabel("step")
    residual_ax.set_ylabel("KKT gap of E[ĝ]  (residual)")
    for ax in (reward_ax, residual_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, ncol=2 if ax is reward_ax else 1)
    return _figure_of(reward_ax)


def plot_entropy_dynamics(
    entropies: Mapping[str, np.ndarray],
    exact_change: np.ndarray,
    covariance_change: np.ndarray,
    *,
    axes: Sequence[Axes] | None = None,
) -> Figure:
    """Sequence entropy over training, and exact per-state entropy change of one step
    against the covariance formula.

    Args:
        entropies: label -> ``(steps + 1,)`` sequence entropy per step.
        exact_change: ``(n_states,)`` exact ``Delta Ent(s)`` of one update.
        covariance_change: ``(n_states,)`` ``-lr Cov(log pi, Delta theta)`` of the same step.
        axes: two Axes.
    """
    entropy_ax, change_ax = _panels(axes, 2, (13.0, 4.8))
    for k, (label, history) in enumerate(entropies.items()):
        history = np.asarray(history)
        entropy_ax.plot(np.arange(history.size), history, color=f"C{k}", label=label)
        entropy_ax.axhline(history[-1], color=f"C{k}", ls=":", lw=0.8)
    entropy_ax.set_xscale("symlog", linthresh=10)
    entropy_ax.set_xlim(left=0)
    entropy_ax.set_xlabel("step (linear to 10, then log)")
    entropy_ax.set_ylabel("sequence entropy of π_t  [nats]")
    entropy_ax.set_title("entropy collapse and its floor (dotted: the stationary value)")
    exact_change = np.asarray(exact_change)
    covariance_change = np.asarray(covariance_change)
    change_ax.scatter(covariance_change, exact_change, s=8, alpha=0.6)
    low = float(min(exact_change.min(), covariance_change.min()))
    high = float(max(exact_change.max(), covariance_change.max()))
    change_ax.plot([low, high], [low, high], color="black", lw=0.8, ls="--", label="identity")
    change_ax.set_xlabel("−Cov_{a~π(·|s)}(log π(a|s), Δθ(s,a))")
    change_ax.set_ylabel("exact ΔH(s)")
    change_ax.set_title("one update, every state: covariance formula vs exact")
    return _gridded(entropy_ax, change_ax)
