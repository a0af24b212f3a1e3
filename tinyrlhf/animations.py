"""Animated GIFs for class: ``tinyrlhf figures --animations``.

Three animations of the lecture's section ④ and of its practice (KL-regularized RL), drawn frame by frame with the
ordinary :mod:`tinyrlhf.plots` functions and written with matplotlib's ``PillowWriter``
(Pillow comes with matplotlib; no new dependency):

  beta_sweep.gif       pi* on the token tree as beta sweeps from 10 down to 0.05:
                       P*(xi) ∝ P_ref(xi) exp(r(xi)/beta) moves from pi_ref to the best leaves
  policy_gradient.gif  the leaf distributions of the policy-gradient iterates (exact,
                       natural, REINFORCE, PPO) approaching the closed form pi*
  training_dynamics.gif  exact mean-field training (tinyrlhf.train_expected) with a 0/1
                       reward and k1 in the reward: RLOO reaches pi*, GRPO stops elsewhere

Everything is computed by the package (closed form, policy gradient with ``init=``) on the
small demo problem (tokens a, b; horizon 3; one prompt). Seeds are fixed, and GIFs carry no
date, so two runs write byte-identical files (for a given matplotlib, Pillow and font set).
The frame-drawing functions also serve :mod:`tinyrlhf.widgets`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.animation import PillowWriter
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import examples, plots
from .divergences import kl_divergence
from .figures import STYLE, _check_out_dir, natural_training
from .policy import Policy
from .solvers import closed_form, policy_gradient

#: Resolution of the GIF frames (dots per inch); small files, still legible.
DPI = 60
#: Frames per second.
FPS = 4
#: The betas of ``beta_sweep.gif``: log-spaced from 10 (pi* ≈ pi_ref) down to 0.05.
SWEEP_BETAS = tuple(float(b) for b in np.logspace(1.0, np.log10(0.05), 24))
#: (method, iterations per frame) of ``policy_gradient.gif``; the natural gradient needs
#: one iteration per frame (it is exact after at most H), the others more.
PG_METHODS = (("exact", 8), ("natural", 1), ("reinforce", 8), ("ppo", 4))
#: Frames of ``policy_gradient.gif`` (frame 0 is pi_ref).
PG_FRAMES = 16


def animation_problem() -> tuple[Policy, np.ndarray]:
    """``(pi_ref, reward)`` of the animations: the demo problem on tokens a, b, horizon 3."""
    _, ref, reward = examples.demo_problem(tokens=("a", "b"), horizon=3, prompts=("x",))
    return ref, reward


def draw_optimum(ax: Axes, ref: Policy, reward: np.ndarray, beta: float) -> Policy:
    """Draw pi_ref and pi*_beta on the token tree of the first prompt into ``ax``.

    The title carries E_pi*[r], KL(pi* ‖ pi_ref) and log Z of the closed form
    ``P*(xi) = P_ref(xi) exp(r(xi)/beta) / Z``.

    Args:
        ax: the axes (cleared first).
        ref: the reference policy; its tree has at most
            :data:`tinyrlhf.plots.MAX_TREE_LEAVES` leaves per prompt.
        reward: ``(n_leaves,)`` rewards.
        beta: the KL coefficient, > 0.

    Returns:
        pi*_beta, the closed-form optimum.
    """
    star = closed_form(ref, reward, beta)
    assert star.log_partition is not None  # the closed form always sets it
    ax.clear()
    plots.plot_token_tree(
        ref.tree,
        {"π_ref": ref, "π*": star.policy},
        leaf_values={"r": reward, "P*": star.policy.leaf_probs()},
        ax=ax,
    )
    ax.set_title(
        f"β = {beta:.3g}:  E_π*[r] = {star.expected_reward()[0]:.3f},  "
        f"KL(π*‖π_ref) = {star.kl()[0]:.3f},  log Z = {star.log_partition[0]:.3f}"
    )
    return star.policy


def _writer_frames(fig: Figure, path: Path, fps: int, dpi: int):
    writer = PillowWriter(fps=fps)
    return writer, writer.saving(fig, str(path), dpi)


def beta_sweep_animation(
    path: str | os.PathLike, *, betas: Sequence[float] = SWEEP_BETAS, dpi: int = DPI
) -> Path:
    """Write ``pi*`` on the token tree as ``beta`` sweeps (one frame per beta) as a GIF.

    Args:
        path: the GIF to write.
        betas: the KL coefficients, one frame each, all > 0.
        dpi: resolution of the frames.

    Returns:
        The path written.
    """
    path = Path(path)
    ref, reward = animation_problem()
    fig = Figure(figsize=(10.0, 6.0), layout="constrained")
    ax = fig.subplots()
    writer, saving = _writer_frames(fig, path, FPS, dpi)
    with saving:
        for beta in betas:
            draw_optimum(ax, ref, reward, float(beta))
            writer.grab_frame()
    return path


def policy_gradient_iterates(
    ref: Policy,
    reward: np.ndarray,
    beta: float,
    method: str,
    *,
    frames: int = PG_FRAMES,
    steps_per_frame: int = 1,
) -> list[Policy]:
    """The iterates of :func:`tinyrlhf.policy_gradient`, every ``steps_per_frame`` steps.

    Each chunk restarts the solver from the previous iterate (``init=``) with the seed of the
    chunk, so the sampled methods are reproducible.

    Returns:
        ``frames`` policies; the first is ``ref``.
    """
    iterates = [ref]
    for frame in range(1, frames):
        with warnings.catch_warnings():
            # a chunk of a few steps is not meant to converge: a solver's "not converged"
            # warning is expected here and says nothing about the animation
            warnings.simplefilter("ignore", UserWarning)
            solution = policy_gradient(
                ref,
                reward,
                beta,
                method=method,
                steps=steps_per_frame,
                seed=frame,
                init=iterates[-1],
            )
        iterates.append(solution.policy)
    return iterates


def draw_iterates(
    axes: Sequence[Axes], star: Policy, iterates: dict[str, Policy], step: dict[str, int]
) -> None:
    """One frame of ``policy_gradient.gif``: per method, its iterate's leaf distribution
    against pi*'s, titled with ``KL(pi_t ‖ pi*)``.

    Args:
        axes: one axes per method (each cleared first).
        star: the optimum pi*.
        iterates: method -> its current policy.
        step: method -> the iteration count of that policy.
    """
    for ax, (method, policy) in zip(axes, iterates.items(), strict=True):
        ax.clear()
        plots.plot_leaf_distributions(policy.tree, {"π*": star, f"π_t ({method})": policy}, ax=ax)
        kl_to_star = kl_divergence(policy, star)[0]
        ax.set_title(f"{method}, step {step[method]}:  KL(π_t‖π*) = {kl_to_star:.2e}")
        ax.set_ylim(0.0, 1.0)


def convergence_animation(
    path: str | os.PathLike, *, frames: int = PG_FRAMES, dpi: int = DPI
) -> Path:
    """Write the policy-gradient methods converging to the closed form as a GIF.

    Four panels (exact, natural, REINFORCE, PPO), each the leaf distribution of the current
    iterate against ``P*``, titled with ``KL(pi_t ‖ pi*)`` (0 exactly at the optimum,
    since ``J(pi*) - J(pi) = beta KL(pi ‖ pi*)``).

    Args:
        path: the GIF to write.
        frames: number of frames (frame 0 is pi_ref), >= 1.
        dpi: resolution of the frames.

    Returns:
        The path written.
    """
    ref, reward = animation_problem()
    beta = examples.DEMO_BETA
    star = closed_form(ref, reward, beta).policy
    runs = {
        method: policy_gradient_iterates(
            ref, reward, beta, method, frames=frames, steps_per_frame=per_frame
        )
        for method, per_frame in PG_METHODS
    }
    fig = Figure(figsize=(11.0, 6.5), layout="constrained")
    per_frame = dict(PG_METHODS)
    return _write_iterates(
        path,
        fig,
        list(fig.subplots(2, 2).reshape(-1)),
        star,
        runs,
        per_frame,
        f"Policy gradient on the demo problem (β = {beta:g}) against π*",
        dpi,
    )


def _write_iterates(
    path: str | os.PathLike,
    fig: Figure,
    axes: list[Axes],
    star: Policy,
    runs: dict[str, list[Policy]],
    steps_per_frame: dict[str, int],
    title: str,
    dpi: int,
) -> Path:
    """Write one frame per iterate: every run's policy against ``star`` (:func:`draw_iterates`)."""
    path = Path(path)
    writer, saving = _writer_frames(fig, path, FPS, dpi)
    frames = len(next(iter(runs.values())))
    with saving:
        for frame in range(frames):
            draw_iterates(
                axes,
                star,
                {name: run[frame] for name, run in runs.items()},
                {name: frame * steps_per_frame[name] for name in runs},
            )
            fig.suptitle(title)
            writer.grab_frame()
    return path


