"""Which layer outputs a^(1)..a^(L) to measure (docs/method.md §2), the probe model, and `measure`.

`probe(model, layers)` returns a multi-output `keras.Model` with the same
inputs as `model` and one output per measured layer, in graph order
(a^(1) first, a^(L) last), keyed by layer name.

`measure(model, x, y, ...)` runs that probe on a fixed sample inside one
`tf.function` per batch that also fingerprints every measured output
(`bundles.fingerprint`), so only ``N x L x K`` integers leave the graph,
then groups the fingerprints per layer (`bundles.bundle_stats`) and returns
a `ConflictReport`.

Which outputs ``layers="auto"`` measures
----------------------------------------
1. If the model holds `cb_keras.taps.Tap` layers (the builders of
   `cb_keras.models` place them), exactly those, each measured as
   ``tap.measured(tap inputs)`` (for `ScaledBranchTap` the reference branch
   scaling).
2. Otherwise, for any functional or Sequential model:

   - the activation output of every hidden Dense/Conv layer: the layer's own
     output if it has a fused non-linear activation, and the output of every
     activation layer (``Activation`` other than linear/softmax, ``ReLU``,
     ``LeakyReLU``, ``PReLU``, ``ELU``);
   - for every ``keras.layers.Add``: its residual-branch input(s) and the
     block output. The branch is every input except the shortcut, which is
     told by structure (`shortcut_candidates`): the identity input, else
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

import collections
import dataclasses
import math
import weakref
from collections.abc import Sequence
from typing import Any, Union

import keras
import numpy as np
import tensorflow as tf

from cb_keras import bundles
from cb_keras.report import ConflictReport, LayerResult
from cb_keras.taps import Tap

LayersArg = Union[str, Sequence[str]]
LAYER_MODES = ("auto", "all", "last")

_DENSE_CONV = (
    keras.layers.Dense, keras.layers.EinsumDense,
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
    keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose, keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D, keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D)
_ACTIVATION_LAYERS = (keras.layers.ReLU, keras.layers.LeakyReLU,
                      keras.layers.PReLU, keras.layers.ELU)
_NOT_HIDDEN_ACTIVATIONS = ("linear", "softmax", "log_softmax")


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
    return _probe_model(model, select_taps(model, layers))


def tap_names(model: keras.Model, layers: LayersArg = "auto") -> list[str]:
    """Names of the outputs `probe(model, layers)` measures, a^(1) first."""
    return [tap.name for tap in select_taps(model, layers)]


def measure(model: keras.Model, x: Any, y: Any = None, *, num_classes: int,
            learning_rate: float, batch_size: int, layers: LayersArg = "auto",
            samples: int = 512, eval_batch_size: int | None = None) -> ConflictReport:
    """Bundle metrics (docs/method.md §1) of the outputs a^(1)..a^(L) of `model` on a fixed sample.

    Args:
        model: a functional or Sequential `keras.Model`.
        x: inputs, a NumPy array (N, ...) (or a nested structure of them
            matching the model's inputs), or a `tf.data.Dataset` of
            ``(x, y)`` batches (then `y` must be None).
        y: integer class labels, shape (N,) or (N, 1); None for a Dataset.
        num_classes: number of classes C.
        learning_rate: the training learning rate, > 0.
        batch_size: the *training* batch size (it enters the transform
            ``t = w_max - a * lr / bs``), a positive integer.
        layers: ``"auto"``/``"all"``, ``"last"`` or a list of layer names
            (see `probe`).
        samples: use the first `samples` examples of `x` (deterministic;
            fewer if `x` holds fewer). Default 512, as in the papers.
        eval_batch_size: samples per forward pass. Default None: the
            training `batch_size`, as the reference evaluates; this matters
            for `ScaledBranchTap` outputs, whose scales use the variance of
            one forward batch (a last, smaller batch gets its own scales).
            Every other output is per sample and does not depend on it.

    Returns:
        A `ConflictReport`: one `LayerResult` per measured output in graph
        order, and the metadata (num_samples, num_classes, weight_amplitude,
        learning_rate, batch_size). A layer whose outputs or inputs (or the
        model's inputs) hold NaN or inf is reported as ``diverged`` (its
        metrics are None/NaN, never numbers, and it is never conflicting);
        if the weights hold NaN or inf, every layer is (and the report's
        weight_amplitude is not finite).

    Raises:
        ValueError: invalid arguments (see `bundles.scalars`), a model
            without trainable weights, and the errors of `probe`.
        TypeError: `x` is not numeric arrays of shape (N, ...) (see
            `input_arrays`), or the errors of `probe`.

    The probe and its traced functions are cached per model and layer
    selection (held weakly: freed with the model), so measuring the same
    model again, e.g. every epoch, does not retrace. Works inside a
    `tf.distribute` strategy scope (the forward pass runs in cross-replica
    context on the current weights).

    Example:
        >>> report = measure(model, x_train, y_train, num_classes=10,
        ...                  learning_rate=1e-3, batch_size=64)
        >>> report.last.bundle_entropy, report.first_conflicting
    """
    sample_x, sample_y = take_sample(x, y, samples)
    num_samples = _num_samples(sample_x)
    labels, columns = bundles.class_columns(
        bundles.check_labels(sample_y, num_samples, num_classes), num_classes)
    measurer = _measurer(model, layers)
    w_max = _weight_amplitude(model)
    if math.isfinite(w_max):
        constants = bundles.scalars(w_max, learning_rate, batch_size)
        results = measurer.measure(
            sample_x, labels, constants, columns,
            batch_size if eval_batch_size is None else eval_batch_size)
    else:  # the weights diverged, so no layer output is defined
        bundles.scalars(0.0, learning_rate, batch_size)  # still validate the arguments
        results = [LayerResult.diverged_layer(name) for name in measurer.names]
    return ConflictReport(
        layers=tuple(results), num_samples=num_samples, num_classes=int(num_classes),
        weight_amplitude=w_max, learning_rate=float(learning_rate),
        batch_size=int(batch_size))


def _weight_amplitude(model: keras.Model) -> float:
    """max |w| over the trainable weights (float), NaN or inf if they are not finite."""
    if not model.trainable_weights:
        return bundles.weight_amplitude(model)  # raises: nothing to measure against
    return float(bundles.weight_amplitude_tensor(model.trainable_weights))


def take_sample(x: Any, y: Any, samples: int) -> tuple[Any, np.ndarray]:
    """The first `samples` examples of `x`, `y` as NumPy: ``(x[:n], y[:n])``.

    `x` is an array or a nested structure of arrays with `y` an array, or a
    `tf.data.Dataset` of ``(x, y)`` (or ``(x, y, sample_weight)``) batches
    with `y` None; a nested list of numbers is one array (`input_arrays`).
    Raises TypeError for inputs that are not numeric arrays with a sample
    axis, and ValueError for a wrong `samples`, a length mismatch, an empty
    source, or `y` given with a Dataset (or missing without one).
    """
    bundles.check_positive_int("samples", samples)
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ValueError(
                "x is a tf.data.Dataset, so it must yield (x, y) batches and y must "
                "be None; pass y=None.")
        return _sample_from_dataset(x, samples)
    if y is None:
        raise ValueError(
            "y is None but x is not a tf.data.Dataset; pass the integer labels y "
            "of x, or a Dataset of (x, y) batches as x.")
    sample_x = tf.nest.map_structure(lambda a: a[:samples], input_arrays(x))
    sample_y = np.asarray(y)[:samples]
    if _num_samples(sample_x) != len(sample_y):
        raise ValueError(
            f"x holds {_num_samples(sample_x)} samples in its first {samples} but y holds "
            f"{len(sample_y)}; pass one label per sample.")
    return sample_x, sample_y


def input_arrays(x: Any) -> Any:
    """`x` as NumPy arrays of shape (N, ...): an array, or a nested structure of them.

    A list or tuple whose elements are all numbers (a nested list of samples)
    becomes one array; a list of arrays stays a list of model inputs, as in
    Keras. TypeError for anything that is not a numeric array with a sample
    axis (strings, ragged lists, scalars).
    """
    if isinstance(x, (list, tuple)) and x \
            and all(np.ndim(leaf) == 0 for leaf in tf.nest.flatten(x)):
        try:
            x = np.asarray(x)
        except ValueError as error:  # ragged nesting
            raise TypeError(
                f"x is a nested list that is not rectangular ({error}); pass a NumPy "
                "array of shape (N, ...).") from error
    arrays = tf.nest.map_structure(np.asarray, x)
    if not tf.nest.flatten(arrays):
        raise TypeError(f"x holds no arrays (got {x!r}); pass the samples as an array "
                        "of shape (N, ...).")
    for array in tf.nest.flatten(arrays):
        if array.ndim == 0 or not (np.issubdtype(array.dtype, np.number)
                                   or array.dtype == np.bool_):
            raise TypeError(
                f"x must be numeric arrays of shape (N, ...) (one per model input), got "
                f"an array of shape {array.shape} and dtype {array.dtype}; convert it "
                "with np.asarray(x, dtype='float32').")
    return arrays


def _sample_from_dataset(dataset: tf.data.Dataset, samples: int) -> tuple[Any, np.ndarray]:
    """Concatenate the first batches of a Dataset of (x, y) batches up to `samples`."""
    xs, ys, count = [], [], 0
    for element in dataset:
        if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
            raise ValueError(
                "the Dataset must yield (x, y) or (x, y, sample_weight) batches; got "
                f"elements of structure {tf.nest.map_structure(lambda t: t.shape, element)}.")
        if np.ndim(element[1]) == 0:
            raise ValueError(
                "the Dataset yields single examples, not batches; batch it first, e.g. "
                "dataset.batch(64).")
        xs.append(tf.nest.map_structure(np.asarray, element[0]))
        ys.append(np.asarray(element[1]))
        count += len(ys[-1])
        if count >= samples:
            break
    if not ys:
        raise ValueError("the Dataset is empty; pass the training data to measure on.")
    sample_x = tf.nest.map_structure(lambda *parts: np.concatenate(parts)[:samples], *xs)
    return sample_x, np.concatenate(ys)[:samples]


def _num_samples(x: Any) -> int:
    """Length of the leading axis of the (first) input array."""
    return len(tf.nest.flatten(x)[0])


# ---------------------------------------------------------------- selection


@dataclasses.dataclass(frozen=True)
class Graph:
    """The call graph of a functional model.

    Attributes:
        nodes: the model's layer calls (keras Nodes), inputs first, in a
            topological order; InputLayer nodes included.
        producer: ``id(KerasTensor) -> Node`` that computes it.
        consumers: ``id(KerasTensor) -> [Node]`` that take it as input.
        calls: ``operation -> number of its calls in the model``.
        positions: ``id(Node) -> index in nodes``.
    """

    nodes: tuple
    producer: dict
    consumers: dict
    calls: collections.Counter
    positions: dict

    def index(self, node) -> int:
        """Position of `node` in the topological order."""
        return self.positions[id(node)]


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


def model_graph(model: keras.Model) -> Graph:
    """The call graph of `model`, with errors for models the probe cannot tap."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"probe needs a keras.Model, got {type(model).__name__}.")
    try:
        outputs = model.outputs
    except AttributeError as error:
        if isinstance(model, keras.Sequential):
            raise ValueError(
                f"Sequential model {model.name!r} is not built, so it has no layer "
                "outputs to tap; start it with keras.Input(shape) or call it on a "
                "batch first.") from error
        raise ValueError(
            f"model {model.name!r} is a subclassed keras.Model: its call() is Python "
            "code, not a graph of layers, so its internal outputs cannot be tapped. "
            "Build it with the functional API or keras.Sequential (optionally marking "
            "the outputs to measure with cb_keras.taps.Tap layers).") from error
    nodes = _topological_nodes(outputs)
    producer, consumers = {}, collections.defaultdict(list)
    for node in nodes:
        for tensor in node.outputs:
            producer[id(tensor)] = node
        for tensor in node.input_tensors:
            consumers[id(tensor)].append(node)
    calls = collections.Counter(node.operation for node in nodes)
    positions = {id(node): i for i, node in enumerate(nodes)}
    return Graph(tuple(nodes), producer, dict(consumers), calls, positions)


def _producer_node(tensor):
    """The keras Node that computed a symbolic tensor."""
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _topological_nodes(outputs: list) -> list:
    """All layer calls that `outputs` depend on, inputs first (iterative DFS)."""
    order, done = [], set()
    stack = [(_producer_node(t), False) for t in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if node in done:
            continue
        if expanded:
            done.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((_producer_node(t), False) for t in reversed(node.input_tensors))
    return order


def _auto_taps(model: keras.Model, graph: Graph) -> list[_Tap]:
    """docs/method.md §2 "auto": the Tap layers if any, else activations and Add branches."""
    _reject_nested(model, graph)
    marked = [node for node in graph.nodes if isinstance(node.operation, Tap)]
    if marked:
        nodes = marked
    else:
        head = _head_nodes(model, graph)
        nodes = [node for node in graph.nodes if node not in head and _is_activation(node)]
        for node in graph.nodes:
            if isinstance(node.operation, keras.layers.Add) and node not in head:
                nodes.extend(residual_nodes(node, graph))
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


def _is_activation(node) -> bool:
    """Does this call produce a hidden activation output (module docstring, rule 2)?"""
    operation = node.operation
    if isinstance(operation, _ACTIVATION_LAYERS):
        return True
    if isinstance(operation, (keras.layers.Activation,) + _DENSE_CONV):
        return _activation_name(operation) not in _NOT_HIDDEN_ACTIVATIONS
    return False


def _activation_name(layer) -> str:
    """The name of a layer's activation function ('linear' for none)."""
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "linear") if activation is not None else "linear"


def _head_nodes(model: keras.Model, graph: Graph) -> set:
    """The output calls and the head computing them: activations after the last Dense/Conv."""
    head = set()
    for output in model.outputs:
        node = graph.producer[id(output)]
        head.add(node)
        while isinstance(node.operation, (keras.layers.Activation, keras.layers.Softmax)
                         + _ACTIVATION_LAYERS) and node.input_tensors:
            node = graph.producer[id(node.input_tensors[0])]
            head.add(node)
        if isinstance(node.operation, _DENSE_CONV):
            head.add(node)
    return head


def residual_nodes(add, graph: Graph) -> list:
    """The branch input(s) of an Add call and its block output (module docstring)."""
    candidates = shortcut_candidates(add, graph)
    if not candidates:
        return []
    shortcut = candidates[0] if len(candidates) == 1 else None
    nodes = [graph.producer[id(t)] for i, t in enumerate(add.input_tensors) if i != shortcut]
    followers = graph.consumers.get(id(add.outputs[0]), [])
    if not any(_is_activation(node) for node in followers):
        nodes.append(add)
    return nodes


def shortcut_candidates(add, graph: Graph) -> list[int]:
    """Which inputs of an Add call can be its shortcut, told by structure.

    Each input's *own path* is the layers between the nearest common
    ancestor of all inputs and the Add that no other input depends on. The
    shortcut is the input that is the common ancestor itself (identity);
    else the input whose own path holds the fewest weight layers
    (Dense/Conv); among equals, the one whose only weight layer is a 1x1
    convolution (a projection).

    Returns:
        The indices of the inputs that rule leaves: one when the structure
        decides, several when it cannot tell them apart, none when the inputs
        share no ancestor (not a residual block).
    """
    distances = [_ancestor_distances(t, graph) for t in add.input_tensors]
    common = set.intersection(*(set(d) for d in distances))
    if not common:
        return []
    meet = min(common, key=lambda key: sum(d[key] for d in distances))
    identity = [i for i, d in enumerate(distances) if d[meet] == 0]
    if identity:
        return identity
    weights = [_weight_nodes([key for key in d if key not in common], graph)
               for d in distances]
    fewest = min(map(len, weights))
    candidates = [i for i, nodes in enumerate(weights) if len(nodes) == fewest]
    projections = [i for i in candidates if _is_projection(weights[i])]
    return projections or candidates


def _weight_nodes(tensor_ids, graph: Graph) -> list:
    """The distinct Dense/Conv calls producing the tensors with these ids."""
    nodes = {id(node): node for node in (graph.producer[key] for key in tensor_ids)}
    return [node for node in nodes.values() if isinstance(node.operation, _DENSE_CONV)]


def _is_projection(weight_nodes: list) -> bool:
    """Is this path's only weight layer a 1x1 convolution?"""
    return len(weight_nodes) == 1 and set(
        getattr(weight_nodes[0].operation, "kernel_size", None) or (0,)) == {1}


def _ancestor_distances(tensor, graph: Graph) -> dict[int, int]:
    """``id(ancestor tensor) -> fewest operations from it to `tensor``` (BFS)."""
    distances = {id(tensor): 0}
    frontier = collections.deque([tensor])
    while frontier:
        current = frontier.popleft()
        for parent in graph.producer[id(current)].input_tensors:
            if id(parent) not in distances:
                distances[id(parent)] = distances[id(current)] + 1
                frontier.append(parent)
    return distances


def _probe_model(model: keras.Model, taps: list[_Tap], entries: Sequence = ()) -> keras.Model:
    """A keras.Model from `model`'s inputs to ``{tap name: measured tensor}``.

    With `entries` (symbolic tensors of `model`), its outputs are the pair
    ``({tap name: measured tensor}, [entry tensors])``.
    """
    try:
        inputs = model.input
    except AttributeError:  # a Sequential built by calling it on data
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    used_names = set(_all_layer_names(model)) | {t.name for t in tf.nest.flatten(inputs)}
    measured = {tap.name: tap.tensor(used_names) for tap in taps}
    return keras.Model(inputs, (measured, list(entries)) if entries else measured,
                       name=f"{model.name}_probe")


def _entry_points(taps: list[_Tap], model_inputs: list) -> tuple[list, list[list[int]]]:
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
                        for entry in _producer_node(marked).input_tensors]
        per_tap.append(tensors)
    unique = list({id(t): t for tensors in per_tap for t in tensors}.values())
    position = {id(t): i for i, t in enumerate(unique)}
    return unique, [[position[id(t)] for t in tensors] for tensors in per_tap]


