"""The state of an auto-tune search: its attempts so far (`SearchState`, `SearchAttempt`).

`cb_keras.autotune.search.auto_tune` changes the state only through the
methods of `SearchState` (a restart, the end of an attempt, the final attempt) and
hands every new state to ``save_state``; a caller that writes
`SearchState.to_dict` atomically resumes the search with
``auto_tune(..., state=SearchState.from_dict(saved, config))``. The JSON
layout (what ``search.json`` of the ``auto_tune`` command holds):

    {"config": {<AutoTuneConfig.to_dict()>},
     "attempts": [{"attempt": 0, "blocks": [3, 12, 41, 3], "epochs": 120, "final": false,
                   "restart": {<Restart.to_dict()>} or null,
                   "completed_epochs": 7 or null, "test_accuracy": 0.93 or null,
                   "summary": {...} or null}, ...]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cb_keras.autotune.check import Restart
from cb_keras.autotune.config import AutoTuneConfig

if TYPE_CHECKING:
    from cb_keras.autotune.trainer import TrainOutcome

# The fields of an attempt in the JSON layout, in order.
ATTEMPT_FIELDS = ("attempt", "blocks", "epochs", "final", "restart", "completed_epochs",
                  "test_accuracy", "summary")


@dataclasses.dataclass(frozen=True)
class SearchAttempt:
    """One attempt of the search: one training of one network.

    Attributes:
        attempt: its index, 0 for the starting network; it is initialised with
            seed ``config.seed + attempt``.
        blocks: blocks per stage of its network.
        epochs: epochs it was asked to train.
        final: the unchecked retraining of the found network (``final_epochs``).
        restart: the `Restart` that ended it, or None.
        completed_epochs, test_accuracy, summary: what its trainer reported
            (`cb_keras.autotune.trainer.TrainOutcome`); None until it ends
            (`completed_epochs` is the restart's epoch once it restarted).
    """

    attempt: int
    blocks: tuple[int, ...]
    epochs: int
    final: bool
    restart: Restart | None = None
    completed_epochs: int | None = None
    test_accuracy: float | None = None
    summary: dict[str, Any] | None = None

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))

    def to_dict(self) -> dict[str, Any]:
        """The attempt in the JSON layout (module docstring)."""
        return {"attempt": self.attempt, "blocks": list(self.blocks), "epochs": self.epochs,
                "final": self.final,
                "restart": None if self.restart is None else self.restart.to_dict(),
                "completed_epochs": self.completed_epochs,
                "test_accuracy": self.test_accuracy, "summary": self.summary}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchAttempt:
        """Inverse of `to_dict`.

        Raises:
            ValueError: a field of `ATTEMPT_FIELDS` missing, or a restart that is
                not a `Restart` record.
        """
        if not isinstance(data, Mapping) or not set(ATTEMPT_FIELDS) <= set(data):
            raise ValueError(f"an attempt of the search state needs the fields "
                             f"{list(ATTEMPT_FIELDS)}, got {data!r}.")
        try:
            restart = None if data["restart"] is None else Restart.from_dict(data["restart"])
            return cls(**{**{key: data[key] for key in ATTEMPT_FIELDS}, "restart": restart})
        except (KeyError, TypeError) as error:
            raise ValueError(f"attempt {data['attempt']!r} of the search state is damaged "
                             f"({error!r}).") from None


@dataclasses.dataclass(frozen=True)
class SearchState:
    """The attempts of one search so far; the last one is being trained (or is the result).

    Attributes:
        config: the search's settings.
        attempts: every attempt in order, at least one; attempt k has index k.
    """

    config: AutoTuneConfig
    attempts: tuple[SearchAttempt, ...]

    def __post_init__(self):
        object.__setattr__(self, "attempts", tuple(self.attempts))
        if not self.attempts:
            raise ValueError("a search state holds at least one attempt (the starting "
                             "network).")

    @classmethod
    def start(cls, config: AutoTuneConfig) -> SearchState:
        """The state of a search that has not started: attempt 0, the start network."""
        return cls(config, (SearchAttempt(0, config.start_blocks, config.epochs, final=False),))

    @property
    def current(self) -> SearchAttempt:
        """The last attempt: the one being trained, or the result of a finished search."""
        return self.attempts[-1]

    @property
    def restarts(self) -> tuple[Restart, ...]:
        """The `Restart` of every restart, in order."""
        return tuple(a.restart for a in self.attempts if a.restart is not None)

    @property
    def total_epochs(self) -> int:
        """Epochs trained over all attempts (each must have ended)."""
        return sum(a.completed_epochs for a in self.attempts)

    def restarted(self, record: Restart) -> SearchState:
        """The current attempt ends with `record`; an attempt of its smaller network follows."""
        ended = dataclasses.replace(self.current, restart=record,
                                    completed_epochs=record.epoch)
        following = SearchAttempt(len(self.attempts), record.blocks_after, self.config.epochs,
                                  final=False)
        return dataclasses.replace(self, attempts=(*self.attempts[:-1], ended, following))

    def ended(self, attempt: int, outcome: TrainOutcome) -> SearchState:
        """Attempt `attempt` has trained: its completed epochs, test accuracy and summary."""
        done = dataclasses.replace(self.attempts[attempt],
                                   completed_epochs=outcome.completed_epochs,
                                   test_accuracy=outcome.test_accuracy,
                                   summary=outcome.summary)
        return dataclasses.replace(self, attempts=(*self.attempts[:attempt], done,
                                                   *self.attempts[attempt + 1:]))

    def with_final_attempt(self) -> SearchState:
        """The current attempt passed the check: retrain its network for ``config.final_epochs``."""
        final = SearchAttempt(len(self.attempts), self.current.blocks, self.config.final_epochs,
                              final=True)
        return dataclasses.replace(self, attempts=(*self.attempts, final))

    def check_config(self, config: AutoTuneConfig) -> SearchState:
        """This state, if it is a search with `config`.

        Raises:
            ValueError: it has another config (the message lists the fields
                that differ).
        """
        _check_config(self.config.to_dict(), config)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of the module docstring (what ``search.json`` holds)."""
        return {"config": self.config.to_dict(),
                "attempts": [a.to_dict() for a in self.attempts]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: AutoTuneConfig) -> SearchState:
        """Inverse of `to_dict`, for a state saved with `config`.

        Raises:
            ValueError: saved with another config (the message lists the
                fields that differ), or no attempts, or a damaged attempt.
        """
        _check_config(data.get("config") if isinstance(data, Mapping) else None, config)
        attempts = data.get("attempts")
        if not isinstance(attempts, Sequence) or isinstance(attempts, str) or not attempts:
            raise ValueError(f"the search state has no attempts (got {attempts!r}); it is "
                             "damaged.")
        return cls(config, tuple(SearchAttempt.from_dict(a) for a in attempts))


def _check_config(saved: Any, config: AutoTuneConfig) -> None:
    """ValueError unless `saved` is ``config.to_dict()``; the message lists what differs."""
    if saved != config.to_dict():
        differing = sorted(key for key, value in config.to_dict().items()
                           if not isinstance(saved, Mapping) or saved.get(key) != value)
        raise ValueError(
            f"the search state was saved with another config (differs in {differing}) or is "
            "not a search state; resume with the config it was saved with, or pass "
            "state=None to start anew.")
