"""cb_keras.autotune: the pruning rules, the check callback, the whole search on digits.

The search tests force a conflict with a tiny learning rate: the transform
``t = w_max - a * lr / bs`` with lr = 1e-7 erases every difference between
activations of order 1 (float32 spacing near w_max >= 1 is ~1e-7), so a^L
of any network is one bundle after every epoch, deterministically. The first
conflicting block is then always ``stage1_block1``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cb_keras import autotune, data, models

TINY_LR = 1e-7


# ------------------------------------------------------------ pure rules


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
    assert autotune.shrink(blocks, pattern) == first
    assert autotune.shrink(blocks, pattern, "first_conflict") == first
    assert autotune.shrink(blocks, pattern, "non_conflicting") == non_conflicting
    assert autotune.shrink(blocks, pattern, "all_non_conflicting") == every_stage


@pytest.mark.parametrize("rule, at_init, window", [
    ("first_conflict", False, 10), ("all_non_conflicting", True, 9),
    ("non_conflicting", False, 10)])
def test_each_rule_checks_on_the_schedule_of_its_reference_version(rule, at_init, window):
    config = autotune.AutoTuneConfig(rule=rule)
    assert (config.check_at_init, config.check_window) == (at_init, window)
    assert autotune.VERSIONS[rule].reference.split(", ")[1].startswith("commit ")
    changed = autotune.AutoTuneConfig(rule=rule, check_window=3, check_at_init=not at_init)
    assert (changed.check_at_init, changed.check_window) == (not at_init, 3)


def test_conflict_pattern_reads_block_taps_of_vgg_and_branch_taps_of_resnet():
    blocks = [2, 1, 0, 1]
    names = ["stem_relu", "stage1_block2_tap", "stage4_block1_tap"]
    assert autotune.conflict_pattern(blocks, names, "vgg") == \
        pattern_of(blocks, {(1, 2), (4, 1)})
    resnet = ["stage1_block1_out_tap", "stage2_block1_branch_tap"]
    assert autotune.conflict_pattern(blocks, resnet, "resnet") == pattern_of(blocks, {(2, 1)})
    assert autotune.first_conflicting_block(pattern_of(blocks, {(4, 1), (1, 2)})) == \
        "stage1_block2"
    assert autotune.first_conflicting_block(pattern_of(blocks, set())) is None


def test_pattern_and_shrink_reject_what_does_not_fit():
    with pytest.raises(ValueError, match="does not have"):
        autotune.conflict_pattern([1, 1, 1, 1], ["stage1_block2_tap"])
    with pytest.raises(ValueError, match="blocks per stage"):
        autotune.shrink([2, 2, 2, 2], [[False], [False], [False], [False]])
    with pytest.raises(ValueError, match="rule must be one of"):
        autotune.shrink([1, 1, 1, 1], pattern_of([1, 1, 1, 1], set()), "last")
    with pytest.raises(ValueError, match="kind must be one of"):
        autotune.conflict_pattern([1, 1, 1, 1], [], "fnn")


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
    ({"learning_rate": 0.0}, "learning_rate must be a number > 0"),
])
def test_bad_options_say_what_is_wrong(options, message):
    with pytest.raises(ValueError, match=message):
        autotune.AutoTuneConfig(**options)


# ------------------------------------------------------------ the check callback


@pytest.fixture(scope="module")
def sample():
    return data.measurement_sample("digits", 64)


def check_callback(sample, blocks, restarts, lines, window=1, kind="vgg",
                   rule="first_conflict", learning_rate=TINY_LR, at_init=False):
    x, y = sample
    model = models.build(kind, x.shape[1:], 10, blocks=blocks)
    check = autotune.ConflictCheck(
        lambda epochs: sample, num_classes=10, learning_rate=learning_rate, batch_size=64,
        run=3, blocks=blocks, kind=kind, rule=rule, window=window,
        on_restart=restarts.append, log=lines.append, at_init=at_init)
    check.set_model(model)
    return check, model


def test_the_check_restarts_a_conflicting_network_inside_its_window_only(sample):
    restarts, lines = [], []
    check, model = check_callback(sample, [1, 1, 0, 1], restarts, lines, window=2)
    late = {}
    check.on_epoch_end(2, late)  # epoch 3: outside the window, nothing measured
    assert np.isnan(late["check_bundle_entropy"]) and not restarts
    logs = {}
    check.on_epoch_end(1, logs)  # epoch 2
    assert logs["check_bundle_entropy"] > 0 and logs["check_num_bundles"] == 1
    assert model.stop_training and restarts == [check.restart] and not lines
    record = check.restart
    assert (record.run, record.epoch, record.layer) == (3, 2, "stage4_block1_tap")
    assert record.first_conflicting_block == "stage1_block1"
    assert record.conflicting_blocks == ("stage1_block1", "stage2_block1", "stage4_block1")
    assert (record.blocks_before, record.blocks_after) == ((1, 1, 0, 1), (0, 1, 0, 1))
    assert autotune.Restart.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def zero_branches(model, blocks):
    """Zero the second BatchNorm's scale of `blocks`: each branch becomes constant.

    Its samples then fall into one bundle (the branch conflicts), whatever the
    learning rate, while every other branch keeps its samples apart.
    """
    for block in blocks:
        layer = model.get_layer(f"{block}_bn2")
        gamma, *rest = layer.get_weights()
        layer.set_weights([np.zeros_like(gamma), *rest])


def test_the_check_of_a_resnet_removes_blocks_by_their_residual_branch(sample):
    restarts, lines = [], []
    check, model = check_callback(sample, [0, 1, 1, 0], restarts, lines, kind="resnet")
    zero_branches(model, ["stage2_block1"])
    check.on_epoch_end(0, {})
    assert model.stop_training and check.restart.layer == "stage3_block1_out_tap"
    # stage3_block1's output is one bundle at this lr, but its branch is not
    assert check.restart.conflicting_blocks == ("stage2_block1",)
    assert check.restart.blocks_after == (0, 0, 1, 0)


def test_the_check_reads_a_measured_a_L_from_the_logs_instead_of_measuring_again(
        sample, monkeypatch):
    restarts, lines = [], []
    check, model = check_callback(sample, [1, 1, 0, 1], restarts, lines, window=3)
    measured = []
    real_measure = autotune.measure
    monkeypatch.setattr(autotune, "measure", lambda *args, **kwargs: measured.append(
        kwargs["layers"]) or real_measure(*args, **kwargs))
    healthy = {"bundle_entropy": 0.0, "num_bundles": 64.0}  # as ConflictingBundles logs it
    check.on_epoch_end(0, healthy)
    assert measured == [] and not restarts and healthy["check_bundle_entropy"] == 0.0
    unmeasured = {"bundle_entropy": np.nan, "num_bundles": np.nan}  # its every > 1
    check.on_epoch_end(1, unmeasured)
    assert measured == ["last", "auto"] and unmeasured["check_bundle_entropy"] > 0
    assert check.restart.epoch == 2 and model.stop_training


def test_the_versions_shrink_one_digits_network_to_three_architectures(sample):
    # stage1_block1 and stage2_block1 conflict; every other branch keeps the 64
    # digits apart at the papers' lr 1e-3.
    found = {}
    for rule in autotune.RULES:
        restarts, lines = [], []
        check, model = check_callback(sample, [3, 3, 0, 1], restarts, lines, kind="resnet",
                                      rule=rule, learning_rate=1e-3)
        zero_branches(model, ["stage1_block1", "stage2_block1"])
        check.on_epoch_end(0, {"bundle_entropy": 0.1})  # a^L conflicted
        assert check.restart.conflicting_blocks == ("stage1_block1", "stage2_block1")
        found[rule] = check.restart.blocks_after
    assert found == {"first_conflict": (0, 3, 0, 1), "non_conflicting": (2, 3, 0, 1),
                     "all_non_conflicting": (2, 2, 0, 1)}


def test_the_check_at_initialization_runs_only_for_versions_that_have_it(sample):
    for at_init in (False, True):
        restarts, lines = [], []
        check, model = check_callback(sample, [1, 1, 0, 1], restarts, lines, at_init=at_init)
        logs = {}
        assert check.before_training(model, logs) is at_init
        assert [r.epoch for r in restarts] == ([0] if at_init else [])
        assert np.isnan(logs["check_bundle_entropy"]) is not at_init


def test_a_conflict_that_would_remove_every_block_does_not_restart(sample):
    restarts, lines = [], []
    check, model = check_callback(sample, [1, 0, 0, 0], restarts, lines)
    check.on_epoch_end(0, {})
    assert not restarts and not getattr(model, "stop_training", False)
    assert len(lines) == 1 and "cannot shrink" in lines[0] and "stage1_block1" in lines[0]


def test_a_diverged_a_L_is_not_a_conflict(nan_fed_relu_model):
    # a^L is fed NaN and outputs 0s (as fused ReLU kernels do): no restart, no log.
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    restarts, lines, logs = [], [], {}
    check = autotune.ConflictCheck(
        lambda epochs: (x, np.arange(16) % 3), num_classes=3, learning_rate=1e-3,
        batch_size=16, run=0, blocks=[1, 0, 0, 0], kind="vgg", rule="first_conflict",
        window=1, on_restart=restarts.append, log=lines.append)
    check.set_model(nan_fed_relu_model)
    check.on_epoch_end(0, logs)
    assert np.isnan(logs["check_bundle_entropy"]) and np.isnan(logs["check_num_bundles"])
    assert not restarts and not lines


# ------------------------------------------------------------ the whole search


def test_search_on_digits_restarts_saves_its_state_and_retrains_the_result(sample):
    train, test, info = data.load("digits", batch_size=64, augment=False, shuffle_seed=0)
    config = autotune.AutoTuneConfig(
        start_blocks=(1, 1, 1, 1), epochs=2, check_window=1, max_restarts=1,
        final_epochs=1, learning_rate=TINY_LR, seed=7)
    saved, restarts, lines = [], [], []
    trainer = autotune.fit_trainer(train, test, input_shape=info.input_shape,
                                   num_classes=10, learning_rate=TINY_LR, verbose=0)
    result = autotune.auto_tune(
        config, trainer, *sample, num_classes=10,
        save_state=lambda state: saved.append(json.dumps(state)),
        on_restart=restarts.append, log=lines.append)

    assert result.num_restarts == 1 and list(result.restarts) == restarts
    assert restarts[0].epoch == 1 and restarts[0].blocks_after == (0, 1, 1, 1)
    assert result.final_blocks == (0, 1, 1, 1)
    # run 0 stopped after epoch 1; run 1 (no restarts left) trained 2; the retrain 1
    assert [(r["blocks"], r["epochs"], r["final"], r["completed_epochs"])
            for r in result.runs] == [([1, 1, 1, 1], 2, False, 1),
                                      ([0, 1, 1, 1], 2, False, 2), ([0, 1, 1, 1], 1, True, 1)]
    assert result.total_epochs == 4
    assert 0.0 <= result.test_accuracy <= 1.0
    assert not any(layer.name.startswith("stage1") for layer in result.model.layers)
    assert result.final_parameters == result.model.count_params() < result.start_parameters
    assert lines[0].startswith("restart 1: run 0 conflicts after epoch 1")
    assert any("training it from scratch for 1 epochs" in line for line in lines)

    final_state = json.loads(saved[-1])
    assert final_state["runs"] == json.loads(json.dumps(list(result.runs)))
    assert json.loads(saved[1])["runs"][1]["completed_epochs"] is None  # saved before training
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
    trainer = autotune.fit_trainer(train, test, input_shape=info.input_shape,
                                   num_classes=10, verbose=0)
    draws = []

    def sampler(seed, epochs):
        draws.append((seed, epochs))
        return data.sampler("digits", 64, augmented=True, batch_size=64)(seed, epochs)

    result = autotune.auto_tune(config, trainer, num_classes=10, sampler=sampler, log=print)
    assert [(r.run, r.epoch, r.blocks_after) for r in result.restarts] == [(0, 0, (2, 2, 1, 0))]
    assert [(r["blocks"], r["completed_epochs"]) for r in result.runs] == \
        [([2, 2, 2, 2], 0), ([2, 2, 1, 0], 1)]
    assert result.total_epochs == 1 and draws == [(3, 0)]  # run 1 is not checked
    with pytest.raises(ValueError, match="not both"):
        autotune.auto_tune(config, trainer, *data.measurement_sample("digits", 64),
                           num_classes=10, sampler=sampler)
