"""Residual blocks of trained networks: find, measure, lesion, remove (docs/method.md §4).

A *residual block* is one of three kinds of call in a model's top-level
functional graph (`residual_blocks`):

- ``"add"``: a ``keras.layers.Add`` call whose inputs share an ancestor. One
  input is the *shortcut* (the identity or a projection, told by structure
  with `cb_keras.graph.shortcut_candidates`: the identity input, else the
  input with the fewest Dense/Conv layers on its own path, and among equals
  the 1x1 projection), the others are the *residual branch*. The block is
  named after its Add layer without a trailing ``_add``: ``stage2_block1``
  for `cb_keras.paper.models.resnet` networks (``stage2_block1_add``),
  ``conv3_block1`` for ``keras.applications`` ResNets.
- ``"operator"``: the same, written ``x + f(x)`` or ``keras.ops.add(x, f(x))``
  (two symbolic tensors of the output's shape; e.g. ``keras.applications``
  ConvNeXt). Such an operation has no stable name, so the block is named
  after its branch: the longest common ``_``-separated prefix of the names
  of the layers on the branch's own path (``convnext_tiny_stage_0_block_0``),
  else, or where two blocks would share a name, the layer producing the
  branch.
- ``"layer"``: a whole nested layer selected with ``layers=`` (classes,
  names or a predicate; e.g. a transformer encoder layer, KerasHub's
  ``TransformerEncoder``, any custom layer computing ``x + f(x)``). It must
  map its first input to an output of the same shape; its branch is
  ``L(x) - x``, its removal the identity. The block is named after the layer.

Where the structure cannot tell an Add's shortcut (e.g. a branch and a
projection that both hold one 1x1 convolution), the functions refuse and ask
for ``shortcuts={block: input index}``, which also overrides the rule. Adds
inside nested layers are not searched (select the nested layer instead).

- `residual_blocks` lists them; `conflicting_blocks` measures the bundle
  metrics of each block's branch and splits the blocks into conflicting
  (bundle_entropy > 0) and non-conflicting ones. The measured branch is the
  layer feeding the Add (the scaled ``{block}_branch_tap`` of cb_keras
  models, the unscaled branch output of other models), or, where that is
  not a layer's output (nested layers, operations), a tap
  ``{block}_branch`` added to a copy of the graph for the measurement.
- `remove_blocks` builds a new, physically smaller model in which each
  removed block returns its shortcut (nested layers: their input), so the
  block computes ``activation(shortcut(input))`` where an activation follows;
  its branch layers are gone. The new model holds *copies* of the trained
  weights: later training of either model leaves the other as it is.
- `Lesion` (and `lesioned`) evaluate the original network with blocks
  lesioned (their branch multiplied by 0) without copying anything: one
  model whose per-block gates can be switched between evaluations with no
  retracing, for the lesion study. A pruned model's outputs equal the
  lesioned original's (``x + 0 == x``; up to float32 rounding where graph
  optimizations fuse operations differently).
- `block_importance` (`cb_keras.importance`) ranks the blocks for depth
  pruning.

All use ``keras.models.clone_model(model, clone_function=...,
call_function=...)``: the graph is re-run call by call and only the calls of
the blocks change; nothing is rewritten by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Union

import keras

from cb_keras import graph as graphs
from cb_keras import importance, layer_kinds, validation
from cb_keras.measurement import measure
from cb_keras.report import ConflictReport, LayerResult

Shortcuts = Mapping[str, int]
LayerSelector = Union[type, str, Callable[[keras.layers.Layer], bool],
                      Sequence[Union[type, str]]]
GATE_SUFFIX = "_lesion_gate"
BRANCH_SUFFIX = "_branch"  # the measurement tap of a branch that is no layer's output
RESIDUAL_KINDS = ("add", "operator", "layer")


@dataclasses.dataclass(frozen=True)
class ResidualBlock:
    """One residual block of a functional model (module docstring).

    Attributes:
        name: the block name.
        kind: ``"add"`` (a ``keras.layers.Add``), ``"operator"`` (``+`` /
            ``keras.ops.add``) or ``"layer"`` (a nested layer from ``layers=``).
        operation: the name of the Add layer, the ``+`` operation or the
            nested layer.
        shortcut_index: which input of the Add is the shortcut (0 for a
            nested layer: its first input).
        branches: the measured branch outputs (`conflicting_blocks`): the
            layers producing the branch inputs of an Add, else the tap
            ``{name}_branch`` that the measurement adds.
    """

    name: str
    kind: str
    operation: str
    shortcut_index: int
    branches: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class BlockConflicts:
    """The bundle metrics of the residual branches of a model.

    Attributes:
        blocks: every residual block, in graph order.
        report: one `LayerResult` per branch output (``block.branches``),
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


