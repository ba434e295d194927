"""Argument checks shared by every constructor: one message per kind of mistake, naming the argument and the value.

A wrong type is a ``TypeError`` and a value out of range a ``ValueError``; both say what was expected, so that
``batch_size="32"`` reads "batch_size must be an integer >= 1, got '32' (str)" instead of Python's own
"'<=' not supported between instances of 'str' and 'int'". No ``assert``: the checks survive ``python -O``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["check_choice", "check_device", "check_int", "check_number"]


def check_int(name: str, value: Any, minimum: int | None = None, *, optional: bool = False, hint: str = "") -> Any:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; ``None`` passes when ``optional``.

    Raises:
        TypeError: not an integer.
        ValueError: below ``minimum``.

    Example:
        >>> check_int("batch_size", 32, 1)
        32
    """
    if value is None and optional:
        return None
    expected = f"an integer{f' >= {minimum}' if minimum is not None else ''}{' or None' if optional else ''}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__}).{_tail(hint)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be {expected}, got {value}.{_tail(hint)}")
    return value


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    hint: str = "",
) -> Any:
    """``value`` as a float if it is a finite real number in the interval; ``None`` passes when ``optional``.

    ``low``/``high`` bound the interval (``None``: unbounded), closed unless ``low_open``/``high_open``.

    Raises:
        TypeError: not a real number (a string, a bool, a tensor, ...).
        ValueError: not finite, or outside the interval.

    Example:
        >>> check_number("alpha", 1, 0.0)
        1.0
    """
    if value is None and optional:
        return None
    expected = "a finite number" + _interval(low, high, low_open, high_open) + (" or None" if optional else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be {expected}, got {value!r} ({type(value).__name__}).{_tail(hint)}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        raise ValueError(f"`{name}` must be {expected}, got {value}.{_tail(hint)}")
    return value


def check_choice(name: str, value: Any, options: Iterable[str]) -> str:
    """``value`` if it is one of ``options`` (a vocabulary written once, e.g. from a ``Literal``).

    Raises:
        ValueError: not one of them (the message lists them).

    Example:
        >>> check_choice("variant", "batch", ("example", "batch"))
        'batch'
    """
    options = tuple(options)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"`{name}` must be one of {', '.join(repr(o) for o in options)}; got {value!r}.")
    return value


def check_device(name: str, value: Any, extra: Iterable[str] = ()) -> str:
    """``value`` if it names a device torch knows (``"cpu"``, ``"cuda:1"``, ...) or one of ``extra``.

    Raises:
        TypeError: not a string.
        ValueError: not a device name.

    Example:
        >>> check_device("device", "cuda:1")
        'cuda:1'
    """
    extra = tuple(extra)
    allowed = ", ".join(repr(e) for e in ("cpu", "cuda", "cuda:1", *extra))
    if not isinstance(value, str):
        raise TypeError(f"`{name}` must be a device name such as {allowed}; got {value!r} ({type(value).__name__}).")
    if value in extra:
        return value
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"`{name}` must be a device name such as {allowed}; got {value!r}.") from None
    return value


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def _tail(hint: str) -> str:
    return f" {hint}" if hint else ""
