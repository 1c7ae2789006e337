"""cb_keras.validation: one rule for integers and block lists."""

from __future__ import annotations

import numpy as np
import pytest

from cb_keras import validation


@pytest.mark.parametrize("value", [1, 64, np.int64(64), np.int32(1), np.uint8(3)])
def test_python_and_numpy_integers_are_integers(value):
    assert validation.check_positive_int("batch_size", value) == int(value)
    assert type(validation.check_int("seed", value, 0)) is int


@pytest.mark.parametrize("value", [0, -1, True, False, 2.0, 2.5, "2", None, np.float32(2)])
def test_bools_floats_and_small_values_are_refused(value):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        validation.check_positive_int("batch_size", value)


def test_check_int_names_its_minimum():
    with pytest.raises(ValueError, match="max_restarts must be an int >= 0, got -1"):
        validation.check_int("max_restarts", -1, 0)


def test_blocks_are_non_negative_integers_with_one_block_somewhere():
    assert validation.check_blocks((3, np.int64(12), 0)) == [3, 12, 0]
    assert validation.check_blocks(np.array([1, 0, 0, 0]), stages=4) == [1, 0, 0, 0]
    for blocks, message in [((3, 12, 41), "blocks must be 4 non-negative ints"),
                            ((1, -1, 1, 1), "non-negative"), ((1.0, 1, 1, 1), "non-negative"),
                            ("3123", "non-negative"), ((), "non-negative"),
                            ((0, 0, 0, 0), "at least one block")]:
        with pytest.raises(ValueError, match=message):
            validation.check_blocks(blocks, stages=None if blocks == () else 4)