# ---------------------------------------------------------------- measuring


class _Measurer:
    """A probe with its traced per-batch fingerprint function, reused across calls."""

    def __init__(self, model: keras.Model, layers: LayersArg):
        taps = select_taps(model, layers)
        self.names = [tap.name for tap in taps]
        entries, self.entries_of = _entry_points(taps, tf.nest.flatten(model.inputs))
        self.probe = _probe_model(model, taps, entries)
        # Not reduce_retracing: `bundles.fingerprint` needs a static batch size
        # to know the feature size, so each chunk size gets its own trace
        # (at most two per sample size: full chunks and the remainder).
        self._fingerprint_batch = tf.function(self._fingerprints)

    def measure(self, x: Any, labels: tf.Tensor, constants: tuple, num_classes: int,
                eval_batch_size: int) -> list[LayerResult]:
        """Per-layer results on the sample `x` with (N,) int32 `labels`.

        `constants` are the float32 tensors ``(w_max, lr, 1/bs)`` of
        `bundles.scalars`; the sample goes through the probe in chunks of
        `eval_batch_size`.
        """
        num_samples = _num_samples(x)
        if isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, (int, np.integer)) \
                or eval_batch_size < 1:
            raise ValueError(
                f"eval_batch_size must be a positive integer or None, got {eval_batch_size!r}.")
        chunks = [self._fingerprint_batch(
                      tf.nest.map_structure(lambda a: a[start:start + eval_batch_size], x),
                      *constants)
                  for start in range(0, num_samples, eval_batch_size)]
        stats = _stats_per_layer(tf.concat(chunks, axis=1), labels, num_classes)
        return [_layer_result(name, *values)
                for name, values in zip(self.names, zip(*(s.numpy() for s in stats)))]

    def _fingerprints(self, x, w_max, learning_rate, inverse_batch_size) -> tf.Tensor:
        """Forward pass (inference mode); (L, n, K) int64 fingerprints of the measured outputs.

        A layer whose entries (`_entry_points`) hold NaN or inf gets the
        diverged fingerprint -1 in every row, whatever its outputs are.
        """
        outputs, entries = self.probe(x, training=False)
        finite = [bundles.all_finite(entry) for entry in entries]
        fingerprints = []
        for name, indices in zip(self.names, self.entries_of):
            try:
                layer = bundles.fingerprint(
                    outputs[name], w_max, learning_rate, inverse_batch_size)
            except ValueError as error:
                raise ValueError(f"layer {name!r}: {error}") from error
            fingerprints.append(bundles.mark_diverged(
                layer, tf.reduce_all([finite[i] for i in indices])))
        return tf.stack(fingerprints)


