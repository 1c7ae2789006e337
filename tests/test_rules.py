"""cb_keras.autotune.rules: the pure pruning rules of every version of the reference."""

from __future__ import annotations

import pytest

from cb_keras.autotune import rules


def pattern_of(blocks, conflicting):
    """Conflict pattern with the (stage, block) pairs of `conflicting` (1-based) True."""
    return [[(s, b) in conflicting for b in range(1, n + 1)]
            for s, n in enumerate(blocks, start=1)]


@pytest.mark.parametrize("blocks, conflicting, first, non_conflicting, every_stage", [
    ([3, 12, 41, 3], {(3, 5)}, [3, 12, 4, 3], [3, 12, 40, 3], [3, 12, 40, 3]),
    ([3, 12, 41, 3], {(3, 5), (3, 9), (4, 1)}, [3, 12, 4, 3], [3, 12, 39, 3],
     [3, 12, 39, 2]),
    ([3, 12, 41, 3], {(2, 1), (3, 1)}, [3, 0, 41, 3], [3, 11, 41, 3], [3, 11, 40, 3]),
    ([3, 4, 0, 1], {(1, 1), (1, 2), (1, 3)}, [0, 4, 0, 1], [0, 4, 0, 1], [0, 4, 0, 1]),
    ([2, 2, 2, 2], set(), [2, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]),
    ([1, 0, 0, 0], {(1, 1)}, [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
])
def test_shrink_follows_every_version_of_the_reference(
        blocks, conflicting, first, non_conflicting, every_stage):
    pattern = pattern_of(blocks, conflicting)
    assert rules.shrink(blocks, pattern) == first
    assert rules.shrink(blocks, pattern, "first_conflict") == first
    assert rules.shrink(blocks, pattern, "non_conflicting") == non_conflicting
    assert rules.shrink(blocks, pattern, "all_non_conflicting") == every_stage


def test_conflict_pattern_reads_block_taps_of_vgg_and_branch_taps_of_resnet():
    blocks = [2, 1, 0, 1]
    names = ["stem_relu", "stage1_block2_tap", "stage4_block1_tap"]
    assert rules.conflict_pattern(blocks, names, "vgg") == \
        pattern_of(blocks, {(1, 2), (4, 1)})
    resnet = ["stage1_block1_out_tap", "stage2_block1_branch_tap"]
    assert rules.conflict_pattern(blocks, resnet, "resnet") == pattern_of(blocks, {(2, 1)})
    assert rules.first_conflicting_block(pattern_of(blocks, {(4, 1), (1, 2)})) == \
        "stage1_block2"
    assert rules.first_conflicting_block(pattern_of(blocks, set())) is None


def test_pattern_and_shrink_reject_what_does_not_fit():
    with pytest.raises(ValueError, match="does not have"):
        rules.conflict_pattern([1, 1, 1, 1], ["stage1_block2_tap"])
    with pytest.raises(ValueError, match="blocks per stage"):
        rules.shrink([2, 2, 2, 2], [[False], [False], [False], [False]])
    with pytest.raises(ValueError, match="rule must be one of"):
        rules.shrink([1, 1, 1, 1], pattern_of([1, 1, 1, 1], set()), "last")
    with pytest.raises(ValueError, match="kind must be one of"):
        rules.conflict_pattern([1, 1, 1, 1], [], "fnn")
