"""Best-of-n, exactly: against brute force over all ordered n-tuples of draws, the KL bound of
Beirami et al. and its tightness in the continuous limit, the 0/1 verifier's closed form, the
win rate, and RLHF at equal KL."""

import itertools
from decimal import Decimal, getcontext

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyrlhf as tr
from tinyrlhf.best_of_n import best_of_n, best_of_n_curve, kl_bound, rlhf_at_kl
from tinyrlhf.examples import demo_problem


def brute_force(ref, score, n, ties):
    """P_BoN by enumerating all N^n ordered tuples of leaves of each prompt."""
    tree = ref.tree
    q = ref.leaf_probs().reshape(tree.n_prompts, -1)
    s = score.reshape(tree.n_prompts, -1)
    out = np.zeros_like(q)
    for p in range(tree.n_prompts):
        for draws in itertools.product(range(q.shape[1]), repeat=n):
            prob = np.prod(q[p, list(draws)])
            scores = s[p, list(draws)]
            tied = [
                leaf for leaf, value in zip(draws, scores, strict=True) if value == scores.max()
            ]
            if ties == "uniform":  # a uniformly chosen one of the tied draws
                for leaf in tied:
                    out[p, leaf] += prob / len(tied)
            else:  # the lowest leaf index among them
                out[p, min(tied)] += prob
    return out.reshape(-1)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 4),
    ties=st.sampled_from(["uniform", "first"]),
    levels=st.integers(2, 3),
)
def test_against_brute_force_with_ties(seed, n, ties, levels):
    rng = np.random.default_rng(seed)
    tree = tr.TokenTree(["a", "b"], 2, prompts=("x", "y"))
    ref = tr.Policy.random(tree, seed=rng, zero_fraction=0.2)
    score = rng.integers(0, levels, size=tree.n_leaves).astype(float)  # many ties
    result = best_of_n(ref, score, n, ties=ties)
    expected = brute_force(ref, score, n, ties)
    np.testing.assert_allclose(result.policy.leaf_probs(), expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.exp(result.leaf_log_probs), expected, rtol=1e-12, atol=1e-15)
    # leaves the reference never produces stay at probability 0
    assert (result.leaf_log_probs[ref.leaf_log_probs() == -np.inf] == -np.inf).all()
    # the stored KL is the exact KL of the policy; the bound holds
    np.testing.assert_allclose(result.kl, tr.kl_divergence(result.policy, ref), atol=1e-12)
    assert (result.kl <= result.kl_bound + 1e-12).all()
    # expected score and win rate from the brute-force distribution
    q, s = ref.leaf_probs().reshape(2, -1), score.reshape(2, -1)
    bon = expected.reshape(2, -1)
    np.testing.assert_allclose(result.expected_score, (bon * s).sum(axis=1), atol=1e-12)
    beats = (s[:, :, None] > s[:, None, :]) + 0.5 * (s[:, :, None] == s[:, None, :])
    win = np.einsum("pi,pj,pij->p", bon, q, beats)  # P(s(y_BoN) > s(y')) + P(=)/2
    np.testing.assert_allclose(result.win_rate, win, atol=1e-12)


def test_n_one_is_the_reference_and_wins_half():
    # n = 1: one draw, F^1 - F_-^1 = q(c); with ties counted 1/2 the win rate is
    # sum_c q(c)(F_- + q(c)/2) = sum_c (F_c^2 - F_{c-1}^2)/2 = 1/2 exactly, whatever the ties
    tree, ref, reward = demo_problem(horizon=3)
    score = np.round(reward)  # ties
    result = best_of_n(ref, score, 1)
    np.testing.assert_allclose(result.leaf_log_probs, ref.leaf_log_probs(), atol=1e-12)
    np.testing.assert_allclose(result.win_rate, 0.5, atol=1e-14)
    assert result.kl_bound == 0.0


def equiprobable_kl(n_leaves, n):
    """KL for N equiprobable leaves with distinct scores: the k-th lowest is chosen with
    w_k = (k^n - (k-1)^n)/N^n, so KL = sum_k w_k log(N w_k) (equation (1), classes of one)."""
    k = np.arange(1, n_leaves + 1, dtype=float)
    w = (k**n - (k - 1) ** n) / float(n_leaves) ** n
    return float(np.sum(w * np.log(n_leaves * w)))


@pytest.mark.parametrize("n", [2, 8, 64])
def test_bound_is_tight_in_the_continuous_limit(n):
    gaps = []
    for horizon in (2, 4, 6, 8, 10):  # N = 4 .. 1024 equiprobable leaves, distinct scores
        tree = tr.TokenTree(["a", "b"], horizon)
        score = np.random.default_rng(horizon).permutation(tree.n_leaves).astype(float)
        result = best_of_n(tr.Policy.uniform(tree), score, n)
        np.testing.assert_allclose(result.kl[0], equiprobable_kl(tree.n_leaves, n), rtol=1e-12)
        gaps.append(result.kl_bound - result.kl[0])
    gaps = np.array(gaps)
    assert (gaps > 0).all() and (np.diff(gaps) < 0).all()  # below the bound, approaching it
    # continuous limit: a Riemann sum of int n u^{n-1} log(n u^{n-1}) du, error O(1/N^2):
    # quadrupling N divides the gap by about 16
    assert gaps[-1] < 1e-3 and gaps[-1] < gaps[-2] / 10


