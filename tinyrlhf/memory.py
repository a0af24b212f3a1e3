"""Memory guard: refuse allocations that would not fit, before making them.

Every exact computation in tinyrlhf touches every state of the tree, so its memory grows
like ``A**H``. A tree with ``16**12`` leaves cannot be solved on any machine; the right
answer to such a request is an immediate, explained refusal, not minutes of swapping.

The budget is, in order of precedence:

1. an explicit ``limit`` argument (bytes) to :func:`check_memory`;
2. the environment variable ``TINYRLHF_MEMORY_LIMIT`` (bytes, or with a suffix
   ``K``, ``M``, ``G``, ``T`` / ``KB``, ``MB``, ``GB``, ``TB``, powers of 1024);
3. :data:`DEFAULT_FRACTION` of the memory available now (``MemAvailable`` in
   ``/proc/meminfo``; physical memory from ``os.sysconf`` elsewhere).
"""

from __future__ import annotations

import os
import re

#: Fraction of the available memory that one call may plan to use when no limit is set.
DEFAULT_FRACTION = 0.5
#: Name of the environment variable that overrides the budget (bytes or ``"2G"``).
ENV_VAR = "TINYRLHF_MEMORY_LIMIT"
#: Bytes of one float64.
FLOAT_BYTES = 8

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def format_bytes(n_bytes: float) -> str:
    """Human-readable size with binary prefixes, e.g. ``'1.50 GiB'``."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def parse_bytes(text: str) -> int:
    """Parse ``'123'``, ``'2G'``, ``'512MB'`` (binary prefixes) into a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(
            f"{ENV_VAR}={text!r} is not a size; use a number of bytes or e.g. '2G', '512M'"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def available_memory() -> int:
    """Bytes of memory available to this process now (best effort, never raises)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 8 * 1024**3


def memory_budget(limit: int | None = None) -> int:
    """The number of bytes one call may plan to allocate (see the module docstring)."""
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0:
            raise ValueError(f"memory limit must be a positive number of bytes, got {limit!r}")
        return int(limit)
    env = os.environ.get(ENV_VAR)
    if env:
        return parse_bytes(env)
    return int(DEFAULT_FRACTION * available_memory())


def check_memory(n_bytes: int, what: str, limit: int | None = None) -> None:
    """Raise ``ValueError`` if ``n_bytes`` exceeds the memory budget.

    Args:
        n_bytes: the planned allocation in bytes (an estimate made before allocating).
        what: a short description of the allocation for the message, e.g.
            ``"a policy table of 16**12 leaves"``.
        limit: optional explicit budget in bytes (else environment or available memory).

    Raises:
        ValueError: naming the size needed, the budget and how to change it.
    """
    budget = memory_budget(limit)
    if n_bytes > budget:
        raise ValueError(
            f"{what} needs about {format_bytes(n_bytes)} ({n_bytes:,} bytes), more than the "
            f"memory budget of {format_bytes(budget)}; use a smaller tree (fewer tokens or a "
            f"shorter horizon) or raise the budget with {ENV_VAR} (e.g. {ENV_VAR}=32G)"
        )
