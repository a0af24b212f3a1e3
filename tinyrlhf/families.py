"""Policy families for the KL projections (lecture section 4, "some class" of policies).

A family is a set of softmax policies whose logits are a linear function of parameters
``theta`` (one small :class:`Family` subclass each); :mod:`tinyrlhf.projections` projects
onto them:

- ``"full"``: one free logit per (state, token); both projections return the target itself.
- ``"position"``: ``pi(a | s)`` depends only on the depth ``h`` of ``s`` (shared by prompts).
- ``"unigram"``: one token distribution for every state.
- :class:`LogLinearFamily`: ``logit(s, a) = phi(s, a) . theta`` for given features.

Position and unigram are *product* families (:class:`ProductFamily`): a member is one row
``rho_h`` per depth, and a generation's probability is ``prod_h rho_h(a_h)``, a mean-field
(fully factorized) distribution over positions. Their forward projection is in closed form
(the target's expected token counts, weighted by its occupancies ``d_h^target(s)``), and
their reverse projection has the mean-field fixed-point map :meth:`ProductFamily.mean_field_map`
(Bishop 2006, section 10.1.1, eq. 10.9: ``log q_j = E_{-j}[log p] + const``).

References: Bishop (2006), "Pattern Recognition and Machine Learning", ch. 10; Wainwright &
Jordan (2008), "Graphical models, exponential families, and variational inference", ch. 5.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from scipy.special import log_softmax, logsumexp

from .policy import Policy
from .tree import TokenTree


class Family:
    """A family of softmax policies with logits linear in parameters ``theta``.

    A subclass sets ``name`` and implements :meth:`n_parameters`, :meth:`logits` (the linear
    map ``theta -> logits``) and :meth:`logits_adjoint` (its transpose, which pulls a
    gradient over logits back to ``theta``). It may override :meth:`closed_form` when a
    projection has one; otherwise the projection is computed numerically.
    """

    name: ClassVar[str] = "family"

    def n_parameters(self, tree: TokenTree) -> int:
        """Length of ``theta`` on ``tree``."""
        raise NotImplementedError

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        """``theta (n_parameters,) -> logits``, one ``(level_size(h), A)`` array per level."""
        raise NotImplementedError

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        """Transpose of :meth:`logits`: ``dF/dtheta`` from ``dF/dlogits``, ``(n_parameters,)``."""
        raise NotImplementedError

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        """The projection of ``target`` in closed form, or None (then it is numerical)."""
        return None

    def policy(self, tree: TokenTree, theta: np.ndarray) -> Policy:
        """The family member with parameters ``theta``: ``pi(. | s) = softmax(logits(s))``."""
        return Policy._trusted(
            tree, [log_softmax(table, axis=1) for table in self.logits(tree, theta)]
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _pin_last(rows: np.ndarray) -> np.ndarray:
    """Append the pinned logit 0 of the last token: ``(..., A - 1) -> (..., A)``."""
    return np.concatenate([rows, np.zeros((*rows.shape[:-1], 1))], axis=-1)


def _broadcast_rows(tree: TokenTree, rows: np.ndarray) -> list[np.ndarray]:
    """One row per depth ``(H, A)`` -> the same row for every state, ``(level_size(h), A)``."""
    return [
        np.broadcast_to(rows[h], (tree.level_size(h), tree.n_tokens)) for h in range(tree.horizon)
    ]


def _log_token_counts(target: Policy) -> np.ndarray:
    """``log c_h(a) = log (1/P) sum_{s at depth h} d_target(s) target(a | s)``, ``(H, A)``.

    ``c_h`` is the target's expected count of token ``a`` at depth ``h`` (its occupancies from
    one forward pass, :meth:`Policy.log_occupancies`).
    """
    log_d = target.log_occupancies()
    # log d_h(s) + log target(a|s): (level_size(h), A), summed over the states of depth h
    return np.stack(
        [logsumexp(log_d[h][:, None] + table, axis=0) for h, table in enumerate(target.log_probs)]
    ) - np.log(target.tree.n_prompts)


class FullFamily(Family):
    """Every autoregressive policy: ``theta`` holds ``logit(s, a) - logit(s, last token)`` for
    every non-leaf state. Both projections return the target itself (KL = 0)."""

    name = "full"

    def n_parameters(self, tree: TokenTree) -> int:
        return sum(tree.level_size(h) for h in range(tree.horizon)) * (tree.n_tokens - 1)

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        sizes = [tree.level_size(h) * (tree.n_tokens - 1) for h in range(tree.horizon)]
        pieces = np.split(theta, np.cumsum(sizes)[:-1])
        # each piece: (level_size(h) * (A-1),) -> (level_size(h), A-1) -> (level_size(h), A)
        return [
            _pin_last(piece.reshape(tree.level_size(h), tree.n_tokens - 1))
            for h, piece in enumerate(pieces)
        ]

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([grad[:, :-1].reshape(-1) for grad in grad_logits])

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        return target


class ProductFamily(Family):
    """A family whose members use one row ``rho_h`` (a distribution over tokens) at every
    state of depth ``h``: ``P_pi(xi | s_0) = prod_h rho_h(a_h)``, a mean-field distribution.

    A subclass implements :meth:`log_rows` (``theta -> log rho``, ``(H, A)``),
    :meth:`theta_of` (its inverse) and :meth:`mean_field_map`. ``blockwise`` says whether each
    depth's row is its own free block, so that minimizing over one row with the others fixed
    (coordinate ascent) is exact.
    """

    blockwise: ClassVar[bool] = False

    def log_rows(self, tree: TokenTree, theta: np.ndarray) -> np.ndarray:
        """``log rho_h(a)`` of the member ``theta``, ``(H, A)``."""
        raise NotImplementedError

    def theta_of(self, log_rows: np.ndarray) -> np.ndarray:
        """The parameters ``(n_parameters,)`` of the member with rows ``log_rows`` ``(H, A)``."""
        raise NotImplementedError

    def mean_field_map(self, scores: np.ndarray) -> np.ndarray:
        """The stationarity condition of ``F = mean_p KL(P_rho || target_p)`` solved for rho.

        With ``scores[h, a] = c_h(a) = (1/n_prompts) sum_p E_rho[log target_p(xi) | a_h = a]``,
        ``F = sum_h E_{rho_h}[log rho_h] - sum_h E_{rho_h}[c_h] + const`` in each row, and the
        stationary rows are softmaxes of the scores (Bishop 2006, eq. 10.9). Returns
        ``(H, A)`` log rows; a member of the family is stationary iff it is its own image.
        """
        raise NotImplementedError

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        return _broadcast_rows(tree, self.log_rows(tree, theta))

    def policy_of_rows(self, tree: TokenTree, log_rows: np.ndarray) -> Policy:
        """The member with log rows ``(H, A)`` (each row normalized)."""
        return Policy._trusted(tree, _broadcast_rows(tree, log_rows))


class PositionFamily(ProductFamily):
    """``pi(a | s) = softmax(theta_h)(a)`` for every state ``s`` at depth ``h``, every prompt:
    ``theta`` is ``(H, A - 1)`` flattened, the last token's logit pinned to 0.

    Forward closed form: ``pi_h(a) = (1/n_prompts) sum_{s at depth h} d_target(s) target(a | s)``,
    the target's expected count of token ``a`` at depth ``h``. Mean-field map:
    ``rho_h = softmax(c_h)``.
    """

    name = "position"
    blockwise = True

    def n_parameters(self, tree: TokenTree) -> int:
        return tree.horizon * (tree.n_tokens - 1)

    def log_rows(self, tree: TokenTree, theta: np.ndarray) -> np.ndarray:
        # (H * (A-1),) -> (H, A-1) -> (H, A)
        return log_softmax(_pin_last(theta.reshape(tree.horizon, tree.n_tokens - 1)), axis=1)

    def theta_of(self, log_rows: np.ndarray) -> np.ndarray:
        return (log_rows[:, :-1] - log_rows[:, -1:]).reshape(-1)

    def mean_field_map(self, scores: np.ndarray) -> np.ndarray:
        return log_softmax(scores, axis=1)

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        # unnormalized logits (the pinned parametrization), one row per depth
        rows = _pin_last(theta.reshape(tree.horizon, tree.n_tokens - 1))  # (H, A)
        return _broadcast_rows(tree, rows)

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        # d/dtheta_h(a) = sum over the states of depth h of dF/dlogit(s, a), a < A - 1
        return np.stack([grad.sum(axis=0)[:-1] for grad in grad_logits]).reshape(-1)

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        if divergence != "forward":
            return None
        counts = _log_token_counts(target)  # (H, A)
        return self.policy_of_rows(target.tree, counts - logsumexp(counts, axis=1, keepdims=True))


class UnigramFamily(ProductFamily):
    """``pi(a | s) = softmax(theta)(a)`` for every state: ``theta`` is ``(A - 1,)``.

    Forward closed form: ``pi(a) = (1/(n_prompts H)) sum_h sum_{s at depth h} d_target(s)
    target(a | s)``, the target's expected count of token ``a`` over all positions.
    Mean-field map: ``rho = softmax((1/H) sum_h c_h)`` (the one row enters all ``H`` factors).
    """

    name = "unigram"

    def n_parameters(self, tree: TokenTree) -> int:
        return tree.n_tokens - 1

    def log_rows(self, tree: TokenTree, theta: np.ndarray) -> np.ndarray:
        row = log_softmax(_pin_last(theta))  # (A,)
        return np.broadcast_to(row, (tree.horizon, tree.n_tokens))

    def theta_of(self, log_rows: np.ndarray) -> np.ndarray:
        return log_rows[0, :-1] - log_rows[0, -1]

    def mean_field_map(self, scores: np.ndarray) -> np.ndarray:
        return np.broadcast_to(log_softmax(scores.mean(axis=0)), scores.shape)

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        row = _pin_last(theta)  # (A,)
        return [
            np.broadcast_to(row, (tree.level_size(h), tree.n_tokens)) for h in range(tree.horizon)
        ]

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        return sum(grad.sum(axis=0) for grad in grad_logits)[:-1]

    def closed_form(self, target: Policy, divergence: str) -> Policy | None:
        if divergence != "forward":
            return None
        row = logsumexp(_log_token_counts(target), axis=0)  # log sum_h c_h(a): (A,)
        row = row - logsumexp(row)
        return self.policy_of_rows(
            target.tree, np.broadcast_to(row, (target.tree.horizon, target.tree.n_tokens))
        )


class LogLinearFamily(Family):
    """``logit(s, a) = phi(s, a) . theta`` for fixed features ``phi``.

    Args:
        features: one array per level ``h = 0..H-1`` of shape ``(level_size(h), A, K)``.

    No closed form: both projections are numerical (the forward one is convex in ``theta``).
    Position and unigram are the special cases of one-hot features of ``(h, a)`` and ``a``.
    """

    name = "log-linear"

    def __init__(self, features: Sequence[np.ndarray]) -> None:
        arrays = [np.asarray(table, dtype=np.float64) for table in features]
        if not arrays or any(table.ndim != 3 for table in arrays):
            raise ValueError(
                "features must be a list of (level_size(h), A, K) arrays, one per level"
            )
        if len({table.shape[2] for table in arrays}) != 1:
            raise ValueError("features must have the same number K of features on every level")
        if not all(np.isfinite(table).all() for table in arrays):
            raise ValueError("features must be finite")
        self.features = arrays

    def _check(self, tree: TokenTree) -> None:
        shapes = [(tree.level_size(h), tree.n_tokens) for h in range(tree.horizon)]
        if [table.shape[:2] for table in self.features] != shapes:
            raise ValueError(
                f"features must have shapes (level_size(h), A, K) = {shapes} x K for this tree"
            )

    def n_parameters(self, tree: TokenTree) -> int:
        self._check(tree)
        return self.features[0].shape[2]

    def logits(self, tree: TokenTree, theta: np.ndarray) -> list[np.ndarray]:
        return [table @ theta for table in self.features]  # (level_size(h), A)

    def logits_adjoint(self, tree: TokenTree, grad_logits: list[np.ndarray]) -> np.ndarray:
        return sum(
            np.einsum("iak,ia->k", table, grad)
            for table, grad in zip(self.features, grad_logits, strict=True)
        )

    def __repr__(self) -> str:
        return f"LogLinearFamily(K={self.features[0].shape[2]})"


#: The families known by name.
FAMILIES: dict[str, Family] = {
    family.name: family for family in (FullFamily(), PositionFamily(), UnigramFamily())
}