@dataclasses.dataclass(frozen=True)
class _Found:
    """A block and its call (keras Node) in the model's graph."""

    block: ResidualBlock
    node: Any


def residual_blocks(model: keras.Model, shortcuts: Shortcuts | None = None, *,
                    layers: LayerSelector | None = None) -> list[ResidualBlock]:
    """The residual blocks of a functional `model`, in graph order.

    Args:
        model: a functional model.
        shortcuts: ``{block name: index of the shortcut input of its Add}``
            for blocks whose shortcut the structure cannot tell (module
            docstring); it overrides the structural rule for those blocks.
        layers: nested layers that are blocks as a whole: a layer class (or
            a tuple/list of classes and layer names), a layer name, or a
            predicate ``layer -> bool`` over the model's top-level layers.

    Raises:
        ValueError: `model` has no residual block of any kind (e.g. a VGG or
            FNN), an Add or selected layer is called more than once (a
            shared layer), a selected layer changes its input's shape, a
            block's shortcut is ambiguous and not in `shortcuts`, or
            `shortcuts` / `layers` name an unknown block or layer.
        TypeError: `layers` is not a class, name, predicate or list of them.
    """
    return [found.block for found in _find(model, shortcuts, layers)]


def _find(model: keras.Model, shortcuts: Shortcuts | None,
          layers: LayerSelector | None) -> list[_Found]:
    """The blocks of `model` with their calls (see `residual_blocks`)."""
    graph = graphs.model_graph(model)
    selected = _selected(model, graph, layers)
    chosen = dict(shortcuts or {})
    residuals = graphs.residuals(graph, operators=True)
    shared = sorted({node.operation.name for node in [r.add for r in residuals] + selected
                     if graph.calls[node.operation] > 1})
    if shared:
        raise ValueError(
            f"layers {shared} are called more than once in {model.name!r} (shared layers), "
            "so a block name does not identify one block; give each block its own layer, "
            "or leave a shared layer out of layers=.")
    named = _operator_names(residuals, graph)
    found = [_add_block(residual, named, chosen) for residual in residuals]
    found += [_layer_block(node) for node in selected]
    if not found:
        raise ValueError(
            f"model {model.name!r} has no residual blocks: no keras.layers.Add and no "
            "`+`/keras.ops.add whose inputs share an ancestor in its top-level graph, and "
            "no nested layer selected with layers=. For a model built from nested residual "
            "layers (a transformer encoder layer, a custom layer computing x + f(x)), pass "
            "layers=<their class, their names or a predicate>.")
    names = [item.block.name for item in found]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(
            f"two residual blocks of {model.name!r} are named {twice}; rename one of their "
            "layers (a block is named after its Add layer, branch or nested layer).")
    unknown = {name: index for name, index in chosen.items() if name not in names}
    if unknown:
        raise ValueError(
            f"shortcuts names {sorted(unknown)}, which are not residual blocks of "
            f"{model.name!r}; its blocks are {names}.")
    return sorted(found, key=lambda item: graph.index(item.node))


