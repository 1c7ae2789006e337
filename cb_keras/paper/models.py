"""The papers' networks as functional Keras models, with their taps marked.

Three builders, each returning an uncompiled ``keras.Model`` that maps images
``(batch, *input_shape)`` float32 to logits ``(batch, num_classes)`` (a
linear head: train with sparse categorical cross-entropy from logits):

- `fnn`: ``depth`` hidden Dense+ReLU layers of ``width`` units.
- `vgg`: plain blocks of conv-BN-ReLU-conv-BN-ReLU.
- `resnet`: the same blocks with a shortcut added before the last ReLU.

`cb_keras.paper.spec.NetworkSpec` names one of them (kind and sizes) and builds it.

VGG and ResNet share the layout of the papers' reference implementation:

    stem_conv 7x7/2, 64 filters -> stem_bn -> stem_relu
      [-> stem_pool 3x3/2 max-pool, only for inputs wider than 50 px]
    stage 1..4 with 64/128/256/512 filters, blocks[s-1] blocks each
    gap (global average pooling) -> logits (Dense)

``blocks`` lists the blocks per stage; a network with blocks ``b`` has
``2 * sum(b) + 2`` weight layers (stem, two convolutions per block, head),
so `paper_blocks` maps the papers' depths 4 ... 120 to block lists. The
first block of stages 2-4 has stride 2. A stage with zero blocks is skipped
together with its down-sampling, exactly as in the reference (which builds
each stage with its own stride and drops empty ones); so ``[1, 0, 0, 0]``
never down-samples after the stem, and ``[0, 1, 1, 1]`` starts with a
stride-2 block on the stem's output.

Layers are built as the reference builds them (docs/method.md §3): the stem
convolution uses Keras's default initializer (Glorot-uniform), every block
convolution and 1x1 projection He-normal, and all of them have a bias
(Keras's default ``use_bias=True``), although BatchNormalization follows
each. The biases are trainable weights, so they count in the parameter
counts and in ``w_max`` and get the optimizer's weight decay, as in the
reference. BatchNormalization uses the Keras defaults, as the reference did,
and updates its moving variance as the reference's did
(`cb_keras.paper.batch_norm.BesselBatchNormalization`).

Layer names (``s``, ``b`` count from 1; a block is named ``stage{s}_block{b}``,
`block_name` builds it and `parse_block` reads it back from a layer name):

    {block}_conv1, _bn1, _relu1, _conv2, _bn2       both block types
    {block}_relu2, {block}_tap                      VGG
    {block}_branch_tap, [_proj_conv, _proj_bn],
    {block}_add (inputs [shortcut, branch]), {block}_out, {block}_out_tap
                                                    ResNet

The taps (`cb_keras.taps`) mark what docs/method.md §2 measures, in measurement order:
every hidden Dense output of an FNN, every VGG block output, and per
residual block first the scaled branch, then the block output.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras

from cb_keras import validation
from cb_keras.pruning import ADD_SUFFIX
from cb_keras.paper.batch_norm import BesselBatchNormalization
from cb_keras.taps import ScaledBranchTap, Tap

STAGE_FILTERS = (64, 128, 256, 512)
STEM_FILTERS = 64
STEM_POOL_MIN_WIDTH = 50  # the stem max-pools only inputs wider than this (px)
PAPER_BLOCKS = {
    4: [1, 0, 0, 0],
    10: [1, 1, 1, 1],
    20: [2, 2, 3, 2],
    30: [3, 3, 5, 3],
    50: [3, 6, 12, 3],
    76: [3, 6, 25, 3],
    100: [3, 12, 31, 3],
    120: [3, 12, 41, 3],
}
MODEL_KINDS = ("fnn", "vgg", "resnet")
# Suffixes of the layers of a block named ``stage{s}_block{b}`` (module docstring).
TAP_SUFFIX = "_tap"  # the output tap of a VGG block
BRANCH_TAP_SUFFIX = "_branch_tap"  # the scaled residual branch tap of a ResNet block
_BLOCK = re.compile(r"stage(\d+)_block(\d+)")


def block_name(stage: int, block: int) -> str:
    """The name ``stage{stage}_block{block}`` of a block (both count from 1)."""
    return f"stage{stage}_block{block}"


def parse_block(name: str, suffix: str = "") -> tuple[int, int] | None:
    """``(stage, block)`` of a layer named ``stage{s}_block{b}{suffix}``, else None.

    Example: ``parse_block("stage3_block5_tap", TAP_SUFFIX) == (3, 5)``.
    """
    if not name.endswith(suffix):
        return None
    match = _BLOCK.fullmatch(name[:len(name) - len(suffix)])
    return (int(match.group(1)), int(match.group(2))) if match else None


def paper_blocks(depth: int) -> list[int]:
    """Blocks per stage of the papers' network with `depth` weight layers.

    Example: ``paper_blocks(50) == [3, 6, 12, 3]``. Raises ValueError for a
    depth the papers do not use, listing the known ones.
    """
    if depth not in PAPER_BLOCKS:
        raise ValueError(
            f"The papers define no network with depth {depth!r}; known depths: "
            f"{sorted(PAPER_BLOCKS)}. Pass an explicit blocks list instead, "
            "e.g. blocks=[2, 2, 2, 2].")
    return list(PAPER_BLOCKS[depth])


def num_layers(blocks: Sequence[int]) -> int:
    """Weight layers of a VGG/ResNet with these blocks: ``2 * sum(blocks) + 2``.

    Counts the stem convolution, two convolutions per block and the Dense
    head (not the 1x1 shortcut projections), as the papers count depth.
    """
    return 2 * sum(validation.check_blocks(blocks, stages=len(STAGE_FILTERS))) + 2


def fnn(depth: int, width: int, input_shape: Sequence[int],
        num_classes: int) -> keras.Model:
    """Fully connected network: Flatten, `depth` x Dense(width)+ReLU, linear head.

    Hidden layers ``dense1 .. dense{depth}`` use He-uniform kernels and zero
    biases; each is followed by a `Tap` ``dense{i}_tap``; the head is
    ``logits``.

    Args:
        depth: number of hidden layers, >= 1.
        width: units per hidden layer, >= 1.
        input_shape: shape of one sample, e.g. (28, 28, 1); flattened first.
        num_classes: output units, >= 2.

    Returns:
        Uncompiled model ``(batch, *input_shape) -> (batch, num_classes)``
        named ``fnn{depth}x{width}``.
    """
    validation.check_positive_int("depth", depth)
    validation.check_positive_int("width", width)
    inputs, num_classes = _check_io(input_shape, num_classes, min_rank=1)
    x = keras.layers.Flatten(name="flatten")(inputs)
    for i in range(1, depth + 1):
        x = keras.layers.Dense(width, activation="relu", kernel_initializer="he_uniform",
                               bias_initializer="zeros", name=f"dense{i}")(x)
        x = Tap(name=f"dense{i}_tap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"fnn{depth}x{width}")


def vgg(blocks: Sequence[int], input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """Plain (VGG-style) network of the papers; see the module docstring.

    Args:
        blocks: four non-negative ints, the blocks of stages 1-4
            (e.g. ``paper_blocks(120)``).
        input_shape: ``(height, width, channels)`` of one image.
        num_classes: output units, >= 2.

    Returns:
        Uncompiled model ``(batch, H, W, C) -> (batch, num_classes)`` named
        ``vgg{num_layers(blocks)}``, one `Tap` ``stage{s}_block{b}_tap`` per
        block output.
    """
    return _conv_net("vgg", _vgg_block, blocks, input_shape, num_classes)


def resnet(blocks: Sequence[int], input_shape: Sequence[int], num_classes: int) -> keras.Model:
    """Residual network of the papers; see the module docstring.

    Args:
        blocks: four non-negative ints, the blocks of stages 1-4
            (e.g. ``paper_blocks(50)``).
        input_shape: ``(height, width, channels)`` of one image.
        num_classes: output units, >= 2.

    Returns:
        Uncompiled model ``(batch, H, W, C) -> (batch, num_classes)`` named
        ``resnet{num_layers(blocks)}``; per block a `ScaledBranchTap`
        ``stage{s}_block{b}_branch_tap`` and a `Tap` ``stage{s}_block{b}_out_tap``.
    """
    return _conv_net("resnet", _residual_block, blocks, input_shape, num_classes)


def _conv_net(kind, block_fn, blocks, input_shape, num_classes) -> keras.Model:
    """Stem, the stages of `block_fn` blocks, pooling and the linear head."""
    blocks = validation.check_blocks(blocks, stages=len(STAGE_FILTERS))
    inputs, num_classes = _check_io(input_shape, num_classes, min_rank=3, max_rank=3)
    x = _stem(inputs, pool=input_shape[1] > STEM_POOL_MIN_WIDTH)
    for stage, (count, filters) in enumerate(zip(blocks, STAGE_FILTERS), start=1):
        for block in range(1, count + 1):
            stride = 2 if stage > 1 and block == 1 else 1
            x = block_fn(x, filters, stride, block_name(stage, block))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"{kind}{num_layers(blocks)}")


def _stem(x, pool: bool):
    """7x7/2 conv (64 filters, default initializer), BN, ReLU, and a 3x3/2 max-pool if `pool`."""
    x = keras.layers.Conv2D(STEM_FILTERS, 7, strides=2, padding="same", name="stem_conv")(x)
    x = BesselBatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    if pool:
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    return x


def _conv(x, filters: int, kernel_size: int, stride: int, name: str):
    """He-normal convolution with a bias and 'same' padding (a block or projection conv)."""
    return keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="same",
                               kernel_initializer="he_normal", name=name)(x)


def _two_convs(x, filters: int, stride: int, name: str):
    """conv1 (stride) - bn1 - relu1 - conv2 - bn2; returns (bn2, conv1, conv2) outputs."""
    conv1 = _conv(x, filters, 3, stride, f"{name}_conv1")
    y = BesselBatchNormalization(name=f"{name}_bn1")(conv1)
    y = keras.layers.ReLU(name=f"{name}_relu1")(y)
    conv2 = _conv(y, filters, 3, 1, f"{name}_conv2")
    y = BesselBatchNormalization(name=f"{name}_bn2")(conv2)
    return y, conv1, conv2


def _vgg_block(x, filters: int, stride: int, name: str):
    """Plain block: two conv-BN-ReLU, output tapped."""
    y, _, _ = _two_convs(x, filters, stride, name)
    y = keras.layers.ReLU(name=f"{name}_relu2")(y)
    return Tap(name=f"{name}{TAP_SUFFIX}")(y)


def _residual_block(x, filters: int, stride: int, name: str):
    """Basic residual block: ReLU(shortcut(x) + branch(x)), branch and output tapped."""
    branch, conv1, conv2 = _two_convs(x, filters, stride, name)
    branch = ScaledBranchTap(name=f"{name}{BRANCH_TAP_SUFFIX}")([branch, conv1, conv2])
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv(x, filters, 1, stride, f"{name}_proj_conv")
        shortcut = BesselBatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = keras.layers.Add(name=f"{name}{ADD_SUFFIX}")([shortcut, branch])
    y = keras.layers.ReLU(name=f"{name}_out")(y)
    return Tap(name=f"{name}_out_tap")(y)


def _check_io(input_shape, num_classes, min_rank: int, max_rank: int | None = None):
    """Validate shape and classes; returns (keras.Input, num_classes)."""
    shape = tuple(input_shape)
    rank_ok = len(shape) >= min_rank and (max_rank is None or len(shape) <= max_rank)
    if not rank_ok or not all(validation.is_int(d) and d > 0 for d in shape):
        expected = "(height, width, channels)" if max_rank == 3 else "positive ints"
        raise ValueError(f"input_shape must be {expected} of one sample, got {input_shape!r}.")
    num_classes = validation.check_int("num_classes", num_classes, 2)
    return keras.Input(shape=shape, name="image"), num_classes
