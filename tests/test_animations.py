"""The GIFs of ``tinyrlhf figures --animations``: deterministic bytes, the frames asked for,
drawn from the exact solutions (the last policy-gradient frame of the natural gradient is
the closed form)."""

import itertools

import numpy as np
import pytest
from PIL import Image

import tinyrlhf as tr
from tinyrlhf import animations
from tinyrlhf.cli import main

GIF_SIGNATURE = b"GIF89a"


def test_two_runs_write_identical_small_gifs(tmp_path):
    first = animations.make_animations(tmp_path / "first", small=True)
    second = animations.make_animations(tmp_path / "second", small=True)
    assert [path.name for path in first] == [name for name, _ in animations.ANIMATIONS]
    for one, other in zip(first, second, strict=True):
        data = one.read_bytes()
        assert data.startswith(GIF_SIGNATURE)
        assert data == other.read_bytes(), one.name  # fixed seeds, no date in a GIF
        assert len(data) < 400_000  # small files
        with Image.open(one) as image:
            assert image.n_frames == 3  # small: three betas, three policy-gradient frames


def test_beta_sweep_has_one_frame_per_beta_and_frames_differ(tmp_path):
    betas = (5.0, 0.5, 0.05)
    path = animations.beta_sweep_animation(tmp_path / "sweep.gif", betas=betas)
    with Image.open(path) as image:
        assert image.n_frames == len(betas)
        frames = []
        for k in range(image.n_frames):
            image.seek(k)
            frames.append(np.asarray(image.convert("RGB"), dtype=np.int16))
    # pi* moves with beta, so consecutive frames are different pictures
    assert all(np.abs(a - b).sum() > 0 for a, b in itertools.pairwise(frames))


def test_natural_gradient_iterates_reach_the_closed_form():
    # with step 1/beta the natural gradient is soft policy iteration: exact after <= H steps
    ref, reward = animations.animation_problem()
    beta = 0.7
    iterates = animations.policy_gradient_iterates(ref, reward, beta, "natural", frames=5)
    assert iterates[0] is ref
    star = tr.closed_form(ref, reward, beta).policy
    assert tr.kl_divergence(iterates[-1], star)[0] == pytest.approx(0.0, abs=1e-12)
    # J(pi*) - J(pi_t) = beta KL(pi_t || pi*): the gap shrinks to zero along the iterates
    gaps = [
        float((tr.objective(star, ref, reward, beta) - tr.objective(pi, ref, reward, beta))[0])
        for pi in iterates
    ]
    assert gaps[0] > 1e-3 and gaps[-1] <= 1e-12
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(gaps))


def test_draw_optimum_titles_the_closed_form_numbers():
    from matplotlib.figure import Figure

    ref, reward = animations.animation_problem()
    ax = Figure().subplots()
    pi_star = animations.draw_optimum(ax, ref, reward, 0.7)
    star = tr.closed_form(ref, reward, 0.7)
    assert tr.total_variation(pi_star, star.policy)[0] == 0.0
    title = ax.get_title()
    assert f"log Z = {star.log_partition[0]:.3f}" in title
    assert f"KL(π*‖π_ref) = {star.kl()[0]:.3f}" in title


def test_cli_writes_figures_and_animations(tmp_path, capsys, monkeypatch):
    # the figures themselves are tested in test_figures.py; here only the flag's GIFs
    monkeypatch.setattr("tinyrlhf.figures.make_figures", lambda out, small: [])
    assert main(["figures", "--out", str(tmp_path), "--small", "--animations"]) == 0
    out = capsys.readouterr().out
    for name, _ in animations.ANIMATIONS:
        assert (tmp_path / name).read_bytes().startswith(GIF_SIGNATURE)
        assert name in out


def test_training_dynamics_reach_pi_star_for_rloo_and_not_for_grpo():
    # RLOO is unbiased, so with k1 in the reward its mean-field fixed point is the closed
    # form pi* (issue 13); GRPO's standard-deviation scaling changes the fixed point. The
    # last frame of the full animation (15 natural steps at a fifth of 1/beta) shows both.
    ref, _ = animations.animation_problem()
    reward = animations.verifier_reward(ref)
    star = tr.closed_form(ref, reward, animations.DYNAMICS_BETA).policy
    frames = animations.PG_FRAMES
    rloo = animations.training_iterates(ref, reward, "rloo", frames)
    grpo = animations.training_iterates(ref, reward, "grpo", frames)
    assert rloo[0] is not None and len(rloo) == frames
    assert tr.kl_divergence(rloo[-1], star)[0] < 1e-3 * tr.kl_divergence(ref, star)[0]
    assert tr.kl_divergence(grpo[-1], star)[0] > 1e-2  # a different fixed point