def _selected(model: keras.Model, graph: graphs.Graph, layers: LayerSelector | None) -> list:
    """The calls of the nested layers that `layers` selects, checked (see `residual_blocks`)."""
    if layers is None:
        return []
    matches = _matcher(layers)
    candidates = [node for node in graph.nodes if isinstance(node.operation, keras.layers.Layer)
                  and not isinstance(node.operation, keras.layers.InputLayer)]
    names = {node.operation.name for node in candidates}
    wanted = [item for item in _as_items(layers) if isinstance(item, str)]
    missing = [name for name in wanted if name not in names]
    if missing:
        raise ValueError(
            f"layers= names {missing}, which are not layers of {model.name!r}'s top-level "
            f"graph; its layers are {sorted(names)}.")
    selected = [node for node in candidates if matches(node.operation)]
    for node in selected:
        _check_same_shape(node)
    return selected


def _as_items(layers: LayerSelector) -> list:
    """`layers` as a list of selectors (classes, names, predicates)."""
    return list(layers) if isinstance(layers, (list, tuple)) else [layers]


def _matcher(layers: LayerSelector) -> Callable[[keras.layers.Layer], bool]:
    """``layer -> bool`` of a `layers=` argument; TypeError for anything else."""
    tests = []
    for item in _as_items(layers):
        if isinstance(item, type) and issubclass(item, keras.layers.Layer):
            tests.append(lambda layer, cls=item: isinstance(layer, cls))
        elif isinstance(item, str):
            tests.append(lambda layer, name=item: layer.name == name)
        elif callable(item) and not isinstance(item, (type, keras.layers.Layer)):
            tests.append(item)
        else:
            raise TypeError(
                "layers= takes keras layer classes (e.g. keras_hub.layers.TransformerEncoder), "
                "layer names, a predicate layer -> bool, or a list of classes and names; "
                f"got {item!r}.")
    return lambda layer: any(bool(test(layer)) for test in tests)


def _check_same_shape(node) -> None:
    """A nested block's call: first argument a tensor, one output of that shape."""
    layer = node.operation
    args = node.arguments.args
    first = args[0] if args else None
    outputs = node.outputs
    if not isinstance(first, keras.KerasTensor) or len(outputs) != 1 \
            or tuple(outputs[0].shape) != tuple(first.shape):
        got = tuple(first.shape) if isinstance(first, keras.KerasTensor) else type(first).__name__
        raise ValueError(
            f"layer {layer.name!r} ({type(layer).__name__}) maps its input {got} to "
            f"{[tuple(t.shape) for t in outputs]}, but a block in layers= must return one "
            "tensor of its first input's shape (its removal is the identity). Pass only "
            "the residual layers in layers=, e.g. their class or names.")


ADD_SUFFIX = "_add"
"""A block is named after its Add layer without this suffix (``stage2_block1_add``)."""


def _block_name(add: str) -> str:
    """The block name of an Add layer: its name without a trailing ``_add``."""
    return add.removesuffix(ADD_SUFFIX) or add


def _operator_names(residuals: list[graphs.Residual], graph: graphs.Graph) -> dict[int, str]:
    """``id(operator Add node) -> block name``, named after the branch (module docstring)."""
    fallback, preferred = {}, {}
    for residual in residuals:
        if isinstance(residual.add.operation, keras.layers.Add):
            continue
        key = id(residual.add)
        branch = 1 - (residual.shortcut if residual.shortcut is not None else 0)
        fallback[key] = residual.inputs[branch].operation.name
        layer_names = [node.operation.name for node in graphs.own_path(residual, branch, graph)
                       if isinstance(node.operation, keras.layers.Layer)]
        preferred[key] = _common_prefix(layer_names) or fallback[key]
    counts = list(preferred.values())
    return {key: name if counts.count(name) == 1 else fallback[key]
            for key, name in preferred.items()}


def _common_prefix(names: list[str]) -> str:
    """The longest common prefix of `names` made of whole ``_``-separated words."""
    if not names:
        return ""
    words = [name.split("_") for name in names]
    common = []
    for parts in zip(*words):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return "_".join(common)


