"""Language as a tree-structured MDP (lecture section 1).

The lecture's MDP ``M = {S, A, T, r, P_0, H}``: states are partial generations (strings of
at most ``H`` tokens after a prompt), actions are tokens, and the transition is the
deterministic, known concatenation ``T(s' | s, a) = 1[s' = s o a]``. So the state space of
one prompt is a complete ``A``-ary prefix tree of depth ``H`` with ``A**H`` leaves, the
complete generations ``s_H``.

Canonical flat indexing (DESIGN.md): the state (prompt ``p``, tokens ``a_1..a_h``) has index

    i = p * A**h + sum_k a_k * A**(h - k)        (first token most significant)

at level ``h``. Children of ``i`` are ``i * A + a``, its parent is ``i // A``, and an array
over level ``h + 1`` reshaped to ``(level_size(h), A)`` lines up with the rows of level ``h``.
Nothing here stores per-state data: a tree is just the sizes and the names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .kernels import row_logsumexp
from .memory import check_tree_size


@dataclass(frozen=True, init=False)
class TokenTree:
    """The prefix tree of all generations of at most ``horizon`` tokens, one per prompt.

    Args:
        tokens: the action alphabet ``A``: distinct, non-empty strings, numbered in order.
        horizon: the maximum generation length ``H >= 1``; leaves have exactly ``H`` tokens.
        prompts: the initial states ``s_0`` (distinct strings; ``("",)`` by default).
        separator: joins tokens into text. Default ``""`` when every token is one
            character, else ``" "``.
        eos: optional end-of-sequence token (one of ``tokens``). After it only ``eos``
            follows, with probability one in every policy ("forced rows", see
            :meth:`ended_states`), so a leaf is a completion of length ``<= H`` padded with
            ``eos`` and rewards can depend on length. Keyword-only.

    Raises:
        TypeError: tokens/prompts not strings, horizon not an integer.
        ValueError: empty or duplicate tokens or prompts, ``horizon < 1``, an ambiguous
            separator, or a tree so large that one float64 per state would not fit in the
            memory budget (see :mod:`tinyrlhf.memory`).

    Example:
        >>> tree = TokenTree(["a", "b"], horizon=2, prompts=["x", "y"])
        >>> tree.n_leaves, tree.leaf_index("y", ("b", "a"))
        (8, 6)
    """

    tokens: tuple[str, ...]
    horizon: int
    prompts: tuple[str, ...]
    separator: str
    eos: str | None

    def __init__(
        self,
        tokens: Sequence[str],
        horizon: int,
        prompts: Sequence[str] = ("",),
        separator: str | None = None,
        *,
        eos: str | None = None,
    ) -> None:
        tokens = _as_string_tuple(tokens, "tokens")
        if len(tokens) == 0:
            raise ValueError("tokens must hold at least one token, got an empty sequence")
        if any(token == "" for token in tokens):
            raise ValueError("tokens must be non-empty strings; remove the empty token ''")
        _require_distinct(tokens, "tokens")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)):
            raise TypeError(f"horizon must be an integer >= 1, got {horizon!r}")
        horizon = int(horizon)
        if horizon < 1:
            raise ValueError(
                f"horizon must be >= 1 (the maximum generation length), got {horizon}"
            )
        if isinstance(prompts, str):
            raise TypeError(f"prompts must be a sequence of strings, got the string {prompts!r}")
        prompts = _as_string_tuple(prompts, "prompts")
        if len(prompts) == 0:
            raise ValueError("prompts must hold at least one prompt (use ('',) for none)")
        _require_distinct(prompts, "prompts")
        if separator is None:
            separator = "" if all(len(token) == 1 for token in tokens) else " "
        if not isinstance(separator, str):
            raise TypeError(f"separator must be a string, got {type(separator).__name__}")
        if separator == "" and not all(len(token) == 1 for token in tokens):
            raise ValueError(
                "separator='' is ambiguous with multi-character tokens; pass separator=' '"
            )
        if separator and any(separator in token for token in tokens):
            raise ValueError(
                f"separator {separator!r} occurs inside a token; choose another separator"
            )
        object.__setattr__(self, "tokens", tokens)
        object.__setattr__(self, "horizon", horizon)
        object.__setattr__(self, "prompts", prompts)
        object.__setattr__(self, "separator", separator)
        if eos is not None and eos not in tokens:
            raise ValueError(
                f"eos token {eos!r} is not one of the tokens {tokens}; add it to tokens"
            )
        object.__setattr__(self, "eos", eos)
        # the one memory guard: refuse up front a tree whose per-state arrays would not fit
        check_tree_size(len(prompts), len(tokens), horizon)

    # ----------------------------------------------------------------------------- sizes
    @property
    def n_tokens(self) -> int:
        """``|A|``, the number of tokens."""
        return len(self.tokens)

    @property
    def n_prompts(self) -> int:
        """The number of prompts (trees)."""
        return len(self.prompts)

    def level_size(self, h: int) -> int:
        """Number of states at level ``h``: ``n_prompts * A**h`` (``0 <= h <= H``)."""
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)):
            raise TypeError(f"level h must be an integer, got {h!r}")
        if not 0 <= h <= self.horizon:
            raise ValueError(f"level h must be in 0..{self.horizon}, got {h}")
        return self.n_prompts * self.n_tokens ** int(h)

    @property
    def n_leaves(self) -> int:
        """Number of complete generations over all prompts: ``n_prompts * A**H``."""
        return self.level_size(self.horizon)

    @property
    def leaves_per_prompt(self) -> int:
        """``A**H``, the complete generations of one prompt."""
        return self.n_tokens**self.horizon

    @property
    def n_states(self) -> int:
        """Number of states on all levels ``0..H`` of all prompts:
        ``n_prompts (A^{H+1} - 1) / (A - 1)`` (``n_prompts (H + 1)`` when ``A = 1``)."""
        if self.n_tokens == 1:
            return self.n_prompts * (self.horizon + 1)
        return self.n_prompts * (self.n_tokens ** (self.horizon + 1) - 1) // (self.n_tokens - 1)

    # ----------------------------------------------------------------- backward passes
    def subtree_sums(self, leaf_values: np.ndarray) -> list[np.ndarray]:
        """Sums over subtrees, one backward pass: ``M_H = x``, ``M_h(s) = sum_a M_{h+1}(s o a)``.

        The tree's linear backward primitive: with ``x = P(xi) C(xi)`` it gives the subtree
        expectations that every score-function gradient needs.

        Args:
            leaf_values: ``(n_leaves,)`` real values ``x(xi)`` (finite; callers mask
                unreached leaves to 0 first).

        Returns:
            ``H + 1`` arrays ``M_0..M_H``, ``M_h`` of shape ``(level_size(h),)``; ``M_H`` is
            ``leaf_values`` itself (as float64), ``M_0`` the per-prompt totals.
        """
        sums = [np.asarray(leaf_values, dtype=np.float64)]
        for h in range(self.horizon - 1, -1, -1):
            # (level_size(h), A) -> (level_size(h),)
            sums.append(_row_sums(sums[-1].reshape(self.level_size(h), self.n_tokens)))
        return sums[::-1]

    def subtree_logsumexps(self, leaf_log_values: np.ndarray) -> list[np.ndarray]:
        """Log-sums over subtrees: ``U_H = w``, ``U_h(s) = log sum_a exp U_{h+1}(s o a)``.

        The log-space twin of :meth:`subtree_sums` (``-inf`` leaves allowed, a subtree of
        only ``-inf`` leaves gives ``-inf`` without a warning); one backward pass.

        Args:
            leaf_log_values: ``(n_leaves,)`` log-weights ``w(xi)``, finite or ``-inf``.

        Returns:
            ``H + 1`` arrays ``U_0..U_H``, ``U_h`` of shape ``(level_size(h),)``.
        """
        sums = [np.asarray(leaf_log_values, dtype=np.float64)]
        for h in range(self.horizon - 1, -1, -1):
            # (level_size(h), A) -> (level_size(h),)
            sums.append(row_logsumexp(sums[-1].reshape(self.level_size(h), self.n_tokens)))
        return sums[::-1]

    # ------------------------------------------------------------------------- indexing
    def prompt_index(self, prompt: str | int) -> int:
        """Index of ``prompt`` (a prompt string, or an index that is checked)."""
        if isinstance(prompt, (int, np.integer)) and not isinstance(prompt, bool):
            if not 0 <= prompt < self.n_prompts:
                raise ValueError(f"prompt index must be in 0..{self.n_prompts - 1}, got {prompt}")
            return int(prompt)
        try:
            return self.prompts.index(prompt)
        except ValueError:
            raise ValueError(
                f"unknown prompt {prompt!r}; the tree's prompts are {self.prompts}"
            ) from None

    def token_index(self, token: str) -> int:
        """Index of ``token`` in the alphabet."""
        try:
            return self.tokens.index(token)
        except ValueError:
            raise ValueError(
                f"unknown token {token!r}; the tree's tokens are {self.tokens}"
            ) from None

    def state_index(self, prompt: str | int, tokens: Sequence[str]) -> tuple[int, int]:
        """``(h, i)``: the level and canonical index of the state ``prompt o tokens``."""
        if isinstance(tokens, str):
            raise TypeError(f"tokens must be a sequence of token strings, got {tokens!r}")
        tokens = tuple(tokens)
        if len(tokens) > self.horizon:
            raise ValueError(f"a state has at most {self.horizon} tokens, got {len(tokens)}")
        index = self.prompt_index(prompt)
        for token in tokens:
            index = index * self.n_tokens + self.token_index(token)
        return len(tokens), index

    def leaf_index(self, prompt: str | int, tokens: Sequence[str]) -> int:
        """Canonical index of the complete generation ``prompt o tokens`` (``H`` tokens).

        On a tree with ``eos``, a completion that ends with ``eos`` may be shorter than ``H``;
        it is padded with ``eos`` (the only token that can follow).
        """
        if isinstance(tokens, str):
            raise TypeError(f"tokens must be a sequence of token strings, got {tokens!r}")
        tokens = tuple(tokens)
        if self.eos is not None and tokens and tokens[-1] == self.eos:
            tokens = tokens + (self.eos,) * (self.horizon - len(tokens))
        h, index = self.state_index(prompt, tokens)
        if h != self.horizon:
            raise ValueError(f"a leaf has exactly {self.horizon} tokens, got {h}: {tokens!r}")
        return index

    @property
    def eos_index(self) -> int | None:
        """Index of the ``eos`` token, or None on a tree without one."""
        return None if self.eos is None else self.tokens.index(self.eos)

    def ended_states(self, h: int) -> np.ndarray:
        """Which level-``h`` states contain ``eos`` (their rows are forced), ``(level_size(h),)``.

        ``ended_{h+1}(s o a) = ended_h(s) or a == eos``; all False on a tree without ``eos``.
        """
        size = self.level_size(h)
        ended = np.zeros(self.n_prompts, dtype=bool)
        if self.eos is None:
            return np.zeros(size, dtype=bool)
        for _ in range(h):
            # (level_size, 1) | (1, A) -> flatten to the next level
            ended = (
                ended[:, None] | (np.arange(self.n_tokens) == self.eos_index)[None, :]
            ).reshape(-1)
        return ended

    def valid_leaves(self) -> np.ndarray:
        """Leaves that some policy can produce, ``(n_leaves,)`` bool: after the first ``eos``
        only ``eos`` (all True without ``eos``)."""
        if self.eos is None:
            return np.ones(self.n_leaves, dtype=bool)
        tokens = self.leaf_token_indices() == self.eos_index  # (n_leaves, H)
        after_end = np.cumsum(tokens, axis=1) > 0
        return np.all(tokens | ~after_end, axis=1)

    def completion(self, tokens: Sequence[str]) -> tuple[str, ...]:
        """The completion a leaf stands for: its tokens up to, not including, the first ``eos``
        (all ``H`` tokens on a tree without ``eos``)."""
        tokens = tuple(tokens)
        if self.eos is not None and self.eos in tokens:
            return tokens[: tokens.index(self.eos)]
        return tokens

    def leaf_prompts(self) -> np.ndarray:
        """Prompt index of every leaf, ``(n_leaves,)`` int64."""
        return np.repeat(np.arange(self.n_prompts, dtype=np.int64), self.leaves_per_prompt)

    def leaf_token_indices(self) -> np.ndarray:
        """Token indices of every leaf, ``(n_leaves, H)`` int64 (column k is ``a_{k+1}``)."""
        leaf = np.arange(self.n_leaves, dtype=np.int64)
        powers = self.n_tokens ** np.arange(self.horizon - 1, -1, -1, dtype=np.int64)
        return (leaf[:, None] // powers[None, :]) % self.n_tokens  # (n_leaves, H)

    def leaves(self) -> list[tuple[str, tuple[str, ...]]]:
        """All complete generations as ``(prompt, tokens)`` in canonical order."""
        token_rows = self.leaf_token_indices().tolist()
        prompt_ids = self.leaf_prompts().tolist()
        return [
            (self.prompts[p], tuple(self.tokens[a] for a in row))
            for p, row in zip(prompt_ids, token_rows, strict=True)
        ]

    def leaf_values(self, fn: Callable[[str, tuple[str, ...]], float]) -> np.ndarray:
        """Evaluate ``fn(prompt, tokens)`` on every leaf: ``(n_leaves,)`` float64.

        On a tree with ``eos``, ``tokens`` is the leaf's :meth:`completion` (cut before the
        first ``eos``), so ``fn`` sees completions of length ``<= H``.

        Raises:
            TypeError: ``fn`` is not callable.
            ValueError: ``fn`` returned something that is not a finite real number.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable as fn(prompt, tokens), got {fn!r}")
        values = np.empty(self.n_leaves)
        for index, (prompt, leaf_tokens) in enumerate(self.leaves()):
            tokens = self.completion(leaf_tokens)
            value = fn(prompt, tokens)
            try:
                values[index] = value
            except (TypeError, ValueError):
                raise ValueError(
                    f"fn({prompt!r}, {tokens!r}) returned {value!r}, not a real number"
                ) from None
            if not np.isfinite(values[index]):
                raise ValueError(f"fn({prompt!r}, {tokens!r}) returned {value!r}, not finite")
        return values

    # ---------------------------------------------------------------------------- text
    def text(self, tokens: Sequence[str]) -> str:
        """A completion as text: its tokens joined by the separator."""
        return self.separator.join(tokens)

    def leaf_text(self, index: int) -> tuple[str, str]:
        """``(prompt, completion text)`` of leaf ``index``.

        On a tree with ``eos`` the text stops after the first ``eos`` (inclusive), so that
        ``leaf_index(prompt, parse(text))`` gives ``index`` back for valid leaves.
        """
        if not 0 <= index < self.n_leaves:
            raise ValueError(f"leaf index must be in 0..{self.n_leaves - 1}, got {index}")
        prompt, rest = divmod(int(index), self.leaves_per_prompt)
        reversed_tokens = []
        for _ in range(self.horizon):
            rest, a = divmod(rest, self.n_tokens)
            reversed_tokens.append(self.tokens[a])
        tokens = tuple(reversed(reversed_tokens))
        if self.eos is not None and self.eos in tokens:
            tokens = tokens[: tokens.index(self.eos) + 1]
        return self.prompts[prompt], self.text(tokens)

    def parse(self, text: str) -> tuple[str, ...]:
        """Split a completion's text back into tokens (inverse of :meth:`text`).

        Raises:
            ValueError: the text is not a sequence of the tree's tokens.
        """
        if not isinstance(text, str):
            raise TypeError(f"a completion must be a string, got {type(text).__name__}")
        if text == "":
            return ()
        pieces = list(text) if self.separator == "" else text.split(self.separator)
        unknown = [piece for piece in pieces if piece not in self.tokens]
        if unknown:
            raise ValueError(
                f"completion {text!r} is not made of the tokens {self.tokens} joined by "
                f"{self.separator!r} (unknown piece {unknown[0]!r})"
            )
        return tuple(pieces)

    def __repr__(self) -> str:
        return (
            f"TokenTree(tokens={self.tokens!r}, horizon={self.horizon}, "
            f"prompts={self.prompts!r}, separator={self.separator!r}"
            + ("" if self.eos is None else f", eos={self.eos!r}")
            + ")  "
            f"# {self.n_leaves:,} leaves, {self.n_states:,} states"
        )


