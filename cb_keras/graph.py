"""The call graph of a functional Keras model, and its residual blocks.

`model_graph` reads a functional or Sequential model into a `Graph`: its
layer calls (keras Nodes) in topological order, who produces and who
consumes each symbolic tensor. `residuals` finds the residual blocks in it:
one `Residual` per ``keras.layers.Add`` call (and, with ``operators=True``,
per ``+`` / ``keras.ops.add`` of two symbolic tensors, which Keras 3 records
as operation nodes) whose inputs share an ancestor, with the input that is
the shortcut told by structure (`shortcut_candidates`) and the branch inputs.
The probe (`cb_keras.probe`) measures the branches;
`cb_keras.pruning` removes or lesions them.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

import keras
# The operation Keras 3 records for ``a + b`` / ``keras.ops.add(a, b)`` on symbolic
# tensors; Keras exports no public name for it.
from keras.src.ops.numpy import Add as OperatorAdd

from cb_keras import layer_kinds


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
class Residual:
    """One residual block: an Add call, which of its inputs is the shortcut, the branches.

    Attributes:
        add: the ``keras.layers.Add`` call (a keras Node).
        inputs: the calls producing the Add's inputs, in input order.
        candidates: the indices of the inputs that can be the shortcut
            (`shortcut_candidates`): one when the structure decides, several
            when it cannot tell them apart.
    """

    add: Any
    inputs: tuple
    candidates: tuple[int, ...]

    @property
    def shortcut(self) -> int | None:
        """Index of the shortcut input, None when the structure cannot tell."""
        return self.candidates[0] if len(self.candidates) == 1 else None

    @property
    def branches(self) -> tuple:
        """The calls producing the branch inputs: every input but the shortcut
        (every input when the shortcut is not known)."""
        return tuple(node for i, node in enumerate(self.inputs) if i != self.shortcut)

    def with_shortcut(self, index: int) -> Residual:
        """The same block with input `index` taken as its shortcut."""
        return dataclasses.replace(self, candidates=(index,))


def residual(add, graph: Graph) -> Residual | None:
    """The residual block of an Add call, or None if it is not one.

    Not one: its inputs share no ancestor, or (``+`` operator) it adds fewer
    than two symbolic tensors (``x + 1.0``) or broadcasts (an input's shape
    differs from the output's).
    """
    if isinstance(add.operation, OperatorAdd) and (
            len(add.input_tensors) != 2
            or any(tuple(t.shape) != tuple(add.outputs[0].shape) for t in add.input_tensors)):
        return None
    candidates = shortcut_candidates(add, graph)
    if not candidates:
        return None
    inputs = tuple(graph.producer[id(tensor)] for tensor in add.input_tensors)
    return Residual(add, inputs, tuple(candidates))


def residuals(graph: Graph, operators: bool = False) -> list[Residual]:
    """The residual blocks of a graph, in graph order.

    Args:
        graph: a model's call graph.
        operators: also the ``+`` / ``keras.ops.add`` calls (`OperatorAdd`),
            not only ``keras.layers.Add`` layers.
    """
    kinds = (keras.layers.Add, OperatorAdd) if operators else keras.layers.Add
    blocks = (residual(node, graph) for node in graph.nodes if isinstance(node.operation, kinds))
    return [block for block in blocks if block is not None]


def own_path(block: Residual, index: int, graph: Graph) -> list:
    """The calls on input `index`'s own path: those it depends on and no other input
    of the block's Add does, in graph order (the branch's layers, for a branch)."""
    distances = [set(_ancestor_distances(t, graph)) for t in block.add.input_tensors]
    others = set().union(*(d for i, d in enumerate(distances) if i != index))
    nodes = {id(graph.producer[key]): graph.producer[key] for key in distances[index] - others}
    return sorted(nodes.values(), key=graph.index)


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


def producer_node(tensor):
    """The keras Node that computed a symbolic tensor."""
    operation, node_index, _ = tensor._keras_history
    return operation._inbound_nodes[node_index]


def _topological_nodes(outputs: list) -> list:
    """All layer calls that `outputs` depend on, inputs first (iterative DFS)."""
    order, done = [], set()
    stack = [(producer_node(t), False) for t in reversed(outputs)]
    while stack:
        node, expanded = stack.pop()
        if node in done:
            continue
        if expanded:
            done.add(node)
            order.append(node)
            continue
        stack.append((node, True))
        stack.extend((producer_node(t), False) for t in reversed(node.input_tensors))
    return order


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
    return [node for node in nodes.values() if layer_kinds.is_weight_layer(node.operation)]


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
