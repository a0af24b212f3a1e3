"""Speed of one exact expected group-relative update against soft value iteration.

The issue's target: one ``expected_update`` on a tree of 2^16 leaves (tokens ``0, 1``,
horizon 16, one prompt) with a 0/1 reward and ``G = 16`` in under 10 soft-VI passes of the
same tree. Prints the median times (``timeit``, best of several repeats) and the ratio for
every estimator. Run from the repository root: ``python benchmarks/group_relative.py``.
"""

from __future__ import annotations

import timeit

import numpy as np

import tinyrlhf as tr

HORIZON = 16
GROUP_SIZE = 16
REPEATS = 7


def best_time(fn, number: int = 5) -> float:
    """Best over ``REPEATS`` of the mean time of ``number`` calls (seconds)."""
    return min(timeit.repeat(fn, number=number, repeat=REPEATS)) / number


def main() -> None:
    tree = tr.TokenTree(("0", "1"), HORIZON)
    ref = tr.Policy.random(tree, seed=0)
    # 0/1 reward: the completion holds more 1s than 0s (about half the leaves)
    reward = (tree.leaf_token_indices().sum(axis=1) > HORIZON // 2).astype(np.float64)
    soft_vi = best_time(lambda: tr.soft_value_iteration(ref, reward, 1.0))
    print(f"tree: {tree.n_leaves:,} leaves, G = {GROUP_SIZE}, 0/1 reward")
    print(f"soft value iteration: {soft_vi * 1e3:8.2f} ms")
    for estimator in ("reinforce", "rloo", "dr_grpo", "grpo", "dapo"):
        seconds = best_time(
            lambda estimator=estimator: tr.expected_update(
                ref, reward, estimator=estimator, group_size=GROUP_SIZE
            )
        )
        print(
            f"expected_update[{estimator:9s}]: {seconds * 1e3:8.2f} ms = "
            f"{seconds / soft_vi:5.2f} soft-VI passes"
        )


if __name__ == "__main__":
    main()
