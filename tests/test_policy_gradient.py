"""Policy gradient (natural, exact, REINFORCE, PPO): the exact gradient, the certificate
(a bound on the total variation from the closed-form optimum), convergence, and the sampled
methods' defaults over four decades of beta."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import approx_fprime
from scipy.special import logsumexp

import tinyrlhf as tr
from tinyrlhf import testing as trt
from tinyrlhf.examples import DEMO_BETA, demo_problem
from tinyrlhf.solvers.policy_gradient import DivergenceWarning, PolicyGradientWarning

SWEEP_BETAS = (1e-2, 1e-1, 1.0, 10.0, 100.0)


def _quiet(method, ref, reward, beta, **options):
    """``policy_gradient`` with its not-certified warning silenced (divergence still raises)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PolicyGradientWarning)
        warnings.filterwarnings("error", category=DivergenceWarning)
        return tr.policy_gradient(ref, reward, beta, method=method, **options)


# ----------------------------------------------------------------------- the exact gradient
@settings(max_examples=20)
@given(st.data())
def test_exact_gradient_matches_finite_differences(data):
    # all logits of all levels as one vector; -inf (tokens ref never picks) stay fixed
    tree, ref, reward, beta = data.draw(
        trt.problems(max_tokens=3, max_horizon=3, max_magnitude=3.0)
    )
    policy = data.draw(trt.policies(tree, allow_zeros=False))
    theta = [
        np.where(r > -np.inf, t, -np.inf)
        for t, r in zip(policy.log_probs, ref.log_probs, strict=True)
    ]
    start = tr.Policy.from_logits(tree, theta)
    gradient = tr.policy_gradient_grad(start, ref, reward, beta)
    free = [np.isfinite(t) for t in theta]

    def mean_objective(vector):
        logits, offset = [], 0
        for t, mask in zip(theta, free, strict=True):
            table = t.copy()
            table[mask] = vector[offset : offset + mask.sum()]
            offset += mask.sum()
            logits.append(table)
        return tr.objective(tr.Policy.from_logits(tree, logits), ref, reward, beta).mean()

    x0 = np.concatenate([t[mask] for t, mask in zip(theta, free, strict=True)])
    numeric = approx_fprime(x0, mean_objective, 1e-7)
    exact = np.concatenate([g[mask] for g, mask in zip(gradient, free, strict=True)])
    np.testing.assert_allclose(exact, numeric, atol=2e-6 * (1 + np.abs(reward).max()))
    for g, mask in zip(gradient, free, strict=True):
        assert np.all(g[~mask] == 0.0)  # a -inf logit has no gradient


def test_gradient_at_a_policy_with_extra_zeros_has_no_nan():
    # pi forbids a token pi_ref allows: its logit is -inf, so it has no gradient (0, not NaN:
    # pi log pi -> 0), and the other entries still match finite differences of J.
    tree, ref, reward = demo_problem(horizon=2)
    tables = [table.copy() for table in tr.Policy.random(tree, seed=4).log_probs]
    tables[1][0, 0] = -np.inf
    policy = tr.Policy.from_logits(tree, tables)
    gradient = tr.policy_gradient_grad(policy, ref, reward, 0.5)
    assert not any(np.isnan(g).any() for g in gradient) and gradient[1][0, 0] == 0.0
    step = 1e-6
    plus = [t.copy() for t in policy.log_probs]
    minus = [t.copy() for t in policy.log_probs]
    plus[0][1, 2] += step
    minus[0][1, 2] -= step

    def mean_objective(logits):
        return tr.objective(tr.Policy.from_logits(tree, logits), ref, reward, 0.5).mean()

    numeric = (mean_objective(plus) - mean_objective(minus)) / (2 * step)
    np.testing.assert_allclose(gradient[0][1, 2], numeric, rtol=1e-6)
    # the other way round is refused: a policy that leaves the reference's support
    with pytest.raises(ValueError, match="never picks"):
        tr.policy_gradient_grad(ref, policy, reward, 0.5)