@tf.function(reduce_retracing=True)
def _stats_per_layer(fingerprints: tf.Tensor, labels: tf.Tensor,
                     num_classes: int) -> tuple[tf.Tensor, ...]:
    """(L, N, K) fingerprints -> (L,) num_bundles, bundle_entropy, max_accuracy, diverged.

    One graph for every model (the layer axis is a loop), so measuring many
    models does not retrace it.
    """
    return tf.map_fn(
        lambda layer: bundles.bundle_stats(layer, labels, num_classes)
        + (bundles.diverged(layer),),
        fingerprints, fn_output_signature=(tf.int32, tf.float32, tf.float32, tf.bool))


def _layer_result(name: str, num_bundles, bundle_entropy, max_accuracy,
                  diverged) -> LayerResult:
    """One layer's result; a diverged layer gets no numbers."""
    if diverged:
        return LayerResult.diverged_layer(name)
    return LayerResult(name, int(num_bundles), float(bundle_entropy), float(max_accuracy))


_MEASURERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _measurer(model: keras.Model, layers: LayersArg) -> _Measurer:
    """The cached `_Measurer` of `model` for this layer selection and graph.

    The key includes the model's output tensors, so a Sequential model that
    gained or lost layers since is probed anew.
    """
    key = (check_layers(layers), tuple(map(id, getattr(model, "outputs", None) or ())))
    per_model = _MEASURERS.setdefault(model, {})
    if key not in per_model:
        per_model[key] = _Measurer(model, layers)
    return per_model[key]
