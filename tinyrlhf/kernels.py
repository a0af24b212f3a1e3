"""Level kernels: the two passes every exact tree algorithm is made of (lecture section 4).

Every exact computation on the token tree is a loop over levels of one of two reductions:

- down the tree (forward), a log-probability accumulates along each path,

      log d_{h+1}(s o a) = log d_h(s) + log pi(a | s)                         (extend_log_reach)

- up the tree (backward), a level is a row-wise log-sum-exp over the ``A`` children of each
  state, and the row's normalized log-weights are a policy,

      x(s, a)      = [row_offset(s) + log_prior(s, a)] + children(s o a) / divisor
      log_sum(s)   = log sum_a exp x(s, a)
      log_pi(a|s)  = x(s, a) - log_sum(s)                                       (log_normalize_level)

  With ``log_prior = log pi_ref`` and ``children = V_{h+1} / beta`` this is the soft Bellman
  backup (``log_sum = V_h / beta``, ``log_pi = log pi*``); with no prior and ``children`` the
  log-masses of the subtrees of level ``h + 1`` it sums the closed form's ``P*`` over
  subtrees (and with ``row_offset = log d_ref``, ``log_prior = log pi_ref``,
  ``children = r``, ``divisor = beta`` its first level forms the leaf weights
  ``log P_ref + r/beta`` on the way).

The straightforward versions are ``scipy.special.logsumexp(x, axis=1)`` and
``log_reach[:, None] + table``; the tests check that these kernels agree with them to 1e-12.
The kernels are faster because of how numpy executes small reductions. Measured on a 2-core
AMD EPYC with numpy 2.4 (``python benchmarks/run.py``, table "Level kernels": one backward
level of 2**24 elements, relative to one ``scipy.special.logsumexp`` over 2**24 leaves):

- A reduction along a short last axis (``x.max(axis=1)`` on ``(n, 2)``) runs numpy's inner
  loop once per row: ``scipy.special.logsumexp(x, axis=1)`` costs about 10x the floor at
  A = 2 (2.3x at A = 16), and the same max-shift steps on row-major ``(rows, A)`` buffers
  3.9x. ``np.logaddexp`` is not SIMD-vectorized: a chain costs about 1.7x at every A.
- Max-shift + ``exp`` + ``sum`` on token-major ``(A, rows)`` buffers, filled column by
  column, runs every ufunc over long contiguous rows: about 0.45x for A <= 8, 0.67x at
  A = 16 (row-major 0.85x), about equal at A = 24; from A = 32 on (0.77x against 0.62x;
  0.85x against 0.50x at A = 64) the rows are long enough and gathering A strided columns
  costs more than it saves (:data:`TOKEN_MAJOR_MAX_TOKENS`).
- The work is done in blocks of :data:`BLOCK_ELEMENTS` elements so that the scratch
  buffers stay in cache (1 MiB each) and are allocated once per solve
  (:class:`LevelWorkspace`), not once per level: 0.45x at A = 2 against 0.69x for the same
  kernel in one block.

``-inf`` entries (tokens a policy never picks) flow through: an all ``-inf`` row has
``log_sum = -inf`` and its ``log_pi`` row is left all ``-inf`` (no NaN, no warning); callers
decide what such unreachable rows mean.

References: the log-sum-exp shift is standard (e.g. Blanchard, Higham & Higham 2021, "Accurately
computing the log-sum-exp and softmax functions", IMA J. Numer. Anal. 41(4)).
"""

from __future__ import annotations

import numpy as np

#: Elements per block of the backward kernel: two (A, rows) float64 scratch buffers of 1 MiB
#: fit in the L2 cache; measured at A = 2 and 2**24 elements, 2**17 (0.41x the floor) beat
#: 2**15 (0.46x), 2**19 (0.52x) and one block (0.69x).
BLOCK_ELEMENTS = 1 << 17
#: Largest A for which the backward kernel works token-major, on (A, rows) buffers filled
#: column by column (measured: faster up to A = 16, even at 24, slower from 32; see above).
TOKEN_MAJOR_MAX_TOKENS = 16
#: Largest A for which the forward kernel writes one strided column per token, in blocks of
#: BLOCK_ELEMENTS, instead of one broadcast add (measured at 2**24 elements into a new
#: array: A = 2, 0.20x against 0.31x; A = 3, 0.21x against 0.26x; A = 4 about equal; A = 8,
#: 0.32x against 0.21x).
FORWARD_COLUMNS_MAX_TOKENS = 3
#: numpy's default ufunc buffer (8192 elements) of float64, which a broadcasting ufunc may
#: allocate; counted in the memory estimates.
_NUMPY_BUFFER_BYTES = 8192 * 8