# ------------------------------------------------------------------------- the certificate
@settings(max_examples=30)
@given(trt.problems(max_magnitude=5.0), st.sampled_from(["natural", "exact"]))
def test_residual_is_the_pinsker_bound_of_the_kl_to_the_optimum(problem, method):
    # residual = max_p sqrt(KL(P_pi || P*) / 2), checked against the chain-rule KL of
    # divergences.py and the closed form's policy; it bounds the total variation (Pinsker),
    # and info["objective_gap"] is J(pi*) - J(pi) = beta KL(P_pi || P*).
    tree, ref, reward, beta = problem
    solution = _quiet(method, ref, reward, beta, steps=1)
    star = tr.closed_form(ref, reward, beta)
    kl = tr.kl_divergence(solution.policy, star.policy)
    np.testing.assert_allclose(solution.residual**2 * 2, kl.max(), rtol=1e-6, atol=1e-12)
    assert np.all(tr.total_variation(solution.policy, star.policy) <= solution.residual + 1e-12)
    gap = star.objective() - solution.objective()
    scale = 1 + np.abs(reward).max()
    np.testing.assert_allclose(solution.objective_gap, gap, atol=1e-9 * scale)
    assert np.all(solution.objective_gap >= 0)  # a sum of non-negative terms
    assert solution.converged == (solution.residual <= solution.tolerance)


def _policy_inside(tree, ref, rng, noise, extra_zeros):
    """A softmax policy whose zeros include ``ref``'s: ``log pi_ref`` plus ``noise`` times
    normals, and a fraction ``extra_zeros`` of ``ref``'s tokens set to ``-inf`` (one finite
    token kept per row)."""
    theta = []
    for table in ref.log_probs:
        logits = table + noise * rng.standard_normal(table.shape)
        drop = (rng.random(table.shape) < extra_zeros) & (table > -np.inf)
        keep = np.argmax(np.where(table > -np.inf, logits, -np.inf), axis=1)  # (rows,)
        drop[np.arange(table.shape[0]), keep] = False
        theta.append(np.where(drop, -np.inf, logits))
    return tr.Policy.from_logits(tree, theta)


@settings(max_examples=30)
@given(trt.problems(max_magnitude=5.0), trt.seeds, st.sampled_from([0.1, 3.0]))
def test_certificate_at_any_policy_is_the_kl_to_soft_vi(problem, seed, noise):
    # The certificate of a start (steps=0, init=pi) against an independent route: the leaf
    # log-probabilities of pi and of soft value iteration's pi*, renormalized per prompt, and
    # KL = sum_{P_pi > 0} P_pi (log P_pi - log P*) (in log space: P* may underflow). Policies
    # far from pi* (noise 3) and with extra zeros (leaves pi never reaches, which contribute
    # P*) included. The reference's own rounding is eps |log P_pi - log P*| per leaf (it
    # cancels near the optimum, the certificate does not), hence the absolute tolerance.
    tree, ref, reward, beta = problem
    pi = _policy_inside(tree, ref, np.random.default_rng(seed), noise, extra_zeros=0.2)
    solution = _quiet("exact", ref, reward, beta, steps=0, init=pi)
    log_pi = pi.leaf_log_probs().reshape(tree.n_prompts, -1)
    log_pi = log_pi - logsumexp(log_pi, axis=1, keepdims=True)
    log_star = tr.soft_value_iteration(ref, reward, beta).policy.leaf_log_probs()
    log_star = log_star.reshape(tree.n_prompts, -1)
    log_star = log_star - logsumexp(log_star, axis=1, keepdims=True)
    reached = log_pi > -np.inf
    difference = np.where(reached, log_pi - np.where(reached, log_star, 0.0), 0.0)
    kl = (np.exp(log_pi) * difference).sum(axis=1)
    atol = 1e-14 * (1 + np.abs(difference).max())
    np.testing.assert_allclose(solution.info["objective_gap"] / beta, kl, rtol=1e-9, atol=atol)
    # residual = max sqrt(KL / 2) plus mass errors of rounding size
    np.testing.assert_allclose(2 * solution.residual**2, kl.max(), rtol=1e-9, atol=atol)


def test_certificate_next_to_a_subnormal_probability_is_exact():
    # pi_ref says "a" with probability e^-720 (subnormal) and r(a) / beta = 720, so by the
    # closed form P*(a) = e^-720 e^720 / Z = 1/2 = P*(b), and at the start
    # KL(P_ref || P*) = 1 * log(1 / (1/2)) + e^-720 log(2 e^-720) = log 2 (to 1e-310). There
    # log P* - log P_ref = 719.3: e^u overflows, and P* rebuilt as P_ref e^u from a subnormal
    # P_ref would lose digits; the certificate uses P* itself.
    tree = tr.TokenTree(["a", "b"], 1)
    ref = tr.Policy(tree, [np.array([[-720.0, 0.0]])])
    beta = 1.0 / 720.0
    solution = _quiet("exact", ref, np.array([1.0, 0.0]), beta, steps=0)
    np.testing.assert_allclose(solution.info["objective_gap"], beta * np.log(2.0), rtol=1e-12)
    np.testing.assert_allclose(solution.residual, np.sqrt(np.log(2.0) / 2), rtol=1e-12)


