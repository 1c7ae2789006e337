"""`AutoTuneConfig`: the settings of an auto-tune search (docs/method.md §3).

One record, read by the search (`cb_keras.autotune.search`), stored with its
state (`cb_keras.autotune.state`), and checked once, when it is made.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from cb_keras import bundles, validation
from cb_keras.paper import models, optimizers
from cb_keras.autotune.rules import VERSIONS, check_kind, check_rule

__all__ = ["AutoTuneConfig"]


@dataclasses.dataclass(frozen=True)
class AutoTuneConfig:
    """Settings of the search (defaults: the papers').

    Attributes:
        start_blocks: blocks per stage of the starting network; default
            ``(3, 12, 41, 3)``, the papers' 120-layer network.
        kind: ``"vgg"`` (plain, the papers') or ``"resnet"``.
        epochs: epochs of every attempt; default 120.
        rule: pruning rule, one of `cb_keras.autotune.rules.RULES`; default ``"first_conflict"``.
        check_window: a^(L) is checked after each of the first
            `check_window` epochs of an attempt (epochs 1..check_window); default
            None: the rule's version (`cb_keras.autotune.rules.VERSIONS`: 10, or 9 for
            ``"all_non_conflicting"``).
        check_at_init: a^(L) is also checked before the first epoch of an
            attempt; default None: the rule's version (True only for
            ``"all_non_conflicting"``).
        samples: size of the measurement sample; default 64.
        max_restarts: at most this many restarts; None (default): no limit.
            Once reached, attempts are no longer checked.
        final_epochs: None (default, the papers): the attempt that passes the
            check is the result. An int: then train the found network once
            more from scratch for this many epochs, without checks, and
            report that attempt.
        learning_rate: training learning rate, > 0 in float32
            (`cb_keras.bundles.check_learning_rate`): the trainer trains with
            it (`TrainRequest`) and the check measures with it.
        batch_size: training batch size, >= 1, likewise for both.
        seed: attempt k initialises its network with ``seed + k``.
    """

    start_blocks: tuple[int, ...] = tuple(models.PAPER_BLOCKS[120])
    kind: str = "vgg"
    epochs: int = 120
    rule: str = "first_conflict"
    check_window: int | None = None
    check_at_init: bool | None = None
    samples: int = 64
    max_restarts: int | None = None
    final_epochs: int | None = None
    learning_rate: float = optimizers.PAPER_LEARNING_RATE
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        # four stages, as the builders need
        object.__setattr__(self, "start_blocks", tuple(validation.check_blocks(
            self.start_blocks, stages=len(models.STAGE_FILTERS))))
        check_kind(self.kind)
        check_rule(self.rule)
        version = VERSIONS[self.rule]
        if self.check_window is None:
            object.__setattr__(self, "check_window", version.check_window)
        if self.check_at_init is None:
            object.__setattr__(self, "check_at_init", version.check_at_init)
        if not isinstance(self.check_at_init, bool):
            raise ValueError(f"check_at_init must be True, False or None, got "
                             f"{self.check_at_init!r}.")
        for name in ("epochs", "check_window", "samples", "batch_size"):
            validation.check_int(name, getattr(self, name), 1)
        validation.check_int("seed", self.seed, 0)
        if self.max_restarts is not None:
            validation.check_int("max_restarts", self.max_restarts, 0)
        if self.final_epochs is not None:
            validation.check_int("final_epochs", self.final_epochs, 1)
        bundles.check_learning_rate(self.learning_rate)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (tuples as lists), as a search state holds them."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}