#: KL coefficient, group size and natural-gradient step of ``training_dynamics.gif``: a
#: fifth of the step 1/beta at which RLOO is exact after H updates, so the motion shows.
DYNAMICS_BETA = 0.1
DYNAMICS_GROUP_SIZE = 4
DYNAMICS_LR = 0.2 / DYNAMICS_BETA
DYNAMICS_ESTIMATORS = ("rloo", "grpo")


def verifier_reward(ref: Policy) -> np.ndarray:
    """The 0/1 reward of ``training_dynamics.gif``: 1 for a completion containing ``ab``."""
    return ref.tree.leaf_values(lambda prompt, tokens: float("ab" in "".join(tokens)))


def training_iterates(
    ref: Policy, reward: np.ndarray, estimator: str, frames: int
) -> list[Policy]:
    """``pi_t`` of exact mean-field training after ``t = 0..frames-1`` natural steps.

    Each frame reruns :func:`tinyrlhf.train_expected` from ``pi_ref`` for ``t`` steps (it is
    deterministic, so frame ``t`` is the ``t``-th iterate of one run).
    """
    iterates = []
    for steps in range(frames):
        solution = natural_training(
            ref,
            reward,
            estimator,
            group_size=DYNAMICS_GROUP_SIZE,
            beta=DYNAMICS_BETA,
            kl_estimator="k1",
            kl_placement="reward",
            kl_level="sequence",
            lr=DYNAMICS_LR,
            steps=steps,
        )
        iterates.append(solution.policy)
    return iterates


