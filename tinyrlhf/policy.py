"""Autoregressive policies as per-level tables of log-probabilities (lecture section 1).

A policy on the token tree is a next-token distribution ``pi(a | s)`` for every non-leaf
state ``s``. It is stored as one array per level ``h = 0..H-1``:

    log_probs[h] : (level_size(h), A),  log_probs[h][i, a] = log pi(a | state i of level h)

Rows are normalized in probability (``logsumexp(row) = 0``); ``-inf`` marks a token the
policy never picks. The probability of a complete generation is the product down the tree,

    P(xi | s_0) = prod_{h=0}^{H-1} pi(a_h | s_h),

computed in log space by one cumulative pass over the levels (the seed's "Aside":
``P*(s_H | s_0) = prod_h pi_ref(a_h | s_h) exp(r) / Z(s_0)`` is a policy of this form).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .kernels import log_softmax_rows, row_logsumexp
from .memory import check_memory
from .tree import TokenTree
from .validation import (
    check_leaf_array,
    check_positive_int,
    check_real_array,
    check_tree,
    make_rng,
    read_only,
)

#: Largest |logsumexp(row)| accepted as "normalized" (log space: about 1e-8 relative error
#: in the row's probability sum, far above float64 rounding of a softmax, far below any real
#: normalization mistake).
NORMALIZATION_ATOL = 1e-8


@dataclass(frozen=True, init=False, eq=False)
class Policy:
    """A validated table of next-token log-probabilities on a :class:`TokenTree`.

    Args:
        tree: the token tree.
        log_probs: ``H`` arrays; ``log_probs[h]`` has shape ``(tree.level_size(h), A)``
            and holds ``log pi(a | s)``. Each row must be normalized in probability
            (within :data:`NORMALIZATION_ATOL` in log space) with at least one finite entry;
            ``-inf`` entries are tokens never picked. NaN and ``+inf`` are refused.

    The tables are copied into read-only float64 arrays (lists, int, float32, read-only and
    non-contiguous inputs are accepted as their float64 values; complex ones are refused),
    so later changes to the caller's arrays cannot reach the policy. Validation is one pass
    of the row kernel per table (:func:`tinyrlhf.kernels.row_logsumexp`); details are
    worked out only for a table that fails. :meth:`trusted` skips copy and validation for
    tables a computation hands over.

    Raises:
        TypeError: ``tree`` is not a TokenTree, ``log_probs`` is not a sequence of arrays, or
            an array is complex or not numeric.
        ValueError: wrong number of levels, wrong shapes, NaN/``+inf``, an all-``-inf`` row,
            or a row that does not normalize.
    """

    tree: TokenTree
    log_probs: list[np.ndarray]

    def __init__(self, tree: TokenTree, log_probs: Sequence[np.ndarray]) -> None:
        tree = check_tree(tree)
        arrays = _check_tables(tree, log_probs, "log_probs")  # fresh float64 copies
        for h, table in enumerate(arrays):
            # NaN, +inf and all -inf rows give a non-finite row sum; details only on failure
            with np.errstate(invalid="ignore"):
                row_sums = row_logsumexp(table)  # (level_size(h),)
            bad = ~(np.abs(row_sums) <= NORMALIZATION_ATOL)
            if bad.any():
                _explain_bad_table(table, h, int(np.flatnonzero(bad)[0]), row_sums)
        _check_forced_rows(tree, arrays)
        object.__setattr__(self, "tree", tree)
        object.__setattr__(self, "log_probs", [read_only(table) for table in arrays])

    @classmethod
    def trusted(cls, tree: TokenTree, log_probs: list[np.ndarray]) -> Policy:
        """Build from tables known to be valid, without copy or validation.

        For tables a computation just produced and hands over (the solvers' outputs, the
        builders below): validating them would cost about one more soft-value-iteration
        pass (``Policy(tree, log_probs)`` runs the row kernel over every table and copies
        them). The tables must satisfy everything :class:`Policy` checks (shapes,
        normalized rows, forced rows after ``eos``); they are frozen as read-only views, so
        the caller must not write to them afterwards. When in doubt, use
        ``Policy(tree, log_probs)``.
        """
        policy = object.__new__(cls)
        object.__setattr__(policy, "tree", tree)
        object.__setattr__(policy, "log_probs", [read_only(table) for table in log_probs])
        return policy

    #: The name the package's modules used before :meth:`trusted` was public.
    _trusted = trusted

    # ----------------------------------------------------------------------- builders
    @classmethod
    def uniform(cls, tree: TokenTree) -> Policy:
        """``pi(a | s) = 1 / A`` everywhere (but on rows forced by an ``eos`` token)."""
        tree = check_tree(tree)
        log_uniform = -np.log(tree.n_tokens)
        tables = [
            np.full((tree.level_size(h), tree.n_tokens), log_uniform) for h in range(tree.horizon)
        ]
        return cls.trusted(tree, _force_ended_rows(tree, tables))

    @classmethod
    def random(
        cls,
        tree: TokenTree,
        seed: int | np.random.Generator | None = 0,
        temperature: float = 1.0,
        *,
        zero_fraction: float = 0.0,
    ) -> Policy:
        """A random policy: softmax of standard-normal logits divided by ``temperature``.

        With the default seed every call returns the same policy; pass another seed (or a
        Generator, or None for fresh entropy) for another one.

        Args:
            tree: the token tree.
            seed: int, Generator or None; default 0 (see
                :func:`~tinyrlhf.validation.make_rng`).
            temperature: > 0; large values approach the uniform policy, small ones are
                nearly deterministic.
            zero_fraction: in [0, 1): each token is independently forbidden (``-inf``) with
                this probability; the row's most likely token is always kept.
        """
        tree = check_tree(tree)
        rng = make_rng(seed)
        if not np.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"temperature must be finite and > 0, got {temperature!r}")
        if not 0 <= zero_fraction < 1:
            raise ValueError(f"zero_fraction must be in [0, 1), got {zero_fraction!r}")
        logits = []
        for h in range(tree.horizon):
            table = rng.standard_normal((tree.level_size(h), tree.n_tokens)) / temperature
            if zero_fraction > 0:
                forbid = rng.random(table.shape) < zero_fraction
                forbid[np.arange(table.shape[0]), table.argmax(axis=1)] = False
                table[forbid] = -np.inf
            logits.append(table)
        return cls.from_logits(tree, logits)

    @classmethod
    def from_logits(cls, tree: TokenTree, logits: Sequence[np.ndarray]) -> Policy:
        """``pi(. | s) = softmax(logits[h][i])`` per row; ``-inf`` logits are never picked.

        On a tree with ``eos``, rows after the end token are forced to ``eos`` whatever
        their logits.

        Raises:
            ValueError: wrong shapes, NaN or ``+inf`` logits, a row with no finite logit.
        """
        tree = check_tree(tree)
        arrays = _check_tables(tree, logits, "logits")
        _check_logits(tree, arrays)
        tables = [log_softmax_rows(table, out=table)[1] for table in arrays]  # in place
        return cls.trusted(tree, _force_ended_rows(tree, tables))

    @classmethod
    def from_leaf_log_probs(
        cls, tree: TokenTree, leaf_log_probs: np.ndarray, *, fallback: Policy | None = None
    ) -> Policy:
        """The autoregressive policy that generates a given leaf distribution per prompt.

        Sums the distribution over subtrees, one backward pass (the seed's trajectory-level
        ``P`` turned into next-token conditionals):

            M_H = log P(xi),   M_h(s) = log sum_a exp M_{h+1}(s o a),
            log pi(a | s) = M_{h+1}(s o a) - M_h(s).

        At states the distribution never reaches (``M_h(s) = -inf``) the conditional is
        undefined and changes no leaf probability; those rows are taken from ``fallback``
        (default: the uniform policy, whose rows after an ``eos`` token are forced).

        Args:
            tree: the token tree.
            leaf_log_probs: ``(n_leaves,)`` ``log P(xi | s_0)``; ``-inf`` allowed; each
                prompt's leaves must sum to 1 in probability (within
                :data:`NORMALIZATION_ATOL` in log space), and on a tree with ``eos`` leaves
                with a token after the end token must have probability 0.
            fallback: policy for the unreached rows (same tree).

        Raises:
            ValueError: wrong shape, NaN/``+inf``, a prompt whose leaves do not normalize,
                mass on an impossible ``eos`` leaf, or a fallback on another tree.
        """
        tree = check_tree(tree)
        leaf_log_probs = check_leaf_array(
            tree, leaf_log_probs, "leaf_log_probs", allow_neg_inf=True
        )
        if fallback is not None and (not isinstance(fallback, Policy) or fallback.tree != tree):
            raise ValueError("fallback must be a tinyrlhf.Policy on the same tree")
        policy, totals = normalize_leaf_log_weights(tree, leaf_log_probs, fallback)
        bad = ~(np.abs(totals) <= NORMALIZATION_ATOL)  # M_0 = log sum of P over each prompt
        if bad.any():
            p = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"leaf_log_probs of prompt {tree.prompts[p]!r} sum to {np.exp(totals[p])!r} in "
                "probability, not 1; subtract their logsumexp per prompt first"
            )
        impossible = (
            ~tree.valid_leaves() & (leaf_log_probs > -np.inf) if tree.eos is not None else None
        )
        if impossible is not None and impossible.any():
            raise ValueError(
                f"leaf_log_probs gives probability to leaf {int(np.flatnonzero(impossible)[0])}, "
                f"which has a token after the end token {tree.eos!r}; no policy produces it"
            )
        return policy

    # ---------------------------------------------------------------------- quantities
    @property
    def probs(self) -> list[np.ndarray]:
        """``pi(a | s)`` per level, ``(level_size(h), A)`` each (a new list of arrays)."""
        return [np.exp(table) for table in self.log_probs]

    def state_log_probs(self, h: int) -> np.ndarray:
        """``log d_h(s)``: log-probability of reaching each level-``h`` state from its prompt.

        ``log d_0 = 0``; ``log d_{h+1}(s o a) = log d_h(s) + log pi(a | s)``. Shape
        ``(level_size(h),)``; a new array on every call (nothing is cached). Keeps only one
        level at a time (:meth:`log_occupancies` keeps them all).
        """
        self.tree.level_size(h)  # validates h
        log_reach = np.zeros(self.tree.n_prompts)
        for table in self.log_probs[:h]:
            log_reach = _extend(log_reach, table)
        return log_reach

    def log_occupancies(self) -> list[np.ndarray]:
        """``log d_h`` for every level ``h = 0..H``, one forward pass (the tree's forward primitive).

        ``log d_0 = 0``; ``log d_{h+1}(s o a) = log d_h(s) + log pi(a | s)``; ``d_h(s)`` is the
        probability of reaching state ``s`` of level ``h`` from its prompt, and ``log d_H`` is
        :meth:`leaf_log_probs`. Returns ``H + 1`` new arrays, ``(level_size(h),)`` each.
        """
        log_reach = [np.zeros(self.tree.n_prompts)]
        for table in self.log_probs:
            log_reach.append(_extend(log_reach[-1], table))
        return log_reach

    def state_probs(self, h: int) -> np.ndarray:
        """``d_h(s)``: probability of reaching each level-``h`` state, ``(level_size(h),)``."""
        return np.exp(self.state_log_probs(h))

    def leaf_log_probs(self) -> np.ndarray:
        """``log P(xi | s_0) = sum_h log pi(a_h | s_h)`` for every leaf, ``(n_leaves,)``."""
        return self.state_log_probs(self.tree.horizon)

    def leaf_probs(self) -> np.ndarray:
        """``P(xi | s_0)`` for every leaf, ``(n_leaves,)``; sums to 1 per prompt."""
        return np.exp(self.leaf_log_probs())

    # ------------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int,
        seed: int | np.random.Generator | None = 0,
        prompt: str | int | np.ndarray | None = None,
    ) -> np.ndarray:
        """Draw ``n`` complete generations; returns their leaf indices, ``(n,)`` int64.

        Repeated calls with the default seed return the same draws (``seed=0``, so a result
        is reproducible). To draw a stream, pass one Generator to every call
        (``rng = np.random.default_rng(0); policy.sample(n, rng); policy.sample(n, rng)``);
        ``seed=None`` takes fresh entropy on every call.

        Args:
            n: number of generations.
            seed: int, Generator or None; default 0 (see
                :func:`~tinyrlhf.validation.make_rng`).
            prompt: None (prompts uniformly at random), a prompt (string or index) for all
                draws, or an int array ``(n,)`` of prompt indices.
        """
        n = check_positive_int(n, "n", minimum=0)
        rng = make_rng(seed)
        tree = self.tree
        # the states, the (n, A) probabilities and cumulative sums of one level, u and the
        # drawn tokens: about 2 A + 4 floats per draw
        check_memory(n * 8 * (2 * tree.n_tokens + 4), f"drawing {n:,} generations")
        if prompt is None:
            state = rng.integers(0, tree.n_prompts, size=n, dtype=np.int64)
        elif isinstance(prompt, (str, int, np.integer)):
            state = np.full(n, tree.prompt_index(prompt), dtype=np.int64)
        else:
            state = np.asarray(prompt)
            if state.shape != (n,) or not np.issubdtype(state.dtype, np.integer):
                raise ValueError(
                    f"prompt must be None, one prompt, or ({n},) ints; got {prompt!r}"
                )
            if state.size and (state.min() < 0 or state.max() >= tree.n_prompts):
                raise ValueError(f"prompt indices must be in 0..{tree.n_prompts - 1}")
            state = state.astype(np.int64)
        for h in range(tree.horizon):
            probs = np.exp(self.log_probs[h][state])  # (n, A)
            cdf = np.cumsum(probs, axis=1)  # (n, A)
            # u in (0, 1] so a zero-probability token (an empty cdf step) is never drawn.
            u = (1.0 - rng.random(n)) * cdf[:, -1]
            token = np.minimum((cdf < u[:, None]).sum(axis=1), tree.n_tokens - 1)
            state = state * tree.n_tokens + token
        return state

    def __repr__(self) -> str:
        return f"Policy(tree={self.tree!r})"


def _extend(log_reach: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``log d_{h+1}(s o a) = log d_h(s) + log pi(a | s)``: ``(n,)`` and ``(n, A)`` -> ``(n * A,)``."""
    return (log_reach[:, None] + table).reshape(-1)


def normalize_leaf_log_weights(
    tree: TokenTree, leaf_log_weights: np.ndarray, fallback: Policy | None = None
) -> tuple[Policy, np.ndarray]:
    """The policy that generates ``P(xi | s_0) ∝ exp w(xi)``, and ``log sum_xi exp w(xi)``.

    One backward pass of the row kernel (subtree log-sums, as
    :meth:`TokenTree.subtree_logsumexps`, with the normalized rows on the way):

        U_H = w,   U_h(s) = log sum_a exp U_{h+1}(s o a),   log pi(a | s) = U_{h+1}(s o a) - U_h(s)

    and ``U_0`` is the per-prompt log-normalizer (``log Z`` when ``w = log P_ref + r/beta``).
    The normalizer cancels in ``pi``, so ``w`` need not be normalized. Rows of states no leaf
    below reaches (``U_h(s) = -inf``) are undefined and change no leaf probability; they are
    taken from ``fallback`` (default: the uniform policy with forced rows after ``eos``).

    Args:
        tree: the token tree.
        leaf_log_weights: ``(n_leaves,)`` float64 ``w``, finite or ``-inf`` (not checked:
            callers validate; every prompt needs one finite leaf for a finite normalizer).
        fallback: policy for the unreached rows (same tree, not checked).

    Returns:
        ``(policy, log_totals)``; ``log_totals`` is ``U_0``, ``(n_prompts,)``.
    """
    log_pi: list[np.ndarray] = [np.empty(0)] * tree.horizon
    log_mass = leaf_log_weights  # U_H: (n_leaves,)
    for h in range(tree.horizon - 1, -1, -1):
        # U_h(s) and U_{h+1}(s o a) - U_h(s): (level_size(h),) and (level_size(h), A)
        log_mass, log_pi[h] = log_softmax_rows(log_mass.reshape(-1, tree.n_tokens))
        unreached = log_mass == -np.inf
        if unreached.any():
            fallback = Policy.uniform(tree) if fallback is None else fallback
            log_pi[h][unreached] = fallback.log_probs[h][unreached]
    return Policy.trusted(tree, log_pi), log_mass


def _force_ended_rows(tree: TokenTree, tables: list[np.ndarray]) -> list[np.ndarray]:
    """Set the rows of states after ``eos`` to ``log pi = 0`` on ``eos``, ``-inf`` elsewhere
    (in place; tables are the caller's fresh arrays)."""
    if tree.eos is None:
        return tables
    forced_row = np.full(tree.n_tokens, -np.inf)
    forced_row[tree.eos_index] = 0.0
    for h in range(1, tree.horizon):
        tables[h][tree.ended_states(h)] = forced_row
    return tables


def _check_tables(tree: TokenTree, tables: Sequence[np.ndarray], name: str) -> list[np.ndarray]:
    """Types and shapes of per-level ``(level_size(h), A)`` tables; fresh float64 copies
    (so later changes to the caller's arrays cannot reach a policy). Values are checked by
    the callers (one pass of the row kernel, details by :func:`_explain_bad_table`)."""
    if isinstance(tables, (np.ndarray, str)) or not isinstance(tables, Sequence):
        raise TypeError(
            f"{name} must be a list of {tree.horizon} arrays (one per level h = 0..H-1), "
            f"got {type(tables).__name__}"
        )
    if len(tables) != tree.horizon:
        raise ValueError(
            f"{name} must have one array per level h = 0..{tree.horizon - 1} "
            f"({tree.horizon} arrays), got {len(tables)}"
        )
    arrays = []
    for h, table in enumerate(tables):
        array = check_real_array(table, f"{name}[{h}]", copy=True)
        expected = (tree.level_size(h), tree.n_tokens)
        if array.shape != expected:
            raise ValueError(
                f"{name}[{h}] must have shape {expected} = (level_size({h}), n_tokens), "
                f"got {array.shape}"
            )
        arrays.append(array)
    return arrays


def _explain_bad_table(table: np.ndarray, h: int, row: int, row_sums: np.ndarray) -> None:
    """Raise the ``ValueError`` that says what is wrong with row ``row`` of level ``h``."""
    values = table[row]
    if np.isnan(values).any():
        raise ValueError(f"log_probs[{h}] contains NaN (row {row})")
    if np.isposinf(values).any():
        raise ValueError(f"log_probs[{h}] contains +inf (row {row})")
    if np.isneginf(values).all():
        raise ValueError(
            f"log_probs[{h}] row {row} is all -inf: every state needs at least one token "
            "with positive probability"
        )
    raise ValueError(
        f"log_probs[{h}] row {row} does not normalize: its probabilities sum to "
        f"{np.exp(row_sums[row])!r}; rows must be log-probabilities summing to 1 in "
        "probability (use Policy.from_logits to normalize logits)"
    )


def _check_logits(tree: TokenTree, arrays: list[np.ndarray]) -> None:
    """Logits may be finite or ``-inf``, with at least one finite entry per row."""
    for h, table in enumerate(arrays):
        if np.isfinite(table).all():
            continue
        if np.isnan(table).any():
            raise ValueError(f"logits[{h}] contains NaN")
        if np.isposinf(table).any():
            raise ValueError(f"logits[{h}] contains +inf")
        dead = np.isneginf(table).all(axis=1)
        if dead.any():
            raise ValueError(
                f"logits[{h}] row {int(np.flatnonzero(dead)[0])} is all -inf: every state "
                "needs at least one token with positive probability"
            )


def _check_forced_rows(tree: TokenTree, arrays: list[np.ndarray]) -> None:
    """On a tree with ``eos``, rows after the end token put probability one on ``eos``."""
    if tree.eos is None:
        return
    eos = tree.tokens.index(tree.eos)
    for h in range(1, tree.horizon):
        ended = tree.ended_states(h)
        rows = arrays[h][ended]  # (n_ended, A)
        others = np.delete(rows, eos, axis=1)
        bad = ~(np.abs(rows[:, eos]) <= NORMALIZATION_ATOL) | (others > -np.inf).any(axis=1)
        if bad.any():
            i = int(np.flatnonzero(ended)[np.flatnonzero(bad)[0]])
            raise ValueError(
                f"log_probs[{h}] row {i} follows the end token {tree.eos!r}, so it must "
                f"put probability one on {tree.eos!r} (a forced row: 0 there, -inf "
                "elsewhere); Policy.from_logits, uniform and random force these rows"
            )
