"""Fixed points of the KL penalty as trainers write it: the expected update is the gradient of
the objective each combination claims (finite differences), it vanishes at the fixed points,
closed forms agree with pi*, and the cases without an interior fixed point say so."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf.examples import demo_problem
from tinyrlhf.kl_penalty import KLPenaltyWarning, classify, penalized_update
from tinyrlhf.kl_terms import kl_penalty_gradient, kl_term

FD_STEP = 1e-5  # central differences: truncation ~ step^2 * third derivative ~ 1e-10


def flat(tables):
    return np.concatenate([table.reshape(-1) for table in tables])


def central_difference(function, tree, logits):
    """Gradient of function(policy) w.r.t. every finite softmax logit, by central differences."""
    vector = flat(logits)
    shapes = [table.shape for table in logits]

    def at(v):
        tables, offset = [], 0
        for shape in shapes:
            size = int(np.prod(shape))
            tables.append(v[offset : offset + size].reshape(shape))
            offset += size
        return function(tr.Policy.from_logits(tree, tables))

    gradient = np.zeros_like(vector)
    for k in np.flatnonzero(np.isfinite(vector)):
        step = np.zeros_like(vector)
        step[k] = FD_STEP
        gradient[k] = (at(vector + step) - at(vector - step)) / (2 * FD_STEP)
    return gradient


def reverse_kl(pi, ref):
    return tr.kl_divergence(pi, ref)


def forward_kl(pi, ref):
    return tr.kl_divergence(ref, pi)


def k2_reward_divergence(pi, ref):
    # D = E_pi[u^2/2] - KL(pi || pi_ref), u = log P/P_ref (module docstring: g + g' = u^2/2)
    u = (pi.leaf_log_probs() - ref.leaf_log_probs()).reshape(pi.tree.n_prompts, -1)
    return (pi.leaf_probs().reshape(pi.tree.n_prompts, -1) * u**2 / 2).sum(axis=1) - reverse_kl(
        pi, ref
    )


def k3_reward_divergence(pi, ref):
    return reverse_kl(pi, ref) - forward_kl(pi, ref)


def chi_square(pi, ref):
    p, q = pi.leaf_probs(), ref.leaf_probs()
    return ((p - q) ** 2 / q).reshape(pi.tree.n_prompts, -1).sum(axis=1)


CLAIMS = [  # (estimator, placement, level, beta-weighted divergence D; None: no penalty)
    ("k1", "reward", "sequence", reverse_kl),
    ("k1", "reward", "token", reverse_kl),
    ("k2", "loss", "sequence", reverse_kl),
    ("k3", "loss", "sequence", forward_kl),
    ("k2", "reward", "sequence", k2_reward_divergence),
    ("k3", "reward", "sequence", k3_reward_divergence),
    ("k1", "loss", "sequence", None),
    ("k1", "loss", "token", None),
]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), claim=st.sampled_from(CLAIMS))
def test_update_is_the_gradient_of_the_claimed_objective(seed, claim):
    estimator, placement, level, divergence = claim
    rng = np.random.default_rng(seed)
    tree = tr.TokenTree(["a", "b"], 3, prompts=("x", "y"))
    ref = tr.Policy.random(tree, seed=rng)
    policy = tr.Policy.random(tree, seed=rng)
    reward = rng.normal(size=tree.n_leaves)
    beta = float(rng.uniform(0.2, 3.0))

    def claimed(pi):  # mean over prompts of E[r] - beta D
        value = tr.expected_reward(pi, reward)
        if divergence is not None:
            value = value - beta * divergence(pi, ref)
        return float(value.mean())

    update = penalized_update(policy, ref, reward, beta, kl_term(estimator, placement, level))
    numeric = central_difference(claimed, tree, policy.log_probs)
    np.testing.assert_allclose(flat(update), numeric, atol=1e-8)


def per_state_objective(pi, frozen, ref, reward, beta, divergence):
    """sum_s d_0(s) [sum_a pi(a|s) Q_0(s, a) - beta D_s(pi(.|s))] with the occupancy d_0 and
    Q_0(s, a) = E_{pi_0}[r | s, a] of ``frozen`` held fixed (the token-level loss claim)."""
    tree = pi.tree
    occupancy = frozen.log_occupancies()
    sums = tree.subtree_sums(frozen.leaf_probs() * reward)  # sum of P r below each node
    total = 0.0
    for h in range(tree.horizon):
        children = np.exp(occupancy[h + 1]).reshape(-1, tree.n_tokens)
        q_value = np.divide(
            sums[h + 1].reshape(-1, tree.n_tokens),
            children,
            where=children > 0,
            out=np.zeros_like(children),
        )
        p, r_ref = np.exp(pi.log_probs[h]), np.exp(ref.log_probs[h])
        if divergence == "reverse":
            d_s = np.sum(p * (pi.log_probs[h] - ref.log_probs[h]), axis=1)
        else:
            d_s = np.sum(r_ref * (ref.log_probs[h] - pi.log_probs[h]), axis=1)
        total += np.sum(np.exp(occupancy[h]) * (np.sum(p * q_value, axis=1) - beta * d_s))
    return total / tree.n_prompts


@pytest.mark.parametrize(("estimator", "divergence"), [("k2", "reverse"), ("k3", "forward")])
def test_token_level_loss_is_a_partial_gradient(estimator, divergence):
    rng = np.random.default_rng(7)
    tree = tr.TokenTree(["a", "b", "c"], 3)
    ref, policy = tr.Policy.random(tree, seed=rng), tr.Policy.random(tree, seed=rng)
    reward, beta = rng.normal(size=tree.n_leaves), 0.8
    update = penalized_update(policy, ref, reward, beta, kl_term(estimator, "loss", "token"))
    numeric = central_difference(
        lambda pi: per_state_objective(pi, policy, ref, reward, beta, divergence),
        tree,
        policy.log_probs,
    )
    np.testing.assert_allclose(flat(update), numeric, atol=1e-8)
    # the fixed point solves every state's problem: the same partial gradient vanishes there
    fixed = tr.kl_penalty_fixed_point(
        ref, reward, beta, estimator=estimator, placement="loss", level="token"
    )
    assert fixed.converged and fixed.stationary and fixed.how == "backward induction"
    assert fixed.optimizes == "not a divergence of π"
    at_fixed = central_difference(
        lambda pi: per_state_objective(pi, fixed.policy, ref, reward, beta, divergence),
        tree,
        fixed.policy.log_probs,
    )
    assert np.abs(at_fixed).max() < 1e-8
    # ... and it is not pi* (the per-state problems ignore the later states' penalties)
    assert tr.total_variation(fixed.policy, tr.closed_form(ref, reward, beta).policy).max() > 1e-3


@pytest.mark.parametrize(
    ("estimator", "placement", "level"),
    [("k1", "reward", "sequence"), ("k1", "reward", "token"), ("k2", "loss", "sequence")],
)
def test_closed_form_cases_are_pi_star(estimator, placement, level):
    tree, ref, reward = demo_problem(horizon=3)
    fixed = tr.kl_penalty_fixed_point(
        ref, reward, 0.7, estimator=estimator, placement=placement, level=level
    )
    star = tr.closed_form(ref, reward, 0.7)
    tr.check_agreement(star, fixed).assert_close(log_pi_atol=1e-9, tv_atol=1e-12)
    assert fixed.optimizes == "reverse KL" and fixed.stationary and fixed.converged
    assert fixed.residual <= 1e-12
    # the true objective's gradient vanishes there (finite differences of J)
    gradient = central_difference(
        lambda pi: float(tr.objective(pi, ref, reward, 0.7).mean()), tree, fixed.policy.log_probs
    )
    assert np.abs(gradient).max() < 1e-8


def test_k3_in_the_loss_is_the_forward_kl_optimum():
    tree, ref, reward = demo_problem(horizon=3)
    beta = 0.7
    fixed = tr.kl_penalty_fixed_point(ref, reward, beta, estimator="k3", placement="loss")
    assert fixed.optimizes == "forward KL" and fixed.converged and fixed.residual <= 1e-12
    # stationary condition r + beta q/P = lambda per prompt (derived in the module docstring)
    lagrange = reward + beta * ref.leaf_probs() / fixed.policy.leaf_probs()
    assert np.ptp(lagrange.reshape(2, -1), axis=1).max() < 1e-10
    gradient = central_difference(
        lambda pi: float((tr.expected_reward(pi, reward) - beta * forward_kl(pi, ref)).mean()),
        tree,
        fixed.policy.log_probs,
    )
    assert np.abs(gradient).max() < 1e-8
    assert tr.total_variation(fixed.policy, tr.closed_form(ref, reward, beta).policy).max() > 0.05


def test_k1_in_the_loss_has_no_interior_fixed_point():
    tree, ref, reward = demo_problem(horizon=3)
    policy = tr.Policy.random(tree, seed=4)
    for level in ("sequence", "token"):  # E[grad log P] = 0
        gradient = kl_penalty_gradient(policy, ref, kl_term("k1", "loss", level))
        assert tr.gradients.gradient_norm(gradient) < 1e-15
        with pytest.warns(KLPenaltyWarning, match="no interior"):  # converged=False warns
            fixed = tr.kl_penalty_fixed_point(
                ref, reward, 0.7, estimator="k1", placement="loss", level=level
            )
        assert not fixed.stationary and not fixed.converged and "no interior" in fixed.reason
        assert fixed.optimizes == "nothing in expectation"
        # where E[r]-ascent heads: P_ref restricted to the best generations
        np.testing.assert_allclose(
            tr.expected_reward(fixed.policy, reward), reward.reshape(2, -1).max(axis=1)
        )
    constant = np.repeat([1.0, -2.0], tree.leaves_per_prompt)  # then every policy is stationary
    fixed = tr.kl_penalty_fixed_point(ref, constant, 0.7, estimator="k1", placement="loss")
    assert fixed.stationary and fixed.converged


@pytest.mark.parametrize("estimator", ["k2", "k3"])
@pytest.mark.parametrize("level", ["sequence", "token"])
def test_estimates_in_the_reward_collapse(estimator, level):
    tree, ref, reward = demo_problem(horizon=3)
    with pytest.warns(KLPenaltyWarning, match="probability 0"):
        fixed = tr.kl_penalty_fixed_point(
            ref, reward, 0.7, estimator=estimator, placement="reward", level=level
        )
    assert (
        not fixed.stationary and not fixed.converged and fixed.optimizes == "not a divergence of π"
    )
    # the collapse is real: some generation fell COLLAPSE_LOG_RATIO nats below the reference
    ratio = fixed.policy.leaf_log_probs() - ref.leaf_log_probs()
    assert ratio.min() < -tr.kl_penalty.COLLAPSE_LOG_RATIO + 5


def test_callables_are_classified_and_solved():
    tree, ref, reward = demo_problem(horizon=3)
    beta = 3.0
    # k3 with the ratio inverted, in the loss: derivative P/q - 1, the chi^2 penalty
    inverted_k3 = lambda x, y: np.expm1(x - y) - (x - y)  # noqa: E731
    fixed = tr.kl_penalty_fixed_point(ref, reward, beta, estimator=inverted_k3, placement="loss")
    assert fixed.optimizes == "χ²" and fixed.converged and fixed.residual <= fixed.tolerance
    # stationary condition r - beta (P/q - 1) = c per prompt: P = q (1 + (r - c)/beta)
    condition = reward - beta * (fixed.policy.leaf_probs() / ref.leaf_probs() - 1)
    assert np.ptp(condition.reshape(2, -1), axis=1).max() < 1e-7
    gradient = central_difference(
        lambda pi: float((tr.expected_reward(pi, reward) - beta / 2 * chi_square(pi, ref)).mean()),
        tree,
        fixed.policy.log_probs,
    )
    assert np.abs(gradient).max() < 1e-7
    # a named estimator written as a callable gives the same fixed point; a scale rescales beta
    k3 = lambda x, y: np.expm1(y - x) - (y - x)  # noqa: E731
    same = tr.kl_penalty_fixed_point(ref, reward, beta, estimator=k3, placement="loss")
    named = tr.kl_penalty_fixed_point(ref, reward, beta, estimator="k3", placement="loss")
    assert same.optimizes == "forward KL"
    assert tr.total_variation(same.policy, named.policy).max() < 1e-9
    double_k2 = lambda x, y: (x - y) ** 2  # noqa: E731
    doubled = tr.kl_penalty_fixed_point(ref, reward, beta, estimator=double_k2, placement="loss")
    assert (
        tr.total_variation(doubled.policy, tr.closed_form(ref, reward, 2 * beta).policy).max()
        < 1e-9
    )
    # k1 with the ratio inverted, in the reward: the KL is rewarded
    flipped = kl_term(lambda x, y: y - x, "reward", "sequence")
    assert classify(flipped)[0] == "sign-flipped"
    with pytest.warns(KLPenaltyWarning):
        result = tr.kl_penalty_fixed_point(
            ref, reward, beta, estimator=lambda x, y: y - x, placement="reward"
        )
    assert not result.stationary


def test_report_on_the_demo_problem():
    tree, ref, reward = demo_problem(horizon=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the report itself does not warn
        report = tr.kl_penalty_report(ref, reward, 0.7)
    assert len(report.rows) == 12
    text = str(report)
    for row in report.rows:
        assert row.name in text
        assert row.objective_lost >= 0  # beta KL(pi || pi*), from non-negative terms
        if row.optimizes == "reverse KL":
            assert row.tv < 1e-12 and abs(row.objective_lost) < 1e-12
    assert report.row("k3/loss/sequence").objective_lost > 1e-3
    with pytest.raises(ValueError, match="no row named"):
        report.row("k4/loss/token")


def test_bad_input():
    tree, ref, reward = demo_problem(horizon=2)
    fixed = tr.kl_penalty_fixed_point
    with pytest.raises(ValueError, match="estimator must be one of"):
        fixed(ref, reward, 1.0, estimator="k4", placement="loss")
    with pytest.raises(TypeError, match="estimator must be one of"):
        fixed(ref, reward, 1.0, estimator=3, placement="loss")
    with pytest.raises(ValueError, match="placement must be one of"):
        fixed(ref, reward, 1.0, estimator="k1", placement="advantage")
    with pytest.raises(ValueError, match="level must be one of"):
        fixed(ref, reward, 1.0, estimator="k1", placement="loss", level="batch")
    with pytest.raises(ValueError, match="estimator returned shape"):
        fixed(ref, reward, 1.0, estimator=lambda x, y: np.zeros(2), placement="loss")
    with pytest.raises(ValueError, match="estimator returned NaN"):
        fixed(ref, reward, 1.0, estimator=lambda x, y: np.full_like(x, np.nan), placement="reward")
    with pytest.raises(ValueError, match="beta"):
        fixed(ref, reward, 0.0, estimator="k1", placement="loss")
    with pytest.raises(ValueError, match="reward must have shape"):
        fixed(ref, reward[:3], 1.0, estimator="k1", placement="loss")
    with pytest.raises(ValueError, match="tol"):
        fixed(ref, reward, 1.0, estimator="k1", placement="loss", tol=0.0)


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_numerical_route_with_a_zero_probability_token_gives_no_runtime_warning(estimator):
    # pi_ref(b | a) = 0: the leaf "ab" is off the support (z = log q = -inf there); the suite's
    # filterwarnings=error turns an -inf - -inf RuntimeWarning into a failure
    tree = tr.TokenTree(["a", "b"], 2)
    ref = tr.Policy.from_logits(tree, [np.zeros((1, 2)), np.array([[0.0, -np.inf], [0.0, 0.0]])])
    reward = np.array([1.0, 0.0, 0.5, 0.0])
    with pytest.warns(KLPenaltyWarning, match="probability 0"):
        fixed = tr.kl_penalty_fixed_point(
            ref, reward, 0.5, estimator=estimator, placement="reward"
        )
    assert not fixed.converged
    assert fixed.policy.leaf_probs()[1] == 0.0  # the reference's zero is kept


def independent_forward_kl(q, r, beta):
    """The auditor's independent k3-in-the-loss fixed point (one prompt): ``P = beta q/(t + gap)``,
    ``gap = max r - r``, ``sum P = 1`` solved for ``s = log t`` by scipy's brentq on
    ``g(s) = log sum beta q/(e^s + gap)`` (bracket: ``g(log(beta q_top)) >= 0 >= g(log beta)``)."""
    from scipy.optimize import brentq

    gap = r.max() - r

    def g(s):
        return np.log((beta * q / (np.exp(s) + gap)).sum())

    low, high = np.log(beta * q[gap == 0].sum()) - 1e-9, np.log(beta) + 1e-9
    s = brentq(g, low, high, xtol=1e-15, rtol=1e-15, maxiter=1000)
    return beta * q / (np.exp(s) + gap)


def check_k3_loss_against_independent(logits, reward, beta):
    """One-token tree (both levels are then the same problem): TV to the independent solution
    <= 1e-9 whenever converged, a KLPenaltyWarning whenever not."""
    tree = tr.TokenTree([str(k) for k in range(len(logits))], 1)
    ref = tr.Policy.from_logits(tree, [np.asarray(logits, dtype=float)[None, :]])
    expected = independent_forward_kl(ref.leaf_probs(), reward, beta)
    for level in ("sequence", "token"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fixed = tr.kl_penalty_fixed_point(
                ref, reward, beta, estimator="k3", placement="loss", level=level
            )
        warned = any(issubclass(w.category, KLPenaltyWarning) for w in caught)
        assert fixed.converged == (fixed.residual <= fixed.tolerance)
        if fixed.converged:
            assert 0.5 * np.abs(fixed.policy.leaf_probs() - expected).sum() <= 1e-9
        else:
            assert warned


@pytest.mark.parametrize("logit", [-50.0, -60.0, -106.0])
def test_k3_loss_with_a_rare_best_generation(logit):
    # q(b) = e^logit/(1 + e^logit): lambda - max r ~ beta q(b) is below the float spacing of
    # max r = 1, so a lambda-parametrized solve collapses P_b to ~0 (was P_b = 2e-14 at -106)
    reward, beta = np.array([0.0, 1.0]), 0.01
    check_k3_loss_against_independent([0.0, logit], reward, beta)
    tree = tr.TokenTree(["a", "b"], 1)
    ref = tr.Policy.from_logits(tree, [np.array([[0.0, logit]])])
    for level in ("sequence", "token"):
        fixed = tr.kl_penalty_fixed_point(
            ref, reward, beta, estimator="k3", placement="loss", level=level
        )
        assert fixed.converged and fixed.policy.leaf_probs()[1] > 0.98  # P_b = 1 - beta here


def test_k3_loss_residual_is_not_fooled_at_the_boundary():
    # the old collapsed answer P = (1 - 2e-14, 2e-14) had ||U|| = 3e-14 (weighted by P); the
    # scale-free residual sees r + beta q/P spread by ~1 there
    from tinyrlhf.kl_penalty import forward_kl_stationarity

    log_q = np.array([[0.0, -106.0]]) - np.logaddexp(0.0, -106.0)
    collapsed = np.log(np.array([[1.0 - 2e-14, 2e-14]]))
    reward = np.array([[0.0, 1.0]])
    assert forward_kl_stationarity(collapsed, log_q, reward, 0.01)[0] > 0.1
    true = np.log(independent_forward_kl(np.exp(log_q[0]), reward[0], 0.01))[None, :]
    assert forward_kl_stationarity(true, log_q, reward, 0.01)[0] < 1e-12


@settings(max_examples=40, deadline=None)
@given(
    logits=st.lists(st.floats(-40.0, 40.0), min_size=2, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    beta=st.floats(1e-3, 2.0),
)
def test_k3_loss_on_peaked_references(logits, seed, beta):
    reward = np.random.default_rng(seed).normal(size=len(logits))
    check_k3_loss_against_independent(logits, reward, beta)


def test_no_interior_fixed_point_reports_an_infinite_residual():
    # the audit's case: k3 in the reward at sequence level drives pi to the vertex [0, 1],
    # where the expected update vanishes (a saturated softmax has no gradient) without being
    # a fixed point; ||U|| = 0 there certifies nothing, so the residual must be inf
    tree = tr.TokenTree(["a", "b"], 1)
    ref = tr.Policy(tree, [np.log([[0.03838633042124219, 0.9616136695787578]])])
    reward = np.array([0.09491967419215651, 0.34251591296592293])
    with pytest.warns(KLPenaltyWarning, match="no certified fixed point"):
        fixed = tr.kl_penalty_fixed_point(
            ref, reward, 21.275904890194198, estimator="k3", placement="reward", level="sequence"
        )
    assert not fixed.stationary and fixed.reason
    assert fixed.residual == np.inf and not fixed.converged
    assert fixed.converged == (fixed.residual <= fixed.tolerance)
