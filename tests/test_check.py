"""cb_keras.autotune.check: the check of a^L during training that decides a restart.

The tests force a conflict with a tiny learning rate: the transform
``t = w_max - a * lr / bs`` with lr = 1e-7 erases every difference between
activations of order 1 (float32 spacing near w_max >= 1 is ~1e-7), so a^L
of any network is one bundle after every epoch, deterministically. The first
conflicting block is then always ``stage1_block1``.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np

from cb_keras.autotune import check as conflict_check
from cb_keras.autotune import rules
from cb_keras.paper.spec import NetworkSpec
from cb_keras.autotune.check import ConflictCheck, Restart

TINY_LR = 1e-7


def check_callback(sample, blocks, restarts, lines, window=1, kind="vgg",
                   rule="first_conflict", learning_rate=TINY_LR, at_init=False):
    x, y = sample
    model = NetworkSpec(kind, blocks).build(x.shape[1:], 10)
    check = ConflictCheck(
        lambda epochs: sample, num_classes=10, learning_rate=learning_rate, batch_size=64,
        attempt=3, blocks=blocks, kind=kind, rule=rule, window=window,
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
    assert (record.attempt, record.epoch, record.layer) == (3, 2, "stage4_block1_tap")
    assert record.first_conflicting_block == "stage1_block1"
    assert record.conflicting_blocks == ("stage1_block1", "stage2_block1", "stage4_block1")
    assert (record.blocks_before, record.blocks_after) == ((1, 1, 0, 1), (0, 1, 0, 1))
    assert Restart.from_dict(json.loads(json.dumps(record.to_dict()))) == record


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
    real_measure = conflict_check.measure
    monkeypatch.setattr(conflict_check, "measure", lambda *args, **kwargs: measured.append(
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
    for rule in rules.RULES:
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


def test_a_conflict_the_rule_cannot_act_on_does_not_restart(sample):
    # a^L of a ResNet is a block output, blocks are judged by their branches:
    # a conflicting a^L with no conflicting branch leaves the blocks as they are.
    restarts, lines = [], []
    check, model = check_callback(sample, [1, 1, 0, 0], restarts, lines, kind="resnet")
    check._decide(2, SimpleNamespace(conflicting=["stage2_block1_tap"]))
    assert not restarts and not getattr(model, "stop_training", False)
    assert lines == ["epoch 2: a^L conflicts but rule 'first_conflict' cannot shrink blocks "
                     "[1, 1, 0, 0] (conflicting blocks: none); training goes on."]


def test_a_diverged_a_L_is_not_a_conflict(nan_fed_relu_model):
    # a^L is fed NaN and outputs 0s (as fused ReLU kernels do): no restart, no log.
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    restarts, lines, logs = [], [], {}
    check = ConflictCheck(
        lambda epochs: (x, np.arange(16) % 3), num_classes=3, learning_rate=1e-3,
        batch_size=16, attempt=0, blocks=[1, 0, 0, 0], kind="vgg", rule="first_conflict",
        window=1, on_restart=restarts.append, log=lines.append)
    check.set_model(nan_fed_relu_model)
    check.on_epoch_end(0, logs)
    assert np.isnan(logs["check_bundle_entropy"]) and np.isnan(logs["check_num_bundles"])
    assert not restarts and not lines
