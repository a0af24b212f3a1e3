"""Reverse- and forward-KL projections onto policy families: closed forms, optimality against
the family, the soft-RL identity, gradients, landscapes, and bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit, logsumexp

import tinyrlhf as tr
from tinyrlhf import projections as proj
from tinyrlhf import testing as trt
from tinyrlhf.examples import BIMODAL_PROBS, bimodal_problem


def one_hot_family(tree, kind):
    """The position or unigram family written as a log-linear family with one-hot features."""
    n_features = tree.horizon * tree.n_tokens if kind == "position" else tree.n_tokens
    features = []
    for h in range(tree.horizon):
        table = np.zeros((tree.level_size(h), tree.n_tokens, n_features))
        offset = h * tree.n_tokens if kind == "position" else 0
        table[:, np.arange(tree.n_tokens), offset + np.arange(tree.n_tokens)] = 1.0
        features.append(table)
    return proj.LogLinearFamily(features)


def random_theta(family, tree, rng, scale=2.0):
    return scale * rng.standard_normal(family.n_parameters(tree))


# ------------------------------------------------------------------------------ full family
@given(st.data())
def test_full_family_returns_the_target(data):
    tree = data.draw(trt.trees())
    target = data.draw(trt.policies(tree))
    for divergence in proj.DIVERGENCES:
        assert tr.project(target, "full", divergence) is target
        result = tr.project_all(target, "full", divergence)
        np.testing.assert_allclose(result.kl, 0.0, atol=1e-12)
    # an array target: the full family reproduces its leaf distribution (zeros included)
    leaf = target.leaf_log_probs()
    for divergence in proj.DIVERGENCES:
        projected = tr.project(leaf, "full", divergence, tree=tree)
        finite = np.isfinite(leaf)
        np.testing.assert_array_equal(np.isfinite(projected.leaf_log_probs()), finite)
        np.testing.assert_allclose(projected.leaf_log_probs()[finite], leaf[finite], atol=1e-12)


@given(st.data())
def test_leaf_policy_reproduces_conditionals_on_reached_states(data):
    # pi(a|s) = P(subtree of s o a) / P(subtree of s) wherever P reaches s
    tree = data.draw(trt.trees())
    target = data.draw(trt.policies(tree))
    rebuilt = tr.Policy.from_leaf_log_probs(tree, target.leaf_log_probs())
    for h in range(tree.horizon):
        reached = target.state_log_probs(h) > -np.inf
        np.testing.assert_allclose(
            np.exp(rebuilt.log_probs[h][reached]), np.exp(target.log_probs[h][reached]), atol=1e-12
        )
        np.testing.assert_allclose(logsumexp(rebuilt.log_probs[h], axis=1), 0.0, atol=1e-12)


# ----------------------------------------------------------------------- forward projection
@given(st.data())
def test_forward_projection_is_the_expected_token_count(data):
    # Derived by hand: mean_p KL(T || pi) = const - sum_{h,a} c_h(a) log pi_h(a) with
    # c_h(a) = (1/P) sum_xi T(xi | p) [a_h(xi) = a]; maximizing over each simplex gives
    # pi_h = c_h (position) and pi = (1/H) sum_h c_h (unigram). Counted here from the leaves.
    tree = data.draw(trt.trees())
    target = data.draw(trt.policies(tree))
    tokens = tree.leaf_token_indices()  # (n_leaves, H)
    leaf_probs = target.leaf_probs()
    counts = np.stack(
        [
            np.bincount(tokens[:, h], weights=leaf_probs, minlength=tree.n_tokens) / tree.n_prompts
            for h in range(tree.horizon)
        ]
    )  # (H, A)
    position = tr.project(target, "position", "forward")
    unigram = tr.project(target, "unigram", "forward")
    for h in range(tree.horizon):
        shape = position.log_probs[h].shape  # every state of depth h has the same row
        np.testing.assert_allclose(
            np.exp(position.log_probs[h]), np.broadcast_to(counts[h], shape), atol=1e-12
        )
        np.testing.assert_allclose(
            np.exp(unigram.log_probs[h]), np.broadcast_to(counts.mean(axis=0), shape), atol=1e-12
        )
    # the closed form beats every member of a random sample of the family
    rng = np.random.default_rng(0)
    for name, best in (("position", position), ("unigram", unigram)):
        family = proj.FAMILIES[name]
        floor = tr.kl_divergence(target, best).mean()
        for _ in range(20):
            member = family.policy(tree, random_theta(family, tree, rng))
            assert tr.kl_divergence(target, member).mean() >= floor - 1e-12


@settings(max_examples=15)
@given(st.data())
def test_forward_closed_form_equals_numerical_minimization(data):
    # The log-linear family with one-hot features is the position / unigram family but has no
    # closed form, so project() minimizes the (convex) forward KL numerically instead.
    tree = data.draw(trt.trees(max_tokens=3, max_horizon=3))
    target = data.draw(trt.policies(tree, allow_zeros=False, min_temperature=0.5))
    for kind in ("position", "unigram"):
        closed = tr.project(target, kind, "forward")
        numerical = tr.project_all(target, one_hot_family(tree, kind), "forward", n_starts=2)
        np.testing.assert_allclose(
            numerical.kl, tr.kl_divergence(target, closed), rtol=1e-7, atol=1e-9
        )
        np.testing.assert_allclose(numerical.policy.leaf_probs(), closed.leaf_probs(), atol=1e-5)


# ----------------------------------------------------------------------- reverse projection
@settings(max_examples=20)
@given(st.data())
def test_reverse_projection_beats_random_members_and_is_stationary(data):
    tree = data.draw(trt.trees(max_tokens=3, max_horizon=3))
    target = data.draw(trt.policies(tree, allow_zeros=False, min_temperature=0.5))
    rng = np.random.default_rng(1)
    for name in ("position", "unigram"):
        family = proj.FAMILIES[name]
        result = tr.project_all(target, name, "reverse", seed=0, n_starts=4)
        best = float(result.kl.mean())
        np.testing.assert_allclose(result.kl, tr.kl_divergence(result.policy, target), rtol=1e-12)
        for _ in range(30):
            member = family.policy(tree, random_theta(family, tree, rng, scale=3.0))
            assert tr.kl_divergence(member, target).mean() >= best - 1e-9
        for optimum in result.optima:  # every reported optimum is a certified stationary point
            assert optimum.converged and optimum.residual <= optimum.tolerance
            # Bound derived from the certificate r = max |log rho - log T(rho)|: per depth the
            # gradient is rho_h(a) (delta_h(a) - E_rho_h delta_h) with |delta| <= r, summed over
            # at most H depths (unigram), so |g| <= 2 H r; 1e-12 covers rounding.
            _, gradient = proj.family_divergence(target, name, "reverse", optimum.parameters)
            bound = 2 * tree.horizon * optimum.residual + 1e-12
            assert np.abs(gradient).max(initial=0.0) <= bound
        means = [float(optimum.kl.mean()) for optimum in result.optima]
        assert means == sorted(means)


def mean_field_fixed_point(tree, target, pi, kind="position"):
    """The right side of the stationarity condition of mean_p KL(P_pi || T_p) over a
    product policy, derived by hand: on each simplex pi_h,
        log pi_h(a) = mean_p E_{pi_{-h}}[log T_p(xi) | a_h = a] + const     (position),
    and for one row shared by all depths (the derivative of the degree-H multilinear term
    sums over the depths) log pi(a) = (1/H) sum_h (the same) + const    (unigram).
    Enumerated over the leaves, independently of the package's backward/forward passes."""
    tokens = tree.leaf_token_indices()  # (n_leaves, H)
    rows = np.stack([np.exp(table[0]) for table in pi.log_probs])  # pi_h(a): (H, A)
    log_target = target.leaf_log_probs()
    scores = []
    for h in range(tree.horizon):
        others = [k for k in range(tree.horizon) if k != h]
        weight = np.prod(rows[others, tokens[:, others]], axis=1) if others else 1.0
        scores.append(
            np.bincount(tokens[:, h], weights=weight * log_target, minlength=tree.n_tokens)
            / tree.n_prompts
        )  # (A,)
    scores = np.stack(scores)  # (H, A)
    if kind == "unigram":
        scores = np.broadcast_to(scores.mean(axis=0), scores.shape)
    return np.exp(scores - logsumexp(scores, axis=1, keepdims=True)), rows


