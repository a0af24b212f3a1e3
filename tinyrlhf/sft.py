"""Supervised fine-tuning: next-token maximum likelihood on demonstrations (lecture sections 1, 4).

The lecture's ``pi_ref`` is "the output of SFT": next-token prediction on demonstrated
generations ``xi_1..xi_n``. Over all autoregressive policies the log-likelihood splits into
one categorical likelihood per state,

    sum_i log P_pi(xi_i | s_0) = sum_s sum_a N(s, a) log pi(a | s),

where ``N(s, a)`` counts the demonstrations that pass through ``s`` and then take ``a``, so
the maximizer is the table of empirical next-token frequencies ``N(s, a) / N(s)``. It is the
forward-KL projection ``argmin_pi KL(P_demo_hat || P_pi)`` of the empirical demonstrator
(mass-covering: every demonstrated path keeps positive probability, every token that was
never demonstrated at a reached state gets probability 0, i.e. ``-inf`` in log space, which
RLHF with this ``pi_ref`` will then never pick).

Smoothing mixes in a prior policy ``pi_0`` with ``alpha`` pseudo-counts per state (the
posterior mean under a Dirichlet(``alpha * pi_0(. | s)``) prior):

    pi(a | s) = (N(s, a) + alpha pi_0(a | s)) / (N(s) + alpha)
              = lambda_s N(s, a) / N(s) + (1 - lambda_s) pi_0(a | s),   lambda_s = N(s) / (N(s) + alpha).

States no demonstration reaches (``N(s) = 0``) get ``pi_0(. | s)`` for every ``alpha``,
including ``alpha = 0``; ``pi_0`` is the uniform policy unless a ``prior`` is given
(e.g. the pretrained model). ``alpha = A`` with the uniform prior is add-one (Laplace)
smoothing.

References:
    L. Ouyang et al., "Training language models to follow instructions with human
    feedback", NeurIPS 2022 (SFT as the first stage of RLHF).
"""

from __future__ import annotations

import numbers

import numpy as np

from .policy import Policy
from .tree import TokenTree
from .validation import check_policy_on, check_tree


def fit_sft(
    tree: TokenTree,
    demonstrations: object,
    *,
    smoothing: float = 0.0,
    prior: Policy | None = None,
    weight: object = None,
) -> Policy:
    """Next-token maximum likelihood from demonstrated complete generations.

    ``pi(a | s) = (N(s, a) + alpha pi_0(a | s)) / (N(s) + alpha)`` with exact counts
    ``N(s, a)`` (weighted if ``weight`` is given); ``pi_0(. | s)`` where ``N(s) + alpha = 0``.

    Args:
        tree: the token tree.
        demonstrations: ``(n,)`` int leaf indices of the demonstrations (for example
            ``policy.sample(n, seed=...)``); may be empty.
        smoothing: ``alpha >= 0``, pseudo-counts per state spread by the prior
            (0: the plain maximum-likelihood estimate).
        prior: ``pi_0``, a :class:`Policy` on ``tree``; the uniform policy if None. It fills
            unreached states and is the smoothing target.
        weight: optional ``(n,)`` finite weights ``>= 0`` (default 1 per demonstration).

    Returns:
        The fitted :class:`Policy`. Unobserved tokens at reached states have
        ``log pi = -inf`` when ``alpha = 0`` (or where ``pi_0`` is 0).

    Raises:
        TypeError: non-integer demonstrations, bad prior or smoothing types.
        ValueError: indices out of range, bad shapes, negative or non-finite smoothing or
            weights.
    """
    tree = check_tree(tree)
    leaves = _demonstration_array(tree, demonstrations)
    n = leaves.shape[0]
    if weight is None:
        weights = np.ones(n)
    else:
        weights = np.asarray(weight, dtype=np.float64)
        if weights.shape != (n,):
            raise ValueError(
                f"weight must have shape ({n},), one per demonstration, got {weights.shape}"
            )
        if not np.all(np.isfinite(weights) & (weights >= 0)):
            raise ValueError("weight must hold finite values >= 0")
    if isinstance(smoothing, bool) or not isinstance(smoothing, numbers.Real):
        raise TypeError(f"smoothing must be a real number >= 0, got {smoothing!r}")
    alpha = float(smoothing)
    if not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"smoothing must be finite and >= 0 (pseudo-counts), got {smoothing!r}")
    prior = Policy.uniform(tree) if prior is None else check_policy_on(tree, prior, "prior")

    log_pi = []
    for h in range(tree.horizon):
        # the level-(h+1) state each demonstration passes through: drop its last H-h-1 tokens
        child = leaves // tree.n_tokens ** (tree.horizon - h - 1)  # (n,)
        counts = np.bincount(child, weights, minlength=tree.level_size(h + 1))
        counts = counts.reshape(tree.level_size(h), tree.n_tokens)  # N(s, a): (level_size(h), A)
        log_counts = np.full(counts.shape, -np.inf)
        np.log(counts, out=log_counts, where=counts > 0)
        log_prior = prior.log_probs[h]
        if alpha > 0:  # log(N(s, a) + alpha pi_0(a | s)), -inf only where both are 0
            log_numerator = np.logaddexp(log_counts, np.log(alpha) + log_prior)
        else:
            log_numerator = log_counts
        total = counts.sum(axis=1) + alpha  # N(s) + alpha: (level_size(h),)
        reached = total > 0
        table = np.array(log_prior)  # unreached states: pi_0(. | s)
        np.subtract(
            log_numerator,
            np.log(total, where=reached, out=np.zeros_like(total))[:, None],
            out=table,
            where=reached[:, None],
        )
        log_pi.append(table)
    return Policy._trusted(tree, log_pi)


def _demonstration_array(tree: TokenTree, demonstrations: object) -> np.ndarray:
    array = np.asarray(demonstrations)
    if array.ndim != 1:
        raise ValueError(
            f"demonstrations must be a 1-D array of leaf indices, got shape {array.shape}"
        )
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"demonstrations must hold integer leaf indices (e.g. from policy.sample), got "
            f"dtype {array.dtype}"
        )
    bad = np.flatnonzero((array < 0) | (array >= tree.n_leaves))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"demonstrations[{k}] = {int(array[k])} is not a leaf index in 0..{tree.n_leaves - 1}"
        )
    if tree.eos is not None:
        invalid = np.flatnonzero(~tree.valid_leaves()[array])
        if invalid.size:
            k = int(invalid[0])
            raise ValueError(
                f"demonstrations[{k}] = {int(array[k])} has tokens after the end token "
                f"{tree.eos!r}; no policy produces it"
            )
    return array.astype(np.int64)