def _as_string_tuple(values: Sequence[str], name: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise TypeError(
            f"{name} must be a sequence of strings, got the string {values!r}; "
            f"pass e.g. list({values!r})"
        )
    try:
        values = tuple(values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of strings, got {values!r}") from None
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{name} must all be strings, got {value!r} ({type(value).__name__})")
    return values


def _require_distinct(values: tuple[str, ...], name: str) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{name} must be distinct; {value!r} appears more than once")
        seen.add(value)


#: Below this many tokens numpy sums a short row sequentially, so adding the columns one by
#: one gives the same bits as ``.sum(axis=1)``, whose inner loop runs once per row (4x
#: slower at A = 2; measured at 2**20 leaves: 5 ms against 20 ms for all levels).
SEQUENTIAL_ROW_TOKENS = 8


def _row_sums(rows: np.ndarray) -> np.ndarray:
    """``rows.sum(axis=1)`` of an ``(n, A)`` array, bit for bit, column by column when
    ``A < SEQUENTIAL_ROW_TOKENS``: ``(n,)``."""
    if rows.shape[1] >= SEQUENTIAL_ROW_TOKENS:
        return rows.sum(axis=1)
    total = rows[:, 0] + 0.0  # a fresh array; + 0.0 turns -0.0 into 0.0, as numpy's sum does
    for a in range(1, rows.shape[1]):
        total += rows[:, a]  # ((x_0 + x_1) + x_2) + ..., numpy's order for short rows
    return total