# The target of issue 10, section 1 (log-probabilities level by level): BFGS stalled on a
# softmax plateau with pi_0(b) = 1.4e-27 and reported it as an optimum; the mean-field fixed
# point there says 0.0057.
ISSUE_TREE = tr.TokenTree(("a", "b", "c"), 3, prompts=("p",))
ISSUE_TARGET_LOG_PROBS = [
    [[-0.18849214, -4.78507629, -1.81131241]],
    [
        [-1.26530179, -1.15018148, -0.91312935],
        [-2.31758306, -0.52952931, -1.16281001],
        [-0.06813364, -3.16534655, -3.74376396],
    ],
    [
        [-0.76103135, -1.14779027, -1.53489448],
        [-1.51686713, -0.64412077, -1.36461976],
        [-0.53498773, -1.69254856, -1.46848686],
        [-0.40293941, -1.40365474, -2.453989],
        [-2.43143917, -1.70807506, -0.31351216],
        [-1.72172139, -1.69565974, -0.44978746],
        [-2.16073786, -1.56599815, -0.39173895],
        [-0.99593228, -1.48476559, -0.90617794],
        [-3.99722421, -0.14775509, -2.12870667],
    ],
]


def issue_target():
    # the rows are rounded to 8 digits, so they are normalized only to ~1e-8: from_logits
    # renormalizes them (a shift of < 1e-8 per row)
    return tr.Policy.from_logits(ISSUE_TREE, [np.array(level) for level in ISSUE_TARGET_LOG_PROBS])