def _add_block(residual: graphs.Residual, named: dict[int, str],
               chosen: dict[str, int]) -> _Found:
    """The block of one residual Add or ``+`` call, its shortcut `chosen` or told by structure."""
    add = residual.add.operation.name
    operator = id(residual.add) in named
    name = named[id(residual.add)] if operator else _block_name(add)
    inputs = [node.operation.name for node in residual.inputs]
    index = chosen.get(name)
    if index is None and residual.shortcut is None:
        raise ValueError(
            f"the shortcut of residual block {name!r} cannot be told from its structure: "
            f"inputs {list(residual.candidates)} of its Add {add!r} (from {inputs}) "
            "have equally many weight layers and none is a lone 1x1 projection. Pass "
            f"shortcuts={{{name!r}: <index of the shortcut input>}}.")
    if index is not None:
        if not validation.is_int(index) or index not in range(len(inputs)):
            raise ValueError(
                f"shortcuts[{name!r}] must be the index of an input of Add {add!r} "
                f"(0 to {len(inputs) - 1}, from {inputs}), got {index!r}.")
        residual = residual.with_shortcut(int(index))
    branches = tuple(node.operation.name if isinstance(node.operation, keras.layers.Layer)
                     else f"{name}{BRANCH_SUFFIX}" for node in residual.branches)
    kind = "operator" if operator else "add"
    return _Found(ResidualBlock(name, kind, add, residual.shortcut, branches), residual.add)


def _layer_block(node) -> _Found:
    """The block of a nested layer's call."""
    name = node.operation.name
    return _Found(ResidualBlock(name, "layer", name, 0, (f"{name}{BRANCH_SUFFIX}",)), node)


def _inputs(block: ResidualBlock, args: tuple) -> list:
    """The input tensors of an Add (a list in its first argument) or ``+`` call."""
    return list(args[0]) if block.kind == "add" else list(args)


def _call(block: ResidualBlock, operation, inputs: list, args: tuple, kwargs: dict):
    """Call an Add or ``+`` `operation` on `inputs` (in the form `block`'s call takes)."""
    if block.kind == "add":
        return operation(inputs, *args[1:], **kwargs)
    return operation(*inputs, **kwargs)


Rewrite = Callable[[ResidualBlock, Any, tuple, dict], Any]


def _rewired(model: keras.Model, found: list[_Found], rewrite: Rewrite,
             copy: bool) -> tuple[keras.Model, dict[int, Any]]:
    """`model` re-run call by call, each block's call replaced by ``rewrite(block, op, args,
    kwargs)``; with `copy`, every layer is a fresh copy (weights not yet copied).

    Returns:
        The new model and ``id(new operation) -> original operation``.
    """
    blocks = {id(item.node.operation): item.block for item in found}
    origin: dict[int, Any] = {}

    def clone_function(operation):
        new = _copy_layer(operation) if copy else operation
        origin[id(new)] = operation
        return new

    def call_function(operation, *args, **kwargs):
        block = blocks.get(id(origin.get(id(operation), operation)))
        if block is None:
            return operation(*args, **kwargs)
        return rewrite(block, operation, args, kwargs)

    new = keras.models.clone_model(model, clone_function=clone_function,
                                   call_function=call_function)
    return new, origin


