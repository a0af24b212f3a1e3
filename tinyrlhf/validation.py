"""Argument checks shared by the public entry points (messages name the argument)."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np

from .tree import TokenTree

if TYPE_CHECKING:
    from .policy import Policy


def check_tree(tree: object, name: str = "tree") -> TokenTree:
    """Return ``tree`` if it is a :class:`TokenTree`, else raise ``TypeError``."""
    if not isinstance(tree, TokenTree):
        raise TypeError(f"{name} must be a tinyrlhf.TokenTree, got {type(tree).__name__}")
    return tree


def check_beta(beta: object, name: str = "beta") -> float:
    """A KL coefficient: a finite real number > 0."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {beta!r}")
    value = float(beta)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0 (the KL coefficient), got {beta!r}")
    return value


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """An integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_leaf_array(
    tree: TokenTree, values: object, name: str = "reward", *, allow_neg_inf: bool = False
) -> np.ndarray:
    """A float64 array over the leaves, ``(n_leaves,)``, finite (or ``-inf`` if allowed).

    Raises:
        TypeError: not numeric.
        ValueError: wrong shape, NaN, or infinite entries.
    """
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be an array of real numbers of shape ({tree.n_leaves},), "
            f"got {type(values).__name__}"
        ) from None
    if array.shape != (tree.n_leaves,):
        raise ValueError(
            f"{name} must have shape ({tree.n_leaves},) = (n_leaves,), one value per complete "
            f"generation in canonical order; got shape {array.shape}. "
            "Build it with tree.leaf_values(fn)."
        )
    # Fast path: one pass over the leaves when everything is finite (the common case; the
    # solvers call this on every solve, see benchmarks/results.md). Details only on failure.
    if np.isfinite(array).all():
        return array
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN at leaf {int(np.flatnonzero(np.isnan(array))[0])}")
    bad = np.isposinf(array) if allow_neg_inf else ~np.isfinite(array)
    if bad.any():
        kind = "+inf" if allow_neg_inf else "non-finite values"
        raise ValueError(f"{name} contains {kind} (first at leaf {int(np.flatnonzero(bad)[0])})")
    return array


def make_rng(seed: object, name: str = "seed") -> np.random.Generator:
    """A ``numpy.random.Generator`` from an int seed, a Generator, or None (fresh entropy)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (
        isinstance(seed, (numbers.Integral, np.integer)) and not isinstance(seed, bool)
    ):
        return np.random.default_rng(seed)
    raise TypeError(f"{name} must be an int, a numpy.random.Generator or None, got {seed!r}")


def check_policy(policy: object, name: str = "policy") -> Policy:
    """Return ``policy`` if it is a :class:`tinyrlhf.Policy`, else raise ``TypeError``."""
    from .policy import Policy  # policy.py imports this module

    if not isinstance(policy, Policy):
        raise TypeError(f"{name} must be a tinyrlhf.Policy, got {type(policy).__name__}")
    return policy


def check_same_tree(first: Policy, second: Policy, names: tuple[str, str]) -> None:
    """Both policies live on the same :class:`TokenTree` (``ValueError`` naming both)."""
    if first.tree != second.tree:
        raise ValueError(
            f"{names[0]} and {names[1]} must be policies on the same TokenTree; got "
            f"{first.tree!r} and {second.tree!r}"
        )


def check_problem(ref: object, reward: object, beta: object) -> tuple[Policy, np.ndarray, float]:
    """The KL-regularized problem's inputs: ``(ref, reward, beta)`` checked and converted.

    ``ref`` a Policy, ``reward`` a finite ``(n_leaves,)`` float64 array, ``beta`` finite > 0.
    """
    policy = check_policy(ref, "ref")
    return policy, check_leaf_array(policy.tree, reward, "reward"), check_beta(beta)


def check_nonnegative(value: object, name: str, *, allow_zero: bool = True) -> float:
    """A finite real number >= 0 (> 0 when ``allow_zero`` is False)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    number = float(value)
    if not np.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value!r}")
    return number


def check_tolerance(tol: object, name: str = "tol") -> float:
    """A convergence tolerance: finite and > 0 (``inf`` would certify anything)."""
    return check_nonnegative(tol, name, allow_zero=False)