def test_issue_target_has_no_stalled_optimum():
    target = issue_target()
    result = tr.project_all(target, "position", "reverse", seed=0, n_starts=8)
    for optimum in result.optima:
        assert optimum.converged and optimum.residual <= optimum.tolerance
        fixed, rows = mean_field_fixed_point(ISSUE_TREE, target, optimum.policy)
        np.testing.assert_allclose(rows, fixed, rtol=1e-7, atol=0)
        assert rows.min() > 1e-3  # no plateau point: every token keeps a visible probability
    # the stalled point of the bug, rebuilt: the optimum with pi_0(b) pushed to 1.4e-27. Its
    # logit-space gradient is below any tolerance, but the certificate sees the violation:
    # log(0.0057 / 1.4e-27) ~ 57.
    log_rows = np.stack([table[0] for table in result.policy.log_probs])  # (H, A)
    log_rows[0, 1] = np.log(1.4e-27)
    log_rows[0] -= logsumexp(log_rows[0])
    stalled = proj.FAMILIES["position"].theta_of(log_rows)
    _, gradient = proj.family_divergence(target, "position", "reverse", stalled)
    assert np.abs(gradient[1]) < 1e-20  # the plateau: d F / d theta_0(b) ~ pi_0(b) (...)
    residual = proj.projection_residual(target, "position", "reverse", stalled)
    fixed, rows = mean_field_fixed_point(
        ISSUE_TREE, target, proj.FAMILIES["position"].policy(ISSUE_TREE, stalled)
    )
    np.testing.assert_allclose(rows[0, 1], 1.4e-27, rtol=1e-2)  # (renormalized row)
    np.testing.assert_allclose(residual, np.log(fixed[0, 1] / rows[0, 1]), rtol=1e-9)
    assert residual > 50


