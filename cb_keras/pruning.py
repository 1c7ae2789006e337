"""Conflicting residual blocks of trained networks: find, lesion, remove (docs/method.md §4).

A *residual block* is a ``keras.layers.Add`` call whose inputs share an
ancestor: one input is the *shortcut* (the identity or a projection, told by
structure with `cb_keras.graph.shortcut_candidates`: the identity input, else
the input with the fewest Dense/Conv layers on its own path, and among equals
the 1x1 projection) and the others are the *residual branch*. Where the
structure cannot tell (e.g. a branch and a projection that both hold one 1x1
convolution), the functions refuse and ask for ``shortcuts={block: input
index}``, which also overrides the rule. A block
is named after its Add layer without a trailing ``_add``: ``stage2_block1``
for `cb_keras.models.resnet` networks (``stage2_block1_add``), and
``conv3_block1`` for ``keras.applications`` ResNets (``conv3_block1_add``).
Add layers inside nested models are not searched.

- `residual_blocks` lists them; `conflicting_blocks` measures the bundle
  metrics of each block's branch (the layer feeding the Add: the scaled
  ``{block}_branch_tap`` of cb_keras models, the unscaled branch output of
  other models) and splits them into conflicting (bundle_entropy > 0) and
  non-conflicting blocks.
- `remove_blocks` builds a new, physically smaller model in which each
  removed block's Add returns its shortcut, so the block computes
  ``activation(shortcut(input))`` (``ReLU`` after the Add in both model
  families); its branch layers are gone. The new model holds *copies* of the
  trained weights: later training of either model leaves the other as it is.
- `Lesion` (and `lesioned`) evaluate the original network with blocks
  lesioned (their branch multiplied by 0) without copying anything: one
  model whose per-block gates can be switched between evaluations with no
  retracing, for the lesion study. A pruned model's outputs equal the
  lesioned original's (``x + 0 == x``; up to float32 rounding where graph
  optimizations fuse operations differently).

Both use ``keras.models.clone_model(model, clone_function=...,
call_function=...)``: the graph is re-run layer by layer and only the call of
the Add layers changes; nothing is rewritten by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import keras

from cb_keras import graph as graphs
from cb_keras import layer_kinds, validation
from cb_keras.measurement import measure
from cb_keras.models import ADD_SUFFIX
from cb_keras.report import ConflictReport, LayerResult

Shortcuts = Mapping[str, int]
GATE_SUFFIX = "_lesion_gate"


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
    """One residual block of a functional model.

    Attributes:
        name: the block name (the Add layer's name without ``_add``).
        add: the name of its ``keras.layers.Add`` layer.
        shortcut_index: which input of the Add is the shortcut.
        branches: names of the layers producing the other (branch) inputs,
            the outputs measured by `conflicting_blocks`.
    """

    name: str
    add: str
    shortcut_index: int
    branches: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BlockConflicts:
    """The bundle metrics of the residual branches of a model.

    Attributes:
        blocks: every residual block, in graph order.
        report: one `LayerResult` per branch layer (``block.branches``),
            measured on training samples, in graph order.
    """

    blocks: tuple[ResidualBlock, ...]
    report: ConflictReport

    @property
    def names(self) -> list[str]:
        """All block names, in graph order."""
        return [block.name for block in self.blocks]

    @property
    def conflicting(self) -> list[str]:
        """Blocks whose branch conflicts (bundle_entropy > 0; all branches if several)."""
        return [block.name for block in self.blocks
                if all(self.report[branch].conflicting for branch in block.branches)]

    @property
    def non_conflicting(self) -> list[str]:
        """The other blocks, in graph order."""
        conflicting = set(self.conflicting)
        return [name for name in self.names if name not in conflicting]

    def metrics(self, block: str) -> LayerResult:
        """The `LayerResult` of a block's (first) branch."""
        return self.report[_by_name(self.blocks, [block])[0].branches[0]]


def residual_blocks(model: keras.Model,
                    shortcuts: Shortcuts | None = None) -> list[ResidualBlock]:
    """The residual blocks of a functional `model`, in graph order.

    Args:
        model: a functional model.
        shortcuts: ``{block name: index of the shortcut input of its Add}``
            for blocks whose shortcut the structure cannot tell (module
            docstring); it overrides the structural rule for those blocks.

    Raises:
        ValueError: `model` has no residual block (e.g. a VGG or FNN), an
            Add layer is called more than once, a block's shortcut is
            ambiguous and not in `shortcuts`, or `shortcuts` names an unknown
            block or a wrong input index.
    """
    graph = graphs.model_graph(model)
    adds = [node for node in graph.nodes if isinstance(node.operation, keras.layers.Add)]
    repeated = sorted({node.operation.name for node in adds if graph.calls[node.operation] > 1})
    if repeated:
        raise ValueError(
            f"Add layers {repeated} are called more than once in {model.name!r}, so a "
            "block name does not identify one block; use one Add layer per block.")
    chosen = dict(shortcuts or {})
    blocks = [_residual_block(residual, chosen.pop(_block_name(residual.add.operation.name), None))
              for residual in graphs.residuals(graph)]
    if not blocks:
        raise ValueError(
            f"model {model.name!r} has no residual blocks: no keras.layers.Add whose "
            "inputs share an ancestor (Add layers inside nested models are not searched). "
            "remove_blocks and conflicting_blocks need a ResNet, e.g. "
            "cb_keras.models.resnet(...) or a functional model built with Add layers.")
    if chosen:
        raise ValueError(
            f"shortcuts names {sorted(chosen)}, which are not residual blocks of "
            f"{model.name!r}; its blocks are {[block.name for block in blocks]}.")
    return blocks


def _block_name(add: str) -> str:
    """The block name of an Add layer: its name without a trailing ``_add``."""
    return add.removesuffix(ADD_SUFFIX) or add


def _residual_block(residual: graphs.Residual, chosen: int | None) -> ResidualBlock:
    """The block of one residual Add call, its shortcut `chosen` or told by structure."""
    add = residual.add.operation.name
    name = _block_name(add)
    inputs = [node.operation.name for node in residual.inputs]
    if chosen is None and residual.shortcut is None:
        raise ValueError(
            f"the shortcut of residual block {name!r} cannot be told from its structure: "
            f"inputs {list(residual.candidates)} of its Add layer {add!r} (from {inputs}) "
            "have equally many weight layers and none is a lone 1x1 projection. Pass "
            f"shortcuts={{{name!r}: <index of the shortcut input>}}.")
    if chosen is not None:
        if not validation.is_int(chosen) or chosen not in range(len(inputs)):
            raise ValueError(
                f"shortcuts[{name!r}] must be the index of an input of Add layer {add!r} "
                f"(0 to {len(inputs) - 1}, from {inputs}), got {chosen!r}.")
        residual = residual.with_shortcut(int(chosen))
    branches = tuple(node.operation.name for node in residual.branches)
    return ResidualBlock(name, add, residual.shortcut, branches)


def conflicting_blocks(model: keras.Model, x: Any, y: Any = None, *, num_classes: int,
                       learning_rate: float, batch_size: int, samples: int = 512,
                       shortcuts: Shortcuts | None = None) -> BlockConflicts:
    """Measure the residual branch of every block of a trained `model` (docs/method.md §4).

    Args:
        model: a trained functional ResNet (see `residual_blocks`).
        x: training inputs ``(N, ...)`` as NumPy, or a ``tf.data.Dataset`` of
            ``(x, y)`` batches (then `y` is None); never the test split.
        y: integer labels ``(N,)``.
        num_classes: number of classes C.
        learning_rate: the training learning rate.
        batch_size: the training batch size.
        samples: measure the first `samples` examples (default 512).
        shortcuts: shortcut inputs of ambiguous blocks (see `residual_blocks`).

    Returns:
        A `BlockConflicts`: ``.conflicting`` and ``.non_conflicting`` block
        names, ``.report`` the bundle metrics of each branch.

    Example:
        >>> found = conflicting_blocks(model, x_train, y_train, num_classes=10,
        ...                            learning_rate=1e-3, batch_size=64)
        >>> smaller = remove_blocks(model, found.conflicting)
    """
    blocks = residual_blocks(model, shortcuts)
    branches = [branch for block in blocks for branch in block.branches]
    report = measure(
        model, x, y, num_classes=num_classes, learning_rate=learning_rate,
        batch_size=batch_size, layers=branches, samples=samples)
    return BlockConflicts(tuple(blocks), report)


def remove_blocks(model: keras.Model, block_names: Iterable[str],
                  shortcuts: Shortcuts | None = None) -> keras.Model:
    """A new, smaller model: each named block's Add returns its shortcut.

    Every kept layer is a fresh copy (same config and name) holding a copy
    of the trained weights of `model`, so the two models are independent.
    Layers used only by the removed branches are absent. If `model` was
    compiled, the result is compiled from its compile config (a fresh
    optimizer), as ``keras.models.clone_model`` does.

    Args:
        model: a functional model with residual blocks.
        block_names: names from `residual_blocks` (e.g. ``stage3_block2``).
        shortcuts: shortcut inputs of ambiguous blocks (see `residual_blocks`).

    Returns:
        A ``keras.Model`` with `model`'s inputs and outputs (same shapes)
        whose outputs equal those of ``lesioned(model, block_names)`` to
        float32 precision (graph optimizations may round differently).

    Raises:
        ValueError: an unknown or non-residual block name (the error lists
            the model's residual blocks), and the errors of `residual_blocks`.
    """
    removed = {block.add: block.shortcut_index
               for block in _by_name(residual_blocks(model, shortcuts), block_names)}

    def call_function(layer, *args, **kwargs):
        if layer.name in removed:
            return args[0][removed[layer.name]]
        return layer(*args, **kwargs)

    pruned = keras.models.clone_model(
        model, clone_function=_copy_layer, call_function=call_function)
    for layer in pruned.layers:
        if layer.weights:  # the new InputLayer has another name and no weights
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return pruned


class Lesion:
    """The original `model` with a switch per residual block that zeroes its branch.

    ``Lesion(model).model`` shares every layer (and so every weight) of
    `model`; before each Add of a block it multiplies the branch by a
    non-trainable gate (1: intact, 0: lesioned). Switching gates with
    `lesion` needs no new model and no retracing, so many lesion patterns
    can be evaluated quickly. Lesioned outputs equal `remove_blocks`'s.

    Args:
        model: a functional model with residual blocks.
        shortcuts: shortcut inputs of ambiguous blocks (see `residual_blocks`).

    Example:
        >>> lesion = Lesion(model)
        >>> logits = lesion.lesion(["stage3_block2"]).predict(x_test)
    """

    def __init__(self, model: keras.Model, shortcuts: Shortcuts | None = None):
        self.blocks = residual_blocks(model, shortcuts)
        adds = {block.add: block for block in self.blocks}
        self.gates: dict[str, keras.layers.Layer] = {}

        def call_function(layer, *args, **kwargs):
            block = adds.get(layer.name)
            if block is None:
                return layer(*args, **kwargs)
            gate = self.gates[block.name] = _BranchGate(name=f"{layer.name}{GATE_SUFFIX}")
            inputs = [tensor if i == block.shortcut_index else gate(tensor)
                      for i, tensor in enumerate(args[0])]
            return layer(inputs, *args[1:], **kwargs)

        self.model = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call_function)

    def lesion(self, block_names: Iterable[str]) -> keras.Model:
        """Lesion exactly these blocks (all others intact); returns `self.model`.

        Raises:
            ValueError: an unknown block name (the error lists the blocks).
        """
        removed = {block.name for block in _by_name(self.blocks, block_names)}
        for name, gate in self.gates.items():
            gate.open.assign(0.0 if name in removed else 1.0)
        return self.model


