"""`NetworkSpec`: the one name of a network of the papers (`cb_keras.paper.models`).

A spec is what run names, trial states and results say about a network:
an FNN by its depth and width, a VGG or ResNet by its blocks per stage. Its
JSON form (`NetworkSpec.to_dict`) is the one run directories hold:

    {"model": "fnn", "depth": 5, "width": 50}
    {"model": "vgg", "blocks": [3, 6, 12, 3]}      (or "resnet")

Example:
    >>> spec = NetworkSpec("resnet", blocks=cb_keras.paper.models.paper_blocks(20))
    >>> spec.label
    'resnet-2-2-3-2'
    >>> model = spec.build((32, 32, 3), num_classes=10)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from cb_keras import validation
from cb_keras.paper import models


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A network of `cb_keras.paper.models`, checked when made.

    Attributes:
        kind: ``"fnn"``, ``"vgg"`` or ``"resnet"`` (`cb_keras.paper.models.MODEL_KINDS`).
        blocks: vgg/resnet: blocks per stage, four ints >= 0, not all zero
            (`cb_keras.paper.models.paper_blocks` gives the papers' depths);
            None for an FNN.
        depth, width: fnn: hidden layers and units per layer, ints >= 1;
            None for vgg/resnet.

    Raises:
        ValueError: an unknown kind, or fields that do not fit it.
    """

    kind: str
    blocks: tuple[int, ...] | None = None
    depth: int | None = None
    width: int | None = None

    def __post_init__(self):
        if self.kind not in models.MODEL_KINDS:
            raise ValueError(f"Unknown model kind {self.kind!r}; known kinds: "
                             f"{list(models.MODEL_KINDS)}.")
        if self.kind == "fnn":
            if self.depth is None or self.width is None or self.blocks is not None:
                raise ValueError("An fnn spec needs depth and width (and no blocks), e.g. "
                                 "NetworkSpec('fnn', depth=5, width=50).")
            for name in ("depth", "width"):
                object.__setattr__(self, name,
                                   validation.check_positive_int(name, getattr(self, name)))
            return
        if self.blocks is None or self.depth is not None or self.width is not None:
            raise ValueError(
                f"A {self.kind} spec needs blocks (four ints, e.g. "
                f"cb_keras.paper.models.paper_blocks(50)) and no depth or width.")
        object.__setattr__(self, "blocks", tuple(validation.check_blocks(
            self.blocks, stages=len(models.STAGE_FILTERS))))

    @property
    def label(self) -> str:
        """The short name in run names and logs: ``fnn-d5-w50`` or ``vgg-3-12-41-3``."""
        if self.kind == "fnn":
            return f"fnn-d{self.depth}-w{self.width}"
        return f"{self.kind}-" + "-".join(str(b) for b in self.blocks)

    def build(self, input_shape: Sequence[int], num_classes: int) -> keras.Model:
        """The uncompiled network ``(batch, *input_shape) -> (batch, num_classes)`` logits.

        `cb_keras.paper.models.fnn`, `vgg` or `resnet` of these fields.
        """
        if self.kind == "fnn":
            return models.fnn(self.depth, self.width, input_shape, num_classes)
        builder = models.vgg if self.kind == "vgg" else models.resnet
        return builder(self.blocks, input_shape, num_classes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (module docstring): ``model`` and depth, width or blocks (a list)."""
        if self.kind == "fnn":
            return {"model": "fnn", "depth": self.depth, "width": self.width}
        return {"model": self.kind, "blocks": list(self.blocks)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NetworkSpec:
        """Inverse of `to_dict`.

        Raises:
            ValueError: not a spec's JSON form (another key, a key missing,
                or fields `NetworkSpec` refuses).
        """
        kind = data.get("model") if isinstance(data, Mapping) else None
        fields = ("depth", "width") if kind == "fnn" else ("blocks",)
        if not isinstance(data, Mapping) or set(data) != {"model", *fields}:
            raise ValueError(f"A network spec is {{'model': 'fnn', 'depth': ..., 'width': ...}} "
                             f"or {{'model': 'vgg' | 'resnet', 'blocks': [...]}}, got {data!r}.")
        return cls(kind, **{key: data[key] for key in fields})
