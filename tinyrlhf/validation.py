"""Argument checks shared by the public entry points (messages name the argument)."""

from __future__ import annotations

import numbers

import numpy as np

from .tree import TokenTree


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
