"""Argument checks shared by the public entry points (messages name the argument)."""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np

from .tree import TokenTree

if TYPE_CHECKING:
    from .policy import Policy


#: Largest ``max |reward| / beta`` accepted by :func:`check_problem`: leaves ``r / beta`` and
#: the log-probabilities added to it (at most ~ H log A) far inside the float64 range, so no
#: sum or difference of them can overflow.
MAX_REWARD_OVER_BETA = 1e300


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


def check_real_array(values: object, name: str, *, copy: bool = False) -> np.ndarray:
    """``values`` as a float64 array (a fresh copy if ``copy``), refusing what is not real.

    Lists, numpy scalars, int, bool, float32, read-only and non-contiguous arrays are
    answered as their float64 equivalent; complex numbers (even with a zero imaginary
    part) are refused rather than silently truncated.

    Raises:
        TypeError: complex, or not convertible to real numbers.
    """
    raw = values if isinstance(values, np.ndarray) else None
    if raw is None:
        try:
            raw = np.asarray(values)
        except (TypeError, ValueError, OverflowError):
            raise TypeError(f"{name} must be an array of real numbers") from None
    if raw.dtype.kind == "c":
        raise TypeError(
            f"{name} must be real, got complex values ({raw.dtype}); pass the real part "
            f"explicitly (e.g. np.real({name})) if that is what you mean"
        )
    try:
        return np.array(raw, dtype=np.float64) if copy else np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise TypeError(
            f"{name} must be an array of real numbers, got {type(values).__name__}"
        ) from None


def check_leaf_array(
    tree: TokenTree, values: object, name: str = "reward", *, allow_neg_inf: bool = False
) -> np.ndarray:
    """A float64 array over the leaves, ``(n_leaves,)``, finite (or ``-inf`` if allowed).

    A float64 ``values`` may come back as the same object (no copy): results that keep the
    array (e.g. ``Solution.reward``) copy it themselves.

    Raises:
        TypeError: not real numbers (complex values included).
        ValueError: wrong shape, NaN, or infinite entries.
    """
    array = check_real_array(values, name)
    if array.shape != (tree.n_leaves,):
        raise ValueError(
            f"{name} must have shape ({tree.n_leaves},) = (n_leaves,), one value per complete "
            f"generation in canonical order; got shape {array.shape}. "
            "Build it with tree.leaf_values(fn)."
        )
    # Fast path: one pass over the leaves when everything is finite (the common case; the
    # solvers call this on every solve). Details only on failure.
    if np.isfinite(array).all():
        return array
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN at leaf {int(np.flatnonzero(np.isnan(array))[0])}")
    bad = np.isposinf(array) if allow_neg_inf else ~np.isfinite(array)
    if bad.any():
        kind = "+inf" if allow_neg_inf else "non-finite values"
        raise ValueError(f"{name} contains {kind} (first at leaf {int(np.flatnonzero(bad)[0])})")
    return array


def read_only(array: np.ndarray) -> np.ndarray:
    """A read-only view of ``array``: the package's one way to freeze an array it returns
    or keeps (writing to the view raises ``ValueError``; the data are not copied)."""
    view = array.view()
    view.flags.writeable = False
    return view


def frozen_copy(array: object) -> np.ndarray:
    """A read-only float64 copy that owns its data, so nothing the caller does later to
    ``array`` reaches it (for values a result keeps, e.g. ``Solution.reward``)."""
    copy = np.array(array, dtype=np.float64)
    copy.flags.writeable = False
    return copy


def make_rng(seed: object, name: str = "seed") -> np.random.Generator:
    """A ``numpy.random.Generator`` from an int seed, a Generator, or None (fresh entropy).

    The package's one seed rule: every public function or method that draws random numbers
    takes ``seed: int | numpy.random.Generator | None = 0`` and turns it into a Generator
    here. Hence

    - an int (the default ``0`` included) gives the same draws on every call: a result is
      reproducible unless asked otherwise, and two calls with the same seed agree;
    - a Generator is drawn from as is, so passing one ``rng`` to several calls continues
      one stream (each call gets new draws, the whole run is reproducible from ``rng``'s
      seed);
    - None takes fresh entropy from the operating system (different draws on every call).

    Never a global RNG. Functions whose ``seed`` was positional keep it positional.

    Args:
        seed: an int ``>= 0``, a ``numpy.random.Generator``, or None.
        name: the argument's name, for the error message.

    Returns:
        ``seed`` itself if it is a Generator, else ``numpy.random.default_rng(seed)``.

    Raises:
        TypeError: ``seed`` is of another type (a bool included).
        ValueError: a negative int.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, (numbers.Integral, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"{name} must be an int >= 0, a Generator or None, got {seed!r}")
        return np.random.default_rng(int(seed))
    raise TypeError(f"{name} must be an int, a numpy.random.Generator or None, got {seed!r}")


def check_policy(policy: object, name: str = "policy") -> Policy:
    """Return ``policy`` if it is a :class:`tinyrlhf.Policy`, else raise ``TypeError``."""
    from .policy import Policy  # policy.py imports this module

    if not isinstance(policy, Policy):
        raise TypeError(f"{name} must be a tinyrlhf.Policy, got {type(policy).__name__}")
    return policy


def check_policy_on(tree: TokenTree, policy: object, name: str = "policy") -> Policy:
    """Return ``policy`` if it is a :class:`tinyrlhf.Policy` on ``tree`` (``TypeError`` /
    ``ValueError`` naming it)."""
    policy = check_policy(policy, name)
    if policy.tree != tree:
        raise ValueError(f"{name} must be a policy on the same TokenTree as tree")
    return policy


def check_support(policy: Policy, ref: Policy, consequence: str) -> None:
    """``policy`` picks no token that ``ref`` never picks (``ValueError`` naming the level and
    ``consequence``, e.g. "KL(pi || pi_ref) is infinite there"). Both are checked Policies
    on one tree."""
    for h, (log_pi, log_ref) in enumerate(zip(policy.log_probs, ref.log_probs, strict=True)):
        if np.any((log_pi > -np.inf) & (log_ref == -np.inf)):
            raise ValueError(
                f"policy picks a token at level {h} that ref never picks: {consequence}; "
                "use a policy whose zeros include ref's zeros"
            )


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
    rewards = check_leaf_array(policy.tree, reward, "reward")
    coefficient = check_beta(beta)
    largest = float(np.abs(rewards).max())
    with np.errstate(over="ignore"):
        scaled = largest / coefficient
    if not np.isfinite(scaled) or scaled > MAX_REWARD_OVER_BETA:
        raise ValueError(
            f"beta={beta!r} is too small for this reward: max |reward| / beta = "
            f"{largest:.3g} / {coefficient:.3g} overflows float64 (the solvers work with "
            f"reward / beta); use beta >= {largest / MAX_REWARD_OVER_BETA:.3g} or rescale "
            "the reward"
        )
    return policy, rewards, coefficient


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
