"""Flags that choose one network of the papers: its `cb_keras.paper.spec.NetworkSpec`."""

from __future__ import annotations

from absl import app, flags

from cb_keras.paper import models
from cb_keras.paper.spec import NetworkSpec
from experiments.options.parsers import define_int_list

PAPER_DEPTHS = ', '.join(map(str, sorted(models.PAPER_BLOCKS)))

MODEL = flags.DEFINE_enum(
    "model", "fnn", list(models.MODEL_KINDS),
    "fnn: Dense+ReLU layers; vgg: plain conv blocks; resnet: residual blocks.")
DEPTH = flags.DEFINE_integer(
    "depth", None,
    "fnn: number of hidden layers. vgg/resnet: a depth of the papers' table "
    f"({PAPER_DEPTHS}), or give --blocks instead.",
    lower_bound=1)
BLOCKS = define_int_list(
    "blocks", None, "vgg/resnet: blocks per stage, four integers, e.g. 3,6,12,3.", __name__)
WIDTH = flags.DEFINE_integer("width", 50, "fnn: units per hidden layer.", lower_bound=1)


@flags.validator(BLOCKS.name,
                 message="--blocks must be four integers >= 0, e.g. --blocks=3,6,12,3.")
def _four_blocks(value: list[int] | None) -> bool:
    return not value or len(value) == 4


def model_spec() -> NetworkSpec:
    """The network chosen by the flags above.

    Raises:
        app.UsageError: --depth/--blocks missing, both given, or a depth the
            papers do not define.
    """
    if MODEL.value == "fnn":
        if BLOCKS.value:
            raise app.UsageError("--blocks is for --model=vgg or resnet; --model=fnn takes "
                                 "--depth (number of hidden layers) and --width.")
        if DEPTH.value is None:
            raise app.UsageError("--model=fnn needs --depth (number of hidden layers), e.g. "
                                 "--depth=5 (and --width, 50 by default).")
        return NetworkSpec("fnn", depth=DEPTH.value, width=WIDTH.value)
    if (DEPTH.value is None) == (not BLOCKS.value):
        raise app.UsageError(
            f"--model={MODEL.value} needs either --depth (a depth of the papers' table: "
            f"{PAPER_DEPTHS}) or --blocks=b1,b2,b3,b4, "
            "not both.")
    try:
        return NetworkSpec(MODEL.value, blocks=BLOCKS.value or models.paper_blocks(DEPTH.value))
    except ValueError as error:
        raise app.UsageError(str(error)) from error