@settings(max_examples=20)
@given(st.data())
def test_reverse_position_optima_satisfy_the_mean_field_fixed_point(data):
    # An independent characterization of a local optimum (coordinate-ascent variational
    # inference). It also rules out "optima" where a quasi-Newton method stalled on a softmax
    # plateau: there the gradient ~ pi log pi is below any tolerance but the fixed point is
    # violated. The certificate r = max |log pi - log T(pi)| <= 1e-9 bounds the relative
    # error of every row entry against the fixed point by e^r - 1 ~ 1e-9.
    tree = data.draw(trt.trees(max_tokens=3, max_horizon=3))
    target = data.draw(trt.policies(tree, allow_zeros=False, min_temperature=0.1))
    for kind in ("position", "unigram"):
        result = tr.project_all(target, kind, "reverse", seed=data.draw(trt.seeds), n_starts=4)
        assert result.all_converged
        for optimum in result.optima:
            assert optimum.residual <= optimum.tolerance == proj.DEFAULT_TOLERANCE
            fixed, rows = mean_field_fixed_point(tree, target, optimum.policy, kind)
            np.testing.assert_allclose(rows, fixed, rtol=1e-8, atol=0)
            # recomputed from the reported parameters (the round trip theta -> rows costs
            # a few ulps of the log-probabilities, |log rho| < 1e3 here)
            recomputed = proj.projection_residual(target, kind, "reverse", optimum.parameters)
            np.testing.assert_allclose(recomputed, optimum.residual, rtol=0, atol=1e-12)


@settings(max_examples=15)
@given(st.data())
def test_mean_field_certificate_equals_the_natural_gradient_step_of_the_one_hot_family(data):
    # Two routes to the certificate at an arbitrary member: the mean-field map of the
    # position family (backward/forward passes) and one full natural-gradient step of the
    # same family written with one-hot features (Fisher matrix, least squares). The natural
    # gradient of a product family is block diagonal and its step lands on T(rho).
    tree = data.draw(trt.trees(max_tokens=3, max_horizon=3))
    target = data.draw(trt.policies(tree, allow_zeros=False, min_temperature=0.5))
    rng = np.random.default_rng(data.draw(trt.seeds))
    family = proj.FAMILIES["position"]
    theta = random_theta(family, tree, rng, scale=1.5)
    log_rows = family.log_rows(tree, theta)  # (H, A)
    mean_field = proj.projection_residual(target, family, "reverse", theta)
    one_hot = proj.projection_residual(
        target, one_hot_family(tree, "position"), "reverse", log_rows.reshape(-1)
    )
    np.testing.assert_allclose(one_hot, mean_field, rtol=1e-10, atol=1e-13)


def test_uncertified_points_are_reported_and_warned(monkeypatch):
    # With no sweep allowed, the random starts are returned as they are: not fixed points
    # (a random start is one only on a measure-zero set), so converged is False and both
    # entry points warn instead of presenting them as optima.
    target = issue_target()
    monkeypatch.setattr(proj, "MAX_SWEEPS", 0)
    with pytest.warns(proj.ProjectionWarning, match="not certified"):
        result = tr.project_all(target, "position", "reverse", seed=0, n_starts=2)
    assert not result.converged and not result.all_converged
    for optimum in result.optima:
        assert optimum.residual > optimum.tolerance and not optimum.converged
    with pytest.warns(proj.ProjectionWarning, match="not a certified optimum"):
        tr.project(target, "position", "reverse", seed=0)
    monkeypatch.undo()
    result = tr.project_all(target, "position", "reverse", seed=0, n_starts=2)
    assert result.converged and result.residual <= result.tolerance
    with pytest.raises(ValueError, match="tol"):
        tr.project(target, "position", "reverse", tol=0.0)


def test_mean_field_scores_value_is_the_reverse_kl():
    # F returned with the scores equals the KL computed from the leaves by kl_divergence.
    rng = np.random.default_rng(5)
    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=["x", "y"])
    target = tr.Policy.random(tree, seed=rng)
    for name in ("position", "unigram"):
        family = proj.FAMILIES[name]
        theta = random_theta(family, tree, rng)
        _, value = proj.mean_field_scores(target, family.log_rows(tree, theta))
        np.testing.assert_allclose(
            value, tr.kl_divergence(family.policy(tree, theta), target).mean(), rtol=1e-12
        )