def training_dynamics_animation(
    path: str | os.PathLike, *, frames: int = PG_FRAMES, dpi: int = DPI
) -> Path:
    """Write exact training dynamics of RLOO and GRPO (0/1 reward, k1 in the reward) as a GIF.

    Two panels, each the leaf distribution of the current iterate against the KL-regularized
    optimum ``P* ∝ P_ref e^{r/beta}``, titled with ``KL(pi_t ‖ pi*)``: RLOO is an unbiased
    estimator of the gradient, so with k1 in the reward its fixed point is pi*; GRPO divides
    by the group's standard deviation and stops at another policy. Arguments and return
    value as :func:`convergence_animation`.
    """
    ref, _ = animation_problem()
    reward = verifier_reward(ref)
    star = closed_form(ref, reward, DYNAMICS_BETA).policy
    runs = {name: training_iterates(ref, reward, name, frames) for name in DYNAMICS_ESTIMATORS}
    fig = Figure(figsize=(11.0, 3.6), layout="constrained")
    return _write_iterates(
        path,
        fig,
        list(fig.subplots(1, len(runs))),
        star,
        runs,
        dict.fromkeys(runs, 1),
        "Exact mean-field training, reward 1 if the completion contains 'ab' "
        f"(β = {DYNAMICS_BETA:g}, k1 in the reward)\nRLOO reaches π*; GRPO stops elsewhere",
        dpi,
    )


#: (file name, writer) in the order of the lecture.
ANIMATIONS = (
    ("beta_sweep.gif", beta_sweep_animation),
    ("policy_gradient.gif", convergence_animation),
    ("training_dynamics.gif", training_dynamics_animation),
)


def make_animations(out_dir: str | os.PathLike, *, small: bool = False) -> list[Path]:
    """Write every animation of :data:`ANIMATIONS` into ``out_dir`` (created if missing).

    Args:
        out_dir: the output directory.
        small: three frames each (for tests) instead of the full sweeps.

    Returns:
        The paths written, in the order of :data:`ANIMATIONS`.

    Raises:
        ValueError: ``out_dir`` cannot be created or written.
    """
    out = _check_out_dir(out_dir)
    sizes: dict[str, dict[str, Any]] = {
        "beta_sweep.gif": {"betas": SWEEP_BETAS[::11]} if small else {},
        "policy_gradient.gif": {"frames": 3} if small else {},
        "training_dynamics.gif": {"frames": 3} if small else {},
    }
    with matplotlib.rc_context(STYLE):
        return [write(out / name, **sizes[name]) for name, write in ANIMATIONS]