def test_win_rate_tends_to_n_over_n_plus_one():
    # N equiprobable distinct leaves, n = 2: win rate = sum_k w_k (k - 1/2)/N with
    # w_k = (2k - 1)/N^2, = sum_k (2k - 1)^2 / (2 N^3) = (4 N^2 - 1)/(6 N^2) = 2/3 - 1/(6 N^2)
    for horizon in (1, 3, 5):
        tree = tr.TokenTree(["a", "b", "c", "d"], horizon)
        n_leaves = tree.n_leaves
        score = np.random.default_rng(0).permutation(n_leaves).astype(float)
        result = best_of_n(tr.Policy.uniform(tree), score, 2)
        np.testing.assert_allclose(result.win_rate[0], 2 / 3 - 1 / (6 * n_leaves**2), rtol=1e-13)
    # general n: the continuous value n/(n + 1) (the best of n + 1 draws is each one w.p.
    # 1/(n + 1)) is approached as N grows (N = 4096 here)
    tree = tr.TokenTree(["a", "b"], 12)
    score = np.random.default_rng(1).permutation(tree.n_leaves).astype(float)
    for n in (3, 10, 100):
        result = best_of_n(tr.Policy.uniform(tree), score, n)
        assert abs(result.win_rate[0] - n / (n + 1)) < 1e-3


def verifier_kl(p, n):
    """0/1 verifier with success probability p: classes {0: 1 - p, 1: p}, w_0 = (1 - p)^n,
    w_1 = 1 - (1 - p)^n, so KL = (n - 1)(1 - p)^n log(1 - p) + w_1 log(w_1 / p); in Decimal
    arithmetic (50 digits), an independent route from the package's log1p/expm1 form."""
    getcontext().prec = 50
    p, one = Decimal(p), Decimal(1)
    miss = (one - p) ** n
    hit = one - miss
    value = (n - 1) * miss * (one - p).ln() + (hit * (hit / p).ln() if hit > 0 else 0)
    return float(value)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 10**4, 10**6])
def test_verifier_closed_form(n):
    tree = tr.TokenTree(["a", "b", "c"], 3)
    ref = tr.Policy.random(tree, seed=3)
    verdict = (tree.leaf_token_indices()[:, 0] == 2).astype(float)  # passes iff it starts with c
    p_pass = float(ref.leaf_probs()[verdict == 1].sum())
    result = best_of_n(ref, verdict, n)
    np.testing.assert_allclose(result.kl[0], verifier_kl(p_pass, n), rtol=1e-11, atol=1e-14)
    # far below the bound when n is large: the KL saturates at -log p
    assert result.kl[0] <= -np.log(p_pass) + 1e-12
    np.testing.assert_allclose(result.expected_score[0], 1 - (1 - p_pass) ** n, rtol=1e-12)
    if n >= 10**4:  # bound log n - 1 + 1/n > 8.2, KL <= -log p (p ~ 0.16 here)
        assert result.kl[0] < result.kl_bound / 2


def test_large_n_is_accurate_against_decimal():
    # distinct scores, n = 10^6: P_BoN of the two best leaves from equation (1) in Decimal
    tree = tr.TokenTree(["a", "b", "c"], 3)
    ref = tr.Policy.random(tree, seed=5)
    score = np.random.default_rng(5).permutation(tree.n_leaves).astype(float)
    n = 10**6
    result = best_of_n(ref, score, n)
    getcontext().prec = 60
    q = [Decimal(float(value)) for value in ref.leaf_probs()]
    order = np.argsort(score)
    cdf = Decimal(0)
    expected = {}
    for leaf in order:
        below = cdf
        cdf += q[leaf]
        expected[leaf] = cdf**n - below**n
    for leaf in order[-3:]:
        got = float(np.exp(result.leaf_log_probs[leaf]))
        np.testing.assert_allclose(got, float(expected[leaf]), rtol=1e-9)


def test_frontier_dominates_best_of_n_and_rlhf_at_kl_matches():
    tree, ref, reward = demo_problem(horizon=4)
    curve = best_of_n_curve(ref, reward, [1, 2, 4, 16, 64, 1024, 4096])
    # no policy beats the KL-regularized optimum at its own KL
    assert (curve.expected_reward <= curve.rlhf_expected_score + 1e-10).all()
    np.testing.assert_allclose(curve.expected_reward, curve.expected_score)
    assert (np.diff(curve.kl, axis=0) > 0).all() and (
        np.diff(curve.expected_score, axis=0) > 0
    ).all()
    # one prompt: the matched beta's closed form has the target KL
    matched = rlhf_at_kl(ref, reward, curve.kl[3])
    for p, beta in enumerate(matched.beta):
        star = tr.closed_form(ref, reward, float(beta))
        np.testing.assert_allclose(star.kl()[p], curve.kl[3, p], rtol=1e-9)
        np.testing.assert_allclose(
            star.expected_reward()[p], matched.expected_reward[p], rtol=1e-9
        )
    assert matched.residual < 1e-10
    # beyond the largest KL on the frontier, it is flat at max r
    flat = rlhf_at_kl(ref, reward, 100.0)
    np.testing.assert_allclose(flat.expected_reward, reward.reshape(2, -1).max(axis=1))


