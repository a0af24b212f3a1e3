"""Preference data and the Bradley-Terry model that generates it (lecture section 3).

The lecture learns the reward from a dataset of comparisons ``D = {(s_0, s_H^+, s_H^-)}``: a
prompt, a preferred ("chosen") and a dispreferred ("rejected") complete generation of that
prompt. The data is modelled by Bradley-Terry,

    P_r(s_H^+ > s_H^- | s_0) = 1 / (1 + exp(r(s_H^-) - r(s_H^+))) = sigma(r(s_H^+) - r(s_H^-)),

which the lecture calls a "polite fiction": here it is exactly how :func:`sample_preferences`
labels pairs, so the fitted reward can be compared with the true one.

:class:`Preferences` holds the dataset as flat arrays of canonical leaf indices (DESIGN.md),
with an optional non-negative weight per pair: a weight lets a whole population of pairs be
passed with its exact probabilities (:func:`population_preferences`) instead of samples.
It reads and writes the preference format of TRL's reward and DPO trainers: JSON lines with
string columns ``"prompt"``, ``"chosen"``, ``"rejected"`` (a completion is its tokens joined
by the tree's separator) and an optional ``"weight"``.

References:
    R. A. Bradley and M. E. Terry, "Rank analysis of incomplete block designs: I. The method
    of paired comparisons", Biometrika 39 (1952).
    L. von Werra et al., "TRL: Transformer Reinforcement Learning", github.com/huggingface/trl
    (dataset formats: the "standard preference" format).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, log_expit

from .memory import FLOAT_BYTES, check_memory
from .policy import Policy
from .tree import TokenTree
from .validation import check_leaf_array, check_positive_int, check_tree, make_rng

#: Bytes per pair that :func:`population_preferences` allocates (three int64 index arrays,
#: a float64 weight and one float64 temporary).
_POPULATION_BYTES_PER_PAIR = 5 * FLOAT_BYTES


@dataclass(frozen=True, init=False, eq=False)
class Preferences:
    """A dataset of comparisons ``(s_0, s_H^+, s_H^-)`` as flat arrays.

    Args:
        prompt: ``(n,)`` prompt index of each pair.
        chosen: ``(n,)`` canonical leaf index of the preferred generation ``s_H^+``.
        rejected: ``(n,)`` leaf index of the dispreferred generation ``s_H^-``.
        weight: ``(n,)`` finite weights ``>= 0`` (default 1 for every pair). A pair with
            weight ``w`` counts as ``w`` observations in the likelihood.
        tree: optional :class:`TokenTree`; when given, the indices are also checked against
            it (see :meth:`check`). Functions that take a tree check it again.

    A pair whose chosen and rejected generation coincide is legal (two independent samples
    can be equal) and carries no information about the reward.

    The arrays are stored as read-only int64/float64 copies.

    Raises:
        TypeError: indices that are not integers, weights that are not real numbers.
        ValueError: arrays that are not 1-D or differ in length, negative indices,
            non-finite or negative weights; with ``tree``: see :meth:`check`.

    Example:
        >>> tree = TokenTree(["a", "b"], horizon=1, prompts=["x", "y"])
        >>> Preferences([0, 1], chosen=[0, 3], rejected=[1, 2], tree=tree)
        Preferences(n=2, total_weight=2, prompts=2, leaves=4)
    """

    prompt: np.ndarray
    chosen: np.ndarray
    rejected: np.ndarray
    weight: np.ndarray

    def __init__(
        self,
        prompt: object,
        chosen: object,
        rejected: object,
        weight: object = None,
        *,
        tree: TokenTree | None = None,
    ) -> None:
        arrays = {
            name: _index_array(values, name)
            for name, values in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected))
        }
        lengths = {name: array.shape[0] for name, array in arrays.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(
                f"prompt, chosen and rejected must have the same length (one entry per pair), "
                f"got lengths {lengths}"
            )
        n = lengths["prompt"]
        if weight is None:
            weights = np.ones(n)
        else:
            weights = _weight_array(weight, n)
        object.__setattr__(self, "prompt", _read_only(arrays["prompt"]))
        object.__setattr__(self, "chosen", _read_only(arrays["chosen"]))
        object.__setattr__(self, "rejected", _read_only(arrays["rejected"]))
        object.__setattr__(self, "weight", _read_only(weights))
        if tree is not None:
            self.check(tree)

    @classmethod
    def _trusted(
        cls, prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, weight: np.ndarray
    ) -> Preferences:
        """Build without validation: for arrays the package made itself."""
        prefs = object.__new__(cls)
        object.__setattr__(prefs, "prompt", _read_only(np.asarray(prompt, dtype=np.int64)))
        object.__setattr__(prefs, "chosen", _read_only(np.asarray(chosen, dtype=np.int64)))
        object.__setattr__(prefs, "rejected", _read_only(np.asarray(rejected, dtype=np.int64)))
        object.__setattr__(prefs, "weight", _read_only(np.asarray(weight, dtype=np.float64)))
        return prefs

    # ---------------------------------------------------------------------- validation
    def check(self, tree: TokenTree, name: str = "prefs") -> Preferences:
        """Check the indices against ``tree``; return ``self``.

        Every index must be in range, each pair's chosen and rejected leaves must lie under
        its prompt (``leaf // A**H == prompt``, canonical indexing) and, on a tree with
        ``eos``, have no token after the end token.

        Raises:
            TypeError: ``tree`` is not a TokenTree.
            ValueError: naming the first offending pair.
        """
        tree = check_tree(tree)
        for field, bound in (
            ("prompt", tree.n_prompts),
            ("chosen", tree.n_leaves),
            ("rejected", tree.n_leaves),
        ):
            values = getattr(self, field)
            bad = np.flatnonzero(values >= bound)
            if bad.size:
                k = int(bad[0])
                raise ValueError(
                    f"{name}.{field}[{k}] = {int(values[k])} is out of range: the tree has "
                    f"{bound} {'prompts' if field == 'prompt' else 'leaves'}"
                )
        if tree.eos is not None:  # no completion continues after the end token
            valid = tree.valid_leaves()  # (n_leaves,)
            for field in ("chosen", "rejected"):
                bad = np.flatnonzero(~valid[getattr(self, field)])
                if bad.size:
                    k = int(bad[0])
                    leaf = int(getattr(self, field)[k])
                    raise ValueError(
                        f"{name} pair {k}: {field} leaf {leaf} has tokens after the end token "
                        f"{tree.eos!r}; no policy produces it"
                    )
        for field in ("chosen", "rejected"):
            leaf_prompt = getattr(self, field) // tree.leaves_per_prompt  # (n,)
            bad = np.flatnonzero(leaf_prompt != self.prompt)
            if bad.size:
                k = int(bad[0])
                leaf = int(getattr(self, field)[k])
                raise ValueError(
                    f"{name} pair {k}: {field} leaf {leaf} is a generation of prompt "
                    f"{tree.prompts[int(leaf_prompt[k])]!r} (index {int(leaf_prompt[k])}), "
                    f"but the pair's prompt is {int(self.prompt[k])}; chosen and rejected "
                    "must be completions of the pair's prompt"
                )
        return self

    # ------------------------------------------------------------------------ container
    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    def __getitem__(self, index: object) -> Preferences:
        """A subset of pairs: ``prefs[:1000]``, ``prefs[mask]``, ``prefs[[3, 1, 4]]``."""
        if isinstance(index, (numbers.Integral, np.integer)) and not isinstance(index, bool):
            index = slice(int(index), int(index) + 1 if int(index) != -1 else None)
        try:
            return Preferences._trusted(
                self.prompt[index], self.chosen[index], self.rejected[index], self.weight[index]
            )
        except IndexError as error:
            raise IndexError(f"bad index into {len(self)} preference pairs: {error}") from None

    @property
    def total_weight(self) -> float:
        """``sum w``: the number of pairs when every weight is 1."""
        return float(self.weight.sum())

    def __repr__(self) -> str:
        n_prompts = int(np.unique(self.prompt).size)
        n_leaves = int(np.unique(np.concatenate([self.chosen, self.rejected])).size)
        return (
            f"Preferences(n={len(self)}, total_weight={self.total_weight:.6g}, "
            f"prompts={n_prompts}, leaves={n_leaves})"
        )

    # ---------------------------------------------------------------------------- JSONL
    def to_jsonl(self, path: str | os.PathLike, tree: TokenTree) -> None:
        """Write TRL's preference format: one ``{"prompt", "chosen", "rejected"}`` per line.

        Strings are the tree's prompt and the completions' texts (``tree.leaf_text``: tokens
        joined by ``tree.separator``); ``"weight"`` is written on every line when any weight
        differs from 1. The file is written to a temporary file in the same directory and
        then renamed over ``path`` (``os.replace``), so a reader never sees half a file.

        Raises:
            TypeError: ``tree`` is not a TokenTree.
            ValueError: the pairs do not fit ``tree`` (see :meth:`check`).
            OSError: the directory is not writable.
        """
        self.check(tree)
        leaves, inverse = np.unique(
            np.concatenate([self.chosen, self.rejected]), return_inverse=True
        )
        texts = [tree.leaf_text(int(leaf))[1] for leaf in leaves]  # one per distinct leaf
        chosen_text = [texts[k] for k in inverse[: len(self)].tolist()]
        rejected_text = [texts[k] for k in inverse[len(self) :].tolist()]
        write_weight = bool((self.weight != 1.0).any())
        lines = []
        for k, p in enumerate(self.prompt.tolist()):
            record = {
                "prompt": tree.prompts[p],
                "chosen": chosen_text[k],
                "rejected": rejected_text[k],
            }
            if write_weight:
                record["weight"] = float(self.weight[k])
            lines.append(json.dumps(record, ensure_ascii=False))
        _atomic_write_text(path, "".join(line + "\n" for line in lines))

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, tree: TokenTree) -> Preferences:
        """Read TRL's preference format (see :meth:`to_jsonl`); blank lines are skipped.

        Each line must be a JSON object with string ``"prompt"`` (one of ``tree.prompts``),
        ``"chosen"`` and ``"rejected"`` (completions of exactly ``H`` of the tree's tokens
        joined by its separator; on a tree with ``eos``, a completion may stop early with
        ``eos``, as ``tree.leaf_text`` writes it), and optionally a finite ``"weight" >= 0`` (default 1).
        Other keys are ignored. The whole file is checked before anything is returned.

        Raises:
            TypeError: ``tree`` is not a TokenTree.
            ValueError: ``"<path>:<line>: <what is wrong>"`` for the first bad line: bad JSON,
                not an object, a missing key, a non-string value, an unknown prompt, a
                completion that is not a path in the tree or has the wrong length, a bad
                weight.
            OSError: the file cannot be read.
        """
        tree = check_tree(tree)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        prompts: list[int] = []
        chosen: list[int] = []
        rejected: list[int] = []
        weights: list[float] = []
        prompt_ids = {prompt: p for p, prompt in enumerate(tree.prompts)}
        leaf_offsets: dict[str, int] = {}  # completion text -> index within its prompt
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{os.fspath(path)}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{where}: bad JSON ({error.msg} at column {error.colno})"
                ) from None
            if not isinstance(record, dict):
                raise ValueError(
                    f"{where}: expected a JSON object with keys 'prompt', 'chosen', 'rejected', "
                    f"got {type(record).__name__}"
                )
            for key in ("prompt", "chosen", "rejected"):
                if key not in record:
                    raise ValueError(
                        f"{where}: missing key {key!r} (each line needs 'prompt', 'chosen' "
                        "and 'rejected')"
                    )
                if not isinstance(record[key], str):
                    raise ValueError(
                        f"{where}: {key!r} must be a string, got {type(record[key]).__name__} "
                        "(tinyrlhf reads TRL's standard preference format, not the "
                        "conversational one)"
                    )
            p = prompt_ids.get(record["prompt"])
            if p is None:
                raise ValueError(
                    f"{where}: unknown prompt {record['prompt']!r}; the tree's prompts are "
                    f"{tree.prompts}"
                )
            pair = []
            for key in ("chosen", "rejected"):
                completion = record[key]
                offset = leaf_offsets.get(completion)
                if offset is None:
                    offset = _completion_offset(tree, completion, f"{where}: {key!r}")
                    leaf_offsets[completion] = offset
                pair.append(p * tree.leaves_per_prompt + offset)
            weight = record.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise ValueError(
                    f"{where}: 'weight' must be a number, got {type(weight).__name__}"
                )
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{where}: 'weight' must be finite and >= 0, got {weight!r}")
            prompts.append(p)
            chosen.append(pair[0])
            rejected.append(pair[1])
            weights.append(float(weight))
        return cls._trusted(
            np.array(prompts, dtype=np.int64),
            np.array(chosen, dtype=np.int64),
            np.array(rejected, dtype=np.int64),
            np.array(weights, dtype=np.float64),
        )


# ------------------------------------------------------------------------------ sampling
def preference_probability(reward_chosen: np.ndarray, reward_rejected: np.ndarray) -> np.ndarray:
    """The Bradley-Terry probability that one completion is preferred to another.

        P(y+ > y-) = sigma(r(y+) - r(y-)) = 1 / (1 + exp(-(r(y+) - r(y-))))

    (lecture section 3; Bradley and Terry 1952), computed by ``scipy.special.expit`` so that
    huge margins give 0 or 1 without overflow. Arrays broadcast; returns float64.
    """
    return expit(np.subtract(reward_chosen, reward_rejected, dtype=np.float64))


def log_preference_probability(
    reward_chosen: np.ndarray, reward_rejected: np.ndarray
) -> np.ndarray:
    """``log sigma(r(y+) - r(y-))``, the log of :func:`preference_probability`, stable for
    margins of any size (``scipy.special.log_expit``)."""
    return log_expit(np.subtract(reward_chosen, reward_rejected, dtype=np.float64))


def sample_preferences(
    tree: TokenTree,
    reward: np.ndarray,
    n: int,
    *,
    policy: Policy | None = None,
    seed: int | np.random.Generator | None,
    prompt: str | int | np.ndarray | None = None,
) -> Preferences:
    """Sample ``n`` comparisons labelled by Bradley-Terry under the reward ``r``.

    For each pair: a prompt ``s_0`` (uniform over the tree's prompts unless ``prompt`` is
    given), two independent completions ``y_1, y_2 ~ P_policy(. | s_0)``, and the label

        P(y_1 > y_2) = sigma(r(y_1) - r(y_2)),

    drawn as ``log u < log_expit(r(y_1) - r(y_2))`` with ``u ~ U(0, 1]`` (exact in log space,
    no overflow for any reward gap). The winner becomes ``chosen``. ``y_1 = y_2`` happens
    with probability ``sum P(y)^2`` and is kept (an honest, uninformative sample).

    Args:
        tree: the token tree.
        reward: ``(n_leaves,)`` finite true rewards ``r``.
        n: number of pairs ``>= 0``.
        policy: the policy that generates completions (``Policy.uniform(tree)`` if None:
            every leaf of a prompt equally likely on a tree without ``eos``).
        seed: int, ``numpy.random.Generator`` or None (required, keyword-only).
        prompt: None (uniform), one prompt (string or index) for every pair, or an
            ``(n,)`` int array of prompt indices.

    Returns:
        :class:`Preferences` with unit weights.

    Raises:
        TypeError/ValueError: bad tree, reward, n, policy, prompt or seed.
    """
    tree = check_tree(tree)
    reward = check_leaf_array(tree, reward, "reward")
    n = check_positive_int(n, "n", minimum=0)
    if policy is not None:
        _check_policy(tree, policy)
    elif tree.eos is not None:  # the uniform policy, with its rows forced after eos
        policy = Policy.uniform(tree)
    rng = make_rng(seed)
    prompts = _prompt_indices(tree, prompt, n, rng)  # (n,)
    first = _sample_leaves(tree, policy, prompts, rng)  # (n,) leaf indices y_1
    second = _sample_leaves(tree, policy, prompts, rng)  # (n,) y_2
    # y_1 wins with probability sigma(r(y_1) - r(y_2)); u in (0, 1] so log u is finite
    u = 1.0 - rng.random(n)
    first_wins = np.log(u) < log_preference_probability(reward[first], reward[second])
    chosen = np.where(first_wins, first, second)
    rejected = np.where(first_wins, second, first)
    return Preferences._trusted(prompts, chosen, rejected, np.ones(n))


def population_preferences(
    tree: TokenTree, reward: np.ndarray, *, policy: Policy | None = None
) -> Preferences:
    """Every ordered pair of distinct completions, weighted by its exact probability.

    The expected dataset of one draw of :func:`sample_preferences` (uniform prompts): the
    pair (chosen ``i``, rejected ``j``), ``i != j`` under the same prompt, has weight

        w(i, j) = (1 / P) * 2 P_policy(i) P_policy(j) sigma(r(i) - r(j)),

    the probability that the two samples are ``{i, j}`` and ``i`` wins. Pairs of weight 0
    (a completion the policy never produces) and ties ``i = j`` (which carry no
    information) are left out, so the weights sum to ``1 - P(y_1 = y_2)``. With these
    weights the Bradley-Terry likelihood is the population likelihood, maximized exactly by
    the true reward (up to a constant per prompt) on the policy's support.

    Args:
        tree: the token tree.
        reward: ``(n_leaves,)`` finite rewards.
        policy: the sampling policy (uniform if None).

    Returns:
        :class:`Preferences` with ``P * L * (L - 1)`` pairs at most (``L = A**H``).

    Raises:
        ValueError: bad arguments, or the ``P * L**2`` pairs would not fit in memory.
    """
    tree = check_tree(tree)
    reward = check_leaf_array(tree, reward, "reward")
    leaves = tree.leaves_per_prompt
    n_pairs = tree.n_prompts * leaves * leaves
    check_memory(n_pairs * _POPULATION_BYTES_PER_PAIR, f"the {n_pairs:,} ordered pairs of leaves")
    if policy is None and tree.eos is None:
        log_pi = np.full(tree.n_leaves, -np.log(leaves))
    elif policy is None:
        log_pi = Policy.uniform(tree).leaf_log_probs()
    else:
        _check_policy(tree, policy)
        log_pi = policy.leaf_log_probs()
    shape = (tree.n_prompts, leaves, leaves)
    offset = np.arange(leaves, dtype=np.int64)
    base = (np.arange(tree.n_prompts, dtype=np.int64) * leaves)[:, None, None]  # (P, 1, 1)
    # entry [p, a, b] of the (P, L, L) grid is the pair (chosen p*L + a, rejected p*L + b)
    chosen = np.broadcast_to(base + offset[None, :, None], shape).reshape(-1)
    rejected = np.broadcast_to(base + offset[None, None, :], shape).reshape(-1)
    # log w = log 2 - log P + log P(i) + log P(j) + log sigma(r(i) - r(j)); -inf stays -inf
    log_weight = (
        np.log(2.0 / tree.n_prompts)
        + log_pi[chosen]
        + log_pi[rejected]
        + log_preference_probability(reward[chosen], reward[rejected])
    )
    weight = np.exp(log_weight)
    keep = (chosen != rejected) & (weight > 0)
    return Preferences._trusted(chosen[keep] // leaves, chosen[keep], rejected[keep], weight[keep])


# ------------------------------------------------------------------------------- helpers
def _prompt_indices(
    tree: TokenTree, prompt: object, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n,)`` int64 prompt indices: uniform, one given prompt, or a checked array."""
    if prompt is None:
        return rng.integers(0, tree.n_prompts, size=n, dtype=np.int64)
    if isinstance(prompt, (str, numbers.Integral, np.integer)) and not isinstance(prompt, bool):
        return np.full(n, tree.prompt_index(prompt), dtype=np.int64)
    array = np.asarray(prompt)
    if array.shape != (n,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"prompt must be None, one prompt (string or index), or an ({n},) int array of "
            f"prompt indices; got {type(prompt).__name__} of shape {array.shape}"
        )
    if array.size and (array.min() < 0 or array.max() >= tree.n_prompts):
        raise ValueError(f"prompt indices must be in 0..{tree.n_prompts - 1}")
    return array.astype(np.int64)


def _sample_leaves(
    tree: TokenTree, policy: Policy | None, prompts: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One completion per entry of ``prompts`` (``(n,)``), drawn from ``P_policy(. | s_0)``.

    Inverse-CDF sampling on each prompt's leaf distribution: one ``searchsorted`` per prompt
    (the loop runs over prompts, never over leaves or pairs).
    """
    leaves = tree.leaves_per_prompt
    n = prompts.shape[0]
    if policy is None:  # uniform without eos: the A**H leaves are equally likely
        return prompts * leaves + rng.integers(0, leaves, size=n, dtype=np.int64)
    cdf = np.cumsum(policy.leaf_probs().reshape(tree.n_prompts, leaves), axis=1)  # (P, L)
    # u in (0, 1] times the row total: the first leaf with cdf >= target has positive
    # probability (a zero-probability leaf repeats the previous cdf value).
    target = (1.0 - rng.random(n)) * cdf[prompts, -1]
    offset = np.empty(n, dtype=np.int64)
    order = np.argsort(prompts, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(prompts, minlength=tree.n_prompts))])
    for p in np.flatnonzero(np.diff(bounds)):
        rows = order[bounds[p] : bounds[p + 1]]
        offset[rows] = np.searchsorted(cdf[p], target[rows], side="left")
    return prompts * leaves + np.minimum(offset, leaves - 1)


def _check_policy(tree: TokenTree, policy: object) -> None:
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a tinyrlhf.Policy or None, got {type(policy).__name__}")
    if policy.tree != tree:
        raise ValueError("policy must be a policy on the same TokenTree as tree")


def _completion_offset(tree: TokenTree, completion: str, where: str) -> int:
    """Index of a completion's leaf within its prompt (canonical order), or ValueError."""
    try:
        tokens = tree.parse(completion)
    except ValueError as error:
        raise ValueError(f"{where}: not a path in the tree: {error}") from None
    if tree.eos is not None and tree.eos in tokens:
        end = tokens.index(tree.eos)
        if end != len(tokens) - 1:
            raise ValueError(
                f"{where}: completion {completion!r} continues after the end token {tree.eos!r}"
            )
        tokens = tokens + (tree.eos,) * (tree.horizon - len(tokens))  # pad, as leaf_index does
    if len(tokens) != tree.horizon:
        ending = "" if tree.eos is None else f" (or fewer, ending with {tree.eos!r})"
        raise ValueError(
            f"{where}: completion {completion!r} has {len(tokens)} tokens, but every "
            f"completion must have exactly H = {tree.horizon}{ending}"
        )
    offset = 0
    for token in tokens:
        offset = offset * tree.n_tokens + tree.tokens.index(token)
    return offset


def _atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then ``os.replace`` it."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    descriptor, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(os.fspath(path))}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _index_array(values: object, name: str) -> np.ndarray:
    """A 1-D int64 array of non-negative indices (an empty sequence is allowed)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of indices, got shape {array.shape}")
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer indices, got dtype {array.dtype}")
    if array.min() < 0:
        k = int(np.flatnonzero(array < 0)[0])
        raise ValueError(f"{name}[{k}] = {int(array[k])} is negative; indices must be >= 0")
    return array.astype(np.int64)


def _weight_array(weight: object, n: int) -> np.ndarray:
    try:
        array = np.asarray(weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"weight must be an array of real numbers, got {type(weight).__name__}"
        ) from None
    if array.shape != (n,):
        raise ValueError(f"weight must have shape ({n},), one per pair, got {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        k = int(bad[0])
        raise ValueError(f"weight[{k}] = {array[k]!r}; weights must be finite and >= 0")
    return array


def _read_only(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.flags.writeable = False
    return array
