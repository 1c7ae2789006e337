"""`TrialState`: what a trial's ``state.json`` holds, its resume point.

One record with one owner: the trial (`experiments.trials.trial.train_trial`)
makes or reads it, and each change is a method that returns the next state
(`begin`, `commit_epoch`, `roll_back`, `finish`); `EpochCommit` commits
each finished epoch with `commit_epoch`. `to_dict` writes the JSON that
state.json has always held, and `from_dict` reads it, so trials started
before resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from experiments.runtime.rundir import STATE_FILE, RunDirError, jsonable


@dataclasses.dataclass(frozen=True)
class TrialState:
    """The resume point of one trial.

    Attributes:
        spec: the network (`experiments.trials.recipe`), as JSON data.
        seed: the seed of the network's initialisation.
        data_seeds: the seed of the training data of each epoch (0-based),
            `experiments.trials.trial.data_seed`.
        completed_epochs: epochs committed so far (0: none).
        history: one row of metrics.csv per committed epoch, ``{"epoch":
            completed epochs, ...}``; row 0 holds what was measured at
            initialization.
        checkpoint: the checkpoint of the last committed epoch, relative to
            the trial directory; None before the first.
        result: the trial's result once it finished (`train_trial`), else None.
    """

    spec: dict[str, Any]
    seed: int
    data_seeds: tuple[int, ...]
    completed_epochs: int = 0
    history: tuple[dict[str, Any], ...] = ()
    checkpoint: str | None = None
    result: dict[str, Any] | None = None

    @classmethod
    def new(cls, spec: dict[str, Any], seed: int, data_seeds: list[int]) -> "TrialState":
        """The state of a trial that has not begun."""
        return cls(jsonable(spec), seed, tuple(data_seeds))

    @property
    def finished(self) -> bool:
        """True once the trial's result is stored."""
        return self.result is not None

    def check_trial(self, spec: dict[str, Any], seed: int, where: Any) -> None:
        """RunDirError unless this is the state of a trial of `spec` with `seed`."""
        if (self.spec, self.seed) != (jsonable(spec), seed):
            raise RunDirError(
                f"{where} holds a trial of {self.spec} with seed {self.seed}, not of "
                f"{spec} with seed {seed}; use another directory for this network.")

    def begin(self, row: dict[str, Any]) -> "TrialState":
        """The state with `row` (``epoch=0``: measured at initialization) as its history."""
        return dataclasses.replace(self, history=(row,))

    def commit_epoch(self, row: dict[str, Any], checkpoint: str | None) -> "TrialState":
        """The state after epoch ``row["epoch"]``: its row replaces any of that epoch or later."""
        done = row["epoch"]
        return dataclasses.replace(
            self, history=tuple(r for r in self.history if r["epoch"] < done) + (row,),
            completed_epochs=done, checkpoint=checkpoint)

    def roll_back(self, epoch: int, checkpoint: str) -> "TrialState":
        """The state at an earlier committed `epoch` whose checkpoint is `checkpoint`."""
        return dataclasses.replace(
            self, completed_epochs=epoch, checkpoint=checkpoint,
            history=tuple(r for r in self.history if r["epoch"] <= epoch))

    def finish(self, result: dict[str, Any]) -> "TrialState":
        """The finished state holding `result`."""
        return dataclasses.replace(self, result=result)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of state.json, keys in the order state.json has always had."""
        out = {"spec": self.spec, "seed": self.seed, "completed_epochs": self.completed_epochs,
               "history": list(self.history), "data_seeds": list(self.data_seeds)}
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint
        if self.finished:
            out.update(result=self.result, finished=True)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialState":
        """The state of a state.json object (`to_dict`).

        Raises:
            RunDirError: a key that every state.json holds is missing.
        """
        missing = [key for key in ("spec", "seed", "completed_epochs", "history", "data_seeds")
                   if key not in values]
        if missing:
            raise RunDirError(f"{STATE_FILE} lacks {missing}; it was edited or damaged. Restore "
                              f"it, or delete it to retrain the trial.")
        return cls(values["spec"], values["seed"], tuple(values["data_seeds"]),
                   values["completed_epochs"], tuple(values["history"]),
                   values.get("checkpoint"),
                   values.get("result") if values.get("finished") else None)
