"""Baselines for the benchmark (lecture section 4, soft value iteration), never used by the
package.

``textbook_soft_value_iteration`` is what a reader would write from the lecture's recursion
with dicts and recursion: states are strings, ``pi_ref`` is ``{state: {token: prob}}``,

    V(s) = r(s)                                        if s is complete,
    V(s) = beta log sum_a pi_ref(a|s) exp(V(s a) / beta)  (shifted by max_a V(s a)),
    pi*(a|s) = pi_ref(a|s) exp((V(s a) - V(s)) / beta).

``plain_soft_value_iteration`` is the straightforward vectorized version (one
``scipy.special.logsumexp(axis=1)`` per level), the package's solver before its level kernels
(:mod:`tinyrlhf.kernels`); it shows what the kernels themselves buy.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import logsumexp

import tinyrlhf as tr

#: Separates a prompt from its tokens in a state string ("x|abba").
PROMPT_MARK = "|"


def to_dicts(tree: tr.TokenTree, ref: tr.Policy, reward: np.ndarray) -> tuple[dict, dict]:
    """The problem as a textbook holds it: ``pi_ref[state][token]`` and ``reward[leaf]`` with
    string states ``prompt|tokens`` (single-character tokens). Not timed by the benchmark."""
    if any(len(token) != 1 for token in tree.tokens):
        raise ValueError("the textbook baseline uses single-character tokens")
    probs = ref.probs  # (level_size(h), A) per level
    pi_ref: dict[str, dict[str, float]] = {}
    states = [prompt + PROMPT_MARK for prompt in tree.prompts]  # level 0, canonical order
    for h in range(tree.horizon):
        rows = probs[h].tolist()
        for state, row in zip(states, rows, strict=True):
            pi_ref[state] = dict(zip(tree.tokens, row, strict=True))
        states = [state + token for state in states for token in tree.tokens]  # level h + 1
    leaf_reward = dict(zip(states, reward.tolist(), strict=True))
    return pi_ref, leaf_reward


def textbook_soft_value_iteration(
    pi_ref: dict[str, dict[str, float]],
    reward: dict[str, float],
    prompts: tuple[str, ...],
    beta: float,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Soft value iteration by recursion over string states; returns ``(V, pi*)`` as dicts."""
    values: dict[str, float] = {}
    policy: dict[str, dict[str, float]] = {}

    def value(state: str) -> float:
        if state in reward:  # a complete generation
            values[state] = reward[state]
            return reward[state]
        child_values = {token: value(state + token) for token in pi_ref[state]}
        top = max(child_values.values())
        total = sum(
            prob * math.exp((child_values[token] - top) / beta)
            for token, prob in pi_ref[state].items()
        )
        values[state] = top + beta * math.log(total)
        policy[state] = {
            token: prob * math.exp((child_values[token] - values[state]) / beta)
            for token, prob in pi_ref[state].items()
        }
        return values[state]

    for prompt in prompts:
        value(prompt + PROMPT_MARK)
    return values, policy


def plain_soft_value_iteration(
    ref: tr.Policy, reward: np.ndarray, beta: float
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``V_h / beta = logsumexp(log pi_ref + V_{h+1} / beta, axis=1)`` level by level with
    scipy; returns ``(values V_0..V_H, log pi*)``."""
    tree = ref.tree
    scaled_value = reward / beta
    values: list[np.ndarray] = [reward.copy()]
    log_pi: list[np.ndarray] = []
    for h in range(tree.horizon - 1, -1, -1):
        # log pi_ref(a|s) + V_{h+1}(s o a)/beta : (level_size(h), A)
        log_weight = ref.log_probs[h] + scaled_value.reshape(-1, tree.n_tokens)
        scaled_value = logsumexp(log_weight, axis=1)
        log_pi.insert(0, log_weight - scaled_value[:, None])
        values.insert(0, beta * scaled_value)
    return values, log_pi
