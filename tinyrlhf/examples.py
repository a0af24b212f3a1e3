"""Small ready-made problems for demos, notebooks, figures and tests.

Everything here is built from the public API; nothing is special-cased elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .policy import Policy
from .tree import TokenTree
from .validation import check_tree

DEMO_TOKENS = ("a", "b", "c")
DEMO_HORIZON = 4
DEMO_PROMPTS = ("x", "y")
DEMO_BETA = 0.7


def demo_reward(tree: TokenTree) -> np.ndarray:
    """A reward with structure, ``(n_leaves,)``, for any tree.

    Prompt ``p`` asks for token ``tokens[p mod A]``: the reward is
    ``2 * (fraction of tokens equal to the asked token) - (fraction of adjacent repeats)
    + 0.5 * [the generation ends with the token it started with]``, so it trades off "say
    the asked token" against "do not repeat yourself" and has several good modes.
    """
    tree = check_tree(tree)
    tokens = tree.leaf_token_indices()  # (n_leaves, H)
    asked = (tree.leaf_prompts() % tree.n_tokens)[:, None]  # (n_leaves, 1)
    on_topic = (tokens == asked).mean(axis=1)
    if tree.horizon > 1:
        repeats = (tokens[:, 1:] == tokens[:, :-1]).mean(axis=1)
    else:
        repeats = np.zeros(tree.n_leaves)
    closes = (tokens[:, -1] == tokens[:, 0]).astype(np.float64)
    return 2.0 * on_topic - repeats + 0.5 * closes


def demo_problem(
    tokens: Sequence[str] = DEMO_TOKENS,
    horizon: int = DEMO_HORIZON,
    prompts: Sequence[str] = DEMO_PROMPTS,
    seed: int | np.random.Generator | None = 0,
    temperature: float = 1.0,
) -> tuple[TokenTree, Policy, np.ndarray]:
    """``(tree, pi_ref, reward)``: the demo's tree, a random reference policy, demo_reward.

    ``pi_ref`` is ``Policy.random(tree, seed, temperature)``; ``seed``: int, Generator or
    None, default 0 (see :func:`~tinyrlhf.validation.make_rng`).
    """
    tree = TokenTree(tokens, horizon, prompts)
    ref = Policy.random(tree, seed=seed, temperature=temperature)
    return tree, ref, demo_reward(tree)


#: Leaf probabilities of :func:`bimodal_problem`'s target over ``aa, ab, ba, bb``.
BIMODAL_PROBS = (0.6, 0.01, 0.01, 0.38)


def bimodal_problem() -> tuple[TokenTree, np.ndarray]:
    """``(tree, log_target)``: a two-mode distribution over the 4 generations of ``{a, b}^2``.

    The modes ``aa`` (0.6) and ``bb`` (0.38) are separated by ``ab``/``ba`` (0.01 each).
    The position family on this tree has exactly two parameters (the logit of ``a`` against
    ``b`` at depths 0 and 1), and the reverse KL from it to this target has two local minima,
    one near each mode, with a saddle between them.
    """
    tree = TokenTree(("a", "b"), 2)
    return tree, np.log(np.array(BIMODAL_PROBS))