def conflicting_blocks(model: keras.Model, x: Any, y: Any = None, *, num_classes: int,
                       learning_rate: float, batch_size: int, samples: int = 512,
                       shortcuts: Shortcuts | None = None,
                       layers: LayerSelector | None = None) -> BlockConflicts:
    """Measure the residual branch of every block of a trained `model` (docs/method.md §4).

    Args:
        model: a trained functional network with residual blocks (see
            `residual_blocks`).
        x: training inputs ``(N, ...)`` as NumPy, or a ``tf.data.Dataset`` of
            ``(x, y)`` batches (then `y` is None); never the test split.
        y: integer labels ``(N,)``.
        num_classes: number of classes C.
        learning_rate: the training learning rate.
        batch_size: the training batch size.
        samples: measure the first `samples` examples (default 512).
        shortcuts: shortcut inputs of ambiguous blocks (see `residual_blocks`).
        layers: nested layers that are blocks (see `residual_blocks`).

    Returns:
        A `BlockConflicts`: ``.conflicting`` and ``.non_conflicting`` block
        names, ``.report`` the bundle metrics of each branch.

    Example:
        >>> found = conflicting_blocks(model, x_train, y_train, num_classes=10,
        ...                            learning_rate=1e-3, batch_size=64)
        >>> smaller = remove_blocks(model, found.conflicting)
    """
    found = _find(model, shortcuts, layers)
    branches = [branch for item in found for branch in item.block.branches]
    measured = _branch_taps(model, found)
    report = measure(
        measured, x, y, num_classes=num_classes, learning_rate=learning_rate,
        batch_size=batch_size, layers=branches, samples=samples)
    return BlockConflicts(tuple(item.block for item in found), report)


def _branch_taps(model: keras.Model, found: list[_Found]) -> keras.Model:
    """`model` itself if every branch is a layer's output, else a model sharing its layers
    with a tap ``{block}_branch`` on each other branch (`BRANCH_SUFFIX`), as extra outputs."""
    if all(block.kind == "add" or not block.branches[0].endswith(BRANCH_SUFFIX)
           for block in (item.block for item in found)):
        return model
    taps = []

    def tap(block, operation, args, kwargs):
        name = f"{block.name}{BRANCH_SUFFIX}"
        if block.kind == "layer":
            output = operation(*args, **kwargs)
            taps.append(keras.layers.Subtract(name=name)([output, args[0]]))
            return output
        inputs = _inputs(block, args)
        if name in block.branches:
            branch = 1 - block.shortcut_index
            inputs[branch] = keras.layers.Identity(name=name)(inputs[branch])
            taps.append(inputs[branch])
        return _call(block, operation, inputs, args, kwargs)

    shared, _ = _rewired(model, found, tap, copy=False)
    return keras.Model(shared.input, [*taps, *keras.tree.flatten(shared.output)],
                       name=f"{model.name}_branches")


def remove_blocks(model: keras.Model, block_names: Iterable[str],
                  shortcuts: Shortcuts | None = None, *,
                  layers: LayerSelector | None = None) -> keras.Model:
    """A new, smaller model: each named block returns its shortcut (a nested layer its input).

    Every kept layer is a fresh copy (same config and name) holding a copy
    of the trained weights of `model`, so the two models are independent.
    Layers used only by the removed branches are absent. If `model` was
    compiled, the result is compiled from its compile config (a fresh
    optimizer), as ``keras.models.clone_model`` does.

    Args:
        model: a functional model with residual blocks.
        block_names: names from `residual_blocks` (e.g. ``stage3_block2``).
        shortcuts: shortcut inputs of ambiguous blocks (see `residual_blocks`).
        layers: nested layers that are blocks (see `residual_blocks`).

    Returns:
        A ``keras.Model`` with `model`'s inputs and outputs (same shapes)
        whose outputs equal those of ``lesioned(model, block_names)`` to
        float32 precision (graph optimizations may round differently).

    Raises:
        ValueError: an unknown or non-residual block name (the error lists
            the model's residual blocks), and the errors of `residual_blocks`.
    """
    found = _find(model, shortcuts, layers)
    removed = {block.name for block in _by_name([item.block for item in found], block_names)}

    def remove(block, operation, args, kwargs):
        if block.name not in removed:
            return operation(*args, **kwargs)
        if block.kind == "layer":
            return args[0]
        return _inputs(block, args)[block.shortcut_index]

    pruned, origin = _rewired(model, found, remove, copy=True)
    for layer in pruned.layers:
        if layer.weights:  # the new InputLayer has another name and no weights
            layer.set_weights(origin[id(layer)].get_weights())
    return pruned


