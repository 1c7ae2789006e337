"""Builders of the papers' networks: shapes, depths, parameters, taps, training."""

import keras
import numpy as np
import pytest

from cb_keras.paper import data, models, optimizers
from cb_keras.pruning import ADD_SUFFIX
from cb_keras.taps import ScaledBranchTap, Tap


def _weight_layers(model):
    """Conv2D and Dense layers, without the 1x1 shortcut projections."""
    return [layer for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
            and not layer.name.endswith("proj_conv")]


def _tap_names(model):
    return [layer.name for layer in model.layers if isinstance(layer, Tap)]


def test_paper_blocks_table():
    assert models.paper_blocks(50) == [3, 6, 12, 3]
    assert sorted(models.PAPER_BLOCKS) == [4, 10, 20, 30, 50, 76, 100, 120]
    for depth, blocks in models.PAPER_BLOCKS.items():
        assert models.num_layers(blocks) == depth


def test_unknown_depth_lists_known_depths():
    with pytest.raises(ValueError, match=r"\[4, 10, 20, 30, 50, 76, 100, 120\]"):
        models.paper_blocks(18)


@pytest.mark.parametrize("depth", [4, 10, 30, 120])
def test_vgg_has_the_papers_number_of_layers(depth):
    model = models.vgg(models.paper_blocks(depth), (32, 32, 3), 10)
    assert len(_weight_layers(model)) == depth
    assert model.name == f"vgg{depth}"
    assert len(_tap_names(model)) == sum(models.paper_blocks(depth))


@pytest.mark.parametrize("depth", [4, 20, 50])
def test_resnet_has_the_papers_number_of_layers(depth):
    model = models.resnet(models.paper_blocks(depth), (32, 32, 3), 10)
    assert len(_weight_layers(model)) == depth
    assert len(_tap_names(model)) == 2 * sum(models.paper_blocks(depth))


def _bn(channels):
    return 4 * channels  # gamma, beta, moving mean, moving variance


def _conv(kernel, inputs, filters):
    return kernel * kernel * inputs * filters + filters  # kernel and bias


def test_parameter_counts_match_hand_computation():
    stem = _conv(7, 1, 64) + _bn(64)
    stage1 = 2 * (_conv(3, 64, 64) + _bn(64))
    stage2 = _conv(3, 64, 128) + _conv(3, 128, 128) + 2 * _bn(128)
    projection = _conv(1, 64, 128) + _bn(128)
    head = 128 * 10 + 10
    vgg = models.vgg([1, 1, 0, 0], (8, 8, 1), 10)
    resnet = models.resnet([1, 1, 0, 0], (8, 8, 1), 10)
    assert vgg.count_params() == stem + stage1 + stage2 + head
    assert resnet.count_params() == stem + stage1 + stage2 + projection + head
    fnn = models.fnn(2, 16, (8, 8, 1), 10)
    assert fnn.count_params() == (64 * 16 + 16) + (16 * 16 + 16) + (16 * 10 + 10)


def _paper_count(blocks, channels, num_classes, residual):
    """Parameters of the papers' network, counted layer by layer from its description.

    Stem 7x7 conv with bias + BN; per block two 3x3 convs with bias, each
    with BN; a residual block whose first conv has stride 2 adds a 1x1 conv
    with bias + BN on its shortcut; GAP and a Dense head. Returns
    (all parameters, trainable parameters): BN's moving statistics are the
    two non-trainable parameters per channel.
    """
    total, frozen, inputs = _conv(7, channels, 64) + _bn(64), 2 * 64, 64
    for stage, (count, filters) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for block in range(count):
            total += _conv(3, inputs, filters) + _conv(3, filters, filters) + 2 * _bn(filters)
            frozen += 2 * 2 * filters
            if residual and stage > 0 and block == 0:
                total += _conv(1, inputs, filters) + _bn(filters)
                frozen += 2 * filters
            inputs = filters
    total += inputs * num_classes + num_classes
    return total, total - frozen


@pytest.mark.parametrize("depth", sorted(models.PAPER_BLOCKS))
def test_parameter_counts_of_every_paper_depth(depth):
    blocks = models.paper_blocks(depth)
    for builder, residual in ((models.vgg, False), (models.resnet, True)):
        model = builder(blocks, (16, 16, 3), 10)
        total, trainable = _paper_count(blocks, 3, 10, residual)
        assert model.count_params() == total, (model.name, depth)
        assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable


def test_convolutions_have_biases_and_the_references_initializers():
    model = models.resnet([1, 1, 0, 0], (8, 8, 1), 10)
    stem = model.get_layer("stem_conv")
    assert stem.use_bias and isinstance(stem.kernel_initializer, keras.initializers.GlorotUniform)
    for name in ("stage1_block1_conv1", "stage1_block1_conv2", "stage2_block1_proj_conv"):
        conv = model.get_layer(name)
        assert conv.use_bias and isinstance(conv.kernel_initializer, keras.initializers.HeNormal)
    # Biases are trainable weights, so they enter w_max and get weight decay.
    assert any(w is model.get_layer("stage1_block1_conv1").bias for w in model.trainable_weights)


def test_fnn_layers_taps_and_initialisation():
    model = models.fnn(3, 32, (28, 28, 1), 10)
    assert model.output_shape == (None, 10)
    assert _tap_names(model) == ["dense1_tap", "dense2_tap", "dense3_tap"]
    for i in range(1, 4):
        dense = model.get_layer(f"dense{i}")
        assert model.get_layer(f"dense{i}_tap").input is dense.output
        assert dense.activation is keras.activations.relu
        assert isinstance(dense.kernel_initializer, keras.initializers.HeUniform)
        assert not np.any(dense.bias.numpy())
    assert model.get_layer("logits").activation is keras.activations.linear


def test_vgg_block_taps_follow_the_second_relu():
    model = models.vgg([2, 1, 0, 0], (32, 32, 3), 10)
    assert _tap_names(model) == ["stage1_block1_tap", "stage1_block2_tap", "stage2_block1_tap"]
    for block in ("stage1_block1", "stage1_block2", "stage2_block1"):
        assert model.get_layer(f"{block}_tap").input is model.get_layer(f"{block}_relu2").output
    assert model.get_layer("logits").activation is keras.activations.linear


def test_residual_block_taps_and_add_inputs():
    model = models.resnet([2, 1, 0, 0], (32, 32, 3), 10)
    assert _tap_names(model) == [
        "stage1_block1_branch_tap", "stage1_block1_out_tap",
        "stage1_block2_branch_tap", "stage1_block2_out_tap",
        "stage2_block1_branch_tap", "stage2_block1_out_tap"]
    layer = model.get_layer
    for block in ("stage1_block1", "stage1_block2", "stage2_block1"):
        branch_tap = layer(f"{block}_branch_tap")
        assert isinstance(branch_tap, ScaledBranchTap)
        expected = [layer(f"{block}_{name}").output for name in ("bn2", "conv1", "conv2")]
        assert len(branch_tap.input) == 3
        assert all(got is want for got, want in zip(branch_tap.input, expected))
        assert layer(f"{block}_add").input[1] is branch_tap.output
        assert layer(f"{block}_out").input is layer(f"{block}_add").output
        assert layer(f"{block}_out_tap").input is layer(f"{block}_out").output
    # Identity shortcut inside a stage, projection where the shape changes.
    assert model.get_layer("stage1_block1_add").input[0] is model.get_layer("stem_relu").output
    assert model.get_layer("stage1_block2_add").input[0] is \
        model.get_layer("stage1_block1_out_tap").output
    assert model.get_layer("stage2_block1_add").input[0] is \
        model.get_layer("stage2_block1_proj_bn").output
    assert model.get_layer("stage2_block1_proj_conv").strides == (2, 2)
    assert not any("stage1" in name and "proj" in name
                   for name in (layer.name for layer in model.layers))


def test_block_names_are_built_and_parsed_in_one_place():
    model = models.resnet([1, 2, 0, 0], (32, 32, 3), 10)
    names = [layer.name for layer in model.layers]
    assert models.block_name(2, 2) + ADD_SUFFIX in names
    parsed = {models.parse_block(name, models.BRANCH_TAP_SUFFIX) for name in names} - {None}
    assert parsed == {(1, 1), (2, 1), (2, 2)}
    assert models.parse_block("stage2_block1_out_tap", models.TAP_SUFFIX) is None
    assert models.parse_block("stage3_block5_tap", models.TAP_SUFFIX) == (3, 5)


