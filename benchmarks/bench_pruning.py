"""Inference speed of a ResNet after `cb_keras.pruning.remove_blocks`.

Run: ``python -m benchmarks.bench_pruning [--depth 50] [--batch 64] [--repeats 30]``

Builds the papers' ResNet of --depth (untrained: speed does not depend on
the weights) for 32x32x3 images, removes every second residual block
(identity and projection blocks alike), and prints the parameters and the
median latency of one inference call on a batch of --batch images for the
original and the pruned network, and their ratio. The two networks take
turns (`experiments.runtime.serving.latencies_ms`), so load from other processes
affects both alike.
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

from cb_keras import pruning
from cb_keras.paper import models
from experiments.runtime.serving import latencies_ms

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=50, help="a depth of the papers' table")
    parser.add_argument("--batch", type=int, default=64, help="images per inference call")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per network")
    args = parser.parse_args()
    model = models.resnet(models.paper_blocks(args.depth), INPUT_SHAPE, NUM_CLASSES)
    blocks = [block.name for block in pruning.residual_blocks(model)]
    removed = blocks[1::2]
    pruned = pruning.remove_blocks(model, removed)
    batch = tf.constant(np.random.default_rng(0).random((args.batch, *INPUT_SHAPE)),
                        tf.float32)
    original_ms, pruned_ms = latencies_ms([model, pruned], batch, args.repeats)
    print(f"resnet{args.depth}: removed {len(removed)} of {len(blocks)} residual blocks")
    print(f"{'network':>9} {'parameters':>12} {'latency_ms':>11}")
    print(f"{'original':>9} {model.count_params():>12,} {original_ms:>11.2f}")
    print(f"{'pruned':>9} {pruned.count_params():>12,} {pruned_ms:>11.2f}")
    print(f"speed-up (original / pruned): {original_ms / pruned_ms:.2f}x")


if __name__ == "__main__":
    main()