@settings(max_examples=20)
@given(trt.problems(max_magnitude=5.0), st.sampled_from(["natural", "exact"]))
def test_starting_at_the_reference_needs_no_evaluation(problem, method):
    # init=None starts at pi_ref without a pass over the tree (log(P_pi/P_ref) = 0, C = r);
    # init=ref evaluates pi_ref's own softmax: both runs agree step by step.
    tree, ref, reward, beta = problem
    known = _quiet(method, ref, reward, beta, steps=3)
    evaluated = _quiet(method, ref, reward, beta, steps=3, init=ref)
    scale = 1 + np.abs(reward).max()
    assert known.history["kl"][0] == 0.0
    np.testing.assert_allclose(
        known.history["objective"][0], tr.objective(ref, ref, reward, beta).mean(), rtol=1e-13
    )
    for key in ("objective", "kl", "objective_gap", "tv_bound"):
        np.testing.assert_allclose(
            known.history[key], evaluated.history[key], rtol=1e-9, atol=1e-12 * scale
        )


def test_natural_gradient_is_soft_policy_iteration():
    # With lr = 1/beta the natural gradient is exact after at most H iterations.
    tree, ref, reward = demo_problem()
    solution = tr.policy_gradient(ref, reward, DEMO_BETA, method="natural")
    assert solution.converged and solution.steps_taken <= tree.horizon
    tr.check_agreement(tr.closed_form(ref, reward, DEMO_BETA), solution).assert_close(
        log_pi_atol=1e-9, tv_atol=1e-12, objective_atol=1e-12
    )
    # With a smaller step it converges linearly (rate 1 - lr beta), still to the optimum.
    slow = tr.policy_gradient(
        ref, reward, DEMO_BETA, method="natural", lr=0.5 / DEMO_BETA, steps=300
    )
    assert slow.converged and slow.residual <= 1e-10
    gaps = tr.closed_form(ref, reward, DEMO_BETA).objective().mean() - slow.history["objective"]
    assert gaps[-1] < 1e-12 and np.all(np.diff(slow.history["objective"]) >= -1e-12)


def test_natural_gradient_at_huge_rewards_is_certified():
    # |r| ~ 1e5 (issue 10): the answer is exact and says so; a gradient-norm or |Q - V| test
    # cannot get below the rounding of values of size 1e5, the KL certificate can.
    tree, ref, _ = demo_problem()
    reward = 1e5 * np.random.default_rng(3).standard_normal(tree.n_leaves)
    beta = 1e4
    solution = tr.policy_gradient(ref, reward, beta, method="natural")
    assert solution.converged and solution.residual <= solution.tolerance
    tr.check_agreement(tr.closed_form(ref, reward, beta), solution).assert_close(
        log_pi_atol=1e-8, tv_atol=1e-10, objective_atol=1e-9 * 1e5
    )


def test_exact_gradient_at_tiny_beta_is_not_fooled_by_the_plateau():
    # beta = 1e-6: the softmax saturates, the gradient vanishes far from the optimum, and the
    # old gradient-norm test reported converged=True at total variation 0.70. The KL
    # certificate sees the distance, so the run is refused as an optimum and warns.
    tree, ref, reward = demo_problem()
    beta = 1e-6
    with pytest.warns(PolicyGradientWarning, match="not certified"):
        solution = tr.policy_gradient(ref, reward, beta, method="exact", steps=200)
    tv = tr.total_variation(solution.policy, tr.closed_form(ref, reward, beta).policy)
    assert not solution.converged
    assert tv.max() > 0.1 and solution.residual >= tv.max()  # far away, and it says so
    assert solution.gradient_norm < solution.residual  # what fooled the old test


def test_exact_gradient_ascends_monotonically_towards_the_optimum():
    tree, ref, reward = demo_problem()
    optimum = tr.closed_form(ref, reward, DEMO_BETA).objective().mean()
    with pytest.warns(PolicyGradientWarning):  # 400 steps do not reach tol = 1e-4
        solution = tr.policy_gradient(ref, reward, DEMO_BETA, method="exact")
    history = solution.history["objective"]
    assert optimum - history[-1] < 1e-3 * (optimum - history[0])
    assert np.all(np.diff(history) >= 0)  # Armijo line search: monotone ascent
    assert history[-1] <= optimum + 1e-12
    # the history's gap is the independent J(pi*) - J(pi) (largest over prompts)
    per_prompt = tr.closed_form(ref, reward, DEMO_BETA).objective() - solution.objective()
    np.testing.assert_allclose(
        solution.history["objective_gap"][-1], per_prompt.max(), rtol=1e-6, atol=1e-15
    )
    # a looser tolerance is met and stops the run early, certified
    loose = tr.policy_gradient(ref, reward, DEMO_BETA, method="exact", tol=0.05)
    assert loose.converged and loose.stop_reason == "certified"
    assert loose.steps_taken < solution.steps_taken


