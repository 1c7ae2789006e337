"""cb_keras.autotune: the config and the whole search on digits.

The search tests force a conflict with the tiny learning rate of
tests/test_check.py: a^L of any network is then one bundle after every epoch,
and the first conflicting block is always ``stage1_block1``.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from cb_keras import autotune
from cb_keras.autotune import rules
from cb_keras.paper import data
from cb_keras.paper.spec import NetworkSpec
from cb_keras.autotune.trainer import TrainRequest, fit_trainer

TINY_LR = 1e-7


# ------------------------------------------------------------ the config


@pytest.mark.parametrize("rule, at_init, window", [
    ("first_conflict", False, 10), ("all_non_conflicting", True, 9),
    ("non_conflicting", False, 10)])
def test_each_rule_checks_on_the_schedule_of_its_reference_version(rule, at_init, window):
    config = autotune.AutoTuneConfig(rule=rule)
    assert (config.check_at_init, config.check_window) == (at_init, window)
    reference = rules.VERSIONS[rule].reference
    assert re.search(r"commit [0-9a-f]{7}\b", reference), reference
    # The default is the papers' rule, not the code of the commit that first had it.
    assert reference.startswith("the papers' text") is (rule == "first_conflict")
    changed = autotune.AutoTuneConfig(rule=rule, check_window=3, check_at_init=not at_init)
    assert (changed.check_at_init, changed.check_window) == (not at_init, 3)


@pytest.mark.parametrize("options, message", [
    ({"start_blocks": (3, 12, 41)}, "blocks must be 4"),
    ({"start_blocks": (0, 0, 0, 0)}, "at least one block"),
    ({"start_blocks": (1, -1, 1, 1)}, "non-negative"),
    ({"kind": "fnn"}, "kind must be one of"),
    ({"rule": "papers"}, "rule must be one of"),
    ({"epochs": 0}, "epochs must be an int >= 1"),
    ({"check_window": 2.5}, "check_window must be an int"),
    ({"check_at_init": 1}, "check_at_init must be True, False or None"),
    ({"samples": 0}, "samples must be"),
    ({"max_restarts": -1}, "max_restarts must be an int >= 0"),
    ({"final_epochs": 0}, "final_epochs must be"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"learning_rate": 1e-50}, r"learning_rate=1e-50 is 0 in float32"),
])
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(ValueError, match=message):
        autotune.AutoTuneConfig(**options)


# ------------------------------------------------------------ the whole search


def test_search_on_digits_restarts_saves_its_state_and_retrains_the_result(sample, monkeypatch):
    train, test, info = data.load("digits", batch_size=64, augment=False, shuffle_seed=0)
    built, build = [], NetworkSpec.build
    monkeypatch.setattr(NetworkSpec, "build",
                        lambda spec, *args, **kwargs: built.append(spec.blocks)
                        or build(spec, *args, **kwargs))
    config = autotune.AutoTuneConfig(
        start_blocks=(1, 1, 1, 1), epochs=2, check_window=1, max_restarts=1,
        final_epochs=1, learning_rate=TINY_LR, seed=7)
    saved, restarts, lines = [], [], []
    trainer = fit_trainer(train, test, input_shape=info.input_shape, num_classes=10,
                          verbose=0)
    result = autotune.auto_tune(
        config, trainer, *sample, num_classes=10,
        save_state=lambda state: saved.append(json.dumps(state.to_dict())),
        on_restart=restarts.append, log=lines.append)

    assert result.num_restarts == 1 and list(result.restarts) == restarts
    assert restarts[0].epoch == 1 and restarts[0].blocks_after == (0, 1, 1, 1)
    assert result.final_blocks == (0, 1, 1, 1)
    # attempt 0 stopped after epoch 1; attempt 1 (no restarts left) trained 2; the retrain 1
    assert [(a.blocks, a.epochs, a.final, a.completed_epochs) for a in result.attempts] == \
        [((1, 1, 1, 1), 2, False, 1), ((0, 1, 1, 1), 2, False, 2), ((0, 1, 1, 1), 1, True, 1)]
    assert result.total_epochs == 4
    assert 0.0 <= result.test_accuracy <= 1.0
    assert not any(layer.name.startswith("stage1") for layer in result.model.layers)
    assert result.final_parameters == result.model.count_params() < result.start_parameters
    # the start network is built once, by attempt 0; the result reads its parameters from there
    assert built.count((1, 1, 1, 1)) == 1
    assert result.start_parameters == build(NetworkSpec("vgg", (1, 1, 1, 1)),
                                            info.input_shape, 10).count_params()
    assert lines[0].startswith("restart 1: attempt 0 conflicts after epoch 1")
    assert any("training it from scratch for 1 epochs" in line for line in lines)

    final_state = autotune.SearchState.from_dict(json.loads(saved[-1]), config)
    assert final_state.attempts == result.attempts
    assert json.loads(saved[-1])["attempts"] == result.to_dict()["attempts"]
    assert json.loads(saved[1])["attempts"][1]["completed_epochs"] is None  # saved before training
    assert json.dumps(result.to_dict())  # plain JSON
    with pytest.raises(ValueError, match=r"another config \(differs in \['epochs'\]\)"):
        autotune.auto_tune(autotune.AutoTuneConfig(start_blocks=(1, 1, 1, 1), epochs=3,
                                                   check_window=1, max_restarts=1,
                                                   final_epochs=1, learning_rate=TINY_LR,
                                                   seed=7),
                           trainer, *sample, num_classes=10, state=final_state)
    with pytest.raises(ValueError, match="measures on 64"):
        autotune.auto_tune(config, trainer, sample[0][:10], sample[1][:10], num_classes=10)


def test_the_dec_2020_version_restarts_before_training_and_draws_a_sample_per_check():
    # At the papers' lr 1e-3 the untrained 2,2,2,2 network's a^L conflicts on
    # its first augmented batch, and so do stage3_block2 and every later block:
    # the check at initialization shrinks every stage to its non-conflicting
    # blocks before any training.
    train, test, info = data.load("digits", batch_size=64, augment=False, shuffle_seed=0)
    config = autotune.AutoTuneConfig(start_blocks=(2, 2, 2, 2), rule="all_non_conflicting",
                                     epochs=1, max_restarts=1, seed=3)
    trainer = fit_trainer(train, test, input_shape=info.input_shape, num_classes=10,
                          verbose=0)
    draws = []

    def sampler(seed, epochs):
        draws.append((seed, epochs))
        return data.sampler("digits", 64, augmented=True, batch_size=64)(seed, epochs)

    result = autotune.auto_tune(config, trainer, num_classes=10, sampler=sampler, log=print)
    assert [(r.attempt, r.epoch, r.blocks_after) for r in result.restarts] == \
        [(0, 0, (2, 2, 1, 0))]
    assert [(a.blocks, a.completed_epochs) for a in result.attempts] == \
        [((2, 2, 2, 2), 0), ((2, 2, 1, 0), 1)]
    assert result.total_epochs == 1 and draws == [(3, 0)]  # attempt 1 is not checked
    with pytest.raises(ValueError, match="not both"):
        autotune.auto_tune(config, trainer, *data.measurement_sample("digits", 64),
                           num_classes=10, sampler=sampler)


def test_the_trainer_trains_with_the_learning_rate_and_batch_size_the_search_measures_with():
    train, test, info = data.load("digits", batch_size=64, augment=False, shuffle_seed=0)
    trainer = fit_trainer(train, test, input_shape=info.input_shape, num_classes=10,
                          verbose=0)
    request = TrainRequest(attempt=0, kind="vgg", blocks=(1, 0, 0, 0), epochs=1, seed=0,
                           learning_rate=TINY_LR, batch_size=64, callbacks=())
    model = trainer(request).load_model()
    assert float(model.optimizer.learning_rate.numpy()) == np.float32(TINY_LR)
    with pytest.raises(ValueError, match="batches hold 64 examples but the search measures "
                                         "with batch_size=32"):
        trainer(dataclasses.replace(request, batch_size=32))


def test_the_trainer_traces_its_train_step_once():
    # Optimizer or metric variables created inside the first trace of the
    # train step make TensorFlow trace the whole step again (it did before
    # fit_trainer compiled with trainer.compile_model).
    train, test, info = data.load("digits", batch_size=64, augment=False, shuffle_seed=0)
    traces = []

    def count_traces(model, measured):
        train_step = model.train_step

        def counted_train_step(batch):
            traces.append(batch)
            return train_step(batch)
        model.train_step = counted_train_step
        return False

    trainer = fit_trainer(train.take(2), test.take(1), input_shape=info.input_shape,
                          num_classes=10, verbose=0)
    trainer(TrainRequest(attempt=0, kind="vgg", blocks=(1, 0, 0, 0), epochs=2, seed=0,
                         learning_rate=1e-3, batch_size=64, callbacks=(),
                         before_training=count_traces))
    assert len(traces) == 1
