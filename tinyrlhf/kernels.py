"""The row kernel every exact tree algorithm runs on (lecture section 4).

One level up the tree is a row-wise log-sum-exp over the ``A`` children of each state, and
the row's normalized log-weights are a policy:

    log_sum(s)   = log sum_a exp x(s, a)             (= m(s) + log sum_a e^{x(s, a) - m(s)})
    log_pi(a|s)  = [x(s, a) - m(s)] - log sum_a e^{x(s, a) - m(s)},    m(s) = max_a x(s, a)

With ``x = log pi_ref + V_{h+1} / beta`` this is the soft Bellman backup
(``log_sum = V_h / beta``, ``log_pi = log pi*``, :mod:`tinyrlhf.solvers.soft_vi`); with ``x``
the log-masses of the subtrees below a level it sums a leaf distribution over subtrees
(:meth:`tinyrlhf.Policy.from_leaf_log_probs`, the closed form). The normalized row is formed
from the shifted entries ``x - m`` (exact for nearby numbers), not as ``x - log_sum``, so a
row of numbers near ``1e12`` still normalizes to float64 rounding.

The straightforward versions are ``scipy.special.logsumexp(x, axis=1)`` and
``scipy.special.log_softmax(x, axis=1)``; the tests check that the kernel agrees with them
to 1e-12. It is faster because of how numpy executes small reductions (measurements in
``benchmarks/results.md``, table "Level kernels"):

- a reduction along a short last axis (``x.max(axis=1)`` on ``(n, 2)``) runs numpy's inner
  loop once per row, about 10x the cost of one long ``logsumexp`` at ``A = 2``;
- max-shift + ``exp`` + ``sum`` on token-major ``(A, rows)`` buffers, filled column by
  column, run every ufunc over long contiguous rows, for ``A <=``
  :data:`TOKEN_MAJOR_MAX_TOKENS`; above, rows are long enough and the kernel works on the
  row-major ``(rows, A)`` block directly;
- the work is done in blocks of :data:`BLOCK_ELEMENTS` elements so the scratch buffers stay
  in cache;
- at ``A = 2`` one of the two shifted entries is 0, so ``log sum_a e^{x - m} =
  log1p(e^{min - max})``: one ``exp`` per row instead of two (``exp`` is most of the cost).

Those tricks live here and nowhere else. ``-inf`` entries (tokens never picked) flow
through: an all ``-inf`` row has ``log_sum = -inf`` and its normalized row is left all
``-inf`` (no NaN, no warning); callers decide what such unreachable rows mean.

References: the log-sum-exp shift is standard (e.g. Blanchard, Higham & Higham 2021, "Accurately
computing the log-sum-exp and softmax functions", IMA J. Numer. Anal. 41(4)).
"""

from __future__ import annotations

import numpy as np

#: Elements per block: two ``(A, rows)`` float64 scratch buffers of 1 MiB stay in the L2
#: cache (measured at A = 2 and 2**24 elements: 2**17 beat 2**15, 2**19 and one block).
BLOCK_ELEMENTS = 1 << 17
#: Largest ``A`` for which the kernel works token-major, on ``(A, rows)`` buffers filled
#: column by column (measured: faster up to A = 16, even at 24, slower from 32).
TOKEN_MAJOR_MAX_TOKENS = 16


