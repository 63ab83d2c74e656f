"""check_positive_int: the one integer-argument check of vlm."""

import numpy as np
import pytest

from vlm.utils.argument_checks import check_positive_int


@pytest.mark.parametrize("value", [1, 7, 10**12, np.int32(3), np.int64(5), np.uint8(2)])
def test_positive_ints_pass_and_come_back_as_python_ints(value):
    result = check_positive_int("batch_size", value)
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize(
    "value", [0, -1, np.int64(0), True, False, np.bool_(True), 1.0, 2.5, "3", None, [1]]
)
def test_everything_else_is_refused_with_name_and_value(value):
    with pytest.raises(ValueError) as error:
        check_positive_int("batch_size", value)
    assert str(error.value) == (
        f"`batch_size` must be a positive integer. Received: batch_size={value!r}"
    )


def test_none_passes_only_with_allow_none():
    assert check_positive_int("key_dim", None, allow_none=True) is None
    assert check_positive_int("key_dim", 4, allow_none=True) == 4
    with pytest.raises(ValueError, match=r"^`key_dim` must be a positive integer or None\. "
                                         r"Received: key_dim=0$"):
        check_positive_int("key_dim", 0, allow_none=True)


def test_minimum_zero_accepts_zero_and_says_non_negative():
    assert check_positive_int("seed", 0, minimum=0) == 0
    assert check_positive_int("shuffle_buffer", np.int64(0), minimum=0) == 0
    for value in (-1, False, 0.0):
        with pytest.raises(ValueError) as error:
            check_positive_int("seed", value, minimum=0)
        assert str(error.value) == (
            f"`seed` must be a non-negative integer. Received: seed={value!r}"
        )


def test_a_larger_minimum_is_named_in_the_message():
    assert check_positive_int("vocabulary_size", 5, minimum=5) == 5
    with pytest.raises(ValueError, match=r"^`vocabulary_size` must be an integer >= 5\. "
                                         r"Received: vocabulary_size=4$"):
        check_positive_int("vocabulary_size", 4, minimum=5)