class Lesion:
    """The original `model` with a switch per residual block that zeroes its branch.

    ``Lesion(model).model`` shares every layer (and so every weight) of
    `model`; each block's branch is multiplied by a non-trainable gate (1:
    intact, 0: lesioned): before the Add of an Add or ``+`` block, and as
    ``gate * L(x) + (1 - gate) * x`` around a nested layer ``L``. Switching
    gates with `lesion` needs no new model and no retracing, so many lesion
    patterns can be evaluated quickly. Lesioned outputs equal
    `remove_blocks`'s.

    Args:
        model: a functional model with residual blocks.
        shortcuts: shortcut inputs of ambiguous blocks (see `residual_blocks`).
        layers: nested layers that are blocks (see `residual_blocks`).

    Example:
        >>> lesion = Lesion(model)
        >>> logits = lesion.lesion(["stage3_block2"]).predict(x_test)
    """

    def __init__(self, model: keras.Model, shortcuts: Shortcuts | None = None, *,
                 layers: LayerSelector | None = None):
        found = _find(model, shortcuts, layers)
        self.blocks = [item.block for item in found]
        self.gates: dict[str, keras.layers.Layer] = {}

        def gated(block, operation, args, kwargs):
            gate_name = f"{block.operation}{GATE_SUFFIX}"
            if block.kind == "layer":
                gate = self.gates[block.name] = _LayerGate(name=gate_name)
                return gate([args[0], operation(*args, **kwargs)])
            gate = self.gates[block.name] = _BranchGate(name=gate_name)
            inputs = [tensor if i == block.shortcut_index else gate(tensor)
                      for i, tensor in enumerate(_inputs(block, args))]
            return _call(block, operation, inputs, args, kwargs)

        self.model, _ = _rewired(model, found, gated, copy=False)

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
             shortcuts: Shortcuts | None = None, *,
             layers: LayerSelector | None = None) -> keras.Model:
    """`model` evaluated with the named blocks' branches zeroed (shares its weights)."""
    return Lesion(model, shortcuts, layers=layers).lesion(block_names)


def weight_layers(model: keras.Model) -> int:
    """Number of weight layers (`cb_keras.layer_kinds.WEIGHT_LAYERS`: Dense, EinsumDense,
    and convolutions) of `model`, shortcut projections included."""
    return sum(layer_kinds.is_weight_layer(layer) for layer in model.layers)


class _Gate(keras.layers.Layer):
    """A scalar non-trainable gate ``open`` (initially 1) of a block's branch."""

    def __init__(self, **kwargs):
        super().__init__(trainable=False, **kwargs)

    def build(self, input_shape):
        self.open = self.add_weight(shape=(), initializer="ones", trainable=False,
                                    name="open")


class _BranchGate(_Gate):
    """Multiplies its input ``(batch, ...)`` by the gate."""

    def call(self, inputs):
        return inputs * keras.ops.cast(self.open, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape


class _LayerGate(_Gate):
    """``[x, L(x)] -> gate * L(x) + (1 - gate) * x``: exactly L(x) open, exactly x closed."""

    def call(self, inputs):
        x, output = inputs
        gate = keras.ops.cast(self.open, output.dtype)
        return output * gate + x * (1.0 - gate)

    def compute_output_shape(self, input_shape):
        return input_shape[1]


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
            f"are {list(known)} (see cb_keras.pruning.residual_blocks; nested layers "
            "need layers=).")
    return [known[name] for name in dict.fromkeys(names)]