def test_proxy_score_judged_by_the_true_reward():
    tree, ref, reward = demo_problem(horizon=3)
    r_hat = reward + np.random.default_rng(0).normal(scale=0.5, size=tree.n_leaves)
    curve = best_of_n_curve(ref, r_hat, [1, 4, 1024], reward=reward)
    for k, n in enumerate(curve.n):
        result = best_of_n(ref, r_hat, int(n))
        np.testing.assert_allclose(
            curve.expected_reward[k], tr.expected_reward(result.policy, reward)
        )
    # n -> inf: best-of-n picks argmax r_hat, whose true reward is what it is
    top = r_hat.reshape(2, -1).argmax(axis=1)
    np.testing.assert_allclose(
        curve.expected_reward[-1], reward.reshape(2, -1)[[0, 1], top], atol=1e-6
    )


def test_kl_bound_values():
    assert kl_bound(1) == 0.0
    np.testing.assert_allclose(kl_bound(4), np.log(4) - 0.75)


def test_bad_input():
    tree, ref, reward = demo_problem(horizon=2)
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n(ref, reward, 0)
    with pytest.raises(TypeError, match="n must be an integer"):
        best_of_n(ref, reward, 2.5)
    with pytest.raises(TypeError, match="n must be an integer"):
        best_of_n(ref, reward, True)
    with pytest.raises(ValueError, match="score must have shape"):
        best_of_n(ref, reward[:-1], 2)
    bad = reward.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="score contains NaN"):
        best_of_n(ref, bad, 2)
    with pytest.raises(ValueError, match="ties must be one of"):
        best_of_n(ref, reward, 2, ties="random")
    with pytest.raises(TypeError, match="ref must be"):
        best_of_n(reward, reward, 2)
    with pytest.raises(ValueError, match="kl must be finite"):
        rlhf_at_kl(ref, reward, -1.0)
    with pytest.raises(TypeError, match="ns must be"):
        best_of_n_curve(ref, reward, [1, 2.5])


def test_cli_bon(capsys):
    from tinyrlhf.cli import main

    assert main(["bon", "--horizon", "3", "--n", "1,4,64"]) == 0
    out = capsys.readouterr().out
    assert "log n-(n-1)/n" in out and "k3/loss/token" in out and "forward KL" in out
    assert main(["bon", "--n", "1,x"]) == 2
    assert "argument --n: must be positive integers" in capsys.readouterr().err


def test_policy_keeps_the_reference_zeros_and_plots_check_shapes():
    from tinyrlhf.plots import plot_best_of_n, plot_kl_penalty

    tree = tr.TokenTree(["a", "b", "c"], 3, prompts=("x", "y"))
    ref = tr.Policy.random(tree, seed=2, zero_fraction=0.3)
    score = np.random.default_rng(2).integers(0, 3, size=tree.n_leaves).astype(float)
    result = best_of_n(ref, score, 8)
    # unreached rows come from ref, so per-token estimators accept the pair
    for h in range(tree.horizon):
        assert (result.policy.log_probs[h][ref.log_probs[h] == -np.inf] == -np.inf).all()
    mean, _ = tr.kl_estimator_moments(result.policy, ref, "k1")
    np.testing.assert_allclose(mean, result.kl, atol=1e-12)  # E[k1] is the KL
    with pytest.raises(ValueError, match="same"):
        plot_best_of_n([1, 2], [0.0], [0.0, 1.0], ([0.0], [0.0]))
    with pytest.raises(ValueError, match="align"):
        plot_kl_penalty(["k1/loss/token"], [], np.zeros(1), np.zeros(1), [True])


def test_a_rare_low_score_generation_gives_no_runtime_warning():
    # the low-score class has q = e^-40 / (1 + e^-40): its tail above is 1.0 in float; the
    # suite's filterwarnings=error turns a log1p(-1) divide warning into a failure
    tree = tr.TokenTree(["a", "b"], 1)
    ref = tr.Policy.from_logits(tree, [np.array([[-40.0, 0.0]])])
    result = best_of_n(ref, np.array([0.0, 1.0]), 2)
    # best of 2 picks "a" only when both draws are "a": P(a) = q(a)^2 (derived, independent)
    log_qa = -40.0 - np.logaddexp(-40.0, 0.0)
    log_p = result.policy.leaf_log_probs()
    np.testing.assert_allclose(log_p[0], 2 * log_qa, rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_p[1]), 1.0, rtol=1e-15)
