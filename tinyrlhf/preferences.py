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

import math
import numbers
import os
from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy.special import expit, log_expit

from .jsonl import check_path, read_jsonl, short_repr, write_jsonl
from .memory import FLOAT_BYTES, check_memory, format_count
from .policy import Policy
from .tree import TokenTree
from .validation import (
    check_leaf_array,
    check_policy_on,
    check_positive_int,
    check_tree,
    make_rng,
    read_only,
)

#: Bytes per pair that :func:`population_preferences` allocates (three int64 index arrays,
#: a float64 weight and one float64 temporary).
_POPULATION_BYTES_PER_PAIR = 5 * FLOAT_BYTES
#: Bytes per pair that :func:`sample_preferences` holds at its peak: the prompt, the two
#: completions, the uniforms and the label temporaries, chosen and rejected, and the
#: read-only copies of :class:`Preferences` (int64/float64 each).
SAMPLE_BYTES_PER_PAIR = 16 * FLOAT_BYTES
#: No machine holds more pairs than this (2**50 pairs at 128 bytes each is 128 PiB).
_MAX_PAIRS = 2**50


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
    can be equal, see ``sample_preferences(..., distinct=False)``) and carries no
    information about the reward.

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
        # _index_array and _weight_array return fresh arrays, so freezing a view is a copy
        object.__setattr__(self, "prompt", read_only(arrays["prompt"]))
        object.__setattr__(self, "chosen", read_only(arrays["chosen"]))
        object.__setattr__(self, "rejected", read_only(arrays["rejected"]))
        object.__setattr__(self, "weight", read_only(weights))
        if tree is not None:
            self.check(tree)

    @classmethod
    def _trusted(
        cls, prompt: np.ndarray, chosen: np.ndarray, rejected: np.ndarray, weight: np.ndarray
    ) -> Preferences:
        """Build without validation: for arrays the package made itself (copied, so a subset
        ``prefs[:k]`` does not keep the whole dataset alive)."""
        prefs = object.__new__(cls)
        object.__setattr__(prefs, "prompt", read_only(np.array(prompt, dtype=np.int64)))
        object.__setattr__(prefs, "chosen", read_only(np.array(chosen, dtype=np.int64)))
        object.__setattr__(prefs, "rejected", read_only(np.array(rejected, dtype=np.int64)))
        object.__setattr__(prefs, "weight", read_only(np.array(weight, dtype=np.float64)))
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
        """A subset of pairs, with Python's sequence rules: ``prefs[3]`` and ``prefs[-1]``
        (one pair, as a dataset of length 1), ``prefs[:1000]``, ``prefs[::-1]``,
        ``prefs[mask]`` (an ``(n,)`` bool array), ``prefs[[3, 1, 4]]`` (ints, negative ones
        counting from the end).

        Raises:
            IndexError: an int outside ``-n..n-1``, an index array with such an entry, or a
                mask of the wrong length.
            TypeError: any other kind of index (floats, strings, a bare bool).
        """
        n = len(self)
        if isinstance(index, (numbers.Integral, np.integer)) and not isinstance(
            index, (bool, np.bool_)
        ):
            k = int(index)
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of range for {n} preference pairs")
            k %= max(n, 1)
            index = slice(k, k + 1)
        elif isinstance(index, (bool, np.bool_, float, str, bytes)) or index is None:
            raise TypeError(
                "preference pairs are indexed by an int, a slice, a bool mask or an array of "
                f"ints, got {type(index).__name__}"
            )
        elif not isinstance(index, slice):
            array = np.asarray(index)
            if array.ndim != 1 or not (
                array.dtype == np.bool_
                or np.issubdtype(array.dtype, np.integer)
                or array.size == 0
            ):
                raise TypeError(
                    "preference pairs are indexed by an int, a slice, a 1-D bool mask or a 1-D "
                    f"array of ints, got {type(index).__name__} of dtype {array.dtype} and "
                    f"shape {array.shape}"
                )
            index = array.astype(np.int64) if array.size == 0 else array
        try:
            return Preferences._trusted(
                self.prompt[index], self.chosen[index], self.rejected[index], self.weight[index]
            )
        except IndexError as error:
            raise IndexError(f"bad index into {n} preference pairs: {error}") from None

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
        differs from 1.

        The file is replaced atomically, like a careful editor saves: the text goes to a
        temporary file in the target's directory, is flushed to disk and renamed over the
        target (``os.replace``), so a reader, a failed write or a killed process never sees or
        leaves half a file. Like ``open(path, "w")``, it writes *through* a symbolic link (the
        link's target is replaced, the link stays), keeps the mode of an existing file, gives
        a new file the default mode ``0o666 & ~umask``, and refuses a read-only file. A path
        that exists but is no regular file (a named pipe, a terminal) or lies under
        ``/dev/`` or ``/proc/`` (``/dev/stdout``, even when the shell redirects it to a file)
        is written in place, appending: there is no file to replace.

        Raises:
            TypeError: ``tree`` is not a TokenTree; ``path`` is not a str, bytes or
                ``os.PathLike``.
            ValueError: the pairs do not fit ``tree`` (see :meth:`check`).
            PermissionError: the existing file is read-only (no write permission, or no
                write bit at all, which even root respects here).
            IsADirectoryError: ``path`` is a directory.
            OSError: the directory is not writable, the disk is full, ...
        """
        file_name = check_path(path)
        self.check(tree)
        leaves, inverse = np.unique(
            np.concatenate([self.chosen, self.rejected]), return_inverse=True
        )
        texts = [tree.leaf_text(int(leaf))[1] for leaf in leaves]  # one per distinct leaf
        chosen_text = [texts[k] for k in inverse[: len(self)].tolist()]
        rejected_text = [texts[k] for k in inverse[len(self) :].tolist()]
        write_weight = bool((self.weight != 1.0).any())
        records = []
        for k, p in enumerate(self.prompt.tolist()):
            record = {
                "prompt": tree.prompts[p],
                "chosen": chosen_text[k],
                "rejected": rejected_text[k],
            }
            if write_weight:
                record["weight"] = float(self.weight[k])
            records.append(record)
        write_jsonl(file_name, records)  # atomic replacement (tinyrlhf.jsonl)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, tree: TokenTree) -> Preferences:
        """Read TRL's preference format (see :meth:`to_jsonl`); blank lines are skipped.

        Each line must be a JSON object with string ``"prompt"`` (one of ``tree.prompts``),
        ``"chosen"`` and ``"rejected"`` (completions of exactly ``H`` of the tree's tokens
        joined by its separator; on a tree with ``eos``, a completion may stop early with
        ``eos``, as ``tree.leaf_text`` writes it), and optionally a finite ``"weight" >= 0`` (default 1).
        Other keys are ignored. The whole file is checked before anything is returned.
        Lines end at ``"\\n"`` only (a ``"\\r"`` before it is JSON whitespace), so a prompt
        or completion holding U+2028, U+2029 or U+0085 reads back unchanged; a UTF-8 byte
        order mark at the start is skipped.

        Raises:
            TypeError: ``tree`` is not a TokenTree; ``path`` is not a str, bytes or
                ``os.PathLike`` (an int would be taken by ``open`` as a file descriptor).
            ValueError: ``"<path>:<line>: <what is wrong>"`` for the first bad line: bytes
                that are not UTF-8, bad JSON, JSON nested too deeply or with an integer too
                long to read, not an object, a missing key, a non-string value, an unknown
                prompt, a completion that is not a path in the tree or has the wrong length,
                a bad weight.
            OSError: the file cannot be read.
        """
        tree = check_tree(tree)
        file_name = check_path(path)
        prompts: list[int] = []
        chosen: list[int] = []
        rejected: list[int] = []
        weights: list[float] = []
        prompt_ids = {prompt: p for p, prompt in enumerate(tree.prompts)}
        leaf_offsets: dict[str, int] = {}  # completion text -> index within its prompt
        for where, value in read_jsonl(file_name):  # non-blank lines, split at "\n" only
            record = _check_preference_record(value, where)
            p, pair = _record_pair(tree, record, where, prompt_ids, leaf_offsets)
            weight = _record_weight(record, where)
            prompts.append(p)
            chosen.append(pair[0])
            rejected.append(pair[1])
            weights.append(weight)
        return cls._trusted(
            np.array(prompts, dtype=np.int64),
            np.array(chosen, dtype=np.int64),
            np.array(rejected, dtype=np.int64),
            np.array(weights, dtype=np.float64),
        )


# ------------------------------------------------------------------------------ reading
def _check_preference_record(record: object, where: str) -> dict:
    """A JSON object with string ``"prompt"``, ``"chosen"`` and ``"rejected"``."""
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: expected a JSON object with keys 'prompt', 'chosen', 'rejected', "
            f"got {type(record).__name__}"
        )
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            raise ValueError(
                f"{where}: missing key {key!r} (each line needs 'prompt', 'chosen' and 'rejected')"
            )
        if not isinstance(record[key], str):
            raise ValueError(
                f"{where}: {key!r} must be a string, got {type(record[key]).__name__} "
                "(tinyrlhf reads TRL's standard preference format, not the "
                "conversational one)"
            )
    return record


def _record_pair(
    tree: TokenTree,
    record: dict,
    where: str,
    prompt_ids: dict[str, int],
    leaf_offsets: dict[str, int],
) -> tuple[int, list[int]]:
    """The prompt index and the ``[chosen, rejected]`` leaf indices of a checked record
    (``leaf_offsets`` caches each completion's offset within its prompt)."""
    p = prompt_ids.get(record["prompt"])
    if p is None:
        raise ValueError(
            f"{where}: unknown prompt {record['prompt']!r}; the tree's prompts are {tree.prompts}"
        )
    pair = []
    for key in ("chosen", "rejected"):
        completion = record[key]
        offset = leaf_offsets.get(completion)
        if offset is None:
            offset = _completion_offset(tree, completion, f"{where}: {key!r}")
            leaf_offsets[completion] = offset
        pair.append(p * tree.leaves_per_prompt + offset)
    return p, pair


def _record_weight(record: dict, where: str) -> float:
    """The record's ``"weight"`` (default 1): a finite number ``>= 0``."""
    weight = record.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"{where}: 'weight' must be a number, got {type(weight).__name__}")
    try:
        weight = float(weight)
    except OverflowError:  # an integer beyond float64
        weight = math.inf
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(
            f"{where}: 'weight' must be finite and >= 0, got {short_repr(record['weight'])}"
        )
    return weight


# ------------------------------------------------------------------------------ sampling
def preference_probability(
    reward_chosen: np.ndarray | float, reward_rejected: np.ndarray | float
) -> np.ndarray:
    """The Bradley-Terry probability that one completion is preferred to another.

        P(y+ > y-) = sigma(r(y+) - r(y-)) = 1 / (1 + exp(-(r(y+) - r(y-))))

    (lecture section 3; Bradley and Terry 1952), computed by ``scipy.special.expit`` so that
    huge margins give 0 or 1 without overflow. Arrays broadcast; returns float64.
    """
    return expit(np.subtract(reward_chosen, reward_rejected, dtype=np.float64))


def log_preference_probability(
    reward_chosen: np.ndarray | float, reward_rejected: np.ndarray | float
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
    seed: int | np.random.Generator | None = 0,
    prompt: str | int | np.ndarray | None = None,
    distinct: bool = True,
) -> Preferences:
    """Sample ``n`` comparisons labelled by Bradley-Terry under the reward ``r``.

    For each pair: a prompt ``s_0`` (uniform over the tree's prompts unless ``prompt`` is
    given), two completions ``y_1, y_2`` of it, and the label

        P(y_1 > y_2) = sigma(r(y_1) - r(y_2)),

    drawn as ``log u < log_expit(r(y_1) - r(y_2))`` with ``u ~ U(0, 1]`` (exact in log space,
    no overflow for any reward gap). The winner becomes ``chosen``.

    The pair ``(y_1, y_2)``, with ``P = P_policy(. | s_0)``:

    - ``distinct=True`` (default): two independent draws from ``P`` conditioned on
      ``y_1 != y_2``, the pairs a preference dataset holds (a completion compared with
      itself carries no information, and TRL datasets never contain one):

          P(y_1 = i, y_2 = j) = P(i) P(j) / (1 - sum_k P(k)^2),   i != j.

      It is drawn exactly, without rejection: ``y_1`` from its marginal
      ``P(i) (1 - P(i)) / (1 - sum_k P(k)^2)``, then ``y_2`` from ``P`` conditioned on
      differing from ``y_1``, ``P(j) / (1 - P(y_1))`` (inverse-CDF sampling on the leaves
      below and above ``y_1``; ``1 - P(i)`` is summed from the other leaves, so a policy
      with ``P(i)`` near 1 loses no precision). These are the weights of
      :func:`population_preferences` divided, per prompt, by ``1 - sum_k P(k)^2``.
      Every prompt that can be drawn needs two completions of positive probability.
    - ``distinct=False``: two independent draws ``y_1, y_2 ~ P``; ``y_1 = y_2`` happens
      with probability ``sum_k P(k)^2`` and is kept (the only behaviour of earlier versions).

    Args:
        tree: the token tree.
        reward: ``(n_leaves,)`` finite true rewards ``r``.
        n: number of pairs ``>= 0``; the arrays must fit the memory budget.
        policy: the policy that generates completions (``Policy.uniform(tree)`` if None:
            every leaf of a prompt equally likely on a tree without ``eos``).
        seed: int, Generator or None; default 0, the same pairs on every call (see
            :func:`~tinyrlhf.validation.make_rng`).
        prompt: None (uniform), one prompt (string or index) for every pair, or an
            ``(n,)`` int array of prompt indices.
        distinct: draw pairs of distinct completions (default) or independent ones.

    Returns:
        :class:`Preferences` with unit weights.

    Raises:
        TypeError/ValueError: bad tree, reward, n, policy, prompt or seed.
        ValueError: ``n`` pairs would not fit in memory (the message gives the size); with
            ``distinct=True``, a prompt that can be drawn has only one completion of
            positive probability under ``policy`` (no distinct pair exists: choose other
            prompts or pass ``distinct=False``).
    """
    tree = check_tree(tree)
    reward = check_leaf_array(tree, reward, "reward")
    n = check_pair_count(n, "n")
    if not isinstance(distinct, (bool, np.bool_)):
        raise TypeError(f"distinct must be True or False, got {distinct!r}")
    if policy is not None:
        check_policy_on(tree, policy)
    elif tree.eos is not None:  # the uniform policy, with its rows forced after eos
        policy = Policy.uniform(tree)
    rng = make_rng(seed)
    prompts = _prompt_indices(tree, prompt, n, rng)  # (n,)
    if distinct:
        first, second = _sample_distinct_pairs(tree, policy, prompts, prompt is None, rng)
    else:
        first = _sample_leaves(tree, policy, prompts, rng)  # (n,) leaf indices y_1
        second = _sample_leaves(tree, policy, prompts, rng)  # (n,) y_2
    # y_1 wins with probability sigma(r(y_1) - r(y_2)); u in (0, 1] so log u is finite
    u = 1.0 - rng.random(n)
    first_wins = np.log(u) < log_preference_probability(reward[first], reward[second])
    chosen = np.where(first_wins, first, second)
    rejected = np.where(first_wins, second, first)
    return Preferences._trusted(prompts, chosen, rejected, np.ones(n))


def check_pair_count(n: object, name: str = "n") -> int:
    """A number of preference pairs ``>= 0`` whose arrays fit the memory budget.

    Sampling ``n`` pairs allocates about :data:`SAMPLE_BYTES_PER_PAIR` bytes per pair; the
    request is refused up front, with the size in the message, instead of ending in a bare
    ``MemoryError`` (``sample_preferences(tree, r, 10**12, seed=0)``).

    Raises:
        TypeError: not an integer.
        ValueError: negative, or too many pairs for the memory budget (see
            :func:`tinyrlhf.memory.check_memory`).
    """
    n = check_positive_int(n, name, minimum=0)
    what = f"{name} = {format_count(n)} preference pairs"
    if n > _MAX_PAIRS:  # beyond any machine: refuse without formatting an absurd byte count
        raise ValueError(
            f"{what} cannot be held in memory (about {SAMPLE_BYTES_PER_PAIR} bytes per pair); "
            f"use at most a few hundred million pairs"
        )
    check_memory(n * SAMPLE_BYTES_PER_PAIR, what)
    return n


def population_preferences(
    tree: TokenTree, reward: np.ndarray, *, policy: Policy | None = None
) -> Preferences:
    """Every ordered pair of distinct completions, weighted by its exact probability.

    The expected dataset of one draw of ``sample_preferences(..., distinct=False)``
    (uniform prompts): the pair (chosen ``i``, rejected ``j``), ``i != j`` under the same
    prompt, has weight

        w(i, j) = (1 / n_prompts) * 2 P_policy(i) P_policy(j) sigma(r(i) - r(j)),

    the probability that the two samples are ``{i, j}`` and ``i`` wins. Pairs of weight 0
    (a completion the policy never produces) and ties ``i = j`` (which carry no
    information) are left out, so the weights sum to ``1 - P(y_1 = y_2)``. With the default
    ``distinct=True`` a sampled pair has probability ``w(i, j) / (1 - sum_k P(k | s_0)^2)``:
    the same weights rescaled per prompt, which changes no unregularized maximum-likelihood
    reward (each prompt's pairs form their own terms of the likelihood). With these
    weights the Bradley-Terry likelihood is the population likelihood, maximized exactly by
    the true reward (up to a constant per prompt) on the policy's support.

    Args:
        tree: the token tree.
        reward: ``(n_leaves,)`` finite rewards.
        policy: the sampling policy (uniform if None).

    Returns:
        :class:`Preferences` with ``n_prompts * A**H * (A**H - 1)`` pairs at most.

    Raises:
        ValueError: bad arguments, or the ``n_prompts * (A**H)**2`` pairs would not fit in
            memory.
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
        log_pi = check_policy_on(tree, policy).leaf_log_probs()
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
        return np.full(n, tree.prompt_index(cast("str | int", prompt)), dtype=np.int64)
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


def _sample_distinct_pairs(
    tree: TokenTree,
    policy: Policy | None,
    prompts: np.ndarray,
    every_prompt: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Leaf indices ``(y_1, y_2)``, ``(n,)`` each: two draws of ``P_policy(. | s_0)``
    conditioned on ``y_1 != y_2`` (see :func:`sample_preferences`).

    ``every_prompt``: the prompts were drawn uniformly, so every prompt must admit a pair.
    """
    leaves = tree.leaves_per_prompt
    n: int = prompts.shape[0]
    base = prompts * leaves  # (n,) first leaf of each pair's prompt
    if policy is None:  # uniform, no eos: y_1 uniform, y_2 uniform on the L - 1 other leaves
        if n and leaves < 2:
            raise ValueError(_NO_DISTINCT_PAIR.format(prompt=tree.prompts[int(prompts[0])]))
        first = rng.integers(0, leaves, size=n, dtype=np.int64)
        second = (first + 1 + rng.integers(0, max(leaves - 1, 1), size=n)) % leaves
        return base + first, base + second
    probs = policy.leaf_probs().reshape(tree.n_prompts, leaves)  # (P, L) P(i | s_0)
    u_first = 1.0 - rng.random(n)  # U(0, 1]
    u_second = 1.0 - rng.random(n)
    first, second, admits_pair = distinct_pair_offsets(probs, prompts, u_first, u_second)
    if n:
        needed = np.arange(tree.n_prompts) if every_prompt else np.unique(prompts)
        lonely = needed[~admits_pair[needed]]
        if lonely.size:
            raise ValueError(_NO_DISTINCT_PAIR.format(prompt=tree.prompts[int(lonely[0])]))
    return base + first, base + second


_NO_DISTINCT_PAIR = (
    "distinct=True needs two completions of positive probability for every prompt that can be "
    "drawn, but the policy produces only one completion of prompt {prompt!r}; give other "
    "prompts with prompt=..., or pass distinct=False to allow a completion compared with itself"
)


def distinct_pair_offsets(
    probs: np.ndarray, rows: np.ndarray, u_first: np.ndarray, u_second: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-CDF map from uniforms to a pair of distinct categories, exact and vectorized.

    For row ``p`` of ``probs`` (a distribution ``P`` over ``L`` categories), the pair
    ``(i, j)`` has the law of two independent draws of ``P`` conditioned on ``i != j``:

        P(i, j) = P(i) P(j) / (1 - sum_k P(k)^2),   i != j,

    drawn as ``i`` from its marginal ``P(i) m(i) / sum_k P(k) m(k)`` with
    ``m(i) = 1 - P(i) = sum_{k<i} P(k) + sum_{k>i} P(k)`` (both sums accumulated from the
    other categories, never by subtraction), then ``j`` from ``P(j) / m(i)`` on ``j != i``:
    ``t = u m(i)`` falls either below ``i`` (forward search in the cumulative sums) or above
    it (backward search in the tail sums), so ``j != i`` and ``P(j) > 0`` hold by
    construction, whatever the rounding. With ``u`` uniform on ``(0, 1]`` the result is
    exact up to the float64 rounding of the cumulative sums.

    Args:
        probs: ``(R, L)`` non-negative rows (each summing to 1, e.g. ``P_policy(. | s_0)``).
        rows: ``(n,)`` int row of each draw.
        u_first, u_second: ``(n,)`` uniforms in ``(0, 1]`` for ``i`` and for ``j``.

    Returns:
        ``(i, j, admits_pair)``: ``(n,)`` int64 category offsets and ``(R,)`` bool, whether
        the row has two categories of positive probability. Draws from a row without a
        pair are meaningless (the caller refuses them).
    """
    n_rows, n_categories = probs.shape
    zeros = np.zeros((n_rows, 1))
    cdf = np.cumsum(probs, axis=1)  # (R, L) sum_{k<=i} P(k)
    tail = np.cumsum(probs[:, ::-1], axis=1)[:, ::-1]  # (R, L) sum_{k>=i} P(k)
    below = np.concatenate([zeros, cdf[:, :-1]], axis=1)  # (R, L) sum_{k<i} P(k)
    above = np.concatenate([tail[:, 1:], zeros], axis=1)  # (R, L) sum_{k>i} P(k)
    others = below + above  # (R, L) m(i) = 1 - P(i)
    cdf_first = np.cumsum(probs * others, axis=1)  # (R, L) unnormalized CDF of i
    admits_pair = cdf_first[:, -1] > 0
    # i: the first category whose cumulative weight reaches t = u * total, t in (0, total]
    first = _search_rows(cdf_first, rows, u_first * cdf_first[rows, -1], side="left")
    first = np.minimum(first, n_categories - 1)  # only reached in rows without a pair
    t = u_second * others[rows, first]  # (n,) in (0, m(i)]
    below_i = below[rows, first]
    low = t <= below_i  # j < i: first k with sum_{m<=k} P(m) >= t (then P(k) > 0)
    second = np.empty_like(first)
    second[low] = _search_rows(cdf, rows[low], t[low], side="left")
    # j > i: the last k with sum_{m>=k} P(m) >= s, s = t - sum_{k<i} P(k) in (0, above_i];
    # the minimum only absorbs a rounding excess of the subtraction
    high = ~low
    s = np.minimum(t[high] - below_i[high], above[rows[high], first[high]])
    second[high] = _search_rows(-tail, rows[high], -s, side="right") - 1
    return first, np.clip(second, 0, n_categories - 1), admits_pair


def _search_rows(table: np.ndarray, rows: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """``np.searchsorted(table[rows[k]], values[k], side)`` for every ``k``, ``(n,)`` int64.

    One ``searchsorted`` per distinct row (the loop runs over rows, never over draws).
    """
    out = np.empty(values.shape[0], dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=table.shape[0]))])
    for row in np.flatnonzero(np.diff(bounds)):
        members = order[bounds[row] : bounds[row + 1]]
        out[members] = np.searchsorted(table[row], values[members], side=side)  # type: ignore[call-overload]
    return out


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
        array = np.array(weight, dtype=np.float64)  # a copy: later changes cannot reach it
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
