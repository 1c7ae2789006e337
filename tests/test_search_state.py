"""SearchState: the search's state record, its changes and its JSON layout (search.json)."""

from __future__ import annotations

import json

import pytest

from cb_keras.autotune import AutoTuneConfig, SearchAttempt, SearchState
from cb_keras.autotune.check import Restart
from cb_keras.autotune.trainer import TrainOutcome

CONFIG = AutoTuneConfig(start_blocks=(1, 1, 1, 1), epochs=2, check_window=1, max_restarts=1,
                        final_epochs=1, learning_rate=1e-7, seed=7)
# A finished search as search.json holds it (json.dumps of its state dict):
# attempt 0 restarted after epoch 1, attempt 1 passed, attempt 2 retrained it.
GOLDEN = (
    '{"config": {"start_blocks": [1, 1, 1, 1], "kind": "vgg", "epochs": 2, '
    '"rule": "first_conflict", "check_window": 1, "check_at_init": false, "samples": 64, '
    '"max_restarts": 1, "final_epochs": 1, "learning_rate": 1e-07, "batch_size": 64, '
    '"seed": 7}, '
    '"attempts": [{"attempt": 0, "blocks": [1, 1, 1, 1], "epochs": 2, "final": false, '
    '"restart": {"attempt": 0, "epoch": 1, "layer": "stage4_block1_tap", '
    '"bundle_entropy": 4.1589, "first_conflicting_block": "stage1_block1", '
    '"conflicting_blocks": ["stage1_block1", "stage2_block1"], '
    '"blocks_before": [1, 1, 1, 1], "blocks_after": [0, 1, 1, 1]}, '
    '"completed_epochs": 1, "test_accuracy": null, "summary": {"parameters": 100}}, '
    '{"attempt": 1, "blocks": [0, 1, 1, 1], "epochs": 2, "final": false, "restart": null, '
    '"completed_epochs": 2, "test_accuracy": 0.5, "summary": {"parameters": 80}}, '
    '{"attempt": 2, "blocks": [0, 1, 1, 1], "epochs": 1, "final": true, "restart": null, '
    '"completed_epochs": 1, "test_accuracy": 0.25, "summary": {"parameters": 80}}]}')
RESTART = Restart(attempt=0, epoch=1, layer="stage4_block1_tap", bundle_entropy=4.1589,
                  first_conflicting_block="stage1_block1",
                  conflicting_blocks=("stage1_block1", "stage2_block1"),
                  blocks_before=(1, 1, 1, 1), blocks_after=(0, 1, 1, 1))


def outcome(epochs: int, accuracy: float | None, parameters: int) -> TrainOutcome:
    return TrainOutcome(epochs, accuracy, {"parameters": parameters}, lambda: None)


def test_a_saved_state_round_trips_byte_for_byte():
    state = SearchState.from_dict(json.loads(GOLDEN), CONFIG)
    assert json.dumps(state.to_dict()) == GOLDEN
    assert state.config == CONFIG and state.restarts == (RESTART,)
    assert [(a.attempt, a.blocks, a.final) for a in state.attempts] == \
        [(0, (1, 1, 1, 1), False), (1, (0, 1, 1, 1), False), (2, (0, 1, 1, 1), True)]
    assert state.current.test_accuracy == 0.25 and state.total_epochs == 4


def test_the_changes_of_a_search_give_the_state_it_saved():
    state = SearchState.start(CONFIG)
    assert state.to_dict()["attempts"] == [json.loads(GOLDEN)["attempts"][0] | {
        "restart": None, "completed_epochs": None, "summary": None}]
    state = state.restarted(RESTART)
    assert (state.attempts[0].completed_epochs, state.current) == (
        1, SearchAttempt(1, (0, 1, 1, 1), epochs=2, final=False))
    state = state.ended(0, outcome(1, None, 100)).ended(1, outcome(2, 0.5, 80))
    state = state.with_final_attempt().ended(2, outcome(1, 0.25, 80))
    assert json.dumps(state.to_dict()) == GOLDEN


def test_a_state_is_frozen_and_changes_only_by_its_methods():
    state = SearchState.start(CONFIG)
    restarted = state.restarted(RESTART)
    assert len(state.attempts) == 1 and len(restarted.attempts) == 2  # the old one is unchanged
    with pytest.raises(AttributeError):
        state.attempts = ()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s["config"].update(epochs=3), r"another config \(differs in \['epochs'\]\)"),
    (lambda s: s.pop("config"), r"another config \(differs in \['batch_size', "),
    (lambda s: s.update(attempts=[]), "has no attempts"),
    (lambda s: s["attempts"][1].pop("summary"),
     "an attempt of the search state needs the fields"),
    (lambda s: s["attempts"][0]["restart"].pop("layer"),
     "attempt 0 of the search state is damaged"),
    (lambda s: s["attempts"][0].update(restart=[1, 2]),
     "attempt 0 of the search state is damaged"),
])
def test_a_damaged_or_foreign_state_is_refused_in_one_line(edit, message):
    data = json.loads(GOLDEN)
    edit(data)
    with pytest.raises(ValueError, match=message) as refused:
        SearchState.from_dict(data, CONFIG)
    assert "\n" not in str(refused.value)


def test_a_state_of_the_older_layout_with_runs_is_refused_in_one_line():
    # search.json of cb_keras before the search's index was named "attempt" (CHANGELOG.md)
    old = GOLDEN.replace('"attempt', '"run')
    assert '"runs": [{"run": 0,' in old and "attempt" not in old
    with pytest.raises(ValueError, match=r"has no attempts \(got None\); it is damaged\.$") \
            as refused:
        SearchState.from_dict(json.loads(old), CONFIG)
    assert "\n" not in str(refused.value)


def test_a_state_of_another_config_is_refused_when_resumed():
    state = SearchState.start(CONFIG)
    assert state.check_config(CONFIG) is state
    with pytest.raises(ValueError, match=r"differs in \['seed'\]"):
        state.check_config(AutoTuneConfig(start_blocks=(1, 1, 1, 1), epochs=2, check_window=1,
                                          max_restarts=1, final_epochs=1,
                                          learning_rate=1e-7, seed=8))