def test_stem_and_down_sampling():
    model = models.resnet([1, 1, 1, 1], (32, 32, 3), 10)
    stem = model.get_layer("stem_conv")
    assert (stem.kernel_size, stem.strides, stem.filters) == ((7, 7), (2, 2), 64)
    shapes = [model.get_layer(f"stage{s}_block1_out_tap").output.shape for s in range(1, 5)]
    assert shapes == [(None, 16, 16, 64), (None, 8, 8, 128), (None, 4, 4, 256), (None, 2, 2, 512)]
    assert model.get_layer("gap").output.shape == (None, 512)


@pytest.mark.parametrize("width, pooled", [(50, False), (51, True)])
def test_stem_max_pools_only_inputs_wider_than_50_px(width, pooled):
    model = models.vgg([1, 0, 0, 0], (width, width, 3), 10)
    names = [layer.name for layer in model.layers]
    assert ("stem_pool" in names) == pooled


def test_empty_stages_are_skipped_with_their_down_sampling():
    model = models.vgg([1, 0, 2, 0], (32, 32, 3), 10)
    names = [layer.name for layer in model.layers]
    assert not any(name.startswith(("stage2", "stage4")) for name in names)
    assert model.get_layer("stage3_block1_conv1").strides == (2, 2)
    assert model.get_layer("stage3_block2_conv1").strides == (1, 1)
    assert model.get_layer("stage3_block2_tap").output.shape == (None, 8, 8, 256)
    assert model.name == "vgg8"
    first_stage_empty = models.resnet([0, 1, 0, 0], (32, 32, 3), 10)
    assert first_stage_empty.get_layer("stage2_block1_conv1").strides == (2, 2)
    assert "stage2_block1_proj_conv" in [layer.name for layer in first_stage_empty.layers]


@pytest.mark.parametrize("call, message", [
    (lambda: models.vgg([1, 1, 1], (32, 32, 3), 10), "4 non-negative ints"),
    (lambda: models.resnet([1, -1, 1, 1], (32, 32, 3), 10), "4 non-negative ints"),
    (lambda: models.vgg([1.5, 1, 1, 1], (32, 32, 3), 10), "4 non-negative ints"),
    (lambda: models.vgg([0, 0, 0, 0], (32, 32, 3), 10), "at least one block"),
    (lambda: models.vgg([1, 1, 1, 1], (32, 32), 10), "height, width, channels"),
    (lambda: models.resnet([1, 1, 1, 1], (32, 32, 3), 1), "num_classes"),
    (lambda: models.fnn(0, 8, (8,), 10), "depth"),
    (lambda: models.fnn(2, 0, (8,), 10), "width"),
])
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_resnet50_summary_reads_like_the_paper():
    lines = []
    models.resnet(models.paper_blocks(50), (32, 32, 3), 10).summary(
        line_length=140, print_fn=lambda line, **_: lines.append(line))
    summary = "\n".join(lines)
    for name in ("stem_conv", "stage1_block3_add", "stage2_block6_out_tap",
                 "stage3_block12_branch_tap", "stage4_block3_out", "gap", "logits"):
        assert name in summary
    assert "resnet50" in summary


@pytest.mark.parametrize("kind", ["resnet", "vgg"])
def test_the_papers_smallest_network_learns_digits(kind):
    # About 700 steps: the stem's default (Glorot) initializer gives digits
    # conv outputs of variance ~0.003, so BatchNormalization's moving
    # variance (initialised to 1, momentum 0.99) needs ~600 steps before
    # inference-mode outputs match training-mode ones. The 4-layer network
    # (80k parameters) keeps that fast; the 10-layer one (4.9M) spends
    # ~0.4 s per step in the optimizer alone on one CPU core.
    keras.utils.set_random_seed(0)
    train, test, info = data.load("digits", batch_size=16, augment=False, shuffle_seed=0)
    builder = models.vgg if kind == "vgg" else models.resnet
    model = builder(models.paper_blocks(4), info.input_shape, info.num_classes)
    model.compile(optimizer=optimizers.paper_optimizer(),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(train, epochs=8, shuffle=False, verbose=0)  # the Dataset shuffles itself
    _, accuracy = model.evaluate(test, verbose=0)
    assert accuracy > 0.5  # chance is 0.1