def log_softmax_rows(
    x: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row log-sum-exp and normalized rows of an ``(n, A)`` array, in one pass.

        log_sum(s) = log sum_a exp x(s, a),     log_pi(a|s) = x(s, a) - log_sum(s)

    Args:
        x: ``(n, A)`` float64, finite or ``-inf`` entries (``+inf``/NaN give NaN sums).
        out: optional ``(n, A)`` float64 array for the normalized rows; may be ``x`` itself
            (in place). A new array when None.

    Returns:
        ``(log_sum, log_pi)``: ``(n,)`` and ``(n, A)`` (``out`` when given); on an all
        ``-inf`` row ``log_sum = -inf`` and the row of ``log_pi`` is all ``-inf``.
    """
    if out is None:
        out = np.empty(x.shape)
    return _row_kernel(x, out), out


def _row_kernel(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """The blocked kernel: returns ``log_sum`` ``(n,)``; writes the normalized rows into
    ``out`` unless it is None (see :func:`log_softmax_rows`)."""
    n_rows, n_tokens = x.shape
    log_sum = np.empty(n_rows)
    token_major = n_tokens <= TOKEN_MAJOR_MAX_TOKENS
    pair = token_major and n_tokens == 2  # the one-exp-per-row form (module docstring)
    block_rows = max(1, min(n_rows, BLOCK_ELEMENTS // max(n_tokens, 1)))
    shape = (n_tokens, block_rows) if token_major else (block_rows, n_tokens)
    shifted, exps = np.empty(shape), np.empty(shape)  # x - m(s), and its exp
    # m(s) and log sum_a e^{x(s, a) - m(s)} of the block
    row_max, row_sum = np.empty(block_rows), np.empty(block_rows)
    for start in range(0, n_rows, block_rows):
        size = min(n_rows, start + block_rows) - start
        block = slice(start, start + size)
        block_max, block_log_sum = row_max[:size], row_sum[:size]
        if pair:  # (2, size), and one exp per row instead of two (see below)
            block_x = shifted[:, :size]
            np.maximum(x[block, 0], x[block, 1], out=block_max)
        elif token_major:  # (A, size): one long contiguous row per token
            block_x = shifted[:, :size]
            for a in range(n_tokens):
                block_x[a] = x[block, a]
            np.maximum.reduce(block_x, axis=0, out=block_max)
        else:  # (size, A)
            block_x = shifted[:size]
            block_x[...] = x[block]
            np.maximum.reduce(block_x, axis=1, out=block_max)
        # all -inf rows: shift by 0, so exp(-inf) = 0, the sum is 0 and its log -inf (one
        # min instead of a mask when there are none, the common case)
        any_dead = bool(block_max.min() == -np.inf)
        if any_dead:
            dead = block_max == -np.inf
            block_max[dead] = 0.0
        if pair:
            # x - m(s) per token; one of the two is 0, so their sum is min - max and
            # log sum_a e^{x - m} = log1p(e^{min - max}): half the exps of the general case
            np.subtract(x[block, 0], block_max, out=block_x[0])
            np.subtract(x[block, 1], block_max, out=block_x[1])
            min_minus_max = exps[0, :size]
            np.add(block_x[0], block_x[1], out=min_minus_max)
            np.exp(min_minus_max, out=min_minus_max)
            np.log1p(min_minus_max, out=block_log_sum)
        else:
            np.subtract(
                block_x,
                block_max[np.newaxis, :] if token_major else block_max[:, np.newaxis],
                out=block_x,
            )
            block_exp = exps[:, :size] if token_major else exps[:size]
            np.exp(block_x, out=block_exp)
            np.add.reduce(block_exp, axis=0 if token_major else 1, out=block_log_sum)
            with np.errstate(divide="ignore"):  # log 0 = -inf, the exact answer on dead rows
                np.log(block_log_sum, out=block_log_sum)
        np.add(block_max, block_log_sum, out=log_sum[block])  # m(s) + log sum_a e^{x - m}
        if any_dead:  # -inf on dead rows; (x - m) - 0 keeps their normalized rows all -inf
            log_sum[block][dead] = -np.inf
            block_log_sum[dead] = 0.0
        if out is None:
            continue
        if token_major:  # log_pi(a|s) = [x(s, a) - m(s)] - log sum_b e^{x(s, b) - m(s)}
            for a in range(n_tokens):
                np.subtract(block_x[a], block_log_sum, out=out[block, a])
        else:
            np.subtract(block_x, block_log_sum[:, np.newaxis], out=out[block])
    return log_sum


def row_logsumexp(x: np.ndarray) -> np.ndarray:
    """``log sum_a exp x[i, a]`` for each row of an ``(n, A)`` array (finite or ``-inf``
    entries), by :func:`log_softmax_rows`; equals ``scipy.special.logsumexp(x, axis=1)``."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"x must be a 2-D (n, A) array with A >= 1, got shape {x.shape}")
    return _row_kernel(x, None)