def test_a_certified_start_takes_no_step():
    # a reward that is constant per prompt: pi_ref is already optimal (P* = P_ref)
    tree, ref, _ = demo_problem()
    reward = np.repeat([1.0, -2.0], tree.leaves_per_prompt)
    for method in ("natural", "exact", "reinforce", "ppo"):
        solution = tr.policy_gradient(ref, reward, 0.3, method=method)
        assert solution.converged and solution.steps_taken == 0


# ---------------------------------------------------------------------------- sampled methods
@pytest.mark.parametrize("method", ["reinforce", "ppo"])
def test_sampled_methods_improve_towards_the_optimum(method):
    tree, ref, reward = demo_problem()
    optimum = tr.closed_form(ref, reward, DEMO_BETA).objective().mean()
    solution = _quiet(method, ref, reward, DEMO_BETA, seed=0)
    history = solution.history["objective"]
    start_gap, end_gap = optimum - history[0], optimum - history[-1]
    assert end_gap < 0.1 * start_gap  # most of the way there
    assert history[-1] <= optimum + 1e-12
    assert solution.converged  # stops at its certificate (tol 0.05 in total variation)
    with pytest.warns(PolicyGradientWarning):
        again = tr.policy_gradient(ref, reward, DEMO_BETA, method=method, seed=0, steps=5)
    np.testing.assert_array_equal(again.history["objective"], history[:6])  # seeded


@pytest.mark.parametrize("method", ["reinforce", "ppo"])
@pytest.mark.parametrize("tol", [None, 1e-3])
def test_sampled_defaults_never_end_below_the_reference_over_a_beta_sweep(method, tol):
    # issue 10: with a fixed step 2.0, PPO and REINFORCE fell to J = -294 and -519 at
    # beta = 100 (optimum 0.327). The default step now scales with the problem; every run
    # must end at least as good as pi_ref (J(pi_ref) = E_ref[r]) and never diverge. With the
    # default tol, pi_ref is already certified at beta >= 10 (no step is taken); tol = 1e-3
    # makes every run step (150 steps, warning that it is not certified, or until certified).
    tree, ref, reward = demo_problem()
    for beta in SWEEP_BETAS:
        start = tr.objective(ref, ref, reward, beta).mean()
        optimum = tr.closed_form(ref, reward, beta).objective().mean()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            solution = tr.policy_gradient(
                ref, reward, beta, method=method, seed=1, tol=tol, steps=150
            )
        diverged = any(issubclass(w.category, DivergenceWarning) for w in caught)
        final = solution.objective().mean()
        assert not diverged, f"beta={beta}: {[str(w.message) for w in caught]}"
        assert final >= start - 1e-12, f"beta={beta}: J = {final} < J(pi_ref) = {start}"
        assert final <= optimum + 1e-12
        if tol is not None:  # it moved, and towards the optimum
            assert solution.converged or solution.steps_taken == 150
            assert optimum - final < 0.5 * (optimum - start)
        # and at every step, not only the last: never below the start by the whole room
        assert solution.history["objective"].min() >= start - (optimum - start) - 1e-12


@pytest.mark.parametrize("method", ["reinforce", "ppo"])
def test_divergence_is_detected_and_reported(method):
    tree, ref, reward = demo_problem()
    # the old fixed default step 2.0 at beta = 20 (issue 10: J fell to -36.6); a tight tol
    # so that the run steps (pi_ref is within the default tol of the optimum at beta = 20)
    with pytest.warns(DivergenceWarning, match="diverged"):
        solution = tr.policy_gradient(
            ref, reward, 20.0, method=method, lr=2.0, steps=100, tol=1e-6
        )
    assert not solution.converged
    assert solution.stop_reason in ("objective fell", "non-finite logits")
    assert np.all(np.isfinite(solution.objective()))  # the last finite iterate comes back
    # an overflowing step: the logits stop being finite, the last finite iterate is returned
    with pytest.warns(DivergenceWarning):
        blown = tr.policy_gradient(ref, reward, 1.0, method=method, lr=1e308, steps=10, tol=1e-6)
    assert not blown.converged and np.all(np.isfinite(blown.objective()))


