"""The state of an auto-tune search: its runs so far (`SearchState`, `SearchRun`).

`cb_keras.autotune.search.auto_tune` changes the state only through the
methods of `SearchState` (a restart, the end of a run, the final run) and
hands every new state to ``save_state``; a caller that writes
`SearchState.to_dict` atomically resumes the search with
``auto_tune(..., state=SearchState.from_dict(saved, config))``. The JSON
layout (what ``search.json`` of the ``auto_tune`` command holds):

    {"config": {<AutoTuneConfig.to_dict()>},
     "runs": [{"run": 0, "blocks": [3, 12, 41, 3], "epochs": 120, "final": false,
               "restart": {<Restart.to_dict()>} or null,
               "completed_epochs": 7 or null, "test_accuracy": 0.93 or null,
               "summary": {...} or null}, ...]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cb_keras.autotune.check import Restart

if TYPE_CHECKING:
    from cb_keras.autotune.search import AutoTuneConfig
    from cb_keras.autotune.trainer import TrainOutcome

# The fields of a run in the JSON layout, in order.
RUN_FIELDS = ("run", "blocks", "epochs", "final", "restart", "completed_epochs",
              "test_accuracy", "summary")


@dataclasses.dataclass(frozen=True)
class SearchRun:
    """One training run of the search.

    Attributes:
        run: its index, 0 for the starting network; it is initialised with
            seed ``config.seed + run``.
        blocks: blocks per stage of its network.
        epochs: epochs it was asked to train.
        final: the unchecked retraining of the found network (``final_epochs``).
        restart: the `Restart` that ended it, or None.
        completed_epochs, test_accuracy, summary: what its trainer reported
            (`cb_keras.autotune.trainer.TrainOutcome`); None until it ends
            (`completed_epochs` is the restart's epoch once it restarted).
    """

    run: int
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
        """The run in the JSON layout (module docstring)."""
        return {"run": self.run, "blocks": list(self.blocks), "epochs": self.epochs,
                "final": self.final,
                "restart": None if self.restart is None else self.restart.to_dict(),
                "completed_epochs": self.completed_epochs,
                "test_accuracy": self.test_accuracy, "summary": self.summary}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchRun:
        """Inverse of `to_dict`.

        Raises:
            ValueError: a field of `RUN_FIELDS` missing, or a restart that is
                not a `Restart` record.
        """
        if not isinstance(data, Mapping) or not set(RUN_FIELDS) <= set(data):
            raise ValueError(f"a run of the search state needs the fields {list(RUN_FIELDS)}, "
                             f"got {data!r}.")
        try:
            restart = None if data["restart"] is None else Restart.from_dict(data["restart"])
            return cls(**{**{key: data[key] for key in RUN_FIELDS}, "restart": restart})
        except (KeyError, TypeError) as error:
            raise ValueError(f"run {data['run']!r} of the search state is damaged "
                             f"({error!r}).") from None


@dataclasses.dataclass(frozen=True)
class SearchState:
    """The runs of one search so far; the last one is being trained (or is the result).

    Attributes:
        config: the search's settings.
        runs: every run in order, at least one; run k has index k.
    """

    config: AutoTuneConfig
    runs: tuple[SearchRun, ...]

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(self.runs))
        if not self.runs:
            raise ValueError("a search state holds at least one run (the starting network).")

    @classmethod
    def start(cls, config: AutoTuneConfig) -> SearchState:
        """The state of a search that has not started: run 0, the start network."""
        return cls(config, (SearchRun(0, config.start_blocks, config.epochs, final=False),))

    @property
    def current(self) -> SearchRun:
        """The last run: the one being trained, or the result of a finished search."""
        return self.runs[-1]

    @property
    def restarts(self) -> tuple[Restart, ...]:
        """The `Restart` of every restart, in order."""
        return tuple(r.restart for r in self.runs if r.restart is not None)

    @property
    def total_epochs(self) -> int:
        """Epochs trained over all runs (each must have ended)."""
        return sum(r.completed_epochs for r in self.runs)

    def restarted(self, record: Restart) -> SearchState:
        """The current run ends with `record`; a new run of its smaller network follows."""
        ended = dataclasses.replace(self.current, restart=record,
                                    completed_epochs=record.epoch)
        following = SearchRun(len(self.runs), record.blocks_after, self.config.epochs,
                              final=False)
        return dataclasses.replace(self, runs=(*self.runs[:-1], ended, following))

    def ended(self, run: int, outcome: TrainOutcome) -> SearchState:
        """Run `run` has trained: its completed epochs, test accuracy and summary."""
        done = dataclasses.replace(self.runs[run], completed_epochs=outcome.completed_epochs,
                                   test_accuracy=outcome.test_accuracy,
                                   summary=outcome.summary)
        return dataclasses.replace(self, runs=(*self.runs[:run], done, *self.runs[run + 1:]))

    def with_final_run(self) -> SearchState:
        """The current run passed the check: retrain its network for ``config.final_epochs``."""
        final = SearchRun(len(self.runs), self.current.blocks, self.config.final_epochs,
                          final=True)
        return dataclasses.replace(self, runs=(*self.runs, final))

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
        return {"config": self.config.to_dict(), "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], config: AutoTuneConfig) -> SearchState:
        """Inverse of `to_dict`, for a state saved with `config`.

        Raises:
            ValueError: saved with another config (the message lists the
                fields that differ), or no runs, or a damaged run.
        """
        _check_config(data.get("config") if isinstance(data, Mapping) else None, config)
        runs = data.get("runs")
        if not isinstance(runs, Sequence) or isinstance(runs, str) or not runs:
            raise ValueError(f"the search state has no runs (got {runs!r}); it is damaged.")
        return cls(config, tuple(SearchRun.from_dict(r) for r in runs))


def _check_config(saved: Any, config: AutoTuneConfig) -> None:
    """ValueError unless `saved` is ``config.to_dict()``; the message lists what differs."""
    if saved != config.to_dict():
        differing = sorted(key for key, value in config.to_dict().items()
                           if not isinstance(saved, Mapping) or saved.get(key) != value)
        raise ValueError(
            f"the search state was saved with another config (differs in {differing}) or is "
            "not a search state; resume with the config it was saved with, or pass "
            "state=None to start anew.")