def test_bimodal_target_has_two_reverse_optima_and_a_saddle():
    tree, log_target = bimodal_problem()
    target_probs = np.array(BIMODAL_PROBS)
    result = tr.project_all(log_target, "position", "reverse", tree=tree, seed=0)
    assert len(result.optima) == 2
    assert sum(optimum.n_starts for optimum in result.optima) == proj.DEFAULT_STARTS
    for optimum in result.optima:
        # KL computed by hand over the four leaves: P_pi(a1 a2) = pi_0(a1) pi_1(a2)
        p, q = expit(optimum.parameters)  # probability of 'a' at depth 0 and depth 1
        leaf = np.array([p * q, p * (1 - q), (1 - p) * q, (1 - p) * (1 - q)])
        np.testing.assert_allclose(
            optimum.kl, [np.sum(leaf * np.log(leaf / target_probs))], rtol=1e-12
        )
        # F is symmetric under theta_0 <-> theta_1 (P(ab) = P(ba)); the two optima have
        # different values, so each is its own mirror image: it lies on the diagonal.
        np.testing.assert_allclose(optimum.parameters[0], optimum.parameters[1], atol=1e-5)
    best, other = result.optima
    assert best.policy.leaf_probs().argmax() == 0  # mode-seeking: the best optimum is 'aa'
    assert other.policy.leaf_probs().argmax() == 3  # the other one 'bb'
    assert best.kl[0] < other.kl[0]
    # the forward projection covers both modes: it puts more mass on 'ab' and 'ba' than the
    # target, the reverse one less than the forward
    forward = tr.project(log_target, "position", "forward", tree=tree)
    assert forward.leaf_probs()[1] > target_probs[1]
    assert best.policy.leaf_probs()[1] < forward.leaf_probs()[1]
    # the saddle: zero gradient, Hessian (central differences of the exact gradient) with one
    # negative and one positive eigenvalue, and a value above both optima
    saddle = proj.saddle_point(
        log_target, "position", "reverse", best.parameters, other.parameters, tree=tree
    )
    value, gradient = proj.family_divergence(log_target, "position", "reverse", saddle, tree=tree)
    np.testing.assert_allclose(gradient, 0.0, atol=1e-9)
    step = 1e-5
    hessian = np.stack(
        [
            (
                proj.family_divergence(log_target, "position", "reverse", saddle + e, tree=tree)[1]
                - proj.family_divergence(log_target, "position", "reverse", saddle - e, tree=tree)[
                    1
                ]
            )
            / (2 * step)
            for e in step * np.eye(2)
        ]
    )
    eigenvalues = np.linalg.eigvalsh((hessian + hessian.T) / 2)
    assert eigenvalues[0] < -1e-3 < 1e-3 < eigenvalues[1]
    assert value > other.kl[0] > best.kl[0]


@settings(max_examples=10)
@given(st.data())
def test_log_linear_one_hot_family_equals_position_family_in_reverse(data):
    tree = data.draw(trt.trees(max_tokens=2, max_horizon=3, max_prompts=1))
    target = data.draw(trt.policies(tree, allow_zeros=False, min_temperature=0.5))
    position = tr.project_all(target, "position", "reverse", seed=0, n_starts=6)
    log_linear = tr.project_all(target, one_hot_family(tree, "position"), "reverse", n_starts=6)
    np.testing.assert_allclose(log_linear.kl, position.kl, rtol=1e-7, atol=1e-10)


