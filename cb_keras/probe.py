"""Which layer outputs a^(1)..a^(L) to measure (docs/method.md §2), and the probe model.

`probe(model, layers)` returns a multi-output `keras.Model` with the same
inputs as `model` and one output per measured layer, in graph order
(a^(1) first, a^(L) last), keyed by layer name. `cb_keras.measurement`
runs it to measure them.

Which outputs ``layers="auto"`` measures
----------------------------------------
1. If the model holds `cb_keras.taps.Tap` layers (the builders of
   `cb_keras.paper.models` place them), exactly those, each measured as
   ``tap.measured(tap inputs)`` (for `ScaledBranchTap` the reference branch
   scaling).
2. Otherwise, for any functional or Sequential model:

   - the activation output of every hidden Dense/Conv layer: the layer's own
     output if it has a fused non-linear activation, and the output of every
     activation layer (``Activation`` other than linear/softmax, ``ReLU``,
     ``LeakyReLU``, ``PReLU``, ``ELU``);
   - for every ``keras.layers.Add``: its residual-branch input(s) and the
     block output. The branch is every input except the shortcut, which is
     told by structure (`cb_keras.graph.shortcut_candidates`): the identity input, else
     the input whose own path from the nearest common ancestor holds the
     fewest Dense/Conv layers, and among equals the 1x1 projection. When
     that leaves several inputs, every input is measured. The block output
     is the activation layer that follows the Add if there is one (measured
     by the rule above), else the Add output. An ``Add`` whose inputs share
     no ancestor (e.g. two model inputs) is not a residual block and is
     skipped; the ``+`` operator on symbolic tensors is not an ``Add`` layer
     and is not recognised.
   - never the model outputs, nor the head that computes them: the last
     Dense/Conv before an output (the logits) and activation layers after it.

``layers="last"`` measures only the last of these, a^(L); a list of layer
names measures exactly those (Tap or plain layers, outputs of the layer as
called in this model), in graph order whatever order they are given in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Union

import keras

from cb_keras import layer_kinds
from cb_keras.graph import Graph, model_graph, producer_node, residuals
from cb_keras.taps import Tap

LayersArg = Union[str, Sequence[str]]
LAYER_MODES = ("auto", "all", "last")


def probe(model: keras.Model, layers: LayersArg = "auto") -> keras.Model:
    """Multi-output model of the measured outputs a^(1)..a^(L) of `model`.

    Args:
        model: a functional or Sequential `keras.Model` (built).
        layers: ``"auto"`` (or its alias ``"all"``): the outputs docs/method.md §2
            names (module docstring); ``"last"``: only a^(L); or a list of
            layer names.

    Returns:
        A `keras.Model` sharing `model`'s layers and weights, with `model`'s
        inputs and a dict of outputs ``{layer name: tensor of shape
        (batch, ...)}`` in graph order. ScaledBranchTap outputs depend on the
        forward batch (their scales use its variance).

    Raises:
        TypeError: `model` is not a keras.Model or `layers` has a wrong type.
        ValueError: unknown names (the error lists the available ones), no
            measurable layer, a subclassed, unbuilt or nested model, a layer
            called more than once in the model.

    Example:
        >>> outputs = probe(model)(x)            # {name: activations}
        >>> list(outputs)                        # a^(1) ... a^(L)
    """
    return probe_model(model, select_taps(model, layers))


def tap_names(model: keras.Model, layers: LayersArg = "auto") -> list[str]:
    """Names of the outputs `probe(model, layers)` measures, a^(1) first."""
    return [tap.name for tap in select_taps(model, layers)]


@dataclasses.dataclass(frozen=True)
class _Tap:
    """One measured output: the layer call that defines it and its name."""

    name: str
    node: Any

    def tensor(self, used_names: set[str]):
        """The symbolic tensor to measure, built from the call's inputs.

        A Tap's `measured` runs inside a `_Measured` layer with a fresh name
        (not in `used_names`, which it joins): ops applied to symbolic
        tensors directly would get automatic names such as "add" that can
        clash with the model's own layer names.
        """
        operation = self.node.operation
        if isinstance(operation, Tap):
            name = _fresh_name(f"{self.name}_measured", used_names)
            return _Measured(operation, name=name)(self.node.arguments.args[0])
        if len(self.node.outputs) != 1:
            raise ValueError(
                f"layer {self.name!r} has {len(self.node.outputs)} outputs; the probe "
                "measures single-output layers. Name a layer that consumes one of them.")
        return self.node.outputs[0]


class _Measured(keras.layers.Layer):
    """Computes ``tap.measured(inputs)`` in the probe model; inputs are not autocast."""

    def __init__(self, tap: Tap, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self._measured = tap.measured

    def call(self, inputs):
        return self._measured(inputs)


def _fresh_name(base: str, used_names: set[str]) -> str:
    """`base`, or `base_2`, `base_3`, ... : the first not in `used_names` (then added)."""
    name, suffix = base, 1
    while name in used_names:
        suffix += 1
        name = f"{base}_{suffix}"
    used_names.add(name)
    return name


def select_taps(model: keras.Model, layers: LayersArg = "auto") -> list[_Tap]:
    """The measured outputs of `model` for `layers` (see `probe`), a^(1) first."""
    layers = check_layers(layers)
    graph = model_graph(model)
    if isinstance(layers, tuple):
        return _named_taps(model, graph, layers)
    taps = _auto_taps(model, graph)
    return taps[-1:] if layers == "last" else taps


def check_layers(layers: LayersArg) -> str | tuple[str, ...]:
    """Validate a `layers` argument; returns the mode or a tuple of names."""
    if isinstance(layers, str):
        if layers not in LAYER_MODES:
            raise ValueError(
                f"layers={layers!r} is not a mode; use one of {list(LAYER_MODES)} or a "
                "list of layer names.")
        return layers
    if not isinstance(layers, Sequence) or not layers \
            or not all(isinstance(name, str) for name in layers):
        raise TypeError(
            f"layers must be one of {list(LAYER_MODES)} or a non-empty list of layer "
            f"names, got {layers!r}.")
    return tuple(layers)


def _auto_taps(model: keras.Model, graph: Graph) -> list[_Tap]:
    """docs/method.md §2 "auto": the Tap layers if any, else activations and Add branches."""
    _reject_nested(model, graph)
    marked = [node for node in graph.nodes if isinstance(node.operation, Tap)]
    if marked:
        nodes = marked
    else:
        head = _head_nodes(model, graph)
        nodes = [node for node in graph.nodes
                 if node not in head and layer_kinds.is_hidden_activation(node.operation)]
        for block in residuals(graph):
            if block.add not in head:
                nodes.extend(_residual_nodes(block, graph))
    if not nodes:
        names = [node.operation.name for node in graph.nodes if not node.is_input]
        raise ValueError(
            f"model {model.name!r} has no measurable layers: 'auto' measures hidden "
            "Dense/Conv activations, activation layers and Add residual branches (never "
            f"the output head), and found none among {names}. Pass layers=[names] to "
            "measure chosen layers, or mark outputs with cb_keras.taps.Tap.")
    return _taps_in_order(nodes, graph)


def _named_taps(model: keras.Model, graph: Graph, names: tuple[str, ...]) -> list[_Tap]:
    """The calls of the named layers, in graph order."""
    by_name = {node.operation.name: node for node in graph.nodes if not node.is_input}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        nested = _nested_layer_names(graph)
        inside = {name: nested[name] for name in unknown if name in nested}
        if inside:
            raise ValueError(
                f"layers {sorted(inside)} lie inside nested model(s) "
                f"{sorted(set(inside.values()))} of {model.name!r}; the probe cannot tap "
                "into nested models. Probe the nested model itself, or build the model "
                "flat (call the inner layers directly on the outer tensors).")
        raise ValueError(
            f"unknown layer names {unknown} in model {model.name!r}; available: "
            f"{list(by_name)}.")
    return _taps_in_order([by_name[name] for name in names], graph)


def _taps_in_order(nodes: list, graph: Graph) -> list[_Tap]:
    """Deduplicate, sort into graph order and name the measured calls."""
    unique = {id(node): node for node in nodes}.values()
    taps = []
    for node in sorted(unique, key=graph.index):
        if graph.calls[node.operation] > 1:
            raise ValueError(
                f"layer {node.operation.name!r} is called {graph.calls[node.operation]} "
                "times in the model, so its name does not identify one output; use a "
                "separate layer instance for each call (e.g. one keras.layers.ReLU() per "
                "block) or measure a layer that is called once.")
        taps.append(_Tap(node.operation.name, node))
    return taps


def _reject_nested(model: keras.Model, graph: Graph) -> None:
    """'auto' cannot look inside nested models: say what to do instead."""
    nested = [node.operation.name for node in graph.nodes
              if isinstance(node.operation, keras.Model)]
    if nested:
        raise ValueError(
            f"model {model.name!r} contains nested model(s) {nested}; the probe cannot "
            "tap layers inside them. Build the model flat (call the inner layers on the "
            "outer tensors), probe the nested model itself, or pass layers=[names] of "
            "outer layers.")


def _nested_layer_names(graph: Graph) -> dict[str, str]:
    """``{layer name: nested model name}`` for layers inside nested models."""
    names = {}
    for node in graph.nodes:
        if isinstance(node.operation, keras.Model):
            names.update(dict.fromkeys(_all_layer_names(node.operation), node.operation.name))
    return names


def _all_layer_names(model: keras.Model) -> list[str]:
    """Names of the layers of `model` and of the models nested in it."""
    names = []
    for layer in model.layers:
        names.append(layer.name)
        if isinstance(layer, keras.Model):
            names.extend(_all_layer_names(layer))
    return names


def _head_nodes(model: keras.Model, graph: Graph) -> set:
    """The output calls and the head computing them: activations after the last Dense/Conv."""
    head = set()
    for output in model.outputs:
        node = graph.producer[id(output)]
        head.add(node)
        while isinstance(node.operation, (keras.layers.Activation, keras.layers.Softmax)
                         + layer_kinds.ACTIVATION_LAYERS) and node.input_tensors:
            node = graph.producer[id(node.input_tensors[0])]
            head.add(node)
        if layer_kinds.is_weight_layer(node.operation):
            head.add(node)
    return head


def _residual_nodes(block, graph: Graph) -> list:
    """The branch input(s) of a residual block and its output (module docstring)."""
    nodes = list(block.branches)
    followers = graph.consumers.get(id(block.add.outputs[0]), [])
    if not any(layer_kinds.is_hidden_activation(node.operation) for node in followers):
        nodes.append(block.add)
    return nodes


def probe_model(model: keras.Model, taps: list[_Tap], entries: Sequence = ()) -> keras.Model:
    """A keras.Model from `model`'s inputs to ``{tap name: measured tensor}``.

    With `entries` (symbolic tensors of `model`), its outputs are the pair
    ``({tap name: measured tensor}, [entry tensors])``.
    """
    try:
        inputs = model.input
    except AttributeError:  # a Sequential built by calling it on data
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    used_names = set(_all_layer_names(model)) | {t.name for t in keras.tree.flatten(inputs)}
    measured = {tap.name: tap.tensor(used_names) for tap in taps}
    return keras.Model(inputs, (measured, list(entries)) if entries else measured,
                       name=f"{model.name}_probe")


def entry_points(taps: list[_Tap], model_inputs: list) -> tuple[list, list[list[int]]]:
    """Where values enter each measured layer call: ``(tensors, indices per tap)``.

    The entries of a call are the model's inputs and its own inputs; for a
    `Tap` also the inputs of the layers whose outputs it marks. A layer can
    turn NaN or inf inputs into finite outputs (a fused ReLU may give 0 for
    NaN), so a measured output is only trusted when its entries are finite.
    Each tensor is listed once.
    """
    per_tap = []
    for tap in taps:
        tensors = list(model_inputs) + list(tap.node.input_tensors)
        if isinstance(tap.node.operation, Tap):
            tensors += [entry for marked in tap.node.input_tensors
                        for entry in producer_node(marked).input_tensors]
        per_tap.append(tensors)
    unique = list({id(t): t for tensors in per_tap for t in tensors}.values())
    position = {id(t): i for i, t in enumerate(unique)}
    return unique, [[position[id(t)] for t in tensors] for tensors in per_tap]