def _copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer with the same class, config and name (weights copied later)."""
    return layer.__class__.from_config(layer.get_config())


def block_importance(model: keras.Model, x: Any, y: Any = None, *, method: str,
                     layers: LayerSelector | None = None, shortcuts: Shortcuts | None = None,
                     samples: int = 512, batch_size: int = 64, seed: int = 0,
                     num_classes: int | None = None,
                     learning_rate: float | None = None) -> dict[str, float]:
    """One score per residual block for depth pruning; lower = removed first (docs/method.md §4.1).

    Args:
        model: a trained functional network with residual blocks (see
            `residual_blocks`).
        x: training inputs ``(N, ...)`` as NumPy (or a dict of arrays for a
            model with named inputs); ``"conflicts"`` also takes a
            ``tf.data.Dataset`` of ``(x, y)`` batches as `conflicting_blocks` does.
        y: integer labels ``(N,)``; only ``"conflicts"`` uses them.
        method: one of `cb_keras.importance.METHODS`: ``"conflicts"`` (bundle
            metrics of each branch, `conflicting_blocks`), ``"block_influence"``
            (ShortGPT: 1 - mean cosine of block input X and output Y),
            ``"angular_distance"`` (mean arccos(cosine) / pi), ``"last"``
            (deepest first), ``"random"`` (drawn with `seed`). X is the
            block's shortcut input (its input for identity shortcuts and nested
            layers, the projected input for projection shortcuts), Y the sum
            after the Add (a nested layer's output); the last axis is the
            feature axis and every other non-batch axis a position.
        layers: nested layers that are blocks (see `residual_blocks`).
        shortcuts: shortcut inputs of ambiguous blocks (see `residual_blocks`).
        samples: use the first `samples` examples (default 512).
        batch_size: examples per forward pass; for ``"conflicts"`` also the
            *training* batch size of the bundle metric.
        seed: the seed of ``"random"``.
        num_classes, learning_rate: the bundle metric's C and training
            learning rate; ``"conflicts"`` needs them.

    Returns:
        ``{block name: score}`` in graph order; `cb_keras.importance.removal_order`
        gives the order of removal (ties: the deeper block first).

    Raises:
        ValueError: an unknown method, ``"conflicts"`` without `y`/labels,
            `num_classes` or `learning_rate`, and the errors of `residual_blocks`.

    Example:
        >>> scores = block_importance(model, x_train, method="block_influence")
        >>> smaller = remove_blocks(model, importance.removal_order(scores)[:2])
    """
    if method not in importance.METHODS:
        raise ValueError(f"method must be one of {list(importance.METHODS)}, got {method!r}.")
    found = _find(model, shortcuts, layers)
    names = [item.block.name for item in found]
    if method == "last":
        return importance.last_scores(names)
    if method == "random":
        return importance.random_scores(names, seed)
    if method == "conflicts":
        if num_classes is None or learning_rate is None:
            raise ValueError("method='conflicts' measures bundles, which needs the labels y "
                             "and num_classes= and learning_rate= (the training learning "
                             "rate); pass them.")
        conflicts = conflicting_blocks(
            model, x, y, num_classes=num_classes, learning_rate=learning_rate,
            batch_size=batch_size, samples=samples, shortcuts=shortcuts, layers=layers)
        return {block.name: importance.conflict_score(
                    [conflicts.report[branch] for branch in block.branches],
                    conflicts.report.num_samples) for block in conflicts.blocks}
    sample = keras.tree.map_structure(lambda array: array[:samples], x)
    pairs = _input_output_pairs(model, found).predict(sample, batch_size=batch_size, verbose=0)
    score = (importance.block_influence if method == "block_influence"
             else importance.angular_distance)
    return {name: score(importance.cosines(pairs[2 * i], pairs[2 * i + 1]))
            for i, name in enumerate(names)}


def _input_output_pairs(model: keras.Model, found: list[_Found]) -> keras.Model:
    """A model sharing `model`'s layers whose outputs are ``[X_1, Y_1, X_2, Y_2, ...]``:
    each block's shortcut input (a nested layer's input) and its output, in graph order."""
    pairs = {}

    def record(block, operation, args, kwargs):
        output = operation(*args, **kwargs)
        shortcut = args[0] if block.kind == "layer" else \
            _inputs(block, args)[block.shortcut_index]
        pairs[block.name] = (shortcut, output)
        return output

    shared, _ = _rewired(model, found, record, copy=False)
    outputs = [tensor for item in found for tensor in pairs[item.block.name]]
    return keras.Model(shared.input, outputs, name=f"{model.name}_block_pairs")