def lesioned(model: keras.Model, block_names: Iterable[str],
             shortcuts: Shortcuts | None = None) -> keras.Model:
    """`model` evaluated with the named blocks' branches zeroed (shares its weights)."""
    return Lesion(model, shortcuts).lesion(block_names)


def weight_layers(model: keras.Model) -> int:
    """Number of weight layers (`cb_keras.layer_kinds.WEIGHT_LAYERS`: Dense, EinsumDense,
    and convolutions) of `model`, shortcut projections included."""
    return sum(layer_kinds.is_weight_layer(layer) for layer in model.layers)


class _BranchGate(keras.layers.Layer):
    """Multiplies its input ``(batch, ...)`` by a scalar non-trainable gate (initially 1)."""

    def __init__(self, **kwargs):
        super().__init__(trainable=False, **kwargs)

    def build(self, input_shape):
        self.open = self.add_weight(shape=(), initializer="ones", trainable=False,
                                    name="open")

    def call(self, inputs):
        return inputs * keras.ops.cast(self.open, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


def _by_name(blocks: Sequence[ResidualBlock], names: Iterable[str]) -> list[ResidualBlock]:
    """The blocks named `names`; ValueError listing the available ones otherwise."""
    if isinstance(names, str):
        raise TypeError(f"block_names must be a list of block names, got the string "
                        f"{names!r}; pass [{names!r}].")
    names = list(names)
    known = {block.name: block for block in blocks}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"{unknown} are not residual blocks of this model; its residual blocks "
            f"are {list(known)} (the Add layer's name without '{ADD_SUFFIX}').")
    return [known[name] for name in dict.fromkeys(names)]


def _copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer with the same class, config and name (weights copied later)."""
    return layer.__class__.from_config(layer.get_config())
