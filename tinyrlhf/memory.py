"""Memory guard: refuse allocations that would not fit, before making them.

Every exact computation in tinyrlhf touches every state of the tree, so its memory grows
like ``A**H``. A tree with ``16**12`` leaves cannot be solved on any machine; the right
answer to such a request is an immediate, explained refusal, not minutes of swapping or a
process killed by the kernel. Callers estimate the bytes they are about to allocate (e.g.
:func:`tinyrlhf.solvers.soft_vi.estimate_bytes`) and call :func:`check_memory` first.

The budget is, in order of precedence:

1. an explicit ``limit`` argument (bytes) to :func:`check_memory` (the solvers pass their
   ``memory_limit=`` argument through);
2. the environment variable ``TINYRLHF_MEMORY_LIMIT`` (bytes, or with a suffix
   ``K``, ``M``, ``G``, ``T`` / ``KB``, ``MB``, ``GB``, ``TB``, powers of 1024);
3. :data:`DEFAULT_FRACTION` of the memory available now: ``MemAvailable`` in
   ``/proc/meminfo``, lowered to the free part of a container's cgroup limit when there is
   one (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``); physical memory from
   ``os.sysconf`` on systems without ``/proc``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

#: Fraction of the available memory that one call may plan to use when no limit is set.
DEFAULT_FRACTION = 0.5
#: Name of the environment variable that overrides the budget (bytes or ``"2G"``).
ENV_VAR = "TINYRLHF_MEMORY_LIMIT"
#: Bytes of one float64.
FLOAT_BYTES = 8
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
    """Human-readable size with binary prefixes, e.g. ``'1.50 GiB'``."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def parse_bytes(text: str) -> int:
    """Parse ``'123'``, ``'2G'``, ``'512MB'`` (binary prefixes) into a number of bytes > 0.

    Raises:
        ValueError: not a size, or a size of zero bytes.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(
            f"{ENV_VAR}={text!r} is not a size; use a number of bytes or e.g. '2G', '512M'"
        )
    n_bytes = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
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
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
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
        n_bytes: the planned allocation in bytes (an estimate made before allocating).
        what: a short description of the allocation for the message, e.g.
            ``"a policy table of 16**12 leaves"``.
        limit: optional explicit budget in bytes (else environment or available memory).

    Raises:
        ValueError: naming the size needed, the budget, where the budget comes from and how
            to change it.
    """
    if limit is None and not os.environ.get(ENV_VAR) and n_bytes <= ALWAYS_AFFORDABLE_BYTES:
        return
    budget, source = _budget_and_source(limit)
    if n_bytes > budget:
        raise ValueError(
            f"{what} needs about {format_bytes(n_bytes)} ({n_bytes:,} bytes), more than the "
            f"memory budget of {format_bytes(budget)} ({budget:,} bytes; {source}); use a "
            f"smaller tree (fewer tokens or a shorter horizon) or raise the budget with "
            f"{ENV_VAR} (e.g. {ENV_VAR}=32G)"
        )
