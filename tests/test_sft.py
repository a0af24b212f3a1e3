"""SFT: next-token maximum likelihood on demonstrations, smoothing and the prior."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import tinyrlhf as tr
from tinyrlhf import testing as trt


def log_likelihood(policy, demonstrations, weight=None):
    weight = np.ones(len(demonstrations)) if weight is None else weight
    log_p = policy.leaf_log_probs()[demonstrations]
    return float(np.sum(weight * np.where(weight > 0, log_p, 0.0)))


def test_hand_counted_case():
    # Tokens a, b; H = 2; demonstrations aa, aa, ab, ba (leaves 0, 0, 1, 2).
    # Root: N(a) = 3, N(b) = 1. State a: N(aa) = 2, N(ab) = 1. State b: N(ba) = 1, N(bb) = 0.
    tree = tr.TokenTree(["a", "b"], horizon=2)
    demonstrations = np.array([0, 0, 1, 2])
    policy = tr.fit_sft(tree, demonstrations)
    np.testing.assert_allclose(policy.probs[0], [[3 / 4, 1 / 4]], rtol=1e-14)
    np.testing.assert_allclose(policy.probs[1], [[2 / 3, 1 / 3], [1.0, 0.0]], rtol=1e-14)
    assert policy.log_probs[1][1, 1] == -np.inf  # never demonstrated: never picked
    # alpha = 2 with the uniform prior adds one pseudo-count per token (Laplace):
    # root (3+1)/(4+2), state a (2+1)/(3+2), state b (1+1)/(1+2).
    smoothed = tr.fit_sft(tree, demonstrations, smoothing=2.0)
    np.testing.assert_allclose(smoothed.probs[0], [[4 / 6, 2 / 6]], rtol=1e-14)
    np.testing.assert_allclose(smoothed.probs[1], [[3 / 5, 2 / 5], [2 / 3, 1 / 3]], rtol=1e-14)


@given(st.data())
@settings(max_examples=30)
def test_population_weights_recover_the_demonstrator(data):
    # Weighting every leaf by its exact probability makes the counts N(s, a) = d(s) pi(a|s),
    # so N(s, a) / N(s) = pi(a | s) on every state the demonstrator reaches (forward KL 0);
    # the states it never reaches get the prior.
    tree = data.draw(trt.trees())
    demonstrator = data.draw(trt.policies(tree))
    prior = data.draw(trt.policies(tree, allow_zeros=False))
    leaves = np.arange(tree.n_leaves)
    fitted = tr.fit_sft(tree, leaves, weight=demonstrator.leaf_probs(), prior=prior)
    np.testing.assert_allclose(tr.kl_divergence(demonstrator, fitted), 0.0, atol=1e-10)
    for h in range(tree.horizon):
        reached = demonstrator.state_probs(h) > 0
        np.testing.assert_allclose(
            fitted.probs[h][reached], demonstrator.probs[h][reached], rtol=1e-8, atol=1e-12
        )
        np.testing.assert_array_equal(fitted.log_probs[h][~reached], prior.log_probs[h][~reached])
        np.testing.assert_allclose(logsumexp(fitted.log_probs[h], axis=1), 0.0, atol=1e-12)


@given(st.data())
@settings(max_examples=30)
def test_fit_maximizes_the_likelihood(data):
    # sum_i log P_pi(xi_i) is maximized by the count table: no perturbed policy does better.
    tree = data.draw(trt.trees())
    demonstrator = data.draw(trt.policies(tree))
    seed = data.draw(trt.seeds)
    demonstrations = demonstrator.sample(50, seed=seed)
    fitted = tr.fit_sft(tree, demonstrations)
    best = log_likelihood(fitted, demonstrations)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        logits = [
            np.where(np.isneginf(table), 0.0, table) + rng.normal(scale=0.3, size=table.shape)
            for table in fitted.log_probs
        ]
        other = tr.Policy.from_logits(tree, logits)
        assert log_likelihood(other, demonstrations) <= best + 1e-9
    assert log_likelihood(demonstrator, demonstrations) <= best + 1e-9


@given(st.data())
@settings(max_examples=30)
def test_smoothing_is_a_mixture_with_the_prior(data):
    # pi = lambda_s * N(s, a) / N(s) + (1 - lambda_s) * pi_0, lambda_s = N(s) / (N(s) + alpha)
    tree = data.draw(trt.trees())
    demonstrator = data.draw(trt.policies(tree))
    prior = data.draw(trt.policies(tree))  # may hold -inf: flows through without NaN
    alpha = data.draw(st.floats(0.1, 50.0))
    demonstrations = demonstrator.sample(30, seed=data.draw(trt.seeds))
    plain = tr.fit_sft(tree, demonstrations, prior=prior)
    smoothed = tr.fit_sft(tree, demonstrations, smoothing=alpha, prior=prior)
    for h in range(tree.horizon):
        depth = tree.horizon - h  # tokens below level h
        visits = np.bincount(demonstrations // tree.n_tokens**depth, minlength=tree.level_size(h))
        share = (visits / (visits + alpha))[:, None]
        expected = share * plain.probs[h] + (1 - share) * prior.probs[h]
        np.testing.assert_allclose(smoothed.probs[h], expected, rtol=1e-10, atol=1e-15)
        assert not np.isnan(smoothed.log_probs[h]).any()


def test_no_demonstrations_give_the_prior():
    tree = tr.TokenTree(["a", "b", "c"], horizon=2, prompts=["x", "y"])
    prior = tr.Policy.random(tree, seed=0, zero_fraction=0.3)
    for smoothing in (0.0, 3.0):
        fitted = tr.fit_sft(tree, [], smoothing=smoothing, prior=prior)
        for h in range(tree.horizon):
            np.testing.assert_allclose(fitted.probs[h], prior.probs[h], rtol=1e-14)
    uniform = tr.fit_sft(tree, np.array([], dtype=np.int64))
    np.testing.assert_allclose(uniform.probs[1], 1 / 3, rtol=1e-14)


def test_bad_arguments():
    tree = tr.TokenTree(["a", "b"], horizon=2)
    with pytest.raises(ValueError, match="not a leaf index"):
        tr.fit_sft(tree, [0, 4])
    with pytest.raises(ValueError, match="not a leaf index"):
        tr.fit_sft(tree, [-1])
    with pytest.raises(TypeError, match="integer"):
        tr.fit_sft(tree, [0.5])
    with pytest.raises(ValueError, match="1-D"):
        tr.fit_sft(tree, [[0]])
    with pytest.raises(ValueError, match="smoothing"):
        tr.fit_sft(tree, [0], smoothing=-1.0)
    with pytest.raises(TypeError, match="smoothing"):
        tr.fit_sft(tree, [0], smoothing="a lot")
    with pytest.raises(ValueError, match="weight"):
        tr.fit_sft(tree, [0, 1], weight=[1.0, -2.0])
    with pytest.raises(ValueError, match="weight"):
        tr.fit_sft(tree, [0, 1], weight=[1.0])
    with pytest.raises(TypeError, match="prior"):
        tr.fit_sft(tree, [0], prior="uniform")
    other = tr.Policy.uniform(tr.TokenTree(["a", "b"], horizon=1))
    with pytest.raises(ValueError, match="same TokenTree"):
        tr.fit_sft(tree, [0], prior=other)


def test_end_token_rows_stay_forced():
    # On a tree with eos the fit is a valid Policy (rows after eos put all mass on eos),
    # with and without smoothing; a demonstration that continues after eos is refused.
    tree = tr.TokenTree(["a", "b", "<e>"], horizon=3, eos="<e>")
    demonstrator = tr.Policy.random(tree, seed=0)
    demonstrations = demonstrator.sample(200, seed=1)
    for smoothing in (0.0, 2.0):
        fitted = tr.fit_sft(tree, demonstrations, smoothing=smoothing)
        tr.Policy(tree, fitted.log_probs)  # validates the forced rows
    _, invalid = tree.state_index("", ["a", "<e>", "b"])  # level H, no padding
    with pytest.raises(ValueError, match="after the end token"):
        tr.fit_sft(tree, [invalid])
