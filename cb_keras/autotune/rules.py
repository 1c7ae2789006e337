"""The pruning rules of the architecture search (docs/method.md §3): pure functions.

The papers describe one rule and the reference code (GitHub
``peerdavid/conflicting-bundles``) ran two others; each version is a rule
plus its check schedule (`VERSIONS`; evidence in docs/reproduction.md):

- ``"first_conflict"`` (the papers' text; default): remove the first
  conflicting block and all later blocks of its stage; checks after epochs
  1..10. ``[3, 12, 41, 3]`` with ``stage3_block5`` first conflicting becomes
  ``[3, 12, 4, 3]``. This is what the papers (and the docstring of
  ``prune_model`` in commit 22556fc, Nov 2020) describe, not what 22556fc's
  code did: it judged block i by the entropy of block i + 1, measured 512
  images with a per-block w_max (the largest mean |w| of the block's
  weights), and raised an IndexError when no block before the last conflicted.
- ``"all_non_conflicting"`` (Dec 2020, commit 37ea297, the code when arXiv
  2103.04331 was written): every stage keeps as many blocks as it has
  non-conflicting ones; checks at initialization and after epochs 1..9.
- ``"non_conflicting"`` (first in commit 8491b7b, Apr 2022; final form in
  commit 9c0b9b5, May 2022, the last version): in the first stage holding a
  conflicting block, keep as many blocks as that stage has non-conflicting
  ones; checks after epochs 1..10 (9c0b9b5's schedule; 8491b7b checked at
  initialization and after epochs 1..9, with learning rate 5e-4 and rows
  counted equal when 70% of their features are). ``stage3`` with blocks 5
  and 9 conflicting becomes 39 blocks.

A stage may shrink to zero blocks (the network then skips it). A block is
conflicting when its measured output is (docs/method.md §2): the block output
``stage{s}_block{b}_tap`` of a VGG net, the scaled residual branch
``stage{s}_block{b}_branch_tap`` of a ResNet (`cb_keras.paper.models` names them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from cb_keras import validation
from cb_keras.paper import models

RULE_KINDS = ("vgg", "resnet")
# The tap that decides whether a block conflicts, per model kind.
_DECIDING_TAP = {"vgg": models.TAP_SUFFIX, "resnet": models.BRANCH_TAP_SUFFIX}

Pattern = list[list[bool]]  # pattern[s][b]: block b+1 of stage s+1 is conflicting


@dataclasses.dataclass(frozen=True)
class RuleVersion:
    """One version of the search (the papers' or the reference code's): a rule and its checks.

    Attributes:
        rule: name of the pruning rule (see `shrink`).
        check_at_init: a^(L) is also checked before the first training epoch.
        check_window: a^(L) is checked after epochs 1..check_window.
        reference: where the version comes from (papers or commits of the
            reference code).
    """

    rule: str
    check_at_init: bool
    check_window: int
    reference: str


VERSIONS = {version.rule: version for version in (
    RuleVersion("first_conflict", False, 10,
                "the papers' text (commit 22556fc, Nov 2020, coded it with an off-by-one)"),
    RuleVersion("all_non_conflicting", True, 9, "Dec 2020, commit 37ea297"),
    RuleVersion("non_conflicting", False, 10,
                "first in commit 8491b7b, Apr 2022; final form commit 9c0b9b5, May 2022"),
)}
RULES = tuple(VERSIONS)


def conflict_pattern(blocks: Sequence[int], conflicting_layers: Sequence[str],
                     kind: str = "vgg") -> Pattern:
    """Which blocks conflict, from the names of the conflicting measured layers.

    Args:
        blocks: blocks per stage of the measured network, e.g. ``[3, 12, 41, 3]``.
        conflicting_layers: names of its conflicting measured layers
            (`ConflictReport.conflicting`); names of non-block taps are ignored.
        kind: ``"vgg"`` (block output taps decide) or ``"resnet"`` (the
            scaled residual branch taps decide).

    Returns:
        ``pattern[s][b]`` is True iff block ``b + 1`` of stage ``s + 1`` conflicts;
        ``len(pattern[s]) == blocks[s]``.
    """
    check_kind(kind)
    pattern = [[False] * count for count in validation.check_blocks(blocks)]
    for name in conflicting_layers:
        found = models.parse_block(name, _DECIDING_TAP[kind])
        if found:
            stage, block = found
            if stage > len(pattern) or block > len(pattern[stage - 1]):
                raise ValueError(
                    f"layer {name!r} names a block that blocks={list(blocks)} does not "
                    "have; pass the block counts of the measured network.")
            pattern[stage - 1][block - 1] = True
    return pattern


def first_conflicting_block(pattern: Pattern) -> str | None:
    """Name ``stage{s}_block{b}`` of the first conflicting block, or None."""
    for stage, row in enumerate(pattern, start=1):
        for block, conflicting in enumerate(row, start=1):
            if conflicting:
                return models.block_name(stage, block)
    return None


def shrink(blocks: Sequence[int], pattern: Pattern, rule: str = "first_conflict") -> list[int]:
    """The blocks per stage after removing conflicting blocks by `rule`.

    Args:
        blocks: blocks per stage, e.g. ``[3, 12, 41, 3]``.
        pattern: ``pattern[s][b]`` is True iff block b+1 of stage s+1
            conflicts (`conflict_pattern`); row s has ``blocks[s]`` entries.
        rule: one of `RULES`; see the module docstring.

    Returns:
        New block counts, equal to `blocks` when no block conflicts. Except
        for ``"all_non_conflicting"``, stages other than the first one
        holding a conflicting block are unchanged; the result may be all
        zeros (the caller decides what that means).

    Example:
        >>> pattern = [[True, False, False], [False, True, False, True]]
        >>> shrink([3, 4], pattern), shrink([3, 4], pattern, "non_conflicting")
        ([0, 4], [2, 4])
        >>> shrink([3, 4], pattern, "all_non_conflicting")
        [2, 2]
    """
    check_rule(rule)
    blocks = validation.check_blocks(blocks)
    if [len(row) for row in pattern] != blocks:
        raise ValueError(
            f"the conflict pattern has {[len(row) for row in pattern]} blocks per stage but "
            f"blocks={blocks}; build it with conflict_pattern(blocks, ...).")
    if rule == "all_non_conflicting":
        return [row.count(False) for row in pattern]
    for stage, row in enumerate(pattern):
        if any(row):
            shrunk = list(blocks)
            shrunk[stage] = row.index(True) if rule == "first_conflict" else row.count(False)
            return shrunk
    return blocks


def block_names(pattern: Pattern) -> list[str]:
    """Names ``stage{s}_block{b}`` of the conflicting blocks, in order."""
    return [models.block_name(s, b) for s, row in enumerate(pattern, start=1)
            for b, conflicting in enumerate(row, start=1) if conflicting]


def check_kind(kind: str) -> None:
    """ValueError unless `kind` is one of `RULE_KINDS`."""
    if kind not in RULE_KINDS:
        raise ValueError(f"kind must be one of {list(RULE_KINDS)}, got {kind!r}.")


def check_rule(rule: str) -> None:
    """ValueError unless `rule` is one of `RULES`, listing the versions."""
    if rule not in RULES:
        raise ValueError(
            f"rule must be one of {list(RULES)} (" + "; ".join(
                f"{name!r}: {version.reference}" for name, version in VERSIONS.items())
            + f"), got {rule!r}.")