# ----------------------------------------------------------------------- soft RL = reverse
@settings(max_examples=15)
@given(st.data())
def test_soft_rl_is_the_reverse_projection_of_p_star(data):
    # KL(pi || P*) = (beta log Z - J(pi)) / beta for every pi, so argmin_family KL(. || P*)
    # = argmax_family J. Checked against a direct maximization of J over the family's
    # parameters (BFGS on -J with the policy-gradient theorem's exact gradient).
    tree, ref, reward, beta = data.draw(
        trt.problems(max_tokens=3, max_horizon=3, max_magnitude=3.0, allow_zeros=False)
    )
    beta = max(beta, 0.1)
    solution = tr.closed_form(ref, reward, beta)
    family = proj.FAMILIES["position"]
    projection = tr.project_all(solution.policy, family, "reverse", seed=0, n_starts=4)
    for optimum in projection.optima:
        objective = tr.objective(optimum.policy, ref, reward, beta)
        np.testing.assert_allclose(
            optimum.kl,
            (beta * solution.log_partition - objective) / beta,
            rtol=1e-9,
            atol=1e-9,
        )

    def negative_objective(theta):
        pi = family.policy(tree, theta)
        gradient = tr.policy_gradient_grad(pi, ref, reward, beta)
        return -float(tr.objective(pi, ref, reward, beta).mean()), -family.logits_adjoint(
            tree, gradient
        )

    # Every local optimum of the projection is a local maximum of J: a direct maximization of J
    # (BFGS on -J with the policy-gradient theorem's exact gradient) started there gains
    # nothing. (Comparing global searches from different random starts would not be sound:
    # the landscape is non-convex and either search may miss the best mode.)
    scale = 1 + np.abs(reward).max()
    for optimum in projection.optima:
        if optimum.parameters is None or optimum.parameters.size == 0:
            continue
        start_value = -negative_objective(optimum.parameters)[0]
        polished = minimize(
            negative_objective,
            optimum.parameters,
            jac=True,
            method="BFGS",
            options=proj.QUASI_NEWTON_OPTIONS,
        )
        assert -polished.fun <= start_value + 1e-8 * scale
    best_objective = float(tr.objective(projection.policy, ref, reward, beta).mean())
    rng = np.random.default_rng(2)
    for _ in range(20):  # and no random member of the family does better than the best
        member = family.policy(tree, random_theta(family, tree, rng))
        assert tr.objective(member, ref, reward, beta).mean() <= best_objective + 1e-9 * scale


# ------------------------------------------------------------------------------ gradients
@pytest.mark.parametrize("divergence", proj.DIVERGENCES)
@pytest.mark.parametrize("name", ["position", "unigram", "full", "log-linear"])
def test_divergence_gradient_matches_central_differences(name, divergence):
    rng = np.random.default_rng(3)
    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=["x", "y"])
    target = tr.Policy.random(tree, seed=rng)
    if name == "log-linear":
        features = [rng.standard_normal((tree.level_size(h), 3, 4)) for h in range(3)]
        family = proj.LogLinearFamily(features)
    else:
        family = proj.FAMILIES[name]
    theta = random_theta(family, tree, rng, scale=1.0)
    _, gradient = proj.family_divergence(target, family, divergence, theta)
    step = 1e-6
    numerical = np.array(
        [
            (
                proj.family_divergence(target, family, divergence, theta + e)[0]
                - proj.family_divergence(target, family, divergence, theta - e)[0]
            )
            / (2 * step)
            for e in step * np.eye(theta.size)
        ]
    )
    np.testing.assert_allclose(gradient, numerical, rtol=1e-6, atol=1e-8)


# ------------------------------------------------------------------------------ landscape
def test_kl_landscape_matches_direct_computation():
    # On {a, b}^2 the position family is P(a1 a2) = pi_0(a1) pi_1(a2) with
    # pi_h(a) = sigmoid(theta_h); both KLs are sums over the four leaves.
    tree, log_target = bimodal_problem()
    target = np.exp(log_target)
    grid = np.linspace(-5.0, 5.0, 7)
    theta_0, theta_1 = np.meshgrid(grid, grid)
    thetas = np.stack([theta_0, theta_1], axis=-1)  # (7, 7, 2)
    p, q = expit(theta_0), expit(theta_1)
    leaf = np.stack([p * q, p * (1 - q), (1 - p) * q, (1 - p) * (1 - q)], axis=-1)  # (7, 7, 4)
    reverse = np.sum(leaf * (np.log(leaf) - log_target), axis=-1)
    forward = np.sum(target * (log_target - np.log(leaf)), axis=-1)
    np.testing.assert_allclose(
        proj.kl_landscape(log_target, "position", "reverse", thetas, tree=tree),
        reverse,
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        proj.kl_landscape(log_target, "position", "forward", thetas, tree=tree),
        forward,
        rtol=1e-12,
    )


