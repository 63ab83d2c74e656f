"""Argument checks shared by every module (no `vlm` imports: any module may use it)."""

import numpy as np


def check_positive_int(name, value, allow_none=False, minimum=1):
    """Raises a ValueError naming `name` and the value unless it is an int >= `minimum`.

    Bools are refused (`True` is an `int` to Python, never a size here);
    NumPy integer scalars are accepted like Python ints.

    Args:
        name: str. The argument's name, as the caller spells it.
        value: the value received.
        allow_none: bool. Whether `None` is accepted too.
        minimum: int. Smallest accepted value: 1 (a positive integer), 0 (a
            non-negative integer) or larger.

    Returns:
        `value` as a Python int, or None when `value` is None and `allow_none`.

    Example:

    >>> check_positive_int("batch_size", 0)
    Traceback (most recent call last):
    ...
    ValueError: `batch_size` must be a positive integer. Received: batch_size=0
    """
    if value is None and allow_none:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        if minimum == 1:
            kind = "a positive integer"
        elif minimum == 0:
            kind = "a non-negative integer"
        else:
            kind = f"an integer >= {minimum}"
        if allow_none:
            kind += " or None"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}")
    return int(value)