def extend_log_reach(
    log_reach: np.ndarray, log_probs: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """One level down: ``log d_{h+1}(s o a) = log d_h(s) + log pi(a | s)``.

    Args:
        log_reach: ``(n,)`` log-probabilities ``log d_h`` of reaching the states of level h
            (``-inf`` allowed).
        log_probs: ``(n, A)`` the policy's table ``log pi(a | s)`` at level h.
        out: optional ``(n, A)`` array to write into (not overlapping the inputs).

    Returns:
        ``(n * A,)``: ``log d_{h+1}`` in canonical order (child ``i * A + a``), a view of
        ``out`` when given, else a new array.
    """
    n_rows, n_tokens = log_probs.shape
    if out is None:
        out = np.empty((n_rows, n_tokens))
    if n_tokens <= FORWARD_COLUMNS_MAX_TOKENS:
        # strided columns, block by block, beat a broadcast over rows of 2 or 3
        block_rows = max(1, BLOCK_ELEMENTS // n_tokens)
        for start in range(0, n_rows, block_rows):
            rows = slice(start, min(n_rows, start + block_rows))
            for a in range(n_tokens):
                np.add(log_reach[rows], log_probs[rows, a], out=out[rows, a])
    else:
        np.add(log_reach[:, None], log_probs, out=out)  # (n, 1) + (n, A)
    return out.reshape(-1)  # (n * A,)


class LevelWorkspace:
    """Scratch buffers of :func:`log_normalize_level`, allocated once and reused by every
    level and every block of a solve.

    Args:
        n_tokens: A, the number of children per state.
        max_rows: the largest number of rows (states) any level will pass; buffers are
            ``min(max_rows, block rows)`` rows, so small trees get small buffers.
        block_elements: elements per block (default :data:`BLOCK_ELEMENTS`; the tests use
            tiny blocks to exercise the block boundaries).
        token_major: layout of the buffers; default (None) token-major for
            ``A <= TOKEN_MAJOR_MAX_TOKENS``, row-major above (the benchmark times both).
    """

    def __init__(
        self,
        n_tokens: int,
        max_rows: int,
        block_elements: int = BLOCK_ELEMENTS,
        token_major: bool | None = None,
    ) -> None:
        self.n_tokens = int(n_tokens)
        if token_major is None:
            token_major = self.n_tokens <= TOKEN_MAJOR_MAX_TOKENS
        self.token_major = bool(token_major)
        self.block_rows = max(1, min(int(max_rows), int(block_elements) // self.n_tokens))
        shape = (
            (self.n_tokens, self.block_rows)
            if self.token_major
            else (self.block_rows, self.n_tokens)
        )
        self.weights = np.empty(shape)  # x(s, a) of the block
        self.shifted = np.empty(shape)  # exp(x(s, a) - max_a x(s, a))
        self.row_max = np.empty(self.block_rows)
        self.row_sum = np.empty(self.block_rows)

    @staticmethod
    def estimate_bytes(n_tokens: int, max_rows: int) -> int:
        """Bytes the buffers of ``LevelWorkspace(n_tokens, max_rows)`` take, plus the buffer
        numpy's iterator allocates for a broadcast over short rows (up to 8192 elements)."""
        rows = max(1, min(int(max_rows), BLOCK_ELEMENTS // int(n_tokens)))
        return 8 * rows * (2 * int(n_tokens) + 2) + _NUMPY_BUFFER_BYTES


def log_normalize_level(
    children: np.ndarray,
    out_log_sum: np.ndarray,
    out_log_probs: np.ndarray | None = None,
    *,
    log_prior: np.ndarray | None = None,
    row_offset: np.ndarray | None = None,
    divisor: float | None = None,
    workspace: LevelWorkspace | None = None,
) -> bool:
    """One level up: row-wise log-sum-exp over the children, and the normalized rows.

        x(s, a)     = [row_offset(s) + log_prior(s, a)] + children(s o a) / divisor
        log_sum(s)  = log sum_a exp x(s, a)       (max-shifted: m(s) + log sum_a e^{x - m(s)})
        log_pi(a|s) = x(s, a) - log_sum(s)

    Args:
        children: ``(n * A,)`` values of the level below in canonical order (child
            ``i * A + a`` of row ``i``); finite or ``-inf``.
        out_log_sum: ``(n,)`` output, ``log_sum``; ``-inf`` exactly on all ``-inf`` rows.
        out_log_probs: optional ``(n, A)`` output, ``log_pi``; an all ``-inf`` row is written
            as all ``-inf``. Must not overlap ``children``.
        log_prior: optional ``(n, A)`` table added to every row (finite or ``-inf``).
        row_offset: optional ``(n,)`` value added to every entry of a row (finite or
            ``-inf``); only together with ``log_prior``.
        divisor: optional positive number dividing ``children`` (e.g. ``beta`` for ``r/beta``).
        workspace: scratch buffers for ``A`` tokens (made here when None).

    Returns:
        True if some row's log-sum is ``-inf`` (every entry of the row was ``-inf``).
    """
    if row_offset is not None and log_prior is None:
        raise ValueError("row_offset is only supported together with log_prior")
    n_rows = out_log_sum.shape[0]
    if workspace is None:
        workspace = LevelWorkspace(children.shape[0] // n_rows if n_rows else 1, n_rows)
    n_tokens = workspace.n_tokens
    child_rows = children.reshape(n_rows, n_tokens)  # (n, A): row i holds children i*A + a
    token_axis = 0 if workspace.token_major else 1
    # a (size,) row vector broadcast along the token axis: (1, size) or (size, 1)
    per_token = (np.newaxis, slice(None)) if workspace.token_major else (slice(None), np.newaxis)
    any_dead = False
    for start in range(0, n_rows, workspace.block_rows):
        stop = min(n_rows, start + workspace.block_rows)
        size = stop - start
        offset = None if row_offset is None else row_offset[start:stop]
        if workspace.token_major:
            weights = workspace.weights[:, :size]  # (A, size)
            shifted = workspace.shifted[:, :size]
            for a in range(n_tokens):
                prior = None if log_prior is None else log_prior[start:stop, a]
                _combine(child_rows[start:stop, a], prior, offset, divisor, weights[a], shifted[a])
        else:
            weights = workspace.weights[:size]  # (size, A)
            shifted = workspace.shifted[:size]
            prior = None if log_prior is None else log_prior[start:stop]
            offset = None if offset is None else offset[:, None]  # (size, 1)
            _combine(child_rows[start:stop], prior, offset, divisor, weights, shifted)
        row_max = workspace.row_max[:size]
        row_sum = workspace.row_sum[:size]
        np.maximum.reduce(weights, axis=token_axis, out=row_max)
        # all -inf rows (one min instead of a mask when there are none, the common case)
        block_dead = bool(row_max.min() == -np.inf)
        if block_dead:
            dead = np.isneginf(row_max)  # (size,) bool
            row_max[dead] = 0.0  # shift by 0 there: exp(-inf - 0) = 0, so the row sums to 0
        # m(s) + log sum_a exp(x(s, a) - m(s))
        np.subtract(weights, row_max[per_token], out=shifted)
        np.exp(shifted, out=shifted)
        np.add.reduce(shifted, axis=token_axis, out=row_sum)
        log_sum = out_log_sum[start:stop]
        if block_dead:
            with np.errstate(divide="ignore"):  # log 0 = -inf is the exact answer on dead rows
                np.log(row_sum, out=row_sum)
        else:
            np.log(row_sum, out=row_sum)
        np.add(row_max, row_sum, out=log_sum)
        if out_log_probs is not None:
            # x - log_sum; dead rows subtract 0 and stay all -inf (never -inf - -inf = NaN)
            shift = np.where(dead, 0.0, log_sum) if block_dead else log_sum
            if workspace.token_major:
                for a in range(n_tokens):
                    np.subtract(weights[a], shift, out=out_log_probs[start:stop, a])
            else:
                np.subtract(weights, shift[:, None], out=out_log_probs[start:stop])
        any_dead |= block_dead
    return any_dead


def _combine(
    children: np.ndarray,
    log_prior: np.ndarray | None,
    row_offset: np.ndarray | None,
    divisor: float | None,
    out: np.ndarray,
    scratch: np.ndarray,
) -> None:
    """``out = [row_offset + log_prior] + children / divisor`` (each term optional)."""
    if row_offset is not None:
        np.add(row_offset, log_prior, out=scratch)  # log d(s) + log pi(a|s), as the forward pass
        log_prior = scratch
    if divisor is None:
        if log_prior is None:
            np.copyto(out, children)
        else:
            np.add(log_prior, children, out=out)
    else:
        np.divide(children, divisor, out=out)
        if log_prior is not None:
            np.add(log_prior, out, out=out)


def row_logsumexp(x: np.ndarray) -> np.ndarray:
    """``log sum_a exp x[i, a]`` for each row of an ``(n, A)`` array (finite or ``-inf``
    entries), by :func:`log_normalize_level`; equals ``scipy.special.logsumexp(x, axis=1)``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"x must be a 2-D (n, A) array with A >= 1, got shape {x.shape}")
    out = np.empty(x.shape[0])
    log_normalize_level(
        np.ascontiguousarray(x).reshape(-1), out, workspace=LevelWorkspace(x.shape[1], x.shape[0])
    )
    return out
