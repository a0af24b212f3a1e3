"""Memory guard: refuse a tree that would not fit, before allocating anything.

Every exact computation in tinyrlhf touches every state of the tree, so its memory grows
like ``A**H``. A tree with ``16**12`` leaves cannot be solved on any machine; the right
answer to such a request is an immediate, explained refusal, not minutes of swapping or a
process killed by the kernel. There is one guard, at tree construction
(:func:`check_tree_size`): a tree is accepted only if :data:`BYTES_PER_STATE` bytes per
state fit in the budget, a constant sized for the package's largest per-state use, so no
exact computation on an accepted tree needs more than the guard allowed. Sizes are compared
through logarithms, so the refusal is instant for any horizon. The few allocations that do
not scale with the tree (sample counts, pair lists, Gram matrices) call
:func:`check_memory` with their own size.

The budget is, in order of precedence:

1. an explicit ``limit`` argument (bytes) to :func:`check_memory`;
2. the environment variable ``TINYRLHF_MEMORY_LIMIT`` (bytes, or with a suffix
   ``K``, ``M``, ``G``, ``T`` / ``KB``, ``MB``, ``GB``, ``TB``, powers of 1024);
3. :data:`DEFAULT_FRACTION` of the memory available now: ``MemAvailable`` in
   ``/proc/meminfo``, lowered to the free part of a container's cgroup limit when there is
   one (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``); physical memory from
   ``os.sysconf`` on systems without ``/proc``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

#: Fraction of the available memory that one call may plan to use when no limit is set.
DEFAULT_FRACTION = 0.5
#: Name of the environment variable that overrides the budget (bytes or ``"2G"``).
ENV_VAR = "TINYRLHF_MEMORY_LIMIT"
#: Bytes of one float64.
FLOAT_BYTES = 8
#: Bytes per state that the tree guard reserves: 16 float64 per state. The largest users
#: hold about eight arrays of one float64 per leaf at once (the KL-estimator moments: the
#: two leaf log-probabilities, the estimates, their masks, deviations and weights; soft value
#: iteration holds about four per state), and with A = 16 the leaves are 94% of the states;
#: 16 leaves a factor of two for temporaries (``tests/test_memory.py`` measures the peaks).
BYTES_PER_STATE = 16 * FLOAT_BYTES
#: Largest size (bytes) :func:`parse_bytes` accepts: 2**63, more than any machine has.
MAX_BYTES = 2**63
#: Requests up to this size are not checked against the available memory (reading it costs
#: about 50 us, more than solving a tree of a thousand leaves); an explicit limit or
#: TINYRLHF_MEMORY_LIMIT is always applied.
ALWAYS_AFFORDABLE_BYTES = 16 * 1024**2

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
#: (limit file, usage file) of the process's memory cgroup, v2 then v1.
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    ),
)


def format_bytes(n_bytes: float) -> str:
    """Human-readable size with binary prefixes, e.g. ``'1.50 GiB'``; any size, even one
    beyond the float64 range (``'about 10^321 PiB'``), in O(1) (through logarithms)."""
    log2_bytes = _log2(n_bytes)
    if not math.isfinite(log2_bytes):
        return f"{n_bytes} B"
    if log2_bytes < 60:  # below 1024 PiB: the value itself
        value = float(n_bytes)
        for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
            if abs(value) < 1024 or unit == "PiB":
                return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
            value /= 1024
    return f"about 10^{math.floor((log2_bytes - 50) * math.log10(2))} PiB"


def format_count(count: int) -> str:
    """An exact count with thousands separators, or ``'about 10^k'`` when it has more than
    15 digits (never converting a huge integer to a string)."""
    log2_count = _log2(count)
    if log2_count < 49:
        return f"{int(count):,}"
    return f"about 10^{math.floor(log2_count * math.log10(2))}"


def _log2(number: float) -> float:
    """``log2`` of a non-negative int (of any size) or float; ``-inf`` for 0."""
    return math.log2(number) if number > 0 else -math.inf


def parse_bytes(text: str) -> int:
    """Parse ``'123'``, ``'2G'``, ``'512MB'`` (binary prefixes) into a number of bytes > 0.

    Raises:
        ValueError: not a size, a size of zero bytes, or more than :data:`MAX_BYTES`.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(
            f"{ENV_VAR}={text!r} is not a size; use a number of bytes or e.g. '2G', '512M'"
        )
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]  # inf for 400 digits
    if not value < MAX_BYTES:
        shown = (
            text if len(str(text)) <= 40 else f"{str(text)[:20]}... ({len(str(text))} characters)"
        )
        raise ValueError(
            f"{ENV_VAR}={shown} is larger than 2^63 bytes, more than any machine has; "
            "use e.g. '64G'"
        )
    n_bytes = int(value)
    if n_bytes <= 0:
        raise ValueError(f"{ENV_VAR}={text!r} is not a positive size; use e.g. '2G'")
    return n_bytes


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) -> None