# ----------------------------------------------------------------------------------- inputs
def test_policy_gradient_bad_arguments():
    tree, ref, reward = demo_problem()
    with pytest.raises(ValueError, match="method must be one of"):
        tr.policy_gradient(ref, reward, 1.0, method="adam")
    with pytest.raises(ValueError, match="lr"):
        tr.policy_gradient(ref, reward, 1.0, lr=-1.0)
    for tol in (np.inf, 0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="tol"):
            tr.policy_gradient(ref, reward, 1.0, tol=tol)
    with pytest.raises(TypeError, match="tol"):
        tr.policy_gradient(ref, reward, 1.0, tol="small")
    with pytest.raises(ValueError, match="beta"):  # 1/beta overflows: named, not "lr"
        tr.policy_gradient(ref, reward, 1e-320)
    with pytest.raises(ValueError, match="steps"):
        tr.policy_gradient(ref, reward, 1.0, steps=-1)
    with pytest.raises(ValueError, match="clip"):
        tr.policy_gradient(ref, reward, 1.0, method="ppo", clip=1.5)
    with pytest.raises(TypeError, match="ref"):
        tr.policy_gradient(reward, reward, 1.0)
    with pytest.raises(TypeError, match="init"):
        tr.policy_gradient(ref, reward, 1.0, init=reward)


def test_init_outside_the_reference_support_is_refused_and_inside_is_used():
    # ref never says "b" first, and at the (unreached) state "b" it only says "a"
    tree = tr.TokenTree(["a", "b"], 2)
    ref = tr.Policy(
        tree, [np.array([[0.0, -np.inf]]), np.array([[np.log(0.3), np.log(0.7)], [0.0, -np.inf]])]
    )
    reward = np.array([0.0, 1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="init"):
        tr.policy_gradient(ref, reward, 1.0, init=tr.Policy.uniform(tree))
    # an init whose row at the unreached state "b" only says "b" (which ref forbids there)
    # changes no generation's probability: ref's row stands in, and the run is exact
    init = tr.Policy(
        tree, [np.array([[0.0, -np.inf]]), np.array([[np.log(0.5), np.log(0.5)], [-np.inf, 0.0]])]
    )
    solution = tr.policy_gradient(ref, reward, 1.0, init=init)
    assert solution.converged
    np.testing.assert_allclose(
        solution.history["objective"][0], tr.objective(init, ref, reward, 1.0).mean(), rtol=1e-14
    )
    assert np.array_equal(solution.policy.log_probs[1][1], ref.log_probs[1][1])


def test_certificate_counts_rounding_in_the_normalization():
    # Found by the audit: tied rewards with r/beta ~ 1e7; the natural policy's leaf
    # probabilities sum to 1 + 2.4e-10 (logits ~ 1e7), so a Pinsker bound between the raw
    # arrays claimed TV <= 1e-10 with residual 0 while the true TV was 1.2e-10. The exact
    # optimum here is computed independently with the rewards shifted by their maximum.
    tree = tr.TokenTree(["a", "b"], 3)
    ref = tr.Policy.from_logits(
        tree,
        [
            np.array([[-0.1694204691129334, -1.8588862209033552]]),
            np.array(
                [
                    [-0.007270453323898576, -4.927569658145496],
                    [-0.020830218620581684, -3.8817475585891414],
                ]
            ),
            np.array(
                [
                    [-3.210997380473927, -0.041151613880433514],
                    [-0.028921178172688272, -3.5576068813832475],
                    [-1.753122966542438, -0.19023127602028955],
                    [-1.5913092584101918, -0.2277275356299607],
                ]
            ),
        ],
    )
    low, high = 3003.9741492744165, 6007.948298548833
    r = np.array([low, 0.0, high, 0.0, low, low, 0.0, high])
    beta = 0.0005423277448656749
    weight = ref.leaf_log_probs() + (r - r.max()) / beta
    p_true = np.exp(weight - logsumexp(weight))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tr.PolicyGradientWarning)
        natural = tr.policy_gradient(ref, r, beta, method="natural")
    tv = 0.5 * np.abs(natural.policy.leaf_probs() - p_true).sum()
    assert tv <= natural.residual + 1e-15  # the certificate bounds the true distance
    assert natural.converged == (natural.residual <= natural.tolerance)
