"""Sliders for class: move beta, n or the projection and watch the picture change.

A thin layer of ipywidgets (the ``widgets`` extra: ``pip install -e ".[widgets]"``) over the
ordinary :mod:`tinyrlhf.plots` functions, for the lecture's sections ④ (KL-regularized RL)
and ⑤ (reverse vs forward KL). Each builder returns an :class:`Explorer`: the widget to
display, the matplotlib figure it draws into, and ``update``, the callback its controls
call, which tests (and scripts) can call directly, with no browser or kernel.

- :func:`beta_slider`: pi_ref and pi*_beta on the token tree, titled with E_pi*[r],
  KL(pi* ‖ pi_ref) and log Z.
- :func:`projection_selector`: a target and its projection onto a family (full, position,
  unigram) in reverse or forward KL.
- :func:`best_of_n_slider` (only where ``tinyrlhf.best_of_n`` exists): the best-of-n policy
  against the KL-regularized optimum at the same KL, found by :func:`beta_at_kl`.

The figure is shown as a PNG in an ``ipywidgets.Image``, so the drawing is the same in
Jupyter, in VS Code and in a test. This module imports without ipywidgets; only the
builders need it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from . import examples, plots
from .animations import animation_problem, draw_optimum
from .divergences import expected_reward, kl_divergence
from .policy import Policy
from .projections import project
from .solvers import closed_form
from .tree import TokenTree
from .validation import check_leaf_array, check_policy

#: Resolution of the PNG a widget shows.
DPI = 80
#: Bracket of log10(beta) searched by :func:`beta_at_kl`.
LOG10_BETA_RANGE = (-4.0, 6.0)
#: Bisection steps of :func:`beta_at_kl` (halves the bracket of 10 decades each time:
#: 60 steps leave a relative error in beta below 1e-15).
BISECTION_STEPS = 60

_MISSING_EXTRA = 'the classroom widgets need ipywidgets: pip install -e ".[widgets]"'


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as error:
        raise ImportError(_MISSING_EXTRA) from error
    return ipywidgets


@dataclass
class Explorer:
    """A figure with the controls that redraw it.

    Attributes:
        widget: the ``ipywidgets`` box to display (controls above, picture below).
        figure: the matplotlib figure the callback draws into.
        controls: name -> the ipywidgets control (slider, dropdown, ...).
        update: the callback the controls call; keyword arguments named like ``controls``.
        state: the numbers of the last drawing (what the title shows), for tests and scripts.
    """

    widget: Any
    figure: Figure
    controls: dict[str, Any]
    update: Callable[..., None]
    state: dict[str, Any] = field(default_factory=dict)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
    return buffer.getvalue()


def _assemble(
    figure: Figure, controls: dict[str, Any], draw: Callable[..., dict[str, Any]]
) -> Explorer:
    """Wire ``controls`` to ``draw(**values)``; show the figure in an Image below them."""
    widgets = _ipywidgets()
    image = widgets.Image(format="png")
    explorer = Explorer(
        widget=widgets.VBox([*controls.values(), image]),
        figure=figure,
        controls=controls,
        update=lambda **values: None,
    )

    def update(**values: Any) -> None:
        current = {name: control.value for name, control in controls.items()}
        current.update(values)
        explorer.state = draw(**current)
        image.value = _png(figure)

    explorer.update = update
    for name, control in controls.items():
        control.observe(lambda change, name=name: update(**{name: change["new"]}), names="value")
    update()
    return explorer


def beta_slider(
    ref: Policy | None = None, reward: np.ndarray | None = None, beta: float = 0.7
) -> Explorer:
    r"""A log-scale beta slider redrawing pi_ref and pi*_beta on the token tree.

    The optimum is the lecture's closed form (section ④, KKT),

    .. math::

        P^*(\xi \mid s_0) = \frac{P_{\text{ref}}(\xi \mid s_0)\, e^{r(\xi)/\beta}}{Z(s_0)},
        \qquad Z(s_0) = \sum_{\xi} P_{\text{ref}}(\xi \mid s_0)\, e^{r(\xi)/\beta},

    and the title shows :math:`\mathbb{E}_{\pi^*}[r]`,
    :math:`\mathrm{KL}(\pi^* \,\|\, \pi_{\text{ref}})` and :math:`\log Z` of the first prompt.

    Args:
        ref: reference policy, at most :data:`tinyrlhf.plots.MAX_TREE_LEAVES` leaves per
            prompt (default: the demo problem on tokens a, b with horizon 3).
        reward: ``(n_leaves,)`` rewards (default: the demo reward; give both or neither).
        beta: the starting KL coefficient, in [0.01, 20].

    Returns:
        The :class:`Explorer`; ``state`` holds ``beta``, ``expected_reward``, ``kl`` and
        ``log_partition`` (first prompt).

    Raises:
        ImportError: ipywidgets is missing.
        ValueError: only one of ``ref`` and ``reward`` is given, or ``beta`` is out of range.
    """
    ref, reward = _problem(ref, reward)
    if not 0.01 <= beta <= 20.0:
        raise ValueError(f"beta must be in [0.01, 20] (the slider's range), got {beta!r}")
    widgets = _ipywidgets()
    figure = Figure(figsize=(10.0, 6.0), layout="constrained")
    ax = figure.subplots()
    slider = widgets.FloatLogSlider(
        value=beta, base=10, min=-2.0, max=np.log10(20.0), step=0.05, description="β"
    )

    def draw(beta: float) -> dict[str, Any]:
        star = closed_form(ref, reward, beta)
        assert star.log_partition is not None  # the closed form always sets it
        draw_optimum(ax, ref, reward, beta)
        return {
            "beta": float(beta),
            "expected_reward": float(star.expected_reward()[0]),
            "kl": float(star.kl()[0]),
            "log_partition": float(star.log_partition[0]),
        }

    return _assemble(figure, {"beta": slider}, draw)


def _problem(ref: Policy | None, reward: np.ndarray | None) -> tuple[Policy, np.ndarray]:
    if (ref is None) != (reward is None):
        raise ValueError("give both ref and reward, or neither (for the demo problem)")
    if ref is None:
        return animation_problem()
    ref = check_policy(ref, "ref")
    return ref, check_leaf_array(ref.tree, reward, "reward")


def projection_selector(
    target: Policy | np.ndarray | None = None,
    *,
    tree: TokenTree | None = None,
    family: str = "position",
    divergence: str = "reverse",
) -> Explorer:
    """A family selector and a divergence toggle redrawing a projection of ``target``.

    Draws the target's leaf distribution against
    ``argmin_{pi in family} KL(pi ‖ target)`` (reverse, mode seeking) or
    ``KL(target ‖ pi)`` (forward, mass covering), computed by :func:`tinyrlhf.project`.

    Args:
        target: a Policy, or leaf log-probs ``(n_leaves,)`` with ``tree=`` (default: the
            bimodal target of :func:`tinyrlhf.examples.bimodal_problem`).
        tree: the tree of leaf log-probs ``target``.
        family: starting family, ``"full"`` | ``"position"`` | ``"unigram"``.
        divergence: starting divergence, ``"reverse"`` | ``"forward"``.

    Returns:
        The :class:`Explorer`; ``state`` holds ``family``, ``divergence`` and ``kl`` (the
        projection's divergence from the target, first prompt).

    Raises:
        ImportError: ipywidgets is missing.
    """
    if target is None:
        tree, target = examples.bimodal_problem()
    widgets = _ipywidgets()
    figure = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = figure.subplots()
    controls = {
        "family": widgets.Dropdown(
            options=["full", "position", "unigram"], value=family, description="family"
        ),
        "divergence": widgets.ToggleButtons(
            options=["reverse", "forward"], value=divergence, description="KL"
        ),
    }
    target_policy = project(target, "full", "forward", tree=tree)  # the target itself

    def draw(family: str, divergence: str) -> dict[str, Any]:
        projection = project(target, family, divergence, tree=tree, seed=0)
        if divergence == "reverse":
            kl = float(kl_divergence(projection, target_policy)[0])
            label = f"argmin KL(π‖P) over {family}: {kl:.3f}"
        else:
            kl = float(kl_divergence(target_policy, projection)[0])
            label = f"argmin KL(P‖π) over {family}: {kl:.3f}"
        ax.clear()
        plots.plot_leaf_distributions(
            target_policy.tree, {"target P": target_policy, label: projection}, ax=ax
        )
        ax.set_title(f"{divergence} KL projection onto the {family} family")
        return {"family": family, "divergence": divergence, "kl": kl}

    return _assemble(figure, controls, draw)


def beta_at_kl(ref: Policy, reward: np.ndarray, kl: float, *, prompt: int = 0) -> float:
    r"""The beta whose optimum pi*_beta has ``KL(pi*_beta ‖ pi_ref) = kl`` for ``prompt``.

    The KL of the optimum falls monotonically in beta,

    .. math::

        \frac{d}{d\beta}\, \mathrm{KL}(\pi^*_\beta \,\|\, \pi_{\text{ref}})
        = -\frac{\mathrm{Var}_{\pi^*_\beta}(r)}{\beta^3} \le 0,

    from its largest value at beta -> 0 to 0 at beta -> inf, so a bisection on log10(beta)
    over :data:`LOG10_BETA_RANGE` finds it.

    Args:
        ref: reference policy.
        reward: ``(n_leaves,)`` rewards.
        kl: the target KL in nats, >= 0.
        prompt: the prompt whose KL is matched.

    Returns:
        beta: ``inf`` when ``kl`` is 0, else clipped to the bracket (its smallest beta when
        ``kl`` exceeds every KL the bracket reaches, e.g. for a constant reward).

    Raises:
        ValueError: ``kl`` is negative or not finite.
    """
    ref = check_policy(ref, "ref")
    reward = check_leaf_array(ref.tree, reward, "reward")
    if not (np.isfinite(kl) and kl >= 0):
        raise ValueError(f"kl must be a finite number >= 0, got {kl!r}")

    def kl_at(log10_beta: float) -> float:
        return float(closed_form(ref, reward, 10.0**log10_beta).kl()[prompt])

    if kl == 0:
        return float("inf")
    low, high = LOG10_BETA_RANGE
    if kl >= kl_at(low):
        return 10.0**low
    if kl <= kl_at(high):
        return 10.0**high
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        if kl_at(middle) > kl:
            low = middle  # KL too large: beta must grow
        else:
            high = middle
    return 10.0 ** (0.5 * (low + high))


def best_of_n_slider(
    ref: Policy | None = None, score: np.ndarray | None = None, *, n: int = 4, max_n: int = 32
) -> Explorer:
    r"""A slider over n redrawing best-of-n against the KL-regularized optimum at equal KL.

    Best-of-n draws n generations from pi_ref and keeps the best under ``score``
    (``tinyrlhf.best_of_n``); its KL from pi_ref is at most
    :math:`\log n - (n-1)/n`. The RLHF optimum
    :math:`P^* \propto P_{\text{ref}}\, e^{\text{score}/\beta}` with the same KL (beta from
    :func:`beta_at_kl`) is drawn beside it, and the title compares their expected scores.

    Args:
        ref: reference policy (default: the demo problem on tokens a, b with horizon 3).
        score: ``(n_leaves,)`` scores, ties allowed (default: the demo reward).
        n: the starting n, 1 <= n <= max_n.
        max_n: the slider's largest n.

    Returns:
        The :class:`Explorer`; ``state`` holds ``n``, ``kl``, ``beta`` and the expected
        scores ``best_of_n`` and ``rlhf`` (first prompt).

    Raises:
        ImportError: ipywidgets is missing.
        NotImplementedError: this version of tinyrlhf has no ``best_of_n``.
    """
    import tinyrlhf

    best_of_n = getattr(tinyrlhf, "best_of_n", None)
    if best_of_n is None:
        raise NotImplementedError("tinyrlhf.best_of_n is not available in this version")
    ref, score = _problem(ref, score)
    if not 1 <= n <= max_n:
        raise ValueError(f"n must be in [1, max_n = {max_n}], got {n!r}")
    widgets = _ipywidgets()
    figure = Figure(figsize=(9.0, 4.0), layout="constrained")
    ax = figure.subplots()
    slider = widgets.IntSlider(value=n, min=1, max=max_n, description="n")

    def draw(n: int) -> dict[str, Any]:
        result = best_of_n(ref, score, n)
        kl = float(np.asarray(result.kl)[0])
        beta = beta_at_kl(ref, score, kl)
        star = ref if np.isinf(beta) else closed_form(ref, score, beta).policy
        rlhf_score = float(expected_reward(star, score)[0])
        ax.clear()
        plots.plot_leaf_distributions(
            ref.tree,
            {"π_ref": ref, f"best-of-{n}": result.policy, f"π*_β, β = {beta:.3g}": star},
            ax=ax,
        )
        ax.set_title(
            f"equal KL = {kl:.3f}: E[score] best-of-{n} = {np.asarray(result.expected_score)[0]:.3f}, "
            f"RLHF = {rlhf_score:.3f}"
        )
        return {
            "n": int(n),
            "kl": kl,
            "beta": beta,
            "best_of_n": float(np.asarray(result.expected_score)[0]),
            "rlhf": rlhf_score,
        }

    return _assemble(figure, {"n": slider}, draw)


def classroom() -> Any:
    """Every explorer of this module in one tabbed widget (best-of-n where available).

    Returns:
        An ``ipywidgets.Tab``.

    Raises:
        ImportError: ipywidgets is missing.
    """
    import tinyrlhf

    widgets = _ipywidgets()
    explorers = {"β and π*": beta_slider(), "projections": projection_selector()}
    if hasattr(tinyrlhf, "best_of_n"):
        explorers["best-of-n"] = best_of_n_slider()
    return widgets.Tab(
        children=[explorer.widget for explorer in explorers.values()], titles=list(explorers)
    )
