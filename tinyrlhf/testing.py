"""Public hypothesis strategies for verifying derivations on random token trees.

Use them in your own property-based tests::

    from hypothesis import given
    from tinyrlhf import testing as trt

    @given(trt.problems())
    def test_partition_function(problem):
        tree, ref, reward, beta = problem
        ...

Trees are kept small (at most a few hundred leaves) so that every property is checked
exactly by enumeration. Policies are drawn from a seed (numpy generates the table), which
keeps examples cheap; ``zero_fraction`` puts ``-inf`` entries (tokens never picked) in them.
Requires the ``hypothesis`` package (the ``test`` extra).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .policy import Policy
from .preferences import Preferences, sample_preferences
from .tree import TokenTree

#: Token names used by :func:`trees` (single characters, so the separator is "").
TOKEN_NAMES = "abcdefgh"
#: Prompt names used by :func:`trees`.
PROMPT_NAMES = ("p", "q", "r", "s")

seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def trees(
    draw: st.DrawFn,
    max_tokens: int = 3,
    max_horizon: int = 4,
    max_prompts: int = 2,
    max_leaves: int = 512,
    with_eos: bool = False,
) -> TokenTree:
    """Token trees with 1..max_tokens tokens, horizon 1..max_horizon, 1..max_prompts prompts,
    at most ``max_leaves`` leaves; with ``with_eos`` one of the tokens (drawn) is an
    end-of-sequence token and there are at least two tokens."""
    n_tokens = draw(st.integers(2 if with_eos else 1, max(max_tokens, 2 if with_eos else 1)))
    n_prompts = draw(st.integers(1, max_prompts))
    horizon_cap = max_horizon
    while horizon_cap > 1 and n_prompts * n_tokens**horizon_cap > max_leaves:
        horizon_cap -= 1
    horizon = draw(st.integers(1, horizon_cap))
    tokens = list(TOKEN_NAMES[:n_tokens])
    eos = draw(st.sampled_from(tokens)) if with_eos else None
    return TokenTree(tokens, horizon, PROMPT_NAMES[:n_prompts], eos=eos)


@st.composite
def policies(
    draw: st.DrawFn,
    tree: TokenTree,
    allow_zeros: bool = True,
    min_temperature: float = 0.2,
    max_temperature: float = 5.0,
) -> Policy:
    """Random policies on ``tree``; with ``allow_zeros`` some tokens get probability 0."""
    seed = draw(seeds)
    temperature = draw(st.floats(min_temperature, max_temperature))
    zero_fraction = draw(st.sampled_from([0.0, 0.0, 0.3])) if allow_zeros else 0.0
    return Policy.random(tree, seed=seed, temperature=temperature, zero_fraction=zero_fraction)


@st.composite
def rewards(draw: st.DrawFn, tree: TokenTree, max_magnitude: float = 1e3) -> np.ndarray:
    """Reward vectors ``(n_leaves,)``: a random scale up to ``max_magnitude`` times normals,
    sometimes rounded to a few levels (ties), sometimes constant."""
    seed = draw(seeds)
    scale = draw(st.floats(1e-3, max_magnitude))
    shape = draw(st.sampled_from(["normal", "levels", "constant"]))
    rng = np.random.default_rng(seed)
    if shape == "constant":
        return np.full(tree.n_leaves, scale * rng.standard_normal())
    values = scale * rng.standard_normal(tree.n_leaves)
    if shape == "levels":
        values = np.round(values / scale) * scale
    return values


def betas(min_value: float = 1e-2, max_value: float = 1e2) -> st.SearchStrategy[float]:
    """KL coefficients spread over decades (log-uniform)."""
    return st.floats(np.log10(min_value), np.log10(max_value)).map(lambda e: float(10.0**e))


@st.composite
def problems(
    draw: st.DrawFn,
    max_tokens: int = 3,
    max_horizon: int = 4,
    max_prompts: int = 2,
    max_magnitude: float = 10.0,
    allow_zeros: bool = True,
    with_eos: bool = False,
) -> tuple[TokenTree, Policy, np.ndarray, float]:
    """``(tree, pi_ref, reward, beta)`` for the KL-regularized problem (``with_eos``: on trees
    with an end-of-sequence token)."""
    tree = draw(trees(max_tokens, max_horizon, max_prompts, with_eos=with_eos))
    ref = draw(policies(tree, allow_zeros=allow_zeros))
    reward = draw(rewards(tree, max_magnitude))
    beta = draw(betas())
    return tree, ref, reward, beta


# ------------------------------------------------ strategies for students' own derivations
@st.composite
def policy_pairs(
    draw: st.DrawFn,
    max_tokens: int = 3,
    max_horizon: int = 4,
    max_prompts: int = 2,
    allow_zeros: bool = True,
) -> tuple[TokenTree, Policy, Policy]:
    """``(tree, pi, pi_other)``: two independent random policies on one tree.

    For properties that compare policies, e.g. Gibbs' inequality
    :math:`\\mathrm{KL}(\\pi \\,\\|\\, \\pi') \\ge 0` with equality only at :math:`\\pi = \\pi'`,
    or the optimality of :math:`\\pi^*` against any other policy. With ``allow_zeros`` either
    policy may give some tokens probability 0, so ``KL(pi ‖ pi_other)`` may be ``inf``.
    """
    tree = draw(trees(max_tokens, max_horizon, max_prompts))
    first = draw(policies(tree, allow_zeros=allow_zeros))
    second = draw(policies(tree, allow_zeros=allow_zeros))
    return tree, first, second


@st.composite
def preference_datasets(
    draw: st.DrawFn,
    max_pairs: int = 64,
    max_tokens: int = 3,
    max_horizon: int = 3,
    max_prompts: int = 2,
    max_magnitude: float = 5.0,
) -> tuple[TokenTree, np.ndarray, Preferences]:
    """``(tree, reward, prefs)``: a preference dataset labelled by Bradley-Terry under ``reward``.

    ``prefs`` holds 1..max_pairs comparisons drawn by :func:`tinyrlhf.sample_preferences`
    (completions uniform over each prompt's leaves, label
    :math:`P(\\xi_1 \\succ \\xi_2) = \\sigma(r(\\xi_1) - r(\\xi_2))`). Every prompt has at least
    two completions, so comparisons can be informative.
    """
    tree = draw(
        trees(max(max_tokens, 2), max_horizon, max_prompts).filter(
            lambda tree: tree.leaves_per_prompt >= 2
        )
    )
    reward = draw(rewards(tree, max_magnitude))
    n_pairs = draw(st.integers(1, max_pairs))
    prefs = sample_preferences(tree, reward, n_pairs, seed=draw(seeds))
    return tree, reward, prefs


@st.composite
def best_of_n_inputs(
    draw: st.DrawFn,
    max_n: int = 16,
    max_tokens: int = 3,
    max_horizon: int = 3,
    max_prompts: int = 2,
    max_levels: int = 4,
) -> tuple[Policy, np.ndarray, int]:
    """``(pi_ref, score, n)`` for best-of-n: a reference, a score with ties, and n >= 1.

    ``score`` takes at most ``max_levels`` distinct integer values over the leaves, so ties
    (which best-of-n must break, e.g. uniformly) are the rule, not the exception; ``n`` is in
    1..max_n. The reference may give tokens probability 0. The best-of-n distribution has
    :math:`\\mathrm{KL}(\\pi_{\\text{BoN}} \\,\\|\\, \\pi_{\\text{ref}}) \\le \\log n - (n-1)/n`.
    """
    tree = draw(trees(max_tokens, max_horizon, max_prompts))
    ref = draw(policies(tree))
    levels = draw(st.integers(1, max_levels))
    score = np.random.default_rng(draw(seeds)).integers(0, levels, tree.n_leaves).astype(float)
    n = draw(st.integers(1, max_n))
    return ref, score, n
