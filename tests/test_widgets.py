"""The classroom sliders, driven headlessly: moving a control calls the callback, which
redraws the picture and reports the numbers of the exact solution it drew."""

import numpy as np
import pytest

import tinyrlhf as tr
from tinyrlhf import widgets
from tinyrlhf.animations import animation_problem
from tinyrlhf.examples import bimodal_problem

NO_WIDGETS = "the widgets extra is not installed: pip install -e '.[widgets]'"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_beta_at_kl_inverts_the_kl_of_the_optimum():
    # needs no ipywidgets: a bisection on the monotone map beta -> KL(pi*_beta || pi_ref)
    ref, reward = animation_problem()
    for kl in (0.01, 0.3, 1.0):
        beta = widgets.beta_at_kl(ref, reward, kl)
        assert tr.closed_form(ref, reward, beta).kl()[0] == pytest.approx(kl, rel=1e-9)
    assert widgets.beta_at_kl(ref, reward, 0.0) == np.inf
    # more KL than the smallest beta of the bracket reaches: clipped to that beta
    assert widgets.beta_at_kl(ref, reward, 1e3) == 10.0 ** widgets.LOG10_BETA_RANGE[0]
    with pytest.raises(ValueError, match="kl must be"):
        widgets.beta_at_kl(ref, reward, -0.1)


def test_beta_slider_redraws_the_closed_form():
    pytest.importorskip("ipywidgets", reason=NO_WIDGETS)
    ref, reward = animation_problem()
    explorer = widgets.beta_slider(ref, reward, beta=0.7)
    image = explorer.widget.children[-1]
    first = bytes(image.value)
    assert first.startswith(PNG_SIGNATURE)
    explorer.controls["beta"].value = 0.1  # what dragging the slider does
    assert explorer.state["beta"] == pytest.approx(0.1)
    star = tr.closed_form(ref, reward, 0.1)
    assert explorer.state["kl"] == pytest.approx(star.kl()[0], rel=1e-12)
    assert explorer.state["expected_reward"] == pytest.approx(star.expected_reward()[0])
    assert explorer.state["log_partition"] == pytest.approx(star.log_partition[0])
    assert bytes(image.value) != first  # the picture was redrawn
    assert f"log Z = {star.log_partition[0]:.3f}" in explorer.figure.axes[0].get_title()
    explorer.update(beta=5.0)  # the callback, called directly
    assert explorer.state["kl"] < star.kl()[0]  # larger beta, closer to pi_ref


def test_beta_slider_checks_its_arguments():
    pytest.importorskip("ipywidgets", reason=NO_WIDGETS)
    ref, reward = animation_problem()
    with pytest.raises(ValueError, match="both ref and reward"):
        widgets.beta_slider(ref)
    with pytest.raises(ValueError, match="beta must be in"):
        widgets.beta_slider(beta=100.0)


def test_projection_selector_redraws_each_family_and_divergence():
    pytest.importorskip("ipywidgets", reason=NO_WIDGETS)
    tree, log_target = bimodal_problem()
    explorer = widgets.projection_selector(log_target, tree=tree, family="position")
    target = tr.project(log_target, "full", "forward", tree=tree)
    for family in ("full", "position", "unigram"):
        for divergence in ("reverse", "forward"):
            explorer.controls["family"].value = family
            explorer.controls["divergence"].value = divergence
            projection = tr.project(log_target, family, divergence, tree=tree, seed=0)
            expected = (
                tr.kl_divergence(projection, target)
                if divergence == "reverse"
                else tr.kl_divergence(target, projection)
            )[0]
            assert explorer.state == {
                "family": family,
                "divergence": divergence,
                "kl": pytest.approx(expected, rel=1e-12, abs=1e-15),
            }
    # the full family holds the target: both projections are exact
    explorer.update(family="full", divergence="reverse")
    assert explorer.state["kl"] == pytest.approx(0.0, abs=1e-9)


def test_best_of_n_slider_only_with_best_of_n():
    pytest.importorskip("ipywidgets", reason=NO_WIDGETS)
    if not hasattr(tr, "best_of_n"):
        with pytest.raises(NotImplementedError, match="best_of_n"):
            widgets.best_of_n_slider()
        assert len(widgets.classroom().children) == 2
        return
    ref, score = animation_problem()
    explorer = widgets.best_of_n_slider(ref, score, n=1)
    assert explorer.state["kl"] == pytest.approx(0.0, abs=1e-12)  # best-of-1 is pi_ref
    explorer.controls["n"].value = 8
    result = tr.best_of_n(ref, score, 8)
    assert explorer.state["kl"] == pytest.approx(float(np.asarray(result.kl)[0]))
    # at equal KL the RLHF optimum lies on the reward-KL frontier: it scores at least as well
    star = tr.closed_form(ref, score, explorer.state["beta"])
    assert star.kl()[0] == pytest.approx(explorer.state["kl"], rel=1e-6)
    assert explorer.state["rlhf"] >= explorer.state["best_of_n"] - 1e-9
    assert len(widgets.classroom().children) == 3


def test_missing_extra_is_named(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ipywidgets(name, *args, **kwargs):
        if name == "ipywidgets":
            raise ImportError("no ipywidgets here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ipywidgets)
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[widgets\]\""):
        widgets.beta_slider()