def _cgroup_available() -> int | None:
    """Free bytes under the process's cgroup memory limit, or None without a limit."""
    for limit_file, usage_file in _CGROUP_FILES:
        limit = _read_int(limit_file)
        # v1 reports "no limit" as a huge number near 2**63
        if limit is not None and limit < 2**60:
            usage = _read_int(usage_file) or 0
            return max(limit - usage, 0)
    return None


def available_memory() -> int:
    """Bytes of memory available to this process now (best effort, never raises)."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
            available = 8 * 1024**3
    in_cgroup = _cgroup_available()
    return available if in_cgroup is None else min(available, in_cgroup)


def _budget_and_source(limit: int | None) -> tuple[int, str]:
    if limit is not None:
        if (
            isinstance(limit, bool)
            or not isinstance(limit, (int, float))
            or not 0 < limit < MAX_BYTES
        ):
            raise ValueError(f"memory limit must be a positive number of bytes, got {limit!r}")
        return int(limit), "the memory_limit argument"
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env), f"{ENV_VAR}={env}"
    available = available_memory()
    return (
        int(DEFAULT_FRACTION * available),
        f"{DEFAULT_FRACTION:.0%} of the {format_bytes(available)} available",
    )


def memory_budget(limit: int | None = None) -> int:
    """The number of bytes one call may plan to allocate (see the module docstring).

    Raises:
        ValueError: ``limit`` is not a positive number, or ``TINYRLHF_MEMORY_LIMIT`` is set
            to something that is not a positive size.
    """
    return _budget_and_source(limit)[0]


def check_memory(n_bytes: int, what: str, limit: int | None = None) -> None:
    """Raise ``ValueError`` if ``n_bytes`` exceeds the memory budget.

    Args:
        n_bytes: the planned allocation in bytes (an estimate made before allocating; an
            int of any size or a float).
        what: a short description of the allocation for the message, e.g.
            ``"drawing 10**12 generations"``.
        limit: optional explicit budget in bytes (else environment or available memory).

    Raises:
        ValueError: naming the size needed, the budget, where the budget comes from and how
            to change it.
    """
    if limit is None and not os.environ.get(ENV_VAR) and n_bytes <= ALWAYS_AFFORDABLE_BYTES:
        return
    budget, source = _budget_and_source(limit)
    if n_bytes > budget:
        size = format_bytes(n_bytes)
        size = size if size.startswith("about") else f"about {size}"
        if _log2(n_bytes) < 63:  # at most 19 digits: exact
            size += f" ({int(n_bytes):,} bytes)"
        raise ValueError(_refusal(what, size, budget, source))


def _refusal(what: str, size: str, budget: int, source: str) -> str:
    return (
        f"{what} needs {size}, more than the memory budget of {format_bytes(budget)} "
        f"({budget:,} bytes; {source}); use a smaller size (for a tree: fewer tokens or a "
        f"shorter horizon) or raise the budget with {ENV_VAR} (e.g. {ENV_VAR}=32G)"
    )


def check_tree_size(n_prompts: int, n_tokens: int, horizon: int) -> None:
    """The one tree guard: refuse a tree whose :data:`BYTES_PER_STATE` bytes per state
    would not fit in the budget, in O(1) for any size.

    ``n_states = n_prompts (A^{H+1} - 1) / (A - 1)`` (``n_prompts (H + 1)`` when ``A = 1``)
    is compared through its logarithm first, so ``3^100000`` leaves are refused without
    forming the number.

    Raises:
        ValueError: the tree needs more than the budget (the message gives its size).
    """
    what = (
        f"a tree with {n_tokens}^{horizon} leaves per prompt and {n_prompts} prompt(s)"
        f" ({BYTES_PER_STATE} bytes per state)"
    )
    if n_tokens == 1:
        log2_states = math.log2(n_prompts * (horizon + 1))
    else:  # log2 of n_prompts A^{H+1} / (A - 1), within 1 of the exact count
        log2_states = math.log2(n_prompts) + (horizon + 1) * math.log2(n_tokens)
        log2_states -= math.log2(n_tokens - 1)
    log2_bytes = log2_states + math.log2(BYTES_PER_STATE)
    if log2_bytes > 63:  # beyond any budget (parse_bytes refuses more): never form the number
        budget, source = _budget_and_source(None)
        states = f"about 10^{math.floor(log2_states * math.log10(2))} states"
        size = f"about 10^{math.floor((log2_bytes - 50) * math.log10(2))} PiB"
        raise ValueError(_refusal(f"{what} ({states})", size, budget, source))
    n_states = (
        n_prompts * (horizon + 1)
        if n_tokens == 1
        else n_prompts * (n_tokens ** (horizon + 1) - 1) // (n_tokens - 1)
    )
    check_memory(n_states * BYTES_PER_STATE, what + f" ({n_states:,} states)")
