"""`TrialState`: state.json's JSON, unchanged, and the changes of a trial's state."""

import json

import pytest

from experiments.runtime.rundir import RunDirError
from experiments.trials.state import TrialState

# A finished trial's state.json as the trials wrote it before TrialState (keys in file order).
FINISHED = """{
  "spec": {"model": "vgg", "blocks": [1, 0, 0, 0]},
  "seed": 3,
  "completed_epochs": 2,
  "history": [
    {"epoch": 0, "bundle_entropy": 0.5, "max_accuracy": 0.25, "num_bundles": 7},
    {"epoch": 1, "accuracy": 0.5, "loss": 1.5, "seconds": 2.0},
    {"epoch": 2, "accuracy": 0.75, "loss": 1.25, "seconds": 1.5}
  ],
  "data_seeds": [11, 12],
  "checkpoint": "checkpoints/epoch_0002.weights.h5",
  "result": {"seed": 3, "epochs": 2, "test_accuracy": 0.5},
  "finished": true
}"""


def test_a_state_json_of_every_stage_reads_and_writes_back_the_same_json():
    finished = json.loads(FINISHED)
    committed = {k: v for k, v in finished.items() if k not in ("result", "finished")}
    begun = {**{k: v for k, v in committed.items() if k != "checkpoint"},
             "completed_epochs": 0, "history": finished["history"][:1]}
    for saved in (begun, committed, finished):
        state = TrialState.from_dict(saved)
        assert json.dumps(state.to_dict()) == json.dumps(saved)
    assert TrialState.from_dict(finished).finished
    assert not TrialState.from_dict(committed).finished


def test_a_trial_commits_epochs_rolls_back_and_finishes():
    state = TrialState.new({"model": "vgg", "blocks": (1, 0, 0, 0)}, 3, [11, 12, 13])
    assert state.to_dict() == {"spec": {"model": "vgg", "blocks": [1, 0, 0, 0]}, "seed": 3,
                               "completed_epochs": 0, "history": [], "data_seeds": [11, 12, 13]}
    state = state.begin({"epoch": 0, "bundle_entropy": 0.5})
    for epoch in (1, 2, 3):
        state = state.commit_epoch({"epoch": epoch, "loss": 1.0 / epoch}, f"ck{epoch}")
    assert (state.completed_epochs, state.checkpoint) == (3, "ck3")
    assert [row["epoch"] for row in state.history] == [0, 1, 2, 3]

    back = state.roll_back(1, "ck1")  # the checkpoints of epochs 2 and 3 do not load
    assert (back.completed_epochs, back.checkpoint) == (1, "ck1")
    assert [row["epoch"] for row in back.history] == [0, 1]
    assert state.completed_epochs == 3  # a record: rolling back made a new one

    redone = back.commit_epoch({"epoch": 2, "loss": 0.1}, "ck2")
    assert [(row["epoch"], row["loss"]) for row in redone.history[1:]] == [(1, 1.0), (2, 0.1)]
    done = redone.finish({"epochs": 2})
    assert done.finished and list(done.to_dict())[-2:] == ["result", "finished"]


def test_a_state_of_another_network_or_seed_is_refused():
    state = TrialState.from_dict(json.loads(FINISHED))
    state.check_trial({"model": "vgg", "blocks": (1, 0, 0, 0)}, 3, "here")  # tuples as lists
    with pytest.raises(RunDirError, match="here holds a trial of .* with seed 3, not of .* "
                                          "with seed 4; use another directory"):
        state.check_trial({"model": "vgg", "blocks": [1, 0, 0, 0]}, 4, "here")


def test_a_state_json_without_its_keys_is_refused_in_one_line():
    with pytest.raises(RunDirError, match=r"state.json lacks \['history', 'data_seeds'\]"):
        TrialState.from_dict({"spec": {}, "seed": 0, "completed_epochs": 0})
