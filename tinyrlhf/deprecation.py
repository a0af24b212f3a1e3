"""Renamed keyword arguments: the old name keeps working and warns (``DeprecationWarning``).

One name per concept across the package (the policy that draws compared pairs is ``policy``,
the true reward is ``reward``); a keyword that was public under another name stays accepted
as a deprecated alias, so no caller breaks.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

Function = TypeVar("Function", bound=Callable[..., Any])


def renamed_keywords(**renames: str) -> Callable[[Function], Function]:
    """Decorator: accept ``old=value`` as ``new=value`` with a ``DeprecationWarning``.

    Args:
        renames: ``old_name="new_name"`` for each renamed keyword.

    Raises (in the decorated function):
        TypeError: both the old and the new name are given.

    Example:
        >>> @renamed_keywords(r_true="reward")
        ... def total(reward):
        ...     return sum(reward)
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     total(r_true=[1, 2])
        3
    """

    def decorate(function: Function) -> Function:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(
                        f"{function.__name__}() got both {old}= and {new}=; {old} is the old "
                        f"name of {new}: pass only {new}="
                    )
                warnings.warn(
                    f"{function.__name__}(): the keyword {old}= is deprecated; use {new}= "
                    "(same meaning)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
