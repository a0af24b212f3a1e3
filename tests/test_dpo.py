"""Exact DPO / IPO / hinge optima over the full policy class (issue 7, section 1)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.dpo import (
    LOSSES,
    BoundaryOptimumWarning,
    fit_policy_to_preferences,
    preference_loss,
)


def random_prefs(rng, tree, n):
    prompt = rng.integers(0, tree.n_prompts, size=n)
    offset = rng.integers(0, tree.leaves_per_prompt, size=(2, n))
    chosen, rejected = prompt * tree.leaves_per_prompt + offset
    return tr.Preferences(prompt, chosen, rejected, rng.exponential(size=n), tree=tree)


def implicit_u(solution):
    return solution.implicit_reward / solution.beta


# ------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_loss_gradient_matches_finite_differences(loss, l2):
    rng = np.random.default_rng(1)
    tree = tr.TokenTree(["a", "b", "c"], 2, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=rng)
    prefs = random_prefs(rng, tree, 40)
    beta = 0.8
    u = rng.normal(scale=2.0, size=tree.n_leaves)
    value, gradient = preference_loss(ref, prefs, u, loss=loss, beta=beta, l2=l2)
    step = 1e-6
    for k in range(tree.n_leaves):  # central differences (the hinge: no margin near its kink)
        e = np.zeros(tree.n_leaves)
        e[k] = step
        plus = preference_loss(ref, prefs, u + e, loss=loss, beta=beta, l2=l2)[0]
        minus = preference_loss(ref, prefs, u - e, loss=loss, beta=beta, l2=l2)[0]
        np.testing.assert_allclose((plus - minus) / (2 * step), gradient[k], rtol=1e-6, atol=1e-7)
    # by hand: DPO at u = 0 has h = 0 and loss log 2 per unit weight
    zero_value, _ = preference_loss(ref, prefs, np.zeros(tree.n_leaves), loss="dpo", beta=beta)
    np.testing.assert_allclose(zero_value, np.log(2) * prefs.total_weight, rtol=1e-14)


# ------------------------------------------------------------ DPO = closed form
@settings(max_examples=25)
@given(st.data())
def test_dpo_on_the_population_is_the_closed_form(data):
    # Population of a BT reward r over all pairs of the reference's support: DPO's optimum is
    # pi_ref exp(r / beta) / Z (module docstring: the per-pair cross-entropy is minimized at
    # beta (u(y) - u(y')) = r(y) - r(y')).
    with_eos = data.draw(st.booleans())
    tree, ref, reward, beta = data.draw(trt.problems(max_horizon=3, with_eos=with_eos))
    reward = np.clip(reward, -10.0, 10.0)
    prefs = tr.population_preferences(tree, reward, policy=ref)
    if len(prefs) == 0:
        return
    solution = fit_policy_to_preferences(ref, prefs, loss="dpo", beta=beta)
    assert solution.converged and not solution.boundary
    expected = tr.closed_form(ref, reward, beta)
    np.testing.assert_allclose(
        solution.policy.leaf_probs(), expected.policy.leaf_probs(), atol=1e-8
    )
    # Log-probabilities where the population pins the leaf down: its pairs carry weight
    # ~ P_ref(leaf) and curvature ~ sigma'(r(leaf) - r(other)), so a leaf that is rare or
    # almost never wins is determined only to float64 precision divided by those (tiny)
    # factors; P*(leaf) >= 1e-3 needs neither.
    pinned = expected.policy.leaf_probs() > 1e-3
    np.testing.assert_allclose(
        solution.policy.leaf_log_probs()[pinned],
        expected.policy.leaf_log_probs()[pinned],
        atol=1e-6,
    )


def test_dpo_on_an_eos_tree_is_the_closed_form():
    tree = tr.TokenTree(["a", "b", "$"], 3, prompts=["x", "y"], eos="$")
    ref = tr.Policy.random(tree, seed=4)
    reward = tree.leaf_values(lambda prompt, tokens: len(tokens) - 2.0 * tokens.count("a"))
    prefs = tr.population_preferences(tree, reward, policy=ref)
    solution = fit_policy_to_preferences(ref, prefs, loss="dpo", beta=0.5)
    expected = tr.closed_form(ref, reward, 0.5)
    np.testing.assert_allclose(
        solution.policy.leaf_probs(), expected.policy.leaf_probs(), atol=1e-9
    )
    assert solution.converged


@pytest.mark.parametrize("l2", [0.05, 1.0])
def test_dpo_is_rlhf_under_the_fitted_bradley_terry_reward(l2):
    # With r = beta u the DPO objective is the BT objective (same l2): the implicit reward is
    # the BT fit (an independent Newton solver) and the policy its closed form.
    rng = np.random.default_rng(2)
    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=rng)
    reward = 2.0 * rng.standard_normal(tree.n_leaves)
    prefs = tr.sample_preferences(tree, reward, 300, seed=rng)
    beta = 0.4
    solution = fit_policy_to_preferences(ref, prefs, loss="dpo", beta=beta, l2=l2)
    fit = tr.fit_bradley_terry(tree, prefs, l2=l2)
    np.testing.assert_allclose(solution.implicit_reward, fit.reward, atol=1e-7)
    report = tr.check_agreement(tr.closed_form(ref, fit.reward, beta), solution)
    assert report.max_tv < 1e-8
    assert solution.converged and solution.reward is None and solution.beta == beta
    assert solution.method == "fit_policy_to_preferences[dpo]"


# ------------------------------------------------------------------------------- IPO
@pytest.mark.parametrize("l2", [0.0, 0.2])
def test_ipo_against_linear_algebra(l2):
    # IPO's objective sum_k w_k (u(c_k) - u(r_k) - 1/(2 beta))^2 + (l2/2) beta^2 ||u||^2 is a
    # least-squares problem: (2 D^T W D + l2 beta^2 I) u = 2 D^T W t, t = 1/(2 beta); for
    # l2 = 0 its minimum-norm solution is zero-mean on each component (the convention).
    rng = np.random.default_rng(3)
    tree = tr.TokenTree(["a", "b", "c"], 2, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=rng)
    prefs = random_prefs(rng, tree, 30)
    beta = 0.6
    solution = fit_policy_to_preferences(ref, prefs, loss="ipo", beta=beta, l2=l2)
    design = np.zeros((len(prefs), tree.n_leaves))  # D: (pairs, leaves)
    np.add.at(design, (np.arange(len(prefs)), prefs.chosen), 1.0)
    np.add.at(design, (np.arange(len(prefs)), prefs.rejected), -1.0)
    weight = prefs.weight
    target = np.full(len(prefs), 1.0 / (2.0 * beta))
    if l2 == 0:
        root = np.sqrt(weight)[:, None]
        expected = np.linalg.lstsq(root * design, root[:, 0] * target, rcond=None)[0]
    else:
        normal = 2.0 * design.T @ (weight[:, None] * design) + l2 * beta**2 * np.eye(tree.n_leaves)
        expected = np.linalg.solve(normal, 2.0 * design.T @ (weight * target))
    np.testing.assert_allclose(implicit_u(solution), expected, atol=1e-9)
    assert solution.converged and solution.loss_gradient_norm < 1e-8


# ------------------------------------------------------------------------------ hinge
def test_hinge_optima_derived_by_hand():
    tree = tr.TokenTree(["a", "b"], 1)
    ref = tr.Policy.uniform(tree)
    beta = 0.5
    # a > b with weight 2, b > a with weight 1: 2 max(0, 1 - x) + max(0, 1 + x), x = beta h,
    # is 3 - x on [-1, 1] and 1 + x beyond: the unique minimum is x = 1, h = 1/beta.
    prefs = tr.Preferences([0, 0], [0, 1], [1, 0], [2.0, 1.0])
    solution = fit_policy_to_preferences(ref, prefs, loss="hinge", beta=beta)
    u = implicit_u(solution)
    np.testing.assert_allclose(u[0] - u[1], 1.0 / beta, atol=1e-9)
    np.testing.assert_allclose(solution.mean_loss, 2.0 / 3.0, atol=1e-12)  # (0 + 2) / 3
    # One pair a > b with l2: u_b = -u_a = -h/2, f(h) = max(0, 1 - beta h) + l2 beta^2 h^2 / 4;
    # the kink h = 1/beta is optimal while the slope there, -beta + l2 beta / 2, is <= 0
    # (l2 <= 2); beyond, h = 2 / (l2 beta).
    one = tr.Preferences([0], [0], [1])
    for l2, h in ((0.5, 1.0 / beta), (8.0, 2.0 / (8.0 * beta))):
        solution = fit_policy_to_preferences(ref, one, loss="hinge", beta=beta, l2=l2)
        u = implicit_u(solution)
        np.testing.assert_allclose(u, [h / 2, -h / 2], atol=1e-9)
        assert solution.converged


@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_hinge_optimum_is_not_improved_by_perturbations(l2):
    rng = np.random.default_rng(4)
    tree = tr.TokenTree(["a", "b", "c"], 2)
    ref = tr.Policy.random(tree, seed=rng)
    prefs = random_prefs(rng, tree, 25)
    beta = 1.3
    solution = fit_policy_to_preferences(ref, prefs, loss="hinge", beta=beta, l2=l2)
    assert solution.converged
    u = implicit_u(solution)
    best = preference_loss(ref, prefs, u, loss="hinge", beta=beta, l2=l2)[0]
    for _ in range(200):
        trial = u + rng.normal(scale=10.0 ** rng.uniform(-4, 0), size=u.size)
        assert preference_loss(ref, prefs, trial, loss="hinge", beta=beta, l2=l2)[0] >= best - 1e-9


# --------------------------------------------------------------- boundary, weights
@pytest.mark.parametrize("beta", [2.0, 20.0, 100.0, 1000.0])
def test_dpo_boundary_returns_the_limit_policy_and_ipo_stays_finite(beta):
    # Leaf c only ever loses (to a and b); a and b beat each other once each: the win graph's
    # strong components are {a, b} and {c}. The DPO loss log 2 + log 2 + 2 softplus(-beta h)
    # (h the log-ratio gap between {a, b} and c) tends to its infimum 2 log 2 only as
    # pi(c) -> 0, whatever beta; inside {a, b} the one-win-each fit is u_a = u_b, so the
    # limit policy is (1/2, 1/2, 0) exactly (issue 10: the solver used to stop with
    # pi(c) = 3e-5 at beta = 20, 0.11 at 100, 0.45 at 1000).
    tree = tr.TokenTree(["a", "b", "c"], 1)
    ref = tr.Policy.uniform(tree)
    prefs = tr.Preferences([0, 0, 0, 0], [0, 1, 0, 1], [1, 0, 2, 2])
    with pytest.warns(BoundaryOptimumWarning, match="no minimizer.*probability exactly 0"):
        solution = fit_policy_to_preferences(ref, prefs, loss="dpo", beta=beta)
    assert solution.boundary and solution.converged
    assert solution.residual <= solution.tolerance
    np.testing.assert_array_equal(solution.dominated_leaves, [2])
    assert solution.policy.leaf_probs()[2] == 0.0
    assert solution.leaf_log_probs[2] == -np.inf
    assert solution.implicit_reward[2] == -np.inf
    np.testing.assert_allclose(solution.policy.leaf_probs()[:2], 0.5, rtol=1e-15)
    np.testing.assert_allclose(solution.penalized_loss, 2 * np.log(2), rtol=1e-15)
    for loss in ("ipo", "hinge"):
        finite = fit_policy_to_preferences(ref, prefs, loss=loss, beta=beta)
        assert finite.converged and not finite.boundary
        assert finite.policy.leaf_probs()[2] > 0
    regularized = fit_policy_to_preferences(ref, prefs, loss="dpo", beta=beta, l2=0.1)
    assert regularized.converged and not regularized.boundary
    assert regularized.policy.leaf_probs()[2] > 0


def test_dpo_boundary_limit_is_the_infimum_of_the_loss():
    # A richer win graph: {0, 1, 2} a cycle with unequal weights, {3} loses to it, {4} and
    # {3} beat each other (so {3, 4} is a strong component, dominated as a whole). The
    # returned limit's objective is the infimum: a finite policy approaching it (the fit
    # inside the components, the dominated ones pushed down by t) has a loss decreasing to
    # it as t grows, and never below it.
    tree = tr.TokenTree(["a", "b", "c", "d", "e"], 1)
    ref = tr.Policy.random(tree, seed=3)
    prefs = tr.Preferences(
        [0] * 7, [0, 1, 2, 0, 1, 3, 4], [1, 2, 0, 3, 4, 4, 3], [2.0, 1.0, 3.0, 1.0, 0.5, 1.0, 2.0]
    )
    beta = 0.7
    with pytest.warns(BoundaryOptimumWarning):
        limit = fit_policy_to_preferences(ref, prefs, loss="dpo", beta=beta)
    np.testing.assert_array_equal(limit.dominated_leaves, [3, 4])
    np.testing.assert_array_equal(limit.policy.leaf_probs()[3:], 0.0)
    infimum = limit.penalized_loss
    u = implicit_u(limit)

    # inside the cycle {0, 1, 2}: the DPO loss of its three pairs, minimized by BFGS (an
    # independent method) with u_0 = 0 fixed, then centered (the convention)
    def cycle_loss(free):
        v = np.r_[0.0, free]
        margins = beta * np.array([v[0] - v[1], v[1] - v[2], v[2] - v[0]])
        return float(np.sum(np.array([2.0, 1.0, 3.0]) * np.logaddexp(0.0, -margins)))

    free = minimize(cycle_loss, np.zeros(2), method="BFGS", options={"gtol": 1e-12}).x
    cycle = np.r_[0.0, free]
    np.testing.assert_allclose(u[:3], cycle - cycle.mean(), atol=1e-6)
    # inside {3, 4}: 4 beats 3 twice as often as 3 beats 4, so beta (u_4 - u_3) = log 2
    finite_u = np.r_[u[:3], -np.log(2) / (2 * beta), np.log(2) / (2 * beta)]
    values = []
    for shift in (5.0, 10.0, 20.0, 40.0):
        pushed = finite_u - shift * np.isin(np.arange(5), [3, 4])
        values.append(preference_loss(ref, prefs, pushed, loss="dpo", beta=beta)[0])
    assert all(np.diff(values) < 0) and min(values) >= infimum - 1e-12
    np.testing.assert_allclose(values[-1], infimum, atol=1e-10)


def test_weights_are_honoured():
    rng = np.random.default_rng(5)
    tree = tr.TokenTree(["a", "b"], 2)
    ref = tr.Policy.random(tree, seed=rng)
    prefs = random_prefs(rng, tree, 12)
    doubled = tr.Preferences(
        np.concatenate([prefs.prompt, prefs.prompt[:3]]),
        np.concatenate([prefs.chosen, prefs.chosen[:3]]),
        np.concatenate([prefs.rejected, prefs.rejected[:3]]),
        np.concatenate([prefs.weight, prefs.weight[:3]]),
    )
    heavier = tr.Preferences(
        prefs.prompt, prefs.chosen, prefs.rejected, prefs.weight * np.r_[2, 2, 2, np.ones(9)]
    )
    with_zero = tr.Preferences(
        np.r_[prefs.prompt, 0],
        np.r_[prefs.chosen, 0],
        np.r_[prefs.rejected, 1],
        np.r_[prefs.weight, 0],
    )
    for loss in LOSSES:
        results = [
            fit_policy_to_preferences(ref, data, loss=loss, beta=0.9, l2=0.1).policy.leaf_probs()
            for data in (doubled, heavier)
        ]
        np.testing.assert_allclose(results[0], results[1], atol=1e-8)
        base = fit_policy_to_preferences(ref, prefs, loss=loss, beta=0.9, l2=0.1)
        zero = fit_policy_to_preferences(ref, with_zero, loss=loss, beta=0.9, l2=0.1)
        np.testing.assert_allclose(base.policy.leaf_probs(), zero.policy.leaf_probs(), atol=1e-8)


def test_unidentified_constants_follow_the_convention():
    # Prompt x: leaves aa > ab compared, ba/bb never: u is zero-mean on {aa, ab} and 0 on
    # the rest, so pi(ba) / pi_ref(ba) = pi(bb) / pi_ref(bb) and the 2-leaf IPO optimum is
    # u(aa) - u(ab) = 1/(2 beta).
    tree = tr.TokenTree(["a", "b"], 2)
    ref = tr.Policy.random(tree, seed=6)
    prefs = tr.Preferences([0], [0], [1])
    beta = 0.25
    solution = fit_policy_to_preferences(ref, prefs, loss="ipo", beta=beta)
    u = implicit_u(solution)
    np.testing.assert_allclose(u, [1 / (4 * beta), -1 / (4 * beta), 0.0, 0.0], atol=1e-12)
    np.testing.assert_array_equal(solution.never_compared, [2, 3])


# --------------------------------------------------------------------------- bad input
def test_bad_input():
    tree = tr.TokenTree(["a", "b"], 1)
    ref = tr.Policy.uniform(tree)
    prefs = tr.Preferences([0], [0], [1])
    with pytest.raises(ValueError, match=r"\('dpo', 'ipo', 'hinge'\)"):
        fit_policy_to_preferences(ref, prefs, loss="kto", beta=1.0)
    with pytest.raises(TypeError, match="prefs must be"):
        fit_policy_to_preferences(ref, [(0, 1)], beta=1.0)
    with pytest.raises(TypeError, match="ref must be"):
        fit_policy_to_preferences(tree, prefs, beta=1.0)
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        fit_policy_to_preferences(ref, prefs, beta=0.0)
    with pytest.raises(ValueError, match="l2 must be finite and >= 0"):
        fit_policy_to_preferences(ref, prefs, beta=1.0, l2=-1.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        fit_policy_to_preferences(ref, prefs, beta=1.0, steps=0)
    with pytest.raises(ValueError, match="tol"):
        fit_policy_to_preferences(ref, prefs, beta=1.0, tol=2.0)
    forbidding = tr.Policy(tree, [np.array([[0.0, -np.inf]])])
    with pytest.raises(ValueError, match="probability 0 under ref"):
        fit_policy_to_preferences(forbidding, prefs, beta=1.0)
    with pytest.raises(ValueError, match="out of range"):
        fit_policy_to_preferences(ref, tr.Preferences([0], [0], [5]), beta=1.0)
    with pytest.raises(ValueError, match="leaf_logits must have shape"):
        preference_loss(ref, prefs, np.zeros(3), beta=1.0)


# ------------------------------------------------------------------ issue 10 cases
def test_hinge_qp_issue_case_is_solved_exactly(monkeypatch):
    # Issue 10: pairs (1,3), (3,2), (2,3), (0,3), (3,2), l2 = 0.3, beta = 1 ended at objective
    # 5.6125. By hand: u = (0.75, 0.75, -1.25, -0.25) puts the margins of (1,3), (3,2) x2 and
    # (0,3) exactly at 1 (loss 0) and (2,3) at -1 (loss 2); the penalty is
    # 0.15 * (0.5625 + 0.5625 + 1.5625 + 0.0625) = 0.4125, so the objective is 2.4125. It is
    # optimal (KKT of the QP): (2,3) has margin < 1, so its multiplier is its weight 1; then
    # l2 u = D^T alpha fixes the others leaf by leaf: alpha_(0,3) = 0.225 (leaf a),
    # alpha_(1,3) = 0.225 (leaf b), alpha_(3,2) = 1 + 0.375 = 1.375 (leaf c; the two (3,2)
    # pairs together, weight 2), and leaf d checks: -0.225 + 1.375 - 1 - 0.225 = -0.075.
    # All lie in [0, w].
    tree = tr.TokenTree(["a", "b", "c", "d"], 1)
    ref = tr.Policy.uniform(tree)
    prefs = tr.Preferences([0] * 5, [1, 3, 2, 0, 3], [3, 2, 3, 3, 2])
    expected = np.array([0.75, 0.75, -1.25, -0.25])
    design = np.zeros((4, 4))  # D of the distinct pairs (1,3), (3,2), (2,3), (0,3)
    for row, (c, r) in enumerate([(1, 3), (3, 2), (2, 3), (0, 3)]):
        design[row, c], design[row, r] = 1.0, -1.0
    np.testing.assert_allclose(design.T @ [0.225, 1.375, 1.0, 0.225], 0.3 * expected, atol=1e-15)
    solution = fit_policy_to_preferences(ref, prefs, loss="hinge", beta=1.0, l2=0.3)
    assert solution.converged and solution.residual <= 1e-14
    np.testing.assert_allclose(implicit_u(solution), expected, atol=1e-12)
    np.testing.assert_allclose(solution.penalized_loss, 2.4125, rtol=1e-13)

    # Stopped early, each solver says so, in converged and in a warning: the hinge with no
    # warm start and one active-set iteration, DPO after one Newton step.
    monkeypatch.setattr(tr.dpo, "WARM_START_SWEEPS", 0)
    for loss in ("hinge", "dpo"):
        with pytest.warns(tr.PreferenceOptimizationWarning, match="residual.*raise steps"):
            early = fit_policy_to_preferences(ref, prefs, loss=loss, beta=1.0, l2=0.3, steps=1)
        assert not early.converged and early.residual > early.tolerance
    # from that cold start the active-set method reaches the exact answer
    exact = fit_policy_to_preferences(ref, prefs, loss="hinge", beta=1.0, l2=0.3, steps=10)
    assert exact.converged
    np.testing.assert_allclose(implicit_u(exact), expected, atol=1e-12)


def test_hinge_lp_warning_gives_advice_that_works():
    # The README's population (demo problem, 162 leaves): HiGHS stops the hinge LP at a
    # residual near 1e-7, above the default tol. steps does not drive the LP, so the warning
    # must not say "raise steps"; its advice (the tol it names, or l2 > 0) must certify.
    import re

    from tinyrlhf import examples

    tree, ref, reward = examples.demo_problem()
    population = tr.population_preferences(tree, reward, policy=ref)
    with pytest.warns(tr.PreferenceOptimizationWarning) as caught:
        lp = fit_policy_to_preferences(ref, population, 0.7, loss="hinge")
    message = str(caught[0].message)
    assert not lp.converged and "linprog" in message  # the premise: the LP stopped short
    assert "raise steps" not in message and "l2 > 0" in message
    suggested = float(re.search(r"tol=(\S+?),", message).group(1))
    accepted = fit_policy_to_preferences(ref, population, 0.7, loss="hinge", tol=suggested)
    assert accepted.converged and accepted.residual == lp.residual  # the same LP solution
    assert fit_policy_to_preferences(ref, population, 0.7, loss="hinge", l2=1e-3).converged
    # steps has no effect on the LP: a 3-level tree, certified to rounding (about 1e-17),
    # asked for tol = 1e-18, gives the same iterations and residual whatever steps is
    small_tree, small_ref, small_reward = examples.demo_problem(horizon=3)
    small = tr.population_preferences(small_tree, small_reward, policy=small_ref)
    runs = []
    for steps in (1, 10**6):
        with pytest.warns(tr.PreferenceOptimizationWarning, match="does not apply to the LP"):
            runs.append(
                fit_policy_to_preferences(
                    small_ref, small, 0.7, loss="hinge", steps=steps, tol=1e-18
                )
            )
    assert runs[0].steps_taken == runs[1].steps_taken and runs[0].residual == runs[1].residual


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_hinge_qp_matches_an_independent_solver(data):
    # The QP min (l2/2) ||r||^2 + w . xi  s.t.  xi >= 1 - D r, xi >= 0 in (r, xi), by SLSQP
    # (a different method on a different formulation): the active-set answer's objective is
    # never above it, and the duality-gap certificate bounds the difference.
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n_leaves, n_pairs = data.draw(st.integers(2, 5)), data.draw(st.integers(1, 8))
    tree = tr.TokenTree([f"t{k}" for k in range(n_leaves)], 1)
    ref = tr.Policy.uniform(tree)
    prefs = random_prefs(rng, tree, n_pairs)
    l2 = float(10.0 ** rng.uniform(-2, 1))
    beta = float(10.0 ** rng.uniform(-1, 1))
    solution = fit_policy_to_preferences(ref, prefs, loss="hinge", beta=beta, l2=l2)
    assert solution.converged and solution.residual <= 1e-12
    design = np.zeros((n_pairs, n_leaves))
    np.add.at(design, (np.arange(n_pairs), prefs.chosen), 1.0)
    np.add.at(design, (np.arange(n_pairs), prefs.rejected), -1.0)
    w = prefs.weight

    def objective(x):
        return 0.5 * l2 * x[:n_leaves] @ x[:n_leaves] + w @ x[n_leaves:]

    constraints = [
        {"type": "ineq", "fun": lambda x: x[n_leaves:] - 1.0 + design @ x[:n_leaves]},
        {"type": "ineq", "fun": lambda x: x[n_leaves:]},
    ]
    start = np.r_[np.zeros(n_leaves), np.ones(n_pairs)]
    reference = minimize(
        objective, start, constraints=constraints, method="SLSQP", options={"ftol": 1e-14}
    )
    # in r = beta u the objective is the same function (module docstring)
    assert solution.penalized_loss <= reference.fun + 1e-7
    r = beta * implicit_u(solution)
    margins = design @ r
    np.testing.assert_allclose(
        solution.penalized_loss, 0.5 * l2 * r @ r + w @ np.maximum(0, 1 - margins), rtol=1e-12
    )


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_dpo_on_peaked_sampler_populations_is_the_closed_form(data):
    # Issue 10: on populations drawn by a peaked sampler (pair weights down to 1e-40), DPO
    # reported converged=True 1.3e-3 (TV) away from the closed form. The population's BT fit
    # is r up to a constant per prompt, so DPO must return closed_form(ref, r, beta); and
    # converged must mean it.
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    tree = tr.TokenTree([f"t{k}" for k in range(data.draw(st.integers(2, 5)))], 1)
    scale = data.draw(st.floats(5.0, 25.0))
    sampler = tr.Policy.from_logits(tree, [scale * rng.standard_normal((1, tree.n_tokens))])
    reward = rng.uniform(1.0, 5.0) * rng.standard_normal(tree.n_leaves)
    ref = tr.Policy.random(tree, seed=rng)
    beta = float(10.0 ** rng.uniform(-1, 1))
    population = tr.population_preferences(tree, reward, policy=sampler)
    solution = fit_policy_to_preferences(ref, population, loss="dpo", beta=beta)
    assert solution.converged and solution.residual <= solution.tolerance
    compared = solution.never_compared.size == 0  # every leaf has weight > 0 pairs
    expected = tr.closed_form(ref, reward, beta)
    if compared:
        report = tr.check_agreement(expected, solution)
        assert report.max_tv < 1e-9


def test_dpo_is_literally_bradley_terry_plus_closed_form():
    rng = np.random.default_rng(7)
    tree = tr.TokenTree(["a", "b", "c"], 2, prompts=["x", "y"])
    ref = tr.Policy.random(tree, seed=rng)
    prefs = tr.sample_preferences(tree, rng.normal(size=tree.n_leaves), 400, seed=rng)
    fit = tr.fit_bradley_terry(tree, prefs, l2=0.5)
    solution = fit_policy_to_preferences(ref, prefs, loss="dpo", beta=0.3, l2=0.5)
    np.testing.assert_array_equal(solution.implicit_reward, fit.reward)
    assert solution.residual == fit.residual and solution.converged == fit.converged
    expected = tr.closed_form(ref, fit.reward, 0.3)
    np.testing.assert_array_equal(
        solution.policy.leaf_log_probs(), expected.policy.leaf_log_probs()
    )
