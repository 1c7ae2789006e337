"""Argument checks shared by the library: one rule for integers and block lists.

An *integer* is a Python or NumPy integer; bools, floats (even 64.0) and
strings are not. Each check raises ValueError naming the argument and the
value it got, and returns the value as a Python int (or list of ints).
"""

from __future__ import annotations

import numbers
from typing import Any


def is_int(value: Any) -> bool:
    """Is `value` a Python or NumPy integer (bools excluded)?"""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_positive_int(name: str, value: Any) -> int:
    """`value` as an int; ValueError unless it is an integer >= 1."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def check_int(name: str, value: Any, minimum: int) -> int:
    """`value` as an int; ValueError unless it is an integer >= `minimum`."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def check_blocks(blocks: Any, stages: int | None = None) -> list[int]:
    """Blocks per stage as a list of ints: non-negative, at least one block.

    Args:
        blocks: any iterable of integers, e.g. ``(3, 12, 41, 3)``.
        stages: the number of stages it must have; None: any number.
    """
    count = "" if stages is None else f"{stages} "
    values = None if isinstance(blocks, (str, bytes)) else _as_list(blocks)
    if not values or (stages is not None and len(values) != stages) \
            or not all(is_int(b) and b >= 0 for b in values):
        raise ValueError(
            f"blocks must be {count}non-negative ints, the blocks of each stage, got "
            f"{blocks!r}; e.g. (3, 12, 41, 3), the papers' 120-layer network.")
    if not any(values):
        raise ValueError(f"blocks are all zero ({blocks!r}): a network needs at least one "
                         "block.")
    return [int(b) for b in values]


def _as_list(values: Any) -> list | None:
    """`list(values)`, or None if it is not iterable."""
    try:
        return list(values)
    except TypeError:
        return None