def test_forward_projection_of_a_target_with_zeros_is_finite():
    # tokens the target never uses at a depth get probability 0, so KL(target || pi) is
    # finite; derived: target = one leaf 'ab' => pi_0 = (1, 0), pi_1 = (0, 1), KL = 0
    tree = tr.TokenTree(["a", "b"], 2)
    log_target = np.array([-np.inf, 0.0, -np.inf, -np.inf])
    result = tr.project_all(log_target, "position", "forward", tree=tree)
    np.testing.assert_allclose(result.kl, 0.0, atol=1e-15)
    np.testing.assert_allclose(result.policy.leaf_probs(), [0.0, 1.0, 0.0, 0.0], atol=1e-15)


# ------------------------------------------------------------------------------ bad input
def test_bad_input_is_refused_with_clear_messages():
    tree, log_target = bimodal_problem()
    with pytest.raises(
        ValueError, match=r"family must be one of \('full', 'position', 'unigram'\)"
    ):
        tr.project(log_target, "bigram", "reverse", tree=tree)
    with pytest.raises(ValueError, match=r"divergence must be 'reverse'.*or 'forward'"):
        tr.project(log_target, "position", "backward", tree=tree)
    with pytest.raises(ValueError, match="with tree="):
        tr.project(log_target, "position", "reverse")
    with pytest.raises(ValueError, match=r"target must have shape \(4,\)"):
        tr.project(log_target[:3], "position", "reverse", tree=tree)
    with pytest.raises(ValueError, match="sum to 1"):
        tr.project(log_target + 0.1, "position", "reverse", tree=tree)
    with pytest.raises(TypeError, match=r"tree must be a tinyrlhf\.TokenTree"):
        tr.project(log_target, "position", "reverse", tree="ab")
    zero = np.array([0.0, -np.inf, -np.inf, -np.inf])
    with pytest.raises(ValueError, match="full support"):
        tr.project(zero, "position", "reverse", tree=tree)
    other_tree = tr.TokenTree(["a", "b"], 3)
    with pytest.raises(ValueError, match="tree does not match"):
        tr.project(tr.Policy.uniform(tree), "position", "reverse", tree=other_tree)
    with pytest.raises(ValueError, match="theta must have last dimension 2"):
        proj.family_divergence(log_target, "position", "reverse", np.zeros(3), tree=tree)
    with pytest.raises(ValueError, match="n_starts must be >= 1"):
        tr.project_all(log_target, "position", "reverse", tree=tree, n_starts=0)


def test_forward_closed_form_equals_brute_force_minimization():
    # An independent route on a tiny tree: the forward KL of a product policy written out
    # over the leaves with numpy alone, minimized by Nelder-Mead over softmax parameters.
    tree = tr.TokenTree(["a", "b"], 2, prompts=["x", "y"])
    target = tr.Policy.random(tree, seed=11)
    leaf = target.leaf_probs().reshape(2, 4)  # (P, leaves per prompt)
    tokens = tree.leaf_token_indices()[:4]  # (4, H)

    def forward_kl(rows):  # rows: (H, A) probabilities of a product policy
        model = rows[0, tokens[:, 0]] * rows[1, tokens[:, 1]]  # (4,)
        return float(np.mean(np.sum(leaf * (np.log(leaf) - np.log(model)), axis=1)))

    def position(theta):  # theta = (logit of 'a' at depth 0, at depth 1)
        p = expit(theta)
        return forward_kl(np.stack([p, 1 - p], axis=1))

    def unigram(theta):
        p = expit(theta[0])
        return forward_kl(np.array([[p, 1 - p], [p, 1 - p]]))

    options = {"xatol": 1e-10, "fatol": 1e-14, "maxiter": 4000}
    for name, objective, n in (("position", position, 2), ("unigram", unigram, 1)):
        found = minimize(objective, np.zeros(n), method="Nelder-Mead", options=options)
        closed = tr.project(target, name, "forward")
        np.testing.assert_allclose(
            tr.kl_divergence(target, closed).mean(), found.fun, rtol=1e-9, atol=1e-12
        )
        probs = np.array([np.exp(closed.log_probs[h][0, 0]) for h in range(2)])  # P('a') per h
        np.testing.assert_allclose(
            probs[:n] if name == "position" else probs[:1], expit(found.x), atol=1e-6
        )
