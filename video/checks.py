"""Argument checks shared by `video` and `vlm_vision`, kept in the lower layer so both import one copy.

A frame count, a stride, a token budget, a tile or image side: each must be a whole number >= 1,
and an error names the argument and the value it got.
"""

from __future__ import annotations

import operator

__all__ = ["positive_int"]


def positive_int(value: object, name: str) -> int:
    """`value` as an int when it is an integer >= 1 (not a bool).

    Args:
        value: what the caller was given (a Python or NumPy integer passes).
        name: the argument's name, for the error.

    Raises:
        TypeError: for a value that is not an integer (a bool, a float, a string).
        ValueError: for an integer below 1.

    Example:
        >>> positive_int(3, "num_frames")
        3
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= 1, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int >= 1, got {value!r} ({type(value).__name__})") from None
    if number < 1:
        raise ValueError(f"{name} must be an int >= 1, got {number}")
    return number
